/**
 * What `symbio config check` and `symbio plugins list` rest on: checkConfig
 * loads the file and every enabled plugin (validating options);
 * formatEffectiveConfig prints YAML that loads back to the same
 * configuration, defaults included.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { checkConfig, formatEffectiveConfig } from '../../src/cli/config-actions.js';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { defaultConfig } from '../../src/config/schema.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/config', import.meta.url));

t.test('checkConfig: the file, what was searched, and each enabled plugin', async (t) => {
  const file = join(FIXTURES, 'with-plugins.yaml');
  const r = await checkConfig({ explicit: file, env: {} });
  t.equal(r.source, file);
  t.strictSame(r.searched, [file]);
  t.strictSame(r.plugins, [
    { spec: './plugins/good-policy.mjs', name: 'fixture-policy', version: '1.2.3', kind: 'policy', resolved: join(FIXTURES, 'plugins', 'good-policy.mjs') },
    { spec: './plugins/named-monitor.mjs', name: 'fixture-monitor', version: '0.1.0', kind: 'health-monitor', resolved: join(FIXTURES, 'plugins', 'named-monitor.mjs') },
    { spec: './plugins/dir-plugin', name: 'fixture-dir', version: '1.0.0', kind: 'hypervisor-driver', resolved: join(FIXTURES, 'plugins', 'dir-plugin', 'index.js') },
  ]);
  t.equal(r.config.plugins.length, 4, 'the configuration still lists the disabled entry');
});

t.test('checkConfig: no file anywhere means defaults and no plugins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-check-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const r = await checkConfig({ env: {}, cwd: dir, home: dir, systemDir: join(dir, 'etc') });
  t.equal(r.source, null);
  t.equal(r.searched.length, 3);
  t.strictSame(r.config, defaultConfig());
  t.strictSame(r.plugins, []);
});

t.test('checkConfig: bad plugin options are a ConfigError with the position', async (t) => {
  const file = join(FIXTURES, 'bad-options.yaml');
  await t.rejects(checkConfig({ explicit: file, env: {} }), ConfigError);
  await t.rejects(checkConfig({ explicit: file, env: {} }), { message: new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:6:25: plugins\\[1\\]\\.options\\.cePerHourWarning: `) });
});

t.test('formatEffectiveConfig: YAML with defaults filled in, loadable again', async (t) => {
  const d = formatEffectiveConfig(defaultConfig());
  t.equal(
    d,
    [
      'controller:',
      '  whenBusy: queue',
      '  queueLimit: 4',
      'quiesce:',
      '  timeoutMs: 30000',
      '  stallMs: 2000',
      '  resumeTimeoutMs: 60000',
      'hooks:',
      '  timeoutMs: 5000',
      'plugins: []',
      'hosts: []',
      'checkpoint:',
      '  keep: 3',
      'log:',
      '  level: info',
      '',
    ].join('\n'),
  );
  const c = parseConfigText('controller:\n  tcp: {}\n  tokenFile: /t\nplugins:\n  - use: ./x.mjs\n    options: {a: [1, "two", null]}\nhosts:\n  - name: h1\n', 'x');
  const text = formatEffectiveConfig(c);
  t.match(text, /\n {2}tcp:\n {4}host: 127\.0\.0\.1\n {4}port: 7450\n/);
  t.match(text, /intervalMs: 10000/);
  t.strictSame(parseConfigText(text, 'effective.yaml'), c, 'round trip');
});
