/**
 * A node agent's session with a standalone controller: it says who it is
 * (job, node; the first agent of a job registers it), then answers the
 * controller's calls on its segment and tells it when ranks change. Counters
 * travel sparse (a rank talks to few peers, the world may be large).
 *
 * If the controller goes away, held ranks are resumed here at once (a job is
 * never left waiting for a controller that is gone), and the session
 * reconnects with a back-off until it is closed.
 */
import type { Socket } from 'node:net';
import { controllerRequestOn, describeAddress, openConnection, type ControllerAddress } from '../controller/client.js';
import { parseJsonLine, writeJsonLine } from '../util/json-lines.js';
import { sumCounts } from '../quiesce/snapshot.js';
import { encodeReport } from '../quiesce/wire.js';
import type { NodeAgent } from './node-agent.js';
import type { Logger } from '../log.js';

export interface ControllerSessionOptions {
  readonly address: ControllerAddress;
  readonly token?: string;
  readonly job: string;
  readonly node: string;
  readonly register?: { readonly command: readonly string[]; readonly np: number | null; readonly launcherPid?: number };
  readonly log: Logger;
  /** First delay between reconnect attempts, ms (doubles up to 5 s). */
  readonly retryMs?: number;
  /** Period of the compact counter heartbeat, ms. */
  readonly heartbeatMs?: number;
}

function live(state: string): boolean {
  return state !== 'empty' && state !== 'finalized' && state !== 'detached';
}

export class ControllerSession {
  #socket: Socket | null = null;
  #closed = false;
  #changePending = false;
  /** The last pushed report showed an operation under way (so the settling back to running is pushed too). */
  #lastPushActive = false;
  #heartbeat: NodeJS.Timeout | null = null;
  readonly #onChange = (): void => this.#pushChanged();

  constructor(
    private readonly agent: NodeAgent,
    private readonly options: ControllerSessionOptions,
  ) {
    agent.on('changed', this.#onChange);
  }

  /** Connect and attach; rejects if the first attempt fails (later drops reconnect by themselves). */
  async start(): Promise<void> {
    await this.#connect();
  }

  async #connect(): Promise<void> {
    const { address, token, job, node, register } = this.options;
    const s = openConnection(address);
    // From the first byte to the last: a reset must be a drop we handle, never an uncaught error.
    s.on('error', (err) => this.options.log.debug({ err: err.message }, 'controller connection error'));
    let hello;
    try {
      hello = await controllerRequestOn(s, address, {
      op: 'agent',
      job,
      node,
      ...(token === undefined ? {} : { token }),
      ...(register ? { register: { command: [...register.command], np: register.np, ...(register.launcherPid === undefined ? {} : { launcherPid: register.launcherPid }) } } : {}),
    }, { timeoutMs: 10_000, ...(token === undefined ? {} : { token }) });
    } catch (err) {
      s.destroy();
      throw err;
    }
    if (!hello.ok) {
      s.destroy();
      throw new Error(`controller ${describeAddress(address)} refused the agent: ${hello.error}`);
    }
    if (this.#closed) {
      s.destroy(); // closed while we were connecting
      return;
    }
    this.#socket = s;
    this.options.log.info({ controller: describeAddress(address), job, node }, 'attached to controller');
    this.#heartbeat ??= setInterval(() => this.#pushHeartbeat(), this.options.heartbeatMs ?? 1_000);
    this.#heartbeat.unref();
    const onCall = (line: string): void => void this.#onCall(s, line);
    hello.lines.setHandlers(onCall, () => s.destroy());
    for (const line of hello.rest) onCall(line);
    s.on('close', () => this.#onDrop(s));
  }

  #pushChanged(): void {
    // Coalesce a burst of rank changes into one push per tick.
    if (this.#changePending || !this.#socket) return;
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
    const s = this.#socket;
    if (!s || this.agent.segment.closed) return;
    const r = this.agent.snapshot();
    const active = r.command !== 'run' || r.ranks.some((x) => live(x.state) && x.state !== 'running');
    if (always || active || this.#lastPushActive) {
      writeJsonLine(s, { event: 'report', report: encodeReport({ snapshot: r, exited: [...this.agent.exited.values()].map((x) => ({ slot: x.slot, pid: x.pid })) }) });
    }
    this.#lastPushActive = active;
  }

  #pushHeartbeat(): void {
    const s = this.#socket;
    if (!s || this.agent.segment.closed) return;
    const ranks = this.agent.snapshot().ranks.filter((x) => x.state !== 'empty').map((x) => [x.worldRank, x.state, sumCounts(x.sent), sumCounts(x.recvd)]);
    writeJsonLine(s, { event: 'heartbeat', at: Date.now(), ranks });
  }

  async #onCall(s: Socket, line: string): Promise<void> {
    const p = parseJsonLine(line);
    const call = (p.ok ? p.value : null) as { id?: unknown; call?: unknown; epoch?: unknown; slot?: unknown; targets?: unknown } | null;
    if (!call || typeof call.id !== 'number') return;
    const id = call.id;
    try {
      let result: unknown;
      switch (call.call) {
        case 'report':
          result = encodeReport(await this.agent.report());
          break;
        case 'hold':
          if (typeof call.epoch !== 'number') throw new Error('hold needs an epoch');
          result = await this.agent.hold(call.epoch);
          break;
        case 'freeze':
          result = await this.agent.freeze();
          break;
        case 'resume':
          result = await this.agent.resume();
          break;
        case 'setCatchup':
          if (typeof call.slot !== 'number' || typeof call.epoch !== 'number' || !Array.isArray(call.targets)) throw new Error('setCatchup needs slot, epoch, targets');
          await this.agent.setCatchup(call.slot, call.epoch, call.targets as { gid: string; target: number }[]);
          result = null;
          break;
        default:
          throw new Error(`unknown call ${JSON.stringify(call.call)}`);
      }
      writeJsonLine(s, { id, ok: true, result });
      // after a command, the controller waits for the ranks to follow it: tell it at once
      if (call.call === 'hold' || call.call === 'freeze' || call.call === 'resume' || call.call === 'setCatchup') this.#pushReport(true);
    } catch (err) {
      writeJsonLine(s, { id, ok: false, error: (err as Error).message });
    }
  }

  #onDrop(s: Socket): void {
    if (this.#socket !== s) return;
    this.#socket = null;
    if (this.agent.segment.closed) return;
    if (this.agent.segment.command().command !== 'run') {
      this.options.log.warn('controller connection lost with ranks held: resuming them');
      void this.agent.resume();
    }
    if (!this.#closed) void this.#reconnect();
  }

  async #reconnect(): Promise<void> {
    let delay = this.options.retryMs ?? 250;
    while (!this.#closed) {
      await new Promise((r) => setTimeout(r, delay));
      if (this.#closed) return;
      try {
        await this.#connect();
        return;
      } catch (err) {
        // the first failure at warn, then quietly: the job runs on meanwhile
        if (delay === (this.options.retryMs ?? 250)) this.options.log.warn({ err: (err as Error).message }, 'controller not reachable; retrying');
        else this.options.log.debug({ err: (err as Error).message }, 'controller not reachable yet');
        delay = Math.min(delay * 2, 5_000);
      }
    }
  }

  /** Tell the controller how the job ended (best effort). */
  finished(exitCode: number): void {
    if (this.#socket) writeJsonLine(this.#socket, { event: 'finished', exitCode });
  }

  close(): void {
    this.#closed = true;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.agent.off('changed', this.#onChange);
    const s = this.#socket;
    this.#socket = null;
    s?.end();
  }
}
