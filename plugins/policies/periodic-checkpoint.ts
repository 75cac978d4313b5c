/**
 * Policy 'periodic-checkpoint': checkpoint each running job every T of
 * compute, with T from Young's or Daly's formula (young-daly.ts), so that the
 * work a failure destroys is balanced against the time spent checkpointing.
 *
 * C (checkpoint cost) starts at the configured guess and follows measured
 * checkpoints; M (MTBF) starts at the configured platform MTBF and follows
 * the failures that hit the job. The plugin acts on its own clock: one timer
 * per job, armed for when its next checkpoint is due, plus a periodic re-scan
 * of the view (jobs appear, finish, get busy), and a re-scan whenever an
 * operation ends or a failure is seen. It never has two checkpoints of a job
 * in flight and does not ask while the job is busy with another operation.
 * Failures are only observed here (decideOnFailure returns null): restarting
 * is another policy's decision.
 *
 * The scheduling decision is the pure function `checkpointDue`.
 */
import { z } from 'zod';
import {
  definePlugin,
  PLUGIN_API_VERSION,
  type ClusterView,
  type Decision,
  type FailureEvent,
  type JobView,
  type OperationRecord,
  type PolicyHooks,
} from '../../src/index.js';
import { failureAffectsJob, formatMs } from './common.js';
import { CheckpointCostEstimator, chooseInterval, MtbfEstimator, type IntervalChoice } from './young-daly.js';

/** What the plugin knows beyond the view about when a job was last made safe. */
export interface DueState {
  /** End of the last checkpoint (or restart) the plugin saw complete, ms since the epoch. */
  readonly lastCheckpointAt?: number | null;
  /** No request before this (set after a checkpoint failed or was refused, to back off). */
  readonly notBefore?: number;
}

export interface Due {
  /** Ask for a checkpoint now. */
  readonly due: boolean;
  /** Time until the interval has elapsed, ms (0 when it has). */
  readonly inMs: number;
  readonly dueAt: number;
  /** Why a checkpoint cannot be asked for now whatever the time, or null. */
  readonly blocked: string | null;
}

/**
 * When job's next checkpoint is due: `intervalMs` after the latest of its
 * start, its last checkpoint in the view, and the last checkpoint or restart
 * the plugin saw end; not before `notBefore`. Due only when that time has
 * come and the job is running with no operation under way.
 */
export function checkpointDue(job: JobView, intervalMs: number, now: number, known: DueState = {}): Due {
  const base = Math.max(job.startedAt, job.lastCheckpoint?.at ?? -Infinity, known.lastCheckpointAt ?? -Infinity);
  const dueAt = Math.max(base + intervalMs, known.notBefore ?? -Infinity);
  const inMs = Math.max(0, dueAt - now);
  const blocked = job.state !== 'running' ? `job is ${job.state}` : job.operation ? `a ${job.operation.kind} is under way` : null;
  return { due: inMs === 0 && blocked === null, inMs, dueAt, blocked };
}

/**
 * The cost one checkpoint record reports: its duration, or when that is
 * missing (0) the sum of its phases; null when neither says anything.
 */
export function checkpointCostOf(op: OperationRecord): number | null {
  if (Number.isFinite(op.durationMs) && op.durationMs > 0) return op.durationMs;
  const phases = op.phases.reduce((sum, p) => sum + (Number.isFinite(p.ms) && p.ms > 0 ? p.ms : 0), 0);
  return phases > 0 ? phases : null;
}

