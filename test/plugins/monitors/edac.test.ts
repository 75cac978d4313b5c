/**
 * EDAC monitor on fixture sysfs trees (Skylake dimmN layout, old csrowN
 * layout, rank-based driver with its legacy csrow view): parsing, new
 * uncorrectable errors, correctable-error rates and budget lead times by
 * arithmetic, repeat and clear, counter resets, missing EDAC, and the plugin
 * end to end through setup + sample.
 */
import t from 'tap';
import { join } from 'node:path';
import edacPlugin, {
  createEdacMonitor,
  edacOptionsSchema,
  edacSources,
  evaluateEdac,
  newEdacState,
  readEdac,
} from '../../../plugins/monitors/edac.js';
import type { MonitorLog } from '../../../plugins/monitors/common.js';
import { fakeClock, fixture, HOUR, MIN, put, startMonitor, tempCopy, tempDir } from './helpers.js';

const MC = 'devices/system/edac/mc';
const opts = (o: Record<string, unknown> = {}) => edacOptionsSchema.parse({ host: 'node17', ...o });

t.test('reads the dimm layout (Skylake): controllers, DIMM labels, counts', async (t) => {
  const snap = await readEdac(fixture('edac/skx'));
  t.equal(snap.present, true);
  t.same(snap.controllers.map((c) => [c.name, c.mcName, c.layout, c.ce, c.ue, c.ceNoInfo]), [
    ['mc0', 'Skylake Socket#0 IMC#0', 'dimm', 4, 0, 1],
    ['mc1', 'Skylake Socket#1 IMC#0', 'dimm', 0, 0, 0],
  ]);
  const mc0 = snap.controllers[0]!;
  t.same(mc0.units.map((u) => [u.id, u.ce, u.ue]), [['mc0/dimm0', 0, 0], ['mc0/dimm2', 3, 0], ['mc0/dimm4', 0, 0]]);
  t.equal(mc0.units[1]!.component, 'memory mc0 dimm2 (CPU_SrcID#0_MC#0_Chan#1_DIMM#0)');
  t.same(
    edacSources(mc0, 'ce').map((s) => [s.id, s.count]),
    [['mc0/dimm0', 0], ['mc0/dimm2', 3], ['mc0/dimm4', 0], ['mc0/noinfo', 1]],
    'per DIMM, plus the errors the driver could not place',
  );
});

t.test('reads the old csrow layout with per-channel labels', async (t) => {
  const snap = await readEdac(fixture('edac/csrow'));
  const mc0 = snap.controllers[0]!;
  t.equal(mc0.layout, 'csrow');
  t.same(mc0.units.map((u) => [u.id, u.ce, u.label]), [
    ['mc0/csrow0', 0, 'mc#0csrow#0channel#0 / mc#0csrow#0channel#1'],
    ['mc0/csrow1', 2, 'mc#0csrow#1channel#0 / mc#0csrow#1channel#1'],
  ]);
});

t.test('a rank-based driver with the legacy csrow view is counted once (ranks)', async (t) => {
  const snap = await readEdac(fixture('edac/amd-rank'));
  const mc0 = snap.controllers[0]!;
  t.equal(mc0.layout, 'dimm');
  t.same(edacSources(mc0, 'ce').map((s) => [s.id, s.count]), [['mc0/rank0', 5], ['mc0/rank1', 0], ['mc0/noinfo', 0]]);
  t.notOk(mc0.units.some((u) => u.id.includes('csrow')));
});

t.test('no EDAC in sysfs (a VM): not present, and the monitor samples nothing without failing', async (t) => {
  const empty = await tempDir(t);
  t.same(await readEdac(empty), { present: false, controllers: [] });
  t.same(await readEdac('/nonexistent/sys'), { present: false, controllers: [] });
  const warned: unknown[] = [];
  const log = { warn: (...a: unknown[]) => void warned.push(a) } as unknown as MonitorLog;
  const m = createEdacMonitor(opts({ root: empty }), { log });
  t.same(await m.sample(), []);
  t.same(await m.sample(), []);
  t.equal(warned.length, 1, 'said once that memory errors cannot be watched');
});

