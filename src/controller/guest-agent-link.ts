/**
 * The controller's link to the agent inside one VM, over the host end of the
 * VM's virtio-serial port (a Unix socket that QEMU serves). The job's
 * quiescer sees it as one participant for the job's whole life, although
 * the connection under it changes: when the VM migrates or is restarted
 * from a checkpoint its QEMU, and so its socket, is another one, and this
 * link reconnects to wherever `socketPath()` says the VM is now, then opens
 * the job again (the agent finds its segment still there).
 *
 * Calls made while no connection is up wait for one, up to the call
 * timeout: a VM in the middle of a move answers a moment later, a VM that
 * is gone fails the call and so the operation, which then rolls back.
 */
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { RemoteAgentLink } from './remote-agent-link.js';
import { MAX_LINE_BYTES } from './protocol.js';
import { parseJsonLine, readJsonLines } from '../util/json-lines.js';
import type { ParticipantReport, QuiesceParticipant } from '../quiesce/job-quiescer.js';
import type { CatchupTarget } from '../quiesce/snapshot.js';
import type { Logger } from '../log.js';

export interface GuestJob {
  readonly job: string;
  readonly slots: number;
  readonly worldSize: number;
  readonly resumeTimeoutMs: number;
  readonly stallMs: number;
}

export interface GuestRunView {
  readonly pid: number | null;
  readonly stdout: number;
  readonly stderr: number;
  readonly exit: { code: number; signal: string | null } | null;
}

export interface OpenResult {
  readonly node: string;
  readonly segment: string;
  readonly reattached: boolean;
  readonly run: GuestRunView | null;
}

export interface GuestOutput {
  readonly stream: 'stdout' | 'stderr';
  readonly offset: number;
  readonly data: Buffer;
}

export interface GuestExit {
  readonly code: number;
  readonly signal: string | null;
  readonly stdout: number;
  readonly stderr: number;
}

export interface GuestRankExit {
  readonly slot: number;
  readonly pid: number;
  readonly worldRank: number;
  /** It had called MPI_Finalize (a normal end), as the guest's segment says. */
  readonly finalized: boolean;
}

export interface GuestAgentLinkEvents {
  connected: [OpenResult];
  dropped: [string];
  'rank-exit': [GuestRankExit];
  output: [GuestOutput];
  exit: [GuestExit];
}

export interface GuestAgentLinkOptions {
  /** Where the VM's agent socket is now (it moves with the VM). */
  readonly socketPath: () => string;
  readonly job: GuestJob;
  readonly log: Logger;
  readonly callTimeoutMs?: number;
  /** Pause between reconnect attempts, ms. */
  readonly retryMs?: number;
}

export class GuestAgentLink extends EventEmitter<GuestAgentLinkEvents> implements QuiesceParticipant {
  #link: RemoteAgentLink | null = null;
  #socket: Socket | null = null;
  #closed = false;
  #reconnecting = false;
  #lastOpen: OpenResult | null = null;
  readonly #listeners = new Set<() => void>();
  #unsubscribe: (() => void) | null = null;
  readonly #waiters = new Set<() => void>();
  readonly #callTimeoutMs: number;

  constructor(
    readonly node: string,
    private readonly o: GuestAgentLinkOptions,
  ) {
    super();
    this.#callTimeoutMs = o.callTimeoutMs ?? 10_000;
  }

  get connected(): boolean {
    return this.#link !== null;
  }

  get lastOpen(): OpenResult | null {
    return this.#lastOpen;
  }

