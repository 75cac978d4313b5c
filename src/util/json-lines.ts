/**
 * Line-delimited JSON over a stream socket: framing with a bound on line
 * length (a peer cannot make us buffer without limit), parse errors reported
 * per line, writes that do nothing once the socket is gone.
 */
import type { Socket } from 'node:net';

export class JsonLineReader {
  /** The line being received, in pieces: joined once, when its newline comes (linear in its length). */
  #parts: string[] = [];
  #partLength = 0;
  #limit: number;

  /**
   * @param onLine called with each complete line (trimmed, non-empty)
   * @param onOverflow called once when a line exceeds the limit; reading stops
   */
  constructor(
    limit: number,
    private onLine: (line: string) => void,
    private onOverflow: (limit: number) => void,
  ) {
    this.#limit = limit;
  }

  /** Give the stream to another reader of it (one exchange done, a session goes on); a partial line is kept. */
  setHandlers(onLine: (line: string) => void, onOverflow: (limit: number) => void): void {
    this.onLine = onLine;
    this.onOverflow = onOverflow;
  }

  /** Raise (or lower) the limit, e.g. once a peer has authenticated. */
  set limit(n: number) {
    this.#limit = n;
  }

  push(chunk: string): void {
    let from = 0;
    while (this.#limit >= 0) {
      const nl = chunk.indexOf('\n', from);
      if (nl < 0) {
        const rest = chunk.length - from;
        if (rest > 0) {
          this.#parts.push(from === 0 ? chunk : chunk.slice(from));
          this.#partLength += rest;
        }
        if (this.#partLength > this.#limit) this.#overflow();
        return;
      }
      if (this.#partLength + (nl - from) > this.#limit) return this.#overflow();
      let line = chunk.slice(from, nl);
      if (this.#parts.length) {
        this.#parts.push(line);
        line = this.#parts.join('');
        this.#parts = [];
        this.#partLength = 0;
      }
      from = nl + 1;
      line = line.trim();
      if (line) this.onLine(line);
    }
  }

  #overflow(): void {
    const limit = this.#limit;
    this.stop();
    this.onOverflow(limit);
  }

  /** Stop delivering lines (the connection is being dropped). */
  stop(): void {
    this.#limit = -1;
    this.#parts = [];
    this.#partLength = 0;
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
