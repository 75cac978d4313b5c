/**
 * The error and rollback paths of the VM operations (src/controller/vm-operations.ts),
 * driven through a real Controller on a real Open MPI job: 4 ranks of
 * halo2d spread over two real NodeAgents (two control segments, one per
 * "VM", as in multi-node.test.ts), so every quiesce, freeze, resume and
 * frozen-interval check here is the real one.
 *
 * Stand-ins (and why they cannot be the real thing here):
 *  - the JobVmBackend (StandInVms): a migration that moves one VM and fails
 *    the other, an interconnect that cannot be plugged back, a restore that
 *    fails after the old VMs were killed, need QEMU VMs whose failures come
 *    on cue; the real backend (vcluster/job-vms.ts) is exercised with VMs in
 *    test/vcluster/, which this machine cannot run alongside other tests.
 *    It records every call so the tests can check what the rollback did.
 *  - the guest agent links (VmLink): there is no VM, so no virtio-serial
 *    port and no guest interface to restore; the link's quiesce side is the
 *    real NodeAgent, only `reattach` and the `network` call are recorded.
 *    For the failed frozen-interval check the link also reports one rank as
 *    having made an MPI call while frozen: that is exactly what the shim
 *    prevents, so no real rank can be made to do it (a rank killed while
 *    frozen does not count: a dead rank moved nothing, and the check says ok).
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller, OperationRefusedError } from '../../src/controller/controller.js';
import type { JobVmBackend, PreparedMove, BackendVm } from '../../src/controller/vm-backend.js';
import type { GuestAgentLink } from '../../src/controller/guest-agent-link.js';
import type { MigrationOptionsInput, MigrationProgress, MigrationResult } from '../../src/hypervisor/qemu/migration.js';
import type { VmCheckpointManifest } from '../../src/hypervisor/qemu/checkpoint.js';
import { NodeAgent } from '../../src/agent/node-agent.js';
import type { OperationSummary } from '../../src/controller/operation.js';
import { logger } from '../../src/log.js';
import { allRanksRunning, FrozenCheckNode, rankStates, twoNodeJob } from '../helpers/two-node-job.js';
import { waitFor } from '../helpers/wait.js';

const log = logger.child({ test: 'vm-operations-errors' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'silent';

const dir = mkdtempSync(join(tmpdir(), 'symbio-vmops-err-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// ---------------------------------------------------------------- the real job


// ---------------------------------------------------------------- stand-ins

/** Stand-in for GuestAgentLink (see the header): quiesce calls go to the real NodeAgent. */
class VmLink extends FrozenCheckNode {
  reattached = 0;
  readonly network: string[] = [];
  failNetwork: Error | null = null;
  reattach(): void {
    this.reattached++;
  }
  async request(call: string, body: Record<string, unknown> = {}): Promise<unknown> {
    if (call !== 'network') throw new Error(`stand-in link: no ${call}`);
    this.network.push(String(body.address));
    if (this.failNetwork) throw this.failNetwork;
    return { iface: 'ens4', ms: 1, repaired: false };
  }
}

/** Stand-in JobVmBackend (see the header): records each call; fails where a test says. */
class StandInVms implements JobVmBackend {
  readonly placeKind = 'slot';
  readonly vms: { id: string; host: string; memoryBytes: number; interconnect: { mac: string; address: string } }[] = [
    { id: 'vm0', host: 'slot0', memoryBytes: 64 << 20, interconnect: { mac: '52:54:00:00:00:10', address: '10.9.0.10/24' } },
    { id: 'vm1', host: 'slot1', memoryBytes: 64 << 20, interconnect: { mac: '52:54:00:00:00:11', address: '10.9.0.11/24' } },
  ];
  places = ['slot0', 'slot1', 'slot2', 'slot3', 'slot4'];
  readonly calls: string[] = [];
  readonly failMove = new Map<string, Error>();
  readonly failAttach = new Map<string, Error>();
  failRestore: Error | null = null;
  /** While set, a move waits for it (or for its abort signal). */
  gate: Promise<void> | null = null;
  release: () => void = () => undefined;
  closeGate(): () => void {
    this.gate = new Promise<void>((r) => (this.release = r));
    return () => this.release();
  }
  /** Called inside a move, while the ranks are frozen. */
  duringMove: ((vm: string) => void) | null = null;

