/**
 * SMART monitor: `smartctl -j -H -A` JSON of healthy and failing ATA and
 * NVMe drives, and two real outputs of smartctl on this VM (device cannot be
 * opened, type unknown); growing sector counts with lead times by
 * arithmetic; the plugin end to end through a fake smartctl that replays
 * recorded JSON with its exit status, by device list and by --scan.
 */
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Trends } from '../../../plugins/monitors/common.js';
import smartPlugin, {
  createSmartMonitor,
  describeNvmeWarning,
  evaluateSmart,
  parseSmartctlJson,
  parseSmartctlScan,
  smartOptionsSchema,
  unreadable,
} from '../../../plugins/monitors/smart.js';
import { bin, fakeClock, fixture, HOUR, readJson, startMonitor, tempDir } from './helpers.js';

const opts = (o: Record<string, unknown> = {}) => smartOptionsSchema.parse({ host: 'node17', ...o });
const load = async (name: string) => parseSmartctlJson(await readFile(fixture('smart', name), 'utf8'), `/dev/${name}`);

interface AtaJson {
  ata_smart_attributes: { table: { id: number; raw: { value: number; string: string } }[] };
}
interface NvmeJson {
  nvme_smart_health_information_log: { media_errors: number };
}

/** ata-ok.json with some raw counts changed, written to `path`. */
async function ataWith(path: string, raw: Record<number, number>): Promise<string> {
  const j = (await readJson(fixture('smart/ata-ok.json'))) as AtaJson;
  for (const a of j.ata_smart_attributes.table) {
    const v = raw[a.id];
    if (v !== undefined) a.raw = { value: v, string: String(v) };
  }
  await writeFile(path, JSON.stringify(j, null, 2));
  return path;
}

t.test('parses ATA and NVMe reports', async (t) => {
  const ok = await load('ata-ok.json');
  t.match(ok, { device: '/dev/sda', protocol: 'ATA', exitStatus: 0, passed: true, errors: [] });
  t.equal(ok.attributes.length, 21);
  t.same(ok.attributes.find((a) => a.id === 5), { id: 5, name: 'Reallocated_Sector_Ct', value: 100, thresh: 10, raw: 0, prefailure: true, whenFailed: '' });
  const bad = await load('ata-failing.json');
  t.match(bad, { device: '/dev/sdb', exitStatus: 56, passed: false });
  t.match(bad.attributes.find((a) => a.id === 5), { value: 5, thresh: 10, raw: 3896, whenFailed: 'now' });
  t.same((await load('nvme-ok.json')).nvme, { criticalWarning: 0, availableSpare: 100, availableSpareThreshold: 10, percentageUsed: 4, mediaErrors: 0 });
  t.equal((await load('nvme-critical.json')).nvme?.criticalWarning, 4);
  t.equal(describeNvmeWarning(0x05), 'available spare below its threshold, reliability degraded by media or internal errors');
});

t.test('real smartctl output of a device it cannot read (recorded on a VM)', async (t) => {
  const denied = await load('open-failed.json');
  t.equal(unreadable(denied), true);
  t.same(denied.errors, ['Smartctl open device: /dev/vda failed: Operation not permitted']);
  t.equal(denied.device, '/dev/open-failed.json', 'no device object in the JSON: the name asked for');
  const unknown = await load('unknown-type.json');
  t.equal(unreadable(unknown), true);
  t.same(unknown.errors, ['/dev/vda: Unable to detect device type']);
  t.equal(unreadable(await load('ata-failing.json')), false, 'exit 56: findings, not a read failure');
});

