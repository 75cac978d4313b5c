/**
 * The node agent: owns this node's control segment, follows its ranks, and
 * runs quiesce / freeze / resume on them. Event-driven: the addon's watcher
 * thread tells us when any rank changed; timers only bound how long we wait.
 */
import { EventEmitter } from 'node:events';
import { ControlSegment, segmentNameFor, type SegmentEvent } from '../native.js';
import { QuiesceCoordinator, type QuiesceSummary } from '../quiesce/coordinator.js';
import type { NodeSnapshot, RankSnapshot } from '../quiesce/snapshot.js';
import type { Logger } from '../log.js';

export interface NodeAgentOptions {
  readonly jobId: string;
  /** Local rank slots in the segment (ranks on this node). */
  readonly slots: number;
  /** Largest MPI_COMM_WORLD the segment can count. */
  readonly worldSize: number;
  /** Ranks resume by themselves when held longer than this. */
  readonly resumeTimeoutMs: number;
  /** A quiesce attempt with no progress for this long is abandoned. */
  readonly stallMs: number;
  readonly log: Logger;
  /** Shared-memory object name; default /symbio-<job>-<pid>. */
  readonly segmentName?: string;
}

export interface PhaseTiming {
  readonly name: string;
  readonly ms: number;
}

export interface QuiesceOutcome {
  readonly epoch: number;
  readonly frozen: boolean;
  /** Request -> every rank held and counters balanced. */
  readonly quiescentMs: number;
  /** Request -> every rank frozen (equals quiescentMs when not freezing). */
  readonly totalMs: number;
  readonly catchupRounds: number;
  /** HOLD written -> the last rank frozen, by the ranks' own clocks (null without freeze). */
  readonly ranksFrozenMs: number | null;
  readonly summary: QuiesceSummary;
  readonly phases: readonly PhaseTiming[];
}

export interface ResumeOutcome {
  readonly epoch: number;
  /** RESUME written -> every live rank seen running again by the agent. */
  readonly resumeMs: number;
  /** RESUME written -> the last rank running, by the ranks' own clocks. */
  readonly ranksResumedMs: number | null;
  /** Frozen-interval verification (null when the job was only held). */
  readonly frozenCheck: { ok: true } | { ok: false; reason: string } | null;
}

export class QuiesceAbortedError extends Error {
  constructor(
    readonly epoch: number,
    readonly reason: string,
    readonly kind: 'stalled' | 'refused' | 'timeout' | 'closed',
  ) {
    super(`quiesce ${epoch} abandoned (${kind}): ${reason}`);
    this.name = 'QuiesceAbortedError';
  }
}

export interface AttachedRank {
  readonly slot: number;
  readonly pid: number;
  readonly worldRank: number;
}

export interface NodeAgentEvents {
  'rank-attached': [AttachedRank];
  'rank-exit': [AttachedRank];
}

const nowMs = (): number => performance.now();
/** CLOCK_MONOTONIC in ns: the clock the ranks stamp their slots with (libuv's hrtime is the same clock on Linux). */
const monoNs = (): number => Number(process.hrtime.bigint());

/** Milliseconds from `sinceNs` to the latest of the ranks' `field` stamps. */
function lastStampMs(snap: NodeSnapshot, field: 'frozenNs' | 'resumedNs', sinceNs: number): number | null {
  const stamps = snap.ranks.filter(isLive).map((r) => r[field]);
  if (stamps.length === 0) return null;
  return (Math.max(...stamps) - sinceNs) / 1e6;
}

function isLive(r: RankSnapshot): boolean {
  return r.state !== 'empty' && r.state !== 'finalized' && r.state !== 'detached';
}

export class NodeAgent extends EventEmitter<NodeAgentEvents> {
  readonly segment: ControlSegment;
  readonly attached = new Map<number, AttachedRank>();
  /** Ranks whose process ended (pidfd), by slot. */
  readonly exited = new Map<number, AttachedRank>();
  private readonly coordinator: QuiesceCoordinator;
  private readonly log: Logger;
  private changeWaiters: Array<() => void> = [];
  private busy = false;
  private frozenSnapshot: NodeSnapshot | null = null;
  private closed = false;

  constructor(private readonly options: NodeAgentOptions) {
    super();
    this.log = options.log;
    const name = options.segmentName ?? segmentNameFor(options.jobId);
    this.segment = new ControlSegment({
      name,
      slots: options.slots,
      worldSize: options.worldSize,
      resumeTimeoutMs: options.resumeTimeoutMs,
      jobId: options.jobId,
    });
    this.coordinator = new QuiesceCoordinator({ stallMs: options.stallMs });
    this.segment.watch((ev) => this.onEvent(ev));
    this.log.debug({ segment: name, slots: options.slots }, 'control segment created');
  }

  get segmentName(): string {
    return this.segment.name;
  }

  /** Is an operation (quiesce .. resume) under way? */
  get operating(): boolean {
    return this.busy || this.frozenSnapshot !== null || this.segment.command().command !== 'run';
  }

  snapshot(): NodeSnapshot {
    return this.segment.snapshot();
  }

