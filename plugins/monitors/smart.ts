/**
 * Disks through smartmontools' `smartctl -j -H -A <device>`: a failed
 * overall health assessment or NVMe critical warning is critical; growing
 * reallocated / pending / uncorrectable sector counts (ATA) or media errors
 * (NVMe) are warnings, with a lead time from their trend to a configured
 * limit; worn-out NVMe drives are warnings.
 *
 * smartctl's exit status is a bit mask (smartctl(8)): bits 0-1 mean the
 * device could not be read at all, bit 2 that some command failed, bits 3+
 * are findings (failing disk, attributes past threshold, ...). So a non-zero
 * exit is not by itself an error here: the JSON says what was read.
 */
import { z } from 'zod';
import { type HealthEvent } from '../../src/index.js';
import {
  baseOptionShape,
  commandOptionShape,
  ConditionGate,
  firstLine,
  formatDuration,
  runCommand,
  Trends,
  type Condition,
  type Monitor,
  type MonitorDeps,
  monitorPlugin,
} from './common.js';

const NAME = 'smart';

export const smartOptionsSchema = z
  .object({
    ...baseOptionShape,
    ...commandOptionShape,
    command: z.string().min(1).default('smartctl').describe('Path of smartctl (smartmontools).'),
    args: z.array(z.string()).default(['-j', '-H', '-A']).describe('Arguments before the device; must include -j (JSON).'),
    devices: z
      .array(z.string().min(1))
      .default([])
      .describe("Devices, each with optional smartctl options after it ('/dev/sda', '/dev/bus/0 -d megaraid,1'). Empty: those `smartctl -j --scan` finds."),
    badSectorLimit: z
      .number()
      .int()
      .positive()
      .default(100)
      .describe('Reallocated, pending or uncorrectable sectors (or NVMe media errors) at which a drive counts as failing; growing counts get a lead time to it.'),
    trendWindowMs: z.number().int().positive().default(86_400_000).describe('Growth of sector counts is fitted over this window (ms).'),
    percentageUsedWarning: z.number().int().positive().default(90).describe('NVMe endurance used (percent) that makes a warning.'),
  })
  .strict();

export type SmartOptions = z.output<typeof smartOptionsSchema>;

// ---------------------------------------------------------------------------
// Parsing (only the fields used; smartctl prints many more)

const attributeSchema = z.object({
  id: z.number().int(),
  name: z.string(),
  value: z.number(),
  worst: z.number().optional(),
  thresh: z.number(),
  when_failed: z.string().optional(),
  flags: z.object({ prefailure: z.boolean().optional() }).optional(),
  raw: z.object({ value: z.number(), string: z.string().optional() }),
});

const smartctlSchema = z.object({
  smartctl: z.object({
    exit_status: z.number().int(),
    messages: z.array(z.object({ string: z.string(), severity: z.string().optional() })).optional(),
  }),
  device: z.object({ name: z.string(), type: z.string().optional(), protocol: z.string().optional() }).optional(),
  model_name: z.string().optional(),
  serial_number: z.string().optional(),
  smart_status: z.object({ passed: z.boolean() }).optional(),
  ata_smart_attributes: z.object({ table: z.array(attributeSchema) }).optional(),
  nvme_smart_health_information_log: z
    .object({
      critical_warning: z.number().int(),
      available_spare: z.number().optional(),
      available_spare_threshold: z.number().optional(),
      percentage_used: z.number().optional(),
      media_errors: z.number().optional(),
    })
    .optional(),
  temperature: z.object({ current: z.number() }).optional(),
});

export type SmartctlJson = z.output<typeof smartctlSchema>;

export interface SmartAttribute {
  readonly id: number;
  readonly name: string;
  readonly value: number;
  readonly thresh: number;
  readonly raw: number;
  readonly prefailure: boolean;
  /** 'now' when the normalized value is at or below its threshold, 'past' if it was. */
  readonly whenFailed: string;
}

export interface SmartReport {
  readonly device: string;
  readonly model?: string;
  readonly protocol?: string;
  readonly exitStatus: number;
  /** smartctl's messages of severity 'error'. */
  readonly errors: readonly string[];
  readonly passed?: boolean;
  readonly attributes: readonly SmartAttribute[];
  readonly nvme?: {
    readonly criticalWarning: number;
    readonly availableSpare?: number;
    readonly availableSpareThreshold?: number;
    readonly percentageUsed?: number;
    readonly mediaErrors?: number;
  };
}

