/**
 * Policy 'migrate-on-health': when a health monitor predicts that a host will
 * fail, move the jobs' VMs off it if a live migration fits in the time left,
 * else take a checkpoint if that fits, so a failure costs as little work as
 * possible.
 *
 * Time left is the event's predicted lead time (or a default per severity)
 * times `safetyFactor` (< 1: predictions are rough, and the action must end
 * before the failure, not at it). The migration estimate comes from
 * migration-estimate.ts with the job's measured bandwidth and dirty rate when
 * it has them. One decision per call: with several jobs on the host, the
 * first one not already busy gets it, and the others get theirs from the
 * monitor's next event. Once no job is left on the host, a further event at
 * `drainMinSeverity` or above drains it so nothing new lands there.
 *
 * The decisions are the pure functions `decideOnHealthEvent`,
 * `planForJob` and `drainHostDecision`.
 */
import { z } from 'zod';
import {
  definePlugin,
  PLUGIN_API_VERSION,
  type ClusterView,
  type Decision,
  type HealthEvent,
  type JobView,
  type PolicyHooks,
  type Severity,
} from '../../src/index.js';
import { formatBytes, formatMs, formatRate, freeSpareHosts, severityAtLeast } from './common.js';
import { chooseMigration, type MigrationParams } from './migration-estimate.js';

const severity = z.enum(['info', 'warning', 'critical']);

const configSchema = z
  .object({
    minSeverity: severity.default('warning').describe('Health events below this severity are ignored'),
    safetyFactor: z
      .number()
      .gt(0)
      .lte(1)
      .default(0.5)
      .describe('Fraction of the predicted lead time an action may use (predictions are rough; act well before the failure)'),
    infoLeadTimeMs: z.number().positive().default(86_400_000).describe('Lead time assumed for an info event that predicts none, ms'),
    warningLeadTimeMs: z.number().positive().default(1_800_000).describe('Lead time assumed for a warning event that predicts none, ms'),
    criticalLeadTimeMs: z.number().positive().default(120_000).describe('Lead time assumed for a critical event that predicts none, ms'),
    bandwidthBps: z.number().positive().default(1.25e9).describe('Migration bandwidth until measured on the job, bytes/s (1.25e9: a 10 Gb/s link)'),
    dirtyRateBps: z.number().nonnegative().default(1e8).describe('Dirty rate of one guest until measured on the job, bytes/s'),
    downtimeLimitMs: z.number().nonnegative().default(300).describe('Longest acceptable pre-copy stop-and-copy, ms (QEMU default 300)'),
    maxPasses: z.number().int().min(1).default(30).describe('Most pre-copy passes before pre-copy counts as not converging'),
    hybridPrecopyPasses: z.number().int().nonnegative().default(1).describe('Pre-copy passes of a hybrid migration before it switches to post-copy'),
    switchoverMs: z.number().nonnegative().default(500).describe('Post-copy switch-over time, ms'),
    overheadMs: z.number().nonnegative().default(5_000).describe('Fixed cost of a migration operation (quiesce, device detach/attach, resume), ms'),
    checkpointCostMs: z.number().positive().default(60_000).describe('Checkpoint cost until measured on the job, ms'),
    drainMinSeverity: z
      .enum(['info', 'warning', 'critical', 'never'])
      .default('critical')
      .describe("Drain a host with no job VMs left when an event of this severity or above arrives ('never': do not drain)"),
  })
  .strict();

export type MigrateOnHealthOptions = z.infer<typeof configSchema>;

/** The lead time an event gives: its own prediction, else the configured default for its severity. */
export function leadTimeMs(event: HealthEvent, o: MigrateOnHealthOptions): number {
  if (event.leadTimeMs !== undefined) return event.leadTimeMs;
  const byS: Record<Severity, number> = { info: o.infoLeadTimeMs, warning: o.warningLeadTimeMs, critical: o.criticalLeadTimeMs };
  return byS[event.severity];
}

/** Migration model inputs for the job's VMs on `host`, moving together over the host's link. */
export function migrationParams(job: JobView, host: string, o: MigrateOnHealthOptions): MigrationParams {
  const vms = job.vms.filter((vm) => vm.host === host);
  const perGuestDirty = job.measured.dirtyRateBps ?? o.dirtyRateBps;
  return {
    memoryBytes: vms.reduce((sum, vm) => sum + vm.memoryBytes, 0),
    bandwidthBps: job.measured.migrationBandwidthBps ?? o.bandwidthBps,
    // they share the link, so all of them dirty memory against one bandwidth
    dirtyRateBps: perGuestDirty * vms.length,
    downtimeLimitMs: o.downtimeLimitMs,
    maxPasses: o.maxPasses,
    overheadMs: o.overheadMs,
    switchoverMs: o.switchoverMs,
    hybridPrecopyPasses: o.hybridPrecopyPasses,
  };
}

/**
 * The decision for one job with VMs on the event's host: migrate when it fits
 * in lead time x safety factor (a budget exactly equal fits), else checkpoint
 * when that fits, else none with both numbers.
 */
