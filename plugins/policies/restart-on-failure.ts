/**
 * Policy 'restart-on-failure': when a failure hits a job, restart it from
 * its last good checkpoint, moving the VMs of failed, down or drained hosts
 * to free spare hosts.
 *
 * It declines (an explicit `none`, with the reason, so the operator sees why
 * and no later policy restarts the job behind its back) when there is no
 * checkpoint, no spare host, when the job has been restarted `maxRestarts`
 * times within `windowMs` (a job that keeps failing would otherwise loop
 * forever), or when a restart is already under way or already decided for
 * the same failure: one fault arrives as several events (rank dead, job
 * aborted, QEMU gone, host down), and only the first may restart the job.
 *
 * The decision is the pure function `decideRestart`; the plugin only keeps
 * the history it needs between calls.
 */
import { z } from 'zod';
import { definePlugin, failureOfJob, PLUGIN_API_VERSION, type ClusterView, type Decision, type FailureEvent, type JobView, type OperationRecord, type PolicyHooks } from '../../src/index.js';
import { failureAffectsJob, formatMs, freeSpareHosts, jobHosts } from './common.js';

export interface RestartOptions {
  /** Most restarts of one job within `windowMs`. */
  readonly maxRestarts: number;
  readonly windowMs: number;
  /** Failures of a job this close to the one a restart was decided for are that same failure, ms. */
  readonly dedupeWindowMs: number;
  /**
   * Restart a job that failed by itself (a rank died, the job aborted) on
   * healthy hosts too. Off by default: such a job usually fails the same way
   * again from its checkpoint, and its exit code is the user's answer.
   */
  readonly restartJobFailures?: boolean;
}

/** What the plugin remembers of one job between failures. */
export interface RestartHistory {
  /** When restarts were decided (view time, ms). */
  readonly restarts: readonly number[];
  /** Time of the failure the last restart was decided for. */
  readonly lastFailureAt: number | null;
  /** When that restart operation ended (from `operationFinished`), if it has. */
  readonly restartEndedAt?: number | null;
}

/**
 * Whether `failure` is the fault a restart was already decided for: close to
 * it in time, and not after the restart it caused (a job that fails again
 * right after coming back has a new fault, however soon).
 */
function sameFault(failure: FailureEvent, job: JobView, h: RestartHistory | undefined, windowMs: number): boolean {
  if (h?.lastFailureAt == null || Math.abs(failure.at - h.lastFailureAt) > windowMs) return false;
  if (h.restartEndedAt != null && failure.at > h.restartEndedAt) return false;
  if (job.startedAt > h.lastFailureAt && failure.at >= job.startedAt) return false;
  return true;
}

function describeFailure(f: FailureEvent): string {
  const where = [f.host && `host ${f.host}`, f.vm && `VM ${f.vm}`].filter(Boolean).join(', ');
  return `${f.kind}${where ? ` on ${where}` : ''} (${f.message})`;
}

