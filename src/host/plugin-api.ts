/**
 * The public plugin API (versioned). A plugin is a plain object made with
 * `definePlugin`; its `setup(ctx)` returns the hooks it implements. Which
 * hooks exist, and whether each is sequential, first-result-wins or
 * parallel, is decided by the host that calls them (see PluginDriver).
 */
import type { z } from 'zod';
import type { Logger } from '../log.js';

export const PLUGIN_API_VERSION = 1;

export type PluginKind = 'policy' | 'health-monitor' | 'hypervisor-driver';

/** What happens when one of the plugin's hooks throws or times out. */
export type FailurePolicy =
  | 'abort' // the error propagates to whoever called the hook
  | 'continue' // logged; the hook counts as not answered
  | { readonly disableAfter: number }; // like continue, and after N failures the plugin is disabled

export interface PluginContext<Options> {
  /** Child logger bound to the plugin's name. */
  readonly log: Logger;
  /** Aborted when the host tears the plugin down. */
  readonly signal: AbortSignal;
  /** The plugin's options, validated against its configSchema. */
  readonly options: Options;
  /** What the plugin may ask the controller to do, and what it may look at. */
  readonly actions: PluginActions;
}

// ---------------------------------------------------------------------------
// Health monitors

/** How bad a health event is. `critical`: failure expected soon (act now). */
export type Severity = 'info' | 'warning' | 'critical';

/** One observation from a health monitor, about one component of one host. */
export interface HealthEvent {
  /** Name of the monitor plugin that produced it (the host fills it in when empty). */
  readonly monitor: string;
  /** Host (node) the event concerns. */
  readonly host: string;
  /** What is affected, e.g. 'memory mc0 csrow1', 'temp coretemp-isa-0000 Package id 0', 'ib mlx5_0 port 1'. */
  readonly component: string;
  readonly severity: Severity;
  /** One human sentence: what was seen and why it matters. */
  readonly message: string;
  /** Predicted time until the component fails, when the monitor can tell (ms). */
  readonly leadTimeMs?: number;
  /** The reading behind the event, when there is one number. */
  readonly value?: number;
  readonly unit?: string;
  /** When it was observed (ms since the epoch). */
  readonly at: number;
}

/**
 * Hooks of a health-monitor plugin. The host calls `sample` every
 * `intervalMs` (from the plugin's configuration entry), under the hook
 * timeout; a monitor keeps whatever state it needs (previous counters for
 * rates) between calls. Events go to every policy.
 */
export interface HealthMonitorHooks extends PluginHooks {
  readonly sample: HookEntry<() => Promise<readonly HealthEvent[]> | readonly HealthEvent[]>;
}

// ---------------------------------------------------------------------------
// Policies

/** A failure detected by symbio itself (not predicted: it happened). */
export interface FailureEvent {
  /**
   * What failed. agent-lost, qemu-gone, qmp-dead and host-down are failures
   * of the machine under the job (a VM or its host: the job itself was
   * fine); rank-dead and job-aborted are failures of the job on machines
   * that are still healthy (see `failureOfJob`).
   */
  readonly kind: 'agent-lost' | 'qemu-gone' | 'qmp-dead' | 'rank-dead' | 'job-aborted' | 'host-down';
  readonly job?: string;
  readonly host?: string;
  readonly vm?: string;
  readonly message: string;
  readonly at: number;
}

export type MigrationMode = 'precopy' | 'postcopy' | 'hybrid';

/** What a policy decides. `none` is a decision too: it ends a first-result-wins round. */
export type Decision =
  | { readonly action: 'checkpoint'; readonly job: string; readonly reason: string }
  | {
      readonly action: 'migrate';
      readonly job: string;
      /** VMs to move away; each goes to a spare slot unless `to` names hosts. */
      readonly vms: readonly string[];
      readonly to?: readonly string[];
      readonly mode?: MigrationMode;
      readonly reason: string;
    }
  | {
      readonly action: 'restart';
      readonly job: string;
      /** Checkpoint id; the last good one when absent. */
      readonly checkpoint?: string;
      /** Hosts to restart on; spares when absent. */
      readonly hosts?: readonly string[];
      readonly reason: string;
    }
  | { readonly action: 'drain-host'; readonly host: string; readonly reason: string }
  | {
      /**
       * A migration of the job is in flight towards `from`, which has turned
       * bad: cancel the move of the VMs going there and send them to `to`
       * (a free spare when absent) instead; the ranks stay frozen throughout.
       */
      readonly action: 'retarget';
      readonly job: string;
      readonly from: string;
      readonly to?: string;
      readonly reason: string;
    }
  | { readonly action: 'none'; readonly reason: string };

export type HostState = 'up' | 'degraded' | 'drained' | 'down';

/** What policies see of the cluster: a read-only copy, taken when the hook is called. */
export interface ClusterView {
  /** ms since the epoch. */
  readonly now: number;
  readonly hosts: readonly { readonly name: string; readonly state: HostState; readonly spare: boolean }[];
  readonly jobs: readonly JobView[];
}

