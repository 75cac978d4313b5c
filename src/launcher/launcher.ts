/**
 * symbio-mpirun: run an Open MPI job with the shim in every rank and the node
 * agent in this process. Exits with the job's exit code. Held ranks are
 * always resumed before we leave, whatever happens.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { constants as osConstants } from 'node:os';
import { NodeAgent } from '../agent/node-agent.js';
import { ControllerSession } from '../agent/controller-session.js';
import { descriptionPath, ensureRuntimeDir, publishDescription, socketPath } from '../agent/runtime-dir.js';
import { Controller } from '../controller/controller.js';
import { ControllerServer } from '../controller/server.js';
import { describeAddress, parseAddress, type ControllerAddress } from '../controller/client.js';
import { defaultStateDir } from '../controller/journal.js';
import type { PluginHost } from '../host/plugin-host.js';
import { ChaosQuiescer, type ChaosReport } from './chaos.js';
import { findExecutable, parseMpirunArgs, UsageError, withShim } from './mpirun-args.js';
import { nativeArtifact } from '../util/package-root.js';
import { launchInVms, launchInVmsVia, VmLaunchError, type VmLaunchOptions } from './vm-launcher.js';
import type { Logger } from '../log.js';

export interface LaunchOptions {
  /** mpirun's arguments, with symbio's own options mixed in (see mpirun-args). */
  readonly argv: readonly string[];
  readonly log: Logger;
  /** Defaults for what the command line does not say (from the configuration). */
  readonly resumeTimeoutMs?: number;
  readonly stallMs?: number;
  readonly quiesceTimeoutMs?: number;
  readonly stateDir?: string;
  readonly whenBusy?: 'queue' | 'refuse';
  readonly queueLimit?: number;
  readonly hosts?: readonly { readonly name: string; readonly spare: boolean }[];
  /** A standalone controller to attach to, when the command line does not name one. */
  readonly controller?: string;
  readonly controllerToken?: string;
  /** Starts the configured plugins against the embedded controller (run's wiring; none in tests). */
  readonly startPlugins?: (controller: Controller) => Promise<PluginHost | null>;
  /** Checkpoints of VM jobs: where (default <stateDir>/checkpoints/<job>) and how many to keep. */
  /** This job's checkpoint directory (default: <checkpointRoot or stateDir/checkpoints>/<job>). */
  readonly checkpointDir?: string;
  /** Where jobs' checkpoint directories go (the configuration's checkpoint.dir). */
  readonly checkpointRoot?: string;
  readonly checkpointKeep?: number;
  /** Called once a VM job runs (tests). */
  readonly onVmStarted?: VmLaunchOptions['onStarted'];
  /** Where a VM job's output goes (default: our stdout/stderr). */
  readonly vmOutput?: VmLaunchOptions['output'];
  /** Called once the job runs (tests use it to reach the agent). */
  readonly onStarted?: (ctx: { agent: NodeAgent; jobId: string; socket: string; controller: Controller | null }) => void;
}

export interface LaunchResult {
  readonly exitCode: number;
  readonly jobId: string;
  readonly chaos: ChaosReport | null;
}

/** A problem with the user's input or machine: one line, exit code 2. */
export class LaunchError extends Error {
  override name = 'LaunchError';
}

const DEFAULT_SLOTS_WITHOUT_NP = 256;

