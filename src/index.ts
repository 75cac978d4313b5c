/**
 * symbio's public API for plugin authors: `import { definePlugin } from 'symbio'`.
 * (The plugin host that loads plugins from the configuration is being built:
 * see docs/README.md.)
 */
export { definePlugin, PLUGIN_API_VERSION } from './host/plugin-api.js';
export type {
  FailurePolicy,
  HookEntry,
  PluginContext,
  PluginDefinition,
  PluginHooks,
  PluginKind,
} from './host/plugin-api.js';
