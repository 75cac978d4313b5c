/**
 * Benchmark of the native quiesce layer (`npm run bench -- shim`), JSON on
 * stdout. Everything is compared inside one run, interleaved, because these
 * machines are noisy:
 *  - 8-byte ping-pong latency and 1 MiB bandwidth, plain mpirun vs
 *    symbio-mpirun (shim preloaded and attached, no quiesce requested);
 *    reported as ratios of medians.
 *  - quiesce latency (request -> every rank frozen) and resume latency
 *    (RESUME -> every rank running) at np = 2, 4, 8, from chaos cycles on a
 *    ring job.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/util/package-root.js';
import type { ChaosReport } from '../src/launcher/chaos.js';
import { runProcess } from '../src/util/run-process.js';
import { distribution } from '../src/util/stats.js';

const root = packageRoot();
const mpiCommon = ['--allow-run-as-root', '--oversubscribe'];

async function run(cmd: string, args: readonly string[]): Promise<string> {
  const r = await runProcess(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.slice(-500)}`);
  return r.stdout;
}

const median = (xs: number[]): number => distribution(xs).p50;

interface PingPong {
  latency_us: number;
  bandwidth_MBps: number;
}

async function pingpong(withShim: boolean, bytes: number, iters: number): Promise<PingPong> {
  const prog = join(root, 'build', 'mpi', 'pingpong');
  const args = [...mpiCommon, '-np', '2', prog, String(bytes), String(iters), String(Math.ceil(iters / 10))];
  const out = withShim
    ? await run(process.execPath, [join(root, 'bin', 'symbio-mpirun.js'), ...args])
    : await run('mpirun', args);
  const line = out.trim().split('\n').find((l) => l.startsWith('{'));
  if (!line) throw new Error(`pingpong printed no JSON: ${out}`);
  return JSON.parse(line) as PingPong;
}

async function quiesceAt(np: number, dir: string): Promise<ChaosReport> {
  const report = join(dir, `chaos-${np}.json`);
  await run(process.execPath, [
    join(root, 'bin', 'symbio-mpirun.js'), '--chaos-quiesce', '15', '--chaos-report', report,
    ...mpiCommon, '-np', String(np), join(root, 'build', 'mpi', 'ring'),
  ]);
  return JSON.parse(readFileSync(report, 'utf8')) as ChaosReport;
}

export async function benchShim(rounds = Number(process.env.SYMBIO_BENCH_ROUNDS ?? 7)): Promise<unknown> {
  const lat: { plain: number[]; shim: number[] } = { plain: [], shim: [] };
  const bw: { plain: number[]; shim: number[] } = { plain: [], shim: [] };
  for (let i = 0; i < rounds; i++) {
    // alternate the order so drift in machine load hits both sides alike
    for (const withShim of i % 2 ? [true, false] : [false, true]) {
      const key = withShim ? 'shim' : 'plain';
      lat[key].push((await pingpong(withShim, 8, 300000)).latency_us);
      bw[key].push((await pingpong(withShim, 1 << 20, 2000)).bandwidth_MBps);
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'symbio-bench-'));
  const quiesce: Record<string, unknown> = {};
  try {
    for (const np of [2, 4, 8]) {
      const r = await quiesceAt(np, dir);
      quiesce[`np${np}`] = {
        cycles: r.completed,
        abandoned: r.aborted,
        // request -> every rank frozen, by the ranks' own stamps, and as the agent saw it
        quiesce_ms: r.phasesMs.ranksFrozen,
        quiesce_agent_observed_ms: r.phasesMs.quiesce,
        resume_ms: r.phasesMs.ranksResumed,
        resume_agent_observed_ms: r.phasesMs.resume,
      };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const latPlain = median(lat.plain);
  const latShim = median(lat.shim);
  const bwPlain = median(bw.plain);
  const bwShim = median(bw.shim);
  return {
    benchmark: 'shim',
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown' },
    rounds,
    pingpong_8B_latency_us: { plain: latPlain, shim: latShim, ratio: +(latShim / latPlain).toFixed(4), samples: lat },
    pingpong_1MiB_bandwidth_MBps: { plain: bwPlain, shim: bwShim, ratio: +(bwShim / bwPlain).toFixed(4), samples: bw },
    quiesce,
    targets: { latency_ratio_max: 1.03, bandwidth_ratio_min: 0.98, quiesce_p50_ms_np8_max: 10, resume_p50_ms_max: 1 },
  };
}
