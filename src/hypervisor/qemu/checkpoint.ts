/**
 * Checkpoint a VM to a file, and restore it from one.
 *
 * The state is QEMU's migration stream, and QEMU writes the file itself:
 * symbio opens the state file and hands QEMU a descriptor of it over the QMP
 * socket (SCM_RIGHTS, through the addon). From QEMU 9.0 the descriptor goes
 * into an fd set (`add-fd`) and QEMU migrates to `file:/dev/fdset/N`;
 * before 9.0 (7.2 has no `file:` URI at all) it is named with `getfd` and
 * QEMU migrates to `fd:NAME`, which 9.1 deprecates for files. Meanwhile symbio reads the growing file back from the page cache
 * to hash it (the manifest's sha256) and fdatasyncs it again and again, so
 * hashing and the disk's writes overlap QEMU's stream and the final fsync
 * has little left (followWrites). The guest is stopped only for the
 * `migrate`. If QEMU cannot be handed the descriptor, the old way is the
 * fallback: QEMU migrates into a Unix socket and Node hashes and writes the
 * bytes (about half the speed; docs/performance.md).
 *
 * Restore runs the stream backwards into a QEMU started with
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
import { closeSync, constants as fsConstants, createReadStream, createWriteStream, fdatasync, fstatSync, fsync, mkdtempSync, openSync, read, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { promisify } from 'node:util';
import { z } from 'zod';
import type { Logger } from '../../log.js';
import { fsyncPath, sha256File, writeFileAtomic } from '../../util/files.js';
import { connectOnce, NOT_YET_LISTENING } from '../../util/unix-socket.js';
import { atLeast, migrationOptionsSchema, prepareIncoming, prepareOutgoing, runOutgoingMigration, type MigrationOptions, type QemuVersion } from './migration.js';
import { QmpConnectionError, QmpTimeoutError } from '../qmp/client.js';
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
  /** Save time, ms: from the start of checkpointVm to the state file durable under its name. */
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
  /**
   * How the state reaches the file: 'fd' (default), QEMU writes it itself
   * to a descriptor symbio passes it (and falls back to 'socket' when QEMU
   * cannot be handed one); 'socket', QEMU streams into a Unix socket and
   * symbio writes the file.
   */
  via?: 'fd' | 'socket';
  /** 'socket': how long QEMU may take to connect to symbio's socket after `migrate`; default 10 s. */
  connectTimeoutMs?: number;
}

/** What went into the state file. */
interface Saved {
  bytes: number;
  sha256: string;
  /** which way the bytes went */
  via: 'fd' | 'socket';
  /** the URI QEMU migrated to, for `fd`: `file:/dev/fdset/N` (QEMU 9.0+) or `fd:NAME` */
  uri?: string;
}

/**
 * Give QEMU the state file to migrate into: the URI to migrate to and how to
 * drop QEMU's hold of the file afterwards (or if `migrate` never takes it).
 */
async function handOverStateFile(vm: QemuVm, path: string, fd: number, qemu: QemuVersion): Promise<{ uri: string; release: () => Promise<void> }> {
  // QEMU migrates to file:/dev/fdset/N from 9.0 on (and 9.1 deprecates fd: for files)
  if (atLeast(qemu, 9, 0)) {
    // QEMU opens /dev/fdset/N write-only and dups the set's descriptor of that access mode: give it one
    const wfd = openSync(path, fsConstants.O_WRONLY);
    try {
      const set = await vm.qmp.addFd(wfd);
      return { uri: `file:/dev/fdset/${set.fdsetId}`, release: () => vm.qmp.removeFdset(set.fdsetId).catch(() => undefined) };
    } finally {
      closeSync(wfd); // QEMU holds its own copy now
    }
  }
  const name = `symbio-checkpoint-${process.pid}-${++fdNames}`;
  await vm.qmp.getfd(name, fd);
  // `migrate` takes the descriptor from QEMU's list when it starts; if it never
  // got that far, this drops it (QEMU holds an open file otherwise); after a
  // migration that took it, QEMU refuses the name, which is fine
  return { uri: `fd:${name}`, release: () => vm.qmp.execute('closefd', { fdname: name }).then(() => undefined, () => undefined) };
}

