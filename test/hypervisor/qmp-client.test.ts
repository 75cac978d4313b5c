/**
 * The QMP client against a real QEMU (`-machine none`: no guest, no disk,
 * up in a fraction of a second): connecting while QEMU starts, capabilities
 * negotiation, replies matched by id with several commands in flight, QMP
 * errors, STOP/RESUME events, per-command timeouts (provoked by SIGSTOPping
 * QEMU), QEMU killed mid-command. Only the garbage cases use a fake server.
 *
 * qemu-system-x86_64 is required (Debian/Ubuntu package qemu-system-x86):
 * without it this file fails rather than skips, so CI cannot pass by not
 * testing.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { QmpClient, QmpConnectionError, QmpError, QmpTimeoutError } from '../../src/hypervisor/qmp/client.js';
import { logger } from '../../src/log.js';

const log = logger.child({ test: 'qmp-client' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

const QEMU = 'qemu-system-x86_64';
const VM_NAME = 'symbio-qmp-test';

/** The part of a tap test the helpers use. */
type Tap = { teardown(fn: () => unknown): void };

const dir = mkdtempSync(join(tmpdir(), 'symbio-qmp-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

let socketSeq = 0;
const freshSocketPath = () => join(dir, `qmp-${++socketSeq}.sock`);

const versionRun = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
const qemuVersion = /version (\d+)\.(\d+)\.(\d+)/.exec(versionRun.stdout ?? '');

/** Start QEMU with its QMP socket at `sock`; killed at the end of test `t`, whatever happens. */
function startQemu(t: Tap, sock: string): { proc: ChildProcess; exited: Promise<number | null> } {
  const proc = spawn(
    QEMU,
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none', '-name', VM_NAME, '-qmp', `unix:${sock},server=on,wait=off`],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL'); // works on a SIGSTOPped process too
      await exited;
    }
  });
  return { proc, exited };
}

/**
 * SIGSTOP QEMU and wait until every one of its threads is stopped: kill()
 * returns before the signal has landed, and a command written meanwhile
 * could still be answered.
 */
async function freeze(proc: ChildProcess): Promise<void> {
  proc.kill('SIGSTOP');
  const taskDir = `/proc/${proc.pid}/task`;
  // field 3 of /proc/<pid>/task/<tid>/stat is the state; T: stopped
  const allStopped = () => readdirSync(taskDir).every((tid) => / T /.test(readFileSync(`${taskDir}/${tid}/stat`, 'utf8').replace(/^.*\)/, ')')));
  for (let i = 0; !allStopped(); i++) {
    if (i > 200) throw new Error('QEMU did not stop on SIGSTOP within 2 s');
    await sleep(10);
  }
}

async function qemuWithClient(t: Tap, commandTimeoutMs = 5000) {
  const sock = freshSocketPath();
  const q = startQemu(t, sock);
  const client = await QmpClient.connect(sock, { connectTimeoutMs: 5000, retryMs: 20, commandTimeoutMs, log });
  t.teardown(() => client.close());
  return { ...q, client };
}

