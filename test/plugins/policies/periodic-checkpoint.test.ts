/**
 * periodic-checkpoint: the pure scheduling decision, the cost of a record,
 * and the plugin end to end through PluginDriver with a recording controller
 * on intervals of tens of ms: requests at the computed interval, never two at
 * once, only for the selected and running jobs, backing off after a failed
 * checkpoint, learning costs and failures, nothing after teardown.
 */
import t from 'tap';
import type { ClusterView, JobView, OperationRecord } from '../../../src/index.js';
import { PluginDriver } from '../../../src/host/plugin-driver.js';
import periodicCheckpoint, { checkpointCostOf, checkpointDue } from '../../../plugins/policies/periodic-checkpoint.js';
import { dalyIntervalMs } from '../../../plugins/policies/young-daly.js';
import { captureLogger, job, near, RecordingActions, record, sleep, view, waitFor } from './fixtures.js';

t.test('checkpointDue: interval after the latest known checkpoint, only when running and idle', async (t) => {
  const j = job('a', ['n1'], { startedAt: 1000 });
  t.same(checkpointDue(j, 500, 1200), { due: false, inMs: 300, dueAt: 1500, blocked: null }, 'from the job start');
  t.same(checkpointDue(j, 500, 1500), { due: true, inMs: 0, dueAt: 1500, blocked: null }, 'exactly due');
  t.same(checkpointDue(j, 500, 9000), { due: true, inMs: 0, dueAt: 1500, blocked: null }, 'overdue');
  const ck = job('a', ['n1'], { startedAt: 1000, lastCheckpoint: { id: 'c1', at: 2000, durationMs: 10 } });
  t.equal(checkpointDue(ck, 500, 2200).dueAt, 2500, 'from the last checkpoint in the view');
  t.equal(checkpointDue(ck, 500, 2200, { lastCheckpointAt: 2100 }).dueAt, 2600, 'from a later checkpoint the plugin saw end');
  t.equal(checkpointDue(ck, 500, 2200, { lastCheckpointAt: 1500 }).dueAt, 2500, 'an older one does not count');
  t.same(checkpointDue(ck, 500, 2600, { notBefore: 3000 }), { due: false, inMs: 400, dueAt: 3000, blocked: null }, 'backing off');
  const busy = job('a', ['n1'], { startedAt: 0, state: 'operating', operation: { kind: 'checkpoint', phase: 'snapshot' } });
  t.same(checkpointDue(busy, 500, 9000), { due: false, inMs: 0, dueAt: 500, blocked: 'job is operating' });
  const migrating = job('a', ['n1'], { startedAt: 0, operation: { kind: 'migrate', phase: 'precopy' } });
  t.same(checkpointDue(migrating, 500, 9000).blocked, 'a migrate is under way');
  t.same(checkpointDue(job('a', ['n1'], { state: 'starting' }), 500, 9000).blocked, 'job is starting');
});

t.test('checkpointCostOf: duration, else the phases', async (t) => {
  const base = { id: 'x', job: 'a', kind: 'checkpoint' as const };
  t.equal(checkpointCostOf(record({ ...base, durationMs: 1234, phases: [{ name: 'quiesce', ms: 5 }] })), 1234);
  t.equal(checkpointCostOf(record({ ...base, durationMs: 0, phases: [{ name: 'quiesce', ms: 100 }, { name: 'snapshot', ms: 400 }] })), 500);
  t.equal(checkpointCostOf(record({ ...base, durationMs: 0, phases: [] })), null);
});

/** A controller whose job list the test edits; checkpoints take 1 ms (reported as exactly 1) and update the view. */
function controller(jobs: JobView[]) {
  const state = { jobs };
  const actions = new RecordingActions((): ClusterView => view(state.jobs, [], Date.now()));
  actions.handler = async (d) => {
    const startedAt = Date.now();
    await sleep(1);
    if (d.action !== 'checkpoint') throw new Error(`unexpected ${d.action}`);
    const id = `ck-${actions.requests.length}`;
    state.jobs = state.jobs.map((j) => (j.id === d.job ? { ...j, lastCheckpoint: { id, at: startedAt + 1, durationMs: 1 } } : j));
    return record({ id, job: d.job, kind: 'checkpoint', startedAt, durationMs: 1, requestedBy: 'periodic-checkpoint' });
  };
  return { state, actions };
}

