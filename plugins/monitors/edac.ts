/**
 * EDAC memory errors from sysfs (<root>/devices/system/edac/mc/mc*):
 * uncorrectable errors are reported at once (the data is already lost),
 * correctable ones by their rate, which rises before a DIMM fails, with a
 * lead time to a configured budget of corrected errors.
 *
 * Layouts: dimmN or rankN directories (dimm_ce_count, dimm_ue_count,
 * dimm_label) on kernels since 3.5, csrowN ones (ce_count, ue_count,
 * chN_dimm_label) on older kernels and as the legacy view of rank-based
 * drivers. When both are present
 * the dimm/rank view is used, so nothing is counted twice.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { type HealthEvent } from '../../src/index.js';
import {
  baseOptionShape,
  ConditionGate,
  fmt,
  formatDuration,
  HOUR_MS,
  listDir,
  RateTracker,
  readSysfs,
  readSysfsNumber,
  type Condition,
  type Monitor,
  type MonitorDeps,
  monitorPlugin,
} from './common.js';

const NAME = 'edac';

export const edacOptionsSchema = z
  .object({
    ...baseOptionShape,
    root: z.string().default('/sys').describe('sysfs mount point (a fixture tree in tests).'),
    cePerHourWarning: z.number().positive().default(10).describe('Correctable errors per hour on one DIMM (or controller) that make a warning.'),
    cePerHourCritical: z.number().positive().default(100).describe('Correctable errors per hour that make it critical.'),
    ceBudget: z
      .number()
      .int()
      .nonnegative()
      .default(1000)
      .describe('Corrected errors a DIMM may accumulate (since counters were reset) before it is due for replacement: reaching it is critical, and rate warnings carry the time left until it is reached. 0: no budget.'),
    rateWindowMs: z.number().int().positive().default(HOUR_MS).describe('Rates are measured over this window (ms).'),
    minRateSpanMs: z
      .number()
      .int()
      .nonnegative()
      .default(300_000)
      .describe('Rates over a shorter span are divided by this (ms), so one error right after startup is not a storm.'),
    reportExisting: z.boolean().default(true).describe('On the first sample, report uncorrectable errors counted before monitoring started (once, as a warning).'),
  })
  .strict();

export type EdacOptions = z.output<typeof edacOptionsSchema>;

/** One place errors are counted: a DIMM/rank, a csrow, the controller's "no info" bucket, or the whole controller. */
export interface EdacUnit {
  /** State key, e.g. 'mc0/dimm3', 'mc0/noinfo'. */
  readonly id: string;
  readonly component: string;
  readonly label?: string;
  readonly ce?: number;
  readonly ue?: number;
}

export interface EdacController {
  readonly name: string;
  readonly mcName?: string;
  readonly ce?: number;
  readonly ue?: number;
  readonly ceNoInfo?: number;
  readonly ueNoInfo?: number;
  readonly layout: 'dimm' | 'csrow' | 'none';
  /** DIMMs/ranks or csrows, whichever layout is used. */
  readonly units: readonly EdacUnit[];
}

export interface EdacSnapshot {
  /** false when <root>/devices/system/edac/mc does not exist (no EDAC driver loaded, or a VM). */
  readonly present: boolean;
  readonly controllers: readonly EdacController[];
}

function unitComponent(mc: string, unit: string, label: string | undefined): string {
  return `memory ${mc} ${unit}${label ? ` (${label})` : ''}`;
}

