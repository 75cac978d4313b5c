/**
 * A node agent reached over the controller's socket, seen by the job's
 * quiescer as one more participant. Calls are JSON lines with ids; the agent
 * pushes `changed` when its ranks move, which wakes a waiting quiesce.
 * If the connection drops, every pending call fails at once (the quiesce
 * then rolls back) and the agent, for its part, resumes its ranks.
 */
import type { Socket } from 'node:net';
import { AgentAnswer, AgentPush, type AgentCall } from './protocol.js';
import { writeJsonLine } from '../util/json-lines.js';
import type { ParticipantReport, QuiesceParticipant } from '../quiesce/job-quiescer.js';
import type { CatchupTarget, NodeSnapshot } from '../quiesce/snapshot.js';

type CallBody = AgentCall extends infer C ? (C extends AgentCall ? Omit<C, 'id'> : never) : never;

export class RemoteAgentLink implements QuiesceParticipant {
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  #waiters: Array<() => void> = [];
  #closedWhy: string | null = null;

  constructor(
    readonly node: string,
    private readonly socket: Socket,
    private readonly callTimeoutMs: number,
    private readonly onFinished: (exitCode: number) => void,
  ) {}

  get closed(): boolean {
    return this.#closedWhy !== null;
  }

  /** A line from the agent (after its hello). Returns an error text for a malformed one. */
  handleLine(value: unknown): string | null {
    const push = AgentPush.safeParse(value);
    if (push.success) {
      if (push.data.event === 'changed') this.#wake();
      else this.onFinished(push.data.exitCode);
      return null;
    }
    const ans = AgentAnswer.safeParse(value);
    if (!ans.success) return 'agent sent a line that is neither an answer nor an event';
    const p = this.#pending.get(ans.data.id);
    if (!p) return null; // answer to a call that already timed out
    this.#pending.delete(ans.data.id);
    clearTimeout(p.timer);
    if (ans.data.ok) p.resolve(ans.data.result);
    else p.reject(new Error(`node ${this.node}: ${ans.data.error}`));
    return null;
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  #call(body: CallBody): Promise<unknown> {
    if (this.#closedWhy !== null) return Promise.reject(new Error(`node ${this.node} is gone (${this.#closedWhy})`));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`node ${this.node} did not answer '${body.call}' within ${this.callTimeoutMs} ms`));
      }, this.callTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      writeJsonLine(this.socket, { id, ...body });
    });
  }

  async report(): Promise<ParticipantReport> {
    const r = (await this.#call({ call: 'report' })) as { snapshot: NodeSnapshot; exited: ParticipantReport['exited'] };
    // The agent labels its ranks; make sure they carry the node we know it as.
    if (r.snapshot.node !== this.node) {
      return { ...r, snapshot: { ...r.snapshot, node: this.node, ranks: r.snapshot.ranks.map((x) => ({ ...x, node: this.node })) } };
    }
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

  nextChange(ms: number): Promise<void> {
    if (this.#closedWhy !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.#waiters.push(done);
    });
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
  }
}