t.test('garbage is a clear error', async (t) => {
  t.throws(() => parseSmartctlJson('smartctl: command not found', '/dev/sda'), { message: "smartctl output for /dev/sda is not JSON: 'smartctl: command not found'" });
  t.throws(() => parseSmartctlJson('{"devices": []}', '/dev/sda'), { message: /^smartctl output for \/dev\/sda is not smartctl JSON: smartctl: / });
  t.throws(() => parseSmartctlScan('oops'), { message: /smartctl --scan output not understood/ });
  t.same(parseSmartctlScan(await readFile(fixture('smart/scan-empty.json'), 'utf8')), [], 'the real empty scan of a VM');
  t.same(parseSmartctlScan(await readFile(fixture('smart/scan.json'), 'utf8')), [['-d', 'sat', '/dev/sda'], ['-d', 'nvme', '/dev/nvme0']]);
});

t.test('healthy drives: nothing; failing ones: critical findings', async (t) => {
  const o = opts();
  t.same(evaluateSmart(await load('ata-ok.json'), new Trends(HOUR), 0, o), []);
  t.same(evaluateSmart(await load('nvme-ok.json'), new Trends(HOUR), 0, o), []);

  const bad = evaluateSmart(await load('ata-failing.json'), new Trends(HOUR), 7, o);
  t.same(bad.map((c) => [c.key, c.event.severity, c.event.value ?? null, c.event.leadTimeMs ?? null]), [
    ['/dev/sdb:health', 'critical', null, null],
    ['/dev/sdb:attr5:failing', 'critical', 5, null],
    ['/dev/sdb:attr5', 'critical', 3896, 0],
    ['/dev/sdb:attr187', 'critical', 112, 0],
  ]);
  t.match(bad[0]?.event, { monitor: 'smart', host: 'node17', component: 'disk /dev/sdb', at: 7, message: 'SMART overall health of /dev/sdb is FAILED: the drive predicts its own failure; move data and jobs off it now.' });
  t.match(bad[1]?.event.message, 'SMART attribute 5 Reallocated_Sector_Ct of /dev/sdb is at 5, at or below its threshold 10: a pre-failure attribute');
  t.match(bad[2]?.event.message, '/dev/sdb has 3896 reallocated sectors (Reallocated_Sector_Ct), at or past the limit of 100');

  const nv = evaluateSmart(await load('nvme-critical.json'), new Trends(HOUR), 0, o);
  t.same(nv.map((c) => [c.key, c.event.severity]), [
    ['/dev/nvme1:health', 'critical'],
    ['/dev/nvme1:nvme-critical-warning', 'critical'],
    ['/dev/nvme1:wear', 'warning'],
  ]);
  t.match(nv[1]?.event.message, 'raises a critical warning: reliability degraded by media or internal errors');
  t.match(nv[2]?.event, { value: 97, unit: '%', message: /used 97% of its rated endurance/ });
  t.same(evaluateSmart(await load('nvme-critical.json'), new Trends(HOUR), 0, opts({ percentageUsedWarning: 98 })).length, 2, 'percentageUsedWarning');
});

t.test('growing sector counts: warning with a lead time from the trend, cleared when growth stops', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'sda.json');
  const clock = fakeClock();
  const m = createSmartMonitor(opts({ command: await bin('fake-smartctl'), devices: [file], trendWindowMs: 3 * HOUR, repeatMs: 6 * HOUR }), { now: clock.now });
  await ataWith(file, { 197: 8 });
  t.same(await m.sample(), [], 'first sample: 8 pending sectors, not growing yet');

  await ataWith(file, { 197: 10 });
  clock.advance(HOUR);
  const [w1] = await m.sample();
  // 2 per hour, 90 to go before the limit of 100: 45 h
  t.match(w1, { severity: 'warning', component: 'disk /dev/sda', value: 10, unit: 'sectors', leadTimeMs: 45 * HOUR });
  t.match(w1?.message, '/dev/sda has 10 pending (unreadable) sectors (Current_Pending_Sector), up 2 in the last 60 min: a growing count means the drive is degrading, and at this pace it reaches 100 in 45 h 0 min.');

  await ataWith(file, { 197: 12, 5: 1 });
  clock.advance(HOUR);
  const grown = await m.sample();
  // pending (still growing) is already reported; reallocations start: 0, 0, 1 over three hourly samples is
  // a fitted 0.5 per hour, and 99 to go: 198 h
  t.same(grown.map((e) => [e.value, e.leadTimeMs]), [[1, 198 * HOUR]]);

  clock.advance(4 * HOUR);
  const cleared = await m.sample();
  t.same(cleared.map((e) => [e.severity, e.message]), [
    ['info', '/dev/sda: pending (unreadable) sectors (Current_Pending_Sector) stopped growing.'],
    ['info', '/dev/sda: reallocated sectors (Reallocated_Sector_Ct) stopped growing.'],
  ]);
});

