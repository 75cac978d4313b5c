/**
 * Checkpoint a VM to a file, and restore it from one.
 *
 * The state is QEMU's migration stream. QEMU 7.2 has no `file:` migration
 * URI, so symbio listens on a Unix socket, QEMU migrates into it, and the
 * bytes go to the file through a SHA-256 on the way (one pass: no second
 * read to checksum). Restore runs it backwards into a QEMU started with
 * `-incoming defer`, hashing as it sends; the guest is loaded paused (it was
 * stopped when saved) and only continued once the whole file matched its
 * manifest, so a corrupt file never runs.
 *
 * Files, per VM, in the checkpoint directory:
 *   <vm>.vmstate         the migration stream
 *   <vm>.manifest.json   sizes, sha256, QEMU version, machine type, the spec and argv
 * Both are written to a temporary name, fsynced and renamed, the manifest
 * last: a crash mid-checkpoint leaves no manifest that points at a partial
 * state file.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { z } from 'zod';
import type { Logger } from '../../log.js';
import { fsyncPath, sha256File, writeFileAtomic } from '../../util/files.js';
import { connectOnce, NOT_YET_LISTENING } from '../../util/unix-socket.js';
import { migrationOptionsSchema, prepareIncoming, prepareOutgoing, runOutgoingMigration } from './migration.js';
import { QemuVm, type QemuStartOptions } from './qemu-vm.js';
import { vmSpecSchema, type VmSpec } from './vm-spec.js';

export const CHECKPOINT_FORMAT = 1;

export const vmCheckpointManifestSchema = z.strictObject({
  format: z.literal(CHECKPOINT_FORMAT),
  vm: z.string(),
  createdAt: z.string(),
  stateFile: z.string(),
  stateBytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  qemuVersion: z.string(),
  machineType: z.string(),
  memoryMiB: z.number().int(),
  /** Whether the guest ran when the checkpoint was taken (restore continues it if so). */
  wasRunning: z.boolean(),
  /** Save time, ms (stop to file closed), and the stream's throughput. */
  saveMs: z.number(),
  spec: z.unknown(),
  argv: z.array(z.string()),
});
export type VmCheckpointManifest = z.infer<typeof vmCheckpointManifestSchema> & { spec: VmSpec };

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export const stateFileName = (vm: string) => `${vm}.vmstate`;
export const manifestFileName = (vm: string) => `${vm}.manifest.json`;

/** Hashes and counts what passes through. */
class HashingCounter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

/**
 * A short-lived Unix socket for one QEMU stream. Its own 0700 directory
 * under tmp keeps the path short (sun_path holds 108 bytes) and private.
 */
function streamSocketPath(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-stream-'));
  return { path: join(dir, 's'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function listen(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

function firstConnection(server: Server, timeoutMs: number, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CheckpointError(`${what}: QEMU did not connect within ${timeoutMs} ms`)), timeoutMs);
    server.once('connection', (s) => {
      clearTimeout(timer);
      resolve(s);
    });
  });
}

export interface CheckpointOptions {
  log: Logger;
  /** Leave the guest stopped afterwards (a coordinated checkpoint continues all VMs itself); default: as it was. */
  leaveStopped?: boolean;
  timeoutMs?: number;
}

/**
 * Save `vm` into `dir`: stop it (if running), stream its state to
 * `<vm>.vmstate`, write the manifest, and continue the guest if it was
 * running (unless `leaveStopped`). On failure the guest runs again as
 * before and no manifest is written.
 */
