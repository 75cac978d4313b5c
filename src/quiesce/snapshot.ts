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
  readonly sent: readonly number[];
  /** recvd[p]: messages this rank received (or drained) from world rank p. */
  readonly recvd: readonly number[];
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
