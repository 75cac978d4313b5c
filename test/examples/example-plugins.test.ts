/**
 * The example plugin packages under examples/plugins, installed into a
 * throwaway project the way an operator would install them, then run through
 * PluginDriver: the load-average monitor against a file rewritten between
 * samples (levels, lead time, clearing, failures), the quiet-hours policy at
 * times inside and outside its window (decision and first-result-wins
 * ordering, the logging observer), option errors, and examples/symbio.yaml.
 *
 * Why install instead of importing examples/plugins/x/index.mjs in place:
 * each example has its own package.json, so Node's package self-reference
 * (which would resolve `import 'symbio'` inside the symbio repository) does
 * not apply there, and the repository has no node_modules/symbio. A project
 * with node_modules/symbio linked to this checkout is what a user has.
 */
import t from 'tap';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, hostname, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import {
  definePlugin,
  PLUGIN_API_VERSION,
  type ClusterView,
  type Decision,
  type HealthEvent,
  type OperationRecord,
  type PluginDefinition,
} from '../../src/host/plugin-api.js';
import { NO_ACTIONS, PluginDriver, PluginHookError, PluginLoadError } from '../../src/host/plugin-driver.js';
import { logger, type Logger } from '../../src/log.js';

// ---------------------------------------------------------------------------
// The modules' shapes, as far as the tests use them (they are plain JS)

interface Sample {
  at: number;
  value: number;
}
interface LoadavgOptions {
  path: string;
  cpus: number;
  warning: number;
  critical: number;
  clearBelow?: number;
  trendSamples: number;
  repeatMs: number;
  host: string;
}
interface LoadavgModule {
  default: PluginDefinition;
  NAME: string;
  COMPONENT: string;
  UNIT: string;
  optionsSchema: z.ZodType<LoadavgOptions>;
  parseLoadavg(text: string, path?: string): number;
  slopePerMs(samples: readonly Sample[]): number;
  predictLeadTimeMs(samples: readonly Sample[], target: number): number | undefined;
  createTracker(options: LoadavgOptions): { readonly level: string; update(perCpu: number, at: number, load1?: number): HealthEvent[] };
}
type Timezone = 'local' | number;
interface QuietOptions {
  from: string;
  to: string;
  timezone: Timezone;
  severities: HealthEvent['severity'][];
}
interface QuietModule {
  default: PluginDefinition;
  NAME: string;
  optionsSchema: z.ZodType<QuietOptions>;
  minutesOf(hhmm: string): number;
  minuteOfDay(atMs: number, timezone: Timezone): number;
  inQuietHours(atMs: number, window: Pick<QuietOptions, 'from' | 'to' | 'timezone'>): boolean;
  decide(event: HealthEvent, now: number, options: QuietOptions): Decision | null;
}

// ---------------------------------------------------------------------------
// Install the examples into a throwaway project

const repo = fileURLToPath(new URL('../../', import.meta.url));
const examples = join(repo, 'examples');
if (!existsSync(join(repo, 'dist', 'src', 'index.js'))) {
  // the plugins import 'symbio', whose entry is the built dist/src/index.js
  throw new Error('dist/src/index.js is missing: run `npm run build:ts` first');
}

const project = mkdtempSync(join(tmpdir(), 'symbio-example-plugins-'));
t.teardown(() => rmSync(project, { recursive: true, force: true }));
const nodeModules = join(project, 'node_modules');
mkdirSync(nodeModules);
symlinkSync(repo, join(nodeModules, 'symbio'), 'dir');
symlinkSync(join(repo, 'node_modules', 'zod'), join(nodeModules, 'zod'), 'dir');
// copies, not links: Node resolves a link to its real path, which is back in
// examples/ where 'symbio' does not resolve
cpSync(join(examples, 'plugins', 'loadavg-monitor'), join(nodeModules, 'symbio-plugin-loadavg'), { recursive: true });
cpSync(join(examples, 'plugins', 'quiet-hours-policy'), join(nodeModules, 'symbio-plugin-quiet-hours'), { recursive: true });
writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'an-operators-project', private: true, type: 'module' }));

