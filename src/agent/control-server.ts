/**
 * The job's control socket (0600, in a 0700 runtime directory): `symbio
 * quiesce`, `symbio resume` and `symbio status` reach the launcher's agent
 * through it. Line-delimited JSON; every malformed input gets an error reply.
 */
import { chmodSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { ControlRequest, MAX_LINE_BYTES, type ControlReply } from './control-protocol.js';
import { descriptionPath, socketPath, type JobDescription } from './runtime-dir.js';
import type { NodeAgent } from './node-agent.js';
import { sumCounts } from '../quiesce/snapshot.js';
import type { Logger } from '../log.js';

export class ControlServer {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  readonly socket: string;
  private readonly description: string;

  constructor(
    private readonly agent: NodeAgent,
    dir: string,
    private readonly job: Omit<JobDescription, 'socket'>,
    private readonly log: Logger,
  ) {
    this.socket = socketPath(dir, job.jobId);
    this.description = descriptionPath(dir, job.jobId);
  }

  async listen(): Promise<void> {
    rmSync(this.socket, { force: true }); // a stale socket of a dead launcher
    const server = createServer((s) => this.onConnection(s));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socket, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(this.socket, 0o600);
    const desc: JobDescription = { ...this.job, socket: this.socket };
    const tmp = `${this.description}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(desc, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, this.description);
  }

  private onConnection(s: Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_LINE_BYTES) {
        this.reply(s, { ok: false, error: `request line longer than ${MAX_LINE_BYTES} bytes` });
        s.end();
        return;
      }
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) void this.handle(s, line);
      }
    });
  }

  private reply(s: Socket, r: ControlReply): void {
    if (!s.destroyed) s.write(JSON.stringify(r) + '\n');
  }

  private async handle(s: Socket, line: string): Promise<void> {
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch {
      this.reply(s, { ok: false, error: 'request is not JSON' });
      return;
    }
    const parsed = ControlRequest.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      this.reply(s, { ok: false, error: `bad request: ${issue ? `${issue.path.join('.') || 'request'}: ${issue.message}` : 'invalid'}` });
      return;
    }
    const req = parsed.data;
    const id = req.id;
    try {
      let result: unknown;
      if (req.op === 'quiesce') result = await this.agent.quiesce({ freeze: req.freeze, timeoutMs: req.timeoutMs });
      else if (req.op === 'resume') result = await this.agent.resume();
      else result = this.status();
      this.log.info({ op: req.op }, 'control request served');
      this.reply(s, { ...(id === undefined ? {} : { id }), ok: true, result });
    } catch (err) {
      this.reply(s, { ...(id === undefined ? {} : { id }), ok: false, error: (err as Error).message });
    }
  }

  private status(): unknown {
    const snap = this.agent.snapshot();
    return {
      jobId: this.job.jobId,
      epoch: snap.epoch,
      command: snap.command,
      ranks: snap.ranks.map((r) => ({
        worldRank: r.worldRank,
        pid: r.pid,
        state: r.state,
        sent: sumCounts(r.sent),
        received: sumCounts(r.recvd),
        drainedNow: r.drainedNow,
        unsupported: r.unsupported,
      })),
    };
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(this.socket, { force: true });
    rmSync(this.description, { force: true });
  }
}

/** Client side: send one request, get one reply. */
export async function controlRequest(socket: string, request: object, timeoutMs: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from ${socket} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(JSON.stringify(request) + '\n'));
    s.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        s.end();
        try {
          resolve(JSON.parse(buf.slice(0, nl)) as ControlReply);
        } catch {
          reject(new Error(`garbled reply from ${socket}`));
        }
      }
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot reach the job's control socket ${socket}: ${err.message}`));
    });
  });
}