t.test('successive samples: CE rate warning with budget lead time, repeat, UE, critical rate, clear', async (t) => {
  const root = await tempCopy(t, 'edac/skx');
  const dimm = (mc: number, d: number, f: string) => join(root, MC, `mc${mc}`, `dimm${d}`, f);
  const clock = fakeClock();
  const m = createEdacMonitor(opts({ root }), { now: clock.now });

  t.same(await m.sample(), [], 'first sample: counts so far are history, no rate yet');

  // 20 more corrected errors on dimm2 in 30 minutes: 40 per hour
  await put(dimm(0, 2, 'dimm_ce_count'), 23);
  clock.advance(30 * MIN);
  const [warn, ...more] = await m.sample();
  t.same(more, []);
  t.match(warn, {
    monitor: 'edac',
    host: 'node17',
    component: 'memory mc0 dimm2 (CPU_SrcID#0_MC#0_Chan#1_DIMM#0)',
    severity: 'warning',
    value: 40,
    unit: 'CE/h',
    at: clock.now(),
  });
  // budget 1000, 23 used, 40/h: (1000 - 23) / 40 h = 24.425 h
  t.equal(warn?.leadTimeMs, Math.round((977 / 40) * HOUR));
  t.match(warn?.message, /correcting 40 memory errors per hour \(warning at 10\/h\).*reaches the budget of 1000 corrected errors in 24 h 26 min/);

  clock.advance(5 * MIN);
  t.same(await m.sample(), [], 'still warning, within repeatMs: not repeated');

  // an uncorrectable error on another DIMM: critical at once, lead time 0
  await put(dimm(0, 4, 'dimm_ue_count'), 1);
  await put(join(root, MC, 'mc0/ue_count'), 1);
  clock.advance(1 * MIN);
  const ue = await m.sample();
  t.equal(ue.length, 1);
  t.match(ue[0], { severity: 'critical', leadTimeMs: 0, component: 'memory mc0 dimm4 (CPU_SrcID#0_MC#0_Chan#2_DIMM#0)', value: 1, unit: 'errors' });
  t.match(ue[0]?.message, /1 new uncorrectable memory error\(s\) on memory mc0 dimm4 .*controller mc0 \(Skylake Socket#0 IMC#0\)/);

  clock.advance(2 * MIN);
  t.same(await m.sample(), [], 'a UE is reported once, not while its count stays');

  // a storm: 200 more in 5 min -> 220 over the 43 min since the first sample = 306.977/h: critical
  await put(dimm(0, 2, 'dimm_ce_count'), 223);
  clock.advance(5 * MIN);
  const crit = await m.sample();
  t.equal(crit.length, 1, 'severity changed: reported at once');
  t.match(crit[0], { severity: 'critical', value: 306.977 });
  const rate = (220 * HOUR) / (43 * MIN);
  t.equal(crit[0]?.leadTimeMs, Math.round(((1000 - 223) / rate) * HOUR), '777 errors left at 306.977/h');
  t.match(crit[0]?.message, /critical at 100\/h.*in 2 h 32 min/);

  clock.advance(10 * MIN);
  t.equal((await m.sample()).length, 1, 'repeated after repeatMs (10 min) while it persists');

  // quiet for more than the rate window: the rate falls to 0 and the condition clears
  clock.advance(HOUR + MIN);
  const cleared = await m.sample();
  t.same(cleared.map((e) => [e.severity, e.component]), [['info', 'memory mc0 dimm2 (CPU_SrcID#0_MC#0_Chan#1_DIMM#0)']]);
  t.match(cleared[0]?.message, 'back below 10 per hour');
});

t.test('CE budget: reaching it is critical with lead time 0; budget 0 means no lead time', async (t) => {
  const root = await tempCopy(t, 'edac/skx');
  const clock = fakeClock();
  const m = createEdacMonitor(opts({ root, ceBudget: 50 }), { now: clock.now });
  await m.sample();
  await put(join(root, MC, 'mc1/dimm0/dimm_ce_count'), 60);
  clock.advance(HOUR);
  const [e] = await m.sample();
  t.match(e, { severity: 'critical', leadTimeMs: 0, component: 'memory mc1 dimm0 (CPU_SrcID#1_MC#0_Chan#0_DIMM#0)', value: 60, unit: 'CE/h' });
  t.match(e?.message, /reaching the budget of 50: it is degrading and due for replacement/);

  const state = newEdacState(opts());
  const snap = await readEdac(root);
  const noBudget = opts({ ceBudget: 0 });
  evaluateEdac(snap, state, 0, noBudget);
  await put(join(root, MC, 'mc1/dimm0/dimm_ce_count'), 90);
  const { conditions } = evaluateEdac(await readEdac(root), state, HOUR, noBudget);
  t.equal(conditions.length, 1);
  t.match(conditions[0]?.event, { severity: 'warning', value: 30 });
  t.equal(conditions[0]?.event.leadTimeMs, undefined, 'no budget, no lead time');
});

t.test('thresholds are options; a counter reset is not a negative rate', async (t) => {
  const root = await tempCopy(t, 'edac/csrow');
  const state = newEdacState(opts());
  const o = opts({ cePerHourWarning: 2, cePerHourCritical: 5, minRateSpanMs: 0 });
  const at0 = Date.UTC(2026, 0, 1);
  t.same(evaluateEdac(await readEdac(root), state, at0, o), { events: [], conditions: [] });
  await put(join(root, MC, 'mc0/csrow1/ce_count'), 5);
  const r1 = evaluateEdac(await readEdac(root), state, at0 + HOUR, o);
  t.match(r1.conditions[0]?.event, { severity: 'warning', value: 3, component: 'memory mc0 csrow1 (mc#0csrow#1channel#0 / mc#0csrow#1channel#1)' });
  // reset_counters: 5 -> 1 means 1 new error since the reset
  await put(join(root, MC, 'mc0/csrow1/ce_count'), 1);
  const r2 = evaluateEdac(await readEdac(root), state, at0 + 2 * HOUR, o);
  t.same(r2.conditions, [], '1 in the last hour: below 2/h');
});

t.test('uncorrectable errors from before monitoring: one warning, or none when reportExisting is off', async (t) => {
  const root = await tempCopy(t, 'edac/amd-rank');
  await put(join(root, MC, 'mc0/rank1/dimm_ue_count'), 2);
  const first = await createEdacMonitor(opts({ root })).sample();
  t.equal(first.length, 1);
  t.match(first[0], { severity: 'warning', component: 'memory mc0 rank1 (mc#0csrow#0channel#1)', value: 2 });
  t.match(first[0]?.message, /recorded 2 uncorrectable memory error\(s\) since its counters were last reset \(before monitoring started\)/);
  t.same(await createEdacMonitor(opts({ root, reportExisting: false })).sample(), []);
});

t.test('options: strict, with defaults', async (t) => {
  const d = edacOptionsSchema.parse({});
  t.match(d, { root: '/sys', cePerHourWarning: 10, cePerHourCritical: 100, ceBudget: 1000, repeatMs: 600_000, rateWindowMs: HOUR });
  t.ok(d.host.length > 0, 'host defaults to this machine');
  t.notOk(edacOptionsSchema.safeParse({ cePerHourWarnign: 5 }).success, 'unknown key');
  t.notOk(edacOptionsSchema.safeParse({ cePerHourWarning: -1 }).success);
});

t.test('plugin end to end: setup(ctx) + sample() on a fixture tree', async (t) => {
  t.match(edacPlugin, { name: 'edac', version: '1.0.0', apiVersion: 1, kind: 'health-monitor' });
  const root = await tempCopy(t, 'edac/skx');
  const m = await startMonitor(t, edacPlugin, { root, host: 'node03' });
  t.same(await m.sample(), []);
  await put(join(root, MC, 'mc1/dimm2/dimm_ue_count'), 3);
  const events = await m.sample();
  t.equal(events.length, 1);
  t.match(events[0], { monitor: 'edac', host: 'node03', severity: 'critical', leadTimeMs: 0, component: 'memory mc1 dimm2 (CPU_SrcID#1_MC#0_Chan#1_DIMM#0)' });
  t.ok(Math.abs(events[0]!.at - Date.now()) < 5000, 'stamped with the real clock');
});
