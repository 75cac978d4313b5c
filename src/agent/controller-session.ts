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
import { AgentEndpoint, type IncomingCall } from './agent-endpoint.js';
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

export class ControllerSession {
  #socket: Socket | null = null;
  #closed = false;
  readonly #endpoint: AgentEndpoint;

  constructor(
    private readonly agent: NodeAgent,
    private readonly options: ControllerSessionOptions,
  ) {
    this.#endpoint = new AgentEndpoint(options.heartbeatMs ?? 1_000);
    this.#endpoint.setAgent(agent);
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
    this.#endpoint.connect((m) => writeJsonLine(s, m));
    const onCall = (line: string): void => void this.#onCall(s, line);
    hello.lines.setHandlers(onCall, () => s.destroy());
    for (const line of hello.rest) onCall(line);
    s.on('close', () => this.#onDrop(s));
  }

  async #onCall(s: Socket, line: string): Promise<void> {
    const p = parseJsonLine(line);
    const call = (p.ok ? p.value : null) as IncomingCall | null;
    if (!call || typeof call.id !== 'number' || this.#socket !== s) return;
    await this.#endpoint.answer(call);
  }

  #onDrop(s: Socket): void {
    if (this.#socket !== s) return;
    this.#socket = null;
    this.#endpoint.disconnect();
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
    this.#endpoint.close();
    const s = this.#socket;
    this.#socket = null;
    s?.end();
  }
}
