/**
 * What a QEMU VM is made of, validated (zod), and the argv that starts it.
 *
 * Every PCI device has a pinned address: source and destination of a
 * migration must agree slot for slot, and a device that is absent on one side
 * (the interconnect NIC, unplugged for the move) must not shift the others
 * (QEMU then fails with "Unknown savevm section"). A NIC with `attached:
 * false` keeps its backend (netdev) so that it can be plugged in later with
 * the same address and MAC.
 */
import { z } from 'zod';

const id = z.string().regex(/^[a-zA-Z][a-zA-Z0-9_-]{0,30}$/, 'a QEMU id: a letter, then letters, digits, _ or -, at most 31');
/** Slot on the i440fx root bus: 0 is the host bridge and 1 the ISA bridge. */
const pciSlot = z.number().int().min(2).max(31);
const mac = z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/, 'a MAC address like 52:54:00:12:34:56 (lower case)');
const port = z.number().int().min(1).max(65535);
/** A path QEMU takes in a `key=value,...` option: a comma would split it. */
const optionPath = z.string().min(1).refine((p) => !p.includes(','), 'a path without commas (QEMU options split on them)');

export const netBackendSchema = z.discriminatedUnion('type', [
  /** An L2 segment shared by every QEMU that joins the group (loopback multicast). */
  z.strictObject({
    type: z.literal('mcast'),
    group: z.ipv4().default('230.0.0.1'),
    port,
    localAddr: z.ipv4().default('127.0.0.1'),
  }),
  /** User-mode networking: the host reaches guest ports through forwards. */
  z.strictObject({
    type: z.literal('user'),
    hostForwards: z
      .array(z.strictObject({ hostAddr: z.ipv4().default('127.0.0.1'), hostPort: port, guestPort: port }))
      .default([]),
  }),
]);
export type NetBackend = z.infer<typeof netBackendSchema>;

export const nicSchema = z.strictObject({
  id,
  mac,
  net: netBackendSchema,
  addr: pciSlot,
  /** false: only the backend exists at start; device_add plugs the NIC in later. */
  attached: z.boolean().default(true),
});
export type NicSpec = z.infer<typeof nicSchema>;

export const diskSchema = z.strictObject({
  id,
  path: optionPath,
  format: z.enum(['raw', 'qcow2']).default('raw'),
  readOnly: z.boolean().default(false),
  addr: pciSlot,
});

export const vmSpecSchema = z
  .strictObject({
    name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'lower-case letters, digits and -, at most 63'),
    qemuBinary: z.string().default('qemu-system-x86_64'),
    accel: z.enum(['tcg', 'kvm']).default('tcg'),
    /** Alias or versioned name; a checkpoint records the versioned one. */
    machine: z.string().regex(/^[a-z0-9.-]+$/).default('pc'),
    cpus: z.number().int().min(1).max(64).default(1),
    memoryMiB: z.number().int().min(32).max(1 << 20),
    kernel: z
      .strictObject({ path: optionPath, initrd: optionPath.optional(), cmdline: z.string().default('') })
      .optional(),
    disks: z.array(diskSchema).default([]),
    nics: z.array(nicSchema).default([]),
    /** virtio-serial ports, each a Unix socket on the host (QEMU listens). */
    serial: z
      .strictObject({
        addr: pciSlot,
        ports: z.array(z.strictObject({ id, name: z.string().regex(/^[a-zA-Z0-9._-]+$/), socketPath: optionPath })).min(1),
      })
      .optional(),
    /** virtio-balloon; free-page hinting lets precopy skip pages the guest has freed. */
    balloon: z.strictObject({ addr: pciSlot, freePageHint: z.boolean().default(true) }).optional(),
    /** virtio-rng: the guest's entropy pool fills at boot (sshd waits for it otherwise). */
    rng: z.strictObject({ addr: pciSlot }).optional(),
    qmpSocket: optionPath,
    /** The guest's serial console, appended to this file. */
    consoleLog: optionPath.optional(),
    /** Start as a migration target waiting for migrate-incoming. */
    incoming: z.boolean().default(false),
    /** Appended verbatim, for what this schema does not cover. */
    extraArgs: z.array(z.string()).default([]),
  })
  .superRefine((spec, ctx) => {
    const slots = new Map<number, string>();
    const ids = new Set<string>();
    const take = (slot: number, what: string, path: (string | number)[]) => {
      const owner = slots.get(slot);
      if (owner !== undefined) ctx.addIssue({ code: 'custom', path, message: `PCI slot ${slot} is taken by ${owner} already` });
      slots.set(slot, what);
    };
    const name = (devId: string, path: (string | number)[]) => {
      if (ids.has(devId)) ctx.addIssue({ code: 'custom', path, message: `device id ${devId} is used twice` });
      ids.add(devId);
    };
    spec.disks.forEach((d, i) => (take(d.addr, `disk ${d.id}`, ['disks', i, 'addr']), name(d.id, ['disks', i, 'id'])));
    spec.nics.forEach((n, i) => (take(n.addr, `nic ${n.id}`, ['nics', i, 'addr']), name(n.id, ['nics', i, 'id'])));
    if (spec.serial) {
      take(spec.serial.addr, 'virtio-serial', ['serial', 'addr']);
      spec.serial.ports.forEach((p, i) => name(p.id, ['serial', 'ports', i, 'id']));
    }
    if (spec.balloon) take(spec.balloon.addr, 'balloon', ['balloon', 'addr']);
    if (spec.rng) take(spec.rng.addr, 'rng', ['rng', 'addr']);
    const macs = new Set<string>();
    spec.nics.forEach((n, i) => {
      if (macs.has(n.mac)) ctx.addIssue({ code: 'custom', path: ['nics', i, 'mac'], message: `MAC ${n.mac} is used twice` });
      macs.add(n.mac);
    });
  });

