/**
 * The in-guest agent (src/agent/guest-agent.ts) driven directly, outside a VM:
 * its input checks, the run/signal calls on real local processes, and the
 * network call's wait and timeout against this host's real /sys/class/net
 * and `ip` (the repair itself in a private network namespace).
 *
 * Stand-in: the virtio-serial port. /dev/virtio-ports/* exists only inside a
 * VM started with the device, so the port here is an EventEmitter that
 * delivers the controller's lines and collects the agent's, as VirtioPort
 * does. Everything behind it is real: the NodeAgent's control segment in
 * /dev/shm, child processes, signals, sysfs, ip.
 */
import t, { type Test } from 'tap';
import { EventEmitter } from 'node:events';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { GuestAgent, guestSegmentName } from '../../src/agent/guest-agent.js';
import type { VirtioPort } from '../../src/agent/virtio-port.js';
import { logger } from '../../src/log.js';
import { packageRoot } from '../../src/util/package-root.js';

const quiet = logger.child({ test: 'guest-agent' });
quiet.level = 'error';

type Line = Record<string, unknown>;

/** The stand-in port (see the header): lines in by `send`, lines out in `out`. */
class FakePort extends EventEmitter {
  connected = true;
  readonly out: Line[] = [];
  #next = 1;
  writeLine(v: unknown): boolean {
    if (!this.connected) return false;
    this.out.push(JSON.parse(JSON.stringify(v)) as Line);
    return true;
  }
  close(): void {
    this.connected = false;
  }
  /** The first line written that matches, waiting for it. */
  async waitFor(pred: (l: Line) => boolean, timeoutMs = 10_000): Promise<Line> {
    const t0 = Date.now();
    for (;;) {
      const l = this.out.find(pred);
      if (l) return l;
      if (Date.now() - t0 > timeoutMs) throw new Error(`no such line within ${timeoutMs} ms; wrote: ${JSON.stringify(this.out.slice(-5))}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  /** Send a call and wait for its answer. */
  async call(call: string, args: Record<string, unknown> = {}): Promise<Line> {
    const id = this.#next++;
    this.emit('line', JSON.stringify({ id, call, ...args }));
    return this.waitFor((l) => l.id === id);
  }
}

function agentOn(t: Test): { port: FakePort; agent: GuestAgent } {
  const port = new FakePort();
  const agent = new GuestAgent({ port: port as unknown as VirtioPort, node: 'vm-test', log: quiet });
  port.emit('connected');
  t.teardown(() => agent.close());
  return { port, agent };
}

const job = (name: string) => `${name}-${process.pid}`;

t.test('input checks: each bad call is answered with an error that says what is wrong', async (t) => {
  const { port } = agentOn(t);
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['open', {}, /^open needs a job id$/],
    ['open', { job: 42 }, /^open needs a job id$/],
    ['open', { job: '../etc' }, /^open needs a job id$/],
    ['open', { job: 'x'.repeat(65) }, /^open needs a job id$/],
    ['run', { argv: ['true'] }, /^open a job before run$/],
    ['report', {}, /^no job is open on this node$/],
    ['network', { mac: 'aa:bb:cc:dd:ee', address: '10.0.0.1/24' }, /^network needs mac/],
    ['network', { mac: 'aa:bb:cc:dd:ee:ff', address: '10.0.0.1' }, /^network needs mac/],
    ['network', { address: '10.0.0.1/24' }, /^network needs mac/],
    ['bogus', {}, /^unknown call "bogus"$/],
  ];
  for (const [call, args, re] of bad) {
    const a = await port.call(call, args);
    t.equal(a.ok, false, `${call} ${JSON.stringify(args).slice(0, 40)}: refused`);
    t.match(a.error, re, `  with: ${String(a.error)}`);
  }
  // lines that are no call at all get no answer, and the agent carries on
  const answers = () => port.out.filter((l) => 'id' in l).length;
  const before = answers();
  port.emit('line', 'not json');
  port.emit('line', JSON.stringify({ call: 'open', job: job('no-id') }));
  const opened = await port.call('open', { job: job('checks') });
  t.equal(answers(), before + 1, 'no answer to the non-calls');
  t.match(opened, { ok: true, result: { reattached: false } }, 'the good call afterwards is served (and the id-less open was not)');

  for (const [args, re] of [
    [{}, /^run needs argv/],
    [{ argv: [] }, /^run needs argv/],
    [{ argv: ['sleep', 1] }, /^run needs argv/],
    [{ argv: 'sleep 1' }, /^run needs argv/],
  ] as const) {
    const a = await port.call('run', args);
    t.match(a, { ok: false, error: re }, `run ${JSON.stringify(args)}: refused`);
  }
  t.match(await port.call('signal', { signal: 'SIGTERM' }), { ok: true, result: { sent: false } }, 'signal with nothing running: not sent');
});

t.test('open: same job again reattaches; another job while one runs is refused', async (t) => {
  const { port } = agentOn(t);
  const a = await port.call('open', { job: job('open-a'), slots: 2 });
  t.match(a, { ok: true, result: { reattached: false, segment: guestSegmentName(job('open-a')) } }, 'opened');
  t.ok(existsSync(`/dev/shm${guestSegmentName(job('open-a'))}`), 'its segment exists');
  t.match(await port.call('open', { job: job('open-a') }), { ok: true, result: { reattached: true, run: null } }, 'the same job again: reattached');
  const r = await port.call('run', { argv: ['sleep', '30'] });
  t.match(r, { ok: true, result: { pid: Number } }, 'its command runs');
  t.match(await port.call('run', { argv: ['true'] }), { ok: false, error: /already runs its command \(pid \d+\)/ }, 'a second run is refused');
  t.match(await port.call('open', { job: job('open-b') }), { ok: false, error: `this VM serves job ${job('open-a')}, which still runs; one job per VM` }, 'another job is refused');
  t.match(await port.call('signal', { signal: 'SIGKILL' }), { ok: true, result: { sent: true } }, 'its command killed');
  await port.waitFor((l) => l.event === 'exit');
  t.match(await port.call('open', { job: job('open-b') }), { ok: true, result: { reattached: false } }, 'once it ended, another job may open');
  t.notOk(existsSync(`/dev/shm${guestSegmentName(job('open-a'))}`), "and the first job's segment is gone");
  t.match(await port.call('close', { job: job('open-a') }), { ok: true, result: { closed: false } }, 'closing a job that is not open: nothing to do');
  t.match(await port.call('close', { job: job('open-b') }), { ok: true, result: { closed: true } }, 'closing the open one');
  t.notOk(existsSync(`/dev/shm${guestSegmentName(job('open-b'))}`), 'its segment is gone');
});

t.test('run: output with offsets and the exact exit code; a command that cannot start', async (t) => {
  const { port } = agentOn(t);
  await port.call('open', { job: job('run') });
  const r = await port.call('run', { argv: ['sh', '-c', 'printf out; printf err >&2; exit 7'], env: { X: 'y' } });
  t.equal(r.ok, true, 'started');
  const exit = await port.waitFor((l) => l.event === 'exit');
  t.match(exit, { job: job('run'), code: 7, signal: null, stdout: 3, stderr: 3 }, 'exit code 7 and the byte counts');
  const out = port.out.filter((l) => l.event === 'output');
  t.same(out.map((l) => [l.stream, l.offset, Buffer.from(l.data as string, 'base64').toString()]).sort(), [['stderr', 0, 'err'], ['stdout', 0, 'out']], 'each stream from offset 0');

  const { port: p2 } = agentOn(t);
  await p2.call('open', { job: job('run-missing') });
  const missing = join(packageRoot(), 'no-such-command');
  t.match(await p2.call('run', { argv: [missing] }), { ok: true }, 'run answers (the failure comes as output)');
  const ex2 = await p2.waitFor((l) => l.event === 'exit');
  const err = p2.out.filter((l) => l.event === 'output' && l.stream === 'stderr').map((l) => Buffer.from(l.data as string, 'base64').toString()).join('');
  t.match(err, `symbio agent: cannot run ${missing}: spawn ${missing} ENOENT`, 'says why on its stderr stream');
  t.equal(ex2.code, 127, 'and exits 127, as a shell would (not the -2 of ENOENT)');
});

t.test('signal: passed to the command (128+N), only the allowed ones', async (t) => {
  const { port } = agentOn(t);
  await port.call('open', { job: job('signal') });
  await port.call('run', { argv: ['sleep', '30'] });
  t.match(await port.call('signal', { signal: 'SIGUSR1' }), { ok: false, error: 'signal SIGUSR1 is not one the agent passes on' }, 'SIGUSR1 refused');
  t.match(await port.call('signal', { signal: 'SIGSTOP' }), { ok: false, error: /SIGSTOP is not one/ }, 'SIGSTOP refused');
  t.match(await port.call('signal', {}), { ok: true, result: { sent: true } }, 'no signal named: SIGTERM');
  const exit = await port.waitFor((l) => l.event === 'exit');
  t.match(exit, { code: 143, signal: 'SIGTERM' }, 'the command died of SIGTERM: 143');
  t.match(await port.call('signal', { signal: 'SIGKILL' }), { ok: true, result: { sent: false } }, 'after the exit: nothing to signal');
});

t.test('network: no NIC with that MAC -> error after the timeout, not before', async (t) => {
  const { port } = agentOn(t);
  const t0 = performance.now();
  // 02:...: a locally administered MAC no NIC of this host has
  const a = await port.call('network', { mac: '02:5B:00:00:00:01', address: '10.99.0.1/24', timeoutMs: 300 });
  const ms = performance.now() - t0;
  t.match(a, { ok: false, error: 'no NIC with MAC 02:5b:00:00:00:01 appeared within 300 ms' }, 'says which MAC (lower-cased) and the limit');
  t.ok(ms >= 300, `waited the whole limit (${ms.toFixed(0)} ms)`);
  t.ok(ms < 300 * 10, 'and then gave up (not the 10 s default)');
});

// The repair (ip link up + ip addr replace) changes a NIC: only in a private
// network namespace, where `lo` exists, is down and has no address.
const netns = spawnSync('unshare', ['-n', 'true']).status === 0;
t.test('network: brings the NIC up with its address; a NIC that does not get it -> timeout', { skip: netns ? false : 'unshare -n not permitted here' }, async (t) => {
  const script = `
    import { EventEmitter } from 'node:events';
    const { GuestAgent } = await import(${JSON.stringify(join(packageRoot(), 'dist/src/agent/guest-agent.js'))});
    const { logger } = await import(${JSON.stringify(join(packageRoot(), 'dist/src/log.js'))});
    logger.level = 'error';
    const port = new EventEmitter();
    const answers = new Map();
    port.writeLine = (v) => { if (v.id !== undefined) answers.get(v.id)?.(v); return true; };
    port.close = () => {};
    const agent = new GuestAgent({ port, node: 'ns', log: logger });
    port.emit('connected');
    let id = 0;
    const call = (c) => new Promise((r) => { answers.set(++id, r); port.emit('line', JSON.stringify({ id, ...c })); });
    const lo = { call: 'network', mac: '00:00:00:00:00:00' };
    const out = [];
    out.push(await call({ ...lo, address: '127.0.0.1/8', timeoutMs: 5000 }));
    out.push(await call({ ...lo, address: '127.0.0.1/8', timeoutMs: 5000 }));
    const t0 = performance.now();
    out.push(await call({ ...lo, address: '999.1.1.1/8', timeoutMs: 300 }));
    out.push(performance.now() - t0);
    agent.close();
    console.log(JSON.stringify(out));
  `;
  const r = spawnSync('unshare', ['-n', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  t.equal(r.status, 0, `child ran: ${r.stderr}`);
  const [first, again, never, ms] = JSON.parse(r.stdout) as [Line, Line, Line, number];
  t.match(first, { ok: true, result: { iface: 'lo', repaired: true } }, 'lo was down without the address: brought up, repaired');
  t.match(again, { ok: true, result: { iface: 'lo', repaired: false } }, 'asked again: already there, nothing done');
  t.match(never, { ok: false, error: 'lo (00:00:00:00:00:00) did not get 999.1.1.1/8 within 300 ms' }, 'an address ip refuses: the NIC never gets it, timeout');
  t.ok(ms >= 300 && ms < 3_000, `after the limit (${ms.toFixed(0)} ms)`);
});
