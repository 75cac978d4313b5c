/**
 * The addon's watcher and snapshot with real rank processes.
 *
 * NOTE: the "ranks" here are native/addon/test/claim_slot.c, a tiny C program
 * that stands in for the PMPI shim's attach: it opens the segment named by
 * SYMBIO_SEGMENT, claims a slot as the shim would (pid, world rank, state
 * published last), bumps agent_wake + FUTEX_WAKE, and sleeps until killed.
 * It is built here with the system C compiler. Once the shim exists, the MPI
 * tests cover the real attach; these tests keep covering the addon's side.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import t, { type Test } from 'tap';
import { ControlSegment, type SegmentEvent } from '../../src/native.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const work = mkdtempSync(join(tmpdir(), 'symbio-watch-test-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));
const claimSlot = join(work, 'claim_slot');
execFileSync('cc', [
  '-std=c11', '-O2', '-Wall', '-Werror',
  '-I', join(root, 'native', 'common'),
  '-o', claimSlot,
  join(root, 'native', 'addon', 'test', 'claim_slot.c'),
]);

let serial = 0;
const freshName = (): string => `/symbio-wtest-${process.pid}-${++serial}`;

function makeSegment(t: Test, slots = 4, worldSize = 4): ControlSegment {
  const seg = new ControlSegment({ name: freshName(), slots, worldSize, resumeTimeoutMs: 5000, jobId: 'watch-test' });
  t.teardown(() => seg.close());
  return seg;
}

interface Rank {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the exit signal once the process is gone. */
  readonly exited: Promise<NodeJS.Signals | null>;
}

/** Starts claim_slot for `slot` and resolves once it has claimed it. */
function startRank(t: Test, seg: ControlSegment, slot: number, worldRank: number, ...extra: number[]): Promise<Rank> {
  const child = spawn(claimSlot, [String(slot), String(worldRank), ...extra.map(String)], {
    env: { ...process.env, SYMBIO_SEGMENT: seg.name },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes('\n')) {
        t.match(out, `claimed ${slot} ${child.pid}`);
        resolve({ child, pid: child.pid!, exited });
      }
    });
    child.once('exit', (code) => reject(new Error(`claim_slot exited (${code}) before claiming: ${out}`)));
  });
}

