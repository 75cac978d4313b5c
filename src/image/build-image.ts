/**
 * buildImage(): a bootable Debian guest image for the local virtual cluster,
 * cached in two layers (see docs/guest-image.md):
 *
 *   1. base rootfs (debootstrap, ~1.5 min)  id = hash(suite, mirror, packages, recipe)
 *   2. final image (~15 s)                  id = hash(base id, symbio's files, node,
 *                                                     scripts/guest, builder version)
 *
 * so a change to symbio rebuilds only layer 2. When nothing changed it
 * answers from the cache in well under a second (file hashes are memoized
 * by stat). Builders serialize on a lock in the cache dir: concurrent
 * callers (other test files, other processes) wait and then use what the
 * first one built.
 */
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { componentLogger, type Logger } from '../log.js';
import { packageRoot } from '../util/package-root.js';
import { packageVersion } from '../util/version.js';
import { hostDebianMirror } from './apt-mirror.js';
import { baseId, baseSpec, buildBaseRootfs, findBaseRootfs, ImageBuildError, type BaseSpec } from './base-rootfs.js';
import { cacheLayout, defaultCacheDir, ensureCacheDirs, removeTree, withCacheLock, type CacheLayout } from './cache-dir.js';
import { FileHashMemo, sha256Text } from './file-hash.js';
import { buildFinalImage, IMAGE_BUILDER_VERSION, IMAGE_FILES } from './final-image.js';
import { BASE_MANIFEST, baseManifestSchema, IMAGE_MANIFEST, imageManifestSchema, readManifest, type ImageManifest } from './manifest.js';
import { symbioPayload, type PayloadFile } from './symbio-payload.js';

export { defaultCacheDir } from './cache-dir.js';
export { ImageBuildError } from './base-rootfs.js';
export { PayloadError } from './symbio-payload.js';
export type { ImageManifest } from './manifest.js';

export interface ImageBuildOptions {
  /** default: defaultCacheDir() */
  cacheDir?: string;
  /** Debian packages to add to the base (which always has BASE_PACKAGES) */
  packages?: readonly string[];
  /** default: the host's apt mirror for the suite, else http://deb.debian.org/debian */
  mirror?: string;
  /** default: bookworm */
  suite?: string;
  /** rebuild the final image even if it is cached (the base layer is reused) */
  force?: boolean;
  log?: Logger;
  onProgress?: (step: string) => void;
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  /** raw ext4; attach read-only (many VMs share it) */
  rootDisk: string;
  /** private key (0600) that logs in as root to every guest of this image */
  sshKey: string;
  kernelVersion: string;
  /** content hash of everything the image is made from */
  id: string;
  manifest: ImageManifest;
}

export const DEFAULT_SUITE = 'bookworm';

/** Everything an image is made from, and its id; computed without building anything. */
export interface ImagePlan {
  readonly id: string;
  readonly layout: CacheLayout;
  readonly base: BaseSpec;
  readonly baseId: string;
  readonly payload: readonly PayloadFile[];
  readonly guestScriptsDir: string;
  readonly nodeBinary: string;
  readonly symbioVersion: string;
}

export interface ImagePlanOptions extends ImageBuildOptions {
  /** tests: boot scripts from elsewhere than scripts/guest/ */
  guestScriptsDir?: string;
}

const GUEST_SCRIPTS = ['initramfs-init', 'symbio-init', 'sshd_config', 'ssh_config'] as const;

