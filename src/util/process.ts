/** Small process and port facts several components need. */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** Whether a process with this pid exists and has not died (EPERM: it does, someone else's; a zombie has died). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // kill(pid, 0) succeeds on a zombie: a QEMU that died and whose parent
  // (often init, which may reap late) has not reaped it yet is dead
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false; // gone between the two looks
  }
}

/** A free TCP port on loopback (the kernel's pick; free when returned, not reserved). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
