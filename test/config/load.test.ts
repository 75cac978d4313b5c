/**
 * Finding and reading the file: the search order (temp dirs and an env
 * object, never the real home or /etc), files that cannot be read, relative
 * paths in the file, and readTokenFile's checks.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { packageRoot } from '../../src/util/package-root.js';
import { ConfigError, loadConfig, readTokenFile, resolveConfigPath, type ResolveConfigOptions } from '../../src/config/load.js';

/** A sandbox: cwd, home, XDG dir and a stand-in for /etc/symbio, all empty; removed after the test. */
function sandbox(t: { teardown(fn: () => void): unknown }) {
  const root = mkdtempSync(join(tmpdir(), 'symbio-config-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const dirs = { cwd: join(root, 'work'), home: join(root, 'home'), xdg: join(root, 'xdg'), system: join(root, 'etc-symbio') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const opts = (env: NodeJS.ProcessEnv = {}, explicit?: string): ResolveConfigOptions => ({
    env,
    cwd: dirs.cwd,
    home: dirs.home,
    systemDir: dirs.system,
    ...(explicit === undefined ? {} : { explicit }),
  });
  const put = (path: string, text = 'log:\n  level: warn\n') => {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text);
    return path;
  };
  return { root, ...dirs, opts, put };
}

function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

t.test('no file anywhere: embedded defaults, and every place searched is listed', async (t) => {
  const s = sandbox(t);
  const r = resolveConfigPath(s.opts());
  t.equal(r.path, null);
  t.strictSame(r.searched, [join(s.cwd, 'symbio.yaml'), join(s.home, '.config', 'symbio', 'symbio.yaml'), join(s.system, 'symbio.yaml')]);
  const loaded = loadConfig(s.opts());
  t.equal(loaded.source, null);
  t.equal(loaded.config.quiesce.timeoutMs, 30000);
  t.equal(loaded.config.controller.socket, undefined, 'socket default is left to the caller');
  t.equal(loaded.config.controller.stateDir, undefined);
});

t.test('search order: --config, $SYMBIO_CONFIG, ./symbio.yaml, XDG, system', async (t) => {
  const s = sandbox(t);
  const system = s.put(join(s.system, 'symbio.yaml'));
  t.equal(resolveConfigPath(s.opts()).path, system, 'system file when nothing else');

  const homeXdg = s.put(join(s.home, '.config', 'symbio', 'symbio.yaml'));
  t.equal(resolveConfigPath(s.opts()).path, homeXdg, '~/.config when XDG_CONFIG_HOME is unset');
  t.equal(resolveConfigPath(s.opts({ XDG_CONFIG_HOME: 'relative/dir' })).path, homeXdg, 'a relative XDG_CONFIG_HOME is ignored');

  const xdg = s.put(join(s.xdg, 'symbio', 'symbio.yaml'));
  const r = resolveConfigPath(s.opts({ XDG_CONFIG_HOME: s.xdg }));
  t.equal(r.path, xdg, '$XDG_CONFIG_HOME wins over ~/.config');
  t.strictSame(r.searched, [join(s.cwd, 'symbio.yaml'), xdg], 'searched stops at the one found');

  const local = s.put(join(s.cwd, 'symbio.yaml'));
  t.equal(resolveConfigPath(s.opts({ XDG_CONFIG_HOME: s.xdg })).path, local, './symbio.yaml wins over XDG');

  const fromEnv = s.put(join(s.root, 'env.yaml'));
  t.equal(resolveConfigPath(s.opts({ XDG_CONFIG_HOME: s.xdg, SYMBIO_CONFIG: fromEnv })).path, fromEnv, '$SYMBIO_CONFIG wins over ./symbio.yaml');
  t.equal(resolveConfigPath(s.opts({ SYMBIO_CONFIG: '' })).path, local, 'an empty $SYMBIO_CONFIG is unset');

  const explicit = s.put(join(s.cwd, 'other.yaml'));
  const e = resolveConfigPath(s.opts({ SYMBIO_CONFIG: fromEnv }, 'other.yaml'));
  t.equal(e.path, explicit, '--config wins over everything, relative to cwd');
  t.strictSame(e.searched, [explicit]);

  const loaded = loadConfig(s.opts({}, 'other.yaml'));
  t.equal(loaded.source, explicit);
  t.equal(loaded.config.log.level, 'warn');
});

t.test('--config and $SYMBIO_CONFIG must exist', async (t) => {
  const s = sandbox(t);
  s.put(join(s.cwd, 'symbio.yaml'));
  const missing = join(s.cwd, 'nope.yaml');
  t.equal(configErrorOf(() => resolveConfigPath(s.opts({}, 'nope.yaml'))).message, `${missing}: cannot read the configuration file named by --config: no such file`);
  t.equal(
    configErrorOf(() => loadConfig(s.opts({ SYMBIO_CONFIG: missing }))).message,
    `${missing}: cannot read the configuration file named by $SYMBIO_CONFIG: no such file`,
  );
});

