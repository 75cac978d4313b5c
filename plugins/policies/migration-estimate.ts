/**
 * How long a live migration of a VM (or of several VMs leaving one host
 * together) is expected to take, per mode, and which mode to pick for the
 * time left before a predicted failure. Pure arithmetic.
 *
 * Model (the classic iterative pre-copy analysis; see C. Clark et al., "Live
 * Migration of Virtual Machines", NSDI 2005, and QEMU's migration
 * documentation for pre-copy, post-copy and the downtime limit):
 * - pre-copy: pass 0 sends all memory M at bandwidth B, taking M/B; meanwhile
 *   the guest dirties D * M/B bytes, which pass 1 sends, and so on: pass i
 *   sends M r^i with r = D/B (never more than M: the guest cannot dirty more
 *   memory than it has). Before each pass, if what is left fits in the
 *   downtime limit (remainder / B <= limit) the VM is stopped and the
 *   remainder copied (stop-and-copy). So with n passes
 *     time = (M/B) (1 + r + ... + r^n) = (M/B) (1 - r^(n+1)) / (1 - r),
 *   and it converges when it reaches that point within `maxPasses`. When it
 *   does not (D >= B, or too few passes), the estimate is the time of a
 *   switch-over forced after the last pass, with the downtime that implies.
 * - post-copy: switch over at once (device state, `switchoverMs`), then the
 *   destination pulls all memory: M/B + switchover. It always finishes, but
 *   until it has, the VM's memory is split across two hosts, and the source
 *   failing then loses the VM: the riskiest mode on a failing host.
 * - hybrid: `hybridPrecopyPasses` pre-copy passes, then post-copy for what is
 *   dirty: most memory is already across when the split starts.
 * Every mode adds `overheadMs` per operation: quiescing MPI, detaching and
 * re-attaching devices, resuming.
 */
import type { MigrationMode } from '../../src/index.js';

export interface MigrationParams {
  /** Memory to move, bytes (the sum over the VMs that move together). */
  readonly memoryBytes: number;
  /** Migration bandwidth, bytes/s (shared by the VMs that move together). */
  readonly bandwidthBps: number;
  /** Rate at which the guest(s) dirty memory, bytes/s. */
  readonly dirtyRateBps: number;
  /** Longest acceptable stop-and-copy, ms (QEMU's downtime-limit; its default is 300 ms). */
  readonly downtimeLimitMs: number;
  /** Most pre-copy passes before giving up on convergence. */
  readonly maxPasses: number;
  /** Fixed cost of the operation around the copy (quiesce, device detach/attach, resume), ms. */
  readonly overheadMs: number;
  /** Post-copy switch-over (stop, send device state, start at the destination), ms. */
  readonly switchoverMs: number;
  /** Pre-copy passes a hybrid migration makes before switching to post-copy. */
  readonly hybridPrecopyPasses: number;
}

export interface MigrationEstimate {
  readonly mode: MigrationMode;
  /** Expected duration of the whole operation, overhead included, ms. */
  readonly expectedMs: number;
  /** Whether it finishes within the limits: pre-copy, that the remainder fit the downtime limit within maxPasses. */
  readonly converges: boolean;
  /** Pre-copy passes made (the stop-and-copy is not counted). */
  readonly rounds: number;
  /** Time the VM is stopped, ms (stop-and-copy, or the post-copy switch-over). */
  readonly downtimeMs: number;
}

function check(p: MigrationParams): void {
  const positive: Array<[string, number]> = [
    ['memoryBytes', p.memoryBytes],
    ['bandwidthBps', p.bandwidthBps],
  ];
  const nonNegative: Array<[string, number]> = [
    ['dirtyRateBps', p.dirtyRateBps],
    ['downtimeLimitMs', p.downtimeLimitMs],
    ['overheadMs', p.overheadMs],
    ['switchoverMs', p.switchoverMs],
  ];
  for (const [name, v] of positive) if (!(Number.isFinite(v) && v > 0)) throw new RangeError(`${name} must be a positive finite number, got ${v}`);
  for (const [name, v] of nonNegative) if (!(Number.isFinite(v) && v >= 0)) throw new RangeError(`${name} must be a non-negative finite number, got ${v}`);
  if (!(Number.isInteger(p.maxPasses) && p.maxPasses >= 1)) throw new RangeError(`maxPasses must be an integer >= 1, got ${p.maxPasses}`);
  if (!(Number.isInteger(p.hybridPrecopyPasses) && p.hybridPrecopyPasses >= 0)) {
    throw new RangeError(`hybridPrecopyPasses must be an integer >= 0, got ${p.hybridPrecopyPasses}`);
  }
}

