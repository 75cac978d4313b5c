/** Running real MPI jobs from tests: plain mpirun and symbio-mpirun. */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../../src/util/package-root.js';

export const root = packageRoot();
export const mpiCommon = ['--allow-run-as-root', '--oversubscribe'];
export const prog = (name: string): string => join(root, 'build', 'mpi', name);
export const symbioMpirun = join(root, 'bin', 'symbio-mpirun.js');
export const symbioCli = join(root, 'bin', 'symbio.js');

export interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly seconds: number;
}

/** Spawn and collect; resolves when stdout/stderr close (every writer gone). */
export function start(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; done: Promise<Finished> } {
  const t0 = performance.now();
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on('exit', (c, s) => resolve([c, s])));
  const closed = (s: NodeJS.ReadableStream): Promise<void> => new Promise((resolve) => s.on('close', () => resolve()));
  const done = Promise.all([exited, closed(child.stdout!), closed(child.stderr!)]).then(([[code, signal]]) => ({
    code, signal, stdout, stderr, seconds: (performance.now() - t0) / 1000,
  }));
  return { child, done };
}

export const run = (cmd: string, args: readonly string[], env?: NodeJS.ProcessEnv): Promise<Finished> => start(cmd, args, env).done;

export const plainMpirun = (np: number, program: string, args: readonly string[] = []): Promise<Finished> =>
  run('mpirun', [...mpiCommon, '-np', String(np), prog(program), ...args]);
