/**
 * Termination detection for one quiesce attempt, over rank counters.
 *
 * Pure logic: no I/O, no timers; the caller passes snapshots and the time.
 * The same code decides for one node (the embedded agent) and for a whole job
 * (the controller concatenates every node's snapshots), so everything is keyed
 * by world rank and by `node:slot`, never by array position.
 *
 * Why counters suffice (the "bookmark" argument, as in MANA / Open MPI crcp):
 * a held rank returns nothing to the application, so it initiates no new sends;
 * once every live rank is held, sent[] is final and recvd[] only grows towards
 * it (held ranks drain). sent[p][q] === recvd[q][p] for every pair then means
 * nothing is on the wire. Snapshots of different nodes are taken at different
 * times, so the verdict is only as good as the cut; the freeze step and
 * `verifyFrozen` (two snapshots, no PMPI call in between) are the final proof.
 */
import { countAt, countsSize, firstCountDifference, forEachNonZero, type CatchupTarget, type NodeSnapshot, type RankSnapshot } from './snapshot.js';

export interface QuiesceCoordinatorOptions {
  /** Expected MPI_COMM_WORLD size; when absent, taken from the ranks (which must agree). */
  readonly worldSize?: number;
  /** An attempt that shows no progress for this long while not quiescent is `stalled`. */
  readonly stallMs: number;
}

/** What was quiesced; for the operation's timeline and logs. */
export interface QuiesceSummary {
  readonly epoch: number;
  readonly worldSize: number;
  readonly nodes: number;
  /** Live ranks held (or already frozen) at this epoch. */
  readonly held: number;
  /** Ranks past MPI_Finalize; their final counters still took part in the balance. */
  readonly finalized: number;
  /** Point-to-point messages sent since start (== received: balanced). */
  readonly messages: number;
  /** Messages sitting in the shims' drain buffers right now. */
  readonly drainedNow: number;
  /** Messages ever drained by the shims. */
  readonly drainedTotal: number;
  /** Distinct communicators whose collective counts were compared. */
  readonly communicators: number;
  /** Since `begin`. */
  readonly elapsedMs: number;
}

export type QuiesceDecision =
  | ({ readonly kind: 'quiescent' } & QuiesceSummary)
  | {
      readonly kind: 'catchup';
      /** Epoch to write with the tables (the segment's catchup_epoch). */
      readonly epoch: number;
      /**
       * Keyed by `slotKey(node, slot)`; only slots whose targets are new or
       * raised since the last emission. Each value is that slot's complete table
       * for now: write it in place of the previous one.
       */
      readonly targets: Map<string, CatchupTarget[]>;
      readonly reason: string;
    }
  | { readonly kind: 'waiting'; readonly reason: string }
  | { readonly kind: 'stalled'; readonly reason: string; readonly idleMs: number }
  | { readonly kind: 'refused'; readonly reason: string };

export type FrozenVerdict = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/** The key under which a slot's catch-up targets are returned. */
export function slotKey(node: string, slot: number): string {
  return `${node}:${slot}`;
}

/** Phase whose settled state is checked: 'hold' accepts held (or frozen); 'freeze' only frozen. */
type Phase = 'hold' | 'freeze';

interface Imbalance {
  readonly from: number;
  readonly to: number;
  readonly sent: number;
  readonly recvd: number;
}

