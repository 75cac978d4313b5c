/**
 * Entry point of both executables: `symbio <command>` and `symbio-mpirun
 * <mpirun args>` (the same as `symbio run <mpirun args>`). Commands only wire
 * options to the functions in actions.ts and friends. Exit codes (see
 * docs/operations.md): 0 success; 1 an operation failed; 2 bad input or a
 * missing prerequisite; 3 refused (busy, already held, nothing to act on);
 * for run, the job's own exit code.
 */
import { Command, Option } from '@commander-js/extra-typings';
import { launch, LaunchError } from '../launcher/launcher.js';
import { parseMpirunArgs, UsageError } from '../launcher/mpirun-args.js';
import { ask, CliError, events, EXIT, formatEvent, formatPhases, operate, resolveTarget, table, type Target } from './actions.js';
import { checkConfig, formatEffectiveConfig } from './config-actions.js';
import { progressDisplay, type Progress } from './progress.js';
import { ReportError, writeJobReport } from '../report/write-report.js';
import { clusterStatus, copyIntoCluster, downCluster, execInCluster, healthInCluster, imageBuild, killInCluster, migrateInCluster, upCluster } from './vcluster-actions.js';
import { listJobs } from '../agent/runtime-dir.js';
import { ConfigError, loadConfig, readTokenFile } from '../config/load.js';
import { PluginLoadError } from '../host/plugin-driver.js';
import { startPlugins } from '../host/start-plugins.js';
import { formatBuiltinPlugins, listBuiltinPlugins } from '../host/builtin-plugins.js';
import { startStandaloneController } from '../controller/standalone.js';
import { defaultStateDir } from '../controller/journal.js';
import { logger } from '../log.js';
import { packageVersion } from '../util/version.js';

function print(json: boolean | undefined, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 2) + '\n' : human() + '\n');
}

function positiveMs(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new CliError(`${flag} needs a positive integer (ms), got '${v}'`, EXIT.usage);
  return n;
}

function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new CliError(`${flag} needs a positive integer, got '${v}'`, EXIT.usage);
  return n;
}

/** `--config` of the command line, else SYMBIO_CONFIG, else the search order (docs/operations.md). */
function config(explicit: string | undefined) {
  return loadConfig(explicit === undefined ? {} : { explicit });
}

