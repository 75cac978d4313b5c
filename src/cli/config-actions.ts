/**
 * What `symbio config check` and `symbio plugins list` do, as plain
 * functions (the commander wiring lives in main.ts): load the configuration,
 * load every enabled plugin to validate its options, and print the
 * effective configuration.
 */
import { stringify } from 'yaml';
import { configDirOf, loadConfig, type ResolveConfigOptions } from '../config/load.js';
import type { SymbioConfig } from '../config/schema.js';
import type { PluginKind } from '../host/plugin-api.js';
import { loadPlugins } from '../host/plugin-loader.js';

export interface CheckedPlugin {
  readonly spec: string;
  readonly name: string;
  readonly version: string;
  readonly kind: PluginKind;
  readonly resolved: string;
}

export interface ConfigCheck {
  /** The file read, or null: embedded defaults. */
  readonly source: string | null;
  /** Places looked at, in order. */
  readonly searched: string[];
  readonly config: SymbioConfig;
  /** Enabled plugins, in configuration order. */
  readonly plugins: CheckedPlugin[];
}

/**
 * Throws ConfigError (file, syntax, schema, plugin options) or
 * PluginLoadError (a plugin cannot be found, imported or is not a plugin).
 * `explicit` is `--config PATH`; the other fields are for tests.
 */
export async function checkConfig(opts: ResolveConfigOptions = {}): Promise<ConfigCheck> {
  const { source, searched, config } = loadConfig(opts);
  const entries = await loadPlugins(config, { configDir: configDirOf(source, opts.cwd), source });
  return {
    source,
    searched,
    config,
    plugins: entries.map((e) => ({ spec: e.spec, name: e.plugin.name, version: e.plugin.version, kind: e.plugin.kind, resolved: e.resolved })),
  };
}

/** The configuration with defaults filled in, as YAML (loadable again as a configuration file). */
export function formatEffectiveConfig(config: SymbioConfig): string {
  // yaml omits undefined values: unset optional fields (socket, stateDir, ...) do not appear
  return stringify(config, { indent: 2, lineWidth: 0 });
}
