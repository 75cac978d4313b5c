/**
 * The error paths of checkpoint and restore (src/hypervisor/qemu/checkpoint.ts).
 * Real QEMU where it can provoke the failure (a small TCG VM, no guest OS:
 * its state is under 1 MiB and saves in a moment). Two failures QEMU cannot
 * be made to produce use stand-ins, each marked STAND-IN below:
 *  - QEMU that never connects to symbio's socket / never listens on its
 *    own: a small Node script in QEMU's place that speaks just enough QMP;
 *  - a state file that shrinks while it is written: a test-driven writer in
 *    QEMU's place (a real QEMU keeps writing at its own offset, so a file
 *    truncated under it grows back at once).
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { QemuVm } from '../../src/hypervisor/qemu/qemu-vm.js';
import {
  CheckpointError,
  checkpointVm,
  followWrites,
  manifestFileName,
  readVmManifest,
  restoreVm,
  stateFileName,
  type VmCheckpointManifest,
} from '../../src/hypervisor/qemu/checkpoint.js';
import type { VmSpec, VmSpecInput } from '../../src/hypervisor/qemu/vm-spec.js';

const log = pino({ level: process.env.SYMBIO_TEST_LOG ?? 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'symbio-ckerr-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const vms: QemuVm[] = [];
t.teardown(() => Promise.all(vms.map((vm) => vm.kill())));

let seq = 0;
const sockPath = () => join(dir, `q${++seq}.sock`);
const spec = (over: Partial<VmSpecInput> = {}): VmSpecInput => ({ name: 'ck', memoryMiB: 64, qmpSocket: sockPath(), ...over });
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const rejection = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as Error);

/** Processes whose command line mentions `needle` (a QMP socket path: one per QEMU). */
function processesWith(needle: string): string[] {
  return readdirSync('/proc')
    .filter((pid) => /^\d+$/.test(pid))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle);
      } catch {
        return false;
      }
    });
}

/** A real checkpoint to break in different ways: a fresh directory each time. */
async function realCheckpoint(): Promise<{ ck: string; manifestPath: string; statePath: string; m: VmCheckpointManifest }> {
  const ck = join(dir, `ck-${++seq}`);
  mkdirSync(ck);
  const vm = await QemuVm.start(spec(), { log });
  vms.push(vm);
  const m = await checkpointVm(vm, ck, { log });
  await vm.kill();
  return { ck, m, manifestPath: join(ck, manifestFileName('ck')), statePath: join(ck, stateFileName('ck')) };
}

t.test('QEMU cannot load the state (the spec was changed to 128 MiB of RAM): refused, nothing left running', async (t) => {
  const { manifestPath, statePath, m } = await realCheckpoint();
  const before = sha(statePath);
  const restoreSock = sockPath();
  const err = await rejection(restoreVm(manifestPath, { log, adapt: (s) => ({ ...s, memoryMiB: 128, qmpSocket: restoreSock }) }));
  t.type(err, CheckpointError);
  // QEMU 7.2 to 10 exit when the incoming stream fails to load, so the
  // refusal carries QEMU's stderr; which of the two messages depends on
  // whether the MIGRATION failed event or the exit is seen first
  t.match(err?.message, /(QEMU could not load .*ck\.vmstate|restore of VM ck from .* failed: .*QEMU said:).*Size mismatch: pc\.ram: 0x4000000 != 0x8000000/s);
  t.notMatch(err?.message, /does not match its manifest/, 'the file is not blamed: it matches its manifest');
  t.same(processesWith(restoreSock), [], 'the QEMU that could not load is gone');
  t.equal(sha(statePath), before, 'the state file is untouched');
  t.equal(m.sha256, before);
});

t.test('the state file is missing: refused before any QEMU starts', async (t) => {
  const { manifestPath, statePath } = await realCheckpoint();
  rmSync(statePath);
  const restoreSock = sockPath();
  const err = await rejection(restoreVm(manifestPath, { log, adapt: (s) => ({ ...s, qmpSocket: restoreSock }) }));
  t.type(err, CheckpointError);
  t.match(err?.message, new RegExp(`checkpoint state file ${statePath.replace(/[.]/g, '\\.')} is missing: ENOENT`));
  t.equal(existsSync(restoreSock), false, 'no QEMU was started (it would have made its QMP socket)');
});

