/**
 * parseConfigText: defaults, a full valid file, and every kind of error with
 * its exact message (file, line:column, key path, expected, found).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ConfigError, parseConfigText } from '../../src/config/load.js';
import { configSchema, defaultConfig } from '../../src/config/schema.js';

const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/config/${name}`, import.meta.url));

/** The ConfigError message parseConfigText throws for `text` (fails the test when it does not throw one). */
function errorOf(text: string, file = 'symbio.yaml'): string {
  try {
    parseConfigText(text, file);
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error(`expected a ConfigError for:\n${text}`);
}

const DEFAULTS = {
  controller: { whenBusy: 'queue', queueLimit: 4 },
  quiesce: { timeoutMs: 30000, stallMs: 2000, resumeTimeoutMs: 60000 },
  hooks: { timeoutMs: 5000 },
  plugins: [],
  hosts: [],
  checkpoint: { keep: 3 },
  log: { level: 'info' },
};

t.test('defaults: empty file, comments only, null document, empty sections', async (t) => {
  t.strictSame(defaultConfig(), DEFAULTS);
  t.strictSame(parseConfigText('', 'symbio.yaml'), DEFAULTS);
  t.strictSame(parseConfigText('# nothing here\n\n', 'symbio.yaml'), DEFAULTS);
  t.strictSame(parseConfigText('~\n', 'symbio.yaml'), DEFAULTS);
  t.strictSame(parseConfigText('controller:\nquiesce:\n  timeoutMs:\nplugins:\nhosts:\n', 'symbio.yaml'), DEFAULTS, 'an empty value means the default');
  t.strictSame(parseConfigText('quiesce: {}\nlog: {}\n', 'symbio.yaml'), DEFAULTS);
  const partial = parseConfigText('quiesce:\n  stallMs: 100\n', 'symbio.yaml');
  t.equal(partial.quiesce.stallMs, 100);
  t.equal(partial.quiesce.timeoutMs, 30000, 'siblings keep their defaults');
});

t.test('a full valid file', async (t) => {
  const c = parseConfigText(readFileSync(fixture('full.yaml'), 'utf8'), 'full.yaml');
  t.strictSame(c.controller, {
    socket: '/run/symbio/controller.sock',
    tcp: { host: '0.0.0.0', port: 7451 },
    tokenFile: 'token',
    stateDir: './state',
    whenBusy: 'refuse',
    queueLimit: 2,
  });
  t.strictSame(c.plugins, [
    { use: 'symbio/plugins/policies/periodic-checkpoint', options: { everyMs: 600000 }, failurePolicy: 'continue', intervalMs: 10000, enabled: true },
    { use: './local-monitor.mjs', intervalMs: 1000, enabled: false },
  ]);
  t.strictSame(c.hosts, [
    { name: 'node1', spare: false },
    { name: 'node2', spare: false, address: '10.0.0.2' },
    { name: 'spare1', spare: true },
  ]);
  t.strictSame(c.checkpoint, { dir: '/var/lib/symbio/checkpoints', keep: 5 });
  t.equal(c.log.level, 'debug');
  t.strictSame(parseConfigText('controller:\n  tcp: {}\n  tokenFile: /t\n', 'x').controller.tcp, { host: '127.0.0.1', port: 7450 }, 'tcp defaults');
  t.strictSame(parseConfigText('plugins:\n  - use: x\n    failurePolicy: { disableAfter: 2 }\n', 'x').plugins[0]?.failurePolicy, { disableAfter: 2 });
});

t.test('wrong values: file, line:column, key path, expected, found', async (t) => {
  t.equal(errorOf('quiesce:\n  timeoutMs: fast\n'), 'symbio.yaml:2:14: quiesce.timeoutMs: expected a positive integer (ms), got "fast"');
  t.equal(errorOf('quiesce:\n  stallMs: -3\n'), 'symbio.yaml:2:12: quiesce.stallMs: expected a positive integer (ms), got -3');
  t.equal(errorOf('quiesce:\n  stallMs: 1.5\n'), 'symbio.yaml:2:12: quiesce.stallMs: expected a positive integer (ms), got 1.5');
  t.equal(errorOf('quiesce:\n  timeoutMs: 99999999999\n'), 'symbio.yaml:2:14: quiesce.timeoutMs: expected at most 3600000 ms (1 h), got 99999999999');
  t.equal(errorOf('hooks: {timeoutMs: "5000"}\n'), 'symbio.yaml:1:20: hooks.timeoutMs: expected a positive integer (ms), got "5000"');
  t.equal(errorOf('log:\n  level: loud\n'), 'symbio.yaml:2:10: log.level: expected one of fatal, error, warn, info, debug, trace, silent, got "loud"');
  t.equal(errorOf('controller:\n  whenBusy: wait\n'), `symbio.yaml:2:13: controller.whenBusy: expected 'queue' or 'refuse', got "wait"`);
  t.equal(errorOf('controller:\n  queueLimit: 0\n'), 'symbio.yaml:2:15: controller.queueLimit: expected an integer of at least 1, got 0');
  t.equal(errorOf('controller:\n  tcp:\n    port: 70000\n  tokenFile: /t\n'), 'symbio.yaml:3:11: controller.tcp.port: expected a port number (1..65535), got 70000');
  t.equal(errorOf('controller: []\n'), 'symbio.yaml:1:13: controller: expected a mapping (socket:, tcp:, ...), got an empty list');
  t.equal(errorOf('checkpoint:\n  keep: lots\n'), 'symbio.yaml:2:9: checkpoint.keep: expected an integer of at least 1, got "lots"');
  t.equal(errorOf('hosts:\n  - name: a\n    spare: maybe\n'), 'symbio.yaml:3:12: hosts[0].spare: expected true or false, got "maybe"');
  t.equal(errorOf('hosts: {a: 1}\n'), 'symbio.yaml:1:8: hosts: expected a list of hosts (- name: h1), got a mapping');
});

t.test('plugin entries', async (t) => {
  t.equal(
    errorOf('plugins:\n  - use: ./a.mjs\n  - options: {threshold: 2}\n'),
    'symbio.yaml:3:5: plugins[1].use: expected a package name or a path (./x.js), got nothing',
  );
  t.equal(errorOf('plugins:\n  - use: ""\n'), 'symbio.yaml:2:10: plugins[0].use: expected a package name or a path (./x.js), got ""');
  t.equal(
    errorOf('plugins:\n  - use: x\n    failurePolicy: sometimes\n'),
    `symbio.yaml:3:20: plugins[0].failurePolicy: expected 'abort', 'continue' or { disableAfter: N }, got "sometimes"`,
  );
  t.equal(
    errorOf('plugins:\n  - use: x\n    failurePolicy: { disableAfter: 0 }\n'),
    'symbio.yaml:3:36: plugins[0].failurePolicy.disableAfter: expected an integer of at least 1, got 0',
  );
  t.equal(errorOf('plugins:\n  - use: x\n    intervalMs: 5\n'), 'symbio.yaml:3:17: plugins[0].intervalMs: expected an integer of at least 100 (ms), got 5');
  t.equal(errorOf('plugins:\n  - use: x\n    enabled: no\n'), 'symbio.yaml:3:14: plugins[0].enabled: expected true or false, got "no"', 'YAML 1.2: no is a string');
  t.equal(errorOf('plugins:\n  - ./x.mjs\n'), 'symbio.yaml:2:5: plugins[0]: expected a mapping with use: <package or path>, got "./x.mjs"');
  t.strictSame(parseConfigText('plugins:\n  - use: x\n    options: {a: null, b: [1, {c: ~}]}\n', 'x').plugins[0]?.options, { a: null, b: [1, { c: null }] }, 'options are kept as written (nulls too)');
});

t.test('unknown keys, with the known ones and a did-you-mean', async (t) => {
  t.equal(
    errorOf('# comment\ncontroller:\n  sokcet: /x\n'),
    'symbio.yaml:3:3: controller.sokcet: unknown key (known: socket, tcp, tokenFile, stateDir, whenBusy, queueLimit); did you mean "socket"?',
  );
  t.equal(
    errorOf('Quiesce: {}\n'),
    'symbio.yaml:1:1: Quiesce: unknown key (known: controller, quiesce, hooks, plugins, hosts, checkpoint, log); did you mean "quiesce"?',
  );
  t.equal(
    errorOf('quiesce:\n  timeout: 5\n'),
    'symbio.yaml:2:3: quiesce.timeout: unknown key (known: timeoutMs, stallMs, resumeTimeoutMs); did you mean "timeoutMs"?',
  );
  t.equal(
    errorOf('plugins:\n  - use: x\n    option: {}\n'),
    'symbio.yaml:3:5: plugins[0].option: unknown key (known: use, options, failurePolicy, intervalMs, enabled); did you mean "options"?',
  );
  t.equal(
    errorOf('plugins:\n  - use: x\n    failurePolicy: {disableAfter: 2, then: abort}\n'),
    'symbio.yaml:3:38: plugins[0].failurePolicy.then: unknown key (known: disableAfter)',
  );
  t.equal(errorOf('zzz: 1\n'), 'symbio.yaml:1:1: zzz: unknown key (known: controller, quiesce, hooks, plugins, hosts, checkpoint, log)', 'no suggestion when nothing is close');
  t.equal(errorOf('__proto__: {x: 1}\n'), 'symbio.yaml:1:1: __proto__: unknown key (known: controller, quiesce, hooks, plugins, hosts, checkpoint, log)');
  t.equal(errorOf('"odd key": 1\n'), 'symbio.yaml:1:1: ["odd key"]: unknown key (known: controller, quiesce, hooks, plugins, hosts, checkpoint, log)');
});

t.test('cross-field and list checks', async (t) => {
  t.equal(
    errorOf('controller:\n  tcp: { port: 7451 }\n'),
    'symbio.yaml:2:3: controller.tokenFile: required when controller.tcp is set (TCP agents and clients must present the shared token); add tokenFile: <path to a 0600 file>',
  );
  t.equal(errorOf('hosts:\n  - name: h1\n  - name: h2\n  - name: h1\n'), 'symbio.yaml:4:11: hosts[2].name: duplicate host name "h1" (already used by hosts[0])');
  t.equal(errorOf('hosts:\n  - spare: true\n'), 'symbio.yaml:2:5: hosts[0].name: expected a host name, got nothing');
});

t.test('several problems: one line each, in file order', async (t) => {
  const msg = errorOf('log:\n  level: loud\nquiesce:\n  timeoutMs: 0\n  stalMs: 5\n');
  t.equal(
    msg,
    [
      'symbio.yaml:2:10: log.level: expected one of fatal, error, warn, info, debug, trace, silent, got "loud"',
      'symbio.yaml:4:14: quiesce.timeoutMs: expected a positive integer (ms), got 0',
      'symbio.yaml:5:3: quiesce.stalMs: unknown key (known: timeoutMs, stallMs, resumeTimeoutMs); did you mean "stallMs"?',
    ].join('\n'),
  );
  const many = Array.from({ length: 30 }, (_, i) => `k${i}: 1`).join('\n');
  const lines = errorOf(many).split('\n');
  t.equal(lines.length, 21, 'at most 20 issues listed');
  t.equal(lines[20], '... and 10 more');
});

t.test('not a mapping at the top level', async (t) => {
  const sections = 'expected a mapping of sections (controller:, quiesce:, hooks:, plugins:, hosts:, checkpoint:, log:)';
  t.equal(errorOf('- a\n- b\n'), `symbio.yaml:1:1: (top level): ${sections}, got a list (2 items)`);
  t.equal(errorOf('hello\n'), `symbio.yaml:1:1: (top level): ${sections}, got "hello"`);
  t.equal(errorOf('42'), `symbio.yaml:1:1: (top level): ${sections}, got 42`);
});

t.test('YAML problems: syntax, duplicate keys, several documents, aliases', async (t) => {
  t.equal(errorOf('quiesce:\n  timeoutMs: 1\n  timeoutMs: 2\n'), 'symbio.yaml:3:3: quiesce.timeoutMs: duplicate key (first set at line 2)');
  t.equal(errorOf('log: {}\nlog: {}\n'), 'symbio.yaml:2:1: log: duplicate key (first set at line 1)');
  t.equal(errorOf('quiesce: [1\n'), 'symbio.yaml:2:1: invalid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]');
  t.match(errorOf('quiesce:\n  timeoutMs: 1\n stallMs: 2\n'), /^symbio\.yaml:3:\d+: invalid YAML: /);
  t.equal(errorOf('a: "unterminated\n'), 'symbio.yaml:2:1: invalid YAML: Missing closing "quote', 'reported where the file ends');
  t.match(errorOf('\tquiesce: {}\n'), /^symbio\.yaml:1:1: invalid YAML: /, 'tab indentation');
  t.equal(errorOf('log: {}\n---\nlog: {}\n'), 'symbio.yaml:2:1: a configuration file holds one YAML document (found another --- here)');
  t.equal(errorOf('log: *nope\n'), 'symbio.yaml: invalid YAML: Unresolved alias (the anchor must be set before the alias): nope');
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
  for (const [k, prev] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e']] as const) bomb.push(`${k}: &${k} [${Array(10).fill(`*${prev}`).join(', ')}]`);
  t.equal(errorOf(bomb.join('\n')), 'symbio.yaml: invalid YAML: Excessive alias count indicates a resource exhaustion attack', 'alias expansion is bounded');
  t.strictSame(parseConfigText('hooks: &h {timeoutMs: 100}\n', 'x').hooks, { timeoutMs: 100 }, 'a few aliases are fine');
});

t.test('every field has a description', async (t) => {
  t.ok(configSchema.description);
  const shape = configSchema.shape;
  for (const [k, v] of Object.entries(shape)) t.ok(v.description, `${k} is described`);
  t.match(shape.quiesce.description ?? '', /quiescent/);
});
