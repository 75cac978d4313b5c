/**
 * Quiesce, freeze and resume one job across every node it runs on. Each node
 * is a QuiesceParticipant: the embedded agent's own segment, or a remote
 * agent reached over the controller's socket. The decision is the
 * coordinator's, over all nodes' snapshots together; the ranks are told
 * through each participant. On any failure every node is resumed before the
 * error propagates: a job is never left held by a failed attempt.
 */
import { QuiesceCoordinator, slotKey, type QuiesceSummary } from './coordinator.js';
import type { CatchupTarget, NodeSnapshot, RankSnapshot } from './snapshot.js';
import type { Logger } from '../log.js';

/** What a participant knows at one moment. */
export interface ParticipantReport {
  readonly snapshot: NodeSnapshot;
  /** Ranks whose process ended (the agent saw it through a pidfd). */
  readonly exited: readonly { readonly slot: number; readonly pid: number }[];
}

/** One node of the job, as the quiescer drives it. Times are that node's CLOCK_MONOTONIC ns. */
export interface QuiesceParticipant {
  readonly node: string;
  /** The node's ranks now (`fresh`), or as last reported when that is cheaper and may be a little old. */
  report(fresh?: boolean): Promise<ParticipantReport>;
  /** Publish HOLD at `epoch`; resolves with when it was issued. */
  hold(epoch: number): Promise<number>;
  freeze(): Promise<number>;
  resume(): Promise<number>;
  setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): Promise<void>;
  /** Calls `listener` on every change of the node's ranks until the returned function is called. */
  subscribe(listener: () => void): () => void;
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
  /**
   * The controller's own share: from the last change any node reported
   * before the verdict (or from HOLD, if none came after it) to the verdict.
   * The rest of quiescentMs is the ranks and the network.
   */
  readonly decisionMs: number;
  /** HOLD written -> the last rank frozen, by the ranks' own clocks (max over nodes; null without freeze). */
  readonly ranksFrozenMs: number | null;
  readonly summary: QuiesceSummary;
  readonly phases: readonly PhaseTiming[];
}

export interface ResumeOutcome {
  readonly epoch: number;
  /** RESUME written -> every live rank seen running again. */
  readonly resumeMs: number;
  /** RESUME written -> the last rank running, by the ranks' own clocks (max over nodes). */
  readonly ranksResumedMs: number | null;
  /** Frozen-interval verification (null when the job was only held). */
  readonly frozenCheck: { ok: true } | { ok: false; reason: string } | null;
  /**
   * Ranks that were already running before RESUME (they resumed by
   * themselves: the agent was gone or the resume limit passed), and why.
   * Then the frozen interval cannot be proven, and nothing is wrong either.
   */
  readonly selfResumed: string | null;
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

export interface JobQuiescerOptions {
  /** A quiesce attempt with no progress for this long is abandoned. */
  readonly stallMs: number;
  readonly log: Logger;
}

const nowMs = (): number => performance.now();

function isLive(r: RankSnapshot): boolean {
  return r.state !== 'empty' && r.state !== 'finalized' && r.state !== 'detached';
}

/** ms from each node's issue time to the latest of its ranks' `field` stamps; max over nodes. */
function lastStampMs(snaps: readonly NodeSnapshot[], issued: ReadonlyMap<string, number>, field: 'frozenNs' | 'resumedNs'): number | null {
  let best: number | null = null;
  for (const snap of snaps) {
    const since = issued.get(snap.node);
    if (since === undefined) continue;
    for (const r of snap.ranks) {
      if (!isLive(r)) continue;
      const ms = (r[field] - since) / 1e6;
      if (best === null || ms > best) best = ms;
    }
  }
  return best;
}

export class JobQuiescer {
  #participants: QuiesceParticipant[] = [];
  readonly #subscriptions = new Map<QuiesceParticipant, () => void>();
  /** Resolves the current wait for a change (one at a time). */
  #changed: (() => void) | null = null;
  /** How long the last evaluation took: at scale, wait that long again for changes to batch up. */
  #lastEvalMs = 0;
  /** performance.now() of the last change any node reported. */
  #lastChangeAt = 0;
  /** Changes seen so far: a change that comes while no wait is armed is not lost. */
  #changeCount = 0;
  readonly #coordinator: QuiesceCoordinator;
  readonly #log: Logger;
  #busy = false;
  #closed = false;
  /** Set while frozen: the snapshots the resume verification compares against. */
  #frozen: NodeSnapshot[] | null = null;
  /** Epoch and command of the last order given (the job's state as far as we know). */
  #epoch = 0;
  #command: 'run' | 'hold' | 'freeze' = 'run';

  constructor(participants: readonly QuiesceParticipant[], options: JobQuiescerOptions) {
    this.#attach(participants);
    this.#coordinator = new QuiesceCoordinator({ stallMs: options.stallMs });
    this.#log = options.log;
  }