  list(): BackendVm[] {
    return this.vms.map((v) => ({ ...v }));
  }
  freePlaces(): string[] {
    return this.places.filter((p) => !this.vms.some((v) => v.host === p));
  }
  async prepareMoves(vms: readonly string[], to: readonly string[] = []): Promise<PreparedMove[]> {
    const free = this.freePlaces();
    return vms.map((vm, i) => {
      const dest = to[i] ?? free[i]!;
      this.calls.push(`prepare ${vm}->${dest}`);
      return { vm, to: dest };
    });
  }
  async discardMoves(moves: readonly PreparedMove[]): Promise<void> {
    this.calls.push(`discard [${moves.map((m) => `${m.vm}->${m.to}`).join(',')}]`);
  }
  async detachInterconnect(vm: string): Promise<{ ms: number }> {
    this.calls.push(`detach ${vm}`);
    return { ms: 1 };
  }
  async attachInterconnect(vm: string): Promise<{ ms: number }> {
    this.calls.push(`attach ${vm}@${this.vms.find((v) => v.id === vm)!.host}`);
    const e = this.failAttach.get(vm);
    if (e) throw e;
    return { ms: 1 };
  }
  async move(m: PreparedMove, _o: MigrationOptionsInput, _p?: (p: MigrationProgress) => void, signal?: AbortSignal): Promise<MigrationResult> {
    this.calls.push(`move ${m.vm}->${m.to}`);
    this.duringMove?.(m.vm);
    if (this.gate) {
      await new Promise<void>((resolve, reject) => {
        signal?.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
        void this.gate!.then(resolve);
      });
    }
    const e = this.failMove.get(m.vm);
    if (e) throw e;
    this.vms.find((v) => v.id === m.vm)!.host = m.to;
    return { mode: 'precopy', status: 'completed', totalMs: 5, downtimeMs: 1, setupMs: 1, transferredBytes: 1000, totalBytes: 1000, passes: 1, postcopyStartedAtMs: null, postcopyTrigger: null, postcopyRequests: 0, samples: [], wallMs: 5 } satisfies MigrationResult;
  }
  async pause(vms: readonly string[]): Promise<void> {
    this.calls.push(`pause ${vms.join(',')}`);
  }
  async cont(vms: readonly string[]): Promise<void> {
    this.calls.push(`cont ${vms.join(',')}`);
  }
  /** Real files: a state file and a VM manifest that verifyJobCheckpoint accepts. */
  async save(vms: readonly string[], into: string): Promise<VmCheckpointManifest[]> {
    this.calls.push(`save ${vms.join(',')}`);
    return vms.map((vm) => {
      const data = randomBytes(4096);
      writeFileSync(join(into, `${vm}.vmstate`), data);
      const m = {
        format: 1, vm, createdAt: new Date().toISOString(), stateFile: `${vm}.vmstate`, stateBytes: data.length,
        sha256: createHash('sha256').update(data).digest('hex'), qemuVersion: '8.2.0', machineType: 'pc', memoryMiB: 64,
        wasRunning: true, saveMs: 1, spec: { name: vm, memoryMiB: 64, qmpSocket: join(into, `${vm}.qmp`) }, argv: ['qemu'],
      };
      writeFileSync(join(into, `${vm}.manifest.json`), JSON.stringify(m));
      return m as unknown as VmCheckpointManifest;
    });
  }
  async restore(manifests: readonly { vm: string; path: string }[], places: Readonly<Record<string, string>> = {}): Promise<{ vm: string; to: string; restoreMs: number }[]> {
    this.calls.push(`restore ${manifests.map((m) => `${m.vm}@${places[m.vm] ?? '?'}`).join(',')}`);
    if (this.failRestore) throw this.failRestore;
    return manifests.map((m) => ({ vm: m.vm, to: places[m.vm] ?? 'slot0', restoreMs: 1 }));
  }
  async kill(vms: readonly string[]): Promise<void> {
    this.calls.push(`kill ${vms.join(',')}`);
  }
}

// ---------------------------------------------------------------- a controller on the job

