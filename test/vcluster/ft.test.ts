/**
 * Reactive and proactive fault tolerance end to end, as a user runs it:
 * symbio-mpirun --vcluster with the built-in policies configured (the
 * vcluster-health monitor, migrate-on-health, periodic-checkpoint,
 * restart-on-failure), failures injected from outside with the CLI
 * (`symbio vcluster health`, `symbio vcluster kill`), a 4-rank halo2d
 * across 2 real VMs whose output must equal an uninterrupted run's.
 *
 * One job lives through, in order:
 *  1. periodic checkpoints at the Young/Daly interval (one must complete);
 *  2. a critical health event on vm1's slot: the policy migrates vm1
 *     cooperatively to a spare, then drains the slot;
 *  3. a cooperative migration towards a slot whose health turns critical
 *     mid-stream: retargeted to another spare, the job never runs there;
 *  4. vm0's QEMU killed while a checkpoint is being written: the checkpoint
 *     fails cleanly, the failure is detected, and the job restarts from the
 *     previous checkpoint onto a spare (the dead slot is marked down);
 * and finishes with the right answer and exit code 0. The report of its
 * journal is written at the end and shows all of it.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../../src/image/build-image.js';
import { logger } from '../../src/log.js';
import { readEvents, type JournalEvent } from '../../src/controller/journal.js';
import { readState } from '../../src/vcluster/state.js';
import { writeJobReport } from '../../src/report/write-report.js';
import { setHealth } from '../../src/vcluster/health.js';
import { vclusterDown, vclusterUp } from '../../src/vcluster/vcluster.js';
import { mpiCommon, prog, run, start, symbioCli, symbioMpirun } from '../helpers/mpi.js';

const log = logger.child({ test: 'ft' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

const runtime = mkdtempSync(join(tmpdir(), 'symbio-ft-'));
const stateDir = join(runtime, 'state');
const env = { SYMBIO_RUNTIME_DIR: runtime, SYMBIO_STATE_DIR: stateDir };
process.env.SYMBIO_RUNTIME_DIR = runtime;
t.teardown(() => rmSync(runtime, { recursive: true, force: true }));

const NAME = 'ft';
const image = await buildImage({ log });
t.teardown(() => vclusterDown(NAME, log));
await vclusterUp({ name: NAME, vms: 2, spares: 3, memoryMiB: 384, cpus: 1, image, log });

const config = join(runtime, 'symbio.yaml');
writeFileSync(
  config,
  `plugins:
  - use: symbio/plugins/monitors/vcluster-health
    intervalMs: 1000
    options: { cluster: ${NAME} }
  - use: symbio/plugins/policies/migrate-on-health
  - use: symbio/plugins/policies/periodic-checkpoint
    options: { mtbfMs: 120000, initialCheckpointCostMs: 3000, minIntervalMs: 15000, recheckMs: 2000 }
  - use: symbio/plugins/policies/restart-on-failure
`,
);

const cli = (...args: string[]) => run(process.execPath, [symbioCli, ...args], env);
const slotOf = (vm: string) => `slot${readState(NAME)!.vms.find((v) => v.name === vm)!.slot}`;

/** What went on, for a failure message: the launcher's last log lines and the journal's last events. */
let launcherStderr = (): string => '';
const story = (job: string): string =>
  `\n--- journal (last 15) ---\n${readEvents(stateDir, job).slice(-15).map((e) => JSON.stringify(e).slice(0, 400)).join('\n')}\n--- launcher stderr (last 3000 chars) ---\n${launcherStderr().slice(-3000)}`;

/** Wait for a journal event of the job matching `pred` (after `since`). */
async function waitEvent(job: string, what: string, pred: (e: JournalEvent) => boolean, timeoutMs: number, since = 0): Promise<JournalEvent> {
  const t0 = Date.now();
  for (;;) {
    const e = readEvents(stateDir, job).find((x) => x.at >= since && pred(x));
    if (e) return e;
    if (Date.now() - t0 > timeoutMs) throw new Error(`job ${job}: no ${what} within ${timeoutMs} ms${story(job)}`);
    await sleep(100);
  }
}

const opDone = (kind: string) => (e: JournalEvent) => e.type === 'operation' && e.kind === kind;