export async function checkpointVm(vm: QemuVm, dir: string, o: CheckpointOptions): Promise<VmCheckpointManifest> {
  const log = o.log.child({ vm: vm.name, op: 'checkpoint' });
  const t0 = performance.now();
  const before = await vm.status();
  const wasRunning = before.running;
  if (wasRunning) await vm.pause();
  const version = await vm.qmp.queryVersion();
  const machineType = String(await vm.qmp.execute('qom-get', { path: '/machine', property: 'type' })).replace(/-machine$/, '');
  const statePath = join(dir, stateFileName(vm.name));
  const tmpState = `${statePath}.tmp-${process.pid}`;
  const sock = streamSocketPath();
  let server: Server | null = null;
  try {
    server = await listen(sock.path);
    const conn = firstConnection(server, 10_000, `checkpoint of ${vm.name}`);
    conn.catch(() => undefined);
    // A stopped guest's state goes in one pass: no dirtying, no postcopy.
    const opts = migrationOptionsSchema.parse({ mode: 'precopy', timeoutMs: o.timeoutMs ?? 600_000 });
    await prepareOutgoing(vm, opts);
    const migration = runOutgoingMigration(vm, `unix:${sock.path}`, opts, { log });
    migration.catch(() => undefined);
    const socket = await conn;
    const counter = new HashingCounter();
    // 1 MiB writes: the file side, not the socket, should set the pace
    const out = createWriteStream(tmpState, { mode: 0o600, highWaterMark: 1 << 20 });
    await Promise.all([pipeline(socket, counter, out), migration]);
    fsyncPath(tmpState);
    renameSync(tmpState, statePath);
    const saveMs = performance.now() - t0;
    const manifest: VmCheckpointManifest = {
      format: CHECKPOINT_FORMAT,
      vm: vm.name,
      createdAt: new Date().toISOString(),
      stateFile: stateFileName(vm.name),
      stateBytes: counter.bytes,
      sha256: counter.hash.digest('hex'),
      qemuVersion: `${version.qemu.major}.${version.qemu.minor}.${version.qemu.micro}`,
      machineType,
      memoryMiB: vm.spec.memoryMiB,
      wasRunning,
      saveMs,
      spec: vm.spec,
      argv: vm.argv,
    };
    writeFileAtomic(join(dir, manifestFileName(vm.name)), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600, durable: true });
    fsyncPath(dir);
    log.info({ bytes: counter.bytes, ms: Math.round(saveMs), MiBps: Math.round(counter.bytes / 2 ** 20 / (saveMs / 1000)) }, 'checkpoint written');
    return manifest;
  } catch (err) {
    rmSync(tmpState, { force: true });
    throw err instanceof CheckpointError ? err : new CheckpointError(`checkpoint of VM ${vm.name} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    server?.close();
    sock.cleanup();
    // After a completed save QEMU sits in postmigrate; cont brings the guest
    // back (also after a failed one, which may have stopped it).
    if (wasRunning && !o.leaveStopped && vm.running) await vm.resume().catch((err: unknown) => log.error({ err }, 'could not continue the guest after the checkpoint'));
  }
}

/** Read and check a VM's manifest; the error names the file and what is wrong with it. */
export function readVmManifest(path: string): VmCheckpointManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new CheckpointError(`checkpoint manifest ${path} is unreadable: ${(err as Error).message}`, { cause: err });
  }
  const r = vmCheckpointManifestSchema.safeParse(raw);
  if (!r.success) {
    throw new CheckpointError(`checkpoint manifest ${path} is not a symbio VM manifest: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  const spec = vmSpecSchema.safeParse(r.data.spec);
  if (!spec.success) throw new CheckpointError(`checkpoint manifest ${path} holds an invalid VM spec: ${spec.error.issues[0]?.message}`);
  return { ...r.data, spec: spec.data };
}

export interface RestoreOptions extends QemuStartOptions {
  /** Change the spec for the new QEMU: its QMP socket, console, forwarded ports, ... */
  adapt?: (spec: VmSpec) => VmSpec;
  /** Continue the guest after loading if it was running at checkpoint time; default true. */
  resume?: boolean;
  timeoutMs?: number;
}

/**
 * Start a VM from `<dir>/<vm>.manifest.json`. The state file must have the
 * manifest's size (checked before QEMU starts) and checksum (checked while
 * it streams; on a mismatch QEMU is killed before the guest ever runs).
 */
export async function restoreVm(manifestPath: string, o: RestoreOptions): Promise<{ vm: QemuVm; manifest: VmCheckpointManifest; restoreMs: number }> {
  const t0 = performance.now();
  const manifest = readVmManifest(manifestPath);
  const statePath = join(manifestPath, '..', manifest.stateFile);
  let size: number;
  try {
    size = statSync(statePath).size;
  } catch (err) {
    throw new CheckpointError(`checkpoint state file ${statePath} is missing: ${(err as Error).message}`, { cause: err });
  }
  if (size !== manifest.stateBytes) {
    throw new CheckpointError(`checkpoint state file ${statePath} has ${size} bytes, its manifest says ${manifest.stateBytes}: it is truncated or was changed; use another checkpoint`);
  }
  const spec = { ...(o.adapt ? o.adapt(manifest.spec) : manifest.spec), incoming: true };
  const log = o.log.child({ vm: spec.name, op: 'restore' });
  const vm = await QemuVm.start(spec, o);
  const sock = streamSocketPath();
  try {
    await vm.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    const loaded = vm.qmp.waitForEvent('MIGRATION', (e) => ['completed', 'failed'].includes(String((e.data as { status?: string }).status)), o.timeoutMs ?? 600_000);
    loaded.catch(() => undefined);
    await prepareIncoming(vm, `unix:${sock.path}`, migrationOptionsSchema.parse({}));
    const socket = await connectWhenListening(sock.path, 10_000);
    const counter = new HashingCounter();
    const sent = pipeline(createReadStream(statePath, { highWaterMark: 1 << 20 }), counter, socket);
    const [, ev] = await Promise.all([sent, loaded]);
    const sha = counter.hash.digest('hex');
    if (sha !== manifest.sha256) {
      throw new CheckpointError(`checkpoint state file ${statePath} does not match its manifest (sha256 ${sha}, expected ${manifest.sha256}): it is corrupt; use another checkpoint`);
    }
    if ((ev.data as { status?: string }).status !== 'completed') {
      throw new CheckpointError(`QEMU could not load ${statePath}${vm.stderr ? `: ${vm.stderr.trim().split('\n').slice(-3).join('; ')}` : ''}`);
    }
    if (manifest.wasRunning && o.resume !== false) await vm.resume();
    const restoreMs = performance.now() - t0;
    log.info({ bytes: counter.bytes, ms: Math.round(restoreMs) }, 'VM restored');
    return { vm, manifest, restoreMs };
  } catch (err) {
    await vm.kill();
    if (err instanceof CheckpointError) throw err;
    // QEMU gave up on the stream before it all went: say whether the file
    // is at fault (corrupt) or something else was.
    const sha = await sha256File(statePath).catch(() => null);
    if (sha !== null && sha !== manifest.sha256) {
      throw new CheckpointError(`checkpoint state file ${statePath} does not match its manifest (sha256 ${sha}, expected ${manifest.sha256}): it is corrupt; use another checkpoint`, { cause: err });
    }
    throw new CheckpointError(`restore of VM ${spec.name} from ${manifestPath} failed: ${(err as Error).message}${vm.stderr ? `; QEMU said: ${vm.stderr.trim()}` : ''}`, { cause: err });
  } finally {
    sock.cleanup();
  }
}

async function connectWhenListening(path: string, timeoutMs: number): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await connectOnce(path);
    } catch (err) {
      if (!NOT_YET_LISTENING.has((err as NodeJS.ErrnoException).code ?? '') || Date.now() > deadline) throw new CheckpointError(`QEMU is not listening on ${path} for the restore: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

