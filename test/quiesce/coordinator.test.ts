import t from 'tap';
import { QuiesceCoordinator, slotKey, type QuiesceDecision } from '../../src/quiesce/coordinator.js';
import { countAt, countsSize, firstCountDifference, sumCounts, toSparse, type CommSeq, type NodeSnapshot, type RankSnapshot } from '../../src/quiesce/snapshot.js';

const EPOCH = 7;
const WORLD_GID = '1';

type Overrides = Omit<Partial<RankSnapshot>, 'sent' | 'recvd' | 'comms'> & {
  sent?: number[];
  recvd?: number[];
  comms?: CommSeq[];
};

/** A rank held at EPOCH with zero counters and one communicator (world, seq 3). */
function rank(worldRank: number, worldSize: number, o: Overrides = {}): RankSnapshot {
  return {
    slot: worldRank,
    node: '',
    state: 'held',
    pid: 1000 + worldRank,
    worldRank,
    worldSize,
    ackEpoch: EPOCH,
    changeSeq: 1,
    inCollective: false,
    unsupported: null,
    autoresumed: false,
    autoresumeReason: null,
    pendingSends: 0,
    pendingRecvs: 0,
    pendingColls: 0,
    drainedNow: 0,
    drainedTotal: 0,
    pmpiCalls: 100,
    heldNs: 1,
    frozenNs: 0,
    resumedNs: 0,
    comms: [{ gid: WORLD_GID, seq: 3 }],
    sent: new Array<number>(worldSize).fill(0),
    recvd: new Array<number>(worldSize).fill(0),
    ...o,
  };
}

function world(n: number, o: (r: number) => Overrides = () => ({})): RankSnapshot[] {
  return Array.from({ length: n }, (_, i) => rank(i, n, o(i)));
}

/** Record `count` messages from -> to; `delivered` of them received (default all). */
function traffic(ranks: RankSnapshot[], from: number, to: number, count: number, delivered = count): RankSnapshot[] {
  return ranks.map((r) => {
    if (r.worldRank !== from && r.worldRank !== to) return r;
    const sent = [...(r.sent as number[])];
    const recvd = [...(r.recvd as number[])];
    if (r.worldRank === from) sent[to] = sent[to]! + count;
    if (r.worldRank === to) recvd[from] = recvd[from]! + delivered;
    return { ...r, sent, recvd };
  });
}

function node(ranks: RankSnapshot[], o: Partial<NodeSnapshot> = {}): NodeSnapshot {
  return { node: '', epoch: EPOCH, command: 'hold', consistent: true, takenNs: 1_000, ranks, ...o };
}

function with_(ranks: RankSnapshot[], worldRank: number, o: Overrides): RankSnapshot[] {
  return ranks.map((r) => (r.worldRank === worldRank ? { ...r, ...o } : r));
}

function started(stallMs = 1_000, worldSize?: number): QuiesceCoordinator {
  const c = new QuiesceCoordinator(worldSize === undefined ? { stallMs } : { stallMs, worldSize });
  c.begin(EPOCH, 0);
  return c;
}

function reasonOf(d: QuiesceDecision): string {
  return 'reason' in d ? d.reason : '';
}

t.test('all held and balanced: quiescent, with a summary', async (t) => {
  let ranks = world(4, (i) => ({ drainedNow: i === 2 ? 2 : 0, drainedTotal: i === 2 ? 5 : 1 }));
  ranks = traffic(traffic(ranks, 0, 1, 10), 3, 2, 4);
  const d = started().evaluate([node(ranks)], 250);
  t.match(d, {
    kind: 'quiescent',
    epoch: EPOCH,
    worldSize: 4,
    nodes: 1,
    held: 4,
    finalized: 0,
    messages: 14,
    drainedNow: 2,
    drainedTotal: 8,
    communicators: 1,
    elapsedMs: 250,
  });
});

t.test('a message in flight: waiting, naming the pair', async (t) => {
  const ranks = traffic(traffic(world(4), 0, 1, 5), 1, 2, 5, 2);
  const d = started().evaluate([node(ranks)], 10);
  t.equal(d.kind, 'waiting');
  t.equal(reasonOf(d), '3 messages in flight (1->2: 3)');
});

