/**
 * migrate-on-health: migrate versus checkpoint versus nothing, exactly at the
 * thresholds (budget = lead time x safety factor; an estimate equal to the
 * budget fits), default lead times, measured values over options, no spare,
 * busy jobs, the drain follow-up, and the plugin through PluginDriver.
 *
 * The job has two 2 GB VMs on n1. With 1 GB/s and 125 MB/s dirtied per guest
 * (r = 1/4 for the pair), 300 ms downtime, 1 s overhead and 0.5 s switch-over:
 * pre-copy 4 + 1 + 0.25 + 1 = 6.25 s, hybrid 4 + 0.5 + 1 + 1 = 6.5 s,
 * post-copy 4 + 0.5 + 1 = 5.5 s (see migration-estimate.test.ts).
 */
import t from 'tap';
import { z } from 'zod';
import type { HealthEvent, JobView } from '../../../src/index.js';
import { PluginDriver } from '../../../src/host/plugin-driver.js';
import migrateOnHealth, {
  decideOnHealthEvent,
  drainHostDecision,
  leadTimeMs,
  migrationParams,
  type MigrateOnHealthOptions,
} from '../../../plugins/policies/migrate-on-health.js';
import { captureLogger, host, job, RecordingActions, view } from './fixtures.js';

const raw = {
  bandwidthBps: 1e9,
  dirtyRateBps: 1.25e8,
  downtimeLimitMs: 300,
  overheadMs: 1000,
  switchoverMs: 500,
  checkpointCostMs: 5000,
  safetyFactor: 0.5,
};
// the plugin's own schema fills in the rest, as the host would
const opts: MigrateOnHealthOptions = migrateOnHealth.configSchema.parse(raw);

const jobA = (over: Partial<JobView> = {}): JobView =>
  job('a', [], {
    vms: [
      { id: 'a-vm0', host: 'n1', memoryBytes: 2e9 },
      { id: 'a-vm1', host: 'n1', memoryBytes: 2e9 },
      { id: 'a-vm2', host: 'n2', memoryBytes: 2e9 },
    ],
    ...over,
  });
const cluster = (jobs: JobView[], spareState: 'up' | 'down' = 'up') => view(jobs, [host('n1'), host('n2'), host('s1', spareState, true)]);
const event = (over: Partial<HealthEvent> = {}): HealthEvent => ({
  monitor: 'edac',
  host: 'n1',
  component: 'memory mc0 csrow1',
  severity: 'warning',
  message: 'corrected errors rising',
  at: 0,
  ...over,
});

t.test('the model inputs: VMs on the host, link shared, measured values first', async (t) => {
  t.match(migrationParams(jobA(), 'n1', opts), { memoryBytes: 4e9, bandwidthBps: 1e9, dirtyRateBps: 2.5e8 });
  const measured = jobA({ measured: { checkpointMs: 100, restartMs: null, migrationBandwidthBps: 2e9, dirtyRateBps: 1e7 } });
  t.match(migrationParams(measured, 'n1', opts), { bandwidthBps: 2e9, dirtyRateBps: 2e7 });
  t.equal(leadTimeMs(event({ leadTimeMs: 42 }), opts), 42);
  t.equal(leadTimeMs(event({ severity: 'critical' }), opts), 120_000, 'default for critical');
  t.equal(leadTimeMs(event({ severity: 'warning' }), opts), 1_800_000, 'default for warning');
});

t.test('migrate: pre-copy exactly on the budget, post-copy 1 ms under it', async (t) => {
  const v = cluster([jobA()]);
  const d = decideOnHealthEvent(event({ leadTimeMs: 12_500 }), v, opts); // budget 6250 = pre-copy
  t.match(d, { action: 'migrate', job: 'a', vms: ['a-vm0', 'a-vm1'], mode: 'precopy' });
  t.match(
    d?.action === 'migrate' ? d.reason : '',
    /^host n1 memory mc0 csrow1: corrected errors rising; migrating 2 VMs of job a \(3\.7 GiB\): estimated 6\.3 s \(precopy, 2 pre-copy passes, at 1\.00 GB\/s with 250\.0 MB\/s dirtied; 6\.3 s usable \(lead time 12\.5 s x safety factor 0\.5\)\)$/,
  );
  // budget 6249.5: pre-copy (6250) and hybrid (6500) miss, post-copy (5500) fits
  t.match(decideOnHealthEvent(event({ leadTimeMs: 12_499 }), v, opts), { action: 'migrate', mode: 'postcopy' });
});

t.test('migrate versus checkpoint: post-copy exactly on the budget, checkpoint just under', async (t) => {
  const v = cluster([jobA()]);
  t.match(decideOnHealthEvent(event({ leadTimeMs: 11_000 }), v, opts), { action: 'migrate', mode: 'postcopy' }, 'budget 5500 = post-copy');
  const d = decideOnHealthEvent(event({ leadTimeMs: 10_999 }), v, opts); // budget 5499.5
  t.match(d, { action: 'checkpoint', job: 'a' });
  t.match(d?.reason, /migrating 2 VMs of job a \(3\.7 GiB\) would take at least 5\.5 s \(postcopy, .*\), more than the 5\.5 s usable \(lead time 11\.0 s x safety factor 0\.5\), so checkpointing \(about 5\.0 s\)/);
});