/** Read the EDAC tree under `root` (the sysfs mount point). */
export async function readEdac(root: string): Promise<EdacSnapshot> {
  const base = join(root, 'devices/system/edac/mc');
  const mcs = await listDir(base, /^mc\d+$/);
  if (mcs.length === 0) return { present: (await listDir(join(root, 'devices/system/edac'))).includes('mc'), controllers: [] };
  const controllers: EdacController[] = [];
  for (const mc of mcs) {
    const dir = join(base, mc);
    const [mcName, ce, ue, ceNoInfo, ueNoInfo] = await Promise.all([
      readSysfs(join(dir, 'mc_name')),
      readSysfsNumber(join(dir, 'ce_count')),
      readSysfsNumber(join(dir, 'ue_count')),
      readSysfsNumber(join(dir, 'ce_noinfo_count')),
      readSysfsNumber(join(dir, 'ue_noinfo_count')),
    ]);
    const dimms: EdacUnit[] = [];
    for (const d of await listDir(dir, /^(dimm|rank)\d+$/)) {
      const [label, dce, due] = await Promise.all([
        readSysfs(join(dir, d, 'dimm_label')),
        readSysfsNumber(join(dir, d, 'dimm_ce_count')),
        readSysfsNumber(join(dir, d, 'dimm_ue_count')),
      ]);
      if (dce === undefined && due === undefined) continue;
      dimms.push(unit(`${mc}/${d}`, unitComponent(mc, d, label || undefined), label || undefined, dce, due));
    }
    const csrows: EdacUnit[] = [];
    if (dimms.length === 0) {
      for (const c of await listDir(dir, /^csrow\d+$/)) {
        const [cce, cue] = await Promise.all([readSysfsNumber(join(dir, c, 'ce_count')), readSysfsNumber(join(dir, c, 'ue_count'))]);
        if (cce === undefined && cue === undefined) continue;
        const labels: string[] = [];
        for (const f of await listDir(join(dir, c), /^ch\d+_dimm_label$/)) {
          const l = await readSysfs(join(dir, c, f));
          if (l) labels.push(l);
        }
        const label = labels.length ? labels.join(' / ') : undefined;
        csrows.push(unit(`${mc}/${c}`, unitComponent(mc, c, label), label, cce, cue));
      }
    }
    const layout = dimms.length ? 'dimm' : csrows.length ? 'csrow' : 'none';
    controllers.push({
      name: mc,
      ...opt('mcName', mcName || undefined),
      ...opt('ce', ce),
      ...opt('ue', ue),
      ...opt('ceNoInfo', ceNoInfo),
      ...opt('ueNoInfo', ueNoInfo),
      layout,
      units: dimms.length ? dimms : csrows,
    });
  }
  return { present: true, controllers };
}

function unit(id: string, component: string, label: string | undefined, ce: number | undefined, ue: number | undefined): EdacUnit {
  return { id, component, ...opt('label', label), ...opt('ce', ce), ...opt('ue', ue) };
}

/** `{ key: value }` only when value is defined (exactOptionalPropertyTypes-friendly). */
function opt<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

/**
 * Where to watch CE and UE counts: per DIMM/csrow plus the controller's
 * "no info" bucket when the layout has per-unit counts, else the controller.
 */
export function edacSources(mc: EdacController, kind: 'ce' | 'ue'): { id: string; component: string; label?: string; count: number }[] {
  const withCounts = mc.units.filter((u) => u[kind] !== undefined);
  const out: { id: string; component: string; label?: string; count: number }[] = [];
  if (withCounts.length) {
    for (const u of withCounts) out.push({ id: u.id, component: u.component, ...opt('label', u.label), count: u[kind]! });
    const noInfo = kind === 'ce' ? mc.ceNoInfo : mc.ueNoInfo;
    if (noInfo !== undefined) out.push({ id: `${mc.name}/noinfo`, component: `memory ${mc.name} (DIMM unknown)`, count: noInfo });
  } else {
    const total = mc[kind];
    if (total !== undefined) out.push({ id: mc.name, component: `memory ${mc.name}`, count: total });
  }
  return out;
}

/** Between-sample state of the EDAC monitor. */
export interface EdacState {
  readonly ce: RateTracker;
  readonly ue: RateTracker;
}

export function newEdacState(opts: Pick<EdacOptions, 'rateWindowMs' | 'minRateSpanMs'>): EdacState {
  return {
    ce: new RateTracker({ windowMs: opts.rateWindowMs, minSpanMs: opts.minRateSpanMs }),
    ue: new RateTracker({ windowMs: opts.rateWindowMs, minSpanMs: opts.minRateSpanMs }),
  };
}

function describeMc(mc: EdacController): string {
  return mc.mcName ? `${mc.name} (${mc.mcName})` : mc.name;
}

/**
 * Events from one snapshot: `events` are one-shot (new uncorrectable
 * errors), `conditions` hold while seen (CE rate over a threshold, CE
 * budget used up) and go through a ConditionGate.
 */
