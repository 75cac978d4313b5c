/**
 * Live migration of a QEMU VM to a destination QEMU started with
 * `-incoming defer`, in each mode QEMU (7.2 to 10) offers:
 *   precopy   copy RAM while the guest runs, pass after pass, then stop it
 *             for the last dirty pages (downtime bounded by downtime-limit);
 *   postcopy  switch over at once and let the destination pull pages on
 *             demand (userfaultfd): downtime does not grow with memory,
 *             but a failure after switch-over loses the VM;
 *   hybrid    precopy, then postcopy after N passes or as soon as the dirty
 *             rate shows precopy will not converge.
 * Options on top: auto-converge (throttle the vCPUs), xbzrle (send deltas
 * of re-dirtied pages), multifd (several channels), downtime limit,
 * bandwidth. Free-page hinting is a device property (virtio-balloon
 * free-page-hint, vm-spec.ts): precopy then skips pages the guest says it
 * has freed.
 *
 * Progress comes from MIGRATION/MIGRATION_PASS events plus query-migrate
 * polled while the migration runs; every sample is kept (the report draws
 * bytes remaining over time).
 */
import { z } from 'zod';
import type { Logger } from '../../log.js';
import type { QmpEvent } from '../qmp/client.js';
import type { QemuVm } from './qemu-vm.js';

export type MigrationMode = 'precopy' | 'postcopy' | 'hybrid';
export type PostcopyTrigger = 'mode' | 'passes' | 'dirty-rate' | 'no-progress';

export const migrationOptionsSchema = z
  .strictObject({
    mode: z.enum(['precopy', 'postcopy', 'hybrid']).default('precopy'),
    autoConverge: z.boolean().default(false),
    /** xbzrle cache, bytes (0: off). */
    xbzrleCacheBytes: z.number().int().min(0).default(0),
    /** multifd channels (0: off). */
    multifdChannels: z.number().int().min(0).max(255).default(0),
    downtimeLimitMs: z.number().int().min(1).max(2000_000).optional(),
    /** bytes/s; QEMU's own default (128 MiB/s) is far below loopback speed, so symbio's default is unlimited-ish. */
    bandwidthBps: z.number().int().min(1).default(16 * 1024 ** 3),
    /** hybrid: switch to postcopy after this many completed precopy passes. */
    hybridMaxPasses: z.number().int().min(1).default(3),
    /** hybrid: also switch when a pass's dirty rate is at least this share of the bandwidth seen (precopy will not converge). */
    hybridDirtyRatio: z.number().min(0).max(10).default(0.8),
    /** postcopy: how long precopy runs before the switch (0: at once after setup). */
    postcopyDelayMs: z.number().int().min(0).default(0),
    timeoutMs: z.number().int().min(1).default(300_000),
    /** query-migrate polling while active. */
    progressIntervalMs: z.number().int().min(10).default(200),
  });
export type MigrationOptionsInput = z.input<typeof migrationOptionsSchema>;
export type MigrationOptions = z.output<typeof migrationOptionsSchema>;

export interface QemuVersion {
  readonly major: number;
  readonly minor: number;
  readonly micro: number;
}
/** `v` is major.minor or newer. */
export const atLeast = (v: QemuVersion, major: number, minor: number): boolean => v.major > major || (v.major === major && v.minor >= minor);
const vstr = (v: QemuVersion) => `${v.major}.${v.minor}.${v.micro}`;

/**
 * Option combinations the given QEMU refuses (in migrate-set-capabilities,
 * after the destination is up): checked against the source's version before
 * either VM is touched, so the error says why. Empty: all fine.
 *   - multifd with postcopy-ram: "Postcopy is not yet compatible with
 *     multifd" up to QEMU 10.0; allowed from 10.1.
 *   - multifd with xbzrle: "Multifd is not compatible with xbzrle" from
 *     QEMU 8.1 (7.2 took both and simply sent no xbzrle pages on multifd).
 */
export function migrationConflicts(o: MigrationOptions, v: QemuVersion): string[] {
  const problems: string[] = [];
  if (o.mode !== 'precopy' && o.multifdChannels > 0 && !atLeast(v, 10, 1)) {
    problems.push(`QEMU ${vstr(v)} refuses multifd with ${o.mode} (QEMU 10.1 and later take it): use precopy, or multifdChannels: 0`);
  }
  if (o.multifdChannels > 0 && o.xbzrleCacheBytes > 0 && atLeast(v, 8, 1)) {
    problems.push(`QEMU ${vstr(v)} refuses multifd with xbzrle (since QEMU 8.1): use one of multifdChannels and xbzrleCacheBytes`);
  }
  return problems;
}

