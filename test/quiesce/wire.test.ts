/**
 * Reports on the wire: a round trip keeps every field; malformed or hostile
 * reports (an absurd world size, a peer outside the world, wrong types,
 * random mutations) are a WireError, never another exception, and whatever
 * decodes can be evaluated by the coordinator without throwing.
 */
import t from 'tap';
import { decodeReport, encodeReport, MAX_WIRE_WORLD, WireError } from '../../src/quiesce/wire.js';
import { QuiesceCoordinator } from '../../src/quiesce/coordinator.js';
import { toSparse, type RankSnapshot } from '../../src/quiesce/snapshot.js';
import type { ParticipantReport } from '../../src/quiesce/job-quiescer.js';

function rank(w: number, world: number): RankSnapshot {
  const sent = new Array<number>(world).fill(0);
  const recvd = new Array<number>(world).fill(0);
  sent[(w + 1) % world] = 3;
  recvd[(w + world - 1) % world] = 3;
  return {
    slot: w, node: 'n', state: 'held', pid: 100 + w, worldRank: w, worldSize: world, ackEpoch: 2, changeSeq: 4,
    inCollective: false, unsupported: null, autoresumed: false, autoresumeReason: null, pendingSends: 0, pendingRecvs: 0,
    pendingColls: 0, drainedNow: 1, drainedTotal: 5, pmpiCalls: 77, heldNs: 1.5e12, frozenNs: 0, resumedNs: 0,
    comms: [{ gid: '1', seq: 4 }], sent, recvd,
  };
}

const report: ParticipantReport = {
  snapshot: { node: 'n', epoch: 2, command: 'hold', consistent: true, takenNs: 2e12, ranks: [0, 1, 2, 3].map((w) => rank(w, 4)) },
  exited: [{ slot: 9, pid: 99 }],
};

t.test('round trip', async (t) => {
  const wire = JSON.parse(JSON.stringify(encodeReport(report))) as unknown;
  const back = decodeReport(wire, 'node-a');
  t.equal(back.snapshot.ranks.length, 4);
  const r0 = back.snapshot.ranks[0]!;
  t.equal(r0.node, 'node-a', 'ranks labelled with the node we know');
  t.same({ ...r0, node: 'n', sent: toSparse(report.snapshot.ranks[0]!.sent), recvd: toSparse(report.snapshot.ranks[0]!.recvd) }, { ...r0, node: 'n' });
  t.same(back.exited, [{ slot: 9, pid: 99 }]);
  const c = new QuiesceCoordinator({ stallMs: 100 });
  c.begin(2, 0);
  t.match(c.evaluate([back.snapshot], 1), { kind: 'quiescent', worldSize: 4, messages: 12 });
  t.ok(JSON.stringify(encodeReport(report)).length < JSON.stringify(report).length / 2, 'less than half the bytes of plain objects');
});

t.test('hostile reports are WireErrors', async (t) => {
  const base = (): { rows: unknown[][]; fields: string[] } & Record<string, unknown> => JSON.parse(JSON.stringify(encodeReport(report))) as never;
  const col = (f: string): number => base().fields.indexOf(f);
  const cases: Array<[string, (w: ReturnType<typeof base>) => void, RegExp]> = [
    ['a world of 2^40', (w) => { w.rows[0]![col('worldSize')] = 2 ** 40; }, /world size .* out of range/],
    ['a peer outside the world', (w) => { (w.rows[0]![col('sent')] as unknown[])[1] = [7]; }, /peer 7 outside a world of 4/],
    ['counters for another world', (w) => { (w.rows[0]![col('recvd')] as unknown[])[0] = 5; }, /counters for a world of 5/],
    ['a negative count', (w) => { (w.rows[0]![col('sent')] as unknown[])[2] = [-1]; }, /non-negative integer/],
    ['a fractional pid', (w) => { w.rows[0]![col('pid')] = 1.5; }, /pid: expected a non-negative integer/],
    ['a rank outside its world', (w) => { w.rows[0]![col('worldRank')] = 4; }, /world rank 4 outside a world of 4/],
    ['a bad state', (w) => { w.rows[0]![col('state')] = 'dancing'; }, /bad state/],
    ['exited: [null]', (w) => { w.exited = [null]; }, /exited entries/],
    ['a missing field', (w) => { w.fields = w.fields.filter((f) => f !== 'pmpiCalls'); }, /field pmpiCalls missing/],
    ['peers not ascending', (w) => { (w.rows[0]![col('sent')] as unknown[])[1] = [2, 1]; (w.rows[0]![col('sent')] as unknown[])[2] = [1, 1]; }, /not ascending/],
    ['a wrong version', (w) => { w.v = 2; }, /wire version/],
  ];
  for (const [name, mutate, msg] of cases) {
    const w = base();
    mutate(w);
    t.throws(() => decodeReport(w, 'n'), { name: 'WireError', message: msg }, name);
  }
  for (const v of [null, 1, 'x', [], {}, { v: 1 }]) t.throws(() => decodeReport(v, 'n'), WireError, `not a report: ${JSON.stringify(v)}`);
  // the bound itself: a world of exactly MAX_WIRE_WORLD decodes, one more does not
  const sized = (n: number): ReturnType<typeof base> => {
    const w = base();
    w.rows[0]![col('worldSize')] = n;
    (w.rows[0]![col('sent')] as unknown[])[0] = n;
    (w.rows[0]![col('recvd')] as unknown[])[0] = n;
    return w;
  };
  t.equal(decodeReport(sized(MAX_WIRE_WORLD), 'n').snapshot.ranks[0]!.worldSize, MAX_WIRE_WORLD, 'a world of MAX_WIRE_WORLD is accepted');
  t.throws(() => decodeReport(sized(MAX_WIRE_WORLD + 1), 'n'), { name: 'WireError', message: /out of range/ }, 'one more is not');
});

t.test('fuzz: random mutations decode or fail with WireError; decoded ones evaluate', async (t) => {
  let seed = Number(process.env.SYMBIO_FUZZ_SEED ?? 7);
  const rand = (): number => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const values: unknown[] = [null, -1, 0, 1, 3, 4, 2 ** 53, 1e308, NaN, 'x', '', true, [], {}, [1], [[1]], [4, [0], [1]]];
  let decoded = 0;
  for (let i = 0; i < 3000; i++) {
    const w = JSON.parse(JSON.stringify(encodeReport(report))) as { rows: unknown; [k: string]: unknown };
    for (let m = 0; m < 1 + Math.floor(rand() * 3); m++) {
      const v = values[Math.floor(rand() * values.length)];
      const rows = Array.isArray(w.rows) && w.rows.length ? (w.rows as unknown[]) : null;
      const row = rows ? rows[Math.floor(rand() * rows.length)] : null;
      if (Array.isArray(row) && rand() < 0.8) row[Math.floor(rand() * row.length)] = v;
      else w[['epoch', 'command', 'consistent', 'takenNs', 'exited', 'rows', 'fields'][Math.floor(rand() * 7)]!] = v;
    }
    try {
      const r = decodeReport(w, 'n');
      decoded++;
      const c = new QuiesceCoordinator({ stallMs: 100 });
      c.begin(2, 0);
      c.evaluate([r.snapshot], 1); // must not throw
    } catch (err) {
      if (!(err instanceof WireError)) {
        t.fail(`case ${i}: ${(err as Error).name}: ${(err as Error).message} for ${JSON.stringify(w).slice(0, 300)}`);
        return;
      }
    }
  }
  t.ok(decoded > 0 && decoded < 3000, `3000 mutated reports: ${decoded} decoded and evaluated, the rest WireErrors (both seen)`);
});
