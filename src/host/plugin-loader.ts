/**
 * Loads the plugins named by the configuration's `plugins:` entries, and
 * only those (no directory scanning, no implicit plugins). A `use:` that
 * starts with ./, ../ or / is a path relative to the configuration file's
 * directory; anything else is a package name resolved from that directory
 * (`symbio/...`, the built-in plugins, from this symbio's own package).
 * Each module must export a PluginDefinition (default export, or `plugin`);
 * its options are checked against its configSchema here, so a bad option
 * is reported with the file, line and key path before anything starts.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ConfigError, describeValue, expectedMessage, toConfigIssues, type LooseIssue } from '../config/errors.js';
import type { SymbioConfig } from '../config/schema.js';
import { knownKeysAt } from '../config/schema-keys.js';
import { parseYamlSource, type YamlSource } from '../config/yaml-source.js';
import { packageRoot } from '../util/package-root.js';
import { PLUGIN_API_VERSION, type FailurePolicy, type PluginDefinition } from './plugin-api.js';
import { PluginLoadError, type ConfiguredPlugin } from './plugin-driver.js';
import { makeSymbioResolvable } from './symbio-resolve.js';

export interface LoadedPluginEntry {
  /** The `use:` string as written. */
  readonly spec: string;
  /** The file the plugin was imported from. */
  readonly resolved: string;
  readonly plugin: PluginDefinition;
  /** Raw options from the configuration (already checked; PluginDriver parses them again for setup). */
  readonly options: unknown;
  /** Override from the configuration entry; the plugin's own policy applies when absent. */
  readonly failurePolicy?: FailurePolicy;
  readonly intervalMs: number;
  /** Position in the configuration's `plugins:` list (disabled entries count). */
  readonly index: number;
}

export interface LoadPluginsOptions {
  /** Directory relative paths and package names are resolved from (the config file's, or cwd). */
  readonly configDir: string;
  /** The configuration file, for messages and line:column of option errors; null: defaults. */
  readonly source: string | null;
}

const PLUGIN_KINDS = ['policy', 'health-monitor', 'hypervisor-driver'] as const;

const fn = (what: string) => z.custom<(...args: never[]) => unknown>((v) => typeof v === 'function', { error: `expected ${what}` });

/** What a module's export must look like to be used as a plugin (extra fields are allowed). */
export const pluginShape = z.object(
  {
    name: z.string({ error: 'expected a non-empty string' }).min(1, { error: 'expected a non-empty string' }),
    version: z.string({ error: 'expected a version string' }).min(1, { error: 'expected a version string' }),
    apiVersion: z.number({ error: 'expected the plugin API version number' }).int({ error: 'expected the plugin API version number' }),
    kind: z.enum(PLUGIN_KINDS, { error: `expected one of ${PLUGIN_KINDS.join(', ')}` }),
    description: z.string({ error: 'expected a one-line description' }).optional(),
    configSchema: z.custom<z.ZodType>(
      (v) => v !== null && typeof v === 'object' && typeof (v as { safeParse?: unknown }).safeParse === 'function',
      { error: 'expected a zod schema (an object with safeParse)' },
    ),
    failurePolicy: z
      .union([z.enum(['abort', 'continue']), z.object({ disableAfter: z.number().int().min(1) })], {
        error: "expected 'abort', 'continue' or { disableAfter: N }",
      })
      .optional(),
    setup: fn('a setup(ctx) function'),
  },
  { error: 'expected a plugin definition object' },
);

const isPathSpec = (spec: string) => spec.startsWith('./') || spec.startsWith('../') || spec.startsWith('/') || spec === '.' || spec === '..';

/** `symbio` and `symbio/...`: the running symbio's own copy, so plugins match the host's API. */
const isSelfSpec = (spec: string) => spec === 'symbio' || spec.startsWith('symbio/');

function codeOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

class EntryContext {
  constructor(
    readonly file: string,
    readonly index: number,
    readonly spec: string,
  ) {}

  /** `symbio.yaml: plugins[2] (./x.mjs): <what>` */
  error(what: string, cause?: unknown): PluginLoadError {
    return new PluginLoadError(`${this.file}: plugins[${this.index}] (${this.spec}): ${what}`, cause === undefined ? undefined : { cause });
  }
}

function resolveSpec(ctx: EntryContext, configDir: string): string {
  const { spec, index } = ctx;
  if (isPathSpec(spec)) {
    const p = resolvePath(configDir, spec);
    if (!existsSync(p)) throw ctx.error(`cannot find ${p}: fix plugins[${index}].use (paths are relative to ${configDir})`);
    if (!statSync(p).isDirectory()) return p;
    // a directory: its package.json "main" or index.js, as require would pick
    try {
      return createRequire(join(configDir, 'noop.js')).resolve(p);
    } catch (err) {
      throw ctx.error(`${p} is a directory without a loadable entry point (package.json "main" or index.js)`, err);
    }
  }
  const attempts: string[] = isSelfSpec(spec) ? [packageRoot(), configDir] : [configDir];
  let firstErr: unknown;
  for (const dir of attempts) {
    try {
      // a file name inside `dir` makes require resolve from there (node_modules upwards, or self-reference)
      return createRequire(join(dir, 'noop.js')).resolve(spec);
    } catch (err) {
      firstErr ??= err;
    }
  }
  const code = codeOf(firstErr);
  if (code === 'ERR_PACKAGE_PATH_NOT_EXPORTED') {
    throw ctx.error(
      `package does not export '${spec}' for require/default resolution (its "exports" needs a "default" or "require" condition for this path): ${(firstErr as Error).message}`,
      firstErr,
    );
  }
  if (isSelfSpec(spec)) {
    const root = packageRoot();
    throw ctx.error(
      `cannot find built-in plugin '${spec}' in ${root} (built-in plugins are compiled to dist/: run npm run build:ts) or from ${configDir}: fix plugins[${index}].use`,
      firstErr,
    );
  }
  throw ctx.error(`cannot find package '${spec}' from ${configDir}: install it or fix plugins[${index}].use`, firstErr);
}

