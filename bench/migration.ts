/**
 * Benchmark of live migration and checkpoint/restore of real guests:
 *   npm run bench -- migration [--quick] [--sizes 256,512,1024]
 *                              [--rates 100,max] [--reps 3]
 *                              [--free-page-hint on|off] [--hint-size 256|0]
 * JSON on stdout, progress on stderr. --quick: 256 MiB, idle + 100 MiB/s,
 * one migration per mode, no free-page-hint comparison (~1 min).
 *
 * One guest (the symbio image, 1 vCPU, TCG) is booted per memory size and
 * then moved from QEMU process to QEMU process on this machine: every
 * migration is a real one (liveMigrate, `migrate tcp:127.0.0.1:PORT` to a
 * destination started with `-incoming defer`), so the guest is not
 * re-booted. Per size:
 *   1. checkpoint of the freshly booted, idle guest (checkpointVm), with
 *      `dd if=/dev/zero ... bs=1M conv=fsync` writing the same number of
 *      bytes into the same directory right after it as the baseline
 *      (checkpoint_vs_dd: both times count from start to data on disk, dd's
 *      including its process start), then a kill and a restore (restoreVm)
 *      from a cold page cache; the restored guest goes on. Right before it,
 *      the same guest is also saved the old way (QEMU streams into a socket,
 *      Node writes the file: `via: 'socket'`) against the same dd runs
 *      (socket_checkpoint_vs_dd); each save's phases, from symbio's log, are
 *      in save_phases_ms;
 *   2. bench/mpi/dirty-mem holding a 64 MiB region and writing nothing
 *      ("idle"), then rewriting it at each of --rates: per workload, `reps`
 *      rounds of precopy -> postcopy -> hybrid (hybrid: postcopy after the
 *      first full pass), medians reported with every run;
 *   3. with dirty-mem still writing: checkpoint, kill, restore, and
 *      dirty-mem verifies every page of its region.
 * The main matrix runs with the balloon's free-page hinting off (on makes
 * precopy stall a 1-vCPU guest while it reports its free pages, and breaks
 * the guest more often here); for one size, two fresh guests with hinting
 * on and off: fill and free half the guest's memory, one precopy migration
 * with an idle dirty-mem heartbeating, then a checkpoint.
 *
 * The application's pause is seen two ways. dirty-mem measures the longest
 * gap between its loop iterations on the guest's clock; but a stopped VM's
 * clock stops too (TCG's TSC, like kvmclock, is paused with the vCPUs), so
 * that gap does not contain the migration's downtime. So dirty-mem also
 * writes a heartbeat (and a copy of its report lines) to the serial console,
 * and the bench times what arrives in the console files on the host's
 * clock: the longest silence during the migration is the pause as a client
 * of the application would see it. Both are reported, with baselines from
 * the same run: a quiet stretch, and a 100 ms stop/cont of the same QEMU.
 *
 * Guests can break in a migration here (see the notes in the output): the
 * console is watched for kernel oopses and dirty-mem's heartbeat for
 * silence after every migration; a broken guest is replaced by a freshly
 * booted one, and its run is reported but kept out of the medians.
 */
import { forEachOption, progress } from './options.js';
import { createServer } from 'node:net';
import { closeSync, existsSync, fstatSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage, type GuestImage } from '../src/image/build-image.js';
import { guestKernelCommandLine, readyLine } from '../src/image/boot-contract.js';
import { checkpointVm, manifestFileName, restoreVm, stateFileName, type VmCheckpointManifest } from '../src/hypervisor/qemu/checkpoint.js';
import { liveMigrate, startDestination } from '../src/hypervisor/qemu/live-migrate.js';
import type { MigrationMode, MigrationOptionsInput, MigrationResult } from '../src/hypervisor/qemu/migration.js';
import { QemuVm } from '../src/hypervisor/qemu/qemu-vm.js';
import { parseVmSpec, type VmSpecInput } from '../src/hypervisor/qemu/vm-spec.js';
import { packageRoot } from '../src/util/package-root.js';
import { runProcess, startProcess } from '../src/util/run-process.js';
import { logger, type Logger } from '../src/log.js';
import { pino } from 'pino';

const log = logger.child({ component: 'bench-migration' });
log.level = process.env.SYMBIO_BENCH_LOG ?? 'warn';

/** What checkpointVm logged about its last save: which way the state went, and when each phase ended. */
interface SaveLog {
  via: string | null;
  phases: Record<string, number> | null;
}

/** A logger for checkpointVm that keeps its 'checkpoint written' line (warnings and worse also go to `log`). */
function saveLogger(): { log: Logger; last: () => SaveLog } {
  let last: SaveLog = { via: null, phases: null };
  const l = pino(
    { level: 'info' },
    {
      write(line: string) {
        const o = JSON.parse(line) as { msg?: string; level?: number; via?: string; marks?: Record<string, number> };
        if (o.msg === 'checkpoint written') last = { via: o.via ?? null, phases: o.marks ?? null };
        else if ((o.level ?? 0) >= 40) log.warn({ checkpoint: o }, 'from checkpointVm');
      },
    },
  );
  return { log: l, last: () => last };
}

const MODES: readonly MigrationMode[] = ['precopy', 'postcopy', 'hybrid'];
const MiB = 2 ** 20;
/** dirty-mem's region: the guest's working set. */
const REGION_MIB = 64;
const REPORT_MS = 100;
const HEARTBEAT_MS = 10;
const GUEST_MAC = '52:54:00:5b:00:01';
/** Console lines of a guest kernel in trouble (printed even with `quiet`), or of a guest that rebooted. */
const CRASH = /\b(BUG: |Oops|Kernel panic|general protection fault|RIP: )|^symbio-guest-ready /;
const DIRTY_MEM = '/opt/symbio/build/mpi/dirty-mem';
/** The same options for every migration; hybrid switches after the first full pass. */
const MIGRATION_OPTIONS = { hybridMaxPasses: 1, timeoutMs: 180_000 } satisfies Omit<MigrationOptionsInput, 'mode'>;

/** MiB/s, or 'max': as fast as the guest can (64 KiB chunks, no pacing). */
export type Rate = number | 'max';

export interface MigrationBenchPlan {
  sizes: number[];
  /** dirty-mem's rates in the dirtying workloads (an idle one always runs first) */
  rates: Rate[];
  /** migrations per mode and workload */
  reps: number;
  /** the balloon's free-page hinting in the main matrix (off: see the notes on why) */
  freePageHint: boolean;
  /** guest size of the free-page-hint on/off comparison; null: skipped */
  hintSize: number | null;
  quick: boolean;
}

