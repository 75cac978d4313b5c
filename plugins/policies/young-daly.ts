/**
 * How often to checkpoint: the Young and Daly optimum intervals, the waste an
 * interval costs, and the two estimators that feed them (MTBF and checkpoint
 * cost). Everything here is pure arithmetic on milliseconds, so the policy
 * plugin stays a thin scheduler and the numbers can be checked by hand.
 *
 * Sources:
 * - J. W. Young, "A first order approximation to the optimum checkpoint
 *   interval", Communications of the ACM 17(9):530-531, 1974:
 *   T = sqrt(2 C M).
 * - J. T. Daly, "A higher order estimate of the optimum checkpoint interval
 *   for restart dumps", Future Generation Computer Systems 22(3):303-312,
 *   2006, doi:10.1016/j.future.2004.11.016, eq. (37):
 *   T = sqrt(2 C M) [1 + (1/3) sqrt(C/2M) + (1/9) (C/2M)] - C   for C < 2M,
 *   T = M                                                       for C >= 2M.
 *   The paper's worked examples (C = 5 min: M = 24 h -> 117 min, M = 6 h ->
 *   57 min, M = 15 min -> 9.1 min) are repeated in the tests.
 *
 * T is compute time between the end of one checkpoint and the start of the
 * next; C is the application-visible cost of one checkpoint; M is the mean
 * time between failures that interrupt the job.
 */

export type IntervalFormula = 'young' | 'daly';

/** Throw a RangeError unless `value` is a finite number > 0 (or >= 0 with `allowZero`). */
function requirePositive(name: string, value: number, allowZero = false): void {
  const ok = typeof value === 'number' && Number.isFinite(value) && (allowZero ? value >= 0 : value > 0);
  if (!ok) throw new RangeError(`${name} must be a ${allowZero ? 'non-negative' : 'positive'} finite number of ms, got ${String(value)}`);
}

/** Young (1974): the first-order optimum, sqrt(2 C M). */
export function youngIntervalMs(checkpointCostMs: number, mtbfMs: number): number {
  requirePositive('checkpoint cost', checkpointCostMs);
  requirePositive('MTBF', mtbfMs);
  return Math.sqrt(2 * checkpointCostMs * mtbfMs);
}

/**
 * Daly (2006), eq. (37). It corrects Young for the time lost re-doing the
 * checkpoint itself after a failure; the two agree when C << M and Daly's is
 * markedly better when C is a sizeable fraction of M. Past C >= 2M the
 * perturbation series no longer applies and Daly sets T = M.
 */
export function dalyIntervalMs(checkpointCostMs: number, mtbfMs: number): number {
  requirePositive('checkpoint cost', checkpointCostMs);
  requirePositive('MTBF', mtbfMs);
  const C = checkpointCostMs;
  const M = mtbfMs;
  if (C >= 2 * M) return M;
  const x = C / (2 * M);
  return Math.sqrt(2 * C * M) * (1 + Math.sqrt(x) / 3 + x / 9) - C;
}

export function optimalIntervalMs(formula: IntervalFormula, checkpointCostMs: number, mtbfMs: number): number {
  return formula === 'young' ? youngIntervalMs(checkpointCostMs, mtbfMs) : dalyIntervalMs(checkpointCostMs, mtbfMs);
}

/** Keep an interval within operator bounds (a formula knows nothing of storage quotas or of how long a job runs). */
export function clampInterval(
  intervalMs: number,
  minIntervalMs: number,
  maxIntervalMs: number,
): { intervalMs: number; clamped: 'min' | 'max' | null } {
  requirePositive('interval', intervalMs);
  requirePositive('minimum interval', minIntervalMs);
  requirePositive('maximum interval', maxIntervalMs);
  if (minIntervalMs > maxIntervalMs) throw new RangeError(`minimum interval ${minIntervalMs} ms exceeds maximum interval ${maxIntervalMs} ms`);
  if (intervalMs < minIntervalMs) return { intervalMs: minIntervalMs, clamped: 'min' };
  if (intervalMs > maxIntervalMs) return { intervalMs: maxIntervalMs, clamped: 'max' };
  return { intervalMs, clamped: null };
}

export interface IntervalChoice {
  /** The interval to use, after clamping. */
  readonly intervalMs: number;
  /** What the formula said before clamping. */
  readonly formulaMs: number;
  readonly clamped: 'min' | 'max' | null;
  readonly formula: IntervalFormula;
  readonly checkpointCostMs: number;
  readonly mtbfMs: number;
}

/** The formula's interval for (C, M), clamped to [min, max], with what went into it (for logs and reasons). */
export function chooseInterval(p: {
  formula: IntervalFormula;
  checkpointCostMs: number;
  mtbfMs: number;
  minIntervalMs: number;
  maxIntervalMs: number;
}): IntervalChoice {
  const formulaMs = optimalIntervalMs(p.formula, p.checkpointCostMs, p.mtbfMs);
  const { intervalMs, clamped } = clampInterval(formulaMs, p.minIntervalMs, p.maxIntervalMs);
  return { intervalMs, formulaMs, clamped, formula: p.formula, checkpointCostMs: p.checkpointCostMs, mtbfMs: p.mtbfMs };
}

