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
import type { GuestAgentLink, GuestExit } from '../controller/guest-agent-link.js';
import { Controller } from '../controller/controller.js';
import { ControllerServer } from '../controller/server.js';
import { defaultStateDir } from '../controller/journal.js';
import { descriptionPath, ensureRuntimeDir, publishDescription, socketPath } from '../agent/runtime-dir.js';
import { guestSegmentName } from '../agent/guest-agent.js';
import type { VclusterJobVms } from '../vcluster/job-vms.js';
import type { PluginHost } from '../host/plugin-host.js';
import { VmJob, VmJobError } from '../controller/vm-job.js';
import type { ParsedMpirun } from './mpirun-args.js';
import { controllerRequest, controllerRequestOn, describeAddress, openConnection, type ControllerAddress } from '../controller/client.js';
import type { Reply } from '../controller/protocol.js';
import type { Logger } from '../log.js';

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
  /** This job's checkpoint directory; default <checkpointRoot>/<job>, <stateDir>/checkpoints/<job>. */
  readonly checkpointDir?: string;
  readonly checkpointRoot?: string;
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

/**
 * The user's Ctrl-C goes to mpirun in the guest; if the job has not ended a
 * while later (its VM unreachable), or on a second signal, symbio-mpirun
 * stops waiting: the user's Ctrl-C always ends it.
 */