if (!qemuVersion) {
  t.fail(
    `${QEMU} is not installed (or --version said nothing useful: ${versionRun.error?.message ?? versionRun.stdout}); ` +
      'install it with: apt-get install -y --no-install-recommends qemu-system-x86',
  );
} else {
  const [, major, minor, micro] = qemuVersion.map(Number);

  t.test('connects while QEMU is still starting, negotiates, reports the version; quit', async (t) => {
    const sock = freshSocketPath();
    const started = Date.now();
    // the client first, QEMU 300 ms later: ENOENT is retried
    const connecting = QmpClient.connect(sock, { connectTimeoutMs: 5000, retryMs: 20, log });
    await sleep(300);
    const { proc, exited } = startQemu(t, sock);
    const client = await connecting;
    t.teardown(() => client.close());
    t.ok(Date.now() - started >= 300, 'waited for QEMU');
    t.same(client.greeting.QMP.version.qemu, { major, minor, micro }, 'greeting has the version of the binary');
    // in capabilities negotiation mode QEMU refuses everything but
    // qmp_capabilities, so a working query-version proves we left it
    const v = await client.queryVersion();
    t.same(v.qemu, { major, minor, micro });
    t.type(v.package, 'string');

    await client.quit();
    const why = await client.closed;
    t.type(why, QmpConnectionError, 'closed reports why');
    t.equal(await exited, 0, 'QEMU exited on quit');
    t.equal(proc.exitCode, 0);
  });

  t.test('several commands in flight get their own replies', async (t) => {
    const { client } = await qemuWithClient(t);
    const [s1, v, name, s2, chardevs] = await Promise.all([
      client.queryStatus(),
      client.queryVersion(),
      client.execute<{ name?: string }>('query-name'),
      client.execute<{ status: string }>('query-status'),
      client.execute<{ label: string }[]>('query-chardev'),
    ]);
    t.strictSame(s1, { status: 'running', running: true }, 'query-status, checked: just the members the type names');
    t.equal(v.qemu.major, major);
    t.same(name, { name: VM_NAME });
    t.equal(s2.status, 'running');
    t.ok(Array.isArray(chardevs) && chardevs.some((c) => c.label === 'compat_monitor0'), 'query-chardev lists the QMP chardev');
  });

  t.test('a QMP error names the command and its class; the connection stays usable', async (t) => {
    const { client } = await qemuWithClient(t);
    const err = await client.execute('no-such-command').then(
      () => null,
      (e: unknown) => e,
    );
    t.type(err, QmpError);
    const qe = err as QmpError;
    t.equal(qe.errorClass, 'CommandNotFound');
    t.equal(qe.command, 'no-such-command');
    t.match(qe.message, /no-such-command/);
    // a bad argument is a GenericError from QEMU's input visitor
    await t.rejects(client.execute('query-status', { bogus: 1 }), { name: 'QmpError', errorClass: 'GenericError' });
    t.equal((await client.queryStatus()).status, 'running');
  });

  t.test('stop and cont: STOP and RESUME through the stream and waitForEvent', async (t) => {
    const { client } = await qemuWithClient(t);
    const ac = new AbortController();
    const stream = client.events(['STOP', 'RESUME'], { signal: ac.signal });
    const slow = client.events(undefined, { bufferSize: 1 }); // never read until the end: must drop

    const stopped = client.waitForEvent('STOP', undefined, 2000);
    const before = Date.now();
    await client.stop();
    const stopEvent = await stopped;
    const after = Date.now();
    t.equal(stopEvent.event, 'STOP');
    t.same(stopEvent.data, {}, 'STOP has no data; normalised to {}');
    // QEMU stamps events with the host's wall clock (seconds + microseconds)
    const stampMs = stopEvent.timestamp.seconds * 1000 + stopEvent.timestamp.microseconds / 1000;
    t.ok(stampMs >= before - 1000 && stampMs <= after + 1000, `the event's timestamp is when stop ran (${stampMs - before} ms after)`);
    t.strictSame(await client.queryStatus(), { status: 'paused', running: false });

    const resumed = client.waitForEvent('RESUME', (e) => e.event === 'RESUME', 2000);
    await client.cont();
    await resumed;
    t.equal((await client.queryStatus()).status, 'running');

    const seen: string[] = [];
    for await (const e of stream) {
      seen.push(e.event);
      if (seen.length === 2) ac.abort(); // ends the loop at the next next()
    }
    t.same(seen, ['STOP', 'RESUME'], 'the stream saw both, in order');
    t.same(await stream.next(), { value: undefined, done: true }, 'aborted stream stays ended');

    t.equal(slow.dropped, 1, 'slow consumer: the oldest event was dropped and counted');
    t.equal((await slow.next()).value?.event, 'RESUME', 'the newest was kept');
    await slow.return();

    await t.rejects(client.waitForEvent('SHUTDOWN', undefined, 100), QmpTimeoutError, 'waitForEvent times out');
  });

  t.test('descriptors passed by SCM_RIGHTS: getfd names one, add-fd puts one in an fd set, remove-fd drops the set', async (t) => {
    const { client } = await qemuWithClient(t);
    const file = join(dir, 'passed.bin');
    const fd = openSync(file, 'w');
    t.teardown(() => closeSync(fd));
    await client.getfd('named', fd);
    await client.execute('closefd', { fdname: 'named' });
    await t.rejects(client.execute('closefd', { fdname: 'named' }), QmpError, 'QEMU held it under that name until closefd');
    const set = await client.addFd(fd);
    const sets = (await client.execute('query-fdsets')) as { 'fdset-id': number; fds: { fd: number }[] }[];
    t.same(sets.find((s) => s['fdset-id'] === set.fdsetId)?.fds.map((f) => f.fd), [set.fd], `QEMU holds descriptor ${set.fd} in fd set ${set.fdsetId}`);
    await client.removeFdset(set.fdsetId);
    const after = (await client.execute('query-fdsets')) as { 'fdset-id': number }[];
    t.notOk(after.some((s) => s['fdset-id'] === set.fdsetId), 'and none after remove-fd');
  });

  t.test('a command timeout: the late reply is dropped, not given to the next command', async (t) => {
    const { proc, client } = await qemuWithClient(t);
    await freeze(proc); // QEMU cannot answer now; the request waits in the socket buffer
    const started = Date.now();
    const err = await client.queryStatus({ timeoutMs: 200 }).then(
      () => null,
      (e: unknown) => e,
    );
    t.type(err, QmpTimeoutError);
    t.equal((err as QmpTimeoutError).command, 'query-status');
    const took = Date.now() - started;
    // the failure is the client's 5 s default instead of 200 ms: far from the margin
    t.ok(took >= 200 && took < 2500, `timed out at its own 200 ms, not the 5 s default (${took} ms)`);
    proc.kill('SIGCONT');
    // QEMU answers in order: the late query-status reply comes first
    t.same(await client.execute('query-name'), { name: VM_NAME }, 'the next command gets its own reply');
    t.equal(client.droppedReplies, 1, 'the late reply was dropped');
  });

  t.test('QEMU killed with a command in flight: QmpConnectionError at once, naming the command', async (t) => {
    const { proc, exited, client } = await qemuWithClient(t, 10_000);
    await freeze(proc); // keep the command in flight
    const pending = client.queryStatus().then(
      () => null,
      (e: unknown) => e,
    );
    const stream = client.events();
    const killedAt = Date.now();
    proc.kill('SIGKILL');
    await exited;
    const err = await pending;
    t.ok(Date.now() - killedAt < 5000, 'rejected at once, not at the 10 s timeout');
    t.type(err, QmpConnectionError);
    t.equal((err as QmpConnectionError).command, 'query-status');
    t.match((err as Error).message, /query-status.*connection closed/);
    await t.rejects(stream.next(), QmpConnectionError, 'an event stream ends with the error');
    await t.rejects(client.execute('query-name'), { name: 'QmpConnectionError', message: /cannot send QMP command query-name/ });
    t.type(await client.closed, QmpConnectionError);
  });
}

