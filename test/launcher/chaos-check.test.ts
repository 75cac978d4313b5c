/**
 * ChaosQuiescer's bookkeeping, against a real NodeAgent serving real Open MPI
 * ranks (the shim preloaded into plain mpirun, as the launcher does it):
 * a cycle counts as completed only when its frozen interval was verified.
 * A cycle that was resumed by someone else before chaos could check it (an
 * operator's resume in between) has no frozen-interval check at all: it is
 * counted apart, never as completed.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NodeAgent } from '../../src/agent/node-agent.js';
import { ChaosQuiescer, type ChaosReport } from '../../src/launcher/chaos.js';
import { logger } from '../../src/log.js';
import { nativeArtifact } from '../../src/util/package-root.js';
import { mpiCommon, prog, start } from '../helpers/mpi.js';
import { waitFor } from '../helpers/wait.js';

const quiet = logger.child({ test: 'chaos-check' });
quiet.level = 'error';

const dir = mkdtempSync(join(tmpdir(), 'symbio-chaos-check-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** A 2-rank job attached to a fresh agent; it waits at its gate (calling MPI) until `release`. */
async function job(t: Test, name: string) {
  const agent = new NodeAgent({ jobId: `${name}-${process.pid}`, slots: 2, worldSize: 2, resumeTimeoutMs: 60_000, stallMs: 2_000, log: quiet });
  const gate = join(dir, `${name}.gate`);
  const { done } = start('mpirun', [
    ...mpiCommon, '-np', '2',
    '-x', `LD_PRELOAD=${nativeArtifact('libsymbio-shim.so')}`, '-x', `SYMBIO_SEGMENT=${agent.segmentName}`, '-x', `EXIT_WITH_GATE=${gate}`,
    prog('exit_with'), 'exit', '3',
  ]);
  const release = async () => {
    writeFileSync(gate, '');
    const r = await done;
    agent.close();
    return r;
  };
  t.teardown(async () => {
    writeFileSync(gate, '');
    await done;
    agent.close();
  });
  await agent.waitForRanks(2, 60_000);
  return { agent, release };
}

/** Run chaos until it has tried `n` cycles (the state, not a guessed time), then stop it. */
async function chaosCycles(agent: NodeAgent, n: number): Promise<ChaosReport> {
  const chaos = new ChaosQuiescer(agent, { intervalMs: 10, maxFrozenMs: 2, quiesceTimeoutMs: 10_000, log: quiet });
  chaos.start();
  await waitFor(() => chaos.report().cycles >= n, 60_000, `${n} chaos cycles`, 10).catch(async (err: unknown) => {
    await chaos.stop();
    throw err;
  });
  return chaos.stop();
}

t.test('verified cycles count as completed', async (t) => {
  const { agent, release } = await job(t, 'chaos-verified');
  const r = await chaosCycles(agent, 5);
  t.ok(r.cycles >= 5, `${r.cycles} cycles tried`);
  t.equal(r.verifyFailures, 0, `no failed checks (${r.failures.join('; ')})`);
  t.equal(r.unverified, 0, 'every resumed cycle was checked');
  t.ok(r.completed >= 1, `${r.completed} completed`);
  const end = await release();
  t.equal(end.code, 3, 'the job ran on to its own exit code');
});

t.test('a cycle resumed by someone else before its check is not completed', async (t) => {
  const { agent, release } = await job(t, 'chaos-unchecked');
  // An operator's resume lands between chaos's quiesce and chaos's own
  // resume: the agent then has no frozen interval left to verify.
  const quiesce = agent.quiesce.bind(agent);
  let operatorResumes = 0;
  agent.quiesce = async (o) => {
    const q = await quiesce(o);
    await agent.resumeJob();
    operatorResumes++;
    return q;
  };
  const r = await chaosCycles(agent, 5);
  t.ok(operatorResumes >= 1, `${operatorResumes} cycles resumed by the "operator" first`);
  t.equal(r.completed, 0, 'none counted as completed (verified)');
  t.equal(r.unverified, operatorResumes, 'each counted as unverified');
  t.equal(r.verifyFailures, 0, 'and none as a failed check');
  const end = await release();
  t.equal(end.code, 3, 'the job ran on to its own exit code');
});