const DAY = 86_400_000;
/** setTimeout's longest delay (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const configSchema = z
  .object({
    mtbfMs: z.number().positive().default(DAY).describe("Mean time between failures that interrupt a job on this platform, ms: the prior that observed failures refine"),
    formula: z.enum(['young', 'daly']).default('daly').describe("Interval formula: 'young' sqrt(2CM), or 'daly' (higher order, better when C is not << M)"),
    initialCheckpointCostMs: z.number().positive().default(60_000).describe('Checkpoint cost C assumed until a checkpoint of the job has been measured, ms'),
    minIntervalMs: z.number().positive().default(60_000).describe('Shortest interval between checkpoints of a job, ms'),
    maxIntervalMs: z.number().positive().default(DAY).describe('Longest interval between checkpoints of a job, ms'),
    jobs: z.array(z.string().min(1)).min(1).optional().describe('Job ids to checkpoint (default: every job)'),
    mtbfPriorWeight: z
      .number()
      .nonnegative()
      .default(1)
      .describe('Weight of mtbfMs, in failures: M = (w*mtbfMs + observed time) / (w + failures); 0: mtbfMs until the first failure, then observed time / failures'),
    failureMergeWindowMs: z.number().nonnegative().default(60_000).describe('Failure events of a job within this many ms of a counted one are the same fault, ms'),
    costSmoothing: z.number().gt(0).lte(1).default(0.3).describe('EWMA weight of each new checkpoint cost measurement'),
    recheckMs: z.number().positive().default(30_000).describe('How often to re-read the cluster view for new, finished or busy jobs, ms'),
    retryAfterFailureMs: z.number().nonnegative().default(60_000).describe('Wait after a checkpoint failed or was refused before asking again, ms'),
  })
  .strict()
  .refine((o) => o.minIntervalMs <= o.maxIntervalMs, { message: 'minIntervalMs must not exceed maxIntervalMs', path: ['minIntervalMs'] });

interface JobState {
  readonly mtbf: MtbfEstimator;
  readonly cost: CheckpointCostEstimator;
  lastCheckpointAt: number | null;
  notBefore: number;
  inFlight: boolean;
  timer: NodeJS.Timeout | null;
  /** Interval last logged, to log changes and not every re-scan. */
  loggedIntervalMs: number | null;
}

