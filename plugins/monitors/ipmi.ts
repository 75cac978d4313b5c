/**
 * The BMC through ipmitool: sensor states from `ipmitool sdr` (the BMC's
 * own thresholds: nc/cr/nr and their lower/upper forms), and new entries of
 * the System Event Log (`ipmitool sel elist`) that match critical or
 * warning keywords (uncorrectable ECC, machine checks, power supply
 * failures...).
 *
 *   sdr:   "CPU1 Temp        | 45 degrees C      | ok"
 *   sdr elist: "CPU1 Temp | 30h | ok  |  3.1 | 45 degrees C"
 *   sel:   "   1a | 05/12/2021 | 08:13:47 | Memory #0xd0 | Uncorrectable ECC | Asserted"
 */
import { z } from 'zod';
import { type HealthEvent, type Severity } from '../../src/index.js';
import {
  baseOptionShape,
  commandOptionShape,
  ConditionGate,
  firstLine,
  runCommand,
  type Condition,
  type Monitor,
  type MonitorDeps,
  monitorPlugin,
} from './common.js';

const NAME = 'ipmi';

export const DEFAULT_SEL_CRITICAL = [
  'Uncorrectable ECC',
  'Uncorrectable machine check',
  'Machine Check',
  'IERR',
  'Thermal Trip',
  'Power Supply AC lost',
  'Failure detected',
  'Bus Fatal Error',
  'Bus Uncorrectable Error',
  'PCI SERR',
  'Critical',
  'Non-recoverable',
];

export const DEFAULT_SEL_WARNING = [
  'Correctable ECC',
  'Correctable Memory Error Logging Limit Reached',
  'Predictive Failure',
  'Redundancy Lost',
  'Redundancy Degraded',
  'Non-critical',
  'Bus Correctable Error',
  'Fan Failure',
  'Throttled',
];

export const ipmiOptionsSchema = z
  .object({
    ...baseOptionShape,
    ...commandOptionShape,
    command: z.string().min(1).default('ipmitool').describe('Path of ipmitool.'),
    args: z.array(z.string()).default([]).describe("Arguments before the subcommand, e.g. ['-I', 'lanplus', '-H', 'bmc1', '-U', 'admin', '-f', '/etc/bmc.pass']."),
    sdr: z.boolean().default(true).describe('Watch sensor states (ipmitool sdr).'),
    sdrArgs: z.array(z.string()).default(['sdr']).describe("Subcommand listing sensors: ['sdr'] or ['sdr', 'elist', 'full']."),
    sel: z.boolean().default(true).describe('Watch new System Event Log entries.'),
    selArgs: z.array(z.string()).default(['sel', 'elist']).describe("Subcommand listing the SEL: ['sel', 'elist'] (sensor names) or ['sel', 'list'] (faster)."),
    selCritical: z.array(z.string()).default(DEFAULT_SEL_CRITICAL).describe("SEL text (case-insensitive substrings) that makes a new entry critical; 'critical' does not match 'Non-critical'."),
    selWarning: z.array(z.string()).default(DEFAULT_SEL_WARNING).describe('SEL text that makes a new entry a warning.'),
    reportExistingSel: z.boolean().default(false).describe('On the first sample, also report matching entries already in the SEL.'),
    ignoreSensors: z.array(z.string()).default([]).describe('Sensor names to leave out (exact).'),
  })
  .strict();

export type IpmiOptions = z.output<typeof ipmiOptionsSchema>;

// ---------------------------------------------------------------------------
// SDR

export type SdrStatus = 'ok' | 'ns' | 'nc' | 'cr' | 'nr' | 'lnc' | 'lcr' | 'lnr' | 'unc' | 'ucr' | 'unr';
const STATUSES = new Set<string>(['ok', 'ns', 'nc', 'cr', 'nr', 'lnc', 'lcr', 'lnr', 'unc', 'ucr', 'unr']);

export interface SdrSensor {
  readonly name: string;
  /** The reading as printed ("45 degrees C", "no reading", "0x01"). */
  readonly reading: string;
  readonly value?: number;
  readonly unit?: string;
  readonly status: SdrStatus;
}

function splitPipes(line: string): string[] {
  return line.split('|').map((f) => f.trim());
}

function parseReading(reading: string): { value?: number; unit?: string } {
  const m = /^(-?\d+(?:\.\d+)?)(?:\s+(.*))?$/.exec(reading); // not "0x01" (discrete state bits)
  if (!m) return {};
  return { value: Number(m[1]), ...(m[2] ? { unit: m[2] } : {}) };
}

/**
 * Parse `ipmitool sdr` / `sdr list` (name | reading | status) or `sdr
 * elist` (name | id | status | entity | reading). Throws when no line has
 * either shape (not ipmitool output).
 */
