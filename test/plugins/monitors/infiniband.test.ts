/**
 * InfiniBand monitor on a fixture sysfs tree (an active EDR port and an
 * unplugged one): parsing, error rates by arithmetic, link down and flaps,
 * saturated counters, ports listed explicitly (or missing), no InfiniBand
 * at all, and the plugin end to end.
 */
import t from 'tap';
import { join } from 'node:path';
import infinibandPlugin, {
  createInfinibandMonitor,
  evaluateInfiniband,
  infinibandOptionsSchema,
  newIbState,
  parsePortState,
  readInfiniband,
} from '../../../plugins/monitors/infiniband.js';
import { DEFAULT_IB_COUNTERS } from '../../../plugins/monitors/infiniband.js';
import { fakeClock, fixture, HOUR, MIN, put, startMonitor, tempCopy, tempDir } from './helpers.js';

const opts = (o: Record<string, unknown> = {}) => infinibandOptionsSchema.parse({ host: 'node17', ...o });
const port = (root: string, dev: string, f: string) => join(root, 'class/infiniband', dev, 'ports/1', f);

t.test('port states', async (t) => {
  t.same(parsePortState('4: ACTIVE'), { code: 4, name: 'ACTIVE' });
  t.same(parsePortState('5: LinkUp\n'), { code: 5, name: 'LinkUp' });
  t.same(parsePortState('2: Polling'), { code: 2, name: 'Polling' });
  t.equal(parsePortState('ACTIVE'), undefined);
  t.equal(parsePortState(undefined), undefined);
});

t.test('reads ports and counters from the fixture tree', async (t) => {
  const { present, ports } = await readInfiniband(fixture('infiniband/sys'), DEFAULT_IB_COUNTERS);
  t.equal(present, true);
  t.same(ports.map((p) => [p.device, p.port, p.state?.name, p.physState?.name, p.rate]), [
    ['mlx5_0', '1', 'ACTIVE', 'LinkUp', '100 Gb/sec (4X EDR)'],
    ['mlx5_1', '1', 'DOWN', 'Polling', '10 Gb/sec (4X SDR)'],
  ]);
  t.same(ports[0]?.counters, {
    symbol_error: 12,
    link_error_recovery: 0,
    port_rcv_errors: 0,
    local_link_integrity_errors: 0,
    excessive_buffer_overrun_errors: 0,
    port_xmit_discards: 37,
    link_downed: 1,
  });
  t.equal(ports[0]?.linkLayer, 'InfiniBand');
});

t.test('no InfiniBand: nothing to read, no events, no crash', async (t) => {
  const empty = await tempDir(t);
  t.same(await readInfiniband(empty, DEFAULT_IB_COUNTERS), { present: false, ports: [] });
  const m = createInfinibandMonitor(opts({ root: empty }));
  t.same(await m.sample(), []);
  t.same(await createInfinibandMonitor(opts({ root: '/nonexistent' })).sample(), []);
});

