/** File helpers several components share: atomic writes, fsync, hashing. */
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fsyncSync, openSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Write `data` to `path` so that a reader sees the old file or the new one,
 * never half of either: a temporary file next to it, then rename. With
 * `durable`, the data is fsynced before the rename (a crash then cannot
 * leave a renamed but empty file).
 */
export function writeFileAtomic(path: string, data: string, o: { mode?: number; durable?: boolean } = {}): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', o.mode ?? 0o644);
    try {
      writeFileSync(fd, data);
      if (o.durable) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** fsync a file or directory by path (a directory: so a rename in it is durable). */
export function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * The entries of directory `root` whose names pass `accept`, each with the
 * modification time of `file` inside it (0 when that is missing), newest
 * first; [] when `root` does not exist. (Journals of jobs, checkpoints.)
 */
export function entriesByFileTime(root: string, accept: (name: string) => boolean, file: string): { name: string; path: string; mtimeMs: number }[] {
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return [];
  }
  return names
    .filter(accept)
    .map((name) => {
      const path = join(root, name, file);
      try {
        return { name, path, mtimeMs: statSync(path).mtimeMs };
      } catch {
        return { name, path, mtimeMs: 0 };
      }
    })
    .sort((a, b) => b.mtimeMs - a.mtimeMs);
}
