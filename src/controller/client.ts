/**
 * Talking to a controller (embedded in a launcher, or standalone) from the
 * CLI: one request, progress lines while it runs, one reply. An address is a
 * Unix socket path or tcp://host:port (then a token is needed).
 */
import { connect, type Socket } from 'node:net';
import { parseJsonLine, readJsonLines, writeJsonLine, type JsonLineReader } from '../util/json-lines.js';
import { MAX_LINE_BYTES, type Reply } from './protocol.js';

export interface ControllerAddress {
  readonly unix?: string;
  readonly tcp?: { readonly host: string; readonly port: number };
}

export function parseAddress(text: string): ControllerAddress {
  const m = /^tcp:\/\/(\[[^\]]+\]|[^:/]+):(\d{1,5})\/?$/.exec(text);
  if (m) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new Error(`controller address ${text}: port must be 1-65535`);
    return { tcp: { host: m[1]!.replace(/^\[|\]$/g, ''), port } };
  }
  if (text.includes('://')) throw new Error(`controller address ${text}: expected a socket path or tcp://host:port`);
  return { unix: text };
}

export function describeAddress(a: ControllerAddress): string {
  return a.tcp ? `tcp://${a.tcp.host}:${a.tcp.port}` : a.unix!;
}

export function openConnection(a: ControllerAddress): Socket {
  return a.tcp ? connect(a.tcp.port, a.tcp.host) : connect(a.unix!);
}

export interface RequestOptions {
  readonly timeoutMs: number;
  readonly token?: string;
  readonly onProgress?: (progress: unknown) => void;
}

/** The reply of one exchange, with the stream it came on (for whoever goes on using the socket). */
export type ExchangeReply = Reply & {
  /** The socket's line reader, still attached: hand it on with setHandlers. */
  readonly lines: JsonLineReader;
  /** Complete lines that arrived after the reply, before anyone took the reader over. */
  readonly rest: string[];
};

/**
 * One exchange on an open socket: hello (with the token) when given, the
 * request, progress lines, the reply. The socket stays open, without our
 * error/close listeners; its line reader comes back with the reply.
 */
export function controllerRequestOn(s: Socket, address: ControllerAddress, request: object, opts: RequestOptions): Promise<ExchangeReply> {
  const where = describeAddress(address);
  return new Promise((resolve, reject) => {
    let settled = false;
    let helloDone = opts.token === undefined;
    const rest: string[] = [];
    const send = (): void => writeJsonLine(s, helloDone ? { id: 1, ...request } : { id: 0, op: 'hello', token: opts.token });
    const finish = (f: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.off('error', onError);
      s.off('close', onClose);
      s.off('connect', send);
      f();
    };
    const timer = setTimeout(() => finish(() => reject(new Error(`no answer from ${where} within ${opts.timeoutMs} ms`))), opts.timeoutMs);
    const onLine = (line: string): void => {
      if (settled) {
        rest.push(line); // for the next owner of the stream
        return;
      }
      const p = parseJsonLine(line);
      if (!p.ok || p.value === null || typeof p.value !== 'object') return finish(() => reject(new Error(`garbled reply from ${where}`)));
      const v = p.value as Reply & { progress?: unknown };
      if (!helloDone) {
        if (!v.ok) return finish(() => resolve({ ...v, lines, rest }));
        helloDone = true;
        send();
        return;
      }
      if ('progress' in v && v.progress !== undefined) {
        opts.onProgress?.(v.progress);
        return;
      }
      finish(() => resolve({ ...v, lines, rest }));
    };
    const lines = readJsonLines(s, MAX_LINE_BYTES, onLine, () => finish(() => reject(new Error(`reply from ${where} too long`))));
    const onError = (err: Error): void => finish(() => reject(new Error(`cannot reach the controller at ${where}: ${err.message}`)));
    const onClose = (): void => finish(() => reject(new Error(`${where} closed the connection without answering`)));
    s.on('error', onError);
    s.on('close', onClose);
    if (s.connecting) s.once('connect', send);
    else send();
  });
}

/** Send one request on a new connection; resolve with the reply (the connection is closed). */
export async function controllerRequest(address: ControllerAddress, request: object, opts: RequestOptions): Promise<Reply> {
  const s = openConnection(address);
  try {
    const { lines: _lines, rest: _rest, ...reply } = await controllerRequestOn(s, address, request, opts);
    return reply as Reply;
  } finally {
    s.destroy();
  }
}
