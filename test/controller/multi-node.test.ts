/**
 * One MPI job spread over two node agents (two control segments, as on two
 * hosts), attached to a standalone controller, one over its Unix socket and
 * one over TCP with the shared token: global
 * quiesce, freeze and resume across nodes with real Open MPI traffic, through
 * the controller's API and through the CLI; then the controller dies while
 * the ranks are frozen, and the agents resume them at once.
 *
 * Which segment a rank opens is chosen by a tiny wrapper from its world rank
 * (ranks 0-1: node "a", 2-3: node "b"): on one machine this is as close to
 * two hosts as the shim can tell.
 */
import t from 'tap';

/** The part of a tap test setup() uses. */
type Tap = { teardown(fn: () => unknown): void };
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeAgent } from '../../src/agent/node-agent.js';
import { ControllerSession } from '../../src/agent/controller-session.js';
import { startStandaloneController } from '../../src/controller/standalone.js';
import { configSchema } from '../../src/config/schema.js';
import { nativeArtifact } from '../../src/util/package-root.js';
import { logger } from '../../src/log.js';
import { mpiCommon, plainMpirun, prog, run, start, symbioCli } from '../helpers/mpi.js';

const log = logger.child({ test: 'multi-node' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'warn';

// SYMBIO_SLOT: the rank's slot in its node's segment (its local rank there).
const WRAPPER =
  'r=$OMPI_COMM_WORLD_RANK; if [ "$r" -lt 2 ]; then SYMBIO_SEGMENT=$SEG_A; else SYMBIO_SEGMENT=$SEG_B; fi; ' +
  'SYMBIO_SLOT=$((r % 2)); export SYMBIO_SEGMENT SYMBIO_SLOT; exec "$0" "$@"';

/** A TCP port nobody listens on right now. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * A standalone controller on a Unix socket and on TCP (with a token); node
 * "a" attaches over the Unix socket, node "b" over TCP, as an agent on
 * another host would.
 */
async function setup(t: Tap, jobId: string) {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-mn-'));
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `token-${process.pid}\n`, { mode: 0o600 });
  const port = await freePort();
  const config = configSchema.parse({
    controller: { socket: join(dir, 'controller.sock'), stateDir: join(dir, 'state'), tcp: { host: '127.0.0.1', port }, tokenFile },
    quiesce: { stallMs: 3_000 },
  });
  const ctl = await startStandaloneController(config, null, log);
  t.teardown(() => ctl.close());
  const agents = ['a', 'b'].map(
    (node) =>
      new NodeAgent({ jobId, node, slots: 2, worldSize: 4, resumeTimeoutMs: 60_000, stallMs: 3_000, log, segmentName: `/symbio-mn-${node}-${process.pid}` }),
  );
  t.teardown(() => agents.forEach((a) => a.close()));
  const sessions = agents.map(
    (agent, i) =>
      new ControllerSession(agent, {
        ...(i === 0 ? { address: { unix: ctl.socket } } : { address: { tcp: { host: '127.0.0.1', port } }, token: `token-${process.pid}` }),
        job: jobId,
        node: agent.node,
        ...(i === 0 ? { register: { command: ['mpirun', 'halo2d'], np: 4 } } : {}),
        log,
        retryMs: 50,
      }),
  );
  for (const s of sessions) await s.start(); // the first registers the job
  t.teardown(() => sessions.forEach((s) => s.close()));
  t.teardown(() => rmSync(dir, { recursive: true, force: true })); // last: after everything that writes there
  return { ctl, agents, sessions, dir };
}

function startJob(agents: NodeAgent[], args: readonly string[]) {
  return start('mpirun', [
    ...mpiCommon, '-np', '4',
    '-x', `LD_PRELOAD=${nativeArtifact('libsymbio-shim.so')}`,
    '-x', `SEG_A=${agents[0]!.segmentName}`, '-x', `SEG_B=${agents[1]!.segmentName}`,
    '/bin/sh', '-c', WRAPPER, prog('halo2d'), ...args,
  ]);
}

t.test('global quiesce across two nodes, by API and by CLI', async (t) => {
  const jobId = `mn-${process.pid}`;
  const plain = await plainMpirun(4, 'halo2d', ['3000']);
  const { ctl, agents } = await setup(t, jobId);
  const { done } = startJob(agents, ['3000']);
  await Promise.all(agents.map((a) => a.waitForRanks(2, 60_000)));

  let cycles = 0;
  let drained = 0;
  for (let i = 0; i < 15; i++) {
    const f = await ctl.controller.request({ job: jobId, kind: 'freeze', requestedBy: 'test' });
    if (!f.ok && /finaliz|no agent|ended/.test(f.error ?? '')) break; // the job got to its end
    t.ok(f.ok, `freeze ${i}: ${f.error ?? 'ok'}`);
    if (!f.ok) break;
    const out = f.result as { summary: { nodes: number; held: number; drainedNow: number } };
    t.equal(out.summary.nodes, 2, 'both nodes took part');
    drained += out.summary.drainedNow;
    const r = await ctl.controller.request({ job: jobId, kind: 'resume', requestedBy: 'test' });
    t.ok(r.ok, `resume ${i}: ${r.error ?? 'ok'}`);
    t.same((r.result as { frozenCheck: unknown } | undefined)?.frozenCheck, { ok: true }, 'no MPI progress on any node while frozen');
    cycles++;
    await new Promise((res) => setTimeout(res, 20));
  }
  t.ok(cycles >= 3, `${cycles} freeze/resume cycles across nodes (${drained} messages drained in all)`);

  // the operator's view of the same job, through the standalone controller's socket
  const q = await run(process.execPath, [symbioCli, 'quiesce', '--controller', ctl.socket, '--job', jobId, '--json']);
  if (q.code === 0) {
    const rec = JSON.parse(q.stdout) as { result: { summary: { nodes: number; held: number } } };
    t.equal(rec.result.summary.nodes, 2, 'CLI quiesce spans both nodes');
    const st = await run(process.execPath, [symbioCli, 'status', '--controller', ctl.socket, '--job', jobId, '--json']);
    const nodes = (JSON.parse(st.stdout) as { nodes: { node: string; ranks: { state: string }[] }[] }).nodes;
    t.same(nodes.map((n) => n.node).sort(), ['a', 'b'], 'status lists both nodes');
    const ages = (JSON.parse(st.stdout) as { nodes: { heartbeatAgeMs?: number }[] }).nodes.map((n) => n.heartbeatAgeMs);
    t.ok(ages.every((a) => typeof a === 'number' && a >= 0 && a < 5_000), `both agents' heartbeats are recent: ${ages.join(', ')} ms`);
    const res = await run(process.execPath, [symbioCli, 'resume', '--controller', ctl.socket, '--job', jobId]);
    t.equal(res.code, 0, `CLI resume: ${res.stderr}`);
  } else {
    t.match(q.stderr, /finaliz|ended/, `quiesce late in the job is refused with a reason: ${q.stderr}`);
  }
  const r = await done;
  t.equal(r.code, 0, 'job finished');
  t.equal(r.stdout, plain.stdout, 'output identical to a plain run');
});

t.test('controller dies while ranks are frozen: agents resume them at once', async (t) => {
  const jobId = `mn-kill-${process.pid}`;
  const plain = await plainMpirun(4, 'halo2d', ['3000']);
  const { ctl, agents } = await setup(t, jobId);
  const { done } = startJob(agents, ['3000']);
  await Promise.all(agents.map((a) => a.waitForRanks(2, 60_000)));
  const f = await ctl.controller.request({ job: jobId, kind: 'freeze', requestedBy: 'test' });
  t.ok(f.ok, `frozen across nodes: ${f.error ?? ''}`);
  const t0 = Date.now();
  await ctl.server.close(); // the controller's connections drop without a RESUME
  for (;;) {
    const states = agents.flatMap((a) => a.snapshot().ranks.map((r) => r.state));
    if (states.every((s) => s === 'running' || s === 'finalized')) break;
    if (Date.now() - t0 > 30_000) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  const waited = Date.now() - t0;
  t.ok(agents.flatMap((a) => a.snapshot().ranks).every((r) => r.state === 'running' || r.state === 'finalized' || r.state === 'empty'), 'every rank runs again');
  // at once, not at the agents' resume limit (60 s): a quarter of it is a margin a loaded 2-core machine keeps
  t.ok(waited < 15_000, `ranks running again ${waited} ms after the controller went away (resume limit is 60 s)`);
  const r = await done;
  t.equal(r.code, 0, 'job finished');
  t.equal(r.stdout, plain.stdout, 'output identical to a plain run');
});
