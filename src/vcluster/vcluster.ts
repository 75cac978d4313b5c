/**
 * A local virtual cluster: N real QEMU VMs on this machine booted from the
 * guest image, plus spare slots for migration targets (layout.ts). The
 * QEMUs outlive the command that started them; the state file and the
 * cluster directory are how later commands (status, exec, cp, migrate,
 * down) find them.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import type { Logger } from '../log.js';
import type { MigrationOptionsInput, MigrationProgress, MigrationResult } from '../hypervisor/qemu/migration.js';
import { liveMigrate } from '../hypervisor/qemu/live-migrate.js';
import { checkpointVm, restoreVm, type VmCheckpointManifest } from '../hypervisor/qemu/checkpoint.js';
import { parseVmSpec } from '../hypervisor/qemu/vm-spec.js';
import { QemuVm } from '../hypervisor/qemu/qemu-vm.js';
import { freePort, pidAlive } from '../util/process.js';
import { chooseAccel } from './accel.js';
import { readyLine } from '../image/boot-contract.js';
import { slotPaths, vmIdentity, vmSpec, type ClusterNetwork, type VmIdentity } from './layout.js';
import { ClusterError, clusterDir, listClusters, lockCluster, processesNaming, readState, writeState, type ClusterState } from './state.js';

export interface UpOptions {
  name: string;
  vms: number;
  spares?: number;
  memoryMiB?: number;
  cpus?: number;
  image: { id: string; kernel: string; initrd: string; rootDisk: string; sshKey: string };
  log: Logger;
  onProgress?: (message: string) => void;
  /** per VM, from QEMU start to `symbio-guest-ready`; default 180 s */
  readyTimeoutMs?: number;
  /** skip the KVM probe and use this accelerator */
  accel?: 'kvm' | 'tcg';
}


/** Multicast ports no other cluster of this machine uses. */
function pickNetwork(): ClusterNetwork {
  const used = new Set<number>();
  for (const name of listClusters()) {
    try {
      const st = readState(name);
      if (st) used.add(st.net.mgmtPort).add(st.net.icPort);
    } catch {
      // an unreadable state is down's business
    }
  }
  for (;;) {
    const mgmtPort = 20000 + 2 * Math.floor(Math.random() * 15000);
    if (!used.has(mgmtPort) && !used.has(mgmtPort + 1)) return { group: '230.0.0.1', mgmtPort, icPort: mgmtPort + 1 };
  }
}

function consoleTail(path: string, lines = 15): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no console output)';
  }
}

