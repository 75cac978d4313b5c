/**
 * Each test program runs under symbio-mpirun while chaos quiesce cycles hit
 * it (hold -> quiescent -> freeze -> verified frozen -> resume, every ~10 ms)
 * and must print exactly what a plain mpirun run prints. Every frozen
 * interval is verified by the agent (counters balanced, no MPI call by any
 * rank); a failed check fails the test.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mpiCommon, plainMpirun, prog, run, symbioMpirun } from '../helpers/mpi.js';
import type { ChaosReport } from '../../src/launcher/chaos.js';

const dir = mkdtempSync(join(tmpdir(), 'symbio-chaos-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

// name, program arguments, fewest verified cycles we insist on
const cases: Array<[string, string[], number]> = [
  ['ring', [], 100],
  ['halo2d', [], 100],
  ['master_worker', [], 100],
  ['flood', [], 30], // long compute phases between MPI calls: fewer, slower cycles
  ['collectives', [], 100],
  ['persistent', [], 100],
  ['mprobe', [], 100],
  ['completion', [], 100],
  ['probe_order', [], 100], // probes vs drained messages; inactive persistent requests
];

for (const [name, args, minCycles] of cases) {
  t.test(name, async (t) => {
    const plain = await plainMpirun(4, name, args);
    t.equal(plain.code, 0, 'plain mpirun run succeeds');
    const report = join(dir, `${name}.json`);
    const sym = await run(process.execPath, [
      symbioMpirun, '--chaos-quiesce', '10', '--chaos-report', report, ...mpiCommon, '-np', '4', prog(name), ...args,
    ]);
    t.equal(sym.code, 0, 'symbio-mpirun exits with the job exit code 0');
    t.equal(sym.stdout, plain.stdout, 'output identical to plain mpirun');
    const r = JSON.parse(readFileSync(report, 'utf8')) as ChaosReport;
    t.equal(r.verifyFailures, 0, `every frozen interval verified (${r.failures.join('; ')})`);
    t.equal(r.unverified, 0, 'no cycle went unchecked');
    t.ok(r.completed >= minCycles, `${r.completed} quiesce/freeze/resume cycles completed and verified (>= ${minCycles}), ${r.aborted} abandoned`);
    t.comment(`${name}: quiesce p50 ${r.phasesMs.quiesce.p50} ms p99 ${r.phasesMs.quiesce.p99} ms; resume p50 ${r.phasesMs.resume.p50} ms; drained ${r.drainedTotal}; catch-up rounds ${r.catchupRounds}; ${sym.seconds.toFixed(1)} s vs ${plain.seconds.toFixed(1)} s plain`);
  });
}