t.test('invalid manifests and specs: the error names the file and the field', async (t) => {
  const { manifestPath } = await realCheckpoint();
  const good = JSON.parse(readFileSync(manifestPath, 'utf8')) as Record<string, unknown>;
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['a checksum that is no sha256', { ...good, sha256: 'abc' }, /is not a symbio VM manifest: sha256: /],
    ['another format', { ...good, format: 2 }, /is not a symbio VM manifest: format: /],
    ['a field too many', { ...good, extra: 1 }, /is not a symbio VM manifest: .*extra/],
    ['no state file', { ...good, stateFile: undefined }, /is not a symbio VM manifest: stateFile: /],
    ['a spec with 1 MiB of RAM', { ...good, spec: { ...(good.spec as object), memoryMiB: 1 } }, /holds an invalid VM spec: .*(32|too small)/i],
    ['a spec that is not an object', { ...good, spec: 'vm' }, /holds an invalid VM spec: /],
  ];
  for (const [what, manifest, message] of cases) {
    const p = join(dir, `bad-${++seq}.manifest.json`);
    writeFileSync(p, JSON.stringify(manifest));
    t.throws(() => readVmManifest(p), { name: 'CheckpointError', message: new RegExp(`checkpoint manifest ${p.replace(/[.]/g, '\\.')} ${message.source}`) }, what);
  }
  // and restore refuses it before starting QEMU
  writeFileSync(manifestPath, JSON.stringify({ ...good, sha256: 'abc' }));
  const restoreSock = sockPath();
  await t.rejects(restoreVm(manifestPath, { log, adapt: (s) => ({ ...s, qmpSocket: restoreSock }) }), { name: 'CheckpointError', message: /not a symbio VM manifest: sha256/ });
  t.equal(existsSync(restoreSock), false, 'no QEMU was started');
});

// STAND-IN: a "QEMU" that answers QMP (the commands checkpoint and restore
// send) but never opens a migration stream. Real QEMU connects or fails at
// once; only a stand-in can leave symbio waiting. It appends every command
// it gets to <qmp socket>.log.
const standIn = join(dir, 'fake-qemu.mjs');
writeFileSync(
  standIn,
  `#!${process.execPath}
import { createServer } from 'node:net';
import { appendFileSync } from 'node:fs';
const argv = process.argv.slice(2);
const sock = argv[argv.indexOf('-qmp') + 1].replace(/^unix:/, '').split(',')[0];
let running = !argv.includes('-incoming');
let migration;
const answer = {
  'query-status': () => ({ status: running ? 'running' : 'paused', running }),
  'query-version': () => ({ qemu: { major: 10, minor: 0, micro: 2 }, package: 'stand-in' }),
  'qom-get': () => 'pc-i440fx-10.0-machine',
  stop: () => ((running = false), {}),
  cont: () => ((running = true), {}),
  migrate: () => ((migration = 'setup'), {}),
  migrate_cancel: () => ((migration = migration && 'cancelled'), {}),
  'query-migrate': () => (migration ? { status: migration } : {}),
};
createServer((s) => {
  s.write(JSON.stringify({ QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 }, package: 'stand-in' }, capabilities: [] } }) + '\\n');
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    for (let nl = buf.indexOf('\\n'); nl >= 0; nl = buf.indexOf('\\n')) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const m = JSON.parse(line);
      appendFileSync(sock + '.log', m.execute + '\\n');
      s.write(JSON.stringify({ return: (answer[m.execute] ?? (() => ({})))(), id: m.id }) + '\\n');
    }
  });
  s.on('error', () => {});
}).listen(sock);
`,
);
chmodSync(standIn, 0o755);
const commandsSeen = (qmpSocket: string) => (existsSync(`${qmpSocket}.log`) ? readFileSync(`${qmpSocket}.log`, 'utf8').trim().split('\n') : []);