/** Wait until the guest's console says it is ready (sshd up). */
async function waitReady(vm: QemuVm, consolePath: string, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  const mark = readyLine(vm.name);
  for (;;) {
    if (existsSync(consolePath) && readFileSync(consolePath, 'utf8').includes(mark)) return performance.now() - t0;
    if (!vm.running) throw new ClusterError(`VM ${vm.name} stopped while booting; its console ends with:\n${consoleTail(consolePath)}`);
    if (performance.now() - t0 > timeoutMs) {
      throw new ClusterError(`VM ${vm.name} was not ready within ${Math.round(timeoutMs / 1000)} s; its console ends with:\n${consoleTail(consolePath)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function identities(n: number): VmIdentity[] {
  return Array.from({ length: n }, (_, i) => vmIdentity(i));
}

export function specFor(state: ClusterState, vmIndex: number, slot: number, sshPort: number, extra: { incoming?: boolean; icAttached?: boolean } = {}) {
  return vmSpec({
    clusterDir: state.dir,
    vm: vmIdentity(vmIndex),
    all: identities(state.vms.length),
    slot,
    sshPort,
    net: state.net,
    image: state.image,
    memoryMiB: state.memoryMiB,
    cpus: state.cpus,
    accel: state.accel,
    ...extra,
  });
}

/**
 * Start a cluster. On any failure, everything started so far is stopped and
 * the directory removed: no half cluster is left behind.
 */
export async function vclusterUp(o: UpOptions): Promise<ClusterState> {
  const dir = clusterDir(o.name);
  const existing = readState(o.name);
  if (existing) throw new ClusterError(`virtual cluster ${o.name} exists already (${existing.vms.length} VMs); 'symbio vcluster down --name ${o.name}' first`);
  if (!Number.isInteger(o.vms) || o.vms < 1 || o.vms > 64) throw new ClusterError(`--vms must be 1..64 (got ${o.vms})`);
  const unlock = lockCluster(dir, 'up');
  const progress = o.onProgress ?? (() => undefined);
  const log = o.log.child({ cluster: o.name });
  const started: QemuVm[] = [];
  try {
    const accel = o.accel ? { accel: o.accel, reason: 'asked for' } : await chooseAccel();
    log.info({ accel: accel.accel }, accel.reason);
    progress(`accelerator: ${accel.accel} (${accel.reason})`);
    const state: ClusterState = {
      format: 1,
      name: o.name,
      dir,
      createdAt: new Date().toISOString(),
      accel: accel.accel,
      accelReason: accel.reason,
      image: { id: o.image.id, kernel: o.image.kernel, initrd: o.image.initrd, rootDisk: o.image.rootDisk, sshKey: o.image.sshKey },
      net: pickNetwork(),
      memoryMiB: o.memoryMiB ?? 512,
      cpus: o.cpus ?? 1,
      slots: o.vms + (o.spares ?? 1),
      vms: [],
    };
    const ports = await Promise.all(Array.from({ length: o.vms }, () => freePort()));
    for (let i = 0; i < o.vms; i++) state.vms.push({ index: i, name: vmIdentity(i).name, slot: i, pid: 0, sshPort: ports[i]! });
    writeState(state);
    progress(`starting ${o.vms} VMs (${state.memoryMiB} MiB, ${state.cpus} vCPU each)`);
    const t0 = performance.now();
    await Promise.all(
      state.vms.map(async (v) => {
        rmSync(slotPaths(dir, v.slot).console, { force: true });
        const vm = await QemuVm.start(specFor(state, v.index, v.slot, v.sshPort), { log, detached: true });
        started.push(vm);
        v.pid = vm.pid;
        writeState(state);
        const ms = await waitReady(vm, slotPaths(dir, v.slot).console, o.readyTimeoutMs ?? 180_000);
        progress(`${v.name} ready in ${(ms / 1000).toFixed(1)} s`);
      }),
    );
    log.info({ vms: o.vms, ms: Math.round(performance.now() - t0) }, 'virtual cluster up');
    return state;
  } catch (err) {
    await Promise.all(started.map((vm) => vm.kill()));
    rmSync(dir, { recursive: true, force: true });
    throw err;
  } finally {
    // our QMP connections end here; the QEMUs run on
    await Promise.all(started.map((vm) => vm.qmp.close().catch(() => undefined)));
    if (existsSync(dir)) unlock();
  }
}

export interface VmStatus {
  readonly name: string;
  readonly slot: number;
  readonly pid: number;
  readonly sshPort: number;
  readonly alive: boolean;
  /** QEMU's run state, or why it is unknown. */
  readonly state: string;
}

export async function vclusterStatus(name: string, log: Logger): Promise<{ state: ClusterState; vms: VmStatus[] }> {
  const state = readState(name);
  if (!state) throw new ClusterError(`no virtual cluster ${name} (start one with 'symbio vcluster up')`);
  const vms = await Promise.all(
    state.vms.map(async (v): Promise<VmStatus> => {
      const alive = v.pid > 0 && pidAlive(v.pid);
      let runState = alive ? 'unknown' : 'gone';
      if (alive) {
        try {
          const vm = await QemuVm.attach(specFor(state, v.index, v.slot, v.sshPort), v.pid, { log, startTimeoutMs: 2000, commandTimeoutMs: 2000 });
          runState = (await vm.status()).status;
          await vm.qmp.close();
        } catch (err) {
          runState = `QMP unreachable (${(err as Error).message.split(':')[0]})`;
        }
      }
      return { name: v.name, slot: v.slot, pid: v.pid, sshPort: v.sshPort, alive, state: runState };
    }),
  );
  return { state, vms };
}

/**
 * Stop every QEMU of the cluster and remove its directory. Works from the
 * state file and, in case that is missing or stale (a crash), from the
 * processes whose command line names the cluster's directory.
 */
export async function vclusterDown(name: string, log: Logger): Promise<{ stopped: number; existed: boolean }> {
  const dir = clusterDir(name);
  if (!existsSync(dir)) return { stopped: 0, existed: false };
  // The command lines, not the state file: a crash may have come before
  // the state was written, or left it stale.
  const pids = new Set(processesNaming(dir));
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      pids.delete(pid);
    }
  }
  const deadline = Date.now() + 5000;
  while ([...pids].some(pidAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  for (const pid of pids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  while ([...pids].some(pidAlive)) await new Promise((r) => setTimeout(r, 20));
  rmSync(dir, { recursive: true, force: true });
  log.info({ cluster: name, stopped: pids.size }, 'virtual cluster down');
  return { stopped: pids.size, existed: true };
}

export function requireState(name: string): ClusterState {
  const state = readState(name);
  if (!state) throw new ClusterError(`no virtual cluster ${name} (start one with 'symbio vcluster up')`);
  return state;
}

export function findVm(state: ClusterState, which: string | number): ClusterState['vms'][number] {
  const v = state.vms.find((x) => x.name === String(which) || String(x.index) === String(which));
  if (!v) throw new ClusterError(`virtual cluster ${state.name} has no VM '${which}' (it has ${state.vms.map((x) => x.name).join(', ')})`);
  return v;
}

const SSH_OPTIONS = ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10'];

/** ssh argv (without the remote command) reaching VM `v` through its forwarded port. */
export function sshArgv(state: ClusterState, v: ClusterState['vms'][number]): string[] {
  return ['-i', state.image.sshKey, '-p', String(v.sshPort), ...SSH_OPTIONS, 'root@127.0.0.1'];
}

/** POSIX shell quoting for the remote command line. */
export const shellQuote = (arg: string): string => (/^[A-Za-z0-9_\-./:=@%+,]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`);

export interface ExecResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Run `argv` in a guest. With `inherit`, its output goes straight to ours
 * (the CLI); otherwise it is collected. ssh passes the remote exit code
 * through; 255 means ssh itself failed.
 */
export function guestExec(state: ClusterState, which: string | number, argv: readonly string[], o: { inherit?: boolean; input?: string } = {}): Promise<ExecResult> {
  const v = findVm(state, which);
  const remote = argv.map(shellQuote).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', [...sshArgv(state, v), '--', remote], { stdio: [o.input === undefined ? 'ignore' : 'pipe', o.inherit ? 'inherit' : 'pipe', o.inherit ? 'inherit' : 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    if (o.input !== undefined) child.stdin!.end(o.input);
    child.once('error', (err) => reject(new ClusterError(`cannot run ssh: ${err.message} (install openssh-client)`)));
    child.once('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}

/**
 * Copy host files or directories into `dest` (a directory) on the given
 * guests: tar over ssh, so directories, modes and symlinks come along and
 * the guest needs nothing beyond tar.
 */
export async function guestCopy(state: ClusterState, which: readonly (string | number)[], sources: readonly string[], dest: string): Promise<void> {
  if (sources.length === 0) throw new ClusterError('nothing to copy: give at least one file or directory');
  for (const s of sources) if (!existsSync(s)) throw new ClusterError(`cannot copy ${s}: no such file or directory`);
  await Promise.all(
    which.map(async (w) => {
      const v = findVm(state, w);
      const remote = `mkdir -p ${shellQuote(dest)} && tar -x -C ${shellQuote(dest)} -f -`;
      await new Promise<void>((resolve, reject) => {
        const tar = spawn('tar', ['-c', '-f', '-', ...sources.flatMap((s) => ['-C', parentOf(s), baseOf(s)])], { stdio: ['ignore', 'pipe', 'pipe'] });
        const ssh = spawn('ssh', [...sshArgv(state, v), '--', remote], { stdio: ['pipe', 'ignore', 'pipe'] });
        let err = '';
        tar.stderr.on('data', (d: Buffer) => (err += d.toString()));
        ssh.stderr.on('data', (d: Buffer) => (err += d.toString()));
        tar.stdout.pipe(ssh.stdin);
        let pending = 2;
        let failed = false;
        const done = (what: string) => (code: number | null) => {
          if (code !== 0 && !failed) {
            failed = true;
            reject(new ClusterError(`copy to ${v.name}:${dest} failed (${what} exited ${code}): ${err.trim()}`));
          }
          if (--pending === 0 && !failed) resolve();
        };
        tar.once('close', done('tar'));
        ssh.once('close', done('ssh'));
      });
    }),
  );
}

const parentOf = (p: string) => (p.includes('/') ? p.slice(0, p.replace(/\/+$/, '').lastIndexOf('/')) || '/' : '.');
const baseOf = (p: string) => p.replace(/\/+$/, '').split('/').pop()!;

export interface MigrateOptions {
  log: Logger;
  /** Target slot; default the first free one. */
  slot?: number;
  migration: MigrationOptionsInput;
  onProgress?: (p: MigrationProgress) => void;
  signal?: AbortSignal;
}

/**
 * Raw live migration of one VM to another slot of the cluster (no MPI
 * cooperation: the job's TCP connections simply see a short stall). The
 * guest keeps its identity; only its slot (QMP socket, ssh port) changes.
 */
export async function vclusterMigrate(name: string, which: string | number, o: MigrateOptions): Promise<{ result: MigrationResult; from: number; to: number }> {
  const state = requireState(name);
  const unlock = lockCluster(state.dir, `migrate ${which}`);
  try {
    const v = findVm(state, which);
    const used = new Set(state.vms.map((x) => x.slot));
    const to = o.slot ?? Array.from({ length: state.slots }, (_, i) => i).find((s) => !used.has(s));
    if (to === undefined) throw new ClusterError(`virtual cluster ${name} has no free slot to migrate ${v.name} to (start it with more --spares)`);
    if (used.has(to)) throw new ClusterError(`slot ${to} of ${name} is in use by ${state.vms.find((x) => x.slot === to)!.name}`);
    if (to < 0 || to >= state.slots) throw new ClusterError(`slot ${to} does not exist (${name} has slots 0..${state.slots - 1})`);
    const src = await QemuVm.attach(specFor(state, v.index, v.slot, v.sshPort), v.pid, { log: o.log });
    try {
      const sshPort = await freePort();
      rmSync(slotPaths(state.dir, to).console, { force: true });
      const from = v.slot;
      const { vm: dst, result } = await liveMigrate(src, specFor(state, v.index, to, sshPort), o.migration, { log: o.log, detached: true, signal: o.signal, onProgress: o.onProgress });
      Object.assign(v, { slot: to, pid: dst.pid, sshPort });
      writeState(state);
      await dst.qmp.close();
      return { result, from, to };
    } finally {
      // QEMU serves one QMP client at a time: a failed move must not keep the source's
      await src.qmp.close().catch(() => undefined);
    }
  } finally {
    unlock();
  }
}

/** Save one VM of the cluster into `dir` (it runs on afterwards). */
export async function vclusterCheckpoint(name: string, which: string | number, dir: string, log: Logger): Promise<VmCheckpointManifest> {
  const state = requireState(name);
  const unlock = lockCluster(state.dir, `checkpoint ${which}`);
  try {
    const v = findVm(state, which);
    const vm = await QemuVm.attach(specFor(state, v.index, v.slot, v.sshPort), v.pid, { log });
    try {
      return await checkpointVm(vm, dir, { log });
    } finally {
      await vm.qmp.close();
    }
  } finally {
    unlock();
  }
}

/**
 * Bring a VM of the cluster back from its checkpoint into a slot (default:
 * the first free one). Its QEMU must be gone (a crash, or `kill`): one VM,
 * one running copy.
 */
export async function vclusterRestore(name: string, which: string | number, manifestPath: string, o: { log: Logger; slot?: number }): Promise<{ slot: number; restoreMs: number }> {
  const state = requireState(name);
  const unlock = lockCluster(state.dir, `restore ${which}`);
  try {
    const v = findVm(state, which);
    if (v.pid > 0 && pidAlive(v.pid)) throw new ClusterError(`${v.name} is still running (pid ${v.pid}); restoring it would make two copies`);
    const used = new Set(state.vms.filter((x) => x !== v).map((x) => x.slot));
    const slot = o.slot ?? Array.from({ length: state.slots }, (_, i) => i).find((s) => !used.has(s));
    if (slot === undefined || used.has(slot)) throw new ClusterError(`no free slot in ${name} to restore ${v.name} into`);
    const sshPort = await freePort();
    const target = specFor(state, v.index, slot, sshPort);
    const { vm, restoreMs } = await restoreVm(manifestPath, { log: o.log, detached: true, adapt: () => parseVmSpec(target) });
    Object.assign(v, { slot, pid: vm.pid, sshPort });
    writeState(state);
    await vm.qmp.close();
    return { slot, restoreMs };
  } finally {
    unlock();
  }
}