/** Work out the image id for these options (fast: file hashes come from the memo). */
export async function planImage(o: ImagePlanOptions = {}): Promise<ImagePlan> {
  const layout = cacheLayout(o.cacheDir ?? defaultCacheDir());
  const suite = o.suite ?? DEFAULT_SUITE;
  const base = baseSpec(suite, (o.mirror ?? hostDebianMirror(suite)).replace(/\/+$/, ''), o.packages ?? []);
  const root = packageRoot();
  const guestScriptsDir = o.guestScriptsDir ?? join(root, 'scripts', 'guest');
  for (const s of GUEST_SCRIPTS) {
    if (!existsSync(join(guestScriptsDir, s))) throw new ImageBuildError(`${join(guestScriptsDir, s)} is missing (the guest's boot scripts)`);
  }
  const payload = symbioPayload(root);
  try {
    mkdirSync(layout.root, { recursive: true });
  } catch {
    // a cache someone else filled, read-only to us: hashes are then not remembered
  }
  const memo = new FileHashMemo(layout.hashMemo);
  const lines: string[] = [];
  for (const f of payload) lines.push(`${f.kind} ${f.mode.toString(8)} ${f.rel} ${f.kind === 'symlink' ? f.target : await memo.sha256(f.abs)}`);
  for (const s of GUEST_SCRIPTS) lines.push(`guest ${s} ${await memo.sha256(join(guestScriptsDir, s))}`);
  lines.push(`node ${await memo.sha256(process.execPath)}`);
  memo.save();
  const bid = baseId(base);
  const id = sha256Text(`symbio-image ${IMAGE_BUILDER_VERSION}\nbase ${bid}\n${lines.join('\n')}\n`).slice(0, 16);
  return { id, layout, base, baseId: bid, payload, guestScriptsDir, nodeBinary: process.execPath, symbioVersion: packageVersion() };
}

/** The cached image `id`, if complete: its image.json is valid and its files are there with the recorded sizes. */
function cachedImage(layout: CacheLayout, id: string): GuestImage | null {
  const dir = join(layout.imagesDir, id);
  const manifest = readManifest(dir, IMAGE_MANIFEST, imageManifestSchema);
  if (!manifest || manifest.id !== id) return null;
  const image: GuestImage = {
    dir,
    kernel: join(dir, manifest.files.kernel.name),
    initrd: join(dir, IMAGE_FILES.initrd),
    rootDisk: join(dir, IMAGE_FILES.rootDisk),
    sshKey: join(dir, IMAGE_FILES.sshKey),
    kernelVersion: manifest.kernelVersion,
    id,
    manifest,
  };
  const sizes: [string, number][] = [
    [image.rootDisk, manifest.files.rootDisk.bytes],
    [image.kernel, manifest.files.kernel.bytes],
    [image.initrd, manifest.files.initrd.bytes],
  ];
  try {
    if (sizes.some(([p, bytes]) => statSync(p).size !== bytes) || !existsSync(image.sshKey)) return null;
  } catch {
    return null;
  }
  markUsed(dir);
  return image;
}

const LAST_USED = 'last-used';

/** Pruning goes by last use: touch the image's stamp (a cache we cannot write to is fine). */
function markUsed(dir: string): void {
  try {
    const now = new Date();
    closeSync(openSync(join(dir, LAST_USED), 'a'));
    utimesSync(join(dir, LAST_USED), now, now);
  } catch {
    // read-only cache
  }
}

function lastUsedMs(dir: string, created: string): number {
  try {
    return statSync(join(dir, LAST_USED)).mtimeMs;
  } catch {
    return Date.parse(created);
  }
}

function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new ImageBuildError(
      'building the guest image needs root (debootstrap, and a root file system with root-owned files and device nodes): ' +
        'run this as root once, or point SYMBIO_CACHE_DIR at a cache that root has filled',
    );
  }
  if (process.arch !== 'x64') throw new ImageBuildError(`the guest image is amd64 and gets this host's node binary: needs an x86-64 host (this is ${process.arch})`);
}

/** An image used this recently is never pruned: a test run or a cluster may still start VMs from it. */
const PRUNE_GRACE_MS = 15 * 60_000;

/**
 * Keep the `keep` most recently used complete images, `also`, and any used
 * in the last PRUNE_GRACE_MS; keep the bases those use plus the newest
 * `keep` bases; remove the rest, and incomplete ones. VMs already running
 * from a removed image keep working (their files stay open).
 */