export interface JobView {
  readonly id: string;
  readonly state: 'starting' | 'running' | 'operating' | 'restarting' | 'finished' | 'failed';
  readonly startedAt: number;
  readonly ranks: number;
  readonly vms: readonly { readonly id: string; readonly host: string; readonly memoryBytes: number }[];
  /** The operation under way, if any; a migration says where its VMs are going (VM id -> host). */
  readonly operation: { readonly kind: OperationKind; readonly phase: string; readonly targets?: Readonly<Record<string, string>> } | null;
  /** Last checkpoint that completed, if any. */
  readonly lastCheckpoint: { readonly id: string; readonly at: number; readonly durationMs: number } | null;
  /** Measured so far on this job (means; null until measured). */
  readonly measured: {
    /** Application-visible cost of one coordinated checkpoint, ms. */
    readonly checkpointMs: number | null;
    readonly restartMs: number | null;
    /** Migration throughput seen, bytes/s. */
    readonly migrationBandwidthBps: number | null;
    /** Guest dirty rate seen during migrations, bytes/s. */
    readonly dirtyRateBps: number | null;
  };
}

export type OperationKind = 'quiesce' | 'freeze' | 'resume' | 'checkpoint' | 'migrate' | 'restart';

/** What a plugin learns when an operation ends (observers: `operationFinished`). */
export interface OperationRecord {
  readonly id: string;
  readonly job: string;
  readonly kind: OperationKind;
  readonly ok: boolean;
  readonly error?: string;
  readonly startedAt: number;
  readonly durationMs: number;
  readonly phases: readonly { readonly name: string; readonly ms: number }[];
  /** Who asked: 'operator', or the policy plugin's name. */
  readonly requestedBy: string;
  readonly reason: string;
}

/**
 * Hooks of a policy plugin. `decideOnHealth` and `decideOnFailure` are
 * first-result-wins (the first policy that returns a decision, in order,
 * decides); `operationFinished` and `healthEvent` are parallel observers.
 * A policy that acts on its own clock (periodic checkpoints) calls
 * `ctx.actions.request` from a timer it clears on `ctx.signal`.
 */
export interface PolicyHooks extends PluginHooks {
  readonly decideOnHealth?: HookEntry<(event: HealthEvent, view: ClusterView) => Decision | null | Promise<Decision | null>>;
  readonly decideOnFailure?: HookEntry<(failure: FailureEvent, view: ClusterView) => Decision | null | Promise<Decision | null>>;
  readonly operationFinished?: HookEntry<(op: OperationRecord, view: ClusterView) => void | Promise<void>>;
  readonly healthEvent?: HookEntry<(event: HealthEvent) => void | Promise<void>>;
}

/** Failures of the job itself (its VMs and hosts are fine), as opposed to failures of the machines under it. */
export function failureOfJob(f: Pick<FailureEvent, 'kind'>): boolean {
  return f.kind === 'rank-dead' || f.kind === 'job-aborted';
}

/** What a plugin may ask for. Requests are queued behind the job's current operation (or refused). */
export interface PluginActions {
  /** Ask the controller to carry out a decision; resolves when the operation ends. */
  request(decision: Decision): Promise<OperationRecord | null>;
  /** A fresh copy of the cluster as the controller sees it. */
  view(): ClusterView;
}

/** A hook: a function, or one with an explicit order and timeout. */
export type HookFunction = (...args: never[]) => unknown;
export type HookEntry<F extends HookFunction = HookFunction> =
  | F
  | { readonly order?: 'pre' | 'post'; readonly timeoutMs?: number; readonly handler: F };

export type PluginHooks = Record<string, HookEntry | undefined> & {
  /** Called at teardown, in reverse order of setup. */
  readonly teardown?: HookEntry<() => void | Promise<void>>;
};

export interface PluginDefinition<Schema extends z.ZodType = z.ZodType, Hooks extends PluginHooks = PluginHooks> {
  readonly name: string;
  readonly version: string;
  readonly apiVersion: number;
  readonly kind: PluginKind;
  /** One line on what it does, for `symbio plugins builtin` and similar listings. */
  readonly description?: string;
  /** zod schema of the plugin's options; unknown keys are errors (use strict objects). */
  readonly configSchema: Schema;
  readonly failurePolicy?: FailurePolicy;
  /** Method syntax on purpose: a plugin with typed options is still a PluginDefinition. */
  setup(ctx: PluginContext<z.infer<Schema>>): Hooks | Promise<Hooks>;
}

/** Identity with types: `export default definePlugin({ ... })`. */
export function definePlugin<Schema extends z.ZodType, Hooks extends PluginHooks>(
  def: PluginDefinition<Schema, Hooks>,
): PluginDefinition<Schema, Hooks> {
  return def;
}
