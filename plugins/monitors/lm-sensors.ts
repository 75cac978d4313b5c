/**
 * Hardware sensors through lm-sensors' `sensors -j`: temperatures over
 * their max/crit limits (with a lead time from the trend towards crit, and
 * an early warning when that lead time gets short), fans below their
 * minimum, voltages out of range.
 *
 * `sensors -j` prints { chip: { "Adapter": "...", feature: { "temp1_input":
 * 45.0, "temp1_max": 80.0, ... } } }. Limits a driver leaves unset read 0
 * (nct67xx voltages show min 0 / max 0 with the alarm flag raised), so 0 is
 * taken as "no limit", and alarm flags are not trusted on their own.
 */
import { z } from 'zod';
import { type HealthEvent } from '../../src/index.js';
import {
  baseOptionShape,
  commandOptionShape,
  ConditionGate,
  firstLine,
  fmt,
  formatDuration,
  runCommand,
  Trends,
  type Condition,
  type Monitor,
  type MonitorDeps,
  monitorPlugin,
} from './common.js';

const NAME = 'lm-sensors';

export const lmSensorsOptionsSchema = z
  .object({
    ...baseOptionShape,
    ...commandOptionShape,
    command: z.string().min(1).default('sensors').describe('Path of the sensors tool (lm-sensors).'),
    args: z.array(z.string()).default(['-j']).describe('Arguments; must make it print JSON.'),
    trendWindowMs: z.number().int().positive().default(600_000).describe('Temperature trends are fitted over this window (ms).'),
    tempLeadTimeWarningMs: z
      .number()
      .int()
      .nonnegative()
      .default(900_000)
      .describe('Warn, before max is reached, when the temperature trend reaches crit within this time (ms). 0: never.'),
    ignore: z.array(z.string()).default([]).describe("Chips ('nct6798-isa-0290') or features ('nct6798-isa-0290/in1') to leave out."),
  })
  .strict();

export type LmSensorsOptions = z.output<typeof lmSensorsOptionsSchema>;

export type SensorKind = 'temp' | 'fan' | 'in' | 'power' | 'curr' | 'other';

/** One feature of one chip, with its subfeatures by attribute ('input', 'max', 'crit', 'min', ...). */
export interface SensorReading {
  readonly chip: string;
  readonly adapter?: string;
  readonly feature: string;
  readonly kind: SensorKind;
  readonly values: Readonly<Record<string, number>>;
}

const KINDS: Record<string, SensorKind> = { temp: 'temp', fan: 'fan', in: 'in', power: 'power', curr: 'curr' };

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parse `sensors -j` output. Throws, quoting the start of it, when it is not that. */
export function parseSensorsJson(text: string): SensorReading[] {
  // some drivers report NaN/inf, which sensors prints bare: not JSON
  const cleaned = text.replace(/(:\s*)[-+]?(nan|inf(inity)?)\b/gi, '$1null');
  let data: unknown;
  try {
    data = JSON.parse(cleaned);
  } catch {
    throw new Error(`sensors output is not JSON: '${text.trim().slice(0, 80)}'`);
  }
  if (!isRecord(data)) throw new Error(`sensors output is not a JSON object of chips: '${text.trim().slice(0, 80)}'`);
  const out: SensorReading[] = [];
  for (const [chip, features] of Object.entries(data)) {
    if (!isRecord(features)) throw new Error(`sensors output: chip '${chip}' is not an object`);
    const adapter = typeof features.Adapter === 'string' ? features.Adapter : undefined;
    for (const [feature, subs] of Object.entries(features)) {
      if (!isRecord(subs)) continue; // "Adapter": "ISA adapter"
      const values: Record<string, number> = {};
      let kind: SensorKind | undefined;
      for (const [sub, v] of Object.entries(subs)) {
        const m = /^([a-z]+)\d*_(.+)$/.exec(sub);
        if (!m || typeof v !== 'number' || !Number.isFinite(v)) continue;
        kind ??= KINDS[m[1]!] ?? 'other';
        values[m[2]!] = v;
      }
      if (!kind) continue;
      out.push({ chip, ...(adapter === undefined ? {} : { adapter }), feature, kind, values });
    }
  }
  return out;
}

/** A limit a driver actually set (unset ones read 0). */
function limit(v: number | undefined): number | undefined {
  return v === undefined || v === 0 ? undefined : v;
}

