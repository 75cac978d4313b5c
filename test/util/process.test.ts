/**
 * pidAlive: failure detection polls it for every VM's QEMU, and a QEMU that
 * died is a zombie until its parent reaps it (init may take seconds). A
 * zombie is made here for real: a child that forks and exits while its
 * parent does not wait for it.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { pidAlive } from '../../src/util/process.js';

t.test('alive, gone, and dead but not reaped', async (t) => {
  t.ok(pidAlive(process.pid), 'this process');
  t.notOk(pidAlive(2 ** 22 + 12345), 'a pid above the kernel limit does not exist');
  const parent = spawn('python3', ['-c', 'import os, sys, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void parent.kill('SIGKILL'));
  const child = await new Promise<number>((resolve) => parent.stdout.setEncoding('utf8').once('data', (d: string) => resolve(Number(d.trim()))));
  // the child has exited (or is about to): its parent never waits, so it stays a zombie
  let zombie = false;
  for (let i = 0; i < 500 && !zombie; i++) { // up to 10 s: a loaded machine may run the child late
    await new Promise((r) => setTimeout(r, 20));
    zombie = !pidAlive(child);
  }
  t.ok(zombie, `the unreaped child (pid ${child}) counts as dead`);
  t.ok(pidAlive(parent.pid!), 'its sleeping parent is alive');
});
