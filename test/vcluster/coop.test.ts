/**
 * Cooperative migration and coordinated checkpoint/restart of whole MPI jobs
 * across VMs, end to end: real QEMU guests from the guest image, the
 * in-guest agents on their virtio-serial ports, a 4-rank halo2d (halo
 * exchanges point to point, an allreduce every step, a checksum at the end)
 * run by symbio-mpirun --vcluster, whose output must equal an uninterrupted
 * run's byte for byte.
 *
 *  job A: cooperative migration of one VM, then of both at once, then a
 *         migration whose destination QEMU is SIGKILLed mid-stream (rolled
 *         back: the job goes on at the source)
 *  job B: checkpoint; disk full on a second one (the first stays valid);
 *         a corrupted and a truncated copy refused naming the file; every
 *         QEMU killed; restart from the good checkpoint onto other slots
 *  job C: the launcher (the controller) SIGKILLed while the ranks are
 *         frozen: they resume by themselves within the limit (a new link to
 *         the agent sees them running, autoresumed), the job runs to its
 *         end, the VMs run on
 *  job D: the job run by a standalone `symbio controller` (symbio-mpirun
 *         --symbio-controller --vcluster), its output streamed back, a VM
 *         migrated with `symbio migrate --controller`
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../../src/image/build-image.js';
import { logger } from '../../src/log.js';
import { launch } from '../../src/launcher/launcher.js';
import type { Controller } from '../../src/controller/controller.js';
import type { VclusterJobVms } from '../../src/vcluster/job-vms.js';
import { JOB_MANIFEST, verifyJobCheckpoint } from '../../src/controller/vm-operations.js';
import { GuestAgentLink } from '../../src/controller/guest-agent-link.js';
import { readState } from '../../src/vcluster/state.js';
import { requireState, vclusterDown, vclusterStatus, vclusterUp } from '../../src/vcluster/vcluster.js';
import { mpiCommon, prog, run, symbioCli, symbioMpirun } from '../helpers/mpi.js';

const log = logger.child({ test: 'coop' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

const runtime = mkdtempSync(join(tmpdir(), 'symbio-coop-'));
process.env.SYMBIO_RUNTIME_DIR = runtime;
const stateDir = join(runtime, 'state');
t.teardown(() => rmSync(runtime, { recursive: true, force: true }));

const NAME = 'coop';
const image = await buildImage({ log });
t.teardown(() => vclusterDown(NAME, log));
await vclusterUp({ name: NAME, vms: 2, spares: 2, memoryMiB: 384, cpus: 1, image, log });

const expectedFor = async (steps: string) => (await run('mpirun', [...mpiCommon, '-np', '4', prog('halo2d'), steps])).stdout;

interface Started {
  controller: Controller;
  backend: VclusterJobVms;
  jobId: string;
}

/** symbio-mpirun --vcluster in this process; resolves `started` once the job's first output line arrived. */
function startJob(jobId: string, steps: string, extra: { checkpointDir?: string } = {}) {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  let ctx: Started | null = null;
  const done = launch({
    argv: ['--vcluster', NAME, '--job-id', jobId, '--resume-timeout', '60000', '-np', '4', '/opt/symbio/build/mpi/halo2d', steps],
    log,
    stateDir,
    ...(extra.checkpointDir ? { checkpointDir: extra.checkpointDir } : {}),
    vmOutput: { stdout, stderr },
    onVmStarted: (c) => (ctx = { controller: c.controller, backend: c.backend, jobId: c.jobId }),
  }).then((r) => ({ exitCode: r.exitCode, out, err }));
  let finished = false;
  void done.then(() => (finished = true), () => (finished = true));
  const started = (async (): Promise<Started> => {
    const t0 = Date.now();
    while (!(ctx && out.includes('step'))) {
      if (finished) throw new Error(`job ${jobId} ended before it got going: ${err}`);
      if (Date.now() - t0 > 120_000) throw new Error(`job ${jobId} did not print a step within 120 s; stderr: ${err}`);
      await sleep(200);
    }
    return ctx;
  })();
  return { started, done, output: () => out };
}

