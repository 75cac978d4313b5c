/**
 * Plugin host mechanics with real (small) test plugins: ordering,
 * first-result-wins, parallel observers, timeouts, a plugin that throws and
 * one that hangs under each failure policy, option validation, API version,
 * teardown order.
 */
import t from 'tap';
import { z } from 'zod';
import { definePlugin, PLUGIN_API_VERSION, type FailurePolicy, type PluginHooks } from '../../src/host/plugin-api.js';
import { PluginDriver, PluginHookError, PluginLoadError } from '../../src/host/plugin-driver.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'plugin-driver' });
log.level = 'silent';

function plugin(name: string, hooks: PluginHooks, failurePolicy?: FailurePolicy) {
  return definePlugin({
    name,
    version: '1.0.0',
    apiVersion: PLUGIN_API_VERSION,
    kind: 'policy',
    configSchema: z.object({}).strict(),
    ...(failurePolicy ? { failurePolicy } : {}),
    setup: () => hooks,
  });
}

t.test('order: pre, then config order, then post; sequential hooks run one by one', async (t) => {
  const seen: string[] = [];
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([
    { plugin: plugin('a', { tick: () => void seen.push('a') }) },
    { plugin: plugin('b', { tick: { order: 'post', handler: () => void seen.push('b') } }) },
    { plugin: plugin('c', { tick: { order: 'pre', handler: () => void seen.push('c') } }) },
    { plugin: plugin('d', { tick: async () => { await new Promise((r) => setTimeout(r, 5)); seen.push('d'); } }) },
  ]);
  await d.hookSequential('tick');
  t.same(seen, ['c', 'a', 'd', 'b']);
  await d.teardown();
});

t.test('first-result-wins: the first non-null answer decides', async (t) => {
  const asked: string[] = [];
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([
    { plugin: plugin('abstains', { decide: () => (asked.push('abstains'), null) }) },
    { plugin: plugin('decides', { decide: (x: number) => (asked.push('decides'), { migrate: x }) }) },
    { plugin: plugin('never-asked', { decide: () => (asked.push('never'), { checkpoint: true }) }) },
  ]);
  t.same(await d.hookFirst('decide', 7), { plugin: 'decides', result: { migrate: 7 } });
  t.same(asked, ['abstains', 'decides']);
  t.equal(await d.hookFirst('nobody-implements'), null);
  await d.teardown();
});

t.test('parallel observers all run at once', async (t) => {
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  let running = 0;
  let peak = 0;
  const slow = async () => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 30));
    running--;
  };
  await d.start([{ plugin: plugin('x', { observe: slow }) }, { plugin: plugin('y', { observe: slow }) }, { plugin: plugin('z', { observe: slow }) }]);
  await d.hookParallel('observe');
  t.equal(peak, 3, 'three observers overlapped');
  await d.teardown();
});

t.test('a throwing plugin under abort: the error names plugin and hook', async (t) => {
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([{ plugin: plugin('bad', { decide: () => { throw new Error('boom'); } }) }]);
  await t.rejects(d.hookFirst('decide'), new PluginHookError('bad', 'decide', 'boom'));
  await d.teardown();
});

t.test('a hanging plugin times out (per-hook timeout wins over the default)', async (t) => {
  const d = new PluginDriver({ log, hookTimeoutMs: 10_000 });
  await d.start([{ plugin: plugin('hangs', { decide: { timeoutMs: 50, handler: () => new Promise(() => undefined) } }) }]);
  const t0 = Date.now();
  await t.rejects(d.hookFirst('decide'), { name: 'PluginHookError', message: /plugin hangs, hook decide: no answer within 50 ms/ });
  t.ok(Date.now() - t0 < 5_000, `did not wait for the 10 s default timeout (${Date.now() - t0} ms)`);
  await d.teardown();
});

