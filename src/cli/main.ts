/**
 * Entry point of both executables: `symbio <command>` and `symbio-mpirun
 * <mpirun args>` (the same as `symbio run <mpirun args>`). Exit codes:
 * 0 success; 1 an operation failed; 2 bad input or a missing prerequisite;
 * for run, the job's own exit code.
 */
import { Command } from '@commander-js/extra-typings';
import { launch, LaunchError } from '../launcher/launcher.js';
import { CliError, requestJob } from './actions.js';
import { listJobs } from '../agent/runtime-dir.js';
import { logger } from '../log.js';
import { packageVersion } from '../util/version.js';

function print(json: boolean | undefined, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : human() + '\n');
}

async function run(argv: readonly string[]): Promise<number> {
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`symbio-mpirun ${packageVersion()}\n`);
    return 0;
  }
  try {
    const result = await launch({ argv, log: logger.child({ component: 'launcher' }) });
    if (result.chaos && argv.includes('--symbio-json')) process.stdout.write(JSON.stringify(result.chaos) + '\n');
    if (result.chaos && result.chaos.verifyFailures > 0 && result.exitCode === 0) return 1;
    return result.exitCode;
  } catch (err) {
    if (err instanceof LaunchError) {
      process.stderr.write(`symbio-mpirun: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

function program(): Command {
  const p = new Command('symbio')
    .description('fault tolerance for MPI jobs in virtual machines')
    .version(packageVersion())
    .showHelpAfterError()
    .exitOverride();
  p.command('run')
    .description('run an MPI job under symbio (same as symbio-mpirun; takes mpirun arguments)')
    .argument('[mpirun-args...]')
    .allowUnknownOption()
    .helpOption(false);
  p.command('quiesce')
    .description('hold (and freeze) every rank of a running job')
    .option('--job <id>', 'job id (default: the only running job)')
    .option('--no-freeze', 'hold only: ranks keep draining, do not freeze')
    .option('--timeout <ms>', 'give up after this long', '30000')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const timeoutMs = Number(o.timeout);
      if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new CliError(`--timeout needs a positive integer (ms), got '${o.timeout}'`, 2);
      const r = (await requestJob(o.job, { op: 'quiesce', freeze: o.freeze, timeoutMs }, timeoutMs + 5_000)) as {
        epoch: number; frozen: boolean; totalMs: number; summary: { held: number; messages: number; drainedNow: number };
      };
      print(o.json, r, () => `epoch ${r.epoch}: ${r.summary.held} ranks ${r.frozen ? 'frozen' : 'held'} in ${r.totalMs.toFixed(1)} ms (${r.summary.messages} messages balanced, ${r.summary.drainedNow} drained)`);
    });
  p.command('resume')
    .description('let a quiesced job run again')
    .option('--job <id>', 'job id (default: the only running job)')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = (await requestJob(o.job, { op: 'resume' }, 15_000)) as { epoch: number; resumeMs: number; frozenCheck: { ok: boolean; reason?: string } | null };
      print(o.json, r, () => `epoch ${r.epoch}: resumed in ${r.resumeMs.toFixed(2)} ms${r.frozenCheck && !r.frozenCheck.ok ? ` (frozen check failed: ${r.frozenCheck.reason})` : ''}`);
    });
  p.command('status')
    .description("show a running job's ranks")
    .option('--job <id>', 'job id (default: the only running job)')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = (await requestJob(o.job, { op: 'status' }, 5_000)) as {
        jobId: string; command: string; epoch: number;
        ranks: { worldRank: number; pid: number; state: string; sent: number; received: number; drainedNow: number }[];
      };
      print(o.json, r, () => [
        `job ${r.jobId}: command ${r.command} (epoch ${r.epoch})`,
        'rank  pid       state      sent      received  drained',
        ...r.ranks.map((x) => `${String(x.worldRank).padEnd(5)} ${String(x.pid).padEnd(9)} ${x.state.padEnd(10)} ${String(x.sent).padEnd(9)} ${String(x.received).padEnd(9)} ${x.drainedNow}`),
      ].join('\n'));
    });
  p.command('jobs')
    .description('list running symbio jobs on this machine')
    .option('--json', 'print the result as JSON')
    .action((o) => {
      const jobs = listJobs();
      print(o.json, jobs, () => (jobs.length ? jobs.map((j) => `${j.jobId}  pid ${j.pid}  since ${j.startedAt}  ${j.command.join(' ')}`).join('\n') : 'no running jobs'));
    });
  return p;
}

export async function main(argv: string[], invokedAs: 'symbio' | 'symbio-mpirun'): Promise<number> {
  if (invokedAs === 'symbio-mpirun') return run(argv);
  if (argv[0] === 'run') return run(argv.slice(1));
  try {
    await program().parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    if (e.code?.startsWith('commander.')) return 2; // commander already printed the problem
    if (err instanceof CliError) {
      process.stderr.write(`symbio: ${err.message}\n`);
      return err.exitCode;
    }
    process.stderr.write(`symbio: ${e.message}\n`);
    return 1;
  }
}
