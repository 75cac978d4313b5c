/**
 * restart-on-failure: the pure decision (which failures touch which job,
 * spares, no checkpoint, the retry bound, one decision per fault) and the
 * plugin end to end through PluginDriver.
 */
import t from 'tap';
import type { FailureEvent, JobView } from '../../../src/index.js';
import { PluginDriver } from '../../../src/host/plugin-driver.js';
import restartOnFailure, { decideRestart, type RestartHistory, type RestartOptions } from '../../../plugins/policies/restart-on-failure.js';
import { failureAffectsJob } from '../../../plugins/policies/common.js';
import { captureLogger, host, job, RecordingActions, record, view } from './fixtures.js';

const NOW = 10_000_000;
const opts: RestartOptions = { maxRestarts: 3, windowMs: 3_600_000, dedupeWindowMs: 60_000, restartJobFailures: true };
const noHistory = new Map<string, RestartHistory>();

const checkpointed = (id: string, hosts: string[], over: Partial<JobView> = {}) =>
  job(id, hosts, { lastCheckpoint: { id: `${id}-ck7`, at: NOW - 600_000, durationMs: 2000 }, ...over });

const hosts = (downs: Record<string, 'down' | 'drained' | 'degraded'> = {}) => [
  host('n1', downs.n1),
  host('n2', downs.n2),
  host('s1', downs.s1, true),
  host('s2', downs.s2, true),
];

const fail = (kind: FailureEvent['kind'], over: Partial<FailureEvent> = {}): FailureEvent => ({ kind, message: `${kind} seen`, at: NOW - 1000, ...over });

t.test('which failures touch which job', async (t) => {
  const a = job('a', ['n1', 'n2']);
  t.ok(failureAffectsJob(fail('rank-dead', { job: 'a' }), a));
  t.notOk(failureAffectsJob(fail('rank-dead', { job: 'b', host: 'n1' }), a), 'another job named: not this one');
  t.ok(failureAffectsJob(fail('host-down', { host: 'n2' }), a), 'host with a VM of the job');
  t.ok(failureAffectsJob(fail('host-down', { host: 'n2', job: 'b' }), a), 'a host going down hits every job there');
  t.notOk(failureAffectsJob(fail('host-down', { host: 's1' }), a));
  t.ok(failureAffectsJob(fail('qemu-gone', { vm: 'a-vm1' }), a), 'by VM');
  t.notOk(failureAffectsJob(fail('qemu-gone', { vm: 'b-vm1', host: 'n1' }), a), 'another VM on the same host');
  t.ok(failureAffectsJob(fail('agent-lost', { host: 'n1' }), a), 'agent lost on a host of the job');
  t.notOk(failureAffectsJob(fail('agent-lost', {}), a), 'names nothing: touches nothing');
});

t.test('a job that failed by itself on healthy hosts is not restarted unless asked', async (t) => {
  const v = view([checkpointed('a', ['n1', 'n2'])], hosts(), NOW);
  for (const kind of ['rank-dead', 'job-aborted'] as const) {
    const d = decideRestart(fail(kind, { job: 'a' }), v, noHistory, { ...opts, restartJobFailures: false });
    t.match(d, { action: 'none', reason: /failed by itself on healthy hosts/ }, kind);
  }
  t.match(decideRestart(fail('qemu-gone', { job: 'a', vm: 'a-vm1' }), v, noHistory, { ...opts, restartJobFailures: false }), { action: 'restart' }, 'a VM failure is restarted');
  t.match(decideRestart(fail('job-aborted', { job: 'a' }), v, noHistory, opts), { action: 'restart' }, 'restartJobFailures: true restarts it');
});

t.test('restart from the last checkpoint, same hosts when they are fine', async (t) => {
  const d = decideRestart(fail('rank-dead', { job: 'a', host: 'n1' }), view([checkpointed('a', ['n1', 'n2'])], hosts(), NOW), noHistory, opts);
  t.match(d, { action: 'restart', job: 'a', checkpoint: 'a-ck7', hosts: ['n1', 'n2'] });
  t.match(d?.reason, /job a hit by rank-dead on host n1 \(rank-dead seen\): restarting from checkpoint a-ck7 taken 10\.0 min ago on the same hosts/);
});

