/**
 * The controller: the registry of jobs, their nodes (agents) and VMs, and the
 * operations on them. One operation per job at a time: a second request is
 * queued behind it (up to a limit) or refused with a reason, as configured.
 * Every operation is a state machine (operation.ts) whose phases are
 * journaled as they happen; plugins hear about each finished operation.
 *
 * It runs embedded in the launcher (one job, one local agent) or standalone
 * (`symbio controller`: many jobs, agents over a socket); the code is the same.
 */
import { EventEmitter } from 'node:events';
import PQueue from 'p-queue';
import { JobJournal, type JournalEvent } from './journal.js';
import { Operation, type OperationSummary } from './operation.js';
import { JobQuiescer, type QuiesceOutcome, type QuiesceParticipant } from '../quiesce/job-quiescer.js';
import type { ClusterView, HostState, JobView, OperationKind, OperationRecord } from '../host/plugin-api.js';
import type { Logger } from '../log.js';
import type { GuestAgentLink } from './guest-agent-link.js';
import type { JobVmBackend } from './vm-backend.js';
import { cooperativeMigrate, coordinatedCheckpoint, restartFromCheckpoint, type VmJobContext } from './vm-operations.js';

export interface ControllerOptions {
  readonly stateDir: string;
  /** A request for a job that is busy: wait in its queue, or be refused. */
  readonly whenBusy: 'queue' | 'refuse';
  /** Requests that may wait per job (beyond the running one). */
  readonly queueLimit: number;
  readonly quiesce: { readonly timeoutMs: number; readonly stallMs: number };
  readonly hosts?: readonly { readonly name: string; readonly spare: boolean }[];
  readonly log: Logger;
}

export interface JobDescriptionInput {
  readonly id: string;
  readonly command: readonly string[];
  readonly np: number | null;
  /** The launcher's pid (embedded) or the remote launcher's. */
  readonly launcherPid?: number;
}

export interface VmEntry {
  readonly id: string;
  host: string;
  readonly memoryBytes: number;
}

interface JobEntry {
  readonly id: string;
  readonly command: readonly string[];
  readonly np: number | null;
  readonly startedAt: number;
  state: JobView['state'];
  exitCode: number | null;
  readonly nodes: Map<string, QuiesceParticipant>;
  readonly vms: Map<string, VmEntry>;
  readonly quiescer: JobQuiescer;
  readonly queue: PQueue;
  current: Operation | null;
  /** The job was left held or frozen by an operator's quiesce/freeze. */
  held: 'hold' | 'freeze' | null;
  /** Set when queued operations must not run any more: why. */
  cancelQueued: string | null;
  readonly journal: JobJournal;
  lastCheckpoint: JobView['lastCheckpoint'];
  readonly measured: { checkpointMs: number[]; restartMs: number[] };
  readonly log: Logger;
  /** Set when the job runs in VMs the controller can act on. */
  vmJob: VmJobContext | null;
}

export interface VmJobInput {
  readonly backend: JobVmBackend;
  /** One agent link per VM, by VM id. */
  readonly links: ReadonlyMap<string, GuestAgentLink>;
  readonly checkpointDir: string;
  readonly keep: number;
}

/** The request could not be accepted (busy, already held, nothing to act on): nothing was done. */
export class OperationRefusedError extends Error {
  override name = 'OperationRefusedError';
}

/** The request names no job, or one that does not exist: the caller's mistake. */
export class UnknownJobError extends Error {
  override name = 'UnknownJobError';
}

export interface OperationRequestInput {
  readonly job?: string;
  readonly kind: OperationKind;
  readonly requestedBy: string;
  readonly reason?: string;
  readonly timeoutMs?: number;
  /** Kind-specific parameters (migrate: vms, to, mode; restart: manifest, hosts). */
  readonly params?: Readonly<Record<string, unknown>>;
  /** Called on every phase change (progress display). */
  readonly onProgress?: (op: OperationSummary) => void;
}

export interface ControllerEvents {
  journal: [JournalEvent];
  'operation-finished': [OperationSummary];
}

/** Kinds that act on VMs through a hypervisor driver. */
const VM_KINDS: ReadonlySet<OperationKind> = new Set(['checkpoint', 'migrate', 'restart']);

export class Controller extends EventEmitter<ControllerEvents> {
  readonly #jobs = new Map<string, JobEntry>();
  readonly #hostStates = new Map<string, HostState>();
  #spares = new Map<string, boolean>();
  readonly #log: Logger;
  #closed = false;

