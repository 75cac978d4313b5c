/**
 * The Controller's refusals and error paths (src/controller/controller.ts),
 * on a real Open MPI job: 4 ranks of halo2d over two real NodeAgents (two
 * control segments), attached to the Controller as its nodes, so the
 * freeze, resume and frozen-interval check are the real ones.
 *
 * Stand-ins, and why:
 *  - a node that reports one rank as having made an MPI call while frozen
 *    (FrozenCheckNode, for the failed frozen-interval check): the shim makes
 *    exactly that impossible for a real rank, and a rank killed while
 *    frozen does not fail the check (a dead rank moved nothing).
 *  - a JobVmBackend with only list()/freePlaces() (for the placement
 *    refusal): the refusal comes before any VM step, and real VMs cannot
 *    run here; every other call of it fails the test.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller, OperationRefusedError } from '../../src/controller/controller.js';
import type { JobVmBackend } from '../../src/controller/vm-backend.js';
import type { GuestAgentLink } from '../../src/controller/guest-agent-link.js';
import { readEvents } from '../../src/controller/journal.js';
import type { OperationSummary } from '../../src/controller/operation.js';
import { logger } from '../../src/log.js';
import { allRanksRunning, FrozenCheckNode, rankStates, twoNodeJob } from '../helpers/two-node-job.js';

const log = logger.child({ test: 'controller-errors' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'silent';

const dir = mkdtempSync(join(tmpdir(), 'symbio-ctl-err-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('on one running job', async (t) => {
  const name = `ctlerr-${process.pid}`;
  const { agents } = await twoNodeJob(t, { name, nodes: ['a', 'b'], log });

  let seq = 0;
  const controllerWith = (tt: { teardown(fn: () => unknown): void }) => {
    const job = `${name}-${++seq}`;
    const c = new Controller({ stateDir: join(dir, 'state'), whenBusy: 'queue', queueLimit: 4, quiesce: { timeoutMs: 20_000, stallMs: 3_000 }, log });
    tt.teardown(() => c.close());
    c.registerJob({ id: job, command: ['mpirun', 'halo2d'], np: 4 });
    const nodes = agents.map((a) => new FrozenCheckNode(a));
    return { c, job, nodes };
  };

  t.test('a job registered twice while it runs is refused; once it ended, the id may be used again', async (t) => {
    const { c, job, nodes } = controllerWith(t);
    for (const n of nodes) c.attachNode(job, n);
    t.throws(() => c.registerJob({ id: job, command: ['mpirun', 'other'], np: 2 }), { name: 'OperationRefusedError', message: `job ${job} is already registered and running` });
    t.same((await c.status(job)).command, ['mpirun', 'halo2d'], 'the running job was not replaced');
    c.jobFinished(job, 0);
    c.registerJob({ id: job, command: ['mpirun', 'again'], np: 2 });
    t.same((await c.status(job)).command, ['mpirun', 'again'], 'an ended job\'s id is free again');
  });

  t.test('an operation on an ended job is refused; one queued when it ended is cancelled without running', async (t) => {
    const { c, job, nodes } = controllerWith(t);
    for (const n of nodes) c.attachNode(job, n);
    let resume: Promise<OperationSummary> | null = null;
    const freeze = c.request({
      job, kind: 'freeze', requestedBy: 'test',
      // while the freeze runs: a resume is queued behind it, then the job ends; the resume must not run
      onProgress: (op) => {
        if (op.phase !== 'quiescing' || resume) return;
        resume = c.request({ job, kind: 'resume', requestedBy: 'test' });
        c.jobFinished(job, 3);
      },
    });
    await freeze;
    t.ok(resume, 'the resume was queued during the freeze');
    const r = await resume!;
    t.equal(r.phase, 'cancelled');
    t.equal(r.error, `not run: job ${job} ended`);
    t.same(r.timeline, [], 'it never started a phase');
    await t.rejects(c.request({ job, kind: 'freeze', requestedBy: 'test' }), { name: 'OperationRefusedError', message: `job ${job} has ended (exit code 3)` });
    // the ended job's quiescer was closed: whatever it held runs again (the controller's close resumes it)
    await c.close();
    t.ok(allRanksRunning(agents), `ranks run: ${rankStates(agents).join(',')}`);
  });

  t.test('a node joining during an operation is refused; the operation goes on with the nodes it had', async (t) => {
    const { c, job, nodes } = controllerWith(t);
    c.attachNode(job, nodes[0]!);
    c.attachNode(job, nodes[1]!);
    const late = new FrozenCheckNode(agents[1]!);
    let refused: unknown = null;
    const f = await c.request({
      job, kind: 'freeze', requestedBy: 'test',
      onProgress: (op) => {
        if (op.phase !== 'quiescing' || refused) return;
        try {
          c.attachNode(job, late);
        } catch (err) {
          refused = err;
        }
      },
    });
    t.ok(refused instanceof OperationRefusedError, 'refused');
    t.equal((refused as Error).message, `job ${job}: a node cannot join during freeze`);
    t.ok(f.ok, f.error ?? '');
    t.equal((f.result as { summary: { nodes: number } }).summary.nodes, 2);
    const st = await c.status(job);
    t.same((st.nodes as { node: string }[]).map((n) => n.node), ['a', 'b']);
    t.notOk(readEvents(join(dir, 'state'), job).some((e) => e.type === 'node-attached' && e.replaced === true), 'the refused node replaced nobody');
    t.ok((await c.request({ job, kind: 'resume', requestedBy: 'test' })).ok);
  });

  t.test('a failed frozen-interval check: the resume fails with the reason, the ranks run, the job is no longer held', async (t) => {
    const { c, job, nodes } = controllerWith(t);
    for (const n of nodes) c.attachNode(job, n);
    t.ok((await c.request({ job, kind: 'freeze', requestedBy: 'test' })).ok);
    nodes[1]!.moveWhileFrozen = true;
    const r = await c.request({ job, kind: 'resume', requestedBy: 'test' });
    nodes[1]!.moveWhileFrozen = false;
    t.equal(r.ok, false);
    t.equal(r.phase, 'failed');
    t.equal(r.failedIn, 'resuming');
    t.match(r.error, /^frozen-interval check failed: rank 2 \(.*\) made 1 MPI calls while frozen$/);
    t.match(r.result, { frozenCheck: { ok: false, reason: /made 1 MPI calls while frozen/ } });
    t.ok(allRanksRunning(agents), `ranks run: ${rankStates(agents).join(',')}`);
    t.equal((await c.status(job)).held, null, 'not held any more');
    const f = await c.request({ job, kind: 'freeze', requestedBy: 'test' });
    t.ok(f.ok, 'a new freeze is accepted (it would be refused as "already frozen" if the failed resume had left the job held)');
    t.ok((await c.request({ job, kind: 'resume', requestedBy: 'test' })).ok);
  });

  t.test('a migration with no usable free place is cancelled before any step, naming what is free and up', async (t) => {
    const { c, job, nodes } = controllerWith(t);
    const calls: string[] = [];
    // stand-in (see the header): only list() and freePlaces() may be called
    const backend = new Proxy(
      {
        placeKind: 'slot',
        list: () => [
          { id: 'a', host: 'slot0', memoryBytes: 1 << 26, interconnect: { mac: '52:54:00:00:00:01', address: '10.9.0.1/24' } },
          { id: 'b', host: 'slot1', memoryBytes: 1 << 26, interconnect: { mac: '52:54:00:00:00:02', address: '10.9.0.2/24' } },
        ],
        freePlaces: () => ['slot2', 'slot3'],
      },
      {
        get: (target, key) => {
          if (key in target) return target[key as keyof typeof target];
          if (typeof key === 'string' && key !== 'then') calls.push(key);
          return undefined;
        },
      },
    ) as unknown as JobVmBackend;
    c.addHosts(['slot0', 'slot1', 'slot2', 'slot3'].map((name) => ({ name, spare: false })));
    c.attachVmJob(job, { backend, links: new Map(nodes.map((n) => [n.node, n])) as unknown as Map<string, GuestAgentLink>, checkpointDir: join(dir, 'ck', job), keep: 1 });
    c.setHostState('slot2', 'down', 'test');
    const one = await c.request({ job, kind: 'migrate', requestedBy: 'test', params: { vms: ['a', 'b'] } });
    t.equal(one.phase, 'cancelled');
    t.equal(one.error, `no usable free slot for 2 VMs of job ${job} (free and up: slot3)`);
    c.setHostState('slot3', 'drained', 'test');
    const none = await c.request({ job, kind: 'migrate', requestedBy: 'test' });
    t.equal(none.error, `no usable free slot for 1 VM of job ${job} (free and up: none)`);
    t.same([one.timeline, none.timeline], [[], []], 'nothing was quiesced: no phase ran');
    t.same(calls, [], 'no VM step was taken');
    t.ok(allRanksRunning(agents), 'the ranks run');
    await t.rejects(c.retarget(job, 'slot2', undefined, 'test'), { name: 'OperationRefusedError', message: `job ${job} has no migration under way to retarget` });
  });
});
