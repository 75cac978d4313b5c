/**
 * Benchmark of cooperative migration against raw live migration, and of a
 * coordinated checkpoint and restart, of a VM running part of an MPI job:
 *   npm run bench -- coop [--quick] [--reps 5] [--checkpoint-reps 3]
 *                         [--np 2] [--memory 384] [--mode postcopy|precopy|hybrid]
 *                         [--work 20000]
 * JSON on stdout, progress on stderr. --quick: 2 migration pairs, one
 * checkpoint + restart (~3 min once the image is built and cached).
 *
 * One virtual cluster (2 VMs of `--memory` MiB, 1 vCPU each, TCG, one spare
 * slot) runs one job for the whole bench: bench/mpi/iter-stamp under
 * symbio-mpirun --vcluster (launch(), as a user would run it), --np ranks
 * spread over both VMs (rank 0 in vm0). On that same job, in the same run:
 *   1. a quiet stretch: the noise floor of the measurements below;
 *   2. `reps` pairs of migrations of vm1 to the spare slot and back, one raw,
 *      one cooperative, in alternating order (raw first in even pairs):
 *      raw = vclusterMigrate (QEMU live migration, no quiesce, the
 *      interconnect NIC stays plugged: TCP between the ranks just stalls);
 *      cooperative = the job controller's `migrate` operation (quiesce,
 *      freeze, detach the interconnect, migrate, attach, restore the
 *      interface in the guest, resume);
 *   3. `checkpointReps` rounds of: a coordinated checkpoint of both VMs, the
 *      job running on for a while, both QEMUs killed, a restart from that
 *      checkpoint;
 *   4. the job is told to stop (a file in vm0) and must end with exit code 0.
 *
 * The application's pause is measured on the host's clock: iter-stamp's rank
 * 0 (in vm0, which never migrates) writes a heartbeat line every 10 ms of
 * its clock; the line travels mpirun -> vm0's agent -> virtio-serial -> the
 * launcher's link, and the bench stamps each line's arrival. Every iteration
 * ends in an allreduce over all ranks, so rank 0 cannot run ahead of a rank
 * that is stopped, frozen or stalled: the longest silence between arrivals
 * from the request to the job running again is the pause the application
 * saw. Rank 0's own largest iteration gap (its `gap=` field, vm0's clock)
 * is reported too: vm0 never stops during a migration of vm1, so there it
 * must agree; during a checkpoint both VMs stop and their clocks with them,
 * so there only the host clock counts.
 */
import { forEachOption, progress } from './options.js';
import { median, round } from '../src/util/stats.js';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../src/image/build-image.js';
import { launch } from '../src/launcher/launcher.js';
import type { Controller } from '../src/controller/controller.js';
import type { GuestAgentLink, GuestOutput } from '../src/controller/guest-agent-link.js';
import type { OperationSummary } from '../src/controller/operation.js';
import type { MigrationMode } from '../src/hypervisor/qemu/migration.js';
import type { VclusterJobVms } from '../src/vcluster/job-vms.js';
import { guestExec, requireState, vclusterDown, vclusterMigrate, vclusterUp } from '../src/vcluster/vcluster.js';
import { packageRoot } from '../src/util/package-root.js';
import { runProcess } from '../src/util/run-process.js';
import { logger } from '../src/log.js';

const log = logger.child({ component: 'bench-coop' });
log.level = process.env.SYMBIO_BENCH_LOG ?? 'warn';

const MiB = 2 ** 20;
const PROGRAM = '/opt/symbio/build/mpi/iter-stamp';
const STOP_FILE = '/tmp/iter-stamp.stop';
const BEAT_MS = 10;
/** Quiet time before the bench measures anything, and between operations. */
const SETTLE_MS = 1500;
/** After the job runs again: how much of it still belongs to the operation's window. */
const TAIL_MS = 500;
const BASELINE_MS = 4000;
/** After a checkpoint: how long the job runs on before its QEMUs are killed (work the restart loses). */
const RUN_ON_MS = 2000;
const MODES: readonly MigrationMode[] = ['precopy', 'postcopy', 'hybrid'];

export interface CoopBenchPlan {
  /** pairs of migrations (one raw, one cooperative) */
  reps: number;
  /** checkpoint + kill + restart rounds */
  checkpointReps: number;
  np: number;
  memoryMiB: number;
  mode: MigrationMode;
  /** iter-stamp's arithmetic per iteration */
  work: number;
  quick: boolean;
  /** no new round starts after this many seconds (image build and cluster boot not counted) */
  budgetSeconds: number;
}

const usage = 'usage: coop [--quick] [--reps N] [--checkpoint-reps N] [--np N] [--memory MiB] [--mode precopy|postcopy|hybrid] [--work N]';