export function resolveMpirun(): string {
  const mpirun = process.env.SYMBIO_MPIRUN ?? findExecutable('mpirun');
  if (!mpirun) {
    throw new LaunchError('mpirun not found in PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or set SYMBIO_MPIRUN');
  }
  const v = spawnSync(mpirun, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const text = `${v.stdout ?? ''}${v.stderr ?? ''}`;
  const code = (v.error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT' || code === 'EACCES') {
    // a path that does not exist (or cannot be run) is missing, not "not Open MPI"
    const from = process.env.SYMBIO_MPIRUN === undefined ? '' : ' (SYMBIO_MPIRUN)';
    throw new LaunchError(`cannot run mpirun ${mpirun}${from}: ${code === 'ENOENT' ? 'no such file' : 'permission denied'}: install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or set SYMBIO_MPIRUN`);
  }
  if (v.error || !/Open MPI|OpenRTE/.test(text)) {
    throw new LaunchError(`${mpirun} is not Open MPI's mpirun (symbio's shim needs Open MPI): ${v.error?.message ?? text.split('\n')[0] ?? ''}`.trim());
  }
  return mpirun;
}

export function resolveShim(): string {
  const shim = process.env.SYMBIO_SHIM ?? nativeArtifact('libsymbio-shim.so');
  if (!existsSync(shim)) {
    throw new LaunchError(`the symbio shim is not built (${shim} missing): run npm run build`);
  }
  return shim;
}

/** The standalone controller's address from the command line or the configuration; TCP needs the token. */
function standaloneAddress(text: string, token: string | undefined): ControllerAddress {
  let address: ControllerAddress;
  try {
    address = parseAddress(text);
  } catch (err) {
    throw new LaunchError((err as Error).message);
  }
  if (address.tcp && !token) throw new LaunchError(`controller ${text} is on TCP: set controller.tokenFile in symbio.yaml`);
  return address;
}

export async function launch(opts: LaunchOptions): Promise<LaunchResult> {
  const { log } = opts;
  let parsed;
  try {
    parsed = parseMpirunArgs(opts.argv);
  } catch (err) {
    if (err instanceof UsageError) throw new LaunchError(err.message);
    throw err;
  }
  if (!parsed.program) throw new LaunchError('no program to run: symbio-mpirun [mpirun options] <program> [args]');
  if (parsed.symbio.vcluster) {
    // the program is a path in the guests: not looked for here
    const via = parsed.symbio.controller ?? opts.controller;
    try {
      if (via) {
        const address = standaloneAddress(via, opts.controllerToken);
        const r = await launchInVmsVia({
          parsed,
          cluster: parsed.symbio.vcluster,
          address,
          ...(opts.controllerToken === undefined ? {} : { token: opts.controllerToken }),
          ...(parsed.symbio.resumeTimeoutMs ?? opts.resumeTimeoutMs ? { resumeTimeoutMs: parsed.symbio.resumeTimeoutMs ?? opts.resumeTimeoutMs } : {}),
          log,
          ...(opts.vmOutput ? { output: opts.vmOutput } : {}),
        });
        return { exitCode: r.exitCode, jobId: r.jobId, chaos: null };
      }
      const r = await launchInVms({
        parsed,
        cluster: parsed.symbio.vcluster,
        log,
        resumeTimeoutMs: parsed.symbio.resumeTimeoutMs ?? opts.resumeTimeoutMs ?? 60_000,
        stallMs: opts.stallMs ?? 2_000,
        quiesceTimeoutMs: opts.quiesceTimeoutMs ?? 30_000,
        ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
        ...(opts.whenBusy ? { whenBusy: opts.whenBusy } : {}),
        ...(opts.queueLimit ? { queueLimit: opts.queueLimit } : {}),
        ...(opts.checkpointDir ? { checkpointDir: opts.checkpointDir } : {}),
        ...(opts.checkpointRoot ? { checkpointRoot: opts.checkpointRoot } : {}),
        ...(opts.checkpointKeep ? { checkpointKeep: opts.checkpointKeep } : {}),
        ...(opts.startPlugins ? { startPlugins: opts.startPlugins } : {}),
        ...(opts.onVmStarted ? { onStarted: opts.onVmStarted } : {}),
        ...(opts.vmOutput ? { output: opts.vmOutput } : {}),
      });
      return { exitCode: r.exitCode, jobId: r.jobId, chaos: null };
    } catch (err) {
      if (err instanceof VmLaunchError) throw new LaunchError(err.message);
      throw err;
    }
  }
  if (!findExecutable(parsed.program)) {
    throw new LaunchError(`program '${parsed.program}' not found (not an executable file, nor in PATH)`);
  }
  const mpirun = resolveMpirun();
  const shim = resolveShim();
  const jobId = parsed.symbio.jobId ?? `job-${randomBytes(4).toString('hex')}`;
  const jlog = log.child({ job: jobId });
  // component loggers hang off the job's, never off each other (pino would repeat the key)
  const llog = jlog.child({ component: 'launcher' });
  const np = parsed.np;
  const slots = np ?? DEFAULT_SLOTS_WITHOUT_NP;
  const resumeTimeoutMs = parsed.symbio.resumeTimeoutMs ?? opts.resumeTimeoutMs ?? 60_000;

  let agent: NodeAgent;
  try {
    agent = new NodeAgent({
      jobId,
      slots,
      worldSize: Math.max(slots, np ?? 0),
      resumeTimeoutMs,
      stallMs: opts.stallMs ?? 2_000,
      log: jlog.child({ component: 'agent' }),
    });
  } catch (err) {
    throw new LaunchError(`cannot create the control segment: ${(err as Error).message}`);
  }
  const dir = ensureRuntimeDir();
  const args = withShim(parsed.args, shim, agent.segmentName);
  const command = ['mpirun', ...parsed.args];
  const controllerAddress = parsed.symbio.controller ?? opts.controller;
  // Embedded (default): a controller in this process, serving the job's own
  // socket. Standalone: our agent attaches to that controller instead.
  let controller: Controller | null = null;
  let server: ControllerServer | null = null;
  let session: ControllerSession | null = null;
  let plugins: PluginHost | null = null;
  let socket: string;
  const description = descriptionPath(dir, jobId);
  let wroteDescription = false;
  let chaos: ChaosQuiescer | null = null;
  let child: ReturnType<typeof spawn> | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    llog.warn({ signal: sig }, 'signal: resuming ranks and stopping the job');
    try {
      if (agent.segment.command().command !== 'run') agent.segment.resume();
    } catch {
      // segment already closed
    }
    child?.kill(sig);
  };
  try {
    if (controllerAddress) {
      const address = standaloneAddress(controllerAddress, opts.controllerToken);
      socket = describeAddress(address);
      session = new ControllerSession(agent, {
        address,
        ...(opts.controllerToken === undefined ? {} : { token: opts.controllerToken }),
        job: jobId,
        node: hostname(),
        register: { command, np, launcherPid: process.pid },
        log: jlog.child({ component: 'session' }),
      });
      try {
        await session.start();
      } catch (err) {
        throw new LaunchError(`cannot attach to the controller: ${(err as Error).message} (is \`symbio controller\` running?)`);
      }
    } else {
      controller = new Controller({
        stateDir: opts.stateDir ?? defaultStateDir(),
        whenBusy: opts.whenBusy ?? 'queue',
        queueLimit: opts.queueLimit ?? 4,
        quiesce: { timeoutMs: opts.quiesceTimeoutMs ?? 30_000, stallMs: opts.stallMs ?? 2_000 },
        ...(opts.hosts ? { hosts: opts.hosts } : {}),
        log: jlog.child({ component: 'controller' }),
      });
      socket = socketPath(dir, jobId);
      server = new ControllerServer(controller, {
        unixPath: socket,
        log: jlog.child({ component: 'server' }),
        plugins: () => plugins?.list() ?? [],
      });
      try {
        await server.listen(); // first: a job id in use must not touch the other job's journal
      } catch (err) {
        throw new LaunchError(`job id ${jobId}: ${(err as Error).message}; pick another --job-id`);
      }
      controller.registerJob({ id: jobId, command, np, launcherPid: process.pid });
      controller.attachNode(jobId, agent);
      plugins = (await opts.startPlugins?.(controller)) ?? null;
      const host = plugins;
      if (host) {
        // A rank that exits without MPI_Finalize is a failure the policies hear of (once per process).
        agent.on('rank-exit', (r) => {
          const slot = agent.snapshot().ranks.find((x) => x.slot === r.slot && x.pid === r.pid);
          if (slot?.state === 'finalized') return;
          void host.failure({ kind: 'rank-dead', job: jobId, host: hostname(), message: `rank ${r.worldRank} (pid ${r.pid}) exited without finalizing`, at: Date.now() });
        });
      }
    }
    wroteDescription = true;
    publishDescription(description, { jobId, pid: process.pid, socket, segment: agent.segmentName, startedAt: new Date().toISOString(), command });
    llog.info({ np, segment: agent.segmentName, socket }, 'starting job');
    child = spawn(mpirun, args, { stdio: 'inherit' });
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const exited = new Promise<number>((resolve) => {
      child!.on('error', (err) => {
        // one line that says what failed; 127 like a shell's "command not found"
        llog.error({ err: err.message }, `cannot start mpirun (${mpirun}): ${(err as NodeJS.ErrnoException).code ?? err.message}`);
        resolve(127);
      });
      child!.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? signalNumber(signal) : 0)));
    });
    opts.onStarted?.({ agent, jobId, socket, controller });
    if (parsed.symbio.chaosQuiesceMs !== undefined) {
      const c = new ChaosQuiescer(agent, {
        intervalMs: parsed.symbio.chaosQuiesceMs,
        maxFrozenMs: 5,
        quiesceTimeoutMs: 10_000,
        log: jlog.child({ component: 'chaos' }),
      });
      chaos = c;
      // cycles start once every rank is attached (a quiesce before that waits for nothing)
      if (np) {
        agent.waitForRanks(np, 120_000).then(() => c.start(), (err: Error) => llog.warn({ err: err.message }, 'chaos not started'));
      } else {
        c.start();
      }
    }
    const exitCode = await exited;
    const report = chaos ? await chaos.stop() : null;
    if (report) {
      llog.info({ chaos: report }, `chaos quiesce: ${report.completed} cycles completed, ${report.unverified} unverified, ${report.aborted} abandoned, ${report.verifyFailures} failed checks`);
      if (parsed.symbio.chaosReport) writeFileSync(parsed.symbio.chaosReport, JSON.stringify(report, null, 2) + '\n');
    }
    controller?.jobFinished(jobId, exitCode);
    session?.finished(exitCode);
    llog.info({ exitCode }, 'job finished');
    return { exitCode, jobId, chaos: report };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (chaos) await chaos.stop();
    if (wroteDescription) rmSync(description, { force: true }); // ours only
    await plugins?.close();
    await server?.close();
    await controller?.close();
    session?.close();
    agent.close();
  }
}

function signalNumber(sig: NodeJS.Signals): number {
  const n = (osConstants.signals as Record<string, number>)[sig];
  return typeof n === 'number' ? n : 0;
}
