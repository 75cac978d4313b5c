/**
 * Shared pieces of the health-monitor plugins: reading sysfs without
 * crashing on missing files, running a tool with a timeout and a clear
 * "not installed" error, turning counters into rates (resets and wraps
 * included), extrapolating a trend to a limit, and not repeating the same
 * warning every sample.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION, type HealthEvent, type PluginContext, type Severity } from '../../src/index.js';

/** The plugin logger (pino), as handed to setup. */
export type MonitorLog = PluginContext<unknown>['log'];

/** What a monitor needs besides its options; tests inject a clock. */
export interface MonitorDeps {
  /** ms since the epoch; Date.now by default. */
  readonly now?: () => number;
  readonly log?: MonitorLog;
  /** Aborts a running command when the plugin is torn down. */
  readonly signal?: AbortSignal;
}

export interface Monitor {
  sample(): Promise<HealthEvent[]>;
}

export const HOUR_MS = 3_600_000;

// ---------------------------------------------------------------------------
// Options shared by every monitor

/** Option fields every monitor has (spread into its strict z.object). */
export const baseOptionShape = {
  host: z.string().min(1).default(hostname()).describe('Host the events are about (default: this machine).'),
  repeatMs: z
    .number()
    .int()
    .nonnegative()
    .default(600_000)
    .describe('Repeat a warning/critical condition that persists at most this often (ms); a change of severity is always reported.'),
};

/** Option fields of monitors that run a tool. */
export const commandOptionShape = {
  timeoutMs: z.number().int().positive().default(30_000).describe('Kill the tool if it runs longer than this (ms).'),
  maxBufferBytes: z.number().int().positive().default(8 * 1024 * 1024).describe('Largest output accepted from the tool (bytes).'),
};

// ---------------------------------------------------------------------------
// sysfs

/** Errors that mean "this attribute is not there / not readable right now": no crash, no value. */
const ABSENT = new Set(['ENOENT', 'ENOTDIR', 'ENODEV', 'ENXIO', 'EIO', 'EINVAL', 'EOPNOTSUPP', 'ENODATA', 'EAGAIN']);

function errCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** A sysfs attribute's text, trimmed; undefined when missing (or the driver refuses the read). */
export async function readSysfs(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (err) {
    if (ABSENT.has(errCode(err) ?? '')) return undefined;
    throw new Error(`cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** A numeric sysfs attribute; undefined when missing or not a number. */
export async function readSysfsNumber(path: string): Promise<number | undefined> {
  const text = await readSysfs(path);
  return text === undefined ? undefined : parseNumber(text);
}

/** A whole-string decimal number ("42", "-1.5", "1e3"); anything else is undefined. */
export function parseNumber(text: string): number | undefined {
  const t = text.trim();
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

/** Entries of a directory matching `pattern`, in natural order (mc2 before mc10); [] when it is missing. */
export async function listDir(dir: string, pattern?: RegExp): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (ABSENT.has(errCode(err) ?? '')) return [];
    throw new Error(`cannot list ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return names.filter((n) => !pattern || pattern.test(n)).sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
}

// ---------------------------------------------------------------------------
// Running tools

export interface RunOptions {
  readonly timeoutMs: number;
  readonly maxBufferBytes: number;
  readonly signal?: AbortSignal;
  /** Package that provides the tool, named in the "not found" error. */
  readonly installHint?: string;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit code; tools like smartctl report findings in it, so non-zero is not an error here. */
  readonly code: number;
}

/** The tool is not installed (or not at the configured path). */
export class CommandNotFoundError extends Error {
  override name = 'CommandNotFoundError';
}

/**
 * Run a tool (no shell) under a timeout and an output limit. Resolves with
 * the exit code whatever it is; rejects, naming the command, when it cannot
 * be started, is killed by the timeout, or prints too much. Runs with
 * LC_ALL=C: `sensors -j` prints numbers with the locale's decimal comma.
 */
export function runCommand(command: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  const name = basename(command);
  return new Promise((resolve, reject) => {
    execFile(
      command,
      [...args],
      {
        timeout: opts.timeoutMs,
        maxBuffer: opts.maxBufferBytes,
        killSignal: 'SIGKILL',
        encoding: 'utf8',
        env: { ...process.env, LC_ALL: 'C' },
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout, stderr, code: 0 });
        const code = errCode(err);
        if (code === 'ENOENT') {
          return reject(new CommandNotFoundError(`${name} not found${opts.installHint ? `: install ${opts.installHint}` : ''} (looked for '${command}')`));
        }
        if (code === 'EACCES') return reject(new Error(`${name} cannot be run: permission denied ('${command}')`));
        if (code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
          return reject(new Error(`${name} printed more than ${opts.maxBufferBytes} bytes; output ignored`));
        }
        if (code === 'ABORT_ERR') return reject(new Error(`${name} was aborted (monitor stopping)`));
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null; code?: unknown };
        if (e.killed || e.signal) {
          const why = e.killed ? `timed out after ${opts.timeoutMs} ms` : `was killed by ${e.signal}`;
          return reject(new Error(`${name} ${why}`));
        }
        if (typeof e.code === 'number') return resolve({ stdout, stderr, code: e.code });
        reject(new Error(`${name} failed: ${err.message}`, { cause: err }));
      },
    );
  });
}

