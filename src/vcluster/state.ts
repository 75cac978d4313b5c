/**
 * A virtual cluster's state file (<runtime>/vcluster/<name>/state.json):
 * which VM runs in which slot under which pid, the image, the network.
 * Written atomically after every change, so that `down` after a crash finds
 * what to stop (it also scans /proc for QEMUs whose command line names the
 * cluster's directory, in case the crash came before the write).
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { writeFileAtomic } from '../util/files.js';
import { join } from 'node:path';
import { z } from 'zod';
import { runtimeDir } from '../agent/runtime-dir.js';
import { pidAlive } from '../util/process.js';

export const clusterStateSchema = z.strictObject({
  format: z.literal(1),
  name: z.string(),
  dir: z.string(),
  createdAt: z.string(),
  accel: z.enum(['kvm', 'tcg']),
  accelReason: z.string(),
  image: z.strictObject({ id: z.string(), kernel: z.string(), initrd: z.string(), rootDisk: z.string(), sshKey: z.string() }),
  net: z.strictObject({ group: z.string(), mgmtPort: z.number().int(), icPort: z.number().int() }),
  memoryMiB: z.number().int(),
  cpus: z.number().int(),
  slots: z.number().int().min(1),
  vms: z.array(z.strictObject({ index: z.number().int(), name: z.string(), slot: z.number().int(), pid: z.number().int(), sshPort: z.number().int() })),
});
export type ClusterState = z.infer<typeof clusterStateSchema>;

export class ClusterError extends Error {
  override name = 'ClusterError';
}

export const NAME_RE = /^[a-z0-9][a-z0-9-]{0,31}$/;

export function clustersRoot(): string {
  return join(runtimeDir(), 'vcluster');
}

export function clusterDir(name: string): string {
  if (!NAME_RE.test(name)) throw new ClusterError(`'${name}' is not a cluster name: lower-case letters, digits and -, at most 32`);
  return join(clustersRoot(), name);
}

export function readState(name: string): ClusterState | null {
  const path = join(clusterDir(name), 'state.json');
  if (!existsSync(path)) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ClusterError(`the state of virtual cluster ${name} (${path}) is unreadable: ${(err as Error).message}; 'symbio vcluster down --name ${name}' still stops its VMs`);
  }
  const r = clusterStateSchema.safeParse(raw);
  if (!r.success) throw new ClusterError(`the state of virtual cluster ${name} (${path}) is not valid (${r.error.issues[0]?.message}); 'symbio vcluster down --name ${name}' still stops its VMs`);
  return r.data;
}

export function writeState(state: ClusterState): void {
  writeFileAtomic(join(state.dir, 'state.json'), `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
}

/** Every cluster with a directory on this machine (state or not). */
export function listClusters(): string[] {
  try {
    return readdirSync(clustersRoot()).filter((n) => NAME_RE.test(n));
  } catch {
    return [];
  }
}

/** Pids of processes whose command line mentions `dir` (this cluster's QEMUs, found without the state file). */
export function processesNaming(dir: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      // the directory followed by '/': cluster "a" must not match cluster "ab"
      if (cmd.includes(`${dir}/`)) found.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/**
 * One changer at a time per cluster (up, migrate, down): an exclusive lock
 * file holding the owner's pid; a dead owner's lock is taken over.
 */
export function lockCluster(dir: string, what: string): () => void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, 'lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid} ${what}\n`);
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const [pid, ...rest] = readFileSync(path, 'utf8').trim().split(' ');
      if (pid && pidAlive(Number(pid))) {
        throw new ClusterError(`virtual cluster ${dir} is busy: process ${pid} is doing '${rest.join(' ')}'; try again when it is done`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new ClusterError(`could not lock virtual cluster ${dir}`);
}
