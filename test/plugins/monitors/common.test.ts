/**
 * The monitors' shared pieces: sysfs reads that do not crash on missing
 * files, the command runner's errors (missing tool, timeout, too much
 * output, abort), rates from counters (resets, wraps, windows), trend lead
 * times by arithmetic, and the gate that keeps a persisting warning from
 * being repeated every sample.
 */
import t from 'tap';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { HealthEvent } from '../../../src/index.js';
import {
  CommandNotFoundError,
  ConditionGate,
  fitLine,
  formatDuration,
  leadTimeTo,
  listDir,
  parseNumber,
  RateTracker,
  readSysfs,
  readSysfsNumber,
  runCommand,
  Trend,
  type Condition,
} from '../../../plugins/monitors/common.js';
import { HOUR, MIN, put, tempDir } from './helpers.js';

const run = { timeoutMs: 5000, maxBufferBytes: 1 << 20 };

t.test('parseNumber takes whole decimal numbers only', async (t) => {
  t.equal(parseNumber('42\n'), 42);
  t.equal(parseNumber(' -1.5 '), -1.5);
  t.equal(parseNumber('1e3'), 1000);
  t.equal(parseNumber('0x10'), undefined);
  t.equal(parseNumber('12 errors'), undefined);
  t.equal(parseNumber(''), undefined);
  t.equal(parseNumber('NaN'), undefined);
});

t.test('sysfs reads: missing is undefined, a directory is a clear error, listings in natural order', async (t) => {
  const dir = await tempDir(t);
  await put(join(dir, 'ce_count'), 7);
  await put(join(dir, 'mc_name'), 'Skylake Socket#0 IMC#0');
  await put(join(dir, 'garbage'), 'not a number');
  t.equal(await readSysfs(join(dir, 'mc_name')), 'Skylake Socket#0 IMC#0', 'trimmed');
  t.equal(await readSysfsNumber(join(dir, 'ce_count')), 7);
  t.equal(await readSysfs(join(dir, 'nope')), undefined, 'missing file');
  t.equal(await readSysfs(join(dir, 'nope/deeper')), undefined, 'missing directory');
  t.equal(await readSysfs(join(dir, 'ce_count/deeper')), undefined, 'a file as directory (ENOTDIR)');
  t.equal(await readSysfsNumber(join(dir, 'garbage')), undefined, 'not a number');
  await t.rejects(readSysfs(dir), { message: /cannot read .*EISDIR/ });
  for (const n of ['mc10', 'mc2', 'mc0', 'other']) await mkdir(join(dir, 'mc', n), { recursive: true });
  t.same(await listDir(join(dir, 'mc'), /^mc\d+$/), ['mc0', 'mc2', 'mc10']);
  t.same(await listDir(join(dir, 'absent')), []);
});