  constructor(readonly options: ControllerOptions) {
    super();
    this.#log = options.log;
    this.addHosts(options.hosts ?? []);
  }

  /** Hosts (places VMs can run in) the controller knows of, e.g. a virtual cluster's slots; known ones keep their state. */
  addHosts(hosts: readonly { readonly name: string; readonly spare: boolean }[]): void {
    for (const h of hosts) {
      if (!this.#hostStates.has(h.name)) this.#hostStates.set(h.name, 'up');
      this.#spares.set(h.name, h.spare);
    }
  }

  // ---- registry ----

  registerJob(desc: JobDescriptionInput): void {
    if (this.#closed) throw new OperationRefusedError('the controller is shutting down');
    const existing = this.#jobs.get(desc.id);
    if (existing && existing.state !== 'finished' && existing.state !== 'failed') {
      throw new OperationRefusedError(`job ${desc.id} is already registered and running`);
    }
    // an embedded controller's logger is already the job's (pino would repeat the key)
    const log = this.#log.bindings().job === desc.id ? this.#log : this.#log.child({ job: desc.id });
    const job: JobEntry = {
      id: desc.id,
      command: desc.command,
      np: desc.np,
      startedAt: Date.now(),
      state: 'starting',
      exitCode: null,
      nodes: new Map(),
      vms: new Map(),
      quiescer: new JobQuiescer([], { stallMs: this.options.quiesce.stallMs, log }),
      queue: new PQueue({ concurrency: 1 }),
      current: null,
      held: null,
      cancelQueued: null,
      journal: new JobJournal(this.options.stateDir, desc.id, (m) => log.error(m + ' (the journal is incomplete from here on)')),
      lastCheckpoint: null,
      measured: { checkpointMs: [], restartMs: [] },
      log,
      vmJob: null,
    };
    this.#jobs.set(desc.id, job);
    this.#record(job, 'job-started', { command: desc.command, np: desc.np, launcherPid: desc.launcherPid });
  }

  /**
   * A node (agent) of the job is reachable; the job runs once it has one. A
   * node that attaches again under the same name (an agent that reconnected)
   * replaces its old link, which is closed.
   */
  attachNode(jobId: string, participant: QuiesceParticipant & { close?(why: string): void }): void {
    const job = this.#job(jobId);
    if (job.current && !job.current.finished) throw new OperationRefusedError(`job ${jobId}: a node cannot join during ${job.current.kind}`);
    const old = job.nodes.get(participant.node) as (QuiesceParticipant & { close?(why: string): void }) | undefined;
    if (old && old !== participant) old.close?.('replaced by a new connection of the same node');
    job.nodes.set(participant.node, participant);
    job.quiescer.setParticipants([...job.nodes.values()]);
    if (job.state === 'starting') job.state = 'running';
    this.#record(job, 'node-attached', { node: participant.node, ...(old ? { replaced: true } : {}) });
  }

  /**
   * The job runs in VMs: its nodes are the VMs' agent links (stable across
   * moves), and checkpoint / migrate / restart act through `backend`.
   */
  attachVmJob(jobId: string, input: VmJobInput): void {
    const job = this.#job(jobId);
    job.vmJob = { job: job.id, command: job.command, np: job.np, backend: input.backend, links: input.links, quiescer: job.quiescer, log: job.log, checkpointDir: input.checkpointDir, keep: input.keep };
    for (const l of input.links.values()) this.attachNode(jobId, l);
    this.#syncVms(job);
  }

  #syncVms(job: JobEntry): void {
    if (!job.vmJob) return;
    try {
      const now = job.vmJob.backend.list();
      job.vms.clear();
      for (const v of now) job.vms.set(v.id, { id: v.id, host: v.host, memoryBytes: v.memoryBytes });
    } catch (err) {
      job.log.warn({ err: (err as Error).message }, 'cannot list the job\'s VMs');
    }
  }

  /** The node's link is gone. Only that link: a newer one of the same node stays. */
  detachNode(jobId: string, node: string, why: string, link?: QuiesceParticipant): void {
    const job = this.#jobs.get(jobId);
    if (!job) return;
    const cur = job.nodes.get(node);
    if (cur === undefined || (link !== undefined && cur !== link)) return;
    job.nodes.delete(node);
    // during an operation the quiescer keeps its nodes (the gone one fails it); synced after
    if (!job.current || job.current.finished) job.quiescer.setParticipants([...job.nodes.values()]);
    this.#record(job, 'node-detached', { node, reason: why });
  }

  /** Queued operations of a job that will not run (job ended, controller closing) end cancelled. */
  #cancelQueued(job: JobEntry, why: string): void {
    job.cancelQueued = why;
  }