/** Conditions from one `sensors -j` reading; temperature trends are kept in `trends`. */
export function evaluateSensors(readings: readonly SensorReading[], trends: Trends, at: number, opts: LmSensorsOptions): Condition[] {
  const out: Condition[] = [];
  const ignored = new Set(opts.ignore);
  const base = { monitor: NAME, host: opts.host, at };
  for (const r of readings) {
    if (ignored.has(r.chip) || ignored.has(`${r.chip}/${r.feature}`)) continue;
    const input = r.values.input;
    if (input === undefined || r.values.fault === 1) continue;
    const where = `${r.feature} on ${r.chip}`;
    if (r.kind === 'temp') {
      const max = limit(r.values.max);
      const crit = limit(r.values.crit);
      const trend = trends.add(`${r.chip}/${r.feature}`, at, input);
      const component = `temp ${r.chip} ${r.feature}`;
      const lead = crit === undefined || input >= crit ? undefined : trend.leadTimeTo(crit);
      const ev = (severity: 'warning' | 'critical', message: string, leadTimeMs?: number): Condition => ({
        key: `${component}:temp`,
        event: { ...base, component, severity, message, value: input, unit: '°C', ...(leadTimeMs === undefined ? {} : { leadTimeMs }) },
        clearedMessage: `Temperature of ${where} is back below its limits.`,
      });
      const towards = lead === undefined ? '' : ` At its current rise it reaches crit (${fmt(crit!)} °C) in ${formatDuration(lead)}.`;
      if (crit !== undefined && input >= crit) {
        out.push(ev('critical', `Temperature of ${where} is ${fmt(input)} °C, at or above its critical limit of ${fmt(crit)} °C: the hardware will throttle or shut down.`, 0));
      } else if (max !== undefined && input >= max) {
        out.push(ev('warning', `Temperature of ${where} is ${fmt(input)} °C, above its max of ${fmt(max)} °C: cooling is not keeping up.${towards}`, lead));
      } else if (lead !== undefined && opts.tempLeadTimeWarningMs > 0 && lead <= opts.tempLeadTimeWarningMs) {
        const perMin = (trend.slopePerHour() ?? 0) / 60;
        out.push(ev('warning', `Temperature of ${where} is ${fmt(input)} °C and rising ${fmt(perMin, 2)} °C/min: it reaches its critical limit of ${fmt(crit!)} °C in ${formatDuration(lead)}.`, lead));
      }
    } else if (r.kind === 'fan') {
      const min = limit(r.values.min);
      if (min === undefined || input >= min) continue;
      const component = `fan ${r.chip} ${r.feature}`;
      const stopped = input === 0;
      out.push({
        key: `${component}:fan`,
        event: {
          ...base,
          component,
          severity: stopped ? 'critical' : 'warning',
          message: stopped
            ? `Fan ${where} has stopped (0 RPM, minimum ${fmt(min, 0)}): parts it cools will overheat.`
            : `Fan ${where} turns at ${fmt(input, 0)} RPM, below its minimum of ${fmt(min, 0)} RPM: it may be failing.`,
          value: input,
          unit: 'RPM',
        },
        clearedMessage: `Fan ${where} is back above its minimum speed.`,
      });
    } else if (r.kind === 'in') {
      const component = `voltage ${r.chip} ${r.feature}`;
      const lcrit = limit(r.values.lcrit), crit = limit(r.values.crit);
      const min = limit(r.values.min), max = limit(r.values.max);
      let severity: 'warning' | 'critical' | undefined;
      let bound = '';
      if (lcrit !== undefined && input <= lcrit) [severity, bound] = ['critical', `below its critical minimum of ${fmt(lcrit, 3)} V`];
      else if (crit !== undefined && input >= crit) [severity, bound] = ['critical', `above its critical maximum of ${fmt(crit, 3)} V`];
      else if (min !== undefined && input < min) [severity, bound] = ['warning', `below its minimum of ${fmt(min, 3)} V`];
      else if (max !== undefined && max > (min ?? 0) && input > max) [severity, bound] = ['warning', `above its maximum of ${fmt(max, 3)} V`];
      if (!severity) continue;
      out.push({
        key: `${component}:in`,
        event: { ...base, component, severity, message: `Voltage ${where} is ${fmt(input, 3)} V, ${bound}: an unstable supply causes crashes and data errors.`, value: input, unit: 'V' },
        clearedMessage: `Voltage ${where} is back in range.`,
      });
    }
  }
  return out;
}

export function createLmSensorsMonitor(opts: LmSensorsOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const trends = new Trends(opts.trendWindowMs);
  const gate = new ConditionGate(opts.repeatMs);
  let saidNone = false;
  return {
    async sample(): Promise<HealthEvent[]> {
      const res = await runCommand(opts.command, opts.args, {
        timeoutMs: opts.timeoutMs,
        maxBufferBytes: opts.maxBufferBytes,
        installHint: 'lm-sensors',
        ...(deps.signal ? { signal: deps.signal } : {}),
      });
      let readings: SensorReading[];
      try {
        readings = parseSensorsJson(res.stdout);
      } catch (err) {
        // sensors exits 1 with "{ }" when it finds nothing, and with partial JSON on read errors
        if (res.code !== 0) throw new Error(`sensors exited with code ${res.code}: ${firstLine(res.stderr) || (err as Error).message}`);
        throw err;
      }
      const at = now();
      if (readings.length === 0 && !saidNone) {
        deps.log?.warn({ stderr: firstLine(res.stderr) }, 'sensors reports no sensors; temperatures, fans and voltages cannot be watched here');
        saidNone = true;
      }
      return gate.update(evaluateSensors(readings, trends, at, opts), at);
    },
  };
}

export default monitorPlugin(NAME, 'lm-sensors: temperatures (with a lead time to crit), fans and voltages out of range', lmSensorsOptionsSchema, createLmSensorsMonitor);
