/**
 * QmpClient: connect to a QEMU's QMP socket (waiting while QEMU starts),
 * run commands, watch events. The wire protocol is in protocol.ts; this adds
 * connecting, defaults, events as an async stream, and typed wrappers for
 * the few commands the hypervisor driver uses.
 */
import type { Socket } from 'node:net';
import { connectOnce, NOT_YET_LISTENING } from '../../util/unix-socket.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import type { Logger } from '../../log.js';
import { sendFd } from '../../native.js';
import {
  QmpConnection,
  QmpConnectionError,
  QmpTimeoutError,
  qmpVersionSchema,
  type QmpEvent,
  type QmpGreeting,
  type QmpVersion,
} from './protocol.js';

export { QmpError, QmpTimeoutError, QmpConnectionError, type QmpEvent, type QmpGreeting, type QmpVersion } from './protocol.js';

export interface QmpConnectOptions {
  /** give up connecting (socket + greeting + capabilities) after this long */
  connectTimeoutMs?: number;
  /** pause between attempts while the socket is not there yet */
  retryMs?: number;
  /** default timeout of execute(); 0: none */
  commandTimeoutMs?: number;
  maxLineLength?: number;
  log: Logger;
}

export interface ExecuteOptions {
  /** overrides the client's commandTimeoutMs; 0: none */
  timeoutMs?: number;
}

/** Which events a stream or waiter wants: a name, several names, or a test. */
export type EventFilter = string | readonly string[] | ((e: QmpEvent) => boolean);

export interface EventStreamOptions {
  /** ends the stream (as return() does) */
  signal?: AbortSignal;
  /** events held for a slow consumer; beyond it the oldest go (counted in `dropped`) */
  bufferSize?: number;
}

/** query-status (RunState names as QEMU spells them: running, paused, prelaunch, inmigrate, postmigrate, shutdown, ...). */
const statusSchema = z.object({ status: z.string(), running: z.boolean() });
export type QmpStatus = z.infer<typeof statusSchema>;


function matcher(filter: EventFilter | undefined): (e: QmpEvent) => boolean {
  if (filter === undefined) return () => true;
  if (typeof filter === 'function') return filter;
  const names = new Set(typeof filter === 'string' ? [filter] : filter);
  return (e) => names.has(e.event);
}

/** The fd behind a net.Socket (Node keeps it on the internal handle); undefined once closed. */
function socketFd(s: Socket): number | undefined {
  const handle = (s as unknown as { _handle?: { fd?: number } | null })._handle;
  return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : undefined;
}

export class QmpClient {
  #conn: QmpConnection;
  #socket: Socket;
  #commandTimeoutMs: number;
  #log: Logger;
  /** getfd calls, one at a time: QEMU keeps only the last descriptor received until a command takes it */
  #fdPassing: Promise<unknown> = Promise.resolve();
  /** resolves (never rejects) with why the connection went: QEMU exiting shows here */
  readonly closed: Promise<QmpConnectionError>;

  private constructor(conn: QmpConnection, socket: Socket, commandTimeoutMs: number, log: Logger) {
    this.#conn = conn;
    this.#socket = socket;
    this.#commandTimeoutMs = commandTimeoutMs;
    this.#log = log;
    this.closed = new Promise((resolve) => conn.onClose(resolve));
  }

