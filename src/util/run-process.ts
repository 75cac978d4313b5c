/**
 * Start a process and collect its output; resolves once it has exited and
 * its output pipes have closed (every writer gone: an orphaned mpirun that
 * still writes keeps the result open). Used by the demo, the benchmarks and
 * the tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';

export interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  /** Empty when stderr was inherited. */
  readonly stderr: string;
  readonly seconds: number;
}

export interface RunOptions {
  /** Added to this process's environment. */
  readonly env?: NodeJS.ProcessEnv;
  /** 'inherit' shows the child's stderr (progress, logs) instead of collecting it. */
  readonly stderr?: 'pipe' | 'inherit';
}

export function startProcess(cmd: string, args: readonly string[], opts: RunOptions = {}): { child: ChildProcess; done: Promise<Finished> } {
  const t0 = performance.now();
  const errMode = opts.stderr ?? 'pipe';
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', errMode], env: { ...process.env, ...opts.env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (c, s) => resolve([c, s]));
  });
  const closed = (s: NodeJS.ReadableStream | null): Promise<void> =>
    s ? new Promise((resolve) => s.on('close', () => resolve())) : Promise.resolve();
  const done = Promise.all([exited, closed(child.stdout), closed(child.stderr)]).then(([[code, signal]]) => ({
    code,
    signal,
    stdout,
    stderr,
    seconds: (performance.now() - t0) / 1000,
  }));
  return { child, done };
}

export const runProcess = (cmd: string, args: readonly string[], opts?: RunOptions): Promise<Finished> =>
  startProcess(cmd, args, opts).done;
