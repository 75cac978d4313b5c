/**
 * Typed facade over the native addon `symbio.node` (native/addon/): the only
 * module that loads it. Node has no mmap, futex, pidfd or eventfd; the addon
 * owns this node's control segment (native/common/symbio_segment.h) and this
 * module gives it TypeScript types:
 *
 * - `new ControlSegment(options)` creates the POSIX shm object the ranks'
 *   shims open (mode 0600, O_EXCL), `close()` removes it.
 * - `hold()` / `freeze()` / `resume()` publish commands and wake sleeping ranks.
 * - `snapshot()` copies every slot (a double collect) as a `NodeSnapshot`.
 * - `watch(listener)` reports changes, rank attach and rank exit (pidfd) from
 *   one native thread, with no polling anywhere.
 *
 * Every open segment is closed when the process exits or gets SIGTERM/SIGINT
 * (the signal is then re-raised with its default action), so a stopped agent
 * leaves nothing in /dev/shm; only SIGKILL can leave a stale segment, and the
 * next create says which file to remove.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { CatchupTarget, NodeSnapshot, RankSnapshot, RankState } from './quiesce/snapshot.js';
import { nativeArtifact } from './util/package-root.js';

export type Command = 'run' | 'hold' | 'freeze';

export interface ControlSegmentOptions {
  /** POSIX shm name: '/' then one file name, e.g. `/symbio-<job>-<pid>` (see segmentNameFor). */
  readonly name: string;
  /** Local rank slots, 1..abi().maxSlots. */
  readonly slots: number;
  /** MPI_COMM_WORLD size the per-peer counters are sized for, 1..abi().maxWorld. */
  readonly worldSize: number;
  /** Ranks held longer than this resume by themselves (ms, >= 1). */
  readonly resumeTimeoutMs: number;
  /** Stored in the header (truncated to 63 bytes at a UTF-8 boundary). */
  readonly jobId: string;
}

export interface CommandState {
  readonly epoch: number;
  readonly command: Command;
}

/** Header of an existing segment, as read by `ControlSegment.inspect`. */
export interface SegmentInfo {
  readonly name: string;
  readonly abiVersion: number;
  readonly slotCount: number;
  readonly worldSize: number;
  /** Process that created the segment (it may be gone). */
  readonly agentPid: number;
  readonly resumeTimeoutMs: number;
  readonly jobId: string;
  readonly epoch: number;
  readonly command: Command;
  readonly segmentBytes: number;
  /** CLOCK_REALTIME ns at creation (as a number: ~256 ns granularity). */
  readonly createdNs: number;
}

/** The ABI limits compiled into the addon (from symbio_segment.h). */
export interface AbiLimits {
  readonly version: number;
  readonly headerBytes: number;
  readonly maxSlots: number;
  readonly maxWorld: number;
  readonly maxComms: number;
  readonly jobIdBytes: number;
  readonly maxEpoch: number;
}

export interface RankRef {
  readonly slot: number;
  readonly pid: number;
  readonly worldRank: number;
}

/**
 * What `watch` reports. 'changed' is coalesced: at most one is queued at a
 * time, so a listener that takes a snapshot on each sees every change.
 * 'rank-attached' comes once per (slot, pid); 'rank-exit' when that process
 * exits (seen through its pidfd). 'error' means the watcher could not do part
 * of its job (e.g. watch one rank's pid); the message says what.
 */
export type SegmentEvent =
  | { readonly type: 'changed' }
  | ({ readonly type: 'rank-attached' } & RankRef)
  | ({ readonly type: 'rank-exit' } & RankRef)
  | { readonly type: 'error'; readonly message: string };

/** A rank as the addon read it: the coordinator's RankSnapshot plus raw extras. */
export interface NativeRankSnapshot extends RankSnapshot {
  /** SYMBIO_F_* bits as the rank wrote them. */
  readonly flags: number;
  /** Times the rank resumed by itself. */
  readonly autoresumes: number;
}

export interface NativeNodeSnapshot extends NodeSnapshot {
  readonly ranks: readonly NativeRankSnapshot[];
  /**
   * What was wrong with what ranks wrote ("slot 3: state 99 out of range
   * (treated as empty)"). Any problem also makes `consistent` false, so a
   * buggy rank can delay a quiescence decision but never fake one.
   */
  readonly problems: readonly string[];
}

// ---- the addon's raw shapes (see native/addon/control_segment.cc) ----

/** A rank as the addon returns it: the coordinator's view minus `node`, with
 * counters as typed arrays (copied into plain arrays by `snapshot`). */
interface RawRank extends Omit<RankSnapshot, 'node' | 'state' | 'sent' | 'recvd'> {
  readonly state: Exclude<RankState, 'empty'>;
  readonly flags: number;
  readonly autoresumes: number;
  readonly sent: Float64Array;
  readonly recvd: Float64Array;
}

