/**
 * A job's journal (events.jsonl, operations.jsonl) read into what the report
 * shows: the job's life, its operations with their phases and the time the
 * application was paused, migration progress, health events, failures,
 * decisions and host states. Anything missing or malformed in the journal
 * is left out, not guessed: the report of a torn journal is a shorter one.
 */
import { readEvents, readOperations, type JournalEvent } from '../controller/journal.js';

export interface Phase {
  readonly name: string;
  readonly startedAt: number;
  readonly ms: number;
}

export interface ProgressSample {
  readonly vm: string;
  /** ms since the operation started. */
  readonly t: number;
  readonly remaining: number;
}

export interface StoryOperation {
  readonly id: string;
  readonly kind: string;
  readonly ok: boolean;
  readonly error: string | null;
  readonly startedAt: number;
  readonly durationMs: number;
  readonly requestedBy: string;
  readonly reason: string;
  readonly phases: readonly Phase[];
  /** What the application saw: from the start of quiescing to the end of resuming, ms (0: not paused). */
  readonly pausedMs: number;
  /** A restart: from the failure it answered to the job running again, ms (null: no failure before it). */
  readonly outageMs: number | null;
  readonly progress: readonly ProgressSample[];
  readonly retargets: readonly { from: string; to: string; atMs: number }[];
}

export interface StoryEvent {
  readonly at: number;
  readonly text: string;
  readonly detail: Readonly<Record<string, unknown>>;
}

export interface JobStory {
  readonly job: string;
  readonly command: readonly string[];
  readonly np: number | null;
  readonly startedAt: number | null;
  readonly endedAt: number | null;
  readonly exitCode: number | null;
  readonly operations: readonly StoryOperation[];
  readonly health: readonly (StoryEvent & { severity: string; host: string })[];
  readonly failures: readonly (StoryEvent & { kind: string; acted: boolean })[];
  readonly decisions: readonly (StoryEvent & { action: string; by: string })[];
  readonly hostStates: readonly (StoryEvent & { host: string; state: string })[];
  /** First and last moment anything happened (the timeline's span). */
  readonly span: { readonly from: number; readonly to: number };
}

export interface StorySummary {
  readonly operations: Readonly<Record<string, { ok: number; failed: number }>>;
  readonly pausedMs: number;
  /** Time the job did not run because of symbio or of failures: paused time plus restarts' outages, ms. */
  readonly downtimeMs: number;
  readonly checkpoints: number;
  readonly migrations: number;
  readonly restarts: number;
  readonly failures: number;
  readonly healthEvents: number;
  readonly decisions: number;
  readonly exitCode: number | null;
  readonly durationMs: number | null;
}

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const str = (v: unknown, d = ''): string => (typeof v === 'string' ? v : d);

/** Paused time of an operation: quiescing through resuming (VM operations), or quiescing through freezing (an operator's freeze). */
export function pausedMsOf(phases: readonly { name: string; ms: number }[]): number {
  const first = phases.findIndex((p) => p.name === 'quiescing');
  if (first < 0) return 0;
  let last = phases.findIndex((p) => p.name === 'resuming');
  if (last < first) last = phases.length - 1;
  return phases.slice(first, last + 1).reduce((a, p) => a + (Number.isFinite(p.ms) ? p.ms : 0), 0);
}

function operationOf(r: Record<string, unknown>): StoryOperation | null {
  const id = str(r.id);
  const startedAt = num(r.startedAt);
  if (!id || startedAt === null) return null;
  const timeline = Array.isArray(r.timeline) ? (r.timeline as Record<string, unknown>[]) : [];
  const phases: Phase[] = [];
  let progress: ProgressSample[] = [];
  let retargets: StoryOperation['retargets'] = [];
  for (const p of timeline) {
    const at = num(p.startedAt);
    const ms = num(p.ms);
    if (at === null || ms === null || typeof p.name !== 'string') continue;
    phases.push({ name: p.name, startedAt: at, ms });
    const d = (p.detail ?? {}) as Record<string, unknown>;
    if (Array.isArray(d.progress)) {
      progress = (d.progress as Record<string, unknown>[]).flatMap((s) => {
        const t = num(s.t);
        const remaining = num(s.remaining);
        return t !== null && remaining !== null && typeof s.vm === 'string' ? [{ vm: s.vm, t, remaining }] : [];
      });
    }
    if (Array.isArray(d.retargeted)) {
      retargets = (d.retargeted as Record<string, unknown>[]).map((x) => ({ from: str(x.from), to: str(x.to), atMs: num(x.atMs) ?? 0 }));
    }
  }
  return {
    id,
    kind: str(r.kind, 'unknown'),
    ok: r.ok === true,
    error: typeof r.error === 'string' ? r.error : null,
    startedAt,
    durationMs: num(r.durationMs) ?? phases.reduce((a, p) => a + p.ms, 0),
    requestedBy: str(r.requestedBy, '?'),
    reason: str(r.reason),
    phases,
    pausedMs: pausedMsOf(phases),
    outageMs: null,
    progress,
    retargets,
  };
}

