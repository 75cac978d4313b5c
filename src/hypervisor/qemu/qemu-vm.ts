/**
 * QemuVm: one QEMU process and its QMP connection. Starts QEMU from a
 * VmSpec, runs the VM-level commands (status, pause/resume, NIC unplug and
 * plug) and stops it. Migration and checkpoints build on it (migration.ts,
 * checkpoint.ts).
 *
 * QEMU's own stderr is kept (the last few KiB): when QEMU refuses an option
 * or dies, that text is the explanation, and it goes into the error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import type { Logger } from '../../log.js';
import { pidAlive } from '../../util/process.js';
import { QmpClient, QmpConnectionError, type QmpStatus } from '../qmp/client.js';
import { nicDeviceProps, parseVmSpec, qemuArgv, type NicSpec, type VmSpec, type VmSpecInput } from './vm-spec.js';

export interface QemuExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** The end of QEMU's stderr. */
  readonly stderr: string;
}

export interface QemuStartOptions {
  log: Logger;
  /** QEMU up and QMP negotiated within this; default 15 s. */
  startTimeoutMs?: number;
  /** default timeout of QMP commands; default 30 s. */
  commandTimeoutMs?: number;
  /** Keep QEMU running when this process exits (the virtual cluster's VMs); default false. */
  detached?: boolean;
}

const STDERR_KEEP = 8192;


/** `text` reads the end of a file each time (a detached QEMU's stderr). */
function fileTail(path: string): { text: string } {
  return {
    get text() {
      try {
        return readFileSync(path, 'utf8').slice(-STDERR_KEEP);
      } catch {
        return '';
      }
    },
    set text(_v: string) {
      // written by QEMU itself
    },
  };
}

