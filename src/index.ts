/**
 * symbio's public API for plugin authors: `import { definePlugin } from 'symbio'`.
 * Built-in plugins (plugins/) import only from this module.
 */
export { definePlugin, failureOfJob, PLUGIN_API_VERSION } from './host/plugin-api.js';
export type {
  ClusterView,
  Decision,
  FailureEvent,
  FailurePolicy,
  HealthEvent,
  HealthMonitorHooks,
  HostState,
  JobView,
  MigrationMode,
  OperationKind,
  OperationRecord,
  PluginActions,
  PolicyHooks,
  Severity,
  HookEntry,
  PluginContext,
  PluginDefinition,
  PluginHooks,
  PluginKind,
} from './host/plugin-api.js';
/** The local virtual cluster's simulated host health (the vcluster-health monitor reads it). */
export { readHealth as readSimulatedHealth, type HealthCondition as SimulatedHealthCondition } from './vcluster/health.js';