/**
 * Expected fraction of wall-clock time that is not useful work when
 * checkpointing every `intervalMs` of compute, under exponentially
 * distributed failures (the model Daly optimises). One segment is T of work
 * plus C of checkpoint, L = T + C, and must run without a failure; a failure
 * costs the time spent in the segment plus a restart R (which can itself be
 * hit). Summing the geometric number of failed attempts gives the expected
 * wall time of a segment, M e^(R/M) (e^(L/M) - 1), so
 *
 *   waste = 1 - T / (M e^(R/M) (e^((T + C)/M) - 1)).
 *
 * With no failures (M -> infinity) this tends to C / (T + C); its first-order
 * expansion C/(T+C) + (T+C)/2M is what Young minimises. R does not move the
 * optimum (it is a constant factor) but does raise the waste.
 */
export function expectedWaste(intervalMs: number, checkpointCostMs: number, mtbfMs: number, restartCostMs = 0): number {
  requirePositive('interval', intervalMs);
  requirePositive('checkpoint cost', checkpointCostMs, true);
  requirePositive('MTBF', mtbfMs);
  requirePositive('restart cost', restartCostMs, true);
  const M = mtbfMs;
  // expm1 keeps precision when T + C << M, the usual case
  const segmentWallMs = M * Math.exp(restartCostMs / M) * Math.expm1((intervalMs + checkpointCostMs) / M);
  return 1 - intervalMs / segmentWallMs;
}

// ---------------------------------------------------------------------------
// Estimators

/**
 * MTBF from a configured prior and what was observed, as the posterior of an
 * exponential failure model with a Gamma prior on the failure rate: the prior
 * counts as `priorWeight` failures seen over `priorWeight * priorMtbfMs`, so
 *
 *   M = (w * M0 + observedMs) / (w + failures).
 *
 * Why this rule: with no failures yet it starts at M0 and grows slowly as
 * failure-free time accumulates (which is evidence); one early failure pulls
 * it down without collapsing it (M0 = 24 h, a failure after 1 h, w = 1 gives
 * 12.5 h, where observed-only would say 1 h and checkpoint six times as
 * often); with many failures it tends to the observed "time on test /
 * failures". With w = 0 it is the simplest rule: the prior until the first
 * failure, then observed time / failures. The result is floored at 1 ms so
 * the interval formulas always get a positive M.
 */
export function estimateMtbfMs(p: { priorMtbfMs: number; priorWeight: number; observedMs: number; failures: number }): number {
  requirePositive('prior MTBF', p.priorMtbfMs);
  requirePositive('observed time', p.observedMs, true);
  if (!(Number.isFinite(p.priorWeight) && p.priorWeight >= 0)) throw new RangeError(`prior weight must be a non-negative finite number, got ${p.priorWeight}`);
  if (!(Number.isInteger(p.failures) && p.failures >= 0)) throw new RangeError(`failures must be a non-negative integer, got ${p.failures}`);
  if (p.failures === 0 && p.priorWeight === 0) return p.priorMtbfMs; // nothing observed, nothing weighed: the prior as is
  return Math.max(1, (p.priorWeight * p.priorMtbfMs + p.observedMs) / (p.priorWeight + p.failures));
}

/**
 * Tracks one job's failures since `sinceMs` and answers its MTBF. One fault
 * reaches symbio as several events (a host going down also loses the agent,
 * QEMU and the ranks there, and aborts the job), so failures within
 * `mergeWindowMs` of the last one counted are the same failure.
 */
export class MtbfEstimator {
  private count = 0;
  private lastCountedAt = -Infinity;

  constructor(
    readonly priorMtbfMs: number,
    readonly priorWeight: number,
    readonly sinceMs: number,
    readonly mergeWindowMs = 0,
  ) {
    requirePositive('prior MTBF', priorMtbfMs);
    requirePositive('merge window', mergeWindowMs, true);
  }

  /** Count a failure seen at `atMs`; false when it merges into the last one. */
  recordFailure(atMs: number): boolean {
    if (Math.abs(atMs - this.lastCountedAt) <= this.mergeWindowMs) return false;
    this.count++;
    this.lastCountedAt = atMs;
    return true;
  }

  get failures(): number {
    return this.count;
  }

  estimateMs(nowMs: number): number {
    return estimateMtbfMs({
      priorMtbfMs: this.priorMtbfMs,
      priorWeight: this.priorWeight,
      observedMs: Math.max(0, nowMs - this.sinceMs),
      failures: this.count,
    });
  }
}

/**
 * Checkpoint cost: the configured guess until the first measurement, which
 * replaces it outright (a measurement beats a guess), then an exponentially
 * weighted moving average, cost <- a * sample + (1 - a) * cost. Why EWMA: a
 * job's checkpoint cost drifts (its memory footprint and dirty set grow,
 * storage load changes), so recent samples should count more than old ones,
 * while a = 0.3 still damps a single slow checkpoint; and it needs no
 * history.
 */
export class CheckpointCostEstimator {
  private value: number;
  private n = 0;

  constructor(
    initialCostMs: number,
    readonly smoothing = 0.3,
  ) {
    requirePositive('initial checkpoint cost', initialCostMs);
    if (!(smoothing > 0 && smoothing <= 1)) throw new RangeError(`smoothing must be in (0, 1], got ${smoothing}`);
    this.value = initialCostMs;
  }

  observe(costMs: number): void {
    requirePositive('measured checkpoint cost', costMs);
    this.value = this.n === 0 ? costMs : this.smoothing * costMs + (1 - this.smoothing) * this.value;
    this.n++;
  }

  get costMs(): number {
    return this.value;
  }

  /** Measurements seen so far (0: still the configured guess). */
  get samples(): number {
    return this.n;
  }
}