  /** The nodes driven (a node joins when its agent attaches). */
  setParticipants(participants: readonly QuiesceParticipant[]): void {
    if (this.#busy) throw new Error('cannot change the nodes of a job while it is being quiesced');
    this.#attach(participants);
  }

  #attach(participants: readonly QuiesceParticipant[]): void {
    // One listener per node for as long as it is a participant: nodes that
    // stay keep theirs (a job gaining its thousandth node costs one, not all).
    const keep = new Set(participants);
    for (const [p, unsubscribe] of this.#subscriptions) {
      if (!keep.has(p)) {
        unsubscribe();
        this.#subscriptions.delete(p);
      }
    }
    for (const p of participants) if (!this.#subscriptions.has(p)) this.#subscriptions.set(p, p.subscribe(this.#onChange));
    this.#participants = [...participants];
  }

  readonly #onChange = (): void => {
    this.#lastChangeAt = nowMs();
    this.#changeCount++;
    this.#changed?.();
  };

  get participants(): readonly QuiesceParticipant[] {
    return this.#participants;
  }

  /** held or frozen by an order of ours, or an attempt under way. */
  get operating(): boolean {
    return this.#busy || this.#command !== 'run';
  }

  get command(): 'run' | 'hold' | 'freeze' {
    return this.#command;
  }

  async #reports(fresh = false): Promise<ParticipantReport[]> {
    return Promise.all(this.#participants.map((p) => p.report(fresh)));
  }

  async #all<T>(f: (p: QuiesceParticipant) => Promise<T>): Promise<T[]> {
    return Promise.all(this.#participants.map(f));
  }