/** The QEMU running in a slot of the cluster (by its command line). */
function qemuInSlot(slot: string): number | null {
  const dir = requireState(NAME).dir;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(`${dir}/${slot}.qmp`)) return Number(e);
    } catch {
      // gone meanwhile
    }
  }
  return null;
}

const slotOf = (vm: string) => `slot${readState(NAME)!.vms.find((v) => v.name === vm)!.slot}`;

t.test('job A: cooperative migration of one VM, of both, and a destination killed mid-migration', async (t) => {
  const STEPS = '2500';
  const expected = expectedFor(STEPS);
  const job = startJob('coop-a', STEPS);
  const { controller } = await job.started;

  const before = slotOf('vm1');
  const one = await controller.request({ kind: 'migrate', requestedBy: 'test', params: { vms: ['vm1'] } });
  t.ok(one.ok, `vm1 moved cooperatively (${one.error ?? 'ok'})`);
  t.same(
    one.phases.map((p) => p.name),
    ['preparing-destination', 'quiescing', 'freezing', 'detaching', 'migrating', 'attaching', 'restoring-network', 'resuming'],
    'every phase of the protocol, in order, on the timeline',
  );
  t.not(slotOf('vm1'), before, `vm1 runs in another slot now (${before} -> ${slotOf('vm1')})`);
  const resuming = one.timeline.find((p) => p.name === 'resuming')?.detail as { frozenCheck?: string } | undefined;
  t.equal(resuming?.frozenCheck, 'ok', 'no rank moved a counter while frozen, across the move');
  const net = one.timeline.find((p) => p.name === 'restoring-network')?.detail as { interfaces: Record<string, { iface: string }> };
  t.ok(net.interfaces.vm1?.iface, 'the agent saw the interconnect NIC back with its address');

  const both = await controller.request({ kind: 'migrate', requestedBy: 'test', params: { vms: ['vm0', 'vm1'] } });
  t.ok(both.ok, `both VMs moved at once (${both.error ?? 'ok'})`);
  const migrated = (both.timeline.find((p) => p.name === 'migrating')?.detail as { vms: { vm: string }[] }).vms;
  t.same(migrated.map((v) => v.vm).sort(), ['vm0', 'vm1'], 'two migrations in one migrating phase');

  // The destination dies mid-stream: a bandwidth cap keeps the stream going long enough to kill it.
  const home = slotOf('vm1');
  let killed: number | null = null;
  const failed = await controller.request({
    kind: 'migrate',
    requestedBy: 'test',
    params: { vms: ['vm1'], migration: { bandwidthBps: 16 * 2 ** 20 } },
    onProgress: (rec) => {
      if (rec.phase !== 'migrating' || killed !== null) return;
      const target = (rec.timeline.find((p) => p.name === 'preparing-destination')?.detail as { targets: Record<string, string> }).targets.vm1!;
      void sleep(500).then(() => {
        killed = qemuInSlot(target);
        if (killed) process.kill(killed, 'SIGKILL');
      });
    },
  });
  t.ok(killed, 'the destination QEMU was killed during the migration');
  t.notOk(failed.ok, 'that migration failed');
  t.equal(failed.failedIn, 'migrating', 'in the migrating phase');
  t.match(failed.error, /destination/i, `and says the destination went away: ${failed.error}`);
  t.equal(slotOf('vm1'), home, 'vm1 still runs at its source');
  const rb = failed.timeline.find((p) => p.name === 'rolling-back')?.detail as { rolledBack: { atSource: string[]; problems: string[] } };
  t.same(rb.rolledBack.atSource, ['vm1'], 'the rollback left vm1 at the source');
  t.same(rb.rolledBack.problems, [], 'interconnect plugged back and ranks resumed without problems');

  const r = await job.done;
  t.equal(r.exitCode, 0, 'the job finished');
  t.equal(r.out, await expected, "its output equals an uninterrupted run's");
});