t.test('checkpoint versus nothing: the checkpoint exactly on the budget, then 1 ms short', async (t) => {
  const v = cluster([jobA()]);
  t.match(decideOnHealthEvent(event({ leadTimeMs: 10_000 }), v, opts), { action: 'checkpoint' }, 'budget 5000 = checkpoint cost');
  const d = decideOnHealthEvent(event({ leadTimeMs: 9_999 }), v, opts);
  t.match(d, { action: 'none', reason: /neither migrating 2 VMs of job a \(3\.7 GiB\) \(at least 5\.5 s\) nor a checkpoint \(about 5\.0 s\) fits in the 5\.0 s usable/ });
  // the job's measured checkpoint cost wins over the option
  const fast = jobA({ measured: { checkpointMs: 4999, restartMs: null, migrationBandwidthBps: null, dirtyRateBps: null } });
  t.match(decideOnHealthEvent(event({ leadTimeMs: 9_999 }), cluster([fast]), opts), { action: 'checkpoint' });
});

t.test('no spare host up: checkpoint, saying why', async (t) => {
  const d = decideOnHealthEvent(event({ leadTimeMs: 3_600_000 }), cluster([jobA()], 'down'), opts);
  t.match(d, { action: 'checkpoint', job: 'a', reason: /no spare host up to migrate 2 VMs of job a \(3\.7 GiB\) to, so checkpointing \(about 5\.0 s; 30\.0 min usable/ });
  t.match(decideOnHealthEvent(event({ leadTimeMs: 100 }), cluster([jobA()], 'down'), opts), { action: 'none', reason: /does not fit either/ });
});

t.test('severity, lead time defaults, busy jobs, nothing to do', async (t) => {
  const v = cluster([jobA()]);
  t.equal(decideOnHealthEvent(event({ severity: 'info' }), v, opts), null, 'below minSeverity');
  t.match(decideOnHealthEvent(event({ severity: 'info' }), v, { ...opts, minSeverity: 'info' }), { action: 'migrate' }, 'info allowed: 24 h default lead');
  t.match(decideOnHealthEvent(event({ severity: 'critical' }), v, opts), { action: 'migrate', mode: 'precopy', reason: /lead time 2\.0 min/ });
  t.equal(decideOnHealthEvent(event({ host: 'n3' }), v, opts), null, 'no job on the host and not critical: nothing');
  const busy = jobA({ state: 'operating', operation: { kind: 'migrate', phase: 'precopy' } });
  t.equal(decideOnHealthEvent(event(), cluster([busy]), opts), null, 'the job is already being migrated');
  // two jobs on the host: the idle one gets the decision
  const b = job('b', ['n1']);
  t.match(decideOnHealthEvent(event(), cluster([busy, b]), opts), { action: 'migrate', job: 'b', vms: ['b-vm0'] });
});

t.test('drain follow-up once the host is empty', async (t) => {
  const empty = cluster([jobA({ vms: [{ id: 'a-vm2', host: 'n2', memoryBytes: 2e9 }] })]);
  const crit = event({ severity: 'critical' });
  t.match(decideOnHealthEvent(crit, empty, opts), { action: 'drain-host', host: 'n1', reason: /no job VMs left on it, draining it/ });
  t.equal(decideOnHealthEvent(event({ severity: 'warning' }), empty, opts), null, 'warning: below drainMinSeverity');
  t.match(drainHostDecision(event({ severity: 'warning' }), empty, { drainMinSeverity: 'warning' }), { action: 'drain-host' });
  t.equal(drainHostDecision(crit, empty, { drainMinSeverity: 'never' }), null, 'never');
  t.equal(drainHostDecision(crit, view([], [host('n1', 'drained')]), opts), null, 'already drained');
  t.equal(drainHostDecision(crit, cluster([jobA()]), opts), null, 'still has VMs');
  t.equal(drainHostDecision(event({ host: 'nowhere', severity: 'critical' }), empty, opts), null, 'unknown host');
});

t.test('end to end through PluginDriver', async (t) => {
  const jobs = [jobA()];
  const actions = new RecordingActions(() => cluster(jobs));
  const { log, lines } = captureLogger();
  const driver = new PluginDriver({ log, hookTimeoutMs: 1000, actions });
  await driver.start([{ plugin: migrateOnHealth, options: raw }]);
  t.match(await driver.hookFirst('decideOnHealth', event({ leadTimeMs: 12_500 }), actions.view()), {
    plugin: 'migrate-on-health',
    result: { action: 'migrate', mode: 'precopy', vms: ['a-vm0', 'a-vm1'] },
  });
  t.match(await driver.hookFirst('decideOnHealth', event({ leadTimeMs: 10_999 }), actions.view()), { result: { action: 'checkpoint' } });
  t.equal(await driver.hookFirst('decideOnHealth', event({ severity: 'info' }), actions.view()), null);
  t.ok(lines.some((l) => l.plugin === 'migrate-on-health' && typeof l.msg === 'string' && /migrating 2 VMs/.test(l.msg)), 'decisions logged with reasons');
  t.equal(actions.requests.length, 0, 'decisions are returned, not requested');
  await driver.teardown();

  // defaults are sane and strict
  const defaults = migrateOnHealth.configSchema.parse({});
  t.match(defaults, { minSeverity: 'warning', safetyFactor: 0.5, drainMinSeverity: 'critical' });
  t.throws(() => migrateOnHealth.configSchema.parse({ safetyFactor: 2 }), z.ZodError);
  t.throws(() => migrateOnHealth.configSchema.parse({ leadTime: 1 }), z.ZodError);
});
