/**
 * Operations as explicit state machines. Each kind has a typed transition
 * table: the phases it goes through, in order, and where it may go from each
 * (forward, or to rolling-back when a step fails). An Operation records a
 * timeline of its phases with their durations, which the journal persists
 * and `symbio report` draws later.
 */
import { randomBytes } from 'node:crypto';
import type { OperationKind, OperationRecord } from '../host/plugin-api.js';

export type { OperationKind };

/** Every kind starts queued and ends done, failed or cancelled. */
type Terminal = 'done' | 'failed' | 'cancelled';

/** The transition table: phase -> phases it may go to next. */
export const TRANSITIONS = {
  // Hold every rank with counters balanced; the job stays held until resume.
  quiesce: {
    queued: ['quiescing', 'cancelled'],
    quiescing: ['done', 'rolling-back'],
    'rolling-back': ['failed'],
  },
  // Quiesce, then stop every rank calling MPI; frozen until resume.
  freeze: {
    queued: ['quiescing', 'cancelled'],
    quiescing: ['freezing', 'rolling-back'],
    freezing: ['done', 'rolling-back'],
    'rolling-back': ['failed'],
  },
  resume: {
    queued: ['resuming', 'cancelled'],
    resuming: ['done', 'failed'],
  },
  // Coordinated checkpoint of every VM of the job (see docs/design.md).
  checkpoint: {
    queued: ['quiescing', 'cancelled'],
    quiescing: ['freezing', 'rolling-back'],
    freezing: ['stopping-vms', 'rolling-back'],
    'stopping-vms': ['saving', 'rolling-back'],
    saving: ['writing-manifest', 'rolling-back'],
    'writing-manifest': ['continuing', 'rolling-back'],
    continuing: ['resuming', 'rolling-back'],
    resuming: ['done', 'failed'],
    'rolling-back': ['failed'],
  },
  // Cooperative migration: the destination starts first (off the critical path).
  migrate: {
    queued: ['preparing-destination', 'cancelled'],
    'preparing-destination': ['quiescing', 'rolling-back'],
    quiescing: ['freezing', 'rolling-back'],
    freezing: ['detaching', 'rolling-back'],
    detaching: ['migrating', 'rolling-back'],
    migrating: ['attaching', 'rolling-back'],
    attaching: ['restoring-network', 'rolling-back'],
    'restoring-network': ['resuming', 'rolling-back'],
    resuming: ['done', 'failed'],
    'rolling-back': ['failed'],
  },
  // Restart from a checkpoint manifest: verify every file before touching anything.
  restart: {
    queued: ['verifying', 'cancelled'],
    verifying: ['starting-vms', 'failed'],
    'starting-vms': ['reconnecting', 'rolling-back'],
    reconnecting: ['resuming', 'rolling-back'],
    resuming: ['done', 'failed'],
    'rolling-back': ['failed'],
  },
} as const satisfies Record<OperationKind, Record<string, readonly string[]>>;

export type PhaseOf<K extends OperationKind> = keyof (typeof TRANSITIONS)[K] | Terminal;
export type AnyPhase = { [K in OperationKind]: PhaseOf<K> }[OperationKind];

export const OPERATION_KINDS = Object.keys(TRANSITIONS) as OperationKind[];

export class TransitionError extends Error {
  override name = 'TransitionError';
}

export interface PhaseRecord {
  readonly name: string;
  /** ms since the epoch. */
  readonly startedAt: number;
  /** ms; null while the phase runs. */
  ms: number | null;
  /** What happened in the phase (numbers for the report), if anything. */
  detail?: Record<string, unknown>;
}

export interface OperationRequest {
  readonly job: string;
  readonly kind: OperationKind;
  readonly requestedBy: string;
  readonly reason: string;
}

const isTerminal = (p: string): p is Terminal => p === 'done' || p === 'failed' || p === 'cancelled';