t.test('received but never counted as sent: waiting, counters disagree', async (t) => {
  // A torn global cut: the receiver's copy is newer than the sender's.
  const ranks = traffic(world(3), 2, 0, 0, 1);
  const d = started().evaluate([node(ranks)], 10);
  t.equal(d.kind, 'waiting');
  t.equal(reasonOf(d), 'counters disagree (2->0: sent 0, received 1)');
  // Same when the sender counted some, but fewer.
  const d2 = started().evaluate([node(traffic(world(3), 2, 0, 1, 2))], 10);
  t.equal(reasonOf(d2), 'counters disagree (2->0: sent 1, received 2)');
});

t.test('a rank behind on a communicator: catch-up targets, emitted once', async (t) => {
  const c = started();
  const comms = (i: number): CommSeq[] => [
    { gid: WORLD_GID, seq: i === 1 ? 2 : 3 },
    { gid: '99', seq: i === 3 ? 6 : 5 },
  ];
  let ranks = world(4, (i) => ({ comms: comms(i), slot: 10 + i }));
  const d = c.evaluate([node(ranks)], 10);
  t.equal(d.kind, 'catchup');
  if (d.kind !== 'catchup') return;
  t.equal(d.epoch, EPOCH);
  t.same(
    [...d.targets],
    [
      [slotKey('', 10), [{ gid: '99', target: 6 }]],
      [slotKey('', 11), [{ gid: WORLD_GID, target: 3 }, { gid: '99', target: 6 }]],
      [slotKey('', 12), [{ gid: '99', target: 6 }]],
    ],
  );
  t.match(d.reason, /^3 ranks told to catch up: :10 -> 99@6, :11 -> 1@3 99@6, :12 -> 99@6$/);

  // Same targets again: not re-emitted; waiting names a rank behind.
  const again = c.evaluate([node(ranks)], 20);
  t.equal(again.kind, 'waiting');
  t.equal(reasonOf(again), 'rank 0 behind on communicator 99 (5 of 6)');

  // Rank 1 starts catching up; rank 3 (still running on) enters one more collective
  // on comm 99: only the raised targets are handed out, each with its full table.
  ranks = with_(ranks, 1, { state: 'catchup', comms: [{ gid: WORLD_GID, seq: 3 }, { gid: '99', seq: 5 }] });
  ranks = with_(ranks, 3, { state: 'running', comms: [{ gid: WORLD_GID, seq: 3 }, { gid: '99', seq: 7 }] });
  const raised = c.evaluate([node(ranks)], 30);
  t.equal(raised.kind, 'catchup');
  if (raised.kind !== 'catchup') return;
  t.same(
    [...raised.targets],
    [
      [':10', [{ gid: '99', target: 7 }]],
      [':11', [{ gid: '99', target: 7 }]],
      [':12', [{ gid: '99', target: 7 }]],
    ],
  );
  const waiting = c.evaluate([node(ranks)], 40);
  t.equal(waiting.kind, 'waiting');
  t.equal(reasonOf(waiting), '2 of 4 ranks held at epoch 7 (rank 1 catching up, rank 3 running)');

  // Everyone caught up and held: quiescent.
  ranks = world(4, (i) => ({ comms: [{ gid: WORLD_GID, seq: 3 }, { gid: '99', seq: 7 }], slot: 10 + i }));
  t.match(c.evaluate([node(ranks)], 50), { kind: 'quiescent', communicators: 2 });

  // A new attempt forgets what was handed out.
  c.begin(EPOCH + 1, 60);
  const behind = world(2, (i) => ({ ackEpoch: EPOCH + 1, comms: [{ gid: WORLD_GID, seq: i === 0 ? 1 : 2 }] }));
  const again2 = c.evaluate([node(behind, { epoch: EPOCH + 1 })], 70);
  t.equal(again2.kind, 'catchup');
});

