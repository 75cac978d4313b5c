/**
 * symbio's own initramfs: a static busybox, /init (scripts/guest/initramfs-init),
 * and just the kernel modules that reach the root disk and build the overlay
 * root: ~1.5 MB, against ~40 MB for Debian's generic initramfs-tools one,
 * which also probes for hardware a QEMU guest never has (and costs seconds
 * under TCG).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { cpioNewc, type CpioEntry } from './cpio.js';
import { INITRAMFS_MODULES, moduleLoadOrder, pathInRootfs, readDepmodTables, rootfsModulesDir, type ModuleToLoad } from './kernel-modules.js';

/** the busybox applets /init uses */
const APPLETS = ['sh', 'mount', 'umount', 'insmod', 'sleep', 'switch_root', 'mkdir', 'poweroff', 'cat', 'grep', 'echo', 'ls', 'dmesg'];

export interface InitramfsInput {
  /** the base rootfs: busybox and the modules come from here */
  readonly rootfs: string;
  readonly kernelVersion: string;
  /** contents of /init */
  readonly initScript: Buffer;
}

export interface Initramfs {
  /** gzip-compressed newc cpio */
  readonly data: Buffer;
  readonly modules: readonly ModuleToLoad[];
}

function findBusybox(rootfs: string): string {
  if (!existsSync(join(rootfs, 'bin', 'busybox'))) throw new Error(`no busybox in ${rootfs}: the base rootfs must include busybox-static`);
  return pathInRootfs(rootfs, join('bin', 'busybox'));
}

/** Does this ELF64 executable name a dynamic loader (PT_INTERP), i.e. is it not static? */
export function hasElfInterpreter(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) throw new Error('not a 64-bit ELF file');
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (elf.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) return true;
  return false;
}

export function buildInitramfs(input: InitramfsInput): Initramfs {
  const modulesDir = rootfsModulesDir(input.rootfs, input.kernelVersion);
  const modules = moduleLoadOrder(readDepmodTables(modulesDir), INITRAMFS_MODULES);
  for (const m of modules) {
    if (!m.path.endsWith('.ko')) throw new Error(`kernel module ${m.path} is compressed; symbio's initramfs loads only uncompressed modules (Debian 12's kernel ships them so)`);
  }
  const busybox = readFileSync(findBusybox(input.rootfs));
  if (hasElfInterpreter(busybox)) throw new Error('the rootfs busybox is dynamically linked: the base rootfs must include busybox-static, not busybox');
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'etc', 'lib', 'lib/modules', 'proc', 'sys', 'tmp', 'lower', 'rw', 'newroot'].map((path): CpioEntry => ({ kind: 'dir', path })),
    // the kernel opens /dev/console for init before anything is mounted
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    ...APPLETS.map((a): CpioEntry => ({ kind: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { kind: 'file', path: 'init', data: input.initScript, mode: 0o755 },
    ...modules.map((m): CpioEntry => ({ kind: 'file', path: `lib/modules/${m.name}.ko`, data: readFileSync(join(modulesDir, m.path)) })),
    {
      kind: 'file',
      path: 'etc/symbio-modules',
      data: Buffer.from(modules.map((m) => `${m.name}.ko ${m.optional ? 'optional' : 'required'}\n`).join('')),
    },
  ];
  return { data: gzipSync(cpioNewc(entries), { level: 9 }), modules };
}
