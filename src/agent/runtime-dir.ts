/**
 * Where a running job's control socket and its description live:
 * $SYMBIO_RUNTIME_DIR, else $XDG_RUNTIME_DIR/symbio, else <tmp>/symbio-<uid>.
 * The directory is 0700 so only the job's user reaches the 0600 sockets.
 */
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pidAlive } from '../util/process.js';

export function runtimeDir(): string {
  const explicit = process.env.SYMBIO_RUNTIME_DIR;
  if (explicit) return explicit;
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg) return join(xdg, 'symbio');
  return join(tmpdir(), `symbio-${process.getuid?.() ?? 'user'}`);
}

export function ensureRuntimeDir(): string {
  const dir = runtimeDir();
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return dir;
}

export interface JobDescription {
  readonly jobId: string;
  readonly pid: number;
  readonly socket: string;
  readonly segment: string;
  readonly startedAt: string;
  readonly command: readonly string[];
}

export const socketPath = (dir: string, jobId: string): string => join(dir, `${jobId}.sock`);
export const descriptionPath = (dir: string, jobId: string): string => join(dir, `${jobId}.json`);

/** Atomically (rename) publish where operators reach the job (`symbio jobs`). */
export function publishDescription(path: string, desc: JobDescription): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(desc, null, 2) + '\n', { mode: 0o600 });
  renameSync(tmp, path);
}

/** Jobs whose launcher is still running (stale descriptions are ignored). */
export function listJobs(dir = runtimeDir()): JobDescription[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const jobs: JobDescription[] = [];
  for (const n of names) {
    if (!n.endsWith('.json')) continue;
    try {
      const d = JSON.parse(readFileSync(join(dir, n), 'utf8')) as JobDescription;
      if (typeof d.pid === 'number' && pidAlive(d.pid)) jobs.push(d);
    } catch {
      // half-written or foreign file: not a job
    }
  }
  return jobs;
}