t.test('job B: checkpoint, disk full, corrupt and truncated checkpoints, restart onto other slots', async (t) => {
  const STEPS = '2000';
  const expected = expectedFor(STEPS);
  // A small file system for the checkpoints, so that a second one runs out of space.
  const ckptDir = join(runtime, 'ckpt');
  mkdirSync(ckptDir);
  // As root (as in CI) the mount must work: a failure is a failure, not a skip.
  const root = process.getuid?.() === 0;
  let canMount = false;
  if (root) {
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1g', 'symbio-test', ckptDir], { encoding: 'utf8' });
    canMount = t.equal(mounted.status, 0, `a 1 GiB tmpfs for the checkpoints: ${mounted.stderr}`);
    if (canMount) t.teardown(() => void spawnSync('umount', ['-l', ckptDir]));
  }
  const job = startJob('coop-b', STEPS, { checkpointDir: ckptDir });
  const { controller, backend } = await job.started;

  const first = await controller.request({ kind: 'checkpoint', requestedBy: 'test' });
  t.ok(first.ok, `checkpoint taken (${first.error ?? 'ok'})`);
  t.same(first.phases.map((p) => p.name), ['quiescing', 'freezing', 'stopping-vms', 'saving', 'writing-manifest', 'continuing', 'resuming'], 'checkpoint phases in order');
  const good = (first.result as { manifest: string }).manifest;
  const m = JSON.parse(readFileSync(good, 'utf8')) as { vms: { vm: string; stateFile: string; bytes: number }[]; command: string[]; topology: unknown[] };
  t.equal(m.vms.length, 2, 'the job manifest names both VMs');
  t.ok(m.command.includes('/opt/symbio/build/mpi/halo2d'), "and the job's launch line");
  const memory = 2 * 384 * 2 ** 20;
  t.ok(m.vms.reduce((a, v) => a + v.bytes, 0) < memory, 'less written than the guests have memory');

  if (canMount) {
    const used = readdirSync(ckptDir).reduce((a, d) => a + readdirSync(join(ckptDir, d)).reduce((b, f) => b + statSync(join(ckptDir, d, f)).size, 0), 0);
    t.equal(spawnSync('mount', ['-o', `remount,size=${used + 64 * 2 ** 20}`, ckptDir]).status, 0, 'checkpoint file system shrunk to leave 64 MiB');
    const full = await controller.request({ kind: 'checkpoint', requestedBy: 'test' });
    t.notOk(full.ok, 'a checkpoint on a full disk fails');
    t.match(full.error, /ENOSPC|space/i, `saying why: ${full.error}`);
    t.same(readdirSync(ckptDir).filter((d) => d !== good.split('/').at(-2)), [], 'and leaves nothing of itself behind');
    await t.resolves(verifyJobCheckpoint(good), 'the previous checkpoint is still whole');
  } else if (!root) {
    t.pass('disk full not tested: it needs root to mount a small tmpfs', { skip: 'not root (CI runs as root, where this runs)' });
  }

  // Copies of the good checkpoint, one corrupted, one truncated, outside the small file system.
  const copies = join(runtime, 'copies');
  const bad = (name: string, damage: (file: string) => void): string => {
    const dir = join(copies, name);
    cpSync(join(good, '..'), dir, { recursive: true });
    damage(join(dir, m.vms[1]!.stateFile));
    return join(dir, JOB_MANIFEST);
  };
  const corrupt = bad('corrupt', (f) => {
    const fd = openSync(f, 'r+');
    writeSync(fd, Buffer.from([0x5a]), 0, 1, Math.floor(statSync(f).size / 2));
    closeSync(fd);
  });
  const truncated = bad('truncated', (f) => truncateSync(f, Math.floor(statSync(f).size / 3)));
  for (const [what, path] of [['corrupted', corrupt], ['truncated', truncated]] as const) {
    const r = await controller.request({ kind: 'restart', requestedBy: 'test', params: { manifest: path } });
    t.notOk(r.ok, `restart from a ${what} checkpoint is refused`);
    t.equal(r.failedIn, 'verifying', 'before anything was touched');
    t.match(r.error, new RegExp(`${m.vms[1]!.stateFile}`), `naming the file: ${r.error}`);
  }
  t.ok((await vclusterStatus(NAME, log)).vms.every((v) => v.alive), 'the VMs were not touched by the refused restarts');

  // Every QEMU dies; the job restarts from the good checkpoint on other slots.
  // The QEMUs die once the restart is under way: this job has no policy that
  // acts on failures, so a VM found dead outside an operation (the failure
  // detector polls every 250 ms; during an operation it is quiet) ends the job
  // as lost, and a kill before the request raced that.
  const old = { vm0: slotOf('vm0'), vm1: slotOf('vm1') };
  const free = backend.freePlaces().filter((p) => !Object.values(old).includes(p));
  t.equal(free.length, 2, `two slots the VMs did not run in: ${free.join(', ')}`);
  let killing: Promise<void> | null = null;
  const restarted = await controller.request({
    kind: 'restart',
    requestedBy: 'test',
    params: { manifest: good, places: { vm0: free[0]!, vm1: free[1]! } },
    onProgress: () => void (killing ??= backend.kill(['vm0', 'vm1'])),
  });
  t.ok(killing, 'every QEMU was killed while the restart ran');
  await killing;
  t.ok(restarted.ok, `restarted (${restarted.error ?? 'ok'})`);
  t.same({ vm0: slotOf('vm0'), vm1: slotOf('vm1') }, { vm0: free[0], vm1: free[1] }, 'on the slots asked for');

  const r = await job.done;
  t.equal(r.exitCode, 0, 'the job finished');
  t.equal(r.out, await expected, "its output equals an uninterrupted run's (each byte printed once)");
});