/** Up to `passes` pre-copy passes; stops early when the remainder fits the downtime limit. */
function precopyPasses(p: MigrationParams, passes: number): { copyMs: number; remainderBytes: number; rounds: number; fits: boolean } {
  const r = p.dirtyRateBps / p.bandwidthBps;
  const budgetMs = p.downtimeLimitMs;
  let remainder = p.memoryBytes;
  let copyMs = 0;
  let rounds = 0;
  while ((remainder / p.bandwidthBps) * 1000 > budgetMs) {
    if (rounds >= passes) return { copyMs, remainderBytes: remainder, rounds, fits: false };
    copyMs += (remainder / p.bandwidthBps) * 1000;
    rounds++;
    remainder = Math.min(p.memoryBytes, remainder * r);
  }
  return { copyMs, remainderBytes: remainder, rounds, fits: true };
}

export function estimatePrecopy(p: MigrationParams): MigrationEstimate {
  check(p);
  const { copyMs, remainderBytes, rounds, fits } = precopyPasses(p, p.maxPasses);
  const downtimeMs = (remainderBytes / p.bandwidthBps) * 1000;
  return { mode: 'precopy', expectedMs: copyMs + downtimeMs + p.overheadMs, converges: fits, rounds, downtimeMs };
}

export function estimatePostcopy(p: MigrationParams): MigrationEstimate {
  check(p);
  const copyMs = (p.memoryBytes / p.bandwidthBps) * 1000;
  return { mode: 'postcopy', expectedMs: copyMs + p.switchoverMs + p.overheadMs, converges: true, rounds: 0, downtimeMs: p.switchoverMs };
}

export function estimateHybrid(p: MigrationParams): MigrationEstimate {
  check(p);
  const { copyMs, remainderBytes, rounds, fits } = precopyPasses(p, p.hybridPrecopyPasses);
  const restMs = (remainderBytes / p.bandwidthBps) * 1000;
  // converged during the pre-copy passes: it ends as a pre-copy would, no post-copy phase
  if (fits) return { mode: 'hybrid', expectedMs: copyMs + restMs + p.overheadMs, converges: true, rounds, downtimeMs: restMs };
  return { mode: 'hybrid', expectedMs: copyMs + p.switchoverMs + restMs + p.overheadMs, converges: true, rounds, downtimeMs: p.switchoverMs };
}

export function estimateMigration(p: MigrationParams, mode: MigrationMode): MigrationEstimate {
  switch (mode) {
    case 'precopy':
      return estimatePrecopy(p);
    case 'postcopy':
      return estimatePostcopy(p);
    case 'hybrid':
      return estimateHybrid(p);
  }
}

export interface MigrationChoice {
  /** Whether `estimate` finishes within the time available. */
  readonly fits: boolean;
  /** The chosen mode's estimate; when nothing fits, the fastest one. */
  readonly estimate: MigrationEstimate;
  /** All three, in order of preference. */
  readonly considered: readonly MigrationEstimate[];
}

/**
 * The safest mode that finishes within `availableMs`: pre-copy when it
 * converges in time (the source keeps a complete VM until the switch-over),
 * else hybrid (the split window is only the last dirty pages; not when
 * D >= B, where its pre-copy pass gains nothing), else post-copy. When none fits, `fits` is false and `estimate` is the fastest,
 * so a caller can say by how much it misses.
 */
export function chooseMigration(p: MigrationParams, availableMs: number): MigrationChoice {
  if (!(availableMs >= 0)) throw new RangeError(`available time must be a non-negative number of ms, got ${availableMs}`);
  const considered = [estimatePrecopy(p), estimateHybrid(p), estimatePostcopy(p)];
  // when the guest dirties as fast as the link copies, hybrid's pre-copy pass
  // leaves as much to pull as before it: only later, no safer
  const useful = (e: MigrationEstimate) => e.mode !== 'hybrid' || p.dirtyRateBps < p.bandwidthBps;
  const pick = considered.find((e) => e.converges && useful(e) && e.expectedMs <= availableMs);
  if (pick) return { fits: true, estimate: pick, considered };
  const fastest = considered.filter((e) => e.converges).reduce((a, b) => (b.expectedMs < a.expectedMs ? b : a));
  return { fits: false, estimate: fastest, considered };
}
