/**
 * symbio-mpirun: run an Open MPI job with the shim in every rank and the node
 * agent in this process. Exits with the job's exit code. Held ranks are
 * always resumed before we leave, whatever happens.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { constants as osConstants } from 'node:os';
import { NodeAgent } from '../agent/node-agent.js';
import { ControlServer } from '../agent/control-server.js';
import { ensureRuntimeDir } from '../agent/runtime-dir.js';
import { ChaosQuiescer, type ChaosReport } from './chaos.js';
import { findExecutable, parseMpirunArgs, UsageError, withShim } from './mpirun-args.js';
import { nativeArtifact } from '../util/package-root.js';
import type { Logger } from '../log.js';

export interface LaunchOptions {
  /** mpirun's arguments, with symbio's own options mixed in (see mpirun-args). */
  readonly argv: readonly string[];
  readonly log: Logger;
  /** Defaults for what the command line does not say. */
  readonly resumeTimeoutMs?: number;
  readonly stallMs?: number;
  /** Called once the job runs (tests use it to reach the agent). */
  readonly onStarted?: (ctx: { agent: NodeAgent; jobId: string; socket: string }) => void;
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
  if (!findExecutable(parsed.program)) {
    throw new LaunchError(`program '${parsed.program}' not found (not an executable file, nor in PATH)`);
  }
  const mpirun = resolveMpirun();
  const shim = resolveShim();
  const jobId = parsed.symbio.jobId ?? `job-${randomBytes(4).toString('hex')}`;
  const jlog = log.child({ job: jobId });
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
  const server = new ControlServer(agent, dir, {
    jobId,
    pid: process.pid,
    segment: agent.segmentName,
    startedAt: new Date().toISOString(),
    command: ['mpirun', ...parsed.args],
  }, jlog.child({ component: 'control' }));
  let chaos: ChaosQuiescer | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    jlog.warn({ signal: sig }, 'signal: resuming ranks and stopping the job');
    try {
      if (agent.segment.command().command !== 'run') agent.segment.resume();
    } catch {
      // segment already closed
    }
    child?.kill(sig);
  };
  let child: ReturnType<typeof spawn> | null = null;
  try {
    await server.listen();
    jlog.info({ np, segment: agent.segmentName, socket: server.socket }, 'starting job');
    child = spawn(mpirun, args, { stdio: 'inherit' });
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const exited = new Promise<number>((resolve) => {
      child!.on('error', (err) => {
        jlog.error({ err: err.message }, 'mpirun failed to start');
        resolve(127);
      });
      child!.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? signalNumber(signal) : 0)));
    });
    opts.onStarted?.({ agent, jobId, socket: server.socket });
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
        agent.waitForRanks(np, 120_000).then(() => c.start(), (err: Error) => jlog.warn({ err: err.message }, 'chaos not started'));
      } else {
        c.start();
      }
    }
    const exitCode = await exited;
    const report = chaos ? await chaos.stop() : null;
    if (report) {
      jlog.info({ chaos: report }, `chaos quiesce: ${report.completed} cycles completed, ${report.aborted} abandoned, ${report.verifyFailures} failed checks`);
      if (parsed.symbio.chaosReport) writeFileSync(parsed.symbio.chaosReport, JSON.stringify(report, null, 2) + '\n');
    }
    jlog.info({ exitCode }, 'job finished');
    return { exitCode, jobId, chaos: report };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (chaos) await chaos.stop();
    await server.close();
    agent.close();
  }
}

function signalNumber(sig: NodeJS.Signals): number {
  const n = (osConstants.signals as Record<string, number>)[sig];
  return typeof n === 'number' ? n : 0;
}
