/**
 * One fault, one action: the supervisor between failure signals and the
 * policies. A real Controller journals; the policies are a stand-in that
 * records what it was asked and answers as restart-on-failure would (the
 * policy itself is tested in test/plugins/policies, and the whole chain on
 * real VMs in test/vcluster/ft.test.ts). The VMs are a stand-in probe:
 * these are orderings of signals (a rank dying before its VM is seen dead)
 * that real VMs produce only by chance.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller } from '../../src/controller/controller.js';
import { VmJobSupervisor } from '../../src/controller/vm-job-supervisor.js';
import { readEvents } from '../../src/controller/journal.js';
import type { Decision, FailureEvent, OperationRecord } from '../../src/host/plugin-api.js';
import type { PluginHost } from '../../src/host/plugin-host.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'supervisor' });
log.level = 'silent';

const stateDir = mkdtempSync(join(tmpdir(), 'symbio-supervisor-'));
// the detector's timer does not keep a process alive (the launcher has its own reasons to live); a test needs one
const keepAlive = setInterval(() => undefined, 1000);
t.teardown(() => clearInterval(keepAlive));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

interface Setup {
  sup: VmJobSupervisor;
  asked: FailureEvent[];
  controller: Controller;
  dead: Set<number>;
  job: string;
}

let n = 0;
function setup(answer: (f: FailureEvent) => { decision: Decision | null; record: OperationRecord | null }, withPlugins = true): Setup {
  const job = `sup-${++n}`;
  const controller = new Controller({ stateDir, whenBusy: 'queue', queueLimit: 4, quiesce: { timeoutMs: 1000, stallMs: 500 }, log });
  controller.registerJob({ id: job, command: ['mpirun', 'x'], np: 2 });
  controller.addHosts([{ name: 'slot0', spare: false }, { name: 'slot1', spare: false }, { name: 'slot2', spare: true }]);
  const asked: FailureEvent[] = [];
  const plugins = {
    failure: async (f: FailureEvent) => {
      asked.push(f);
      await new Promise((r) => setTimeout(r, 300)); // an action takes a while; signals keep coming meanwhile
      const a = answer(f);
      // a restart brings the VMs back under new QEMUs
      if (a.record?.kind === 'restart' && a.record.ok) pids = pids.map((p) => p + 100);
      return { ...a, by: 'restart-on-failure' };
    },
  } as unknown as PluginHost;
  const dead = new Set<number>();
  let pids = [10, 11];
  const sup = new VmJobSupervisor({
    job,
    controller,
    plugins: withPlugins ? plugins : null,
    links: new Map([['vm0', { connected: true, lastHeartbeat: { receivedAt: Date.now() } }], ['vm1', { connected: true, lastHeartbeat: { receivedAt: Date.now() } }]]),
    probe: {
      vms: () => [{ id: 'vm0', host: 'slot0', pid: pids[0]! }, { id: 'vm1', host: 'slot1', pid: pids[1]! }],
      alive: (pid) => !dead.has(pid),
      qmpStatus: async () => 'running',
    },
    log,
    pollMs: 50,
    agentLostMs: 60_000,
    exitGraceMs: 600,
  });
  t.teardown(() => sup.stop());
  return { sup, asked, controller, dead, job };
}

const restarted = (job: string): { decision: Decision; record: OperationRecord } => ({
  decision: { action: 'restart', job, reason: 'r' },
  record: { id: 'op-r', job, kind: 'restart', ok: true, startedAt: Date.now(), durationMs: 10, phases: [], requestedBy: 'restart-on-failure', reason: 'r' },
});
const declined = { decision: { action: 'none', reason: 'the job failed by itself on healthy hosts' } as Decision, record: null };

t.test('a dead QEMU and the signals that follow it: one action, host down, later exits superseded', async (t) => {
  const s = setup((f) => restarted(f.job!));
  s.sup.start();
  const gen = s.sup.generation;
  s.dead.add(11);
  // while it is dealt with (the policy was asked, its action takes 300 ms), ranks in vm0 die and mpirun gives up: signals of the job's previous life
  for (const t0 = Date.now(); s.asked.length === 0 && Date.now() - t0 < 10_000; ) await new Promise((r) => setTimeout(r, 5));
  t.equal(s.asked.length, 1, 'the dead QEMU is being dealt with');
  void s.sup.report({ kind: 'rank-dead', job: s.job, vm: 'vm0', message: 'rank 0 exited without finalizing', at: Date.now() });
  const verdict = s.sup.settleExit(1, gen);
  t.equal(await verdict, 'superseded', 'the exit belongs to the life before the restart');
  t.equal(s.asked.length, 1, 'the policies were asked once');
  t.match(s.asked[0], { kind: 'qemu-gone', vm: 'vm1', host: 'slot1' });
  t.equal(s.controller.hostState('slot1'), 'down');
  t.ok(s.sup.generation > gen);
  const evs = readEvents(stateDir, s.job, { types: ['failure', 'host-state'] });
  t.ok(evs.some((e) => e.type === 'failure' && e.kind === 'rank-dead' && e.sameFaultAs === 'qemu-gone' && e.acted === false), 'the rank death is journaled as part of the fault');
  t.ok(evs.some((e) => e.type === 'host-state' && e.host === 'slot1' && e.state === 'down'));
});

t.test('a rank that dies first: the VM death seen within the grace is what is acted on', async (t) => {
  const s = setup((f) => restarted(f.job!));
  s.sup.start();
  const outcome = s.sup.report({ kind: 'rank-dead', job: s.job, vm: 'vm1', message: 'rank 3 exited without finalizing', at: Date.now() });
  await new Promise((r) => setTimeout(r, 150));
  s.dead.add(11);
  t.match(await outcome, { kind: 'recovered' });
  t.equal(s.asked.length, 1);
  t.match(s.asked[0], { kind: 'qemu-gone', vm: 'vm1' }, 'a machine fault, not a job failure');
});

t.test('a job failure on healthy VMs: the exit code stands', async (t) => {
  const s = setup(() => declined);
  s.sup.start();
  const t0 = Date.now();
  t.equal(await s.sup.settleExit(3, s.sup.generation), 'final');
  t.ok(Date.now() - t0 >= 500, 'it waited for a machine fault to show first');
  t.match(s.asked, [{ kind: 'job-aborted', message: /mpirun exited with code 3/ }]);
  t.equal(await s.sup.settleExit(0, s.sup.generation), 'final', 'a clean exit is final at once');
});

t.test('nothing configured to act: the job is lost, and the reason says what to configure', async (t) => {
  const s = setup(() => declined, false);
  s.sup.start();
  s.dead.add(10);
  const lost = await s.sup.lost;
  t.match(lost, { kind: 'lost', reason: /vm0's QEMU \(pid 10\) on slot0 is gone; no policy is configured to act on failures \(add symbio\/plugins\/policies\/restart-on-failure/ });
});

t.test('a restart that fails loses the job, with the policy\'s error', async (t) => {
  const s = setup((f) => ({ decision: { action: 'restart', job: f.job!, reason: 'r' }, record: { ...restarted(f.job!).record, ok: false, error: 'no free slot to restart vm1 in' } }));
  s.sup.start();
  s.dead.add(11);
  t.match(await s.sup.lost, { reason: /restart by restart-on-failure failed: no free slot to restart vm1 in/ });
});
