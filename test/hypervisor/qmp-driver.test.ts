/**
 * The QMP driver against real QEMU, with a guest that needs no disk image:
 * the BIOS spins, and QEMU's generic loader puts 48 MiB of random bytes into
 * guest RAM. Those bytes are the guest's "work": after a migration or a
 * restore, `pmemsave` reads them back and they must be identical. What needs
 * a real kernel (hotplug seen by the guest, a memory-dirtying program, MPI)
 * is in test/vcluster/.
 */
import t from 'tap';
import { guestMemoryHash } from '../helpers/guest-memory.js';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync, openSync, writeSync, closeSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpDriver } from '../../src/hypervisor/qmp-driver.js';
import { QemuStartError, type QemuVm } from '../../src/hypervisor/qemu/qemu-vm.js';
import { parseVmSpec, qemuArgv, VmSpecError, type VmSpec, type VmSpecInput } from '../../src/hypervisor/qemu/vm-spec.js';
import { MigrationError } from '../../src/hypervisor/qemu/migration.js';
import { CheckpointError, checkpointVm, manifestFileName, stateFileName } from '../../src/hypervisor/qemu/checkpoint.js';
import { QmpError } from '../../src/hypervisor/qmp/client.js';
import { sendFd } from '../../src/native.js';
import { logger } from '../../src/log.js';
import { captureLogger } from '../helpers/log.js';

