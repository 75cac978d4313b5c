/**
 * The hypervisor driver interface: what symbio's operations need from a
 * hypervisor, whichever it is. The QMP driver (qmp-driver.ts) talks to QEMU
 * processes on this machine; a libvirt driver for many hosts comes later
 * and implements the same.
 */
import type { Logger } from '../log.js';
import type { VmCheckpointManifest } from './qemu/checkpoint.js';
import type { MigrationOptionsInput, MigrationProgress, MigrationResult } from './qemu/migration.js';
import type { VmSpec, VmSpecInput } from './qemu/vm-spec.js';

export type { MigrationOptionsInput, MigrationProgress, MigrationResult, VmCheckpointManifest, VmSpec, VmSpecInput };

export interface VmRunState {
  /** QEMU's RunState: running, paused, inmigrate, postmigrate, ... */
  readonly status: string;
  readonly running: boolean;
}

/** A VM the driver started (or restored); opaque to callers beyond this. */
export interface VmHandle {
  readonly name: string;
  readonly spec: VmSpec;
  /** Resolves when the VM's process is gone, however it went. */
  readonly exited: Promise<{ readonly code: number | null; readonly signal: string | null; readonly stderr: string }>;
}

export interface HypervisorDriver<H extends VmHandle = VmHandle> {
  readonly name: string;
  start(spec: VmSpecInput): Promise<H>;
  status(vm: H): Promise<VmRunState>;
  pause(vm: H): Promise<void>;
  resume(vm: H): Promise<void>;
  /** Hot-unplug a device; resolves once the guest has released it. */
  detachDevice(vm: H, deviceId: string, timeoutMs?: number): Promise<{ ms: number }>;
  /** Plug a NIC of the VM's spec back in (same address, same MAC). */
  attachNic(vm: H, nicId: string): Promise<{ ms: number }>;
  /**
   * Start the destination of a migration ahead of time (off the critical
   * path); pass it to migrate() as `to`.
   */
  prepareDestination(spec: VmSpecInput): Promise<H>;
  /** Live-migrate; on failure the guest runs on the source again and the error says so. */
  migrate(
    vm: H,
    to: VmSpecInput | H,
    options: MigrationOptionsInput,
    o?: { signal?: AbortSignal; onProgress?: (p: MigrationProgress) => void },
  ): Promise<{ vm: H; result: MigrationResult }>;
  /** Save the VM's state to `<dir>/<vm>.vmstate` with its manifest. */
  checkpoint(vm: H, dir: string, o?: { leaveStopped?: boolean }): Promise<VmCheckpointManifest>;
  /** Start a VM from a manifest, refusing a state file that does not match it. */
  restore(manifestPath: string, o?: { adapt?: (spec: VmSpec) => VmSpec; resume?: boolean }): Promise<{ vm: H; manifest: VmCheckpointManifest; restoreMs: number }>;
  /** Ask the VM to go (gracefully, then by force). */
  stop(vm: H): Promise<void>;
}

export interface DriverOptions {
  log: Logger;
}