/** Collects watch events; `next(pred)` resolves with the first matching one. */
function watchEvents(seg: ControlSegment) {
  const events: SegmentEvent[] = [];
  let waiters: Array<() => void> = [];
  seg.watch((ev) => {
    events.push(ev);
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  });
  return {
    events,
    next(pred: (ev: SegmentEvent) => boolean, ms = 10_000): Promise<SegmentEvent> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching event in ${ms} ms; got ${JSON.stringify(events)}`)), ms);
        const check = (): void => {
          const hit = events.find(pred);
          if (hit) {
            clearTimeout(timer);
            resolve(hit);
          } else {
            waiters.push(check);
          }
        };
        check();
      });
    },
  };
}

t.test('watch(): rank-attached, changed and rank-exit for a real process', async (t) => {
  const seg = makeSegment(t);
  const w = watchEvents(seg);
  const rank = await startRank(t, seg, 2, 5);

  const attached = await w.next((e) => e.type === 'rank-attached');
  t.same(attached, { type: 'rank-attached', slot: 2, pid: rank.pid, worldRank: 5 });
  await w.next((e) => e.type === 'changed');

  rank.child.kill('SIGKILL');
  const exit = await w.next((e) => e.type === 'rank-exit');
  t.same(exit, { type: 'rank-exit', slot: 2, pid: rank.pid, worldRank: 5 });
  t.equal(await rank.exited, 'SIGKILL');
  t.equal(w.events.filter((e) => e.type === 'rank-attached').length, 1, 'attached once');
  t.equal(w.events.filter((e) => e.type === 'error').length, 0, 'no errors');
});

t.test('watch() started after ranks attached: reports them, and one that is already dead', async (t) => {
  const seg = makeSegment(t);
  const live = await startRank(t, seg, 0, 0);
  const dead = await startRank(t, seg, 1, 1);
  dead.child.kill('SIGKILL');
  await dead.exited; // reaped by node: its pid no longer exists

  const w = watchEvents(seg);
  t.same(await w.next((e) => e.type === 'rank-attached' && e.slot === 0), {
    type: 'rank-attached', slot: 0, pid: live.pid, worldRank: 0,
  });
  await w.next((e) => e.type === 'rank-attached' && e.slot === 1);
  t.same(await w.next((e) => e.type === 'rank-exit'), { type: 'rank-exit', slot: 1, pid: dead.pid, worldRank: 1 });

  live.child.kill('SIGTERM');
  t.same(await w.next((e) => e.type === 'rank-exit' && e.slot === 0), {
    type: 'rank-exit', slot: 0, pid: live.pid, worldRank: 0,
  });
});

t.test('a slot re-claimed by a new process is reported again', async (t) => {
  const seg = makeSegment(t);
  const w = watchEvents(seg);
  const first = await startRank(t, seg, 3, 3);
  await w.next((e) => e.type === 'rank-attached' && e.pid === first.pid);
  first.child.kill('SIGKILL');
  await w.next((e) => e.type === 'rank-exit' && e.pid === first.pid);
  const second = await startRank(t, seg, 3, 3);
  t.same(await w.next((e) => e.type === 'rank-attached' && e.pid === second.pid), {
    type: 'rank-attached', slot: 3, pid: second.pid, worldRank: 3,
  });
});

t.test("'changed' is coalesced: at most one is queued for JS", async (t) => {
  const seg = makeSegment(t);
  const w = watchEvents(seg);
  // 2000 wakes in a burst (the child starts at spawn()) while this thread is
  // blocked: without coalescing, many would queue an event each.
  const rank = startRank(t, seg, 0, 0, 1, 2000);
  const until = Date.now() + 300;
  while (Date.now() < until) {
    // block the event loop so events can only queue up
  }
  await rank;
  await w.next((e) => e.type === 'changed');
  await new Promise((r) => setTimeout(r, 200));
  const changed = w.events.filter((e) => e.type === 'changed').length;
  t.ok(changed >= 1 && changed <= 3, `2000 wakes gave ${changed} 'changed' events`);
});

t.test('snapshot() shows claimed slots and validates what ranks wrote', async (t) => {
  const seg = makeSegment(t, 4, 6);
  const a = await startRank(t, seg, 1, 4);
  await startRank(t, seg, 3, 99, 99); // a buggy rank: state 99, world rank 99
  const snap = seg.snapshot();
  t.equal(snap.node, '');
  t.equal(snap.ranks.length, 1, 'empty and invalid slots are skipped');
  t.match(snap.ranks[0], {
    slot: 1,
    node: '',
    state: 'running',
    pid: a.pid,
    worldRank: 4,
    worldSize: 6,
    ackEpoch: 0,
    changeSeq: 2, // even: the seqlock is closed
    inCollective: false,
    unsupported: null,
    autoresumed: false,
    autoresumeReason: null,
    comms: [],
    flags: 0,
  });
  t.same(snap.ranks[0]!.sent, [0, 0, 0, 0, 0, 0], 'sent[] has worldSize entries');
  t.same(snap.ranks[0]!.recvd, [0, 0, 0, 0, 0, 0]);
  t.same(snap.problems, ['slot 3: state 99 out of range (treated as empty)']);
  t.equal(snap.consistent, false, 'a bad slot makes the cut unusable for a decision');
});

t.test('a rank whose world rank is out of range is flagged', async (t) => {
  const seg = makeSegment(t, 2, 4);
  await startRank(t, seg, 0, 7);
  const snap = seg.snapshot();
  t.equal(snap.ranks.length, 1);
  t.same(snap.problems, ['slot 0: world rank 7 outside 0..3']);
  t.equal(snap.consistent, false);
});

t.test('a clean snapshot with ranks is consistent', async (t) => {
  const seg = makeSegment(t, 2, 2);
  await startRank(t, seg, 0, 0);
  await startRank(t, seg, 1, 1);
  const snap = seg.snapshot();
  t.equal(snap.consistent, true);
  t.same(snap.problems, []);
  t.same(snap.ranks.map((r) => [r.slot, r.worldRank, r.state]), [[0, 0, 'running'], [1, 1, 'running']]);
});

t.test('watch() twice, or after close, is refused; close() while watching is prompt', async (t) => {
  const seg = makeSegment(t);
  t.throws(() => seg.watch(undefined as unknown as () => void), { message: 'watch(listener): listener must be a function' });
  const w = watchEvents(seg);
  t.throws(() => seg.watch(() => {}), { message: `control segment ${seg.name} is already watched (one listener per segment)` });
  const rank = await startRank(t, seg, 0, 0);
  await w.next((e) => e.type === 'rank-attached');
  const t0 = Date.now();
  seg.close();
  // the watcher waits with no timeout: a close that failed to wake it would hang
  // for good, so a generous limit (two VM tests may share the 2 cores) catches it
  t.ok(Date.now() - t0 < 10_000, `close joined the watcher threads (${Date.now() - t0} ms)`);
  t.notOk(existsSync(`/dev/shm${seg.name}`));
  const count = w.events.length;
  rank.child.kill('SIGKILL');
  await rank.exited;
  await new Promise((r) => setTimeout(r, 100));
  t.equal(w.events.length, count, 'no events after close()');
  t.throws(() => seg.watch(() => {}), /cannot watch: control segment .* is closed/);
});

t.test('a process that watched and then closed exits by itself', async (t) => {
  // Watching keeps the event loop alive by design (like a listening server);
  // close() must release the thread-safe function so the loop can end.
  const script = `
    import { ControlSegment } from ${JSON.stringify(new URL('../../src/native.ts', import.meta.url).href)};
    const seg = new ControlSegment({ name: ${JSON.stringify(freshName())}, slots: 1, worldSize: 1, resumeTimeoutMs: 1000, jobId: 'x' });
    seg.watch(() => {});
    setTimeout(() => seg.close(), 50);
  `;
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], { stdio: 'inherit' });
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.equal(code, 0, 'the child exited on its own after close()');
});

t.test('an exception thrown by the listener is an ordinary uncaught exception', async (t) => {
  const name = freshName();
  const script = `
    import { spawn } from 'node:child_process';
    import { ControlSegment } from ${JSON.stringify(new URL('../../src/native.ts', import.meta.url).href)};
    const seg = new ControlSegment({ name: ${JSON.stringify(name)}, slots: 1, worldSize: 1, resumeTimeoutMs: 1000, jobId: 'x' });
    let rank;
    process.on('uncaughtException', (err) => {
      console.log('uncaught:', err.message);
      seg.close();
      rank.kill('SIGKILL');
    });
    seg.watch(() => { throw new Error('listener failed'); });
    rank = spawn(${JSON.stringify(claimSlot)}, ['0', '0'], { env: { ...process.env, SYMBIO_SEGMENT: ${JSON.stringify(name)} }, stdio: 'ignore' });
  `;
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.equal(code, 0);
  t.match(out, 'uncaught: listener failed');
  t.notOk(existsSync(`/dev/shm${name}`));
});

t.test('terminating a worker while events flow: no crash, no segment left', async (t) => {
  // The env cleanup hook and the thread-safe function's finalizer race here:
  // threads must be joined and the queue dropped without calling into a
  // dying environment. Uses the addon directly (a worker has no TS loader).
  const name = freshName();
  const addonPath = join(root, 'build', 'Release', 'symbio.node');
  const code = `
    const { parentPort } = require('node:worker_threads');
    const { spawn } = require('node:child_process');
    const { ControlSegment } = require(${JSON.stringify(addonPath)});
    const seg = new ControlSegment({ name: ${JSON.stringify(name)}, slots: 2, worldSize: 2, resumeTimeoutMs: 1000, jobId: 'w' });
    let events = 0;
    seg.watch(() => { events++; });
    seg.hold();
    // a rank that floods agent_wake while the worker is being terminated
    const rank = spawn(${JSON.stringify(claimSlot)}, ['0', '0', '1', '2000000'], {
      env: { ...process.env, SYMBIO_SEGMENT: ${JSON.stringify(name)} }, stdio: 'ignore' });
    parentPort.postMessage(rank.pid);
    setInterval(() => {}, 1000);
  `;
  for (let round = 0; round < 3; round++) {
    const worker = new Worker(code, { eval: true });
    const pid = await new Promise<number>((resolve) => worker.once('message', resolve));
    await new Promise((r) => setTimeout(r, 5 * round));
    await worker.terminate();
    process.kill(pid, 'SIGKILL');
    t.notOk(existsSync(`/dev/shm${name}`), `round ${round}: segment removed by the env cleanup hook`);
  }
});
