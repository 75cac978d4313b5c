/**
 * lm-sensors monitor: `sensors -j` parsing on a recorded server output and
 * on the output of a machine without sensors (recorded on this VM), events
 * for hot CPUs, slow or stopped fans and voltages out of range, lead times
 * from the temperature trend by arithmetic, and the plugin end to end
 * through a fake `sensors` script (a real subprocess).
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Trends } from '../../../plugins/monitors/common.js';
import lmSensorsPlugin, {
  createLmSensorsMonitor,
  evaluateSensors,
  lmSensorsOptionsSchema,
  parseSensorsJson,
} from '../../../plugins/monitors/lm-sensors.js';
import { bin, fakeClock, fixture, MIN, readJson, startMonitor, tempDir } from './helpers.js';

type Chips = Record<string, Record<string, Record<string, number> | string>>;
const opts = (o: Record<string, unknown> = {}) => lmSensorsOptionsSchema.parse({ host: 'node17', ...o });
const server = async (): Promise<Chips> => (await readJson(fixture('lm-sensors/server.json'))) as Chips;
function set(chips: Chips, chip: string, feature: string, sub: string, v: number): Chips {
  (chips[chip]![feature] as Record<string, number>)[sub] = v;
  return chips;
}

t.test('parses sensors -j: chips, features, kinds, limits', async (t) => {
  const r = parseSensorsJson(await readFile(fixture('lm-sensors/server.json'), 'utf8'));
  t.equal(r.length, 22);
  t.same(r[0], { chip: 'coretemp-isa-0000', adapter: 'ISA adapter', feature: 'Package id 0', kind: 'temp', values: { input: 52, max: 86, crit: 96, crit_alarm: 0 } });
  t.match(r.find((x) => x.feature === 'in1'), { kind: 'in', values: { input: 1.016, min: 0, max: 0, alarm: 1 } });
  t.match(r.find((x) => x.feature === 'fan1'), { kind: 'fan', values: { input: 1534, min: 600 } });
  t.match(r.find((x) => x.chip === 'power_meter-acpi-0'), { kind: 'power', values: { average: 182 } });
  t.match(r.find((x) => x.feature === 'beep_enable'), { kind: 'other' });
});

t.test('no sensors (the real output of sensors -j on a VM) is an empty list', async (t) => {
  const text = await readFile(fixture('lm-sensors/no-sensors.json'), 'utf8');
  t.equal(text, '{\n\n}\n');
  t.same(parseSensorsJson(text), []);
});

t.test('garbage is a clear error; NaN readings are skipped', async (t) => {
  t.throws(() => parseSensorsJson('No sensors found!\n'), { message: "sensors output is not JSON: 'No sensors found!'" });
  t.throws(() => parseSensorsJson('[1, 2]'), { message: /not a JSON object of chips/ });
  t.throws(() => parseSensorsJson('{"chip": 3}'), { message: "sensors output: chip 'chip' is not an object" });
  const r = parseSensorsJson('{"k10temp-pci-00c3":{"Adapter": "PCI adapter","Tctl":{"temp1_input": nan, "temp1_max": 70.000}}}');
  t.same(r[0]?.values, { max: 70 }, 'nan is dropped, the rest kept');
});

t.test('a healthy server: nothing, although some limits read 0 and an alarm flag is up', async (t) => {
  const r = parseSensorsJson(await readFile(fixture('lm-sensors/server.json'), 'utf8'));
  t.same(evaluateSensors(r, new Trends(10 * MIN), 0, opts()), []);
});

t.test('over max, over crit, fans, voltages', async (t) => {
  let chips = await server();
  set(chips, 'coretemp-isa-0000', 'Package id 0', 'temp1_input', 90);
  set(chips, 'coretemp-isa-0000', 'Core 1', 'temp3_input', 97);
  set(chips, 'nct6779-isa-0290', 'fan1', 'fan1_input', 420);
  set(chips, 'nct6779-isa-0290', '+3.3V', 'in3_input', 2.81);
  chips = set(chips, 'nct6779-isa-0290', 'Vbat', 'in8_input', 3.7);
  const c = evaluateSensors(parseSensorsJson(JSON.stringify(chips)), new Trends(10 * MIN), 1000, opts());
  t.same(
    c.map((x) => [x.event.component, x.event.severity, x.event.value, x.event.unit]),
    [
      ['temp coretemp-isa-0000 Package id 0', 'warning', 90, '°C'],
      ['temp coretemp-isa-0000 Core 1', 'critical', 97, '°C'],
      ['voltage nct6779-isa-0290 +3.3V', 'warning', 2.81, 'V'],
      ['voltage nct6779-isa-0290 Vbat', 'warning', 3.7, 'V'],
      ['fan nct6779-isa-0290 fan1', 'warning', 420, 'RPM'],
    ],
  );
  t.match(c[0]?.event, { monitor: 'lm-sensors', host: 'node17', at: 1000, message: 'Temperature of Package id 0 on coretemp-isa-0000 is 90 °C, above its max of 86 °C: cooling is not keeping up.' });
  t.equal(c[0]?.event.leadTimeMs, undefined, 'one sample: no trend yet');
  t.match(c[1]?.event, { leadTimeMs: 0, message: /at or above its critical limit of 96 °C/ });
  t.match(c[2]?.event.message, 'Voltage +3.3V on nct6779-isa-0290 is 2.81 V, below its minimum of 2.976 V');
  t.match(c[3]?.event.message, 'above its maximum of 3.632 V');

  set(chips, 'nct6779-isa-0290', 'fan1', 'fan1_input', 0);
  const stopped = evaluateSensors(parseSensorsJson(JSON.stringify(chips)), new Trends(10 * MIN), 0, opts({ ignore: ['coretemp-isa-0000', 'nct6779-isa-0290/+3.3V', 'nct6779-isa-0290/Vbat'] }));
  t.same(stopped.map((x) => [x.event.component, x.event.severity]), [['fan nct6779-isa-0290 fan1', 'critical']], 'ignore by chip and by chip/feature');
  t.match(stopped[0]?.event.message, 'has stopped (0 RPM, minimum 600)');
});

t.test('early warning: rising towards crit faster than tempLeadTimeWarningMs', async (t) => {
  const base = await server();
  const temps = (trends: Trends, temp: number, when: number, o = opts()) =>
    evaluateSensors(
      parseSensorsJson(JSON.stringify(set(JSON.parse(JSON.stringify(base)) as Chips, 'coretemp-isa-0000', 'Core 0', 'temp2_input', temp))),
      trends,
      when,
      o,
    ).filter((c) => c.event.component.endsWith('Core 0'));

  // slow: 1 °C per minute from 60 °C, 36 °C below crit 96: 36 min away, more than 15 min
  const slow = new Trends(10 * MIN);
  t.same(temps(slow, 60, 0), []);
  t.same(temps(slow, 61, MIN), [], 'crit 35 min away: no early warning');

  // fast: 70, 75, 80 at one-minute steps: 5 °C/min, 16 °C to go -> 3.2 min
  const fast = new Trends(10 * MIN);
  t.same(temps(fast, 70, 0), [], 'one sample: no trend');
  const w1 = temps(fast, 75, MIN);
  t.equal(w1[0]?.event.leadTimeMs, (21 / 5) * MIN, '21 °C to go at 5 °C/min: 4.2 min');
  const w2 = temps(fast, 80, 2 * MIN);
  t.match(w2[0]?.event, { severity: 'warning', value: 80, leadTimeMs: (16 / 5) * MIN });
  t.match(w2[0]?.event.message, 'is 80 °C and rising 5 °C/min: it reaches its critical limit of 96 °C in 3 min');
  // over max (86) now, still rising: the warning carries the lead time to crit, fitted over 70, 75, 80, 88
  const w3 = temps(fast, 88, 3 * MIN);
  // least squares over x = 0..3 min: slope = sum((x - 1.5)(y - mean)) / sum((x - 1.5)^2) = 29.5 / 5 = 5.9 °C/min
  t.match(w3[0]?.event, { severity: 'warning', leadTimeMs: Math.round((8 / 5.9) * MIN) });
  t.match(w3[0]?.event.message, /above its max of 86 °C.*reaches crit \(96 °C\) in 81 s/);

  const off = new Trends(10 * MIN);
  temps(off, 70, 0, opts({ tempLeadTimeWarningMs: 0 }));
  t.same(temps(off, 80, 2 * MIN, opts({ tempLeadTimeWarningMs: 0 })), [], 'tempLeadTimeWarningMs 0: no early warning');
});

t.test('monitor over samples: repeat, then info when it cools down', async (t) => {
  const dir = await tempDir(t);
  const chips = await server();
  const out = join(dir, 'stdout');
  await writeFile(out, JSON.stringify(set(chips, 'coretemp-isa-0000', 'Package id 0', 'temp1_input', 90)));
  const clock = fakeClock();
  const m = createLmSensorsMonitor(opts({ command: await bin('fake-tool'), args: [dir], tempLeadTimeWarningMs: 0 }), { now: clock.now });
  t.same((await m.sample()).map((e) => e.severity), ['warning']);
  clock.advance(MIN);
  t.same(await m.sample(), [], 'persisting: quiet until repeatMs');
  clock.advance(10 * MIN);
  t.same((await m.sample()).map((e) => e.severity), ['warning'], 'repeated');
  await writeFile(out, JSON.stringify(set(chips, 'coretemp-isa-0000', 'Package id 0', 'temp1_input', 60)));
  clock.advance(MIN);
  const cooled = await m.sample();
  t.match(cooled, [{ severity: 'info', component: 'temp coretemp-isa-0000 Package id 0', message: 'Temperature of Package id 0 on coretemp-isa-0000 is back below its limits.' }]);
});

t.test('plugin end to end: a fake sensors prints recorded output', async (t) => {
  t.match(lmSensorsPlugin, { name: 'lm-sensors', kind: 'health-monitor', version: '1.0.0' });
  const fake = await bin('fake-tool');
  const dir = await tempDir(t);
  await writeFile(join(dir, 'stdout'), await readFile(fixture('lm-sensors/server.json')));
  const m = await startMonitor(t, lmSensorsPlugin, { command: fake, args: [dir], host: 'node05' });
  t.same(await m.sample(), [], 'healthy');
  await writeFile(join(dir, 'stdout'), JSON.stringify(set(await server(), 'nct6779-isa-0290', 'fan1', 'fan1_input', 0)));
  t.match(await m.sample(), [{ monitor: 'lm-sensors', host: 'node05', severity: 'critical', component: 'fan nct6779-isa-0290 fan1' }]);

  // a machine without sensors: exit 1, "{ }" on stdout, "No sensors found!" on stderr -> no events, no error
  const none = await startMonitor(t, lmSensorsPlugin, {
    command: fake,
    args: [fixture('lm-sensors/no-sensors.json'), '1', fixture('lm-sensors/no-sensors.stderr')],
  });
  t.same(await none.sample(), []);
});

t.test('missing tool, garbage output, failing tool: clear errors', async (t) => {
  const missing = await startMonitor(t, lmSensorsPlugin, { command: '/nonexistent/sensors' });
  await t.rejects(missing.sample(), { message: /^sensors not found: install lm-sensors/ });
  const fake = await bin('fake-tool');
  const garbage = await startMonitor(t, lmSensorsPlugin, { command: fake, args: [fixture('ipmi/sdr.txt')] });
  await t.rejects(garbage.sample(), { message: /^sensors output is not JSON/ });
  const failing = await startMonitor(t, lmSensorsPlugin, { command: fake, args: [fixture('ipmi/sdr.txt'), '2', fixture('lm-sensors/no-sensors.stderr')] });
  await t.rejects(failing.sample(), { message: 'sensors exited with code 2: No sensors found!' });
  t.notOk(lmSensorsOptionsSchema.safeParse({ args: '-j' }).success, 'args is a list');
});
