/**
 * The boot contract between a VM launcher and the guest image, in one place:
 * the kernel command line the guest understands (read by
 * scripts/guest/symbio-init) and the console line that says it is ready.
 * See docs/guest-image.md, "Boot contract", for the QEMU side (devices).
 */

/** symbio-init prints `${READY_PREFIX} <name>` on the console (ttyS0) when the guest is ready. */
export const READY_PREFIX = 'symbio-guest-ready';

export const readyLine = (name: string): string => `${READY_PREFIX} ${name}`;

export interface GuestNic {
  /** 52:54:00:xx:xx:xx; the guest finds the interface by it, never by name */
  readonly mac: string;
  /** address with prefix: 10.10.0.1/24 */
  readonly address: string;
}

export interface GuestBootConfig {
  /** hostname; letters, digits, '-' */
  readonly name: string;
  /** VM <-> VM: ssh (mpirun), Open MPI's out-of-band */
  readonly mgmt?: GuestNic;
  /** the interconnect (MPI's TCP BTL); may be unplugged and plugged again */
  readonly ic?: GuestNic;
  /** MAC of the NIC on QEMU user-mode networking (guest 10.0.2.15/24, gateway 10.0.2.2) */
  readonly userMac?: string;
  /** /etc/hosts: name -> address */
  readonly hosts?: Readonly<Record<string, string>>;
  /** start the in-guest agent (once the image has one) */
  readonly agent?: boolean;
  /** kernel messages on the console: off by default (each character costs under TCG) */
  readonly verboseKernel?: boolean;
  /** on a failed boot, a shell on the console instead of power-off */
  readonly debug?: boolean;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const CIDR = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/;
const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

function checkNic(role: string, nic: GuestNic): string {
  if (!MAC.test(nic.mac)) throw new Error(`${role} NIC: '${nic.mac}' is not a MAC address (xx:xx:xx:xx:xx:xx)`);
  const m = CIDR.exec(nic.address);
  if (!m || m.slice(1, 5).some((o) => Number(o) > 255) || Number(m[5]) > 32) {
    throw new Error(`${role} NIC: '${nic.address}' is not an IPv4 address with a prefix (10.10.0.1/24)`);
  }
  return `${nic.mac.toLowerCase()},${nic.address}`;
}

/**
 * The kernel command line (QEMU -append) for a guest of this image.
 * `panic=-1` makes a guest whose init died reboot at once, so QEMU started
 * with -no-reboot exits instead of hanging.
 */
export function guestKernelCommandLine(c: GuestBootConfig): string {
  if (!NAME.test(c.name)) throw new Error(`guest name '${c.name}' is not a valid hostname (letters, digits, '-')`);
  const words = ['console=ttyS0', 'panic=-1', c.verboseKernel ? 'loglevel=7' : 'quiet', `symbio.name=${c.name}`];
  if (c.mgmt) words.push(`symbio.mgmt=${checkNic('mgmt', c.mgmt)}`);
  if (c.ic) words.push(`symbio.ic=${checkNic('ic', c.ic)}`);
  if (c.userMac) {
    if (!MAC.test(c.userMac)) throw new Error(`user NIC: '${c.userMac}' is not a MAC address`);
    words.push(`symbio.user=${c.userMac.toLowerCase()}`);
  }
  const hosts = Object.entries(c.hosts ?? {});
  for (const [n, ip] of hosts) {
    if (!NAME.test(n) || !IPV4.test(ip)) throw new Error(`hosts entry ${n}:${ip} is not <hostname>:<IPv4 address>`);
  }
  if (hosts.length > 0) words.push(`symbio.hosts=${hosts.map(([n, ip]) => `${n}:${ip}`).join(',')}`);
  if (c.agent) words.push('symbio.agent=1');
  if (c.debug) words.push('symbio.debug=1');
  return words.join(' ');
}