/** The plugin a module exports: `default`, a CommonJS-wrapped default, or a named `plugin`. */
function pickExport(mod: Record<string, unknown>): { value: unknown; name: string } {
  const d = mod.default;
  if (d !== null && typeof d === 'object' && 'default' in d && !('setup' in d)) {
    // CommonJS module transpiled from ESM: module.exports = { default: plugin }
    return { value: (d as { default: unknown }).default, name: 'default export' };
  }
  if (d !== undefined) return { value: d, name: 'default export' };
  if (mod.plugin !== undefined) return { value: mod.plugin, name: "export 'plugin'" };
  return { value: undefined, name: 'module' };
}

function checkShape(ctx: EntryContext, exported: { value: unknown; name: string }, mod: Record<string, unknown>): PluginDefinition {
  const { value, name } = exported;
  const hint = 'export default definePlugin({ name, version, apiVersion, kind, configSchema, setup })';
  if (value === undefined) {
    const names = Object.keys(mod);
    throw ctx.error(`does not export a plugin (no default export and no 'plugin' export${names.length ? `; it exports ${names.join(', ')}` : ''}): ${hint}`);
  }
  if (value === null || typeof value !== 'object') {
    throw ctx.error(`does not export a plugin (${name} is ${typeof value === 'function' ? 'a function' : describeValue(value)}): ${hint}`);
  }
  const r = pluginShape.safeParse(value, { error: expectedMessage });
  if (!r.success) {
    const problems = toConfigIssues(r.error.issues as readonly LooseIssue[], { data: value }).map((i) => `${i.path}: ${i.message}`);
    throw ctx.error(`${name} is not a plugin definition (${problems.join('; ')}): ${hint}`);
  }
  return value as PluginDefinition;
}

/** The YAML document, re-read only when an option error needs a line:column. */
function sourceLocator(source: string | null): YamlSource['locate'] | undefined {
  if (source === null) return undefined;
  try {
    return parseYamlSource(readFileSync(source, 'utf8'), source).locate;
  } catch {
    return undefined; // changed or gone since it was loaded: report without positions
  }
}

function checkOptions(ctx: EntryContext, plugin: PluginDefinition, options: unknown, source: string | null): void {
  const schema = plugin.configSchema;
  let result: { success: boolean; error?: { issues?: unknown } };
  try {
    result = schema.safeParse(options ?? {}, { error: expectedMessage });
  } catch (err) {
    throw ctx.error(`configSchema.safeParse threw: ${(err as Error).message}`, err);
  }
  if (result.success) return;
  const raw = result.error?.issues;
  const issues: readonly LooseIssue[] = Array.isArray(raw) ? (raw as LooseIssue[]) : [{ message: 'invalid options' }];
  const locate = sourceLocator(source);
  throw new ConfigError(
    ctx.file,
    toConfigIssues(issues, {
      data: options ?? {},
      prefix: ['plugins', ctx.index, 'options'],
      ...(locate ? { locate } : {}),
      knownKeys: (path) => knownKeysAt(schema, path),
    }),
  );
}

/**
 * Resolve, import and check every enabled plugin entry, in order. Throws
 * PluginLoadError (cannot find, cannot import, not a plugin, wrong API
 * version, configured twice) or ConfigError (options do not match the
 * plugin's configSchema).
 */
export async function loadPlugins(config: SymbioConfig, opts: LoadPluginsOptions): Promise<LoadedPluginEntry[]> {
  const file = opts.source ?? '(configuration)';
  const out: LoadedPluginEntry[] = [];
  // plugins outside this package import 'symbio' too: let that resolve to us
  if (config.plugins.some((p) => p.enabled)) makeSymbioResolvable();
  const byName = new Map<string, number>();
  for (const [index, entry] of config.plugins.entries()) {
    if (!entry.enabled) continue;
    const ctx = new EntryContext(file, index, entry.use);
    const resolved = resolveSpec(ctx, opts.configDir);
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(resolved).href)) as Record<string, unknown>;
    } catch (err) {
      throw ctx.error(`cannot load ${resolved}: ${(err as Error)?.message ?? String(err)}`, err);
    }
    const plugin = checkShape(ctx, pickExport(mod), mod);
    if (plugin.apiVersion !== PLUGIN_API_VERSION) {
      throw ctx.error(`plugin ${plugin.name} ${plugin.version} needs plugin API ${plugin.apiVersion}; this symbio provides ${PLUGIN_API_VERSION}`);
    }
    const prev = byName.get(plugin.name);
    if (prev !== undefined) throw ctx.error(`plugin ${plugin.name} is already configured by plugins[${prev}]`);
    byName.set(plugin.name, index);
    checkOptions(ctx, plugin, entry.options, opts.source);
    out.push({
      spec: entry.use,
      resolved,
      plugin,
      options: entry.options,
      ...(entry.failurePolicy === undefined ? {} : { failurePolicy: entry.failurePolicy }),
      intervalMs: entry.intervalMs,
      index,
    });
  }
  return out;
}

/** What PluginDriver.start takes; a configured failurePolicy overrides the plugin's own. */
export function toConfigured(entries: readonly LoadedPluginEntry[]): ConfiguredPlugin[] {
  return entries.map((e) => ({
    plugin: e.plugin,
    options: e.options,
    ...(e.failurePolicy === undefined ? {} : { failurePolicy: e.failurePolicy }),
  }));
}
