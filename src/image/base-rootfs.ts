/**
 * Layer 1 of the guest image: a Debian root file system made by debootstrap
 * (minbase + the packages below), trimmed, with depmod run for its kernel.
 * Cached under <cache>/base/<id>, id = hash(suite, mirror, packages, recipe
 * version), so changing symbio never re-runs debootstrap (~1.5 min); only a
 * different package list, suite or mirror does.
 */
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { runProcess } from '../util/run-process.js';
import { mountsBelow, removeTree, type CacheLayout } from './cache-dir.js';
import { sha256Text } from './file-hash.js';
import { pathInRootfs, rootfsModulesDir } from './kernel-modules.js';
import { BASE_MANIFEST, baseManifestSchema, readManifest, writeManifest, type BaseManifest } from './manifest.js';

/**
 * Always in the guest. The kernel is Debian's (the host has none to lend);
 * tini is PID 1 (reaps orphans, forwards signals); busybox-static is the
 * initramfs's only program; kmod for modprobe after switch-root; openssh for
 * mpirun between guests and for the host.
 */
export const BASE_PACKAGES: readonly string[] = [
  'busybox-static',
  'iproute2',
  'kmod',
  'libstdc++6', // the host's node binary links against it
  'linux-image-amd64',
  'openmpi-bin',
  'openssh-client',
  'openssh-server',
  'procps',
  'tini',
];

/** Bump when what buildBaseRootfs does changes (it is part of the base id). */
export const BASE_RECIPE_VERSION = 1;

/** Kernel module trees of hardware a QEMU guest never has: ~150 MB less to copy and format. */
const UNNEEDED_MODULE_DIRS = [
  'kernel/sound',
  'kernel/drivers/gpu',
  'kernel/drivers/media',
  'kernel/drivers/net/wireless',
  'kernel/drivers/bluetooth',
  'kernel/drivers/staging',
  'kernel/drivers/iio',
  'kernel/drivers/comedi',
  'kernel/net/wireless',
  'kernel/net/mac80211',
  'kernel/net/bluetooth',
];

/** Left by debootstrap and never used by a guest: downloaded .debs, apt lists, docs. */
const UNNEEDED_PATHS = ['var/cache/apt/archives', 'var/lib/apt/lists', 'usr/share/doc', 'usr/share/man', 'usr/share/info', 'usr/share/locale'];

export interface BaseSpec {
  readonly suite: string;
  readonly mirror: string;
  /** base + user packages, sorted, without duplicates */
  readonly packages: readonly string[];
}

export interface BaseRootfs {
  readonly id: string;
  readonly dir: string;
  readonly rootfs: string;
  readonly manifest: BaseManifest;
}

export class ImageBuildError extends Error {}

export function baseSpec(suite: string, mirror: string, userPackages: readonly string[]): BaseSpec {
  for (const p of userPackages) {
    if (!/^[a-z0-9][a-z0-9+.-]+$/.test(p)) throw new ImageBuildError(`'${p}' is not a Debian package name`);
  }
  return { suite, mirror, packages: [...new Set([...BASE_PACKAGES, ...userPackages])].sort() };
}

export const baseId = (spec: BaseSpec): string =>
  sha256Text(JSON.stringify({ recipe: BASE_RECIPE_VERSION, suite: spec.suite, mirror: spec.mirror, packages: spec.packages })).slice(0, 16);

/** The cached base for `spec`, or null. */
export function findBaseRootfs(layout: CacheLayout, spec: BaseSpec): BaseRootfs | null {
  const id = baseId(spec);
  const dir = join(layout.baseDir, id);
  const manifest = readManifest(dir, BASE_MANIFEST, baseManifestSchema);
  return manifest ? { id, dir, rootfs: join(dir, 'rootfs'), manifest } : null;
}

/** The one kernel of a rootfs: the version that has both modules and a vmlinuz. */
export function rootfsKernelVersion(rootfs: string): string {
  const modules = existsSync(join(rootfs, 'lib', 'modules')) ? pathInRootfs(rootfs, join('lib', 'modules')) : null;
  const versions = modules
    ? readdirSync(modules).filter((v) => existsSync(join(modules, v, 'modules.dep')) && existsSync(join(rootfs, 'boot', `vmlinuz-${v}`)))
    : [];
  if (versions.length !== 1) {
    throw new ImageBuildError(`expected one kernel in ${rootfs} (lib/modules/<v> with boot/vmlinuz-<v>), found ${versions.length ? versions.join(', ') : 'none'}`);
  }
  return versions[0]!;
}

function tail(path: string, lines: number): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** debootstrap's "I: <Verb> ..." lines, reduced to the phase a person cares about. */
function debootstrapPhase(line: string): string | null {
  const m = /^I: (\w+)/.exec(line);
  switch (m?.[1]) {
    case 'Retrieving':
    case 'Validating':
      return 'downloading packages';
    case 'Extracting':
      return 'extracting the essential packages';
    case 'Unpacking':
      return 'unpacking packages';
    case 'Configuring':
      return 'configuring packages';
    case 'Base':
      return 'done';
    default:
      return null;
  }
}