  /**
   * Connect to QEMU's QMP socket. QEMU creates the socket some time after it
   * is started, so a missing socket (ENOENT) or one not yet listening
   * (ECONNREFUSED) is retried until `connectTimeoutMs`; other errors fail at once.
   */
  static async connect(socketPath: string, o: QmpConnectOptions): Promise<QmpClient> {
    const timeoutMs = o.connectTimeoutMs ?? 10_000;
    const retryMs = o.retryMs ?? 50;
    const log = o.log.child({ qmp: socketPath });
    const deadline = Date.now() + timeoutMs;
    let attempts = 0;
    for (;;) {
      attempts++;
      let socket: Socket;
      try {
        socket = await connectOnce(socketPath);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (!NOT_YET_LISTENING.has(code)) {
          throw new QmpConnectionError(`cannot connect to QMP socket ${socketPath}: ${(err as Error).message}`, undefined, { cause: err });
        }
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new QmpConnectionError(
            `no QMP server at ${socketPath} after ${timeoutMs} ms (${attempts} attempts, last: ${code}): did QEMU start, with -qmp unix:${socketPath},server=on,wait=off?`,
            undefined,
            { cause: err },
          );
        }
        await sleep(Math.min(retryMs, left));
        continue;
      }
      if (attempts > 1) log.debug({ attempts }, 'QMP socket up');
      const conn = await QmpConnection.negotiate(socket, {
        log,
        negotiateTimeoutMs: Math.max(deadline - Date.now(), 1),
        maxLineLength: o.maxLineLength,
      });
      return new QmpClient(conn, socket, o.commandTimeoutMs ?? 30_000, log);
    }
  }

  get greeting(): QmpGreeting {
    return this.#conn.greeting;
  }

  /** Replies that came after their command timed out (dropped). */
  get droppedReplies(): number {
    return this.#conn.droppedReplies;
  }

  /**
   * Run a QMP command. `T` is the caller's word for the shape of the
   * `return` value, not checked: the typed wrappers below check theirs.
   */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, o: ExecuteOptions = {}): Promise<T> {
    return (await this.#conn.execute(command, args, o.timeoutMs ?? this.#commandTimeoutMs)) as T;
  }

  async queryStatus(o?: ExecuteOptions): Promise<QmpStatus> {
    return this.#checked('query-status', statusSchema, await this.execute('query-status', undefined, o));
  }

  async queryVersion(o?: ExecuteOptions): Promise<QmpVersion> {
    return this.#checked('query-version', qmpVersionSchema, await this.execute('query-version', undefined, o));
  }

  /** Pause the guest's vCPUs (QEMU emits STOP). */
  async stop(o?: ExecuteOptions): Promise<void> {
    await this.execute('stop', undefined, o);
  }

  /** Resume them (QEMU emits RESUME). */
  async cont(o?: ExecuteOptions): Promise<void> {
    await this.execute('cont', undefined, o);
  }

  /** Ask QEMU to exit; resolves once it has acknowledged (it closes the socket right after). */
  async quit(o?: ExecuteOptions): Promise<void> {
    await this.execute('quit', undefined, o);
  }

  /**
   * Give QEMU an open file descriptor to keep under `name` (QMP `getfd`),
   * for commands that take `fd:NAME` (`migrate`, `migrate-incoming`, ...);
   * such a command consumes it, `closefd` drops it unused, and a name QEMU
   * holds already is replaced. QEMU gets its own descriptor of the same
   * open file: `fd` stays open here, for the caller to close.
   *
   * The descriptor travels by SCM_RIGHTS on this connection (Node cannot
   * send one: the addon's sendFd), attached to a newline, which QMP skips
   * as whitespace between commands; QEMU holds it until `getfd`, sent right
   * behind. The newline goes out only when nothing of ours is queued on the
   * socket, so it never splits a command. Calls on one client run one at a
   * time (QEMU keeps one received descriptor at a time).
   */
  async getfd(name: string, fd: number, o?: ExecuteOptions): Promise<void> {
    await this.#passFd(fd, 'getfd', name, o, () => this.execute('getfd', { fdname: name }, o));
  }

  /** Send `fd` by SCM_RIGHTS, then run `command`, which takes it; one at a time per client (QEMU keeps one received descriptor). */
  #passFd<T>(fd: number, command: string, what: string, o: ExecuteOptions | undefined, take: () => Promise<T>): Promise<T> {
    const run = this.#fdPassing.then(async () => {
      await this.#writesFlushed(o?.timeoutMs ?? this.#commandTimeoutMs);
      const sock = socketFd(this.#socket);
      if (sock === undefined || this.#conn.closed) throw new QmpConnectionError(`cannot pass a file descriptor for ${command} ${what}: the QMP connection is closed`, command);
      // synchronous: no other write can come between the descriptor and the command that takes it
      sendFd(sock, fd, Buffer.from('\n'));
      return take();
    });
    this.#fdPassing = run.catch(() => undefined);
    return run;
  }

  /**
   * Add a descriptor to a new fd set (QMP `add-fd`), for commands that open
   * `/dev/fdset/ID` (the `file:` migration URI, QEMU 9.0+ for migration).
   * Passed the way `getfd` passes it; QEMU dups it when the path is opened
   * with the same access mode (O_ACCMODE) the descriptor has. `removeFdset`
   * drops the set again.
   */
  async addFd(fd: number, o?: ExecuteOptions): Promise<{ fdsetId: number; fd: number }> {
    const r = (await this.#passFd(fd, 'add-fd', 'to a new fd set', o, () => this.execute('add-fd', {}, o))) as { 'fdset-id': number; fd: number };
    return { fdsetId: r['fdset-id'], fd: r.fd };
  }

  /** Drop an fd set made by `addFd` (QEMU closes its descriptors once nothing uses them). */
  async removeFdset(fdsetId: number, o?: ExecuteOptions): Promise<void> {
    await this.execute('remove-fd', { 'fdset-id': fdsetId }, o);
  }

  /** Until every command written to the socket has left Node (so raw bytes can follow). */
  async #writesFlushed(timeoutMs: number): Promise<void> {
    const limitMs = timeoutMs > 0 ? timeoutMs : 30_000;
    const deadline = performance.now() + limitMs;
    while (this.#socket.writableLength > 0) {
      if (this.#conn.closed) return; // the caller says so
      if (performance.now() > deadline) throw new QmpConnectionError(`QEMU took none of our QMP writes for ${limitMs} ms: cannot pass a file descriptor`, 'getfd');
      await sleep(1);
    }
  }

  /**
   * Events from now on, as an async stream (`for await`). Subscribed at once,
   * so events between this call and the first next() are not lost. Ends on
   * return() (break), on `signal`, or on close(); ends with the
   * QmpConnectionError if QEMU goes away.
   */
  events(filter?: EventFilter, o: EventStreamOptions = {}): EventStream {
    return new EventStream(this.#conn, matcher(filter), o.bufferSize ?? 256, this.#log, o.signal);
  }

  /**
   * The first event named `name` (and passing `predicate`) from now on.
   * Call it before the command that causes the event, await it after:
   *   const gone = qmp.waitForEvent('DEVICE_DELETED', (e) => e.data.device === id, 5000);
   *   await qmp.execute('device_del', { id });
   *   await gone;
   * Rejects with QmpTimeoutError or QmpConnectionError.
   */
  waitForEvent(name: string, predicate: ((e: QmpEvent) => boolean) | undefined, timeoutMs: number): Promise<QmpEvent> {
    if (this.#conn.closed) {
      return Promise.reject(new QmpConnectionError(`cannot wait for QMP event ${name}: the connection is closed`));
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        unsubscribe();
        unclose();
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpTimeoutError(`event ${name}`, timeoutMs));
      }, timeoutMs);
      const unsubscribe = this.#conn.onEvent((e) => {
        if (e.event !== name || (predicate && !predicate(e))) return;
        done();
        resolve(e);
      });
      const unclose = this.#conn.onClose((err) => {
        done();
        reject(new QmpConnectionError(`while waiting for QMP event ${name}: ${err.message}`, undefined, { cause: err }));
      });
    });
  }

  /** Close the connection (QEMU keeps running); pending commands reject with QmpConnectionError. */
  async close(): Promise<void> {
    await this.#conn.close();
  }

  #checked<S extends z.ZodType>(command: string, schema: S, value: unknown): z.infer<S> {
    const r = schema.safeParse(value);
    // the connection is still fine (other commands work), so not a QmpConnectionError
    if (!r.success) throw new Error(`QEMU's reply to ${command} is not what QMP specifies: ${JSON.stringify(value)}`);
    return r.data;
  }
}