t.test('job C: the controller killed while the ranks are frozen', async (t) => {
  const LIMIT_MS = 4000;
  const expected = expectedFor('2000');
  const child = spawn(process.execPath, [symbioMpirun, '--vcluster', NAME, '--job-id', 'coop-c', '--resume-timeout', String(LIMIT_MS), '-np', '4', '/opt/symbio/build/mpi/halo2d', '2000'], {
    env: { ...process.env, SYMBIO_STATE_DIR: stateDir, SYMBIO_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const gone = new Promise((r) => child.once('exit', r));
  t.teardown(() => void child.kill('SIGKILL'));
  for (let i = 0; i < 600 && !out.includes('step'); i++) await sleep(200);
  t.match(out, /step/, 'the job runs');
  const frozen = spawnSync(process.execPath, [symbioCli, 'quiesce', '--job', 'coop-c', '--json'], { encoding: 'utf8', env: { ...process.env, SYMBIO_LOG_LEVEL: 'error' }, timeout: 60_000 });
  t.equal(frozen.status, 0, `ranks frozen by an operator: ${frozen.stderr}`);
  child.kill('SIGKILL');
  await gone;
  const t0 = Date.now();
  // Past the limit, a new link to vm0's agent finds the job again and its ranks running, resumed by themselves.
  await sleep(LIMIT_MS);
  const probe = new GuestAgentLink('vm0', {
    socketPath: () => join(requireState(NAME).dir, `${slotOf('vm0')}.agent`),
    job: { job: 'coop-c', slots: 4, worldSize: 4, resumeTimeoutMs: LIMIT_MS, stallMs: 2000 },
    log,
  });
  // The agent kept the job's output and its exit for a controller to come back: collect them.
  const tail = new Map<number, Buffer>();
  probe.on('output', (o) => void (o.stream === 'stdout' && tail.set(o.offset, o.data)));
  const exited = new Promise<{ code: number }>((resolve) => probe.once('exit', resolve));
  try {
    const opened = await probe.connect(30_000);
    t.ok(opened.reattached, "vm0's agent still serves the job");
    type Rank = Awaited<ReturnType<typeof probe.report>>['snapshot']['ranks'][number];
    let ranks: Rank[] = [];
    const live = (r: Rank) => r.state !== 'empty' && r.state !== 'finalized' && r.state !== 'detached';
    // the ranks resume by themselves once the limit has passed on their clocks; give them 30 s more to be seen so
    for (let i = 0; i < 120; i++) {
      ranks = (await probe.report(true)).snapshot.ranks.filter(live);
      if (ranks.length > 0 && ranks.every((r) => r.state === 'running' && r.autoresumed)) break;
      await sleep(250);
    }
    t.ok(ranks.length > 0 && ranks.every((r) => r.state === 'running' && r.autoresumed), `its ranks resumed by themselves: ${JSON.stringify(ranks.map((r) => [r.worldRank, r.state, r.autoresumeReason]))}`);
    // 2000 steps: about a minute on a quiet machine; several on 2 cores shared with other VM tests
    const end = opened.run?.exit ?? (await Promise.race([exited, sleep(480_000, null, { ref: false })]));
    t.ok(end, `the job ran to its end without its controller (${Math.round((Date.now() - t0) / 1000)} s after the kill)`);
    t.equal(end?.code, 0, "mpirun's exit status in vm0 is 0");
    // Bytes the killed launcher read but had not printed are gone with it; what the agent kept must end the way an uninterrupted run ends.
    const kept = Buffer.concat([...tail.entries()].sort((x, y) => x[0] - y[0]).map(([, d]) => d)).toString('utf8');
    const want = await expected;
    const lastLines = want.trimEnd().split('\n').slice(-2).join('\n');
    t.ok(kept.length > 0 && kept.trimEnd().endsWith(lastLines), `the job's output ends as an uninterrupted run's does (${JSON.stringify(lastLines)}); kept tail: ${JSON.stringify(kept.slice(-200))}`);
  } finally {
    probe.close();
  }
  const st = await vclusterStatus(NAME, log);
  t.ok(st.vms.every((v) => v.alive && v.state === 'running'), 'the VMs kept running');
  const console0 = readFileSync(join(requireState(NAME).dir, `${slotOf('vm0')}.console`), 'utf8');
  t.match(console0, /controller disconnected/, "vm0's agent saw the controller go");
});

t.test('job D: a VM job under a standalone controller, migrated through it', async (t) => {
  const STEPS = '1500';
  const expected = expectedFor(STEPS);
  const dir = join(runtime, 'standalone');
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'controller.sock');
  const config = join(dir, 'symbio.yaml');
  writeFileSync(config, `controller:\n  socket: ${socket}\n  stateDir: ${join(dir, 'state')}\n`);
  const env = { ...process.env, SYMBIO_LOG_LEVEL: 'warn' };
  const ctl = spawn(process.execPath, [symbioCli, 'controller', '--config', config], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let ctlErr = '';
  ctl.stderr.setEncoding('utf8').on('data', (d: string) => (ctlErr += d));
  const ctlGone = new Promise((r) => ctl.once('exit', r));
  t.teardown(() => void ctl.kill('SIGKILL'));
  for (let i = 0; i < 300 && !existsSync(socket); i++) await sleep(100);
  t.ok(existsSync(socket), 'the controller listens');

  const child = spawn(process.execPath, [symbioMpirun, '--symbio-controller', socket, '--vcluster', NAME, '--job-id', 'coop-d', '-np', '4', '/opt/symbio/build/mpi/halo2d', STEPS], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  t.teardown(() => void child.kill('SIGKILL'));
  for (let i = 0; i < 600 && !out.includes('step'); i++) await sleep(200);
  t.match(out, /step/, `the job runs, its output streamed back to the launcher: ${err.slice(-500)}`);

  const before = slotOf('vm1');
  // not spawnSync: this process must go on reading the controller's and the launcher's pipes meanwhile
  const mig = await run(process.execPath, [symbioCli, 'migrate', '--controller', socket, '--job', 'coop-d', '--vm', 'vm1', '--json'], { SYMBIO_LOG_LEVEL: 'warn' });
  t.equal(mig.code, 0, `migrated through the standalone controller: ${mig.stderr.slice(-500)}\ncontroller: ${ctlErr.slice(-2000)}`);
  t.not(slotOf('vm1'), before, `vm1 moved (${before} -> ${slotOf('vm1')})`);
  t.equal(await exited, 0, `the job's exit code came back: ${err.slice(-500)}`);
  t.equal(out, await expected, 'output identical to an uninterrupted run');
  ctl.kill('SIGTERM');
  await ctlGone;
  t.notMatch(ctlErr, /"level":50/, 'the controller logged no error');
});
