/**
 * `npm run demo`: symbio keeping an MPI job alive through failing hardware,
 * on a local virtual cluster of QEMU guests.
 *
 *  1. build the guest image (cached after the first run) and start a
 *     cluster: 2 VMs for the job, 2 spare slots;
 *  2. run a 4-rank halo2d across the VMs under symbio-mpirun, with the
 *     built-in policies configured (examples/demo.yaml): periodic
 *     checkpoints at the Young/Daly interval, migrate-on-health,
 *     restart-on-failure, and the monitor of the slots' simulated health;
 *  3. once a checkpoint exists, tell symbio a slot is failing
 *     (`symbio vcluster health ... --severity critical`): the policy moves
 *     the VM away cooperatively and drains the slot;
 *  4. then kill another slot's QEMU (`symbio vcluster kill`): the failure
 *     is detected and the job restarts from its last checkpoint on a spare;
 *  5. the job finishes; its output is compared with the same program run
 *     by plain mpirun on this machine; the HTML report of the job is
 *     written and its path printed with a summary.
 *
 * Everything a person does by hand is done here with the same CLI commands,
 * and each is printed before it runs.
 */
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildImage } from '../image/build-image.js';
import { defaultStateDir, readEvents, type JournalEvent } from '../controller/journal.js';
import { vclusterDown, vclusterUp } from '../vcluster/vcluster.js';
import { readState } from '../vcluster/state.js';
import { packageRoot } from '../util/package-root.js';
import { runProcess, startProcess } from '../util/run-process.js';
import { logger } from '../log.js';
import { writeJobReport } from '../report/write-report.js';
import { narrate } from './narrate.js';

const CLUSTER = 'demo';
const STEPS = '6000';

const t0 = performance.now();
const clock = () => `${((performance.now() - t0) / 1000).toFixed(0).padStart(4)} s`;
const say = (line: string): void => void process.stdout.write(`[${clock()}] ${line}\n`);