// resolved through each package's "exports", as symbio resolves `use: <package>`
const projectRequire = createRequire(join(project, 'package.json'));
const loadavgEntry = projectRequire.resolve('symbio-plugin-loadavg');
const quietEntry = projectRequire.resolve('symbio-plugin-quiet-hours');
const loadavg = (await import(pathToFileURL(loadavgEntry).href)) as LoadavgModule;
const quiet = (await import(pathToFileURL(quietEntry).href)) as QuietModule;

const silent = logger.child({ test: 'example-plugins' });
silent.level = 'silent';

/** A driver with the given plugins started; torn down when the test ends. */
async function driver(
  t: { teardown(fn: () => unknown): void },
  configured: Array<{ plugin: PluginDefinition; options?: unknown }>,
  log: Logger = silent,
): Promise<PluginDriver> {
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start(configured);
  t.teardown(() => d.teardown());
  return d;
}

const view = (now: number): ClusterView => ({ now, hosts: [], jobs: [] });

function healthEvent(severity: HealthEvent['severity'], at = 0): HealthEvent {
  return { monitor: 'loadavg', host: 'node1', component: 'cpu load (1-minute average)', severity, message: 'test', at };
}

// ---------------------------------------------------------------------------

t.test('the packages: metadata and plugin definitions', async (t) => {
  for (const [dir, name, entry] of [
    ['loadavg-monitor', 'symbio-plugin-loadavg', loadavgEntry],
    ['quiet-hours-policy', 'symbio-plugin-quiet-hours', quietEntry],
  ] as const) {
    const pkg = JSON.parse(readFileSync(join(examples, 'plugins', dir, 'package.json'), 'utf8'));
    t.match(pkg, { name, type: 'module', exports: './index.mjs', main: './index.mjs', peerDependencies: { symbio: String }, dependencies: { zod: String } }, dir);
    t.notOk(pkg.dependencies.symbio, `${dir}: symbio is a peer, never a dependency of its own`);
    t.equal(entry, join(nodeModules, name, 'index.mjs'), `${name} resolves through its exports`);
    t.ok(existsSync(join(examples, 'plugins', dir, 'README.md')), `${dir} has a README`);
  }
  t.match(loadavg.default, { name: 'loadavg', kind: 'health-monitor', apiVersion: PLUGIN_API_VERSION, failurePolicy: { disableAfter: 5 } });
  t.match(quiet.default, { name: 'quiet-hours', kind: 'policy', apiVersion: PLUGIN_API_VERSION, failurePolicy: 'continue' });
});

// ---------------------------------------------------------------------------
// loadavg-monitor

t.test('loadavg: parsing /proc/loadavg', async (t) => {
  t.equal(loadavg.parseLoadavg('0.52 0.58 0.59 1/467 12345\n'), 0.52);
  t.equal(loadavg.parseLoadavg('12 3 1 1/1 1'), 12);
  t.throws(() => loadavg.parseLoadavg('', '/x'), /\/x: not a load average line/, 'an empty file is an error, not an idle machine');
  t.throws(() => loadavg.parseLoadavg('busy 1 2'), /not a load average line/);
  t.throws(() => loadavg.parseLoadavg('-1 0 0'), /not a load average line/);
});

t.test('loadavg: trend and lead time arithmetic', async (t) => {
  t.equal(loadavg.slopePerMs([]), 0);
  t.equal(loadavg.slopePerMs([{ at: 5, value: 1 }]), 0);
  t.equal(loadavg.slopePerMs([{ at: 5, value: 1 }, { at: 5, value: 2 }]), 0, 'no time between samples: no slope');
  t.equal(loadavg.slopePerMs([{ at: 0, value: 1 }, { at: 1000, value: 3 }]), 0.002);
  // least squares over (0,1) (1000,2) (2000,3): 1 per second; from 3 to 5 takes 2 s
  const rising = [{ at: 0, value: 1 }, { at: 1000, value: 2 }, { at: 2000, value: 3 }];
  t.equal(loadavg.predictLeadTimeMs(rising, 5), 2000);
  t.equal(loadavg.predictLeadTimeMs(rising, 3), 0, 'already there');
  t.equal(loadavg.predictLeadTimeMs(rising, 2.5), 0, 'past it');
  t.equal(loadavg.predictLeadTimeMs([...rising].reverse().map((s, i) => ({ ...s, at: i * 1000 })), 5), undefined, 'falling: no prediction');
  t.equal(loadavg.predictLeadTimeMs([{ at: 0, value: 1 }, { at: 1000, value: 1 }], 5), undefined, 'flat: no prediction');
  t.equal(loadavg.predictLeadTimeMs([], 5), undefined);
});

