/**
 * The generic monitor: option rules, a number read from a file against
 * thresholds (above and below, scale, trend lead time by arithmetic,
 * repeat and clear, missing/garbage/empty files), and a check command by
 * exit code (Nagios style) or by validated JSON, end to end through
 * setup + sample with a fake check script and with a file a test writes
 * to (as a demo's simulated host would).
 */
import t from 'tap';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import commandPlugin, {
  commandOptionsSchema,
  createCommandMonitor,
  interpretCheck,
  parseFileValue,
  thresholdSeverity,
} from '../../../plugins/monitors/command.js';
import { bin, fakeClock, MIN, startMonitor, tempDir } from './helpers.js';

const opts = (o: Record<string, unknown>) => commandOptionsSchema.parse({ host: 'node17', ...o });

t.test('options: exactly one of file or command; thresholds in order', async (t) => {
  t.match(opts({ file: '/x', warning: 1 }), { direction: 'above', scale: 1, repeatMs: 600_000, args: [] });
  t.ok(commandOptionsSchema.safeParse({ command: '/bin/true' }).success);
  const issue = (o: unknown) => {
    const r = commandOptionsSchema.safeParse(o);
    return r.success ? 'ok' : `${r.error.issues[0]?.path.join('.')}: ${r.error.issues[0]?.message}`;
  };
  t.equal(issue({}), 'file: give exactly one of file or command');
  t.equal(issue({ file: '/x', command: '/bin/true' }), 'command: give exactly one of file or command');
  t.equal(issue({ file: '/x' }), 'warning: a file monitor needs a warning or a critical threshold');
  t.equal(issue({ file: '/x', warning: 90, critical: 80 }), 'warning: warning must come before critical (direction above)');
  t.equal(issue({ file: '/x', warning: 80, critical: 90, direction: 'below' }), 'warning: warning must come before critical (direction below)');
  t.match(issue({ file: '/x', warning: 1, extra: true }), /Unrecognized key/);
});

t.test('interpretCheck: exit codes 0/1/2, Nagios output, JSON, and errors', async (t) => {
  t.same(interpretCheck('check_disk', 1, 'DISK WARNING - free space: / 3326 MB (5%) | /=3326MB;5000;1000;0;70000\n', ''), {
    severity: 'warning',
    message: 'DISK WARNING - free space: / 3326 MB (5%)',
  });
  t.same(interpretCheck('check_x', 0, '', ''), { severity: 'info', message: 'check_x exited with code 0 (info)' });
  t.same(interpretCheck('check_x', 2, 'CRITICAL: gone', ''), { severity: 'critical', message: 'CRITICAL: gone' });
  t.throws(() => interpretCheck('check_x', 3, 'UNKNOWN: cannot tell', ''), { message: 'check_x exited with code 3 (state unknown): UNKNOWN: cannot tell' });
  t.throws(() => interpretCheck('check_x', 127, '', 'sh: 1: foo: not found\n'), { message: 'check_x exited with code 127 (state unknown): sh: 1: foo: not found' });

  const json = '{"severity":"critical","message":"PSU 2 lost input power","leadTimeMs":60000,"value":0,"unit":"W","component":"psu 2"}';
  t.same(interpretCheck('check_psu', 0, json, ''), { severity: 'critical', message: 'PSU 2 lost input power', leadTimeMs: 60000, value: 0, unit: 'W', component: 'psu 2' }, 'JSON wins over the exit code');
  t.throws(() => interpretCheck('check_psu', 0, '{"severity": "bad", "message": "x"}', ''), { message: /^check_psu printed JSON that is not \{severity, message, .*\}: severity: / });
  t.throws(() => interpretCheck('check_psu', 0, '{"severity": "warning", "message": "x", "extra": 1}', ''), { message: /Unrecognized key/ });
  t.throws(() => interpretCheck('check_psu', 0, '{"severity": "warning", "leadTimeMs": -5, "message": "x"}', ''), { message: /leadTimeMs/ });
  t.throws(() => interpretCheck('check_psu', 0, '{severity: warning}', ''), { message: "check_psu printed invalid JSON: '{severity: warning}'" });
});

t.test('thresholds above and below; file values with scale', async (t) => {
  const above = { warning: 70, critical: 90, direction: 'above' as const };
  t.same([50, 70, 89.9, 90, 120].map((v) => thresholdSeverity(v, above)), ['info', 'warning', 'warning', 'critical', 'critical']);
  const below = { warning: 20, critical: 5, direction: 'below' as const };
  t.same([50, 20, 6, 5, 0].map((v) => thresholdSeverity(v, below)), ['info', 'warning', 'warning', 'critical', 'critical']);
  t.same(thresholdSeverity(95, { critical: 90, direction: 'above' }), 'critical', 'critical only');
  t.equal(parseFileValue('/t', '54000\n', 0.001), 54, 'millidegrees');
  t.equal(parseFileValue('/t', '  \n', 1), undefined, 'empty: being written');
  t.throws(() => parseFileValue('/sys/x', 'N/A\n', 1), { message: "/sys/x does not hold a number: 'N/A'" });
});

