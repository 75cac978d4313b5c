/**
 * The controller's sockets under abuse: malformed and random input on the
 * Unix socket and on TCP (errors, never a crash), the TCP token, peer
 * credentials on the Unix socket (a connection from another user is
 * refused even when the file mode would let it in), and an agent that
 * attaches and then never answers (the operation fails, nothing is held).
 */
import t from 'tap';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { Controller } from '../../src/controller/controller.js';
import type { JournalEvent } from '../../src/controller/journal.js';
import { ControllerServer } from '../../src/controller/server.js';
import { controllerRequest, type ControllerAddress } from '../../src/controller/client.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'server' });
log.level = 'silent';

const dir = mkdtempSync(join(tmpdir(), 'symbio-server-'));
chmodSync(dir, 0o755); // so that another user could reach the socket file if its mode allowed
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** The controller's next journal event that matches (call it before the action that causes it). */
function nextEvent(c: Controller, pred: (e: JournalEvent) => boolean, timeoutMs = 10_000): Promise<JournalEvent> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (c.off('journal', on), reject(new Error(`no such journal event within ${timeoutMs} ms`))), timeoutMs);
    const on = (e: JournalEvent): void => {
      if (!pred(e)) return;
      clearTimeout(timer);
      c.off('journal', on);
      resolve(e);
    };
    c.on('journal', on);
  });
}

function controller(): Controller {
  return new Controller({ stateDir: join(dir, 'state'), whenBusy: 'queue', queueLimit: 2, quiesce: { timeoutMs: 2_000, stallMs: 500 }, log });
}

/** Send raw bytes; collect reply lines until `want` lines came, the peer closed, or 2 s passed. */
function exchange(a: ControllerAddress, payload: string | Buffer, want = 1): Promise<{ lines: string[]; closed: boolean }> {
  return new Promise((resolve) => {
    const s = a.tcp ? connect(a.tcp.port, a.tcp.host) : connect(a.unix!);
    let buf = '';
    let closed = false;
    const finish = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ lines: buf.split('\n').filter(Boolean), closed });
    };
    const timer = setTimeout(finish, 2_000);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(payload));
    s.on('data', (d: string) => {
      buf += d;
      if (buf.split('\n').filter(Boolean).length >= want) setTimeout(finish, 20);
    });
    s.on('close', () => {
      closed = true;
      finish();
    });
    s.on('error', () => undefined);
  });
}

