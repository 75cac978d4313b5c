/**
 * Shared by the policy tests: cluster views built from a few fields, a
 * recording PluginActions (a controller stand-in whose view the test
 * controls), a logger whose lines the test can read, and a tolerance check.
 */
import type { ClusterView, Decision, HostState, JobView, OperationRecord, PluginActions } from '../../../src/index.js';
import { waitFor as waitUntil } from '../../helpers/wait.js';

/** The one assertion `near` needs, so it works with any tap Test. */
export interface Asserter {
  ok(value: unknown, message: string): unknown;
}

/** |actual - expected| <= tol, with both numbers in the message. */
export function near(t: Asserter, actual: number, expected: number, tol: number, what: string): void {
  t.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected} (tolerance ${tol})`);
}

export const GiB = 1024 ** 3;

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** A running, idle job with one VM per host given, 4 GiB each, nothing measured. */
export function job(id: string, hosts: readonly string[], over: Partial<Mutable<JobView>> = {}): JobView {
  return {
    id,
    state: 'running',
    startedAt: 0,
    ranks: hosts.length,
    vms: hosts.map((host, i) => ({ id: `${id}-vm${i}`, host, memoryBytes: 4 * GiB })),
    operation: null,
    lastCheckpoint: null,
    measured: { checkpointMs: null, restartMs: null, migrationBandwidthBps: null, dirtyRateBps: null },
    ...over,
  };
}

export function host(name: string, state: HostState = 'up', spare = false): ClusterView['hosts'][number] {
  return { name, state, spare };
}

export function view(jobs: readonly JobView[], hosts: ClusterView['hosts'], now = 1_000_000): ClusterView {
  return { now, hosts, jobs };
}

/** A completed operation record. */
export function record(over: Partial<OperationRecord> & Pick<OperationRecord, 'id' | 'job' | 'kind'>): OperationRecord {
  return { ok: true, startedAt: Date.now(), durationMs: 1, phases: [], requestedBy: 'operator', reason: 'test', ...over };
}

/**
 * A controller stand-in: records every request with its time, answers with
 * `handler` (by default: a 1 ms checkpoint that succeeds), and shows the view
 * `current()` returns.
 */
export class RecordingActions implements PluginActions {
  readonly requests: Array<{ at: number; decision: Decision }> = [];
  /** Requests not yet answered, in all. */
  inFlight = 0;
  /** Most requests for one job unanswered at the same time. */
  peakInFlightPerJob = 0;
  private readonly perJob = new Map<string, number>();
  handler: (d: Decision) => Promise<OperationRecord | null> = async (d) => {
    const startedAt = Date.now();
    await new Promise((r) => setTimeout(r, 1));
    return record({ id: `op-${this.requests.length}`, job: 'job' in d ? d.job : '', kind: 'checkpoint', startedAt, durationMs: Date.now() - startedAt });
  };

  constructor(public current: () => ClusterView) {}

  async request(decision: Decision): Promise<OperationRecord | null> {
    this.requests.push({ at: Date.now(), decision });
    const key = 'job' in decision ? decision.job : decision.action === 'drain-host' ? decision.host : '';
    const n = (this.perJob.get(key) ?? 0) + 1;
    this.perJob.set(key, n);
    this.inFlight++;
    this.peakInFlightPerJob = Math.max(this.peakInFlightPerJob, n);
    try {
      return await this.handler(decision);
    } finally {
      this.inFlight--;
      this.perJob.set(key, (this.perJob.get(key) ?? 1) - 1);
    }
  }

  view(): ClusterView {
    return this.current();
  }
}

export { captureLogger } from '../../helpers/log.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolve once `cond()` holds (polled every 2 ms); reject after `timeoutMs`. */
export const waitFor = (cond: () => boolean, timeoutMs: number, what: string): Promise<void> => waitUntil(cond, timeoutMs, what, 2);
