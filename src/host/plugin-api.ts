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