  jobFinished(jobId: string, exitCode: number): void {
    const job = this.#jobs.get(jobId);
    if (!job) return;
    job.exitCode = exitCode;
    job.state = exitCode === 0 ? 'finished' : 'failed';
    job.held = null;
    job.quiescer.close();
    this.#cancelQueued(job, `job ${jobId} ended`);
    this.#record(job, 'job-finished', { exitCode });
  }

  /** Record something that happened to a job (health events, failures, decisions). */
  journal(jobId: string, type: string, data: Record<string, unknown>): void {
    const job = this.#jobs.get(jobId);
    if (job) this.#record(job, type, data);
  }

  #record(job: JobEntry, type: string, data: Record<string, unknown>): void {
    const e = job.journal.event(type, data);
    this.emit('journal', e);
  }

  #job(jobId: string | undefined): JobEntry {
    if (jobId === undefined) {
      const live = [...this.#jobs.values()].filter((j) => j.state !== 'finished' && j.state !== 'failed');
      if (live.length === 1) return live[0]!;
      throw new UnknownJobError(live.length === 0 ? 'no running job' : `several jobs are running; name one with --job: ${live.map((j) => j.id).join(', ')}`);
    }
    const job = this.#jobs.get(jobId);
    if (!job) throw new UnknownJobError(`no job '${jobId}' (known: ${[...this.#jobs.keys()].join(', ') || 'none'})`);
    return job;
  }

  jobIds(): string[] {
    return [...this.#jobs.keys()];
  }

  journalDir(jobId: string): string {
    return this.#job(jobId).journal.dir;
  }

  /** Mark a host (health policies drain it; a failure downs it); jobs with VMs there journal it. */
  setHostState(host: string, state: HostState, reason = ''): void {
    const was = this.#hostStates.get(host);
    this.#hostStates.set(host, state);
    if (was === state) return;
    this.#log.info({ host, state, was, reason }, `host ${host} is ${state}`);
    for (const job of this.#jobs.values()) {
      if (job.state === 'finished' || job.state === 'failed') continue;
      this.#record(job, 'host-state', { host, state, ...(was ? { was } : {}), reason });
    }
  }

  hostState(host: string): HostState | undefined {
    return this.#hostStates.get(host);
  }

  /** Places a VM may be started in now: free in the backend and neither down, drained nor degraded here. */
  #usablePlaces(ctx: VmJobContext, exclude: ReadonlySet<string> = new Set()): string[] {
    return ctx.backend.freePlaces().filter((p) => !exclude.has(p) && (this.#hostStates.get(p) ?? 'up') === 'up');
  }

  /**
   * A migration of the job is under way towards `from`, which turned bad:
   * send the VMs going there to `to` (default: a usable free place) instead.
   */
  async retarget(jobId: string, from: string, to: string | undefined, reason: string): Promise<string> {
    const job = this.#job(jobId);
    const ctx = job.vmJob;
    const op = job.current;
    if (!ctx || !op || op.finished || op.kind !== 'migrate' || !ctx.inFlight) throw new OperationRefusedError(`job ${job.id} has no migration under way to retarget`);
    const targets = ctx.inFlight.targets();
    const dest = to ?? this.#usablePlaces(ctx, new Set([from, ...Object.values(targets)]))[0];
    if (!dest) throw new OperationRefusedError(`no usable free ${ctx.backend.placeKind} to send ${job.id}'s VMs to instead of ${from}`);
    ctx.inFlight.retarget(from, dest, reason);
    this.#record(job, 'retarget', { op: op.id, from, to: dest, reason });
    return dest;
  }

  // ---- views ----

  #jobView(job: JobEntry): JobView {
    const mean = (xs: number[]): number | null => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
    const targets = job.vmJob?.inFlight?.targets();
    return {
      id: job.id,
      state: job.current && !job.current.finished ? 'operating' : job.state,
      startedAt: job.startedAt,
      ranks: job.np ?? 0,
      vms: [...job.vms.values()].map((v) => ({ ...v })),
      operation: job.current && !job.current.finished ? { kind: job.current.kind, phase: String(job.current.phase), ...(targets ? { targets } : {}) } : null,
      lastCheckpoint: job.lastCheckpoint,
      measured: {
        checkpointMs: mean(job.measured.checkpointMs),
        restartMs: mean(job.measured.restartMs),
        migrationBandwidthBps: null,
        dirtyRateBps: null,
      },
    };
  }

  view(): ClusterView {
    return {
      now: Date.now(),
      hosts: [...this.#hostStates].map(([name, state]) => ({ name, state, spare: this.#spares.get(name) ?? false })),
      jobs: [...this.#jobs.values()].map((j) => this.#jobView(j)),
    };
  }

  /** What `symbio status` shows: the job, its nodes' ranks, its queue. */
  async status(jobId?: string): Promise<Record<string, unknown>> {
    const job = this.#job(jobId);
    const nodes = await Promise.all(
      [...job.nodes.values()].map(async (p) => {
        try {
          const r = await p.report(true); // now, not the last pushed one (pushes stop when nothing is under way)
          const hb = (p as { lastHeartbeat?: { receivedAt: number } | null }).lastHeartbeat;
          return {
            node: p.node,
            epoch: r.snapshot.epoch,
            command: r.snapshot.command,
            ...(hb ? { heartbeatAgeMs: Date.now() - hb.receivedAt } : {}),
            ranks: r.snapshot.ranks,
          };
        } catch (err) {
          return { node: p.node, error: (err as Error).message, ranks: [] };
        }
      }),
    );
    return {
      job: this.#jobView(job),
      command: job.command,
      held: job.held,
      queued: job.queue.size,
      exitCode: job.exitCode,
      journal: job.journal.dir,
      nodes,
    };
  }

  // ---- operations ----

  /**
   * Carry out one operation on a job. Resolves with the operation's record
   * (ok or not) once it ends; rejects with OperationRefusedError, having done
   * nothing, when the request cannot be accepted.
   */
  async request(req: OperationRequestInput): Promise<OperationSummary> {
    if (this.#closed) throw new OperationRefusedError('the controller is shutting down');
    const job = this.#job(req.job);
    if (job.state === 'finished' || job.state === 'failed') throw new OperationRefusedError(`job ${job.id} has ended (exit code ${job.exitCode})`);
    if (VM_KINDS.has(req.kind) && job.vms.size === 0) {
      throw new OperationRefusedError(
        `job ${job.id} runs in no VM (its ranks are processes of this host): ${req.kind} acts on a job's VMs through a hypervisor driver, and this job has none`,
      );
    }
    if (job.held && req.kind !== 'resume' && job.queue.size === 0 && !(job.current && !job.current.finished)) {
      throw new OperationRefusedError(`job ${job.id} is already ${job.held === 'freeze' ? 'frozen' : 'held'} by an operator; resume it first`);
    }
    const busy = job.current !== null && !job.current.finished;
    if (busy || job.queue.size > 0) {
      const what = job.current ? `${job.current.kind} ${job.current.id} is ${String(job.current.phase)}` : 'operations are queued';
      if (this.options.whenBusy === 'refuse') throw new OperationRefusedError(`job ${job.id} is busy: ${what}`);
      if (job.queue.size >= this.options.queueLimit) {
        throw new OperationRefusedError(`job ${job.id} is busy (${what}) and ${job.queue.size} requests already wait (queue limit ${this.options.queueLimit})`);
      }
    }
    const op = new Operation({ job: job.id, kind: req.kind, requestedBy: req.requestedBy, reason: req.reason ?? `requested by ${req.requestedBy}` });
    op.onTransition((o) => {
      this.#record(job, 'operation-phase', { op: o.id, kind: o.kind, phase: String(o.phase) });
      req.onProgress?.(o.record());
    });
    this.#record(job, 'operation-requested', { op: op.id, kind: op.kind, requestedBy: op.requestedBy, reason: op.reason, ...(req.params ? { params: req.params } : {}), queuedBehind: job.queue.size + (busy ? 1 : 0) });
    return job.queue.add(async () => {
      job.current = op;
      try {
        if (job.cancelQueued !== null) op.abort(new Error(`not run: ${job.cancelQueued}`));
        else await this.#run(job, op, req.timeoutMs ?? this.options.quiesce.timeoutMs, req.params ?? {});
      } catch (err) {
        // #run handles its own failures; this is a bug or a refused transition
        job.log.error({ op: op.id, err: (err as Error).message }, 'operation ended unexpectedly');
        if (!op.finished) op.abort(err);
      }
      // nodes that left during the operation leave the quiescer now
      if (job.quiescer.participants.length !== job.nodes.size || job.quiescer.participants.some((p) => job.nodes.get(p.node) !== p)) {
        try {
          job.quiescer.setParticipants([...job.nodes.values()]);
        } catch {
          // still busy (cannot happen after #run returned): next attach/detach syncs
        }
      }
      const rec = op.record();
      job.journal.operation(rec);
      this.#record(job, 'operation', { op: op.id, kind: op.kind, ok: rec.ok, durationMs: rec.durationMs, error: rec.error, phases: rec.phases });
      job.log.info({ op: op.id, kind: op.kind, ok: rec.ok, ms: Math.round(rec.durationMs), error: rec.error }, `${op.kind} ${rec.ok ? 'done' : 'failed'}`);
      this.emit('operation-finished', rec);
      return rec;
    }) as Promise<OperationSummary>;
  }

  async #run(job: JobEntry, op: Operation, timeoutMs: number, params: Readonly<Record<string, unknown>>): Promise<void> {
    const vmJob = job.vmJob;
    if (vmJob && VM_KINDS.has(op.kind) && job.held) {
      op.fail(new Error(`job ${job.id} is ${job.held === 'freeze' ? 'frozen' : 'held'} by an operator; resume it first`));
      op.to('cancelled');
      return;
    }
    switch (op.kind) {
      case 'quiesce':
      case 'freeze':
        return this.#quiesceOp(job, op as Operation<'quiesce' | 'freeze'>, timeoutMs);
      case 'resume':
        return this.#resumeOp(job, op as Operation<'resume'>);
      case 'migrate':
      case 'checkpoint':
      case 'restart':
        if (vmJob) return this.#vmOp(job, vmJob, op, timeoutMs, params);
        op.fail(new Error(`${op.kind} needs a hypervisor driver, and none is configured`));
        op.to('cancelled');
        return;
      default:
        // checkpoint / migrate / restart were refused in request() for jobs
        // without VMs; VM-backed jobs arrive with the hypervisor driver.
        op.fail(new Error(`${op.kind} needs a hypervisor driver, and none is configured`));
        op.to('cancelled');
    }
  }

  /**
   * Where VMs go when the request does not say: places that are free and up
   * (never a down, drained or degraded host). A restart's `hosts` (a
   * policy's decision: the job's hosts in order, failed ones replaced) become
   * per-VM places; VMs whose host is fine restart where they were.
   */
  #placement(job: JobEntry, ctx: VmJobContext, kind: OperationKind, params: Readonly<Record<string, unknown>>): Record<string, unknown> {
    const out: Record<string, unknown> = { ...params };
    const vms = [...job.vms.values()];
    if (kind === 'migrate' && out.to === undefined) {
      const n = Array.isArray(out.vms) ? out.vms.length : 1;
      const usable = this.#usablePlaces(ctx);
      if (usable.length < n) throw new OperationRefusedError(`no usable free ${ctx.backend.placeKind} for ${n} VM${n === 1 ? '' : 's'} of job ${job.id} (free and up: ${usable.join(', ') || 'none'})`);
      out.to = usable.slice(0, n);
    }
    if (kind === 'restart' && out.places === undefined) {
      const places: Record<string, string> = {};
      if (Array.isArray(out.hosts)) {
        const hosts = [...new Set(vms.map((v) => v.host))];
        hosts.forEach((h, i) => {
          const dest = (out.hosts as unknown[])[i];
          if (typeof dest === 'string') for (const v of vms) if (v.host === h) places[v.id] = dest;
        });
      } else {
        const taken = new Set<string>();
        const free = () => this.#usablePlaces(ctx, taken);
        for (const v of vms) {
          const ok = (this.#hostStates.get(v.host) ?? 'up') === 'up';
          const place = ok ? v.host : free()[0];
          if (place) {
            places[v.id] = place;
            taken.add(place);
          }
        }
      }
      out.places = places;
      delete out.hosts;
    }
    return out;
  }

  async #vmOp(job: JobEntry, ctx: VmJobContext, op: Operation, timeoutMs: number, paramsIn: Readonly<Record<string, unknown>>): Promise<void> {
    try {
      const params = this.#placement(job, ctx, op.kind, paramsIn);
      if (op.kind === 'migrate') await cooperativeMigrate(ctx, op, { ...params }, timeoutMs);
      else if (op.kind === 'checkpoint') {
        const path = await coordinatedCheckpoint(ctx, op, timeoutMs);
        if (path) {
          const rec = op.record();
          job.lastCheckpoint = { id: path, at: Date.now(), durationMs: rec.durationMs };
          // what the application saw: frozen from the first hold to the resume
          job.measured.checkpointMs.push(rec.durationMs);
        }
      } else {
        // without a manifest: the newest complete checkpoint in the job's directory (the last one taken)
        await restartFromCheckpoint(ctx, op, { ...params });
        if (op.record().ok) job.measured.restartMs.push(op.record().durationMs);
      }
    } catch (err) {
      // a refused request (bad parameters) before any phase
      if (!op.finished) op.abort(err);
    } finally {
      this.#syncVms(job);
    }
  }

  async #quiesceOp(job: JobEntry, op: Operation<'quiesce' | 'freeze'>, timeoutMs: number): Promise<void> {
    if (job.held) {
      op.fail(new Error(`job ${job.id} is already ${job.held === 'freeze' ? 'frozen' : 'held'}; resume it first`));
      op.to('cancelled');
      return;
    }
    const freeze = op.kind === 'freeze';
    op.to('quiescing');
    let outcome: QuiesceOutcome;
    try {
      outcome = await job.quiescer.quiesce({ freeze, timeoutMs });
    } catch (err) {
      // the quiescer has already resumed every node
      op.fail(err);
      op.to('rolling-back');
      op.to('failed');
      return;
    }
    const hold = outcome.phases.find((p) => p.name === 'hold');
    op.note({ epoch: outcome.epoch, ms: hold?.ms, catchupRounds: outcome.catchupRounds, messages: outcome.summary.messages, ranks: outcome.summary.held });
    if (freeze) {
      (op as Operation<'freeze'>).to('freezing');
      op.note({ ms: outcome.phases.find((p) => p.name === 'freeze')?.ms, ranksFrozenMs: outcome.ranksFrozenMs });
    }
    op.result = outcome;
    job.held = freeze ? 'freeze' : 'hold';
    op.to('done');
  }

  async #resumeOp(job: JobEntry, op: Operation<'resume'>): Promise<void> {
    op.to('resuming');
    try {
      const r = await job.quiescer.resume();
      job.held = null;
      op.result = r;
      op.note({ resumeMs: r.resumeMs, ranksResumedMs: r.ranksResumedMs, ...(r.selfResumed ? { selfResumed: r.selfResumed } : {}) });
      if (r.frozenCheck && !r.frozenCheck.ok && !r.selfResumed) {
        // The ranks run again; what failed is the proof that nothing moved while frozen.
        op.fail(new Error(`frozen-interval check failed: ${r.frozenCheck.reason}`));
        op.to('failed');
        return;
      }
      op.to('done');
    } catch (err) {
      job.held = null;
      op.fail(err);
      op.to('failed');
    }
  }

  /** What plugins get: the record without the controller's extras. */
  static pluginRecord(rec: OperationSummary): OperationRecord {
    const { id, job, kind, ok, error, startedAt, durationMs, phases, requestedBy, reason } = rec;
    return { id, job, kind, ok, ...(error === undefined ? {} : { error }), startedAt, durationMs, phases, requestedBy, reason };
  }

  /**
   * Stop accepting work, let every held job run again and wait for running
   * operations to end (they roll back on their own if their nodes go away).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const job of this.#jobs.values()) this.#cancelQueued(job, 'the controller is shutting down');
    await Promise.all(
      [...this.#jobs.values()].map(async (job) => {
        job.quiescer.close(); // a quiesce under way ends at its next step, resuming what it held
        await job.queue.onIdle(); // queued ones end cancelled
        if (job.held !== null || job.quiescer.operating) {
          try {
            await job.quiescer.resume();
          } catch (err) {
            job.log.warn({ err: (err as Error).message }, 'resume at shutdown failed');
          }
        }
        job.held = null;
      }),
    );
  }
}
