/**
 * InfiniBand ports from sysfs (<root>/class/infiniband/<dev>/ports/<n>):
 * a port that is not ACTIVE/LinkUp is critical (MPI over it has stopped),
 * link flaps (link_downed) are warnings, and error counters are turned into
 * rates per hour against thresholds.
 *
 * These PortCounters saturate instead of wrapping (symbol_error at 65535,
 * link_downed at 255, local_link_integrity_errors at 15...): a saturated
 * counter no longer counts, which is reported so someone resets it.
 * A port never seen active is taken as unused (an unplugged second port)
 * and stays quiet unless it is listed in `ports`.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { type HealthEvent } from '../../src/index.js';
import {
  baseOptionShape,
  ConditionGate,
  fmt,
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

const NAME = 'infiniband';

/** Largest value of each error counter (IBA PortCounters widths); they stick there. */
export const COUNTER_MAX: Readonly<Record<string, number>> = {
  symbol_error: 0xffff,
  link_error_recovery: 0xff,
  link_downed: 0xff,
  port_rcv_errors: 0xffff,
  port_rcv_remote_physical_errors: 0xffff,
  port_rcv_switch_relay_errors: 0xffff,
  port_xmit_discards: 0xffff,
  port_xmit_constraint_errors: 0xff,
  port_rcv_constraint_errors: 0xff,
  local_link_integrity_errors: 0xf,
  excessive_buffer_overrun_errors: 0xf,
  VL15_dropped: 0xffff,
};

const COUNTER_TEXT: Readonly<Record<string, string>> = {
  symbol_error: 'symbol errors (bit errors on the wire: a bad cable or transceiver)',
  link_error_recovery: 'link error recoveries (the link retrained after errors)',
  port_rcv_errors: 'receive errors (malformed packets dropped)',
  local_link_integrity_errors: 'local link integrity errors',
  excessive_buffer_overrun_errors: 'buffer overruns',
  port_xmit_discards: 'transmit discards (packets dropped: congestion or a dead peer)',
};

export const DEFAULT_IB_COUNTERS = [
  'symbol_error',
  'link_error_recovery',
  'port_rcv_errors',
  'local_link_integrity_errors',
  'excessive_buffer_overrun_errors',
  'port_xmit_discards',
];

export const infinibandOptionsSchema = z
  .object({
    ...baseOptionShape,
    root: z.string().default('/sys').describe('sysfs mount point (a fixture tree in tests).'),
    ports: z
      .array(z.string().regex(/^[^/\s]+\/\d+$/, "'device/port', e.g. 'mlx5_0/1'"))
      .default([])
      .describe("Ports to watch as 'device/port' (e.g. 'mlx5_0/1'); listed ports are expected up from the start. Empty: every port, and a port never seen active is ignored."),
    counters: z.array(z.string().regex(/^[A-Za-z0-9_]+$/)).default(DEFAULT_IB_COUNTERS).describe('Error counters (files in counters/) whose rates are watched.'),
    errorsPerHourWarning: z.number().positive().default(10).describe('Errors per hour on one counter of one port that make a warning.'),
    errorsPerHourCritical: z.number().positive().default(100).describe('Errors per hour that make it critical.'),
    rateWindowMs: z.number().int().positive().default(HOUR_MS).describe('Rates are measured over this window (ms).'),
    minRateSpanMs: z.number().int().nonnegative().default(300_000).describe('Rates over a shorter span are divided by this (ms).'),
  })
  .strict();

export type InfinibandOptions = z.output<typeof infinibandOptionsSchema>;

export interface IbPort {
  readonly device: string;
  readonly port: string;
  /** e.g. { code: 4, name: 'ACTIVE' } from "4: ACTIVE". */
  readonly state?: { code: number; name: string };
  /** e.g. { code: 5, name: 'LinkUp' }. */
  readonly physState?: { code: number; name: string };
  readonly linkLayer?: string;
  readonly rate?: string;
  readonly counters: Readonly<Record<string, number>>;
}

/** "4: ACTIVE" -> { code: 4, name: 'ACTIVE' }; undefined for anything else. */
export function parsePortState(text: string | undefined): { code: number; name: string } | undefined {
  const m = text === undefined ? null : /^(\d+):\s*(.+)$/.exec(text.trim());
  return m ? { code: Number(m[1]), name: m[2]!.trim() } : undefined;
}

/** Read every port under <root>/class/infiniband; `present` is false without that directory. */
export async function readInfiniband(root: string, counters: readonly string[]): Promise<{ present: boolean; ports: IbPort[] }> {
  const base = join(root, 'class/infiniband');
  const devices = await listDir(base);
  const ports: IbPort[] = [];
  const names = [...new Set([...counters, 'link_downed'])];
  for (const device of devices) {
    for (const port of await listDir(join(base, device, 'ports'), /^\d+$/)) {
      const dir = join(base, device, 'ports', port);
      const [state, phys, linkLayer, rate] = await Promise.all(['state', 'phys_state', 'link_layer', 'rate'].map((f) => readSysfs(join(dir, f))));
      const values: Record<string, number> = {};
      await Promise.all(
        names.map(async (n) => {
          const v = await readSysfsNumber(join(dir, 'counters', n));
          if (v !== undefined) values[n] = v;
        }),
      );
      const st = parsePortState(state), ph = parsePortState(phys);
      ports.push({
        device,
        port,
        ...(st ? { state: st } : {}),
        ...(ph ? { physState: ph } : {}),
        ...(linkLayer ? { linkLayer } : {}),
        ...(rate ? { rate } : {}),
        counters: values,
      });
    }
  }
  return { present: devices.length > 0, ports };
}

