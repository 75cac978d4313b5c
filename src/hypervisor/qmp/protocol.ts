/**
 * The QMP wire protocol (QEMU docs/interop/qmp-spec.rst), apart from any
 * particular command: one JSON object per line over a stream socket; QEMU
 * greets with {"QMP": {"version", "capabilities"}}, we leave capabilities
 * negotiation mode with qmp_capabilities, then send
 * {"execute", "arguments", "id"} and get {"return", "id"} or
 * {"error": {"class", "desc"}, "id"} back, with asynchronous
 * {"event", "data", "timestamp"} messages interleaved.
 *
 * Shaped after the structure of QEMU's own Python library (python/qemu/qmp:
 * a protocol layer that owns the socket and matches replies by id, a client
 * on top), written anew for Node.
 */
import type { Socket } from 'node:net';
import { z } from 'zod';
import type { Logger } from '../../log.js';
import { JsonLineReader, writeJsonLine } from '../../util/json-lines.js';

/**
 * QMP puts a whole reply on one line; the biggest common one
 * (query-qmp-schema) is a few hundred KiB. The bound only keeps a broken
 * peer from making us buffer without limit.
 */
export const DEFAULT_MAX_LINE_LENGTH = 16 * 1024 * 1024;

/** QEMU answered a command with {"error": ...}: the command ran (or was refused) and failed. */
export class QmpError extends Error {
  override name = 'QmpError';
  constructor(
    readonly command: string,
    /** QMP's error class, e.g. CommandNotFound, GenericError, DeviceNotFound */
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP command ${command} failed: ${errorClass}: ${desc}`);
  }
}

/** No reply (or event) in time. For a command, QEMU may still run it: we only stop waiting. */
export class QmpTimeoutError extends Error {
  override name = 'QmpTimeoutError';
  constructor(
    /** what we waited for: "command query-status", "event DEVICE_DELETED" */
    readonly what: string,
    readonly timeoutMs: number,
    /** the command, when a command timed out */
    readonly command?: string,
  ) {
    super(`QMP: no answer to ${what} within ${timeoutMs} ms`);
  }
}

/** The connection is unusable: QEMU went away, sent something that is not QMP, or we closed it. */
export class QmpConnectionError extends Error {
  override name = 'QmpConnectionError';
  constructor(
    message: string,
    /** the command that was in flight or being sent, if any */
    readonly command?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

// --- message shapes -------------------------------------------------------
// Validated with zod, loosely (passthrough of members we do not use): QEMU
// versions add members, and we must not reject what the spec allows.

const versionSchema = z.object({
  qemu: z.object({ major: z.number(), minor: z.number(), micro: z.number() }),
  package: z.string(),
});
export type QmpVersion = z.infer<typeof versionSchema>;
export const qmpVersionSchema = versionSchema;

const greetingSchema = z.object({
  QMP: z.object({ version: versionSchema, capabilities: z.array(z.string()) }),
});
export type QmpGreeting = z.infer<typeof greetingSchema>;

/** The id we put on commands: JSON, echoed back verbatim by QEMU. */
const idSchema = z.union([z.string(), z.number()]);

const returnSchema = z.object({ return: z.unknown(), id: idSchema.optional() });
const errorSchema = z.object({
  error: z.object({ class: z.string(), desc: z.string() }),
  id: idSchema.optional(),
});
const eventSchema = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});

export interface QmpEvent {
  event: string;
  /** the event's data; {} for events that carry none (STOP, RESUME), so callers need not check */
  data: Record<string, unknown>;
  /** QEMU's host clock when it emitted the event */
  timestamp: { seconds: number; microseconds: number };
}

export type EventListener = (event: QmpEvent) => void;

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

export interface QmpConnectionOptions {
  log: Logger;
  /** how long to wait for the greeting and the answer to qmp_capabilities */
  negotiateTimeoutMs: number;
  maxLineLength?: number;
}

/** A line shown in an error message: enough to recognise, not the whole thing. */
function excerpt(line: string): string {
  return line.length > 200 ? `${JSON.stringify(line.slice(0, 200))}...` : JSON.stringify(line);
}

/**
 * One negotiated QMP session over a connected socket. Owns the socket: once
 * it fails or is closed, it stays closed (make a new connection to retry).
 */
export class QmpConnection {
  #greeting: QmpGreeting | undefined;
  #socket: Socket;
  #log: Logger;
  #reader: JsonLineReader;
  #pending = new Map<string, Pending>();
  #listeners = new Set<EventListener>();
  #closeListeners = new Set<(err: QmpConnectionError) => void>();
  #nextId = 1;
  /** set once: why the connection is gone */
  #closedBy: QmpConnectionError | undefined;
  /** until negotiated, the first line must be the greeting */
  #onGreeting: ((line: unknown) => void) | undefined;
  #droppedReplies = 0;
  #closedByClient = false;
  #socketClosed: Promise<void>;

  /** Replies that came after their command had timed out (dropped, not handed to anyone). */
  get droppedReplies(): number {
    return this.#droppedReplies;
  }

  /** What QEMU said when we connected (its version, its capabilities). */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new Error('QMP: not negotiated yet');
    return this.#greeting;
  }

  get closed(): boolean {
    return this.#closedBy !== undefined;
  }

  /** Closed by close() (not by QEMU going away or misbehaving). */
  get closedByClient(): boolean {
    return this.#closedByClient;
  }

  /**
   * Read the greeting from a freshly connected socket and negotiate
   * capabilities (none: we do not use out-of-band execution).
   * Rejects with QmpConnectionError (and destroys the socket) on anything
   * else: no greeting in time, a greeting that is not QMP, QEMU going away.
   */
  static async negotiate(socket: Socket, o: QmpConnectionOptions): Promise<QmpConnection> {
    const c = new QmpConnection(socket, o);
    const deadline = setTimeout(
      () =>
        c.#fail(
          `no QMP greeting and capabilities within ${o.negotiateTimeoutMs} ms ` +
            '(QEMU accepts one QMP client per socket at a time: is another attached?)',
        ),
      o.negotiateTimeoutMs,
    );
    try {
      const greeting = await new Promise<QmpGreeting>((resolve, reject) => {
        // QEMU going away (or the deadline) before the greeting rejects this
        const unclose = c.onClose(reject);
        c.#onGreeting = (value) => {
          unclose();
          const g = greetingSchema.safeParse(value);
          if (g.success) return resolve(g.data);
          c.#fail(`QEMU sent something that is not QMP: expected the greeting, got ${excerpt(JSON.stringify(value))}`);
          reject(c.#closedBy);
        };
      });
      c.#greeting = greeting;
      await c.execute('qmp_capabilities', undefined, 0);
    } catch (err) {
      c.#fail(err instanceof Error ? err.message : String(err));
      throw err;
    } finally {
      clearTimeout(deadline);
    }
    o.log.debug({ version: c.greeting.QMP.version.qemu, capabilities: c.greeting.QMP.capabilities }, 'QMP negotiated');
    return c;
  }

  private constructor(socket: Socket, o: QmpConnectionOptions) {
    this.#socket = socket;
    this.#log = o.log;
    this.#reader = new JsonLineReader(
      o.maxLineLength ?? DEFAULT_MAX_LINE_LENGTH,
      (line) => this.#onLine(line),
      (limit) => this.#fail(`QEMU sent something that is not QMP: a line longer than ${limit} bytes`),
    );
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#reader.push(chunk));
    let socketError: Error | undefined;
    socket.on('error', (err) => void (socketError = err));
    this.#socketClosed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.once('close', () => this.#fail(`the QMP connection closed (QEMU went away?)${socketError ? `: ${socketError.message}` : ''}`));
  }

  /**
   * Send a command and wait for its reply (matched by id, so several can be
   * in flight). `timeoutMs` 0 waits for ever (until the connection goes).
   * Rejects with QmpError, QmpTimeoutError or QmpConnectionError.
   */
  execute(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    if (this.#closedBy) {
      return Promise.reject(new QmpConnectionError(`cannot send QMP command ${command}: ${this.#closedBy.message}`, command, { cause: this.#closedBy }));
    }
    // Ids are never reused, so a reply that comes after its command timed
    // out matches nothing and is dropped instead of answering a later command.
    const id = `symbio-${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      const p: Pending = { command, resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.#pending.delete(id);
          reject(new QmpTimeoutError(`command ${command}`, timeoutMs, command));
        }, timeoutMs);
      }
      this.#pending.set(id, p);
      this.#log.trace({ command, id }, 'QMP execute');
      writeJsonLine(this.#socket, args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
    });
  }

  /** Call `listener` with every event from now on; returns the unsubscribe function. */
  onEvent(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Call `listener` once when the connection goes (at once if it already has). */
  onClose(listener: (err: QmpConnectionError) => void): () => void {
    if (this.#closedBy) {
      listener(this.#closedBy);
      return () => {};
    }
    this.#closeListeners.add(listener);
    return () => void this.#closeListeners.delete(listener);
  }

  /** Close the connection; pending commands reject. Resolves once the socket is closed. */
  async close(): Promise<void> {
    if (!this.#closedBy) this.#closedByClient = true;
    this.#fail('the QMP connection was closed by the client');
    await this.#socketClosed;
  }

  #onLine(line: string): void {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      return this.#fail(`QEMU sent something that is not QMP: not JSON: ${excerpt(line)}`);
    }
    if (this.#onGreeting) {
      const f = this.#onGreeting;
      this.#onGreeting = undefined;
      return f(value);
    }
    const ev = eventSchema.safeParse(value);
    if (ev.success) return this.#deliver({ event: ev.data.event, data: ev.data.data ?? {}, timestamp: ev.data.timestamp });
    const ok = returnSchema.safeParse(value);
    const err = ok.success ? undefined : errorSchema.safeParse(value);
    const id = ok.success ? ok.data.id : err?.success ? err.data.id : undefined;
    if (!ok.success && !err?.success) return this.#fail(`QEMU sent something that is not QMP: ${excerpt(line)}`);
    if (id === undefined) {
      // We put an id on every command; QEMU leaves it out only when it could
      // not parse the command to find one: we and QEMU no longer agree.
      return this.#fail(`QEMU sent a reply without an id (it could not parse a command we sent?): ${excerpt(line)}`);
    }
    const key = String(id);
    const p = this.#pending.get(key);
    if (!p) {
      this.#droppedReplies++;
      this.#log.warn({ id: key }, 'QMP reply to a command that timed out; dropped');
      return;
    }
    this.#pending.delete(key);
    clearTimeout(p.timer);
    if (ok.success) p.resolve(ok.data.return);
    else if (err?.success) p.reject(new QmpError(p.command, err.data.error.class, err.data.error.desc));
  }

  #deliver(e: QmpEvent): void {
    this.#log.trace({ event: e.event }, 'QMP event');
    for (const l of [...this.#listeners]) {
      try {
        l(e);
      } catch (err) {
        // one broken subscriber must not starve the others or kill the reader
        this.#log.error({ err, event: e.event }, 'QMP event listener threw');
      }
    }
  }

  /** Close for good (first reason wins): every pending command rejects at once, naming itself. */
  #fail(reason: string): void {
    if (this.#closedBy) return;
    const err = new QmpConnectionError(reason);
    this.#closedBy = err;
    this.#reader.stop();
    this.#socket.destroy();
    this.#log.debug({ reason, pending: this.#pending.size }, 'QMP connection closed');
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(new QmpConnectionError(`QMP command ${p.command} got no reply: ${reason}`, p.command, { cause: err }));
    }
    this.#pending.clear();
    this.#listeners.clear();
    for (const l of this.#closeListeners) l(err);
    this.#closeListeners.clear();
  }
}
