/**
 * `symbio controller` as operators run it: a job started with
 * `symbio-mpirun --symbio-controller` attaches its agent to it, the CLI
 * drives the job through the controller's socket, and SIGTERM to the
 * controller (a scheduler stopping it) leaves the frozen job running again
 * and nothing behind. A controller that is not there is a clear error.
 */
import t from 'tap';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mpiCommon, plainMpirun, prog, run, start, statusRanks, symbioCli, symbioMpirun } from '../helpers/mpi.js';

const dir = mkdtempSync(join(tmpdir(), 'symbio-standalone-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const socket = join(dir, 'controller.sock');
const config = join(dir, 'symbio.yaml');
writeFileSync(config, `controller:\n  socket: ${socket}\n  stateDir: ${join(dir, 'state')}\n`);

async function until<T>(what: string, f: () => Promise<T | null>, timeoutMs = 60_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v !== null) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('a job attached to a standalone controller, driven by the CLI; SIGTERM to the controller', async (t) => {
  const plain = await plainMpirun(4, 'halo2d', ['3000']);
  const ctl = start(process.execPath, [symbioCli, 'controller', '--config', config]);
  await until('controller socket', async () => (existsSync(socket) ? true : null));
  const jobId = `standalone-${process.pid}`;
  const job = start(process.execPath, [symbioMpirun, '--symbio-controller', socket, '--job-id', jobId, ...mpiCommon, '-np', '4', prog('halo2d'), '3000']);
  const cli = (...args: string[]) => run(process.execPath, [symbioCli, ...args, '--controller', socket, '--job', jobId, '--json']);
  await until('4 running ranks', async () => {
    const s = await cli('status');
    return s.code === 0 && statusRanks(JSON.parse(s.stdout)).filter((r) => r.state === 'running').length === 4 ? true : null;
  });
  const q = await cli('quiesce');
  t.equal(q.code, 0, `quiesce through the controller: ${q.stderr}`);
  t.equal((JSON.parse(q.stdout) as { result: { summary: { held: number } } }).result.summary.held, 4);
  const ev = await cli('events');
  const types = (JSON.parse(ev.stdout) as { type: string }[]).map((e) => e.type);
  t.ok(types.includes('job-started') && types.includes('node-attached'), `journal: ${types.join(', ')}`);

  const t0 = Date.now();
  ctl.child.kill('SIGTERM');
  const stopped = await ctl.done;
  t.equal(stopped.code, 0, `controller exited cleanly: ${stopped.stderr.slice(-300)}`);
  t.match(stopped.stderr, /resuming held jobs/, 'said what it did');
  t.ok(Date.now() - t0 < 10_000, `stopped in ${Date.now() - t0} ms`);
  t.notOk(existsSync(socket), 'its socket is gone');
  const r = await job.done;
  t.equal(r.code, 0, 'the job finished');
  t.equal(r.stdout, plain.stdout, 'with the output of a plain run');
});

t.test('no controller at the address: one clear line, exit 2', async (t) => {
  const r = await run(process.execPath, [symbioMpirun, '--symbio-controller', join(dir, 'nobody.sock'), ...mpiCommon, '-np', '2', prog('ring')]);
  t.equal(r.code, 2);
  t.match(r.stderr, /cannot attach to the controller: .*nobody\.sock.*is `symbio controller` running\?/);
  const s = await run(process.execPath, [symbioCli, 'status', '--controller', join(dir, 'nobody.sock')]);
  t.equal(s.code, 2);
  t.match(s.stderr, /cannot reach the controller at .*nobody\.sock/);
});
