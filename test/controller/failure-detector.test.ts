/**
 * Edge cases of failure detection that real VMs cannot be made to produce
 * on cue: heartbeats that stop and start again (flapping), a silence that
 * lasts exactly the limit, a QEMU that dies while an operation (which
 * replaces QEMUs itself) is running, a QMP monitor that hangs. The probe
 * and the links here are stand-ins driven by a test clock, and the test
 * says so; the real path (a QEMU SIGKILLed under a running job) is in
 * test/vcluster/ft.test.ts.
 */
import t from 'tap';
import { FailureDetector, type WatchedVm } from '../../src/controller/failure-detector.js';
import type { FailureEvent } from '../../src/host/plugin-api.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'failure-detector' });
log.level = 'silent';

interface Fixture {
  vms: WatchedVm[];
  dead: Set<number>;
  qmp: Map<string, string | Error>;
  links: Map<string, { connected: boolean; lastHeartbeat: { receivedAt: number } | null }>;
  busy: boolean;
  now: number;
  failures: FailureEvent[];
  qmpCalls: number;
  detector: FailureDetector;
}

function fixture(agentLostMs = 5_000): Fixture {
  const f = {
    vms: [
      { id: 'vm0', host: 'slot0', pid: 100 },
      { id: 'vm1', host: 'slot1', pid: 101 },
    ],
    dead: new Set<number>(),
    qmp: new Map<string, string | Error>([['vm0', 'running'], ['vm1', 'running']]),
    links: new Map([
      ['vm0', { connected: true, lastHeartbeat: { receivedAt: 0 } }],
      ['vm1', { connected: true, lastHeartbeat: { receivedAt: 0 } }],
    ]),
    busy: false,
    now: 0,
    failures: [] as FailureEvent[],
    qmpCalls: 0,
  } as Omit<Fixture, 'detector'> as Fixture;
  f.detector = new FailureDetector({
    job: 'j',
    probe: {
      vms: () => f.vms,
      alive: (pid) => !f.dead.has(pid),
      qmpStatus: async (vm) => {
        f.qmpCalls++;
        const s = f.qmp.get(vm);
        if (s instanceof Error) throw s;
        return s ?? 'running';
      },
    },
    links: f.links,
    busy: () => f.busy,
    onFailure: (e) => f.failures.push(e),
    log,
    agentLostMs,
    now: () => f.now,
  });
  return f;
}

/** Advance the clock by `ms` in steps of `step`, beating the given VMs' heartbeats, looking each step. */
async function run(f: Fixture, ms: number, beating: string[], step = 250): Promise<void> {
  const end = f.now + ms;
  while (f.now < end) {
    f.now += step;
    for (const vm of beating) f.links.get(vm)!.lastHeartbeat = { receivedAt: f.now };
    await f.detector.tick();
  }
}

t.test('all well: nothing reported, QMP never asked', async (t) => {
  const f = fixture();
  await run(f, 60_000, ['vm0', 'vm1']);
  t.same(f.failures, []);
  t.equal(f.qmpCalls, 0, 'a healthy job costs no QMP traffic');
});