export function parseSdr(text: string): SdrSensor[] {
  const out: SdrSensor[] = [];
  let lines = 0;
  for (const line of text.split('\n')) {
    if (!line.includes('|')) continue;
    lines++;
    const f = splitPipes(line);
    let name: string, reading: string, status: string;
    if (f.length >= 5 && /^[0-9a-f]+h$/i.test(f[1]!)) [name, status, reading] = [f[0]!, f[2]!, f[4]!];
    else if (f.length === 3) [name, reading, status] = [f[0]!, f[1]!, f[2]!];
    else continue;
    status = status.toLowerCase();
    if (!STATUSES.has(status)) continue;
    out.push({ name, reading, status: status as SdrStatus, ...parseReading(reading) });
  }
  if (out.length === 0 && text.trim().length > 0) {
    throw new Error(`ipmitool sdr output not understood (${lines} '|' lines, none 'name | reading | status'): '${text.trim().slice(0, 80)}'`);
  }
  return out;
}

const STATUS_TEXT: Record<SdrStatus, string> = {
  ok: 'ok',
  ns: 'not available',
  nc: 'past a non-critical threshold',
  cr: 'past a critical threshold',
  nr: 'past a non-recoverable threshold',
  lnc: 'below its lower non-critical threshold',
  lcr: 'below its lower critical threshold',
  lnr: 'below its lower non-recoverable threshold',
  unc: 'above its upper non-critical threshold',
  ucr: 'above its upper critical threshold',
  unr: 'above its upper non-recoverable threshold',
};

export function sdrSeverity(status: SdrStatus): Severity | undefined {
  if (status === 'nc' || status === 'lnc' || status === 'unc') return 'warning';
  if (status === 'cr' || status === 'lcr' || status === 'ucr' || status === 'nr' || status === 'lnr' || status === 'unr') return 'critical';
  return undefined; // ok, ns (no reading: absent or powered-off parts)
}

