/**
 * Entry of the in-guest agent (bin/symbio-guest-agent.js, started by the
 * image's init when the kernel command line says symbio.agent=1).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GuestAgent, guestNodeName } from './guest-agent.js';
import { VirtioPort, VIRTIO_PORTS_DIR } from './virtio-port.js';
import { logger } from '../log.js';

export const AGENT_PORT = 'org.symbio.agent';

export async function guestAgentMain(): Promise<void> {
  const node = guestNodeName();
  const log = logger.child({ component: 'guest-agent', node });
  let path = process.env.SYMBIO_AGENT_PORT ?? null;
  // the port's node appears a moment after virtio_console loads
  for (let i = 0; i < 100 && path === null; i++) {
    path = findPort(AGENT_PORT);
    if (path === null) await new Promise((r) => setTimeout(r, 50));
  }
  if (path === null) throw new Error(`no virtio-serial port named ${AGENT_PORT} (is the VM started with it, and virtio_console loaded?)`);
  const port = await VirtioPort.open(path);
  const agent = new GuestAgent({ port, node, log });
  log.info({ port: path }, 'guest agent up');
  const stop = (): void => {
    agent.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/**
 * The device of the port with this name. udev makes /dev/virtio-ports/<name>
 * links; the guest image runs no udev, so the name is read from sysfs and
 * the kernel's own node (/dev/vportNpM, from devtmpfs) is used.
 */
function findPort(name: string): string | null {
  const link = join(VIRTIO_PORTS_DIR, name);
  if (existsSync(link)) return link;
  let ports: string[];
  try {
    ports = readdirSync('/sys/class/virtio-ports');
  } catch {
    return null;
  }
  for (const p of ports) {
    try {
      if (readFileSync(join('/sys/class/virtio-ports', p, 'name'), 'utf8').trim() === name && existsSync(join('/dev', p))) return join('/dev', p);
    } catch {
      // a port going away while we look
    }
  }
  return null;
}