/** The decision for one affected job. */
function decideForJob(failure: FailureEvent, job: JobView, view: ClusterView, history: RestartHistory | undefined, o: RestartOptions): Decision {
  const what = `job ${job.id} hit by ${describeFailure(failure)}`;
  if (job.state === 'restarting' || job.operation?.kind === 'restart') {
    return { action: 'none', reason: `${what}: a restart of the job is already under way` };
  }
  if (history?.lastFailureAt != null && sameFault(failure, job, history, o.dedupeWindowMs)) {
    return {
      action: 'none',
      reason: `${what}: a restart was already decided for a failure ${formatMs(Math.abs(failure.at - history.lastFailureAt))} apart from this one (same fault)`,
    };
  }
  if (failureOfJob(failure) && !o.restartJobFailures) {
    return { action: 'none', reason: `${what}: the job failed by itself on healthy hosts; not restarting it (it would most likely fail again the same way; restartJobFailures: true to restart anyway)` };
  }
  const recent = (history?.restarts ?? []).filter((t) => view.now - t < o.windowMs);
  if (recent.length >= o.maxRestarts) {
    return {
      action: 'none',
      reason: `${what}: restarted ${recent.length} times in the last ${formatMs(o.windowMs)} (limit ${o.maxRestarts}), not restarting it again`,
    };
  }
  const checkpoint = job.lastCheckpoint;
  if (!checkpoint) return { action: 'none', reason: `${what}: no checkpoint to restart from` };

  // Hosts the job cannot come back on: down or drained in the view, gone from
  // it, or the host this very failure says went down (the view may lag).
  const state = new Map(view.hosts.map((h) => [h.name, h.state]));
  const hosts = jobHosts(job);
  const bad = hosts.filter((h) => {
    const s = state.get(h);
    return s === undefined || s === 'down' || s === 'drained' || (failure.kind === 'host-down' && failure.host === h);
  });
  const spares = freeSpareHosts(view, new Set(hosts));
  if (spares.length < bad.length) {
    return {
      action: 'none',
      reason: `${what}: no spare host up to replace ${bad.join(', ')} (${bad.length} needed, ${spares.length} free)`,
    };
  }
  // Each lost host's VMs move together to one spare, keeping the job's layout.
  const replacement = new Map(bad.map((h, i) => [h, spares[i] as string]));
  const target = hosts.map((h) => replacement.get(h) ?? h);
  const moved = bad.length ? `, moving ${bad.map((h) => `${h} -> ${replacement.get(h)}`).join(', ')}` : ' on the same hosts';
  return {
    action: 'restart',
    job: job.id,
    checkpoint: checkpoint.id,
    hosts: target,
    reason: `${what}: restarting from checkpoint ${checkpoint.id} taken ${formatMs(Math.max(0, view.now - checkpoint.at))} ago${moved}`,
  };
}

/**
 * What to do about `failure`: null when it touches no (unfinished) job;
 * else, over the affected jobs in view order, the first restart, or failing
 * that the first `none` (one decision per failure; other jobs hit by the
 * same fault get theirs from their own failure events).
 */
export function decideRestart(
  failure: FailureEvent,
  view: ClusterView,
  history: ReadonlyMap<string, RestartHistory>,
  options: RestartOptions,
): Decision | null {
  const affected = view.jobs.filter((j) => j.state !== 'finished' && failureAffectsJob(failure, j));
  const decisions = affected.map((j) => decideForJob(failure, j, view, history.get(j.id), options));
  return decisions.find((d) => d.action === 'restart') ?? decisions[0] ?? null;
}

const configSchema = z
  .object({
    maxRestarts: z.number().int().nonnegative().default(3).describe('Most restarts of one job within windowMs; past it the job is left failed'),
    windowMs: z.number().positive().default(3_600_000).describe('Window over which maxRestarts counts, ms'),
    dedupeWindowMs: z
      .number()
      .nonnegative()
      .default(60_000)
      .describe('Failure events of a job within this many ms of the failure a restart was decided for are the same fault, ms'),
    restartJobFailures: z
      .boolean()
      .default(false)
      .describe('Also restart a job that failed by itself (rank dead, job aborted) while its hosts are healthy'),
  })
  .strict();

export default definePlugin({
  name: 'restart-on-failure',
  version: '1.0.0',
  apiVersion: PLUGIN_API_VERSION,
  kind: 'policy',
  description: 'restart a failed job from its last good checkpoint, onto spare hosts',
  configSchema,
  setup(ctx) {
    const history = new Map<string, RestartHistory>();
    const decideOnFailure = (failure: FailureEvent, view: ClusterView): Decision | null => {
      // forget jobs the controller no longer knows
      for (const id of history.keys()) if (!view.jobs.some((j) => j.id === id)) history.delete(id);
      const decision = decideRestart(failure, view, history, ctx.options);
      if (decision?.action === 'restart') {
        // keep only what the window can still count
        const kept = (history.get(decision.job)?.restarts ?? []).filter((t) => view.now - t < ctx.options.windowMs);
        history.set(decision.job, { restarts: [...kept, view.now], lastFailureAt: failure.at, restartEndedAt: null });
      }
      if (decision) ctx.log.info({ failure: failure.kind, decision }, decision.reason);
      return decision;
    };
    // A restart that has ended (well or not) closes its fault: later failures are new ones.
    const operationFinished = (op: OperationRecord): void => {
      const h = history.get(op.job);
      if (op.kind === 'restart' && h) history.set(op.job, { ...h, restartEndedAt: op.startedAt + op.durationMs });
    };
    return { decideOnFailure, operationFinished } satisfies PolicyHooks;
  },
});
