/**
 * Runs plugins' hooks (after Rollup's PluginDriver): sequential,
 * first-result-wins (decisions) and parallel (observers); ordered by
 * `order: 'pre' | 'post'`, then configuration order; every call under a
 * timeout; errors name the plugin and the hook; per-plugin failure policy;
 * teardown in reverse order of setup.
 */
import type { Logger } from '../log.js';
import {
  PLUGIN_API_VERSION,
  type FailurePolicy,
  type HookEntry,
  type HookFunction,
  type PluginDefinition,
  type PluginActions,
  type PluginKind,
  type PluginHooks,
} from './plugin-api.js';

/** A hook failed (threw, rejected or timed out). */
export class PluginHookError extends Error {
  override name = 'PluginHookError';
  constructor(
    readonly plugin: string,
    readonly hook: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`plugin ${plugin}, hook ${hook}: ${message}`, options);
  }
}

/** A plugin could not be loaded (bad API version, bad options, setup failed). */
export class PluginLoadError extends Error {
  override name = 'PluginLoadError';
}

export interface ConfiguredPlugin {
  readonly plugin: PluginDefinition;
  /** Raw options from the configuration (validated here). */
  readonly options?: unknown;
  /** The configuration's override of the plugin's own failure policy. */
  readonly failurePolicy?: FailurePolicy;
}

export interface PluginDriverOptions {
  readonly log: Logger;
  /** Default limit for one hook call, ms. */
  readonly hookTimeoutMs: number;
  /** Handed to every plugin (or made per plugin); without a controller, requests are refused. */
  readonly actions?: PluginActions | ((plugin: string) => PluginActions);
}

/** Actions of a host that has no controller behind it (tests, `plugins list`). */
export const NO_ACTIONS: PluginActions = {
  request: (d) => Promise.reject(new Error(`no controller to carry out '${d.action}' (plugin host runs without one)`)),
  view: () => ({ now: Date.now(), hosts: [], jobs: [] }),
};

interface Loaded {
  readonly name: string;
  readonly version: string;
  readonly kind: PluginKind;
  readonly hooks: PluginHooks;
  readonly policy: FailurePolicy;
  readonly controller: AbortController;
  readonly log: Logger;
  failures: number;
  disabled: boolean;
}

interface Handler {
  readonly owner: Loaded;
  readonly fn: HookFunction;
  readonly timeoutMs: number;
}

const ORDER_RANK = { pre: 0, normal: 1, post: 2 } as const;

function entryParts(entry: HookEntry): { fn: HookFunction; order: 'pre' | 'normal' | 'post'; timeoutMs?: number } {
  if (typeof entry === 'function') return { fn: entry, order: 'normal' };
  return { fn: entry.handler, order: entry.order ?? 'normal', ...(entry.timeoutMs === undefined ? {} : { timeoutMs: entry.timeoutMs }) };
}

function isThenable<T>(v: T | Promise<T>): v is Promise<T> {
  return v !== null && (typeof v === 'object' || typeof v === 'function') && typeof (v as { then?: unknown }).then === 'function';
}

export class PluginDriver {
  private loaded: Loaded[] = [];

  constructor(private readonly options: PluginDriverOptions) {}

  /** Validate and set up every plugin, in configuration order. */
  async start(configured: readonly ConfiguredPlugin[]): Promise<void> {
    try {
      await this.#startAll(configured);
    } catch (err) {
      // whatever failed, the plugins already set up are torn down (their timers must not outlive us)
      await this.teardown();
      throw err;
    }
  }

  async #startAll(configured: readonly ConfiguredPlugin[]): Promise<void> {
    const names = new Set<string>();
    for (const { plugin, options, failurePolicy } of configured) {
      if (names.has(plugin.name)) throw new PluginLoadError(`plugin ${plugin.name} is configured twice`);
      names.add(plugin.name);
      if (plugin.apiVersion !== PLUGIN_API_VERSION) {
        throw new PluginLoadError(
          `plugin ${plugin.name} ${plugin.version} needs plugin API ${plugin.apiVersion}; this symbio provides ${PLUGIN_API_VERSION}`,
        );
      }
      const parsed = plugin.configSchema.safeParse(options ?? {});
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        const where = issue && issue.path.length ? issue.path.join('.') : '(options)';
        throw new PluginLoadError(`plugin ${plugin.name}: option ${where}: ${issue?.message ?? 'invalid'}`);
      }
      const controller = new AbortController();
      const log = this.options.log.child({ plugin: plugin.name });
      let hooks: PluginHooks;
      try {
        hooks = await this.withTimeout(plugin.name, 'setup', this.options.hookTimeoutMs, () =>
          plugin.setup({ log, signal: controller.signal, options: parsed.data, actions: this.#actionsFor(plugin.name) }),
        );
      } catch (err) {
        controller.abort(); // a setup that is late or failed halfway is told to stop
        throw err instanceof PluginHookError ? new PluginLoadError(err.message, { cause: err }) : err;
      }
      this.loaded.push({ name: plugin.name, version: plugin.version, kind: plugin.kind, hooks, policy: failurePolicy ?? plugin.failurePolicy ?? 'abort', controller, log, failures: 0, disabled: false });
    }
  }

