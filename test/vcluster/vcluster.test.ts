/**
 * The local virtual cluster, end to end on real QEMU guests booted from the
 * guest image (built once per machine and cached; the first run builds it):
 * up, exec with exit codes passed through, cp, an MPI job across two VMs
 * over the interconnect NIC, the NIC unplugged and plugged back as the guest
 * sees it, raw live migration of a VM in the middle of that job (precopy),
 * postcopy and hybrid migrations of a guest that dirties memory and checks
 * it, checkpoint -> kill -> restore of one VM with its program still
 * correct, and down leaving nothing behind (also after a crash mid-up).
 *
 * One cluster for the whole file: boots cost ~10-20 s each under TCG.
 */
import t from 'tap';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../../src/image/build-image.js';
import { logger } from '../../src/log.js';
import { QemuVm } from '../../src/hypervisor/qemu/qemu-vm.js';
import { processesNaming, readState } from '../../src/vcluster/state.js';
import {
  guestCopy,
  guestExec,
  requireState,
  specFor,
  vclusterCheckpoint,
  vclusterDown,
  vclusterMigrate,
  vclusterRestore,
  vclusterStatus,
  vclusterUp,
} from '../../src/vcluster/vcluster.js';
import { mpiCommon, prog, run, start, symbioCli } from '../helpers/mpi.js';

const log = logger.child({ test: 'vcluster' });
log.level = process.env.SYMBIO_TEST_LOG ?? 'error';

// Private runtime directory: this file's clusters cannot meet anyone else's.
const runtime = mkdtempSync(join(tmpdir(), 'symbio-vc-'));
process.env.SYMBIO_RUNTIME_DIR = runtime;
t.teardown(() => rmSync(runtime, { recursive: true, force: true }));

const NAME = 'vct';
const HALO_STEPS = '200';

const image = await buildImage({ log });
t.teardown(() => vclusterDown(NAME, log));

const state0 = await vclusterUp({ name: NAME, vms: 2, spares: 1, memoryMiB: 384, cpus: 1, image, log });

const exec = (vm: string | number, argv: string[], input?: string) => guestExec(requireState(NAME), vm, argv, input === undefined ? {} : { input });

/** The job's expected output: the same program on the host (halo2d prints the same for every np). */
const expected = run('mpirun', [...mpiCommon, '-np', '2', prog('halo2d'), HALO_STEPS]);

const mpirunInGuest = ['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', '4', '--host', 'vm0:2,vm1:2', '/opt/symbio/build/mpi/halo2d', HALO_STEPS];

/**
 * `p`, or after `ms` a failure that shows what the guests were doing (and
 * ends the guest job, so the file does not hang until tap's timeout).
 */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), ms)));
  const r = await Promise.race([p, late]);
  clearTimeout(timer);
  if (r !== 'late') return r;
  const diag = await Promise.all(
    ['vm0', 'vm1'].map(async (vm) => `${vm}:\n${(await exec(vm, ['sh', '-c', 'ps -eo pid,stat,etime,args | grep -v "\\[" ; ss -tnp; ip -o addr'])).stdout}`),
  );
  await exec('vm0', ['pkill', '-9', 'mpirun']);
  throw new Error(`${what} did not end within ${ms / 1000} s; the guests:\n${diag.join('\n')}`);
}

t.test('up: two VMs and a spare slot, reachable over ssh', async (t) => {
  t.equal(state0.vms.length, 2);
  t.equal(state0.slots, 3);
  t.match(state0.accelReason, /TCG|KVM|tcg|kvm/);
  const st = await vclusterStatus(NAME, log);
  t.same(st.vms.map((v) => [v.name, v.slot, v.alive, v.state]), [['vm0', 0, true, 'running'], ['vm1', 1, true, 'running']]);
  const h = await exec('vm1', ['hostname']);
  t.equal(h.code, 0);
  t.equal(h.stdout.trim(), 'vm1');
});

