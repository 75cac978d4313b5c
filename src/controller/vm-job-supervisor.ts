/**
 * Turns failures of a running VM job into at most one action each, and
 * tells the launcher whether an exit of mpirun is the job's real end.
 *
 * One fault arrives as several signals: a VM's QEMU dies, then its agent is
 * silent, then mpirun in another VM may give up and exit non-zero. The first
 * signal opens a *fault*; signals while it is being dealt with are journaled
 * as part of it and never acted on again. A fault of
 * the machine under the job (QEMU gone, QMP dead, agent lost) marks the
 * VM's host down (QEMU gone, QMP dead) and goes to the policies; a fault of
 * the job itself on healthy machines (a rank died, mpirun exited non-zero
 * with no machine fault in sight) goes to them too, as a job failure.
 *
 * A fault ends *recovered* when the operation a policy chose (a restart
 * from checkpoint) succeeded; exits that mpirun reported before that belong
 * to the job's previous life and are superseded. It ends *lost* when no
 * policy acted or the action failed: the launcher then ends with a clear
 * reason instead of waiting for VMs that will not come back.
 */
import { EventEmitter } from 'node:events';
import { failureOfJob, type FailureEvent } from '../host/plugin-api.js';
import type { PluginHost } from '../host/plugin-host.js';
import type { Controller } from './controller.js';
import { FailureDetector, type FailureDetectorOptions } from './failure-detector.js';
import type { Logger } from '../log.js';

export type FaultOutcome =
  | { readonly kind: 'recovered'; readonly by: string; readonly operation: string }
  /** A job failure that no policy chose to act on: the job's exit code stands. */
  | { readonly kind: 'job-failed'; readonly reason: string }
  | { readonly kind: 'lost'; readonly reason: string };

export interface VmJobSupervisorOptions extends Omit<FailureDetectorOptions, 'onFailure' | 'busy' | 'log'> {
  readonly controller: Controller;
  readonly plugins: PluginHost | null;
  readonly log: Logger;
  /** How long a non-zero exit waits for a machine fault to show before it counts as the job's own, ms. */
  readonly exitGraceMs?: number;
}

export interface VmJobSupervisorEvents {
  fault: [FailureEvent];
  outcome: [FaultOutcome];
}

interface Fault {
  readonly first: FailureEvent;
  readonly outcome: Promise<FaultOutcome>;
  settled: FaultOutcome | null;
}

/** Machine faults that mean the place the VM ran in is gone. */
const HOST_DOWN: ReadonlySet<FailureEvent['kind']> = new Set(['qemu-gone', 'qmp-dead', 'host-down']);

export class VmJobSupervisor extends EventEmitter<VmJobSupervisorEvents> {
  readonly detector: FailureDetector;
  readonly #o: VmJobSupervisorOptions;
  readonly #log: Logger;
  #fault: Fault | null = null;
  /** Bumped by every recovery: an exit seen in an older generation is superseded. */
  #generation = 0;
  #lost: ((o: FaultOutcome & { kind: 'lost' }) => void) | null = null;
  /** Resolves when a fault could not be recovered from. */
  readonly lost: Promise<FaultOutcome & { kind: 'lost' }>;
  #stopped = false;
  /** Policies are being asked, or their action runs: the detector holds its judgement. */
  #acting = false;