t.test('VMs of down, drained or failed hosts go to free spares that are up', async (t) => {
  // the view still says n1 is up, but the failure says it went down
  let d = decideRestart(fail('host-down', { host: 'n1' }), view([checkpointed('a', ['n1', 'n2'])], hosts(), NOW), noHistory, opts);
  t.match(d, { action: 'restart', hosts: ['s1', 'n2'], reason: /moving n1 -> s1/ });
  d = decideRestart(fail('rank-dead', { job: 'a' }), view([checkpointed('a', ['n1', 'n2'])], hosts({ n1: 'down', n2: 'drained' }), NOW), noHistory, opts);
  t.match(d, { action: 'restart', hosts: ['s1', 's2'] });
  // a degraded spare is no target; a degraded host of the job stays (it is not down)
  d = decideRestart(fail('rank-dead', { job: 'a' }), view([checkpointed('a', ['n1', 'n2'])], hosts({ n1: 'down', n2: 'degraded', s1: 'degraded' }), NOW), noHistory, opts);
  t.match(d, { action: 'restart', hosts: ['s2', 'n2'] });
  // a host gone from the view counts as lost
  d = decideRestart(fail('rank-dead', { job: 'a' }), view([checkpointed('a', ['n1', 'gone'])], hosts(), NOW), noHistory, opts);
  t.match(d, { action: 'restart', hosts: ['n1', 's1'] });
});

t.test('not enough free spares: none, saying so', async (t) => {
  // s1 is taken by job b, s2 is down: nothing to replace n1 with
  const v = view([checkpointed('a', ['n1', 'n2']), job('b', ['s1'])], hosts({ n1: 'down', s2: 'down' }), NOW);
  const d = decideRestart(fail('rank-dead', { job: 'a' }), v, noHistory, opts);
  t.equal(d?.action, 'none');
  t.match(d?.reason, /no spare host up to replace n1 \(1 needed, 0 free\)/);
  // two hosts lost, one spare
  const d2 = decideRestart(fail('rank-dead', { job: 'a' }), view([checkpointed('a', ['n1', 'n2'])], hosts({ n1: 'down', n2: 'down', s2: 'down' }), NOW), noHistory, opts);
  t.match(d2, { action: 'none', reason: /no spare host up to replace n1, n2 \(2 needed, 1 free\)/ });
});

t.test('no checkpoint: none', async (t) => {
  const d = decideRestart(fail('job-aborted', { job: 'a' }), view([job('a', ['n1'])], hosts(), NOW), noHistory, opts);
  t.same(d, { action: 'none', reason: 'job a hit by job-aborted (job-aborted seen): no checkpoint to restart from' });
});

t.test('retry bound: maxRestarts within windowMs', async (t) => {
  const v = view([checkpointed('a', ['n1', 'n2'])], hosts(), NOW);
  const f = fail('rank-dead', { job: 'a' });
  const three = new Map([['a', { restarts: [NOW - 3_000_000, NOW - 2_000_000, NOW - 1_000_000], lastFailureAt: NOW - 1_000_000 }]]);
  const d = decideRestart(f, v, three, opts);
  t.match(d, { action: 'none', reason: /restarted 3 times in the last 60\.0 min \(limit 3\), not restarting it again/ });
  // the oldest has left the window: two in it, one more is allowed
  const old = new Map([['a', { restarts: [NOW - 3_600_000, NOW - 2_000_000, NOW - 1_000_000], lastFailureAt: NOW - 1_000_000 }]]);
  t.equal(decideRestart(f, v, old, opts)?.action, 'restart');
  t.equal(decideRestart(f, v, noHistory, { ...opts, maxRestarts: 0 })?.action, 'none', 'maxRestarts 0: never');
});

t.test('one decision per fault', async (t) => {
  const f = fail('qemu-gone', { vm: 'a-vm0', at: NOW - 1000 });
  // a restart under way
  let d = decideRestart(f, view([checkpointed('a', ['n1'], { state: 'restarting' })], hosts(), NOW), noHistory, opts);
  t.match(d, { action: 'none', reason: /a restart of the job is already under way/ });
  d = decideRestart(f, view([checkpointed('a', ['n1'], { state: 'operating', operation: { kind: 'restart', phase: 'boot' } })], hosts(), NOW), noHistory, opts);
  t.match(d, { action: 'none', reason: /already under way/ });
  // already decided for a failure 20 s before this one
  const decided = new Map([['a', { restarts: [NOW - 20_000], lastFailureAt: NOW - 21_000 }]]);
  d = decideRestart(f, view([checkpointed('a', ['n1'])], hosts(), NOW), decided, opts);
  t.match(d, { action: 'none', reason: /a restart was already decided for a failure 20\.0 s apart from this one \(same fault\)/ });
  // outside the window: a new fault
  const longAgo = new Map([['a', { restarts: [NOW - 200_000], lastFailureAt: NOW - 200_000 }]]);
  t.equal(decideRestart(f, view([checkpointed('a', ['n1'])], hosts(), NOW), longAgo, opts)?.action, 'restart');
  // inside the window but after the restart ended: a new fault
  const ended = new Map([['a', { restarts: [NOW - 20_000], lastFailureAt: NOW - 21_000, restartEndedAt: NOW - 5_000 }]]);
  t.equal(decideRestart(f, view([checkpointed('a', ['n1'])], hosts(), NOW), ended, opts)?.action, 'restart');
  // inside the window but after the job started again
  t.equal(decideRestart(f, view([checkpointed('a', ['n1'], { startedAt: NOW - 3000 })], hosts(), NOW), decided, opts)?.action, 'restart');
});

