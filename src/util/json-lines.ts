/**
 * Line-delimited JSON over a stream socket: framing with a bound on line
 * length (a peer cannot make us buffer without limit), parse errors reported
 * per line, writes that do nothing once the socket is gone.
 */
import type { Socket } from 'node:net';

export class JsonLineReader {
  #buf = '';
  #limit: number;

  /**
   * @param onLine called with each complete line (trimmed, non-empty)
   * @param onOverflow called once when a line exceeds the limit; reading stops
   */
  constructor(
    limit: number,
    private readonly onLine: (line: string) => void,
    private readonly onOverflow: (limit: number) => void,
  ) {
    this.#limit = limit;
  }

  /** Raise (or lower) the limit, e.g. once a peer has authenticated. */
  set limit(n: number) {
    this.#limit = n;
  }

  push(chunk: string): void {
    if (this.#limit < 0) return;
    this.#buf += chunk;
    let nl: number;
    while ((nl = this.#buf.indexOf('\n')) >= 0) {
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (line) this.onLine(line);
      if (this.#limit < 0) return;
    }
    if (this.#buf.length > this.#limit) {
      const limit = this.#limit;
      this.#limit = -1;
      this.#buf = '';
      this.onOverflow(limit);
    }
  }

  /** Stop delivering lines (the connection is being dropped). */
  stop(): void {
    this.#limit = -1;
    this.#buf = '';
  }
}

/** Attach a reader to a socket (utf8). */
export function readJsonLines(s: Socket, limit: number, onLine: (line: string) => void, onOverflow: (limit: number) => void): JsonLineReader {
  const r = new JsonLineReader(limit, onLine, onOverflow);
  s.setEncoding('utf8');
  s.on('data', (chunk: string) => r.push(chunk));
  return r;
}

export function writeJsonLine(s: Socket, value: unknown): void {
  if (!s.destroyed && s.writable) s.write(JSON.stringify(value) + '\n');
}

/** JSON.parse that says what is wrong instead of throwing. */
export function parseJsonLine(line: string): { ok: true; value: unknown } | { ok: false; error: string } {
  try {
    return { ok: true, value: JSON.parse(line) as unknown };
  } catch {
    return { ok: false, error: 'request is not JSON' };
  }
}