  /** Connect and open the job; retries until `timeoutMs` (a VM that is still booting has no agent yet). */
  async connect(timeoutMs = 30_000): Promise<OpenResult> {
    const deadline = Date.now() + timeoutMs;
    let last: Error | null = null;
    while (!this.#closed) {
      try {
        return await this.#connectOnce(Math.max(1000, deadline - Date.now()));
      } catch (err) {
        last = err as Error;
      }
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, this.o.retryMs ?? 100));
    }
    throw new Error(`agent of ${this.node} not reachable at ${this.o.socketPath()}: ${last?.message ?? 'link closed'}`);
  }

  #connectOnce(openTimeoutMs: number): Promise<OpenResult> {
    const path = this.o.socketPath();
    return new Promise((resolve, reject) => {
      const s = connect(path);
      let opened = false;
      s.once('error', (err) => {
        if (!opened) reject(err);
      });
      s.once('connect', () => {
        const link = new RemoteAgentLink(this.node, s, this.#callTimeoutMs, () => undefined, (m) => this.#onEvent(m));
        readJsonLines(s, MAX_LINE_BYTES, (line) => {
          const p = parseJsonLine(line);
          const problem = p.ok ? link.handleLine(p.value) : p.error;
          if (problem) this.o.log.warn({ node: this.node, problem }, 'bad line from guest agent');
        }, () => s.destroy());
        s.on('error', (err) => this.o.log.debug({ node: this.node, err: err.message }, 'agent connection error'));
        s.once('close', () => {
          link.close('connection closed');
          if (this.#socket === s) this.#onDrop('the VM\'s agent socket closed');
        });
        link
          .request('open', { ...this.o.job }, openTimeoutMs)
          .then((r) => {
            opened = true;
            if (this.#closed) {
              s.destroy();
              reject(new Error('link closed'));
              return;
            }
            const result = r as OpenResult;
            this.#swap(link, s);
            this.#lastOpen = result;
            this.o.log.info({ node: this.node, socket: path, reattached: result.reattached }, 'guest agent attached');
            this.emit('connected', result);
            resolve(result);
          })
          .catch((err: Error) => {
            s.destroy();
            reject(err);
          });
      });
    });
  }

  #swap(link: RemoteAgentLink, s: Socket): void {
    this.#unsubscribe?.();
    const old = this.#socket;
    this.#link = link;
    this.#socket = s;
    if (old && old !== s) old.destroy();
    this.#unsubscribe = link.subscribe(() => this.#wake());
    for (const w of [...this.#waiters]) w();
    this.#wake();
  }

  #onEvent(m: Record<string, unknown>): boolean {
    if (m.event === 'output' && (m.stream === 'stdout' || m.stream === 'stderr') && typeof m.offset === 'number' && typeof m.data === 'string') {
      this.emit('output', { stream: m.stream, offset: m.offset, data: Buffer.from(m.data, 'base64') });
      return true;
    }
    if (m.event === 'rank-exit' && typeof m.slot === 'number' && typeof m.pid === 'number') {
      this.emit('rank-exit', { slot: m.slot, pid: m.pid, worldRank: Number(m.worldRank), finalized: m.finalized === true });
      return true;
    }
    if (m.event === 'exit' && typeof m.code === 'number') {
      this.emit('exit', { code: m.code, signal: typeof m.signal === 'string' ? m.signal : null, stdout: Number(m.stdout) || 0, stderr: Number(m.stderr) || 0 });
      return true;
    }
    return false;
  }

  #onDrop(why: string): void {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    this.#link = null;
    this.#socket = null;
    this.emit('dropped', why);
    this.#wake();
    if (!this.#closed) void this.#reconnect();
  }

  /** Follow the VM to its current socket until connected again or closed. */
  async #reconnect(): Promise<void> {
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    try {
      let warned = false;
      while (!this.#closed && !this.#link) {
        try {
          await this.#connectOnce(this.#callTimeoutMs);
          return;
        } catch (err) {
          if (!warned) this.o.log.debug({ node: this.node, err: (err as Error).message }, 'agent not reachable yet; retrying');
          warned = true;
          await new Promise((r) => setTimeout(r, this.o.retryMs ?? 50));
        }
      }
    } finally {
      this.#reconnecting = false;
    }
  }

  /** Drop the connection now and find the VM again (after it moved). */
  reattach(): void {
    const s = this.#socket;
    if (s) s.destroy();
    else if (!this.#closed) void this.#reconnect();
  }

  /** Wait for a connection (up to the call timeout). */
  async #current(): Promise<RemoteAgentLink> {
    if (this.#link) return this.#link;
    if (this.#closed) throw new Error(`node ${this.node}: link closed`);
    void this.#reconnect();
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(done);
        reject(new Error(`node ${this.node}: its agent did not come back within ${this.#callTimeoutMs} ms`));
      }, this.#callTimeoutMs);
      this.#waiters.add(done);
    });
    if (!this.#link) throw new Error(`node ${this.node}: link closed`);
    return this.#link;
  }

  #wake(): void {
    for (const f of this.#listeners) f();
  }

  // ---- QuiesceParticipant ----

  async report(fresh = false): Promise<ParticipantReport> {
    return (await this.#current()).report(fresh);
  }

  async hold(epoch: number): Promise<number> {
    return (await this.#current()).hold(epoch);
  }

  async freeze(): Promise<number> {
    return (await this.#current()).freeze();
  }

  async resume(): Promise<number> {
    return (await this.#current()).resume();
  }

  async setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): Promise<void> {
    return (await this.#current()).setCatchup(slot, epoch, targets);
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get lastHeartbeat() {
    return this.#link?.lastHeartbeat ?? null;
  }

  /** A guest-agent call (run, signal, network, close). */
  async request(call: string, body: Record<string, unknown> = {}, timeoutMs = this.#callTimeoutMs): Promise<unknown> {
    return (await this.#current()).request(call, body, timeoutMs);
  }

  close(why = 'closed'): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#unsubscribe?.();
    this.#link?.close(why);
    this.#link = null;
    this.#socket?.destroy();
    this.#socket = null;
    for (const w of [...this.#waiters]) w();
    this.#wake();
  }
}