/** First non-empty line of a tool's stderr, for error messages. */
export function firstLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).find((l) => l.length > 0) ?? '';
}

// ---------------------------------------------------------------------------
// Rates from counters

export interface RateTrackerOptions {
  /** Rates are taken over the samples of the last `windowMs`. */
  readonly windowMs: number;
  /**
   * The increase is divided by at least this span: right after startup one
   * error in 30 s is not "120 per hour". 0: the real span.
   */
  readonly minSpanMs?: number;
  /** Counter width when it wraps around (e.g. 2**32); without it, a drop is a reset to zero. */
  readonly wrapAt?: number;
}

export interface RateUpdate {
  /** Increase since the previous sample (0 on the first). */
  readonly delta: number;
  /** Events per hour over the window; undefined until two samples are apart in time. */
  readonly perHour: number | undefined;
  /** The counter went down and was taken as reset to zero (not a wrap). */
  readonly reset: boolean;
  /** First sample of this counter: there is no delta yet. */
  readonly first: boolean;
}

interface Series {
  last: number;
  acc: number;
  samples: { at: number; acc: number }[];
}

/** Per-key events per hour from successive samples of ever-growing counters. */
export class RateTracker {
  private readonly series = new Map<string, Series>();

  constructor(private readonly opts: RateTrackerOptions) {}

  update(key: string, value: number, at: number): RateUpdate {
    const s = this.series.get(key);
    if (!s) {
      this.series.set(key, { last: value, acc: 0, samples: [{ at, acc: 0 }] });
      return { delta: 0, perHour: undefined, reset: false, first: true };
    }
    let delta: number;
    let reset = false;
    if (value >= s.last) delta = value - s.last;
    else if (this.opts.wrapAt !== undefined && s.last > this.opts.wrapAt / 2 && value < this.opts.wrapAt / 2) {
      delta = this.opts.wrapAt - s.last + value; // wrapped past the top
    } else {
      delta = value; // zeroed (reset_counters, driver reload): it counted `value` since
      reset = true;
    }
    s.last = value;
    s.acc += delta;
    const prev = s.samples[s.samples.length - 1];
    if (prev && at < prev.at) s.samples = []; // clock went back: start the window again
    s.samples.push({ at, acc: s.acc });
    // keep one sample at or before the window's start, so the span covers the window
    while (s.samples.length > 2 && s.samples[1]!.at <= at - this.opts.windowMs) s.samples.shift();
    const oldest = s.samples[0]!;
    const span = at - oldest.at;
    const perHour = span > 0 ? ((s.acc - oldest.acc) * HOUR_MS) / Math.max(span, this.opts.minSpanMs ?? 0) : undefined;
    return { delta, perHour, reset, first: false };
  }

  /** Drop counters not seen in the latest sample (device gone). */
  retain(keys: ReadonlySet<string>): void {
    for (const k of [...this.series.keys()]) if (!keys.has(k)) this.series.delete(k);
  }
}

// ---------------------------------------------------------------------------
// Trends and lead times

export interface Point {
  readonly at: number;
  readonly value: number;
}

/** Least-squares line through the points (slope per ms); undefined with fewer than two distinct times. */
export function fitLine(points: readonly Point[]): { slope: number; intercept: number } | undefined {
  if (points.length < 2) return undefined;
  const t0 = points[0]!.at; // relative times keep the sums precise
  let sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const p of points) {
    const x = p.at - t0;
    sx += x;
    sy += p.value;
    sxx += x * x;
    sxy += x * p.value;
  }
  const n = points.length;
  const den = n * sxx - sx * sx;
  if (den === 0) return undefined;
  const slope = (n * sxy - sx * sy) / den;
  return { slope, intercept: (sy - slope * sx) / n - slope * t0 };
}

/**
 * Time (ms) from the last point until the value reaches `limit`, moving at
 * the fitted slope from the last value. 0 when already there; undefined when
 * there is no trend or it moves away from the limit.
 */
export function leadTimeTo(points: readonly Point[], limit: number): number | undefined {
  const last = points[points.length - 1];
  if (!last) return undefined;
  if (last.value === limit) return 0;
  const fit = fitLine(points);
  if (!fit || fit.slope === 0) return undefined;
  const lead = (limit - last.value) / fit.slope;
  return lead >= 0 ? Math.round(lead) : undefined;
}

