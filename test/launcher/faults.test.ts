/**
 * Fault cases of the quiesce layer, on real Open MPI jobs:
 * - the agent (launcher) killed while ranks are FROZEN: ranks resume by
 *   themselves and the job still finishes with the right output;
 * - RESUME never comes: ranks resume by themselves after the limit;
 * - a rank killed mid-run: a rank-exit event reaches TypeScript;
 * - a corrupted segment: the shim says what is wrong and the job runs;
 * - a job using an unsupported feature (RMA): quiesce is refused with the
 *   reason, the job is not harmed.
 */
import t from 'tap';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { descriptionPath, runtimeDir } from '../../src/agent/runtime-dir.js';
import { launch } from '../../src/launcher/launcher.js';
import { logger } from '../../src/log.js';
import type { NodeAgent, AttachedRank } from '../../src/agent/node-agent.js';
import { jobRequest, mpiCommon, plainMpirun, prog, run, start, statusRanks, symbioMpirun, waitForJob } from '../helpers/mpi.js';
import { nativeArtifact } from '../../src/util/package-root.js';
import { segmentNameFor } from '../../src/native.js';

const quiet = logger.child({ test: 'faults' });
quiet.level = 'warn';

t.test('agent killed while ranks are frozen: ranks resume by themselves, job finishes correctly', async (t) => {
  const plain = await plainMpirun(4, 'ring');
  const jobId = `kill-agent-${process.pid}`;
  const { child, done } = start(process.execPath, [
    symbioMpirun, '--job-id', jobId, '--resume-timeout', '60000', ...mpiCommon, '-np', '4', prog('ring'),
  ]);
  const desc = await waitForJob(jobId, 4);
  const reply = await jobRequest(desc.socket, { op: 'operate', kind: 'freeze', timeoutMs: 20_000 }, 25_000);
  t.ok(reply.ok, `quiesce answered: ${JSON.stringify(reply).slice(0, 200)}`);
  t.equal((reply as { result: { result: { frozen: boolean } } }).result.result.frozen, true, 'all ranks frozen');
  const killedAt = Date.now();
  child.kill('SIGKILL'); // the agent dies; mpirun and the frozen ranks live on
  const r = await done;
  t.equal(r.stdout, plain.stdout, 'the job finished with the same output as a plain run');
  const resumed = r.stderr.match(/resuming by myself: the symbio agent \(pid \d+\) is gone/g) ?? [];
  t.equal(resumed.length, 4, 'every rank said why it resumed by itself');
  t.ok(Date.now() - killedAt < 30_000, `well before the 60 s resume limit (${Date.now() - killedAt} ms)`);
  // SIGKILL leaves the agent no chance to clean up: remove its segment and files
  rmSync(`/dev/shm${desc.segment}`, { force: true });
  rmSync(desc.socket, { force: true });
  rmSync(descriptionPath(runtimeDir(), jobId), { force: true });
});