t.test('requests checkpoints at the computed interval, for the selected running jobs, and stops at teardown', async (t) => {
  const t0 = Date.now();
  const { state, actions } = controller([
    job('a', ['n1'], { startedAt: t0 }),
    job('b', ['n2'], { startedAt: t0 }), // not selected
    job('c', ['n3'], { startedAt: t0, state: 'starting' }), // selected, not running yet
  ]);
  const { log, lines } = captureLogger();
  const driver = new PluginDriver({ log, hookTimeoutMs: 1000, actions });
  // C = 1 ms, M = 800 ms (held still by a heavy prior): Daly 40 (1 + sqrt(1/1600)/3 + 1/14400) - 1 = 39.34 ms
  const T = dalyIntervalMs(1, 800);
  near(t, T, 39.336, 0.001, 'the interval by hand');
  await driver.start([
    {
      plugin: periodicCheckpoint,
      options: { mtbfMs: 800, mtbfPriorWeight: 1e12, initialCheckpointCostMs: 1, formula: 'daly', minIntervalMs: 1, maxIntervalMs: 60_000, jobs: ['a', 'c'], recheckMs: 10 },
    },
  ]);
  const asked = (id: string) => actions.requests.filter((r) => r.decision.action === 'checkpoint' && r.decision.job === id);
  // a runs: wait for several of its checkpoints (the state, not a guessed time)
  await waitFor(() => asked('a').length >= 5, 30_000, '5 checkpoints of job a');
  t.equal(asked('c').length, 0, 'job c not asked while it is starting');
  // c starts running: its clock runs from its start, so it is overdue and asked for at the next re-scan
  const ranAt = Date.now();
  state.jobs = state.jobs.map((j) => (j.id === 'c' ? { ...j, state: 'running' } : j));
  await waitFor(() => asked('c').length >= 1, 30_000, 'a checkpoint of job c');
  await driver.teardown();
  const stoppedAt = actions.requests.length;

  const forA = asked('a');
  const forC = asked('c');
  t.notOk(actions.requests.some((r) => r.decision.action === 'checkpoint' && r.decision.job === 'b'), 'job b is not selected');
  t.ok((forC[0]?.at ?? 0) >= ranAt, 'job c not before it ran');
  // first one T after the start; then T after the end of the previous one (which took 1 ms)
  t.ok((forA[0]?.at ?? 0) - t0 >= Math.floor(T), `first after ${(forA[0]?.at ?? 0) - t0} ms`);
  const gaps = forA.slice(1).map((r, i) => r.at - forA[i]!.at);
  // timers never fire early; a loaded 2-core machine makes some late, so the
  // upper bound is on the median, and loose: it catches a doubled interval
  t.ok(Math.min(...gaps) >= Math.floor(T + 1), `gaps ${gaps.join(', ')} ms: none shorter than the interval ${T.toFixed(1)} ms + 1 ms checkpoint`);
  const median = [...gaps].sort((x, y) => x - y)[Math.floor(gaps.length / 2)]!;
  t.ok(median < 2 * (T + 1), `median gap ${median} ms: less than twice the interval`);
  t.equal(actions.peakInFlightPerJob, 1, 'never two at once for a job');
  t.match(forA[0]?.decision, { action: 'checkpoint', job: 'a', reason: /^periodic checkpoint every 39 ms \(daly interval for checkpoint cost 1 ms and MTBF 800 ms\)$/ });

  const chosen = lines.find((l) => l.job === 'a' && l.T !== undefined);
  t.match(chosen, { level: 30, plugin: 'periodic-checkpoint', C: 1, formula: 'daly', clamped: null });
  near(t, Number(chosen?.M), 800, 0.01, 'M logged');
  near(t, Number(chosen?.T), T, 0.01, 'T logged');
  t.match(chosen?.msg, /job a: checkpoint every 39 ms \(daly, C=1 ms configured, M=800 ms with 0 failure\(s\) seen\)/);

  await sleep(150);
  t.equal(actions.requests.length, stoppedAt, 'no request after teardown');
});

