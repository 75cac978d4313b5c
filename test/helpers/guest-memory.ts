/** Reading a guest's memory back from the host, for tests that check it survived a move. */
import { rmSync } from 'node:fs';
import type { QemuVm } from '../../src/hypervisor/qemu/qemu-vm.js';
import { sha256File } from '../../src/util/files.js';

/** SHA-256 of `bytes` of guest-physical memory at `addr`, dumped by QMP `pmemsave` through `scratch` (removed after). */
export async function guestMemoryHash(vm: QemuVm, addr: number, bytes: number, scratch: string): Promise<string> {
  await vm.qmp.execute('pmemsave', { val: addr, size: bytes, filename: scratch });
  try {
    return await sha256File(scratch);
  } finally {
    rmSync(scratch, { force: true });
  }
}