/** Everything one pass over a set of snapshots found out; decisions are made from it. */
interface Inspection {
  /** detached / unsupported: sticky per-rank facts, believed even from a torn copy. */
  refusal?: string;
  /** A rank gave up on this epoch by itself; this attempt cannot complete. */
  abandoned?: string;
  /** Nodes whose copy was not a consistent cut. */
  inconsistent: string[];
  /** World size / world rank / counter shape problems, duplicates. */
  structural?: string;
  /** A node not (yet) at this epoch's command. */
  nodeProblem?: string;
  worldSize: number;
  ranks: RankSnapshot[];
  byRank: (RankSnapshot | undefined)[];
  missing: number[];
  nodes: number;
  live: number;
  settled: number;
  finalized: number;
  notSettled: string[];
  inCollective?: RankSnapshot;
  pending?: string;
  /** Max seq per communicator over every rank that publishes it. */
  commMax: Map<string, number>;
  /** Live ranks behind on some communicator: key -> complete target table. */
  behind: Map<string, CatchupTarget[]>;
  firstBehind?: string;
  finalizedBehind?: string;
  imbalance?: Imbalance;
  messages: number;
  received: number;
  drainedNow: number;
  drainedTotal: number;
  /**
   * Progress fingerprint of everything (see `#inspect`), for stall detection:
   * a hash, since only "did anything move" matters, and at 10^4 ranks
   * building a string per rank cost more than the rest of the inspection.
   */
  fingerprint: number;
}

const LIST_MAX = 3;

function where(r: RankSnapshot): string {
  return r.node === '' ? `slot ${r.slot}` : `node ${r.node} slot ${r.slot}`;
}

function who(r: RankSnapshot): string {
  return `rank ${r.worldRank} (${where(r)})`;
}

function listed(items: readonly string[], total = items.length): string {
  const more = total - Math.min(items.length, LIST_MAX);
  return items.slice(0, LIST_MAX).join(', ') + (more > 0 ? ` and ${more} more` : '');
}

function isCount(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0;
}

export class QuiesceCoordinator {
  readonly #worldSize: number | undefined;
  readonly #stallMs: number;
  #epoch: number | undefined;
  #beganMs = 0;
  #lastChangeMs = 0;
  #fingerprint = 0;
  /** key -> gid -> target already handed to the caller in this attempt. */
  #emitted = new Map<string, Map<string, number>>();

  constructor(options: QuiesceCoordinatorOptions) {
    if (options.worldSize !== undefined && !isCount(options.worldSize)) {
      throw new RangeError(`worldSize must be a positive integer, got ${options.worldSize}`);
    }
    if (!(Number.isFinite(options.stallMs) && options.stallMs > 0)) {
      throw new RangeError(`stallMs must be a positive number, got ${options.stallMs}`);
    }
    this.#worldSize = options.worldSize;
    this.#stallMs = options.stallMs;
  }

  /** Epoch of the current attempt, if one was begun. */
  get epoch(): number | undefined {
    return this.#epoch;
  }

  /** Start a new attempt: forgets catch-up emissions and restarts the stall clock. */
  begin(epoch: number, nowMs: number): void {
    if (!Number.isSafeInteger(epoch) || epoch < 0) {
      throw new RangeError(`epoch must be a non-negative integer, got ${epoch}`);
    }
    this.#epoch = epoch;
    this.#beganMs = nowMs;
    this.#lastChangeMs = nowMs;
    this.#fingerprint = 0;
    this.#emitted = new Map();
  }

