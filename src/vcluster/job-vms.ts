/**
 * The VMs of a job on the local virtual cluster, as the controller's VM
 * operations see them (controller/vm-backend.ts). A "place" is a slot of
 * the cluster. QMP connections are made per step and closed after it, so
 * `symbio vcluster status` and friends keep working while a job runs; the
 * cluster's lock is held only while the state file changes.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import type { BackendVm, JobVmBackend, PreparedMove } from '../controller/vm-backend.js';
import { checkpointVm, restoreVm, type VmCheckpointManifest } from '../hypervisor/qemu/checkpoint.js';
import { liveMigrate, startDestination } from '../hypervisor/qemu/live-migrate.js';
import type { MigrationOptionsInput, MigrationProgress, MigrationResult } from '../hypervisor/qemu/migration.js';
import { QemuVm } from '../hypervisor/qemu/qemu-vm.js';
import { QmpClient } from '../hypervisor/qmp/client.js';
import type { WatchedVm } from '../controller/failure-detector.js';
import { parseVmSpec } from '../hypervisor/qemu/vm-spec.js';
import { freePort, pidAlive } from '../util/process.js';
import { slotPaths, vmIdentity } from './layout.js';
import { ClusterError, lockCluster, readState, writeState, type ClusterState } from './state.js';
import { findVm, specFor } from './vcluster.js';

interface Prepared extends PreparedMove {
  readonly slot: number;
  readonly sshPort: number;
  readonly dst: QemuVm;
}

export class VclusterJobVms implements JobVmBackend {
  readonly placeKind = 'slot';
  readonly #log: Logger;

  constructor(
    readonly cluster: string,
    /** The VMs of the job (names); default all of the cluster's. */
    private readonly names: readonly string[] | null,
    log: Logger,
  ) {
    this.#log = log.child({ component: 'vcluster-vms', cluster });
  }

  state(): ClusterState {
    const st = readState(this.cluster);
    if (!st) throw new ClusterError(`virtual cluster ${this.cluster} is gone`);
    return st;
  }

  #vms(st = this.state()): ClusterState['vms'] {
    return this.names ? this.names.map((n) => findVm(st, n)) : st.vms;
  }

  list(): BackendVm[] {
    const st = this.state();
    return this.#vms(st).map((v) => {
      const id = vmIdentity(v.index);
      return { id: v.name, host: `slot${v.slot}`, memoryBytes: st.memoryMiB * 2 ** 20, interconnect: { mac: id.icMac, address: `${id.icIp}/24` } };
    });
  }

  /** Where each VM runs and under which QEMU pid (what failure detection watches). */
  watch(): WatchedVm[] {
    const st = this.state();
    return this.#vms(st).map((v) => ({ id: v.name, host: `slot${v.slot}`, pid: v.pid }));
  }

  /** QEMU's run state, straight from its QMP monitor; rejects when that does not answer within `timeoutMs`. */
  async qmpStatus(vm: string, timeoutMs: number): Promise<string> {
    const st = this.state();
    const v = findVm(st, vm);
    const qmp = await QmpClient.connect(slotPaths(st.dir, v.slot).qmp, { log: this.#log, connectTimeoutMs: timeoutMs, commandTimeoutMs: timeoutMs });
    try {
      const r = await qmp.execute<{ status: string }>('query-status');
      return r.status;
    } finally {
      await qmp.close().catch(() => undefined);
    }
  }

  /** The VM's agent socket now (it changes when the VM moves). */
  agentSocket(vm: string): string {
    const st = this.state();
    return slotPaths(st.dir, findVm(st, vm).slot).agent;
  }

  /** Every place of the cluster, and whether this job's VMs use it now. */
  places(): { name: string; used: boolean }[] {
    const st = this.state();
    const used = new Set(this.#vms(st).map((v) => v.slot));
    return Array.from({ length: st.slots }, (_, i) => ({ name: `slot${i}`, used: used.has(i) }));
  }

  freePlaces(): string[] {
    const st = this.state();
    const used = new Set(st.vms.map((v) => v.slot));
    return Array.from({ length: st.slots }, (_, i) => i).filter((s) => !used.has(s)).map((s) => `slot${s}`);
  }

  #slotOf(place: string, st: ClusterState): number {
    const m = /^(?:slot)?(\d+)$/.exec(place);
    const n = m ? Number(m[1]) : NaN;
    if (!Number.isInteger(n) || n < 0 || n >= st.slots) throw new ClusterError(`no slot '${place}' in ${this.cluster} (it has slot0..slot${st.slots - 1})`);
    return n;
  }

  async #attach(vm: string): Promise<QemuVm> {
    const st = this.state();
    const v = findVm(st, vm);
    if (!(v.pid > 0 && pidAlive(v.pid))) throw new ClusterError(`${vm}'s QEMU (pid ${v.pid}) is not running`);
    return QemuVm.attach(specFor(st, v.index, v.slot, v.sshPort), v.pid, { log: this.#log });
  }

  async #with<T>(vm: string, f: (q: QemuVm) => Promise<T>): Promise<T> {
    const q = await this.#attach(vm);
    try {
      return await f(q);
    } finally {
      await q.qmp.close().catch(() => undefined);
    }
  }

  async prepareMoves(vms: readonly string[], to: readonly string[] = []): Promise<PreparedMove[]> {
    const st = this.state();
    const free = this.freePlaces();
    const chosen = vms.map((vm, i) => {
      const place = to[i] ?? free.filter((f) => !to.includes(f))[i - to.length];
      if (place === undefined) throw new ClusterError(`no free slot for ${vm}: ${this.cluster} has ${free.length} free (${free.join(', ') || 'none'}); start it with more --spares`);
      if (!free.includes(`slot${this.#slotOf(place, st)}`)) throw new ClusterError(`slot ${place} of ${this.cluster} is in use`);
      return { vm, slot: this.#slotOf(place, st) };
    });
    if (new Set(chosen.map((c) => c.slot)).size !== chosen.length) throw new ClusterError('two VMs cannot move to the same slot');
    const started: Prepared[] = [];
    try {
      await Promise.all(
        chosen.map(async ({ vm, slot }) => {
          const v = findVm(st, vm);
          const sshPort = await freePort();
          rmSync(slotPaths(st.dir, slot).console, { force: true });
          const dst = await startDestination(specFor(st, v.index, slot, sshPort, { incoming: true, icAttached: false }), { log: this.#log, detached: true });
          started.push({ vm, to: `slot${slot}`, slot, sshPort, dst });
        }),
      );
    } catch (err) {
      await this.discardMoves(started);
      throw err;
    }
    return vms.map((vm) => started.find((p) => p.vm === vm)!);
  }

  async discardMoves(moves: readonly PreparedMove[]): Promise<void> {
    await Promise.all((moves as Prepared[]).map((m) => m.dst.kill().catch(() => undefined)));
  }

  detachInterconnect(vm: string, timeoutMs?: number): Promise<{ ms: number }> {
    return this.#with(vm, (q) => q.detachDevice('ic', timeoutMs));
  }

  attachInterconnect(vm: string): Promise<{ ms: number }> {
    return this.#with(vm, (q) => q.attachNic('ic'));
  }

  async move(move: PreparedMove, options: MigrationOptionsInput, onProgress?: (p: MigrationProgress) => void, signal?: AbortSignal): Promise<MigrationResult> {
    const m = move as Prepared;
    const src = await this.#attach(m.vm);
    try {
      const { vm: dst, result } = await liveMigrate(src, m.dst, options, { log: this.#log, detached: true, ...(signal ? { signal } : {}), ...(onProgress ? { onProgress } : {}) });
      await this.#commit(m.vm, { slot: m.slot, pid: dst.pid, sshPort: m.sshPort });
      await dst.qmp.close().catch(() => undefined);
      return result;
    } finally {
      await src.qmp.close().catch(() => undefined);
    }
  }

  /** Record where a VM runs now (under the cluster's lock). */
  async #commit(vm: string, where: { slot: number; pid: number; sshPort: number }): Promise<void> {
    const dir = this.state().dir;
    const unlock = await lockClusterPatiently(dir, `move ${vm}`);
    try {
      const st = this.state();
      Object.assign(findVm(st, vm), where);
      writeState(st);
    } finally {
      unlock();
    }
  }

  async pause(vms: readonly string[]): Promise<void> {
    await Promise.all(vms.map((vm) => this.#with(vm, (q) => q.pause())));
  }

  async cont(vms: readonly string[]): Promise<void> {
    await Promise.all(vms.map((vm) => this.#with(vm, (q) => q.resume())));
  }

  async save(vms: readonly string[], dir: string): Promise<VmCheckpointManifest[]> {
    return Promise.all(vms.map((vm) => this.#with(vm, (q) => checkpointVm(q, dir, { log: this.#log, leaveStopped: true }))));
  }

  async restore(manifests: readonly { vm: string; path: string }[], places: Readonly<Record<string, string>> = {}): Promise<{ vm: string; to: string; restoreMs: number }[]> {
    const st = this.state();
    const taken = new Set(st.vms.filter((v) => !manifests.some((m) => m.vm === v.name) && v.pid > 0 && pidAlive(v.pid)).map((v) => v.slot));
    const free = Array.from({ length: st.slots }, (_, i) => i).filter((s) => !taken.has(s));
    const slots = new Map<string, number>();
    for (const m of manifests) {
      const want = places[m.vm];
      const slot = want !== undefined ? this.#slotOf(want, st) : free.find((s) => ![...slots.values()].includes(s) && !Object.values(places).some((p) => this.#slotOf(p, st) === s));
      if (slot === undefined || taken.has(slot) || [...slots.values()].includes(slot)) throw new ClusterError(`no free slot to restart ${m.vm} in (${this.cluster} has ${st.slots} slots)`);
      slots.set(m.vm, slot);
    }
    const started: QemuVm[] = [];
    try {
      const out = await Promise.all(
        manifests.map(async (m) => {
          const v = findVm(st, m.vm);
          const slot = slots.get(m.vm)!;
          const sshPort = await freePort();
          rmSync(slotPaths(st.dir, slot).console, { force: true });
          const target = specFor(st, v.index, slot, sshPort);
          const { vm, restoreMs } = await restoreVm(m.path, { log: this.#log, detached: true, resume: false, adapt: () => parseVmSpec(target) });
          started.push(vm);
          await this.#commit(m.vm, { slot, pid: vm.pid, sshPort });
          await vm.qmp.close().catch(() => undefined);
          return { vm: m.vm, to: `slot${slot}`, restoreMs };
        }),
      );
      return out;
    } catch (err) {
      await Promise.all(started.map((vm) => vm.kill().catch(() => undefined)));
      throw err;
    }
  }

  async kill(vms: readonly string[]): Promise<void> {
    const st = this.state();
    for (const name of vms) {
      const v = findVm(st, name);
      if (v.pid > 0 && pidAlive(v.pid)) {
        try {
          process.kill(v.pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        while (pidAlive(v.pid)) await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** Where a checkpoint of this job goes by default. */
  defaultCheckpointDir(job: string): string {
    return join(this.state().dir, 'checkpoints', job);
  }
}

/** The cluster lock, waiting a little for another short holder (status, another VM's commit). */
async function lockClusterPatiently(dir: string, what: string): Promise<() => void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return lockCluster(dir, what);
    } catch (err) {
      if (Date.now() > deadline || !(err instanceof ClusterError) || !/busy/.test(err.message)) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