/**
 * A save that failed on symbio's side: QEMU's side must be over before the
 * guest is continued (and the migration loop must not poll on for its whole
 * timeout).
 */
async function cancelSave(vm: QemuVm, migration: Promise<unknown>): Promise<void> {
  await vm.qmp.execute('migrate_cancel').catch(() => undefined);
  await migration.catch(() => undefined);
}

/** When each phase of a save ended, ms after it began (logged: where the time goes). */
type Marks = Record<string, number>;

const fsyncAsync = promisify(fsync);
const fdatasyncAsync = promisify(fdatasync);
const readAsync = promisify(read);

/** Read-back chunk for hashing the growing state file. */
const HASH_CHUNK = 4 << 20;
/** Make the written part durable (fdatasync) whenever this much more has come since the last time. */
const SYNC_CHUNK = 8 << 20;
/** Look for new bytes this often while QEMU writes (it writes several hundred MiB/s). */
const TAIL_POLL_MS = 2;

let fdNames = 0;

/**
 * Follow the file `fd` while another process (QEMU) appends to it, until
 * `writer` settles: hash what it has written, reading it back right behind
 * it from the page cache, and make it durable as it goes. Resolves once the
 * whole file is hashed and fsynced (early, with what there is, if `writer`
 * fails: the caller reports that).
 *
 * The durability is what makes this fast. A final fsync alone finds the
 * whole file to write and flush (on a virtual disk the flush is where the
 * host writes it out); fdatasync calls one after the other, in the thread
 * pool, while QEMU writes, spread that over the stream, and the fsync at
 * the end (started as soon as QEMU is done, while the hash catches up)
 * waits for the tail only. Handing the disk each chunk as soon as it is
 * written (sync_file_range) was no faster here: the flushes are the cost.
 *
 * Bytes count as written once they are inside the file's size: a buffered
 * write() copies a page before it extends the size over it. A file that
 * gets shorter than what is hashed already (someone truncated it) fails
 * with a CheckpointError. (Exported for tests.)
 */