t.test('loadavg: levels, repeats, hysteresis and the trend window, with chosen times', async (t) => {
  const o = loadavg.optionsSchema.parse({ cpus: 2, warning: 1, critical: 2, clearBelow: 0.8, repeatMs: 60_000, trendSamples: 3, host: 'h1' });
  const tr = loadavg.createTracker(o);
  t.same(tr.update(0.5, 0), [], 'below warning: no event');

  // 0.5 -> 1.0 in a minute: 0.5 per minute, so 2.0 is 2 minutes away
  const [w, ...more] = tr.update(1.0, 60_000);
  t.same(more, []);
  t.match(w, { monitor: 'loadavg', host: 'h1', component: loadavg.COMPONENT, severity: 'warning', value: 1, unit: 'load/cpu', at: 60_000, leadTimeMs: 120_000 });
  t.match(w?.message, /1-minute load 2 on 2 CPUs \(1 per CPU\) is at or above the warning level 1; .* critical level 2 in about 2 min/);

  t.same(tr.update(1.2, 90_000), [], 'same level within repeatMs: nothing new');

  // repeatMs after the first report: sent again, fitted to the last 3 samples
  // only, (60 s, 1.0) (90 s, 1.2) (120 s, 1.2): slope 1/300 per s, 0.8 to go = 240 s
  const [again] = tr.update(1.2, 120_000);
  t.match(again, { severity: 'warning', at: 120_000, leadTimeMs: 240_000 }, 'repeated with a fresh lead time from the window');

  t.same(tr.update(0.9, 130_000), [], 'under warning but above clearBelow: still raised, nothing new');
  t.equal(tr.level, 'warning');
  const [cleared] = tr.update(0.7, 140_000);
  t.match(cleared, { severity: 'info', value: 0.7, at: 140_000 });
  t.match(cleared?.message, /back below 0\.8: cleared/);
  t.notOk(cleared && 'leadTimeMs' in cleared, 'no lead time on a clear');
  t.equal(tr.level, 'ok');
  t.same(tr.update(0.7, 400_000), [], 'ok stays quiet, however long');

  const falling = loadavg.createTracker(o);
  falling.update(1.9, 0);
  const [f] = falling.update(1.5, 60_000); // raised for the first time, but falling
  t.match(f, { severity: 'warning' });
  t.notOk(f && 'leadTimeMs' in f, 'falling: no lead time');
  t.match(f?.message, /not rising/);

  const [c] = falling.update(2.5, 70_000);
  t.match(c, { severity: 'critical', value: 2.5 });
  t.notOk(c && 'leadTimeMs' in c, 'critical: the level is reached, nothing to predict');
  const [down] = falling.update(1.4, 80_000);
  t.match(down, { severity: 'warning' }, 'critical back to warning is a change too');

  const changesOnly = loadavg.createTracker({ ...o, repeatMs: 0 });
  changesOnly.update(1.5, 0);
  t.same(changesOnly.update(1.5, 10_000_000), [], 'repeatMs 0: changes only');
});

