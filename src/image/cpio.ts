/**
 * A cpio archive in the "newc" format, the one the kernel unpacks as an
 * initramfs. Written here (a few dozen lines) rather than by cpio(1), so the
 * host needs no cpio and the archive is reproducible: fixed inode numbers,
 * owner root, mtime 0.
 */

export type CpioEntry =
  | { readonly kind: 'dir'; readonly path: string; readonly mode?: number }
  | { readonly kind: 'file'; readonly path: string; readonly data: Buffer; readonly mode?: number }
  | { readonly kind: 'symlink'; readonly path: string; readonly target: string }
  | { readonly kind: 'chardev'; readonly path: string; readonly major: number; readonly minor: number; readonly mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

const hex8 = (n: number) => n.toString(16).padStart(8, '0');
const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);

function record(ino: number, mode: number, nlink: number, data: Buffer, name: string, rdevMajor = 0, rdevMinor = 0): Buffer[] {
  const nameBuf = Buffer.from(name + '\0');
  const header = Buffer.from(
    '070701' +
      [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBuf.length, 0].map(hex8).join(''),
    'ascii',
  );
  return [header, nameBuf, pad4(header.length + nameBuf.length), data, pad4(data.length)];
}

/** Entries in the given order (parents before children); paths without a leading '/'. */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    switch (e.kind) {
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (e.mode ?? 0o755), 2, Buffer.alloc(0), path));
        break;
      case 'file':
        parts.push(...record(ino++, S_IFREG | (e.mode ?? 0o644), 1, e.data, path));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, 1, Buffer.from(e.target), path));
        break;
      case 'chardev':
        parts.push(...record(ino++, S_IFCHR | (e.mode ?? 0o600), 1, Buffer.alloc(0), path, e.major, e.minor));
        break;
    }
  }
  parts.push(...record(0, 0, 1, Buffer.alloc(0), 'TRAILER!!!'));
  return Buffer.concat(parts);
}