export function planForJob(event: HealthEvent, job: JobView, view: ClusterView, o: MigrateOnHealthOptions): Decision {
  const leadMs = leadTimeMs(event, o);
  const budgetMs = leadMs * o.safetyFactor;
  const vms = job.vms.filter((vm) => vm.host === event.host).map((vm) => vm.id);
  const params = migrationParams(job, event.host, o);
  const checkpointMs = job.measured.checkpointMs ?? o.checkpointCostMs;
  const time = `${formatMs(budgetMs)} usable (lead time ${formatMs(leadMs)} x safety factor ${o.safetyFactor})`;
  const seen = `host ${event.host} ${event.component}: ${event.message}`;
  const checkpointFits = checkpointMs <= budgetMs;
  const vmWords = `${vms.length} VM${vms.length === 1 ? '' : 's'} of job ${job.id} (${formatBytes(params.memoryBytes)})`;

  if (freeSpareHosts(view, new Set([event.host])).length === 0) {
    return checkpointFits
      ? { action: 'checkpoint', job: job.id, reason: `${seen}; no spare host up to migrate ${vmWords} to, so checkpointing (about ${formatMs(checkpointMs)}; ${time})` }
      : { action: 'none', reason: `${seen}; no spare host up to migrate ${vmWords} to, and a checkpoint (about ${formatMs(checkpointMs)}) does not fit either (${time})` };
  }
  const choice = chooseMigration(params, budgetMs);
  const e = choice.estimate;
  const how = `${e.mode}${e.mode === 'postcopy' ? '' : `, ${e.rounds} pre-copy pass${e.rounds === 1 ? '' : 'es'}`}, at ${formatRate(params.bandwidthBps)} with ${formatRate(params.dirtyRateBps)} dirtied`;
  if (choice.fits) {
    return { action: 'migrate', job: job.id, vms, mode: e.mode, reason: `${seen}; migrating ${vmWords}: estimated ${formatMs(e.expectedMs)} (${how}; ${time})` };
  }
  if (checkpointFits) {
    return {
      action: 'checkpoint',
      job: job.id,
      reason: `${seen}; migrating ${vmWords} would take at least ${formatMs(e.expectedMs)} (${how}), more than the ${time}, so checkpointing (about ${formatMs(checkpointMs)})`,
    };
  }
  return {
    action: 'none',
    reason: `${seen}; neither migrating ${vmWords} (at least ${formatMs(e.expectedMs)}) nor a checkpoint (about ${formatMs(checkpointMs)}) fits in the ${time}`,
  };
}

/** Drain a host that no job uses any more once an event at `drainMinSeverity` or above says it is failing. */
export function drainHostDecision(event: HealthEvent, view: ClusterView, o: Pick<MigrateOnHealthOptions, 'drainMinSeverity'>): Decision | null {
  if (o.drainMinSeverity === 'never' || !severityAtLeast(event.severity, o.drainMinSeverity)) return null;
  const host = view.hosts.find((h) => h.name === event.host);
  if (!host || host.state === 'drained' || host.state === 'down') return null;
  const used = view.jobs.some((j) => j.state !== 'finished' && j.state !== 'failed' && j.vms.some((vm) => vm.host === event.host));
  if (used) return null;
  return {
    action: 'drain-host',
    host: event.host,
    reason: `host ${event.host} ${event.component}: ${event.message}; no job VMs left on it, draining it so nothing new is placed there`,
  };
}

/**
 * A migration in flight towards the event's host: send it elsewhere (the
 * controller cancels the move and starts it again to another spare; the
 * ranks stay frozen, so the job never runs on the bad host).
 */
export function retargetDecision(event: HealthEvent, view: ClusterView, o: Pick<MigrateOnHealthOptions, 'minSeverity'>): Decision | null {
  if (!severityAtLeast(event.severity, o.minSeverity)) return null;
  const job = view.jobs.find((j) => j.operation?.kind === 'migrate' && Object.values(j.operation.targets ?? {}).includes(event.host));
  if (!job) return null;
  const vms = Object.entries(job.operation?.targets ?? {}).filter(([, h]) => h === event.host).map(([vm]) => vm);
  return {
    action: 'retarget',
    job: job.id,
    from: event.host,
    reason: `host ${event.host} ${event.component}: ${event.message}; ${vms.join(', ')} of job ${job.id} ${vms.length === 1 ? 'is' : 'are'} being migrated there: sending ${vms.length === 1 ? 'it' : 'them'} to another spare instead`,
  };
}

/**
 * What to do about one health event: a retarget when a migration is heading
 * for the event's host; null below `minSeverity` (for jobs) or
 * when nothing is to be done; the plan for the first job on the host that is
 * running and idle (a job already under an operation is being dealt with);
 * the drain follow-up when no job is left on the host.
 */
export function decideOnHealthEvent(event: HealthEvent, view: ClusterView, o: MigrateOnHealthOptions): Decision | null {
  const retarget = retargetDecision(event, view, o);
  if (retarget) return retarget;
  const onHost = view.jobs.filter((j) => j.state !== 'finished' && j.state !== 'failed' && j.vms.some((vm) => vm.host === event.host));
  if (onHost.length === 0) return drainHostDecision(event, view, o);
  if (!severityAtLeast(event.severity, o.minSeverity)) return null;
  const job = onHost.find((j) => j.state === 'running' && j.operation === null);
  return job ? planForJob(event, job, view, o) : null;
}

export default definePlugin({
  name: 'migrate-on-health',
  version: '1.0.0',
  apiVersion: PLUGIN_API_VERSION,
  kind: 'policy',
  description: 'when a host is predicted to fail, migrate its VMs away in time, else checkpoint',
  configSchema,
  setup(ctx) {
    const decideOnHealth = (event: HealthEvent, view: ClusterView): Decision | null => {
      const decision = decideOnHealthEvent(event, view, ctx.options);
      if (decision) ctx.log.info({ host: event.host, severity: event.severity, decision }, decision.reason);
      return decision;
    };
    return { decideOnHealth } satisfies PolicyHooks;
  },
});
