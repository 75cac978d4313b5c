/**
 * What the controller's VM operations (cooperative migration, coordinated
 * checkpoint, restart) need from wherever a job's VMs run: the local
 * virtual cluster today (vcluster/job-vms.ts), libvirt hosts later. The
 * order of steps, the quiescing around them and the rollback are the
 * controller's (vm-operations.ts); a backend only does one VM-level step
 * per call and says clearly what failed.
 */
import type { MigrationOptionsInput, MigrationProgress, MigrationResult } from '../hypervisor/qemu/migration.js';
import type { VmCheckpointManifest } from '../hypervisor/qemu/checkpoint.js';

export interface BackendVm {
  readonly id: string;
  /** Where it runs now (a slot of the virtual cluster, a host). */
  readonly host: string;
  readonly memoryBytes: number;
  /** The interconnect NIC the agent restores after a move. */
  readonly interconnect: { readonly mac: string; readonly address: string };
}

/** A destination started ahead of a move (off the critical path). */
export interface PreparedMove {
  readonly vm: string;
  readonly to: string;
}

export interface JobVmBackend {
  /** What kind of place VMs run in, for messages ('slot', 'host'). */
  readonly placeKind: string;
  list(): BackendVm[];
  /** Free places VMs can move or restart to. */
  freePlaces(): string[];
  /** Start a destination for each VM (incoming, interconnect not plugged); `to` picks places in order. */
  prepareMoves(vms: readonly string[], to?: readonly string[]): Promise<PreparedMove[]>;
  /** Stop destinations that were prepared and not used (rollback). */
  discardMoves(moves: readonly PreparedMove[]): Promise<void>;
  detachInterconnect(vm: string, timeoutMs?: number): Promise<{ ms: number }>;
  /** Plug the interconnect NIC back into wherever the VM runs now. */
  attachInterconnect(vm: string): Promise<{ ms: number }>;
  /** Live-migrate to the prepared destination; on success the VM runs there (and the source is gone). */
  move(move: PreparedMove, options: MigrationOptionsInput, onProgress?: (p: MigrationProgress) => void, signal?: AbortSignal): Promise<MigrationResult>;
  pause(vms: readonly string[]): Promise<void>;
  cont(vms: readonly string[]): Promise<void>;
  /** Save stopped VMs into `dir` (one state file + manifest each). */
  save(vms: readonly string[], dir: string): Promise<VmCheckpointManifest[]>;
  /** Start VMs from their manifests (paused), into `places` (by VM id) or free ones; resolves once all are loaded. */
  restore(manifests: readonly { vm: string; path: string }[], places?: Readonly<Record<string, string>>): Promise<{ vm: string; to: string; restoreMs: number }[]>;
  /** Kill what runs of these VMs now (before a restart: one running copy per VM). */
  kill(vms: readonly string[]): Promise<void>;
}