const log = logger.child({ test: 'qmp-driver' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

const dir = mkdtempSync(join(tmpdir(), 'symbio-drv-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const PAYLOAD_ADDR = 16 * 1024 * 1024;
const PAYLOAD_BYTES = 48 * 1024 * 1024;
const payloadPath = join(dir, 'payload.bin');
writeFileSync(payloadPath, randomBytes(PAYLOAD_BYTES));
const payloadSha = createHash('sha256').update(readFileSync(payloadPath)).digest('hex');

const driver = new QmpDriver({ log });
const started: QemuVm[] = [];
t.teardown(async () => {
  await Promise.all(started.map((vm) => vm.kill()));
});

let seq = 0;
function spec(over: Partial<VmSpecInput> = {}): VmSpecInput {
  const n = ++seq;
  return {
    name: 'drv',
    memoryMiB: 128,
    qmpSocket: join(dir, `qmp-${n}.sock`),
    nics: [{ id: 'ic', mac: '52:54:00:aa:00:01', net: { type: 'mcast', port: 24000 + (process.pid % 1000) }, addr: 7 }],
    balloon: { addr: 6 },
    extraArgs: ['-device', `loader,file=${payloadPath},addr=${PAYLOAD_ADDR},force-raw=on`],
    ...over,
  };
}
/** The destination: same devices, its own socket, no loader (RAM comes from the stream). */
const destSpec = (over: Partial<VmSpecInput> = {}) => spec({ extraArgs: [], ...over });

async function start(s: VmSpecInput): Promise<QemuVm> {
  const vm = await driver.start(s);
  started.push(vm);
  return vm;
}
const track = (vm: QemuVm) => (started.push(vm), vm);

/** The guest's payload region, read back through QMP. */
const payloadHash = (vm: QemuVm): Promise<string> => guestMemoryHash(vm, PAYLOAD_ADDR, PAYLOAD_BYTES, join(dir, `pmem-${++seq}.bin`));

t.test('specs are validated, and the argv pins every device', async (t) => {
  t.throws(() => parseVmSpec({ name: 'x', memoryMiB: 64, qmpSocket: '/q', nics: [{ id: 'a', mac: '52:54:00:00:00:01', net: { type: 'user' }, addr: 3 }, { id: 'b', mac: '52:54:00:00:00:01', net: { type: 'user' }, addr: 3 }] }), {
    name: 'VmSpecError',
    message: /nics\.1\.addr: PCI slot 3 is taken by nic a already; nics\.1\.mac: MAC 52:54:00:00:00:01 is used twice/,
  });
  t.throws(() => parseVmSpec({ name: 'x', memoryMiB: 64, qmpSocket: '/a,b' }), /qmpSocket: a path without commas/);
  t.throws(() => parseVmSpec({ name: 'X Y', memoryMiB: 64, qmpSocket: '/q' }), VmSpecError);
  const s = parseVmSpec({
    name: 'vm0',
    memoryMiB: 256,
    cpus: 2,
    qmpSocket: '/run/q.sock',
    kernel: { path: '/img/vmlinuz', initrd: '/img/initrd', cmdline: 'console=ttyS0' },
    disks: [{ id: 'root', path: '/img/root.img', readOnly: true, addr: 2 }],
    nics: [
      { id: 'mgmt', mac: '52:54:00:10:00:01', net: { type: 'mcast', port: 5000 }, addr: 3 },
      { id: 'host', mac: '52:54:00:30:00:01', net: { type: 'user', hostForwards: [{ hostPort: 2222, guestPort: 22 }] }, addr: 4 },
      { id: 'ic', mac: '52:54:00:20:00:01', net: { type: 'mcast', port: 5001 }, addr: 7, attached: false },
    ],
    serial: { addr: 5, ports: [{ id: 'agent', name: 'org.symbio.agent', socketPath: '/run/agent.sock' }] },
    balloon: { addr: 6 },
  });
  const argv = qemuArgv(s).join(' ');
  t.match(argv, '-machine pc -accel tcg,thread=multi -m 256M -smp 2 -nodefaults');
  t.match(argv, '-drive file=/img/root.img,if=none,id=drv-root,format=raw,readonly=on -device virtio-blk-pci,drive=drv-root,id=root,addr=0x2');
  t.match(argv, '-netdev socket,id=net-mgmt,mcast=230.0.0.1:5000,localaddr=127.0.0.1 -device virtio-net-pci,id=mgmt,netdev=net-mgmt,mac=52:54:00:10:00:01,addr=0x3,romfile=');
  t.match(argv, '-netdev user,id=net-host,hostfwd=tcp:127.0.0.1:2222-:22');
  // a NIC that is not attached keeps its backend and has no -device
  t.match(argv, '-netdev socket,id=net-ic,mcast=230.0.0.1:5001');
  t.notMatch(argv, 'id=ic,');
  t.match(argv, '-chardev socket,id=chr-agent,path=/run/agent.sock,server=on,wait=off -device virtserialport,bus=vser.0,chardev=chr-agent,id=agent,name=org.symbio.agent');
  t.match(argv, 'virtio-balloon-pci,id=balloon,addr=0x6,free-page-hint=on,iothread=balloon-io');
});

t.test('start failures carry QEMU\'s own explanation', async (t) => {
  const noBinary = await driver.start(spec({ qemuBinary: join(dir, 'no-such-qemu') })).then(() => null, (e: unknown) => e);
  t.type(noBinary, QemuStartError);
  t.match(noBinary, { name: 'QemuStartError', message: /cannot run .*no-such-qemu.*install QEMU/ });
  const noDisk = await driver.start(spec({ disks: [{ id: 'd', path: join(dir, 'missing.img'), addr: 2 }] })).then(() => null, (e: unknown) => e);
  t.type(noDisk, QemuStartError);
  t.match(noDisk, { message: /QEMU for VM drv exited during start-up \(code 1\): .*missing\.img.*No such file or directory/ });
});

t.test('status, pause and resume, with the events QEMU sends (2 vCPUs, multi-threaded TCG)', async (t) => {
  const vm = await start(spec({ cpus: 2 }));
  t.same(await driver.status(vm), { status: 'running', running: true });
  const stopped = vm.qmp.waitForEvent('STOP', undefined, 5000);
  await driver.pause(vm);
  await stopped;
  t.same(await driver.status(vm), { status: 'paused', running: false });
  const resumed = vm.qmp.waitForEvent('RESUME', undefined, 5000);
  await driver.resume(vm);
  await resumed;
  t.equal((await driver.status(vm)).status, 'running');
  t.equal(await vm.hasDevice('ic'), true);
  await driver.stop(vm);
  t.equal(vm.running, false);
});

for (const mode of ['precopy', 'postcopy', 'hybrid'] as const) {
  t.test(`live migration, ${mode}: the guest's memory arrives intact and runs on the destination`, async (t) => {
    const src = await start(spec());
    const progress: number[] = [];
    const { vm: dst, result } = await driver.migrate(src, destSpec(), { mode, hybridMaxPasses: 1 }, { onProgress: (p) => progress.push(p.remainingBytes) });
    track(dst);
    t.equal(result.status, 'completed');
    t.equal(result.mode, mode);
    t.ok(result.transferredBytes >= PAYLOAD_BYTES, `sent ${result.transferredBytes} bytes, at least the payload`);
    t.ok(result.transferredBytes < 128 * 1024 * 1024, 'zero pages are not sent in full');
    if (mode === 'postcopy') t.not(result.postcopyStartedAtMs, null, 'postcopy was started');
    t.ok(result.samples.length >= 1 && progress.length === result.samples.length, 'progress samples reported');
    t.equal(src.running, false, 'the source QEMU is gone');
    t.same(await dst.status(), { status: 'running', running: true });
    t.equal(await payloadHash(dst), payloadSha);
    await dst.shutdown();
  });
}

// (QEMU 8.1 and later refuse multifd with xbzrle: migration-errors.test.ts checks the refusal)
t.test('precopy with multifd, auto-converge, a downtime limit and a bandwidth cap; xbzrle without multifd', async (t) => {
  const src = await start(spec());
  const { vm: dst, result } = await driver.migrate(src, destSpec(), { mode: 'precopy', multifdChannels: 2, autoConverge: true, downtimeLimitMs: 50, bandwidthBps: 400 * 2 ** 20 });
  track(dst);
  t.equal(result.status, 'completed');
  t.equal(result.postcopyTrigger, null, 'precopy never switched');
  t.equal(await payloadHash(dst), payloadSha);
  const params = await dst.qmp.execute<Record<string, unknown>>('query-migrate-parameters');
  t.equal(params['multifd-channels'], 2, 'the destination took the same multifd channels');
  const { vm: dst2, result: r2 } = await driver.migrate(dst, destSpec(), { mode: 'precopy', xbzrleCacheBytes: 8 * 2 ** 20, bandwidthBps: 400 * 2 ** 20 });
  track(dst2);
  t.equal(r2.status, 'completed');
  t.equal(dst.running, false, 'the first destination, the source of the second move, is gone');
  t.equal(await payloadHash(dst2), payloadSha);
  await dst2.shutdown();
});

t.test('a cancelled migration leaves the guest running on the source', async (t) => {
  const src = await start(spec());
  const ac = new AbortController();
  // 8 MiB/s: the payload takes ~6 s, time enough to cancel
  const p = driver.migrate(src, destSpec(), { mode: 'precopy', bandwidthBps: 8 * 2 ** 20 }, {
    signal: ac.signal,
    onProgress: (s) => {
      if (s.transferredBytes > 4 * 2 ** 20) ac.abort();
    },
  });
  await t.rejects(p, { name: 'MigrationError', message: /was cancelled/, guestOn: 'source' });
  t.same(await src.status(), { status: 'running', running: true });
  t.equal(await payloadHash(src), payloadSha);
});

t.test('the destination QEMU killed mid-migration: the guest goes on at the source', async (t) => {
  const src = await start(spec());
  const dst = track(await driver.prepareDestination(destSpec()));
  const p = driver.migrate(src, dst, { mode: 'precopy', bandwidthBps: 8 * 2 ** 20 }, {
    onProgress: (s) => {
      if (s.transferredBytes > 2 * 2 ** 20 && dst.running) process.kill(dst.pid, 'SIGKILL');
    },
  });
  const err = (await p.catch((e: unknown) => e)) as MigrationError;
  t.type(err, MigrationError);
  t.equal(err.guestOn, 'source');
  t.match(err.message, /destination QEMU of drv exited|migration of drv failed/);
  t.same(await src.status(), { status: 'running', running: true });
  t.equal(await payloadHash(src), payloadSha);
});

t.test('checkpoint, kill, restore: the guest comes back exactly; a bad file is refused', async (t) => {
  const ck = join(dir, 'ckpt');
  rmSync(ck, { recursive: true, force: true });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(ck);
  const vm = await start(spec());
  const m = await driver.checkpoint(vm, ck);
  t.equal(m.vm, 'drv');
  // the versioned name of the 'pc' alias: the running QEMU's own machine version
  const v = (await vm.qmp.queryVersion()).qemu;
  t.equal(m.machineType, `pc-i440fx-${v.major}.${v.minor}`);
  t.equal(m.qemuVersion, `${v.major}.${v.minor}.${v.micro}`);
  t.equal(m.wasRunning, true);
  t.equal(m.stateBytes, statSync(join(ck, stateFileName('drv'))).size);
  t.equal(m.sha256, createHash('sha256').update(readFileSync(join(ck, stateFileName('drv')))).digest('hex'));
  t.ok(m.stateBytes < PAYLOAD_BYTES + 8 * 2 ** 20, `state ${m.stateBytes} bytes: zero pages cost next to nothing`);
  t.match(m.argv.join(' '), /-m 128M/);
  t.same(await vm.status(), { status: 'running', running: true }, 'the guest runs on after a checkpoint');
  process.kill(vm.pid, 'SIGKILL');
  await vm.exited;

  const adapt = (s: typeof m.spec) => ({ ...s, qmpSocket: join(dir, `qmp-r${++seq}.sock`), extraArgs: [] });
  const manifestPath = join(ck, manifestFileName('drv'));
  const r = await driver.restore(manifestPath, { adapt });
  track(r.vm);
  t.same(await r.vm.status(), { status: 'running', running: true });
  t.equal(await payloadHash(r.vm), payloadSha, 'RAM restored byte for byte');
  await r.vm.shutdown();

  // one flipped byte in the middle of the payload's pages
  const statePath = join(ck, stateFileName('drv'));
  const good = readFileSync(statePath);
  const fd = openSync(statePath, 'r+');
  writeSync(fd, Buffer.from([good[Math.floor(good.length / 2)]! ^ 0xff]), 0, 1, Math.floor(good.length / 2));
  closeSync(fd);
  await t.rejects(driver.restore(manifestPath, { adapt }), { name: 'CheckpointError', message: new RegExp(`${stateFileName('drv')} does not match its manifest .*corrupt`) });

  writeFileSync(statePath, good);
  truncateSync(statePath, good.length - 4096);
  await t.rejects(driver.restore(manifestPath, { adapt }), { name: 'CheckpointError', message: /has \d+ bytes, its manifest says \d+: it is truncated/ });

  writeFileSync(manifestPath, '{"format": 1, "vm": ');
  const unreadable = await driver.restore(manifestPath, { adapt }).then(() => null, (e: unknown) => e);
  t.type(unreadable, CheckpointError);
  t.match(unreadable, { message: /manifest .* is unreadable: .*JSON/ });
  const restoreQemus = readdirSync('/proc')
    .filter((pid) => /^\d+$/.test(pid))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(join(dir, 'qmp-r'));
      } catch {
        return false;
      }
    });
  t.same(restoreQemus, [], 'no QEMU left running by the refused restores');
});


/** Whether `cond` holds within `ms` (polled). */
async function within(ms: number, cond: () => boolean): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** Files a process holds open, by path. */
function openFiles(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.push(readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

t.test('checkpoint through a descriptor QEMU writes itself, and through the socket: both restore exactly', async (t) => {
  const vm = await start(spec());
  const adapt = (s: VmSpec) => ({ ...s, qmpSocket: join(dir, `qmp-r${++seq}.sock`), extraArgs: [] });
  for (const via of ['fd', 'socket'] as const) {
    const ck = join(dir, `ckpt-${via}`);
    mkdirSync(ck);
    const c = captureLogger();
    const m = await checkpointVm(vm, ck, { log: c.log, via });
    const written = c.lines.find((l) => l.msg === 'checkpoint written');
    t.equal(written?.via, via, `the state went through the ${via === 'fd' ? 'descriptor' : 'socket'}`);
    if (via === 'fd') {
      // QEMU 9.0+ migrates to file:/dev/fdset/N; fd: for a file is deprecated from 9.1 and warns
      const v = (await vm.qmp.queryVersion()).qemu;
      t.match(written?.uri, v.major >= 9 ? /^file:\/dev\/fdset\/\d+$/ : /^fd:/, `QEMU ${v.major}.${v.minor} migrated to ${String(written?.uri)}`);
      t.notMatch(vm.stderr, /deprecated/, 'and QEMU warned of nothing deprecated');
    }
    t.notOk(c.lines.some((l) => l.level === 40), 'no fallback warning');
    const statePath = join(ck, stateFileName('drv'));
    t.equal(m.stateBytes, statSync(statePath).size);
    t.equal(m.sha256, createHash('sha256').update(readFileSync(statePath)).digest('hex'), 'the manifest hashes the file as it is on disk');
    t.same(readdirSync(ck).sort(), [manifestFileName('drv'), stateFileName('drv')], 'no temporary files left');
    // (QEMU closes its end in a bottom half right after the migration completed)
    t.ok(await within(10_000, () => !openFiles(vm.pid).some((f) => f.startsWith(ck))), 'QEMU let go of the state file');
    t.same(await vm.status(), { status: 'running', running: true }, 'the guest runs on');
    const r = await driver.restore(join(ck, manifestFileName('drv')), { adapt });
    track(r.vm);
    t.equal(await payloadHash(r.vm), payloadSha, `RAM restored byte for byte (${via})`);
    await r.vm.kill();
  }

  // QEMU refuses the descriptor (here: the client is made to fail getfd and add-fd, whichever this QEMU's
  // version uses; a real QEMU refuses only without SCM_RIGHTS): the socket takes over
  const ck = join(dir, 'ckpt-fallback');
  mkdirSync(ck);
  const c = captureLogger();
  const getfd = vm.qmp.getfd.bind(vm.qmp);
  const addFd = vm.qmp.addFd.bind(vm.qmp);
  vm.qmp.getfd = () => Promise.reject(new QmpError('getfd', 'GenericError', 'No file descriptor supplied via SCM_RIGHTS'));
  vm.qmp.addFd = () => Promise.reject(new QmpError('add-fd', 'GenericError', 'No file descriptor supplied via SCM_RIGHTS'));
  try {
    await checkpointVm(vm, ck, { log: c.log });
  } finally {
    vm.qmp.getfd = getfd;
    vm.qmp.addFd = addFd;
  }
  t.match(c.lines.find((l) => l.level === 40)?.msg, /streaming the state through a socket instead/);
  t.equal(c.lines.find((l) => l.msg === 'checkpoint written')?.via, 'socket');
  const r = await driver.restore(join(ck, manifestFileName('drv')), { adapt });
  track(r.vm);
  t.equal(await payloadHash(r.vm), payloadSha, 'RAM restored byte for byte (fallback)');
  await r.vm.kill();

  // a directory that is not there: nothing written, the guest runs on
  await t.rejects(checkpointVm(vm, join(dir, 'no-such-dir'), { log }), { name: 'CheckpointError', message: /checkpoint of VM drv failed: .*ENOENT/ });
  t.same(await vm.status(), { status: 'running', running: true });
  await vm.kill();
});

t.test('passing a descriptor: errors say what the kernel refused, and QMP goes on', async (t) => {
  const vm = await start(spec());
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'x');
  const fd = openSync(file, 'r');
  t.teardown(() => closeSync(fd));
  t.throws(() => sendFd(fd, fd, Buffer.from('\n')), { code: 'ENOTSOCK', syscall: 'sendmsg', message: new RegExp(`sendFd: cannot send fd ${fd} on socket fd ${fd}: Socket operation on non-socket`) });
  t.throws(() => sendFd(fd, fd, Buffer.alloc(0)), { name: 'RangeError', message: /data must hold 1 to 65536 bytes/ });
  t.throws(() => sendFd(-1, fd, Buffer.from('\n')), { name: 'RangeError', message: /socketFd must be a non-negative integer/ });
  t.throws(() => sendFd(fd, 1.5, Buffer.from('\n')), { name: 'RangeError', message: /fd must be a non-negative integer/ });
  // a descriptor number that is not open: the kernel refuses it, nothing reaches QEMU
  await t.rejects(vm.qmp.getfd('bad', 0x7ffffff0), { code: 'EBADF', syscall: 'sendmsg' });
  t.same(await vm.status(), { status: 'running', running: true }, 'the QMP connection still works');
  // a good one: QEMU holds it under its name until closefd
  await vm.qmp.getfd('good', fd);
  t.ok(openFiles(vm.pid).includes(file), 'QEMU holds the file open');
  await vm.qmp.execute('closefd', { fdname: 'good' });
  t.notOk(openFiles(vm.pid).includes(file), 'and lets go of it at closefd');
  await t.rejects(vm.qmp.execute('closefd', { fdname: 'good' }), { name: 'QmpError', message: /not found/ });
  await vm.kill();
});