/** A QEMU this process did not start: what QemuVm needs of a ChildProcess. */
class AttachedProcess {
  gone = false;
  constructor(readonly pid: number) {}
  get exitCode(): number | null {
    return this.gone || !pidAlive(this.pid) ? 0 : null;
  }
  readonly signalCode = null;
  kill(signal: NodeJS.Signals): boolean {
    try {
      process.kill(this.pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}

export class QemuStartError extends Error {
  override name = 'QemuStartError';
}

export class QemuVm {
  readonly spec: VmSpec;
  readonly qmp: QmpClient;
  readonly pid: number;
  /** Resolves when the QEMU process has exited (never rejects). */
  readonly exited: Promise<QemuExit>;
  #child: ChildProcess | AttachedProcess;
  #log: Logger;
  #stderr: { text: string };
  /** Set when symbio itself ends the process: its exit is then no news. */
  readonly #ending = { asked: false };

  private constructor(spec: VmSpec, child: ChildProcess | AttachedProcess, qmp: QmpClient, exited: Promise<QemuExit>, stderr: { text: string }, log: Logger) {
    this.spec = spec;
    this.#child = child;
    this.pid = child.pid!;
    this.qmp = qmp;
    this.exited = exited;
    this.#stderr = stderr;
    this.#log = log;
  }

  get name(): string {
    return this.spec.name;
  }

  /** Whether the process is still there. */
  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** QEMU's stderr so far (the last 8 KiB). */
  get stderr(): string {
    return this.#stderr.text;
  }

  /** The argv this VM was started with (recorded in checkpoints). */
  get argv(): string[] {
    return [this.spec.qemuBinary, ...qemuArgv(this.spec)];
  }

  /**
   * Start QEMU and connect to its QMP socket. Fails with QemuStartError
   * carrying QEMU's own message if it exits first (a bad option, a locked
   * disk, a missing file), or if QMP is not up within the start timeout.
   */
  static async start(input: VmSpecInput | VmSpec, o: QemuStartOptions): Promise<QemuVm> {
    const spec = parseVmSpec(input);
    const log = o.log.child({ vm: spec.name });
    const argv = qemuArgv(spec);
    // A stale socket from a crashed QEMU would make connect() reach nobody
    // (ECONNREFUSED until the timeout) or, worse, pass for the new one.
    rmSync(spec.qmpSocket, { force: true });
    log.debug({ argv: [spec.qemuBinary, ...argv] }, 'starting QEMU');
    // A detached QEMU outlives this process, so its stderr cannot be a pipe
    // (the pipe would also keep this process alive): it goes to a file
    // next to the QMP socket, read back when needed.
    const stderrFile = o.detached ? `${spec.qmpSocket}.stderr` : null;
    const errFd = stderrFile ? openSync(stderrFile, 'a', 0o600) : null;
    const child = spawn(spec.qemuBinary, argv, { stdio: ['ignore', 'ignore', errFd ?? 'pipe'], detached: o.detached ?? false });
    if (errFd !== null) closeSync(errFd);
    const stderr = stderrFile ? fileTail(stderrFile) : { text: '' };
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr.text = (stderr.text + d).slice(-STDERR_KEEP);
    });
    const exited = new Promise<QemuExit>((resolve) => {
      child.once('error', (err) => {
        stderr.text += `\n${err.message}`;
        resolve({ code: null, signal: null, stderr: stderr.text });
      });
      child.once('exit', (code, signal) => {
        // stderr may still hold the last words: let them arrive first
        const done = () => resolve({ code, signal, stderr: stderr.text.trim() });
        if (!child.stderr || child.stderr.readableEnded) done();
        else child.stderr.once('close', done);
      });
    });
    if (o.detached) child.unref();
    const describe = (e: QemuExit) =>
      e.code === null && e.signal === null
        ? `cannot run ${spec.qemuBinary}: ${e.stderr.trim()} (install QEMU: apt-get install qemu-system-x86)`
        : `QEMU for VM ${spec.name} exited during start-up (${e.signal ?? `code ${e.code}`})${e.stderr ? `: ${e.stderr}` : ''}`;
    let qmp: QmpClient;
    try {
      qmp = await Promise.race([
        QmpClient.connect(spec.qmpSocket, { log, connectTimeoutMs: o.startTimeoutMs ?? 15_000, retryMs: 25, commandTimeoutMs: o.commandTimeoutMs ?? 30_000 }),
        exited.then((e) => Promise.reject(new QemuStartError(describe(e)))),
      ]);
    } catch (err) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      const e = await exited;
      if (err instanceof QemuStartError) throw err;
      throw new QemuStartError(
        e.code === null && e.signal === null
          ? describe(e)
          : `QEMU for VM ${spec.name} did not bring up QMP: ${(err as Error).message}${e.stderr ? `; QEMU said: ${e.stderr}` : ''}`,
        { cause: err },
      );
    }
    const vm = new QemuVm(spec, child, qmp, exited, stderr, log);
    void exited.then((e) => {
      if (e.code !== 0 && !vm.#ending.asked) log.warn({ code: e.code, signal: e.signal, stderr: e.stderr.slice(-500) }, 'QEMU exited');
      else log.debug('QEMU exited');
    });
    return vm;
  }

  /**
   * Take over a QEMU that is already running (started earlier by another
   * symbio process, as the virtual cluster's VMs are): connect to its QMP
   * socket; its exit is seen as the QMP connection closing and the pid
   * going away. `spec` must be the one it was started with.
   */
  static async attach(input: VmSpecInput | VmSpec, pid: number, o: Omit<QemuStartOptions, 'detached'>): Promise<QemuVm> {
    const spec = parseVmSpec(input);
    const log = o.log.child({ vm: spec.name });
    if (!pidAlive(pid)) throw new QemuStartError(`QEMU of VM ${spec.name} (pid ${pid}) is not running`);
    const qmp = await QmpClient.connect(spec.qmpSocket, { log, connectTimeoutMs: o.startTimeoutMs ?? 5_000, retryMs: 25, commandTimeoutMs: o.commandTimeoutMs ?? 30_000 });
    const proc = new AttachedProcess(pid);
    const stderr = fileTail(`${spec.qmpSocket}.stderr`);
    const exited = (async (): Promise<QemuExit> => {
      await qmp.closed;
      // The socket closes a moment before the process is gone (or because
      // we closed it, and QEMU runs on): watch the pid with a timer that
      // does not keep this process alive.
      while (pidAlive(pid)) await new Promise((r) => setTimeout(r, 100).unref());
      proc.gone = true;
      return { code: null, signal: null, stderr: '' };
    })();
    return new QemuVm(spec, proc, qmp, exited, stderr, log);
  }

  async status(): Promise<QmpStatus> {
    return this.qmp.queryStatus();
  }

  /** Stop the vCPUs (STOP). */
  async pause(): Promise<void> {
    await this.qmp.stop();
  }

  /** Run the vCPUs (RESUME). */
  async resume(): Promise<void> {
    await this.qmp.cont();
  }

  nic(id: string): NicSpec {
    const nic = this.spec.nics.find((n) => n.id === id);
    if (!nic) throw new Error(`VM ${this.name} has no NIC ${id} (it has: ${this.spec.nics.map((n) => n.id).join(', ') || 'none'})`);
    return nic;
  }

  /**
   * Hot-unplug a device and wait until the guest has let go of it. QEMU
   * answers device_del at once; the device is gone only at DEVICE_DELETED
   * for its id (an earlier DEVICE_DELETED names only a backend path, with no
   * `device`: not ours). The guest must cooperate (ACPI hotplug); one that
   * does not leaves the device in place, hence the timeout.
   */
  async detachDevice(id: string, timeoutMs = 10_000): Promise<{ ms: number }> {
    const t0 = performance.now();
    const gone = this.qmp.waitForEvent('DEVICE_DELETED', (e) => (e.data as { device?: string } | undefined)?.device === id, timeoutMs);
    gone.catch(() => undefined); // awaited below; a device_del failure must not leave it unhandled
    await this.qmp.execute('device_del', { id });
    try {
      await gone;
    } catch (err) {
      throw new Error(`VM ${this.name}: device ${id} was not released by the guest within ${timeoutMs} ms (is its hotplug driver loaded?)`, { cause: err });
    }
    const ms = performance.now() - t0;
    this.#log.debug({ device: id, ms: Math.round(ms) }, 'device detached');
    return { ms };
  }

  /** Plug a NIC of the spec back in, with its address and MAC. */
  async attachNic(id: string): Promise<{ ms: number }> {
    const t0 = performance.now();
    await this.qmp.execute('device_add', nicDeviceProps(this.nic(id)));
    const ms = performance.now() - t0;
    this.#log.debug({ device: id, ms: Math.round(ms) }, 'NIC attached');
    return { ms };
  }

  /** Whether QEMU currently has a device with this id (qom-list of the peripheral container). */
  async hasDevice(id: string): Promise<boolean> {
    const list = await this.qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' });
    return list.some((p) => p.name === id);
  }

  /**
   * Stop QEMU: `quit` over QMP, SIGTERM if that does not end it within
   * `graceMs`, then SIGKILL. Never throws; resolves once the process is gone.
   */
  async shutdown(graceMs = 3000): Promise<QemuExit> {
    this.#ending.asked = true;
    if (this.running) {
      try {
        await this.qmp.quit({ timeoutMs: graceMs });
      } catch (err) {
        if (!(err instanceof QmpConnectionError)) this.#log.debug({ err }, 'quit failed; signalling');
      }
      if (!(await this.#exitsWithin(graceMs))) {
        this.#child.kill('SIGTERM');
        if (!(await this.#exitsWithin(graceMs))) this.#child.kill('SIGKILL');
      }
    }
    await this.qmp.close().catch(() => undefined);
    return this.exited;
  }

  /** SIGKILL, as a crash would (tests of failure handling). */
  async kill(): Promise<QemuExit> {
    this.#ending.asked = true;
    if (this.running) this.#child.kill('SIGKILL');
    await this.qmp.close().catch(() => undefined);
    return this.exited;
  }

  async #exitsWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const r = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return r;
  }
}