export interface IbState {
  readonly rates: RateTracker;
  readonly flaps: RateTracker;
  /** Ports seen ACTIVE/LinkUp at least once. */
  readonly everActive: Set<string>;
}

export function newIbState(opts: Pick<InfinibandOptions, 'rateWindowMs' | 'minRateSpanMs'>): IbState {
  return {
    rates: new RateTracker({ windowMs: opts.rateWindowMs, minSpanMs: opts.minRateSpanMs }),
    flaps: new RateTracker({ windowMs: opts.rateWindowMs }),
    everActive: new Set(),
  };
}

/** ACTIVE or ACTIVE_DEFER, and physically LinkUp (when phys_state is there). */
export function portUp(p: IbPort): boolean {
  const active = p.state !== undefined && (p.state.code === 4 || p.state.code === 5);
  const phys = p.physState === undefined || p.physState.code === 5;
  return active && phys;
}

export function evaluateInfiniband(ports: readonly IbPort[], state: IbState, at: number, opts: InfinibandOptions): { events: HealthEvent[]; conditions: Condition[] } {
  const events: HealthEvent[] = [];
  const conditions: Condition[] = [];
  const listed = new Set(opts.ports);
  const base = { monitor: NAME, host: opts.host, at };
  for (const p of ports) {
    const id = `${p.device}/${p.port}`;
    if (listed.size && !listed.has(id)) continue;
    const component = `ib ${p.device} port ${p.port}`;
    const label = `${p.device} port ${p.port}`;
    const up = portUp(p);
    if (up) state.everActive.add(id);
    else if (state.everActive.has(id) || listed.has(id)) {
      const st = p.state ? p.state.name : 'unknown';
      const ph = p.physState ? `, physical state ${p.physState.name}` : '';
      conditions.push({
        key: `${id}:link`,
        event: {
          ...base,
          component,
          severity: 'critical',
          message: `InfiniBand ${label} is ${st}${ph}: traffic over it has stopped, so MPI ranks on this host cannot reach their peers.`,
          leadTimeMs: 0,
        },
        clearedMessage: `InfiniBand ${label} is ACTIVE again.`,
      });
    }
    const downed = p.counters.link_downed;
    if (downed !== undefined) {
      const f = state.flaps.update(`${id}/link_downed`, downed, at);
      if (f.delta > 0) {
        events.push({
          ...base,
          component,
          severity: 'warning',
          message: `InfiniBand ${label} lost its link ${f.delta} time(s) since the last sample (link_downed ${downed}): a flapping link stalls MPI traffic and often precedes a dead cable or port.`,
          value: downed,
          unit: 'link downs',
        });
      }
    }
    for (const name of opts.counters) {
      const value = p.counters[name];
      if (value === undefined) continue;
      const r = state.rates.update(`${id}/${name}`, value, at);
      const what = COUNTER_TEXT[name] ?? `${name} errors`;
      const max = COUNTER_MAX[name];
      if (max !== undefined && value >= max) {
        conditions.push({
          key: `${id}:${name}:saturated`,
          event: {
            ...base,
            component,
            severity: 'warning',
            message: `InfiniBand ${label}: counter ${name} is stuck at its maximum ${max}, so new ${what} go uncounted; reset the port counters (perfquery -R) to watch it again.`,
            value,
            unit: name,
          },
          clearedMessage: `InfiniBand ${label}: counter ${name} was reset and counts again.`,
        });
      }
      const rate = r.perHour;
      if (rate === undefined || rate < opts.errorsPerHourWarning) continue;
      const critical = rate >= opts.errorsPerHourCritical;
      conditions.push({
        key: `${id}:${name}`,
        event: {
          ...base,
          component,
          severity: critical ? 'critical' : 'warning',
          message: `InfiniBand ${label} shows ${fmt(rate)} ${what} per hour (${critical ? `critical at ${opts.errorsPerHourCritical}` : `warning at ${opts.errorsPerHourWarning}`}/h): the link is degrading and may drop.`,
          value: Number(rate.toFixed(3)),
          unit: `${name}/h`,
        },
        clearedMessage: `InfiniBand ${label}: ${name} is back below ${opts.errorsPerHourWarning} per hour.`,
      });
    }
  }
  const seen = new Set(ports.map((p) => `${p.device}/${p.port}`));
  for (const id of listed) {
    if (seen.has(id)) continue;
    const [device, port] = id.split('/');
    const component = `ib ${device} port ${port}`;
    const label = `${device} port ${port}`;
    conditions.push({
      key: `${id}:link`,
      event: { ...base, component, severity: 'critical', message: `InfiniBand ${label} is missing from sysfs: the adapter or its driver is gone, so MPI ranks on this host cannot reach their peers.`, leadTimeMs: 0 },
      clearedMessage: `InfiniBand ${label} is back in sysfs.`,
    });
  }
  return { events, conditions };
}

export function createInfinibandMonitor(opts: InfinibandOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const state = newIbState(opts);
  const gate = new ConditionGate(opts.repeatMs);
  let saidMissing = false;
  return {
    async sample(): Promise<HealthEvent[]> {
      const { present, ports } = await readInfiniband(opts.root, opts.counters);
      const at = now();
      if (!present && !saidMissing) {
        deps.log?.warn({ root: opts.root }, 'no InfiniBand devices in sysfs; links cannot be watched here');
        saidMissing = true;
      }
      const { events, conditions } = evaluateInfiniband(ports, state, at, opts);
      return [...events, ...gate.update(conditions, at)];
    },
  };
}

export default monitorPlugin(NAME, 'InfiniBand ports: down ports, link flaps and error-counter rates', infinibandOptionsSchema, createInfinibandMonitor);
