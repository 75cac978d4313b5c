/**
 * Small helpers shared by the built-in policies: reading the cluster view
 * (which hosts a job uses, which spares are free, whether a failure touches
 * a job), the order of severities, and numbers written for humans (decision
 * reasons are read by operators, so they say "3.2 min", not "192000").
 */
import type { ClusterView, FailureEvent, JobView, Severity } from '../../src/index.js';

/** Severities in increasing order of urgency. */
export const SEVERITY_RANK: Readonly<Record<Severity, number>> = { info: 0, warning: 1, critical: 2 };

export function severityAtLeast(severity: Severity, min: Severity): boolean {
  return SEVERITY_RANK[severity] >= SEVERITY_RANK[min];
}

/** Distinct hosts of a job's VMs, in the order of its VMs (that order is the job's layout). */
export function jobHosts(job: JobView): string[] {
  return [...new Set(job.vms.map((vm) => vm.host))];
}

/**
 * Spare hosts a VM could go to now: marked spare, state 'up' (not degraded:
 * moving onto a host a monitor already worries about defeats the purpose),
 * carrying no VM of any job in the view, and not in `exclude`.
 */
export function freeSpareHosts(view: ClusterView, exclude: ReadonlySet<string> = new Set()): string[] {
  const busy = new Set(view.jobs.flatMap((j) => (j.state === 'finished' || j.state === 'failed' ? [] : j.vms.map((vm) => vm.host))));
  return view.hosts.filter((h) => h.spare && h.state === 'up' && !busy.has(h.name) && !exclude.has(h.name)).map((h) => h.name);
}

/**
 * Whether a failure concerns a job. A host going down hits every job with a
 * VM there, whatever job the event names; other failures name their job when
 * the detector knows it, else their VM, else their host (an agent lost on a
 * host takes the job's VMs there with it).
 */
export function failureAffectsJob(failure: FailureEvent, job: JobView): boolean {
  const onHost = failure.host !== undefined && job.vms.some((vm) => vm.host === failure.host);
  if (failure.kind === 'host-down' && onHost) return true;
  if (failure.job !== undefined) return failure.job === job.id;
  if (failure.vm !== undefined) return job.vms.some((vm) => vm.id === failure.vm);
  return onHost;
}

/** A duration for a sentence: "250 ms", "42.0 s", "3.2 min", "26.7 h". */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(ms)} ms`;
  if (abs < 120_000) return `${(ms / 1000).toFixed(1)} s`;
  if (abs < 7_200_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

/** A size for a sentence, in binary units as memory is sized: "512 MiB", "8.0 GiB". */
export function formatBytes(bytes: number): string {
  if (bytes < 1024 ** 2) return `${Math.round(bytes / 1024)} KiB`;
  if (bytes < 1024 ** 3) return `${Math.round(bytes / 1024 ** 2)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(1)} GiB`;
}

/** A rate for a sentence: "1.2 GB/s" (decimal, as link speeds are quoted). */
export function formatRate(bytesPerSecond: number): string {
  if (bytesPerSecond >= 1e9) return `${(bytesPerSecond / 1e9).toFixed(2)} GB/s`;
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}
