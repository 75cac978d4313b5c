/**
 * The VM operations of a job, the SymVirt protocol made concrete:
 *
 *  migrate     prepare destinations -> quiesce -> freeze -> detach the
 *              interconnect on the VMs that move -> migrate them (in parallel)
 *              -> attach the interconnect at the destination -> the agent
 *              restores the interface -> resume
 *  checkpoint  quiesce -> freeze -> stop every VM -> save them in parallel ->
 *              one job manifest, written atomically last -> cont -> resume
 *  restart     verify every file of a job checkpoint -> start its VMs (paused,
 *              on any free places) -> cont -> the agents reconnect -> resume
 *
 * Each step is a phase of the operation's recorded timeline. A failure
 * rolls back to a running job (interconnect back, VMs continued, ranks
 * resumed) and the operation says what failed; the quiescer's own failure
 * handling already resumes the ranks.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import type { GuestAgentLink } from './guest-agent-link.js';
import type { JobVmBackend, PreparedMove } from './vm-backend.js';
import { migrationOptionsSchema, type MigrationProgress } from '../hypervisor/qemu/migration.js';
import { readVmManifest } from '../hypervisor/qemu/checkpoint.js';
import type { JobQuiescer, QuiesceOutcome } from '../quiesce/job-quiescer.js';
import { entriesByFileTime, sha256File, writeFileAtomic } from '../util/files.js';
import { packageVersion } from '../util/version.js';
import type { Logger } from '../log.js';

export interface VmJobContext {
  readonly job: string;
  readonly command: readonly string[];
  readonly np: number | null;
  readonly backend: JobVmBackend;
  /** The agent link of each VM of the job, by VM id. */
  readonly links: ReadonlyMap<string, GuestAgentLink>;
  readonly quiescer: JobQuiescer;
  readonly log: Logger;
  /** Where this job's checkpoints go (one directory each). */
  readonly checkpointDir: string;
  /** Checkpoints kept (older good ones are pruned after a new one is written). */
  readonly keep: number;
  /** The migration under way (set by cooperativeMigrate while it runs): where VMs go, and how to send them elsewhere. */
  inFlight?: MigrationInFlight | null;
}

export interface MigrationInFlight {
  /** VM id -> place it is being moved to now. */
  targets(): Record<string, string>;
  /**
   * Send the VMs going to `from` to `to` instead: a move not started yet is
   * prepared again there; one in progress is cancelled (the VM stays whole
   * at its source, its ranks frozen) and started again towards `to`.
   * Resolves once the request is registered, not when the move ends.
   */
  retarget(from: string, to: string, reason: string): void;
}

/** An operation as these steps drive it (any kind: its transition table still checks each step). */
interface PhasedOp {
  readonly id: string;
  result: unknown;
  to(phase: string): void;
  /** Phases it may go to now. */
  next(): readonly string[];
  note(detail: Record<string, unknown>): void;
  fail(err: unknown): void;
}

export class VmOperationError extends Error {
  override name = 'VmOperationError';
}

/** Quiesce + freeze, with the two phases on the timeline. */
async function quiesceAndFreeze(ctx: VmJobContext, op: PhasedOp, timeoutMs: number): Promise<QuiesceOutcome> {
  op.to('quiescing');
  const outcome = await ctx.quiescer.quiesce({ freeze: true, timeoutMs });
  const ms = (name: string) => outcome.phases.find((p) => p.name === name)?.ms;
  op.note({ epoch: outcome.epoch, ms: outcome.quiescentMs, hold: ms('hold'), catchupRounds: outcome.catchupRounds, messages: outcome.summary.messages, ranks: outcome.summary.held });
  op.to('freezing');
  op.note({ ms: outcome.totalMs - outcome.quiescentMs, ranksFrozenMs: outcome.ranksFrozenMs });
  return outcome;
}

async function resumeRanks(ctx: VmJobContext, op: PhasedOp): Promise<void> {
  const r = await ctx.quiescer.resume();
  op.note({ resumeMs: r.resumeMs, ranksResumedMs: r.ranksResumedMs, ...(r.frozenCheck ? { frozenCheck: r.frozenCheck.ok ? 'ok' : r.frozenCheck.reason } : {}), ...(r.selfResumed ? { selfResumed: r.selfResumed } : {}) });
  if (r.frozenCheck && !r.frozenCheck.ok && !r.selfResumed) throw new VmOperationError(`frozen-interval check failed: ${r.frozenCheck.reason}`);
}

function link(ctx: VmJobContext, vm: string): GuestAgentLink {
  const l = ctx.links.get(vm);
  if (!l) throw new VmOperationError(`no agent link for ${vm}`);
  return l;
}