export interface MigrationProgress {
  readonly atMs: number;
  readonly status: string;
  readonly pass: number;
  readonly transferredBytes: number;
  readonly remainingBytes: number;
  readonly totalBytes: number;
  readonly dirtyRateBps: number;
  readonly mbps: number;
  readonly postcopy: boolean;
}

export interface MigrationResult {
  readonly mode: MigrationMode;
  readonly status: 'completed';
  /** QEMU's total-time, ms. */
  readonly totalMs: number;
  /** The guest's stop time as QEMU measures it, ms. */
  readonly downtimeMs: number;
  readonly setupMs: number;
  readonly transferredBytes: number;
  readonly totalBytes: number;
  readonly passes: number;
  /** hybrid/postcopy: ms after the start at which postcopy began (null: never). */
  readonly postcopyStartedAtMs: number | null;
  /**
   * What made it switch to postcopy (null: never): 'mode' (postcopy mode),
   * or hybrid's rules: 'passes' (hybridMaxPasses precopy passes done),
   * 'dirty-rate' (dirty rate >= hybridDirtyRatio x bandwidth), 'no-progress'
   * (a pass began with no less RAM left than the one before).
   */
  readonly postcopyTrigger: PostcopyTrigger | null;
  readonly postcopyRequests: number;
  readonly samples: readonly MigrationProgress[];
  /** Wall clock from `migrate` to the destination running. */
  readonly wallMs: number;
}

