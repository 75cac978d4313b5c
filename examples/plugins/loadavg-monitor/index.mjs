// @ts-check
/**
 * symbio-plugin-loadavg: a health monitor that watches the 1-minute load
 * average per CPU (from /proc/loadavg) against a warning and a critical
 * level, predicts from the recent trend when the critical level will be
 * reached, and says so when the load comes back down.
 *
 * Plain JavaScript ESM on purpose: symbio imports it as it is, no build step.
 * `// @ts-check` and the JSDoc types still give editor checking against
 * symbio's published types.
 *
 * The pure parts (parsing, trend, the state machine) are exported so they
 * can be tested with chosen timestamps; the plugin itself is the default
 * export.
 */
import { readFile } from 'node:fs/promises';
import { availableParallelism, hostname } from 'node:os';
import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION } from 'symbio';

/** @typedef {import('symbio').HealthEvent} HealthEvent */
/** @typedef {import('symbio').Severity} Severity */
/** @typedef {{ at: number, value: number }} Sample  one reading: ms since the epoch, load per CPU */

export const NAME = 'loadavg';
export const COMPONENT = 'cpu load (1-minute average)';
export const UNIT = 'load/cpu';

export const optionsSchema = z
  .strictObject({
    /** Where to read the load average; tests point this at a file they write. */
    path: z.string().min(1).default('/proc/loadavg'),
    /** CPUs the load is divided by. The default counts the CPUs this process may use. */
    cpus: z.number().int().positive().default(() => availableParallelism()),
    /** Load per CPU at which the monitor warns. */
    warning: z.number().positive().default(1.5),
    /** Load per CPU it calls critical; the lead time predicts when this is reached. */
    critical: z.number().positive().default(3),
    /**
     * A raised condition clears only below this (default: `warning`). Set it a
     * little under `warning` so a load that hovers at the level does not
     * send warning, clear, warning, ... on every sample.
     */
    clearBelow: z.number().nonnegative().optional(),
    /** How many recent samples the trend is fitted to. */
    trendSamples: z.number().int().min(2).max(1000).default(6),
    /**
     * Repeat a condition that has not changed after this long, with a fresh
     * lead time, so a policy that passed on it earlier can look again.
     * 0: report changes only.
     */
    repeatMs: z.number().int().nonnegative().default(60_000),
    /** The host named in events; the default is this machine's name. */
    host: z.string().min(1).default(() => hostname()),
  })
  .refine((o) => o.critical > o.warning, { path: ['critical'], message: 'must be greater than warning' })
  .refine((o) => o.clearBelow === undefined || o.clearBelow <= o.warning, {
    path: ['clearBelow'],
    message: 'must not be greater than warning',
  });

/** @typedef {z.infer<typeof optionsSchema>} Options */

/**
 * The 1-minute load from the text of /proc/loadavg ("0.52 0.58 0.59 1/467 12345").
 * @param {string} text
 * @param {string} [path] for the error message
 */
export function parseLoadavg(text, path = '/proc/loadavg') {
  const first = text.trim().split(/\s+/, 1)[0] ?? '';
  const load = Number(first);
  // Number('') is 0: insist on digits so an empty file is an error, not an idle machine
  if (!/^\d+(\.\d+)?$/.test(first) || !Number.isFinite(load)) {
    throw new Error(`${path}: not a load average line: ${JSON.stringify(text.slice(0, 60))}`);
  }
  return load;
}

/**
 * Least-squares slope of value over time (per ms). Least squares rather than
 * first-to-last so one odd reading in the window does not swing the
 * prediction; with two samples it is the line through both.
 * @param {readonly Sample[]} samples
 */
