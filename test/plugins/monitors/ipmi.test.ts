/**
 * IPMI monitor: `ipmitool sdr` (plain and elist) and `ipmitool sel`
 * (elist and list, Pre-Init entries, empty SEL) parsing on recorded
 * outputs, sensor states to severities, SEL keywords ("Non-critical" is
 * not "critical"), only new SEL entries reported, and the plugin end to end
 * through a fake ipmitool (including the error of a machine without a BMC,
 * recorded on this VM).
 */
import t from 'tap';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import ipmiPlugin, {
  classifySel,
  createIpmiMonitor,
  evaluateSdr,
  ipmiOptionsSchema,
  newSelEntries,
  parseSdr,
  parseSel,
  selEvents,
} from '../../../plugins/monitors/ipmi.js';
import { bin, fakeClock, fixture, MIN, startMonitor, tempDir } from './helpers.js';

const opts = (o: Record<string, unknown> = {}) => ipmiOptionsSchema.parse({ host: 'node17', ...o });
const text = (name: string) => readFile(fixture('ipmi', name), 'utf8');

t.test('parses ipmitool sdr: name | reading | status', async (t) => {
  const s = parseSdr(await text('sdr.txt'));
  t.equal(s.length, 23);
  t.same(s[0], { name: 'CPU1 Temp', reading: '45 degrees C', status: 'ok', value: 45, unit: 'degrees C' });
  t.same(s.find((x) => x.name === '12V'), { name: '12V', reading: '12.19 Volts', status: 'ok', value: 12.19, unit: 'Volts' });
  t.same(s.find((x) => x.name === 'FAN3'), { name: 'FAN3', reading: 'no reading', status: 'ns' });
  t.same(s.find((x) => x.name === 'VBAT'), { name: 'VBAT', reading: '0x04', status: 'ok' }, 'discrete state bits are not a number');
});

t.test('parses ipmitool sdr elist: name | id | status | entity | reading', async (t) => {
  const s = parseSdr(await text('sdr-elist.txt'));
  t.same(s.map((x) => [x.name, x.status, x.value ?? null]), [
    ['CPU1 Temp', 'ok', 45],
    ['CPU2 Temp', 'ucr', 97],
    ['System Temp', 'ok', 31],
    ['FAN1', 'ok', 4200],
    ['FAN2', 'lnc', 700],
    ['FAN3', 'ns', null],
    ['12V', 'ok', 12.19],
    ['PS1 Status', 'ok', null],
    ['PS2 Status', 'ok', null],
  ]);
});

t.test('sdr garbage is a clear error; empty output is no sensors', async (t) => {
  t.throws(() => parseSdr('Could not open device at /dev/ipmi0\n'), { message: /^ipmitool sdr output not understood/ });
  t.throws(() => parseSdr('a | b | c | d\n'), { message: /1 '\|' lines, none 'name \| reading \| status'/ });
  t.same(parseSdr(''), []);
});

t.test('sensor states: nc warning, cr critical, nr critical with lead time 0; discrete failures by their text', async (t) => {
  t.same(evaluateSdr(parseSdr(await text('sdr.txt')), 0, opts()), [], 'all ok (ns ignored)');
  const degraded = evaluateSdr(parseSdr(await text('sdr-degraded.txt')), 5, opts());
  t.same(
    degraded.map((c) => [c.event.component, c.event.severity, c.event.value, c.event.unit, c.event.leadTimeMs ?? null]),
    [
      ['ipmi sensor CPU2 Temp', 'warning', 88, 'degrees C', null],
      ['ipmi sensor FAN2', 'critical', 500, 'RPM', null],
      ['ipmi sensor 12V', 'critical', 10.21, 'Volts', 0],
    ],
  );
  t.match(degraded[0]?.event, { monitor: 'ipmi', host: 'node17', at: 5, message: "BMC sensor 'CPU2 Temp' reads 88 degrees C, past a non-critical threshold (nc): the part is drifting out of its normal range." });
  t.match(degraded[2]?.event.message, 'past a non-recoverable threshold (nr): the hardware may already be damaged');

  const elist = evaluateSdr(parseSdr(await text('sdr-elist.txt')), 0, opts());
  t.same(elist.map((c) => [c.event.component, c.event.severity]), [
    ['ipmi sensor CPU2 Temp', 'critical'],
    ['ipmi sensor FAN2', 'warning'],
    ['ipmi sensor PS2 Status', 'critical'],
  ]);
  t.match(elist[0]?.event.message, 'above its upper critical threshold (ucr)');
  t.match(elist[2]?.event.message, "BMC sensor 'PS2 Status' reports 'Presence detected, Failure detected': a hardware part has failed.");
  t.same(evaluateSdr(parseSdr(await text('sdr-elist.txt')), 0, opts({ ignoreSensors: ['CPU2 Temp', 'FAN2', 'PS2 Status'] })), [], 'ignoreSensors');
});