t.test('successive samples: error rate, link down with a flap, back up, saturation', async (t) => {
  const root = await tempCopy(t, 'infiniband/sys');
  const clock = fakeClock();
  const m = createInfinibandMonitor(opts({ root }), { now: clock.now });
  t.same(await m.sample(), [], 'first sample: counts are history; the unplugged mlx5_1 was never active, so it is quiet');

  // 30 symbol errors in 30 minutes: 60 per hour
  await put(port(root, 'mlx5_0', 'counters/symbol_error'), 42);
  clock.advance(30 * MIN);
  const rate = await m.sample();
  t.equal(rate.length, 1);
  t.match(rate[0], { monitor: 'infiniband', host: 'node17', component: 'ib mlx5_0 port 1', severity: 'warning', value: 60, unit: 'symbol_error/h' });
  t.match(rate[0]?.message, 'shows 60 symbol errors (bit errors on the wire: a bad cable or transceiver) per hour (warning at 10/h)');

  // the link goes down
  await put(port(root, 'mlx5_0', 'state'), '1: DOWN');
  await put(port(root, 'mlx5_0', 'phys_state'), '3: Disabled');
  await put(port(root, 'mlx5_0', 'counters/link_downed'), 2);
  clock.advance(MIN);
  const down = await m.sample();
  t.same(down.map((e) => [e.severity, e.unit ?? null]), [['warning', 'link downs'], ['critical', null]], 'a flap (one-shot) and the link condition');
  t.match(down[0]?.message, 'lost its link 1 time(s) since the last sample (link_downed 2)');
  t.match(down[1], { leadTimeMs: 0, message: 'InfiniBand mlx5_0 port 1 is DOWN, physical state Disabled: traffic over it has stopped, so MPI ranks on this host cannot reach their peers.' });

  clock.advance(MIN);
  t.same(await m.sample(), [], 'still down: not repeated before repeatMs');

  await put(port(root, 'mlx5_0', 'state'), '4: ACTIVE');
  await put(port(root, 'mlx5_0', 'phys_state'), '5: LinkUp');
  clock.advance(MIN);
  t.match(await m.sample(), [{ severity: 'info', message: 'InfiniBand mlx5_0 port 1 is ACTIVE again.' }]);

  await put(port(root, 'mlx5_0', 'counters/local_link_integrity_errors'), 15);
  clock.advance(MIN);
  const sat = await m.sample();
  t.same(sat.map((e) => [e.severity, e.unit]), [['warning', 'local_link_integrity_errors'], ['warning', 'local_link_integrity_errors/h']], 'saturated, and 15 in 34 min is a rate too');
  t.match(sat[0], { value: 15, message: /counter local_link_integrity_errors is stuck at its maximum 15, so new local link integrity errors go uncounted/ });
  t.equal(sat[1]?.value, Number(((15 * 60) / 34).toFixed(3)));

  // two hours without errors: the rates fall back, the saturation remains
  clock.advance(2 * HOUR);
  const later = await m.sample();
  t.same(later.map((e) => [e.severity, e.message]), [
    ['warning', sat[0]!.message],
    ['info', 'InfiniBand mlx5_0 port 1: symbol_error is back below 10 per hour.'],
    ['info', 'InfiniBand mlx5_0 port 1: local_link_integrity_errors is back below 10 per hour.'],
  ]);
});

t.test('critical rate threshold and counter choice are options', async (t) => {
  const root = await tempCopy(t, 'infiniband/sys');
  const state = newIbState(opts());
  const o = opts({ counters: ['port_rcv_errors'], errorsPerHourWarning: 1, errorsPerHourCritical: 5, minRateSpanMs: 0 });
  evaluateInfiniband((await readInfiniband(root, o.counters)).ports, state, 0, o);
  await put(port(root, 'mlx5_0', 'counters/port_rcv_errors'), 6);
  await put(port(root, 'mlx5_0', 'counters/symbol_error'), 5000);
  const { conditions } = evaluateInfiniband((await readInfiniband(root, o.counters)).ports, state, HOUR, o);
  t.same(conditions.map((c) => [c.key, c.event.severity, c.event.value]), [['mlx5_0/1:port_rcv_errors', 'critical', 6]], 'symbol_error is not watched');
});

t.test('listed ports are expected up from the start; a listed port missing from sysfs is critical', async (t) => {
  const root = await tempCopy(t, 'infiniband/sys');
  const m = createInfinibandMonitor(opts({ root, ports: ['mlx5_1/1', 'mlx5_9/1'] }));
  const ev = await m.sample();
  t.same(ev.map((e) => [e.component, e.severity]), [
    ['ib mlx5_1 port 1', 'critical'],
    ['ib mlx5_9 port 1', 'critical'],
  ]);
  t.match(ev[0]?.message, 'is DOWN, physical state Polling');
  t.match(ev[1]?.message, 'is missing from sysfs');
  t.notOk(infinibandOptionsSchema.safeParse({ ports: ['mlx5_0'] }).success, "ports are 'device/port'");
  t.notOk(infinibandOptionsSchema.safeParse({ counters: ['../../etc/passwd'] }).success, 'counter names are file names');
});

t.test('plugin end to end through setup(ctx) + sample()', async (t) => {
  t.match(infinibandPlugin, { name: 'infiniband', kind: 'health-monitor', version: '1.0.0' });
  const root = await tempCopy(t, 'infiniband/sys');
  const m = await startMonitor(t, infinibandPlugin, { root, host: 'node11' });
  t.same(await m.sample(), []);
  await put(port(root, 'mlx5_0', 'state'), '2: INIT');
  t.match(await m.sample(), [{ monitor: 'infiniband', host: 'node11', severity: 'critical', component: 'ib mlx5_0 port 1', message: /is INIT, physical state LinkUp/ }]);
});