/** Parse `smartctl -j` output for `device` (used when the JSON does not name it). */
export function parseSmartctlJson(text: string, device: string): SmartReport {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new Error(`smartctl output for ${device} is not JSON: '${text.trim().slice(0, 80)}'`);
  }
  const parsed = smartctlSchema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`smartctl output for ${device} is not smartctl JSON: ${issue ? `${issue.path.join('.') || '(top)'}: ${issue.message}` : 'invalid'}`);
  }
  const j = parsed.data;
  const nv = j.nvme_smart_health_information_log;
  return {
    device: j.device?.name ?? device,
    ...(j.model_name ? { model: j.model_name } : {}),
    ...(j.device?.protocol ? { protocol: j.device.protocol } : {}),
    exitStatus: j.smartctl.exit_status,
    errors: (j.smartctl.messages ?? []).filter((m) => m.severity === 'error').map((m) => m.string),
    ...(j.smart_status ? { passed: j.smart_status.passed } : {}),
    attributes: (j.ata_smart_attributes?.table ?? []).map((a) => ({
      id: a.id,
      name: a.name,
      value: a.value,
      thresh: a.thresh,
      raw: a.raw.value,
      prefailure: a.flags?.prefailure ?? false,
      whenFailed: a.when_failed ?? '',
    })),
    ...(nv
      ? {
          nvme: {
            criticalWarning: nv.critical_warning,
            ...(nv.available_spare === undefined ? {} : { availableSpare: nv.available_spare }),
            ...(nv.available_spare_threshold === undefined ? {} : { availableSpareThreshold: nv.available_spare_threshold }),
            ...(nv.percentage_used === undefined ? {} : { percentageUsed: nv.percentage_used }),
            ...(nv.media_errors === undefined ? {} : { mediaErrors: nv.media_errors }),
          },
        }
      : {}),
  };
}

/** smartctl could not read the device at all (exit bits 0-1): the report has no findings. */
export function unreadable(r: SmartReport): boolean {
  return (r.exitStatus & 0b11) !== 0;
}

/** Devices from `smartctl -j --scan`, as argument lists (['-d', 'sat', '/dev/sda']). */
export function parseSmartctlScan(text: string): string[][] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    data = undefined;
  }
  const j = z.object({ devices: z.array(z.object({ name: z.string(), type: z.string().optional() })).optional() }).safeParse(data);
  if (!j.success) throw new Error(`smartctl --scan output not understood: '${text.trim().slice(0, 80)}'`);
  return (j.data.devices ?? []).map((d) => (d.type ? ['-d', d.type, d.name] : [d.name]));
}

// ---------------------------------------------------------------------------
// Findings

/** Sector counts that grow before a disk dies (ATA ids). */
export const SECTOR_ATTRIBUTES: Readonly<Record<number, string>> = {
  5: 'reallocated sectors',
  187: 'reported uncorrectable errors',
  197: 'pending (unreadable) sectors',
  198: 'offline uncorrectable sectors',
};

const NVME_WARNING_BITS: readonly string[] = [
  'available spare below its threshold',
  'temperature out of range',
  'reliability degraded by media or internal errors',
  'media switched to read-only',
  'volatile memory backup failed',
  'persistent memory region read-only or unreliable',
];

export function describeNvmeWarning(bits: number): string {
  const parts = NVME_WARNING_BITS.filter((_, i) => (bits & (1 << i)) !== 0);
  return parts.length ? parts.join(', ') : `unknown bits 0x${bits.toString(16)}`;
}

