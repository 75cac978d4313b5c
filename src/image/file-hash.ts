/**
 * sha256 of files, remembered by (path, size, mtime, inode) so that deciding
 * "is the cached image still current?" reads no file twice: hashing the node
 * binary alone takes ~0.6 s here, and buildImage() must answer in well under
 * a second when nothing changed. A file whose stat changed is hashed again,
 * so the image id stays a hash of contents, not of timestamps.
 */
import { createHash } from 'node:crypto';
import { sha256File } from '../util/files.js';
import { readFileSync, renameSync, rmSync, statSync, writeFileSync, type BigIntStats } from 'node:fs';

interface MemoEntry {
  readonly key: string;
  readonly sha256: string;
}

const statKey = (st: BigIntStats): string => `${st.size}:${st.mtimeNs}:${st.ino}:${st.dev}`;

export { sha256File };

export const sha256Text = (text: string | Buffer): string => createHash('sha256').update(text).digest('hex');

export class FileHashMemo {
  private readonly entries = new Map<string, MemoEntry>();
  private dirty = false;

  /** Loads the memo at `path` (a missing or unreadable memo is an empty one). */
  constructor(private readonly path: string | null) {
    if (!path) return;
    try {
      const raw = JSON.parse(readFileSync(path, 'utf8')) as Record<string, MemoEntry>;
      for (const [p, e] of Object.entries(raw)) if (typeof e?.key === 'string' && typeof e?.sha256 === 'string') this.entries.set(p, e);
    } catch {
      // first use, or damaged: start empty
    }
  }

  async sha256(path: string): Promise<string> {
    const key = statKey(statSync(path, { bigint: true }));
    const known = this.entries.get(path);
    if (known && known.key === key) return known.sha256;
    const sha256 = await sha256File(path);
    this.entries.set(path, { key, sha256 });
    this.dirty = true;
    return sha256;
  }

  /**
   * Writes the memo back if it learned anything (atomically: others may read
   * it meanwhile). A cache dir we cannot write to only costs speed.
   */
  save(): void {
    if (!this.path || !this.dirty) return;
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, JSON.stringify(Object.fromEntries(this.entries)));
      renameSync(tmp, this.path);
      this.dirty = false;
    } catch {
      rmSync(tmp, { force: true });
    }
  }
}
