/**
 * Logging: pino, structured, to stderr (stdout is for results and for the MPI
 * job's own output). Pretty on a terminal, JSON lines otherwise. Components
 * take child loggers: `logger.child({ component: 'agent' })`.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function makeRoot(): Logger {
  const asked = process.env.SYMBIO_LOG_LEVEL;
  // a mistyped level must not take every command down: say so, use info
  const level = asked === undefined || LEVELS.includes(asked) ? (asked ?? 'info') : 'info';
  if (asked !== undefined && level !== asked) process.stderr.write(`symbio: SYMBIO_LOG_LEVEL='${asked}' is not one of ${LEVELS.join(', ')}; using info\n`);
  if (process.stderr.isTTY && process.env.SYMBIO_LOG_FORMAT !== 'json') {
    // synchronous pretty stream: a crash must not lose the last lines
    const stream = pretty({ destination: 2, sync: true, colorize: true, ignore: 'pid,hostname' });
    return pino({ level, base: { pid: process.pid } }, stream);
  }
  return pino({ level }, pino.destination({ dest: 2, sync: true }));
}

export const logger: Logger = makeRoot();

export function componentLogger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return logger.child({ component, ...bindings });
}
