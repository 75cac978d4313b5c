/**
 * symbio-mpirun is a drop-in for mpirun: its exit status is mpirun's, exactly.
 * Real Open MPI jobs (test/mpi/exit_with.c), each compared with plain mpirun
 * in the same test:
 * - a rank's specific non-zero exit code;
 * - a rank killed by a signal (mpirun says 128+N);
 * - mpirun itself killed by a signal: 128+N (docs/operations.md);
 * - mpirun that cannot be run or started: one clear line, exit 2 / 127;
 * - a --job-id already in use: refused in one line, the running job unharmed.
 */
import t from 'tap';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { descriptionPath, runtimeDir } from '../../src/agent/runtime-dir.js';
import { jobRequest, mpiCommon, prog, run, start, statusRanks, symbioMpirun, waitForJob } from '../helpers/mpi.js';

const dir = mkdtempSync(join(tmpdir(), 'symbio-exit-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// symbio's own logs at warn: stderr then holds only the job's and our errors
const env = { SYMBIO_LOG_LEVEL: 'warn' };
const plain = (args: string[], e: NodeJS.ProcessEnv = {}) => run('mpirun', [...mpiCommon, '-np', '2', prog('exit_with'), ...args], e);
const symbio = (args: string[], e: NodeJS.ProcessEnv = {}) => run(process.execPath, [symbioMpirun, ...mpiCommon, '-np', '2', prog('exit_with'), ...args], { ...env, ...e });

t.test('a specific non-zero exit code of a rank (7, rank 0) passes through exactly', async (t) => {
  const args = ['exit', '7', '0'];
  const p = await plain(args);
  t.equal(p.code, 7, `plain mpirun: ${args.join(' ')} -> 7`);
  const s = await symbio(args);
  t.equal(s.code, p.code, `symbio-mpirun: ${args.join(' ')} -> ${s.code}, as mpirun`);
  t.equal(s.stdout, p.stdout, 'same output');
});

t.test('a rank killed by a signal: 128+N, as mpirun', async (t) => {
  for (const [args, want] of [[['signal', '9'], 137], [['signal', '15', '0'], 143]] as const) {
    const p = await plain([...args]);
    t.equal(p.code, want, `plain mpirun: ${args.join(' ')} -> ${want}`);
    const s = await symbio([...args]);
    t.equal(s.code, p.code, `symbio-mpirun: ${args.join(' ')} -> ${s.code}, as mpirun`);
    t.match(s.stderr, new RegExp(`exited on signal ${args[1]}`), 'mpirun said which signal');
  }
});

/** The pids of a process's children (Linux). */
function children(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
    readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number),
  );
}

t.test('mpirun itself killed by a signal: 128+N', async (t) => {
  const jobId = `mpirun-killed-${process.pid}`;
  const gate = join(dir, 'killed.gate'); // never opened: the job runs until mpirun dies
  const { child, done } = start(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '2', prog('exit_with'), 'exit', '3'], { ...env, EXIT_WITH_GATE: gate });
  const desc = await waitForJob(jobId, 2);
  const s = await jobRequest(desc.socket, { op: 'status' }, 5_000);
  const rankPids = s.ok ? statusRanks(s.result).map((r) => r.pid) : [];
  t.equal(rankPids.length, 2, 'two ranks run');
  // the shared-memory segments of Open MPI's vader BTL, which mpirun cannot remove now
  const shm = new Set(rankPids.flatMap((pid) => readFileSync(`/proc/${pid}/maps`, 'utf8').match(/\/dev\/shm\/vader_segment\S*/g) ?? []));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const mpirun = children(child.pid!);
  t.equal(mpirun.length, 1, 'the launcher has one child: mpirun');
  process.kill(mpirun[0]!, 'SIGKILL');
  t.equal(await exited, 128 + 9, 'symbio-mpirun exits 137');
  // mpirun cannot stop its ranks: they hold our output pipes open
  for (const pid of rankPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  await done;
  for (const f of shm) rmSync(f, { force: true });
  t.notOk(existsSync(descriptionPath(runtimeDir(), jobId)), 'job description removed');
  t.notOk(existsSync(desc.socket), 'socket removed');
});

t.test('mpirun that cannot be run: one line, exit 2', async (t) => {
  const r = await symbio(['exit', '7'], { SYMBIO_MPIRUN: join(dir, 'no-such-mpirun') });
  t.equal(r.code, 2, 'exit code 2 (a missing prerequisite)');
  t.equal(r.stderr, `symbio-mpirun: cannot run mpirun ${join(dir, 'no-such-mpirun')} (SYMBIO_MPIRUN): no such file: install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or set SYMBIO_MPIRUN\n`, 'says what is missing, in one line');
});

t.test('mpirun that fails to start: one line, exit 127, nothing left behind', async (t) => {
  // An mpirun that answers the Open MPI check, then is gone when the job
  // starts (uninstalled in between): the spawn itself fails.
  const mpirun = join(dir, 'vanishing-mpirun');
  writeFileSync(mpirun, '#!/bin/sh\n[ "$1" = --version ] && { echo "mpirun (Open MPI) 4.1.4"; rm -f "$0"; exit 0; }\nexit 99\n');
  chmodSync(mpirun, 0o755);
  const jobId = `no-start-${process.pid}`;
  const r = await run(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '2', prog('exit_with'), 'exit', '7'], { ...env, SYMBIO_MPIRUN: mpirun });
  t.equal(r.code, 127, 'exit code 127');
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], `cannot start mpirun (${mpirun}): ENOENT`, 'naming mpirun and the reason');
  t.notOk(existsSync(descriptionPath(runtimeDir(), jobId)), 'job description removed');
  t.notOk(existsSync(join(runtimeDir(), `${jobId}.sock`)), 'socket removed');
});

t.test('a job id in use: the second launcher is refused, the first job is unharmed', async (t) => {
  const jobId = `in-use-${process.pid}`;
  const gate = join(dir, 'in-use.gate');
  const p = await plain(['exit', '5']);
  const first = start(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '2', prog('exit_with'), 'exit', '5'], { ...env, EXIT_WITH_GATE: gate });
  t.teardown(() => writeFileSync(gate, ''));
  const desc = await waitForJob(jobId, 2);
  const before = readFileSync(descriptionPath(runtimeDir(), jobId), 'utf8');

  const second = await run(process.execPath, [symbioMpirun, '--job-id', jobId, ...mpiCommon, '-np', '2', prog('exit_with'), 'exit', '5'], env);
  t.equal(second.code, 2, 'second launcher: exit code 2');
  t.equal(second.stdout, '', 'its job never started');
  t.match(second.stderr, new RegExp(`^symbio-mpirun: job id ${jobId}: .* is in use: .*pick another --job-id\\n$`), `one clear line: ${second.stderr}`);

  t.equal(readFileSync(descriptionPath(runtimeDir(), jobId), 'utf8'), before, "the first job's description is untouched");
  const s = await jobRequest(desc.socket, { op: 'status' }, 5_000);
  t.ok(s.ok, "the first job's controller still answers on its socket");
  t.equal(s.ok ? statusRanks(s.result).filter((r) => r.state === 'running').length : 0, 2, 'with both ranks running');

  writeFileSync(gate, '');
  const r = await first.done;
  t.equal(r.code, 5, 'the first job ends with its own exit code');
  t.equal(r.stdout, p.stdout, 'and its full output');
});
