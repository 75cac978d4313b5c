/**
 * A real Open MPI job split over two real NodeAgents, for controller tests:
 * 4 ranks of halo2d, ranks 0-1 on the first agent's control segment, 2-3 on
 * the second's, with the shim preloaded. The quiesce, freeze, resume and the
 * frozen-interval check it gives the controller are the real ones.
 */
import type { Logger } from 'pino';
import { NodeAgent } from '../../src/agent/node-agent.js';
import type { ParticipantReport, QuiesceParticipant } from '../../src/quiesce/job-quiescer.js';
import type { CatchupTarget } from '../../src/quiesce/snapshot.js';
import { nativeArtifact } from '../../src/util/package-root.js';
import { mpiCommon, prog, start } from './mpi.js';

// each rank picks its node's segment and its slot there from its world rank
const WRAPPER =
  'r=$OMPI_COMM_WORLD_RANK; if [ "$r" -lt 2 ]; then SYMBIO_SEGMENT=$SEG_A; else SYMBIO_SEGMENT=$SEG_B; fi; ' +
  'SYMBIO_SLOT=$((r % 2)); export SYMBIO_SEGMENT SYMBIO_SLOT; exec "$0" "$@"';

/** Start the job (long enough for any test; killed at the test's teardown) and wait until every rank runs. */
export async function twoNodeJob(tt: { teardown(fn: () => unknown): void }, o: { name: string; nodes: [string, string]; log: Logger }) {
  const agents = o.nodes.map(
    (node) => new NodeAgent({ jobId: o.name, node, slots: 2, worldSize: 4, resumeTimeoutMs: 60_000, stallMs: 3_000, log: o.log, segmentName: `/symbio-${o.name}-${node}` }),
  );
  const { child, done } = start('mpirun', [
    ...mpiCommon, '-np', '4',
    '-x', `LD_PRELOAD=${nativeArtifact('libsymbio-shim.so')}`,
    '-x', `SEG_A=${agents[0]!.segmentName}`, '-x', `SEG_B=${agents[1]!.segmentName}`,
    '/bin/sh', '-c', WRAPPER, prog('halo2d'), '10000000',
  ]);
  tt.teardown(async () => {
    child.kill('SIGTERM');
    await done;
    agents.forEach((a) => a.close());
  });
  await Promise.all(agents.map((a) => a.waitForRanks(2, 60_000)));
  return { agents };
}

/** Every rank's state, as `node:worldRank:state` (empty slots left out). */
export function rankStates(agents: readonly NodeAgent[]): string[] {
  return agents.flatMap((a) => a.snapshot().ranks.filter((r) => r.state !== 'empty').map((r) => `${a.node}:${r.worldRank}:${r.state}`));
}

/** Every rank runs (none held, frozen or gone). */
export const allRanksRunning = (agents: readonly NodeAgent[]): boolean => rankStates(agents).every((s) => s.endsWith(':running'));

/**
 * A node as the controller sees it: the real NodeAgent, which can be told to
 * report one MPI call more on its first rank while frozen. A stand-in for the
 * failed frozen-interval check: the shim makes exactly that impossible for a
 * real rank, and a rank killed while frozen does not fail it (a dead rank
 * moved nothing).
 */
export class FrozenCheckNode implements QuiesceParticipant {
  moveWhileFrozen = false;
  constructor(readonly agent: NodeAgent) {}
  get node(): string {
    return this.agent.node;
  }
  async report(): Promise<ParticipantReport> {
    const r = await this.agent.report();
    if (!this.moveWhileFrozen || r.snapshot.command !== 'freeze') return r;
    const [first, ...rest] = r.snapshot.ranks;
    return { ...r, snapshot: { ...r.snapshot, ranks: [{ ...first!, pmpiCalls: first!.pmpiCalls + 1 }, ...rest] } };
  }
  hold(epoch: number): Promise<number> {
    return this.agent.hold(epoch);
  }
  freeze(): Promise<number> {
    return this.agent.freeze();
  }
  resume(): Promise<number> {
    return this.agent.resume();
  }
  setCatchup(slot: number, epoch: number, targets: readonly CatchupTarget[]): Promise<void> {
    return this.agent.setCatchup(slot, epoch, targets);
  }
  subscribe(l: () => void): () => void {
    return this.agent.subscribe(l);
  }
}
