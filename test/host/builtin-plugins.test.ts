/**
 * `symbio plugins builtin`: the catalogue of the plugins that ship with
 * symbio, read from the plugins themselves (name, kind, description) and
 * from their zod schemas (options, types, defaults), so a user finds them
 * without reading the source, and the list cannot drift from the code.
 */
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { formatBuiltinPlugins, listBuiltinPlugins } from '../../src/host/builtin-plugins.js';
import { pluginShape } from '../../src/host/plugin-loader.js';
import { PLUGIN_API_VERSION } from '../../src/host/plugin-api.js';
import { root, run, symbioCli } from '../helpers/mpi.js';

const list = await listBuiltinPlugins();

t.test('every built-in plugin, and only plugins (helper modules are left out)', async (t) => {
  t.same(
    list.map((p) => `${p.kind} ${p.name}`),
    [
      'health-monitor command', 'health-monitor edac', 'health-monitor infiniband', 'health-monitor ipmi',
      'health-monitor lm-sensors', 'health-monitor smart', 'health-monitor vcluster-health',
      'policy migrate-on-health', 'policy periodic-checkpoint', 'policy restart-on-failure',
    ],
  );
  for (const p of list) {
    t.ok(p.description.length > 10 && !p.description.includes('\n'), `${p.name}: a one-line description: ${p.description}`);
    const [, , group, file] = p.use.split('/');
    t.ok(existsSync(join(root, 'plugins', group!, `${file}.ts`)), `${p.name}: its use: ${p.use} names its module`);
    t.ok(p.options.length > 0, `${p.name}: options listed`);
  }
});

t.test('options come from the schema: types, defaults, required ones, descriptions', async (t) => {
  const pc = list.find((p) => p.name === 'periodic-checkpoint')!;
  t.match(pc.options.find((o) => o.name === 'mtbfMs'), { type: 'number', required: false, default: 86_400_000, description: /Mean time between failures/ });
  t.match(pc.options.find((o) => o.name === 'formula'), { type: /"young"\|"daly"|"daly"\|"young"/ });
  const vh = list.find((p) => p.name === 'vcluster-health')!;
  const cluster = vh.options.find((o) => o.name === 'cluster')!;
  t.match(cluster, { type: 'string', required: true });
  t.notOk('default' in cluster, 'a required option has no default');
  const text = formatBuiltinPlugins(list);
  t.match(text, /periodic-checkpoint \(policy\) — .*\n {2}use: symbio\/plugins\/policies\/periodic-checkpoint\n {2}options:\n {4}mtbfMs: number = 86400000 {2}Mean time/);
  t.match(text, /\n {4}cluster: string \(required\)/);
});

t.test('a plugin may carry a description; a description that is not a string is refused', async (t) => {
  const base = { name: 'x', version: '1.0.0', apiVersion: PLUGIN_API_VERSION, kind: 'policy', configSchema: pluginShape, setup: () => ({}) };
  t.ok(pluginShape.safeParse({ ...base, description: 'does x' }).success);
  t.notOk(pluginShape.safeParse({ ...base, description: 42 }).success);
});

t.test('the CLI: symbio plugins builtin, as text and as JSON', async (t) => {
  const text = await run(process.execPath, [symbioCli, 'plugins', 'builtin']);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, /^command \(health-monitor\) — /);
  t.equal(text.stderr, '', 'nothing on stderr');
  const json = await run(process.execPath, [symbioCli, 'plugins', 'builtin', '--json']);
  t.equal(json.code, 0, json.stderr);
  t.same((JSON.parse(json.stdout) as { name: string }[]).map((p) => p.name), list.map((p) => p.name));
});
