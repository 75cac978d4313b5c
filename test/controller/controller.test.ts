/**
 * The controller on a real job (embedded in the launcher, as by default):
 * one operation per job at a time, with a second request queued behind it
 * or refused with a reason as configured; the queue limit; every phase and
 * operation journaled; and closing the controller while the job is frozen
 * lets the ranks run again at once.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launch } from '../../src/launcher/launcher.js';
import { OperationRefusedError, type Controller } from '../../src/controller/controller.js';
import { readEvents, readOperations } from '../../src/controller/journal.js';
import type { NodeAgent } from '../../src/agent/node-agent.js';
import { logger } from '../../src/log.js';
import { mpiCommon, prog } from '../helpers/mpi.js';

const log = logger.child({ test: 'controller' });
log.level = 'warn';

const stateDir = mkdtempSync(join(tmpdir(), 'symbio-controller-test-'));
t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));

/** Run halo2d under an embedded controller configured with `o`; `body` gets the controller once all ranks run. */
async function withJob(
  jobId: string,
  o: { whenBusy: 'queue' | 'refuse'; queueLimit: number },
  body: (c: Controller, agent: NodeAgent) => Promise<void>,
): Promise<{ exitCode: number; bodyError: unknown }> {
  let bodyDone: Promise<void> = Promise.resolve();
  let bodyError: unknown = null;
  const r = await launch({
    argv: ['--job-id', jobId, ...mpiCommon, '-np', '4', prog('halo2d'), '3000'],
    log,
    stateDir,
    ...o,
    onStarted: ({ controller, agent }) => {
      bodyDone = agent
        .waitForRanks(4, 60_000)
        .then(() => body(controller!, agent))
        .catch((err: unknown) => void (bodyError = err));
    },
  });
  await bodyDone;
  return { exitCode: r.exitCode, bodyError };
}

t.test('queue: a second request waits its turn; journal has every phase', async (t) => {
  const jobId = `ctl-queue-${process.pid}`;
  const { exitCode, bodyError } = await withJob(jobId, { whenBusy: 'queue', queueLimit: 4 }, async (c) => {
    const seen: string[] = [];
    const freeze = c.request({ job: jobId, kind: 'freeze', requestedBy: 'test', onProgress: (op) => seen.push(`freeze:${op.phase}`) });
    const resume = c.request({ job: jobId, kind: 'resume', requestedBy: 'test', onProgress: (op) => seen.push(`resume:${op.phase}`) });
    const [f, r] = await Promise.all([freeze, resume]);
    t.ok(f.ok && r.ok, `both done: ${f.error ?? ''} ${r.error ?? ''}`);
    t.same(seen, ['freeze:quiescing', 'freeze:freezing', 'freeze:done', 'resume:resuming', 'resume:done'], 'the resume ran after the freeze, not during it');
    t.same((r.result as { frozenCheck: unknown }).frozenCheck, { ok: true });
  });
  t.equal(bodyError, null, String(bodyError));
  t.equal(exitCode, 0);
  const events = readEvents(stateDir, jobId);
  const req = events.filter((e) => e.type === 'operation-requested');
  t.same(req.map((e) => [e.kind, e.queuedBehind]), [['freeze', 0], ['resume', 1]], 'the resume was journaled as queued behind one');
  t.same(events.filter((e) => e.type === 'operation-phase').map((e) => `${String(e.kind)}:${String(e.phase)}`), [
    'freeze:quiescing', 'freeze:freezing', 'freeze:done', 'resume:resuming', 'resume:done',
  ]);
  t.same([events[0]!.type, events.at(-1)!.type], ['job-started', 'job-finished'], 'the journal spans the job');
  const ops = readOperations(stateDir, jobId);
  t.equal(ops.length, 2, 'operations.jsonl has both, with timelines');
  t.match(ops[0], { kind: 'freeze', ok: true, timeline: [{ name: 'quiescing' }, { name: 'freezing' }] });
});

t.test('refuse: a request while another runs is refused with the reason; nothing is done', async (t) => {
  const jobId = `ctl-refuse-${process.pid}`;
  const { exitCode, bodyError } = await withJob(jobId, { whenBusy: 'refuse', queueLimit: 4 }, async (c) => {
    const freeze = c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' });
    await t.rejects(c.request({ job: jobId, kind: 'quiesce', requestedBy: 'test' }), { name: 'OperationRefusedError', message: /is busy: freeze op-\S+ is (queued|quiescing|freezing)/ });
    t.ok((await freeze).ok, 'the first one went on');
    await t.rejects(c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' }), /already frozen by an operator; resume it first/, 'frozen: a new quiesce is refused');
    t.ok((await c.request({ job: jobId, kind: 'resume', requestedBy: 'test' })).ok, 'resume');
  });
  t.equal(bodyError, null, String(bodyError));
  t.equal(exitCode, 0);
});

t.test('queue limit: beyond it, refused', async (t) => {
  const jobId = `ctl-limit-${process.pid}`;
  const { exitCode, bodyError } = await withJob(jobId, { whenBusy: 'queue', queueLimit: 1 }, async (c) => {
    const a = c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' });
    const b = c.request({ job: jobId, kind: 'resume', requestedBy: 'test' });
    let refused: unknown = null;
    try {
      await c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' });
    } catch (err) {
      refused = err;
    }
    t.ok(refused instanceof OperationRefusedError, 'third request refused');
    t.match((refused as Error).message, /1 requests already wait \(queue limit 1\)/);
    const [ra, rb] = await Promise.all([a, b]);
    t.ok(ra.ok && rb.ok, 'the two accepted ones ran');
  });
  t.equal(bodyError, null, String(bodyError));
  t.equal(exitCode, 0);
});

t.test('closing the controller while frozen: ranks run again at once, the job finishes', async (t) => {
  const jobId = `ctl-close-${process.pid}`;
  let waited = -1;
  const { exitCode, bodyError } = await withJob(jobId, { whenBusy: 'queue', queueLimit: 4 }, async (c, agent) => {
    t.ok((await c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' })).ok, 'frozen');
    const t0 = Date.now();
    await c.close();
    const stopped = () => agent.snapshot().ranks.some((r) => r.state === 'frozen' || r.state === 'held');
    while (stopped() && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 10));
    waited = Date.now() - t0;
    t.notOk(stopped(), 'no rank is held or frozen any more');
    await t.rejects(c.request({ job: jobId, kind: 'freeze', requestedBy: 'test' }), /shutting down/, 'a closed controller takes no work');
  });
  t.equal(bodyError, null, String(bodyError));
  // at once, not at the ranks' resume limit (60 s by default): a quarter of it is a margin a loaded 2-core machine keeps
  t.ok(waited >= 0 && waited < 15_000, `ranks running ${waited} ms after close`);
  t.equal(exitCode, 0, 'halo2d checks its own result and exits 0 only when it is right');
});
