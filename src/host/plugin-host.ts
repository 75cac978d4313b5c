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

export class PluginHost {
  readonly driver: PluginDriver;
  readonly #controller: Controller;
  readonly #log: Logger;
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #sampling = new Set<string>();
  #specs = new Map<string, string>();
  #closed = false;
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

  /** Jobs a host's trouble concerns: those with a VM there; a job without VMs runs on this host. */
  #jobsOn(host: string | undefined): string[] {
    return this.#controller
      .view()
      .jobs.filter((j) => j.state !== 'finished' && j.state !== 'failed')
      .filter((j) => host === undefined || j.vms.length === 0 || j.vms.some((v) => v.host === host))
      .map((j) => j.id);
  }

  /** A health event: journal it, tell observers, ask the policies. */
  async health(event: HealthEvent): Promise<OperationRecord | null> {
    const jobs = this.#jobsOn(event.host);
    for (const j of jobs) this.#controller.journal(j, 'health', { ...event });
    await this.driver.hookParallel('healthEvent', event);
    if (event.severity === 'info') return null;
    const d = await this.driver.hookFirst<Decision>('decideOnHealth', event, this.#controller.view());
    if (!d) return null;
    return this.execute(d.result, d.plugin);
  }

  /** A failure symbio detected itself (rank died, QEMU gone, ...). */
  async failure(failure: FailureEvent): Promise<OperationRecord | null> {
    const jobs = failure.job ? [failure.job] : this.#jobsOn(failure.host);
    for (const j of jobs) this.#controller.journal(j, 'failure', { ...failure });
    const d = await this.driver.hookFirst<Decision>('decideOnFailure', failure, this.#controller.view());
    if (!d) return null;
    return this.execute(d.result, d.plugin);
  }

  /** Carry out a policy's decision. Refusals are journaled and returned as null, not thrown. */
  async execute(decision: Decision, by: string): Promise<OperationRecord | null> {
    const jobs = 'job' in decision ? [decision.job] : this.#jobsOn(decision.action === 'drain-host' ? decision.host : undefined);
    for (const j of jobs) this.#controller.journal(j, 'decision', { by, ...decision });
    this.#log.info({ by, decision }, `decision: ${decision.action}`);
    switch (decision.action) {
      case 'none':
        return null;
      case 'drain-host':
        this.#controller.setHostState(decision.host, 'drained');
        return null;
      case 'checkpoint':
      case 'migrate':
      case 'restart':
        try {
          const rec = await this.#controller.request({ job: decision.job, kind: decision.action, requestedBy: by, reason: decision.reason });
          return Controller.pluginRecord(rec);
        } catch (err) {
          this.#controller.journal(decision.job, 'decision-refused', { by, action: decision.action, reason: (err as Error).message });
          this.#log.warn({ by, action: decision.action, err: (err as Error).message }, 'decision not carried out');
          return null;
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