t.test('a rank inside a blocking collective: waiting', async (t) => {
  const ranks = with_(world(4), 2, { state: 'running', ackEpoch: EPOCH - 1, inCollective: true, comms: [{ gid: WORLD_GID, seq: 3 }] });
  const d = started().evaluate([node(ranks)], 10);
  t.equal(d.kind, 'waiting');
  t.equal(reasonOf(d), 'rank 2 inside a collective (3 of 4 ranks held)');
  // Even if it claims to be held: a rank in a collective is not quiescent.
  const odd = with_(world(2), 1, { inCollective: true });
  t.equal(reasonOf(started().evaluate([node(odd)], 10)), 'rank 1 inside a collective (2 of 2 ranks held)');
});

t.test('ranks not held yet: waiting, counting them', async (t) => {
  const ranks = with_(with_(world(4), 0, { state: 'running', ackEpoch: EPOCH - 1 }), 3, { state: 'held', ackEpoch: EPOCH - 1 });
  const d = started().evaluate([node(ranks)], 10);
  t.equal(reasonOf(d), '2 of 4 ranks held at epoch 7 (rank 0 running (acknowledged epoch 6), rank 3 held (acknowledged epoch 6))');
  const many = world(6, () => ({ state: 'running' }));
  t.equal(
    reasonOf(started().evaluate([node(many)], 10)),
    '0 of 6 ranks held at epoch 7 (rank 0 running, rank 1 running, rank 2 running and 3 more)',
  );
});

t.test('finalized ranks count for balance but need not be held', async (t) => {
  let ranks = with_(world(3), 2, { state: 'finalized', ackEpoch: 2, comms: [{ gid: WORLD_GID, seq: 3 }] });
  ranks = traffic(traffic(ranks, 2, 0, 4), 0, 2, 1);
  t.match(started().evaluate([node(ranks)], 10), { kind: 'quiescent', held: 2, finalized: 1, messages: 5 });

  // Its messages must still have arrived.
  const lost = traffic(ranks, 2, 1, 2, 0);
  t.equal(reasonOf(started().evaluate([node(lost)], 10)), '2 messages in flight (2->1: 2)');

  // It can never catch up on a collective the others entered: no target for it.
  const stuck = with_(ranks, 2, { comms: [{ gid: WORLD_GID, seq: 2 }] });
  const d = started().evaluate([node(stuck)], 10);
  t.equal(d.kind, 'waiting');
  t.equal(reasonOf(d), 'finalized rank 2 behind on communicator 1 (2 of 3)');

  // All finalized: nothing left to hold.
  const done = world(2, () => ({ state: 'finalized' }));
  t.match(started().evaluate([node(done)], 10), { kind: 'quiescent', held: 0, finalized: 2 });
});

t.test('missing world rank: waiting', async (t) => {
  const ranks = world(4).filter((r) => r.worldRank !== 1 && r.worldRank !== 3);
  const d = started().evaluate([node(ranks)], 10);
  t.equal(d.kind, 'waiting');
  t.equal(reasonOf(d), '2 of 4 world ranks missing (1, 3)');
  // Unclaimed slots do not count as ranks.
  const empty = rank(0, 4, { state: 'empty', worldRank: 0, worldSize: 0 });
  t.equal(reasonOf(started().evaluate([node([...ranks, empty])], 10)), '2 of 4 world ranks missing (1, 3)');
  t.equal(reasonOf(started().evaluate([node([empty])], 10)), 'no ranks attached');
  t.equal(reasonOf(started(1_000, 4).evaluate([], 10)), 'no ranks attached');
});

t.test('duplicate world rank, disagreeing sizes, bad shapes: refused', async (t) => {
  const a = world(2);
  const dup = [...a, { ...a[1]!, node: 'b', slot: 0 }];
  t.match(started().evaluate([node(a), node([dup[2]!], { node: 'b' })], 10), {
    kind: 'refused',
    reason: 'world rank 1 appears twice: slot 1 and node b slot 0',
  });
  t.match(started().evaluate([node([rank(0, 2), rank(1, 3)])], 10), {
    kind: 'refused',
    reason: 'world sizes disagree: rank 1 (slot 1) says 3, expected 2',
  });
  t.match(started(1_000, 4).evaluate([node(world(2))], 10), {
    kind: 'refused',
    reason: 'world sizes disagree: rank 0 (slot 0) says 2, expected 4',
  });
  t.match(started().evaluate([node([rank(0, 0)])], 10), { kind: 'refused', reason: /invalid world size 0/ });
  t.match(started().evaluate([node([rank(0, 2), rank(2, 2)])], 10), { kind: 'refused', reason: /rank 2 \(slot 2\) is outside a world of 2/ });
  t.match(started().evaluate([node([rank(0, 2, { sent: [0] }), rank(1, 2)])], 10), {
    kind: 'refused',
    reason: 'rank 0 (slot 0) has 1/2 sent/recvd counters for a world of 2',
  });
});

