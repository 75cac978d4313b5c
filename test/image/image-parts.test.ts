/**
 * The pieces of the guest image builder that need no root and no VM: the
 * initramfs's cpio writer and module order, the kernel command line of the
 * boot contract, the apt mirror lookup, the cache dir, and what of symbio
 * goes into the guest. image.test.ts builds and boots the real thing.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync, gunzipSync } from 'node:zlib';
import { DEFAULT_MIRROR, hostDebianMirror, parseDeb822Sources, parseOneLineSources } from '../../src/image/apt-mirror.js';
import { baseSpec } from '../../src/image/base-rootfs.js';
import { buildImage } from '../../src/image/build-image.js';
import { guestKernelCommandLine, readyLine } from '../../src/image/boot-contract.js';
import { defaultCacheDir, mountsBelow } from '../../src/image/cache-dir.js';
import { cpioNewc } from '../../src/image/cpio.js';
import { hasElfInterpreter } from '../../src/image/initramfs.js';
import { bzImagePayload, hasPvhEntry } from '../../src/image/kernel-image.js';
import { moduleLoadOrder, readDepmodTables } from '../../src/image/kernel-modules.js';
import { productionPackageDirs, symbioPayload } from '../../src/image/symbio-payload.js';
import { packageRoot } from '../../src/util/package-root.js';
import { runProcess } from '../../src/util/run-process.js';

const work = mkdtempSync(join(tmpdir(), 'symbio-image-parts-'));
t.teardown(() => rmSync(work, { recursive: true, force: true }));

/** A minimal newc reader: what the kernel's unpacker sees. */
function readNewc(buf: Buffer) {
  const out: { name: string; mode: number; data: Buffer; rdev: [number, number] }[] = [];
  let off = 0;
  const align = (n: number) => (n + 3) & ~3;
  for (;;) {
    const h = buf.toString('ascii', off, off + 110);
    if (!h.startsWith('070701')) throw new Error(`bad magic at ${off}`);
    const field = (i: number) => parseInt(h.slice(6 + i * 8, 14 + i * 8), 16);
    const namesize = field(11);
    const filesize = field(6);
    const name = buf.toString('utf8', off + 110, off + 110 + namesize - 1);
    const dataStart = align(off + 110 + namesize);
    if (name === 'TRAILER!!!') return out;
    out.push({ name, mode: field(1), data: buf.subarray(dataStart, dataStart + filesize), rdev: [field(9), field(10)] });
    off = align(dataStart + filesize);
  }
}

t.test('cpio newc: directories, files, symlinks, device nodes, 4-byte alignment', async (t) => {
  const archive = cpioNewc([
    { kind: 'dir', path: 'bin' },
    { kind: 'file', path: '/bin/x', data: Buffer.from('hello'), mode: 0o755 },
    { kind: 'symlink', path: 'bin/y', target: 'x' },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  ]);
  t.equal(archive.length % 4, 0);
  const entries = readNewc(archive);
  t.same(
    entries.map((e) => [e.name, e.mode.toString(8)]),
    [
      ['bin', '40755'],
      ['bin/x', '100755'],
      ['bin/y', '120777'],
      ['dev/console', '20600'],
    ],
  );
  t.equal(entries[1]!.data.toString(), 'hello');
  t.equal(entries[2]!.data.toString(), 'x');
  t.same(entries[3]!.rdev, [5, 1]);
  t.same(readNewc(gunzipSync(gzipSync(archive))).length, 4);
});

