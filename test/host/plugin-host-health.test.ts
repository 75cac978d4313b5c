/**
 * Host states from health events, through the real PluginHost and
 * Controller (no plugins needed: the marking is the host's own): a critical
 * event degrades an up host, the condition's all-clear brings it back, a
 * drain is not undone by an all-clear.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller } from '../../src/controller/controller.js';
import { PluginHost } from '../../src/host/plugin-host.js';
import type { HealthEvent } from '../../src/host/plugin-api.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'plugin-host-health' });
log.level = 'silent';
const dir = mkdtempSync(join(tmpdir(), 'symbio-host-health-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const ev = (host: string, component: string, severity: HealthEvent['severity']): HealthEvent => ({ monitor: 'm', host, component, severity, message: severity === 'info' ? 'back to normal' : 'failing', at: Date.now() });

t.test('critical degrades, the all-clear of every condition restores, a drain stays', async (t) => {
  const controller = new Controller({ stateDir: dir, whenBusy: 'queue', queueLimit: 2, quiesce: { timeoutMs: 1000, stallMs: 500 }, hosts: [{ name: 'h1', spare: true }, { name: 'h2', spare: true }], log });
  const host = new PluginHost({ controller, log, hookTimeoutMs: 1000 });
  await host.start([]);
  t.teardown(() => host.close());
  await host.health(ev('h1', 'dimm', 'warning'));
  t.equal(controller.hostState('h1'), 'up', 'a warning does not take a host out of use');
  await host.health(ev('h1', 'dimm', 'critical'));
  await host.health(ev('h1', 'fan', 'critical'));
  t.equal(controller.hostState('h1'), 'degraded');
  await host.health(ev('h1', 'dimm', 'info'));
  t.equal(controller.hostState('h1'), 'degraded', 'one of its two conditions is still there');
  await host.health(ev('h1', 'fan', 'warning'));
  t.equal(controller.hostState('h1'), 'degraded', 'better is not back to normal');
  await host.health(ev('h1', 'fan', 'info'));
  t.equal(controller.hostState('h1'), 'up', 'both cleared: usable again');
  await host.health(ev('h2', 'dimm', 'critical'));
  controller.setHostState('h2', 'drained', 'a policy drained it');
  await host.health(ev('h2', 'dimm', 'info'));
  t.equal(controller.hostState('h2'), 'drained', 'an all-clear does not undo a drain');
});
