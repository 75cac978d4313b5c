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
import { parseJsonLine, readJsonLines, writeJsonLine } from '../util/json-lines.js';
import { MAX_LINE_BYTES } from '../controller/protocol.js';
import { toSparse } from '../quiesce/snapshot.js';
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
}

export class ControllerSession {
  #socket: Socket | null = null;
  #closed = false;
  #changePending = false;
  #connectedOnce = false;
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
    const hello = await controllerRequestOn(s, address, {
      op: 'agent',
      job,
      node,
      ...(token === undefined ? {} : { token }),
      ...(register && !this.#connectedOnce ? { register: { command: [...register.command], np: register.np, ...(register.launcherPid === undefined ? {} : { launcherPid: register.launcherPid }) } } : {}),
    }, { timeoutMs: 10_000, ...(token === undefined ? {} : { token }) });
    if (!hello.ok) {
      s.destroy();
      throw new Error(`controller ${describeAddress(address)} refused the agent: ${hello.error}`);
    }
    this.#connectedOnce = true;
    this.#socket = s;
    this.options.log.info({ controller: describeAddress(address), job, node }, 'attached to controller');
    const reader = readJsonLines(s, MAX_LINE_BYTES, (line) => void this.#onCall(s, line), () => s.destroy());
    if (hello.rest) reader.push(hello.rest);
    s.on('close', () => this.#onDrop(s));
  }

  #pushChanged(): void {
    // Coalesce a burst of rank changes into one push per tick.
    if (this.#changePending || !this.#socket) return;
    this.#changePending = true;
    setImmediate(() => {
      this.#changePending = false;
      if (this.#socket) writeJsonLine(this.#socket, { event: 'changed' });
    });
  }

  async #onCall(s: Socket, line: string): Promise<void> {
    const p = parseJsonLine(line);
    const call = (p.ok ? p.value : null) as { id?: unknown; call?: unknown; epoch?: unknown; slot?: unknown; targets?: unknown } | null;
    if (!call || typeof call.id !== 'number') return;
    const id = call.id;
    try {
      let result: unknown;
      switch (call.call) {
        case 'report': {
          const r = await this.agent.report();
          result = { ...r, snapshot: { ...r.snapshot, ranks: r.snapshot.ranks.map((x) => ({ ...x, sent: toSparse(x.sent), recvd: toSparse(x.recvd) })) } };
          break;
        }
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
        this.options.log.debug({ err: (err as Error).message }, 'controller not reachable yet');
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
    this.agent.off('changed', this.#onChange);
    const s = this.#socket;
    this.#socket = null;
    s?.end();
  }
}
