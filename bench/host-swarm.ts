/**
 * A swarm of simulated node agents for `npm run bench -- host`, run as a
 * child process so the controller's CPU is measured apart from theirs. Each
 * agent connects to the controller's socket like a real one, reports that
 * its ranks changed every `reportMs`, and answers the controller's calls.
 * Its ranks pass messages around one ring that spans the whole job; on HOLD
 * they stop sending and the messages still in flight arrive within 5 ms, so
 * a quiesce has real draining to wait for.
 *
 * argv: <socket> <job> <agents> <ranksPerAgent> <reportMs>
 */
import { connect, type Socket } from 'node:net';
import type { RankSnapshot, SparseCounts } from '../src/quiesce/snapshot.js';
import { encodeReport } from '../src/quiesce/wire.js';

const [socket, job, agentsArg, perAgentArg, reportArg] = process.argv.slice(2);
const agents = Number(agentsArg);
const perAgent = Number(perAgentArg);
const reportMs = Number(reportArg);
const world = agents * perAgent;

interface SimRank {
  worldRank: number;
  sent: number; // to worldRank + 1
  recvd: number; // from worldRank - 1
  state: 'running' | 'held' | 'frozen';
  ackEpoch: number;
  changeSeq: number;
  pmpi: number;
}

const ranks: SimRank[] = Array.from({ length: world }, (_, i) => ({ worldRank: i, sent: 0, recvd: 0, state: 'running', ackEpoch: 0, changeSeq: 0, pmpi: 0 }));

// The application: every 50 ms each running rank sends to its right
// neighbour; a message arrives at the next 5 ms tick (a held rank drains it).
const inflight: number[] = []; // destination world ranks, in send order
let tick = 0;
/** Agents whose ranks changed while an operation is under way: they push a report. */
const onChange: Array<((rankIndex: number) => void) | undefined> = [];
setInterval(() => {
  for (const to of inflight.splice(0)) {
    const r = ranks[to]!;
    r.recvd++;
    r.changeSeq += 2;
    onChange[Math.floor(to / perAgent)]?.(to);
  }
  if (tick++ % 10 !== 0) return;
  for (const r of ranks) {
    if (r.state !== 'running') continue;
    r.sent++;
    r.pmpi++;
    r.changeSeq += 2;
    inflight.push((r.worldRank + 1) % world);
  }
}, 5).unref();

const sparse = (peer: number, n: number): SparseCounts => ({ sparse: true, size: world, peers: n ? [peer] : [], counts: n ? [n] : [] });

function rankSnapshot(node: string, slot: number, r: SimRank): RankSnapshot {
  return {
    slot, node, state: r.state, pid: 100_000 + r.worldRank, worldRank: r.worldRank, worldSize: world,
    ackEpoch: r.ackEpoch, changeSeq: r.changeSeq, inCollective: false, unsupported: null, autoresumed: false,
    autoresumeReason: null, pendingSends: 0, pendingRecvs: 0, pendingColls: 0, drainedNow: 0, drainedTotal: 0,
    pmpiCalls: r.pmpi, heldNs: 0, frozenNs: 0, resumedNs: 0, comms: [{ gid: '1', seq: 0 }],
    sent: sparse((r.worldRank + 1) % world, r.sent), recvd: sparse((r.worldRank + world - 1) % world, r.recvd),
  };
}

function startAgent(index: number): Promise<void> {
  const node = `sim${index}`;
  const mine = ranks.slice(index * perAgent, (index + 1) * perAgent);
  let epoch = 0;
  let command: 'run' | 'hold' | 'freeze' = 'run';
  let sock: Socket | null = null;
  // the same wire encoding as a real agent's
  const report = () =>
    encodeReport({
      snapshot: { node, epoch, command, consistent: true, takenNs: Number(process.hrtime.bigint()), ranks: mine.map((r, slot) => rankSnapshot(node, slot, r)) },
      exited: [],
    });
  // As a real agent: full reports while an operation is under way (coalesced per tick).
  let pending = false;
  onChange[index] = () => {
    if (command === 'run' || pending) return;
    pending = true;
    setImmediate(() => {
      pending = false;
      sock?.write(JSON.stringify({ event: 'report', report: report() }) + '\n');
    });
  };
  return new Promise((resolve, reject) => {
    const s: Socket = connect(socket!);
    let buf = '';
    let attached = false;
    s.setEncoding('utf8');
    s.on('error', reject);
    s.on('connect', () =>
      s.write(JSON.stringify({ op: 'agent', job, node, ...(index === 0 ? { register: { command: ['sim'], np: world } } : {}) }) + '\n'),
    );
    s.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = JSON.parse(line) as { id?: number; ok?: boolean; error?: string; call?: string; epoch?: number };
        if (!attached) {
          if (!m.ok) return reject(new Error(`agent ${node} refused: ${m.error}`));
          attached = true;
          sock = s;
          // the counters of every rank, compact, every reportMs
          setInterval(() => s.write(JSON.stringify({ event: 'heartbeat', at: Date.now(), ranks: mine.map((r) => [r.worldRank, r.state, r.sent, r.recvd]) }) + '\n'), reportMs).unref();
          resolve();
          continue;
        }
        let result: unknown = null;
        switch (m.call) {
          case 'report':
            result = report();
            break;
          case 'hold':
            epoch = m.epoch!;
            command = 'hold';
            for (const r of mine) Object.assign(r, { state: 'held', ackEpoch: epoch, changeSeq: r.changeSeq + 2 });
            result = Number(process.hrtime.bigint());
            break;
          case 'freeze':
            command = 'freeze';
            for (const r of mine) Object.assign(r, { state: 'frozen', changeSeq: r.changeSeq + 2 });
            result = Number(process.hrtime.bigint());
            break;
          case 'resume':
            command = 'run';
            for (const r of mine) Object.assign(r, { state: 'running', changeSeq: r.changeSeq + 2 });
            result = Number(process.hrtime.bigint());
            break;
        }
        s.write(JSON.stringify({ id: m.id, ok: true, result }) + '\n');
        if (m.call !== 'report') s.write(JSON.stringify({ event: 'report', report: report() }) + '\n');
      }
    });
  });
}

// Attach in batches: a thousand connections at once would only measure the accept queue.
for (let i = 0; i < agents; i += 50) {
  await Promise.all(Array.from({ length: Math.min(50, agents - i) }, (_, k) => startAgent(i + k)));
}
process.stdout.write('ready\n');
process.stdin.resume();
process.stdin.on('end', () => process.exit(0)); // the bench closes our stdin when done
