/**
 * Young and Daly intervals against hand-computed values (and Daly's own worked
 * examples), Daly's C >= 2M branch, the waste model, input validation,
 * clamping, and the MTBF and checkpoint-cost estimators.
 */
import t from 'tap';
import {
  CheckpointCostEstimator,
  chooseInterval,
  clampInterval,
  dalyIntervalMs,
  estimateMtbfMs,
  expectedWaste,
  MtbfEstimator,
  optimalIntervalMs,
  youngIntervalMs,
} from '../../../plugins/policies/young-daly.js';
import { near } from './fixtures.js';

const S = 1000;
const MIN = 60 * S;
const H = 60 * MIN;

t.test('Young: sqrt(2 C M)', async (t) => {
  // C = 60 s, M = 24 h: sqrt(2 * 60 * 86400) = sqrt(10,368,000) = 3219.94 s
  near(t, youngIntervalMs(60 * S, 24 * H), 3219.94 * S, 0.01 * S, 'C=60 s, M=24 h');
  // C = 300 s, M = 24 h: sqrt(51,840,000) = 7200 s exactly
  t.equal(youngIntervalMs(300 * S, 24 * H), 7200 * S);
  // C = 300 s, M = 6 h: sqrt(12,960,000) = 3600 s exactly
  t.equal(youngIntervalMs(300 * S, 6 * H), 3600 * S);
  t.equal(youngIntervalMs(1, 800), 40, 'C=1 ms, M=800 ms: sqrt(1600)');
});

t.test('Daly, C < 2M: sqrt(2CM) [1 + sqrt(x)/3 + x/9] - C with x = C/2M', async (t) => {
  // C = 60 s, M = 24 h: x = 1/2880, sqrt(x) = 0.0186339,
  // 3219.938 * (1 + 0.0062113 + 0.0000386) - 60 = 3240.062 - 60 = 3180.06 s
  near(t, dalyIntervalMs(60 * S, 24 * H), 3180.06 * S, 0.01 * S, 'C=60 s, M=24 h');
  // Daly's paper, Fig. 3-5 (C = 5 min): M = 24 h -> 117 min, 6 h -> 57 min, 15 min -> 9.1 min.
  // M = 24 h: x = 1/576, sqrt(x) = 1/24: 7200 (1 + 1/72 + 1/5184) - 300 = 7001.39 s = 116.7 min
  near(t, dalyIntervalMs(5 * MIN, 24 * H), 7001.389 * S, 0.001 * S, 'C=5 min, M=24 h');
  near(t, dalyIntervalMs(5 * MIN, 24 * H) / MIN, 117, 0.5, 'paper: 117 min');
  // M = 6 h: x = 1/144, sqrt(x) = 1/12: 3600 (1 + 1/36 + 1/1296) - 300 = 3402.78 s = 56.7 min
  near(t, dalyIntervalMs(5 * MIN, 6 * H), 3402.778 * S, 0.001 * S, 'C=5 min, M=6 h');
  near(t, dalyIntervalMs(5 * MIN, 6 * H) / MIN, 57, 0.5, 'paper: 57 min');
  // M = 15 min: x = 1/6, sqrt(x) = 0.408248: 734.847 (1 + 0.136083 + 0.018519) - 300 = 548.46 s = 9.14 min
  near(t, dalyIntervalMs(5 * MIN, 15 * MIN), 548.455 * S, 0.01 * S, 'C=5 min, M=15 min');
  near(t, dalyIntervalMs(5 * MIN, 15 * MIN) / MIN, 9.1, 0.05, 'paper: 9.1 min');
  // small C/M: Daly tends to Young - C
  const C = 1 * S;
  const M = 1000 * H;
  near(t, dalyIntervalMs(C, M), youngIntervalMs(C, M) - C, 0.002 * youngIntervalMs(C, M), 'C << M');
  t.equal(optimalIntervalMs('young', 60 * S, 24 * H), youngIntervalMs(60 * S, 24 * H));
  t.equal(optimalIntervalMs('daly', 60 * S, 24 * H), dalyIntervalMs(60 * S, 24 * H));
});

t.test('Daly, C >= 2M: T = M', async (t) => {
  t.equal(dalyIntervalMs(2 * H, 1 * H), 1 * H, 'C = 2M exactly');
  t.equal(dalyIntervalMs(3 * H, 1 * H), 1 * H, 'C = 3M');
  // just below 2M the series still applies: x -> 1 gives 2M (1 + 1/3 + 1/9) - 2M = 8M/9
  near(t, dalyIntervalMs(2 * H - 1, 1 * H), (8 / 9) * H, 1, 'C just under 2M');
});

