/**
 * The error paths of live migration (src/hypervisor/qemu/migration.ts and
 * live-migrate.ts), provoked with real QEMU: small TCG VMs without a guest
 * OS. Two kinds of guest:
 *  - "payload": the BIOS spins and QEMU's loader put 16 MiB of random bytes
 *    into RAM (read back with pmemsave: the guest's memory must survive);
 *  - "dirtier": a 23-byte multiboot kernel (built below) that increments one
 *    word in every page of 16..64 MiB, for ever: precopy never converges,
 *    which is what hybrid's switch-over rules are about.
 * Bandwidth caps (max-bandwidth for precopy, max-postcopy-bandwidth for
 * postcopy) make a migration last long enough to time it out, kill the
 * destination, or cancel it.
 */
import t from 'tap';
import { guestMemoryHash } from '../helpers/guest-memory.js';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { QemuVm } from '../../src/hypervisor/qemu/qemu-vm.js';
import { liveMigrate, startDestination } from '../../src/hypervisor/qemu/live-migrate.js';
import {
  MigrationError,
  migrationConflicts,
  migrationOptionsSchema,
  prepareIncoming,
  prepareOutgoing,
  runOutgoingMigration,
  waitMigrationSettled,
} from '../../src/hypervisor/qemu/migration.js';
import type { VmSpecInput } from '../../src/hypervisor/qemu/vm-spec.js';
import { captureLogger } from '../helpers/log.js';