export type VmSpecInput = z.input<typeof vmSpecSchema>;
export type VmSpec = z.output<typeof vmSpecSchema>;

export class VmSpecError extends Error {
  override name = 'VmSpecError';
}

/** Validate a spec; the error lists every problem with its path. */
export function parseVmSpec(input: unknown): VmSpec {
  const r = vmSpecSchema.safeParse(input);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(spec)'}: ${i.message}`);
  throw new VmSpecError(`invalid VM spec: ${problems.join('; ')}`);
}

const hex = (slot: number) => `0x${slot.toString(16)}`;
const netdevId = (nic: NicSpec) => `net-${nic.id}`;

function netdevArg(nic: NicSpec): string {
  const n = nic.net;
  if (n.type === 'mcast') return `socket,id=${netdevId(nic)},mcast=${n.group}:${n.port},localaddr=${n.localAddr}`;
  const fwd = n.hostForwards.map((f) => `,hostfwd=tcp:${f.hostAddr}:${f.hostPort}-:${f.guestPort}`).join('');
  return `user,id=${netdevId(nic)}${fwd}`;
}

/**
 * device_add arguments of a NIC: the same properties as on the command line,
 * so that a NIC plugged back is the one that was there. `romfile=` empty: the
 * guest boots by -kernel and needs no option ROM (and a ROM would have to
 * match on both sides of a migration).
 */
export function nicDeviceProps(nic: NicSpec): Record<string, string> {
  return { driver: 'virtio-net-pci', id: nic.id, netdev: netdevId(nic), mac: nic.mac, addr: hex(nic.addr), romfile: '' };
}

const props = (p: Record<string, string>) =>
  Object.entries(p)
    .map(([k, v]) => (k === 'driver' ? v : `${k}=${v}`))
    .join(',');

/** The argv (without the binary) that starts `spec`. Pure: tests check it line by line. */
export function qemuArgv(spec: VmSpec): string[] {
  const a: string[] = [
    '-name', `${spec.name},debug-threads=on`,
    '-machine', spec.machine,
    // multi-threaded TCG (one host thread per vCPU) is an -accel property;
    // QEMU 7.2 refuses accel= on -machine together with -accel
    '-accel', spec.accel === 'tcg' && spec.cpus > 1 ? 'tcg,thread=multi' : spec.accel,
    '-m', `${spec.memoryMiB}M`,
    '-smp', String(spec.cpus),
    // Nothing implicit: every device below is named and pinned.
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-qmp', `unix:${spec.qmpSocket},server=on,wait=off`,
    '-serial', spec.consoleLog ? `file:${spec.consoleLog}` : 'null',
  ];
  if (spec.kernel) {
    a.push('-kernel', spec.kernel.path);
    if (spec.kernel.initrd) a.push('-initrd', spec.kernel.initrd);
    if (spec.kernel.cmdline) a.push('-append', spec.kernel.cmdline);
  }
  for (const d of spec.disks) {
    a.push('-drive', `file=${d.path},if=none,id=drv-${d.id},format=${d.format}${d.readOnly ? ',readonly=on' : ''}`);
    a.push('-device', props({ driver: 'virtio-blk-pci', drive: `drv-${d.id}`, id: d.id, addr: hex(d.addr) }));
  }
  for (const n of spec.nics) {
    a.push('-netdev', netdevArg(n));
    if (n.attached) a.push('-device', props(nicDeviceProps(n)));
  }
  if (spec.serial) {
    a.push('-device', props({ driver: 'virtio-serial-pci', id: 'vser', addr: hex(spec.serial.addr) }));
    for (const p of spec.serial.ports) {
      a.push('-chardev', `socket,id=chr-${p.id},path=${p.socketPath},server=on,wait=off`);
      a.push('-device', props({ driver: 'virtserialport', bus: 'vser.0', chardev: `chr-${p.id}`, id: p.id, name: p.name }));
    }
  }
  if (spec.balloon) {
    const hint = spec.balloon.freePageHint;
    // free-page hints are gathered on an iothread of their own
    if (hint) a.push('-object', 'iothread,id=balloon-io');
    a.push('-device', props({ driver: 'virtio-balloon-pci', id: 'balloon', addr: hex(spec.balloon.addr), ...(hint ? { 'free-page-hint': 'on', iothread: 'balloon-io' } : {}) }));
  }
  if (spec.rng) {
    a.push('-object', 'rng-random,id=rng0,filename=/dev/urandom');
    a.push('-device', props({ driver: 'virtio-rng-pci', rng: 'rng0', id: 'rng', addr: hex(spec.rng.addr) }));
  }
  if (spec.incoming) a.push('-incoming', 'defer');
  a.push(...spec.extraArgs);
  return a;
}
