/**
 * The configured plugins on a real job, end to end: symbio-mpirun reads a
 * symbio.yaml that names built-in plugins by package name; a file monitor
 * turns a value written to a file into a health event, the periodic
 * checkpoint policy asks for checkpoints (refused: the job runs in no VM,
 * and the refusal is journaled), and a rank that dies becomes a failure the
 * restart policy decides on. Everything is read back through `symbio events`.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mpiCommon, prog, root, run, start, symbioCli, symbioMpirun, waitForJob } from '../helpers/mpi.js';

interface Ev {
  type: string;
  [k: string]: unknown;
}

const dir = mkdtempSync(join(tmpdir(), 'symbio-plugins-e2e-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const stateDir = join(dir, 'state');
const env = { SYMBIO_STATE_DIR: stateDir };
const sensor = join(dir, 'temperature');
const configFile = join(dir, 'symbio.yaml');
writeFileSync(sensor, '40\n');
writeFileSync(
  configFile,
  `# plugins by package name; the monitor reads a file a test writes to
quiesce:
  stallMs: 3000
plugins:
  - use: symbio/plugins/monitors/command
    intervalMs: 100
    options:
      file: ${sensor}
      component: board temperature
      unit: C
      warning: 70
      critical: 90
  - use: symbio/plugins/policies/periodic-checkpoint
    options:
      mtbfMs: 2000
      initialCheckpointCostMs: 10
      minIntervalMs: 100
      recheckMs: 100
      retryAfterFailureMs: 300
  - use: symbio/plugins/policies/restart-on-failure
`,
);

async function eventsOf(job: string): Promise<Ev[]> {
  const r = await run(process.execPath, [symbioCli, 'events', '--job', job, '--json'], env);
  return r.code === 0 ? (JSON.parse(r.stdout) as Ev[]) : [];
}

async function until(job: string, what: string, pred: (evs: Ev[]) => boolean, timeoutMs = 30_000): Promise<Ev[]> {
  const t0 = Date.now();
  for (;;) {
    const evs = await eventsOf(job);
    if (pred(evs)) return evs;
    if (Date.now() - t0 > timeoutMs) throw new Error(`no ${what} within ${timeoutMs} ms; journal: ${JSON.stringify(evs.map((e) => e.type))}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

t.test('plugins list and config check see the three plugins', async (t) => {
  const r = await run(process.execPath, [symbioCli, 'plugins', 'list', '--config', configFile, '--json'], env);
  t.equal(r.code, 0, r.stderr);
  const list = JSON.parse(r.stdout) as { name: string; kind: string }[];
  t.same(list.map((p) => [p.name, p.kind]), [['command', 'health-monitor'], ['periodic-checkpoint', 'policy'], ['restart-on-failure', 'policy']]);
  const c = await run(process.execPath, [symbioCli, 'config', 'check', '--config', configFile], env);
  t.equal(c.code, 0, c.stderr);
  t.match(c.stdout, /# valid: .*symbio\.yaml/);
  t.match(c.stdout, /intervalMs: 100/, 'the effective configuration is printed');
});

t.test('health event, policy decisions and their refusal, on a running job', async (t) => {
  const job = `plug-${process.pid}`;
  const { done } = start(process.execPath, [symbioMpirun, '--symbio-config', configFile, '--job-id', job, ...mpiCommon, '-np', '2', prog('ring'), '3000000'], env);
  await waitForJob(job, 2);
  writeFileSync(sensor, '95\n');
  const evs = await until(job, 'critical health event and a refused checkpoint', (e) =>
    e.some((x) => x.type === 'health' && x.severity === 'critical') && e.some((x) => x.type === 'decision-refused'),
  );
  const health = evs.find((x) => x.type === 'health' && x.severity === 'critical')!;
  t.match(health, { monitor: 'command', component: 'board temperature', value: 95 }, 'the monitor reading became a journaled event');
  const decision = evs.find((x) => x.type === 'decision' && x.action === 'checkpoint');
  t.match(decision, { by: 'periodic-checkpoint', job }, 'the periodic policy decided to checkpoint');
  t.match(evs.find((x) => x.type === 'decision-refused'), { action: 'checkpoint', reason: /runs in no VM/ }, 'and the controller refused with the reason');
  const st = await run(process.execPath, [symbioCli, 'status', '--job', job], env);
  t.match(st.stdout, /running/, 'the job kept running');
  // stop the job: SIGTERM to the launcher, as a scheduler would
  const killed = await run(process.execPath, [symbioCli, 'jobs', '--json'], env);
  const pid = (JSON.parse(killed.stdout) as { jobId: string; pid: number }[]).find((j) => j.jobId === job)!.pid;
  process.kill(pid, 'SIGTERM');
  await done;
  const after = await eventsOf(job); // from the journal on disk now
  t.ok(after.some((x) => x.type === 'job-finished'), 'the journal outlives the job');
});

t.test('a rank that dies is a failure the restart policy decides on', async (t) => {
  const job = `plug-die-${process.pid}`;
  const r = await run(process.execPath, [symbioMpirun, '--symbio-config', configFile, '--job-id', job, ...mpiCommon, '-np', '2', prog('crash'), 'die'], env);
  t.not(r.code, 0, 'the job failed');
  const evs = await eventsOf(job);
  const failure = evs.find((x) => x.type === 'failure');
  t.match(failure, { kind: 'rank-dead', message: /exited without finalizing/ }, 'rank death journaled as a failure');
  const d = evs.find((x) => x.type === 'decision' && x.by === 'restart-on-failure');
  t.match(d, { action: 'none', reason: /failed by itself on healthy hosts/ }, 'the restart policy decided, and said why it did nothing (a job failure on a healthy host)');
});

t.test('the example configuration loads, plugins outside the package importing symbio included', async (t) => {
  const r = await run(process.execPath, [symbioCli, 'plugins', 'list', '--config', join(root, 'examples', 'symbio.yaml'), '--json'], env);
  t.equal(r.code, 0, r.stderr);
  const names = (JSON.parse(r.stdout) as { name: string }[]).map((p) => p.name);
  t.ok(names.includes('loadavg') && names.includes('quiet-hours'), `example plugins loaded: ${names.join(', ')}`);
});