t.test('inconsistent snapshot: waiting, and nothing else is decided from it', async (t) => {
  // Would be a catch-up and a duplicate, but the copy is torn.
  const ranks = [...with_(world(2), 0, { comms: [{ gid: WORLD_GID, seq: 1 }] }), rank(1, 2)];
  const d = started().evaluate([node(ranks, { node: 'n1', consistent: false })], 10);
  t.same(d, { kind: 'waiting', reason: 'snapshot of node "n1" not consistent (ranks changing)' });
  const two = started().evaluate(
    [node(world(1), { node: 'a', consistent: false }), node([], { node: 'b', consistent: false })],
    10,
  );
  t.equal(reasonOf(two), 'snapshot of nodes "a", "b" not consistent (ranks changing)');
});

t.test('unsupported or detached: refused, naming rank and feature', async (t) => {
  const ranks = with_(world(3), 2, { unsupported: 'one-sided RMA (MPI_Win_create)' });
  t.same(started().evaluate([node(ranks, { node: 'vm2' })], 10), {
    kind: 'refused',
    reason: 'rank 2 (slot 2) uses a feature that cannot be quiesced: one-sided RMA (MPI_Win_create)',
  });
  // Sticky facts are believed even from a torn copy.
  const det = with_(world(3), 1, { state: 'detached', autoresumeReason: 'agent gone', node: 'vm1' });
  t.same(started().evaluate([node(det, { consistent: false })], 10), {
    kind: 'refused',
    reason: 'rank 1 (node vm1 slot 1) detached from the agent (agent gone)',
  });
  const det2 = with_(world(2), 0, { state: 'detached' });
  t.equal(reasonOf(started().evaluate([node(det2)], 10)), 'rank 0 (slot 0) detached from the agent');
});

t.test('a rank that resumed by itself in this epoch: stalled at once', async (t) => {
  const ranks = with_(world(2), 1, { state: 'running', autoresumed: true, autoresumeReason: 'timeout' });
  t.same(started().evaluate([node(ranks)], 10), {
    kind: 'stalled',
    reason: 'rank 1 (slot 1) resumed by itself (timeout) and ignores epoch 7',
    idleMs: 0,
  });
  const noReason = with_(world(2), 1, { state: 'running', autoresumed: true });
  t.match(started().evaluate([node(noReason)], 10), { kind: 'stalled', reason: /no reason given/ });
  // One that resumed by itself in an earlier epoch will still act on this one.
  const earlier = with_(world(2), 1, { state: 'running', autoresumed: true, ackEpoch: EPOCH - 1 });
  t.equal(started().evaluate([node(earlier)], 10).kind, 'waiting');
});