export default definePlugin({
  name: 'periodic-checkpoint',
  version: '1.0.0',
  apiVersion: PLUGIN_API_VERSION,
  kind: 'policy',
  description: 'checkpoint each job at the Young/Daly interval for its checkpoint cost and the MTBF',
  configSchema,
  setup(ctx) {
    const o = ctx.options;
    const log = ctx.log;
    const jobs = new Map<string, JobState>();
    // operation ids already counted: the record of our own request also reaches operationFinished
    const seenOps = new Set<string>();
    const selected = (id: string): boolean => o.jobs === undefined || o.jobs.includes(id);

    const stateFor = (job: JobView): JobState => {
      let s = jobs.get(job.id);
      if (!s) {
        s = {
          mtbf: new MtbfEstimator(o.mtbfMs, o.mtbfPriorWeight, job.startedAt, o.failureMergeWindowMs),
          cost: new CheckpointCostEstimator(o.initialCheckpointCostMs, o.costSmoothing),
          lastCheckpointAt: null,
          notBefore: -Infinity,
          inFlight: false,
          timer: null,
          loggedIntervalMs: null,
        };
        // a job the controller has already measured (e.g. this plugin was restarted) starts from that
        const measured = job.measured.checkpointMs;
        if (measured !== null && Number.isFinite(measured) && measured > 0) s.cost.observe(measured);
        jobs.set(job.id, s);
      }
      return s;
    };

    const intervalFor = (job: JobView, s: JobState, now: number): IntervalChoice => {
      const choice = chooseInterval({
        formula: o.formula,
        checkpointCostMs: s.cost.costMs,
        mtbfMs: s.mtbf.estimateMs(now),
        minIntervalMs: o.minIntervalMs,
        maxIntervalMs: o.maxIntervalMs,
      });
      // M drifts with every failure-free second; log only changes of 1% or more
      const last = s.loggedIntervalMs;
      if (last === null || Math.abs(choice.intervalMs - last) >= 0.01 * last) {
        s.loggedIntervalMs = choice.intervalMs;
        const C = choice.checkpointCostMs;
        const M = choice.mtbfMs;
        const clamp = choice.clamped ? `, clamped to the ${choice.clamped}imum from ${formatMs(choice.formulaMs)}` : '';
        log.info(
          { job: job.id, C, M, formula: choice.formula, T: choice.intervalMs, formulaT: choice.formulaMs, clamped: choice.clamped, costSamples: s.cost.samples, failures: s.mtbf.failures },
          `job ${job.id}: checkpoint every ${formatMs(choice.intervalMs)} (${choice.formula}, C=${formatMs(C)} ${s.cost.samples ? `measured over ${s.cost.samples}` : 'configured'}, M=${formatMs(M)} with ${s.mtbf.failures} failure(s) seen${clamp})`,
        );
      }
      return choice;
    };

    const disarm = (s: JobState): void => {
      if (s.timer) clearTimeout(s.timer);
      s.timer = null;
    };

    const arm = (s: JobState, inMs: number): void => {
      disarm(s);
      s.timer = setTimeout(() => {
        s.timer = null;
        scan();
      }, Math.min(inMs, MAX_TIMER_MS));
    };

    /** A checkpoint of the job completed: learn its cost (once per operation) and restart the clock. */
    const noteCheckpoint = (s: JobState, op: OperationRecord): void => {
      const end = op.startedAt + op.durationMs;
      s.lastCheckpointAt = Math.max(s.lastCheckpointAt ?? -Infinity, end);
      if (seenOps.has(op.id)) return;
      seenOps.add(op.id);
      if (seenOps.size > 1000) seenOps.delete(seenOps.values().next().value as string); // oldest first
      const cost = checkpointCostOf(op);
      if (cost !== null) s.cost.observe(cost);
    };

    const request = (job: JobView, s: JobState, choice: IntervalChoice): void => {
      s.inFlight = true;
      disarm(s);
      const decision: Decision = {
        action: 'checkpoint',
        job: job.id,
        reason: `periodic checkpoint every ${formatMs(choice.intervalMs)} (${choice.formula} interval for checkpoint cost ${formatMs(choice.checkpointCostMs)} and MTBF ${formatMs(choice.mtbfMs)})`,
      };
      const backOff = (why: string): void => {
        s.notBefore = Date.now() + o.retryAfterFailureMs;
        log.warn({ job: job.id, retryInMs: o.retryAfterFailureMs }, `checkpoint of job ${job.id} not done (${why}); asking again in ${formatMs(o.retryAfterFailureMs)} at the earliest`);
      };
      ctx.actions.request(decision).then(
        (op) => {
          s.inFlight = false;
          if (ctx.signal.aborted) return;
          if (op?.ok) noteCheckpoint(s, op);
          else backOff(op ? (op.error ?? 'failed') : 'refused');
          scan();
        },
        (err: unknown) => {
          s.inFlight = false;
          if (ctx.signal.aborted) return;
          backOff(err instanceof Error ? err.message : String(err));
          scan();
        },
      );
    };

    /** Look at every job: ask for the checkpoints that are due, arm timers for the others. */
    const scan = (): void => {
      if (ctx.signal.aborted) return;
      try {
        const view = ctx.actions.view();
        const present = new Set<string>();
        for (const job of view.jobs) {
          if (!selected(job.id) || job.state === 'finished') continue;
          present.add(job.id);
          const s = stateFor(job);
          const choice = intervalFor(job, s, view.now);
          if (s.inFlight) continue;
          const due = checkpointDue(job, choice.intervalMs, view.now, { lastCheckpointAt: s.lastCheckpointAt, notBefore: s.notBefore });
          if (due.due) request(job, s, choice);
          else if (due.blocked === null) arm(s, due.inMs);
          else disarm(s); // busy or down: the end of its operation or the next re-scan looks again
        }
        // finished or gone: forget (failed jobs are kept, with their failure count, for their restart)
        for (const [id, s] of jobs) {
          if (!present.has(id)) {
            disarm(s);
            jobs.delete(id);
          }
        }
      } catch (err) {
        // runs from timers: an exception here would take the controller down
        log.warn({ err: err instanceof Error ? err.message : String(err) }, 'checkpoint scheduling failed; trying again at the next re-scan');
      }
    };

    const recheck = setInterval(scan, o.recheckMs);
    const first = setTimeout(scan, 0); // after setup has returned
    const stop = (): void => {
      clearInterval(recheck);
      clearTimeout(first);
      for (const s of jobs.values()) disarm(s);
    };
    ctx.signal.addEventListener('abort', stop, { once: true });

    const decideOnFailure = (failure: FailureEvent, view: ClusterView): null => {
      for (const job of view.jobs) {
        if (!selected(job.id) || job.state === 'finished' || !failureAffectsJob(failure, job)) continue;
        const s = stateFor(job);
        if (s.mtbf.recordFailure(failure.at)) {
          log.info({ job: job.id, failures: s.mtbf.failures, M: s.mtbf.estimateMs(view.now) }, `job ${job.id}: failure counted (${failure.kind}); MTBF now ${formatMs(s.mtbf.estimateMs(view.now))}`);
        }
      }
      scan();
      return null; // observe only: restarting is another policy's decision
    };

    const operationFinished = (op: OperationRecord, view: ClusterView): void => {
      const job = view.jobs.find((j) => j.id === op.job);
      if (job && selected(job.id) && op.ok && (op.kind === 'checkpoint' || op.kind === 'restart')) {
        const s = stateFor(job);
        if (op.kind === 'checkpoint') noteCheckpoint(s, op);
        // after a restart the job recomputes from its checkpoint: a full interval from now on
        else s.lastCheckpointAt = Math.max(s.lastCheckpointAt ?? -Infinity, op.startedAt + op.durationMs);
      }
      scan();
    };

    return { decideOnFailure, operationFinished, teardown: stop } satisfies PolicyHooks;
  },
});