const migrateParams = z
  .object({
    vms: z.array(z.string().min(1)).min(1).optional(),
    to: z.array(z.string().min(1)).optional(),
    mode: z.enum(['precopy', 'postcopy', 'hybrid']).optional(),
    migration: z.record(z.string(), z.unknown()).optional(),
  })
  .passthrough();

/** Cooperative migration of some (default: the first) of the job's VMs. */
export async function cooperativeMigrate(ctx: VmJobContext, op: PhasedOp, paramsIn: Record<string, unknown>, timeoutMs: number): Promise<void> {
  const parsed = migrateParams.safeParse(paramsIn);
  if (!parsed.success) throw new VmOperationError(`migrate: ${parsed.error.issues[0]?.path.join('.')}: ${parsed.error.issues[0]?.message}`);
  const p = parsed.data;
  const all = ctx.backend.list();
  const vms = p.vms ?? [all[0]!.id];
  for (const vm of vms) if (!all.some((v) => v.id === vm)) throw new VmOperationError(`job ${ctx.job} has no VM '${vm}' (it has ${all.map((v) => v.id).join(', ')})`);
  if (new Set(vms).size !== vms.length) throw new VmOperationError('a VM is named twice');
  const options = migrationOptionsSchema.parse({ ...(p.migration ?? {}), ...(p.mode ? { mode: p.mode } : {}) });
  const from = Object.fromEntries(all.map((v) => [v.id, v.host]));

  let moves: PreparedMove[] = [];
  let quiesced = false;
  const detached = new Set<string>();
  const moved = new Set<string>();
  const progress: { vm: string; t: number; remaining: number; transferred: number }[] = [];
  const t0 = performance.now();
  // Retargets: requests wait here until the move concerned picks them up;
  // a move in progress is cancelled through its AbortController.
  const pendingRetarget = new Map<string, { to: string; reason: string; requestedAt: number }>();
  const aborts = new Map<string, AbortController>();
  const retargeted: { vm: string; from: string; to: string; reason: string; atMs: number; cancelledAfterMs: number | null; bytesSentBefore: number; newDestinationMs: number }[] = [];
  ctx.inFlight = {
    targets: () => Object.fromEntries(moves.map((m) => [m.vm, m.to])),
    retarget: (fromPlace, toPlace, reason) => {
      const going = moves.filter((m) => m.to === fromPlace && !moved.has(m.vm));
      if (going.length === 0) throw new VmOperationError(`no VM of job ${ctx.job} is being moved to ${fromPlace}`);
      // once a postcopy switch-over has happened the guest runs at the destination: nothing to cancel back to
      if (options.mode !== 'precopy') throw new VmOperationError(`a ${options.mode} migration cannot be cancelled safely once it has switched over; only precopy moves are retargeted`);
      if (moves.some((m) => m.to === toPlace)) throw new VmOperationError(`${toPlace} is already the destination of a VM of job ${ctx.job}`);
      for (const m of going) {
        pendingRetarget.set(m.vm, { to: toPlace, reason, requestedAt: performance.now() });
        aborts.get(m.vm)?.abort(new VmOperationError(`retargeted to ${toPlace}: ${reason}`));
      }
      ctx.log.warn({ from: fromPlace, to: toPlace, vms: going.map((m) => m.vm), reason }, 'migration retargeted');
    },
  };
  /** One VM's move; a retarget cancels it and starts it again towards the new place, as often as asked. */
  const moveFollowingRetargets = async (i: number, onProgress: (s: MigrationProgress) => void) => {
    for (;;) {
      const m = moves[i]!;
      const r = pendingRetarget.get(m.vm);
      if (r) {
        pendingRetarget.delete(m.vm);
        const sent = progress.filter((x) => x.vm === m.vm).at(-1)?.transferred ?? 0;
        const t = performance.now();
        await ctx.backend.discardMoves([m]);
        const [next] = await ctx.backend.prepareMoves([m.vm], [r.to]);
        moves[i] = next!;
        retargeted.push({ vm: m.vm, from: m.to, to: next!.to, reason: r.reason, atMs: Math.round(r.requestedAt - t0), cancelledAfterMs: Math.round(t - r.requestedAt), bytesSentBefore: sent, newDestinationMs: Math.round(performance.now() - t) });
      }
      const ac = new AbortController();
      aborts.set(m.vm, ac);
      try {
        return await ctx.backend.move(moves[i]!, options, onProgress, ac.signal);
      } catch (err) {
        // cancelled for a retarget: the VM is whole at its source; go round
        if (!pendingRetarget.has(m.vm)) throw err;
      } finally {
        aborts.delete(m.vm);
      }
    }
  };
  try {
    op.to('preparing-destination');
    moves = await ctx.backend.prepareMoves(vms, p.to ?? []);
    op.note({ targets: Object.fromEntries(moves.map((m) => [m.vm, m.to])) });

    await quiesceAndFreeze(ctx, op, timeoutMs);
    quiesced = true;

    op.to('detaching');
    const det = await Promise.all(vms.map(async (vm) => {
      const r = await ctx.backend.detachInterconnect(vm);
      detached.add(vm);
      return [vm, Math.round(r.ms)];
    }));
    op.note({ deviceDeletedMs: Object.fromEntries(det) });

    op.to('migrating');
    const results = await Promise.allSettled(
      moves.map(async (_, i) => {
        const onProgress = (s: MigrationProgress): void => {
          if (progress.length < 5000) progress.push({ vm: moves[i]!.vm, t: Math.round(performance.now() - t0), remaining: s.remainingBytes, transferred: s.transferredBytes });
        };
        const r = await moveFollowingRetargets(i, onProgress);
        moved.add(moves[i]!.vm);
        return { vm: moves[i]!.vm, to: moves[i]!.to, totalMs: r.totalMs, wallMs: Math.round(r.wallMs), downtimeMs: r.downtimeMs, bytes: r.transferredBytes, passes: r.passes, mode: options.mode };
      }),
    );
    ctx.inFlight = null;
    if (retargeted.length) op.note({ retargeted });
    op.note({ vms: results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])), progress });
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    // the links follow the VMs that moved to their new sockets
    for (const vm of moved) link(ctx, vm).reattach();
    if (failed) throw failed.reason;

    op.to('attaching');
    const att = await Promise.all(vms.map(async (vm) => [vm, Math.round((await ctx.backend.attachInterconnect(vm)).ms)] as const));
    for (const [vm] of att) detached.delete(vm);
    op.note({ deviceAddMs: Object.fromEntries(att) });

    op.to('restoring-network');
    const net = await restoreNetwork(ctx, vms);
    op.note({ interfaces: net });

    op.to('resuming');
    await resumeRanks(ctx, op);
    op.result = { from, to: Object.fromEntries(moves.map((m) => [m.vm, m.to])), vms };
    op.to('done');
  } catch (err) {
    ctx.inFlight = null;
    op.fail(err);
    // a failure in resuming (the frozen-interval check) has no rolling-back phase: the ranks run already
    if (op.next().includes('rolling-back')) op.to('rolling-back');
    const problems: string[] = [];
    // VMs that did not move run at the source; those that did stay where they are now
    const unmoved = moves.filter((m) => !moved.has(m.vm));
    await ctx.backend.discardMoves(unmoved).catch((e: Error) => problems.push(`discarding destinations: ${e.message}`));
    for (const vm of detached) {
      await ctx.backend.attachInterconnect(vm).catch((e: Error) => problems.push(`plugging ${vm}'s interconnect back: ${e.message}`));
    }
    if (detached.size > 0) await restoreNetwork(ctx, [...detached]).catch((e: Error) => problems.push(`restoring ${[...detached].join(', ')}'s network: ${e.message}`));
    if (quiesced && ctx.quiescer.operating) await resumeRanks(ctx, op).catch((e: Error) => problems.push(`resuming: ${e.message}`));
    op.note({ rolledBack: { moved: [...moved], atSource: unmoved.map((m) => m.vm), problems } });
    if (problems.length) ctx.log.error({ problems }, 'rollback was incomplete');
    op.to('failed');
  }
}