  /**
   * Resolves at the first change on any node, or after ms. When evaluating
   * has become expensive (many ranks), it first lets changes pile up for about
   * as long as an evaluation takes, so a burst of reports is judged once.
   */
  async #nextChange(ms: number, seen: number): Promise<void> {
    // something changed since the caller last looked (while it was reading or evaluating)
    if (this.#changeCount !== seen) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        if (self.#changed === done) self.#changed = null;
        resolve();
      }
      this.#changed = done;
    });
    if (this.#lastEvalMs > 1) await new Promise((r) => setTimeout(r, Math.min(20, 2 * this.#lastEvalMs)));
  }

  /**
   * Bring every rank on every node to held (and, with freeze, frozen) with
   * counters balanced across nodes. On any failure all nodes are resumed
   * before this rejects.
   */
  async quiesce(opts: { freeze: boolean; timeoutMs: number }): Promise<QuiesceOutcome> {
    if (this.#closed) throw new QuiesceAbortedError(0, 'job closed', 'closed');
    if (this.operating) throw new Error(`the job is already ${this.#busy ? 'being quiesced' : this.#command === 'freeze' ? 'frozen' : 'held'} (resume it first)`);
    if (this.#participants.length === 0) throw new QuiesceAbortedError(0, 'no agent attached to the job', 'refused');
    this.#busy = true;
    const t0 = nowMs();
    let epoch = 0;
    try {
      // One epoch for all nodes: after every node's current one (fresh: a pushed report may be old).
      const before = await this.#reports(true);
      epoch = Math.max(this.#epoch, ...before.map((r) => r.snapshot.epoch)) + 1;
      const holdIssued = new Map<string, number>();
      this.#command = 'hold';
      this.#epoch = epoch;
      await this.#all(async (p) => holdIssued.set(p.node, await p.hold(epoch)));
      const tHold = nowMs();
      this.#coordinator.begin(epoch, t0);
      let catchupRounds = 0;
      let summary: QuiesceSummary | null = null;
      while (summary === null) {
        if (this.#closed) throw new QuiesceAbortedError(epoch, 'job closed', 'closed');
        const now = nowMs();
        if (now - t0 > opts.timeoutMs) throw new QuiesceAbortedError(epoch, `not quiescent within ${opts.timeoutMs} ms`, 'timeout');
        const seen = this.#changeCount;
        const reports = await this.#reports();
        for (const rep of reports) {
          const dead = rep.snapshot.ranks.find((r) => isLive(r) && rep.exited.some((e) => e.slot === r.slot && e.pid === r.pid));
          if (dead) {
            const where = rep.snapshot.node ? ` on node ${rep.snapshot.node}` : '';
            throw new QuiesceAbortedError(epoch, `rank ${dead.worldRank} (pid ${dead.pid}${where}) died without finalizing`, 'refused');
          }
        }
        const e0 = nowMs();
        const d = this.#coordinator.evaluate(reports.map((r) => r.snapshot), e0);
        this.#lastEvalMs = nowMs() - e0;
        switch (d.kind) {
          case 'quiescent':
            summary = d;
            break;
          case 'catchup': {
            catchupRounds++;
            const byNode = new Map(this.#participants.map((p) => [p.node, p]));
            const orders: Promise<void>[] = [];
            for (const [key, targets] of d.targets) {
              const cut = key.lastIndexOf(':');
              const p = byNode.get(key.slice(0, cut));
              if (p) orders.push(p.setCatchup(Number(key.slice(cut + 1)), d.epoch, targets));
            }
            await Promise.all(orders);
            this.#log.debug({ epoch, reason: d.reason }, 'collective catch-up');
            break;
          }
          case 'waiting':
            await this.#nextChange(10, seen);
            break;
          case 'stalled':
          case 'refused':
            throw new QuiesceAbortedError(epoch, d.reason, d.kind);
        }
      }
      const tQuiescent = nowMs();
      const decisionMs = tQuiescent - Math.max(this.#lastChangeAt, tHold);
      const phases: PhaseTiming[] = [{ name: 'hold', ms: tQuiescent - t0 }];
      let ranksFrozenMs: number | null = null;
      if (opts.freeze) {
        if (this.#closed) throw new QuiesceAbortedError(epoch, 'job closed', 'closed');
        this.#command = 'freeze';
        await this.#all((p) => p.freeze());
        const frozen = await this.#waitAll(epoch, 'frozen', opts.timeoutMs - (tQuiescent - t0), true);
        this.#frozen = frozen;
        ranksFrozenMs = lastStampMs(frozen, holdIssued, 'frozenNs');
        phases.push({ name: 'freeze', ms: nowMs() - tQuiescent });
      }
      return { epoch, frozen: opts.freeze, quiescentMs: tQuiescent - t0, totalMs: nowMs() - t0, catchupRounds, decisionMs, ranksFrozenMs, summary, phases };
    } catch (err) {
      await this.#resumeAll().catch((e: Error) => this.#log.error({ err: e.message }, 'resume after a failed quiesce failed'));
      throw err;
    } finally {
      this.#busy = false;
    }
  }

  async #resumeAll(): Promise<Map<string, number>> {
    this.#command = 'run';
    this.#frozen = null;
    const issued = new Map<string, number>();
    const results = await Promise.allSettled(this.#participants.map(async (p) => issued.set(p.node, await p.resume())));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason instanceof Error ? failed.reason : new Error(String(failed.reason));
    return issued;
  }

  /**
   * Wait until every live rank on every node is in `state` (for this epoch
   * when frozen). A rank whose process is gone is not waited for.
   * `closeAborts`: a close() ends the wait (freezing); resuming goes on.
   */
  async #waitAll(epoch: number, state: 'frozen' | 'running', timeoutMs: number, closeAborts = false): Promise<NodeSnapshot[]> {
    const t0 = nowMs();
    for (;;) {
      if (closeAborts && this.#closed) throw new QuiesceAbortedError(epoch, 'job closed', 'closed');
      const seen = this.#changeCount;
      const reports = await this.#reports();
      const snaps = reports.map((r) => r.snapshot);
      const pending = reports.flatMap((rep) =>
        rep.snapshot.ranks.filter(
          (r) =>
            isLive(r) &&
            !rep.exited.some((e) => e.slot === r.slot && e.pid === r.pid) &&
            !(r.state === state && (state === 'running' || r.ackEpoch === epoch)),
        ),
      );
      if (snaps.every((s) => s.consistent) && pending.length === 0) return snaps;
      if (nowMs() - t0 > timeoutMs) {
        const who = pending.slice(0, 5).map((r) => `rank ${r.worldRank} ${r.state}`).join(', ');
        throw new QuiesceAbortedError(epoch, `ranks not ${state} within ${Math.round(timeoutMs)} ms: ${who}`, 'timeout');
      }
      await this.#nextChange(10, seen);
    }
  }

  /** Let every rank run again; verifies the frozen interval first. */
  async resume(timeoutMs = 10_000): Promise<ResumeOutcome> {
    const epoch = this.#epoch;
    const wasCommand = this.#command;
    let frozenCheck: ResumeOutcome['frozenCheck'] = null;
    let selfResumed: string | null = null;
    if (this.#frozen) {
      // fresh: nothing changes while frozen, so no report was pushed since the frozen one.
      // A node that cannot answer fails the proof, never the resume itself.
      try {
        const after = (await this.#reports(true)).map((r) => r.snapshot);
        frozenCheck = this.#coordinator.verifyFrozen(this.#frozen, after);
        const early = after.flatMap((n) => n.ranks.filter((r) => r.state === 'running' && r.autoresumed));
        if (early.length > 0) {
          selfResumed = `${early.length} rank${early.length === 1 ? '' : 's'} had resumed by themselves (${early[0]!.autoresumeReason ?? 'no reason given'})`;
        }
      } catch (err) {
        frozenCheck = { ok: false, reason: `could not read every node to verify: ${(err as Error).message}` };
      }
    }
    const t0 = nowMs();
    const issued = await this.#resumeAll();
    if (wasCommand === 'run') return { epoch, resumeMs: 0, ranksResumedMs: null, frozenCheck, selfResumed };
    const snaps = await this.#waitAll(epoch, 'running', timeoutMs);
    return { epoch, resumeMs: nowMs() - t0, ranksResumedMs: lastStampMs(snaps, issued, 'resumedNs'), frozenCheck, selfResumed };
  }

  /** No more attempts; a running attempt ends with 'closed'. Does not resume (the owner does). */
  close(): void {
    this.#closed = true;
    for (const unsubscribe of this.#subscriptions.values()) unsubscribe();
    this.#subscriptions.clear();
    this.#changed?.();
  }
}

export { slotKey };
