/**
 * The in-guest agent: one per VM, started by the image's init. It serves the
 * ranks of its VM through the control segment (a NodeAgent per job) and
 * talks to the controller over the VM's virtio-serial port
 * (org.symbio.agent), which needs no network: it works while the
 * interconnect NIC is unplugged, and across migration and restore.
 *
 * Besides the quiesce calls (AgentEndpoint) the controller may:
 *  open    {job, slots, worldSize, resumeTimeoutMs, stallMs}  create the job's segment, or find it again
 *  run     {argv, env}       start the job's launcher command (mpirun) here; its output and exit
 *                            come back as events with byte offsets, so a host that reconnects
 *                            (or restarted the VM from a checkpoint) prints each byte once
 *  signal  {signal}          pass a signal to that command
 *  network {mac, address}    wait until the NIC with this MAC has this address (re-adding it if needed)
 *  close   {job}             release the job's segment
 *
 * A lost connection changes nothing in here: held ranks stay held until the
 * controller comes back or the segment's own resume limit lets them go, so
 * a VM that is being moved is not resumed half-way.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { constants as osConstants } from 'node:os';
import { AgentEndpoint, type IncomingCall } from './agent-endpoint.js';
import { NodeAgent } from './node-agent.js';
import { VirtioPort } from './virtio-port.js';
import { parseJsonLine } from '../util/json-lines.js';
import { runProcess } from '../util/run-process.js';
import type { Logger } from '../log.js';

/** The segment name of a job inside a guest: the same on every VM, so one mpirun -x reaches all ranks. */
export function guestSegmentName(jobId: string): string {
  return `/symbio-${jobId.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200)}`;
}

type Stream = 'stdout' | 'stderr';

interface RunState {
  readonly child: ChildProcess;
  readonly bytes: Record<Stream, number>;
  exit: { code: number | null; signal: string | null } | null;
}

interface OpenJob {
  readonly id: string;
  readonly agent: NodeAgent;
  run: RunState | null;
}

export interface GuestAgentOptions {
  readonly port: VirtioPort;
  readonly node: string;
  readonly log: Logger;
  /** Longest output kept for a controller that is away, bytes (older output is dropped, and says so). */
  readonly maxPendingBytes?: number;
}

export class GuestAgent {
  readonly #endpoint = new AgentEndpoint();
  #job: OpenJob | null = null;
  /** Events for the controller that wait for a connection (output, exit). */
  #pending: object[] = [];
  #pendingBytes = 0;
  #dropped = 0;
  readonly #log: Logger;

