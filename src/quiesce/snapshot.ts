/**
 * What the coordinator sees of one rank: a copy of its control-segment slot,
 * taken by the addon. Counters are indexed by MPI_COMM_WORLD rank. Node-local
 * snapshots from several agents can be concatenated for a global decision.
 */
export type RankState = 'empty' | 'running' | 'held' | 'catchup' | 'frozen' | 'finalized' | 'detached';

export interface CommSeq {
  /** Communicator id, equal on every member rank (decimal string of a u64). */
  readonly gid: string;
  /** Collectives entered on it so far. */
  readonly seq: number;
}

export interface RankSnapshot {
  /** Agent-local slot index (local rank); with `node` it identifies the slot. */
  readonly slot: number;
  /** Node (agent) the slot lives on; '' for the embedded single-node agent. */
  readonly node: string;
  readonly state: RankState;
  readonly pid: number;
  readonly worldRank: number;
  readonly worldSize: number;
  /** Epoch of the last command this rank acted on. */
  readonly ackEpoch: number;
  /** Bumped by the rank whenever its slow path changes anything. */
  readonly changeSeq: number;
  readonly inCollective: boolean;
  readonly unsupported: string | null;
  readonly autoresumed: boolean;
  readonly autoresumeReason: string | null;
  readonly pendingSends: number;
  readonly pendingRecvs: number;
  readonly pendingColls: number;
  readonly drainedNow: number;
  readonly drainedTotal: number;
  readonly pmpiCalls: number;
  /** CLOCK_MONOTONIC ns (as numbers; precise to ~0.25 µs over days). */
  readonly heldNs: number;
  readonly frozenNs: number;
  readonly resumedNs: number;
  readonly comms: readonly CommSeq[];
  /** sent[q]: messages this rank sent to world rank q. */
  readonly sent: PeerCounts;
  /** recvd[p]: messages this rank received (or drained) from world rank p. */
  readonly recvd: PeerCounts;
}

export interface NodeSnapshot {
  readonly node: string;
  /** Current command epoch and command on this node. */
  readonly epoch: number;
  readonly command: 'run' | 'hold' | 'freeze';
  /**
   * True when the addon read every slot's changeSeq before and after copying
   * the slots and nothing changed in between (a double collect): the copy is
   * a consistent cut of this node.
   */
  readonly consistent: boolean;
  /** CLOCK_MONOTONIC ns at which the copy was taken. */
  readonly takenNs: number;
  readonly ranks: readonly RankSnapshot[];
}

/** Collective catch-up order for one rank: run on until seq(gid) >= target. */
export interface CatchupTarget {
  readonly gid: string;
  readonly target: number;
}

/**
 * Per-peer counters of one rank: dense (index = world rank, as the addon
 * reads them) or sparse (only the non-zero peers, ascending: what agents send
 * over the wire, since a rank talks to few peers while the world may be 10^4).
 */
export type PeerCounts = readonly number[] | SparseCounts;

export interface SparseCounts {
  readonly sparse: true;
  /** World size the counters are for. */
  readonly size: number;
  /** Ascending world ranks with a non-zero count. */
  readonly peers: readonly number[];
  readonly counts: readonly number[];
}

function isSparse(c: PeerCounts): c is SparseCounts {
  return !Array.isArray(c);
}

export function countsSize(c: PeerCounts): number {
  return isSparse(c) ? c.size : c.length;
}

/** The count for peer q (0 when absent). Sparse: binary search. */
export function countAt(c: PeerCounts, q: number): number {
  if (!isSparse(c)) return c[q] ?? 0;
  let lo = 0;
  let hi = c.peers.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const p = c.peers[mid]!;
    if (p === q) return c.counts[mid]!;
    if (p < q) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

/** Calls fn for every non-zero entry, in ascending peer order. */
export function forEachNonZero(c: PeerCounts, fn: (peer: number, count: number) => void): void {
  if (isSparse(c)) {
    for (let i = 0; i < c.peers.length; i++) if (c.counts[i] !== 0) fn(c.peers[i]!, c.counts[i]!);
    return;
  }
  for (let q = 0; q < c.length; q++) {
    const v = c[q]!;
    if (v !== 0) fn(q, v);
  }
}

export function sumCounts(c: PeerCounts): number {
  let s = 0;
  forEachNonZero(c, (_, v) => (s += v));
  return s;
}

/** The sparse form of any counters (a copy). */
export function toSparse(c: PeerCounts): SparseCounts {
  const peers: number[] = [];
  const counts: number[] = [];
  forEachNonZero(c, (p, v) => {
    peers.push(p);
    counts.push(v);
  });
  return { sparse: true, size: countsSize(c), peers, counts };
}

/** First peer whose count differs between a and b, or undefined. */
export function firstCountDifference(a: PeerCounts, b: PeerCounts): number | undefined {
  const n = Math.max(countsSize(a), countsSize(b));
  if (!isSparse(a) && !isSparse(b)) {
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
    return undefined;
  }
  if (countsSize(a) !== countsSize(b)) return Math.min(countsSize(a), countsSize(b));
  let first: number | undefined;
  const check = (x: PeerCounts, y: PeerCounts): void =>
    forEachNonZero(x, (p, v) => {
      if ((first === undefined || p < first) && countAt(y, p) !== v) first = p;
    });
  check(a, b);
  check(b, a);
  return first;
}