const dir = mkdtempSync(join(tmpdir(), 'symbio-migerr-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const quiet = pino({ level: process.env.SYMBIO_TEST_LOG ?? 'silent' });

const PAYLOAD_ADDR = 16 * 2 ** 20;
const PAYLOAD_BYTES = 16 * 2 ** 20;
const payloadPath = join(dir, 'payload.bin');
writeFileSync(payloadPath, randomBytes(PAYLOAD_BYTES));
const payloadSha = createHash('sha256').update(readFileSync(payloadPath)).digest('hex');

/**
 * Multiboot (a.out kludge: no ELF needed), loaded and entered at 1 MiB in
 * 32-bit protected mode:
 *   start: mov edi, 0x01000000
 *   loop:  inc dword [edi] ; add edi, 4096 ; cmp edi, 0x04000000 ; jb loop
 *          jmp start
 */
const dirtierPath = join(dir, 'dirtier.bin');
{
  const b = Buffer.alloc(64);
  const magic = 0x1badb002;
  const flags = 0x00010000;
  [magic, flags, (-(magic + flags)) >>> 0, 0x100000, 0x100000, 0, 0, 0x100020].forEach((v, i) => b.writeUInt32LE(v, i * 4));
  Buffer.from([0xbf, 0, 0, 0, 1, 0xff, 0x07, 0x81, 0xc7, 0, 0x10, 0, 0, 0x81, 0xff, 0, 0, 0, 4, 0x72, 0xf0, 0xeb, 0xe9]).copy(b, 32);
  writeFileSync(dirtierPath, b);
}

const vms: QemuVm[] = [];
t.teardown(() => Promise.all(vms.map((vm) => vm.kill())));
const track = (vm: QemuVm) => (vms.push(vm), vm);

let seq = 0;
const base = (): VmSpecInput => ({ name: 'mig', memoryMiB: 128, qmpSocket: join(dir, `q${++seq}.sock`) });
const payloadSpec = (): VmSpecInput => ({ ...base(), extraArgs: ['-device', `loader,file=${payloadPath},addr=${PAYLOAD_ADDR},force-raw=on`] });
const dirtierSpec = (): VmSpecInput => ({ ...base(), kernel: { path: dirtierPath } });

async function startVm(spec: VmSpecInput, log = quiet): Promise<QemuVm> {
  return track(await QemuVm.start(spec, { log }));
}
async function startDst(spec: VmSpecInput = base()): Promise<QemuVm> {
  return track(await startDestination(spec, { log: quiet }));
}

const payloadHash = (vm: QemuVm): Promise<string> => guestMemoryHash(vm, PAYLOAD_ADDR, PAYLOAD_BYTES, join(dir, `pmem-${++seq}.bin`));
/** Until the dirtier guest has booted and is dirtying (the first word of its region counts up). */
async function dirtying(vm: QemuVm): Promise<void> {
  const file = join(dir, `probe-${++seq}.bin`);
  const deadline = Date.now() + 30_000;
  for (let last = -1; ; ) {
    await vm.qmp.execute('pmemsave', { val: 16 * 2 ** 20, size: 4, filename: file });
    const now = readFileSync(file).readUInt32LE(0);
    if (now !== 0 && last !== -1 && now !== last) break;
    if (Date.now() > deadline) throw new Error(`the dirtier guest did not start within 30 s (word: ${now})`);
    last = now;
    await new Promise((r) => setTimeout(r, 20));
  }
  rmSync(file);
}
const migrateStatus = async (vm: QemuVm) => (await vm.qmp.execute<{ status?: string }>('query-migrate')).status;
const rejection = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as Error);

t.test('timeout in precopy: MigrationError, the guest runs on at the source, the destination is gone', async (t) => {
  const src = await startVm(payloadSpec());
  const dst = await startDst();
  const t0 = performance.now();
  // 2 MiB/s: the 16 MiB payload would take 8 s
  const err = await rejection(liveMigrate(src, dst, { mode: 'precopy', bandwidthBps: 2 * 2 ** 20, timeoutMs: 700, progressIntervalMs: 50 }, { log: quiet }));
  t.type(err, MigrationError);
  t.match(err, { guestOn: 'source', message: /migration of mig did not complete within 700 ms \(status active, \d+ bytes left\)/ });
  t.ok(performance.now() - t0 >= 700, 'not before the timeout');
  t.equal(await migrateStatus(src), 'cancelled', 'the source cancelled its side');
  t.same(await src.status(), { status: 'running', running: true });
  t.equal(dst.running, false, 'the destination QEMU was killed');
  t.equal(await payloadHash(src), payloadSha, 'the guest memory is intact');
});

t.test('timeout during postcopy: the guest is lost, the source is not continued', async (t) => {
  const src = await startVm(payloadSpec());
  // postcopy's own cap (prepareOutgoing leaves it alone): 1 MiB/s
  await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 2 ** 20 });
  const dst = await startDst();
  const err = await rejection(liveMigrate(src, dst, { mode: 'postcopy', bandwidthBps: 2 * 2 ** 20, timeoutMs: 700, progressIntervalMs: 50 }, { log: quiet }));
  t.type(err, MigrationError);
  t.match(err, { guestOn: 'lost', message: /did not complete within 700 ms \(status postcopy-active, \d+ bytes left\)/ });
  t.equal((await src.status()).running, false, 'the source guest stays stopped (its state went on to the destination)');
  t.equal(await migrateStatus(src), 'postcopy-active', 'not cancelled: postcopy cannot go back');
  t.equal(dst.running, true, 'the destination, which holds the guest now, is left alone');
});

