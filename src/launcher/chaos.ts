/**
 * Chaos quiesce: random quiesce -> freeze -> resume cycles against a running
 * job, as a diagnostic and as the shim's stress test. Every cycle's frozen
 * interval is verified (counters balanced, no MPI progress while frozen).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { QuiesceAbortedError, type NodeAgent } from '../agent/node-agent.js';
import { distribution, type Distribution } from '../util/stats.js';
import type { Logger } from '../log.js';

export interface ChaosOptions {
  /** Mean pause between cycles, ms (each pause is uniform in [0.5, 1.5] x this). */
  readonly intervalMs: number;
  /** Longest time ranks stay frozen in one cycle, ms. */
  readonly maxFrozenMs: number;
  /** Limit for one quiesce attempt, ms. */
  readonly quiesceTimeoutMs: number;
  readonly log: Logger;
  /** Random source in [0, 1); injectable for tests. */
  readonly random?: () => number;
}

export interface ChaosReport {
  readonly cycles: number;
  /** Cycles whose frozen interval was verified and found good. */
  readonly completed: number;
  /** Cycles resumed without a frozen-interval check (the job was resumed by someone else first); neither completed nor failed. */
  readonly unverified: number;
  readonly aborted: number;
  /** Frozen-interval checks that failed (must be 0). */
  readonly verifyFailures: number;
  readonly abortReasons: Record<string, number>;
  readonly failures: readonly string[];
  readonly catchupRounds: number;
  readonly drainedTotal: number;
  readonly phasesMs: {
    readonly hold: Distribution;
    readonly freeze: Distribution;
    readonly quiesce: Distribution;
    readonly resume: Distribution;
    /** Request -> last rank frozen / RESUME -> last rank running, by the ranks' own clocks. */
    readonly ranksFrozen: Distribution;
    readonly ranksResumed: Distribution;
  };
}

export class ChaosQuiescer {
  private stopped = false;
  private loop: Promise<void> | null = null;
  private readonly random: () => number;
  private readonly hold: number[] = [];
  private readonly freeze: number[] = [];
  private readonly quiesce: number[] = [];
  private readonly resume: number[] = [];
  private readonly ranksFrozen: number[] = [];
  private readonly ranksResumed: number[] = [];
  private readonly abortReasons: Record<string, number> = {};
  private readonly failures: string[] = [];
  private cycles = 0;
  private completed = 0;
  private unverified = 0;
  private aborted = 0;
  private verifyFailures = 0;
  private catchupRounds = 0;
  private drainedTotal = 0;

  constructor(
    private readonly agent: NodeAgent,
    private readonly options: ChaosOptions,
  ) {
    this.random = options.random ?? Math.random;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stop after the current cycle (which is always resumed). */
  async stop(): Promise<ChaosReport> {
    this.stopped = true;
    await this.loop;
    return this.report();
  }

  private async run(): Promise<void> {
    const { intervalMs, maxFrozenMs, quiesceTimeoutMs, log } = this.options;
    while (!this.stopped) {
      await sleep(intervalMs * (0.5 + this.random()));
      if (this.stopped) break;
      this.cycles++;
      try {
        const q = await this.agent.quiesce({ freeze: true, timeoutMs: quiesceTimeoutMs });
        this.hold.push(q.quiescentMs);
        this.freeze.push(q.totalMs - q.quiescentMs);
        this.quiesce.push(q.totalMs);
        if (q.ranksFrozenMs !== null) this.ranksFrozen.push(q.ranksFrozenMs);
        this.catchupRounds += q.catchupRounds;
        this.drainedTotal = Math.max(this.drainedTotal, q.summary.drainedTotal);
        await sleep(this.random() * maxFrozenMs);
        const r = await this.agent.resumeJob();
        this.resume.push(r.resumeMs);
        if (r.ranksResumedMs !== null) this.ranksResumed.push(r.ranksResumedMs);
        if (r.frozenCheck === null) {
          // The frozen interval was never checked (someone else resumed the
          // job in between): no proof either way, so the cycle is neither
          // completed (= verified) nor a failed check.
          this.unverified++;
          log.warn({ epoch: q.epoch }, 'chaos cycle resumed without a frozen-interval check');
        } else if (!r.frozenCheck.ok) {
          this.verifyFailures++;
          this.failures.push(`cycle ${this.cycles}: ${r.frozenCheck.reason}`);
          log.error({ epoch: q.epoch, reason: r.frozenCheck.reason }, 'frozen check failed');
        } else {
          this.completed++;
        }
      } catch (err) {
        this.aborted++;
        const reason = err instanceof QuiesceAbortedError ? err.kind : 'error';
        this.abortReasons[reason] = (this.abortReasons[reason] ?? 0) + 1;
        log.debug({ err: (err as Error).message }, 'chaos cycle abandoned');
        // the agent resumed the ranks; make sure before going on
        if (this.agent.segment.command().command !== 'run') await this.agent.resumeJob().catch(() => undefined);
      }
    }
  }

  report(): ChaosReport {
    return {
      cycles: this.cycles,
      completed: this.completed,
      unverified: this.unverified,
      aborted: this.aborted,
      verifyFailures: this.verifyFailures,
      abortReasons: { ...this.abortReasons },
      failures: [...this.failures],
      catchupRounds: this.catchupRounds,
      drainedTotal: this.drainedTotal,
      phasesMs: {
        hold: distribution(this.hold),
        freeze: distribution(this.freeze),
        quiesce: distribution(this.quiesce),
        resume: distribution(this.resume),
        ranksFrozen: distribution(this.ranksFrozen),
        ranksResumed: distribution(this.ranksResumed),
      },
    };
  }
}
