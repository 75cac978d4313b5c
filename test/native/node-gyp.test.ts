/**
 * binding.gyp builds the same addon for node-gyp users: copy what it needs
 * (binding.gyp, native/) to a temporary directory, run npm's bundled node-gyp
 * there, load the result and use it. Slow (a full C++ build): generous timeout.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** npm's own copy of node-gyp: npm tells scripts where it is; else next to npm. */
function findNodeGyp(): string | undefined {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((c): c is string => c !== undefined && c !== '' && existsSync(c));
}

/**
 * Headers for node-gyp without a download: npm's configured nodedir, else the
 * headers installed next to this node binary (the registry is the only thing
 * reachable here, and node-gyp would fetch headers from nodejs.org).
 */
function findNodeDir(): string | undefined {
  const configured = process.env.npm_config_nodedir;
  if (configured && existsSync(join(configured, 'include', 'node', 'node_api.h'))) return configured;
  const prefix = join(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) return prefix;
  return undefined;
}

const nodeGyp = findNodeGyp();

t.test('binding.gyp builds a working symbio.node with node-gyp', { timeout: 600_000, skip: nodeGyp ? false : 'npm\'s node-gyp not found' }, (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-node-gyp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  cpSync(join(root, 'binding.gyp'), join(dir, 'binding.gyp'));
  cpSync(join(root, 'native'), join(dir, 'native'), { recursive: true });
  // node-addon-api is resolved from the build directory (binding.gyp asks node).
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');

  const nodedir = findNodeDir();
  const args = [nodeGyp!, 'rebuild', '--jobs=2', ...(nodedir ? [`--nodedir=${nodedir}`] : [])];
  const r = spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8', timeout: 590_000 });
  t.equal(r.status, 0, `node-gyp rebuild exits 0\n${r.stdout ?? ''}\n${r.stderr ?? ''}`.trim());
  const built = join(dir, 'build', 'Release', 'symbio.node');
  t.ok(existsSync(built), 'build/Release/symbio.node exists');
  if (!existsSync(built)) return t.end();

  const addon = createRequire(import.meta.url)(built) as {
    ControlSegment: {
      new (o: object): { name: string; hold(): number; close(): void };
      inspect(name: string): { epoch: number; command: string; slotCount: number };
    };
  };
  const name = `/symbio-gyp-test-${process.pid}`;
  const seg = new addon.ControlSegment({ name, slots: 3, worldSize: 2, resumeTimeoutMs: 1000, jobId: 'gyp' });
  t.teardown(() => seg.close());
  t.equal(seg.hold(), 1);
  t.match(addon.ControlSegment.inspect(name), { epoch: 1, command: 'hold', slotCount: 3 });
  // C++ exceptions must be on (node-gyp's default turns them off): a bad
  // argument has to come back as a JS error, not abort the process.
  t.throws(() => new addon.ControlSegment({ name, slots: 0, worldSize: 1, resumeTimeoutMs: 1, jobId: '' }), {
    message: 'options.slots must be an integer in 1..4096 (got 0)',
  });
  seg.close();
  t.notOk(existsSync(`/dev/shm${name}`));
  t.end();
});