  evaluate(snapshots: readonly NodeSnapshot[], nowMs: number): QuiesceDecision {
    const epoch = this.#requireEpoch('evaluate');
    const ins = this.#inspect(snapshots, epoch, 'hold');
    if (ins.refusal !== undefined) return { kind: 'refused', reason: ins.refusal };
    // Waiting for a rank that already resumed by itself would only end in a stall.
    if (ins.abandoned !== undefined) return { kind: 'stalled', reason: ins.abandoned, idleMs: 0 };

    if (ins.fingerprint !== this.#fingerprint) this.#lastChangeMs = nowMs;
    this.#fingerprint = ins.fingerprint;

    // A torn copy can mix old and new values: decide nothing from it.
    if (ins.inconsistent.length === 0) {
      if (ins.structural !== undefined) return { kind: 'refused', reason: ins.structural };

      const fresh = this.#unemitted(ins.behind);
      if (fresh.size > 0) {
        // The ranks need time to act on the new targets.
        this.#lastChangeMs = nowMs;
        return { kind: 'catchup', epoch, targets: fresh, reason: catchupReason(fresh) };
      }
    }

    const blocker = blockerOf(ins, epoch, 'hold');
    if (blocker === undefined) {
      return {
        kind: 'quiescent',
        epoch,
        worldSize: ins.worldSize,
        nodes: ins.nodes,
        held: ins.settled,
        finalized: ins.finalized,
        messages: ins.messages,
        drainedNow: ins.drainedNow,
        drainedTotal: ins.drainedTotal,
        communicators: ins.commMax.size,
        elapsedMs: nowMs - this.#beganMs,
      };
    }
    const idleMs = Math.max(0, nowMs - this.#lastChangeMs);
    if (idleMs >= this.#stallMs) {
      return { kind: 'stalled', reason: `no progress for ${idleMs} ms: ${blocker}`, idleMs };
    }
    return { kind: 'waiting', reason: blocker };
  }

  /**
   * Proof that the job stood still while frozen: both copies quiescent with
   * every live rank frozen at this epoch, and no rank made a PMPI call or moved
   * a counter in between. `after` must be taken later than `before` on every node.
   */
  verifyFrozen(before: readonly NodeSnapshot[], after: readonly NodeSnapshot[]): FrozenVerdict {
    const epoch = this.#requireEpoch('verifyFrozen');
    const b = this.#inspect(before, epoch, 'freeze');
    const a = this.#inspect(after, epoch, 'freeze');
    for (const [label, ins] of [['before', b], ['after', a]] as const) {
      const problem =
        ins.refusal ??
        ins.abandoned ??
        (ins.inconsistent.length > 0 ? `snapshot of ${nodeList(ins.inconsistent)} not consistent` : undefined) ??
        ins.structural ??
        blockerOf(ins, epoch, 'freeze');
      if (problem !== undefined) return { ok: false, reason: `${label}: ${problem}` };
    }

    const takenBefore = new Map(before.map((n) => [n.node, n.takenNs]));
    for (const n of after) {
      const t = takenBefore.get(n.node);
      if (t === undefined) return { ok: false, reason: `node ${JSON.stringify(n.node)} missing from the first snapshot` };
      if (!(n.takenNs > t)) return { ok: false, reason: `node ${JSON.stringify(n.node)}: second snapshot not taken after the first` };
    }
    if (b.ranks.length !== a.ranks.length) {
      return { ok: false, reason: `${b.ranks.length} ranks before, ${a.ranks.length} after` };
    }
    // Both cover the same world exactly once (checked above), so pair by world rank.
    for (const ra of a.ranks) {
      const rb = b.byRank[ra.worldRank]!;
      if (rb.node !== ra.node || rb.slot !== ra.slot || rb.pid !== ra.pid) {
        return { ok: false, reason: `rank ${ra.worldRank} moved from ${where(rb)} pid ${rb.pid} to ${where(ra)} pid ${ra.pid}` };
      }
      if (rb.pmpiCalls !== ra.pmpiCalls) {
        return { ok: false, reason: `${who(ra)} made ${ra.pmpiCalls - rb.pmpiCalls} MPI calls while frozen` };
      }
      for (const name of ['sent', 'recvd'] as const) {
        const i = firstCountDifference(rb[name], ra[name]);
        if (i !== undefined) return { ok: false, reason: `${who(ra)} counter ${name}[${i}] changed while frozen` };
      }
    }
    return { ok: true };
  }

  #requireEpoch(what: string): number {
    if (this.#epoch === undefined) throw new Error(`QuiesceCoordinator.${what}() before begin()`);
    return this.#epoch;
  }

  /** Targets not yet handed out (new slot, new communicator or a raised target); records them as handed out. */
  #unemitted(behind: Map<string, CatchupTarget[]>): Map<string, CatchupTarget[]> {
    const fresh = new Map<string, CatchupTarget[]>();
    for (const [key, table] of behind) {
      const told = this.#emitted.get(key);
      if (table.some((t) => (told?.get(t.gid) ?? -1) < t.target)) fresh.set(key, table);
    }
    for (const [key, table] of fresh) {
      const told = this.#emitted.get(key) ?? new Map<string, number>();
      for (const t of table) told.set(t.gid, t.target);
      this.#emitted.set(key, told);
    }
    return fresh;
  }

  /**
   * One pass over the ranks (O(ranks x communicators)), then one pass over
   * every sent[] and recvd[] row (O(ranks x worldSize)).
   *
   * Cost: the per-pair balance check should be O(total non-zero counters).
   * Ranks' sent/recvd arrays are dense number arrays here, so each row is
   * read once, sequentially: its sum feeds the progress fingerprint, and each
   * non-zero entry is looked up once on the other side (sent[p][q] in
   * recvd[q][p], recvd[q][p] in sent[p][q]): the only random accesses, O(non-zero),
   * and pairs that are zero on both sides are balanced without a look.
   * At 10,000 ranks dense rows would be 2 x 10^8 numbers per evaluation, so
   * remote agents ship sparse (peer, count) lists (PeerCounts): the loop is
   * then O(non-zero x log(peers per rank)).
   */
  #inspect(snapshots: readonly NodeSnapshot[], epoch: number, phase: Phase): Inspection {
    const ins: Inspection = {
      inconsistent: [],
      worldSize: this.#worldSize ?? 0,
      ranks: [],
      byRank: [],
      missing: [],
      nodes: snapshots.length,
      live: 0,
      settled: 0,
      finalized: 0,
      notSettled: [],
      commMax: new Map(),
      behind: new Map(),
      messages: 0,
      received: 0,
      drainedNow: 0,
      drainedTotal: 0,
      fingerprint: 0x811c9dc5,
    };
    const wantCommand = phase === 'hold' ? 'hold' : 'freeze';

    for (const node of snapshots) {
      if (!node.consistent) ins.inconsistent.push(node.node);
      ins.fingerprint = mix(mix(mix(ins.fingerprint, hashString(node.node)), node.epoch), COMMAND_CODE[node.command] ?? 9);
      if (ins.nodeProblem === undefined) {
        if (node.epoch !== epoch) {
          ins.nodeProblem = `node ${JSON.stringify(node.node)} is at epoch ${node.epoch}, not ${epoch}`;
        } else if (node.command !== wantCommand && !(phase === 'hold' && node.command === 'freeze')) {
          ins.nodeProblem = `node ${JSON.stringify(node.node)} command is '${node.command}', not '${wantCommand}'`;
        }
      }
      for (const r of node.ranks) {
        if (r.state === 'empty') continue; // unclaimed slot: no rank behind it
        if (ins.refusal === undefined) {
          if (r.state === 'detached') {
            ins.refusal = `${who(r)} detached from the agent${r.autoresumeReason ? ` (${r.autoresumeReason})` : ''}`;
          } else if (r.unsupported !== null) {
            ins.refusal = `${who(r)} uses a feature that cannot be quiesced: ${r.unsupported}`;
          }
        }
        if (
          ins.abandoned === undefined &&
          r.state === 'running' &&
          r.autoresumed &&
          r.ackEpoch === epoch &&
          node.epoch === epoch &&
          node.command !== 'run'
        ) {
          ins.abandoned = `${who(r)} resumed by itself (${r.autoresumeReason ?? 'no reason given'}) and ignores epoch ${epoch}`;
        }
        ins.ranks.push(r);
      }
    }

    // World shape: every claimed rank must say the same size and fit in it.
    for (const r of ins.ranks) {
      if (ins.structural !== undefined) break;
      if (!isCount(r.worldSize)) {
        ins.structural = `${who(r)} reports an invalid world size ${r.worldSize}`;
      } else if (ins.worldSize === 0) {
        ins.worldSize = r.worldSize;
      } else if (r.worldSize !== ins.worldSize) {
        ins.structural = `world sizes disagree: ${who(r)} says ${r.worldSize}, expected ${ins.worldSize}`;
      }
      if (ins.structural !== undefined) break;
      if (!Number.isSafeInteger(r.worldRank) || r.worldRank < 0 || r.worldRank >= ins.worldSize) {
        ins.structural = `${who(r)} is outside a world of ${ins.worldSize}`;
      } else if (countsSize(r.sent) !== ins.worldSize || countsSize(r.recvd) !== ins.worldSize) {
        ins.structural = `${who(r)} has ${countsSize(r.sent)}/${countsSize(r.recvd)} sent/recvd counters for a world of ${ins.worldSize}`;
      } else {
        const other = ins.byRank[r.worldRank];
        if (other !== undefined) {
          ins.structural = `world rank ${r.worldRank} appears twice: ${where(other)} and ${where(r)}`;
        } else {
          ins.byRank[r.worldRank] = r;
        }
      }
    }
    const complete = ins.structural === undefined && ins.worldSize > 0;
    if (complete) {
      for (let p = 0; p < ins.worldSize; p++) if (ins.byRank[p] === undefined) ins.missing.push(p);
    }

    // States, pending work, collective counts.
    for (const r of ins.ranks) {
      for (const c of r.comms) {
        const m = ins.commMax.get(c.gid);
        if (m === undefined || c.seq > m) ins.commMax.set(c.gid, c.seq);
      }
      ins.drainedNow += r.drainedNow;
      ins.drainedTotal += r.drainedTotal;
      if (ins.pending === undefined && (r.pendingSends !== 0 || r.pendingColls !== 0)) {
        ins.pending = `rank ${r.worldRank} has ${r.pendingSends} sends and ${r.pendingColls} collectives pending`;
      }
      if (r.state === 'finalized') {
        ins.finalized++;
        continue;
      }
      ins.live++;
      const settled =
        r.ackEpoch === epoch && (r.state === 'frozen' || (phase === 'hold' && r.state === 'held'));
      if (settled) ins.settled++;
      if (r.inCollective && ins.inCollective === undefined) ins.inCollective = r;
      if (!settled) {
        ins.notSettled.push(`rank ${r.worldRank} ${unsettledWhy(r, epoch)}`);
      }
    }
    for (const r of ins.ranks) {
      let table: CatchupTarget[] | undefined;
      for (const c of r.comms) {
        const max = ins.commMax.get(c.gid)!;
        if (c.seq >= max) continue;
        const what = `rank ${r.worldRank} behind on communicator ${c.gid} (${c.seq} of ${max})`;
        if (r.state === 'finalized') {
          ins.finalizedBehind ??= `finalized ${what}`;
          continue;
        }
        ins.firstBehind ??= what;
        (table ??= []).push({ gid: c.gid, target: max });
      }
      if (table !== undefined) ins.behind.set(slotKey(r.node, r.slot), table);
    }

    // Counters: one sequential read of each row (see the cost note above).
    const matching = complete && ins.missing.length === 0;
    for (const r of ins.ranks) {
      const p = r.worldRank;
      let sumSent = 0;
      forEachNonZero(r.sent, (q, v) => {
        sumSent += v;
        if (matching && ins.imbalance === undefined) {
          const got = countAt(ins.byRank[q]!.recvd, p);
          if (got !== v) ins.imbalance = { from: p, to: q, sent: v, recvd: got };
        }
      });
      let sumRecvd = 0;
      forEachNonZero(r.recvd, (q, v) => {
        sumRecvd += v;
        // Pairs with a non-zero sent were compared above; here only a receive
        // its sender never counted (a torn cut or a buggy rank).
        if (matching && ins.imbalance === undefined && countAt(ins.byRank[q]!.sent, p) === 0) {
          ins.imbalance = { from: q, to: p, sent: 0, recvd: v };
        }
      });
      ins.messages += sumSent;
      ins.received += sumRecvd;
      // Not pmpiCalls: a held rank polls MPI forever, which is not progress.
      let seqs = 0;
      for (const c of r.comms) seqs += c.seq;
      let h = ins.fingerprint;
      for (const v of [r.slot, r.pid, STATE_CODE[r.state] ?? 9, r.ackEpoch, r.changeSeq, r.inCollective ? 1 : 0, r.pendingSends, r.pendingRecvs, r.pendingColls, r.drainedNow, r.drainedTotal, sumSent, sumRecvd, seqs]) {
        h = mix(h, v);
      }
      ins.fingerprint = h;
    }
    return ins;
  }
}

