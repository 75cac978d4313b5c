/**
 * Benchmark of the plugin host and the controller (`npm run bench -- host`),
 * JSON on stdout. Both parts compare against a baseline measured in the
 * same run:
 *  - hook dispatch: one health event through 20 loaded plugins (20 parallel
 *    observers + a first-result-wins round all 20 pass on), versus calling
 *    the same 40 functions directly: per-event overhead and the ratio.
 *  - controller at scale: 1,000 simulated agents (a child process, over the
 *    controller's real Unix socket) with 10 ranks each, 10,000 ranks in one
 *    job, each agent reporting its counters every 100 ms. Measured: the
 *    controller's CPU at that steady load, and global freeze/resume cycles:
 *    the decision latency (the last report that completes quiescence in ->
 *    the verdict, counters balanced across all agents), the whole freeze
 *    (request -> every rank frozen; the simulated agents share these two
 *    cores with the controller, so this is an upper bound), and the
 *    coordinator's own evaluation time on the same 10,000 ranks as the
 *    baseline.
 * Targets (issue 3): decision latency p99 <= 100 ms at 10,000 ranks;
 * controller CPU <= 25% of one core at that load.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { Controller } from '../src/controller/controller.js';
import { ControllerServer } from '../src/controller/server.js';
import { PluginDriver } from '../src/host/plugin-driver.js';
import { definePlugin, PLUGIN_API_VERSION, type HealthEvent } from '../src/host/plugin-api.js';
import { QuiesceCoordinator } from '../src/quiesce/coordinator.js';
import type { NodeSnapshot } from '../src/quiesce/snapshot.js';
import { packageRoot } from '../src/util/package-root.js';
import { distribution } from '../src/util/stats.js';
import { logger } from '../src/log.js';

const log = logger.child({ component: 'bench-host' });
log.level = 'warn';

const PLUGINS = 20;
const EVENTS = 20_000;
const AGENTS = Number(process.env.SYMBIO_BENCH_AGENTS ?? 1_000);
const RANKS_PER_AGENT = 10;
const REPORT_MS = 100;
const CYCLES = Number(process.env.SYMBIO_BENCH_CYCLES ?? 30);

async function hookDispatch(): Promise<Record<string, number>> {
  let sink = 0;
  const observe = (e: HealthEvent): void => void (sink += e.at & 1);
  const decide = (e: HealthEvent): null => ((sink += e.at & 1), null);
  const plugins = Array.from({ length: PLUGINS }, (_, i) =>
    definePlugin({
      name: `p${i}`,
      version: '1.0.0',
      apiVersion: PLUGIN_API_VERSION,
      kind: 'policy',
      configSchema: z.object({}).strict(),
      setup: () => ({ healthEvent: observe, decideOnHealth: decide }),
    }),
  );
  const driver = new PluginDriver({ log, hookTimeoutMs: 5_000 });
  await driver.start(plugins.map((plugin) => ({ plugin })));
  const event: HealthEvent = { monitor: 'm', host: 'h', component: 'c', severity: 'warning', message: 'x', at: 1 };
  const view = { now: 0, hosts: [], jobs: [] };
  const viaDriver = async (): Promise<void> => {
    await driver.hookParallel('healthEvent', event);
    await driver.hookFirst('decideOnHealth', event, view);
  };
  // The same calls without the host: what the plugins themselves cost.
  const direct = async (): Promise<void> => {
    await Promise.all(plugins.map(async () => observe(event)));
    for (let i = 0; i < PLUGINS; i++) if ((await decide(event)) !== null) break;
  };
  const rounds: { driver: number[]; direct: number[] } = { driver: [], direct: [] };
  for (let round = 0; round < 10; round++) {
    // interleaved, so both see the same machine
    for (const [name, f] of [['driver', viaDriver], ['direct', direct]] as const) {
      const t0 = performance.now();
      for (let i = 0; i < EVENTS / 10; i++) await f();
      rounds[name].push(((performance.now() - t0) * 1000) / (EVENTS / 10));
    }
  }
  await driver.teardown();
  const d = distribution(rounds.driver).p50;
  const b = distribution(rounds.direct).p50;
  if (sink < 0) throw new Error('unreachable');
  return { plugins: PLUGINS, events: EVENTS, per_event_us: d, direct_per_event_us: b, overhead_per_event_us: d - b, ratio: d / b };
}

/** CPU of this process (the controller) over `ms`, as % of one core. */
async function cpuOver(ms: number): Promise<number> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const c = process.cpuUsage(c0);
  return ((c.user + c.system) / 1000 / (performance.now() - t0)) * 100;
}