let seq = 0;
function vmJob(tt: { teardown(fn: () => unknown): void }, agents: NodeAgent[]) {
  const job = `vmerr-${process.pid}-${++seq}`;
  const controller = new Controller({ stateDir: join(dir, 'state'), whenBusy: 'queue', queueLimit: 4, quiesce: { timeoutMs: 20_000, stallMs: 3_000 }, log });
  controller.registerJob({ id: job, command: ['mpirun', 'halo2d'], np: 4 });
  const backend = new StandInVms();
  // a failed assertion must not leave a gated move waiting forever
  tt.teardown(() => (backend.release(), controller.close()));
  controller.addHosts(backend.places.map((p) => ({ name: p, spare: !backend.vms.some((v) => v.host === p) })));
  const links = new Map(agents.map((a) => [a.node, new VmLink(a)]));
  const checkpointDir = join(dir, 'checkpoints', job);
  mkdirSync(checkpointDir, { recursive: true });
  controller.attachVmJob(job, { backend, links: links as unknown as Map<string, GuestAgentLink>, checkpointDir, keep: 3 });
  const request = (kind: 'migrate' | 'checkpoint' | 'restart', params: Record<string, unknown> = {}) => controller.request({ job, kind, requestedBy: 'test', params });
  return { job, controller, backend, links, checkpointDir, request };
}

const detailOf = (rec: OperationSummary, phase: string): Record<string, unknown> | undefined => rec.timeline.find((p) => p.name === phase)?.detail;
const phases = (rec: OperationSummary): string[] => rec.timeline.map((p) => p.name);


// ---------------------------------------------------------------- tests