/** The first reason the inspected job is not quiescent, or undefined when it is. */
function blockerOf(ins: Inspection, epoch: number, phase: Phase): string | undefined {
  if (ins.inconsistent.length > 0) return `snapshot of ${nodeList(ins.inconsistent)} not consistent (ranks changing)`;
  if (ins.nodeProblem !== undefined) return ins.nodeProblem;
  if (ins.ranks.length === 0) return 'no ranks attached';
  if (ins.missing.length > 0) {
    return `${ins.missing.length} of ${ins.worldSize} world ranks missing (${listed(ins.missing.map(String), ins.missing.length)})`;
  }
  const settledWord = phase === 'hold' ? 'held' : 'frozen';
  const ofLive = `${ins.settled} of ${ins.live} ranks ${settledWord}`;
  if (ins.inCollective !== undefined) return `rank ${ins.inCollective.worldRank} inside a collective (${ofLive})`;
  if (ins.settled < ins.live) return `${ofLive} at epoch ${epoch} (${listed(ins.notSettled, ins.live - ins.settled)})`;
  if (ins.firstBehind !== undefined) return ins.firstBehind;
  if (ins.finalizedBehind !== undefined) return ins.finalizedBehind;
  if (ins.pending !== undefined) return ins.pending;
  const i = ins.imbalance;
  if (i !== undefined) {
    const inFlight = ins.messages - ins.received;
    return i.sent > i.recvd && inFlight > 0
      ? `${inFlight} message${inFlight === 1 ? '' : 's'} in flight (${i.from}->${i.to}: ${i.sent - i.recvd})`
      : `counters disagree (${i.from}->${i.to}: sent ${i.sent}, received ${i.recvd})`;
  }
  return undefined;
}