t.test('exec passes output and exit codes through; cp copies files in', async (t) => {
  const r = await exec(0, ['sh', '-c', 'echo out; echo err >&2; exit 7']);
  t.same([r.code, r.stdout, r.stderr], [7, 'out\n', 'err\n']);
  const quoted = await exec(0, ['printf', '%s|', 'a b', "it's", '$HOME']);
  t.equal(quoted.stdout, "a b|it's|$HOME|", 'arguments reach the guest as given, not re-split or expanded');
  const src = mkdtempSync(join(tmpdir(), 'symbio-cp-'));
  t.teardown(() => rmSync(src, { recursive: true, force: true }));
  writeFileSync(join(src, 'data.txt'), 'payload 42\n');
  mkdirSync(join(src, 'tree'));
  writeFileSync(join(src, 'tree', 'x'), 'x');
  await guestCopy(requireState(NAME), ['vm0', 'vm1'], [join(src, 'data.txt'), join(src, 'tree')], '/tmp/in');
  for (const vm of ['vm0', 'vm1']) {
    t.equal((await exec(vm, ['cat', '/tmp/in/data.txt', '/tmp/in/tree/x'])).stdout, 'payload 42\nx', `${vm} has the files`);
  }
  // the CLI, as a user runs it: exit code and output pass through
  const cli = await run('node', [symbioCli, 'vcluster', 'exec', '--name', NAME, '--vm', '1', '--', 'sh', '-c', 'uname -s; exit 3'], { SYMBIO_RUNTIME_DIR: runtime });
  t.same([cli.code, cli.stdout], [3, 'Linux\n']);
  const bad = await run('node', [symbioCli, 'vcluster', 'exec', '--name', 'nope', '--', 'true'], { SYMBIO_RUNTIME_DIR: runtime });
  t.equal(bad.code, 2);
  t.match(bad.stderr, /no virtual cluster nope/);
});

t.test('an MPI job across both VMs gives the exact result, over the interconnect', async (t) => {
  const r = await exec(0, mpirunInGuest);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, (await expected).stdout);
  const conf = await exec(1, ['cat', '/etc/openmpi/openmpi-mca-params.conf']);
  t.match(conf.stdout, /btl_tcp_if_include\s*=\s*10\.20\.0\.0\/24/);
});

t.test('the interconnect NIC unplugged and plugged back, as the guest sees it', async (t) => {
  const st = requireState(NAME);
  const v = st.vms[1]!;
  const vm = await QemuVm.attach(specFor(st, v.index, v.slot, v.sshPort), v.pid, { log });
  t.teardown(() => vm.qmp.close());
  const icMac = '52:54:00:20:00:02';
  const linkHasIp = async () => (await exec(1, ['ip', '-o', '-4', 'addr', 'show'])).stdout;
  t.match(await exec(1, ['sh', '-c', 'cat /sys/class/net/*/address']).then((r) => r.stdout), icMac);
  const { ms } = await vm.detachDevice('ic', 20_000);
  t.ok(ms > 0);
  t.notMatch((await exec(1, ['sh', '-c', 'cat /sys/class/net/*/address'])).stdout, icMac, 'the guest no longer has the NIC');
  t.equal(await vm.hasDevice('ic'), false);
  await vm.attachNic('ic');
  let ips = '';
  for (let i = 0; i < 50 && !/10\.20\.0\.2\/24/.test(ips); i++) {
    await sleep(200);
    ips = await linkHasIp();
  }
  t.match(ips, /10\.20\.0\.2\/24/, 'the guest put the same address back on the returned NIC');
});

t.test('raw live migration of vm1 in the middle of an MPI job: the job finishes with the exact result', async (t) => {
  const job = exec(0, mpirunInGuest);
  // let the job get going across both VMs
  await sleep(4000);
  const m = await vclusterMigrate(NAME, 'vm1', { log, migration: { mode: 'precopy' } });
  t.same([m.from, m.to], [1, 2]);
  t.equal(m.result.status, 'completed');
  const r = await within(job, 240_000, 'the MPI job after the migration');
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, (await expected).stdout, 'output identical to the uninterrupted run');
  t.equal(readState(NAME)!.vms[1]!.slot, 2);
  t.equal((await exec('vm1', ['hostname'])).stdout.trim(), 'vm1', 'reachable in its new slot');
});