t.test('kernel modules: dependencies first, soft dependencies optional, built-ins skipped', async (t) => {
  const dir = join(work, 'modules');
  mkdirSync(dir);
  writeFileSync(
    join(dir, 'modules.dep'),
    [
      'kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko:',
      'kernel/drivers/virtio/virtio_ring.ko:',
      'kernel/drivers/virtio/virtio.ko:',
      'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko',
      'kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko',
      'kernel/fs/jbd2/jbd2.ko:',
      'kernel/lib/crc16.ko:',
      'kernel/arch/x86/crypto/crc32c-intel.ko:',
      'kernel/crypto/crc32c_generic.ko:',
      '',
    ].join('\n'),
  );
  writeFileSync(join(dir, 'modules.softdep'), 'softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n');
  writeFileSync(join(dir, 'modules.alias'), 'alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n');
  writeFileSync(join(dir, 'modules.builtin'), 'kernel/fs/overlayfs/overlay.ko\n');
  const order = moduleLoadOrder(readDepmodTables(dir), ['virtio_pci', 'virtio_blk', 'ext4', 'overlay']);
  const names = order.map((m) => (m.optional ? `${m.name}?` : m.name));
  t.same(names, ['virtio', 'virtio_ring', 'virtio_pci_modern_dev', 'virtio_pci', 'virtio_blk', 'crc32c_intel?', 'crc32c_generic?', 'jbd2', 'crc16', 'ext4']);
  t.equal(order.find((m) => m.name === 'crc32c_intel')!.path, 'kernel/arch/x86/crypto/crc32c-intel.ko');
  t.throws(() => moduleLoadOrder(readDepmodTables(dir), ['no_such_module']), /no_such_module is neither built in nor in modules.dep/);
  t.throws(() => readDepmodTables(join(work, 'nowhere')), /modules.dep is missing: depmod was not run/);
});

t.test('boot contract: the kernel command line', async (t) => {
  t.equal(
    guestKernelCommandLine({
      name: 'vm0',
      mgmt: { mac: '52:54:00:AA:00:01', address: '10.10.0.1/24' },
      ic: { mac: '52:54:00:aa:00:02', address: '10.20.0.1/24' },
      userMac: '52:54:00:aa:00:03',
      hosts: { vm0: '10.10.0.1', vm1: '10.10.0.2' },
      agent: true,
    }),
    'console=ttyS0 panic=-1 quiet symbio.name=vm0 symbio.mgmt=52:54:00:aa:00:01,10.10.0.1/24 symbio.ic=52:54:00:aa:00:02,10.20.0.1/24 ' +
      'symbio.user=52:54:00:aa:00:03 symbio.hosts=vm0:10.10.0.1,vm1:10.10.0.2 symbio.agent=1',
  );
  t.equal(guestKernelCommandLine({ name: 'a', verboseKernel: true, debug: true }), 'console=ttyS0 panic=-1 loglevel=7 symbio.name=a symbio.debug=1');
  t.throws(() => guestKernelCommandLine({ name: 'bad name' }), /not a valid hostname/);
  t.throws(() => guestKernelCommandLine({ name: 'a', mgmt: { mac: '52:54:00:aa:00', address: '10.0.0.1/24' } }), /not a MAC address/);
  t.throws(() => guestKernelCommandLine({ name: 'a', ic: { mac: '52:54:00:aa:00:01', address: '10.0.0.300/24' } }), /not an IPv4 address with a prefix/);
  t.throws(() => guestKernelCommandLine({ name: 'a', hosts: { b: 'x' } }), /not <hostname>:<IPv4 address>/);
  t.equal(readyLine('vm3'), 'symbio-guest-ready vm3');
});

t.test('apt mirror: the host’s for the suite, else deb.debian.org', async (t) => {
  const deb822 = parseDeb822Sources(
    [
      'Types: deb',
      '# a comment',
      'URIs: http://mirror.local/debian/',
      'Suites: bookworm bookworm-updates',
      'Components: main',
      '',
      'Types: deb',
      'URIs: http://security.debian.org/debian-security',
      'Suites: bookworm-security',
      '',
      'Types: deb-src',
      'URIs: http://src.example/debian',
      'Suites: bookworm',
    ].join('\n'),
  );
  t.equal(hostDebianMirror('bookworm', deb822), 'http://mirror.local/debian');
  t.equal(hostDebianMirror('trixie', deb822), DEFAULT_MIRROR);
  const oneLine = parseOneLineSources('# x\ndeb [arch=amd64 signed-by=/k.gpg] https://m.example/debian bookworm main\ndeb-src http://s/ bookworm main\n');
  t.equal(hostDebianMirror('bookworm', oneLine), 'https://m.example/debian');
  t.equal(hostDebianMirror('bookworm', parseOneLineSources('deb cdrom:[Debian]/ bookworm main')), DEFAULT_MIRROR, 'cdrom is not a mirror');
  t.equal(typeof hostDebianMirror('bookworm'), 'string', "this host's");
});