t.test('loadavg through the driver: a file rewritten between samples', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-loadavg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'loadavg');
  const write = (load1: number) => writeFileSync(file, `${load1.toFixed(2)} 0.50 0.40 2/345 6789\n`);

  const d = await driver(t, [
    { plugin: loadavg.default, options: { path: file, cpus: 4, warning: 1, critical: 2, repeatMs: 0, host: 'node1' } },
  ]);
  // one monitor in the driver: its answer is the first (and only) one
  const sample = async (): Promise<HealthEvent[]> => {
    const r = await d.hookFirst<HealthEvent[]>('sample');
    if (!r) throw new Error('sample gave no answer');
    t.equal(r.plugin, 'loadavg');
    return r.result;
  };

  write(2); // 0.5 per CPU
  const a0 = Date.now();
  t.same(await sample(), [], 'below warning: nothing');
  const a1 = Date.now();
  await sleep(60);

  write(6); // 1.5 per CPU: warning; up by 1 per CPU since the first sample
  const events = await sample();
  t.equal(events.length, 1);
  const w = events[0]!;
  t.match(w, { monitor: 'loadavg', host: 'node1', component: loadavg.COMPONENT, severity: 'warning', value: 1.5, unit: 'load/cpu' });
  // the line through (t1, 0.5) and (w.at, 1.5) reaches 2 after half of
  // (w.at - t1) more; t1 was taken between a0 and a1
  const lead = w.leadTimeMs ?? NaN;
  t.ok(lead >= 0.5 * (w.at - a1) - 1 && lead <= 0.5 * (w.at - a0) + 1, `lead time ${lead} ms is half the time between the samples`);
  t.ok(w.at - a0 >= 60, 'the event time is the second sample time');

  t.same(await sample(), [], 'unchanged: nothing (repeatMs 0)');
  write(10); // 2.5 per CPU
  t.match(await sample(), [{ severity: 'critical', value: 2.5, message: /at or above the critical level 2/ }]);
  write(7); // 1.75
  t.match(await sample(), [{ severity: 'warning', value: 1.75 }]);
  write(1); // 0.25
  t.match(await sample(), [{ severity: 'info', value: 0.25, message: /back below 1: cleared/ }]);
  t.same(await sample(), []);
});

t.test('loadavg: defaults, and a real /proc/loadavg', async (t) => {
  const o = loadavg.optionsSchema.parse({});
  t.match(o, { path: '/proc/loadavg', cpus: availableParallelism(), warning: 1.5, critical: 3, trendSamples: 6, repeatMs: 60_000, host: hostname() });
  if (!existsSync('/proc/loadavg')) return t.comment('no /proc/loadavg on this machine: real sample not tried');
  const d = await driver(t, [{ plugin: loadavg.default }]);
  const r = await d.hookFirst<HealthEvent[]>('sample');
  t.ok(r && Array.isArray(r.result), 'sampled the real file');
  for (const e of r?.result ?? []) t.match(e, { monitor: 'loadavg', host: hostname() });
});

t.test('loadavg: failures under each failure policy', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-loadavg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const missing = join(dir, 'missing');

  // the plugin's own policy, { disableAfter: 5 }: skipped, then switched off
  const d = await driver(t, [{ plugin: loadavg.default, options: { path: missing } }]);
  for (let i = 0; i < 7; i++) t.equal(await d.hookFirst('sample'), null, `sample ${i + 1} gave no answer`);
  t.match(d.plugins(), [{ name: 'loadavg', disabled: true, failures: 5 }], 'disabled after 5 failures, not called again');
  t.equal(d.plugins().length, 1);

  // abort: the error reaches the caller, naming plugin and hook
  const strict = { ...loadavg.default, failurePolicy: 'abort' as const };
  const a = await driver(t, [{ plugin: strict, options: { path: missing } }]);
  await t.rejects(a.hookFirst('sample'), { name: 'PluginHookError', plugin: 'loadavg', hook: 'sample', message: /ENOENT/ });
  const garbage = join(dir, 'garbage');
  writeFileSync(garbage, 'not a number\n');
  const g = await driver(t, [{ plugin: strict, options: { path: garbage } }]);
  await t.rejects(g.hookFirst('sample'), new PluginHookError('loadavg', 'sample', `${garbage}: not a load average line: "not a number\\n"`));
});

// ---------------------------------------------------------------------------
// quiet-hours-policy

const utc = (h: number, m = 0) => Date.UTC(2024, 5, 1, h, m);
const clock = (h: number, m: number) => `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}`;

