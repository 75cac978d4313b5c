/**
 * Migration estimates against hand-computed numbers: pre-copy that converges,
 * that cannot (D >= B), that runs out of passes; post-copy; hybrid; the mode
 * chosen for a time budget; invalid inputs.
 *
 * Numbers are decimal (1 GB/s links, 4 GB guests) so every step is exact.
 */
import t from 'tap';
import {
  chooseMigration,
  estimateHybrid,
  estimateMigration,
  estimatePostcopy,
  estimatePrecopy,
  type MigrationParams,
} from '../../../plugins/policies/migration-estimate.js';

const base: MigrationParams = {
  memoryBytes: 4e9,
  bandwidthBps: 1e9,
  dirtyRateBps: 2.5e8, // r = D/B = 1/4
  downtimeLimitMs: 300,
  maxPasses: 30,
  overheadMs: 1000,
  switchoverMs: 500,
  hybridPrecopyPasses: 1,
};

t.test('pre-copy that converges', async (t) => {
  // pass 0: 4 GB in 4 s; 1 GB dirtied (1 s > 300 ms): pass 1, 1 s; 0.25 GB left = 250 ms <= 300 ms: stop and copy.
  // (M/B)(1 - r^3)/(1 - r) = 4 * (63/64) / (3/4) = 5.25 s, plus 1 s overhead
  t.same(estimatePrecopy(base), { mode: 'precopy', expectedMs: 6250, converges: true, rounds: 2, downtimeMs: 250 });
  t.same(estimateMigration(base, 'precopy'), estimatePrecopy(base));
  // a guest that dirties nothing: one pass, no downtime to speak of
  t.same(estimatePrecopy({ ...base, dirtyRateBps: 0 }), { mode: 'precopy', expectedMs: 5000, converges: true, rounds: 1, downtimeMs: 0 });
  // a guest small enough to stop and copy at once: 0.2 GB = 200 ms
  t.same(estimatePrecopy({ ...base, memoryBytes: 2e8 }), { mode: 'precopy', expectedMs: 1200, converges: true, rounds: 0, downtimeMs: 200 });
});

t.test('pre-copy that cannot converge: D >= B', async (t) => {
  // every pass resends all 4 GB (the guest cannot dirty more than it has): 5 passes of 4 s, then a forced 4 s stop-and-copy
  const e = estimatePrecopy({ ...base, dirtyRateBps: 1.5e9, maxPasses: 5 });
  t.same(e, { mode: 'precopy', expectedMs: 5 * 4000 + 4000 + 1000, converges: false, rounds: 5, downtimeMs: 4000 });
  t.equal(estimatePrecopy({ ...base, dirtyRateBps: 1e9, maxPasses: 3 }).converges, false, 'D = B does not converge either');
});

t.test('pre-copy that runs out of passes although D < B', async (t) => {
  const slow = { ...base, dirtyRateBps: 5e8 }; // r = 1/2
  // passes: 4 s, 2 s, 1 s, 0.5 s; then 0.25 GB = 250 ms fits: 7.75 s + 1 s
  t.same(estimatePrecopy(slow), { mode: 'precopy', expectedMs: 8750, converges: true, rounds: 4, downtimeMs: 250 });
  // only 3 passes: 4 + 2 + 1 = 7 s, then 0.5 GB left = 500 ms > 300 ms: forced switch-over, 7.5 s + 1 s
  t.same(estimatePrecopy({ ...slow, maxPasses: 3 }), { mode: 'precopy', expectedMs: 8500, converges: false, rounds: 3, downtimeMs: 500 });
});

t.test('post-copy and hybrid', async (t) => {
  // M/B + switch-over + overhead = 4000 + 500 + 1000
  t.same(estimatePostcopy(base), { mode: 'postcopy', expectedMs: 5500, converges: true, rounds: 0, downtimeMs: 500 });
  // one pass (4 s), switch over (0.5 s), then the 1 GB dirtied meanwhile (1 s), plus 1 s
  t.same(estimateHybrid(base), { mode: 'hybrid', expectedMs: 6500, converges: true, rounds: 1, downtimeMs: 500 });
  // a hybrid whose pre-copy converges within its passes just ends like pre-copy
  t.same(estimateHybrid({ ...base, hybridPrecopyPasses: 3 }), { mode: 'hybrid', expectedMs: 6250, converges: true, rounds: 2, downtimeMs: 250 });
  // post-copy finishes even when pre-copy never would
  t.equal(estimatePostcopy({ ...base, dirtyRateBps: 5e9 }).expectedMs, 5500);
});

t.test('choosing a mode for the time available', async (t) => {
  // pre-copy 6250, hybrid 6500, post-copy 5500
  t.equal(chooseMigration(base, 6250).estimate.mode, 'precopy', 'pre-copy exactly on the budget');
  t.equal(chooseMigration(base, 6249).estimate.mode, 'postcopy', '1 ms short: hybrid does not fit either, post-copy does');
  t.equal(chooseMigration(base, 6249).fits, true);
  const none = chooseMigration(base, 5499);
  t.equal(none.fits, false, 'nothing fits under 5.5 s');
  t.equal(none.estimate.mode, 'postcopy', 'the fastest is reported');
  t.equal(none.considered.length, 3);
  // pre-copy that does not converge is never chosen, however much time there is
  // (nor hybrid, whose pre-copy pass gains nothing when D >= B: 4 + 0.5 + 4 + 1 = 9.5 s for nothing)
  const dirty = { ...base, dirtyRateBps: 2e9, maxPasses: 2 };
  t.equal(estimateHybrid(dirty).expectedMs, 9500);
  t.equal(chooseMigration(dirty, 1e9).estimate.mode, 'postcopy', 'D >= B: straight to post-copy');
  t.equal(chooseMigration(base, 1e9).estimate.mode, 'precopy', 'all fit: pre-copy first');
  // hybrid preferred to post-copy when both fit: r = 1/2, pre-copy 8750, hybrid 4 + 0.5 + 2 + 1 = 7500, post-copy 5500
  t.equal(chooseMigration({ ...base, dirtyRateBps: 5e8 }, 8000).estimate.mode, 'hybrid');
  t.equal(chooseMigration({ ...base, dirtyRateBps: 5e8 }, 7499).estimate.mode, 'postcopy');
});

t.test('invalid inputs', async (t) => {
  t.throws(() => estimatePrecopy({ ...base, memoryBytes: 0 }), { name: 'RangeError', message: /memoryBytes must be a positive finite number/ });
  t.throws(() => estimatePrecopy({ ...base, bandwidthBps: Number.NaN }), { name: 'RangeError', message: /bandwidthBps/ });
  t.throws(() => estimatePostcopy({ ...base, dirtyRateBps: -1 }), { name: 'RangeError', message: /dirtyRateBps must be a non-negative/ });
  t.throws(() => estimateHybrid({ ...base, maxPasses: 0 }), { name: 'RangeError', message: /maxPasses must be an integer >= 1/ });
  t.throws(() => estimateHybrid({ ...base, hybridPrecopyPasses: 1.5 }), { name: 'RangeError', message: /hybridPrecopyPasses/ });
  t.throws(() => chooseMigration(base, -1), { name: 'RangeError', message: /available time/ });
});
