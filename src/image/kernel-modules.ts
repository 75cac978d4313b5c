/**
 * Which kernel modules the initramfs must load, and in what order, computed
 * from the kernel's own depmod output (modules.dep, modules.softdep,
 * modules.alias, modules.builtin) rather than a hand-kept list, so a new
 * Debian kernel with reshuffled dependencies still boots.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { basename, join, sep } from 'node:path';

export interface ModuleToLoad {
  /** normalized name: virtio_pci */
  readonly name: string;
  /** relative to /lib/modules/<kver>: kernel/drivers/virtio/virtio_pci.ko */
  readonly path: string;
  /** soft dependencies may fail to load (crc32c_intel on a CPU without SSE4.2) */
  readonly optional: boolean;
}

export class KernelModuleError extends Error {}

/**
 * `rel` inside the rootfs at `root`, refusing a path that leaves it: a
 * rootfs's absolute symlinks (/lib -> /usr/lib on some systems) point into
 * the host when followed from outside, and what we do there includes rm.
 */
export function pathInRootfs(root: string, rel: string): string {
  const p = join(root, rel);
  const real = realpathSync(p);
  const realRoot = realpathSync(root);
  if (real !== realRoot && !real.startsWith(realRoot + sep)) throw new KernelModuleError(`${p} leads out of the rootfs (to ${real})`);
  return real;
}

/** /lib/modules/<kver> of a rootfs (merged /usr or not). */
export function rootfsModulesDir(root: string, kernelVersion: string): string {
  return pathInRootfs(root, join('lib', 'modules', kernelVersion));
}

/**
 * What the initramfs loads: the root disk (virtio-pci + virtio-blk), its
 * file system and the overlay; and virtio-rng, so that with a
 * virtio-rng-pci device the kernel's random pool is ready at once (without
 * one, sshd waits for it: ~7 s under TCG).
 */
export const INITRAMFS_MODULES = ['virtio_pci', 'virtio_blk', 'ext4', 'overlay', 'virtio_rng'] as const;

const normalize = (name: string) => name.replace(/-/g, '_');
const moduleName = (path: string) => normalize(basename(path).replace(/\.ko(\.(xz|zst|gz))?$/, ''));

export interface DepmodTables {
  /** name -> path and direct+indirect dependencies (as modules.dep lists them) */
  readonly dep: Map<string, { path: string; deps: string[] }>;
  /** name -> modules to load before it */
  readonly softPre: Map<string, string[]>;
  /** exact alias -> module names */
  readonly aliases: Map<string, string[]>;
  readonly builtin: Set<string>;
}

export function readDepmodTables(modulesDir: string): DepmodTables {
  const read = (name: string, required: boolean): string => {
    const p = join(modulesDir, name);
    if (!existsSync(p)) {
      if (required) throw new KernelModuleError(`${p} is missing: depmod was not run for this kernel`);
      return '';
    }
    return readFileSync(p, 'utf8');
  };
  const dep = new Map<string, { path: string; deps: string[] }>();
  for (const line of read('modules.dep', true).split('\n')) {
    const m = /^([^:]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    dep.set(moduleName(m[1]!), { path: m[1]!, deps: m[2]!.split(/\s+/).filter(Boolean).map(moduleName) });
  }
  const softPre = new Map<string, string[]>();
  for (const line of read('modules.softdep', false).split('\n')) {
    const m = /^softdep\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const pre = /pre:\s*(.*?)(\s+post:|$)/.exec(m[2]!);
    if (pre) softPre.set(normalize(m[1]!), pre[1]!.split(/\s+/).filter(Boolean));
  }
  const aliases = new Map<string, string[]>();
  for (const line of read('modules.alias', false).split('\n')) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line);
    if (!m || /[*?[]/.test(m[1]!)) continue;
    aliases.set(m[1]!, [...(aliases.get(m[1]!) ?? []), normalize(m[2]!)]);
  }
  const builtin = new Set(read('modules.builtin', false).split('\n').filter(Boolean).map(moduleName));
  return { dep, softPre, aliases, builtin };
}

/**
 * The modules to insmod for `wanted`, dependencies first (a depth-first
 * post-order over modules.dep), with each module's soft "pre:" dependencies
 * (aliases resolved: crypto-crc32c -> crc32c_intel, crc32c_generic) before
 * it, marked optional. Built-in modules are skipped.
 */
export function moduleLoadOrder(tables: DepmodTables, wanted: readonly string[]): ModuleToLoad[] {
  const order: ModuleToLoad[] = [];
  const placed = new Map<string, ModuleToLoad>();
  const visiting = new Set<string>();
  const resolveName = (name: string): string[] => {
    const n = normalize(name);
    if (tables.dep.has(n) || tables.builtin.has(n)) return [n];
    return tables.aliases.get(name) ?? [];
  };
  const visit = (name: string, optional: boolean): void => {
    if (tables.builtin.has(name)) return;
    const known = placed.get(name);
    if (known) {
      // needed for real by something: not optional after all
      if (!optional && known.optional) placed.set(name, Object.assign(known, { optional: false }));
      return;
    }
    if (visiting.has(name)) return;
    const entry = tables.dep.get(name);
    if (!entry) {
      if (optional) return;
      throw new KernelModuleError(`kernel module ${name} is neither built in nor in modules.dep`);
    }
    visiting.add(name);
    for (const pre of tables.softPre.get(name) ?? []) for (const m of resolveName(pre)) visit(m, true);
    // modules.dep lists all dependencies, nearest first: visit them deepest first
    for (const d of [...entry.deps].reverse()) visit(d, optional);
    visiting.delete(name);
    const m: ModuleToLoad = { name, path: entry.path, optional };
    placed.set(name, m);
    order.push(m);
  };
  for (const w of wanted) {
    const names = resolveName(w);
    if (names.length === 0) throw new KernelModuleError(`kernel module ${w} is neither built in nor in modules.dep`);
    for (const n of names) visit(n, false);
  }
  return order;
}