const usage = 'usage: migration [--quick] [--sizes 256,512,1024] [--rates 100,max] [--reps 3] [--free-page-hint on|off] [--hint-size MiB|0]';

export function parseMigrationArgs(args: readonly string[]): MigrationBenchPlan {
  const plan: MigrationBenchPlan = { sizes: [256, 512, 1024], rates: [100, 'max'], reps: 3, freePageHint: false, hintSize: 256, quick: false };
  let sizesGiven = false;
  let ratesGiven = false;
  let repsGiven = false;
  let hintGiven = false;
  forEachOption(args, usage, ({ flag, value, int }) => {
    if (flag === '--quick') plan.quick = true;
    else if (flag === '--sizes') {
      plan.sizes = value().split(',').map((s) => int(s, 128));
      sizesGiven = true;
    } else if (flag === '--rates') {
      plan.rates = value()
        .split(',')
        .map((r) => (r === 'max' ? 'max' : int(r, 1)));
      ratesGiven = true;
    } else if (flag === '--free-page-hint') {
      const v = value();
      if (v !== 'on' && v !== 'off') throw new Error(`--free-page-hint: 'on' or 'off', not '${v}'; ${usage}`);
      plan.freePageHint = v === 'on';
    } else if (flag === '--reps') {
      plan.reps = int(value(), 1);
      repsGiven = true;
    } else if (flag === '--hint-size') {
      const n = int(value(), 0);
      plan.hintSize = n === 0 ? null : n;
      hintGiven = true;
    } else return false;
    return true;
  });
  if (plan.quick) {
    if (!sizesGiven) plan.sizes = [256];
    if (!hintGiven) plan.hintSize = null;
    if (!ratesGiven) plan.rates = [100];
    if (!repsGiven) plan.reps = 1;
  }
  return plan;
}

const say = progress('migration');

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const toMiB = (bytes: number) => round(bytes / MiB);

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A line dirty-mem writes (to its stdout and to the console), as the host received it. */
interface ConsoleLine {
  readonly at: number;
  readonly text: string;
}

/**
 * Polls the guests' console files every 2 ms and keeps, on the host's
 * clock, when each grew (heartbeats) and each complete line that arrived.
 */
interface WatchedFile {
  fd: number | null;
  size: number;
  partial: string;
  /** when this file grew */
  arrivals: number[];
}

class ConsoleWatcher {
  readonly #files = new Map<string, WatchedFile>();
  /** when any watched file grew */
  readonly arrivals: number[] = [];
  /** per file, kept after unwatch */
  readonly arrivalsOf = new Map<string, number[]>();
  readonly lines: ConsoleLine[] = [];
  #timer: NodeJS.Timeout | null = null;
  readonly #buf = Buffer.alloc(1 << 16);