async function main(): Promise<number> {
  const root = packageRoot();
  const stateDir = defaultStateDir();
  const job = `demo-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-')}`;
  const workDir = join(stateDir, 'demo', job);
  mkdirSync(workDir, { recursive: true });
  const logFile = join(workDir, 'symbio.log');
  // symbio's own logs (JSON, pino) go to a file; the terminal gets the story
  const log = logger.child({ component: 'demo' });
  log.level = 'error'; // e.g. the killed QEMU's exit is expected here, not news
  const cli = (args: readonly string[]) => {
    say(`$ symbio ${args.join(' ')}`);
    return runProcess(process.execPath, [join(root, 'bin', 'symbio.js'), ...args]);
  };

  say('symbio demo: an MPI job across 2 VMs survives a failing host and a dead one.');
  say(`logs: ${logFile}`);
  say('building the guest image (cached after the first run) ...');
  const image = await buildImage({ log, onProgress: (step) => say(`  image: ${step}`) });
  await vclusterDown(CLUSTER, log).catch(() => undefined); // a previous demo that was interrupted
  say(`starting virtual cluster '${CLUSTER}': 2 VMs + 2 spare slots ...`);
  const cluster = await vclusterUp({ name: CLUSTER, vms: 2, spares: 2, memoryMiB: 384, cpus: 1, image, log, onProgress: (m) => say(`  vcluster: ${m}`) });
  say(`cluster up (${cluster.accel === 'tcg' ? 'TCG: software emulation, slower than KVM, same behaviour' : 'KVM'})`);
  let launcher: ReturnType<typeof startProcess> | null = null;
  try {
    const config = join(workDir, 'symbio.yaml');
    writeFileSync(config, readFileSync(join(root, 'examples', 'demo.yaml'), 'utf8').replaceAll('CLUSTER', CLUSTER));
    // the reference answer: the same program under plain mpirun on this machine
    const reference = runProcess('mpirun', ['--allow-run-as-root', '--oversubscribe', '-np', '4', join(root, 'build', 'mpi', 'halo2d'), STEPS]);

    say(`$ symbio-mpirun --symbio-config ${config} --vcluster ${CLUSTER} --job-id ${job} -np 4 /opt/symbio/build/mpi/halo2d ${STEPS}`);
    launcher = startProcess(process.execPath, [join(root, 'bin', 'symbio-mpirun.js'), '--symbio-config', config, '--vcluster', CLUSTER, '--job-id', job, '-np', '4', '/opt/symbio/build/mpi/halo2d', STEPS], {
      env: { SYMBIO_STATE_DIR: stateDir },
    });
    launcher.child.stderr!.pipe(createWriteStream(logFile));
    let ended = false;
    void launcher.done.then(() => (ended = true));
    launcher.child.stdout!.on('data', (d: Buffer) => {
      for (const line of d.toString('utf8').split('\n')) if (line.trim()) say(`  job | ${line}`);
    });
    const stop = narrate(stateDir, job, (line) => say(`  symbio: ${line}`));

    const waitFor = async (what: string, pred: (e: JournalEvent) => boolean, since: number, timeoutMs: number): Promise<JournalEvent> => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = readEvents(stateDir, job).find((x) => x.at >= since && pred(x));
        if (e) return e;
        if (ended) throw new Error(`the job ended before ${what}`);
        if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs / 1000} s (see ${logFile})`);
        await sleep(200);
      }
    };
    const slotOf = (vm: string): string => `slot${readState(CLUSTER)!.vms.find((v) => v.name === vm)!.slot}`;

    say('waiting for the first periodic checkpoint ...');
    await waitFor('a checkpoint', (e) => e.type === 'operation' && e.kind === 'checkpoint' && e.ok === true, 0, 180_000);

    const sick = slotOf('vm1');
    say(`simulating a failing host: ${sick} (where vm1 runs) reports uncorrectable memory errors, failure predicted in 2 minutes`);
    const tHealth = Date.now();
    await cli(['vcluster', 'health', '--name', CLUSTER, '--slot', sick, '--severity', 'critical', '--lead-time', '120000', '--message', 'uncorrectable memory errors, DIMM failing']);
    const mig = await waitFor('the proactive migration', (e) => e.type === 'operation' && e.kind === 'migrate', tHealth, 180_000);
    if (!mig.ok) throw new Error(`the proactive migration failed: ${String(mig.error)}`);
    await waitFor(`${sick} drained`, (e) => e.type === 'host-state' && e.host === sick && e.state === 'drained', tHealth, 30_000).catch(() => undefined);

    const dead = slotOf('vm0');
    await sleep(5_000);
    say(`simulating a host that dies without warning: ${dead} (where vm0 runs)`);
    const tKill = Date.now();
    await cli(['vcluster', 'kill', '--name', CLUSTER, '--slot', dead]);
    const restart = await waitFor('the restart', (e) => e.type === 'operation' && e.kind === 'restart', tKill, 180_000);
    if (!restart.ok) throw new Error(`the restart failed: ${String(restart.error)}`);

    say('the job runs on; waiting for it to finish ...');
    const r = await launcher.done;
    stop();
    const want = await reference;
    const same = r.code === 0 && r.stdout === want.stdout;
    const report = writeJobReport({ stateDir, job });
    const events = readEvents(stateDir, job);
    const detected = events.find((e) => e.type === 'failure' && e.at >= tKill);
    const ops = events.filter((e) => e.type === 'operation');
    const byKind = (k: string) => ops.filter((e) => e.kind === k && e.ok === true);
    say('');
    say(`result: ${r.stdout.trim().split('\n').pop() ?? ''}`);
    say(`identical to plain mpirun's output: ${same ? 'yes' : 'NO'} (exit code ${r.code})`);
    say(`checkpoints: ${byKind('checkpoint').length}; migrations: ${byKind('migrate').length} (health event -> VM on the spare in ${((Number(mig.at) - tHealth) / 1000).toFixed(1)} s); restarts: ${byKind('restart').length} (failure detected ${detected ? ((detected.at - tKill) / 1000).toFixed(1) : '?'} s after the kill, job running again ${((Number(restart.at) - tKill) / 1000).toFixed(1)} s after it)`);
    say(`the job was paused by symbio ${(report.summary.pausedMs / 1000).toFixed(1)} s in all, and down ${(report.summary.downtimeMs / 1000).toFixed(1)} s counting the restart's outage, of ${r.seconds.toFixed(0)} s`);
    say(`report: ${report.path}`);
    say(same ? 'demo: the job finished with the right answer despite both failures.' : 'demo: the output did not match (see above and the log)');
    return same ? 0 : 1;
  } finally {
    if (launcher && launcher.child.exitCode === null) launcher.child.kill('SIGTERM');
    await vclusterDown(CLUSTER, log).catch(() => undefined);
  }
}

try {
  process.exitCode = await main();
} catch (err) {
  process.stderr.write(`demo: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