  constructor(o: VmJobSupervisorOptions) {
    super();
    this.#o = o;
    this.#log = o.log.child({ component: 'supervisor' });
    this.lost = new Promise((resolve) => (this.#lost = resolve));
    this.detector = new FailureDetector({
      ...o,
      log: o.log.child({ component: 'failure-detector' }),
      busy: () => this.#busy(),
      onFailure: (f) => this.report(f),
    });
  }

  /** An operation on the job runs (the controller's view says so), or a fault is being dealt with. */
  #busy(): boolean {
    const job = this.#o.controller.view().jobs.find((j) => j.id === this.#o.job);
    return job?.operation != null || this.#acting;
  }

  start(): void {
    this.detector.start();
  }

  stop(): void {
    this.#stopped = true;
    this.detector.stop();
  }

  get generation(): number {
    return this.#generation;
  }

  /** A failure signal (from the detector, a rank's death, an exit). Starts handling it unless it is part of an open fault. */
  report(f: FailureEvent): Promise<FaultOutcome> {
    const open = this.#fault;
    if (open && open.settled === null) {
      this.#o.controller.journal(this.#o.job, 'failure', { ...f, sameFaultAs: open.first.kind, acted: false });
      this.#log.info({ kind: f.kind, vm: f.vm, fault: open.first.kind }, 'part of a fault already being dealt with');
      return open.outcome;
    }
    this.emit('fault', f);
    const fault: Fault = { first: f, outcome: this.#handle(f), settled: null };
    this.#fault = fault;
    void fault.outcome.then((o) => {
      fault.settled = o;
      this.emit('outcome', o);
    });
    return fault.outcome;
  }

  /** How long a job-level signal (rank dead, mpirun exited) waits for a machine fault to show, ms. */
  get #graceMs(): number {
    return this.#o.exitGraceMs ?? (this.#o.agentLostMs ?? 6_000) + 2_000;
  }

  async #handle(first: FailureEvent): Promise<FaultOutcome> {
    const { controller } = this.#o;
    let f = first;
    if (failureOfJob(f)) {
      // A VM that dies often shows first as ranks dying or mpirun giving up
      // elsewhere: look for a machine fault before calling it the job's own.
      const machine = await this.#machineFaultWithin(this.#graceMs);
      if (machine) {
        controller.journal(this.#o.job, 'failure', { ...f, sameFaultAs: machine.kind, acted: false });
        this.#log.info({ signal: f.kind, fault: machine.kind, vm: machine.vm }, 'the job failed because a VM did');
        f = machine;
      }
    }
    this.#acting = true;
    try {
      return await this.#act(f);
    } finally {
      this.#acting = false;
    }
  }

  async #machineFaultWithin(ms: number): Promise<FailureEvent | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const open = [...this.detector.failed.values()][0];
      if (open) return open.event;
      if (Date.now() >= deadline || this.#stopped) return null;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async #act(f: FailureEvent): Promise<FaultOutcome> {
    const { controller, plugins } = this.#o;
    if (HOST_DOWN.has(f.kind) && f.host) controller.setHostState(f.host, 'down', f.message);
    let outcome: FaultOutcome;
    if (!plugins) {
      controller.journal(this.#o.job, 'failure', { ...f });
      outcome = failureOfJob(f)
        ? { kind: 'job-failed', reason: f.message }
        : { kind: 'lost', reason: `${f.message}; no policy is configured to act on failures (add symbio/plugins/policies/restart-on-failure and periodic-checkpoint to the configuration)` };
    } else {
      try {
        const r = await plugins.failure(f);
        if (r.record?.kind === 'restart' && r.record.ok) {
          this.#generation++;
          outcome = { kind: 'recovered', by: r.by ?? 'policy', operation: r.record.id };
        } else {
          const why = r.record && !r.record.ok
            ? `${r.record.kind} by ${r.by} failed: ${r.record.error ?? 'unknown error'}`
            : r.decision
              ? `${r.by} decided ${r.decision.action}: ${r.decision.reason}`
              : 'no policy decided anything about it';
          outcome = failureOfJob(f) ? { kind: 'job-failed', reason: `${f.message}; ${why}` } : { kind: 'lost', reason: `${f.message}; ${why}` };
        }
      } catch (err) {
        outcome = { kind: 'lost', reason: `${f.message}; the failure policies failed: ${(err as Error).message}` };
      }
    }
    this.#log[outcome.kind === 'recovered' ? 'info' : 'error']({ outcome }, `fault ${f.kind}: ${outcome.kind}`);
    if (outcome.kind === 'lost' && !this.#stopped) this.#lost?.(outcome);
    return outcome;
  }

  /**
   * mpirun exited with `code` (seen in generation `generation`). 'final': it
   * is the job's end; 'superseded': a restart brought the job back from a
   * checkpoint since (or because of) it, so wait for the next exit; 'lost':
   * a fault ended the job (see `lost`).
   */
  async settleExit(code: number, generation: number): Promise<'final' | 'superseded' | 'lost'> {
    // the job finished: whatever else is going on, its answer is in
    if (code === 0) return 'final';
    if (generation < this.#generation) return 'superseded';
    const outcome = await (this.#openFault() ?? this.report({ kind: 'job-aborted', job: this.#o.job, message: `mpirun exited with code ${code}`, at: Date.now() }));
    if (outcome.kind === 'recovered' || generation < this.#generation) return 'superseded';
    return outcome.kind === 'lost' ? 'lost' : 'final';
  }

  /** The outcome of the fault being dealt with now, if one is. */
  #openFault(): Promise<FaultOutcome> | null {
    return this.#fault && this.#fault.settled === null ? this.#fault.outcome : null;
  }
}