async function restoreNetwork(ctx: VmJobContext, vms: readonly string[]): Promise<Record<string, unknown>> {
  const byId = new Map(ctx.backend.list().map((v) => [v.id, v]));
  const out = await Promise.all(
    vms.map(async (vm) => {
      const ic = byId.get(vm)!.interconnect;
      const r = (await link(ctx, vm).request('network', { mac: ic.mac, address: ic.address, timeoutMs: 10_000 }, 15_000)) as { iface: string; ms: number; repaired: boolean };
      return [vm, { iface: r.iface, ms: Math.round(r.ms), repaired: r.repaired }] as const;
    }),
  );
  return Object.fromEntries(out);
}

// ---------------------------------------------------------------- checkpoint

const jobManifestSchema = z.object({
  format: z.literal(1),
  kind: z.literal('symbio-job-checkpoint'),
  id: z.string(),
  job: z.string(),
  createdAt: z.string(),
  command: z.array(z.string()),
  np: z.number().nullable(),
  symbioVersion: z.string(),
  epoch: z.number(),
  topology: z.array(z.object({ vm: z.string(), host: z.string(), memoryBytes: z.number() })),
  vms: z.array(
    z.object({
      vm: z.string(),
      manifest: z.string(),
      stateFile: z.string(),
      bytes: z.number(),
      sha256: z.string(),
      qemuVersion: z.string(),
    }),
  ),
});
export type JobCheckpointManifest = z.infer<typeof jobManifestSchema>;