t.test('failures of no job, and of finished jobs, are not this policy\'s business', async (t) => {
  t.equal(decideRestart(fail('host-down', { host: 's1' }), view([checkpointed('a', ['n1'])], hosts(), NOW), noHistory, opts), null);
  t.equal(decideRestart(fail('rank-dead', { job: 'a' }), view([checkpointed('a', ['n1'], { state: 'finished' })], hosts(), NOW), noHistory, opts), null);
});

t.test('a host hosting two jobs: the job that needs a restart gets it', async (t) => {
  const v = view([checkpointed('a', ['n1'], { state: 'restarting' }), checkpointed('b', ['n1', 'n2'])], hosts(), NOW);
  t.match(decideRestart(fail('host-down', { host: 'n1' }), v, noHistory, opts), { action: 'restart', job: 'b', hosts: ['s1', 'n2'] });
});

t.test('end to end through PluginDriver', async (t) => {
  let now = NOW;
  let jobs = [checkpointed('a', ['n1', 'n2'])];
  let hostList = hosts();
  const actions = new RecordingActions(() => view(jobs, hostList, now));
  const { log, lines } = captureLogger();
  const driver = new PluginDriver({ log, hookTimeoutMs: 1000, actions });
  await driver.start([{ plugin: restartOnFailure, options: { maxRestarts: 2, windowMs: 3_600_000 } }]);
  const decide = (f: FailureEvent) => driver.hookFirst<{ action: string; hosts?: string[]; reason: string }>('decideOnFailure', f, actions.view());

  // one fault, four events: one restart
  hostList = hosts({ n1: 'down' });
  const at = now - 500;
  const first = await decide(fail('host-down', { host: 'n1', at }));
  t.match(first, { plugin: 'restart-on-failure', result: { action: 'restart', hosts: ['s1', 'n2'] } });
  for (const kind of ['agent-lost', 'rank-dead', 'job-aborted'] as const) {
    t.match(await decide(fail(kind, { job: 'a', host: 'n1', at: at + 200 })), { result: { action: 'none', reason: /same fault/ } }, kind);
  }
  t.ok(lines.some((l) => typeof l.msg === 'string' && l.msg.includes('restarting from checkpoint')), 'the decision is logged with its reason');

  // the restart ends; the job runs on s1, n2; a new fault 30 s later is a new fault
  await driver.hookParallel('operationFinished', record({ id: 'r1', job: 'a', kind: 'restart', startedAt: at + 1000, durationMs: 5000 }), actions.view());
  jobs = [checkpointed('a', ['s1', 'n2'])];
  now += 30_000;
  t.match(await decide(fail('qemu-gone', { job: 'a', vm: 'a-vm1', at: now - 100 })), { result: { action: 'restart', hosts: ['s1', 'n2'] } });

  // a third fault: over the bound of 2
  now += 600_000;
  t.match(await decide(fail('qmp-dead', { job: 'a', vm: 'a-vm1', at: now - 100 })), { result: { action: 'none', reason: /restarted 2 times .* \(limit 2\)/ } });
  t.equal(actions.requests.length, 0, 'decisions are returned, not requested');
  await driver.teardown();
});

t.test('options are validated', async (t) => {
  const driver = new PluginDriver({ log: captureLogger().log, hookTimeoutMs: 1000 });
  await t.rejects(driver.start([{ plugin: restartOnFailure, options: { maxRestarts: -1 } }]), { name: 'PluginLoadError', message: /option maxRestarts/ });
  await t.rejects(new PluginDriver({ log: captureLogger().log, hookTimeoutMs: 1000 }).start([{ plugin: restartOnFailure, options: { retries: 3 } }]), {
    name: 'PluginLoadError',
  });
});