t.test('stalled after stallMs without change, not before; changes reset the clock', async (t) => {
  const c = started(1_000);
  let ranks = traffic(world(3), 0, 1, 3, 1);
  t.equal(c.evaluate([node(ranks)], 100).kind, 'waiting'); // first look: the baseline
  t.equal(c.evaluate([node(ranks)], 600).kind, 'waiting');
  t.equal(c.evaluate([node(ranks)], 1_099).kind, 'waiting');
  const s = c.evaluate([node(ranks)], 1_100);
  t.same(s, { kind: 'stalled', reason: 'no progress for 1000 ms: 2 messages in flight (0->1: 2)', idleMs: 1_000 });

  // A drained message (counter moved) resets the clock.
  ranks = traffic(ranks, 0, 1, 0, 1);
  t.equal(c.evaluate([node(ranks)], 1_200).kind, 'waiting');
  t.equal(c.evaluate([node(ranks)], 2_199).kind, 'waiting');
  t.equal(c.evaluate([node(ranks)], 2_200).kind, 'stalled');

  // So does a changeSeq or state change alone.
  ranks = with_(ranks, 2, { changeSeq: 2 });
  t.equal(c.evaluate([node(ranks)], 2_300).kind, 'waiting');
  ranks = with_(ranks, 2, { state: 'catchup' });
  t.equal(c.evaluate([node(ranks)], 2_800).kind, 'waiting');
  t.equal(c.evaluate([node(ranks)], 3_799).kind, 'waiting');
  t.equal(c.evaluate([node(ranks)], 3_800).kind, 'stalled');

  // But not a held rank polling MPI (pmpiCalls alone is no progress).
  const polling = started(500);
  const base = traffic(world(2), 0, 1, 1, 0);
  polling.evaluate([node(base)], 0);
  t.equal(polling.evaluate([node(with_(base, 1, { pmpiCalls: 5_000 }))], 499).kind, 'waiting');
  t.equal(polling.evaluate([node(with_(base, 1, { pmpiCalls: 9_000 }))], 500).kind, 'stalled');

  // Handing out catch-up targets resets the clock too; then a catch-up that
  // cannot proceed (the application's own dependencies) stalls.
  const cu = started(1_000);
  const behind = with_(world(2), 0, { comms: [{ gid: WORLD_GID, seq: 2 }] });
  t.equal(cu.evaluate([node(behind)], 5_000).kind, 'catchup');
  t.equal(cu.evaluate([node(behind)], 5_999).kind, 'waiting');
  t.match(cu.evaluate([node(behind)], 6_000), { kind: 'stalled', reason: /behind on communicator 1 \(2 of 3\)/ });
});

t.test('several nodes concatenated: a global decision', async (t) => {
  const all = traffic(traffic(world(4), 0, 3, 2), 3, 0, 2);
  const a = node(all.slice(0, 2).map((r) => ({ ...r, node: 'a' })), { node: 'a' });
  const b = node(all.slice(2).map((r, i) => ({ ...r, node: 'b', slot: i })), { node: 'b' });
  t.match(started().evaluate([a, b], 10), { kind: 'quiescent', nodes: 2, messages: 4 });
  // A node that has not taken this epoch's command yet.
  t.equal(reasonOf(started().evaluate([a, { ...b, epoch: EPOCH - 1 }], 10)), 'node "b" is at epoch 6, not 7');
  t.equal(reasonOf(started().evaluate([a, { ...b, command: 'run' }], 10)), `node "b" command is 'run', not 'hold'`);
  // Already frozen (a re-evaluation after freeze) still counts as quiescent.
  const frozen = (n: NodeSnapshot): NodeSnapshot => ({ ...n, command: 'freeze', ranks: n.ranks.map((r) => ({ ...r, state: 'frozen' as const })) });
  t.match(started().evaluate([frozen(a), frozen(b)], 10), { kind: 'quiescent', held: 4 });
});

t.test('pending sends or collectives: waiting', async (t) => {
  const d = started().evaluate([node(with_(world(2), 1, { pendingSends: 2 }))], 10);
  t.equal(reasonOf(d), 'rank 1 has 2 sends and 0 collectives pending');
  const e = started().evaluate([node(with_(world(2), 0, { pendingColls: 1 }))], 10);
  t.equal(reasonOf(e), 'rank 0 has 0 sends and 1 collectives pending');
  // Posted receives are fine: a held rank may wait for a message never sent.
  t.equal(started().evaluate([node(with_(world(2), 0, { pendingRecvs: 3 }))], 10).kind, 'quiescent');
});

