/**
 * One MPI job running in the VMs of a local virtual cluster, from the
 * controller's side, wherever that controller runs: embedded in
 * symbio-mpirun (launcher/vm-launcher.ts) or standalone (`symbio
 * controller`, asked by a symbio-mpirun elsewhere with `vm-job`).
 *
 * It connects to every VM's in-guest agent, registers the job with the
 * controller as a VM job (so checkpoint / migrate / restart act on it),
 * watches it for failures (VmJobSupervisor), has the first VM's agent start
 * mpirun, passes the job's output on once per byte (a restarted VM says
 * again what it said after its checkpoint), and tells when the job has
 * really ended: an exit of mpirun from before a restart is superseded, and
 * a job that no policy could bring back ends as lost.
 */
import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { GuestAgentLink, type GuestExit, type GuestOutput } from './guest-agent-link.js';
import type { Controller } from './controller.js';
import { VmJobSupervisor } from './vm-job-supervisor.js';
import { guestSegmentName } from '../agent/guest-agent.js';
import { VclusterJobVms } from '../vcluster/job-vms.js';
import { ClusterError } from '../vcluster/state.js';
import type { PluginHost } from '../host/plugin-host.js';
import { pidAlive } from '../util/process.js';
import { withShim } from '../launcher/mpirun-args.js';
import type { Logger } from '../log.js';

/** Where the guest image puts symbio (scripts/guest, image/symbio-payload). */
export const GUEST_SYMBIO_ROOT = '/opt/symbio';
const GUEST_SHIM = `${GUEST_SYMBIO_ROOT}/build/Release/libsymbio-shim.so`;

export interface VmJobSpec {
  readonly jobId: string;
  readonly cluster: string;
  /** The VMs to run in (names); all of the cluster's when null. */
  readonly vms: readonly string[] | null;
  /** mpirun's arguments as the user gave them (symbio's own taken out); the program is a path in the guests. */
  readonly args: readonly string[];
  readonly np: number | null;
  readonly resumeTimeoutMs: number;
  readonly stallMs: number;
  /** Default: <stateDir>/checkpoints/<job>. */
  readonly checkpointDir?: string;
  readonly checkpointKeep?: number;
  /** Failure detection: agent silence after which a VM counts as lost, ms. */
  readonly agentLostMs?: number;
  /** The launcher's pid, for the journal. */
  readonly launcherPid?: number;
}

export class VmJobError extends Error {
  override name = 'VmJobError';
}

/** mpirun's argv inside the head VM: the shim and segment for every rank, the VMs as hosts unless the user named some. */
export function guestMpirunArgv(mpirun: { readonly args: readonly string[]; readonly np: number | null }, vms: readonly string[], jobId: string): string[] {
  const args = withShim(mpirun.args, GUEST_SHIM, guestSegmentName(jobId));
  const has = (...flags: string[]) => mpirun.args.some((a) => flags.includes(a.split('=')[0]!));
  const extra: string[] = [];
  if (!has('--host', '-host', '-H', '--hostfile', '-hostfile', '--machinefile', '-machinefile')) {
    const per = mpirun.np ? Math.ceil(mpirun.np / vms.length) : 1;
    extra.push('--host', vms.map((v) => `${v}:${per}`).join(','));
  }
  if (!has('--allow-run-as-root')) extra.push('--allow-run-as-root');
  return ['mpirun', ...extra, ...args];
}

export interface VmJobEvents {
  /** Output of the job, each byte once. */
  output: [{ stream: 'stdout' | 'stderr'; data: Buffer }];
}

export type VmJobEnd = { readonly exitCode: number; readonly lost: string | null };

interface SeenExit {
  readonly exit: GuestExit;
  readonly generation: number;
  readonly final: boolean;
}

export class VmJob extends EventEmitter<VmJobEvents> {
  readonly backend: VclusterJobVms;
  readonly links = new Map<string, GuestAgentLink>();
  readonly vms: readonly string[];
  #supervisor: VmJobSupervisor | null = null;
  readonly #log: Logger;
  readonly #printed = { stdout: 0, stderr: 0 };
  readonly #exits: SeenExit[] = [];
  #wakeExit: (() => void) | null = null;
  #closed = false;

  private constructor(
    readonly spec: VmJobSpec,
    private readonly controller: Controller,
    log: Logger,
  ) {
    super();
    this.#log = log;
    try {
      this.backend = new VclusterJobVms(spec.cluster, spec.vms, log);
      this.vms = this.backend.list().map((v) => v.id);
    } catch (err) {
      if (err instanceof ClusterError) throw new VmJobError(err.message);
      throw err;
    }
    if (this.vms.length === 0) throw new VmJobError(`virtual cluster ${spec.cluster} has no VMs`);
  }

  /** The mpirun command line as journaled and described. */
  get command(): string[] {
    return ['mpirun', ...this.spec.args];
  }

  /**
   * Reach every VM's agent, register the job as a VM job and watch it. The
   * plugins (policies that act on failures) come from `startPlugins`, called
   * once the job is registered, or are the controller's own.
   */
  static async open(spec: VmJobSpec, o: { controller: Controller; log: Logger; startPlugins?: () => Promise<PluginHost | null> }): Promise<{ job: VmJob; plugins: PluginHost | null }> {
    const job = new VmJob(spec, o.controller, o.log);
    try {
      const plugins = await job.#open(o.startPlugins);
      return { job, plugins };
    } catch (err) {
      job.close();
      throw err;
    }
  }

