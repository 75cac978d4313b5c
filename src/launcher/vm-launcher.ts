/**
 * symbio-mpirun for a job whose ranks run in the VMs of a local virtual
 * cluster (`--vcluster NAME`). The controller is embedded here, as for a
 * host job; its nodes are the VMs' in-guest agents, reached over each VM's
 * virtio-serial port. mpirun itself runs in the first VM, started by that
 * VM's agent, so it survives a migration or a restart of every VM from a
 * checkpoint; its output comes back over the same port with byte offsets,
 * and each byte is printed here once, whatever was replayed.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { constants as osConstants } from 'node:os';
import { GuestAgentLink, type GuestExit, type GuestOutput } from '../controller/guest-agent-link.js';
import { Controller } from '../controller/controller.js';
import { ControllerServer } from '../controller/server.js';
import { defaultStateDir } from '../controller/journal.js';
import { descriptionPath, ensureRuntimeDir, publishDescription, socketPath } from '../agent/runtime-dir.js';
import { guestSegmentName } from '../agent/guest-agent.js';
import { VclusterJobVms } from '../vcluster/job-vms.js';
import { ClusterError } from '../vcluster/state.js';
import type { PluginHost } from '../host/plugin-host.js';
import { VmJobSupervisor } from '../controller/vm-job-supervisor.js';
import { pidAlive } from '../util/process.js';
import { withShim, type ParsedMpirun } from './mpirun-args.js';
import type { Logger } from '../log.js';

/** Where the guest image puts symbio (scripts/guest, image/symbio-payload). */
export const GUEST_SYMBIO_ROOT = '/opt/symbio';
const GUEST_SHIM = `${GUEST_SYMBIO_ROOT}/build/Release/libsymbio-shim.so`;

export interface VmLaunchOptions {
  readonly parsed: ParsedMpirun;
  readonly cluster: string;
  readonly log: Logger;
  readonly resumeTimeoutMs: number;
  readonly stallMs: number;
  readonly quiesceTimeoutMs: number;
  readonly stateDir?: string;
  readonly whenBusy?: 'queue' | 'refuse';
  readonly queueLimit?: number;
  readonly checkpointDir?: string;
  readonly checkpointKeep?: number;
  readonly startPlugins?: (controller: Controller) => Promise<PluginHost | null>;
  readonly onStarted?: (ctx: { jobId: string; socket: string; controller: Controller; links: ReadonlyMap<string, GuestAgentLink>; backend: VclusterJobVms }) => void;
  /** Failure detection: agent silence after which a VM counts as lost, ms. */
  readonly agentLostMs?: number;
  /** Where the job's output goes (default: this process's stdout/stderr). */
  readonly output?: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
}

export class VmLaunchError extends Error {
  override name = 'VmLaunchError';
}

/** mpirun's argv inside the head VM: the shim and segment for every rank, the VMs as hosts unless the user named some. */
export function guestMpirunArgv(parsed: ParsedMpirun, vms: readonly string[], jobId: string): string[] {
  const args = withShim(parsed.args, GUEST_SHIM, guestSegmentName(jobId));
  const has = (...flags: string[]) => parsed.args.some((a) => flags.includes(a.split('=')[0]!));
  const extra: string[] = [];
  if (!has('--host', '-host', '-H', '--hostfile', '-hostfile', '--machinefile', '-machinefile')) {
    const per = parsed.np ? Math.ceil(parsed.np / vms.length) : 1;
    extra.push('--host', vms.map((v) => `${v}:${per}`).join(','));
  }
  if (!has('--allow-run-as-root')) extra.push('--allow-run-as-root');
  return ['mpirun', ...extra, ...args];
}

