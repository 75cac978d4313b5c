/**
 * The plugin host: runs the configured plugins against a controller. Health
 * monitors are sampled on their own intervals; their events and symbio's own
 * failure detections go to the policies (observers first, then a
 * first-result-wins decision), and decisions become controller operations.
 * Every event and decision is journaled under the jobs it concerns.
 */
import { Controller } from '../controller/controller.js';
import type { OperationSummary } from '../controller/operation.js';
import { PluginDriver, type ConfiguredPlugin } from './plugin-driver.js';
import type { Decision, FailureEvent, HealthEvent, OperationRecord, PluginActions } from './plugin-api.js';
import type { Logger } from '../log.js';

export interface HostedPlugin extends ConfiguredPlugin {
  /** Where it came from (the configuration's `use:`), for listings. */
  readonly spec: string;
  /** Sampling period of a health monitor, ms. */
  readonly intervalMs: number;
}

export interface PluginHostOptions {
  readonly controller: Controller;
  readonly log: Logger;
  readonly hookTimeoutMs: number;
}

export interface PluginListing {
  readonly name: string;
  readonly version: string;
  readonly kind: string;
  readonly spec: string;
  readonly hooks: readonly string[];
  readonly disabled: boolean;
  readonly failures: number;
}

/** The operation parameters a decision carries (which VMs, where to, from which checkpoint). */
function decisionParams(d: Decision): Record<string, unknown> {
  switch (d.action) {
    case 'migrate':
      return { vms: d.vms, ...(d.to ? { to: d.to } : {}), ...(d.mode ? { mode: d.mode } : {}) };
    case 'restart':
      return { ...(d.checkpoint ? { manifest: d.checkpoint } : {}), ...(d.hosts ? { hosts: d.hosts } : {}) };
    default:
      return {};
  }
}

export class PluginHost {
  readonly driver: PluginDriver;
  readonly #controller: Controller;
  readonly #log: Logger;
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #sampling = new Set<string>();
  #specs = new Map<string, string>();
  #closed = false;
  /** Host -> the conditions (monitor, component) that made it degraded. */
  readonly #degradedBy = new Map<string, Set<string>>();
  readonly #onOperation = (rec: OperationSummary): void => void this.#operationFinished(rec);

