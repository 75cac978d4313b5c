/**
 * The generic monitor, for whatever the others do not cover:
 *
 * - `file`: read a number (a sysfs attribute, or a file a demo or test
 *   writes to simulate a failing host), compare it with `warning` and
 *   `critical` thresholds (above or below), with a lead time from its trend
 *   to the critical threshold;
 * - `command`: run a check. Its exit code says the state (0 ok, 1 warning,
 *   2 critical, as Nagios plugins do; anything else is an error), and the
 *   first line of its output is the message. Or it prints JSON
 *   `{ severity, message, leadTimeMs?, value?, unit?, component? }`.
 *
 * `info` is the normal state: it is not reported, except as the info event
 * when an earlier warning or critical clears.
 */
import { basename } from 'node:path';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { type HealthEvent, type Severity } from '../../src/index.js';
import {
  baseOptionShape,
  commandOptionShape,
  ConditionGate,
  firstLine,
  fmt,
  formatDuration,
  parseNumber,
  runCommand,
  Trend,
  type Condition,
  type Monitor,
  type MonitorDeps,
  monitorPlugin,
} from './common.js';

const NAME = 'command';

export const commandOptionsSchema = z
  .object({
    ...baseOptionShape,
    ...commandOptionShape,
    file: z.string().min(1).optional().describe('Read a number from this file (one of file or command).'),
    command: z
      .string()
      .min(1)
      .optional()
      .describe('Run this check (one of file or command): exit 0/1/2 = ok/warning/critical, or JSON {severity, message, leadTimeMs?, value?, unit?, component?} on stdout.'),
    args: z.array(z.string()).default([]).describe('Arguments of the command.'),
    component: z.string().min(1).optional().describe('What the events are about (default: the file path or the command name).'),
    warning: z.number().optional().describe('File mode: value at which it is a warning.'),
    critical: z.number().optional().describe('File mode: value at which it is critical.'),
    direction: z.enum(['above', 'below']).default('above').describe('File mode: bad is at or above the thresholds, or at or below.'),
    scale: z.number().default(1).describe("File mode: multiply the number read (0.001 for sysfs millidegrees)."),
    unit: z.string().optional().describe('File mode: unit of the (scaled) value, for messages.'),
    trendWindowMs: z.number().int().positive().default(600_000).describe('File mode: the trend towards the critical threshold is fitted over this window (ms).'),
  })
  .strict()
  .superRefine((o, ctx) => {
    if ((o.file === undefined) === (o.command === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of file or command', path: [o.file === undefined ? 'file' : 'command'] });
    }
    if (o.file !== undefined && o.warning === undefined && o.critical === undefined) {
      ctx.addIssue({ code: 'custom', message: 'a file monitor needs a warning or a critical threshold', path: ['warning'] });
    }
    if (o.warning !== undefined && o.critical !== undefined && (o.direction === 'above' ? o.warning > o.critical : o.warning < o.critical)) {
      ctx.addIssue({ code: 'custom', message: `warning must come before critical (direction ${o.direction})`, path: ['warning'] });
    }
  });

export type CommandOptions = z.output<typeof commandOptionsSchema>;

/** What a check may print instead of relying on its exit code. */
export const checkOutputSchema = z
  .object({
    severity: z.enum(['info', 'warning', 'critical']),
    message: z.string().min(1),
    leadTimeMs: z.number().nonnegative().optional(),
    value: z.number().optional(),
    unit: z.string().optional(),
    component: z.string().min(1).optional(),
  })
  .strict();

export type CheckOutput = z.output<typeof checkOutputSchema>;

const EXIT_SEVERITY: readonly Severity[] = ['info', 'warning', 'critical'];

/**
 * A check's result from its exit code and output. JSON output (stdout
 * starting with '{') wins over the exit code and must match
 * checkOutputSchema; otherwise exit codes other than 0/1/2 are errors.
 */
export function interpretCheck(name: string, code: number, stdout: string, stderr: string): CheckOutput {
  const out = stdout.trim();
  if (out.startsWith('{')) {
    let data: unknown;
    try {
      data = JSON.parse(out);
    } catch {
      throw new Error(`${name} printed invalid JSON: '${out.slice(0, 80)}'`);
    }
    const r = checkOutputSchema.safeParse(data);
    if (!r.success) {
      const i = r.error.issues[0];
      throw new Error(`${name} printed JSON that is not {severity, message, leadTimeMs?, value?, unit?, component?}: ${i ? `${i.path.join('.') || '(top)'}: ${i.message}` : 'invalid'}`);
    }
    return r.data;
  }
  const severity = EXIT_SEVERITY[code];
  // Nagios plugins print "TEXT | perfdata"
  const text = firstLine(out).split('|')[0]!.trim();
  if (severity === undefined) throw new Error(`${name} exited with code ${code} (state unknown): ${text || firstLine(stderr) || 'no output'}`);
  return { severity, message: text || `${name} exited with code ${code} (${severity})` };
}

/** Severity of a value against thresholds. */
export function thresholdSeverity(value: number, o: Pick<CommandOptions, 'warning' | 'critical' | 'direction'>): Severity {
  const past = (limit: number | undefined) => limit !== undefined && (o.direction === 'above' ? value >= limit : value <= limit);
  return past(o.critical) ? 'critical' : past(o.warning) ? 'warning' : 'info';
}

/** Condition for a value read from the file; `trend` holds its recent values. */
export function evaluateValue(value: number, trend: Trend, component: string, at: number, opts: CommandOptions): Condition[] {
  trend.add(at, value);
  const severity = thresholdSeverity(value, opts);
  if (severity === 'info') return [];
  const unit = opts.unit ? ` ${opts.unit}` : '';
  const side = opts.direction === 'above' ? 'at or above' : 'at or below';
  const limit = severity === 'critical' ? opts.critical! : opts.warning!;
  const lead = severity === 'critical' ? 0 : opts.critical === undefined ? undefined : trend.leadTimeTo(opts.critical);
  const towards = severity === 'warning' && lead !== undefined ? `; at its current trend it reaches the critical ${fmt(opts.critical!, 3)}${unit} in ${formatDuration(lead)}` : '';
  return [
    {
      key: 'value',
      event: {
        monitor: NAME,
        host: opts.host,
        component,
        severity,
        message: `${component} reads ${fmt(value, 3)}${unit}, ${side} its ${severity} threshold of ${fmt(limit, 3)}${unit}${towards}.`,
        value,
        ...(opts.unit ? { unit: opts.unit } : {}),
        ...(lead === undefined ? {} : { leadTimeMs: lead }),
        at,
      },
      clearedMessage: `${component} is back within its thresholds.`,
    },
  ];
}

/** The number in a file's text; undefined when the file is empty (being written). */
export function parseFileValue(path: string, text: string, scale: number): number | undefined {
  const t = text.trim();
  if (t === '') return undefined;
  const n = parseNumber(t);
  if (n === undefined) throw new Error(`${path} does not hold a number: '${t.slice(0, 40)}'`);
  return n * scale;
}

export function createCommandMonitor(opts: CommandOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const gate = new ConditionGate(opts.repeatMs);
  const trend = new Trend(opts.trendWindowMs);
  const file = opts.file;
  const command = opts.command;

  if (file !== undefined) {
    const component = opts.component ?? file;
    return {
      async sample(): Promise<HealthEvent[]> {
        let text: string;
        try {
          text = await readFile(file, 'utf8');
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          throw new Error(code === 'ENOENT' ? `${file} does not exist` : `cannot read ${file}: ${(err as Error).message}`, { cause: err });
        }
        const value = parseFileValue(file, text, opts.scale);
        if (value === undefined) return []; // empty: a writer is between truncate and write
        const at = now();
        return gate.update(evaluateValue(value, trend, component, at, opts), at);
      },
    };
  }

  const name = basename(command!);
  return {
    async sample(): Promise<HealthEvent[]> {
      const res = await runCommand(command!, opts.args, {
        timeoutMs: opts.timeoutMs,
        maxBufferBytes: opts.maxBufferBytes,
        ...(deps.signal ? { signal: deps.signal } : {}),
      });
      const check = interpretCheck(name, res.code, res.stdout, res.stderr);
      const at = now();
      const component = check.component ?? opts.component ?? name;
      const conditions: Condition[] =
        check.severity === 'info'
          ? []
          : [
              {
                key: component,
                event: {
                  monitor: NAME,
                  host: opts.host,
                  component,
                  severity: check.severity,
                  message: check.message,
                  at,
                  ...(check.leadTimeMs === undefined ? {} : { leadTimeMs: check.leadTimeMs }),
                  ...(check.value === undefined ? {} : { value: check.value }),
                  ...(check.unit === undefined ? {} : { unit: check.unit }),
                },
              },
            ];
      return gate.update(conditions, at);
    },
  };
}

export default monitorPlugin(NAME, 'a number from a file or a command against thresholds, with a lead time from its trend', commandOptionsSchema, createCommandMonitor);