export async function launchInVms(o: VmLaunchOptions): Promise<{ exitCode: number; jobId: string }> {
  const { parsed, log } = o;
  const jobId = parsed.symbio.jobId ?? `job-${randomBytes(4).toString('hex')}`;
  const jlog = log.child({ job: jobId });
  const llog = jlog.child({ component: 'launcher' });
  let backend: VclusterJobVms;
  let vms: string[];
  try {
    backend = new VclusterJobVms(o.cluster, parsed.symbio.vms ?? null, jlog);
    vms = backend.list().map((v) => v.id);
  } catch (err) {
    if (err instanceof ClusterError) throw new VmLaunchError(err.message);
    throw err;
  }
  if (vms.length === 0) throw new VmLaunchError(`virtual cluster ${o.cluster} has no VMs`);
  const np = parsed.np;
  const command = ['mpirun', ...parsed.args];
  const stateDir = o.stateDir ?? defaultStateDir();
  const controller = new Controller({
    stateDir,
    whenBusy: o.whenBusy ?? 'queue',
    queueLimit: o.queueLimit ?? 4,
    quiesce: { timeoutMs: o.quiesceTimeoutMs, stallMs: o.stallMs },
    log: jlog.child({ component: 'controller' }),
  });
  const dir = ensureRuntimeDir();
  const socket = socketPath(dir, jobId);
  const server = new ControllerServer(controller, { unixPath: socket, log: jlog.child({ component: 'server' }), plugins: () => plugins?.list() ?? [] });
  let plugins: PluginHost | null = null;
  const links = new Map<string, GuestAgentLink>();
  const description = descriptionPath(dir, jobId);
  let wroteDescription = false;
  const out = o.output ?? { stdout: process.stdout, stderr: process.stderr };
  const printed = { stdout: 0, stderr: 0 };
  let head: GuestAgentLink | null = null;
  let supervisor: VmJobSupervisor | null = null;
  // A signal goes to mpirun in the guest; if the job has not ended a while
  // later (its VM unreachable), or on a second signal, we stop waiting: the
  // user's Ctrl-C always ends symbio-mpirun.
  let giveUp: ((e: GuestExit) => void) | null = null;
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    const exit: GuestExit = { code: 128 + ((osConstants.signals as Record<string, number>)[sig] ?? 0), signal: sig, stdout: 0, stderr: 0 };
    if (++signalled > 1) {
      llog.warn({ signal: sig }, 'second signal: leaving without the job');
      giveUp?.(exit);
      return;
    }
    llog.warn({ signal: sig }, 'signal: passing it to mpirun in the guest');
    head?.request('signal', { signal: sig }).catch((err: Error) => llog.warn({ err: err.message }, 'could not pass the signal on'));
    setTimeout(() => giveUp?.(exit), 10_000).unref();
  };
  try {
    try {
      await server.listen();
    } catch (err) {
      throw new VmLaunchError(`job id ${jobId}: ${(err as Error).message}; pick another --job-id`);
    }
    const slotsPerVm = np ? Math.ceil(np / vms.length) : 64;
    for (const vm of vms) {
      links.set(
        vm,
        new GuestAgentLink(vm, {
          socketPath: () => backend.agentSocket(vm),
          job: { job: jobId, slots: Math.max(slotsPerVm, np ?? 0, 1), worldSize: Math.max(np ?? 64, 1), resumeTimeoutMs: o.resumeTimeoutMs, stallMs: o.stallMs },
          log: jlog.child({ component: 'guest-link', vm }),
        }),
      );
    }
    try {
      await Promise.all([...links.values()].map((l) => l.connect(30_000)));
    } catch (err) {
      throw new VmLaunchError(`${(err as Error).message} (is the cluster up, and was its image built with the agent?)`);
    }
    controller.registerJob({ id: jobId, command, np, launcherPid: process.pid });
    // the cluster's slots are the hosts policies see; those the job does not use are its spares
    controller.addHosts(backend.places().map((p) => ({ name: p.name, spare: !p.used })));
    controller.attachVmJob(jobId, { backend, links, checkpointDir: o.checkpointDir ?? join(stateDir, 'checkpoints', jobId), keep: o.checkpointKeep ?? 3 });
    plugins = (await o.startPlugins?.(controller)) ?? null;
    supervisor = new VmJobSupervisor({
      job: jobId,
      controller,
      plugins,
      links,
      probe: { vms: () => backend.watch(), alive: pidAlive, qmpStatus: (vm, ms) => backend.qmpStatus(vm, ms) },
      log: jlog,
      ...(o.agentLostMs ? { agentLostMs: o.agentLostMs } : {}),
    });
    for (const [vm, l] of links) {
      l.on('rank-exit', (r) => {
        if (r.finalized) return;
        const host = backend.list().find((v) => v.id === vm)?.host;
        void supervisor!.report({ kind: 'rank-dead', job: jobId, vm, ...(host ? { host } : {}), message: `rank ${r.worldRank} (pid ${r.pid}) in ${vm} exited without finalizing`, at: Date.now() });
      });
    }
    wroteDescription = true;
    publishDescription(description, { jobId, pid: process.pid, socket, segment: guestSegmentName(jobId), startedAt: new Date().toISOString(), command });

    head = links.get(vms[0]!)!;
    // Exits of mpirun, tagged with the supervisor's generation when seen: a
    // restart from a checkpoint supersedes exits of the job's previous life.
    const exits: { exit: GuestExit; generation: number; final?: boolean }[] = [];
    let wakeExit: (() => void) | null = null;
    const pushExit = (exit: GuestExit, final = false): void => {
      exits.push({ exit, generation: supervisor!.generation, final });
      wakeExit?.();
    };
    giveUp = (e) => pushExit(e, true);
    head.on('exit', (e) => pushExit(e));
    // an exit event lost with a connection: the agent says so again when the link reconnects
    head.on('connected', (r) => {
      if (r.run?.exit) pushExit({ code: r.run.exit.code, signal: r.run.exit.signal, stdout: r.run.stdout, stderr: r.run.stderr });
    });
    const nextExit = async (): Promise<{ exit: GuestExit; generation: number; final?: boolean }> => {
      while (exits.length === 0) await new Promise<void>((r) => (wakeExit = r));
      return exits.shift()!;
    };
    head.on('output', (chunk: GuestOutput) => {
      // a restarted VM says again what it said after its checkpoint: print each byte once
      const skip = printed[chunk.stream] - chunk.offset;
      if (skip >= chunk.data.length) return;
      const data = skip > 0 ? chunk.data.subarray(skip) : chunk.data;
      printed[chunk.stream] = chunk.offset + chunk.data.length;
      out[chunk.stream].write(data);
    });
    const argv = guestMpirunArgv(parsed, vms, jobId);
    llog.info({ np, vms, cluster: o.cluster, socket }, 'starting job in the VMs');
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    await head.request('run', { argv, env: { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' } });
    o.onStarted?.({ jobId, socket, controller, links, backend });
    supervisor.start();
    let exitCode: number;
    for (;;) {
      const next = await Promise.race([nextExit(), supervisor.lost]);
      if ('kind' in next) {
        // the job cannot go on (its VMs are gone and nothing brought them back): say why, do not hang
        out.stderr.write(`symbio-mpirun: job ${jobId} lost: ${next.reason}\n`);
        exitCode = 1;
        break;
      }
      const verdict = next.final ? 'final' : await supervisor.settleExit(next.exit.code, next.generation);
      llog.info({ code: next.exit.code, verdict }, 'mpirun exited');
      if (verdict === 'superseded') continue;
      exitCode = next.exit.code;
      break;
    }
    supervisor.stop();
    controller.jobFinished(jobId, exitCode);
    llog.info({ exitCode }, 'job finished');
    await Promise.all([...links.values()].map((l) => l.request('close', { job: jobId }, 3_000).catch(() => undefined)));
    return { exitCode, jobId };
  } finally {
    supervisor?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (wroteDescription) rmSync(description, { force: true });
    await plugins?.close();
    await server.close();
    await controller.close();
    for (const l of links.values()) l.close('job ended');
  }
}
