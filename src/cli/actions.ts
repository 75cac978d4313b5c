/**
 * What the operator commands do, as plain functions (commander only wires
 * options to these; tests call them directly). Exit codes: 0 success,
 * 1 the operation failed (and was rolled back), 2 bad input or nothing to
 * talk to, 3 refused (busy, already held, nothing it can act on).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { listJobs, runtimeDir, type JobDescription } from '../agent/runtime-dir.js';
import { controllerRequest, parseAddress, type ControllerAddress } from '../controller/client.js';
import { CONTROLLER_SOCKET_NAME } from '../controller/standalone.js';
import { defaultStateDir, journaledJobs, readEvents, type JournalEvent } from '../controller/journal.js';
import type { Reply } from '../controller/protocol.js';

export const EXIT = { ok: 0, failed: 1, usage: 2, refused: 3 } as const;

export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failed,
    /** A result to print even though the command failed (--json). */
    readonly result?: unknown,
  ) {
    super(message);
  }
}

/** The job to talk to: the one named, or the only one running. */
export function pickJob(jobId: string | undefined): JobDescription {
  const jobs = listJobs();
  if (jobId) {
    const j = jobs.find((x) => x.jobId === jobId);
    if (!j) throw new CliError(`no running job '${jobId}' (running: ${jobs.map((x) => x.jobId).join(', ') || 'none'})`, EXIT.usage);
    return j;
  }
  if (jobs.length === 0) throw new CliError('no running symbio job found (start one with symbio-mpirun)', EXIT.usage);
  if (jobs.length > 1) throw new CliError(`several jobs are running; pick one with --job: ${jobs.map((x) => x.jobId).join(', ')}`, EXIT.usage);
  return jobs[0]!;
}

export interface Target {
  readonly address: ControllerAddress;
  readonly job?: string;
  readonly token?: string;
}

/**
 * Where a command goes: --controller when given; else the named (or only)
 * running job's controller (embedded in its launcher, or the standalone one
 * it attached to); else a standalone controller's socket in the runtime dir.
 */
export function resolveTarget(opts: { job?: string; controller?: string; token?: string }): Target {
  const token = opts.token === undefined ? {} : { token: opts.token };
  if (opts.controller) {
    try {
      return { address: parseAddress(opts.controller), ...(opts.job ? { job: opts.job } : {}), ...token };
    } catch (err) {
      throw new CliError((err as Error).message, EXIT.usage);
    }
  }
  const jobs = listJobs();
  const standalone = join(runtimeDir(), CONTROLLER_SOCKET_NAME);
  if (jobs.length === 0 && existsSync(standalone)) return { address: { unix: standalone }, ...(opts.job ? { job: opts.job } : {}), ...token };
  const j = pickJob(opts.job);
  return { address: parseAddress(j.socket), job: j.jobId, ...token };
}

/** One request; a refusal or failure becomes a CliError with the right exit code. */
export async function ask(target: Target, request: Record<string, unknown>, timeoutMs: number, onProgress?: (p: unknown) => void): Promise<unknown> {
  let reply: Reply & { result?: unknown };
  try {
    reply = await controllerRequest(target.address, { ...request, ...(target.job && !('job' in request) && request.op !== 'jobs' && request.op !== 'plugins' ? { job: target.job } : {}) }, {
      timeoutMs,
      ...(target.token === undefined ? {} : { token: target.token }),
      ...(onProgress ? { onProgress } : {}),
    });
  } catch (err) {
    throw new CliError((err as Error).message, EXIT.usage);
  }
  if (reply.ok) return reply.result;
  const code = reply.code === 'refused' ? EXIT.refused : reply.code === 'bad-request' || reply.code === 'denied' ? EXIT.usage : EXIT.failed;
  throw new CliError(`${target.job ? `${target.job}: ` : ''}${reply.error}`, code, reply.result);
}

export interface OperateOptions {
  /** Quiesce limit; the controller's configured one when absent. */
  readonly timeoutMs?: number;
  readonly params?: Record<string, unknown>;
  readonly reason?: string;
  /** Phase changes as they happen (a progress display). */
  readonly onProgress?: (p: { op: string; kind: string; phase: string }) => void;
}

/** Run one operation (quiesce, freeze, resume, checkpoint, migrate, restart) on a job. */
export async function operate(target: Target, kind: string, o: OperateOptions = {}): Promise<Record<string, unknown>> {
  // how long to wait for the answer: queued behind another operation, plus our own
  const waitMs = (o.timeoutMs ?? 3_600_000 / 12) * 3 + 10_000;
  const result = await ask(
    target,
    {
      op: 'operate',
      kind,
      progress: o.onProgress !== undefined,
      ...(o.timeoutMs === undefined ? {} : { timeoutMs: o.timeoutMs }),
      ...(o.reason ? { reason: o.reason } : {}),
      ...(o.params ? { params: o.params } : {}),
    },
    waitMs,
    o.onProgress as ((p: unknown) => void) | undefined,
  );
  return result as Record<string, unknown>;
}

/** A finished job's events come from its journal on disk (no controller needed). */
export async function events(opts: { job?: string; controller?: string; token?: string; stateDir?: string; since?: number; limit?: number }): Promise<JournalEvent[]> {
  const filter = { ...(opts.since === undefined ? {} : { since: opts.since }), ...(opts.limit === undefined ? {} : { limit: opts.limit }) };
  const stateDir = opts.stateDir ?? defaultStateDir();
  if (opts.job && !opts.controller && !listJobs().some((j) => j.jobId === opts.job)) {
    const known = journaledJobs(stateDir).map((j) => j.job);
    if (!known.includes(opts.job)) throw new CliError(`no job '${opts.job}' running or journaled in ${stateDir} (journaled: ${known.slice(0, 5).join(', ') || 'none'})`, EXIT.usage);
    return readEvents(stateDir, opts.job, filter);
  }
  if (!opts.job && !opts.controller && listJobs().length === 0) {
    const latest = journaledJobs(stateDir)[0];
    if (!latest) throw new CliError(`no running job and no journal in ${stateDir}`, EXIT.usage);
    return readEvents(stateDir, latest.job, filter);
  }
  const target = resolveTarget(opts);
  return (await ask(target, { op: 'events', ...filter }, 10_000)) as JournalEvent[];
}

// ---- human output ----

export function table(header: readonly string[], rows: readonly (readonly unknown[])[]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i]!))).join('  ')).join('\n');
}

export function formatEvent(e: JournalEvent): string {
  const t = new Date(e.at).toISOString().replace('T', ' ').replace('Z', '');
  const { at: _at, type, job: _job, ...rest } = e;
  const detail = Object.entries(rest)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v, roundFloats) : typeof v === 'number' ? String(roundFloats('', v)) : String(v)}`)
    .join(' ');
  return `${t}  ${type.padEnd(20)} ${detail}`;
}

/** Durations print as 8.23, not 8.234130859375 (the journal keeps them exact). */
function roundFloats(_key: string, v: unknown): unknown {
  return typeof v === 'number' && !Number.isInteger(v) ? Math.round(v * 100) / 100 : v;
}

/** "quiescing 12 ms, freezing 1 ms, ..." */
export function formatPhases(phases: readonly { name: string; ms: number }[]): string {
  return phases.map((p) => `${p.name} ${p.ms < 10 ? p.ms.toFixed(2) : Math.round(p.ms)} ms`).join(', ');
}
