/**
 * Rank snapshots on the wire, between an agent and the controller. Columnar:
 * the field names once per report, then one array of values per rank, with
 * counters sparse. At 10^4 ranks the field names of plain objects were most
 * of the bytes the controller parsed; this is about a third of that size.
 * Decoding checks shape and types, so a malformed report is an error here,
 * not a crash in the coordinator.
 */
import { toSparse, type RankSnapshot, type SparseCounts } from './snapshot.js';
import type { ParticipantReport } from './job-quiescer.js';

const FIELDS = [
  'slot', 'state', 'pid', 'worldRank', 'worldSize', 'ackEpoch', 'changeSeq', 'inCollective', 'unsupported',
  'autoresumed', 'autoresumeReason', 'pendingSends', 'pendingRecvs', 'pendingColls', 'drainedNow', 'drainedTotal',
  'pmpiCalls', 'heldNs', 'frozenNs', 'resumedNs', 'comms', 'sent', 'recvd',
] as const;
type Field = (typeof FIELDS)[number];

export const WIRE_VERSION = 1;

export interface WireReport {
  readonly v: number;
  readonly node: string;
  readonly epoch: number;
  readonly command: 'run' | 'hold' | 'freeze';
  readonly consistent: boolean;
  readonly takenNs: number;
  readonly fields: readonly string[];
  /** One row per rank, values in `fields` order; comms as [gid, seq][], counters as [size, peers[], counts[]]. */
  readonly rows: readonly unknown[][];
  readonly exited: readonly { slot: number; pid: number }[];
}

export function encodeReport(r: ParticipantReport): WireReport {
  const s = r.snapshot;
  return {
    v: WIRE_VERSION,
    node: s.node,
    epoch: s.epoch,
    command: s.command,
    consistent: s.consistent,
    takenNs: s.takenNs,
    fields: FIELDS,
    rows: s.ranks.map((x) =>
      FIELDS.map((f) => {
        if (f === 'comms') return x.comms.map((c) => [c.gid, c.seq]);
        if (f === 'sent' || f === 'recvd') {
          const c = toSparse(x[f]);
          return [c.size, c.peers, c.counts];
        }
        return x[f];
      }),
    ),
    exited: r.exited.map((e) => ({ slot: e.slot, pid: e.pid })),
  };
}

export class WireError extends Error {
  override name = 'WireError';
}

const STATES = new Set(['empty', 'running', 'held', 'catchup', 'frozen', 'finalized', 'detached']);
const NUMBER_FIELDS = new Set<Field>(['slot', 'pid', 'worldRank', 'worldSize', 'ackEpoch', 'changeSeq', 'pendingSends', 'pendingRecvs', 'pendingColls', 'drainedNow', 'drainedTotal', 'pmpiCalls', 'heldNs', 'frozenNs', 'resumedNs']);

/** Largest MPI_COMM_WORLD a report may claim: the coordinator's work grows with it. */
export const MAX_WIRE_WORLD = 1 << 20;

function num(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new WireError(`${what}: expected a number`);
  return v;
}

/** A non-negative safe integer (counters, ranks, sizes, pids). */
function count(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new WireError(`${what}: expected a non-negative integer`);
  return v;
}

function counts(v: unknown, what: string, worldSize: number): SparseCounts {
  if (!Array.isArray(v) || v.length !== 3 || !Array.isArray(v[1]) || !Array.isArray(v[2]) || v[1].length !== v[2].length) {
    throw new WireError(`${what}: expected [size, peers[], counts[]]`);
  }
  const size = count(v[0], what);
  if (size !== worldSize) throw new WireError(`${what}: counters for a world of ${size}, the rank says ${worldSize}`);
  const peers = v[1] as unknown[];
  const cs = v[2] as unknown[];
  for (let i = 0; i < peers.length; i++) {
    const p = count(peers[i], `${what} peer`);
    count(cs[i], `${what} count`);
    if (p >= size) throw new WireError(`${what}: peer ${p} outside a world of ${size}`);
    if (i > 0 && p <= (peers[i - 1] as number)) throw new WireError(`${what}: peers not ascending`);
  }
  return { sparse: true, size, peers: peers as number[], counts: cs as number[] };
}

