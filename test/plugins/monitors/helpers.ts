/**
 * Shared by the monitor tests: fixture paths, fixture trees copied to a
 * temporary directory (so a test can rewrite counters between samples),
 * and a monitor plugin started the way the host starts it (setup with a
 * context, then sample).
 */
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import type { HealthEvent, PluginDefinition } from '../../../src/index.js';
import { NO_ACTIONS } from '../../../src/host/plugin-driver.js';
import { logger } from '../../../src/log.js';

export const fixtures = join(dirname(fileURLToPath(import.meta.url)), '../../fixtures/monitors');
export const fixture = (...parts: string[]): string => join(fixtures, ...parts);

export const log = logger.child({ test: 'monitors' });
log.level = 'silent';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** The fake tools in the fixtures, made executable (a checkout may lose the mode). */
export async function bin(name: 'fake-tool' | 'fake-ipmitool' | 'fake-smartctl'): Promise<string> {
  const p = fixture('bin', name);
  await chmod(p, 0o755);
  return p;
}

/** An empty temporary directory, removed when the test ends. */
export async function tempDir(t: Teardown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'symbio-monitor-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A copy of a fixture directory in a temporary directory. */
export async function tempCopy(t: Teardown, sub: string): Promise<string> {
  const dir = await tempDir(t);
  await cp(fixture(sub), dir, { recursive: true });
  return dir;
}

/** Write a sysfs-style attribute (value and a newline), creating directories. */
export async function put(path: string, value: string | number): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${value}\n`);
}

export async function readJson(path: string): Promise<unknown> {
  return JSON.parse(await readFile(path, 'utf8')) as unknown;
}

export async function exists(dir: string, name: string): Promise<boolean> {
  return (await readdir(dir)).includes(name);
}

type MonitorPlugin<S extends z.ZodType> = PluginDefinition<S, { sample: () => Promise<HealthEvent[]> }>;

/**
 * Start a monitor plugin as the host does: validate its options against its
 * schema, call setup with a silent logger, an abort signal and no
 * controller, and hand back its sample hook.
 */
export async function startMonitor<S extends z.ZodType>(
  t: Teardown,
  plugin: MonitorPlugin<S>,
  options: unknown,
): Promise<{ sample: () => Promise<HealthEvent[]>; signal: AbortSignal }> {
  const parsed = plugin.configSchema.safeParse(options);
  if (!parsed.success) throw new Error(`bad options for ${plugin.name}: ${parsed.error.message}`);
  const controller = new AbortController();
  t.teardown(() => controller.abort());
  const hooks = await plugin.setup({ log: log.child({ plugin: plugin.name }), signal: controller.signal, options: parsed.data, actions: NO_ACTIONS });
  return { sample: () => hooks.sample(), signal: controller.signal };
}

/** A clock tests move by hand. */
export function fakeClock(start = Date.UTC(2026, 10, 23, 12, 0, 0)): { now: () => number; advance: (ms: number) => number } {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

export const MIN = 60_000;
export const HOUR = 3_600_000;