t.test('parses the SEL: elist, list with a Pre-Init entry, an empty SEL; garbage is an error', async (t) => {
  const e = parseSel(await text('sel-elist.txt'));
  t.equal(e.length, 6);
  t.same(e[3], {
    id: '4',
    date: '11/15/2026',
    time: '03:11:51',
    sensor: 'Memory Memory ECC',
    event: 'Correctable ECC @DIMMB1(CPU1)',
    direction: 'Asserted',
    key: '4|11/15/2026|03:11:51|Memory Memory ECC|Correctable ECC @DIMMB1(CPU1)|Asserted',
  });
  t.equal(parseSel(await text('sel-elist-more.txt'))[9]?.id, 'a', 'hex record ids');
  const l = parseSel(await text('sel-list.txt'));
  t.match(l[0], { id: '1', date: 'Pre-Init', time: '0000000007', sensor: 'System Event #0x83', event: 'Timestamp Clock Sync' });
  t.same(parseSel(await text('sel-empty.txt')), []);
  t.same(parseSel(''), []);
  t.throws(() => parseSel('Error: Unable to establish IPMI v2 / RMCP+ session\n'), { message: /^ipmitool sel output not understood: 'Error: Unable/ });
});

t.test('SEL keywords: critical, warning, info when deasserted; Non-critical is not critical', async (t) => {
  const o = opts();
  const entry = (event: string, direction = 'Asserted', sensor = 'X #0x01') => ({ id: '1', date: 'd', time: 't', sensor, event, direction, key: event });
  t.same(classifySel(entry('Uncorrectable ECC'), o), { severity: 'critical', keyword: 'Uncorrectable ECC' });
  t.same(classifySel(entry('Upper Non-critical going high'), o), { severity: 'warning', keyword: 'Non-critical' });
  t.same(classifySel(entry('Upper Critical going high'), o), { severity: 'critical', keyword: 'Critical' });
  t.same(classifySel(entry('Lower Non-recoverable going low'), o), { severity: 'critical', keyword: 'Non-recoverable' });
  t.same(classifySel(entry('Failure detected', 'Deasserted'), o), { severity: 'info', keyword: 'Failure detected' });
  t.equal(classifySel(entry('Presence detected'), o), undefined);
  t.equal(classifySel(entry('Bus Correctable Error', 'Asserted', 'Critical Interrupt #0xd1'), o)?.severity, 'warning', 'the sensor type name does not count');
  t.same(classifySel(entry('Log area reset/cleared'), opts({ selCritical: [], selWarning: ['log area reset'] })), { severity: 'warning', keyword: 'log area reset' }, 'keywords are options');
});

t.test('only new SEL entries become events', async (t) => {
  const before = parseSel(await text('sel-elist.txt'));
  const after = parseSel(await text('sel-elist-more.txt'));
  const fresh = newSelEntries(new Set(before.map((e) => e.key)), after);
  t.same(fresh.map((e) => e.id), ['7', '8', '9', 'a', 'b', 'c', 'd', 'e']);
  const ev = selEvents(fresh, 42, opts());
  t.same(ev.map((e) => [e.component, e.severity]), [
    ['ipmi sel Memory Memory ECC', 'critical'],
    ['ipmi sel Processor CPU1 Status', 'critical'],
    ['ipmi sel Power Supply PS2 Status', 'critical'],
    ['ipmi sel Power Supply PS2 Status', 'critical'],
    ['ipmi sel Fan FAN2', 'critical'],
    ['ipmi sel Temperature System Temp', 'warning'],
    ['ipmi sel Power Supply PS2 Status', 'info'],
  ]);
  t.match(ev[0], {
    monitor: 'ipmi',
    host: 'node17',
    at: 42,
    message: "BMC event log entry 7 at 11/23/2026 13:58:10: Memory Memory ECC 'Uncorrectable ECC @DIMMB1(CPU1)' (asserted), matching 'Uncorrectable ECC'; the BMC saw a hardware fault that can bring the host down.",
  });
  t.match(ev[6]?.message, 'the condition it reported has ended');
});

t.test('monitor over samples with a fake ipmitool: baseline, new entries, repeat, clear', async (t) => {
  const dir = await tempDir(t);
  await copyFile(fixture('ipmi/sdr.txt'), join(dir, 'sdr.txt'));
  await copyFile(fixture('ipmi/sel-elist.txt'), join(dir, 'sel.txt'));
  const clock = fakeClock();
  const m = createIpmiMonitor(opts({ command: await bin('fake-ipmitool'), args: [dir] }), { now: clock.now });
  t.same(await m.sample(), [], 'first sample: existing SEL entries are history');

  await copyFile(fixture('ipmi/sdr-degraded.txt'), join(dir, 'sdr.txt'));
  await copyFile(fixture('ipmi/sel-elist-more.txt'), join(dir, 'sel.txt'));
  clock.advance(MIN);
  const ev = await m.sample();
  t.equal(ev.filter((e) => e.component.startsWith('ipmi sel')).length, 7, 'new SEL entries');
  t.equal(ev.filter((e) => e.component.startsWith('ipmi sensor')).length, 3, 'sensor conditions');

  clock.advance(MIN);
  t.same(await m.sample(), [], 'nothing new in the SEL, sensor states unchanged within repeatMs');

  await copyFile(fixture('ipmi/sdr.txt'), join(dir, 'sdr.txt'));
  clock.advance(MIN);
  const cleared = await m.sample();
  t.same(cleared.map((e) => [e.severity, e.component]), [
    ['info', 'ipmi sensor CPU2 Temp'],
    ['info', 'ipmi sensor FAN2'],
    ['info', 'ipmi sensor 12V'],
  ]);

  await copyFile(fixture('ipmi/sel-empty.txt'), join(dir, 'sel.txt'));
  t.same(await m.sample(), [], 'SEL cleared: nothing to report');
  await copyFile(fixture('ipmi/sel-elist.txt'), join(dir, 'sel.txt'));
  t.same((await m.sample()).map((e) => e.severity), ['warning', 'warning', 'info'], 'after a clear, reused ids are new entries again');
});

t.test('reportExistingSel, and sdr/sel switched off', async (t) => {
  const dir = await tempDir(t);
  await copyFile(fixture('ipmi/sel-list.txt'), join(dir, 'sel.txt'));
  const fake = await bin('fake-ipmitool');
  const m = createIpmiMonitor(opts({ command: fake, args: [dir], sdr: false, selArgs: ['sel', 'list'], reportExistingSel: true }));
  t.same((await m.sample()).map((e) => [e.component, e.severity]), [
    ['ipmi sel Memory #0xd0', 'warning'],
    ['ipmi sel Memory #0xd0', 'critical'],
    ['ipmi sel Critical Interrupt #0xd1', 'critical'],
  ]);
  const none = createIpmiMonitor(opts({ command: fake, args: [dir], sdr: false, sel: false }));
  t.same(await none.sample(), [], 'nothing to run');
});

t.test('plugin end to end; no BMC and no ipmitool are clear errors', async (t) => {
  t.match(ipmiPlugin, { name: 'ipmi', kind: 'health-monitor', version: '1.0.0' });
  const fake = await bin('fake-ipmitool');
  const dir = await tempDir(t);
  await copyFile(fixture('ipmi/sdr-degraded.txt'), join(dir, 'sdr.txt'));
  await copyFile(fixture('ipmi/sel-elist.txt'), join(dir, 'sel.txt'));
  const m = await startMonitor(t, ipmiPlugin, { command: fake, args: [dir], host: 'node09' });
  const ev = await m.sample();
  t.same(ev.map((e) => [e.monitor, e.host, e.severity]), [
    ['ipmi', 'node09', 'warning'],
    ['ipmi', 'node09', 'critical'],
    ['ipmi', 'node09', 'critical'],
  ]);

  const noBmc = await startMonitor(t, ipmiPlugin, { command: fake, args: [join(dir, 'absent')] });
  await t.rejects(noBmc.sample(), {
    message: 'ipmitool sdr exited with code 1: Could not open device at /dev/ipmi0 or /dev/ipmi/0 or /dev/ipmidev/0: No such file or directory',
  });
  const missing = await startMonitor(t, ipmiPlugin, { command: '/nonexistent/ipmitool' });
  await t.rejects(missing.sample(), { message: /^ipmitool not found: install ipmitool/ });
  t.notOk(ipmiOptionsSchema.safeParse({ sel: 'yes' }).success);
  t.notOk(ipmiOptionsSchema.safeParse({ password: 'x' }).success, 'strict');
});