export function forwardSignals(o: { pass: (sig: NodeJS.Signals) => Promise<unknown>; giveUp: (e: GuestExit) => void; log: Logger }): () => void {
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    const exit: GuestExit = { code: 128 + ((osConstants.signals as Record<string, number>)[sig] ?? 0), signal: sig, stdout: 0, stderr: 0 };
    if (++signalled > 1) {
      o.log.warn({ signal: sig }, 'second signal: leaving without the job');
      o.giveUp(exit);
      return;
    }
    o.log.warn({ signal: sig }, 'signal: passing it to mpirun in the guest');
    o.pass(sig).catch((err: Error) => o.log.warn({ err: err.message }, 'could not pass the signal on'));
    setTimeout(() => o.giveUp(exit), 10_000).unref();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

export async function launchInVms(o: VmLaunchOptions): Promise<{ exitCode: number; jobId: string }> {
  const { parsed, log } = o;
  const jobId = parsed.symbio.jobId ?? `job-${randomBytes(4).toString('hex')}`;
  const jlog = log.child({ job: jobId });
  const llog = jlog.child({ component: 'launcher' });
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
  let plugins: PluginHost | null = null;
  const server = new ControllerServer(controller, { unixPath: socket, log: jlog.child({ component: 'server' }), plugins: () => plugins?.list() ?? [] });
  const description = descriptionPath(dir, jobId);
  let wroteDescription = false;
  const out = o.output ?? { stdout: process.stdout, stderr: process.stderr };
  let job: VmJob | null = null;
  let unforward = (): void => undefined;
  try {
    try {
      await server.listen();
    } catch (err) {
      throw new VmLaunchError(`job id ${jobId}: ${(err as Error).message}; pick another --job-id`);
    }
    try {
      ({ job, plugins } = await VmJob.open(
        {
          jobId,
          cluster: o.cluster,
          vms: parsed.symbio.vms ?? null,
          args: parsed.args,
          np: parsed.np,
          resumeTimeoutMs: o.resumeTimeoutMs,
          stallMs: o.stallMs,
          ...(o.checkpointDir || o.checkpointRoot ? { checkpointDir: o.checkpointDir ?? join(o.checkpointRoot!, jobId) } : {}),
          ...(o.checkpointKeep ? { checkpointKeep: o.checkpointKeep } : {}),
          ...(o.agentLostMs ? { agentLostMs: o.agentLostMs } : {}),
          launcherPid: process.pid,
        },
        { controller, log: jlog, ...(o.startPlugins ? { startPlugins: () => o.startPlugins!(controller) } : {}) },
      ));
    } catch (err) {
      if (err instanceof VmJobError) throw new VmLaunchError(err.message);
      throw err;
    }
    const running = job;
    wroteDescription = true;
    publishDescription(description, { jobId, pid: process.pid, socket, segment: guestSegmentName(jobId), startedAt: new Date().toISOString(), command: running.command });
    running.on('output', (c) => out[c.stream].write(c.data));
    unforward = forwardSignals({ pass: (sig) => running.signal(sig), giveUp: (e) => running.giveUp(e), log: llog });
    await running.start();
    o.onStarted?.({ jobId, socket, controller, links: running.links, backend: running.backend });
    const end = await running.wait();
    // the job cannot go on (its VMs are gone and nothing brought them back): say why, do not hang
    if (end.lost) out.stderr.write(`symbio-mpirun: job ${jobId} lost: ${end.lost}\n`);
    return { exitCode: end.exitCode, jobId };
  } finally {
    unforward();
    if (wroteDescription) rmSync(description, { force: true });
    await plugins?.close();
    await server.close();
    await controller.close();
    job?.close();
  }
}

export interface RemoteVmLaunchOptions {
  readonly parsed: ParsedMpirun;
  readonly cluster: string;
  /** The standalone controller that runs the job. */
  readonly address: ControllerAddress;
  readonly token?: string;
  readonly resumeTimeoutMs?: number;
  readonly log: Logger;
  readonly output?: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
}

/**
 * symbio-mpirun --vcluster with --symbio-controller: the standalone
 * controller runs the job (it holds the VMs' agent ports, which serve one
 * client each) and streams its output here; its policies act on it, and
 * `symbio migrate|checkpoint|restart --controller` drive it. If this
 * launcher goes away the job goes on under the controller.
 */
export async function launchInVmsVia(o: RemoteVmLaunchOptions): Promise<{ exitCode: number; jobId: string }> {
  const { parsed } = o;
  const jobId = parsed.symbio.jobId ?? `job-${randomBytes(4).toString('hex')}`;
  const llog = o.log.child({ job: jobId, component: 'launcher' });
  const out = o.output ?? { stdout: process.stdout, stderr: process.stderr };
  const where = describeAddress(o.address);
  const token = o.token === undefined ? {} : { token: o.token };
  const s = openConnection(o.address);
  let giveUp: (e: GuestExit) => void = () => undefined;
  const gaveUp = new Promise<GuestExit>((resolve) => (giveUp = resolve));
  const unforward = forwardSignals({
    pass: async (sig) => {
      const r = await controllerRequest(o.address, { op: 'vm-job-signal', job: jobId, signal: sig }, { timeoutMs: 10_000, ...token });
      if (!r.ok) throw new Error(r.error);
    },
    giveUp: (e) => giveUp(e),
    log: llog,
  });
  try {
    llog.info({ controller: where, cluster: o.cluster }, 'asking the controller to run the job in the VMs');
    const request = {
      op: 'vm-job',
      job: jobId,
      cluster: o.cluster,
      ...(parsed.symbio.vms ? { vms: parsed.symbio.vms } : {}),
      args: parsed.args,
      np: parsed.np,
      ...(o.resumeTimeoutMs ? { resumeTimeoutMs: o.resumeTimeoutMs } : {}),
      launcherPid: process.pid,
    };
    const onProgress = (p: unknown): void => {
      const c = p as { stream?: unknown; data?: unknown };
      if ((c.stream === 'stdout' || c.stream === 'stderr') && typeof c.data === 'string') out[c.stream].write(Buffer.from(c.data, 'base64'));
    };
    let reply;
    try {
      // the job lasts as long as it lasts: no limit on the answer
      reply = await Promise.race([controllerRequestOn(s, o.address, request, { timeoutMs: 2 ** 31 - 1, onProgress, ...token }), gaveUp]);
    } catch (err) {
      throw new VmLaunchError(`${(err as Error).message} (is \`symbio controller\` running?)`);
    }
    if ('code' in reply && typeof reply.code === 'number') return { exitCode: reply.code, jobId };
    const r = reply as Reply;
    if (!r.ok) throw new VmLaunchError(`the controller at ${where} did not run the job: ${r.error}`);
    const end = r.result as { exitCode: number; lost: string | null };
    if (end.lost) out.stderr.write(`symbio-mpirun: job ${jobId} lost: ${end.lost}\n`);
    return { exitCode: end.exitCode, jobId };
  } finally {
    unforward();
    s.destroy();
  }
}