t.test('quiet hours: the window', async (t) => {
  t.equal(quiet.minutesOf('00:00'), 0);
  t.equal(quiet.minutesOf('23:59'), 1439);
  t.equal(quiet.minuteOfDay(utc(13, 7), 0), 13 * 60 + 7);
  t.equal(quiet.minuteOfDay(0, -300), 19 * 60, 'before the epoch day wraps to the previous evening');
  t.equal(quiet.minuteOfDay(utc(23, 30), 60), 30, 'UTC+01:00 is past midnight already');

  const night = { from: '22:00', to: '06:00', timezone: 0 } as const;
  for (const [h, m, inside] of [[22, 0, true], [23, 59, true], [0, 0, true], [5, 59, true], [6, 0, false], [12, 0, false], [21, 59, false]] as const) {
    t.equal(quiet.inQuietHours(utc(h, m), night), inside, `${clock(h, m)} UTC in 22:00-06:00 UTC: ${inside}`);
  }
  const lunch = { from: '12:00', to: '13:30', timezone: 0 } as const;
  for (const [h, m, inside] of [[11, 59, false], [12, 0, true], [13, 29, true], [13, 30, false]] as const) {
    t.equal(quiet.inQuietHours(utc(h, m), lunch), inside, `${clock(h, m)} UTC in 12:00-13:30 UTC: ${inside}`);
  }
  t.equal(quiet.inQuietHours(utc(21, 30), { ...night, timezone: 60 }), true, '21:30 UTC is 22:30 at UTC+01:00');
  t.equal(quiet.inQuietHours(utc(5, 30), { ...night, timezone: 60 }), false, '05:30 UTC is 06:30 at UTC+01:00');
  t.equal(quiet.inQuietHours(utc(2, 0), { ...night, timezone: -300 }), false, '02:00 UTC is 21:00 at UTC-05:00');
  t.equal(quiet.inQuietHours(utc(3, 0), { ...night, timezone: -300 }), true, '03:00 UTC is 22:00 at UTC-05:00');
  const local = { ...night, timezone: 'local' } as const;
  t.equal(quiet.inQuietHours(new Date(2024, 5, 1, 23, 30).getTime(), local), true, '23:30 local time');
  t.equal(quiet.inQuietHours(new Date(2024, 5, 1, 12, 0).getTime(), local), false, '12:00 local time');
});

t.test('quiet hours: the decision', async (t) => {
  const o = quiet.optionsSchema.parse({ from: '22:00', to: '06:00', timezone: 0 });
  t.same(o.severities, ['info', 'warning'], 'critical passes by default');
  t.same(quiet.decide(healthEvent('warning'), utc(23), o), {
    action: 'none',
    reason: 'quiet hours (22:00-06:00 UTC+00:00): not acting on warning from loadavg about cpu load (1-minute average) on node1',
  });
  t.match(quiet.decide(healthEvent('info'), utc(1), o), { action: 'none' });
  t.equal(quiet.decide(healthEvent('critical'), utc(23), o), null, 'critical in quiet hours: pass');
  t.equal(quiet.decide(healthEvent('warning'), utc(12), o), null, 'outside quiet hours: pass');
  const all = quiet.optionsSchema.parse({ from: '22:00', to: '06:00', timezone: -90, severities: ['info', 'warning', 'critical'] });
  t.match(quiet.decide(healthEvent('critical'), utc(23, 30), all), { action: 'none', reason: /22:00-06:00 UTC-01:30/ });
});

t.test('quiet hours through the driver: first-result-wins with order pre', async (t) => {
  const migrate = definePlugin({
    name: 'always-migrate',
    version: '1.0.0',
    apiVersion: PLUGIN_API_VERSION,
    kind: 'policy',
    configSchema: z.strictObject({}),
    setup: () => ({
      decideOnHealth: (e: HealthEvent): Decision => ({ action: 'migrate', job: 'j1', vms: ['vm0'], reason: `${e.severity} on ${e.host}` }),
    }),
  });
  // listed after the policy it vetoes: order 'pre' still asks it first
  const d = await driver(t, [{ plugin: migrate }, { plugin: quiet.default, options: { from: '22:00', to: '06:00', timezone: 0 } }]);

  t.match(await d.hookFirst('decideOnHealth', healthEvent('warning'), view(utc(23))), {
    plugin: 'quiet-hours',
    result: { action: 'none', reason: /^quiet hours/ },
  }, 'inside: quiet-hours decides "none" and the round ends');
  t.same(await d.hookFirst('decideOnHealth', healthEvent('warning'), view(utc(12))), {
    plugin: 'always-migrate',
    result: { action: 'migrate', job: 'j1', vms: ['vm0'], reason: 'warning on node1' },
  }, 'outside: quiet-hours passes, the next policy decides');
  t.match(await d.hookFirst('decideOnHealth', healthEvent('critical'), view(utc(23))), { plugin: 'always-migrate' }, 'critical passes');

  // against the real clock: windows around now and well away from it
  const nowMinute = quiet.minuteOfDay(Date.now(), 0);
  const hhmm = (m: number) => {
    const w = ((m % 1440) + 1440) % 1440;
    return `${String(Math.floor(w / 60)).padStart(2, '0')}:${String(w % 60).padStart(2, '0')}`;
  };
  for (const [from, to, inside] of [[nowMinute - 60, nowMinute + 60, true], [nowMinute + 120, nowMinute + 240, false]] as const) {
    const r = await driver(t, [{ plugin: migrate }, { plugin: quiet.default, options: { from: hhmm(from), to: hhmm(to), timezone: 0 } }]);
    const decided = await r.hookFirst('decideOnHealth', healthEvent('info'), NO_ACTIONS.view());
    t.equal(decided?.plugin, inside ? 'quiet-hours' : 'always-migrate', `window ${hhmm(from)}-${hhmm(to)} UTC around now: ${inside}`);
  }
});