export class MigrationError extends Error {
  override name = 'MigrationError';
  constructor(
    message: string,
    /** Where the guest is now: still on the source (safe), or lost with the destination (postcopy failure). */
    readonly guestOn: 'source' | 'lost',
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The part of query-migrate we read. */
const queryMigrateSchema = z.looseObject({
  status: z.string().optional(),
  'total-time': z.number().optional(),
  downtime: z.number().optional(),
  'setup-time': z.number().optional(),
  'error-desc': z.string().optional(),
  ram: z
    .looseObject({
      transferred: z.number(),
      remaining: z.number(),
      total: z.number(),
      'dirty-pages-rate': z.number().optional(),
      'page-size': z.number().optional(),
      mbps: z.number().optional(),
      'dirty-sync-count': z.number().optional(),
      'postcopy-requests': z.number().optional(),
    })
    .optional(),
});
type QueryMigrate = z.infer<typeof queryMigrateSchema>;

const ACTIVE = new Set(['setup', 'active', 'postcopy-active', 'pre-switchover', 'device', 'wait-unplug', 'cancelling']);
/**
 * A postcopy whose stream broke: QEMU does not fail it (the guest's newest
 * state is on the destination) but pauses it, waiting for a recovery
 * (migrate-recover) that symbio does not do. The guest is lost.
 */
const POSTCOPY_BROKEN = new Set(['postcopy-paused', 'postcopy-recover-setup', 'postcopy-recover']);

async function queryMigrate(vm: QemuVm): Promise<QueryMigrate> {
  const raw = await vm.qmp.execute('query-migrate');
  const r = queryMigrateSchema.safeParse(raw);
  if (!r.success) throw new Error(`QEMU's reply to query-migrate is not what QMP specifies: ${JSON.stringify(raw)}`);
  return r.data;
}

/** Capabilities both sides must agree on, and those that only the source needs. */
function capabilities(o: MigrationOptions): { both: Record<string, boolean>; source: Record<string, boolean> } {
  return {
    both: { 'postcopy-ram': o.mode !== 'precopy', multifd: o.multifdChannels > 0 },
    source: { events: true, 'auto-converge': o.autoConverge, xbzrle: o.xbzrleCacheBytes > 0 },
  };
}

const capList = (caps: Record<string, boolean>) => Object.entries(caps).map(([capability, state]) => ({ capability, state }));

/** Prepare `vm` (started with incoming: true) to receive on `uri`. Also used by restore. */
export async function prepareIncoming(vm: QemuVm, uri: string, o: MigrationOptions): Promise<void> {
  const { both } = capabilities(o);
  await vm.qmp.execute('migrate-set-capabilities', { capabilities: capList(both) });
  if (o.multifdChannels > 0) await vm.qmp.execute('migrate-set-parameters', { 'multifd-channels': o.multifdChannels });
  await vm.qmp.execute('migrate-incoming', { uri });
}

/** Set the source's capabilities and parameters for `o`. */
export async function prepareOutgoing(vm: QemuVm, o: MigrationOptions): Promise<void> {
  const { both, source } = capabilities(o);
  await vm.qmp.execute('migrate-set-capabilities', { capabilities: capList({ ...both, ...source }) });
  const params: Record<string, number> = { 'max-bandwidth': o.bandwidthBps };
  if (o.downtimeLimitMs !== undefined) params['downtime-limit'] = o.downtimeLimitMs;
  if (o.multifdChannels > 0) params['multifd-channels'] = o.multifdChannels;
  if (o.xbzrleCacheBytes > 0) params['xbzrle-cache-size'] = o.xbzrleCacheBytes;
  await vm.qmp.execute('migrate-set-parameters', params);
}

export interface RunMigrationOptions {
  log: Logger;
  signal?: AbortSignal;
  onProgress?: (p: MigrationProgress) => void;
}

/**
 * Drive an outgoing migration that `prepareOutgoing` set up, to `uri`, until
 * it completes: the mode's switch to postcopy, progress samples, cancel on
 * `signal`. Resolves with the source's final numbers; rejects with a
 * MigrationError saying where the guest is.
 */
export async function runOutgoingMigration(src: QemuVm, uri: string, o: MigrationOptions, r: RunMigrationOptions): Promise<Omit<MigrationResult, 'wallMs'>> {
  const t0 = performance.now();
  const samples: MigrationProgress[] = [];
  let pass = 0;
  let postcopyAt: number | null = null;
  let postcopyTrigger: PostcopyTrigger | null = null;
  let lastStatus = 'none';
  const events = src.qmp.events(['MIGRATION', 'MIGRATION_PASS']);
  // (in an object: TypeScript does not follow assignments made in closures)
  const waker: { wake: (() => void) | null } = { wake: null };
  const pending: QmpEvent[] = [];
  // Events are pulled by a background loop so the main loop can wait for
  // "an event or the next poll tick", whichever comes first.
  const pump = (async () => {
    try {
      for await (const e of events) {
        pending.push(e);
        waker.wake?.();
      }
    } catch {
      // connection lost: the main loop's next query fails and says so
    }
    waker.wake?.();
  })();
  const nextTick = (ms: number) =>
    new Promise<void>((resolve) => {
      // an event that came while we were querying is news now, not at the next tick
      if (pending.length > 0) return resolve();
      const timer = setTimeout(() => ((waker.wake = null), resolve()), ms);
      waker.wake = () => {
        clearTimeout(timer);
        waker.wake = null;
        resolve();
      };
    });

  const startPostcopy = async (trigger: PostcopyTrigger, why: string) => {
    if (postcopyAt !== null) return;
    postcopyAt = performance.now() - t0;
    postcopyTrigger = trigger;
    r.log.info({ why, trigger, atMs: Math.round(postcopyAt), pass }, 'switching to postcopy');
    await src.qmp.execute('migrate-start-postcopy');
  };

  let cancelled = false;
  const onAbort = () => {
    cancelled = true;
    waker.wake?.();
  };
  r.signal?.addEventListener('abort', onAbort, { once: true });

  try {
    await src.qmp.execute('migrate', { uri });
    const deadline = t0 + o.timeoutMs;
    // remaining RAM at the first sample of the current pass and of the one before
    let passStart = { pass: 0, remaining: Infinity };
    let prevPassRemaining = Infinity;
    for (;;) {
      while (pending.length) {
        const e = pending.shift()!;
        if (e.event === 'MIGRATION_PASS') pass = Number((e.data as { pass?: number }).pass ?? pass);
        if (e.event === 'MIGRATION') lastStatus = String((e.data as { status?: string }).status ?? lastStatus);
      }
      let q = await queryMigrate(src);
      // QEMU can say 'completed' a moment before it fills in total-time and downtime
      for (let i = 0; i < 5 && q.status === 'completed' && !q['total-time']; i++) {
        await new Promise((r) => setTimeout(r, 20));
        q = await queryMigrate(src);
      }
      const status = q.status ?? lastStatus;
      const ram = q.ram;
      if (ram) {
        const pageSize = ram['page-size'] ?? 4096;
        const sample: MigrationProgress = {
          atMs: performance.now() - t0,
          status,
          pass,
          transferredBytes: ram.transferred,
          remainingBytes: ram.remaining,
          totalBytes: ram.total,
          dirtyRateBps: (ram['dirty-pages-rate'] ?? 0) * pageSize,
          mbps: ram.mbps ?? 0,
          postcopy: status === 'postcopy-active',
        };
        samples.push(sample);
        r.onProgress?.(sample);
        if (pass !== passStart.pass) {
          prevPassRemaining = passStart.remaining;
          passStart = { pass, remaining: ram.remaining };
        }
        if (status === 'active' && postcopyAt === null) {
          const elapsed = performance.now() - t0;
          if (o.mode === 'postcopy' && elapsed >= o.postcopyDelayMs) await startPostcopy('mode', 'postcopy mode');
          else if (o.mode === 'hybrid') {
            const bandwidthBps = (sample.mbps * 1e6) / 8;
            if (pass > o.hybridMaxPasses) await startPostcopy('passes', `${o.hybridMaxPasses} precopy passes done`);
            else if (pass >= 2 && bandwidthBps > 0 && sample.dirtyRateBps >= o.hybridDirtyRatio * bandwidthBps) {
              await startPostcopy('dirty-rate', `dirty rate ${Math.round(sample.dirtyRateBps / 1e6)} MB/s against ${Math.round(bandwidthBps / 1e6)} MB/s sent`);
            } else if (pass >= 3 && passStart.remaining >= prevPassRemaining) {
              // pass over pass: within a pass QEMU's count moves in bursts (rate limiting), so two samples may agree
              await startPostcopy('no-progress', `remaining RAM no longer shrinks (pass ${pass} began with ${passStart.remaining} bytes, pass ${pass - 1} with ${prevPassRemaining})`);
            }
          }
        }
      }
      if (status === 'completed') {
        return {
          mode: o.mode,
          status: 'completed',
          totalMs: q['total-time'] ?? performance.now() - t0,
          downtimeMs: q.downtime ?? 0,
          setupMs: q['setup-time'] ?? 0,
          transferredBytes: ram?.transferred ?? 0,
          totalBytes: ram?.total ?? 0,
          passes: Math.max(pass, ram?.['dirty-sync-count'] ?? 0),
          postcopyStartedAtMs: postcopyAt,
          postcopyTrigger,
          postcopyRequests: ram?.['postcopy-requests'] ?? 0,
          samples,
        };
      }
      if (status === 'failed' || status === 'cancelled') {
        const inPostcopy = postcopyAt !== null && samples.some((s) => s.postcopy);
        throw new MigrationError(
          status === 'cancelled' ? `migration of ${src.name} was cancelled` : `migration of ${src.name} failed: ${q['error-desc'] ?? 'QEMU gave no reason'}`,
          inPostcopy ? 'lost' : 'source',
        );
      }
      if (POSTCOPY_BROKEN.has(status)) {
        throw new MigrationError(`migration of ${src.name} broke during postcopy (${status}): ${q['error-desc'] ?? 'QEMU gave no reason'}; the guest's state was on the destination and is lost`, 'lost');
      }
      if (!ACTIVE.has(status)) throw new MigrationError(`migration of ${src.name} is in an unexpected state '${status}'`, 'source');
      if (cancelled) {
        if (status === 'postcopy-active') {
          r.log.warn('cancel asked during postcopy: the guest runs on the destination already and cannot come back; letting it finish');
          cancelled = false;
        } else {
          await src.qmp.execute('migrate_cancel');
          cancelled = false; // the next query shows 'cancelling' then 'cancelled'
        }
      }
      if (performance.now() > deadline) {
        if (status !== 'postcopy-active') await src.qmp.execute('migrate_cancel').catch(() => undefined);
        throw new MigrationError(`migration of ${src.name} did not complete within ${o.timeoutMs} ms (status ${status}, ${ram?.remaining ?? '?'} bytes left)`, status === 'postcopy-active' ? 'lost' : 'source');
      }
      await nextTick(o.progressIntervalMs);
    }
  } finally {
    r.signal?.removeEventListener('abort', onAbort);
    await events.return();
    await pump;
  }
}

/**
 * Wait until the VM's outgoing migration has ended (cancelled, failed,
 * completed): until then QEMU refuses device_add and another migrate, and
 * a cancel takes a moment to get there.
 */
export async function waitMigrationSettled(vm: QemuVm, timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = (await queryMigrate(vm)).status ?? 'none';
    if (!ACTIVE.has(status)) return status;
    if (Date.now() > deadline) throw new MigrationError(`the migration of ${vm.name} is still '${status}' ${timeoutMs} ms after it was cancelled`, 'source');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * After a failed or cancelled migration: make sure the guest runs again on
 * the source if it was running before (QEMU leaves it in postmigrate when
 * the failure came after it stopped the vCPUs).
 */
export async function resumeSourceAfterFailure(src: QemuVm, wasRunning: boolean, log: Logger): Promise<void> {
  if (!wasRunning || !src.running) return;
  const st = await src.status();
  if (!st.running && (st.status === 'postmigrate' || st.status === 'paused' || st.status === 'finish-migrate')) {
    log.info({ status: st.status }, 'migration failed after the source stopped: continuing the guest on the source');
    await src.resume();
  }
}