t.test('verifyFrozen', async (t) => {
  const frozenWorld = traffic(
    world(3, () => ({ state: 'frozen' })),
    0,
    2,
    6,
  );
  const snap = (ranks: RankSnapshot[], takenNs: number, o: Partial<NodeSnapshot> = {}): NodeSnapshot[] => [
    node(ranks, { command: 'freeze', takenNs, ...o }),
  ];
  const c = started();
  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(frozenWorld, 2_000)), { ok: true });

  // A finalized rank need not be frozen.
  const fin = with_(frozenWorld, 1, { state: 'finalized', ackEpoch: 1 });
  t.same(c.verifyFrozen(snap(fin, 1), snap(fin, 2)), { ok: true });

  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(with_(frozenWorld, 1, { pmpiCalls: 101 }), 2_000)), {
    ok: false,
    reason: 'rank 1 (slot 1) made 1 MPI calls while frozen',
  });
  t.same(c.verifyFrozen(snap(with_(frozenWorld, 2, { state: 'held' }), 1_000), snap(frozenWorld, 2_000)), {
    ok: false,
    reason: 'before: 2 of 3 ranks frozen at epoch 7 (rank 2 held)',
  });
  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(with_(frozenWorld, 0, { state: 'running' }), 2_000)), {
    ok: false,
    reason: 'after: 2 of 3 ranks frozen at epoch 7 (rank 0 running)',
  });
  // Counters moved (both sides still balanced) without a recorded PMPI call.
  const moved = traffic(frozenWorld, 1, 0, 1);
  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(moved, 2_000)), {
    ok: false,
    reason: 'rank 0 (slot 0) counter recvd[1] changed while frozen',
  });
  t.same(c.verifyFrozen(snap(moved, 1_000), snap(frozenWorld, 2_000)), {
    ok: false,
    reason: 'rank 0 (slot 0) counter recvd[1] changed while frozen',
  });
  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(traffic(frozenWorld, 0, 1, 1), 2_000)), {
    ok: false,
    reason: 'rank 0 (slot 0) counter sent[1] changed while frozen',
  });
  t.same(c.verifyFrozen(snap(frozenWorld, 1_000), snap(traffic(frozenWorld, 0, 1, 1, 0), 2_000)), {
    ok: false,
    reason: 'after: 1 message in flight (0->1: 1)',
  });
  // The second copy must be a later one, of the same nodes and processes.
  t.match(c.verifyFrozen(snap(frozenWorld, 2_000), snap(frozenWorld, 2_000)), { ok: false, reason: /not taken after the first/ });
  t.match(c.verifyFrozen(snap(frozenWorld, 1_000), snap(frozenWorld, 2_000, { node: 'x' })), {
    ok: false,
    reason: /node "x" missing from the first snapshot/,
  });
  t.match(c.verifyFrozen(snap(frozenWorld, 1), snap(with_(frozenWorld, 2, { pid: 4242 }), 2)), {
    ok: false,
    reason: 'rank 2 moved from slot 2 pid 1002 to slot 2 pid 4242',
  });
  t.match(c.verifyFrozen(snap(frozenWorld, 1), snap([...frozenWorld, rank(0, 3, { state: 'empty', slot: 9 })], 2)), { ok: true });
  // A node still at 'hold', a torn copy, a refusal: not proof either.
  t.match(c.verifyFrozen(snap(frozenWorld, 1, { command: 'hold' }), snap(frozenWorld, 2)), {
    ok: false,
    reason: `before: node "" command is 'hold', not 'freeze'`,
  });
  t.match(c.verifyFrozen(snap(frozenWorld, 1), snap(frozenWorld, 2, { consistent: false })), {
    ok: false,
    reason: 'after: snapshot of node "" not consistent',
  });
  t.match(c.verifyFrozen(snap(frozenWorld, 1), snap(with_(frozenWorld, 0, { unsupported: 'MPI-IO' }), 2)), {
    ok: false,
    reason: /after: rank 0 .* MPI-IO/,
  });
  t.same(c.verifyFrozen(snap(world(2, () => ({ state: 'frozen' })), 1), snap(frozenWorld, 2)), {
    ok: false,
    reason: '2 ranks before, 3 after',
  });
});

t.test('a frozen copy can lose a rank only by failing the world check', async (t) => {
  const c = started();
  const fw = world(2, () => ({ state: 'frozen' }));
  const snap = (ranks: RankSnapshot[], takenNs: number): NodeSnapshot[] => [node(ranks, { command: 'freeze', takenNs })];
  t.match(c.verifyFrozen(snap(fw, 1), snap([fw[0]!], 2)), { ok: false, reason: 'after: 1 of 2 world ranks missing (1)' });
  // Same count of ranks, but one claimed slot is duplicated onto another world rank.
  t.match(c.verifyFrozen(snap(fw, 1), snap([fw[0]!, { ...fw[0]!, slot: 5 }], 2)), { ok: false, reason: /appears twice/ });
});