async function controllerAtScale(): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'symbio-bench-host-'));
  const controller = new Controller({
    stateDir: join(dir, 'state'),
    whenBusy: 'queue',
    queueLimit: 4,
    quiesce: { timeoutMs: 30_000, stallMs: 5_000 },
    log,
  });
  const socket = join(dir, 'controller.sock');
  const server = new ControllerServer(controller, { unixPath: socket, log, agentCallTimeoutMs: 30_000 });
  await server.listen();
  const job = 'bench';
  const swarm = spawn(process.execPath, [join(packageRoot(), 'dist', 'bench', 'host-swarm.js'), socket, job, String(AGENTS), String(RANKS_PER_AGENT), String(REPORT_MS)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      swarm.on('exit', (code) => reject(new Error(`agent swarm exited (${code}) before it was ready`)));
      createInterface({ input: swarm.stdout! }).once('line', () => resolve());
    });
    const ranks = AGENTS * RANKS_PER_AGENT;
    process.stderr.write(`bench host: ${AGENTS} agents attached (${ranks} ranks); measuring\n`);
    const idleCpu = await cpuOver(5_000);

    const latency: number[] = [];
    const total: number[] = [];
    const holdMs: number[] = [];
    const resumeMs: number[] = [];
    let snapshots: NodeSnapshot[] = [];
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < CYCLES; i++) {
      const f = await controller.request({ job, kind: 'freeze', requestedBy: 'bench' });
      if (!f.ok) throw new Error(`freeze ${i} failed: ${f.error}`);
      total.push(f.durationMs);
      latency.push((f.result as { decisionMs: number }).decisionMs);
      holdMs.push(f.phases.find((p) => p.name === 'quiescing')?.ms ?? NaN);
      if (i === CYCLES - 1) snapshots = ((await controller.status(job)) as { nodes: { ranks: NodeSnapshot['ranks']; node: string; epoch: number; command: 'freeze' }[] }).nodes.map((n) => ({ node: n.node, epoch: n.epoch, command: n.command, consistent: true, takenNs: 1, ranks: n.ranks }));
      const r = await controller.request({ job, kind: 'resume', requestedBy: 'bench' });
      if (!r.ok) throw new Error(`resume ${i} failed: ${r.error}`);
      resumeMs.push(r.durationMs);
      await new Promise((res) => setTimeout(res, 100));
    }
    const c = process.cpuUsage(c0);
    const cyclingCpu = ((c.user + c.system) / 1000 / (performance.now() - t0)) * 100;

    // Baseline: the coordinator alone deciding over the same 10,000 ranks.
    const coordinator = new QuiesceCoordinator({ stallMs: 5_000 });
    const evalMs: number[] = [];
    const epoch = snapshots[0]?.epoch ?? 0;
    for (let i = 0; i < 20; i++) {
      coordinator.begin(epoch, 0);
      const e0 = performance.now();
      const d = coordinator.evaluate(snapshots.map((s) => ({ ...s, command: 'hold' as const })), 1);
      evalMs.push(performance.now() - e0);
      if (d.kind !== 'quiescent') throw new Error(`baseline evaluation not quiescent: ${JSON.stringify(d).slice(0, 300)}`);
    }
    const lat = distribution(latency);
    const ev = distribution(evalMs);
    return {
      agents: AGENTS,
      ranks,
      report_interval_ms: REPORT_MS,
      cycles: CYCLES,
      controller_cpu_idle_pct: idleCpu,
      controller_cpu_while_cycling_pct: cyclingCpu,
      // last report in -> verdict: the controller's share of a global quiesce
      decision_latency_ms: lat,
      // request -> every rank frozen, with 1,000 simulated agents on this same 2-core machine
      freeze_total_ms: distribution(total),
      hold_phase_ms: distribution(holdMs),
      resume_ms: distribution(resumeMs),
      coordinator_evaluate_ms: ev,
      ratio_decision_p50_to_evaluate_p50: lat.p50 / ev.p50,
      targets: { decision_p99_le_100ms: lat.p99 <= 100, cpu_le_25pct: idleCpu <= 25 },
    };
  } finally {
    swarm.stdin?.end();
    swarm.kill();
    await server.close();
    await controller.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchHost(): Promise<unknown> {
  const machine = { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown', node: process.version };
  process.stderr.write('bench host: hook dispatch, 20 plugins\n');
  const hooks = await hookDispatch();
  process.stderr.write(`bench host: controller with ${AGENTS} simulated agents\n`);
  const controller = await controllerAtScale();
  return { bench: 'host', machine, hooks, controller };
}
