/** Running real MPI jobs from tests: plain mpirun and symbio-mpirun. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest } from '../../src/agent/control-server.js';
import { descriptionPath, runtimeDir, type JobDescription } from '../../src/agent/runtime-dir.js';
import { packageRoot } from '../../src/util/package-root.js';
import { runProcess, startProcess, type Finished } from '../../src/util/run-process.js';

export const root = packageRoot();
export const mpiCommon = ['--allow-run-as-root', '--oversubscribe'];
export const prog = (name: string): string => join(root, 'build', 'mpi', name);
export const symbioMpirun = join(root, 'bin', 'symbio-mpirun.js');
export const symbioCli = join(root, 'bin', 'symbio.js');

export type { Finished } from '../../src/util/run-process.js';

export const start = (cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = {}) => startProcess(cmd, args, { env });
export const run = (cmd: string, args: readonly string[], env?: NodeJS.ProcessEnv) => runProcess(cmd, args, env ? { env } : {});

export const plainMpirun = (np: number, program: string, args: readonly string[] = []): Promise<Finished> =>
  run('mpirun', [...mpiCommon, '-np', String(np), prog(program), ...args]);

/** Wait until the launcher with this job id has published its socket and at least `running` ranks run. */
export async function waitForJob(jobId: string, running: number, timeoutMs = 60_000): Promise<JobDescription> {
  const t0 = Date.now();
  for (;;) {
    const p = descriptionPath(runtimeDir(), jobId);
    if (existsSync(p)) {
      const desc = JSON.parse(readFileSync(p, 'utf8')) as JobDescription;
      const reply = await controlRequest(desc.socket, { op: 'status' }, 5_000).catch(() => null);
      const ranks = reply && reply.ok ? (reply.result as { ranks: { state: string }[] }).ranks : [];
      if (ranks.filter((r) => r.state === 'running').length >= running) return desc;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`job ${jobId} did not come up within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