async function debootstrap(spec: BaseSpec, target: string, logPath: string, log: Logger, progress: (step: string) => void): Promise<void> {
  const args = ['--variant=minbase', `--include=${spec.packages.join(',')}`, spec.suite, target, spec.mirror];
  log.info({ cmd: ['debootstrap', ...args] }, 'running debootstrap');
  const out = createWriteStream(logPath);
  // INITRD=No: the kernel's postinst would otherwise spend ~20 s making a
  // generic initramfs we do not use (we make our own, see initramfs.ts)
  const child = spawn('debootstrap', args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, INITRD: 'No', DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' },
  });
  let phase = '';
  let count = 0;
  let partial = '';
  const onData = (d: Buffer) => {
    out.write(d);
    const text = partial + d.toString('utf8');
    const lines = text.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      const p = debootstrapPhase(line);
      if (!p) continue;
      count++;
      if (p !== phase) {
        phase = p;
        progress(`base rootfs: debootstrap ${p}`);
      }
    }
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', (err) =>
      reject(new ImageBuildError(`cannot run debootstrap: ${err.message} (install it: apt-get install debootstrap, or run scripts/ensure.sh)`)),
    );
    child.once('close', (c) => resolve(c));
  });
  await new Promise<void>((r) => out.end(() => r()));
  log.debug({ steps: count }, 'debootstrap finished');
  if (code !== 0) {
    throw new ImageBuildError(`debootstrap ${spec.suite} from ${spec.mirror} failed (exit ${code}); the end of its log:\n${tail(logPath, 40)}`);
  }
}

/** Remove what a guest never uses and re-run depmod for what is left. */
async function trimRootfs(rootfs: string, kernelVersion: string): Promise<void> {
  for (const p of UNNEEDED_PATHS) {
    const dir = join(rootfs, p);
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir)) if (name !== 'partial' && name !== 'lock') rmSync(join(dir, name), { recursive: true, force: true });
  }
  const modules = rootfsModulesDir(rootfs, kernelVersion);
  for (const d of UNNEEDED_MODULE_DIRS) rmSync(join(modules, d), { recursive: true, force: true });
  for (const f of readdirSync(join(rootfs, 'boot'))) if (f.startsWith('initrd.img')) rmSync(join(rootfs, 'boot', f), { force: true });
  // debootstrap copies the host's; the guest's are written at boot
  rmSync(join(rootfs, 'etc', 'resolv.conf'), { force: true });
  writeFileSync(join(rootfs, 'etc', 'hostname'), 'symbio-guest\n');
  const r = await runProcess('chroot', [rootfs, '/sbin/depmod', '-a', kernelVersion]);
  if (r.code !== 0) throw new ImageBuildError(`depmod for kernel ${kernelVersion} in ${rootfs} failed: ${r.stderr.trim()}`);
}

/**
 * Build the base rootfs for `spec` into <cache>/base/<id> (the caller holds
 * the cache lock). Built in <cache>/tmp and renamed into place when
 * complete; on failure nothing of it remains.
 */
export async function buildBaseRootfs(layout: CacheLayout, spec: BaseSpec, log: Logger, progress: (step: string) => void): Promise<BaseRootfs> {
  const id = baseId(spec);
  const work = join(layout.tmpDir, `base-${id}-${process.pid}`);
  const rootfs = join(work, 'rootfs');
  const logPath = join(work, 'debootstrap.log');
  await removeTree(work);
  mkdirSync(work, { recursive: true });
  const t0 = performance.now();
  try {
    progress(`base rootfs: debootstrap ${spec.suite} from ${spec.mirror} (${spec.packages.length} packages requested; ~1.5 min)`);
    await debootstrap(spec, rootfs, logPath, log, progress);
    const debootstrapSeconds = (performance.now() - t0) / 1000;
    for (const m of mountsBelow(rootfs)) await runProcess('umount', ['--lazy', m]);
    const kernelVersion = rootfsKernelVersion(rootfs);
    progress('base rootfs: trimming and running depmod');
    await trimRootfs(rootfs, kernelVersion);
    const manifest: BaseManifest = {
      format: 1,
      id,
      created: new Date().toISOString(),
      suite: spec.suite,
      mirror: spec.mirror,
      packages: [...spec.packages],
      recipeVersion: BASE_RECIPE_VERSION,
      kernelVersion,
      debootstrapSeconds: Math.round(debootstrapSeconds * 10) / 10,
    };
    writeManifest(work, BASE_MANIFEST, manifest);
    const dir = join(layout.baseDir, id);
    await removeTree(dir); // an incomplete one (no base.json) from an older symbio
    renameSync(work, dir);
    log.info({ id, kernelVersion, seconds: manifest.debootstrapSeconds }, 'base rootfs built');
    return { id, dir, rootfs: join(dir, 'rootfs'), manifest };
  } catch (err) {
    await removeTree(work);
    throw err;
  }
}
