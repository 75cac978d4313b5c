/**
 * Live-migrate a running QemuVm to a new QEMU on this machine: start the
 * destination (`-incoming defer`, possibly already started by the caller to
 * keep start-up off the critical path), align capabilities, migrate over a
 * private Unix socket, and end with the guest on the destination and the
 * source gone — or, on failure, with the guest running on the source and
 * the destination gone.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../../log.js';
import {
  MigrationError,
  migrationConflicts,
  migrationOptionsSchema,
  prepareIncoming,
  prepareOutgoing,
  resumeSourceAfterFailure,
  runOutgoingMigration,
  waitMigrationSettled,
  type MigrationOptionsInput,
  type MigrationProgress,
  type MigrationResult,
} from './migration.js';
import { QemuVm, type QemuStartOptions } from './qemu-vm.js';
import type { VmSpecInput } from './vm-spec.js';

export interface LiveMigrateOptions extends QemuStartOptions {
  log: Logger;
  signal?: AbortSignal;
  onProgress?: (p: MigrationProgress) => void;
  /** Keep the source QEMU (in postmigrate) instead of quitting it; default false. */
  keepSource?: boolean;
  /** Stream URI; default a private Unix socket. For another host: tcp:HOST:PORT. */
  uri?: string;
}

/** Start the destination QEMU of a migration: the spec as given, waiting for migrate-incoming. */
export async function startDestination(spec: VmSpecInput, o: QemuStartOptions): Promise<QemuVm> {
  return QemuVm.start({ ...spec, incoming: true }, o);
}

/**
 * Move `src`'s guest into `dst` (a spec to start, or a QemuVm from
 * startDestination). Resolves with the running destination and the
 * migration's numbers; rejects with a MigrationError after rolling back.
 */
export async function liveMigrate(
  src: QemuVm,
  dst: VmSpecInput | QemuVm,
  optionsIn: MigrationOptionsInput,
  o: LiveMigrateOptions,
): Promise<{ vm: QemuVm; result: MigrationResult }> {
  const options = migrationOptionsSchema.parse(optionsIn);
  const log = o.log.child({ vm: src.name, op: 'migrate', mode: options.mode });
  const t0 = performance.now();
  const wasRunning = (await src.status()).running;
  // what this QEMU refuses together, said before the destination takes any of it
  const conflicts = migrationConflicts(options, (await src.qmp.queryVersion()).qemu);
  if (conflicts.length > 0) {
    if (dst instanceof QemuVm) await dst.kill();
    throw new MigrationError(`cannot migrate ${src.name} with these options: ${conflicts.join('; ')}`, 'source');
  }
  const target = dst instanceof QemuVm ? dst : await startDestination(dst, o);
  const sockDir = o.uri ? null : mkdtempSync(join(tmpdir(), 'symbio-mig-'));
  const uri = o.uri ?? `unix:${join(sockDir!, 's')}`;
  try {
    await prepareIncoming(target, uri, options);
    await prepareOutgoing(src, options);
    // If the destination dies, say so at once rather than when the stream stalls.
    const result = await Promise.race([
      runOutgoingMigration(src, uri, options, { log, signal: o.signal, onProgress: o.onProgress }),
      target.exited.then(async (e) => {
        // after the switch to postcopy the guest's newest state was on the
        // destination: it went with it (the source is left in postcopy-paused)
        const status = await src.qmp
          .execute<{ status?: string }>('query-migrate', undefined, { timeoutMs: 5000 })
          .then((q) => q.status ?? 'none', () => 'unknown');
        const lost = status.startsWith('postcopy');
        // a cancel cuts the stream, and the destination exits over it: the cancel is the news
        if (o.signal?.aborted && !lost) throw new MigrationError(`migration of ${src.name} was cancelled`, 'source');
        const why = `the destination QEMU of ${src.name} exited during the migration (${e.signal ?? `code ${e.code}`})${e.stderr ? `: ${e.stderr.split('\n').slice(-2).join('; ')}` : ''}`;
        throw new MigrationError(lost ? `${why}, after the switch to postcopy (source: ${status}): the guest is lost` : why, lost ? 'lost' : 'source');
      }),
    ]);
    if (wasRunning) await waitRunning(target, 30_000);
    const wallMs = performance.now() - t0;
    log.info(
      { totalMs: result.totalMs, downtimeMs: result.downtimeMs, MiB: Math.round(result.transferredBytes / 2 ** 20), passes: result.passes, postcopyAtMs: result.postcopyStartedAtMs },
      'migration completed',
    );
    if (!o.keepSource) await src.shutdown();
    return { vm: target, result: { ...result, wallMs } };
  } catch (err) {
    const me = err instanceof MigrationError ? err : new MigrationError(`migration of ${src.name} failed: ${(err as Error).message}`, 'source', { cause: err });
    if (me.guestOn === 'source') {
      // Stop the source sending first (a dead destination may leave it 'active' until the socket errors).
      await src.qmp.execute('migrate_cancel').catch(() => undefined);
      await target.kill();
      // the source is usable again (device_add, another migrate) only once QEMU has ended its side
      await waitMigrationSettled(src).catch((e: unknown) => log.error({ err: e }, 'the source did not leave its migration state'));
      await resumeSourceAfterFailure(src, wasRunning, log).catch((e: unknown) => log.error({ err: e }, 'could not continue the guest on the source'));
    }
    throw me;
  } finally {
    if (sockDir) rmSync(sockDir, { recursive: true, force: true });
  }
}

/** The destination runs once the last page is in (precopy) or at switch-over (postcopy). */
async function waitRunning(vm: QemuVm, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await vm.status();
    if (st.running) return;
    if (Date.now() > deadline) throw new MigrationError(`the destination of ${vm.name} is '${st.status}', not running, ${timeoutMs} ms after the migration completed`, 'lost');
    await new Promise((r) => setTimeout(r, 20));
  }
}