t.test('NVMe media errors growing', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'nvme0.json');
  const j = (await readJson(fixture('smart/nvme-ok.json'))) as NvmeJson;
  const write = (n: number) => {
    j.nvme_smart_health_information_log.media_errors = n;
    return writeFile(file, JSON.stringify(j));
  };
  const clock = fakeClock();
  const m = createSmartMonitor(opts({ command: await bin('fake-smartctl'), devices: [file] }), { now: clock.now });
  await write(12);
  t.same(await m.sample(), []);
  await write(20);
  clock.advance(HOUR);
  t.match(await m.sample(), [{ severity: 'warning', component: 'disk /dev/nvme0', value: 20, unit: 'errors', leadTimeMs: 10 * HOUR }], '8 per hour, 80 to go');
});

t.test('plugin end to end: devices, scan, unreadable devices, missing smartctl', async (t) => {
  t.match(smartPlugin, { name: 'smart', kind: 'health-monitor', version: '1.0.0' });
  const fake = await bin('fake-smartctl');
  const both = await startMonitor(t, smartPlugin, {
    command: fake,
    host: 'node02',
    devices: [fixture('smart/ata-ok.json'), `${fixture('smart/nvme-critical.json')} -d nvme`, fixture('smart/open-failed.json')],
  });
  const ev = await both.sample();
  t.same(ev.map((e) => [e.monitor, e.host, e.component, e.severity]), [
    ['smart', 'node02', 'disk /dev/nvme1', 'critical'],
    ['smart', 'node02', 'disk /dev/nvme1', 'critical'],
    ['smart', 'node02', 'disk /dev/nvme1', 'warning'],
  ], 'the unreadable device is logged and skipped');

  const unreadableOnly = await startMonitor(t, smartPlugin, { command: fake, devices: [fixture('smart/open-failed.json')] });
  await t.rejects(unreadableOnly.sample(), { message: /^smartctl cannot read .*open-failed\.json: Smartctl open device: \/dev\/vda failed: Operation not permitted$/ });

  const garbage = await startMonitor(t, smartPlugin, { command: fake, devices: [fixture('ipmi/sdr.txt')] });
  await t.rejects(garbage.sample(), { message: /is not JSON/ });

  const noDisks = await startMonitor(t, smartPlugin, { command: fake });
  t.same(await noDisks.sample(), [], 'smartctl --scan finds nothing (a VM): no events, no error');

  const dir = await tempDir(t);
  const scan = join(dir, 'scan.json');
  await writeFile(scan, JSON.stringify({ devices: [{ name: fixture('smart/ata-failing.json'), type: 'sat' }] }));
  process.env.FAKE_SMARTCTL_SCAN = scan;
  t.teardown(() => void delete process.env.FAKE_SMARTCTL_SCAN);
  const scanned = await startMonitor(t, smartPlugin, { command: fake });
  t.equal((await scanned.sample()).filter((e) => e.component === 'disk /dev/sdb').length, 4, 'found by --scan');

  const missing = await startMonitor(t, smartPlugin, { command: '/nonexistent/smartctl', devices: ['/dev/sda'] });
  await t.rejects(missing.sample(), { message: /^smartctl not found: install smartmontools/ });
  t.notOk(smartOptionsSchema.safeParse({ devices: '/dev/sda' }).success);
});