  constructor(private readonly o: GuestAgentOptions) {
    this.#log = o.log;
    o.port.on('connected', () => {
      this.#log.info('controller connected');
      this.#endpoint.connect((m) => void o.port.writeLine(m));
      this.#flush();
    });
    o.port.on('disconnected', () => {
      this.#log.info('controller disconnected');
      this.#endpoint.disconnect();
    });
    o.port.on('line', (line) => {
      const p = parseJsonLine(line);
      const call = (p.ok ? p.value : null) as IncomingCall | null;
      if (!call || typeof call.id !== 'number') {
        this.#log.warn({ line: line.slice(0, 200) }, 'not a call');
        return;
      }
      void this.#endpoint.answer(call, (c) => this.#extra(c));
    });
    o.port.on('overflow', (n) => this.#log.warn({ limit: n }, 'line from the controller too long, or the port failed'));
  }

  #extra(c: IncomingCall): Promise<unknown> | undefined {
    switch (c.call) {
      case 'open':
        return Promise.resolve(this.#open(c));
      case 'run':
        return Promise.resolve(this.#run(c));
      case 'signal':
        return Promise.resolve(this.#signal(c));
      case 'network':
        return this.#network(c);
      case 'close':
        return Promise.resolve(this.#close(c));
      default:
        return undefined;
    }
  }

  #open(c: IncomingCall): object {
    const job = c.job;
    if (typeof job !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(job)) throw new Error('open needs a job id');
    const cur = this.#job;
    if (cur && cur.id === job) {
      return { node: this.o.node, segment: cur.agent.segmentName, reattached: true, run: this.#runView(cur.run) };
    }
    if (cur) {
      const busy = (cur.run && !cur.run.exit) || cur.agent.attached.size > cur.agent.exited.size;
      if (busy) throw new Error(`this VM serves job ${cur.id}, which still runs; one job per VM`);
      this.#closeJob();
    }
    const num = (k: string, d: number): number => (typeof c[k] === 'number' && Number.isInteger(c[k]) && (c[k] as number) > 0 ? (c[k] as number) : d);
    const agent = new NodeAgent({
      jobId: job,
      slots: num('slots', 64),
      worldSize: num('worldSize', num('slots', 64)),
      resumeTimeoutMs: num('resumeTimeoutMs', 60_000),
      stallMs: num('stallMs', 2_000),
      segmentName: guestSegmentName(job),
      node: this.o.node,
      log: this.#log.child({ job }),
    });
    this.#job = { id: job, agent, run: null };
    this.#endpoint.setAgent(agent);
    // the controller judges a rank's death (a job failure unless it had finalized)
    agent.on('rank-exit', (r) => {
      const slot = agent.snapshot().ranks.find((x) => x.slot === r.slot && x.pid === r.pid);
      this.#emit({ event: 'rank-exit', job, slot: r.slot, pid: r.pid, worldRank: r.worldRank, finalized: slot?.state === 'finalized' || slot?.state === 'detached' }, 0);
    });
    this.#log.info({ job, segment: agent.segmentName }, 'job opened');
    return { node: this.o.node, segment: agent.segmentName, reattached: false, run: null };
  }

  #runView(r: RunState | null): object | null {
    return r ? { pid: r.child.pid, stdout: r.bytes.stdout, stderr: r.bytes.stderr, exit: r.exit } : null;
  }

  #run(c: IncomingCall): object {
    const job = this.#job;
    if (!job) throw new Error('open a job before run');
    if (job.run) throw new Error(`job ${job.id} already runs its command (pid ${job.run.child.pid})`);
    const argv = c.argv;
    if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) throw new Error('run needs argv: a non-empty list of strings');
    const env: Record<string, string> = { ...process.env, HOME: process.env.HOME ?? '/root' } as Record<string, string>;
    if (c.env && typeof c.env === 'object') for (const [k, v] of Object.entries(c.env as Record<string, unknown>)) if (typeof v === 'string') env[k] = v;
    const child = spawn(argv[0] as string, argv.slice(1) as string[], { stdio: ['ignore', 'pipe', 'pipe'], env, cwd: typeof c.cwd === 'string' ? c.cwd : '/root' });
    const run: RunState = { child, bytes: { stdout: 0, stderr: 0 }, exit: null };
    job.run = run;
    const pipe = (stream: Stream) => (d: Buffer) => {
      this.#emit({ event: 'output', job: job.id, stream, offset: run.bytes[stream], data: d.toString('base64') }, d.length);
      run.bytes[stream] += d.length;
    };
    child.stdout!.on('data', pipe('stdout'));
    child.stderr!.on('data', pipe('stderr'));
    // a command that cannot start says so on its own stderr stream, like any output
    // (and exits 127, like a shell's "command not found" and symbio-mpirun's own mpirun that
    // cannot start: node reports the negative errno as the code, which no exit status is)
    child.once('error', (err) => pipe('stderr')(Buffer.from(`symbio agent: cannot run ${argv[0]}: ${err.message}\n`)));
    child.once('close', (code, signal) => {
      // no pid: it never started
      run.exit = { code: child.pid === undefined ? 127 : code ?? 128 + (signal ? (osConstants.signals as Record<string, number>)[signal] ?? 0 : 0), signal };
      this.#log.info({ job: job.id, code, signal }, 'command ended');
      this.#emit({ event: 'exit', job: job.id, ...run.exit, stdout: run.bytes.stdout, stderr: run.bytes.stderr }, 0);
    });
    this.#log.info({ job: job.id, pid: child.pid, argv: argv.slice(0, 8) }, 'command started');
    return { pid: child.pid ?? null };
  }

  #signal(c: IncomingCall): object {
    const run = this.#job?.run;
    if (!run || run.exit) return { sent: false };
    const sig = typeof c.signal === 'string' ? c.signal : 'SIGTERM';
    if (!['SIGINT', 'SIGTERM', 'SIGKILL', 'SIGHUP'].includes(sig)) throw new Error(`signal ${sig} is not one the agent passes on`);
    return { sent: run.child.kill(sig as NodeJS.Signals) };
  }

