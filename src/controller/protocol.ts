/**
 * The controller's wire protocol: one JSON object per line each way, over a
 * Unix socket (peer credentials checked) or TCP (a shared token first).
 *
 * Clients (the CLI) send requests and get one reply each; `operate` may send
 * progress lines `{id, progress}` before its reply. An agent sends `agent`
 * once; from then on the controller sends it calls `{id, call, ...}` and the
 * agent answers `{id, ok, result|error}`, and pushes `{event}` lines.
 */
import { z } from 'zod';
import { OPERATION_KINDS } from './operation.js';

const id = z.number().int().nonnegative().optional();
const jobId = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'a job id: 1-64 characters from A-Z a-z 0-9 _ . -');

export const ClientRequest = z.discriminatedUnion('op', [
  z.object({ op: z.literal('hello'), id, token: z.string().min(1).max(4096) }).strict(),
  z.object({ op: z.literal('jobs'), id }).strict(),
  z.object({ op: z.literal('status'), id, job: jobId.optional() }).strict(),
  z.object({
    op: z.literal('events'),
    id,
    job: jobId.optional(),
    since: z.number().nonnegative().optional(),
    limit: z.number().int().positive().max(100_000).optional(),
  }).strict(),
  z.object({
    op: z.literal('operate'),
    id,
    job: jobId.optional(),
    kind: z.enum(OPERATION_KINDS as [string, ...string[]]),
    reason: z.string().max(1000).optional(),
    timeoutMs: z.number().int().positive().max(3_600_000).optional(),
    progress: z.boolean().optional(),
    /** Kind-specific: migrate {vms, to, mode}, restart {manifest, hosts}. */
    params: z.record(z.string().max(64), z.unknown()).optional(),
  }).strict(),
  z.object({ op: z.literal('plugins'), id }).strict(),
  /**
   * Run a job in the VMs of a virtual cluster under this controller. Its
   * output comes back as progress lines `{id, progress: {stream, data}}`
   * (data base64), then one reply `{exitCode, lost}` when it has ended.
   */
  z.object({
    op: z.literal('vm-job'),
    id,
    job: jobId,
    cluster: z.string().min(1).max(64),
    vms: z.array(z.string().min(1).max(64)).min(1).max(1000).optional(),
    args: z.array(z.string().max(4096)).max(10_000),
    np: z.number().int().positive().nullable(),
    resumeTimeoutMs: z.number().int().positive().max(3_600_000).optional(),
    launcherPid: z.number().int().optional(),
  }).strict(),
  /** Pass a signal to mpirun of a VM job started with vm-job. */
  z.object({ op: z.literal('vm-job-signal'), id, job: jobId, signal: z.enum(['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGUSR1', 'SIGUSR2']) }).strict(),
  z.object({
    op: z.literal('agent'),
    id,
    job: jobId,
    node: z.string().min(1).max(128),
    token: z.string().max(4096).optional(),
    /** The first agent of a job registers it. */
    register: z
      .object({ command: z.array(z.string().max(4096)).max(10_000), np: z.number().int().positive().nullable(), launcherPid: z.number().int().optional() })
      .strict()
      .optional(),
  }).strict(),
]);
export type ClientRequest = z.infer<typeof ClientRequest>;

export type Reply =
  | { readonly id?: number; readonly ok: true; readonly result: unknown }
  | { readonly id?: number; readonly ok: false; readonly error: string; readonly code?: 'refused' | 'bad-request' | 'failed' | 'denied' };

/** Controller -> agent calls. */
export type AgentCall =
  | { readonly id: number; readonly call: 'report' }
  | { readonly id: number; readonly call: 'hold'; readonly epoch: number }
  | { readonly id: number; readonly call: 'freeze' }
  | { readonly id: number; readonly call: 'resume' }
  | { readonly id: number; readonly call: 'setCatchup'; readonly slot: number; readonly epoch: number; readonly targets: readonly { gid: string; target: number }[] };

/**
 * Agent -> controller pushes (checked by hand in RemoteAgentLink, the hot path):
 *  {event:'report', report: WireReport}   while an operation is under way, every change; and after each command
 *  {event:'heartbeat', at, ranks: [worldRank, state, sent, received][]}   always, every heartbeat period
 *  {event:'changed'}                      a change, without the report
 *  {event:'finished', exitCode}           the job ended
 * and answers to calls: {id, ok: true, result} | {id, ok: false, error}.
 */

/** Longest line accepted: a report of a node with many ranks (sparse counters) fits. */
export const MAX_LINE_BYTES = 16 * 1024 * 1024;
/** Longest line before a client has said who it is. */
export const MAX_FIRST_LINE_BYTES = 64 * 1024;

export function zodMessage(err: z.ZodError): string {
  const issue = err.issues[0];
  if (!issue) return 'invalid';
  return `${issue.path.join('.') || 'request'}: ${issue.message}`;
}
