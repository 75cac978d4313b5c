/**
 * The local control protocol: one JSON object per line each way over the
 * job's Unix socket. Requests are validated with zod; anything else gets an
 * error reply, never a crash.
 */
import { z } from 'zod';

export const ControlRequest = z.discriminatedUnion('op', [
  z.object({
    op: z.literal('quiesce'),
    id: z.number().int().optional(),
    freeze: z.boolean().default(true),
    timeoutMs: z.number().int().positive().max(3_600_000).default(30_000),
  }).strict(),
  z.object({ op: z.literal('resume'), id: z.number().int().optional() }).strict(),
  z.object({ op: z.literal('status'), id: z.number().int().optional() }).strict(),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;

export type ControlReply =
  | { readonly id?: number; readonly ok: true; readonly result: unknown }
  | { readonly id?: number; readonly ok: false; readonly error: string };

/** Longest request line accepted (a request is tiny; this bounds memory). */
export const MAX_LINE_BYTES = 64 * 1024;