t.test('a dead QEMU is reported once, at the next look, with its host', async (t) => {
  const f = fixture();
  await run(f, 1_000, ['vm0', 'vm1']);
  f.dead.add(101);
  await run(f, 250, ['vm0']);
  t.match(f.failures, [{ kind: 'qemu-gone', job: 'j', vm: 'vm1', host: 'slot1', message: /vm1's QEMU \(pid 101\) on slot1 is gone/ }]);
  await run(f, 30_000, ['vm0']);
  t.equal(f.failures.length, 1, 'still dead: not reported again');
  // restarted elsewhere (another pid), its agent heard: back, and a new death is a new incident
  f.vms = [f.vms[0]!, { id: 'vm1', host: 'slot3', pid: 201 }];
  await run(f, 500, ['vm0', 'vm1']);
  t.equal(f.detector.failed.size, 0, 'the incident closed when vm1 came back');
  f.dead.add(201);
  await run(f, 250, ['vm0']);
  t.equal(f.failures.length, 2);
  t.match(f.failures[1], { kind: 'qemu-gone', host: 'slot3' });
});

t.test('flapping heartbeats: gaps shorter than the limit are never a failure', async (t) => {
  const f = fixture(5_000);
  for (let i = 0; i < 10; i++) {
    await run(f, 2_000, ['vm0', 'vm1']);
    // vm1 silent for 4.75 s (the link even drops), then heard again
    f.links.get('vm1')!.connected = false;
    await run(f, 4_750, ['vm0']);
    f.links.get('vm1')!.connected = true;
  }
  t.same(f.failures, [], 'no failure from a flapping agent');
  t.equal(f.qmpCalls, 0, 'and QEMU was never even asked');
});

t.test('a silent agent: QEMU is asked; running means the guest is lost, paused means someone stopped it', async (t) => {
  const f = fixture(5_000);
  await run(f, 1_000, ['vm0', 'vm1']);
  f.qmp.set('vm1', 'paused');
  await run(f, 8_000, ['vm0']);
  t.same(f.failures, [], 'a paused VM is silent on purpose');
  t.ok(f.qmpCalls >= 1, 'QEMU was asked');
  f.qmp.set('vm1', 'running');
  await run(f, 6_000, ['vm0']);
  t.match(f.failures, [{ kind: 'agent-lost', vm: 'vm1', message: /silent for \d+ ms while its QEMU on slot1 says 'running'/ }]);
});

t.test('a QMP monitor that does not answer while QEMU runs is a dead hypervisor', async (t) => {
  const f = fixture(5_000);
  f.qmp.set('vm0', new Error('no answer within 3000 ms'));
  await run(f, 6_000, ['vm1']);
  t.match(f.failures, [{ kind: 'qmp-dead', vm: 'vm0', host: 'slot0', message: /QMP monitor does not answer \(no answer within 3000 ms\)/ }]);
});

t.test('a QEMU that dies during an operation is judged after it, once', async (t) => {
  const f = fixture(5_000);
  await run(f, 1_000, ['vm0', 'vm1']);
  f.busy = true;
  // the operation itself stops VMs and replaces QEMUs: silence and dead pids prove nothing now
  f.dead.add(101);
  await run(f, 20_000, []);
  t.same(f.failures, [], 'nothing judged while the operation runs');
  f.busy = false;
  await run(f, 250, ['vm0']);
  t.match(f.failures, [{ kind: 'qemu-gone', vm: 'vm1' }], 'the dead QEMU, right after the operation');
  await run(f, 4_500, ['vm0']);
  t.equal(f.failures.length, 1, 'and vm0, whose silence during the operation was expected, is not lost');
});

t.test('an operation that moved a VM: the new QEMU is watched, the old pid is not missed', async (t) => {
  const f = fixture(5_000);
  await run(f, 1_000, ['vm0', 'vm1']);
  f.busy = true;
  f.dead.add(101); // the source QEMU ends after a migration
  f.vms = [f.vms[0]!, { id: 'vm1', host: 'slot2', pid: 301 }];
  await run(f, 3_000, ['vm0']);
  f.busy = false;
  await run(f, 10_000, ['vm0', 'vm1']);
  t.same(f.failures, []);
});

t.test('the silence clock starts again after an operation: an agent silent through it gets the full limit afterwards', async (t) => {
  const f = fixture(5_000);
  await run(f, 1_000, ['vm0', 'vm1']);
  f.busy = true;
  // a checkpoint or restart: the guests are stopped, no heartbeat for 20 s
  await run(f, 20_000, []);
  f.busy = false;
  // the agents take a moment to be heard again; less than the limit is no failure
  await run(f, 4_750, []);
  t.same(f.failures, [], 'silence during the operation does not count against the agents');
  t.equal(f.qmpCalls, 0, 'QEMU was not even asked');
  // still silent past the limit after the operation: now it is a lost guest
  await run(f, 500, []);
  t.match(f.failures, [{ kind: 'agent-lost', vm: 'vm0' }, { kind: 'agent-lost', vm: 'vm1' }]);
});