  private onEvent(ev: SegmentEvent): void {
    if (ev.type === 'rank-attached') {
      const r = { slot: ev.slot, pid: ev.pid, worldRank: ev.worldRank };
      this.attached.set(ev.slot, r);
      this.log.debug(r, 'rank attached');
      this.emit('rank-attached', r);
    } else if (ev.type === 'rank-exit') {
      const r = this.attached.get(ev.slot) ?? { slot: ev.slot, pid: ev.pid, worldRank: ev.worldRank };
      this.exited.set(ev.slot, r);
      this.log.debug(r, 'rank exited');
      this.emit('rank-exit', r);
    }
    // every event may change what a waiting operation sees
    const waiters = this.changeWaiters;
    this.changeWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves on the next change from the ranks, or after `ms`. */
  private nextChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.changeWaiters.push(done);
    });
  }

  /**
   * Bring every rank to a held (and, with freeze, frozen) state with counters
   * balanced. On any failure the ranks are resumed before this rejects.
   */
  async quiesce(opts: { freeze: boolean; timeoutMs: number }): Promise<QuiesceOutcome> {
    if (this.closed) throw new QuiesceAbortedError(0, 'agent closed', 'closed');
    if (this.operating) throw new Error('an operation is already under way on this job (resume it first)');
    this.busy = true;
    const t0 = nowMs();
    const t0Ns = monoNs();
    const epoch = this.segment.hold();
    this.coordinator.begin(epoch, t0);
    const phases: PhaseTiming[] = [];
    let catchupRounds = 0;
    try {
      let summary: QuiesceSummary | null = null;
      while (summary === null) {
        if (this.closed) throw new QuiesceAbortedError(epoch, 'agent closed', 'closed');
        const now = nowMs();
        if (now - t0 > opts.timeoutMs) {
          throw new QuiesceAbortedError(epoch, `not quiescent within ${opts.timeoutMs} ms`, 'timeout');
        }
        const snap = this.segment.snapshot();
        const dead = snap.ranks.find((r) => isLive(r) && this.exited.get(r.slot)?.pid === r.pid);
        if (dead) {
          throw new QuiesceAbortedError(epoch, `rank ${dead.worldRank} (pid ${dead.pid}) died without finalizing`, 'refused');
        }
        const d = this.coordinator.evaluate([snap], now);
        switch (d.kind) {
          case 'quiescent':
            summary = d;
            break;
          case 'catchup':
            catchupRounds++;
            for (const [key, targets] of d.targets) {
              const slot = Number(key.slice(key.lastIndexOf(':') + 1));
              this.segment.setCatchup(slot, d.epoch, targets);
            }
            this.log.debug({ epoch, reason: d.reason }, 'collective catch-up');
            break;
          case 'waiting':
            await this.nextChange(Math.min(10, this.options.stallMs));
            break;
          case 'stalled':
          case 'refused':
            throw new QuiesceAbortedError(epoch, d.reason, d.kind);
        }
      }
      const tQuiescent = nowMs();
      phases.push({ name: 'hold', ms: tQuiescent - t0 });
      let frozen = false;
      let ranksFrozenMs: number | null = null;
      if (opts.freeze) {
        this.segment.freeze();
        this.frozenSnapshot = await this.waitAll(epoch, 'frozen', opts.timeoutMs - (tQuiescent - t0));
        frozen = true;
        ranksFrozenMs = lastStampMs(this.frozenSnapshot, 'frozenNs', t0Ns);
        phases.push({ name: 'freeze', ms: nowMs() - tQuiescent });
      }
      const totalMs = nowMs() - t0;
      return { epoch, frozen, quiescentMs: tQuiescent - t0, totalMs, catchupRounds, ranksFrozenMs, summary, phases };
    } catch (err) {
      this.segment.resume();
      this.frozenSnapshot = null;
      throw err;
    } finally {
      this.busy = false;
    }
  }

  /** Wait until every live rank is in `state` for this epoch; returns that snapshot. */
  private async waitAll(epoch: number, state: 'frozen' | 'running', timeoutMs: number): Promise<NodeSnapshot> {
    const t0 = nowMs();
    for (;;) {
      const snap = this.segment.snapshot();
      const pending = snap.ranks.filter((r) => isLive(r) && !(r.state === state && (state === 'running' || r.ackEpoch === epoch)));
      if (snap.consistent && pending.length === 0) return snap;
      if (nowMs() - t0 > timeoutMs) {
        const who = pending.map((r) => `rank ${r.worldRank} ${r.state}`).join(', ');
        throw new QuiesceAbortedError(epoch, `ranks not ${state} within ${Math.round(timeoutMs)} ms: ${who}`, 'timeout');
      }
      await this.nextChange(10);
    }
  }

  /** Let the ranks run again; verifies the frozen interval first. */
  async resume(timeoutMs = 10_000): Promise<ResumeOutcome> {
    const { epoch, command } = this.segment.command();
    let frozenCheck: ResumeOutcome['frozenCheck'] = null;
    if (this.frozenSnapshot) {
      frozenCheck = this.coordinator.verifyFrozen([this.frozenSnapshot], [this.segment.snapshot()]);
      this.frozenSnapshot = null;
    }
    const t0 = nowMs();
    const t0Ns = monoNs();
    this.segment.resume();
    if (command === 'run') return { epoch, resumeMs: 0, ranksResumedMs: null, frozenCheck };
    const snap = await this.waitAll(epoch, 'running', timeoutMs);
    return { epoch, resumeMs: nowMs() - t0, ranksResumedMs: lastStampMs(snap, 'resumedNs', t0Ns), frozenCheck };
  }

  /** Resolves when `n` ranks have attached (or rejects after timeoutMs). */
  waitForRanks(n: number, timeoutMs: number): Promise<void> {
    if (this.attached.size >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onAttach = (): void => {
        if (this.attached.size >= n) finish();
      };
      const timer = setTimeout(() => {
        this.off('rank-attached', onAttach);
        reject(new Error(`only ${this.attached.size} of ${n} ranks attached within ${timeoutMs} ms`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.off('rank-attached', onAttach);
        resolve();
      };
      this.on('rank-attached', onAttach);
    });
  }

  /** Resume anything held and release the segment. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.segment.command().command !== 'run') this.segment.resume();
    } finally {
      this.segment.close();
      const waiters = this.changeWaiters;
      this.changeWaiters = [];
      for (const w of waiters) w();
    }
  }
}