t.test('continue: a failing plugin is skipped, the next one answers', async (t) => {
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([
    { plugin: plugin('flaky', { decide: () => { throw new Error('nope'); } }, 'continue') },
    { plugin: plugin('steady', { decide: () => 'ok' }) },
  ]);
  t.same(await d.hookFirst('decide'), { plugin: 'steady', result: 'ok' });
  t.match(d.plugins()[0], { name: 'flaky', kind: 'policy', hooks: ['decide'], disabled: false, failures: 1 });
  await d.teardown();
});

t.test('disable after N failures', async (t) => {
  let calls = 0;
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([{ plugin: plugin('fails', { observe: () => { calls++; throw new Error('x'); } }, { disableAfter: 2 }) }]);
  for (let i = 0; i < 5; i++) await d.hookParallel('observe');
  t.equal(calls, 2, 'not called again once disabled');
  t.match(d.plugins()[0], { name: 'fails', disabled: true, failures: 2 });
  await d.teardown();
});

t.test('options are validated; bad options and API versions are load errors', async (t) => {
  const withOptions = definePlugin({
    name: 'checkpointer',
    version: '1.0.0',
    apiVersion: PLUGIN_API_VERSION,
    kind: 'policy',
    configSchema: z.object({ intervalSeconds: z.number().positive() }).strict(),
    setup: (ctx) => ({ interval: () => ctx.options.intervalSeconds }),
  });
  const ok = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await ok.start([{ plugin: withOptions, options: { intervalSeconds: 30 } }]);
  t.same(await ok.hookFirst('interval'), { plugin: 'checkpointer', result: 30 });
  await ok.teardown();

  const bad = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await t.rejects(bad.start([{ plugin: withOptions, options: { intervalSeconds: -1 } }]), {
    name: 'PluginLoadError',
    message: /plugin checkpointer: option intervalSeconds: /,
  });
  await t.rejects(new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: withOptions, options: { intervalSeconds: 1, extra: 1 } }]), PluginLoadError);
  await t.rejects(
    new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: { ...withOptions, apiVersion: 99 }, options: { intervalSeconds: 1 } }]),
    { message: /needs plugin API 99; this symbio provides 1/ },
  );
  await t.rejects(
    new PluginDriver({ log, hookTimeoutMs: 1000 }).start([{ plugin: plugin('twice', {}) }, { plugin: plugin('twice', {}) }]),
    { message: /configured twice/ },
  );
});

t.test('teardown runs in reverse order, aborts signals, survives a failing teardown', async (t) => {
  const order: string[] = [];
  const signals: AbortSignal[] = [];
  const mk = (name: string, fail = false) =>
    definePlugin({
      name,
      version: '1.0.0',
      apiVersion: PLUGIN_API_VERSION,
      kind: 'health-monitor',
      configSchema: z.object({}).strict(),
      setup: (ctx) => {
        signals.push(ctx.signal);
        return { teardown: () => { order.push(name); if (fail) throw new Error('teardown trouble'); } };
      },
    });
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await d.start([{ plugin: mk('first') }, { plugin: mk('second', true) }, { plugin: mk('third') }]);
  await d.teardown();
  t.same(order, ['third', 'second', 'first']);
  t.ok(signals.every((s) => s.aborted), 'every plugin signal aborted');
});

t.test('a setup that fails tears down the plugins already set up', async (t) => {
  const torn: string[] = [];
  const good = definePlugin({
    name: 'good', version: '1', apiVersion: PLUGIN_API_VERSION, kind: 'policy', configSchema: z.object({}).strict(),
    setup: () => ({ teardown: () => void torn.push('good') }),
  });
  const broken = definePlugin({
    name: 'broken', version: '1', apiVersion: PLUGIN_API_VERSION, kind: 'policy', configSchema: z.object({}).strict(),
    setup: () => { throw new Error('cannot start'); },
  });
  const d = new PluginDriver({ log, hookTimeoutMs: 1000 });
  await t.rejects(d.start([{ plugin: good }, { plugin: broken }]), { name: 'PluginLoadError', message: /plugin broken, hook setup: cannot start/ });
  t.same(torn, ['good']);
});