/** A report from the wire (checked); ranks are labelled with `node`. */
export function decodeReport(raw: unknown, node: string): ParticipantReport {
  const w = raw as Partial<WireReport> | null;
  if (!w || typeof w !== 'object' || Array.isArray(w) || w.v !== WIRE_VERSION) throw new WireError(`report: expected wire version ${WIRE_VERSION}`);
  if (!Array.isArray(w.fields) || !Array.isArray(w.rows) || !Array.isArray(w.exited)) throw new WireError('report: fields, rows and exited must be lists');
  if (w.command !== 'run' && w.command !== 'hold' && w.command !== 'freeze') throw new WireError('report: bad command');
  if (typeof w.node !== 'string') throw new WireError('report: node must be a string');
  const index = new Map(w.fields.map((f, i) => [f, i]));
  for (const f of FIELDS) if (!index.has(f)) throw new WireError(`report: field ${f} missing`);
  const at = (row: unknown[], f: Field): unknown => row[index.get(f)!];
  const ranks: RankSnapshot[] = w.rows.map((row, i) => {
    if (!Array.isArray(row)) throw new WireError(`report: rank ${i} is not a row`);
    const what = `report: rank ${i}`;
    const n: Record<string, number> = {};
    for (const f of NUMBER_FIELDS) n[f] = f.endsWith('Ns') ? num(at(row, f), `${what} ${f}`) : count(at(row, f), `${what} ${f}`);
    if (n.worldSize! < 1 || n.worldSize! > MAX_WIRE_WORLD) throw new WireError(`${what}: world size ${n.worldSize} out of range (1..${MAX_WIRE_WORLD})`);
    if (n.worldRank! >= n.worldSize!) throw new WireError(`${what}: world rank ${n.worldRank} outside a world of ${n.worldSize}`);
    const state = at(row, 'state');
    if (typeof state !== 'string' || !STATES.has(state)) throw new WireError(`${what}: bad state`);
    const comms = at(row, 'comms');
    if (!Array.isArray(comms)) throw new WireError(`${what}: comms must be a list`);
    const unsupported = at(row, 'unsupported');
    const reason = at(row, 'autoresumeReason');
    return {
      slot: n.slot!, node, state: state as RankSnapshot['state'], pid: n.pid!, worldRank: n.worldRank!, worldSize: n.worldSize!,
      ackEpoch: n.ackEpoch!, changeSeq: n.changeSeq!, inCollective: at(row, 'inCollective') === true,
      unsupported: typeof unsupported === 'string' ? unsupported : null,
      autoresumed: at(row, 'autoresumed') === true, autoresumeReason: typeof reason === 'string' ? reason : null,
      pendingSends: n.pendingSends!, pendingRecvs: n.pendingRecvs!, pendingColls: n.pendingColls!,
      drainedNow: n.drainedNow!, drainedTotal: n.drainedTotal!, pmpiCalls: n.pmpiCalls!,
      heldNs: n.heldNs!, frozenNs: n.frozenNs!, resumedNs: n.resumedNs!,
      comms: comms.map((c: unknown) => {
        if (!Array.isArray(c) || typeof c[0] !== 'string') throw new WireError(`${what}: comms entries are [gid, seq]`);
        return { gid: c[0], seq: count(c[1], `${what} comm seq`) };
      }),
      sent: counts(at(row, 'sent'), `${what} sent`, n.worldSize!),
      recvd: counts(at(row, 'recvd'), `${what} recvd`, n.worldSize!),
    };
  });
  const exited = w.exited.map((e) => {
    if (e === null || typeof e !== 'object') throw new WireError('report: exited entries are {slot, pid}');
    const x = e as { slot?: unknown; pid?: unknown };
    return { slot: count(x.slot, 'report: exited slot'), pid: count(x.pid, 'report: exited pid') };
  });
  return { snapshot: { node, epoch: num(w.epoch, 'report: epoch'), command: w.command, consistent: w.consistent === true, takenNs: num(w.takenNs, 'report: takenNs'), ranks }, exited };
}