  #actionsFor(plugin: string): PluginActions {
    const a = this.options.actions;
    return a === undefined ? NO_ACTIONS : typeof a === 'function' ? a(plugin) : a;
  }

  /** Plugins in setup order, with whether they are still enabled. */
  plugins(): Array<{ name: string; version: string; kind: PluginKind; hooks: string[]; disabled: boolean; failures: number }> {
    return this.loaded.map((p) => ({
      name: p.name,
      version: p.version,
      kind: p.kind,
      hooks: Object.keys(p.hooks).filter((k) => p.hooks[k] !== undefined),
      disabled: p.disabled,
      failures: p.failures,
    }));
  }

  /**
   * One plugin's hook (a monitor's `sample`), under its timeout and failure
   * policy. `{ ok: false }` when it failed (and the policy let us go on), or
   * the plugin is disabled or has no such hook.
   */
  async hookFor(plugin: string, hook: string, ...args: unknown[]): Promise<{ ok: true; value: unknown } | { ok: false }> {
    const h = this.handlers(hook).find((x) => x.owner.name === plugin);
    if (!h) return { ok: false };
    return this.invoke(h, hook, args);
  }

  private handlers(hook: string): Handler[] {
    const out: Array<Handler & { rank: number; index: number }> = [];
    this.loaded.forEach((owner, index) => {
      const entry = owner.hooks[hook];
      if (owner.disabled || entry === undefined) return;
      const { fn, order, timeoutMs } = entryParts(entry);
      out.push({ owner, fn, timeoutMs: timeoutMs ?? this.options.hookTimeoutMs, rank: ORDER_RANK[order], index });
    });
    return out.sort((a, b) => a.rank - b.rank || a.index - b.index);
  }

  private withTimeout<T>(plugin: string, hook: string, ms: number, call: () => T | Promise<T>): Promise<T> {
    const wrap = (err: unknown): PluginHookError =>
      err instanceof PluginHookError ? err : new PluginHookError(plugin, hook, err instanceof Error ? err.message : String(err), { cause: err });
    let value: T | Promise<T>;
    try {
      value = call();
    } catch (err) {
      return Promise.reject(wrap(err));
    }
    // A hook that answered synchronously cannot be late: no timer for it
    // (most observers; a timer per call was most of the dispatch cost).
    if (!isThenable(value)) return Promise.resolve(value);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PluginHookError(plugin, hook, `no answer within ${ms} ms`)), ms);
      value.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          reject(wrap(err));
        },
      );
    });
  }

  /** One handler call under its timeout and its plugin's failure policy. */
  private async invoke(h: Handler, hook: string, args: readonly unknown[]): Promise<{ ok: true; value: unknown } | { ok: false }> {
    try {
      const value = await this.withTimeout(h.owner.name, hook, h.timeoutMs, () => (h.fn as (...a: unknown[]) => unknown)(...args));
      return { ok: true, value };
    } catch (err) {
      const owner = h.owner;
      owner.failures++;
      const policy = owner.policy;
      if (policy === 'abort') throw err;
      owner.log.warn({ hook, err: (err as Error).message, failures: owner.failures }, 'hook failed; going on without it');
      if (typeof policy === 'object' && owner.failures >= policy.disableAfter) {
        owner.disabled = true;
        owner.log.error({ failures: owner.failures }, 'plugin disabled after repeated failures');
      }
      return { ok: false };
    }
  }

  /** Every handler in order, one after the other. */
  async hookSequential(hook: string, ...args: unknown[]): Promise<void> {
    for (const h of this.handlers(hook)) await this.invoke(h, hook, args);
  }

  /** Handlers in order until one returns something other than null/undefined. */
  async hookFirst<R>(hook: string, ...args: unknown[]): Promise<{ plugin: string; result: R } | null> {
    for (const h of this.handlers(hook)) {
      const r = await this.invoke(h, hook, args);
      if (r.ok && r.value !== null && r.value !== undefined) return { plugin: h.owner.name, result: r.value as R };
    }
    return null;
  }

  /** All handlers at once (observers); resolves when every one has finished. */
  async hookParallel(hook: string, ...args: unknown[]): Promise<void> {
    await Promise.all(this.handlers(hook).map((h) => this.invoke(h, hook, args)));
  }

  /** Abort every plugin's signal and run `teardown` hooks in reverse order. */
  async teardown(): Promise<void> {
    const loaded = this.loaded;
    this.loaded = [];
    for (const p of [...loaded].reverse()) {
      p.controller.abort();
      const entry = p.hooks.teardown;
      if (!entry) continue;
      const { fn, timeoutMs } = entryParts(entry);
      try {
        await this.withTimeout(p.name, 'teardown', timeoutMs ?? this.options.hookTimeoutMs, () => (fn as () => unknown)());
      } catch (err) {
        p.log.warn({ err: (err as Error).message }, 'teardown failed');
      }
    }
  }
}