export class Operation<K extends OperationKind = OperationKind> {
  readonly id: string;
  readonly job: string;
  readonly kind: K;
  readonly requestedBy: string;
  readonly reason: string;
  readonly createdAt = Date.now();
  /** Set when it leaves `queued`. */
  startedAt: number | null = null;
  #phase: PhaseOf<K> = 'queued' as PhaseOf<K>;
  #phaseT0 = performance.now();
  readonly timeline: PhaseRecord[] = [];
  error: string | undefined;
  /** The phase that failed, when one did. */
  failedIn: string | undefined;
  result: unknown;
  readonly #listeners: Array<(op: Operation<K>) => void> = [];

  constructor(req: OperationRequest & { kind: K }) {
    this.id = `op-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
    this.job = req.job;
    this.kind = req.kind;
    this.requestedBy = req.requestedBy;
    this.reason = req.reason;
  }

  get phase(): PhaseOf<K> {
    return this.#phase;
  }

  get finished(): boolean {
    return isTerminal(this.#phase as string);
  }

  /** Phases this operation may go to now. */
  next(): readonly string[] {
    const table = TRANSITIONS[this.kind] as Record<string, readonly string[]>;
    return table[this.#phase as string] ?? [];
  }

  /** Called on every transition (progress display, journal). */
  onTransition(listener: (op: Operation<K>) => void): void {
    this.#listeners.push(listener);
  }

  /** Move to `phase`; throws TransitionError if the table does not allow it. */
  to(phase: PhaseOf<K>, detail?: Record<string, unknown>): void {
    const from = this.#phase as string;
    if (!this.next().includes(phase as string)) {
      throw new TransitionError(`${this.kind} operation ${this.id}: no transition ${from} -> ${String(phase)} (allowed: ${this.next().join(', ') || 'none'})`);
    }
    const now = performance.now();
    this.#closePhase(now, detail);
    if (from === 'queued') this.startedAt = Date.now();
    this.#phase = phase;
    this.#phaseT0 = now;
    if (!isTerminal(phase as string)) this.timeline.push({ name: phase as string, startedAt: Date.now(), ms: null });
    for (const l of this.#listeners) l(this);
  }

  /** Attach numbers to the phase that is running. */
  note(detail: Record<string, unknown>): void {
    const cur = this.timeline.at(-1);
    if (cur && cur.ms === null) cur.detail = { ...cur.detail, ...detail };
  }

  #closePhase(now: number, detail?: Record<string, unknown>): void {
    const cur = this.timeline.at(-1);
    if (cur && cur.ms === null) {
      cur.ms = now - this.#phaseT0;
      if (detail) cur.detail = { ...cur.detail, ...detail };
    }
  }

  /** End an operation that cannot go on: through rolling-back where the table has it, else failed or cancelled. */
  abort(err: unknown): void {
    this.fail(err);
    for (const p of ['rolling-back', 'failed', 'cancelled'] as const) {
      if (this.finished) return;
      if (this.next().includes(p)) this.to(p as PhaseOf<K>);
    }
  }

  /** Record a failure in the current phase (then go to rolling-back or failed). */
  fail(err: unknown): void {
    this.error ??= err instanceof Error ? err.message : String(err);
    this.failedIn ??= this.#phase as string;
  }

  get durationMs(): number {
    if (this.startedAt === null) return 0;
    const last = this.timeline.at(-1);
    const end = last && last.ms !== null ? last.startedAt + last.ms : Date.now();
    return Math.max(0, end - this.startedAt);
  }

  /** The record plugins and the journal see. */
  record(): OperationRecord & { phase: string; failedIn?: string; timeline: PhaseRecord[]; result?: unknown } {
    return {
      id: this.id,
      job: this.job,
      kind: this.kind,
      ok: this.#phase === 'done',
      ...(this.error === undefined ? {} : { error: this.error }),
      ...(this.failedIn === undefined ? {} : { failedIn: this.failedIn }),
      startedAt: this.startedAt ?? this.createdAt,
      durationMs: this.durationMs,
      phases: this.timeline.filter((p) => p.ms !== null).map((p) => ({ name: p.name, ms: p.ms! })),
      requestedBy: this.requestedBy,
      reason: this.reason,
      phase: this.#phase as string,
      timeline: this.timeline.map((p) => ({ ...p })),
      ...(this.result === undefined ? {} : { result: this.result }),
    };
  }
}

export type OperationSummary = ReturnType<Operation['record']>;