  constructor(options: PluginHostOptions) {
    this.#controller = options.controller;
    this.#log = options.log;
    this.driver = new PluginDriver({ log: options.log, hookTimeoutMs: options.hookTimeoutMs, actions: (name) => this.#actionsFor(name) });
  }

  #actionsFor(plugin: string): PluginActions {
    return {
      request: (d) => this.execute(d, plugin),
      view: () => this.#controller.view(),
    };
  }

  async start(plugins: readonly HostedPlugin[]): Promise<void> {
    this.#specs = new Map(plugins.map((p) => [p.plugin.name, p.spec]));
    await this.driver.start(plugins);
    this.#controller.on('operation-finished', this.#onOperation);
    for (const p of plugins) {
      if (p.plugin.kind !== 'health-monitor') continue;
      const name = p.plugin.name;
      const timer = setInterval(() => void this.sampleNow(name), p.intervalMs);
      timer.unref();
      this.#timers.push(timer);
    }
    this.#log.info({ plugins: plugins.map((p) => p.plugin.name) }, 'plugins started');
  }

  list(): PluginListing[] {
    return this.driver.plugins().map((p) => ({ ...p, spec: this.#specs.get(p.name) ?? '' }));
  }

  /** Sample one monitor now (its timer calls this; tests too). Overlapping samples are skipped. */
  async sampleNow(monitor: string): Promise<readonly HealthEvent[]> {
    if (this.#closed || this.#sampling.has(monitor)) return [];
    this.#sampling.add(monitor);
    let events: HealthEvent[];
    try {
      const r = await this.driver.hookFor(monitor, 'sample');
      if (!r.ok || !Array.isArray(r.value)) return [];
      events = (r.value as HealthEvent[]).map((e) => ({ ...e, monitor: e.monitor || monitor }));
    } catch (err) {
      // failure policy 'abort' on a monitor: there is no caller to abort, so log it loudly
      this.#log.error({ monitor, err: (err as Error).message }, 'health monitor failed');
      return [];
    } finally {
      // sampling goes on while the decisions these events lead to are carried out
      this.#sampling.delete(monitor);
    }
    for (const e of events) await this.health(e);
    return events;
  }

  /** Jobs a host's trouble concerns: those with a VM there or migrating there; a job without VMs runs on this host. */
  #jobsOn(host: string | undefined): string[] {
    return this.#controller
      .view()
      .jobs.filter((j) => j.state !== 'finished' && j.state !== 'failed')
      // a host matters to a job that runs there, or whose VMs are on their way there
      .filter((j) => host === undefined || j.vms.length === 0 || j.vms.some((v) => v.host === host) || Object.values(j.operation?.targets ?? {}).includes(host))
      .map((j) => j.id);
  }

  /**
   * A health event: journal it, tell observers, ask the policies. A decision
   * that moved work away is followed by asking again with the same event and
   * the new view, so the policy can finish the job (drain the host it left)
   * without waiting for the monitor's next sample; at most a few rounds.
   */
  async health(event: HealthEvent): Promise<OperationRecord | null> {
    const jobs = this.#jobsOn(event.host);
    for (const j of jobs) this.#controller.journal(j, 'health', { ...event });
    await this.driver.hookParallel('healthEvent', event);
    this.#trackDegraded(event);
    if (event.severity === 'info') return null;
    let first: OperationRecord | null = null;
    for (let round = 0; round < 3 && !this.#closed; round++) {
      const d = await this.driver.hookFirst<Decision>('decideOnHealth', event, this.#controller.view());
      if (!d) break;
      const { record } = await this.#carryOut(d.result, d.plugin);
      first ??= record;
      if (d.result.action !== 'migrate' || !record?.ok) break;
    }
    return first;
  }

  /**
   * A failure symbio detected itself (rank died, QEMU gone, ...): journal it
   * under the jobs it concerns and let the first policy that decides act.
   * Returns the decision (null: no policy decided) and the operation it led to.
   */
  async failure(failure: FailureEvent): Promise<{ decision: Decision | null; by: string | null; record: OperationRecord | null }> {
    const jobs = failure.job ? [failure.job] : this.#jobsOn(failure.host);
    for (const j of jobs) this.#controller.journal(j, 'failure', { ...failure });
    const d = await this.driver.hookFirst<Decision>('decideOnFailure', failure, this.#controller.view());
    if (!d) return { decision: null, by: null, record: null };
    return { decision: d.result, by: d.plugin, ...(await this.#carryOut(d.result, d.plugin)) };
  }

  /**
   * A host a monitor says is about to fail takes no new VMs (policies see it
   * in the view): a critical event marks an `up` host degraded. It is `up`
   * again once every condition that degraded it has been reported back to
   * normal (an info event for the same monitor and component), unless
   * something else (a drain, a failure) has changed its state meanwhile.
   */
  #trackDegraded(event: HealthEvent): void {
    const key = `${event.monitor}\u0000${event.component}`;
    const state = this.#controller.hostState(event.host);
    if (event.severity === 'critical' && (state === 'up' || state === 'degraded')) {
      const by = this.#degradedBy.get(event.host) ?? new Set<string>();
      by.add(key);
      this.#degradedBy.set(event.host, by);
      if (state === 'up') this.#controller.setHostState(event.host, 'degraded', `${event.monitor}: ${event.component}: ${event.message}`);
    } else if (event.severity === 'info') {
      const by = this.#degradedBy.get(event.host);
      if (!by?.delete(key) || by.size > 0) return;
      this.#degradedBy.delete(event.host);
      if (state === 'degraded') this.#controller.setHostState(event.host, 'up', `${event.monitor}: ${event.component}: ${event.message}`);
    }
  }

  /** Carry out a policy's decision. Refusals are journaled and returned as null, not thrown. */
  async execute(decision: Decision, by: string): Promise<OperationRecord | null> {
    return (await this.#carryOut(decision, by)).record;
  }

  async #carryOut(decision: Decision, by: string): Promise<{ record: OperationRecord | null; refused?: string }> {
    const jobs = 'job' in decision ? [decision.job] : this.#jobsOn(decision.action === 'drain-host' ? decision.host : undefined);
    for (const j of jobs) this.#controller.journal(j, 'decision', { by, ...decision });
    this.#log.info({ by, decision }, `decision: ${decision.action}`);
    const refused = (job: string, err: unknown): { record: null; refused: string } => {
      const reason = (err as Error).message;
      this.#controller.journal(job, 'decision-refused', { by, action: decision.action, reason });
      this.#log.warn({ by, action: decision.action, err: reason }, 'decision not carried out');
      return { record: null, refused: reason };
    };
    switch (decision.action) {
      case 'none':
        return { record: null };
      case 'drain-host':
        this.#controller.setHostState(decision.host, 'drained', `${by}: ${decision.reason}`);
        return { record: null };
      case 'retarget':
        try {
          await this.#controller.retarget(decision.job, decision.from, decision.to, `${by}: ${decision.reason}`);
          return { record: null };
        } catch (err) {
          return refused(decision.job, err);
        }
      case 'checkpoint':
      case 'migrate':
      case 'restart':
        try {
          const rec = await this.#controller.request({ job: decision.job, kind: decision.action, requestedBy: by, reason: decision.reason, params: decisionParams(decision) });
          return { record: Controller.pluginRecord(rec) };
        } catch (err) {
          return refused(decision.job, err);
        }
    }
  }

  async #operationFinished(rec: OperationSummary): Promise<void> {
    try {
      await this.driver.hookParallel('operationFinished', Controller.pluginRecord(rec), this.#controller.view());
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'operationFinished observer failed');
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    this.#controller.off('operation-finished', this.#onOperation);
    await this.driver.teardown();
  }
}