t.test('postcopy failure: the destination dies after the switch-over', async (t) => {
  t.test('seen by the migration loop: postcopy-paused is a lost guest', async (t) => {
    const src = await startVm(payloadSpec());
    await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 2 * 2 ** 20 });
    const dst = await startDst();
    const o = migrationOptionsSchema.parse({ mode: 'postcopy', bandwidthBps: 2 * 2 ** 20, progressIntervalMs: 20, timeoutMs: 20_000 });
    const uri = `unix:${join(dir, `m${++seq}.sock`)}`;
    await prepareIncoming(dst, uri, o);
    await prepareOutgoing(src, o);
    const err = await rejection(
      runOutgoingMigration(src, uri, o, {
        log: quiet,
        onProgress: (p) => {
          if (p.postcopy && dst.running) process.kill(dst.pid, 'SIGKILL');
        },
      }),
    );
    t.type(err, MigrationError);
    t.match(await dst.exited, { signal: 'SIGKILL' }, 'the destination was killed in postcopy');
    t.match(err, { guestOn: 'lost', message: /migration of mig broke during postcopy \(postcopy-paused\): .*the guest's state was on the destination and is lost/ });
    t.equal(await migrateStatus(src), 'postcopy-paused');
  });

  t.test('through liveMigrate: guestOn lost, and no attempt to continue the source', async (t) => {
    const src = await startVm(payloadSpec());
    await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 2 * 2 ** 20 });
    const dst = await startDst();
    const c = captureLogger();
    const err = await rejection(
      liveMigrate(src, dst, { mode: 'postcopy', bandwidthBps: 2 * 2 ** 20, progressIntervalMs: 20, timeoutMs: 20_000 }, {
        log: c.log,
        onProgress: (p) => {
          if (p.postcopy && dst.running) process.kill(dst.pid, 'SIGKILL');
        },
      }),
    );
    t.type(err, MigrationError);
    t.match(err, { guestOn: 'lost', message: /exited during the migration \(SIGKILL\), after the switch to postcopy.*the guest is lost|broke during postcopy \(postcopy-paused\).*is lost/ });
    t.notOk(
      c.lines.some((l) => /continuing the guest on the source|could not continue/.test(String(l.msg))),
      'the stale source copy was not continued',
    );
    t.equal((await src.status()).running, false, 'the source guest stays stopped');
  });
});

t.test('cancel during postcopy: ignored with a warning, the migration completes intact', async (t) => {
  const src = await startVm(payloadSpec());
  await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 8 * 2 ** 20 });
  const dst = await startDst();
  const c = captureLogger();
  const ac = new AbortController();
  let abortedInPostcopy = false;
  const { vm, result } = await liveMigrate(src, dst, { mode: 'postcopy', bandwidthBps: 2 * 2 ** 20, progressIntervalMs: 20, timeoutMs: 30_000 }, {
    log: c.log,
    signal: ac.signal,
    onProgress: (p) => {
      if (p.postcopy && !ac.signal.aborted) {
        abortedInPostcopy = p.remainingBytes > 0;
        ac.abort();
      }
    },
  });
  t.ok(abortedInPostcopy, 'the cancel came while postcopy still had pages to send');
  t.equal(result.status, 'completed');
  t.equal(result.postcopyTrigger, 'mode');
  t.match(c.lines.find((l) => l.level === 40)?.msg, /cancel asked during postcopy: .*letting it finish/);
  t.equal(src.running, false, 'the source QEMU was shut down');
  t.same(await vm.status(), { status: 'running', running: true });
  t.equal(await payloadHash(vm), payloadSha, 'the guest memory arrived intact');
});

t.test('settle timeout: waitMigrationSettled gives up on a migration that stays active', async (t) => {
  const src = await startVm(payloadSpec());
  const dst = await startDst();
  const o = migrationOptionsSchema.parse({ mode: 'precopy', bandwidthBps: 2 ** 20 });
  const uri = `unix:${join(dir, `m${++seq}.sock`)}`;
  await prepareIncoming(dst, uri, o);
  await prepareOutgoing(src, o);
  await src.qmp.execute('migrate', { uri });
  const t0 = performance.now();
  const err = await rejection(waitMigrationSettled(src, 300));
  t.type(err, MigrationError);
  t.match(err, { guestOn: 'source', message: /the migration of mig is still '(setup|active)' 300 ms after it was cancelled/ });
  t.ok(performance.now() - t0 >= 300, 'not before its timeout');
  await src.qmp.execute('migrate_cancel');
  t.equal(await waitMigrationSettled(src, 10_000), 'cancelled', 'settles once cancelled');
  t.same(await src.status(), { status: 'running', running: true });
});