export const JOB_MANIFEST = 'job-manifest.json';

/** Coordinated checkpoint of every VM of the job. Returns the job manifest's path. */
export async function coordinatedCheckpoint(ctx: VmJobContext, op: PhasedOp, timeoutMs: number): Promise<string | null> {
  const vms = ctx.backend.list();
  const ids = vms.map((v) => v.id);
  const id = `ckpt-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${op.id.slice(-6)}`;
  const dir = join(ctx.checkpointDir, id);
  let quiesced = false;
  let paused = false;
  let epoch = 0;
  try {
    const q = await quiesceAndFreeze(ctx, op, timeoutMs);
    quiesced = true;
    epoch = q.epoch;

    op.to('stopping-vms');
    await ctx.backend.pause(ids);
    paused = true;

    op.to('saving');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const t = performance.now();
    const saved = await ctx.backend.save(ids, dir);
    const bytes = saved.reduce((a, m) => a + m.stateBytes, 0);
    const ms = performance.now() - t;
    op.note({ bytes, memoryBytes: vms.reduce((a, v) => a + v.memoryBytes, 0), MBps: Math.round(bytes / 2 ** 20 / (ms / 1000)) });

    op.to('writing-manifest');
    const manifest: JobCheckpointManifest = {
      format: 1,
      kind: 'symbio-job-checkpoint',
      id,
      job: ctx.job,
      createdAt: new Date().toISOString(),
      command: [...ctx.command],
      np: ctx.np,
      symbioVersion: packageVersion(),
      epoch,
      topology: vms.map((v) => ({ vm: v.id, host: v.host, memoryBytes: v.memoryBytes })),
      vms: saved.map((m) => ({
        vm: m.vm,
        manifest: `${m.vm}.manifest.json`,
        stateFile: basename(m.stateFile),
        bytes: m.stateBytes,
        sha256: m.sha256,
        qemuVersion: m.qemuVersion,
      })),
    };
    // the VM files are durable already (checkpointVm); this rename is what makes the checkpoint exist
    writeFileAtomic(join(dir, JOB_MANIFEST), JSON.stringify(manifest, null, 2) + '\n', { durable: true });

    op.to('continuing');
    await ctx.backend.cont(ids);
    paused = false;

    op.to('resuming');
    await resumeRanks(ctx, op);
    const pruned = pruneCheckpoints(ctx.checkpointDir, ctx.keep, dir);
    op.result = { manifest: join(dir, JOB_MANIFEST), bytes: manifest.vms.reduce((a, v) => a + v.bytes, 0), pruned };
    op.to('done');
    return join(dir, JOB_MANIFEST);
  } catch (err) {
    op.fail(err);
    if (op.next().includes('rolling-back')) op.to('rolling-back');
    const problems: string[] = [];
    // an incomplete checkpoint never has a job manifest; its files go (so does one whose frozen interval did not hold)
    rmSync(dir, { recursive: true, force: true });
    if (paused) await ctx.backend.cont(ids).catch((e: Error) => problems.push(`continuing the VMs: ${e.message}`));
    if (quiesced && ctx.quiescer.operating) await resumeRanks(ctx, op).catch((e: Error) => problems.push(`resuming: ${e.message}`));
    op.note({ problems });
    op.to('failed');
    return null;
  }
}

/** The job's checkpoints that are complete (a job manifest exists), newest first. */
export function listCheckpoints(root: string): string[] {
  return entriesByFileTime(root, (n) => n.startsWith('ckpt-'), JOB_MANIFEST)
    .filter((e) => e.mtimeMs > 0)
    .map((e) => e.path);
}

