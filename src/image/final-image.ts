/**
 * Layer 2 of the guest image: the base rootfs plus symbio, node, the boot
 * scripts and ssh keys, written into a raw ext4 file with `mkfs.ext4 -d` (no
 * mount, no loop device), beside the kernel and symbio's own initramfs.
 *
 * The staging tree is a hard-link copy of the base (`cp -al`: 0.4 s against
 * 3.5 s for `cp -a` of ~600 MB here). The one rule that makes that safe:
 * never write into a file that came from the base; replace it (unlink, then
 * create), as put() and putCopy() do, so the base stays as debootstrap left it.
 */
import { chmodSync, copyFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Logger } from '../log.js';
import { runProcess } from '../util/run-process.js';
import { ImageBuildError, type BaseRootfs } from './base-rootfs.js';
import { removeTree, type CacheLayout } from './cache-dir.js';
import { sha256File } from './file-hash.js';
import { buildInitramfs } from './initramfs.js';
import { pvhKernelFromBzImage } from './kernel-image.js';
import { IMAGE_MANIFEST, writeManifest, type ImageManifest } from './manifest.js';
import type { PayloadFile } from './symbio-payload.js';

/** Bump when what the final image contains or how it is made changes (it is part of the image id). */
export const IMAGE_BUILDER_VERSION = 1;

export const IMAGE_FILES = { rootDisk: 'root.img', initrd: 'initrd.img', sshKey: 'id_ed25519' } as const;
/** the kernel: uncompressed for PVH boot when possible (see kernel-image.ts), else the bzImage */
export const KERNEL_FILES = { pvh: 'vmlinux', bzImage: 'vmlinuz' } as const;

/** Where symbio lives in the guest. */
export const GUEST_SYMBIO_DIR = 'opt/symbio';

export interface FinalImageInput {
  readonly id: string;
  readonly base: BaseRootfs;
  readonly payload: readonly PayloadFile[];
  readonly guestScriptsDir: string;
  readonly nodeBinary: string;
  readonly symbioVersion: string;
  readonly log: Logger;
  readonly progress: (step: string) => void;
}

async function run(cmd: string, args: readonly string[], what: string): Promise<void> {
  const r = await runProcess(cmd, args);
  if (r.code !== 0) throw new ImageBuildError(`${what} failed (${cmd} exit ${r.code ?? r.signal}): ${r.stderr.trim() || r.stdout.trim()}`);
}

/** Replace (never write through) a file of the staging tree. */
function put(stage: string, rel: string, data: string | Buffer, mode: number): void {
  const p = join(stage, rel);
  mkdirSync(dirname(p), { recursive: true });
  rmSync(p, { force: true });
  writeFileSync(p, data, { mode });
  chmodSync(p, mode);
}

function putCopy(stage: string, rel: string, src: string, mode: number): void {
  const p = join(stage, rel);
  mkdirSync(dirname(p), { recursive: true });
  rmSync(p, { force: true });
  copyFileSync(src, p);
  chmodSync(p, mode);
}

function putSymlink(stage: string, rel: string, target: string): void {
  const p = join(stage, rel);
  mkdirSync(dirname(p), { recursive: true });
  rmSync(p, { force: true });
  symlinkSync(target, p);
}

/** Bytes the tree takes on ext4 (4 KiB blocks) and how many inodes. */
function treeUsage(dir: string): { bytes: number; inodes: number } {
  let bytes = 4096;
  let inodes = 1;
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, ent.name);
    inodes++;
    if (ent.isDirectory()) {
      const sub = treeUsage(p);
      bytes += sub.bytes;
      inodes += sub.inodes - 1;
    } else if (ent.isFile()) {
      bytes += Math.ceil(lstatSync(p).size / 4096) * 4096;
    }
  }
  return { bytes, inodes };
}