async function pruneCache(layout: CacheLayout, also: string, log: Logger, keep = 2): Promise<void> {
  const listDirs = (d: string) => (existsSync(d) ? readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name) : []);
  const images = listDirs(layout.imagesDir).map((id) => {
    const m = readManifest(join(layout.imagesDir, id), IMAGE_MANIFEST, imageManifestSchema);
    return { id, m, used: m ? lastUsedMs(join(layout.imagesDir, id), m.created) : 0 };
  });
  const complete = images.filter((x) => x.m).sort((a, b) => b.used - a.used);
  const recent = complete.filter((x) => Date.now() - x.used < PRUNE_GRACE_MS).map((x) => x.id);
  const kept = new Set([also, ...recent, ...complete.slice(0, keep).map((x) => x.id)]);
  const usedBases = new Set(images.filter((x) => kept.has(x.id) && x.m).map((x) => x.m!.baseId));
  for (const x of images) {
    if (kept.has(x.id)) continue;
    log.info({ id: x.id }, 'removing an old guest image');
    await removeTree(join(layout.imagesDir, x.id));
  }
  const bases = listDirs(layout.baseDir).map((id) => ({ id, m: readManifest(join(layout.baseDir, id), BASE_MANIFEST, baseManifestSchema) }));
  const newestBases = bases
    .filter((x) => x.m)
    .sort((a, b) => (a.m!.created < b.m!.created ? 1 : -1))
    .slice(0, keep)
    .map((x) => x.id);
  for (const x of bases) {
    if (usedBases.has(x.id) || newestBases.includes(x.id)) continue;
    log.info({ id: x.id }, 'removing an old base rootfs');
    await removeTree(join(layout.baseDir, x.id));
  }
}

/**
 * The guest image for these options: from the cache when its inputs are
 * unchanged, else built (as root). Throws ImageBuildError / PayloadError
 * with what was wrong and what to do.
 */
export async function buildImage(o: ImageBuildOptions = {}): Promise<GuestImage> {
  const log = o.log ?? componentLogger('image');
  const progress = (step: string) => {
    log.debug(step);
    o.onProgress?.(step);
  };
  const plan = await planImage(o);
  const hit = o.force ? null : cachedImage(plan.layout, plan.id);
  if (hit) return hit;

  requireRoot();
  ensureCacheDirs(plan.layout);
  return withCacheLock(
    plan.layout.lock,
    async () => {
      // someone else may have built it while we waited
      const built = o.force ? null : cachedImage(plan.layout, plan.id);
      if (built) {
        progress(`image: ${plan.id} was built meanwhile by another builder`);
        return built;
      }
      // we hold the lock: anything in tmp/ is left from a build that died
      for (const name of readdirSync(plan.layout.tmpDir)) await removeTree(join(plan.layout.tmpDir, name));

      const t0 = performance.now();
      let base = findBaseRootfs(plan.layout, plan.base);
      if (base) progress(`base rootfs: cached (${base.id})`);
      else base = await buildBaseRootfs(plan.layout, plan.base, log, progress);
      const t1 = performance.now();
      const { manifest } = await buildFinalImage(plan.layout, {
        id: plan.id,
        base,
        payload: plan.payload,
        guestScriptsDir: plan.guestScriptsDir,
        nodeBinary: plan.nodeBinary,
        symbioVersion: plan.symbioVersion,
        log,
        progress,
      });
      await pruneCache(plan.layout, plan.id, log);
      const image = cachedImage(plan.layout, plan.id);
      if (!image) throw new ImageBuildError(`image ${plan.id} was built but is not complete in ${plan.layout.imagesDir}: was it removed meanwhile?`);
      progress(
        `image: ${plan.id} ready (base ${((t1 - t0) / 1000).toFixed(1)} s, image ${manifest.buildSeconds} s, root.img ${(manifest.files.rootDisk.bytes / 2 ** 20).toFixed(0)} MiB)`,
      );
      return image;
    },
    { onWait: () => progress(`image: waiting for another builder (lock ${plan.layout.lock})`) },
  );
}