export async function followWrites(fd: number, writer: Promise<unknown>, mark: (phase: string) => void): Promise<{ bytes: number; sha256: string }> {
  // (in an object: TypeScript does not follow assignments made in callbacks)
  const w: { state: 'writing' | 'done' | 'failed' | 'abandoned' } = { state: 'writing' };
  const wakers = new Set<() => void>();
  const settle = (to: 'done' | 'failed' | 'abandoned') => {
    if (w.state === 'writing') w.state = to;
    for (const wake of wakers) wake();
  };
  writer.then(
    () => settle('done'),
    () => settle('failed'),
  );
  /** TAIL_POLL_MS, or until `writer` settles */
  const pause = () =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, TAIL_POLL_MS);
      wakers.add(done);
    });

  const syncing = (async () => {
    let synced = 0;
    while (w.state === 'writing') {
      const size = fstatSync(fd).size;
      if (size - synced >= SYNC_CHUNK) {
        await fdatasyncAsync(fd);
        synced = size;
      } else await pause();
    }
    if (w.state !== 'done') return; // nothing worth keeping
    await fsyncAsync(fd);
    mark('synced');
  })();
  syncing.catch(() => undefined); // awaited below; a disk error must not surface as an unhandled rejection first

  const hash = createHash('sha256');
  const buffers = [Buffer.allocUnsafe(HASH_CHUNK), Buffer.allocUnsafe(HASH_CHUNK)] as const;
  let pos = 0;
  try {
    for (;;) {
      // sampled before the size: once the writer is done, the size read after it is final
      const last = w.state !== 'writing';
      if (w.state === 'failed') break;
      const size = fstatSync(fd).size;
      if (size < pos) throw new CheckpointError(`the state file shrank while QEMU wrote it (${size} bytes, ${pos} hashed already)`);
      // two buffers: the next read runs in the thread pool while this chunk is hashed
      let which = 0;
      let next = pos < size ? readAsync(fd, buffers[which], 0, Math.min(HASH_CHUNK, size - pos), pos) : null;
      while (next) {
        const { bytesRead } = await next;
        if (bytesRead <= 0) throw new CheckpointError(`the state file shrank while QEMU wrote it (nothing to read at byte ${pos} of ${size})`);
        const chunk = buffers[which]!.subarray(0, bytesRead);
        pos += bytesRead;
        which ^= 1;
        next = pos < size ? readAsync(fd, buffers[which]!, 0, Math.min(HASH_CHUNK, size - pos), pos) : null;
        hash.update(chunk);
      }
      if (last) break;
      await pause();
    }
  } catch (err) {
    // the syncing loop must be over before the caller closes `fd`
    settle('abandoned');
    await syncing.catch(() => undefined);
    throw err;
  }
  const sha256 = hash.digest('hex');
  mark('hashed');
  await syncing;
  // QEMU flushes its stream before it reports the migration completed, so
  // nothing may have come since; if it did, the hash does not cover it
  const size = fstatSync(fd).size;
  if (w.state === 'done' && size !== pos) throw new CheckpointError(`QEMU wrote to the state file after it completed the migration (${size} bytes, ${pos} hashed)`);
  return { bytes: pos, sha256 };
}

/**
 * QEMU writes the state into `path` itself, through a descriptor passed
 * over QMP; null (and no file) when QEMU could not be handed one, so the
 * caller can take the socket way instead.
 */
async function saveThroughFd(vm: QemuVm, path: string, qemu: QemuVersion, opts: MigrationOptions, log: Logger, mark: (phase: string) => void, stop: () => Promise<void>): Promise<Saved | null> {
  // read and write: QEMU writes through its descriptor (sequentially, on the
  // shared file offset), symbio reads with positioned reads through this one
  const fd = openSync(path, 'wx+', 0o600);
  let open = true;
  try {
    let target: { uri: string; release: () => Promise<void> };
    try {
      target = await handOverStateFile(vm, path, fd, qemu);
    } catch (err) {
      // QEMU gone or not answering: the socket would not do better
      if (err instanceof QmpConnectionError || err instanceof QmpTimeoutError) throw err;
      log.warn({ err }, 'cannot hand QEMU a descriptor of the state file; streaming the state through a socket instead');
      open = false;
      closeSync(fd);
      rmSync(path, { force: true });
      return null;
    }
    mark('getfd');
    await stop();
    const migration = runOutgoingMigration(vm, target.uri, opts, { log });
    migration.then(() => mark('qemu'), () => undefined);
    // QEMU keeps the file open until its fd set is removed (file:) or while fd:NAME was never taken
    const released = migration.then(target.release, target.release);
    let hashed: { bytes: number; sha256: string };
    try {
      hashed = await followWrites(fd, migration, mark);
    } catch (err) {
      // no file, no point
      await cancelSave(vm, migration);
      throw err;
    }
    await migration;
    await released;
    return { ...hashed, via: 'fd', uri: target.uri };
  } finally {
    if (open) closeSync(fd);
  }
}