t.test('file monitor over samples: warning with lead time, critical, repeat, clear', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'temp');
  const clock = fakeClock();
  const m = createCommandMonitor(opts({ file, component: 'gpu0 temperature', warning: 70, critical: 90, scale: 0.001, unit: '°C' }), { now: clock.now });
  await writeFile(file, '60000\n');
  t.same(await m.sample(), []);
  await writeFile(file, '75000\n');
  clock.advance(MIN);
  const [w] = await m.sample();
  // 15 degrees in a minute, 15 to go: 1 minute
  t.match(w, { monitor: 'command', host: 'node17', component: 'gpu0 temperature', severity: 'warning', value: 75, unit: '°C', leadTimeMs: MIN, at: clock.now() });
  t.equal(w?.message, 'gpu0 temperature reads 75 °C, at or above its warning threshold of 70 °C; at its current trend it reaches the critical 90 °C in 60 s.');
  await writeFile(file, '');
  clock.advance(MIN);
  t.same(await m.sample(), [], 'an empty file (a writer between truncate and write) changes nothing');
  await writeFile(file, '93000');
  clock.advance(MIN);
  t.match(await m.sample(), [{ severity: 'critical', leadTimeMs: 0, message: 'gpu0 temperature reads 93 °C, at or above its critical threshold of 90 °C.' }]);
  clock.advance(MIN);
  t.same(await m.sample(), [], 'not repeated within repeatMs');
  clock.advance(10 * MIN);
  t.equal((await m.sample()).length, 1, 'repeated after repeatMs');
  await writeFile(file, '50000');
  t.match(await m.sample(), [{ severity: 'info', message: 'gpu0 temperature is back within its thresholds.' }]);
});

t.test('file monitor, direction below; missing and garbage files are clear errors', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'free_gb');
  await writeFile(file, '12');
  const m = createCommandMonitor(opts({ file, warning: 20, critical: 5, direction: 'below', unit: 'GB' }));
  t.match(await m.sample(), [{ severity: 'warning', component: file, message: `${file} reads 12 GB, at or below its warning threshold of 20 GB.` }]);
  const missing = createCommandMonitor(opts({ file: join(dir, 'absent'), warning: 1 }));
  await t.rejects(missing.sample(), { message: `${join(dir, 'absent')} does not exist` });
  await writeFile(file, 'lots');
  await t.rejects(m.sample(), { message: `${file} does not hold a number: 'lots'` });
  await mkdir(join(dir, 'adir'));
  await t.rejects(createCommandMonitor(opts({ file: join(dir, 'adir'), warning: 1 })).sample(), { message: /cannot read .*adir: EISDIR/ });
});

t.test('command end to end: a fake check (real subprocess) by exit code and by JSON', async (t) => {
  t.match(commandPlugin, { name: 'command', kind: 'health-monitor', version: '1.0.0' });
  const fake = await bin('fake-tool');
  const dir = await tempDir(t);
  const say = async (stdout: string, code: number) => {
    await writeFile(join(dir, 'stdout'), stdout);
    await writeFile(join(dir, 'exit'), String(code));
  };
  const m = await startMonitor(t, commandPlugin, { command: fake, args: [dir], host: 'node21', repeatMs: 0 });
  await say('OK - all good\n', 0);
  t.same(await m.sample(), [], 'ok is not reported');
  await say('DISK WARNING - free space: /scratch 3326 MB (5%) | /scratch=3326MB\n', 1);
  t.match(await m.sample(), [{ monitor: 'command', host: 'node21', component: 'fake-tool', severity: 'warning', message: 'DISK WARNING - free space: /scratch 3326 MB (5%)' }]);
  await say('{"severity": "critical", "message": "scratch is full", "leadTimeMs": 0, "value": 0, "unit": "MB", "component": "disk /scratch"}', 0);
  const ev = await m.sample();
  t.match(ev, [
    { component: 'disk /scratch', severity: 'critical', message: 'scratch is full', leadTimeMs: 0, value: 0, unit: 'MB' },
    { component: 'fake-tool', severity: 'info' },
  ], 'a JSON component is its own condition; the plain one cleared');
  await say('OK\n', 0);
  t.match(await m.sample(), [{ component: 'disk /scratch', severity: 'info', message: /disk \/scratch is back to normal \(it was critical: scratch is full\)/ }]);
  await say('UNKNOWN - cannot stat /scratch\n', 3);
  await t.rejects(m.sample(), { message: 'fake-tool exited with code 3 (state unknown): UNKNOWN - cannot stat /scratch' });

  const missing = await startMonitor(t, commandPlugin, { command: '/nonexistent/check_thing' });
  await t.rejects(missing.sample(), { message: /^check_thing not found/ });
});

t.test('a simulated host: a file a test (or a demo) writes to', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'node07-ce-per-hour');
  await writeFile(file, '0\n');
  const m = await startMonitor(t, commandPlugin, { file, host: 'node07', component: 'memory mc0 (simulated)', warning: 10, critical: 100, unit: 'CE/h' });
  t.same(await m.sample(), []);
  await writeFile(file, '250\n');
  t.match(await m.sample(), [{ monitor: 'command', host: 'node07', component: 'memory mc0 (simulated)', severity: 'critical', value: 250, unit: 'CE/h', leadTimeMs: 0 }]);
});
