/**
 * The agent's half of the controller <-> agent protocol (controller/protocol.ts),
 * whatever carries it: a socket to a standalone controller (ControllerSession)
 * or the virtio-serial port of a VM (GuestAgent). It answers the controller's
 * calls on the node's segment and pushes reports and heartbeats while a
 * connection is there; without one it stays quiet.
 */
import { sumCounts } from '../quiesce/snapshot.js';
import { encodeReport } from '../quiesce/wire.js';
import type { NodeAgent } from './node-agent.js';

/** Where lines to the controller go; null while there is no connection. */
export type LineSink = (message: object) => void;

/** A call from the controller, as parsed from its line. */
export interface IncomingCall {
  readonly id: number;
  readonly call: unknown;
  readonly [k: string]: unknown;
}

function live(state: string): boolean {
  return state !== 'empty' && state !== 'finalized' && state !== 'detached';
}

/** Calls after which the controller waits for the ranks to follow: it gets a report at once. */
const COMMANDS = new Set(['hold', 'freeze', 'resume', 'setCatchup']);

export class AgentEndpoint {
  #sink: LineSink | null = null;
  #changePending = false;
  /** The last pushed report showed an operation under way (so the settling back to running is pushed too). */
  #lastPushActive = false;
  #heartbeat: NodeJS.Timeout | null = null;
  #agent: NodeAgent | null = null;
  readonly #onChange = (): void => this.#pushChanged();

  constructor(private readonly heartbeatMs = 1_000) {}

  /** Serve this node agent (one at a time; null to serve none). */
  setAgent(agent: NodeAgent | null): void {
    this.#agent?.off('changed', this.#onChange);
    this.#agent = agent;
    agent?.on('changed', this.#onChange);
    if (agent && this.#sink) this.#pushReport(true);
  }

  get agent(): NodeAgent | null {
    return this.#agent;
  }

  get connected(): boolean {
    return this.#sink !== null;
  }

  /** A connection is up: lines go to `sink` from now on. */
  connect(sink: LineSink): void {
    this.#sink = sink;
    this.#lastPushActive = false;
    this.#heartbeat ??= setInterval(() => this.#pushHeartbeat(), this.heartbeatMs);
    this.#heartbeat.unref();
  }

  disconnect(): void {
    this.#sink = null;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
  }

  send(message: object): void {
    this.#sink?.(message);
  }

  #pushChanged(): void {
    // Coalesce a burst of rank changes into one push per tick.
    if (this.#changePending || !this.#sink) return;
    this.#changePending = true;
    setImmediate(() => {
      this.#changePending = false;
      this.#pushReport(false);
    });
  }

  /**
   * Full reports go out while an operation is under way (a command other
   * than run, or ranks not yet back to running) and once more when it has
   * settled: the controller decides from them without asking each round.
   * Otherwise only the heartbeat carries counters.
   */
  #pushReport(always: boolean): void {
    const agent = this.#agent;
    if (!this.#sink || !agent || agent.segment.closed) return;
    const r = agent.snapshot();
    const active = r.command !== 'run' || r.ranks.some((x) => live(x.state) && x.state !== 'running');
    if (always || active || this.#lastPushActive) {
      this.#sink({ event: 'report', report: encodeReport({ snapshot: r, exited: [...agent.exited.values()].map((x) => ({ slot: x.slot, pid: x.pid })) }) });
    }
    this.#lastPushActive = active;
  }

  #pushHeartbeat(): void {
    const agent = this.#agent;
    if (!this.#sink) return;
    const ranks = agent && !agent.segment.closed ? agent.snapshot().ranks.filter((x) => x.state !== 'empty').map((x) => [x.worldRank, x.state, sumCounts(x.sent), sumCounts(x.recvd)]) : [];
    this.#sink({ event: 'heartbeat', at: Date.now(), ranks });
  }

  /**
   * Answer one call. `extra` handles calls beyond the quiesce set (the guest
   * agent's open/run/network); it returns undefined for a call it does not know.
   */
  async answer(call: IncomingCall, extra?: (call: IncomingCall) => Promise<unknown> | undefined): Promise<void> {
    const { id } = call;
    try {
      let result: unknown;
      const agent = this.#agent;
      const needAgent = (): NodeAgent => {
        if (!agent) throw new Error('no job is open on this node');
        return agent;
      };
      switch (call.call) {
        case 'report':
          result = encodeReport(await needAgent().report());
          break;
        case 'hold':
          if (typeof call.epoch !== 'number') throw new Error('hold needs an epoch');
          result = await needAgent().hold(call.epoch);
          break;
        case 'freeze':
          result = await needAgent().freeze();
          break;
        case 'resume':
          result = await needAgent().resume();
          break;
        case 'setCatchup':
          if (typeof call.slot !== 'number' || typeof call.epoch !== 'number' || !Array.isArray(call.targets)) throw new Error('setCatchup needs slot, epoch, targets');
          await needAgent().setCatchup(call.slot, call.epoch, call.targets as { gid: string; target: number }[]);
          result = null;
          break;
        default: {
          const handled = extra?.(call);
          if (handled === undefined) throw new Error(`unknown call ${JSON.stringify(call.call)}`);
          result = await handled;
        }
      }
      this.send({ id, ok: true, result });
      if (COMMANDS.has(call.call as string)) this.#pushReport(true);
    } catch (err) {
      this.send({ id, ok: false, error: (err as Error).message });
    }
  }

  close(): void {
    this.disconnect();
    this.setAgent(null);
  }
}