/** QEMU streams into a Unix socket; Node hashes the bytes and writes them to `path`. */
async function saveThroughSocket(
  vm: QemuVm,
  path: string,
  opts: MigrationOptions,
  log: Logger,
  mark: (phase: string) => void,
  stop: () => Promise<void>,
  connectTimeoutMs: number,
): Promise<Saved> {
  const sock = streamSocketPath();
  let server: Server | null = null;
  let migration: Promise<unknown> | null = null;
  try {
    server = await listen(sock.path);
    const conn = firstConnection(server, connectTimeoutMs, `checkpoint of ${vm.name}`);
    conn.catch(() => undefined);
    await stop();
    const running = runOutgoingMigration(vm, `unix:${sock.path}`, opts, { log });
    migration = running;
    running.then(() => mark('qemu'), () => undefined);
    const socket = await Promise.race([conn, running.then(() => conn)]);
    const counter = new HashingCounter();
    // 1 MiB writes: the file side, not the socket, should set the pace
    const out = createWriteStream(path, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 });
    await Promise.all([pipeline(socket, counter, out).then(() => mark('written')), running]);
    fsyncPath(path);
    mark('fsync');
    return { bytes: counter.bytes, sha256: counter.hash.digest('hex'), via: 'socket' };
  } catch (err) {
    if (migration) await cancelSave(vm, migration);
    throw err;
  } finally {
    server?.close();
    sock.cleanup();
  }
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
  const marks: Marks = {};
  const mark = (phase: string) => (marks[phase] = Math.round(performance.now() - t0));
  const before = await vm.status();
  const wasRunning = before.running;
  let stopped = false;
  // the guest runs on while the save is set up; only `migrate` needs it stopped
  const stop = async () => {
    if (wasRunning && !stopped) {
      stopped = true;
      await vm.pause();
    }
    mark('stopped');
  };
  const statePath = join(dir, stateFileName(vm.name));
  const tmpState = `${statePath}.tmp-${process.pid}`;
  try {
    const [version, machineType] = await Promise.all([
      vm.qmp.queryVersion(),
      vm.qmp.execute('qom-get', { path: '/machine', property: 'type' }).then((t) => String(t).replace(/-machine$/, '')),
    ]);
    // A stopped guest's state goes in one pass: no dirtying, no postcopy.
    // Polled often: a save takes a few hundred ms, and the end is seen at the
    // next poll if the MIGRATION event comes while a query is under way.
    const opts = migrationOptionsSchema.parse({ mode: 'precopy', timeoutMs: o.timeoutMs ?? 600_000, progressIntervalMs: 10 });
    await prepareOutgoing(vm, opts);
    mark('prepared');
    rmSync(tmpState, { force: true }); // a leftover of a crashed save of the same pid
    const saved =
      (o.via !== 'socket' ? await saveThroughFd(vm, tmpState, version.qemu, opts, log, mark, stop) : null) ?? (await saveThroughSocket(vm, tmpState, opts, log, mark, stop, o.connectTimeoutMs ?? 10_000));
    renameSync(tmpState, statePath);
    mark('renamed');
    const saveMs = performance.now() - t0;
    const manifest: VmCheckpointManifest = {
      format: CHECKPOINT_FORMAT,
      vm: vm.name,
      createdAt: new Date().toISOString(),
      stateFile: stateFileName(vm.name),
      stateBytes: saved.bytes,
      sha256: saved.sha256,
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
    mark('manifest');
    log.info({ bytes: saved.bytes, via: saved.via, uri: saved.uri, ms: Math.round(saveMs), MiBps: Math.round(saved.bytes / 2 ** 20 / (saveMs / 1000)), marks }, 'checkpoint written');
    return manifest;
  } catch (err) {
    rmSync(tmpState, { force: true });
    throw err instanceof CheckpointError ? err : new CheckpointError(`checkpoint of VM ${vm.name} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    // After a completed save QEMU sits in postmigrate; cont brings the guest
    // back (also after a failed one, which may have stopped it).
    if (stopped && !o.leaveStopped && vm.running) await vm.resume().catch((err: unknown) => log.error({ err }, 'could not continue the guest after the checkpoint'));
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
  /** How long QEMU may take to listen for the stream after migrate-incoming; default 10 s. */
  connectTimeoutMs?: number;
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
    const socket = await connectWhenListening(sock.path, o.connectTimeoutMs ?? 10_000);
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

