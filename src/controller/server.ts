/**
 * The controller's sockets. Local: a Unix socket, 0600 in a 0700 directory,
 * and every connection's peer credentials (SO_PEERCRED) must be our own user
 * or root. Remote (multi-node): TCP, where the first line must be
 * `{"op":"hello","token":...}` with the shared token. Operators' commands and
 * agents use the same sockets; every malformed line gets an error reply,
 * never a crash.
 */
import { chmodSync, rmSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { timingSafeEqual, createHash } from 'node:crypto';
import { peerCredentials } from '../native.js';
import { ClientRequest, MAX_FIRST_LINE_BYTES, MAX_LINE_BYTES, zodMessage, type Reply } from './protocol.js';
import { OperationRefusedError, UnknownJobError, type Controller } from './controller.js';
import { RemoteAgentLink } from './remote-agent-link.js';
import { readEvents } from './journal.js';
import { parseJsonLine, readJsonLines, writeJsonLine, type JsonLineReader } from '../util/json-lines.js';
import type { OperationKind } from '../host/plugin-api.js';
import type { Logger } from '../log.js';

export interface ControllerServerOptions {
  /** Unix socket path (created 0600; a stale one is replaced). */
  readonly unixPath?: string;
  readonly tcp?: { readonly host: string; readonly port: number };
  /** Required with tcp; optional on the Unix socket (peer credentials suffice there). */
  readonly token?: string;
  /** Longest a controller -> agent call may take, ms. */
  readonly agentCallTimeoutMs?: number;
  /** What `symbio plugins list` shows. */
  readonly plugins?: () => unknown;
  /** Runs VM jobs asked for with `vm-job` (a standalone controller); without it they are refused. */
  readonly vmJobs?: VmJobHost;
  readonly log: Logger;
}

/** What serves `vm-job` and `vm-job-signal` (standalone.ts). */
export interface VmJobHost {
  /** Run the job to its end, passing its output on; resolves with how it ended. */
  run(req: Extract<ClientRequest, { op: 'vm-job' }>, output: (o: { stream: 'stdout' | 'stderr'; data: Buffer }) => void): Promise<{ exitCode: number; lost: string | null }>;
  signal(job: string, signal: NodeJS.Signals): Promise<void>;
}

interface Conn {
  readonly socket: Socket;
  readonly reader: JsonLineReader;
  readonly transport: 'unix' | 'tcp';
  authenticated: boolean;
  helloTimer?: NodeJS.Timeout;
  agent: RemoteAgentLink | null;
  agentJob: string | null;
}

/** How an agent's heartbeat line starts (the agent writes it so: ControllerSession). */
const HEARTBEAT_PREFIX = '{"event":"heartbeat"';

/** TCP peers that have not said hello yet, at most. */
const MAX_UNAUTHENTICATED = 64;
const HELLO_TIMEOUT_MS = 5_000;

function sameToken(a: string, b: string): boolean {
  // Compare digests: equal length, so timingSafeEqual never throws, and no length leak.
  const da = createHash('sha256').update(a).digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db);
}

/** The fd behind a net.Socket (Node keeps it on the internal handle). */
function socketFd(s: Socket): number | undefined {
  const handle = (s as unknown as { _handle?: { fd?: number } })._handle;
  return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : undefined;
}

export class ControllerServer {
  readonly #servers: Server[] = [];
  readonly #conns = new Set<Conn>();
  /** Every open socket, served or not: close() must not wait for any of them. */
  readonly #sockets = new Set<Socket>();
  readonly #log: Logger;
  #tcpAddress: { host: string; port: number } | null = null;
  /** We created the socket file (and so remove it at close; never someone else's). */
  #ownsUnixPath = false;

  constructor(
    private readonly controller: Controller,
    private readonly options: ControllerServerOptions,
  ) {
    this.#log = options.log;
    if (options.tcp && !options.token) throw new Error('listening on TCP needs a shared token (controller.tokenFile)');
  }

  /** The TCP address actually bound (port 0 picks one). */
  get tcpAddress(): { host: string; port: number } | null {
    return this.#tcpAddress;
  }

