/**
 * Load the configuration's plugins and start them against a controller: the
 * one wiring shared by the launcher's embedded controller and `symbio
 * controller`. No plugins configured: no host at all.
 */
import { configDirOf } from '../config/load.js';
import type { SymbioConfig } from '../config/schema.js';
import { loadPlugins, toConfigured } from './plugin-loader.js';
import { PluginHost } from './plugin-host.js';
import type { Controller } from '../controller/controller.js';
import type { Logger } from '../log.js';

export async function startPlugins(config: SymbioConfig, source: string | null, controller: Controller, log: Logger): Promise<PluginHost | null> {
  const entries = await loadPlugins(config, { configDir: configDirOf(source), source });
  if (entries.length === 0) return null;
  const host = new PluginHost({ controller, log: log.child({ component: 'plugins' }), hookTimeoutMs: config.hooks.timeoutMs });
  const configured = toConfigured(entries);
  await host.start(entries.map((e, i) => ({ ...configured[i]!, spec: e.spec, intervalMs: e.intervalMs })));
  return host;
}