export function parseCoopArgs(args: readonly string[]): CoopBenchPlan {
  const plan: CoopBenchPlan = { reps: 5, checkpointReps: 3, np: 2, memoryMiB: 384, mode: 'postcopy', work: 20000, quick: false, budgetSeconds: 420 };
  let repsGiven = false;
  let ckGiven = false;
  forEachOption(args, usage, ({ flag, value, int }) => {
    if (flag === '--quick') plan.quick = true;
    else if (flag === '--reps') {
      plan.reps = int(value(), 1);
      repsGiven = true;
    } else if (flag === '--checkpoint-reps') {
      plan.checkpointReps = int(value(), 0);
      ckGiven = true;
    } else if (flag === '--np') plan.np = int(value(), 2);
    else if (flag === '--memory') plan.memoryMiB = int(value(), 256);
    else if (flag === '--work') plan.work = int(value(), 0);
    else if (flag === '--mode') {
      const v = value();
      if (!MODES.includes(v as MigrationMode)) throw new Error(`--mode: one of ${MODES.join(', ')}, not '${v}'; ${usage}`);
      plan.mode = v as MigrationMode;
    } else return false;
    return true;
  });
  if (plan.quick) {
    if (!repsGiven) plan.reps = 2;
    if (!ckGiven) plan.checkpointReps = 1;
    plan.budgetSeconds = 150;
  }
  return plan;
}

const say = progress('coop');


/** The median of each numeric field over the runs that have it. */
function medians<T extends Record<string, unknown>>(runs: readonly T[], keys: readonly string[]): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const k of keys) {
    const m = median(runs.map((r) => r[k]).filter((x): x is number => typeof x === 'number'));
    out[k] = m === null ? null : round(m);
  }
  return out;
}

/** A heartbeat line of rank 0, as the host received it. */
interface Beat {
  /** host clock (performance.now) of its arrival */
  readonly at: number;
  readonly i: number;
  /** rank 0's clock, ms since its start */
  readonly t: number;
  /** rank 0's largest iteration gap since the previous beat (its clock) */
  readonly gap: number;
}

/**
 * The job's stdout as vm0's agent link delivers it: every chunk's arrival
 * (replays after a restart included), and the beat lines of the output
 * printed once (the same byte offsets the launcher uses to print each byte
 * once), stamped with the arrival of the chunk that completed them.
 */
class BeatWatch {
  readonly beats: Beat[] = [];
  /** every stdout chunk's arrival, replayed ones too */
  readonly chunks: number[] = [];
  readonly other: string[] = [];
  done: string | null = null;
  stderr = '';
  #printed = 0;
  #partial = '';

  onOutput = (c: GuestOutput): void => {
    const now = performance.now();
    if (c.stream === 'stderr') {
      if (this.stderr.length < 20_000) this.stderr += c.data.toString('utf8');
      return;
    }
    this.chunks.push(now);
    const skip = this.#printed - c.offset;
    if (skip >= c.data.length) return;
    const data = skip > 0 ? c.data.subarray(skip) : c.data;
    this.#printed = c.offset + c.data.length;
    const parts = (this.#partial + data.toString('utf8')).split('\n');
    this.#partial = parts.pop()!;
    for (const line of parts) {
      const m = /^beat i=(\d+) t=([\d.]+) gap=([\d.]+)$/.exec(line);
      if (m) this.beats.push({ at: now, i: Number(m[1]), t: Number(m[2]), gap: Number(m[3]) });
      else if (line.startsWith('iter-stamp done ')) this.done = line;
      else if (this.other.length < 50) this.other.push(line);
    }
  };

  get lastIter(): number {
    return this.beats.at(-1)?.i ?? 0;
  }

  /** The longest silence on the host's clock in [from, to] (edges: the last beat before `from`, `to`). */
  longestGap(from: number, to: number): { ms: number; startedAt: number } {
    let last = from;
    for (const b of this.beats) if (b.at <= from) last = b.at;
    let best = { ms: 0, startedAt: from };
    for (const b of this.beats) {
      if (b.at <= from) continue;
      if (b.at > to) break;
      if (b.at - last > best.ms) best = { ms: b.at - last, startedAt: last };
      last = b.at;
    }
    if (to - last > best.ms) best = { ms: to - last, startedAt: last };
    return best;
  }

  /** Rank 0's own largest iteration gap over the beats that arrived in (from, to]. */
  guestGap(from: number, to: number): number | null {
    const xs = this.beats.filter((b) => b.at > from && b.at <= to).map((b) => b.gap);
    return xs.length ? Math.max(...xs) : null;
  }

  /** Beats in [from, to]: how many, and host ms per iteration over them. */
  rate(from: number, to: number): { beats: number; msPerIter: number | null; beatIntervalMs: number | null } {
    const bs = this.beats.filter((b) => b.at >= from && b.at <= to);
    if (bs.length < 2) return { beats: bs.length, msPerIter: null, beatIntervalMs: null };
    const a = bs[0]!;
    const z = bs.at(-1)!;
    const intervals = bs.slice(1).map((b, k) => b.at - bs[k]!.at);
    return { beats: bs.length, msPerIter: (z.at - a.at) / Math.max(1, z.i - a.i), beatIntervalMs: median(intervals) };
  }

  /**
   * Application time lost to an operation: between the last beat before
   * `from` and the first after `to`, the wall time minus what the
   * iterations done in it take at the baseline rate.
   */
  timeLost(from: number, to: number, msPerIter: number | null): number | null {
    if (msPerIter === null) return null;
    const before = [...this.beats].reverse().find((b) => b.at <= from);
    const after = this.beats.find((b) => b.at >= to);
    if (!before || !after) return null;
    return after.at - before.at - (after.i - before.i) * msPerIter;
  }

  /** The first beat that arrives after `t`, on the host clock. */
  async firstBeatAfter(t: number, timeoutMs: number, ended: () => boolean): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const b = this.beats.find((x) => x.at > t);
      if (b) return b.at;
      if (ended()) throw new Error(`the job ended (${this.done ?? 'no done line'}); its stderr: ${this.stderr.slice(-500)}`);
      if (performance.now() > deadline) throw new Error(`no heartbeat from the job within ${timeoutMs} ms; its stderr: ${this.stderr.slice(-500)}`);
      await sleep(10);
    }
  }
}