/**
 * An async stream of events with a bounded buffer: a consumer that falls
 * behind loses the oldest events (counted in `dropped`, logged) rather than
 * making the client hold every event for ever.
 */
export class EventStream implements AsyncIterableIterator<QmpEvent> {
  #buffer: QmpEvent[] = [];
  #waiter: { resolve: (r: IteratorResult<QmpEvent>) => void; reject: (err: Error) => void } | undefined;
  #ended = false;
  #error: QmpConnectionError | undefined;
  #dropped = 0;
  #unsubscribe: () => void = () => {};
  #unclose: () => void = () => {};
  #unabort: () => void = () => {};

  constructor(
    conn: QmpConnection,
    accept: (e: QmpEvent) => boolean,
    private readonly bufferSize: number,
    private readonly log: Logger,
    signal?: AbortSignal,
  ) {
    this.#unsubscribe = conn.onEvent((e) => {
      if (accept(e)) this.#push(e);
    });
    // onClose calls at once if the connection is already gone: the no-op
    // defaults above keep #end() safe while we are still constructing
    const unclose = conn.onClose((err) => {
      // our own close() ends streams quietly; QEMU going away is an error for whoever waits
      this.#end(conn.closedByClient ? undefined : err);
    });
    if (!this.#ended) this.#unclose = unclose;
    if (signal) {
      const onAbort = () => void this.return();
      if (signal.aborted) onAbort();
      else {
        signal.addEventListener('abort', onAbort, { once: true });
        this.#unabort = () => signal.removeEventListener('abort', onAbort);
      }
    }
  }

  /** Events lost because the consumer was slow. */
  get dropped(): number {
    return this.#dropped;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<QmpEvent>> {
    const e = this.#buffer.shift();
    if (e) return Promise.resolve({ value: e, done: false });
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    if (this.#waiter) return Promise.reject(new Error('QMP event stream: next() called again before the previous one settled'));
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<QmpEvent>> {
    this.#end(undefined);
    this.#buffer = [];
    return Promise.resolve({ value: undefined, done: true });
  }

  #push(e: QmpEvent): void {
    if (this.#ended) return;
    const w = this.#waiter;
    if (w) {
      this.#waiter = undefined;
      return w.resolve({ value: e, done: false });
    }
    if (this.#buffer.length >= this.bufferSize) {
      this.#buffer.shift();
      // log the first drop and then every power of two, not every event
      if ((++this.#dropped & (this.#dropped - 1)) === 0) {
        this.log.warn({ dropped: this.#dropped, bufferSize: this.bufferSize }, 'QMP event consumer too slow; oldest events dropped');
      }
    }
    this.#buffer.push(e);
  }

  #end(err: QmpConnectionError | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = err;
    this.#unsubscribe();
    this.#unclose();
    this.#unabort();
    const w = this.#waiter;
    this.#waiter = undefined;
    if (w && err) w.reject(err);
    else if (w) w.resolve({ value: undefined, done: true });
  }
}