t.test('on one running job', async (t) => {
  // halo2d over two NodeAgents: "vm0" holds ranks 0-1, "vm1" ranks 2-3
  const { agents } = await twoNodeJob(t, { name: `vmerr-${process.pid}`, nodes: ['vm0', 'vm1'], log });
  const running = () => allRanksRunning(agents);

  t.test('a two-VM migration where vm0 moved and vm1 failed: vm0 stays moved, vm1 runs at its source, ranks resumed', async (t) => {
    const j = vmJob(t, agents);
    j.backend.failMove.set('vm1', new Error('migration of vm1 to slot3 failed: QEMU at the destination exited'));
    const rec = await j.request('migrate', { vms: ['vm0', 'vm1'] });
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'migrating');
    t.match(rec.error, /^migration of vm1 to slot3 failed: QEMU at the destination exited$/);
    t.equal(rec.phase, 'failed');
    t.same(phases(rec).slice(-2), ['migrating', 'rolling-back'], 'it went straight from migrating to rolling back');
    t.same(detailOf(rec, 'rolling-back')?.rolledBack, { moved: ['vm0'], atSource: ['vm1'], problems: [] });
    t.match(detailOf(rec, 'migrating'), { vms: [{ vm: 'vm0', to: 'slot2' }] }, 'the move that happened is on the timeline');
    // rollback: only vm1's unused destination is discarded; both interconnects are plugged where each VM runs now
    const rb = j.backend.calls.slice(j.backend.calls.indexOf('move vm1->slot3') + 1);
    t.same(rb, ['discard [vm1->slot3]', 'attach vm0@slot2', 'attach vm1@slot1']);
    t.equal(j.links.get('vm0')!.reattached, 1, 'vm0\'s link follows it to its new place');
    t.equal(j.links.get('vm1')!.reattached, 0, 'vm1 did not move: its link stays');
    t.same([j.links.get('vm0')!.network, j.links.get('vm1')!.network], [['10.9.0.10/24'], ['10.9.0.11/24']], 'both interfaces restored');
    t.match(detailOf(rec, 'rolling-back'), { frozenCheck: 'ok' }, 'the ranks were resumed, and the frozen interval held');
    t.ok(running(), `every rank runs again: ${rankStates(agents).join(' ')}`);
    const vms = j.controller.view().jobs.find((x) => x.id === j.job)!.vms;
    t.same(vms.map((v) => `${v.id}@${v.host}`), ['vm0@slot2', 'vm1@slot1'], 'the controller sees where the VMs are now');
  });

  t.test('a rollback that cannot plug an interconnect back or restore the network: says so, and still resumes the ranks', async (t) => {
    const j = vmJob(t, agents);
    j.backend.failMove.set('vm1', new Error('migration of vm1 failed'));
    j.backend.failAttach.set('vm1', new Error('device_add timed out'));
    j.links.get('vm1')!.failNetwork = new Error('no interface with MAC 52:54:00:00:00:11 within 10000 ms');
    const rec = await j.request('migrate', { vms: ['vm0', 'vm1'] });
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'migrating');
    t.equal(rec.error, 'migration of vm1 failed', 'the error is the first failure, not a rollback problem');
    t.same(detailOf(rec, 'rolling-back')?.rolledBack, {
      moved: ['vm0'],
      atSource: ['vm1'],
      problems: [
        'plugging vm1\'s interconnect back: device_add timed out',
        'restoring vm0, vm1\'s network: no interface with MAC 52:54:00:00:00:11 within 10000 ms',
      ],
    });
    t.ok(j.backend.calls.includes('attach vm0@slot2'), 'vm0\'s interconnect was still plugged back after vm1\'s failed');
    t.match(detailOf(rec, 'rolling-back'), { frozenCheck: 'ok' });
    t.ok(running(), `every rank runs again despite the problems: ${rankStates(agents).join(' ')}`);
  });

  t.test('retarget: refused when nothing migrates, when nothing goes there, when the place is taken, when no place is usable; the migration goes on unchanged', async (t) => {
    const j = vmJob(t, agents);
    await t.rejects(j.controller.retarget(j.job, 'slot2', 'slot3', 'test'), { name: 'OperationRefusedError', message: `job ${j.job} has no migration under way to retarget` }, 'idle job');
    const release = j.backend.closeGate();
    const op = j.request('migrate', { vms: ['vm0'], to: ['slot2'] });
    await waitFor(() => j.backend.calls.includes('move vm0->slot2'), 20_000, 'the move is under way');
    t.match(j.controller.view().jobs.find((x) => x.id === j.job)!.operation, { kind: 'migrate', phase: 'migrating', targets: { vm0: 'slot2' } });
    await t.rejects(j.controller.retarget(j.job, 'slot4', 'slot3', 'test'), { name: 'VmOperationError', message: `no VM of job ${j.job} is being moved to slot4` });
    await t.rejects(j.controller.retarget(j.job, 'slot2', 'slot2', 'test'), { name: 'VmOperationError', message: `slot2 is already the destination of a VM of job ${j.job}` });
    // no `to`: a usable free place is picked; none is usable when the others are down or drained
    j.controller.setHostState('slot3', 'down', 'test');
    j.controller.setHostState('slot4', 'drained', 'test');
    const refused = await j.controller.retarget(j.job, 'slot2', undefined, 'test').catch((e: unknown) => e);
    release();
    t.ok(refused instanceof OperationRefusedError, 'refused');
    t.equal((refused as Error | undefined)?.message, `no usable free slot to send ${j.job}'s VMs to instead of slot2`);
    const rec = await op;
    t.ok(rec.ok, `the migration went on: ${rec.error ?? ''}`);
    t.same((rec.result as { to: unknown }).to, { vm0: 'slot2' }, 'to where it was going; no refused retarget took effect');
    t.notOk(detailOf(rec, 'migrating')?.retargeted, 'nothing was retargeted');
    t.same(j.backend.calls.filter((c) => c.startsWith('move') || c.startsWith('discard') || c.startsWith('prepare')), ['prepare vm0->slot2', 'move vm0->slot2']);
  });

  t.test('retarget: a postcopy migration is not retargeted', async (t) => {
    const j = vmJob(t, agents);
    const release = j.backend.closeGate();
    const op = j.request('migrate', { vms: ['vm0'], to: ['slot2'], mode: 'postcopy' });
    await waitFor(() => j.backend.calls.includes('move vm0->slot2'), 20_000, 'the move is under way');
    await t.rejects(j.controller.retarget(j.job, 'slot2', 'slot3', 'test'), {
      name: 'VmOperationError',
      message: 'a postcopy migration cannot be cancelled safely once it has switched over; only precopy moves are retargeted',
    });
    release();
    const rec = await op;
    t.ok(rec.ok, rec.error ?? '');
    t.same((rec.result as { to: unknown }).to, { vm0: 'slot2' });
    t.equal(j.backend.calls.filter((c) => c.startsWith('move')).length, 1, 'the move was not cancelled and started again');
  });

  t.test('restart: no checkpoint yet, or another job\'s checkpoint: refused while verifying, before any VM is touched', async (t) => {
    const a = vmJob(t, agents);
    const none = await a.request('restart');
    t.equal(none.ok, false);
    t.equal(none.failedIn, 'verifying');
    t.equal(none.error, `job ${a.job} has no checkpoint in ${a.checkpointDir}`);
    t.same(phases(none), ['verifying']);
    t.same(a.backend.calls, [], 'no VM was killed or started');

    const ck = await a.request('checkpoint');
    t.ok(ck.ok, `a checkpoint of ${a.job}: ${ck.error ?? ''}`);
    const manifest = (ck.result as { manifest: string }).manifest;
    t.ok(existsSync(manifest));

    const b = vmJob(t, agents);
    const other = await b.request('restart', { manifest });
    t.equal(other.ok, false);
    t.equal(other.failedIn, 'verifying');
    t.equal(other.error, `${manifest} is a checkpoint of job ${a.job}, not ${b.job}`);
    t.same(b.backend.calls, [], 'job b\'s VMs were not killed');
  });

  t.test('restart: a restore that fails after the old VMs were killed fails in starting-vms and says the VMs may be stopped', async (t) => {
    const j = vmJob(t, agents);
    const ck = await j.request('checkpoint');
    t.ok(ck.ok, ck.error ?? '');
    j.backend.calls.length = 0;
    j.backend.failRestore = new Error('QEMU for vm1 on slot1 exited with code 1 while loading its state');
    const rec = await j.request('restart');
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'starting-vms');
    t.equal(rec.error, 'QEMU for vm1 on slot1 exited with code 1 while loading its state');
    t.same(phases(rec), ['verifying', 'starting-vms', 'rolling-back']);
    t.same(detailOf(rec, 'rolling-back')?.problems, ['the VMs of the job may be stopped; restart again from a checkpoint']);
    t.same(j.backend.calls, ['kill vm0,vm1', 'restore vm0@slot0,vm1@slot1'], 'killed first, then the failed restore; nothing continued');
    t.equal(j.links.get('vm0')!.reattached + j.links.get('vm1')!.reattached, 0, 'no link looked for VMs that did not start');
  });

  t.test('checkpoint whose save fails: no checkpoint directory is left, the VMs are continued, the ranks resumed', async (t) => {
    const j = vmJob(t, agents);
    j.backend.save = async () => {
      j.backend.calls.push('save');
      throw new Error('disk full while writing vm1.vmstate');
    };
    const rec = await j.request('checkpoint');
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'saving');
    t.equal(rec.error, 'disk full while writing vm1.vmstate');
    t.match(detailOf(rec, 'rolling-back'), { problems: [], resumeMs: Number, ranksResumedMs: Number, frozenCheck: 'ok' });
    t.same(j.backend.calls, ['pause vm0,vm1', 'save', 'cont vm0,vm1']);
    t.same(readdirSync(j.checkpointDir), [], 'the incomplete checkpoint is gone');
    t.ok(running(), `ranks run: ${rankStates(agents).join(' ')}`);
  });
});