t.test('quiet hours: operationFinished logs each operation', async (t) => {
  const lines: Array<Record<string, unknown>> = [];
  const capture = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  const d = await driver(t, [{ plugin: quiet.default, options: { from: '22:00', to: '06:00', timezone: 0 } }], capture);
  const op = (over: Partial<OperationRecord>): OperationRecord => ({
    id: 'op-1', job: 'j1', kind: 'checkpoint', ok: true, startedAt: 0, durationMs: 1234, phases: [], requestedBy: 'operator', reason: 'asked', ...over,
  });

  await d.hookParallel('operationFinished', op({}), view(utc(12)));
  await d.hookParallel('operationFinished', op({ id: 'op-2', kind: 'migrate', ok: false, error: 'destination refused' }), view(utc(12)));
  await d.hookParallel('operationFinished', op({ id: 'op-3', kind: 'restart', requestedBy: 'restart-on-failure', reason: 'rank died' }), view(utc(23)));
  await d.hookParallel('operationFinished', op({ id: 'op-4' }), view(utc(23)));

  const logged = lines.filter((l) => 'op' in l);
  t.match(logged, [
    { level: 30, plugin: 'quiet-hours', op: 'op-1', job: 'j1', kind: 'checkpoint', ok: true, ms: 1234, quiet: false, msg: 'checkpoint of j1 finished' },
    { level: 30, op: 'op-2', ok: false, msg: 'migrate of j1 failed: destination refused' },
    { level: 40, op: 'op-3', requestedBy: 'restart-on-failure', reason: 'rank died', quiet: true, msg: 'restart of j1 ran during quiet hours' },
    { level: 30, op: 'op-4', quiet: true, msg: 'checkpoint of j1 finished' },
  ], 'info normally, warn when a policy acted in quiet hours, info for the operator');
  t.equal(logged.length, 4);
  t.ok(lines.some((l) => l.msg === 'quiet hours configured'), 'setup logged its window');
});

// ---------------------------------------------------------------------------
// Options symbio refuses (config check fails; the plugin never starts)