t.test('precopy, postcopy and hybrid moves of a guest dirtying memory: it keeps running and its memory is intact', async (t) => {
  await exec(0, ['sh', '-c', 'nohup /opt/symbio/build/mpi/dirty-mem --mib 96 --rate 24 --seconds 60 > /tmp/dirty.out 2>&1 &']);
  await sleep(3000);
  // Precopy goes last: QEMU 7.2's precopy of a running TCG guest sometimes
  // leaves the guest kernel corrupt here (about 1 in 6 moves in the
  // benchmark's stress runs; postcopy never). That is a known, documented
  // defect, reported as a tap `todo` (visible in the output, not counted),
  // never skipped silently.
  const KNOWN_TCG_PRECOPY_DEFECT = { todo: 'QEMU 7.2 TCG precopy sometimes corrupts the running guest here (docs/performance.md)' };
  let broken = false;
  for (const mode of ['postcopy', 'hybrid', 'precopy'] as const) {
    const extra = mode === 'precopy' ? KNOWN_TCG_PRECOPY_DEFECT : {};
    const before = (await exec(0, ['cat', '/tmp/dirty.out'])).stdout.split('\n').length;
    // hybrid: a bandwidth below the dirty rate, so precopy cannot converge and it must switch
    const migration = mode === 'hybrid' ? { mode, hybridMaxPasses: 2, bandwidthBps: 12 * 2 ** 20 } : { mode };
    const m = await vclusterMigrate(NAME, 'vm0', { log, migration }).catch((err: unknown) => {
      // the corrupted guest may panic (and its QEMU exit) before the migration is seen complete
      if (mode !== 'precopy') throw err;
      t.fail(`precopy: ${(err as Error).message}`, KNOWN_TCG_PRECOPY_DEFECT);
      return null;
    });
    if (m === null) return;
    t.equal(m.result.status, 'completed', `${mode}: completed`);
    if (mode !== 'precopy') t.not(m.result.postcopyStartedAtMs, null, `${mode}: switched to postcopy`);
    await sleep(1500);
    const after = (await exec(0, ['cat', '/tmp/dirty.out'])).stdout.split('\n').length;
    broken = !(after > before);
    t.ok(after > before, `${mode}: the program is still reporting (${before} -> ${after} lines)`, extra);
  }
  let out = '';
  for (let i = 0; i < 120 && !broken && !/dirty-mem (ok|CORRUPT)/.test(out); i++) {
    await sleep(1000);
    out = (await exec(0, ['cat', '/tmp/dirty.out'])).stdout;
  }
  if (broken) {
    t.fail('the guest broke after the precopy move: its program could not finish', KNOWN_TCG_PRECOPY_DEFECT);
    return;
  }
  t.match(out, /dirty-mem ok/, 'every page checked out after three migrations');
});

t.test('checkpoint, kill, restore one VM: its program goes on and is correct', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-vc-ckpt-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await exec(1, ['sh', '-c', 'nohup /opt/symbio/build/mpi/dirty-mem --mib 64 --rate 8 --seconds 25 > /tmp/dirty.out 2>&1 &']);
  await sleep(3000);
  const m = await vclusterCheckpoint(NAME, 'vm1', dir, log);
  t.ok(m.stateBytes > 64 * 2 ** 20, 'the dirtied memory is in the checkpoint');
  t.ok(m.stateBytes < 384 * 2 ** 20, `${m.stateBytes} bytes: below guest memory (zero pages)`);
  const v = readState(NAME)!.vms[1]!;
  process.kill(v.pid, 'SIGKILL');
  await sleep(300);
  const r = await vclusterRestore(NAME, 'vm1', join(dir, 'vm1.manifest.json'), { log });
  t.ok(r.restoreMs > 0);
  let out = '';
  for (let i = 0; i < 90 && !/dirty-mem (ok|CORRUPT)/.test(out); i++) {
    await sleep(1000);
    out = (await exec(1, ['cat', '/tmp/dirty.out'])).stdout;
  }
  t.match(out, /dirty-mem ok/, 'the restored guest finished its program with every page correct');
});

t.test('down stops everything and leaves no file; also after a crash in the middle of up', async (t) => {
  const dir = readState(NAME)!.dir;
  await vclusterDown(NAME, log);
  t.same(processesNaming(dir), []);
  t.equal(existsSync(dir), false);
  // a `vcluster up` killed while its VMs boot
  const crashed = start('node', [symbioCli, 'vcluster', 'up', '--name', 'crash', '--vms', '1', '--memory', '256'], { SYMBIO_RUNTIME_DIR: runtime });
  const crashDir = join(runtime, 'vcluster', 'crash');
  for (let i = 0; i < 600 && processesNaming(crashDir).length === 0; i++) await sleep(100);
  t.ok(processesNaming(crashDir).length > 0, 'its QEMU was running');
  crashed.child.kill('SIGKILL');
  await crashed.done;
  const down = await run('node', [symbioCli, 'vcluster', 'down', '--name', 'crash', '--json'], { SYMBIO_RUNTIME_DIR: runtime });
  t.equal(down.code, 0, down.stderr);
  t.equal(JSON.parse(down.stdout).stopped, 1);
  t.same(processesNaming(crashDir), []);
  t.equal(existsSync(crashDir), false);
});
