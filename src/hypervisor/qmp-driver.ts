/**
 * The QMP hypervisor driver: QEMU processes on this machine, driven over
 * their QMP sockets. Thin on purpose: each method is one of the QEMU
 * modules (qemu-vm, live-migrate, checkpoint) with the driver's logger and
 * defaults.
 */
import type { Logger } from '../log.js';
import { checkpointVm, restoreVm } from './qemu/checkpoint.js';
import { liveMigrate, startDestination } from './qemu/live-migrate.js';
import { QemuVm, type QemuStartOptions } from './qemu/qemu-vm.js';
import type { HypervisorDriver, VmRunState } from './driver.js';
import type { MigrationOptionsInput, MigrationProgress } from './qemu/migration.js';
import type { VmSpec, VmSpecInput } from './qemu/vm-spec.js';

export interface QmpDriverOptions {
  log: Logger;
  /** Leave QEMU running when this process exits (the virtual cluster). */
  detached?: boolean;
  startTimeoutMs?: number;
  commandTimeoutMs?: number;
}

export class QmpDriver implements HypervisorDriver<QemuVm> {
  readonly name = 'qmp';
  #log: Logger;
  #start: QemuStartOptions;

  constructor(o: QmpDriverOptions) {
    this.#log = o.log.child({ component: 'qmp-driver' });
    this.#start = { log: this.#log, detached: o.detached, startTimeoutMs: o.startTimeoutMs, commandTimeoutMs: o.commandTimeoutMs };
  }

  start(spec: VmSpecInput): Promise<QemuVm> {
    return QemuVm.start(spec, this.#start);
  }

  status(vm: QemuVm): Promise<VmRunState> {
    return vm.status();
  }

  pause(vm: QemuVm): Promise<void> {
    return vm.pause();
  }

  resume(vm: QemuVm): Promise<void> {
    return vm.resume();
  }

  detachDevice(vm: QemuVm, deviceId: string, timeoutMs?: number): Promise<{ ms: number }> {
    return vm.detachDevice(deviceId, timeoutMs);
  }

  attachNic(vm: QemuVm, nicId: string): Promise<{ ms: number }> {
    return vm.attachNic(nicId);
  }

  prepareDestination(spec: VmSpecInput): Promise<QemuVm> {
    return startDestination(spec, this.#start);
  }

  migrate(
    vm: QemuVm,
    to: VmSpecInput | QemuVm,
    options: MigrationOptionsInput,
    o: { signal?: AbortSignal; onProgress?: (p: MigrationProgress) => void } = {},
  ) {
    return liveMigrate(vm, to, options, { ...this.#start, ...o });
  }

  checkpoint(vm: QemuVm, dir: string, o: { leaveStopped?: boolean } = {}) {
    return checkpointVm(vm, dir, { log: this.#log, ...o });
  }

  restore(manifestPath: string, o: { adapt?: (spec: VmSpec) => VmSpec; resume?: boolean } = {}) {
    return restoreVm(manifestPath, { ...this.#start, ...o });
  }

  async stop(vm: QemuVm): Promise<void> {
    await vm.shutdown();
  }
}