  async #open(startPlugins?: () => Promise<PluginHost | null>): Promise<PluginHost | null> {
    const { spec, controller, backend } = this;
    const np = spec.np;
    const slotsPerVm = np ? Math.ceil(np / this.vms.length) : 64;
    for (const vm of this.vms) {
      this.links.set(
        vm,
        new GuestAgentLink(vm, {
          socketPath: () => backend.agentSocket(vm),
          job: { job: spec.jobId, slots: Math.max(slotsPerVm, np ?? 0, 1), worldSize: Math.max(np ?? 64, 1), resumeTimeoutMs: spec.resumeTimeoutMs, stallMs: spec.stallMs },
          log: this.#log.child({ component: 'guest-link', vm }),
        }),
      );
    }
    try {
      await Promise.all([...this.links.values()].map((l) => l.connect(30_000)));
    } catch (err) {
      throw new VmJobError(`${(err as Error).message} (is the cluster up, and was its image built with the agent?)`);
    }
    controller.registerJob({ id: spec.jobId, command: this.command, np, ...(spec.launcherPid === undefined ? {} : { launcherPid: spec.launcherPid }) });
    // the cluster's slots are the hosts policies see; those the job does not use are its spares
    controller.addHosts(backend.places().map((p) => ({ name: p.name, spare: !p.used })));
    controller.attachVmJob(spec.jobId, {
      backend,
      links: this.links,
      checkpointDir: spec.checkpointDir ?? join(controller.options.stateDir, 'checkpoints', spec.jobId),
      keep: spec.checkpointKeep ?? 3,
    });
    const plugins = (await startPlugins?.()) ?? null;
    const supervisor = new VmJobSupervisor({
      job: spec.jobId,
      controller,
      plugins,
      links: this.links,
      probe: { vms: () => backend.watch(), alive: pidAlive, qmpStatus: (vm, ms) => backend.qmpStatus(vm, ms) },
      log: this.#log,
      ...(spec.agentLostMs ? { agentLostMs: spec.agentLostMs } : {}),
    });
    this.#supervisor = supervisor;
    for (const [vm, l] of this.links) {
      l.on('rank-exit', (r) => {
        if (r.finalized) return;
        const host = backend.list().find((v) => v.id === vm)?.host;
        void supervisor.report({ kind: 'rank-dead', job: spec.jobId, vm, ...(host ? { host } : {}), message: `rank ${r.worldRank} (pid ${r.pid}) in ${vm} exited without finalizing`, at: Date.now() });
      });
    }
    const head = this.#head;
    head.on('exit', (e) => this.#pushExit(e));
    // an exit event lost with a connection: the agent says so again when the link reconnects
    head.on('connected', (r) => {
      if (r.run?.exit) this.#pushExit({ code: r.run.exit.code, signal: r.run.exit.signal, stdout: r.run.stdout, stderr: r.run.stderr });
    });
    head.on('output', (chunk: GuestOutput) => {
      // a restarted VM says again what it said after its checkpoint: pass each byte on once
      const skip = this.#printed[chunk.stream] - chunk.offset;
      if (skip >= chunk.data.length) return;
      const data = skip > 0 ? chunk.data.subarray(skip) : chunk.data;
      this.#printed[chunk.stream] = chunk.offset + chunk.data.length;
      this.emit('output', { stream: chunk.stream, data });
    });
    return plugins;
  }

  get #head(): GuestAgentLink {
    return this.links.get(this.vms[0]!)!;
  }

  #pushExit(exit: GuestExit, final = false): void {
    this.#exits.push({ exit, generation: this.#supervisor?.generation ?? 0, final });
    this.#wakeExit?.();
  }

  /** Have the first VM's agent start mpirun, then watch for failures. */
  async start(): Promise<void> {
    const argv = guestMpirunArgv(this.spec, this.vms, this.spec.jobId);
    this.#log.info({ np: this.spec.np, vms: this.vms, cluster: this.spec.cluster }, 'starting job in the VMs');
    await this.#head.request('run', { argv, env: { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' } });
    this.#supervisor!.start();
  }

  /** Pass a signal to mpirun in the head VM. */
  signal(sig: NodeJS.Signals): Promise<unknown> {
    return this.#head.request('signal', { signal: sig });
  }

  /** Stop waiting for the job: end with this exit (the user insisted). */
  giveUp(exit: GuestExit): void {
    this.#pushExit(exit, true);
  }

  /** The job's end: its exit code, or why it was lost (exit code 1). The controller is told. */
  async wait(): Promise<VmJobEnd> {
    const supervisor = this.#supervisor!;
    let end: VmJobEnd;
    for (;;) {
      const next = await Promise.race([this.#nextExit(), supervisor.lost]);
      if ('kind' in next) {
        end = { exitCode: 1, lost: next.reason };
        break;
      }
      const verdict = next.final ? 'final' : await supervisor.settleExit(next.exit.code, next.generation);
      this.#log.info({ code: next.exit.code, verdict }, 'mpirun exited');
      if (verdict === 'superseded') continue;
      end = { exitCode: next.exit.code, lost: null };
      break;
    }
    supervisor.stop();
    this.controller.jobFinished(this.spec.jobId, end.exitCode);
    this.#log.info({ exitCode: end.exitCode, lost: end.lost }, 'job finished');
    await Promise.all([...this.links.values()].map((l) => l.request('close', { job: this.spec.jobId }, 3_000).catch(() => undefined)));
    return end;
  }

  async #nextExit(): Promise<SeenExit> {
    while (this.#exits.length === 0) await new Promise<void>((r) => (this.#wakeExit = r));
    return this.#exits.shift()!;
  }

  close(why = 'job ended'): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#supervisor?.stop();
    for (const l of this.links.values()) l.close(why);
  }
}
