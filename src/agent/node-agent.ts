/**
 * The node agent: owns this node's control segment, follows its ranks, and
 * runs quiesce / freeze / resume on them. Event-driven: the addon's watcher
 * thread tells us when any rank changed; timers only bound how long we wait.
 */
import { EventEmitter } from 'node:events';
import { ControlSegment, segmentNameFor, type SegmentEvent } from '../native.js';
import {
  JobQuiescer,
  QuiesceAbortedError,
  type ParticipantReport,
  type QuiesceOutcome,
  type QuiesceParticipant,
  type ResumeOutcome,
} from '../quiesce/job-quiescer.js';
import type { CatchupTarget, NodeSnapshot } from '../quiesce/snapshot.js';
import type { Logger } from '../log.js';

export { QuiesceAbortedError, type QuiesceOutcome, type ResumeOutcome };
export type { PhaseTiming } from '../quiesce/job-quiescer.js';

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
  /** Node name in snapshots ('' when this agent is the job's only one). */
  readonly node?: string;
}

export interface AttachedRank {
  readonly slot: number;
  readonly pid: number;
  readonly worldRank: number;
}

export interface NodeAgentEvents {
  /** Any rank changed anything (state, counters, attach, exit). */
  changed: [];
  'rank-attached': [AttachedRank];
  'rank-exit': [AttachedRank];
}

/** CLOCK_MONOTONIC in ns: the clock the ranks stamp their slots with (libuv's hrtime is the same clock on Linux). */
const monoNs = (): number => Number(process.hrtime.bigint());

export class NodeAgent extends EventEmitter<NodeAgentEvents> implements QuiesceParticipant {
  readonly segment: ControlSegment;
  readonly node: string;
  readonly attached = new Map<number, AttachedRank>();
  /** Ranks whose process ended (pidfd), by slot. */
  readonly exited = new Map<number, AttachedRank>();
  /** Quiesces this node alone (the embedded case); a controller uses its own JobQuiescer over agents. */
  private readonly quiescer: JobQuiescer;
  private readonly log: Logger;
  private closed = false;

  constructor(options: NodeAgentOptions) {
    super();
    this.log = options.log;
    this.node = options.node ?? '';
    const name = options.segmentName ?? segmentNameFor(options.jobId);
    this.segment = new ControlSegment({
      name,
      slots: options.slots,
      worldSize: options.worldSize,
      resumeTimeoutMs: options.resumeTimeoutMs,
      jobId: options.jobId,
    });
    this.quiescer = new JobQuiescer([this], { stallMs: options.stallMs, log: this.log });
    this.segment.watch((ev) => this.onEvent(ev));
    this.log.debug({ segment: name, slots: options.slots }, 'control segment created');
  }

  get segmentName(): string {
    return this.segment.name;
  }

  /** Is an operation (quiesce .. resume) under way? */
  get operating(): boolean {
    return this.quiescer.operating || this.segment.command().command !== 'run';
  }

  snapshot(): NodeSnapshot {
    return this.segment.snapshot(this.node);
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
    this.emit('changed');
  }

  // ---- QuiesceParticipant: this node's segment, for a JobQuiescer (ours or a controller's) ----

  async report(): Promise<ParticipantReport> {
    if (this.closed) throw new QuiesceAbortedError(0, 'agent closed', 'closed');
    return { snapshot: this.snapshot(), exited: [...this.exited.values()].map((r) => ({ slot: r.slot, pid: r.pid })) };
  }

  async hold(epoch: number): Promise<number> {
    const t = monoNs();
    this.segment.hold(epoch);
    return t;
  }

  async freeze(): Promise<number> {
    const t = monoNs();
    this.segment.freeze();
    return t;
  }

  async resume(): Promise<number> {
    const t = monoNs();
    if (!this.segment.closed) this.segment.resume();
    return t;
  }

  async setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): Promise<void> {
    this.segment.setCatchup(slot, epoch, targets);
  }

  subscribe(listener: () => void): () => void {
    this.on('changed', listener);
    return () => this.off('changed', listener);
  }

  // ---- the embedded case: this node is the whole job ----

  /**
   * Bring every rank to a held (and, with freeze, frozen) state with counters
   * balanced. On any failure the ranks are resumed before this rejects.
   */
  async quiesce(opts: { freeze: boolean; timeoutMs: number }): Promise<QuiesceOutcome> {
    if (this.closed) throw new QuiesceAbortedError(0, 'agent closed', 'closed');
    if (this.operating) throw new Error('an operation is already under way on this job (resume it first)');
    return this.quiescer.quiesce(opts);
  }

  /** Let the ranks run again; verifies the frozen interval first. */
  async resumeJob(timeoutMs = 10_000): Promise<ResumeOutcome> {
    if (this.quiescer.operating) return this.quiescer.resume(timeoutMs);
    // held by someone else's order (a controller's quiescer that went away): just release
    const epoch = this.segment.command().epoch;
    await this.resume();
    return { epoch, resumeMs: 0, ranksResumedMs: null, frozenCheck: null, selfResumed: null };
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
    this.quiescer.close();
    try {
      if (!this.segment.closed && this.segment.command().command !== 'run') this.segment.resume();
    } finally {
      this.segment.close();
      this.emit('changed'); // a waiting quiesce sees the end at once
    }
  }
}