/** Recent samples of one reading, for lead times. */
export class Trend {
  private readonly pts: Point[] = [];

  constructor(
    private readonly windowMs: number,
    private readonly maxPoints = 240,
  ) {}

  add(at: number, value: number): void {
    if (this.pts.length && at < this.pts[this.pts.length - 1]!.at) this.pts.length = 0;
    this.pts.push({ at, value });
    while (this.pts.length > 1 && (this.pts[0]!.at < at - this.windowMs || this.pts.length > this.maxPoints)) this.pts.shift();
  }

  points(): readonly Point[] {
    return this.pts;
  }

  /** Change per hour over the window; undefined with fewer than two samples. */
  slopePerHour(): number | undefined {
    const f = fitLine(this.pts);
    return f ? f.slope * HOUR_MS : undefined;
  }

  leadTimeTo(limit: number): number | undefined {
    return leadTimeTo(this.pts, limit);
  }
}

/** Trends by key (one per sensor/attribute). */
export class Trends {
  private readonly map = new Map<string, Trend>();
  constructor(private readonly windowMs: number) {}
  add(key: string, at: number, value: number): Trend {
    let t = this.map.get(key);
    if (!t) this.map.set(key, (t = new Trend(this.windowMs)));
    t.add(at, value);
    return t;
  }
}

// ---------------------------------------------------------------------------
// Not repeating ourselves

/** A state that holds while it is seen (temperature over max, a link down...). */
export interface Condition {
  /** Identity of the condition across samples (component + what). */
  readonly key: string;
  /** severity warning or critical. */
  readonly event: HealthEvent;
  /**
   * Message of the info event sent when the condition is no longer seen.
   * Written while the condition holds, so it must not quote the reading.
   */
  readonly clearedMessage?: string;
}

interface Active {
  severity: Severity;
  lastEmit: number;
  event: HealthEvent;
  clearedMessage: string | undefined;
}

/**
 * Turns the conditions seen in each sample into events: a new condition or
 * a change of severity is reported at once, one that persists every
 * `repeatMs`, and one that is gone gets an info event.
 */
export class ConditionGate {
  private readonly active = new Map<string, Active>();

  constructor(private readonly repeatMs: number) {}

  update(conditions: readonly Condition[], now: number): HealthEvent[] {
    const out: HealthEvent[] = [];
    const seen = new Set<string>();
    for (const c of conditions) {
      if (seen.has(c.key)) continue;
      seen.add(c.key);
      const prev = this.active.get(c.key);
      if (!prev || prev.severity !== c.event.severity || now - prev.lastEmit >= this.repeatMs) {
        out.push(c.event);
        this.active.set(c.key, { severity: c.event.severity, lastEmit: now, event: c.event, clearedMessage: c.clearedMessage });
      } else {
        prev.event = c.event;
        prev.clearedMessage = c.clearedMessage;
      }
    }
    for (const [key, prev] of this.active) {
      if (seen.has(key)) continue;
      this.active.delete(key);
      out.push({
        monitor: prev.event.monitor,
        host: prev.event.host,
        component: prev.event.component,
        severity: 'info',
        message: prev.clearedMessage ?? `${prev.event.component} is back to normal (it was ${prev.severity}: ${prev.event.message})`,
        at: now,
      });
    }
    return out;
  }

  /** Keys of the conditions currently reported. */
  activeKeys(): string[] {
    return [...this.active.keys()];
  }
}

/** Worst of two severities. */
export function worst(a: Severity, b: Severity): Severity {
  const rank = { info: 0, warning: 1, critical: 2 } as const;
  return rank[a] >= rank[b] ? a : b;
}

/** "3 h 20 min", "45 s": lead times in messages. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 120) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.round(h / 24)} days`;
}

/** A number for messages: at most `digits` decimals, no trailing zeros. */
export function fmt(n: number, digits = 1): string {
  return String(Number(n.toFixed(digits)));
}

/**
 * A monitor as a plugin: every built-in monitor is a `create...Monitor(options,
 * deps)` (what tests drive with a fake clock) wrapped the same way.
 */
export function monitorPlugin<S extends z.ZodType>(name: string, description: string, configSchema: S, create: (options: z.output<S>, deps: MonitorDeps) => Monitor) {
  return definePlugin({
    name,
    version: '1.0.0',
    apiVersion: PLUGIN_API_VERSION,
    kind: 'health-monitor',
    description,
    configSchema,
    setup(ctx) {
      const m = create(ctx.options, { log: ctx.log, signal: ctx.signal });
      return { sample: () => m.sample() };
    },
  });
}