interface RawSnapshot {
  readonly epoch: number;
  readonly command: Command;
  readonly consistent: boolean;
  readonly takenNs: number;
  readonly ranks: readonly RawRank[];
  readonly problems: readonly string[];
}

interface RawControlSegment {
  readonly name: string;
  readonly closed: boolean;
  hold(epoch?: number): number;
  freeze(): number;
  resume(): number;
  command(): CommandState;
  setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): void;
  snapshot(): RawSnapshot;
  watch(listener: (event: SegmentEvent) => void): void;
  close(): void;
}

interface RawAddon {
  readonly ControlSegment: {
    new (options: ControlSegmentOptions): RawControlSegment;
    inspect(name: string): SegmentInfo;
  };
  readonly abi: AbiLimits;
  peerCredentials(fd: number): PeerCredentials;
  sendFd(socketFd: number, fd: number, data: Uint8Array): number;
}

/** Who is at the other end of a connected Unix socket (SO_PEERCRED). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

let loaded: RawAddon | undefined;

/** Loads build/Release/symbio.node on first use (importing this module never fails). */
function addon(): RawAddon {
  if (loaded) return loaded;
  const path = nativeArtifact('symbio.node');
  if (!existsSync(path)) {
    throw new Error(`the symbio native addon is not built (${path} is missing); run \`npm run build\``);
  }
  try {
    loaded = createRequire(import.meta.url)(path) as RawAddon;
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).split('\n')[0];
    throw new Error(`cannot load the symbio native addon ${path} (${why}); rebuild it with \`npm run build\``, {
      cause: err,
    });
  }
  return loaded;
}

/** SO_PEERCRED of a connected Unix socket's file descriptor. */
export function peerCredentials(fd: number): PeerCredentials {
  return addon().peerCredentials(fd);
}

/**
 * Send `data` on the connected Unix stream socket `socketFd` with the open
 * file descriptor `fd` attached (SCM_RIGHTS, on the first byte): the
 * receiver gets its own descriptor of the same open file. Node's net module
 * cannot send descriptors. Synchronous; waits at most 1 s for room in a full
 * send buffer. `data`: 1 to 65536 bytes. Throws an Error with `code`
 * (EBADF, ENOTSOCK, EPIPE, ETIMEDOUT, ...) and `syscall` when the kernel
 * refuses; the caller's `fd` stays open either way.
 */
export function sendFd(socketFd: number, fd: number, data: Uint8Array): number {
  return addon().sendFd(socketFd, fd, data);
}

/** The ABI limits compiled into the addon. */
export function abi(): AbiLimits {
  return addon().abi;
}

/**
 * A valid shm name for a job's segment on this node: `/symbio-<job>-<pid>`,
 * with characters other than [A-Za-z0-9._-] in the job id replaced by '_'
 * (a '/' would make it an invalid name) and the id shortened to fit.
 */
export function segmentNameFor(jobId: string, pid: number = process.pid): string {
  const safe = jobId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200);
  return `/symbio-${safe}-${pid}`;
}

// ---- process-exit safety net ----

const openSegments = new Set<ControlSegment>();
const signalHandlers = new Map<NodeJS.Signals, () => void>();
let exitHookInstalled = false;

function closeAllSegments(): void {
  for (const segment of [...openSegments]) segment.close();
}

/**
 * Listeners that the `signal-exit` package (used by tap, npm and many CLIs)
 * has on each signal. Like ours, they only clean up and then re-raise when
 * no one else listens; counting them as "someone else" would leave both
 * sides waiting for the other and the process alive. Both of its published
 * layouts keep a count of its per-signal listeners: v4 on a global symbol,
 * v3 on process.
 */
function signalExitListeners(): number {
  type Counted = { count?: unknown } | undefined;
  const v4 = (globalThis as Record<symbol, Counted>)[Symbol.for('signal-exit emitter')];
  const v3 = (process as unknown as { __signal_exit_emitter__?: Counted }).__signal_exit_emitter__;
  const count = (e: Counted): number => (typeof e?.count === 'number' ? e.count : 0);
  return count(v4) + count(v3);
}

function onSignal(signal: NodeJS.Signals): void {
  // The application listens too (the launcher does): it decides what happens
  // and needs its segments until the job is down; they close at exit.
  if (process.listenerCount(signal) - 1 > signalExitListeners()) return;
  closeAllSegments(); // also removes our signal listeners (no segment left)
  removeSignalHandlers();
  // Re-raise with the default action (terminate, reporting the signal) unless
  // the application listens for it too: then this emit already reached its
  // listener, which decides what happens next (re-raising would deliver the
  // signal to it twice).
  if (process.listenerCount(signal) <= signalExitListeners()) process.kill(process.pid, signal);
}