function unsettledWhy(r: RankSnapshot, epoch: number): string {
  if (r.inCollective) return 'inside a collective';
  if (r.ackEpoch !== epoch) return `${r.state} (acknowledged epoch ${r.ackEpoch})`;
  return r.state === 'catchup' ? 'catching up' : r.state;
}

function catchupReason(targets: Map<string, CatchupTarget[]>): string {
  const items = [...targets].map(([key, table]) => `${key} -> ${table.map((t) => `${t.gid}@${t.target}`).join(' ')}`);
  return `${targets.size} rank${targets.size === 1 ? '' : 's'} told to catch up: ${listed(items)}`;
}

function nodeList(nodes: readonly string[]): string {
  return (nodes.length === 1 ? 'node ' : 'nodes ') + listed(nodes.map((n) => JSON.stringify(n)));
}

const STATE_CODE: Record<string, number> = { empty: 0, running: 1, held: 2, catchup: 3, frozen: 4, finalized: 5, detached: 6 };
const COMMAND_CODE: Record<string, number> = { run: 0, hold: 1, freeze: 2 };

/** FNV-1a-style mixing of one number (its low and high 32 bits) into a 32-bit hash. */
function mix(h: number, v: number): number {
  const lo = v | 0;
  const hi = Math.floor(v / 4294967296) | 0;
  h = Math.imul(h ^ lo, 0x01000193);
  return Math.imul(h ^ hi, 0x01000193);
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}