t.test('no QMP server ever: a clear error after the deadline', async (t) => {
  const sock = freshSocketPath();
  const started = Date.now();
  const err = await QmpClient.connect(sock, { connectTimeoutMs: 300, retryMs: 20, log }).then(
    () => null,
    (e: unknown) => e,
  );
  const took = Date.now() - started;
  t.type(err, QmpConnectionError);
  t.match((err as Error).message, /no QMP server at .*qmp-\d+\.sock after 300 ms .*ENOENT.*did QEMU start/);
  t.ok(took >= 300 && took < 3000, `gave up at the deadline, not ten times later (${took} ms)`);
});

// QEMU cannot be made to send garbage, so these use a fake server: a Unix
// socket that greets (or not) and then answers each line as `reply` says.
async function fakeServer(t: Tap, greeting: string, reply: (line: string, s: Socket) => void): Promise<string> {
  const sock = freshSocketPath();
  const server: Server = createServer((s) => {
    s.setEncoding('utf8');
    s.write(greeting + '\n');
    let buf = '';
    s.on('data', (d: string) => {
      buf += d;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        reply(buf.slice(0, nl), s);
        buf = buf.slice(nl + 1);
      }
    });
    s.on('error', () => {}); // the client hangs up on garbage: expected
  });
  await new Promise<void>((r) => server.listen(sock, () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return sock;
}

const GOOD_GREETING = JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 }, package: 'fake' }, capabilities: [] } });

/** Answers qmp_capabilities properly, then `then` for everything else. */
function capsThen(then: (id: unknown, s: Socket) => void) {
  return (line: string, s: Socket) => {
    const msg = JSON.parse(line) as { execute: string; id: unknown };
    if (msg.execute === 'qmp_capabilities') s.write(JSON.stringify({ return: {}, id: msg.id }) + '\n');
    else then(msg.id, s);
  };
}

t.test('garbage: a greeting that is not QMP', async (t) => {
  const sock = await fakeServer(t, '{"hello": "world"}', () => {});
  await t.rejects(QmpClient.connect(sock, { connectTimeoutMs: 2000, log }), {
    name: 'QmpConnectionError',
    message: /QEMU sent something that is not QMP: expected the greeting, got .*hello/,
  });
});

t.test('garbage: a non-JSON line while a command waits', async (t) => {
  const sock = await fakeServer(t, GOOD_GREETING, capsThen((_id, s) => s.write('Segmentation fault?\n')));
  const client = await QmpClient.connect(sock, { connectTimeoutMs: 2000, log });
  t.teardown(() => client.close());
  const err = await client.execute('query-status').then(
    () => null,
    (e: unknown) => e,
  );
  t.type(err, QmpConnectionError);
  t.equal((err as QmpConnectionError).command, 'query-status');
  t.match((err as Error).message, /query-status got no reply: QEMU sent something that is not QMP: not JSON: "Segmentation fault\?"/);
  t.match((await client.closed).message, /not QMP/, 'the connection is closed');
});

t.test('garbage: JSON that is no QMP message, and an endless line', async (t) => {
  const sock = await fakeServer(t, GOOD_GREETING, capsThen((id, s) => s.write(JSON.stringify({ id, result: 42 }) + '\n')));
  const client = await QmpClient.connect(sock, { connectTimeoutMs: 2000, log });
  t.teardown(() => client.close());
  await t.rejects(client.execute('query-status'), { name: 'QmpConnectionError', message: /not QMP: .*result/ });

  const sock2 = await fakeServer(t, GOOD_GREETING, capsThen((_id, s) => s.write('{"return": "' + 'x'.repeat(4096))));
  const client2 = await QmpClient.connect(sock2, { connectTimeoutMs: 2000, maxLineLength: 1024, log });
  t.teardown(() => client2.close());
  await t.rejects(client2.execute('query-status'), { name: 'QmpConnectionError', message: /not QMP: a line longer than 1024 bytes/ });
});