t.test('base spec: base packages always, user packages added, sorted, checked', async (t) => {
  const s = baseSpec('bookworm', 'http://m/debian', ['hello', 'openmpi-bin']);
  t.ok(s.packages.includes('hello') && s.packages.includes('linux-image-amd64'));
  t.equal(s.packages.filter((p) => p === 'openmpi-bin').length, 1);
  t.same(s.packages, [...s.packages].sort());
  t.throws(() => baseSpec('bookworm', 'http://m/debian', ['rm -rf']), /not a Debian package name/);
});

t.test('cache dir: SYMBIO_CACHE_DIR, else XDG_CACHE_HOME/symbio, else ~/.cache/symbio', async (t) => {
  const saved = { s: process.env.SYMBIO_CACHE_DIR, x: process.env.XDG_CACHE_HOME };
  t.teardown(() => {
    for (const [k, v] of [
      ['SYMBIO_CACHE_DIR', saved.s],
      ['XDG_CACHE_HOME', saved.x],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  process.env.SYMBIO_CACHE_DIR = '/srv/symbio-cache';
  process.env.XDG_CACHE_HOME = '/xdg';
  t.equal(defaultCacheDir(), '/srv/symbio-cache');
  delete process.env.SYMBIO_CACHE_DIR;
  t.equal(defaultCacheDir(), '/xdg/symbio');
  delete process.env.XDG_CACHE_HOME;
  t.match(defaultCacheDir(), /\/\.cache\/symbio$/);
  t.same(mountsBelow(work), [], 'nothing mounted in a fresh dir');
  t.ok(mountsBelow('/').includes('/'), 'the root is a mount');
});

t.test('ELF checks: static busybox vs dynamic node, PVH entry, bzImage payload', async (t) => {
  t.equal(hasElfInterpreter(readFileSync(process.execPath)), true, 'node is dynamically linked');
  t.equal(hasPvhEntry(readFileSync(process.execPath)), false);
  t.throws(() => bzImagePayload(Buffer.alloc(4096)), /not a Linux bzImage/);
});

t.test('symbio payload: built files and production dependencies only', async (t) => {
  const root = packageRoot();
  const payload = symbioPayload(root);
  const rels = new Set(payload.map((f) => f.rel));
  for (const p of ['package.json', 'bin/symbio.js', 'dist/src/index.js', 'build/Release/symbio.node', 'build/Release/libsymbio-shim.so', 'scripts/guest/symbio-init']) {
    t.ok(rels.has(p), p);
  }
  t.notOk([...rels].some((r) => r.includes('-asan')), 'no ASan build');
  t.notOk([...rels].some((r) => r.startsWith('node_modules/typescript/') || r.startsWith('node_modules/tap/')), 'no dev dependencies');
  t.notOk([...rels].some((r) => r.startsWith('src/') || r.startsWith('test/')), 'no sources or tests');
  t.ok([...rels].some((r) => r.startsWith('node_modules/pino/')), 'production dependencies');

  // the same set npm itself reports
  const npm = await runProcess('npm', ['ls', '--omit=dev', '--all', '--parseable'], { env: { npm_config_loglevel: 'silent' } });
  const fromNpm = npm.stdout.split('\n').filter((l) => l && l !== root).sort();
  t.same(productionPackageDirs(root), fromNpm);

  const unbuilt = join(work, 'unbuilt');
  mkdirSync(unbuilt);
  writeFileSync(join(unbuilt, 'package.json'), JSON.stringify({ name: 'symbio' }));
  t.throws(() => symbioPayload(unbuilt), /dist \(the compiled TypeScript\) is missing: run npm run build first/);
});

t.test('building needs root, and says so', async (t) => {
  const realGetuid = process.getuid;
  process.getuid = () => 1000;
  t.teardown(() => {
    process.getuid = realGetuid;
  });
  // an empty cache: nothing to answer from, so it would have to build
  await t.rejects(buildImage({ cacheDir: join(work, 'cache-nonroot') }), /building the guest image needs root/);
});