/** Keep the newest `keep` complete checkpoints; also remove leftovers of failed ones (never `current`). */
export function pruneCheckpoints(root: string, keep: number, current: string): string[] {
  const good = listCheckpoints(root).map((p) => dirname(p));
  const keepSet = new Set([current, ...good.slice(0, keep)]);
  const removed: string[] = [];
  for (const n of readdirSync(root)) {
    const d = join(root, n);
    if (!n.startsWith('ckpt-') || keepSet.has(d)) continue;
    rmSync(d, { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

// ---------------------------------------------------------------- restart

export class CheckpointInvalidError extends Error {
  override name = 'CheckpointInvalidError';
}

/** Read a job manifest and verify every VM file it names (size and sha256). Throws naming the bad file. */
export async function verifyJobCheckpoint(manifestPath: string): Promise<{ manifest: JobCheckpointManifest; vmManifests: { vm: string; path: string }[] }> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(manifestPath, 'utf8'));
  } catch (err) {
    throw new CheckpointInvalidError(`checkpoint manifest ${manifestPath} cannot be read: ${(err as Error).message}`);
  }
  const parsed = jobManifestSchema.safeParse(raw);
  if (!parsed.success) throw new CheckpointInvalidError(`${manifestPath} is not a symbio job checkpoint manifest (${parsed.error.issues[0]?.path.join('.')}: ${parsed.error.issues[0]?.message})`);
  const m = parsed.data;
  const dir = dirname(manifestPath);
  const out: { vm: string; path: string }[] = [];
  await Promise.all(
    m.vms.map(async (v) => {
      const vmManifestPath = join(dir, v.manifest);
      let vmm;
      try {
        vmm = readVmManifest(vmManifestPath);
      } catch (err) {
        throw new CheckpointInvalidError(`${vmManifestPath}: ${(err as Error).message}`);
      }
      const state = join(dir, v.stateFile);
      let size: number;
      try {
        size = statSync(state).size;
      } catch (err) {
        throw new CheckpointInvalidError(`state file ${state} of ${v.vm} cannot be read: ${(err as Error).message}`);
      }
      if (size !== v.bytes || vmm.stateBytes !== v.bytes) throw new CheckpointInvalidError(`state file ${state} of ${v.vm} is ${size} bytes, the checkpoint says ${v.bytes}: truncated or replaced`);
      const sha = await sha256File(state);
      if (sha !== v.sha256 || vmm.sha256 !== v.sha256) throw new CheckpointInvalidError(`state file ${state} of ${v.vm} does not match its checksum (corrupt)`);
      out.push({ vm: v.vm, path: vmManifestPath });
    }),
  );
  return { manifest: m, vmManifests: m.vms.map((v) => out.find((o) => o.vm === v.vm)!) };
}

const restartParams = z.object({ manifest: z.string().min(1).optional(), places: z.record(z.string(), z.string()).optional() }).passthrough();

/** Restart the job's VMs from a checkpoint (default: the newest good one) and let its ranks run. */
export async function restartFromCheckpoint(ctx: VmJobContext, op: PhasedOp, paramsIn: Record<string, unknown>): Promise<void> {
  const p = restartParams.parse(paramsIn);
  op.to('verifying');
  let checked;
  let path: string | undefined;
  try {
    path = p.manifest ?? listCheckpoints(ctx.checkpointDir)[0];
    if (!path) throw new CheckpointInvalidError(`job ${ctx.job} has no checkpoint in ${ctx.checkpointDir}`);
    checked = await verifyJobCheckpoint(path);
    if (checked.manifest.job !== ctx.job) throw new CheckpointInvalidError(`${path} is a checkpoint of job ${checked.manifest.job}, not ${ctx.job}`);
    op.note({ manifest: path, vms: checked.manifest.vms.length, bytes: checked.manifest.vms.reduce((a, v) => a + v.bytes, 0) });
  } catch (err) {
    op.fail(err);
    op.to('failed');
    return;
  }
  const ids = checked.vmManifests.map((m) => m.vm);
  try {
    op.to('starting-vms');
    await ctx.backend.kill(ids);
    const started = await ctx.backend.restore(checked.vmManifests, p.places ?? {});
    op.note({ restoreMs: Object.fromEntries(started.map((s) => [s.vm, Math.round(s.restoreMs)])), to: Object.fromEntries(started.map((s) => [s.vm, s.to])) });
    await ctx.backend.cont(ids);

    op.to('reconnecting');
    for (const vm of ids) link(ctx, vm).reattach();
    await Promise.all(ids.map((vm) => link(ctx, vm).report(true)));

    op.to('resuming');
    await ctx.quiescer.resume();
    op.result = { manifest: path, to: Object.fromEntries(started.map((s) => [s.vm, s.to])) };
    op.to('done');
  } catch (err) {
    op.fail(err);
    op.to('rolling-back');
    op.note({ problems: ['the VMs of the job may be stopped; restart again from a checkpoint'] });
    op.to('failed');
  }
}