export function evaluateEdac(
  snap: EdacSnapshot,
  state: EdacState,
  at: number,
  opts: EdacOptions,
): { events: HealthEvent[]; conditions: Condition[] } {
  const events: HealthEvent[] = [];
  const conditions: Condition[] = [];
  const seenCe = new Set<string>();
  const seenUe = new Set<string>();
  const base = { monitor: NAME, host: opts.host, at };

  for (const mc of snap.controllers) {
    for (const src of edacSources(mc, 'ue')) {
      seenUe.add(src.id);
      const u = state.ue.update(src.id, src.count, at);
      if (u.first && src.count > 0 && opts.reportExisting) {
        events.push({
          ...base,
          component: src.component,
          severity: 'warning',
          message: `${src.component} on controller ${describeMc(mc)} has recorded ${src.count} uncorrectable memory error(s) since its counters were last reset (before monitoring started); memory there has lost data before and may again.`,
          value: src.count,
          unit: 'errors',
        });
      } else if (u.delta > 0) {
        events.push({
          ...base,
          component: src.component,
          severity: 'critical',
          message: `${u.delta} new uncorrectable memory error(s) on ${src.component} (controller ${describeMc(mc)}, ${src.count} in total): data in memory was lost, so the host may crash or compute wrong results at any moment.`,
          leadTimeMs: 0,
          value: src.count,
          unit: 'errors',
        });
      }
    }
    for (const src of edacSources(mc, 'ce')) {
      seenCe.add(src.id);
      const r = state.ce.update(src.id, src.count, at);
      const c = ceCondition(src, r.perHour, opts, base);
      if (c) conditions.push(c);
    }
  }
  state.ce.retain(seenCe);
  state.ue.retain(seenUe);
  return { events, conditions };
}

function ceCondition(
  src: { id: string; component: string; count: number },
  perHour: number | undefined,
  opts: EdacOptions,
  base: { monitor: string; host: string; at: number },
): Condition | undefined {
  const budget = opts.ceBudget > 0 ? opts.ceBudget : undefined;
  const overBudget = budget !== undefined && src.count >= budget;
  const rate = perHour ?? 0;
  if (!overBudget && rate < opts.cePerHourWarning) return undefined;
  const severity = overBudget || rate >= opts.cePerHourCritical ? 'critical' : 'warning';
  let leadTimeMs: number | undefined;
  if (budget !== undefined) leadTimeMs = overBudget ? 0 : rate > 0 ? Math.round(((budget - src.count) / rate) * HOUR_MS) : undefined;
  const parts: string[] = [];
  if (rate >= opts.cePerHourWarning) {
    const limit = severity === 'critical' && rate >= opts.cePerHourCritical ? `critical at ${opts.cePerHourCritical}/h` : `warning at ${opts.cePerHourWarning}/h`;
    parts.push(`${src.component} is correcting ${fmt(rate)} memory errors per hour (${limit}); DIMMs whose correctable errors climb like this often go on to uncorrectable ones.`);
  }
  if (overBudget) {
    parts.push(`${src.component} has corrected ${src.count} errors since its counters were reset, reaching the budget of ${budget}: it is degrading and due for replacement.`);
  } else if (leadTimeMs !== undefined) {
    parts.push(`At this rate it reaches the budget of ${budget} corrected errors in ${formatDuration(leadTimeMs)}.`);
  }
  const event: HealthEvent = {
    ...base,
    component: src.component,
    severity,
    message: parts.join(' '),
    ...(leadTimeMs === undefined ? {} : { leadTimeMs }),
    ...(rate >= opts.cePerHourWarning ? { value: Number(rate.toFixed(3)), unit: 'CE/h' } : { value: src.count, unit: 'errors' }),
  };
  return {
    key: `${src.id}:ce`,
    event,
    clearedMessage: `Correctable memory errors on ${src.component} are back below ${opts.cePerHourWarning} per hour.`,
  };
}

/** The monitor behind the plugin; tests inject a clock. */
export function createEdacMonitor(opts: EdacOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const state = newEdacState(opts);
  const gate = new ConditionGate(opts.repeatMs);
  let saidMissing = false;
  return {
    async sample() {
      const snap = await readEdac(opts.root);
      const at = now();
      if (!snap.present || snap.controllers.length === 0) {
        // a VM or a host without an EDAC driver: nothing to watch, say so once
        if (!saidMissing) deps.log?.warn({ root: opts.root }, 'no EDAC memory controllers in sysfs; memory errors cannot be watched here');
        saidMissing = true;
        return gate.update([], at);
      }
      const { events, conditions } = evaluateEdac(snap, state, at, opts);
      return [...events, ...gate.update(conditions, at)];
    },
  };
}

export default monitorPlugin(NAME, 'EDAC memory errors: uncorrectable at once, correctable by their rate, with a lead time', edacOptionsSchema, createEdacMonitor);