const detailOf = (e: JournalEvent): Record<string, unknown> => {
  const { at: _at, type: _type, job: _job, ...rest } = e;
  return rest;
};

export function storyFromJournal(job: string, events: readonly JournalEvent[], records: readonly Record<string, unknown>[]): JobStory {
  const started = events.find((e) => e.type === 'job-started');
  const finished = [...events].reverse().find((e) => e.type === 'job-finished');
  const acted = events.filter((e) => e.type === 'failure' && e.acted !== false).map((e) => e.at);
  const operations = records
    .flatMap((r) => operationOf(r) ?? [])
    .sort((a, b) => a.startedAt - b.startedAt)
    .map((o) => {
      if (o.kind !== 'restart' || !o.ok) return o;
      // the outage a restart ended began with the last failure before it
      const since = acted.filter((t) => t <= o.startedAt).at(-1);
      return since === undefined ? o : { ...o, outageMs: o.startedAt + o.durationMs - since };
    });
  const health = events
    .filter((e) => e.type === 'health')
    .map((e) => ({ at: e.at, severity: str(e.severity, 'info'), host: str(e.host), text: `${str(e.host)} ${str(e.component)}: ${str(e.message)}`, detail: detailOf(e) }));
  const failures = events
    .filter((e) => e.type === 'failure')
    .map((e) => ({ at: e.at, kind: str(e.kind, 'failure'), acted: e.acted !== false, text: `${str(e.kind)}: ${str(e.message)}`, detail: detailOf(e) }));
  const decisions = events
    .filter((e) => e.type === 'decision')
    .map((e) => ({ at: e.at, action: str(e.action, '?'), by: str(e.by, '?'), text: str(e.reason), detail: detailOf(e) }));
  const hostStates = events
    .filter((e) => e.type === 'host-state')
    .map((e) => ({ at: e.at, host: str(e.host), state: str(e.state), text: `${str(e.host)} is ${str(e.state)}${e.reason ? `: ${str(e.reason)}` : ''}`, detail: detailOf(e) }));
  const times = [
    ...events.map((e) => e.at),
    ...operations.flatMap((o) => [o.startedAt, o.startedAt + o.durationMs]),
  ].filter((x) => Number.isFinite(x));
  const from = Math.min(...times, started?.at ?? Infinity);
  const to = Math.max(...times, finished?.at ?? -Infinity);
  return {
    job,
    command: Array.isArray(started?.command) ? (started.command as unknown[]).map(String) : [],
    np: num(started?.np),
    startedAt: started?.at ?? null,
    endedAt: finished?.at ?? null,
    exitCode: num(finished?.exitCode),
    operations,
    health,
    failures,
    decisions,
    hostStates,
    span: Number.isFinite(from) && Number.isFinite(to) && to > from ? { from, to } : { from: Number.isFinite(from) ? from : 0, to: (Number.isFinite(from) ? from : 0) + 1000 },
  };
}

export function loadJobStory(stateDir: string, job: string): JobStory {
  return storyFromJournal(job, readEvents(stateDir, job), readOperations(stateDir, job));
}

export function summarize(s: JobStory): StorySummary {
  const operations: Record<string, { ok: number; failed: number }> = {};
  for (const o of s.operations) {
    const c = (operations[o.kind] ??= { ok: 0, failed: 0 });
    if (o.ok) c.ok++;
    else c.failed++;
  }
  return {
    operations,
    pausedMs: Math.round(s.operations.reduce((a, o) => a + o.pausedMs, 0)),
    downtimeMs: Math.round(s.operations.reduce((a, o) => a + o.pausedMs + (o.outageMs ?? 0), 0)),
    checkpoints: operations.checkpoint?.ok ?? 0,
    migrations: operations.migrate?.ok ?? 0,
    restarts: operations.restart?.ok ?? 0,
    failures: s.failures.filter((f) => f.acted).length,
    healthEvents: s.health.length,
    decisions: s.decisions.length,
    exitCode: s.exitCode,
    durationMs: s.startedAt !== null && s.endedAt !== null ? s.endedAt - s.startedAt : null,
  };
}