/** A seeded PRNG (mulberry32): failures are reproducible from the seed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function randomLine(rand: () => number): string {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const values: unknown[] = [null, true, 1, -1, 1e308, 'x', '', [], {}, [1, 'a'], { op: 'x' }, 'operate', 'status'];
  switch (Math.floor(rand() * 6)) {
    case 0: // random bytes (no newline)
      return Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 40) }, () => Math.floor(rand() * 256)).filter((b) => b !== 10)).toString('latin1');
    case 1: // a known op with random fields
      return JSON.stringify({ op: pick(['status', 'operate', 'events', 'jobs', 'agent', 'hello', 'plugins']), [pick(['job', 'kind', 'id', 'timeoutMs', 'x'])]: pick(values) });
    case 2: // random JSON value
      return JSON.stringify(pick(values));
    case 3: // valid-looking operate with bad kinds and ids
      return JSON.stringify({ op: 'operate', kind: pick(['freeze', 'teleport', 1, null]), job: pick(['../../etc', 'nope', 'a b', 7]), id: pick([1, -1, 1.5, 'x']) });
    case 4: // truncated JSON
      return JSON.stringify({ op: 'status', job: 'j' }).slice(0, Math.floor(rand() * 20));
    default: // deep nesting
      return '['.repeat(1 + Math.floor(rand() * 500)) + ']'.repeat(Math.floor(rand() * 500));
  }
}

t.test('Unix socket: every malformed or random line gets one error reply; the server lives on', async (t) => {
  const c = controller();
  const socket = join(dir, 'fuzz.sock');
  const server = new ControllerServer(c, { unixPath: socket, log });
  await server.listen();
  t.teardown(() => server.close());
  const a = { unix: socket };
  const rand = prng(Number(process.env.SYMBIO_FUZZ_SEED ?? 20261123));
  const lines = Array.from({ length: 1500 }, () => randomLine(rand));
  // many lines down one connection: one reply per non-empty line, in order
  const r = await exchange(a, lines.join('\n') + '\n', lines.filter((l) => l.trim()).length);
  t.equal(r.lines.length, lines.filter((l) => l.trim()).length, 'one reply per line');
  t.ok(r.lines.every((l) => /"ok":(true|false)/.test(l)), 'every reply is a reply');
  const okReplies = r.lines.filter((l) => l.includes('"ok":true')).length;
  t.comment(`${okReplies} of ${r.lines.length} random lines were valid requests`);
  const long = await exchange(a, 'x'.repeat(70_000));
  t.match(long.lines[0] ?? '', /line longer than 65536 bytes/, 'an endless line is cut off with a reason');
  t.ok(long.closed, 'and the connection closed');
  const alive = await controllerRequest(a, { op: 'jobs' }, { timeoutMs: 2_000 });
  t.same(alive, { id: 1, ok: true, result: [] }, 'the server still answers');
  const unknown = await controllerRequest(a, { op: 'status', job: 'nope' }, { timeoutMs: 2_000 });
  t.match(unknown, { ok: false, code: 'bad-request', error: /no job 'nope'/ });
  const agentUnknown = await controllerRequest(a, { op: 'agent', job: 'nope', node: 'n1' }, { timeoutMs: 2_000 });
  t.match(agentUnknown, { ok: false, error: /no job 'nope'/ }, 'an agent of an unknown job is turned away');
});

t.test('Unix socket: another user is refused by its peer credentials', { skip: process.getuid?.() !== 0 ? 'needs root to connect as another user' : false }, async (t) => {
  const c = controller();
  const socket = join(dir, 'creds.sock');
  const server = new ControllerServer(c, { unixPath: socket, log });
  await server.listen();
  t.teardown(() => server.close());
  chmodSync(socket, 0o666); // as if the file mode were wrong: the credential check is the second lock
  // the server may close before our request is written (EPIPE): what counts is the reply we read
  const client = `const s=require('net').connect(${JSON.stringify(socket)});s.setEncoding('utf8');let b='',e='';s.on('connect',()=>s.write('{"op":"jobs"}\\n'));s.on('data',d=>b+=d);s.on('error',x=>e=x.message);s.on('close',()=>process.stdout.write(b||'ERR '+e))`;
  const out = await new Promise<string>((resolve) => {
    // `env -i`: the test runner puts its own hooks into children's NODE_OPTIONS, which cannot work as another user
    const p = spawn('/usr/bin/env', ['-i', process.execPath, '-e', client], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'inherit'] });
    let o = '';
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (d: string) => (o += d));
    p.on('close', () => resolve(o));
  });
  t.match(out, /"code":"denied".*peer uid 65534 is not the controller's user/, `refused: ${out.trim()}`);
  const mine = await controllerRequest({ unix: socket }, { op: 'jobs' }, { timeoutMs: 2_000 });
  t.ok(mine.ok, 'our own user is served');
});

t.test('TCP: nothing before hello with the right token', async (t) => {
  const c = controller();
  const server = new ControllerServer(c, { tcp: { host: '127.0.0.1', port: 0 }, token: 's3cret-token', log });
  await server.listen();
  t.teardown(() => server.close());
  const a = { tcp: server.tcpAddress! };
  const noHello = await exchange(a, '{"op":"jobs"}\n');
  t.match(noHello.lines[0], /"code":"denied".*say hello with the shared token first/);
  t.ok(noHello.closed, 'connection closed');
  const wrong = await exchange(a, '{"op":"hello","token":"guess"}\n{"op":"jobs"}\n');
  t.match(wrong.lines[0], /wrong token/);
  t.equal(wrong.lines.length, 1, 'nothing served after a wrong token');
  const garbage = await exchange(a, Buffer.from([0xde, 0xad, 0x0a]));
  t.match(garbage.lines[0], /"ok":false/, 'garbage before hello: an error');
  const big = await exchange(a, 'y'.repeat(100_000));
  t.match(big.lines[0] ?? '', /line longer than/, 'no unbounded buffering before hello');
  const ok = await controllerRequest(a, { op: 'jobs' }, { timeoutMs: 2_000, token: 's3cret-token' });
  t.same(ok, { id: 1, ok: true, result: [] }, 'with the token: served');
  const rand = prng(7);
  const lines = Array.from({ length: 300 }, () => randomLine(rand)).filter((l) => l.trim());
  const after = await exchange(a, ['{"op":"hello","token":"s3cret-token"}', ...lines].join('\n') + '\n', lines.length + 1);
  t.equal(after.lines.length, lines.length + 1, 'after hello: one reply per random line');
  t.throws(() => new ControllerServer(c, { tcp: { host: '127.0.0.1', port: 0 }, log }), /needs a shared token/, 'TCP without a token is not allowed');
});

t.test('an agent that attaches and never answers: the operation fails, nothing stays held', async (t) => {
  const c = new Controller({ stateDir: join(dir, 'state'), whenBusy: 'queue', queueLimit: 2, quiesce: { timeoutMs: 2_000, stallMs: 500 }, log });
  const socket = join(dir, 'mute.sock');
  const server = new ControllerServer(c, { unixPath: socket, log, agentCallTimeoutMs: 300 });
  await server.listen();
  t.teardown(() => server.close());
  // a real connection that says hello as an agent, registers the job, then ignores every call
  const s = connect(socket);
  t.teardown(() => s.destroy());
  await new Promise<void>((resolve) => s.on('connect', () => resolve()));
  const attached = nextEvent(c, (e) => e.type === 'node-attached' && e.node === 'n1');
  s.write(JSON.stringify({ op: 'agent', job: 'mute', node: 'n1', register: { command: ['x'], np: 2 } }) + '\n');
  await attached;
  s.write('this is not JSON\n{"event":"nonsense"}\n'); // garbage from an agent is logged, not fatal
  const rec = await c.request({ job: 'mute', kind: 'freeze', requestedBy: 'test' });
  t.equal(rec.ok, false, 'freeze failed');
  t.match(rec.error, /did not answer 'report' within 300 ms/, `says why: ${rec.error}`);
  t.same(rec.phases.map((p) => p.name), ['quiescing', 'rolling-back'], 'and rolled back');
  const st = (await c.status('mute')) as { held: unknown };
  t.equal(st.held, null, 'the job is not left held');
  const detached = nextEvent(c, (e) => e.type === 'node-detached' && e.node === 'n1');
  s.destroy();
  await detached;
  const gone = await c.request({ job: 'mute', kind: 'freeze', requestedBy: 'test' });
  t.match(gone.error, /no agent attached/, 'with its agent gone, a quiesce is refused with the reason');
});

t.test('an agent that reconnects replaces its old link; the old connection closing does not detach the new one', async (t) => {
  const c = controller();
  const socket = join(dir, 'replace.sock');
  const server = new ControllerServer(c, { unixPath: socket, log, agentCallTimeoutMs: 300 });
  await server.listen();
  t.teardown(() => server.close());
  const attach = async (register: boolean) => {
    const s = connect(socket);
    await new Promise<void>((resolve) => s.on('connect', () => resolve()));
    s.on('error', () => undefined);
    s.resume(); // read (and drop) what comes, so that the end of the connection is seen
    const attached = nextEvent(c, (e) => e.type === 'node-attached' && e.node === 'n1');
    s.write(JSON.stringify({ op: 'agent', job: 'again', node: 'n1', ...(register ? { register: { command: ['x'], np: 1 } } : {}) }) + '\n');
    await attached;
    return s;
  };
  const first = await attach(true);
  const closed = new Promise<void>((resolve) => first.on('close', () => resolve()));
  const second = await attach(false);
  t.teardown(() => second.destroy());
  await closed;
  t.pass('the first connection was closed when the node attached again');
  const st = (await c.status('again')) as { nodes: { node: string; error?: string }[] };
  t.same(st.nodes.map((n) => n.node), ['n1'], 'the job still has its node');
  const events = (await controllerRequest({ unix: socket }, { op: 'events', job: 'again' }, { timeoutMs: 2_000 })) as { result: { type: string; replaced?: boolean }[] };
  t.ok(events.result.some((e) => e.type === 'node-attached' && e.replaced), 'journaled as a replacement');
  t.notOk(events.result.some((e) => e.type === 'node-detached'), 'and not as a departure');
});