t.test('frozen-interval check fails', async (t) => {
  const { agents } = await twoNodeJob(t, { name: `vmerr-fz-${process.pid}`, nodes: ['vm0', 'vm1'], log });
  const running = () => allRanksRunning(agents);

  t.test('in a migration: the operation fails in resuming with the check\'s reason; the VM stays moved, the ranks run', async (t) => {
    const j = vmJob(t, agents);
    j.backend.duringMove = () => void (j.links.get('vm1')!.moveWhileFrozen = true);
    const rec = await j.request('migrate', { vms: ['vm0'], to: ['slot2'] });
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'resuming');
    t.match(rec.error, /^frozen-interval check failed: rank 2 \(.*\) made 1 MPI calls while frozen$/);
    t.match(detailOf(rec, 'resuming'), { frozenCheck: /made 1 MPI calls while frozen/ }, 'the check\'s reason is on the timeline');
    t.ok(running(), `the ranks run: ${rankStates(agents).join(' ')}`);
    t.same(j.controller.view().jobs.find((x) => x.id === j.job)!.vms.map((v) => `${v.id}@${v.host}`), ['vm0@slot2', 'vm1@slot1']);
  });

  t.test('in a checkpoint: the checkpoint is not kept (its state may be inconsistent) and is not the job\'s last', async (t) => {
    const j = vmJob(t, agents);
    const save = j.backend.save.bind(j.backend);
    j.backend.save = async (vms, into) => {
      j.links.get('vm1')!.moveWhileFrozen = true;
      return save(vms, into);
    };
    const rec = await j.request('checkpoint');
    t.equal(rec.ok, false);
    t.equal(rec.failedIn, 'resuming');
    t.match(rec.error, /^frozen-interval check failed: .*made 1 MPI calls while frozen$/);
    t.same(readdirSync(j.checkpointDir), [], 'no checkpoint directory is left');
    t.equal(j.controller.view().jobs.find((x) => x.id === j.job)!.lastCheckpoint, null);
    t.ok(running(), `the ranks run: ${rankStates(agents).join(' ')}`);
  });
});
