/**
 * Monitor 'vcluster-health': the simulated health of a local virtual
 * cluster's slots (src/vcluster/health.ts; set with `symbio vcluster
 * health`). Each slot is a host to the policies. A condition is reported
 * when it appears or changes and every `repeatMs` while it lasts, with its
 * lead time counted down from when it was set; a cleared one gets an info
 * event, as with the hardware monitors.
 */
import { z } from 'zod';
import { readSimulatedHealth, type HealthEvent } from '../../src/index.js';
import { ConditionGate, baseOptionShape, monitorPlugin, type Condition, type Monitor, type MonitorDeps } from './common.js';

const NAME = 'vcluster-health';

const optionsSchema = z
  .object({
    cluster: z.string().min(1).describe('Name of the local virtual cluster whose slots are watched'),
    repeatMs: baseOptionShape.repeatMs.default(5_000),
  })
  .strict();

export type VclusterHealthOptions = z.output<typeof optionsSchema>;

export function createVclusterHealthMonitor(o: VclusterHealthOptions, deps: MonitorDeps = {}): Monitor {
  const now = deps.now ?? Date.now;
  const gate = new ConditionGate(o.repeatMs);
  let lastProblems = '';
  return {
    async sample(): Promise<HealthEvent[]> {
      const { conditions, problems } = readSimulatedHealth(o.cluster);
      // a broken file is worth one warning, not one per sample
      if (problems.join('\n') !== lastProblems && problems.length) deps.log?.warn({ problems }, 'unreadable health files ignored');
      lastProblems = problems.join('\n');
      const at = now();
      const out: Condition[] = conditions
        .filter((c) => c.condition.severity !== 'info')
        .map(({ place, condition: c }) => ({
          key: `${place}\u0000${c.component}`,
          event: {
            monitor: NAME,
            host: place,
            component: c.component,
            severity: c.severity,
            message: c.message,
            at,
            ...(c.leadTimeMs === undefined ? {} : { leadTimeMs: Math.max(0, c.leadTimeMs - (at - c.at)) }),
            ...(c.value === undefined ? {} : { value: c.value }),
            ...(c.unit === undefined ? {} : { unit: c.unit }),
          },
        }));
      return gate.update(out, at);
    },
  };
}

export default monitorPlugin(NAME, "the simulated health of a local virtual cluster's slots (symbio vcluster health)", optionsSchema, createVclusterHealthMonitor);
