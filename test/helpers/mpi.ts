/** Running real MPI jobs from tests: plain mpirun and symbio-mpirun. */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controllerRequest } from '../../src/controller/client.js';
import type { Reply } from '../../src/controller/protocol.js';
import { descriptionPath, runtimeDir, type JobDescription } from '../../src/agent/runtime-dir.js';
import { packageRoot } from '../../src/util/package-root.js';
import { runProcess, startProcess, type Finished } from '../../src/util/run-process.js';

export const root = packageRoot();

// Journals of the jobs tests start go to a private directory, not the machine's.
if (process.env.SYMBIO_STATE_DIR === undefined) {
  const stateDir = mkdtempSync(join(tmpdir(), 'symbio-test-state-'));
  process.env.SYMBIO_STATE_DIR = stateDir;
  process.on('exit', () => rmSync(stateDir, { recursive: true, force: true }));
}
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
      const reply = await jobRequest(desc.socket, { op: 'status' }, 5_000).catch(() => null);
      const ranks = reply && reply.ok ? statusRanks(reply.result) : [];
      if (ranks.filter((r) => r.state === 'running').length >= running) return desc;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`job ${jobId} did not come up within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One request to a job's controller socket (the embedded controller of its launcher). */
export function jobRequest(socket: string, request: object, timeoutMs: number): Promise<Reply> {
  return controllerRequest({ unix: socket }, request, { timeoutMs });
}

/** Every rank of a `status` result, over all nodes. */
export function statusRanks(result: unknown): { worldRank: number; state: string; pid: number }[] {
  const nodes = (result as { nodes?: { ranks: { worldRank: number; state: string; pid: number }[] }[] }).nodes ?? [];
  return nodes.flatMap((n) => n.ranks);
}