t.test('RESUME never comes: ranks resume by themselves after the limit', async (t) => {
  const plain = await plainMpirun(4, 'ring');
  const jobId = `no-resume-${process.pid}`;
  const { done } = start(process.execPath, [
    symbioMpirun, '--job-id', jobId, '--resume-timeout', '700', ...mpiCommon, '-np', '4', prog('ring'),
  ]);
  const desc = await waitForJob(jobId, 4);
  // the ranks' 700 ms start at HOLD, which comes after this request: they cannot be back sooner
  const t0 = Date.now();
  const reply = await jobRequest(desc.socket, { op: 'operate', kind: 'freeze', timeoutMs: 20_000 }, 25_000);
  t.ok(reply.ok, 'frozen');
  // watch the ranks come back by themselves
  let running = 0;
  while (Date.now() - t0 < 30_000) {
    const s = await jobRequest(desc.socket, { op: 'status' }, 5_000);
    running = s.ok ? statusRanks(s.result).filter((x) => x.state === 'running').length : -1;
    if (running === 4) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const waited = Date.now() - t0;
  t.equal(running, 4, `all ranks running again after ${waited} ms`);
  // not before the limit; and long before the 60 s default (a limit not applied at all)
  t.ok(waited >= 700 && waited < 30_000, 'when the 700 ms limit ran out');
  const resumed = await jobRequest(desc.socket, { op: 'operate', kind: 'resume' }, 10_000);
  t.ok(resumed.ok, `the operator's resume afterwards succeeds: ${JSON.stringify(resumed).slice(0, 300)}`);
  t.match((resumed as { result: { result: { selfResumed: string } } }).result.result.selfResumed, /4 ranks had resumed by themselves \(timeout\)/, 'and says the ranks had resumed by themselves');
  const r = await done;
  t.equal(r.code, 0);
  t.equal(r.stdout, plain.stdout, 'output unchanged');
  t.match(r.stderr, /resuming by myself: no RESUME within 700 ms/);
});

t.test('SIGTERM while frozen: ranks resumed, job stopped, nothing left behind', async (t) => {
  const jobId = `sigterm-${process.pid}`;
  const { child, done } = start(process.execPath, [
    symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '4', prog('ring'), '100000000',
  ]);
  const desc = await waitForJob(jobId, 4);
  const reply = await jobRequest(desc.socket, { op: 'operate', kind: 'freeze', timeoutMs: 20_000 }, 25_000);
  t.ok(reply.ok, 'frozen');
  const t0 = Date.now();
  child.kill('SIGTERM');
  const r = await done;
  t.ok(Date.now() - t0 < 20_000, `stopped in ${Date.now() - t0} ms`);
  t.not(r.code, 0, `non-zero exit (${r.code ?? r.signal})`);
  t.match(r.stderr, /signal: resuming ranks and stopping the job/, 'said what it did');
  t.notOk(existsSync(`/dev/shm${desc.segment}`), 'segment removed');
  t.notOk(existsSync(desc.socket), 'socket removed');
  t.notOk(existsSync(descriptionPath(runtimeDir(), jobId)), 'job description removed');
});

t.test('a rank killed mid-run is an event in TypeScript', async (t) => {
  const exits: AttachedRank[] = [];
  let agent: NodeAgent | null = null;
  let quiesceAfterDeath: Promise<string> | null = null;
  const result = await launch({
    argv: [...mpiCommon, '-np', '3', prog('crash'), 'die'],
    log: quiet,
    onStarted: (c) => {
      agent = c.agent;
      c.agent.on('rank-exit', (r) => {
        exits.push(r);
        // a quiesce asked right after a rank died is refused at once, not left to stall
        quiesceAfterDeath ??= c.agent.quiesce({ freeze: true, timeoutMs: 10_000 }).then(
          () => 'quiesced',
          (err: Error) => err.message,
        );
      });
    },
  });
  t.ok(agent, 'agent ran');
  t.match(await quiesceAfterDeath, /died without finalizing/, 'quiesce after the death is refused at once');
  t.not(result.exitCode, 0, `the job failed (exit ${result.exitCode})`);
  t.ok(exits.some((r) => r.worldRank === 2), `rank-exit event for world rank 2 (events: ${JSON.stringify(exits)})`);
});

t.test('a corrupted control segment: the shim says what is wrong and the job runs', async (t) => {
  const name = `/symbio-corrupt-${process.pid}`;
  writeFileSync(`/dev/shm${name}`, Buffer.alloc(8192, 0x5a), { mode: 0o600 });
  t.teardown(() => rmSync(`/dev/shm${name}`, { force: true }));
  const plain = await plainMpirun(2, 'ring', ['200']);
  const r = await run('mpirun', [
    ...mpiCommon, '-np', '2', '-x', `LD_PRELOAD=${nativeArtifact('libsymbio-shim.so')}`, '-x', `SYMBIO_SEGMENT=${name}`, prog('ring'), '200',
  ]);
  t.equal(r.code, 0, 'job ran');
  t.equal(r.stdout, plain.stdout, 'with the right output');
  t.match(r.stderr, /control segment .* is invalid: bad magic/, 'one clear line per rank');
  t.notMatch(r.stderr, /Segmentation|signal 11/, 'no crash');
});

t.test('an unsupported feature (RMA): quiesce refused with the reason, job unharmed', async (t) => {
  const plain = await plainMpirun(2, 'rma');
  const jobId = `rma-${process.pid}`;
  const { done } = start(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '2', prog('rma')]);
  const desc = await waitForJob(jobId, 2);
  // the shim marks the job at MPI_Win_create; ask until it has
  let reply = await jobRequest(desc.socket, { op: 'operate', kind: 'quiesce', timeoutMs: 5_000 }, 10_000);
  for (let i = 0; i < 50 && reply.ok; i++) {
    await jobRequest(desc.socket, { op: 'operate', kind: 'resume' }, 10_000);
    await new Promise((r) => setTimeout(r, 50));
    reply = await jobRequest(desc.socket, { op: 'operate', kind: 'quiesce', timeoutMs: 5_000 }, 10_000);
  }
  t.notOk(reply.ok, 'quiesce refused');
  t.match((reply as { error: string }).error, /unsupported|one-sided|rma/i, `says why: ${(reply as { error?: string }).error}`);
  const r = await done;
  t.equal(r.code, 0);
  t.equal(r.stdout, plain.stdout, 'output unchanged');
  const said = r.stderr.match(/one-sided communication \(MPI_Win_\*\) is not supported/g) ?? [];
  t.equal(said.length, 2, 'each rank said so once');
});

t.test('a control segment that cannot be created: LaunchError naming the segment', async (t) => {
  const jobId = `taken-${process.pid}`;
  const path = `/dev/shm${segmentNameFor(jobId)}`;
  writeFileSync(path, 'someone else', { mode: 0o600 }); // the name is taken
  t.teardown(() => rmSync(path, { force: true }));
  await t.rejects(
    launch({ argv: ['--job-id', jobId, ...mpiCommon, '-np', '2', prog('ring')], log: quiet }),
    { name: 'LaunchError', message: /cannot create the control segment: .*already exists/ },
  );
  t.equal(readFileSync(path, 'utf8'), 'someone else', 'the existing object is left alone');
});

t.test('bad input: clear one-line errors and exit code 2', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cases: Array<[string, string[], NodeJS.ProcessEnv, RegExp]> = [
    ['program not found', ['-np', '2', './no-such-program'], {}, /program '.\/no-such-program' not found/],
    ['no program', ['-np', '2'], {}, /no program to run/],
    ['bad -np', ['-np', 'many', prog('ring')], {}, /-np needs a positive integer/],
    ['mpirun missing', ['-np', '2', prog('ring')], { PATH: dir }, /mpirun not found in PATH/],
    ['not Open MPI', ['-np', '2', prog('ring')], { SYMBIO_MPIRUN: '/bin/true' }, /is not Open MPI's mpirun/],
    ['shim not built', ['-np', '2', prog('ring')], { SYMBIO_SHIM: join(dir, 'libsymbio-shim.so') }, /shim is not built .* run npm run build/],
  ];
  for (const [what, args, env, re] of cases) {
    const r = await run(process.execPath, [symbioMpirun, ...args], env);
    t.equal(r.code, 2, `${what}: exit code 2`);
    t.match(r.stderr, re, `${what}: says what is wrong`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  }
});