t.test('waste: tends to C/(T+C) without failures; Daly sits at its minimum, Young does not', async (t) => {
  near(t, expectedWaste(99 * S, 1 * S, 1e15), 0.01, 1e-6, 'M huge: C/(T+C) = 1/100');
  // C = 5 min, M = 15 min (C/M large, where the formulas differ)
  const C = 5 * MIN;
  const M = 15 * MIN;
  const daly = dalyIntervalMs(C, M);
  const young = youngIntervalMs(C, M);
  const w = (T: number) => expectedWaste(T, C, M);
  t.ok(w(daly) < w(young), `Daly ${w(daly)} wastes less than Young ${w(young)}`);
  t.ok(w(daly) < w(daly * 0.95) && w(daly) < w(daly * 1.05), 'Daly is a local minimum (within 5%)');
  // hand check: T = 548.455 s, T + C = 848.455 s: 1 - 548.455 / (900 (e^(0.942728) - 1)) = 1 - 548.455/1410.5 = 0.6112
  near(t, w(daly), 0.6112, 0.0005, 'waste at Daly, C=5 min, M=15 min');
  t.ok(expectedWaste(daly, C, M, 10 * MIN) > w(daly), 'a restart cost raises the waste');
});

t.test('invalid inputs are RangeErrors that say what is wrong', async (t) => {
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => youngIntervalMs(bad, H), { name: 'RangeError', message: /checkpoint cost must be a positive finite number/ }, `C = ${bad}`);
    t.throws(() => dalyIntervalMs(S, bad), { name: 'RangeError', message: /MTBF must be a positive finite number/ }, `M = ${bad}`);
  }
  t.throws(() => expectedWaste(H, S, H, -1), RangeError, 'negative restart cost');
  t.throws(() => clampInterval(H, 2 * H, H), { name: 'RangeError', message: /minimum interval .* exceeds maximum/ });
  t.throws(() => estimateMtbfMs({ priorMtbfMs: H, priorWeight: -1, observedMs: 0, failures: 0 }), RangeError);
  t.throws(() => estimateMtbfMs({ priorMtbfMs: H, priorWeight: 1, observedMs: 0, failures: 1.5 }), RangeError);
  t.throws(() => new CheckpointCostEstimator(S, 0), RangeError, 'smoothing 0');
  t.throws(() => new CheckpointCostEstimator(S).observe(-5), RangeError, 'negative measurement');
});

t.test('clamping to [min, max]', async (t) => {
  t.same(clampInterval(30 * S, MIN, H), { intervalMs: MIN, clamped: 'min' });
  t.same(clampInterval(2 * H, MIN, H), { intervalMs: H, clamped: 'max' });
  t.same(clampInterval(10 * MIN, MIN, H), { intervalMs: 10 * MIN, clamped: null });
  const c = chooseInterval({ formula: 'young', checkpointCostMs: 300 * S, mtbfMs: 24 * H, minIntervalMs: MIN, maxIntervalMs: H });
  t.same(c, { intervalMs: H, formulaMs: 7200 * S, clamped: 'max', formula: 'young', checkpointCostMs: 300 * S, mtbfMs: 24 * H });
});

t.test('MTBF estimator: (w M0 + observed) / (w + failures)', async (t) => {
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 1, observedMs: 0, failures: 0 }), 24 * H, 'nothing seen: the prior');
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 1, observedMs: 1 * H, failures: 1 }), 12.5 * H, 'one failure after 1 h: (24 + 1) / 2');
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 1, observedMs: 24 * H, failures: 0 }), 48 * H, 'a failure-free day is evidence');
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 0, observedMs: 5 * H, failures: 0 }), 24 * H, 'w = 0: the prior until a failure');
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 0, observedMs: 10 * H, failures: 4 }), 2.5 * H, 'w = 0: observed time / failures');
  t.equal(estimateMtbfMs({ priorMtbfMs: 24 * H, priorWeight: 0, observedMs: 0, failures: 2 }), 1, 'floored at 1 ms');

  const e = new MtbfEstimator(24 * H, 1, 1000, 60 * S);
  t.equal(e.estimateMs(1000), 24 * H);
  t.equal(e.recordFailure(1000 + H), true);
  t.equal(e.recordFailure(1000 + H + 30 * S), false, 'same fault, 30 s later: merged');
  t.equal(e.recordFailure(1000 + H - 30 * S), false, 'same fault, reported out of order: merged');
  t.equal(e.failures, 1);
  t.equal(e.estimateMs(1000 + H), 12.5 * H);
  t.equal(e.recordFailure(1000 + 3 * H), true, 'two hours later: a new fault');
  t.equal(e.estimateMs(1000 + 3 * H), 9 * H, '(24 + 3) / 3');
});

t.test('checkpoint cost estimator: the guess until measured, then EWMA', async (t) => {
  const c = new CheckpointCostEstimator(60 * S, 0.5);
  t.equal(c.costMs, 60 * S);
  t.equal(c.samples, 0);
  c.observe(10 * S);
  t.equal(c.costMs, 10 * S, 'the first measurement replaces the guess');
  c.observe(20 * S);
  t.equal(c.costMs, 15 * S, '0.5 * 20 + 0.5 * 10');
  c.observe(15 * S);
  t.equal(c.costMs, 15 * S);
  c.observe(35 * S);
  t.equal(c.costMs, 25 * S);
  t.equal(c.samples, 4);
  // and the interval follows: Young with C = 25 s, M = 24 h: sqrt(2 * 25 * 86400) = 2078.46 s
  near(t, youngIntervalMs(c.costMs, 24 * H), 2078.46 * S, 0.01 * S, 'interval from the estimate');
});