/** Puts symbio, node, the boot scripts and keys into the staging tree. */
async function populate(stage: string, work: string, i: FinalImageInput): Promise<void> {
  const guest = (name: string) => join(i.guestScriptsDir, name);

  // symbio under /opt/symbio, node beside it, and the commands on PATH
  for (const f of i.payload) {
    const rel = join(GUEST_SYMBIO_DIR, f.rel);
    if (f.kind === 'symlink') putSymlink(stage, rel, f.target!);
    else putCopy(stage, rel, f.abs, f.mode);
  }
  putCopy(stage, 'usr/local/bin/node', i.nodeBinary, 0o755);
  putSymlink(stage, 'usr/local/bin/symbio', `/${GUEST_SYMBIO_DIR}/bin/symbio.js`);
  putSymlink(stage, 'usr/local/bin/symbio-mpirun', `/${GUEST_SYMBIO_DIR}/bin/symbio-mpirun.js`);

  // boot
  putCopy(stage, 'sbin/symbio-init', guest('symbio-init'), 0o755);
  put(stage, 'etc/symbio-image', `id=${i.id}\nsymbio=${i.symbioVersion}\nnode=${process.version}\n`, 0o644);

  // ssh: a host key of this image (Debian's postinst made some at debootstrap;
  // replace them so no two images share one), config drop-ins, root's keys
  for (const name of readdirSync(join(stage, 'etc', 'ssh'))) {
    if (name.startsWith('ssh_host_')) rmSync(join(stage, 'etc', 'ssh', name), { force: true });
  }
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `symbio-guest-host-${i.id}`, '-f', join(stage, 'etc/ssh/ssh_host_ed25519_key')], 'making the guest host key');
  putCopy(stage, 'etc/ssh/sshd_config.d/symbio.conf', guest('sshd_config'), 0o644);
  putCopy(stage, 'etc/ssh/ssh_config.d/symbio.conf', guest('ssh_config'), 0o644);
  const key = join(work, IMAGE_FILES.sshKey);
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `symbio-image-${i.id}`, '-f', key], 'making the image ssh key');
  chmodSync(key, 0o600);
  const pub = readFileSync(`${key}.pub`);
  mkdirSync(join(stage, 'root', '.ssh'), { recursive: true, mode: 0o700 });
  chmodSync(join(stage, 'root', '.ssh'), 0o700);
  put(stage, 'root/.ssh/authorized_keys', pub, 0o600);
  // the same key as root's own: mpirun in one guest reaches the others
  putCopy(stage, 'root/.ssh/id_ed25519', key, 0o600);
  put(stage, 'root/.ssh/id_ed25519.pub', pub, 0o644);
}

export interface BuiltFinalImage {
  readonly dir: string;
  readonly manifest: ImageManifest;
}

/**
 * Build image `i.id` into <cache>/images/<id> (the caller holds the cache
 * lock). Built in <cache>/tmp, renamed into place with image.json inside
 * when complete; on failure nothing of it remains.
 */