async function run(argv: readonly string[]): Promise<number> {
  if (argv[0] === '--help' || argv[0] === '-h') {
    process.stdout.write(
      'usage: symbio-mpirun [symbio options] [mpirun options] <program> [args]\n' +
        '  (also: symbio run ...) runs the MPI job with the symbio shim in every rank; exits with the job\'s exit code\n' +
        'symbio options (before the program): --job-id <id>, --resume-timeout <ms>, --symbio-config <file>,\n' +
        '  --symbio-controller <socket|tcp://host:port>, --chaos-quiesce <ms>, --chaos-report <file>, --symbio-json\n' +
        'see docs/operations.md\n',
    );
    return 0;
  }
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`symbio-mpirun ${packageVersion()}\n`);
    return 0;
  }
  try {
    let explicit: string | undefined;
    try {
      explicit = parseMpirunArgs(argv).symbio.config;
    } catch (err) {
      if (err instanceof UsageError) throw new LaunchError(err.message);
      throw err;
    }
    const { config: cfg, source } = config(explicit);
    if (process.env.SYMBIO_LOG_LEVEL === undefined) logger.level = cfg.log.level;
    const log = logger; // the launcher names its components itself
    const result = await launch({
      argv,
      log,
      resumeTimeoutMs: cfg.quiesce.resumeTimeoutMs,
      stallMs: cfg.quiesce.stallMs,
      quiesceTimeoutMs: cfg.quiesce.timeoutMs,
      stateDir: cfg.controller.stateDir ?? defaultStateDir(),
      whenBusy: cfg.controller.whenBusy,
      queueLimit: cfg.controller.queueLimit,
      hosts: cfg.hosts,
      ...(cfg.checkpoint.dir ? { checkpointRoot: cfg.checkpoint.dir } : {}),
      checkpointKeep: cfg.checkpoint.keep,
      ...(process.env.SYMBIO_CONTROLLER ? { controller: process.env.SYMBIO_CONTROLLER } : {}),
      ...(cfg.controller.tokenFile ? { controllerToken: readTokenFile(cfg.controller.tokenFile) } : {}),
      startPlugins: (controller) => startPlugins(cfg, source, controller, log),
    });
    if (result.chaos && argv.includes('--symbio-json')) process.stdout.write(JSON.stringify(result.chaos) + '\n');
    if (result.chaos && result.chaos.verifyFailures > 0 && result.exitCode === 0) return 1;
    return result.exitCode;
  } catch (err) {
    if (err instanceof LaunchError || err instanceof ConfigError || err instanceof PluginLoadError) {
      process.stderr.write(`symbio-mpirun: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

/** Run `fn` with a progress line on a terminal (none with --json); the line is gone before anything is printed. */
async function withProgress<T>(json: boolean | undefined, fn: (progress: Progress | null) => Promise<T>): Promise<T> {
  const progress = json ? null : progressDisplay();
  try {
    return await fn(progress);
  } finally {
    progress?.done();
  }
}

/** Options every job command shares. */
function jobOptions(c: Command) {
  return c
    .option('--job <id>', 'job id (default: the only running job)')
    .option('--controller <address>', 'a standalone controller: socket path or tcp://host:port')
    .option('--config <file>', 'symbio.yaml (for the TCP token)')
    .option('--json', 'print the result as JSON');
}

function targetOf(o: { job?: string; controller?: string; config?: string }): Target {
  const target = resolveTarget({ ...(o.job ? { job: o.job } : {}), ...(o.controller ? { controller: o.controller } : {}) });
  if (!target.address.tcp) return target;
  // a TCP controller (named, or the one the job attached to) needs the shared token
  const cfg = config(o.config).config;
  if (!cfg.controller.tokenFile) throw new CliError('a TCP controller needs the shared token: set controller.tokenFile in symbio.yaml', EXIT.usage);
  return { ...target, token: readTokenFile(cfg.controller.tokenFile) };
}

interface OpResult {
  id: string;
  kind: string;
  ok: boolean;
  durationMs: number;
  phases: { name: string; ms: number }[];
  result?: { epoch?: number; summary?: { held: number; messages: number; drainedNow: number }; frozenCheck?: { ok: boolean; reason?: string } | null };
}

/** Run an operation with a progress display on a terminal; print the record. */
async function operation(
  kind: string,
  o: { job?: string; controller?: string; config?: string; json?: boolean; timeout?: string; reason?: string },
  human: (r: OpResult) => string,
  params?: Record<string, unknown>,
): Promise<void> {
  const timeoutMs = o.timeout === undefined ? undefined : positiveMs('--timeout', o.timeout);
  const target = targetOf(o);
  const progress = o.json ? null : progressDisplay();
  try {
    const r = (await operate(target, kind, {
      ...(timeoutMs === undefined ? {} : { timeoutMs }),
      ...(params && Object.keys(params).length ? { params } : {}),
      ...(o.reason ? { reason: o.reason } : {}),
      ...(progress ? { onProgress: (p) => progress.phase(p.kind, p.phase) } : {}),
    })) as unknown as OpResult;
    progress?.done();
    print(o.json, r, () => human(r));
  } catch (err) {
    progress?.done();
    if (o.json && err instanceof CliError && err.result !== undefined) print(true, err.result, () => '');
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

  p.command('controller')
    .description('run a standalone controller for several jobs (agents attach with --symbio-controller)')
    .option('--config <file>', 'symbio.yaml')
    .action(async (o) => {
      const { config: cfg, source } = config(o.config);
      if (process.env.SYMBIO_LOG_LEVEL === undefined) logger.level = cfg.log.level;
      const c = await startStandaloneController(cfg, source, logger);
      logger.info({ socket: c.socket, tcp: c.server.tcpAddress, config: source ?? '(defaults)' }, 'controller listening');
      await new Promise<void>((resolve) => {
        const stop = (sig: NodeJS.Signals): void => {
          logger.info({ signal: sig }, 'stopping: resuming held jobs');
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void c.close().then(resolve);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });

  p.command('jobs')
    .description('list running symbio jobs on this machine')
    .option('--json', 'print the result as JSON')
    .action((o) => {
      const jobs = listJobs();
      print(o.json, jobs, () =>
        jobs.length ? table(['JOB', 'PID', 'SINCE', 'COMMAND'], jobs.map((j) => [j.jobId, j.pid, j.startedAt, j.command.join(' ')])) : 'no running jobs',
      );
    });

  jobOptions(p.command('status').description("show a job: its state, operation, nodes and ranks")).action(async (o) => {
    const r = (await ask(targetOf(o), { op: 'status' }, 10_000)) as {
      job: { id: string; state: string; operation: { kind: string; phase: string } | null };
      held: string | null;
      queued: number;
      nodes: { node: string; epoch?: number; command?: string; error?: string; ranks: { worldRank: number; pid: number; state: string; sent: unknown; recvd: unknown; drainedNow: number }[] }[];
    };
    print(o.json, r, () => {
      const head = `job ${r.job.id}: ${r.job.state}${r.held ? ` (${r.held === 'freeze' ? 'frozen' : 'held'})` : ''}${r.job.operation ? `, ${r.job.operation.kind} ${r.job.operation.phase}` : ''}${r.queued ? `, ${r.queued} queued` : ''}`;
      const rows = r.nodes.flatMap((n) => n.ranks.map((x) => [n.node || 'local', x.worldRank, x.pid, x.state, sum(x.sent), sum(x.recvd), x.drainedNow]));
      return `${head}\n${table(['NODE', 'RANK', 'PID', 'STATE', 'SENT', 'RECEIVED', 'DRAINED'], rows)}`;
    });
  });

  jobOptions(p.command('events').description("a job's journal: operations and their phases, health events, failures, decisions"))
    .option('--since <time>', 'only events at or after this time (ISO date, or ms since the epoch)')
    .option('--limit <n>', 'only the last n events')
    .option('--state-dir <dir>', 'where journals are (for jobs that have ended)')
    .action(async (o) => {
      let since: number | undefined;
      if (o.since !== undefined) {
        since = /^\d+$/.test(o.since) ? Number(o.since) : Date.parse(o.since);
        if (!Number.isFinite(since)) throw new CliError(`--since needs an ISO date or ms since the epoch, got '${o.since}'`, EXIT.usage);
      }
      const limit = o.limit === undefined ? undefined : positiveInt('--limit', o.limit);
      const stateDir = o.stateDir ?? config(o.config).config.controller.stateDir;
      const list = await events({
        ...(o.job ? { job: o.job } : {}),
        ...(o.controller ? { controller: o.controller } : {}),
        ...(stateDir ? { stateDir } : {}),
        ...(since === undefined ? {} : { since }),
        ...(limit === undefined ? {} : { limit }),
      });
      print(o.json, list, () => (list.length ? list.map(formatEvent).join('\n') : 'no events'));
    });

  p.command('report')
    .description("a job's report: one self-contained HTML page with its timeline, migrations, checkpoints, failures and decisions")
    .argument('<job>', 'job id (its journal is read; the job may have ended)')
    .option('--out <file>', 'where to write it (default: report.html beside the journal)')
    .option('--state-dir <dir>', 'where journals are')
    .option('--config <file>', 'symbio.yaml (for controller.stateDir)')
    .option('--json', 'print the path and the summary as JSON')
    .action((job: string, o) => {
      const stateDir = o.stateDir ?? config(o.config).config.controller.stateDir ?? defaultStateDir();
      let r;
      try {
        r = writeJobReport({ stateDir, job, ...(o.out ? { out: o.out } : {}) });
      } catch (err) {
        if (err instanceof ReportError) throw new CliError(err.message, EXIT.usage);
        throw err;
      }
      const s = r.summary;
      print(o.json, r, () =>
        `${r.path}\njob ${job}: ${s.exitCode === null ? 'no end journaled' : `exit code ${s.exitCode}`}; ${s.checkpoints} checkpoints, ${s.migrations} migrations, ${s.restarts} restarts, ${s.failures} failures, ${s.healthEvents} health events; paused ${(s.pausedMs / 1000).toFixed(1)} s in all`,
      );
    });

  jobOptions(p.command('quiesce').description('hold (and freeze) every rank of a running job'))
    .option('--no-freeze', 'hold only: ranks keep draining, do not freeze')
    .option('--timeout <ms>', "give up after this long (default: the controller's quiesce.timeoutMs)")
    .option('--reason <text>', 'recorded in the journal')
    .action((o) =>
      operation(o.freeze ? 'freeze' : 'quiesce', o, (r) =>
        `epoch ${r.result?.epoch}: ${r.result?.summary?.held} ranks ${o.freeze ? 'frozen' : 'held'} in ${r.durationMs.toFixed(1)} ms (${r.result?.summary?.messages} messages balanced, ${r.result?.summary?.drainedNow} drained; ${formatPhases(r.phases)})`,
      ),
    );

  jobOptions(p.command('resume').description('let a quiesced job run again'))
    .option('--reason <text>', 'recorded in the journal')
    .action((o) =>
      operation('resume', o, (r) => `epoch ${r.result?.epoch}: resumed in ${r.durationMs.toFixed(2)} ms${r.result?.frozenCheck ? ' (frozen interval verified)' : ''}`),
    );

  jobOptions(p.command('checkpoint').description('coordinated checkpoint of every VM of a job'))
    .option('--timeout <ms>', 'quiesce limit')
    .option('--reason <text>', 'recorded in the journal')
    .action((o) => operation('checkpoint', o, (r) => `checkpoint ${r.id} done in ${Math.round(r.durationMs)} ms (${formatPhases(r.phases)})`));

  jobOptions(p.command('migrate').description("move a job's VMs to other hosts, cooperatively"))
    .option('--vm <id...>', 'VMs to move (default: the policy picks)')
    .option('--to <host...>', 'destination hosts (default: spares)')
    .addOption(new Option('--mode <mode>', 'migration mode').choices(['precopy', 'postcopy', 'hybrid'] as const))
    .option('--bandwidth <MiBps>', 'migration bandwidth limit')
    .option('--timeout <ms>', 'quiesce limit')
    .option('--reason <text>', 'recorded in the journal')
    .action((o) =>
      operation('migrate', o, (r) => `migration ${r.id} done in ${Math.round(r.durationMs)} ms (${formatPhases(r.phases)})`, {
        ...(o.vm ? { vms: o.vm } : {}),
        ...(o.to ? { to: o.to } : {}),
        ...(o.mode ? { mode: o.mode } : {}),
        ...(o.bandwidth ? { migration: { bandwidthBps: positiveInt('--bandwidth', o.bandwidth) * 2 ** 20 } } : {}),
      }),
    );

  jobOptions(p.command('restart').description('restart a job from a checkpoint'))
    .argument('[manifest]', 'checkpoint manifest (default: the last good checkpoint)')
    .option('--to <vm=place...>', 'where VMs start (vm1=slot3); default: free places')
    .option('--reason <text>', 'recorded in the journal')
    .action((manifest, o) =>
      operation('restart', o, (r) => `restart ${r.id} done in ${Math.round(r.durationMs)} ms (${formatPhases(r.phases)})`, {
        ...(manifest ? { manifest } : {}),
        ...(o.to ? { places: placements(o.to) } : {}),
      }),
    );

  const plugins = p.command('plugins').description('plugins');
  plugins
    .command('list')
    .description('the plugins the configuration names, loaded and checked')
    .option('--config <file>', 'symbio.yaml')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await checkConfig(o.config === undefined ? {} : { explicit: o.config });
      print(o.json, r.plugins, () =>
        r.plugins.length
          ? table(['NAME', 'VERSION', 'KIND', 'FROM'], r.plugins.map((x) => [x.name, x.version, x.kind, x.spec]))
          : `no plugins configured (${r.source ?? 'embedded defaults'})`,
      );
    });

  plugins
    .command('builtin')
    .description('the plugins that ship with symbio: what each does, its `use:` name and its options with their defaults')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const list = await listBuiltinPlugins();
      print(o.json, list, () => formatBuiltinPlugins(list));
    });

  const cfgCmd = p.command('config').description('configuration');
  cfgCmd
    .command('check')
    .description('validate the configuration and its plugins; print the effective configuration')
    .option('--config <file>', 'symbio.yaml (default: the search order)')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await checkConfig(o.config === undefined ? {} : { explicit: o.config });
      print(o.json, r, () =>
        [`# ${r.source ? `valid: ${r.source}` : `no configuration file found (searched ${r.searched.join(', ')}): embedded defaults`}`,
          `# ${r.plugins.length} plugin${r.plugins.length === 1 ? '' : 's'} loaded and checked`,
          formatEffectiveConfig(r.config).trimEnd()].join('\n'),
      );
    });
  const image = p.command('image').description('the guest image of the virtual cluster');
  image
    .command('build')
    .description('build (or reuse) the cached guest image: Debian 12 with Open MPI, Node and symbio')
    .option('--packages <names>', 'Debian packages to add, comma-separated (e.g. lammps,python3-mpi4py)')
    .option('--force', 'rebuild the image even if a cached one matches (the debootstrap layer is reused)')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const img = await withProgress(o.json, (progress) => imageBuild({ ...o, log: logger.child({ component: 'image' }), progress }));
      print(o.json, img, () => `image ${img.id} in ${img.dir} (kernel ${img.kernelVersion})`);
    });

  const vc = p.command('vcluster').description('a local virtual cluster of QEMU VMs (tests, demo, benchmarks)');
  const nameOption = () => new Option('--name <name>', 'cluster name').default('default');
  vc.command('up')
    .description('start N VMs from the guest image, with spare slots for migration targets')
    .addOption(nameOption())
    .option('-n, --vms <n>', 'number of VMs', '2')
    .option('--spares <n>', 'spare slots', '1')
    .option('--memory <MiB>', 'guest memory', '512')
    .option('--cpus <n>', 'vCPUs per VM', '1')
    .option('--packages <names>', 'Debian packages to add to the image, comma-separated')
    .option('--json', 'print the cluster as JSON')
    .action(async (o) => {
      const st = await withProgress(o.json, (progress) =>
        upCluster({
          name: o.name,
          vms: positiveInt('--vms', o.vms),
          spares: o.spares === '0' ? 0 : positiveInt('--spares', o.spares),
          memoryMiB: positiveInt('--memory', o.memory),
          cpus: positiveInt('--cpus', o.cpus),
          ...(o.packages ? { packages: o.packages } : {}),
          log: logger.child({ component: 'vcluster' }),
          progress,
        }),
      );
      print(o.json, st, () => `virtual cluster ${st.name}: ${st.vms.map((v) => `${v.name} (ssh port ${v.sshPort})`).join(', ')}; ${st.slots - st.vms.length} spare slot(s); ${st.accel}`);
    });
  vc.command('status')
    .description('the VMs of a cluster: slot, pid, QEMU state, ssh port')
    .addOption(nameOption())
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await clusterStatus(o.name, logger.child({ component: 'vcluster' }));
      print(o.json, r, () =>
        [`virtual cluster ${r.state.name}: ${r.state.accel}, image ${r.state.image.id}, ${r.state.slots} slots`,
          table(['VM', 'SLOT', 'PID', 'STATE', 'SSH'], r.vms.map((v) => [v.name, String(v.slot), String(v.pid), v.state, String(v.sshPort)]))].join('\n'),
      );
      if (r.vms.some((v) => !v.alive)) throw new CliError(`some VMs of ${o.name} are gone: 'symbio vcluster down --name ${o.name}' cleans up`, EXIT.failed);
    });
  vc.command('down')
    .description('stop every VM of a cluster and remove its sockets and files (also after a crash)')
    .addOption(nameOption())
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await downCluster(o.name, logger.child({ component: 'vcluster' }));
      print(o.json, r, () => (r.existed ? `virtual cluster ${o.name} is down (${r.stopped} QEMU process(es) stopped)` : `no virtual cluster ${o.name}: nothing to do`));
    });
  vc.command('exec')
    .description('run a command in a guest over ssh; its output and exit code pass through')
    .addOption(nameOption())
    .option('--vm <vm>', 'VM name or index', '0')
    .argument('<command...>', 'the command (after --)')
    .action(async (command, o) => {
      process.exitCode = await execInCluster(o.name, o.vm, command);
    });
  vc.command('cp')
    .description('copy files or directories into a directory of the guests (all, or --vm)')
    .addOption(nameOption())
    .option('--vm <vm>', 'only this VM (name or index)')
    .argument('<paths...>', 'SOURCE... DEST-DIRECTORY')
    .action(async (paths, o) => {
      const to = await copyIntoCluster(o.name, o.vm, paths);
      process.stderr.write(`copied into ${to.join(', ')}:${paths[paths.length - 1]}\n`);
    });
  vc.command('health')
    .description("set the simulated health of a slot (the vcluster-health monitor reports it), or clear it")
    .addOption(nameOption())
    .requiredOption('--slot <slot>', 'slot (slot2 or 2)')
    .addOption(new Option('--severity <severity>', 'how bad').choices(['info', 'warning', 'critical'] as const).default('warning' as const))
    .option('--component <what>', 'what is failing', 'simulated memory mc0')
    .option('--message <text>', 'what was seen', 'correctable memory errors rising fast')
    .option('--lead-time <ms>', 'predicted time to failure, ms (counts down from now)')
    .option('--clear', "clear the slot's condition (the monitor then reports it back to normal)")
    .option('--json', 'print the condition as JSON')
    .action(async (o) => {
      if (o.clear) {
        healthInCluster(o.name, o.slot, null);
        print(o.json, { slot: o.slot, cleared: true }, () => `${o.slot}: condition cleared`);
        return;
      }
      const c = healthInCluster(o.name, o.slot, {
        severity: o.severity,
        component: o.component,
        message: o.message,
        ...(o.leadTime === undefined ? {} : { leadTimeMs: positiveMs('--lead-time', o.leadTime) }),
      })!;
      print(o.json, c, () => `${o.slot}: ${c.severity}: ${c.component}: ${c.message}${c.leadTimeMs === undefined ? '' : ` (failure predicted in ${Math.round(c.leadTimeMs / 1000)} s)`}`);
    });
  vc.command('kill')
    .description("simulate a host failure: SIGKILL the QEMU running in a slot (or the VM's)")
    .addOption(nameOption())
    .option('--slot <slot>', 'slot (slot2 or 2)')
    .option('--vm <vm>', 'VM name or index')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await killInCluster(o.name, { ...(o.slot ? { slot: o.slot } : {}), ...(o.vm ? { vm: o.vm } : {}) });
      print(o.json, r, () => `killed ${r.vm}'s QEMU (pid ${r.pid}) in ${r.slot}`);
    });
  vc.command('migrate')
    .description('raw live migration of one VM to a spare slot (no MPI cooperation)')
    .addOption(nameOption())
    .requiredOption('--vm <vm>', 'VM name or index')
    .option('--slot <n>', 'target slot (default: the first free one)')
    .addOption(new Option('--mode <mode>', 'migration mode').choices(['precopy', 'postcopy', 'hybrid'] as const).default('precopy' as const))
    .option('--auto-converge', 'throttle the guest until precopy converges')
    .option('--xbzrle <MiB>', 'xbzrle cache size')
    .option('--multifd <channels>', 'multifd channels (precopy only)')
    .option('--downtime <ms>', 'downtime limit')
    .option('--bandwidth <MiBps>', 'bandwidth limit')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const r = await withProgress(o.json, (progress) =>
        migrateInCluster({
          name: o.name,
          vm: o.vm,
          ...(o.slot === undefined ? {} : { slot: Number(o.slot) }),
          migration: {
            mode: o.mode,
            autoConverge: o.autoConverge ?? false,
            ...(o.xbzrle ? { xbzrleCacheBytes: positiveInt('--xbzrle', o.xbzrle) * 2 ** 20 } : {}),
            ...(o.multifd ? { multifdChannels: positiveInt('--multifd', o.multifd) } : {}),
            ...(o.downtime ? { downtimeLimitMs: positiveMs('--downtime', o.downtime) } : {}),
            ...(o.bandwidth ? { bandwidthBps: positiveInt('--bandwidth', o.bandwidth) * 2 ** 20 } : {}),
          },
          log: logger.child({ component: 'vcluster' }),
          progress,
        }),
      );
      const { samples, ...summary } = r.result;
      print(o.json, { ...r, result: { ...summary, samples: samples.length } }, () =>
        `${o.vm}: slot ${r.from} -> ${r.to}, ${r.result.mode}, ${Math.round(r.result.totalMs)} ms total, ${Math.round(r.result.downtimeMs)} ms downtime, ${Math.round(r.result.transferredBytes / 2 ** 20)} MiB sent`,
      );
    });
  return p;
}