t.test('a job survives a failing host (migrated away), a bad destination (retargeted) and a dead host during a checkpoint (restarted)', async (t) => {
  // long enough for every step below with margin: ~25-40 ms per step here
  const STEPS = '8000';
  const expected = run('mpirun', [...mpiCommon, '-np', '4', prog('halo2d'), STEPS]);
  const job = 'ft-a';
  const launcher = start(process.execPath, [symbioMpirun, '--symbio-config', config, '--vcluster', NAME, '--job-id', job, '-np', '4', '/opt/symbio/build/mpi/halo2d', STEPS], env);
  let ended = false;
  void launcher.done.then(() => (ended = true));
  let err = '';
  launcher.child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  launcherStderr = () => err;
  const alive = () => t.notOk(ended, 'the job is still running');

  // 1. periodic checkpoints
  const ckpt = await waitEvent(job, 'completed checkpoint', (e) => opDone('checkpoint')(e) && e.ok === true, 150_000);
  t.pass(`a periodic checkpoint completed (${Math.round(Number(ckpt.durationMs))} ms)`);
  const decided = readEvents(stateDir, job).find((e) => e.type === 'decision' && e.action === 'checkpoint');
  t.match(decided, { by: 'periodic-checkpoint' }, 'asked for by the periodic-checkpoint policy');

  // 2. proactive: vm1's slot is failing
  const sick = slotOf('vm1');
  const t2 = Date.now();
  const h = await cli('vcluster', 'health', '--name', NAME, '--slot', sick, '--severity', 'critical', '--lead-time', '120000', '--message', 'uncorrectable ECC errors predicted');
  t.equal(h.code, 0, h.stderr);
  const mig = await waitEvent(job, 'migration off the failing slot', opDone('migrate'), 120_000, t2);
  t.equal(mig.ok, true, `vm1 migrated off ${sick} (${String(mig.error ?? 'ok')})`);
  t.not(slotOf('vm1'), sick, `vm1 now runs in ${slotOf('vm1')}`);
  t.match(readEvents(stateDir, job).find((e) => e.type === 'decision' && e.action === 'migrate' && e.at >= t2), { by: 'migrate-on-health', vms: ['vm1'] });
  await waitEvent(job, `${sick} drained`, (e) => e.type === 'host-state' && e.host === sick && e.state === 'drained', 30_000, t2);
  t.pass(`${sick} is drained`);
  alive();

  // 3. retarget: a cooperative migration heads for a slot that turns bad mid-stream
  const free = readState(NAME)!;
  const used = new Set(free.vms.map((v) => `slot${v.slot}`));
  const spares = Array.from({ length: free.slots }, (_, i) => `slot${i}`).filter((s) => !used.has(s) && s !== sick);
  const bad = spares[0]!;
  const t3 = Date.now();
  // capped so that the stream lasts several seconds; the health condition is set
  // from here, at once, as the migrating phase begins (the monitor sees it within its 1 s interval)
  const moving = cli('migrate', '--job', job, '--vm', 'vm1', '--to', bad, '--bandwidth', '24', '--json');
  await waitEvent(job, 'migrating phase', (e) => e.type === 'operation-phase' && e.phase === 'migrating', 60_000, t3);
  setHealth(NAME, bad, { severity: 'critical', component: 'fan', message: 'fan failure', leadTimeMs: 60_000 });
  const moved = await moving;
  t.equal(moved.code, 0, `the migration ended well: ${moved.stderr.slice(-500)}`);
  const rec = JSON.parse(moved.stdout) as { ok: boolean; timeline: { name: string; detail?: { retargeted?: { from: string; to: string; bytesSentBefore: number }[] } }[]; result: { to: Record<string, string> } };
  const retargeted = rec.timeline.find((p) => p.name === 'migrating')?.detail?.retargeted;
  t.match(retargeted, [{ vm: 'vm1', from: bad }], `the move to ${bad} was cancelled and sent elsewhere`);
  t.not(rec.result.to.vm1, bad, `vm1 went to ${rec.result.to.vm1}, not ${bad}`);
  t.equal(slotOf('vm1'), rec.result.to.vm1);
  t.ok(readEvents(stateDir, job).some((e) => e.type === 'retarget' && e.from === bad && e.at >= t3), 'the retarget is journaled');
  alive();

  // 4. reactive: vm0's host dies while a checkpoint is being saved
  const t4 = Date.now();
  const dead = slotOf('vm0');
  // as soon as a checkpoint starts (its quiesce-freeze-save lasts about a second here), from this process: the
  // CLI's `vcluster kill` does the same a node start later, and could miss it
  const asked = await waitEvent(job, 'a checkpoint starting', (e) => e.type === 'operation-requested' && e.kind === 'checkpoint', 120_000, t4);
  const pid = readState(NAME)!.vms.find((v) => v.name === 'vm0')!.pid;
  process.kill(pid, 'SIGKILL');
  const failedCkpt = await waitEvent(job, 'the interrupted checkpoint', (e) => e.type === 'operation' && e.op === asked.op, 60_000, t4);
  t.equal(failedCkpt.ok, false, `the checkpoint under way failed cleanly: ${String(failedCkpt.error)}`);
  const failure = await waitEvent(job, 'failure detection', (e) => e.type === 'failure' && e.kind === 'qemu-gone', 30_000, t4);
  t.match(failure, { vm: 'vm0', host: dead }, 'the dead QEMU was detected');
  const restart = await waitEvent(job, 'restart', opDone('restart'), 120_000, t4);
  t.equal(restart.ok, true, `restarted from the last good checkpoint (${String(restart.error ?? 'ok')})`);
  t.not(slotOf('vm0'), dead, `vm0 runs in ${slotOf('vm0')} now`);
  t.ok(readEvents(stateDir, job).some((e) => e.type === 'host-state' && e.host === dead && e.state === 'down'), `${dead} is marked down`);
  const restarts = readEvents(stateDir, job).filter((e) => e.type === 'decision' && e.action === 'restart');
  t.equal(restarts.length, 1, 'one restart for one fault');

  const r = await launcher.done;
  const want = await expected;
  t.equal(r.code, 0, `the job's own exit code: ${r.stderr.slice(-800)}`);
  t.equal(r.stdout, want.stdout, 'output identical to an uninterrupted run');
  t.match(r.stdout, /checksum=[0-9a-f]{16}/);

  // the report of this job's life (its rendering in a browser is tested in test/report)
  const rep = writeJobReport({ stateDir, job });
  const html = readFileSync(rep.path, 'utf8');
  for (const kind of ['checkpoint', 'migrate', 'restart']) t.match(html, new RegExp(`class="op-bar" data-kind="${kind}"`), `the report shows the ${kind}`);
  t.match(html, /class="migration-chart"/, 'and migration progress');
  t.match(html, /class="failure-marker" data-kind="qemu-gone"/, 'and the failure');
  t.match(html, /class="health-marker" data-severity="critical"/, 'and the health events');
  t.match(rep.summary, { migrations: 2, restarts: 1, exitCode: 0 });
  t.ok(rep.summary.checkpoints >= 2 && rep.summary.downtimeMs > rep.summary.pausedMs, `summary: ${JSON.stringify(rep.summary)}`);
});
