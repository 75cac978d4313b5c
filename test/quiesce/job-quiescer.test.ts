/**
 * JobQuiescer's promises when a node misbehaves. The nodes here are test
 * doubles (a node whose link breaks exactly between FREEZE and RESUME is
 * not something a real job can be made to do on cue); they follow the
 * QuiesceParticipant contract with ranks that obey every command at once.
 */
import t from 'tap';
import { JobQuiescer, type ParticipantReport, type QuiesceParticipant } from '../../src/quiesce/job-quiescer.js';
import type { RankSnapshot } from '../../src/quiesce/snapshot.js';
import { logger } from '../../src/log.js';
import { waitFor } from '../helpers/wait.js';

const log = logger.child({ test: 'job-quiescer' });
log.level = 'silent';

class ObedientNode implements QuiesceParticipant {
  epoch = 0;
  command: 'run' | 'hold' | 'freeze' = 'run';
  calls: string[] = [];
  failFreshReports = false;
  readonly #listeners = new Set<() => void>();
  #taken = 1;
  constructor(readonly node: string, readonly worldRank: number, readonly world: number) {}
  #rank(): RankSnapshot {
    const state = this.command === 'run' ? 'running' : this.command === 'hold' ? 'held' : 'frozen';
    return {
      slot: 0, node: this.node, state, pid: 1000 + this.worldRank, worldRank: this.worldRank, worldSize: this.world, ackEpoch: this.epoch,
      changeSeq: 1, inCollective: false, unsupported: null, autoresumed: false, autoresumeReason: null, pendingSends: 0, pendingRecvs: 0,
      pendingColls: 0, drainedNow: 0, drainedTotal: 0, pmpiCalls: 5, heldNs: 0, frozenNs: 0, resumedNs: 0, comms: [],
      sent: new Array<number>(this.world).fill(0), recvd: new Array<number>(this.world).fill(0),
    };
  }
  async report(fresh = false): Promise<ParticipantReport> {
    if (fresh && this.failFreshReports) throw new Error(`node ${this.node} is gone (connection reset)`);
    return { snapshot: { node: this.node, epoch: this.epoch, command: this.command, consistent: true, takenNs: this.#taken++, ranks: [this.#rank()] }, exited: [] };
  }
  #set(c: 'run' | 'hold' | 'freeze', what: string): number {
    this.calls.push(what);
    this.command = c;
    for (const l of this.#listeners) queueMicrotask(l);
    return 0;
  }
  async hold(epoch: number): Promise<number> {
    this.epoch = epoch;
    return this.#set('hold', `hold ${epoch}`);
  }
  async freeze(): Promise<number> {
    return this.#set('freeze', 'freeze');
  }
  async resume(): Promise<number> {
    return this.#set('run', 'resume');
  }
  async setCatchup(): Promise<void> {}
  subscribe(l: () => void): () => void {
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }
}

t.test('one epoch for all nodes, after each one\'s own', async (t) => {
  const a = new ObedientNode('a', 0, 2);
  const b = new ObedientNode('b', 1, 2);
  b.epoch = 41; // b has seen more epochs (an earlier controller)
  const q = new JobQuiescer([a, b], { stallMs: 500, log });
  const out = await q.quiesce({ freeze: true, timeoutMs: 2_000 });
  t.equal(out.epoch, 42);
  t.same([a.calls, b.calls], [['hold 42', 'freeze'], ['hold 42', 'freeze']]);
  const r = await q.resume();
  t.same(r.frozenCheck, { ok: true });
});

t.test('a node that cannot report at resume: every node is still resumed, the proof says why it is missing', async (t) => {
  const a = new ObedientNode('a', 0, 2);
  const b = new ObedientNode('b', 1, 2);
  const q = new JobQuiescer([a, b], { stallMs: 500, log });
  await q.quiesce({ freeze: true, timeoutMs: 2_000 });
  b.failFreshReports = true;
  const r = await q.resume();
  t.same([a.command, b.command], ['run', 'run'], 'RESUME reached both nodes');
  t.match(r.frozenCheck, { ok: false, reason: /could not read every node to verify: node b is gone/ });
  t.equal(q.operating, false, 'the job is no longer held');
  b.failFreshReports = false;
  t.ok((await q.quiesce({ freeze: false, timeoutMs: 2_000 })).epoch > 0, 'and can be quiesced again');
  await q.resume();
});

t.test('close() while quiescing: the attempt ends and no FREEZE follows', async (t) => {
  const a = new ObedientNode('a', 0, 2);
  const late = new ObedientNode('late', 1, 2);
  // a node whose rank never gets held: the quiesce waits
  late.hold = async (epoch: number) => {
    late.calls.push(`hold ${epoch}`);
    return 0;
  };
  const q = new JobQuiescer([a, late], { stallMs: 5_000, log });
  const p = q.quiesce({ freeze: true, timeoutMs: 5_000 });
  // close once the quiesce is under way: both nodes told to hold (the state, not a guessed time)
  await waitFor(() => a.calls.includes('hold 1') && late.calls.includes('hold 1'), 5_000, 'both nodes told to hold', 1);
  q.close();
  await t.rejects(p, { name: 'QuiesceAbortedError', kind: 'closed' });
  t.same(a.calls, ['hold 1', 'resume'], 'held, then resumed; never frozen');
});
