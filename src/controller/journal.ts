/**
 * Per-job journal: JSON lines under <stateDir>/jobs/<job>/. events.jsonl has
 * everything that happened to the job in order (job start/end, nodes, every
 * operation phase, health events, failures, decisions); operations.jsonl has
 * one complete record per finished operation (with its timeline). Appends are
 * synchronous and one line each, so a crash loses at most the line being
 * written, and a reader skips a torn last line.
 */
import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { entriesByFileTime } from '../util/files.js';

export interface JournalEvent {
  /** ms since the epoch. */
  readonly at: number;
  readonly type: string;
  readonly [key: string]: unknown;
}

/** Where journals go unless the configuration says: $SYMBIO_STATE_DIR, XDG state, or /var/lib/symbio for root. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SYMBIO_STATE_DIR) return env.SYMBIO_STATE_DIR;
  if (process.getuid?.() === 0 && !env.XDG_STATE_HOME) return '/var/lib/symbio';
  return join(env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'symbio');
}

const JOB_ID = /^[A-Za-z0-9_.-]{1,64}$/;

export function jobDir(stateDir: string, job: string): string {
  // The id becomes a directory name: never let it climb out.
  if (!JOB_ID.test(job) || job === '.' || job === '..') throw new Error(`invalid job id '${job}'`);
  return join(stateDir, 'jobs', job);
}

export class JobJournal {
  readonly dir: string;
  readonly eventsFile: string;
  readonly operationsFile: string;
  /** The first write error (disk full, directory removed): reported once, never thrown. */
  writeError: string | null = null;

  constructor(
    stateDir: string,
    readonly job: string,
    private readonly onWriteError: (message: string) => void = () => undefined,
  ) {
    this.dir = jobDir(stateDir, job);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.eventsFile = join(this.dir, 'events.jsonl');
    this.operationsFile = join(this.dir, 'operations.jsonl');
  }

  event(type: string, data: Record<string, unknown> = {}): JournalEvent {
    const e: JournalEvent = { at: Date.now(), type, job: this.job, ...data };
    this.#append(this.eventsFile, e);
    return e;
  }

  operation(record: object): void {
    this.#append(this.operationsFile, record);
  }

  // A journal that cannot be written must not take the job down with it:
  // the job and its operations matter more than their record.
  #append(file: string, value: unknown): void {
    try {
      appendFileSync(file, JSON.stringify(value) + '\n', { mode: 0o600 });
    } catch (err) {
      if (this.writeError === null) {
        this.writeError = `cannot write ${file}: ${(err as Error).message}`;
        this.onWriteError(this.writeError);
      }
    }
  }
}

/** Lines of a JSON-lines file as objects; a torn or foreign line is skipped. */
export function readJsonLinesFile<T = JournalEvent>(file: string): T[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: T[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      const v = JSON.parse(line) as unknown;
      if (v !== null && typeof v === 'object') out.push(v as T);
    } catch {
      // a line cut short by a crash
    }
  }
  return out;
}

export function readEvents(stateDir: string, job: string, opts: { since?: number; limit?: number; types?: readonly string[] } = {}): JournalEvent[] {
  let events = readJsonLinesFile(join(jobDir(stateDir, job), 'events.jsonl'));
  if (opts.since !== undefined) events = events.filter((e) => e.at >= opts.since!);
  if (opts.types?.length) events = events.filter((e) => opts.types!.includes(e.type));
  if (opts.limit !== undefined) events = events.slice(-opts.limit);
  return events;
}

export function readOperations(stateDir: string, job: string): Record<string, unknown>[] {
  return readJsonLinesFile<Record<string, unknown>>(join(jobDir(stateDir, job), 'operations.jsonl'));
}

/** Jobs that have a journal, newest first. */
export function journaledJobs(stateDir: string): { job: string; modified: number }[] {
  return entriesByFileTime(join(stateDir, 'jobs'), (n) => JOB_ID.test(n), 'events.jsonl').map((e) => ({ job: e.name, modified: e.mtimeMs }));
}
