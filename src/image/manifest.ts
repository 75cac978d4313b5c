/**
 * image.json (the final image) and base.json (the debootstrap layer): what
 * was built from what. Each is written last, atomically, inside its
 * directory before that directory is renamed into place: a directory without
 * it is incomplete and gets rebuilt.
 */
import { readFileSync } from 'node:fs';
import { writeFileAtomic } from '../util/files.js';
import { join } from 'node:path';
import { z } from 'zod';

const sha256 = z.string().regex(/^[0-9a-f]{64}$/);

export const baseManifestSchema = z.object({
  format: z.literal(1),
  id: z.string(),
  created: z.string(),
  suite: z.string(),
  mirror: z.string(),
  packages: z.array(z.string()),
  recipeVersion: z.number(),
  kernelVersion: z.string(),
  debootstrapSeconds: z.number(),
});
export type BaseManifest = z.infer<typeof baseManifestSchema>;

export const imageManifestSchema = z.object({
  format: z.literal(1),
  id: z.string(),
  created: z.string(),
  baseId: z.string(),
  suite: z.string(),
  mirror: z.string(),
  packages: z.array(z.string()),
  kernelVersion: z.string(),
  symbioVersion: z.string(),
  nodeVersion: z.string(),
  builderVersion: z.number(),
  /** the modules /init loads, in order ("?" marks optional ones) */
  initramfsModules: z.array(z.string()),
  files: z.object({
    rootDisk: z.object({ name: z.string(), bytes: z.number(), usedBytes: z.number(), sha256 }),
    /** pvh: an uncompressed ELF vmlinux that QEMU enters directly; bzimage: through the firmware */
    kernel: z.object({ name: z.string(), bytes: z.number(), sha256, boot: z.enum(['pvh', 'bzimage']) }),
    initrd: z.object({ name: z.string(), bytes: z.number(), sha256 }),
  }),
  sshKey: z.object({ name: z.string(), publicKey: z.string() }),
  buildSeconds: z.number(),
});
export type ImageManifest = z.infer<typeof imageManifestSchema>;

export const IMAGE_MANIFEST = 'image.json';
export const BASE_MANIFEST = 'base.json';

/** The manifest in `dir`, or null when missing or not valid (an incomplete build). */
export function readManifest<T>(dir: string, name: string, schema: z.ZodType<T>): T | null {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, name), 'utf8'));
  } catch {
    return null;
  }
  const r = schema.safeParse(raw);
  return r.success ? r.data : null;
}

export function writeManifest(dir: string, name: string, manifest: object): void {
  writeFileAtomic(join(dir, name), JSON.stringify(manifest, null, 2) + '\n');
}