t.test('never two at once, and the interval follows the measured cost', async (t) => {
  const t0 = Date.now();
  const { actions } = controller([job('a', ['n1'], { startedAt: t0 })]);
  // each checkpoint takes (and reports) 100 ms: longer than the first interval
  actions.handler = async (d) => {
    const startedAt = Date.now();
    await sleep(100);
    return record({ id: `ck-${actions.requests.length}`, job: d.action === 'checkpoint' ? d.job : '', kind: 'checkpoint', startedAt, durationMs: 100 });
  };
  const { log, lines } = captureLogger();
  const driver = new PluginDriver({ log, hookTimeoutMs: 1000, actions });
  await driver.start([
    { plugin: periodicCheckpoint, options: { mtbfMs: 800, mtbfPriorWeight: 1e12, initialCheckpointCostMs: 1, minIntervalMs: 1, maxIntervalMs: 60_000, recheckMs: 5 } },
  ]);
  // the record of our own request also reaches operationFinished: it must not count twice
  await waitFor(() => actions.requests.length > 0, 30_000, 'the first request');
  const first: OperationRecord = record({ id: 'ck-1', job: 'a', kind: 'checkpoint', startedAt: Date.now(), durationMs: 100 });
  await waitFor(() => actions.inFlight === 0, 30_000, 'the first checkpoint to end');
  await driver.hookParallel('operationFinished', first, actions.view());
  // C = 100 ms now: Daly sqrt(160000) (1 + 0.25/3 + 1/144) - 100 = 336.1 ms
  const T2 = dalyIntervalMs(100, 800);
  near(t, T2, 336.11, 0.01, 'the new interval by hand');
  await waitFor(() => actions.requests.length >= 2 && actions.inFlight === 0, 30_000, 'the second checkpoint');
  await driver.teardown();
  t.equal(actions.peakInFlightPerJob, 1, 'never two at once, though re-scans ran every 5 ms');
  const gap = (actions.requests[1]?.at ?? 0) - (actions.requests[0]?.at ?? 0);
  t.ok(gap >= 100 + Math.floor(T2), `second request ${gap} ms after the first: 100 ms checkpoint + ${T2.toFixed(0)} ms`);
  const logged = lines.filter((l) => l.job === 'a' && l.T !== undefined).map((l) => l.C);
  t.same(logged, [1, 100], 'interval logged at C = 1, then again at C = 100 (the duplicate record did not move it)');
});