function sum(c: unknown): number {
  if (Array.isArray(c)) return c.reduce((a: number, b: number) => a + b, 0);
  const s = c as { counts?: number[] } | null;
  return s?.counts?.reduce((a, b) => a + b, 0) ?? 0;
}

/** `vm1=slot3` pairs of --to. */
function placements(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const m = /^([^=\s]+)=([^=\s]+)$/.exec(p);
    if (!m) throw new CliError(`--to needs vm=place pairs (vm1=slot3), got '${p}'`, EXIT.usage);
    out[m[1]!] = m[2]!;
  }
  return out;
}

export async function main(argv: string[], invokedAs: 'symbio' | 'symbio-mpirun'): Promise<number> {
  if (invokedAs === 'symbio-mpirun') return run(argv);
  if (argv[0] === 'run') return run(argv.slice(1));
  try {
    await program().parseAsync(argv, { from: 'user' });
    // a command that passes another program's exit code through (vcluster exec) sets it here
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
    if (e.code?.startsWith('commander.')) return EXIT.usage; // commander already printed the problem
    if (err instanceof CliError) {
      process.stderr.write(`symbio: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof ConfigError || err instanceof PluginLoadError) {
      process.stderr.write(`symbio: ${err.message}\n`);
      return EXIT.usage;
    }
    process.stderr.write(`symbio: ${e.message}\n`);
    return EXIT.failed;
  }
}
