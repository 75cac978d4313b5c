/**
 * `npm run demo`: an MPI job under symbio-mpirun while symbio quiesces,
 * freezes and resumes it again and again; then the same job under plain
 * mpirun, to show the output is identical and what the cycles cost.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../util/package-root.js';
import type { ChaosReport } from '../launcher/chaos.js';
import { runProcess } from '../util/run-process.js';

// the jobs' progress and symbio's logs stay visible; stdout is compared
const runCapture = (cmd: string, args: readonly string[]) => runProcess(cmd, args, { stderr: 'inherit' });

function say(line: string): void {
  process.stdout.write(line + '\n');
}

async function main(): Promise<number> {
  const root = packageRoot();
  const ring = join(root, 'build', 'mpi', 'ring');
  const halo = join(root, 'build', 'mpi', 'halo2d');
  const common = ['--allow-run-as-root', '--oversubscribe', '-np', '4'];
  const dir = mkdtempSync(join(tmpdir(), 'symbio-demo-'));
  let failed = false;
  try {
    for (const [name, prog] of [['ring (blocking send/recv)', ring], ['2-D halo exchange (Isend/Irecv/Waitall + Allreduce)', halo]] as const) {
      say(`\n== ${name}: 4 ranks on this machine`);
      say('   running under symbio-mpirun with a quiesce/freeze/resume cycle every ~20 ms ...');
      const report = join(dir, 'chaos.json');
      const sym = await runCapture(process.execPath, [
        join(root, 'bin', 'symbio-mpirun.js'), '--chaos-quiesce', '20', '--chaos-report', report, ...common, prog,
      ]);
      say('   running the same job under plain mpirun ...');
      const plain = await runCapture('mpirun', [...common, prog]);
      const r = JSON.parse(readFileSync(report, 'utf8')) as ChaosReport;
      const same = sym.stdout === plain.stdout && sym.code === 0 && plain.code === 0;
      failed ||= !same || r.verifyFailures > 0;
      const last = plain.stdout.trim().split('\n').pop() ?? '';
      say(`   job result:            ${last}`);
      say(`   output identical:      ${same ? 'yes' : 'NO'} (exit codes ${sym.code} / ${plain.code})`);
      say(`   quiesce cycles:        ${r.completed} completed, ${r.aborted} abandoned and resumed, ${r.verifyFailures} failed checks`);
      say(`   request -> all frozen: p50 ${r.phasesMs.quiesce.p50} ms, p99 ${r.phasesMs.quiesce.p99} ms`);
      say(`   resume -> all running: p50 ${r.phasesMs.resume.p50} ms, p99 ${r.phasesMs.resume.p99} ms`);
      say(`   messages drained:      ${r.drainedTotal} (held ranks pulled them off the interconnect)`);
      say(`   wall time:             ${sym.seconds.toFixed(1)} s with symbio vs ${plain.seconds.toFixed(1)} s plain`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  say(failed ? '\ndemo: something did not match (see above)' : '\ndemo: every cycle verified; the jobs never noticed.');
  return failed ? 1 : 0;
}

process.exitCode = await main();