t.test('files that cannot be read', async (t) => {
  const s = sandbox(t);
  const dir = join(s.cwd, 'symbio.yaml');
  mkdirSync(dir);
  t.equal(configErrorOf(() => loadConfig(s.opts())).message, `${dir}: cannot read the configuration file: is a directory, not a file`, 'a directory where the file should be');
  const locked = s.put(join(s.root, 'locked.yaml'));
  chmodSync(locked, 0o000);
  const denied = `${locked}: cannot read the configuration file: permission denied`;
  if (process.getuid?.() !== 0) {
    t.equal(configErrorOf(() => loadConfig(s.opts({}, locked))).message, denied);
    return;
  }
  // Root reads whatever the mode says: read as nobody (uid 65534) instead, in
  // a child that loads the built module (dist/). `env -i`: the test runner's
  // NODE_OPTIONS hooks cannot work as another user.
  chmodSync(s.root, 0o755); // mkdtemp made it 0700: nobody must reach the file to be refused by its mode
  const asNobody = (): string => {
    const load = pathToFileURL(join(packageRoot(), 'dist/src/config/load.js')).href;
    const script = `import(${JSON.stringify(load)}).then(({ loadConfig }) => {
      try { loadConfig(${JSON.stringify({ ...s.opts(), explicit: locked })}); console.log('loaded'); }
      catch (err) { console.log(err.name + ': ' + err.message); }
    })`;
    const r = spawnSync('/usr/bin/env', ['-i', process.execPath, '-e', script], { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 20_000 });
    return `${r.stdout}${r.stderr}`.trim();
  };
  t.equal(asNobody(), `ConfigError: ${denied}`, 'uid 65534, file mode 000: permission denied');
  chmodSync(locked, 0o644);
  t.equal(asNobody(), 'loaded', 'the same file readable: nobody loads it (so the mode was the refusal)');
});

t.test('errors from loadConfig name the file found by the search', async (t) => {
  const s = sandbox(t);
  const f = s.put(join(s.cwd, 'symbio.yaml'), 'quiesce:\n  timeoutMs: fast\n');
  const err = configErrorOf(() => loadConfig(s.opts()));
  t.equal(err.message, `${f}:2:14: quiesce.timeoutMs: expected a positive integer (ms), got "fast"`);
  t.equal(err.file, f);
  t.strictSame(err.issues, [{ path: 'quiesce.timeoutMs', line: 2, col: 14, message: 'expected a positive integer (ms), got "fast"' }]);
});

t.test('an empty file is all defaults', async (t) => {
  const s = sandbox(t);
  const f = s.put(join(s.cwd, 'symbio.yaml'), '');
  const loaded = loadConfig(s.opts());
  t.equal(loaded.source, f);
  t.equal(loaded.config.hooks.timeoutMs, 5000);
});

t.test('relative paths in the file are relative to its directory', async (t) => {
  const s = sandbox(t);
  const confDir = join(s.root, 'conf');
  s.put(
    join(confDir, 'symbio.yaml'),
    'controller:\n  socket: run/c.sock\n  tokenFile: ../secret/token\n  stateDir: /abs/state\ncheckpoint:\n  dir: ckpt\n',
  );
  const { config } = loadConfig(s.opts({}, join(confDir, 'symbio.yaml')));
  t.equal(config.controller.socket, join(confDir, 'run/c.sock'));
  t.equal(config.controller.tokenFile, join(s.root, 'secret/token'));
  t.equal(config.controller.stateDir, '/abs/state', 'absolute paths are kept');
  t.equal(config.checkpoint.dir, join(confDir, 'ckpt'));
});

t.test('readTokenFile: 0600 or stricter, regular, non-empty', async (t) => {
  const s = sandbox(t);
  const good = s.put(join(s.root, 'token'), '  s3cret\n');
  chmodSync(good, 0o600);
  t.equal(readTokenFile(good), 's3cret', 'trimmed');
  chmodSync(good, 0o400);
  t.equal(readTokenFile(good), 's3cret', 'read-only for the owner is fine');

  const open = s.put(join(s.root, 'open-token'), 'x\n');
  chmodSync(open, 0o644);
  t.equal(
    configErrorOf(() => readTokenFile(open)).message,
    `${open}: token file is accessible by group or others (mode 0644); it must be 0600 or stricter: chmod 600 ${open}`,
  );
  chmodSync(open, 0o620);
  t.match(configErrorOf(() => readTokenFile(open)).message, /\(mode 0620\)/);

  const empty = s.put(join(s.root, 'empty-token'), ' \n');
  chmodSync(empty, 0o600);
  t.equal(configErrorOf(() => readTokenFile(empty)).message, `${empty}: token file is empty; put the shared token in it (one line)`);

  const missing = join(s.root, 'missing-token');
  t.equal(configErrorOf(() => readTokenFile(missing)).message, `${missing}: cannot read the token file: no such file`);
  t.equal(configErrorOf(() => readTokenFile(s.root)).message, `${s.root}: token file: not a regular file`);
});