t.test('hybrid: which switch-over rule fired (a guest that dirties 48 MiB for ever)', async (t) => {
  const cases = [
    { trigger: 'passes', why: /^1 precopy passes done$/, o: { hybridMaxPasses: 1, hybridDirtyRatio: 10 } },
    { trigger: 'dirty-rate', why: /^dirty rate \d+ MB\/s against \d+ MB\/s sent$/, o: { hybridMaxPasses: 50, hybridDirtyRatio: 0.1 } },
    { trigger: 'no-progress', why: /^remaining RAM no longer shrinks \(pass \d+ began with \d+ bytes, pass \d+ with \d+\)$/, o: { hybridMaxPasses: 50, hybridDirtyRatio: 10 } },
  ] as const;
  for (const k of cases) {
    const src = await startVm(dirtierSpec());
    await dirtying(src);
    // 512 MiB/s: postcopy is quick once it starts
    await src.qmp.execute('migrate-set-parameters', { 'max-postcopy-bandwidth': 512 * 2 ** 20 });
    const c = captureLogger();
    const { vm, result } = await liveMigrate(src, dirtierSpec(), { mode: 'hybrid', bandwidthBps: 32 * 2 ** 20, progressIntervalMs: 50, timeoutMs: 60_000, ...k.o }, { log: c.log });
    track(vm);
    t.equal(result.postcopyTrigger, k.trigger, `${k.trigger}: the rule that fired`);
    t.not(result.postcopyStartedAtMs, null);
    const switched = c.lines.filter((l) => l.msg === 'switching to postcopy');
    t.equal(switched.length, 1, 'switched once');
    t.match(switched[0], { trigger: k.trigger, why: k.why });
    t.same(await vm.status(), { status: 'running', running: true }, 'the guest runs on the destination');
    await vm.kill();
  }
});

t.test('options this QEMU refuses together: said before either VM is touched', async (t) => {
  // the rules, per version (QEMU's migrate_caps_check)
  const o = (x: object) => migrationOptionsSchema.parse(x);
  const v = (major: number, minor: number) => ({ major, minor, micro: 0 });
  t.match(migrationConflicts(o({ mode: 'postcopy', multifdChannels: 2 }), v(7, 2)), [/QEMU 7\.2\.0 refuses multifd with postcopy/]);
  t.match(migrationConflicts(o({ mode: 'hybrid', multifdChannels: 2 }), v(10, 0)), [/QEMU 10\.0\.0 refuses multifd with hybrid \(QEMU 10\.1 and later take it\)/]);
  t.same(migrationConflicts(o({ mode: 'postcopy', multifdChannels: 2 }), v(10, 1)), []);
  t.same(migrationConflicts(o({ multifdChannels: 2, xbzrleCacheBytes: 2 ** 20 }), v(7, 2)), [], '7.2 took both');
  t.match(migrationConflicts(o({ multifdChannels: 2, xbzrleCacheBytes: 2 ** 20 }), v(8, 1)), [/refuses multifd with xbzrle \(since QEMU 8\.1\)/]);
  t.same(migrationConflicts(o({ mode: 'postcopy', xbzrleCacheBytes: 2 ** 20, autoConverge: true }), v(10, 0)), []);

  // and with this QEMU: the prepared destination is killed, the source untouched
  const src = await startVm(payloadSpec());
  const { qemu } = await src.qmp.queryVersion();
  const bad = { mode: 'precopy' as const, multifdChannels: 2, xbzrleCacheBytes: 2 ** 20 };
  if (migrationConflicts(o(bad), qemu).length === 0) {
    t.comment(`QEMU ${qemu.major}.${qemu.minor} takes multifd with xbzrle: nothing to refuse`);
    return;
  }
  const dst = await startDst();
  const err = await rejection(liveMigrate(src, dst, bad, { log: quiet }));
  t.type(err, MigrationError);
  t.match(err, { guestOn: 'source', message: /cannot migrate mig with these options: QEMU \d+\.\d+\.\d+ refuses multifd with xbzrle/ });
  t.equal(dst.running, false, 'the destination was not kept');
  t.equal(await migrateStatus(src), undefined, 'no migration was ever started on the source');
  const caps = await src.qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
  t.same(caps.filter((c) => c.state).map((c) => c.capability), [], 'no capability was set on the source');
  t.same(await src.status(), { status: 'running', running: true });
});