  /** `path` may not exist yet (QEMU creates it when it starts). */
  watch(path: string): void {
    if (this.#files.has(path)) return;
    const arrivals: number[] = [];
    this.arrivalsOf.set(path, arrivals);
    this.#files.set(path, { fd: null, size: 0, partial: '', arrivals });
    this.#timer ??= setInterval(() => this.poll(), 2);
  }

  unwatch(path: string): void {
    const f = this.#files.get(path);
    if (!f) return;
    this.#read(path, f, performance.now());
    if (f.fd !== null) closeSync(f.fd);
    this.#files.delete(path);
  }

  poll(): void {
    const now = performance.now();
    for (const [path, f] of this.#files) this.#read(path, f, now);
  }

  #read(path: string, f: WatchedFile, now: number): void {
    if (f.fd === null) {
      try {
        f.fd = openSync(path, 'r');
      } catch {
        return; // not there yet
      }
    }
    const size = fstatSync(f.fd).size;
    if (size <= f.size) return;
    this.arrivals.push(now);
    f.arrivals.push(now);
    while (f.size < size) {
      const n = readSync(f.fd, this.#buf, 0, Math.min(this.#buf.length, size - f.size), f.size);
      if (n <= 0) break;
      f.size += n;
      const parts = (f.partial + this.#buf.toString('latin1', 0, n)).split('\n');
      f.partial = parts.pop()!;
      // the guest's tty turns \n into \r\n; heartbeat dots sit between lines
      for (const raw of parts) {
        const text = raw.replace(/\r/g, '').replace(/^\.+/, '');
        if (text) this.lines.push({ at: now, text });
      }
    }
  }

  /** The longest silence on the host's clock in [from, to] (edges: the last arrival before, the first after). */
  maxGap(from: number, to: number, a: readonly number[] = this.arrivals): number {
    return this.longestGap(from, to, a).ms;
  }

  /** The same, with when the silence began. */
  longestGap(from: number, to: number, a: readonly number[] = this.arrivals): { ms: number; startedAt: number } {
    let last = from;
    for (const t of a) if (t <= from) last = t;
    let best = { ms: 0, startedAt: from };
    const consider = (t: number) => {
      if (t - last > best.ms) best = { ms: t - last, startedAt: last };
    };
    for (const t of a) {
      if (t <= from) continue;
      consider(t);
      last = t;
      if (t >= to) return best;
    }
    consider(to);
    return best;
  }

  /** dirty-mem's own largest iteration gap over the report lines that arrived in [from, to]. */
  guestMaxGap(from: number, to: number): number | null {
    let max: number | null = null;
    for (const l of this.lines) {
      if (l.at < from || l.at > to) continue;
      const m = /\bt=\d+ iter=\d+ dirtied_mib=[\d.]+ max_gap_ms=([\d.]+)/.exec(l.text);
      if (m) max = Math.max(max ?? 0, Number(m[1]));
    }
    return max;
  }

  /** A console line at or after `from` that says the guest's kernel crashed (or it booted again), if any. */
  crashSince(from: number): string | null {
    const hit = this.lines.find((l) => l.at >= from && CRASH.test(l.text));
    return hit ? hit.text.slice(0, 200) : null;
  }

  /** The first line at or after `from` that matches. */
  async waitLine(re: RegExp, from: number, timeoutMs: number, alive: () => boolean): Promise<ConsoleLine> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.poll();
      const hit = this.lines.find((l) => l.at >= from && re.test(l.text));
      if (hit) return hit;
      if (!alive()) throw new Error(`the guest's QEMU exited while waiting for ${re} on the console`);
      if (performance.now() > deadline) {
        throw new Error(`no console line matching ${re} within ${timeoutMs} ms; last lines: ${this.lines.slice(-5).map((l) => l.text).join(' | ')}`);
      }
      await sleep(20);
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    for (const path of [...this.#files.keys()]) this.unwatch(path);
  }
}

/** Everything that must be cleaned up, whatever happens. */
class Resources {
  readonly vms = new Set<QemuVm>();
  readonly dir = mkdtempSync(join(tmpdir(), 'symbio-bench-mig-'));
  readonly watcher = new ConsoleWatcher();

  track<T extends QemuVm>(vm: T): T {
    this.vms.add(vm);
    void vm.exited.then(() => this.vms.delete(vm));
    return vm;
  }

  /** Synchronous: for signal handlers. */
  killNow(): void {
    for (const vm of this.vms) {
      try {
        process.kill(vm.pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    this.watcher.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  async close(): Promise<void> {
    await Promise.all([...this.vms].map((vm) => vm.kill()));
    this.watcher.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A migration as the bench saw it; total and downtime null when QEMU did not fill them in. */
type MigrationRun = Omit<MigrationResult, 'totalMs' | 'downtimeMs'> & {
  totalMs: number | null;
  downtimeMs: number | null;
  /** host clock (performance.now) around liveMigrate */
  from: number;
  to: number;
  srcConsole: string;
  dstConsole: string;
};

/** One QEMU process of a guest: its spec and its host-side ends. */
interface Hop {
  readonly spec: VmSpecInput;
  readonly port: number;
  readonly console: string;
}

/**
 * One guest and whichever QEMU process holds it now: each migration or
 * restore moves it to a new process (its own QMP socket, console file and
 * forwarded ssh port: the old process still has its own while they
 * overlap).
 */
class Guest {
  vm!: QemuVm;
  port = 0;
  console = '';
  lastSaveStreamMs: number | null = null;
  lastSave: SaveLog = { via: null, phases: null };
  #hop = 0;

  constructor(
    readonly name: string,
    readonly memoryMiB: number,
    readonly freePageHint: boolean,
    readonly image: GuestImage,
    readonly res: Resources,
  ) {}

  /** The spec of the next QEMU process for this guest (same devices, new host-side paths). */
  async nextSpec(): Promise<Hop> {
    const hop = ++this.#hop;
    const port = await freePort();
    const console = join(this.res.dir, `${this.name}-${hop}.console`);
    const spec: VmSpecInput = {
      name: this.name,
      memoryMiB: this.memoryMiB,
      cpus: 1,
      accel: 'tcg',
      qmpSocket: join(this.res.dir, `${this.name}-${hop}.qmp`),
      consoleLog: console,
      kernel: { path: this.image.kernel, initrd: this.image.initrd, cmdline: guestKernelCommandLine({ name: this.name, userMac: GUEST_MAC }) },
      disks: [{ id: 'root', path: this.image.rootDisk, readOnly: true, addr: 2 }],
      nics: [{ id: 'user', mac: GUEST_MAC, net: { type: 'user', hostForwards: [{ hostPort: port, guestPort: 22 }] }, addr: 3 }],
      balloon: { addr: 6, freePageHint: this.freePageHint },
    };
    return { spec, port, console };
  }

  /** The guest now lives in `vm`, reached through `hop`'s port and console. */
  #moveTo(vm: QemuVm, hop: Hop): void {
    const old = this.console;
    this.vm = this.res.track(vm);
    this.port = hop.port;
    this.console = hop.console;
    this.res.watcher.watch(this.console);
    if (old && old !== hop.console) this.res.watcher.unwatch(old);
  }

  async boot(): Promise<number> {
    const t0 = performance.now();
    const hop = await this.nextSpec();
    this.res.watcher.watch(hop.console);
    const vm = await QemuVm.start(hop.spec, { log });
    this.#moveTo(vm, hop);
    await this.res.watcher.waitLine(new RegExp(`^${readyLine(this.name)}$`), t0, 180_000, () => vm.running);
    // sshd is up at the ready line; the first connection may still race the forward
    for (let attempt = 1; ; attempt++) {
      try {
        await this.ssh('true', 30_000);
        break;
      } catch (err) {
        if (attempt >= 5) throw err;
        await sleep(1000);
      }
    }
    return performance.now() - t0;
  }

  async ssh(command: string, timeoutMs = 60_000): Promise<string> {
    const { child, done } = startProcess('ssh', [
      '-i', this.image.sshKey, '-p', String(this.port),
      '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR',
      '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=30',
      'root@127.0.0.1', command,
    ]);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const r = await done.finally(() => clearTimeout(timer));
    if (r.code !== 0) throw new Error(`ssh to ${this.name} (port ${this.port}): '${command}' ended with ${r.code ?? r.signal}: ${r.stderr.trim().slice(-400)}`);
    return r.stdout;
  }

  async migrate(mode: MigrationMode): Promise<MigrationRun> {
    const hop = await this.nextSpec();
    const dst = this.res.track(await startDestination(hop.spec, { log }));
    const uri = `tcp:127.0.0.1:${await freePort()}`;
    this.res.watcher.watch(hop.console);
    const src = this.vm;
    const srcConsole = this.console;
    const from = performance.now();
    // keepSource: QEMU may report 'completed' a moment before it has filled
    // in total-time and downtime (both 0 then); ask the source once more
    const { vm, result } = await liveMigrate(src, dst, { mode, ...MIGRATION_OPTIONS }, { log, uri, keepSource: true });
    const to = performance.now();
    this.#moveTo(vm, hop);
    const q = await src.qmp.execute<{ 'total-time'?: number; downtime?: number; 'setup-time'?: number; ram?: { transferred?: number } }>('query-migrate');
    await src.shutdown();
    // both still 0: QEMU did not say (seen now and then after postcopy); null rather than a made-up 0
    const totalMs = q['total-time'] || result.totalMs || null;
    const final = {
      totalMs,
      downtimeMs: totalMs === null ? null : (q.downtime ?? result.downtimeMs),
      setupMs: q['setup-time'] ?? result.setupMs,
      transferredBytes: q.ram?.transferred ?? result.transferredBytes,
    };
    return { ...result, ...final, from, to, srcConsole, dstConsole: hop.console };
  }

  /** Checkpoint into `dir`, then kill this QEMU (as a crash would) and restore into a new one. */
  async checkpointAndRestore(dir: string): Promise<{ manifest: VmCheckpointManifest; restoreMs: number; savedAt: [number, number] }> {
    const s0 = performance.now();
    const saveLog = saveLogger();
    const manifest = await checkpointVm(this.vm, dir, { log: saveLog.log });
    const s1 = performance.now();
    this.lastSave = saveLog.last();
    // the save's own migration, as QEMU timed it (the rest of saveMs is symbio's: QMP, hashing, fsync)
    const q = await this.vm.qmp.execute<{ 'total-time'?: number }>('query-migrate');
    this.lastSaveStreamMs = q['total-time'] ?? null;
    // the guest runs on after the save: let the report line that covers the stop come in
    await sleep(3 * REPORT_MS + 100);
    await this.vm.kill();
    // a cold restore: the state file out of the page cache (GNU dd's nocache drops a file's pages)
    await runProcess('dd', [`if=${join(dir, stateFileName(this.name))}`, 'iflag=nocache', 'count=0', 'status=none']);
    const hop = await this.nextSpec();
    this.res.watcher.watch(hop.console);
    const { vm, restoreMs } = await restoreVm(join(dir, manifestFileName(this.name)), { log, adapt: () => parseVmSpec(hop.spec) });
    this.#moveTo(vm, hop);
    return { manifest, restoreMs, savedAt: [s0, s1] };
  }

  async meminfo(): Promise<Record<string, number>> {
    const out = await this.ssh('cat /proc/meminfo').catch(() => '');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(out)?.[1] ?? NaN);
    return {
      total_MiB: round(kib('MemTotal') / 1024),
      free_MiB: round(kib('MemFree') / 1024),
      cached_MiB: round((kib('Cached') + kib('Buffers')) / 1024),
    };
  }

  /** Kill this guest's QEMU (nothing in it is worth a clean shutdown) and stop watching its console. */
  async kill(): Promise<void> {
    await this.vm.kill();
    this.res.watcher.unwatch(this.console);
  }
}

/** dirty-mem running in the guest, heartbeating to the console. */
class DirtyMem {
  pid = 0;
  constructor(
    readonly guest: Guest,
    readonly rate: Rate,
    readonly mib = REGION_MIB,
  ) {}

  async start(): Promise<void> {
    const from = performance.now();
    const args = `--mib ${this.mib} --rate ${this.rate} --seconds 86400 --report-ms ${REPORT_MS} --heartbeat /dev/ttyS0 --heartbeat-ms ${HEARTBEAT_MS}`;
    const out = await this.guest.ssh(`setsid ${DIRTY_MEM} ${args} >/tmp/dirty-mem.log 2>&1 </dev/null & echo $!`);
    this.pid = Number(out.trim());
    if (!Number.isInteger(this.pid) || this.pid <= 0) throw new Error(`starting dirty-mem in ${this.guest.name} printed '${out.trim()}', not a pid`);
    await this.guest.res.watcher.waitLine(/^dirty-mem start /, from, 60_000, () => this.guest.vm.running);
  }

  /** SIGTERM: it stops, verifies its whole region, and says ok or CORRUPT. */
  async stop(): Promise<{ ok: boolean; line: string; maxGapMs: number | null }> {
    const from = performance.now();
    const alive = await this.guest.ssh(`kill -TERM ${this.pid} && echo alive || { echo gone; tail -5 /tmp/dirty-mem.log; dmesg | tail -15; }`);
    if (!alive.startsWith('alive')) {
      // it died on its own: what the guest says about it is the result
      return { ok: false, line: `dirty-mem was no longer running: ${alive.replace(/\s+/g, ' ').slice(0, 1500)}`, maxGapMs: null };
    }
    const line = await this.guest.res.watcher.waitLine(/^dirty-mem (ok|CORRUPT) /, from, 120_000, () => this.guest.vm.running);
    const gap = /max_gap_ms=([\d.]+)/.exec(line.text);
    return { ok: line.text.startsWith('dirty-mem ok'), line: line.text, maxGapMs: gap ? Number(gap[1]) : null };
  }
}

async function ddWrite(dir: string, bytes: number): Promise<{ bytes: number; ms: number; MiBps: number }> {
  const count = Math.max(1, Math.round(bytes / MiB));
  const file = join(dir, 'dd.bin');
  const t0 = performance.now();
  const r = await runProcess('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${count}`, 'conv=fsync', 'status=none']);
  const ms = performance.now() - t0;
  rmSync(file, { force: true });
  if (r.code !== 0) throw new Error(`dd into ${dir} failed: ${r.stderr.trim()}`);
  return { bytes: count * MiB, ms: round(ms), MiBps: round((count * MiB) / MiB / (ms / 1000)) };
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Checkpoint + dd baseline + cold restore; the guest goes on in the restored QEMU. */
async function checkpointRound(guest: Guest, tag: string, opts: { dd: boolean; heartbeat: boolean; viaSocketToo?: boolean }): Promise<Record<string, unknown>> {
  const dir = join(guest.res.dir, `ckpt-${guest.name}-${tag}`);
  mkdirSync(dir);
  const mem = await guest.meminfo();
  let socketSave: { manifest: VmCheckpointManifest; save: SaveLog } | null = null;
  const socketDir = join(guest.res.dir, `ckpt-${guest.name}-${tag}-socket`);
  if (opts.viaSocketToo) {
    mkdirSync(socketDir);
    const saveLog = saveLogger();
    const manifest = await checkpointVm(guest.vm, socketDir, { log: saveLog.log, via: 'socket' });
    socketSave = { manifest, save: saveLog.last() };
    await sleep(500);
  }
  const { manifest, restoreMs, savedAt } = await guest.checkpointAndRestore(dir);
  const bytes = manifest.stateBytes;
  const ckMiBps = bytes / MiB / (manifest.saveMs / 1000);
  const out: Record<string, unknown> = {
    guest_meminfo_before: mem,
    state_bytes: bytes,
    state_MiB: toMiB(bytes),
    state_vs_guest_memory: round(bytes / (guest.memoryMiB * MiB), 3),
    save_ms: round(manifest.saveMs),
    save_qemu_stream_ms: guest.lastSaveStreamMs,
    save_via: guest.lastSave.via,
    save_phases_ms: guest.lastSave.phases,
    checkpoint_MiBps: round(ckMiBps),
    restore_ms: round(restoreMs),
    restore_MiBps: round(bytes / MiB / (restoreMs / 1000)),
  };
  if (opts.dd) {
    // same bytes, same directory, right after; five runs, the median (this disk is shared and noisy)
    const runs: Awaited<ReturnType<typeof ddWrite>>[] = [];
    for (let i = 0; i < 5; i++) runs.push(await ddWrite(dir, bytes));
    const ddMiBps = median(runs.map((r) => r.MiBps));
    out.dd_same_bytes = { runs, median_MiBps: ddMiBps };
    out.checkpoint_vs_dd = round(ckMiBps / ddMiBps, 3);
    if (socketSave) {
      const m = socketSave.manifest;
      const MiBps = m.stateBytes / MiB / (m.saveMs / 1000);
      out.socket_checkpoint = { via: socketSave.save.via, state_bytes: m.stateBytes, save_ms: round(m.saveMs), checkpoint_MiBps: round(MiBps), save_phases_ms: socketSave.save.phases };
      out.socket_checkpoint_vs_dd = round(MiBps / ddMiBps, 3);
    }
  }
  rmSync(socketDir, { recursive: true, force: true });
  if (opts.heartbeat) {
    // on the host's clock: the guest's stop for the save (it runs on afterwards, until the kill)
    out.app_pause_during_save_host_clock_ms = round(guest.res.watcher.maxGap(savedAt[0], savedAt[1] + 2 * REPORT_MS));
    out.app_pause_during_save_guest_clock_ms = guest.res.watcher.guestMaxGap(savedAt[0], savedAt[1] + 3 * REPORT_MS);
  }
  rmSync(dir, { recursive: true, force: true });
  return out;
}

interface WorkloadResult {
  rate_MiBps: number | 'max';
  baseline: { host_max_gap_ms: number; guest_max_gap_ms: number | null };
  stop_control: Record<string, number | null>;
  migrations: Record<string, Record<string, unknown>>;
  dirty_mem: Record<string, unknown>;
}

/** What happened to every migration of the run, by mode (the guest's kernel may not survive one: see the notes). */
type Tally = Record<MigrationMode, { migrations: number; guest_or_app_crashed: number; failed: number }>;

const BASELINE_MS = 2000;

/** The median of each numeric field over the runs that have it. */
function medians(runs: readonly Record<string, unknown>[], keys: readonly string[]): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const k of keys) {
    const xs = runs.map((r) => r[k]).filter((x): x is number => typeof x === 'number');
    out[k] = xs.length ? round(median(xs)) : null;
  }
  return out;
}

const MEDIAN_KEYS = ['total_ms', 'downtime_ms', 'sent_MiB', 'passes', 'postcopy_requests', 'app_max_gap_ms_guest_clock', 'app_max_gap_ms_host_clock'] as const;

/**
 * After a migration: did the guest's kernel report a crash on the console,
 * or did dirty-mem's heartbeat stop (a user-space crash is logged only in
 * dmesg under `quiet`: ask the guest, if it still answers)?
 */
async function damageAfter(guest: Guest, from: number, sinceTo: number, dstConsole: string): Promise<string | null> {
  const w = guest.res.watcher;
  const crash = w.crashSince(from);
  if (crash) return crash;
  if ((w.arrivalsOf.get(dstConsole) ?? []).some((t) => t > sinceTo)) return null;
  const why = await guest
    .ssh("dmesg | grep -E 'traps:|segfault|general protection|BUG|Oops|killed' | tail -2", 20_000)
    .catch((err: unknown) => `(the guest does not answer ssh either: ${(err as Error).message.slice(0, 120)})`);
  return `dirty-mem's heartbeat stopped after the migration ${why.replace(/\s+/g, ' ').trim()}`.slice(0, 300);
}

/** The guest of one memory size, replaced by a freshly booted one when it breaks. */
interface GuestHolder {
  guest: Guest;
  reboots: number;
  reboot(): Promise<void>;
}

/** New guests per memory size after breakages, at most. */
const MAX_REBOOTS = 6;

/**
 * dirty-mem at `rate` (0: holding its region, writing nothing), then
 * `reps` rounds of one migration per mode (interleaved). When the guest or
 * dirty-mem breaks after a migration (or one fails), a new guest is booted
 * and the round goes on, up to MAX_REBOOTS per size (`gaveUp`).
 */
async function workload(holder: GuestHolder, rate: Rate, reps: number, tally: Tally, opts: { keepRunning?: boolean } = {}): Promise<{ result: WorkloadResult; dm: DirtyMem | null; gaveUp: boolean }> {
  let guest = holder.guest;
  const w = guest.res.watcher;
  let dm = new DirtyMem(guest, rate);
  try {
    await dm.start();
  } catch (err) {
    // the guest broke unnoticed (after the last migration of the workload before)
    say(`  dirty-mem did not start (${(err as Error).message.slice(0, 200)}): booting a new guest`);
    await holder.reboot();
    guest = holder.guest;
    dm = new DirtyMem(guest, rate);
    await dm.start();
  }
  // a quiet stretch: the noise floor of both gaps
  const b0 = performance.now();
  await sleep(BASELINE_MS);
  const b1 = performance.now();
  const baseline = { host_max_gap_ms: round(w.maxGap(b0, b1)), guest_max_gap_ms: w.guestMaxGap(b0 + 2 * REPORT_MS, b1) };
  // control: the same QEMU stopped for 100 ms and continued (no migration, nothing cold)
  const c0 = performance.now();
  await guest.vm.pause();
  await sleep(100);
  await guest.vm.resume();
  const c1 = performance.now();
  await sleep(3 * REPORT_MS + 200);
  const stopControl = { stopped_ms: round(c1 - c0), app_max_gap_ms_host_clock: round(w.maxGap(c0, c1 + 2 * REPORT_MS)), app_max_gap_ms_guest_clock: w.guestMaxGap(c0, c1 + 3 * REPORT_MS + 200) };
  const runs: Record<MigrationMode, Record<string, unknown>[]> = { precopy: [], postcopy: [], hybrid: [] };
  const label = rate === 0 ? 'idle' : rate === 'max' ? 'max rate' : `${rate} MiB/s`;
  let gaveUp = false;
  let brokenRuns = 0;
  /** After a breakage: a new guest and a new dirty-mem, or false when out of reboots. */
  const replaceGuest = async (): Promise<boolean> => {
    brokenRuns++;
    if (holder.reboots >= MAX_REBOOTS) {
      say(`  ${MAX_REBOOTS} new guests for this size already: giving up on this workload`);
      return false;
    }
    await holder.reboot();
    guest = holder.guest;
    dm = new DirtyMem(guest, rate);
    await dm.start();
    return true;
  };
  rounds: for (let rep = 0; rep < reps; rep++) {
    for (const mode of MODES) {
      tally[mode].migrations++;
      let r: Awaited<ReturnType<Guest['migrate']>>;
      const from = performance.now();
      try {
        r = await guest.migrate(mode);
      } catch (err) {
        tally[mode].failed++;
        runs[mode].push({ error: (err as Error).message });
        say(`  ${guest.memoryMiB} MiB, ${label}, ${mode}: FAILED: ${(err as Error).message}`);
        if (await replaceGuest()) continue;
        gaveUp = true;
        break rounds;
      }
      // let the report line that covers the switch-over come in
      await sleep(3 * REPORT_MS + 200);
      const hostGap = w.maxGap(r.from, r.to + 2 * REPORT_MS);
      // where the silence was: on the source before it stopped, across the switch, on the destination after
      const srcA = (w.arrivalsOf.get(r.srcConsole) ?? []).filter((t) => t <= r.to);
      const dstA = (w.arrivalsOf.get(r.dstConsole) ?? []).filter((t) => t >= r.from);
      const srcLast = srcA.at(-1) ?? r.from;
      const dstFirst = dstA[0] ?? r.to;
      const guestGap = w.guestMaxGap(r.from, r.to + 3 * REPORT_MS + 200);
      const srcGap = w.longestGap(r.from, srcLast, srcA);
      const dstGap = w.longestGap(dstFirst, r.to + 2 * REPORT_MS, dstA);
      const run: Record<string, unknown> = {
        total_ms: r.totalMs,
        downtime_ms: r.downtimeMs,
        setup_ms: r.setupMs,
        sent_MiB: toMiB(r.transferredBytes),
        passes: r.passes,
        postcopy_started_at_ms: r.postcopyStartedAtMs === null ? null : Math.round(r.postcopyStartedAtMs),
        postcopy_requests: r.postcopyRequests,
        wall_ms: round(r.wallMs),
        // the pause as dirty-mem measured it on the guest's clock (does not contain the stopped time)
        app_max_gap_ms_guest_clock: guestGap,
        // the longest console silence on the host's clock: the pause as seen from outside
        app_max_gap_ms_host_clock: round(hostGap),
        // (…_at_ms: when that silence began, ms after `migrate` was issued)
        host_clock_breakdown: {
          source_max_gap_ms: round(srcGap.ms),
          source_max_gap_at_ms: round(srcGap.startedAt - r.from),
          switchover_gap_ms: round(dstFirst - srcLast),
          switchover_at_ms: round(srcLast - r.from),
          destination_max_gap_ms: round(dstGap.ms),
          destination_max_gap_at_ms: round(dstGap.startedAt - r.from),
        },
      };
      runs[mode].push(run);
      say(`  ${guest.memoryMiB} MiB, ${label}, ${mode}: total ${r.totalMs} ms, downtime ${r.downtimeMs} ms, ${toMiB(r.transferredBytes)} MiB sent, app pause ${guestGap ?? '?'} ms guest clock / ${round(hostGap)} ms host clock`);
      const damage = await damageAfter(guest, from, r.to + 100, r.dstConsole);
      if (damage) {
        tally[mode].guest_or_app_crashed++;
        run.crashed = damage;
        say(`  the guest broke after this ${mode} migration: ${damage}`);
        if (await replaceGuest()) continue;
        gaveUp = true;
        break rounds;
      }
    }
  }
  const migrations: WorkloadResult['migrations'] = {};
  for (const mode of MODES) {
    // a run after which the guest broke is reported, but not in the medians
    const good = runs[mode].filter((r) => !r.crashed && !r.error);
    if (runs[mode].length) migrations[mode] = { ...medians(good, MEDIAN_KEYS), runs: runs[mode] };
  }
  let dirtyMem: Record<string, unknown> = { still_running: true };
  if (gaveUp) dirtyMem = { verified: false, line: 'not verified: the guest broke and no new one was booted' };
  else if (!opts.keepRunning) {
    const end = await dm.stop().catch((err: unknown) => ({ ok: false, line: `the guest does not answer: ${(err as Error).message.slice(0, 200)}` }));
    // the memory of the dirty-mem that ran since the last new guest (if any)
    dirtyMem = { verified: end.ok, line: end.line, ...(brokenRuns ? { after_new_guests: brokenRuns } : {}) };
    if (!end.ok) say(`  dirty-mem did not verify its memory: ${end.line}`);
  }
  return { result: { rate_MiBps: rate, baseline, stop_control: stopControl, migrations, dirty_mem: dirtyMem }, dm: gaveUp ? null : dm, gaveUp };
}

/**
 * Fresh guest, fill-and-free half its memory, then one precopy migration
 * with a small idle dirty-mem heartbeating (the application's pause: the
 * guest reports its free pages while the migration starts), then a
 * checkpoint. A guest that breaks in the migration is no measurement of
 * this: tried again, up to HINT_ATTEMPTS guests.
 */
const HINT_ATTEMPTS = 5;

async function hintRound(image: GuestImage, res: Resources, size: number, hint: boolean, tally: Tally): Promise<Record<string, unknown>> {
  const broken: string[] = [];
  const w = res.watcher;
  for (let attempt = 1; ; attempt++) {
    const guest = new Guest(`hint-${hint ? 'on' : 'off'}-${attempt}`, size, hint, image, res);
    try {
      const bootMs = await guest.boot();
      const fill = Math.floor(size / 2);
      await guest.ssh(`${DIRTY_MEM} --mib ${fill} --rate 0 --seconds 0 --report-ms 1000 >/dev/null`);
      const mem = await guest.meminfo();
      const dm = new DirtyMem(guest, 0, 8);
      await dm.start();
      await sleep(1000);
      tally.precopy.migrations++;
      const from = performance.now();
      const r = await guest.migrate('precopy');
      await sleep(3 * REPORT_MS + 200);
      const damage = await damageAfter(guest, from, r.to + 100, r.dstConsole);
      if (damage) {
        tally.precopy.guest_or_app_crashed++;
        broken.push(damage);
        say(`  free-page-hint ${hint ? 'on' : 'off'}: the guest broke after the migration (${damage}); ${attempt < HINT_ATTEMPTS ? 'again with a new guest' : 'giving up'}`);
        if (attempt < HINT_ATTEMPTS) continue;
        return { broken };
      }
      const srcA = (w.arrivalsOf.get(r.srcConsole) ?? []).filter((t) => t <= r.to);
      const pause = {
        app_max_gap_ms_host_clock: round(w.maxGap(r.from, r.to + 2 * REPORT_MS)),
        app_max_gap_ms_guest_clock: w.guestMaxGap(r.from, r.to + 3 * REPORT_MS + 200),
        source_max_gap_ms: round(w.maxGap(r.from, srcA.at(-1) ?? r.from, srcA)),
      };
      const end = await dm.stop();
      const dir = join(res.dir, `ckpt-${guest.name}`);
      mkdirSync(dir);
      const manifest = await checkpointVm(guest.vm, dir, { log });
      rmSync(dir, { recursive: true, force: true });
      say(
        `  free-page-hint ${hint ? 'on' : 'off'}: precopy sent ${toMiB(r.transferredBytes)} MiB in ${r.totalMs} ms, app pause ${pause.app_max_gap_ms_host_clock} ms; ` +
          `then a checkpoint of ${toMiB(manifest.stateBytes)} MiB`,
      );
      return {
        boot_s: round(bootMs / 1000),
        filled_and_freed_MiB: fill,
        guest_meminfo_after_free: mem,
        precopy: { total_ms: r.totalMs, downtime_ms: r.downtimeMs, sent_MiB: toMiB(r.transferredBytes), sent_bytes: r.transferredBytes, ...pause },
        dirty_mem_8MiB_idle: { verified: end.ok, line: end.line },
        checkpoint_after_it: { state_MiB: toMiB(manifest.stateBytes), state_bytes: manifest.stateBytes, save_ms: round(manifest.saveMs) },
        ...(broken.length ? { earlier_guests_broke: broken } : {}),
      };
    } finally {
      await guest.kill();
    }
  }
}

const rateKey = (rate: Rate) => (rate === 0 ? 'idle' : rate === 'max' ? 'dirty_max' : `dirty_${rate}MiBps`);

/** One memory size: boot, idle checkpoint, the workloads, a checkpoint while dirtying. */
async function sizeRound(image: GuestImage, res: Resources, size: number, plan: MigrationBenchPlan, tally: Tally, meta: { qemu: string }): Promise<Record<string, unknown>> {
  const s0 = performance.now();
  say(`${size} MiB guest: booting`);
  const holder: GuestHolder = {
    guest: new Guest(`mig${size}`, size, plan.freePageHint, image, res),
    reboots: 0,
    async reboot() {
      await this.guest.kill();
      this.reboots++;
      say(`  booting a new ${size} MiB guest`);
      this.guest = new Guest(`mig${size}-${this.reboots + 1}`, size, plan.freePageHint, image, res);
      await this.guest.boot();
    },
  };
  const bootMs = await holder.guest.boot();
  if (meta.qemu === 'unknown') {
    const v = await holder.guest.vm.qmp.queryVersion();
    meta.qemu = `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`;
  }
  say(`  booted in ${round(bootMs / 1000)} s; checkpoint of the idle guest`);
  const out: Record<string, unknown> = { boot_s: round(bootMs / 1000) };
  const idleCk = await checkpointRound(holder.guest, 'idle', { dd: true, heartbeat: false, viaSocketToo: true });
  out.checkpoint_idle = idleCk;
  say(
    `  checkpoint ${idleCk.state_MiB} MiB in ${idleCk.save_ms} ms (QEMU's stream ${idleCk.save_qemu_stream_ms} ms; ${idleCk.checkpoint_vs_dd}x dd; ` +
      `through the socket instead: ${idleCk.socket_checkpoint_vs_dd}x dd), restore ${idleCk.restore_ms} ms`,
  );
  const rates: Rate[] = [0, ...plan.rates];
  let running: DirtyMem | null = null;
  for (const [i, rate] of rates.entries()) {
    const last = i === rates.length - 1;
    const r = await workload(holder, rate, plan.reps, tally, { keepRunning: last });
    out[rateKey(rate)] = r.result;
    if (r.gaveUp) {
      // no guest left to measure with for this size: what there is goes out as it is
      out.gave_up = `the guest broke after ${MAX_REBOOTS + 1} migrations: the rest of this size was skipped`;
      await holder.guest.kill();
      out.new_guests_after_breakage = holder.reboots;
      out.seconds = round((performance.now() - s0) / 1000);
      return out;
    }
    if (last) running = r.dm;
  }
  const guest = holder.guest;
  const lastRate = rates.at(-1)!;
  if (!running) {
    running = new DirtyMem(guest, lastRate);
    await running.start();
  }
  say(`  checkpoint + kill + restore with dirty-mem writing (${rateKey(lastRate)})`);
  const ckFrom = performance.now();
  const loaded = await checkpointRound(guest, 'loaded', { dd: true, heartbeat: true });
  await sleep(500);
  const crash = res.watcher.crashSince(ckFrom);
  // a guest that no longer answers (broken by the last migration, or by this) verifies nothing
  const end = crash
    ? { ok: false, line: `the guest crashed: ${crash}` }
    : await running.stop().catch((err: unknown) => ({ ok: false, line: `the guest does not answer: ${(err as Error).message.slice(0, 200)}` }));
  loaded.dirty_mem = { rate_MiBps: lastRate, verified: end.ok, line: end.line };
  say(`  checkpoint ${loaded.state_MiB} MiB in ${loaded.save_ms} ms (${loaded.checkpoint_vs_dd}x dd), restore ${loaded.restore_ms} ms`);
  if (!end.ok) say(`  dirty-mem did not verify its memory after the checkpoint and restore: ${end.line}`);
  out.checkpoint_while_dirtying = loaded;
  await guest.kill();
  out.new_guests_after_breakage = holder.reboots;
  out.seconds = round((performance.now() - s0) / 1000);
  return out;
}

export async function benchMigration(args: readonly string[] = []): Promise<unknown> {
  const plan = parseMigrationArgs(args);
  const t0 = performance.now();
  if (!existsSync(join(packageRoot(), 'build', 'mpi', 'dirty-mem'))) {
    throw new Error('build/mpi/dirty-mem is missing: run `npm run build:mpi` (the guest image takes the MPI programs from build/mpi/)');
  }
  say('guest image (cached after the first build)');
  const image = await buildImage({ log, onProgress: (s) => say(`  ${s}`) });
  // (the image is cached; a rebuild, or waiting for another builder, is not part of the benchmark)
  const imageSeconds = (performance.now() - t0) / 1000;
  const res = new Resources();
  const onSignal = (sig: NodeJS.Signals) => {
    process.stderr.write(`bench migration: ${sig}: killing ${res.vms.size} QEMU process(es), removing ${res.dir}\n`);
    res.killNow();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const meta = { qemu: 'unknown' };
  const tally: Tally = {
    precopy: { migrations: 0, guest_or_app_crashed: 0, failed: 0 },
    postcopy: { migrations: 0, guest_or_app_crashed: 0, failed: 0 },
    hybrid: { migrations: 0, guest_or_app_crashed: 0, failed: 0 },
  };
  const sizes: Record<string, Record<string, unknown>> = {};
  let hints: Record<string, unknown> = { skipped: 'not asked for (--quick or --hint-size 0)' };
  try {
    for (const size of plan.sizes) sizes[String(size)] = await sizeRound(image, res, size, plan, tally, meta);
    if (plan.hintSize !== null) {
      say(`free-page hints on vs off, ${plan.hintSize} MiB guests`);
      const on = await hintRound(image, res, plan.hintSize, true, tally);
      const off = await hintRound(image, res, plan.hintSize, false, tally);
      const sent = (x: Record<string, unknown>) => (x.precopy as { sent_bytes: number } | undefined)?.sent_bytes;
      const ck = (x: Record<string, unknown>) => (x.checkpoint_after_it as { state_bytes: number } | undefined)?.state_bytes;
      const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? round(a / b, 3) : null);
      hints = {
        size_MiB: plan.hintSize,
        on,
        off,
        precopy_sent_on_vs_off: ratio(sent(on), sent(off)),
        // the checkpoint stops the guest first, so hints play no part in it; but the pages skipped by the
        // hinted migration are zero on its destination, and zero pages cost next to nothing in a checkpoint
        checkpoint_after_it_bytes_on_vs_off: ratio(ck(on), ck(off)),
      };
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await res.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  const workloads = ['idle', ...plan.rates.map(rateKey)];
  const summary = Object.entries(sizes).flatMap(([size, s]) =>
    workloads.flatMap((wl) =>
      MODES.filter((mode) => (s[wl] as WorkloadResult | undefined)?.migrations[mode]).map((mode) => {
        const m = (s[wl] as WorkloadResult).migrations[mode]!;
        return {
          size_MiB: Number(size),
          workload: wl,
          mode,
          total_ms: m.total_ms ?? null,
          downtime_ms: m.downtime_ms ?? null,
          sent_MiB: m.sent_MiB ?? null,
          app_pause_guest_clock_ms: m.app_max_gap_ms_guest_clock ?? null,
          app_pause_host_clock_ms: m.app_max_gap_ms_host_clock ?? null,
          runs: (m.runs as unknown[]).length,
          ...((m.runs as Record<string, unknown>[]).some((r) => r.crashed || r.error) ? { a_run_broke_the_guest: true } : {}),
        };
      }),
    ),
  );
  const ratios = Object.values(sizes).flatMap((s) =>
    ['checkpoint_idle', 'checkpoint_while_dirtying'].flatMap((k) => {
      const r = (s[k] as { checkpoint_vs_dd?: number } | undefined)?.checkpoint_vs_dd;
      return r === undefined ? [] : [r];
    }),
  );
  const crashes = MODES.reduce((n, m) => n + tally[m].guest_or_app_crashed, 0);
  const notes = [
    'A stopped VM\'s clock stops too (TCG\'s TSC, like kvmclock): dirty-mem\'s own gap (guest clock) never contains the stopped time; the host-clock gap (console heartbeats) does. stop_control shows it: a 100 ms stop of the same QEMU.',
    'host_clock_breakdown splits the silence on the host clock: on the source while precopy runs, across the switch-over (QEMU\'s downtime plus the time until the destination\'s first heartbeat: page requests in postcopy, and under TCG an empty translation cache), and on the destination afterwards.',
  ];
  if (!plan.freePageHint) {
    notes.push(
      'The main matrix runs with free-page hinting off: with it on, precopy starts by having the guest report its free pages, which kept this 1-vCPU guest ' +
        'busy for 0.1-1.7 s (the source-side gap; postcopy and hybrid turn hinting off in QEMU), and precopy broke the guest more often. free_page_hint compares both.',
    );
  }
  if (crashes > 0) {
    const byMode = MODES.map((m) => `${m} ${tally[m].guest_or_app_crashed}/${tally[m].migrations}`).join(', ');
    notes.push(
      `The guest broke (a kernel oops/panic on the console, or dirty-mem killed by a fault) after ${crashes} migrations (${byMode}): ` +
        'that workload was cut short and a new guest booted; such runs are listed but left out of the medians. ' +
        'A breakage is charged to the migration after which it showed; the damage may come from the one before. ' +
        'Outside this bench (same guest, 100 MiB/s dirtying): 8 precopy migrations in a row broke the guest in about half the tries, over TCP or a Unix socket, with or without the balloon, ' +
        'with MTTCG or thread=single; 46 postcopy migrations and 26 checkpoint/restores in a row did not: a write the dirty log misses while precopy copies a running TCG guest (QEMU 7.2; QEMU 10.0 broke none of 150 here).',
    );
  }
  if (!plan.quick && seconds - imageSeconds > 15 * 60) notes.push(`this run took ${round((seconds - imageSeconds) / 60)} min: over the 15 min budget of the default matrix`);
  return {
    benchmark: 'migration',
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown', qemu: meta.qemu, accel: 'tcg', guest_vcpus: 1, node: process.version },
    image: { id: image.id, kernel: image.kernelVersion },
    plan: {
      sizes_MiB: plan.sizes,
      quick: plan.quick,
      modes: MODES,
      workloads: Object.fromEntries(
        [0, ...plan.rates].map((r) => [rateKey(r), r === 0 ? `dirty-mem holding ${REGION_MIB} MiB, writing nothing` : `dirty-mem rewriting a ${REGION_MIB} MiB region at ${r === 'max' ? 'full speed' : `${r} MiB/s`}`]),
      ),
      migration: { transport: 'tcp 127.0.0.1 (two QEMU processes)', ...MIGRATION_OPTIONS, bandwidth: 'unlimited (16 GiB/s cap)', downtime_limit_ms: 'QEMU default (300)' },
      heartbeat_ms: HEARTBEAT_MS,
      report_ms: REPORT_MS,
      reps: plan.reps,
      free_page_hint_in_main_matrix: plan.freePageHint,
      free_page_hint_comparison_size_MiB: plan.hintSize,
    },
    sizes,
    free_page_hint: hints,
    migration_outcomes: tally,
    summary,
    targets: {
      checkpoint_vs_dd_min: 0.8,
      checkpoint_vs_dd: ratios,
      checkpoint_vs_dd_met: ratios.every((r) => r >= 0.8),
      socket_checkpoint_vs_dd: Object.values(sizes).flatMap((s) => {
        const r = (s.checkpoint_idle as { socket_checkpoint_vs_dd?: number } | undefined)?.socket_checkpoint_vs_dd;
        return r === undefined ? [] : [r];
      }),
      idle_checkpoint_vs_guest_memory: Object.fromEntries(Object.entries(sizes).map(([k, s]) => [k, (s.checkpoint_idle as { state_vs_guest_memory: number }).state_vs_guest_memory])),
    },
    notes,
    image_seconds: round(imageSeconds),
    seconds: round(seconds),
    seconds_without_image: round(seconds - imageSeconds),
  };
}
