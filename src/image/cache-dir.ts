/**
 * The guest image cache: where it is, its layout, the lock that serializes
 * builders, and removing what a build left behind.
 *
 *   <cache>/build.lock            flock(2)ed by whoever builds (see withCacheLock)
 *   <cache>/hash-memo.json        file hashes by (path, size, mtime, inode): the fast path
 *   <cache>/base/<base id>/       debootstrap rootfs + base.json   (layer 1)
 *   <cache>/images/<image id>/    vmlinux, initrd.img, root.img, ssh key, image.json (layer 2)
 *   <cache>/tmp/                  builds in progress; renamed into place when complete
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { runProcess } from '../util/run-process.js';

/** $SYMBIO_CACHE_DIR, else $XDG_CACHE_HOME/symbio, else ~/.cache/symbio. */
export function defaultCacheDir(): string {
  const explicit = process.env.SYMBIO_CACHE_DIR;
  if (explicit) return resolve(explicit);
  const xdg = process.env.XDG_CACHE_HOME;
  if (xdg) return join(resolve(xdg), 'symbio');
  return join(homedir(), '.cache', 'symbio');
}

export interface CacheLayout {
  readonly root: string;
  readonly lock: string;
  readonly hashMemo: string;
  readonly baseDir: string;
  readonly imagesDir: string;
  readonly tmpDir: string;
}

export function cacheLayout(root: string): CacheLayout {
  return {
    root,
    lock: join(root, 'build.lock'),
    hashMemo: join(root, 'hash-memo.json'),
    baseDir: join(root, 'base'),
    imagesDir: join(root, 'images'),
    tmpDir: join(root, 'tmp'),
  };
}

export interface LockWaitOptions {
  /** called once if the lock is not free at once (someone else is building) */
  onWait?: () => void;
  /** give up after this long (default 30 min: a cold build takes ~2 min) */
  timeoutMs?: number;
}

/**
 * Run `fn` holding an exclusive flock(2) on `lockPath`. Node has no flock, so
 * a `flock` process (util-linux) takes the lock and holds it for as long as
 * its stdin is open: it is released when we close that pipe, and by the
 * kernel when this process dies, so a crashed builder never leaves a stale
 * lock. Concurrent callers, in this process or others, wait their turn.
 */
export async function withCacheLock<T>(lockPath: string, fn: () => Promise<T>, o: LockWaitOptions = {}): Promise<T> {
  const timeoutS = Math.ceil((o.timeoutMs ?? 30 * 60_000) / 1000);
  // prints "locked" once it holds the lock, then waits for EOF on stdin
  const holder = spawn('flock', ['--exclusive', '--timeout', String(timeoutS), lockPath, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  holder.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const waitHint = setTimeout(() => o.onWait?.(), 200);
  try {
    await new Promise<void>((resolveLocked, reject) => {
      holder.once('error', (err) =>
        reject(new Error(`cannot run flock to lock ${lockPath}: ${err.message} (flock is in util-linux: apt-get install util-linux)`)),
      );
      holder.once('exit', (code) =>
        reject(new Error(`could not lock ${lockPath} (flock exited with ${code}${stderr ? `: ${stderr.trim()}` : ''}; another image build may be stuck: see its process)`)),
      );
      holder.stdout.setEncoding('utf8').once('data', () => resolveLocked());
    });
  } finally {
    clearTimeout(waitHint);
  }
  holder.removeAllListeners('exit');
  const released = new Promise<void>((r) => holder.once('exit', () => r()));
  try {
    return await fn();
  } finally {
    holder.stdin.end();
    await released;
  }
}

/** Mount points at or below `dir` (deepest first), from /proc/self/mountinfo. */
export function mountsBelow(dir: string): string[] {
  const prefix = resolve(dir);
  let info: string;
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((m): m is string => m !== undefined)
    .map(unescape)
    .filter((m) => m === prefix || m.startsWith(prefix + '/'))
    .sort((a, b) => b.length - a.length);
}

/**
 * Remove a directory tree that may hold a rootfs. debootstrap mounts /proc
 * (and in containers binds /dev) inside its target, and a killed debootstrap
 * leaves them mounted: unmount those first, and never cross into another
 * file system, so that removing a half-made rootfs cannot delete anything of
 * the host's.
 */
export async function removeTree(dir: string): Promise<void> {
  for (const m of mountsBelow(dir)) {
    const r = await runProcess('umount', ['--lazy', m]);
    if (r.code !== 0) throw new Error(`cannot unmount ${m} (left by a build under ${dir}): ${r.stderr.trim()}; unmount it by hand, then remove ${dir}`);
  }
  const r = await runProcess('rm', ['-rf', '--one-file-system', '--', dir]);
  if (r.code !== 0) throw new Error(`cannot remove ${dir}: ${r.stderr.trim()}`);
}

export function ensureCacheDirs(layout: CacheLayout): void {
  for (const d of [layout.root, layout.baseDir, layout.imagesDir, layout.tmpDir]) mkdirSync(d, { recursive: true });
}
