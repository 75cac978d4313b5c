/**
 * What the operator commands do, as plain functions (commander only wires
 * options to these; tests call them directly).
 */
import { controlRequest } from '../agent/control-server.js';
import { listJobs, type JobDescription } from '../agent/runtime-dir.js';

export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** The job to talk to: the one named, or the only one running. */
export function pickJob(jobId: string | undefined): JobDescription {
  const jobs = listJobs();
  if (jobId) {
    const j = jobs.find((x) => x.jobId === jobId);
    if (!j) throw new CliError(`no running job '${jobId}' (running: ${jobs.map((x) => x.jobId).join(', ') || 'none'})`, 2);
    return j;
  }
  if (jobs.length === 0) throw new CliError('no running symbio job found (start one with symbio-mpirun)', 2);
  if (jobs.length > 1) throw new CliError(`several jobs are running; pick one with --job: ${jobs.map((x) => x.jobId).join(', ')}`, 2);
  return jobs[0]!;
}

export async function requestJob(jobId: string | undefined, request: object, timeoutMs: number): Promise<unknown> {
  const job = pickJob(jobId);
  const reply = await controlRequest(job.socket, request, timeoutMs);
  if (!reply.ok) throw new CliError(`${job.jobId}: ${reply.error}`, 1);
  return reply.result;
}
