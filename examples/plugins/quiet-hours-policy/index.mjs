// @ts-check
/**
 * symbio-plugin-quiet-hours: a policy that keeps symbio from acting on
 * health events during configured quiet hours (a nightly batch window, a
 * maintenance freeze on the network, ...), and logs every operation that
 * finishes.
 *
 * During quiet hours it answers `decideOnHealth` with `{ action: 'none' }`,
 * which ends the first-result-wins round: no later policy is asked. Outside
 * them it returns null, so the next policy decides as if this one were not
 * there. Critical events pass by default (option `severities`): quiet hours
 * should not cost a job. It does not implement `decideOnFailure`: a failure
 * has already happened, and restarting the job is never worth waiting for.
 *
 * The window test takes the time as an argument (the hook passes the
 * cluster view's `now`), so it is exported and tested without a clock.
 */
import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION } from 'symbio';

/** @typedef {import('symbio').Decision} Decision */
/** @typedef {import('symbio').HealthEvent} HealthEvent */

export const NAME = 'quiet-hours';

const hhmm = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, "must be a time of day 'HH:MM' (00:00 to 23:59)");

export const optionsSchema = z
  .strictObject({
    /** Quiet hours start at this time of day ('HH:MM', inclusive)... */
    from: hhmm,
    /** ...and end at this one (exclusive). `from` after `to` spans midnight: 22:00 to 06:00. */
    to: hhmm,
    /**
     * Whose clock `from` and `to` are read on: 'local' (this machine's time
     * zone, daylight saving included), or a fixed offset from UTC in minutes
     * (60 for UTC+01:00, -300 for UTC-05:00, 0 for UTC).
     */
    timezone: z.union([z.literal('local'), z.number().int().min(-720).max(840)]).default('local'),
    /** Severities held back during quiet hours; the others pass to later policies. */
    severities: z
      .array(z.enum(['info', 'warning', 'critical']))
      .min(1)
      .default(['info', 'warning']),
  })
  // equal ends could mean "never" or "all day": make the operator say which
  // by other means (drop the plugin, or 00:00 to 23:59)
  .refine((o) => o.from !== o.to, { path: ['to'], message: 'must differ from from' });

/** @typedef {z.infer<typeof optionsSchema>} Options */
/** @typedef {Pick<Options, 'from' | 'to' | 'timezone'>} Window */

/** @param {string} s 'HH:MM' */
export function minutesOf(s) {
  const [h, m] = s.split(':').map(Number);
  return (h ?? 0) * 60 + (m ?? 0);
}

/**
 * Minute of the day (0..1439) at `atMs` on the given clock.
 * @param {number} atMs ms since the epoch
 * @param {Options['timezone']} timezone
 */
export function minuteOfDay(atMs, timezone) {
  if (timezone === 'local') {
    const d = new Date(atMs);
    return d.getHours() * 60 + d.getMinutes();
  }
  const m = Math.floor(atMs / 60_000) + timezone;
  return ((m % 1440) + 1440) % 1440;
}

/**
 * Whether `atMs` falls in the quiet window [from, to).
 * @param {number} atMs
 * @param {Window} window
 */
export function inQuietHours(atMs, window) {
  const m = minuteOfDay(atMs, window.timezone);
  const from = minutesOf(window.from);
  const to = minutesOf(window.to);
  return from < to ? m >= from && m < to : m >= from || m < to;
}

/** @param {Window} w */
function describe(w) {
  if (w.timezone === 'local') return `${w.from}-${w.to} local time`;
  const sign = w.timezone < 0 ? '-' : '+';
  const abs = Math.abs(w.timezone);
  return `${w.from}-${w.to} UTC${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
}

/**
 * The policy's answer to one health event at time `now`: `none` (decided:
 * do nothing) during quiet hours for the configured severities, else null
 * (pass: the next policy decides).
 * @param {HealthEvent} event
 * @param {number} now ms since the epoch
 * @param {Options} options
 * @returns {Decision | null}
 */
export function decide(event, now, options) {
  if (!options.severities.includes(event.severity)) return null;
  if (!inQuietHours(now, options)) return null;
  return {
    action: 'none',
    reason: `quiet hours (${describe(options)}): not acting on ${event.severity} from ${event.monitor} about ${event.component} on ${event.host}`,
  };
}

export default definePlugin({
  name: NAME,
  version: '1.0.0',
  apiVersion: PLUGIN_API_VERSION,
  kind: 'policy',
  configSchema: optionsSchema,
  // If this plugin breaks, the other policies should still decide (as they
  // would outside quiet hours) rather than symbio stopping to decide at all.
  failurePolicy: 'continue',
  setup(ctx) {
    const o = ctx.options;
    ctx.log.info({ window: describe(o), severities: o.severities }, 'quiet hours configured');
    // @satisfies types the hooks' parameters and checks their results
    // (definePlugin alone accepts any hooks, with untyped parameters)
    return /** @satisfies {import('symbio').PolicyHooks} */ ({
      decideOnHealth: {
        // 'pre': a veto only works if it is asked before the policies it
        // vetoes, wherever the operator lists it in symbio.yaml.
        order: 'pre',
        // the cluster view's clock, not Date.now(): the decision is about the
        // moment the host took the view, and tests can choose that moment
        handler: (event, view) => decide(event, view.now, o),
      },
      operationFinished(op, view) {
        const quiet = inQuietHours(view.now, o);
        const fields = { op: op.id, job: op.job, kind: op.kind, ok: op.ok, ms: op.durationMs, requestedBy: op.requestedBy, quiet };
        // a policy acted in quiet hours anyway (on a failure, or on a
        // critical event): worth a line an operator will notice
        if (quiet && op.requestedBy !== 'operator') {
          ctx.log.warn({ ...fields, reason: op.reason }, `${op.kind} of ${op.job} ran during quiet hours`);
        } else {
          ctx.log.info(fields, `${op.kind} of ${op.job} ${op.ok ? 'finished' : `failed: ${op.error ?? 'unknown error'}`}`);
        }
      },
    });
  },
});
