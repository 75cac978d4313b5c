/**
 * A node agent reached over the controller's socket, seen by the job's
 * quiescer as one more participant. Calls are JSON lines with ids; the agent
 * pushes `changed` when its ranks move, which wakes a waiting quiesce.
 * If the connection drops, every pending call fails at once (the quiesce
 * then rolls back) and the agent, for its part, resumes its ranks.
 */
import type { Socket } from 'node:net';
import type { AgentCall } from './protocol.js';
import { decodeReport } from '../quiesce/wire.js';
import { writeJsonLine } from '../util/json-lines.js';
import type { ParticipantReport, QuiesceParticipant } from '../quiesce/job-quiescer.js';
import type { CatchupTarget } from '../quiesce/snapshot.js';

type CallBody = AgentCall extends infer C ? (C extends AgentCall ? Omit<C, 'id'> : never) : never;

export class RemoteAgentLink implements QuiesceParticipant {
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  readonly #listeners = new Set<() => void>();
  #closedWhy: string | null = null;
  /** The agent's last pushed report: operations read it instead of asking every round. */
  #latest: ParticipantReport | null = null;
  #heartbeat: { line: string; receivedAt: number } | null = null;

  constructor(
    readonly node: string,
    private readonly socket: Socket,
    private readonly callTimeoutMs: number,
    private readonly onFinished: (exitCode: number) => void,
    /** Events beyond the quiesce set (a guest agent's output and exit); true when handled. */
    private readonly onEvent?: (m: Record<string, unknown>) => boolean,
  ) {}

  get closed(): boolean {
    return this.#closedWhy !== null;
  }

  /**
   * A line from the agent (after its hello). Returns an error text for a
   * malformed one. Hand-checked rather than by schema: at a thousand agents
   * this is the controller's hottest path.
   */
  handleLine(value: unknown): string | null {
    const m = value as { event?: unknown; id?: unknown; ok?: unknown; result?: unknown; error?: unknown; report?: unknown; at?: unknown; ranks?: unknown; exitCode?: unknown } | null;
    if (m === null || typeof m !== 'object') return 'agent sent a line that is not an object';
    switch (m.event) {
      case 'report':
        try {
          this.#latest = decodeReport(m.report, this.node);
        } catch (err) {
          return (err as Error).message;
        }
        this.#wake();
        return null;
      case 'heartbeat':
        this.#heartbeat = { line: JSON.stringify(m), receivedAt: Date.now() };
        return null;
      case 'changed':
        this.#wake();
        return null;
      case 'finished':
        if (typeof m.exitCode !== 'number') return 'finished needs exitCode';
        this.onFinished(m.exitCode);
        return null;
      case undefined:
        break;
      default:
        if (this.onEvent?.(m as Record<string, unknown>)) return null;
        return `unknown event ${JSON.stringify(m.event)}`;
    }
    if (typeof m.id !== 'number') return 'agent sent a line that is neither an answer nor an event';
    const p = this.#pending.get(m.id);
    if (!p) return null; // answer to a call that already timed out
    this.#pending.delete(m.id);
    clearTimeout(p.timer);
    if (m.ok === true) p.resolve(m.result);
    else p.reject(new Error(`node ${this.node}: ${typeof m.error === 'string' ? m.error : 'call failed'}`));
    return null;
  }

  /** A heartbeat line, kept unparsed until someone looks (see lastHeartbeat). */
  heartbeatLine(line: string): void {
    this.#heartbeat = { line, receivedAt: Date.now() };
  }

  /** Last heartbeat: when it came, and each rank's [worldRank, state, sent, received]; null if none or malformed. */
  get lastHeartbeat(): { at: number; receivedAt: number; ranks: [number, string, number, number][] } | null {
    const h = this.#heartbeat;
    if (!h) return null;
    try {
      const m = JSON.parse(h.line) as { at?: unknown; ranks?: unknown };
      if (typeof m.at !== 'number' || !Array.isArray(m.ranks)) return null;
      return { at: m.at, receivedAt: h.receivedAt, ranks: m.ranks as [number, string, number, number][] };
    } catch {
      return null;
    }
  }

  #wake(): void {
    for (const f of this.#listeners) f();
  }

  #call(body: CallBody): Promise<unknown> {
    return this.request(body.call, body);
  }

  /** Any call the agent knows (the guest agent's open, run, network, ...). */
  request(call: string, body: Record<string, unknown> = {}, timeoutMs = this.callTimeoutMs): Promise<unknown> {
    if (this.#closedWhy !== null) return Promise.reject(new Error(`node ${this.node} is gone (${this.#closedWhy})`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`node ${this.node} did not answer '${call}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      writeJsonLine(this.socket, { ...body, id, call });
    });
  }

  /**
   * The latest pushed report (no round trip), or a fresh one when asked,
   * when none came yet, or when the last one was not a consistent copy. A pushed report may predate our last command; the
   * coordinator sees that (epoch, command) and waits for the next push.
   */
  async report(fresh = false): Promise<ParticipantReport> {
    if (this.#closedWhy !== null) throw new Error(`node ${this.node} is gone (${this.#closedWhy})`);
    // a torn copy (ranks moved while it was taken) is never reused: the next push may be long in coming
    if (!fresh && this.#latest?.snapshot.consistent) return this.#latest;
    const r = decodeReport(await this.#call({ call: 'report' }), this.node);
    this.#latest = r;
    return r;
  }

  async hold(epoch: number): Promise<number> {
    return (await this.#call({ call: 'hold', epoch })) as number;
  }

  async freeze(): Promise<number> {
    return (await this.#call({ call: 'freeze' })) as number;
  }

  async resume(): Promise<number> {
    return (await this.#call({ call: 'resume' })) as number;
  }

  async setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): Promise<void> {
    await this.#call({ call: 'setCatchup', slot, epoch, targets });
  }

  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The connection ended: fail what is pending. */
  close(why: string): void {
    if (this.#closedWhy !== null) return;
    this.#closedWhy = why;
    for (const [, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`node ${this.node} is gone (${why})`));
    }
    this.#pending.clear();
    this.#wake();
    this.socket.destroy(); // a replaced link's connection goes too
  }
}