/** Conditions for one drive's report; sector counts are followed in `trends`. */
export function evaluateSmart(r: SmartReport, trends: Trends, at: number, opts: SmartOptions): Condition[] {
  const out: Condition[] = [];
  const component = `disk ${r.device}`;
  const drive = `${r.device}${r.model ? ` (${r.model})` : ''}`;
  const base = { monitor: NAME, host: opts.host, component, at };
  if (r.passed === false) {
    out.push({
      key: `${r.device}:health`,
      event: { ...base, severity: 'critical', message: `SMART overall health of ${drive} is FAILED: the drive predicts its own failure; move data and jobs off it now.` },
      clearedMessage: `SMART overall health of ${drive} passes again.`,
    });
  }
  for (const a of r.attributes) {
    if (a.whenFailed === 'now' && a.thresh > 0) {
      out.push({
        key: `${r.device}:attr${a.id}:failing`,
        event: {
          ...base,
          severity: a.prefailure ? 'critical' : 'warning',
          message: `SMART attribute ${a.id} ${a.name} of ${drive} is at ${a.value}, at or below its threshold ${a.thresh}: ${a.prefailure ? 'a pre-failure attribute, so the drive is about to fail' : 'the drive is worn out in this respect'}.`,
          value: a.value,
        },
      });
    }
  }
  const counts: { key: string; what: string; count: number }[] = r.attributes
    .filter((a) => SECTOR_ATTRIBUTES[a.id] !== undefined)
    .map((a) => ({ key: `attr${a.id}`, what: `${SECTOR_ATTRIBUTES[a.id]!} (${a.name})`, count: a.raw }));
  if (r.nvme?.mediaErrors !== undefined) counts.push({ key: 'media_errors', what: 'media and data integrity errors', count: r.nvme.mediaErrors });
  for (const c of counts) {
    const trend = trends.add(`${r.device}/${c.key}`, at, c.count);
    const pts = trend.points();
    const grew = pts.length > 1 && c.count > pts[0]!.value;
    const atLimit = c.count >= opts.badSectorLimit;
    if (!grew && !atLimit) continue;
    const lead = atLimit ? 0 : trend.leadTimeTo(opts.badSectorLimit);
    const growth = grew ? `, up ${c.count - pts[0]!.value} in the last ${formatDuration(at - pts[0]!.at)}` : '';
    out.push({
      key: `${r.device}:${c.key}`,
      event: {
        ...base,
        severity: atLimit ? 'critical' : 'warning',
        message: atLimit
          ? `${drive} has ${c.count} ${c.what}${growth}, at or past the limit of ${opts.badSectorLimit}: the surface is failing; move data off it.`
          : `${drive} has ${c.count} ${c.what}${growth}: a growing count means the drive is degrading${lead === undefined ? '' : `, and at this pace it reaches ${opts.badSectorLimit} in ${formatDuration(lead)}`}.`,
        value: c.count,
        unit: c.key === 'media_errors' ? 'errors' : 'sectors',
        ...(lead === undefined ? {} : { leadTimeMs: lead }),
      },
      clearedMessage: `${drive}: ${c.what} stopped growing.`,
    });
  }
  const nv = r.nvme;
  if (nv && nv.criticalWarning !== 0) {
    out.push({
      key: `${r.device}:nvme-critical-warning`,
      event: { ...base, severity: 'critical', message: `NVMe drive ${drive} raises a critical warning: ${describeNvmeWarning(nv.criticalWarning)}; it may fail or stop accepting writes.`, value: nv.criticalWarning },
      clearedMessage: `NVMe drive ${drive} no longer raises a critical warning.`,
    });
  }
  if (nv?.percentageUsed !== undefined && nv.percentageUsed >= opts.percentageUsedWarning) {
    out.push({
      key: `${r.device}:wear`,
      event: { ...base, severity: 'warning', message: `NVMe drive ${drive} has used ${nv.percentageUsed}% of its rated endurance: worn drives fail more often; plan its replacement.`, value: nv.percentageUsed, unit: '%' },
    });
  }
  return out;
}

// ---------------------------------------------------------------------------

export function createSmartMonitor(opts: SmartOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const trends = new Trends(opts.trendWindowMs);
  const gate = new ConditionGate(opts.repeatMs);
  let devices: string[][] | undefined = opts.devices.length ? opts.devices.map((d) => d.trim().split(/\s+/)) : undefined;
  let saidNone = false;
  const run = (args: readonly string[]) =>
    runCommand(opts.command, args, {
      timeoutMs: opts.timeoutMs,
      maxBufferBytes: opts.maxBufferBytes,
      installHint: 'smartmontools',
      ...(deps.signal ? { signal: deps.signal } : {}),
    });
  return {
    async sample(): Promise<HealthEvent[]> {
      if (!devices) {
        const res = await run(['-j', '--scan']);
        devices = parseSmartctlScan(res.stdout);
      }
      const at = now();
      if (devices.length === 0) {
        if (!saidNone) deps.log?.warn('smartctl --scan finds no disks; SMART cannot be watched here');
        saidNone = true;
        return gate.update([], at);
      }
      const conditions: Condition[] = [];
      const failures: string[] = [];
      for (const dev of devices) {
        // device options go first ('-d megaraid,1 /dev/bus/0'): smartctl takes the last word as the device
        const name = dev.find((w) => w.startsWith('/')) ?? dev[dev.length - 1]!;
        const extra = dev.filter((w) => w !== name);
        const res = await run([...opts.args, ...extra, name]);
        let report: SmartReport;
        try {
          report = parseSmartctlJson(res.stdout, name);
        } catch (err) {
          failures.push(res.code !== 0 && firstLine(res.stderr) ? `smartctl ${name} exited with ${res.code}: ${firstLine(res.stderr)}` : (err as Error).message);
          continue;
        }
        if (unreadable(report)) {
          failures.push(`smartctl cannot read ${name}: ${report.errors[0] ?? `exit status ${report.exitStatus}`}`);
          continue;
        }
        conditions.push(...evaluateSmart(report, trends, at, opts));
      }
      if (failures.length === devices.length) throw new Error(failures.join('; '));
      for (const f of failures) deps.log?.warn(f);
      return gate.update(conditions, at);
    },
  };
}

export default monitorPlugin(NAME, 'disks through smartctl: failed health, growing bad-sector or media-error counts, wear', smartOptionsSchema, createSmartMonitor);