function installHandlers(): void {
  if (!exitHookInstalled) {
    // 'exit' listeners run on process.exit() and at the natural end; they
    // must be synchronous, and close() is. (The addon's own environment
    // cleanup hook covers the natural end and worker termination, but Node
    // does not run such hooks on process.exit() in the main thread.)
    process.on('exit', closeAllSegments);
    exitHookInstalled = true;
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    if (signalHandlers.has(signal)) continue;
    const handler = (): void => onSignal(signal);
    signalHandlers.set(signal, handler);
    process.on(signal, handler);
  }
}

/** With no segment open, SIGTERM/SIGINT get their default behaviour back. */
function removeSignalHandlers(): void {
  for (const [signal, handler] of signalHandlers) process.removeListener(signal, handler);
  signalHandlers.clear();
}

/** This node's control segment, created by the agent. */
export class ControlSegment {
  readonly #raw: RawControlSegment;

  /** Creates the shm object; throws a one-line Error (bad options, name taken, syscall failure). */
  constructor(options: ControlSegmentOptions) {
    this.#raw = new (addon().ControlSegment)(options);
    openSegments.add(this);
    installHandlers();
  }

  /** Reads and validates the header of an existing segment (created by anyone). */
  static inspect(name: string): SegmentInfo {
    return addon().ControlSegment.inspect(name);
  }

  get name(): string {
    return this.#raw.name;
  }

  get closed(): boolean {
    return this.#raw.closed;
  }

  /**
   * Starts a new epoch and tells every rank to hold; returns the epoch. A
   * controller quiescing several nodes passes one epoch for all (it must be
   * after this segment's current epoch).
   */
  hold(epoch?: number): number {
    return this.#raw.hold(epoch);
  }

  /** Tells held ranks to stop calling MPI (same epoch); throws unless held. */
  freeze(): number {
    return this.#raw.freeze();
  }

  /** Lets every rank run again (same epoch). */
  resume(): number {
    return this.#raw.resume();
  }

  /** The command this agent last published. */
  command(): CommandState {
    return this.#raw.command();
  }

  /**
   * Tells the rank in `slot` to run on until each communicator `gid` has
   * reached `target` collectives (for `epoch`); wakes held ranks.
   */
  setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): void {
    this.#raw.setCatchup(slot, epoch, targets);
  }

  /** Copies every claimed slot; `node` labels the ranks ('' for the embedded agent). */
  snapshot(node = ''): NativeNodeSnapshot {
    const raw = this.#raw.snapshot();
    return {
      node,
      epoch: raw.epoch,
      command: raw.command,
      consistent: raw.consistent,
      takenNs: raw.takenNs,
      problems: raw.problems,
      ranks: raw.ranks.map(
        (r): NativeRankSnapshot => ({
          slot: r.slot,
          node,
          state: r.state,
          pid: r.pid,
          worldRank: r.worldRank,
          worldSize: r.worldSize,
          ackEpoch: r.ackEpoch,
          changeSeq: r.changeSeq,
          inCollective: r.inCollective,
          unsupported: r.unsupported,
          autoresumed: r.autoresumed,
          autoresumeReason: r.autoresumeReason,
          pendingSends: r.pendingSends,
          pendingRecvs: r.pendingRecvs,
          pendingColls: r.pendingColls,
          drainedNow: r.drainedNow,
          drainedTotal: r.drainedTotal,
          pmpiCalls: r.pmpiCalls,
          heldNs: r.heldNs,
          frozenNs: r.frozenNs,
          resumedNs: r.resumedNs,
          comms: r.comms,
          sent: Array.from(r.sent),
          recvd: Array.from(r.recvd),
          flags: r.flags,
          autoresumes: r.autoresumes,
        }),
      ),
    };
  }

  /**
   * Starts the watcher (once per segment). The listener runs on the main
   * thread; an exception it throws is an uncaught exception. Watching keeps
   * the event loop alive until close().
   */
  watch(listener: (event: SegmentEvent) => void): void {
    if (typeof listener !== 'function') throw new TypeError('watch(listener): listener must be a function');
    this.#raw.watch((event) => {
      if (this.#raw.closed) return;
      try {
        listener(event);
      } catch (err) {
        // Thrown back into the addon it would only be a DEP0168 warning
        // (Node's legacy policy for Node-API callbacks); rethrown from a tick
        // it is an ordinary uncaught exception.
        process.nextTick(() => {
          throw err;
        });
      }
    });
  }

  /**
   * Idempotent: stops the watcher, lets held ranks run, unmaps and removes
   * the shm name.
   */
  close(): void {
    this.#raw.close();
    openSegments.delete(this);
    if (openSegments.size === 0) removeSignalHandlers();
  }
}
