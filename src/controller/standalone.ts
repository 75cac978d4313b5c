/**
 * `symbio controller`: a controller on its own, for several jobs and for
 * agents on other hosts. Listens on its Unix socket (and TCP with a token
 * when configured), runs the configured plugins, and on SIGTERM/SIGINT
 * resumes every held job and leaves nothing behind.
 */
import { join } from 'node:path';
import { Controller, UnknownJobError } from './controller.js';
import { VmJob } from './vm-job.js';
import { ControllerServer } from './server.js';
import { defaultStateDir } from './journal.js';
import { ensureRuntimeDir } from '../agent/runtime-dir.js';
import { readTokenFile } from '../config/load.js';
import { startPlugins } from '../host/start-plugins.js';
import type { PluginHost } from '../host/plugin-host.js';
import type { SymbioConfig } from '../config/schema.js';
import type { Logger } from '../log.js';

export const CONTROLLER_SOCKET_NAME = 'controller.sock';

export function controllerSocketPath(config: SymbioConfig): string {
  return config.controller.socket ?? join(ensureRuntimeDir(), CONTROLLER_SOCKET_NAME);
}

export interface RunningController {
  readonly controller: Controller;
  readonly server: ControllerServer;
  readonly plugins: PluginHost | null;
  readonly socket: string;
  close(): Promise<void>;
}

export async function startStandaloneController(config: SymbioConfig, source: string | null, log: Logger): Promise<RunningController> {
  const controller = new Controller({
    stateDir: config.controller.stateDir ?? defaultStateDir(),
    whenBusy: config.controller.whenBusy,
    queueLimit: config.controller.queueLimit,
    quiesce: { timeoutMs: config.quiesce.timeoutMs, stallMs: config.quiesce.stallMs },
    hosts: config.hosts,
    log: log.child({ component: 'controller' }),
  });
  const socket = controllerSocketPath(config);
  const token = config.controller.tokenFile ? readTokenFile(config.controller.tokenFile) : undefined;
  let plugins: PluginHost | null = null;
  const vmJobs = new Map<string, VmJob>();
  const server = new ControllerServer(controller, {
    vmJobs: {
      // a job in VMs run by this controller: its policies act on it, and operators reach it here
      run: async (req, output) => {
        const jlog = log.child({ job: req.job });
        const { job } = await VmJob.open(
          {
            jobId: req.job,
            cluster: req.cluster,
            vms: req.vms ?? null,
            args: req.args,
            np: req.np,
            resumeTimeoutMs: req.resumeTimeoutMs ?? config.quiesce.resumeTimeoutMs,
            stallMs: config.quiesce.stallMs,
            ...(config.checkpoint.dir ? { checkpointDir: join(config.checkpoint.dir, req.job) } : {}),
            checkpointKeep: config.checkpoint.keep,
            ...(req.launcherPid === undefined ? {} : { launcherPid: req.launcherPid }),
          },
          { controller, log: jlog, startPlugins: async () => plugins },
        );
        vmJobs.set(req.job, job);
        try {
          job.on('output', output);
          await job.start();
          return await job.wait();
        } finally {
          vmJobs.delete(req.job);
          job.close();
        }
      },
      signal: async (id, sig) => {
        const job = vmJobs.get(id);
        if (!job) throw new UnknownJobError(`no VM job '${id}' runs under this controller`);
        await job.signal(sig);
      },
    },
    unixPath: socket,
    ...(config.controller.tcp ? { tcp: config.controller.tcp } : {}),
    ...(token === undefined ? {} : { token }),
    plugins: () => plugins?.list() ?? [],
    log: log.child({ component: 'server' }),
  });
  await server.listen();
  try {
    plugins = await startPlugins(config, source, controller, log);
  } catch (err) {
    await server.close();
    throw err;
  }
  let closing: Promise<void> | null = null;
  return {
    controller,
    server,
    plugins,
    socket,
    close: () =>
      (closing ??= (async () => {
        await plugins?.close();
        await controller.close(); // resumes held jobs through their agents
        await server.close();
      })()),
  };
}