  /**
   * The interconnect NIC came back after a move: wait for the guest to see
   * the device, then bring it up with its address (idempotent: the init's
   * watcher does the same when it gets to it). `repaired` says we did it.
   */
  async #network(c: IncomingCall): Promise<object> {
    const mac = typeof c.mac === 'string' ? c.mac.toLowerCase() : '';
    const address = typeof c.address === 'string' ? c.address : '';
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac) || !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(address)) throw new Error('network needs mac (aa:bb:..) and address (a.b.c.d/len)');
    const timeoutMs = typeof c.timeoutMs === 'number' ? c.timeoutMs : 10_000;
    const t0 = performance.now();
    let repaired = false;
    for (;;) {
      const dev = ifaceWithMac(mac);
      if (dev && hasAddress(dev, address)) return { iface: dev, ms: performance.now() - t0, repaired };
      const waited = performance.now() - t0;
      // the init's NIC watcher would add it too, but it is a shell loop: slower under emulation
      if (dev && !repaired) {
        repaired = true;
        await runProcess('ip', ['link', 'set', 'dev', dev, 'up']).catch(() => undefined);
        await runProcess('ip', ['addr', 'replace', address, 'dev', dev]).catch(() => undefined);
        continue;
      }
      if (waited > timeoutMs) throw new Error(dev ? `${dev} (${mac}) did not get ${address} within ${timeoutMs} ms` : `no NIC with MAC ${mac} appeared within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  #close(c: IncomingCall): object {
    if (!this.#job || this.#job.id !== c.job) return { closed: false };
    this.#closeJob();
    return { closed: true };
  }

  #closeJob(): void {
    const j = this.#job;
    if (!j) return;
    this.#endpoint.setAgent(null);
    j.agent.close();
    this.#job = null;
  }

  /** Send an event now, or keep it for the next controller. */
  #emit(event: object, bytes: number): void {
    // writeLine is false when the host is gone, even if we have not heard yet: keep it then
    if (this.#pending.length === 0 && this.#endpoint.connected && this.o.port.writeLine(event)) return;
    this.#pending.push(event);
    this.#pendingBytes += bytes;
    const max = this.o.maxPendingBytes ?? 64 * 1024 * 1024;
    while (this.#pendingBytes > max && this.#pending.length > 1) {
      const e = this.#pending.shift() as { data?: string };
      this.#pendingBytes -= e.data ? Math.floor((e.data.length * 3) / 4) : 0;
      this.#dropped++;
    }
  }

  #flush(): void {
    if (this.#dropped) this.#log.warn({ dropped: this.#dropped }, 'output dropped while no controller was connected');
    const q = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#dropped = 0;
    for (let i = 0; i < q.length; i++) {
      if (!this.o.port.writeLine(q[i])) {
        this.#pending = q.slice(i); // gone again already: keep the rest
        return;
      }
    }
  }

  close(): void {
    this.#closeJob();
    this.#endpoint.close();
    this.o.port.close();
  }
}

function ifaceWithMac(mac: string): string | null {
  for (const dev of readdirSync('/sys/class/net')) {
    try {
      if (readFileSync(join('/sys/class/net', dev, 'address'), 'utf8').trim() === mac) return dev;
    } catch {
      // gone while we looked
    }
  }
  return null;
}

function hasAddress(dev: string, address: string): boolean {
  // synchronous on purpose: a few ms, a few times per move
  try {
    return execFileSync('ip', ['-o', '-4', 'addr', 'show', 'dev', dev], { encoding: 'utf8' }).includes(`inet ${address} `);
  } catch {
    return false;
  }
}

/** The VM's name, from the kernel command line the vcluster gave it. */
export function guestNodeName(): string {
  try {
    const m = /(?:^|\s)symbio\.name=(\S+)/.exec(readFileSync('/proc/cmdline', 'utf8'));
    if (m) return m[1]!;
  } catch {
    // not Linux, or no /proc: fall through
  }
  return 'guest';
}
