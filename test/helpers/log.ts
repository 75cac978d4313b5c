/** Loggers for tests. */
import { pino, type Logger } from 'pino';

/** A pino logger at info whose JSON lines land in `lines` (to see which way something went, which warning came). */
export function captureLogger(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { log, lines };
}