t.test('bad options are load errors', async (t) => {
  const cases: Array<[PluginDefinition, unknown, RegExp]> = [
    [loadavg.default, { extra: 1 }, /^plugin loadavg: option \(options\): Unrecognized key: "extra"/],
    [loadavg.default, { warning: 2, critical: 1 }, /^plugin loadavg: option critical: must be greater than warning/],
    [loadavg.default, { cpus: 0 }, /^plugin loadavg: option cpus: /],
    [loadavg.default, { cpus: 1.5 }, /^plugin loadavg: option cpus: /],
    [loadavg.default, { clearBelow: 2 }, /^plugin loadavg: option clearBelow: must not be greater than warning/],
    [loadavg.default, { trendSamples: 1 }, /^plugin loadavg: option trendSamples: /],
    [loadavg.default, { path: '' }, /^plugin loadavg: option path: /],
    [quiet.default, {}, /^plugin quiet-hours: option from: /],
    [quiet.default, { from: '22:00' }, /^plugin quiet-hours: option to: /],
    [quiet.default, { from: '24:00', to: '06:00' }, /^plugin quiet-hours: option from: must be a time of day 'HH:MM'/],
    [quiet.default, { from: '7:00', to: '08:00' }, /^plugin quiet-hours: option from: must be a time of day/],
    [quiet.default, { from: '22:00', to: '22:00' }, /^plugin quiet-hours: option to: must differ from from/],
    [quiet.default, { from: '22:00', to: '06:00', timezone: 'UTC' }, /^plugin quiet-hours: option timezone: /],
    [quiet.default, { from: '22:00', to: '06:00', timezone: 900 }, /^plugin quiet-hours: option timezone: /],
    [quiet.default, { from: '22:00', to: '06:00', severities: [] }, /^plugin quiet-hours: option severities: /],
    [quiet.default, { from: '22:00', to: '06:00', severities: ['fatal'] }, /^plugin quiet-hours: option severities.0: /],
    [quiet.default, { from: 1320, to: '06:00' }, /^plugin quiet-hours: option from: /], // what YAML 1.1 makes of 22:00
  ];
  for (const [plugin, options, message] of cases) {
    const d = new PluginDriver({ log: silent, hookTimeoutMs: 1000 });
    await t.rejects(d.start([{ plugin, options }]), PluginLoadError, `${plugin.name} ${JSON.stringify(options)}`);
    await t.rejects(new PluginDriver({ log: silent, hookTimeoutMs: 1000 }).start([{ plugin, options }]), { message }, String(message));
  }
  await t.rejects(
    new PluginDriver({ log: silent, hookTimeoutMs: 1000 }).start([{ plugin: { ...loadavg.default, apiVersion: PLUGIN_API_VERSION + 1 } }]),
    { name: 'PluginLoadError', message: /needs plugin API/ },
  );
});

// ---------------------------------------------------------------------------
// examples/symbio.yaml

t.test('examples/symbio.yaml: entries, paths and example options', async (t) => {
  const file = join(examples, 'symbio.yaml');
  const config = parseYaml(readFileSync(file, 'utf8')) as { plugins: Array<Record<string, unknown>> };
  t.ok(Array.isArray(config.plugins) && config.plugins.length > 0, 'a plugins list');
  const byPath: Record<string, LoadavgModule | QuietModule> = {
    'plugins/loadavg-monitor/index.mjs': loadavg,
    'plugins/quiet-hours-policy/index.mjs': quiet,
  };
  const builtIn =
    /^symbio\/plugins\/(monitors\/(edac|lm-sensors|ipmi|infiniband|smart|command)|policies\/(periodic-checkpoint|restart-on-failure|migrate-on-health))$/;
  const failurePolicy = z.union([z.literal('abort'), z.literal('continue'), z.strictObject({ disableAfter: z.number().int().positive() })]);
  const examplesUsed: string[] = [];
  for (const entry of config.plugins) {
    const use = String(entry.use);
    t.same(Object.keys(entry).filter((k) => !['use', 'options', 'intervalMs', 'failurePolicy', 'enabled'].includes(k)), [], `${use}: known keys only`);
    if (entry.intervalMs !== undefined) t.ok(Number.isInteger(entry.intervalMs) && (entry.intervalMs as number) >= 100, `${use}: intervalMs`);
    if (entry.failurePolicy !== undefined) t.ok(failurePolicy.safeParse(entry.failurePolicy).success, `${use}: failurePolicy`);
    if (use.startsWith('./') || use.startsWith('../')) {
      const path = join(dirname(file), use);
      t.ok(existsSync(path), `${use} exists relative to the config file`);
      const mod = byPath[use.slice(2)];
      if (!mod) {
        t.fail(`${use}: not one of the example plugins`);
        continue;
      }
      examplesUsed.push(mod.default.name);
      const parsed = mod.default.configSchema.safeParse(entry.options ?? {});
      t.ok(parsed.success, `${use}: its options are valid`);
      if (mod.default.kind === 'health-monitor') t.ok(entry.intervalMs, `${use}: a monitor has an interval`);
    } else {
      t.match(use, builtIn, `${use} is a built-in plugin`);
    }
  }
  t.same(examplesUsed.sort(), ['loadavg', 'quiet-hours'], 'both example plugins are used');
  // and they start together, as `symbio config check` would start them
  const mods = config.plugins.filter((e) => String(e.use).startsWith('./'));
  await driver(t, mods.map((e) => ({ plugin: byPath[String(e.use).slice(2)]!.default, options: e.options })));
});