t.test('runCommand: output and exit codes; missing tools, timeouts, floods and aborts are clear errors', async (t) => {
  t.same(await runCommand('/bin/echo', ['hello'], run), { stdout: 'hello\n', stderr: '', code: 0 });
  const failed = await runCommand('/bin/sh', ['-c', 'echo out; echo err >&2; exit 3'], run);
  t.same(failed, { stdout: 'out\n', stderr: 'err\n', code: 3 }, 'a non-zero exit is a result, not an error');
  t.equal((await runCommand('/bin/sh', ['-c', 'echo "$LC_ALL"'], run)).stdout, 'C\n', 'runs in the C locale');

  const missing = runCommand('/nonexistent/bin/sensors', ['-j'], { ...run, installHint: 'lm-sensors' });
  await t.rejects(missing, CommandNotFoundError);
  await t.rejects(runCommand('/nonexistent/bin/sensors', ['-j'], { ...run, installHint: 'lm-sensors' }), {
    message: /^sensors not found: install lm-sensors \(looked for '\/nonexistent\/bin\/sensors'\)$/,
  });
  await t.rejects(runCommand('sensors-that-does-not-exist', [], run), { message: /sensors-that-does-not-exist not found/ });

  const t0 = Date.now();
  await t.rejects(runCommand('/bin/sleep', ['10'], { ...run, timeoutMs: 100 }), { message: 'sleep timed out after 100 ms' });
  t.ok(Date.now() - t0 < 5000, 'killed, not waited for');

  await t.rejects(runCommand('/bin/sh', ['-c', 'head -c 100000 /dev/zero'], { ...run, maxBufferBytes: 1000 }), { message: /sh printed more than 1000 bytes/ });

  const ac = new AbortController();
  const p = runCommand('/bin/sleep', ['10'], { ...run, signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  await t.rejects(p, { message: /sleep was aborted/ });
});

t.test('RateTracker: events per hour, window, minimum span, resets and wraps', async (t) => {
  const r = new RateTracker({ windowMs: HOUR });
  t.same(r.update('a', 100, 0), { delta: 0, perHour: undefined, reset: false, first: true });
  t.same(r.update('a', 105, 30 * MIN), { delta: 5, perHour: 10, reset: false, first: false }, '5 in 30 min = 10/h');
  t.equal(r.update('a', 110, HOUR).perHour, 10, '10 in 1 h');
  t.equal(r.update('a', 110, 2 * HOUR).perHour, 0, 'nothing in the last hour: the window slid past the errors');

  const reset = r.update('a', 3, 2 * HOUR + 30 * MIN);
  t.same([reset.delta, reset.reset], [3, true], 'a drop without wrapAt is a reset to zero: 3 new since');
  t.equal(reset.perHour, 2, 'measured from the last sample at or before the window start (1 h): 3 in 1.5 h');

  const w = new RateTracker({ windowMs: HOUR, wrapAt: 2 ** 32 });
  w.update('c', 2 ** 32 - 6, 0);
  const wrapped = w.update('c', 4, 6 * MIN);
  t.same([wrapped.delta, wrapped.reset], [10, false], 'wrapped past 2^32: 6 + 4');
  t.equal(wrapped.perHour, 100);
  t.same(w.update('c', 1, 12 * MIN).reset, true, 'a drop far from the top is still a reset');

  const m = new RateTracker({ windowMs: HOUR, minSpanMs: 5 * MIN });
  m.update('x', 0, 0);
  t.equal(m.update('x', 1, 30_000).perHour, 12, 'one error 30 s after start counts as 1 per 5 min, not 120/h');
  t.equal(m.update('x', 2, 10 * MIN).perHour, 12, 'past the minimum span the real span counts: 2 in 10 min');

  const back = new RateTracker({ windowMs: HOUR });
  back.update('k', 0, 10 * MIN);
  t.equal(back.update('k', 5, 5 * MIN).perHour, undefined, 'clock went back: the window starts again');
  t.equal(back.update('k', 6, 11 * MIN).perHour, 10, '1 in 6 min');

  back.retain(new Set());
  t.equal(back.update('k', 50, 12 * MIN).first, true, 'retain() forgot the counter');
});

t.test('trends: least squares and lead time to a limit', async (t) => {
  const fit = fitLine([{ at: 1000, value: 3 }, { at: 2000, value: 5 }, { at: 3000, value: 7 }]);
  t.same(fit, { slope: 0.002, intercept: 1 });
  t.equal(fitLine([{ at: 5, value: 1 }]), undefined, 'one point');
  t.equal(fitLine([{ at: 5, value: 1 }, { at: 5, value: 2 }]), undefined, 'no time between points');

  const rising = [{ at: 0, value: 70 }, { at: MIN, value: 75 }, { at: 2 * MIN, value: 80 }];
  t.equal(leadTimeTo(rising, 100), 4 * MIN, '20 degrees to go at 5 per minute: 4 minutes');
  t.equal(leadTimeTo(rising, 60), undefined, 'moving away from a lower limit');
  t.equal(leadTimeTo(rising, 80), 0, 'already there');
  t.equal(leadTimeTo([{ at: 0, value: 10 }, { at: HOUR, value: 8 }], 0), 4 * HOUR, 'falling towards a lower limit');
  t.equal(leadTimeTo([{ at: 0, value: 10 }, { at: HOUR, value: 10 }], 20), undefined, 'flat');

  const tr = new Trend(10 * MIN);
  for (let i = 0; i <= 20; i++) tr.add(i * MIN, i);
  t.equal(tr.points().length, 11, 'only the last 10 minutes are kept');
  t.equal(tr.points()[0]!.at, 10 * MIN);
  t.equal(tr.slopePerHour(), 60, '1 per minute');
  t.equal(tr.leadTimeTo(30), 10 * MIN);
});

t.test('ConditionGate: report on change, repeat every repeatMs, info when it clears', async (t) => {
  const gate = new ConditionGate(10 * MIN);
  const cond = (severity: 'warning' | 'critical', at: number, message = 'hot'): Condition => ({
    key: 'cpu:temp',
    event: { monitor: 'm', host: 'h', component: 'cpu', severity, message, at } satisfies HealthEvent,
    clearedMessage: 'cpu is cool again',
  });
  t.same(gate.update([cond('warning', 0)], 0).map((e) => e.severity), ['warning'], 'new: reported');
  t.same(gate.update([cond('warning', MIN)], MIN), [], 'same severity within repeatMs: quiet');
  t.same(gate.update([cond('warning', 9 * MIN)], 9 * MIN), []);
  t.same(gate.update([cond('warning', 10 * MIN)], 10 * MIN).length, 1, 'repeated after repeatMs');
  t.same(gate.update([cond('critical', 11 * MIN)], 11 * MIN).map((e) => e.severity), ['critical'], 'a change of severity: at once');
  t.same(gate.update([cond('warning', 12 * MIN)], 12 * MIN).map((e) => e.severity), ['warning'], 'and back down, also at once');
  t.same(gate.activeKeys(), ['cpu:temp']);
  const cleared = gate.update([], 13 * MIN);
  t.same(cleared, [{ monitor: 'm', host: 'h', component: 'cpu', severity: 'info', message: 'cpu is cool again', at: 13 * MIN }]);
  t.same(gate.update([], 14 * MIN), [], 'cleared once');

  const plain = new ConditionGate(0);
  plain.update([{ key: 'k', event: { monitor: 'm', host: 'h', component: 'disk', severity: 'warning', message: 'slow', at: 0 } }], 0);
  t.same(plain.update([{ key: 'k', event: { monitor: 'm', host: 'h', component: 'disk', severity: 'warning', message: 'slow', at: 1 } }], 1).length, 1, 'repeatMs 0: every sample');
  t.match(plain.update([], 2)[0]?.message, 'disk is back to normal (it was warning: slow)', 'default cleared message');
});

t.test('formatDuration', async (t) => {
  t.equal(formatDuration(250), '250 ms');
  t.equal(formatDuration(45_000), '45 s');
  t.equal(formatDuration(4 * MIN), '4 min');
  t.equal(formatDuration(3 * HOUR + 20 * MIN), '3 h 20 min');
  t.equal(formatDuration(72 * HOUR), '3 days');
});