interface JobHandle {
  controller: Controller;
  backend: VclusterJobVms;
  links: ReadonlyMap<string, GuestAgentLink>;
  jobId: string;
}

type Run = Record<string, unknown>;

const phaseMs = (s: OperationSummary) => Object.fromEntries(s.phases.map((p) => [p.name, round(p.ms)]));
const detail = (s: OperationSummary, phase: string) => s.timeline.find((p) => p.name === phase)?.detail as Record<string, unknown> | undefined;

/** Size of every file under `dir` (a checkpoint: state files and manifests). */
function bytesUnder(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? bytesUnder(p) : statSync(p).size;
  }
  return n;
}

export async function benchCoop(args: readonly string[] = []): Promise<unknown> {
  const plan = parseCoopArgs(args);
  const t0 = performance.now();
  const loadAtStart = loadavg().map((x) => round(x, 2));
  if (!existsSync(join(packageRoot(), 'build', 'mpi', 'iter-stamp'))) {
    throw new Error('build/mpi/iter-stamp is missing: run `npm run build:mpi` (the guest image takes the MPI programs from build/mpi/)');
  }
  say('guest image (cached after the first build)');
  const image = await buildImage({ log, onProgress: (s) => say(`  ${s}`) });
  const imageSeconds = (performance.now() - t0) / 1000;

  // a private runtime directory: this cluster, the job's socket, its journal and checkpoints
  const runtime = mkdtempSync(join(tmpdir(), 'symbio-bench-coop-'));
  const previousRuntime = process.env.SYMBIO_RUNTIME_DIR;
  process.env.SYMBIO_RUNTIME_DIR = runtime;
  const NAME = 'bench-coop';
  const checkpointDir = join(runtime, 'checkpoints');
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) return;
    signalled = true;
    process.stderr.write(`bench coop: ${sig}: stopping the cluster, removing ${runtime}\n`);
    void vclusterDown(NAME, log)
      .catch(() => undefined)
      .finally(() => {
        rmSync(runtime, { recursive: true, force: true });
        process.exit(sig === 'SIGINT' ? 130 : 143);
      });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const watch = new BeatWatch();
  const notes: string[] = [];
  const errors: string[] = [];
  let jobDone: Promise<{ exitCode: number }> | null = null;
  let jobEnded = false;
  let jobExit: number | null = null;
  let clusterSeconds = 0;
  let qemuVersion = 'unknown';
  let accel = 'unknown';
  let baseline: Record<string, number | null> = {};
  const raw: Run[] = [];
  const coop: Run[] = [];
  const pairs: { raw: Run; coop: Run }[] = [];
  const ckpts: Run[] = [];
  const restarts: Run[] = [];
  let measureStart = 0;
  try {
    const q = await runProcess('qemu-system-x86_64', ['--version']);
    qemuVersion = /version ([\d.]+)/.exec(q.stdout)?.[1] ?? 'unknown';
    say(`cluster: 2 VMs of ${plan.memoryMiB} MiB, 1 vCPU each, 1 spare slot`);
    const c0 = performance.now();
    await vclusterUp({ name: NAME, vms: 2, spares: 1, memoryMiB: plan.memoryMiB, cpus: 1, image, log, onProgress: (s) => say(`  ${s}`) });
    clusterSeconds = (performance.now() - c0) / 1000;
    accel = requireState(NAME).accel;

    // the job: symbio-mpirun --vcluster, in this process
    const out = new PassThrough().resume();
    const err = new PassThrough().resume();
    let handle: JobHandle | null = null;
    jobDone = launch({
      argv: [
        '--vcluster', NAME, '--job-id', 'bench-coop', '--resume-timeout', '60000', '-np', String(plan.np),
        PROGRAM, '--beat-ms', String(BEAT_MS), '--work', String(plan.work), '--stop-file', STOP_FILE, '--seconds', '3600',
      ],
      log,
      stateDir: join(runtime, 'state'),
      checkpointDir,
      checkpointKeep: 1,
      vmOutput: { stdout: out, stderr: err },
      onVmStarted: (ctx) => {
        handle = { controller: ctx.controller, backend: ctx.backend, links: ctx.links, jobId: ctx.jobId };
        ctx.links.get('vm0')!.on('output', watch.onOutput);
      },
    }).then((r) => {
      jobEnded = true;
      jobExit = r.exitCode;
      return r;
    });
    jobDone.catch(() => {
      jobEnded = true;
    });
    say(`job: iter-stamp, ${plan.np} ranks over vm0 and vm1 (rank 0 in vm0), a heartbeat every ${BEAT_MS} ms`);
    const s0 = performance.now();
    while (!handle || watch.beats.length < 5) {
      if (jobEnded) throw new Error(`the job ended before it ran: ${watch.stderr.slice(-800) || (await jobDone.catch((e: Error) => e.message))}`);
      if (performance.now() - s0 > 180_000) throw new Error(`the job printed no heartbeat within 180 s; stderr: ${watch.stderr.slice(-800)}`);
      await sleep(100);
    }
    const job = handle as JobHandle;
    await sleep(SETTLE_MS);
    measureStart = performance.now();
    const ended = () => jobEnded;

    const b0 = performance.now();
    await sleep(BASELINE_MS);
    const b1 = performance.now();
    const rate = watch.rate(b0, b1);
    const msPerIter = rate.msPerIter;
    baseline = {
      window_ms: BASELINE_MS,
      beats: rate.beats,
      beat_interval_ms: rate.beatIntervalMs === null ? null : round(rate.beatIntervalMs),
      ms_per_iteration: msPerIter === null ? null : round(msPerIter, 3),
      host_max_gap_ms: round(watch.longestGap(b0, b1).ms),
      guest_max_gap_ms: watch.guestGap(b0, b1),
    };
    say(`baseline: ${round(msPerIter ?? NaN, 2)} ms per iteration, a beat every ${baseline.beat_interval_ms} ms, longest silence ${baseline.host_max_gap_ms} ms`);

    /** Both links up (a raw migration leaves vm1's to reconnect by itself). */
    const linksUp = async () => {
      const deadline = performance.now() + 30_000;
      while (![...job.links.values()].every((l) => l.connected)) {
        if (performance.now() > deadline) throw new Error(`the agent link of ${[...job.links.values()].filter((l) => !l.connected).map((l) => l.node).join(', ')} did not come back within 30 s`);
        await sleep(50);
      }
    };

    /** What the application saw from `from` (the request) until it ran again after `to` (the return). */
    const pauseOf = async (from: number, to: number) => {
      const resumed = await watch.firstBeatAfter(to, 60_000, ended);
      const end = Math.max(resumed, to) + TAIL_MS;
      await sleep(Math.max(0, end - performance.now()) + 20);
      const gap = watch.longestGap(from, end);
      // the first beat after the window closes the time-lost account
      await watch.firstBeatAfter(end, 30_000, ended).catch(() => undefined);
      const lost = watch.timeLost(from, end, msPerIter);
      return {
        app_pause_ms: round(gap.ms),
        app_pause_started_at_ms: round(gap.startedAt - from),
        app_pause_guest_clock_ms: watch.guestGap(from, end),
        app_time_lost_ms: lost === null ? null : round(lost),
        running_again_after_ms: round(resumed - from),
      };
    };

    const rawRun = async (): Promise<Run> => {
      await linksUp();
      const from = performance.now();
      const { result, from: fromSlot, to: toSlot } = await vclusterMigrate(NAME, 'vm1', { log, migration: { mode: plan.mode } });
      const to = performance.now();
      const p = await pauseOf(from, to);
      return {
        ...p,
        total_ms: round(to - from),
        qemu_total_ms: result.totalMs,
        qemu_downtime_ms: result.downtimeMs,
        qemu_wall_ms: round(result.wallMs),
        sent_MiB: round(result.transferredBytes / MiB),
        from: `slot${fromSlot}`,
        to: `slot${toSlot}`,
      };
    };

    const coopRun = async (): Promise<Run> => {
      await linksUp();
      const from = performance.now();
      const s = await job.controller.request({ kind: 'migrate', requestedBy: 'bench', params: { vms: ['vm1'], mode: plan.mode } });
      const to = performance.now();
      if (!s.ok) throw new Error(`cooperative migration failed in ${s.failedIn}: ${s.error}`);
      const p = await pauseOf(from, to);
      const phases = phaseMs(s);
      const m = ((detail(s, 'migrating')?.vms as Record<string, number>[] | undefined) ?? [])[0] ?? {};
      const frozen = ['quiescing', 'freezing', 'detaching', 'migrating', 'attaching', 'restoring-network', 'resuming'].reduce((a, k) => a + (phases[k] ?? 0), 0);
      const resuming = detail(s, 'resuming');
      return {
        ...p,
        total_ms: round(to - from),
        operation_ms: round(s.durationMs),
        // the ranks are held from the quiesce to the resume: what the pause should be
        quiesce_to_resume_ms: round(frozen),
        phases_ms: phases,
        qemu_total_ms: m.totalMs ?? null,
        qemu_downtime_ms: m.downtimeMs ?? null,
        qemu_wall_ms: m.wallMs ?? null,
        sent_MiB: typeof m.bytes === 'number' ? round(m.bytes / MiB) : null,
        frozen_check: resuming?.frozenCheck ?? null,
        interface_back_ms: (detail(s, 'restoring-network')?.interfaces as Record<string, { ms: number }> | undefined)?.vm1?.ms ?? null,
      };
    };

    const elapsed = () => (performance.now() - measureStart) / 1000;
    let pairSeconds = 0;
    for (let rep = 0; rep < plan.reps && !jobEnded; rep++) {
      if (rep > 0 && elapsed() + pairSeconds > plan.budgetSeconds * (plan.checkpointReps > 0 ? 0.6 : 1)) {
        notes.push(`stopped after ${rep} of ${plan.reps} migration pairs: the time budget (${plan.budgetSeconds} s) was running out`);
        break;
      }
      const p0 = performance.now();
      const order = rep % 2 === 0 ? (['raw', 'coop'] as const) : (['coop', 'raw'] as const);
      const pair: Partial<{ raw: Run; coop: Run }> = {};
      for (const kind of order) {
        await sleep(SETTLE_MS);
        try {
          const r = kind === 'raw' ? await rawRun() : await coopRun();
          pair[kind] = r;
          (kind === 'raw' ? raw : coop).push(r);
          const extra = kind === 'coop' ? `, phases ${JSON.stringify(r.phases_ms)}` : `, QEMU downtime ${r.qemu_downtime_ms} ms`;
          say(`pair ${rep + 1}/${plan.reps} ${kind.padEnd(4)}: app pause ${r.app_pause_ms} ms (rank 0's clock ${r.app_pause_guest_clock_ms} ms), total ${r.total_ms} ms${extra}`);
        } catch (e) {
          const msg = `${kind} migration (pair ${rep + 1}): ${(e as Error).message}`;
          errors.push(msg);
          say(`FAILED: ${msg}`);
          (kind === 'raw' ? raw : coop).push({ error: (e as Error).message });
          break;
        }
      }
      if (pair.raw && pair.coop) pairs.push(pair as { raw: Run; coop: Run });
      else {
        // a guest or job that broke in a migration measures nothing more
        notes.push(`migrations stopped after the failure in pair ${rep + 1}`);
        break;
      }
      pairSeconds = (performance.now() - p0) / 1000;
    }
    if (plan.checkpointReps > 0 && !jobEnded && (watch.beats.at(-1)?.at ?? 0) < performance.now() - 10_000) {
      errors.push('checkpoint/restart skipped: the job has not made progress for 10 s');
      plan.checkpointReps = 0;
    }

    for (let rep = 0; rep < plan.checkpointReps && !jobEnded; rep++) {
      if (rep > 0 && elapsed() > plan.budgetSeconds) {
        notes.push(`stopped after ${rep} of ${plan.checkpointReps} checkpoint/restart rounds: the time budget (${plan.budgetSeconds} s) had run out`);
        break;
      }
      await sleep(SETTLE_MS);
      await linksUp();
      try {
        const from = performance.now();
        const s = await job.controller.request({ kind: 'checkpoint', requestedBy: 'bench' });
        const to = performance.now();
        if (!s.ok) throw new Error(`checkpoint failed in ${s.failedIn}: ${s.error}`);
        const p = await pauseOf(from, to);
        const res = s.result as { manifest: string; bytes: number };
        const written = bytesUnder(dirname(res.manifest));
        const memory = 2 * plan.memoryMiB * MiB;
        const saving = detail(s, 'saving');
        const ck: Run = {
          app_pause_ms: p.app_pause_ms,
          app_pause_guest_clock_ms: p.app_pause_guest_clock_ms,
          running_again_after_ms: p.running_again_after_ms,
          total_ms: round(to - from),
          operation_ms: round(s.durationMs),
          phases_ms: phaseMs(s),
          state_bytes: res.bytes,
          written_bytes: written,
          written_MiB: round(written / MiB),
          guest_memory_MiB: 2 * plan.memoryMiB,
          written_vs_guest_memory: round(written / memory, 3),
          save_MiBps: typeof saving?.MBps === 'number' ? saving.MBps : null,
        };
        ckpts.push(ck);
        say(`checkpoint ${rep + 1}/${plan.checkpointReps}: ${ck.written_MiB} MiB written for ${2 * plan.memoryMiB} MiB of guests in ${ck.total_ms} ms (app pause ${ck.app_pause_ms} ms), phases ${JSON.stringify(ck.phases_ms)}`);

        // the job runs on, then every QEMU dies; the restart loses what it did since the checkpoint
        await sleep(RUN_ON_MS);
        const lostIters = watch.lastIter;
        await job.backend.kill(['vm0', 'vm1']);
        const killedAt = performance.now();
        const r0 = performance.now();
        const rs = await job.controller.request({ kind: 'restart', requestedBy: 'bench', params: { manifest: res.manifest } });
        const r1 = performance.now();
        if (!rs.ok) throw new Error(`restart failed in ${rs.failedIn}: ${rs.error}`);
        const firstOutput = await (async () => {
          const deadline = performance.now() + 60_000;
          for (;;) {
            const c = watch.chunks.find((t) => t > r0);
            if (c !== undefined) return c;
            if (jobEnded || performance.now() > deadline) return null;
            await sleep(10);
          }
        })();
        // the first beat beyond where the job was when it was killed: the lost work is done again
        const newBeat = await watch.firstBeatAfter(killedAt, 120_000, ended);
        const rr: Run = {
          total_ms: round(r1 - r0),
          operation_ms: round(rs.durationMs),
          phases_ms: phaseMs(rs),
          restore_ms: detail(rs, 'starting-vms')?.restoreMs ?? null,
          job_output_again_after_ms: firstOutput === null ? null : round(firstOutput - r0),
          lost_work_ms: RUN_ON_MS,
          new_progress_after_ms: round(newBeat - r0),
          iterations_at_kill: lostIters,
        };
        restarts.push(rr);
        say(`restart ${rep + 1}/${plan.checkpointReps}: ${rr.total_ms} ms, output again after ${rr.job_output_again_after_ms} ms, new progress after ${rr.new_progress_after_ms} ms, phases ${JSON.stringify(rr.phases_ms)}`);
        await sleep(TAIL_MS);
      } catch (e) {
        const msg = `checkpoint/restart round ${rep + 1}: ${(e as Error).message}`;
        errors.push(msg);
        say(`FAILED: ${msg}`);
        break;
      }
    }

    if (!jobEnded) {
      say('stopping the job');
      // the stop file, through ssh (slow to answer on a loaded machine: a few tries)
      let told = false;
      let why = '';
      for (let attempt = 1; attempt <= 4 && !told; attempt++) {
        const r = await guestExec(requireState(NAME), 'vm0', ['touch', STOP_FILE]);
        told = r.code === 0;
        why = `ssh exited ${r.code}: ${r.stderr.trim().slice(0, 200)}`;
        if (!told) await sleep(3000);
      }
      if (told) await Promise.race([jobDone.catch(() => undefined), sleep(60_000)]);
      if (!jobEnded) {
        // SIGTERM to mpirun through vm0's agent: the job ends, but not with its own done line
        errors.push(told ? 'the job did not end within 60 s of being told to: SIGTERM to mpirun' : `could not create the stop file in vm0 (${why}): SIGTERM to mpirun`);
        await job.links.get('vm0')!.request('signal', { signal: 'SIGTERM' }).catch((e: Error) => errors.push(`SIGTERM to mpirun: ${e.message}`));
        await Promise.race([jobDone.catch(() => undefined), sleep(30_000)]);
      }
    }
  } catch (e) {
    errors.push((e as Error).message);
    say(`FAILED: ${(e as Error).message}`);
  } finally {
    if (jobDone && !jobEnded) {
      // the launcher waits for mpirun in vm0: a second signal makes it leave without the job
      process.off('SIGINT', onSignal);
      process.emit('SIGINT', 'SIGINT');
      process.emit('SIGINT', 'SIGINT');
      await Promise.race([jobDone.catch(() => undefined), sleep(20_000)]);
    }
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await vclusterDown(NAME, log).catch((e: Error) => errors.push(`vcluster down: ${e.message}`));
    rmSync(runtime, { recursive: true, force: true });
    if (previousRuntime === undefined) delete process.env.SYMBIO_RUNTIME_DIR;
    else process.env.SYMBIO_RUNTIME_DIR = previousRuntime;
  }

  const MIG_KEYS = ['app_pause_ms', 'app_pause_guest_clock_ms', 'app_time_lost_ms', 'running_again_after_ms', 'total_ms', 'operation_ms', 'quiesce_to_resume_ms', 'qemu_total_ms', 'qemu_downtime_ms', 'sent_MiB'];
  const okRaw = raw.filter((r) => !r.error);
  const okCoop = coop.filter((r) => !r.error);
  const rawMed = medians(okRaw, MIG_KEYS.filter((k) => !['operation_ms', 'quiesce_to_resume_ms'].includes(k)));
  const coopMed = medians(okCoop, MIG_KEYS);
  const PHASES = ['preparing-destination', 'quiescing', 'freezing', 'detaching', 'migrating', 'attaching', 'restoring-network', 'resuming'];
  const coopPhases = medians(okCoop.map((r) => r.phases_ms as Record<string, unknown>), PHASES);
  const ratio = (a: number | null | undefined, b: number | null | undefined) => (a != null && b != null && b > 0 ? round(a / b, 3) : null);
  const perPair = pairs.map((p) => ({
    pause_coop_minus_raw_ms: round((p.coop.app_pause_ms as number) - (p.raw.app_pause_ms as number)),
    pause_coop_over_raw: ratio(p.coop.app_pause_ms as number, p.raw.app_pause_ms as number),
    total_coop_over_raw: ratio(p.coop.total_ms as number, p.raw.total_ms as number),
  }));
  const pauseLimit = rawMed.app_pause_ms == null ? null : round(rawMed.app_pause_ms + 100);
  const totalRatio = ratio(coopMed.total_ms, rawMed.total_ms);
  const ckMed = medians(ckpts, ['app_pause_ms', 'total_ms', 'operation_ms', 'state_bytes', 'written_bytes', 'written_MiB', 'written_vs_guest_memory', 'save_MiBps']);
  const ckPhases = medians(ckpts.map((r) => r.phases_ms as Record<string, unknown>), ['quiescing', 'freezing', 'stopping-vms', 'saving', 'writing-manifest', 'continuing', 'resuming']);
  const rsMed = medians(restarts, ['total_ms', 'operation_ms', 'job_output_again_after_ms', 'new_progress_after_ms']);
  const rsPhases = medians(restarts.map((r) => r.phases_ms as Record<string, unknown>), ['verifying', 'starting-vms', 'reconnecting', 'resuming']);

  if (coopMed.app_pause_ms != null && coopMed.quiesce_to_resume_ms != null) {
    notes.push(
      `The cooperative pause (${coopMed.app_pause_ms} ms) is the ranks' frozen time: they are held from the quiesce to the resume, and everything between ` +
        `(detach, the whole migration, attach, the guest bringing the interface back) happens while they are held; the phases from quiescing to resuming add up to ${coopMed.quiesce_to_resume_ms} ms. ` +
        'In a raw migration the ranks keep running while QEMU copies memory and stop only for its downtime (and whatever TCP needs to recover).',
    );
  }
  if (plan.mode === 'postcopy') {
    notes.push(
      'Both kinds of migration run in postcopy mode (the default here; --mode to change it). It became the default on QEMU 7.2, where a raw precopy migration of vm1 while the job ran in it broke the guest in 2 of 3 tries ' +
        "(the dirty-page tracking bug of QEMU 7.2's TCG that bench/migration.ts describes); on QEMU 10 --mode precopy runs clean here (docs/performance.md).",
    );
  }
  notes.push(
    `Machine: ${cpus().length} cores, QEMU under ${accel.toUpperCase()}, and during a migration three QEMU processes (vm0, the source and the destination of vm1) share them; other work on the machine adds noise to every number.`,
    'app_time_lost_ms: from the last heartbeat before the request to the first after the job ran again, wall time minus the iterations done in it at the baseline rate: the pause plus any slowdown while a migration ran.',
  );
  const seconds = (performance.now() - t0) / 1000;
  return {
    benchmark: 'coop',
    machine: {
      cpus: cpus().length,
      model: cpus()[0]?.model ?? 'unknown',
      qemu: qemuVersion,
      accel,
      guest_vcpus: 1,
      node: process.version,
      // 1/5/15-minute load averages: other work on the machine shows in every number here
      loadavg_start: loadAtStart,
      loadavg_end: loadavg().map((x) => round(x, 2)),
    },
    image: { id: image.id, kernel: image.kernelVersion },
    plan: {
      quick: plan.quick,
      vms: 2,
      memory_MiB_per_vm: plan.memoryMiB,
      np: plan.np,
      program: `${PROGRAM} --beat-ms ${BEAT_MS} --work ${plan.work} (ring halo exchange of 4 KiB each way + allreduce per iteration)`,
      migrated_vm: 'vm1 (rank 0 runs in vm0)',
      migration_mode: plan.mode,
      migration_pairs: plan.reps,
      checkpoint_rounds: plan.checkpointReps,
      checkpoint_dir_filesystem: 'the same disk as /tmp',
      budget_seconds: plan.budgetSeconds,
    },
    method: {
      app_pause:
        'host clock: rank 0 (in vm0, which never migrates) writes a heartbeat line every 10 ms of its clock; it reaches the host through mpirun, vm0\'s agent and its virtio-serial port, ' +
        'and the bench stamps each arrival. Every iteration ends in an allreduce over all ranks, so a stopped, frozen or stalled rank anywhere stops rank 0 within one iteration. ' +
        'The pause is the longest silence between arrivals from the request until the job runs again (+500 ms). app_pause_guest_clock_ms is rank 0\'s own largest iteration gap: ' +
        'valid for migrations (vm0 keeps running, and its clock with it), not for checkpoints (both VMs stop, their clocks too).',
      total_time:
        'host wall time around the call: vclusterMigrate (raw: start the destination QEMU, live-migrate, record the new slot) vs controller.request({kind: "migrate"}) (cooperative: the same plus quiesce, freeze, detach, attach, restore the interface, resume). ' +
        'qemu_total_ms is QEMU\'s own total-time of the migration stream in both.',
      ratios: 'coop over raw, computed within this run: of the medians, and per pair (a pair = one raw and one cooperative migration back to back, in alternating order)',
      checkpoint: 'controller.request({kind: "checkpoint"}) of the whole 2-VM job; written = every file of the checkpoint directory (state files and manifests)',
      restart: `after the checkpoint the job runs on for ${RUN_ON_MS} ms, both QEMUs are SIGKILLed, then controller.request({kind: "restart", manifest}); new_progress_after_ms: until the first heartbeat beyond where the job was when it was killed`,
    },
    baseline,
    migration: {
      raw: { median: rawMed, runs: raw },
      cooperative: { median: { ...coopMed, phases_ms: coopPhases }, runs: coop },
      ratios: {
        pause_coop_over_raw: ratio(coopMed.app_pause_ms, rawMed.app_pause_ms),
        pause_coop_minus_raw_ms: coopMed.app_pause_ms != null && rawMed.app_pause_ms != null ? round(coopMed.app_pause_ms - rawMed.app_pause_ms) : null,
        total_coop_over_raw: totalRatio,
        qemu_total_coop_over_raw: ratio(coopMed.qemu_total_ms, rawMed.qemu_total_ms),
        per_pair: perPair,
      },
    },
    checkpoint: { median: { ...ckMed, phases_ms: ckPhases }, runs: ckpts },
    restart: { median: { ...rsMed, phases_ms: rsPhases }, runs: restarts },
    targets: {
      coop_pause_max_ms: pauseLimit,
      coop_pause_ms: coopMed.app_pause_ms,
      coop_pause_met: pauseLimit != null && coopMed.app_pause_ms != null ? coopMed.app_pause_ms <= pauseLimit : null,
      total_ratio_max: 1.1,
      total_ratio: totalRatio,
      total_ratio_met: totalRatio != null ? totalRatio <= 1.1 : null,
    },
    job: { exit_code: jobExit, done_line: watch.done, ok: jobExit === 0 && watch.done !== null },
    errors,
    notes,
    image_seconds: round(imageSeconds),
    cluster_up_seconds: round(clusterSeconds),
    seconds: round(seconds),
    seconds_measuring: measureStart ? round((performance.now() - measureStart) / 1000) : 0,
  };
}