t.test('a failed checkpoint backs off; failures and measured costs update the interval; decideOnFailure returns null', async (t) => {
  const t0 = Date.now();
  const { actions } = controller([job('a', ['n1'], { startedAt: t0 }), job('b', ['n2'], { startedAt: t0 })]);
  let calls = 0;
  actions.handler = async () => {
    calls++;
    throw new Error('storage full');
  };
  const { log, lines } = captureLogger();
  const driver = new PluginDriver({ log, hookTimeoutMs: 1000, actions });
  await driver.start([
    {
      plugin: periodicCheckpoint,
      options: { mtbfMs: 800, mtbfPriorWeight: 1e12, initialCheckpointCostMs: 1, minIntervalMs: 1, maxIntervalMs: 60_000, jobs: ['a'], recheckMs: 5, retryAfterFailureMs: 150 },
    },
  ]);
  await waitFor(() => calls >= 2, 30_000, 'a second try');
  await driver.teardown();
  const tries = actions.requests.map((r) => r.at);
  t.equal(calls, 2, 'one try at ~39 ms, the next 150 ms later');
  t.ok((tries[1] ?? 0) - (tries[0] ?? 0) >= 150, `retried after ${(tries[1] ?? 0) - (tries[0] ?? 0)} ms`);
  t.ok(lines.some((l) => l.level === 40 && typeof l.msg === 'string' && /not done \(storage full\)/.test(l.msg)), 'the failure is logged');

  // learning, with intervals too long to fire: C = 60 s, M = 10^9 ms
  const { log: log2, lines: lines2 } = captureLogger();
  const d2 = new PluginDriver({ log: log2, hookTimeoutMs: 1000, actions });
  await d2.start([{ plugin: periodicCheckpoint, options: { mtbfMs: 1e9, initialCheckpointCostMs: 60_000, minIntervalMs: 1, maxIntervalMs: 1e12, failureMergeWindowMs: 60_000 } }]);
  const intervals = () => lines2.filter((l) => l.job === 'a' && l.T !== undefined) as Array<{ T: number; C: number; M: number; failures: number }>;
  await waitFor(() => intervals().length > 0, 30_000, 'the interval of job a');
  near(t, intervals()[0]?.T ?? 0, dalyIntervalMs(60_000, 1e9), 1000, 'initial interval from the configured C and M');

  const now = Date.now();
  const failure = { kind: 'host-down', host: 'n1', message: 'n1 stopped answering', at: now };
  t.equal(await d2.hookFirst('decideOnFailure', failure, actions.view()), null, 'only observes');
  t.equal(await d2.hookFirst('decideOnFailure', { kind: 'rank-dead', job: 'a', message: 'rank 3 died', at: now + 1000 }, actions.view()), null);
  let last = intervals().at(-1);
  t.equal(last?.failures, 1, 'the rank death is the same fault as the host going down');
  near(t, last?.M ?? 0, 5e8, 1e5, 'M = (10^9 + ~0) / 2');
  near(t, last?.T ?? 0, dalyIntervalMs(60_000, 5e8), 1000, 'T follows M');
  t.ok(lines2.some((l) => typeof l.msg === 'string' && /job a: failure counted \(host-down\); MTBF now/.test(l.msg)));

  // an operator's checkpoint measured at 15 s: the first measurement replaces the guess
  const op = record({ id: 'op-7', job: 'a', kind: 'checkpoint', durationMs: 15_000, requestedBy: 'operator' });
  await d2.hookParallel('operationFinished', op, actions.view());
  await d2.hookParallel('operationFinished', op, actions.view());
  await d2.hookParallel('operationFinished', record({ id: 'op-8', job: 'a', kind: 'checkpoint', ok: false, durationMs: 1 }), actions.view());
  last = intervals().at(-1);
  t.equal(last?.C, 15_000, 'C measured (once; the failed one ignored)');
  near(t, last?.T ?? 0, dalyIntervalMs(15_000, 5e8), 1000, 'T follows C');
  await d2.teardown();
  t.equal(calls, 2, 'the second plugin never asked (intervals of hours)');
});

t.test('options: defaults, strictness, min <= max', async (t) => {
  const defaults = periodicCheckpoint.configSchema.parse({});
  t.same(defaults, {
    mtbfMs: 86_400_000,
    formula: 'daly',
    initialCheckpointCostMs: 60_000,
    minIntervalMs: 60_000,
    maxIntervalMs: 86_400_000,
    mtbfPriorWeight: 1,
    failureMergeWindowMs: 60_000,
    costSmoothing: 0.3,
    recheckMs: 30_000,
    retryAfterFailureMs: 60_000,
  });
  const log = captureLogger().log;
  await t.rejects(new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: periodicCheckpoint, options: { minIntervalMs: 10, maxIntervalMs: 5 } }]), {
    name: 'PluginLoadError',
    message: /option minIntervalMs: minIntervalMs must not exceed maxIntervalMs/,
  });
  await t.rejects(new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: periodicCheckpoint, options: { formula: 'guess' } }]), { message: /option formula/ });
  await t.rejects(new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: periodicCheckpoint, options: { interval: 5 } }]), { name: 'PluginLoadError' });
});