  async listen(): Promise<void> {
    const { unixPath, tcp } = this.options;
    if (unixPath) {
      // A socket someone still answers on is theirs; only a stale one (its owner dead) is replaced.
      if (await answers(unixPath)) throw new Error(`${unixPath} is in use: another controller (or a job with this id) is listening there`);
      rmSync(unixPath, { force: true });
      const server = createServer((s) => this.#onConnection(s, 'unix'));
      await listenOn(server, (cb) => server.listen(unixPath, cb));
      chmodSync(unixPath, 0o600);
      this.#ownsUnixPath = true;
      this.#servers.push(server);
    }
    if (tcp) {
      const server = createServer((s) => this.#onConnection(s, 'tcp'));
      await listenOn(server, (cb) => server.listen(tcp.port, tcp.host, cb));
      const a = server.address();
      if (a && typeof a === 'object') this.#tcpAddress = { host: a.address, port: a.port };
      this.#servers.push(server);
    }
  }

  #onConnection(socket: Socket, transport: 'unix' | 'tcp'): void {
    socket.on('error', () => undefined);
    this.#sockets.add(socket);
    socket.on('close', () => this.#sockets.delete(socket));
    if (transport === 'unix') {
      const fd = socketFd(socket);
      let uid: number | undefined;
      try {
        uid = fd === undefined ? undefined : peerCredentials(fd).uid;
      } catch {
        uid = undefined;
      }
      const me = process.getuid?.();
      if (uid === undefined || (uid !== me && uid !== 0)) {
        writeJsonLine(socket, { ok: false, code: 'denied', error: `connection refused: peer uid ${uid ?? 'unknown'} is not the controller's user` });
        // Half-close after the reply; read and drop what the peer still sends (so
        // it reads our reply rather than a broken pipe), and do not wait long.
        socket.end();
        socket.resume();
        setTimeout(() => socket.destroy(), 1_000).unref();
        return;
      }
    }
    const conn: Conn = {
      socket,
      transport,
      authenticated: transport === 'unix',
      agent: null,
      agentJob: null,
      reader: readJsonLines(
        socket,
        // small until the peer is an agent (whose reports can be large)
        MAX_FIRST_LINE_BYTES,
        (line) => void this.#onLine(conn, line),
        (limit) => {
          this.#write(conn, { ok: false, code: 'bad-request', error: `line longer than ${limit} bytes` });
          this.#drop(conn);
        },
      ),
    };
    this.#conns.add(conn);
    if (!conn.authenticated) {
      // A TCP peer has a few seconds to say hello, and only so many may be waiting at once.
      const waiting = [...this.#conns].filter((c) => !c.authenticated).length;
      if (waiting > MAX_UNAUTHENTICATED) {
        this.#write(conn, { ok: false, code: 'denied', error: 'too many connections waiting to say hello' });
        this.#drop(conn);
      } else {
        conn.helloTimer = setTimeout(() => {
          this.#write(conn, { ok: false, code: 'denied', error: `no hello within ${HELLO_TIMEOUT_MS} ms` });
          this.#drop(conn);
        }, HELLO_TIMEOUT_MS);
        conn.helloTimer.unref();
      }
    }
    socket.on('close', () => {
      clearTimeout(conn.helloTimer);
      this.#conns.delete(conn);
      if (conn.agent && conn.agentJob) {
        conn.agent.close('connection closed');
        this.controller.detachNode(conn.agentJob, conn.agent.node, 'connection closed', conn.agent);
      }
    });
  }

  async #onLine(conn: Conn, line: string): Promise<void> {
    if (conn.socket.destroyed) return;
    // Heartbeats are most of what a thousand agents send and are rarely read:
    // keep the line, parse it when someone asks (the hot path at scale).
    if (conn.agent && line.startsWith(HEARTBEAT_PREFIX)) {
      conn.agent.heartbeatLine(line);
      return;
    }
    const parsed = parseJsonLine(line);
    if (conn.agent) {
      const problem = parsed.ok ? conn.agent.handleLine(parsed.value) : parsed.error;
      if (problem) this.#log.warn({ node: conn.agent.node, problem }, 'bad line from agent');
      return;
    }
    const reply = (r: Reply): void => this.#write(conn, r);
    if (!conn.authenticated) {
      // Before hello, one chance: anything but the right hello ends the connection.
      const r = parsed.ok ? ClientRequest.safeParse(parsed.value) : null;
      const ok = r?.success && r.data.op === 'hello' && sameToken(r.data.token, this.options.token ?? '');
      if (!ok) {
        reply({ ok: false, code: 'denied', error: r?.success && r.data.op === 'hello' ? 'wrong token' : 'say hello with the shared token first' });
        this.#drop(conn);
        return;
      }
      conn.authenticated = true;
      clearTimeout(conn.helloTimer);
      return reply({ ...(r.data.id === undefined ? {} : { id: r.data.id }), ok: true, result: { hello: 'symbio controller' } });
    }
    if (!parsed.ok) return reply({ ok: false, code: 'bad-request', error: parsed.error });
    const req = ClientRequest.safeParse(parsed.value);
    const rawId = (parsed.value as { id?: unknown } | null)?.id;
    const id = typeof rawId === 'number' && Number.isInteger(rawId) && rawId >= 0 ? { id: rawId } : {};
    if (!req.success) return reply({ ...id, ok: false, code: 'bad-request', error: `bad request: ${zodMessage(req.error)}` });
    const r = req.data;
    try {
      switch (r.op) {
        case 'hello':
          return reply({ ...id, ok: true, result: { hello: 'symbio controller' } });
        case 'jobs':
          return reply({ ...id, ok: true, result: this.controller.view().jobs });
        case 'status':
          return reply({ ...id, ok: true, result: await this.controller.status(r.job) });
        case 'events': {
          const job = r.job ?? this.#onlyJob();
          const events = readEvents(this.controller.options.stateDir, job, { ...(r.since === undefined ? {} : { since: r.since }), ...(r.limit === undefined ? {} : { limit: r.limit }) });
          return reply({ ...id, ok: true, result: events });
        }
        case 'plugins':
          return reply({ ...id, ok: true, result: this.options.plugins?.() ?? [] });
        case 'operate': {
          const rec = await this.controller.request({
            ...(r.job === undefined ? {} : { job: r.job }),
            kind: r.kind as OperationKind,
            requestedBy: 'operator',
            ...(r.reason === undefined ? {} : { reason: r.reason }),
            ...(r.timeoutMs === undefined ? {} : { timeoutMs: r.timeoutMs }),
            ...(r.params === undefined ? {} : { params: r.params }),
            ...(r.progress ? { onProgress: (op) => this.#write(conn, { ...id, progress: { op: op.id, kind: op.kind, phase: op.phase, timeline: op.phases } }) } : {}),
          });
          return reply(rec.ok ? { ...id, ok: true, result: rec } : { ...id, ok: false, code: 'failed', error: `${rec.kind} failed${rec.failedIn ? ` in ${rec.failedIn}` : ''}: ${rec.error ?? 'unknown error'}`, ...{ result: rec } });
        }
        case 'agent':
          return this.#becomeAgent(conn, r, reply, id);
        case 'vm-job': {
          if (!this.options.vmJobs) throw new OperationRefusedError('this controller does not run VM jobs (symbio-mpirun --vcluster runs its own controller, or start `symbio controller`)');
          // the job goes on if the launcher goes away: its output is then only in the guest's buffer
          const end = await this.options.vmJobs.run(r, (o) => this.#write(conn, { ...id, progress: { stream: o.stream, data: o.data.toString('base64') } }));
          return reply({ ...id, ok: true, result: end });
        }
        case 'vm-job-signal':
          if (!this.options.vmJobs) throw new OperationRefusedError('this controller runs no VM jobs');
          await this.options.vmJobs.signal(r.job, r.signal as NodeJS.Signals);
          return reply({ ...id, ok: true, result: { signalled: r.job } });
      }
    } catch (err) {
      const code = err instanceof OperationRefusedError ? 'refused' : err instanceof UnknownJobError ? 'bad-request' : 'failed';
      reply({ ...id, ok: false, code, error: (err as Error).message });
    }
  }

  /**
   * One reply line. A peer that sends requests without reading the replies
   * gets no more of its lines read until it does (replies never pile up).
   */
  #write(conn: Conn, value: unknown): void {
    const s = conn.socket;
    if (s.destroyed || !s.writable) return;
    if (!s.write(JSON.stringify(value) + '\n') && !s.isPaused()) {
      s.pause();
      s.once('drain', () => s.resume());
    }
  }

  /** End a connection after what was written: stop reading it, close it soon whatever the peer does. */
  #drop(conn: Conn): void {
    conn.reader.stop();
    clearTimeout(conn.helloTimer);
    conn.socket.end();
    setTimeout(() => conn.socket.destroy(), 1_000).unref();
  }

  #onlyJob(): string {
    const ids = this.controller.jobIds();
    if (ids.length === 1) return ids[0]!;
    throw new UnknownJobError(ids.length === 0 ? 'no job known' : `name a job with --job: ${ids.join(', ')}`);
  }

  #becomeAgent(conn: Conn, r: Extract<ClientRequest, { op: 'agent' }>, reply: (r: Reply) => void, id: { id?: number }): void {
    if (conn.transport === 'tcp' && !conn.authenticated) throw new OperationRefusedError('say hello first');
    if (r.register && !this.controller.jobIds().includes(r.job)) {
      this.controller.registerJob({ id: r.job, command: r.register.command, np: r.register.np, ...(r.register.launcherPid === undefined ? {} : { launcherPid: r.register.launcherPid }) });
    }
    const link = new RemoteAgentLink(r.node, conn.socket, this.options.agentCallTimeoutMs ?? 10_000, (exitCode) => this.controller.jobFinished(r.job, exitCode));
    this.controller.attachNode(r.job, link); // throws (refused) for an unknown job
    conn.agent = link;
    conn.agentJob = r.job;
    conn.reader.limit = MAX_LINE_BYTES;
    reply({ ...id, ok: true, result: { attached: r.job, node: r.node } });
    this.#log.info({ job: r.job, node: r.node, transport: conn.transport }, 'agent attached');
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.#servers.length = 0;
    if (this.options.unixPath && this.#ownsUnixPath) rmSync(this.options.unixPath, { force: true });
    this.#ownsUnixPath = false;
  }
}

/** Does something accept connections on this Unix socket? */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (v: boolean): void => {
      s.destroy();
      resolve(v);
    };
    s.on('connect', () => done(true));
    s.on('error', () => done(false));
    setTimeout(() => done(false), 1_000).unref();
  });
}

function listenOn(server: Server, start: (cb: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    start(() => {
      server.off('error', reject);
      resolve();
    });
  });
}