export function slopePerMs(samples) {
  const n = samples.length;
  if (n < 2) return 0;
  let meanT = 0;
  let meanV = 0;
  for (const s of samples) {
    meanT += s.at / n;
    meanV += s.value / n;
  }
  let num = 0;
  let den = 0;
  for (const s of samples) {
    num += (s.at - meanT) * (s.value - meanV);
    den += (s.at - meanT) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/**
 * Predicted ms from the last sample until the value reaches `target`, on the
 * trend of `samples`: 0 when it is there already, undefined when the trend
 * does not rise (no prediction is better than an infinite one).
 * @param {readonly Sample[]} samples
 * @param {number} target
 * @returns {number | undefined}
 */
export function predictLeadTimeMs(samples, target) {
  const last = samples.at(-1);
  if (!last) return undefined;
  if (last.value >= target) return 0;
  const slope = slopePerMs(samples);
  if (!(slope > 0)) return undefined;
  return Math.round((target - last.value) / slope);
}

/** @param {number} ms */
function humanDuration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  if (ms < 7_200_000) return `${Math.round(ms / 60_000)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

/** @param {number} x */
const fmt = (x) => (Math.round(x * 100) / 100).toString();

/**
 * The monitor's state between samples: the trend window and the level last
 * reported. Events are sent when the level changes (and every `repeatMs`
 * while it stays raised), not on every sample: each event goes to every
 * policy, and a policy that migrates should not be asked again every few
 * seconds about the same load.
 * @param {Options} options
 */
export function createTracker(options) {
  const clearBelow = options.clearBelow ?? options.warning;
  /** @type {Sample[]} */
  const window = [];
  /** @type {'ok' | 'warning' | 'critical'} */
  let level = 'ok';
  let reportedAt = 0;

  /**
   * @param {'ok' | 'warning' | 'critical'} previous
   * @param {number} value
   */
  function levelFor(previous, value) {
    if (value >= options.critical) return 'critical';
    if (value >= options.warning) return 'warning';
    // hysteresis: a raised condition holds until the load is clearly down
    if (previous !== 'ok' && value >= clearBelow) return 'warning';
    return 'ok';
  }

  return {
    get level() {
      return level;
    },
    /**
     * One reading; returns the events it causes (usually none).
     * @param {number} perCpu load per CPU
     * @param {number} at ms since the epoch
     * @param {number} load1 the raw 1-minute load, for the message
     * @returns {HealthEvent[]}
     */
    update(perCpu, at, load1 = perCpu * options.cpus) {
      window.push({ at, value: perCpu });
      if (window.length > options.trendSamples) window.splice(0, window.length - options.trendSamples);

      const previous = level;
      level = levelFor(previous, perCpu);
      const changed = level !== previous;
      const repeat = !changed && level !== 'ok' && options.repeatMs > 0 && at - reportedAt >= options.repeatMs;
      if (!changed && !repeat) return [];
      reportedAt = at;

      const reading = `1-minute load ${fmt(load1)} on ${options.cpus} CPU${options.cpus === 1 ? '' : 's'} (${fmt(perCpu)} per CPU)`;
      /** @type {{ severity: Severity, message: string, leadTimeMs?: number }} */
      let what;
      if (level === 'ok') {
        what = { severity: 'info', message: `${reading} is back below ${fmt(clearBelow)}: cleared` };
      } else if (level === 'critical') {
        // reached: no prediction to make (a lead time of 0 would read as "failed now")
        what = { severity: 'critical', message: `${reading} is at or above the critical level ${fmt(options.critical)}` };
      } else {
        const lead = predictLeadTimeMs(window, options.critical);
        what = {
          severity: 'warning',
          message:
            (perCpu >= options.warning
              ? `${reading} is at or above the warning level ${fmt(options.warning)}`
              : `${reading} is under the warning level ${fmt(options.warning)} but not yet below ${fmt(clearBelow)}`) +
            (lead === undefined
              ? '; not rising'
              : `; at the current trend it reaches the critical level ${fmt(options.critical)} in about ${humanDuration(lead)}`),
          ...(lead === undefined ? {} : { leadTimeMs: lead }),
        };
      }
      return [{ monitor: NAME, host: options.host, component: COMPONENT, value: perCpu, unit: UNIT, at, ...what }];
    },
  };
}

export default definePlugin({
  name: NAME,
  version: '1.0.0',
  apiVersion: PLUGIN_API_VERSION,
  kind: 'health-monitor',
  configSchema: optionsSchema,
  // An unreadable file should not stop symbio; a monitor that keeps failing
  // is switched off (and says so in the log) rather than retried forever.
  failurePolicy: { disableAfter: 5 },
  setup(ctx) {
    const o = ctx.options;
    const tracker = createTracker(o);
    ctx.log.info({ path: o.path, cpus: o.cpus, warning: o.warning, critical: o.critical }, 'watching the load average');
    return /** @satisfies {import('symbio').HealthMonitorHooks} */ ({
      sample: {
        // Reading a proc file takes microseconds; if it takes seconds the
        // machine is in trouble and waiting longer tells us nothing.
        timeoutMs: 2000,
        async handler() {
          // the signal cancels a read still under way when symbio tears us down
          const text = await readFile(o.path, { encoding: 'utf8', signal: ctx.signal });
          const load1 = parseLoadavg(text, o.path);
          const events = tracker.update(load1 / o.cpus, Date.now(), load1);
          for (const e of events) ctx.log.debug({ severity: e.severity, value: e.value, leadTimeMs: e.leadTimeMs }, e.message);
          return events;
        },
      },
    });
  },
});
