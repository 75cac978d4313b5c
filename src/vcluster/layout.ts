/**
 * How a local virtual cluster is laid out. Two things are kept apart:
 *
 * - a VM's identity (name, MACs, addresses), which travels with it when it
 *   migrates: the guest keeps its addresses and its peers never notice;
 * - a slot: a place a QEMU process runs, with its own QMP socket, console
 *   log, agent socket and forwarded ssh port. VMs start in slots 0..n-1;
 *   the rest are spares, where migration targets start.
 *
 * Every VM has a management NIC (VM to VM: ssh for mpirun, Open MPI's
 * out-of-band channel), an interconnect NIC (MPI's TCP BTL; stands for a
 * device that cannot migrate, so it is hot-unplugged around moves), both on
 * L2 segments that are UDP multicast groups on loopback, plus a host-access
 * NIC on QEMU's user networking through which the host reaches sshd.
 */
import { join } from 'node:path';
import type { VmSpecInput } from '../hypervisor/qemu/vm-spec.js';
import { guestKernelCommandLine } from '../image/boot-contract.js';

export interface VmIdentity {
  readonly index: number;
  readonly name: string;
  readonly mgmtMac: string;
  readonly icMac: string;
  readonly hostMac: string;
  readonly mgmtIp: string;
  readonly icIp: string;
}

export interface ClusterNetwork {
  readonly group: string;
  readonly mgmtPort: number;
  readonly icPort: number;
}

export interface GuestImageFiles {
  readonly kernel: string;
  readonly initrd: string;
  readonly rootDisk: string;
}

/** PCI slots of the guest devices: fixed, identical on every VM and target. */
export const PCI = { root: 2, mgmt: 3, host: 4, serial: 5, balloon: 6, ic: 7, rng: 8 } as const;
export const AGENT_PORT_NAME = 'org.symbio.agent';
export const MGMT_SUBNET = '10.10.0';
export const IC_SUBNET = '10.20.0';
export const MAX_VMS = 200;

const byte = (n: number) => n.toString(16).padStart(2, '0');

export function vmIdentity(index: number): VmIdentity {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_VMS) throw new Error(`VM index ${index} is out of range 0..${MAX_VMS - 1}`);
  return {
    index,
    name: `vm${index}`,
    mgmtMac: `52:54:00:10:00:${byte(index + 1)}`,
    icMac: `52:54:00:20:00:${byte(index + 1)}`,
    hostMac: `52:54:00:30:00:${byte(index + 1)}`,
    mgmtIp: `${MGMT_SUBNET}.${index + 1}`,
    icIp: `${IC_SUBNET}.${index + 1}`,
  };
}

export function slotPaths(clusterDir: string, slot: number) {
  return {
    qmp: join(clusterDir, `slot${slot}.qmp`),
    agent: join(clusterDir, `slot${slot}.agent`),
    console: join(clusterDir, `slot${slot}.console`),
  };
}

export interface VmSpecParams {
  readonly clusterDir: string;
  readonly vm: VmIdentity;
  readonly all: readonly VmIdentity[];
  readonly slot: number;
  readonly sshPort: number;
  readonly net: ClusterNetwork;
  readonly image: GuestImageFiles;
  readonly memoryMiB: number;
  readonly cpus: number;
  readonly accel: 'kvm' | 'tcg';
  /** false on a migration target of a cooperative move (the NIC is plugged after). */
  readonly icAttached?: boolean;
  readonly incoming?: boolean;
}

/** The QEMU spec of VM `vm` in slot `slot`. Source and targets differ only in slot files and ports. */
export function vmSpec(p: VmSpecParams): VmSpecInput {
  const { vm } = p;
  const paths = slotPaths(p.clusterDir, p.slot);
  const cmdline = guestKernelCommandLine({
    name: vm.name,
    mgmt: { mac: vm.mgmtMac, address: `${vm.mgmtIp}/24` },
    ic: { mac: vm.icMac, address: `${vm.icIp}/24` },
    userMac: vm.hostMac,
    hosts: Object.fromEntries(p.all.map((v) => [v.name, v.mgmtIp])),
    agent: true,
  });
  return {
    name: vm.name,
    accel: p.accel,
    cpus: p.cpus,
    memoryMiB: p.memoryMiB,
    kernel: { path: p.image.kernel, initrd: p.image.initrd, cmdline },
    disks: [{ id: 'root', path: p.image.rootDisk, readOnly: true, addr: PCI.root }],
    nics: [
      { id: 'mgmt', mac: vm.mgmtMac, net: { type: 'mcast', group: p.net.group, port: p.net.mgmtPort }, addr: PCI.mgmt },
      { id: 'host', mac: vm.hostMac, net: { type: 'user', hostForwards: [{ hostPort: p.sshPort, guestPort: 22 }] }, addr: PCI.host },
      { id: 'ic', mac: vm.icMac, net: { type: 'mcast', group: p.net.group, port: p.net.icPort }, addr: PCI.ic, attached: p.icAttached ?? true },
    ],
    serial: { addr: PCI.serial, ports: [{ id: 'agent', name: AGENT_PORT_NAME, socketPath: paths.agent }] },
    // Free-page hints are off: with them, Debian 12's 6.1 guest kernel
    // panicked after migrations here (kernel stack overflow in the
    // balloon's report_free_page_func). bench/migration.ts measures them.
    balloon: { addr: PCI.balloon, freePageHint: false },
    rng: { addr: PCI.rng },
    qmpSocket: paths.qmp,
    consoleLog: paths.console,
    incoming: p.incoming ?? false,
    // a guest whose init died panics and reboots (panic=-1): end QEMU instead, so the VM shows as gone
    extraArgs: ['-no-reboot'],
  };
}