t.test('misuse', async (t) => {
  t.throws(() => new QuiesceCoordinator({ stallMs: 0 }), RangeError);
  t.throws(() => new QuiesceCoordinator({ stallMs: 10, worldSize: 0 }), RangeError);
  const c = new QuiesceCoordinator({ stallMs: 10 });
  t.equal(c.epoch, undefined);
  t.throws(() => c.evaluate([], 0), /evaluate\(\) before begin\(\)/);
  t.throws(() => c.verifyFrozen([], []), /verifyFrozen\(\) before begin\(\)/);
  t.throws(() => c.begin(-1, 0), RangeError);
  c.begin(3, 0);
  t.equal(c.epoch, 3);
});

t.test('large world: one pass over dense counters', async (t) => {
  // 1,000 ranks, a ring plus all-to-one traffic; dense 1,000 x 1,000 counters.
  const n = 1_000;
  const ranks: RankSnapshot[] = [];
  for (let i = 0; i < n; i++) {
    const sent = new Array<number>(n).fill(0);
    const recvd = new Array<number>(n).fill(0);
    sent[(i + 1) % n] = 5;
    recvd[(i + n - 1) % n] = 5;
    if (i !== 0) sent[0] = sent[0]! + 1;
    if (i === 0) for (let p = 1; p < n; p++) recvd[p] = recvd[p]! + 1;
    ranks.push(rank(i, n, { sent, recvd }));
  }
  const c = started();
  const t0 = performance.now();
  const d = c.evaluate([node(ranks)], 10);
  const ms = performance.now() - t0;
  t.match(d, { kind: 'quiescent', worldSize: n, messages: 5 * n + n - 1 });
  t.comment(`evaluate over ${n} ranks (dense ${n}x${n}): ${ms.toFixed(1)} ms`);
  const lost = ranks.map((r) => (r.worldRank === 0 ? { ...r, recvd: (r.recvd as number[]).map((v, p) => (p === 500 ? v - 1 : v)) } : r));
  t.equal(reasonOf(c.evaluate([node(lost)], 20)), '1 message in flight (500->0: 1)');

  // The same world in the sparse wire form gives the same verdicts.
  const sparse = ranks.map((r) => ({ ...r, sent: toSparse(r.sent), recvd: toSparse(r.recvd) }));
  t.match(c.evaluate([node(sparse)], 30), { kind: 'quiescent', worldSize: n, messages: 5 * n + n - 1 });
  const lostSparse = lost.map((r) => ({ ...r, sent: toSparse(r.sent), recvd: toSparse(r.recvd) }));
  t.equal(reasonOf(c.evaluate([node(lostSparse)], 40)), '1 message in flight (500->0: 1)');
});

t.test('sparse counters: lookups, sums, differences, shape checks', async (t) => {
  const dense = [0, 3, 0, 0, 7, 0];
  const s = toSparse(dense);
  t.same(s, { sparse: true, size: 6, peers: [1, 4], counts: [3, 7] });
  t.same([0, 1, 2, 3, 4, 5].map((q) => countAt(s, q)), dense);
  t.equal(sumCounts(s), 10);
  t.equal(countsSize(s), 6);
  t.equal(firstCountDifference(s, toSparse(dense)), undefined);
  t.equal(firstCountDifference(s, toSparse([0, 3, 1, 0, 7, 0])), 2);
  t.equal(firstCountDifference(s, toSparse([0, 3, 0, 0, 0, 0])), 4);
  t.equal(firstCountDifference(dense, [0, 3, 0, 0, 7, 1]), 5);
  // A rank whose sparse counters claim another world size is a structural refusal.
  const ranks = world(2).map((r) => ({ ...r, sent: toSparse(r.sent), recvd: r.worldRank === 1 ? { ...toSparse(r.recvd), size: 3 } : toSparse(r.recvd) }));
  const c = started();
  t.match(c.evaluate([node(ranks)], 1), { kind: 'refused', reason: /has 2\/3 sent\/recvd counters for a world of 2/ });
});