export async function buildFinalImage(layout: CacheLayout, i: FinalImageInput): Promise<BuiltFinalImage> {
  const t0 = performance.now();
  const work = join(layout.tmpDir, `image-${i.id}-${process.pid}`);
  const stage = join(work, 'stage');
  const kver = i.base.manifest.kernelVersion;
  const step = (s: string) => {
    i.progress(`image: ${s}`);
    i.log.debug({ seconds: Math.round(performance.now() - t0) / 1000 }, s);
  };
  await removeTree(work);
  mkdirSync(work, { recursive: true });
  try {
    step('staging a copy of the base rootfs');
    await run('cp', ['-al', i.base.rootfs, stage], 'hard-link copy of the base rootfs');
    step('adding symbio, node, the boot scripts and ssh keys');
    await populate(stage, work, i);

    const used = treeUsage(stage);
    const sizeMiB = Math.ceil((used.bytes * 1.3) / 2 ** 20) + 32;
    const inodes = Math.ceil(used.inodes * 1.3) + 4096;
    step(`writing ${IMAGE_FILES.rootDisk} (ext4, ${sizeMiB} MiB, ${(used.bytes / 2 ** 20).toFixed(0)} MiB used)`);
    const rootDisk = join(work, IMAGE_FILES.rootDisk);
    // no journal (nobody writes it), no reserved blocks; -d copies the tree, owners and modes included
    await run(
      'mkfs.ext4',
      ['-q', '-F', '-L', 'symbio-root', '-O', '^has_journal', '-m', '0', '-N', String(inodes), '-d', stage, rootDisk, `${sizeMiB}M`],
      `mkfs.ext4 -d ${stage}`,
    );
    chmodSync(rootDisk, 0o444);
    await removeTree(stage);

    step('kernel and initramfs');
    const bzImage = readFileSync(join(i.base.rootfs, 'boot', `vmlinuz-${kver}`));
    const pvh = await pvhKernelFromBzImage(bzImage);
    const kernel = join(work, pvh ? KERNEL_FILES.pvh : KERNEL_FILES.bzImage);
    writeFileSync(kernel, pvh ?? bzImage, { mode: 0o644 });
    if (!pvh) i.log.warn({ kernelVersion: kver }, 'the kernel has no PVH entry: QEMU boots the bzImage (~5 s slower under TCG)');
    const initramfs = buildInitramfs({ rootfs: i.base.rootfs, kernelVersion: kver, initScript: readFileSync(join(i.guestScriptsDir, 'initramfs-init')) });
    const initrd = join(work, IMAGE_FILES.initrd);
    writeFileSync(initrd, initramfs.data, { mode: 0o644 });

    step('checksums');
    const [rootSha, kernelSha, initrdSha] = await Promise.all([sha256File(rootDisk), sha256File(kernel), sha256File(initrd)]);
    const manifest: ImageManifest = {
      format: 1,
      id: i.id,
      created: new Date().toISOString(),
      baseId: i.base.id,
      suite: i.base.manifest.suite,
      mirror: i.base.manifest.mirror,
      packages: i.base.manifest.packages,
      kernelVersion: kver,
      symbioVersion: i.symbioVersion,
      nodeVersion: process.version,
      builderVersion: IMAGE_BUILDER_VERSION,
      initramfsModules: initramfs.modules.map((m) => (m.optional ? `${m.name}?` : m.name)),
      files: {
        rootDisk: { name: IMAGE_FILES.rootDisk, bytes: lstatSync(rootDisk).size, usedBytes: used.bytes, sha256: rootSha! },
        kernel: { name: basename(kernel), bytes: lstatSync(kernel).size, sha256: kernelSha!, boot: pvh ? 'pvh' : 'bzimage' },
        initrd: { name: IMAGE_FILES.initrd, bytes: initramfs.data.length, sha256: initrdSha! },
      },
      sshKey: { name: IMAGE_FILES.sshKey, publicKey: readFileSync(join(work, `${IMAGE_FILES.sshKey}.pub`), 'utf8').trim() },
      buildSeconds: Math.round((performance.now() - t0) / 100) / 10,
    };
    writeManifest(work, IMAGE_MANIFEST, manifest);

    const dir = join(layout.imagesDir, i.id);
    // a forced rebuild replaces the old one: out of the way first (VMs that
    // run from it keep their open files), then the new one in
    const old = join(layout.tmpDir, `replaced-${i.id}-${process.pid}`);
    try {
      renameSync(dir, old);
    } catch {
      // there was none
    }
    renameSync(work, dir);
    await removeTree(old);
    i.log.info({ id: i.id, seconds: manifest.buildSeconds, rootMiB: Math.round(manifest.files.rootDisk.bytes / 2 ** 20) }, 'guest image built');
    return { dir, manifest };
  } catch (err) {
    await removeTree(work);
    throw err;
  }
}