export function evaluateSdr(sensors: readonly SdrSensor[], at: number, opts: IpmiOptions): Condition[] {
  const ignored = new Set(opts.ignoreSensors);
  const out: Condition[] = [];
  for (const s of sensors) {
    if (ignored.has(s.name)) continue;
    const component = `ipmi sensor ${s.name}`;
    // discrete sensors stay 'ok' whatever they say ("Presence detected, Failure detected"): read their text
    const discrete = s.value === undefined && s.status === 'ok' ? classifyText(s.reading, opts) : undefined;
    if (discrete) {
      out.push({
        key: `${component}:sdr`,
        event: {
          monitor: NAME,
          host: opts.host,
          component,
          severity: discrete.severity,
          message: `BMC sensor '${s.name}' reports '${s.reading}': ${discrete.severity === 'critical' ? 'a hardware part has failed.' : 'a hardware part is degraded.'}`,
          at,
        },
        clearedMessage: `BMC sensor '${s.name}' is back to normal.`,
      });
      continue;
    }
    const severity = sdrSeverity(s.status);
    if (!severity) continue;
    const nonRecoverable = s.status.endsWith('nr');
    out.push({
      key: `${component}:sdr`,
      event: {
        monitor: NAME,
        host: opts.host,
        component,
        severity,
        message: `BMC sensor '${s.name}' reads ${s.reading}, ${STATUS_TEXT[s.status]} (${s.status}): ${
          nonRecoverable ? 'the hardware may already be damaged or shutting down.' : severity === 'critical' ? 'the part is outside its safe range.' : 'the part is drifting out of its normal range.'
        }`,
        at,
        ...(nonRecoverable ? { leadTimeMs: 0 } : {}),
        ...(s.value === undefined ? {} : { value: s.value }),
        ...(s.unit === undefined ? {} : { unit: s.unit }),
      },
      clearedMessage: `BMC sensor '${s.name}' is back to normal.`,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------
// SEL

export interface SelEntry {
  /** Record id (hex as printed); ids are reused after the SEL is cleared. */
  readonly id: string;
  readonly date: string;
  readonly time: string;
  readonly sensor: string;
  readonly event: string;
  /** 'Asserted' / 'Deasserted' when printed. */
  readonly direction?: string;
  /** Identity across samples (id, time and text). */
  readonly key: string;
}

/** Parse `ipmitool sel list` / `sel elist`. Throws on output that has no entry lines. */
export function parseSel(text: string): SelEntry[] {
  const out: SelEntry[] = [];
  const trimmed = text.trim();
  if (trimmed === '' || /^SEL has no entries/i.test(trimmed)) return out;
  for (const line of text.split('\n')) {
    const f = splitPipes(line);
    if (f.length < 5 || !/^[0-9a-f]+$/i.test(f[0]!)) continue;
    const [id, date, time, sensor, ...rest] = f as [string, string, string, string, ...string[]];
    let direction: string | undefined;
    if (rest.length > 1 && /^(de)?asserted$/i.test(rest[rest.length - 1]!)) direction = rest.pop();
    const event = rest.filter((s) => s.length > 0).join(' | ');
    out.push({ id, date, time, sensor, event, ...(direction ? { direction } : {}), key: `${id}|${date}|${time}|${sensor}|${event}|${direction ?? ''}` });
  }
  if (out.length === 0) throw new Error(`ipmitool sel output not understood: '${trimmed.slice(0, 80)}'`);
  return out;
}

function matches(text: string, keywords: readonly string[]): string | undefined {
  // "Lower Non-critical going low" must not match "critical"
  const t = text.toLowerCase();
  for (const k of keywords) {
    const kl = k.toLowerCase();
    let i = t.indexOf(kl);
    while (i >= 0) {
      const prefixed = !kl.startsWith('non-') && t.slice(Math.max(0, i - 4), i) === 'non-';
      if (!prefixed) return k;
      i = t.indexOf(kl, i + 1);
    }
  }
  return undefined;
}

/** Severity of a SEL entry by keywords; deasserted matches are info (the condition ended). */
export function classifySel(e: SelEntry, opts: Pick<IpmiOptions, 'selCritical' | 'selWarning'>): { severity: Severity; keyword: string } | undefined {
  // the event text only: sensor type names like "Critical Interrupt" say nothing about severity
  const c = classifyText(e.event, opts);
  if (!c) return undefined;
  if (e.direction && /^deasserted$/i.test(e.direction)) return { severity: 'info', keyword: c.keyword };
  return c;
}

/** Severity of a piece of BMC text by keywords (critical ones first). */
export function classifyText(text: string, opts: Pick<IpmiOptions, 'selCritical' | 'selWarning'>): { severity: 'warning' | 'critical'; keyword: string } | undefined {
  const crit = matches(text, opts.selCritical);
  if (crit) return { severity: 'critical', keyword: crit };
  const warn = matches(text, opts.selWarning);
  return warn ? { severity: 'warning', keyword: warn } : undefined;
}

/** Entries of `current` not in `previous` (by key). */
export function newSelEntries(previous: ReadonlySet<string>, current: readonly SelEntry[]): SelEntry[] {
  return current.filter((e) => !previous.has(e.key));
}

export function selEvents(entries: readonly SelEntry[], at: number, opts: IpmiOptions): HealthEvent[] {
  const out: HealthEvent[] = [];
  for (const e of entries) {
    const c = classifySel(e, opts);
    if (!c) continue;
    const when = `${e.date} ${e.time}`.trim();
    const what = `'${e.event}'${e.direction ? ` (${e.direction.toLowerCase()})` : ''}`;
    const why =
      c.severity === 'critical'
        ? 'the BMC saw a hardware fault that can bring the host down.'
        : c.severity === 'warning'
          ? 'the BMC saw a hardware problem that often comes before a failure.'
          : 'the condition it reported has ended.';
    out.push({
      monitor: NAME,
      host: opts.host,
      component: `ipmi sel ${e.sensor}`,
      severity: c.severity,
      message: `BMC event log entry ${e.id} at ${when}: ${e.sensor} ${what}, matching '${c.keyword}'; ${why}`,
      at,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------

export function createIpmiMonitor(opts: IpmiOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const gate = new ConditionGate(opts.repeatMs);
  let seenSel: Set<string> | undefined;
  const run = async (sub: readonly string[]): Promise<string> => {
    const res = await runCommand(opts.command, [...opts.args, ...sub], {
      timeoutMs: opts.timeoutMs,
      maxBufferBytes: opts.maxBufferBytes,
      installHint: 'ipmitool',
      ...(deps.signal ? { signal: deps.signal } : {}),
    });
    // ipmitool exits 1 without a BMC ("Could not open device at /dev/ipmi0 ...")
    if (res.code !== 0) throw new Error(`ipmitool ${sub.join(' ')} exited with code ${res.code}: ${firstLine(res.stderr) || firstLine(res.stdout)}`);
    return res.stdout;
  };
  return {
    async sample(): Promise<HealthEvent[]> {
      const at = now();
      const events: HealthEvent[] = [];
      let conditions: Condition[] = [];
      if (opts.sdr) conditions = evaluateSdr(parseSdr(await run(opts.sdrArgs)), at, opts);
      if (opts.sel) {
        const entries = parseSel(await run(opts.selArgs));
        const fresh = seenSel === undefined ? (opts.reportExistingSel ? entries : []) : newSelEntries(seenSel, entries);
        seenSel = new Set(entries.map((e) => e.key));
        events.push(...selEvents(fresh, at, opts));
      }
      return [...events, ...gate.update(conditions, at)];
    },
  };
}

export default monitorPlugin(NAME, 'the BMC through ipmitool: sensor thresholds and new System Event Log entries', ipmiOptionsSchema, createIpmiMonitor);