t.test('connect timeouts (STAND-IN QEMU that never opens the stream)', async (t) => {
  t.test('checkpoint through the socket: QEMU never connects', async (t) => {
    const ck = join(dir, `ck-${++seq}`);
    mkdirSync(ck);
    const s = spec({ qemuBinary: standIn });
    const vm = await QemuVm.start(s, { log });
    vms.push(vm);
    const t0 = performance.now();
    const err = await rejection(checkpointVm(vm, ck, { log, via: 'socket', connectTimeoutMs: 300, timeoutMs: 20_000 }));
    const took = performance.now() - t0;
    t.type(err, CheckpointError);
    t.match(err?.message, /^checkpoint of ck: QEMU did not connect within 300 ms$/);
    t.ok(took >= 300 && took < 10_000, `gave up at its connect timeout, not the migration's 20 s (${Math.round(took)} ms)`);
    const seen = commandsSeen(s.qmpSocket);
    const migrate = seen.indexOf('migrate');
    t.ok(migrate >= 0 && seen.indexOf('migrate_cancel', migrate) > migrate, 'the migration was cancelled after it was started');
    t.ok(seen.lastIndexOf('cont') > seen.indexOf('migrate_cancel'), 'and the guest continued after that');
    t.same((await vm.status()).running, true, 'the guest runs');
    t.same(readdirSync(ck), [], 'no state file, no manifest');
  });

  t.test('restore: QEMU never listens for the stream', async (t) => {
    const ck = join(dir, `ck-${++seq}`);
    mkdirSync(ck);
    // a manifest and a state file that pass every check made before QEMU starts
    writeFileSync(join(ck, stateFileName('ck')), 'x'.repeat(100));
    const manifest = {
      format: 1, vm: 'ck', createdAt: new Date().toISOString(), stateFile: stateFileName('ck'), stateBytes: 100, sha256: sha(join(ck, stateFileName('ck'))),
      qemuVersion: '10.0.2', machineType: 'pc-i440fx-10.0', memoryMiB: 64, wasRunning: true, saveMs: 1, spec: spec(), argv: [],
    };
    writeFileSync(join(ck, manifestFileName('ck')), JSON.stringify(manifest));
    const restoreSock = sockPath();
    const err = await rejection(
      restoreVm(join(ck, manifestFileName('ck')), { log, connectTimeoutMs: 300, adapt: (s: VmSpec) => ({ ...s, qemuBinary: standIn, qmpSocket: restoreSock }) }),
    );
    t.type(err, CheckpointError);
    t.match(err?.message, /^QEMU is not listening on \/.*\/s for the restore: .*(ENOENT|ECONNREFUSED)/);
    t.ok(commandsSeen(restoreSock).includes('migrate-incoming'), 'it got as far as migrate-incoming');
    t.same(processesWith(restoreSock), [], 'the stand-in QEMU was killed');
  });
});

t.test('a state file that shrinks while it is written (STAND-IN writer)', async (t) => {
  // STAND-IN: the test writes the file in QEMU's place, so it can truncate
  // it at a known point: 8 MiB are there when followWrites starts, and the
  // file is cut to nothing while it reads them. Whichever comes first (its
  // read finds nothing, or its next look finds the file shorter than what
  // it hashed), it must fail rather than hash what is no longer there.
  const path = join(dir, 'shrinks.vmstate');
  const fd = openSync(path, 'w+');
  t.teardown(() => closeSync(fd));
  writeSync(fd, Buffer.alloc(8 << 20, 0xab));
  let finish!: () => void;
  const writer = new Promise<void>((r) => (finish = r));
  const marks: string[] = [];
  const following = followWrites(fd, writer, (phase) => marks.push(phase));
  truncateSync(path, 0);
  const err = await rejection(following);
  finish();
  t.type(err, CheckpointError);
  t.match(err?.message, /^the state file shrank while QEMU wrote it \((nothing to read at byte \d+ of \d+|0 bytes, \d+ hashed already)\)$/);
  t.same(marks, [], 'neither hashed nor synced: nothing to keep');

  // the same file, not truncated: followed to the end once the writer is done
  const fd2 = openSync(join(dir, 'grows.vmstate'), 'w+');
  t.teardown(() => closeSync(fd2));
  writeSync(fd2, Buffer.alloc(3 << 20, 0xcd));
  let finish2!: () => void;
  const writer2 = new Promise<void>((r) => (finish2 = r));
  const following2 = followWrites(fd2, writer2, () => undefined);
  writeSync(fd2, Buffer.alloc(1 << 20, 0xef));
  finish2();
  const ok = await following2;
  t.same(ok, { bytes: 4 << 20, sha256: createHash('sha256').update(Buffer.concat([Buffer.alloc(3 << 20, 0xcd), Buffer.alloc(1 << 20, 0xef)])).digest('hex') });
});
