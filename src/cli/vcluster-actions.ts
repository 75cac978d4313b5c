/**
 * What `symbio image build` and `symbio vcluster ...` do, as plain
 * functions over src/image and src/vcluster (main.ts only wires options).
 * Their own errors become CliErrors with exit code 2 (bad input, or nothing
 * there to act on).
 */
import { buildImage, ImageBuildError, type GuestImage } from '../image/build-image.js';
import type { Logger } from '../log.js';
import { MigrationError, type MigrationOptionsInput } from '../hypervisor/qemu/migration.js';
import { VmSpecError } from '../hypervisor/qemu/vm-spec.js';
import { ClusterError } from '../vcluster/state.js';
import { findVm, guestCopy, guestExec, requireState, vclusterDown, vclusterMigrate, vclusterStatus, vclusterUp } from '../vcluster/vcluster.js';
import { clearHealth, setHealth } from '../vcluster/health.js';
import { pidAlive } from '../util/process.js';
import { CliError, EXIT } from './actions.js';
import type { Progress } from './progress.js';

/** Known failure kinds say what was wrong; anything else is a bug and keeps its stack. */
async function clusterCall<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ClusterError || err instanceof VmSpecError) throw new CliError(err.message, EXIT.usage);
    if (err instanceof ImageBuildError) throw new CliError(err.message, EXIT.failed);
    if (err instanceof MigrationError) throw new CliError(`${err.message} (the guest is ${err.guestOn === 'source' ? 'running on the source' : 'lost'})`, EXIT.failed);
    throw err;
  }
}

export function parsePackages(list: string | undefined): string[] {
  if (list === undefined) return [];
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = names.filter((n) => !/^[a-z0-9][a-z0-9+.-]+$/.test(n));
  if (bad.length) throw new CliError(`not Debian package names: ${bad.join(', ')}`, EXIT.usage);
  return names;
}

export function imageBuild(o: { packages?: string; force?: boolean; log: Logger; progress: Progress | null }): Promise<GuestImage> {
  return clusterCall(() =>
    buildImage({
      packages: parsePackages(o.packages),
      force: o.force ?? false,
      log: o.log,
      onProgress: (step) => o.progress?.phase('image', step) ?? o.log.info(step),
    }),
  );
}

export async function upCluster(o: {
  name: string;
  vms: number;
  spares: number;
  memoryMiB: number;
  cpus: number;
  packages?: string;
  log: Logger;
  progress: Progress | null;
}) {
  const image = await imageBuild({ ...(o.packages ? { packages: o.packages } : {}), log: o.log, progress: o.progress });
  return clusterCall(() =>
    vclusterUp({
      name: o.name,
      vms: o.vms,
      spares: o.spares,
      memoryMiB: o.memoryMiB,
      cpus: o.cpus,
      image,
      log: o.log,
      onProgress: (m) => o.progress?.phase('vcluster', m) ?? o.log.info(m),
    }),
  );
}

export const clusterStatus = (name: string, log: Logger) => clusterCall(() => vclusterStatus(name, log));
export const downCluster = (name: string, log: Logger) => clusterCall(() => vclusterDown(name, log));

/** Exit code of the remote command (ssh's 255 if ssh itself failed). */
export async function execInCluster(name: string, vm: string, argv: readonly string[]): Promise<number> {
  if (argv.length === 0) throw new CliError('give the command to run after --, e.g. symbio vcluster exec --vm 0 -- uname -a', EXIT.usage);
  const state = await clusterCall(async () => requireState(name));
  const r = await clusterCall(() => guestExec(state, vm, argv, { inherit: true }));
  return r.code;
}

export async function copyIntoCluster(name: string, vm: string | undefined, args: readonly string[]): Promise<string[]> {
  if (args.length < 2) throw new CliError('usage: symbio vcluster cp [--vm K] SOURCE... DEST-DIRECTORY', EXIT.usage);
  const state = await clusterCall(async () => requireState(name));
  const targets = vm === undefined ? state.vms.map((v) => v.name) : [vm];
  await clusterCall(() => guestCopy(state, targets, args.slice(0, -1), args[args.length - 1]!));
  return targets;
}

export function migrateInCluster(o: { name: string; vm: string; slot?: number; migration: MigrationOptionsInput; log: Logger; progress: Progress | null }) {
  return clusterCall(() =>
    vclusterMigrate(o.name, o.vm, {
      log: o.log,
      migration: o.migration,
      ...(o.slot === undefined ? {} : { slot: o.slot }),
      onProgress: (p) =>
        o.progress?.phase('migrate', `${p.status}, pass ${p.pass}, ${Math.round(p.remainingBytes / 2 ** 20)} MiB left of ${Math.round(p.totalBytes / 2 ** 20)}`),
    }),
  );
}

/** Simulate a host failure: SIGKILL the QEMU of a VM (by VM, or by the slot it runs in). */
export async function killInCluster(name: string, o: { slot?: string; vm?: string }): Promise<{ vm: string; slot: string; pid: number }> {
  const state = await clusterCall(async () => requireState(name));
  if ((o.slot === undefined) === (o.vm === undefined)) throw new CliError('name the VM to kill with --vm, or its slot with --slot', EXIT.usage);
  const slot = o.slot === undefined ? undefined : o.slot.replace(/^slot/, '');
  const v = o.vm !== undefined ? await clusterCall(async () => findVm(state, o.vm!)) : state.vms.find((x) => String(x.slot) === slot);
  if (!v) throw new CliError(`no VM of ${name} runs in slot ${o.slot} (VMs: ${state.vms.map((x) => `${x.name} in slot${x.slot}`).join(', ')})`, EXIT.failed);
  if (!(v.pid > 0 && pidAlive(v.pid))) throw new CliError(`${v.name}'s QEMU (pid ${v.pid}) is not running`, EXIT.failed);
  process.kill(v.pid, 'SIGKILL');
  return { vm: v.name, slot: `slot${v.slot}`, pid: v.pid };
}

/** Set or clear a slot's simulated health (vcluster/health.ts), with CLI errors. */
export function healthInCluster(name: string, slot: string, c: Parameters<typeof setHealth>[2] | null): ReturnType<typeof setHealth> | null {
  try {
    requireState(name);
    if (c === null) {
      clearHealth(name, slot);
      return null;
    }
    return setHealth(name, slot, c);
  } catch (err) {
    if (err instanceof ClusterError) throw new CliError(err.message, EXIT.failed);
    throw err;
  }
}
