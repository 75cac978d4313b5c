/**
 * Simulated host health for the local virtual cluster. A real cluster's
 * monitors read sensors, EDAC counters and SMART data; a slot of the
 * virtual cluster has none, so an operator (or the demo, or a test) states
 * its condition here and the `vcluster-health` monitor reports it like any
 * other monitor would: one JSON file per slot under <cluster>/health/.
 * A predicted lead time counts down from when the condition was set.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../util/files.js';
import { clusterDir, ClusterError } from './state.js';

export const healthConditionSchema = z.strictObject({
  severity: z.enum(['info', 'warning', 'critical']),
  component: z.string().min(1),
  message: z.string().min(1),
  /** Predicted time to failure from `at`, ms. */
  leadTimeMs: z.number().nonnegative().optional(),
  value: z.number().optional(),
  unit: z.string().optional(),
  /** When the condition was set, ms since the epoch. */
  at: z.number(),
});
export type HealthCondition = z.infer<typeof healthConditionSchema>;

const PLACE = /^slot\d+$/;

export function healthDir(cluster: string): string {
  return join(clusterDir(cluster), 'health');
}

function placeName(place: string): string {
  const p = /^\d+$/.test(place) ? `slot${place}` : place;
  if (!PLACE.test(p)) throw new ClusterError(`'${place}' is not a slot (slot0, slot1, ...)`);
  return p;
}

/** Set a slot's condition (replacing the previous one). */
export function setHealth(cluster: string, place: string, c: Omit<HealthCondition, 'at'> & { at?: number }): HealthCondition {
  const dir = healthDir(cluster);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const cond = healthConditionSchema.parse({ ...c, at: c.at ?? Date.now() });
  writeFileAtomic(join(dir, `${placeName(place)}.json`), JSON.stringify(cond) + '\n');
  return cond;
}

/** Clear one slot's condition, or every slot's. */
export function clearHealth(cluster: string, place?: string): void {
  if (place === undefined) rmSync(healthDir(cluster), { recursive: true, force: true });
  else rmSync(join(healthDir(cluster), `${placeName(place)}.json`), { force: true });
}

/** Every slot's condition; a file that cannot be read or parsed is reported in `problems`, not thrown. */
export function readHealth(cluster: string): { conditions: { place: string; condition: HealthCondition }[]; problems: string[] } {
  const dir = healthDir(cluster);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => PLACE.test(n.replace(/\.json$/, '')) && n.endsWith('.json'));
  } catch {
    return { conditions: [], problems: [] };
  }
  const conditions: { place: string; condition: HealthCondition }[] = [];
  const problems: string[] = [];
  for (const n of names.sort()) {
    try {
      const r = healthConditionSchema.safeParse(JSON.parse(readFileSync(join(dir, n), 'utf8')));
      if (r.success) conditions.push({ place: n.replace(/\.json$/, ''), condition: r.data });
      else problems.push(`${join(dir, n)}: ${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message}`);
    } catch (err) {
      problems.push(`${join(dir, n)}: ${(err as Error).message}`);
    }
  }
  return { conditions, problems };
}
