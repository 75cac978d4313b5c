/**
 * The guest's end of a virtio-serial port (/dev/virtio-ports/<name>), as a
 * line channel that knows whether the host end is connected.
 *
 * Linux's virtio console tells the guest little: read() returns 0 at once
 * while no host process holds the port's socket, and blocks while one does;
 * write() blocks while none does. Node cannot poll a character device (libuv
 * treats it as a file), so reads run on the thread pool: a read that returns
 * data means "connected", one that returns 0 means "not connected", and
 * while not connected we try again every `pollMs` (a timer, not a spin).
 * The host speaks first on every connection, so the first line we read is
 * also the news that a controller is there. Writes go out only while
 * connected; one caught by a disconnect is delivered when the next host
 * connects (the host ignores stale answers by id).
 *
 * A VM that migrates or is restored sees its port disconnect (the source
 * QEMU's socket is gone) and connect again when the controller reaches the
 * destination's socket: the same object carries on.
 */
import { EventEmitter } from 'node:events';
import { close, open, read, write, constants as fsConstants } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import { JsonLineReader } from '../util/json-lines.js';

export interface VirtioPortEvents {
  connected: [];
  disconnected: [];
  line: [string];
  overflow: [number];
}

const readAsync = (fd: number, buf: Buffer): Promise<number> =>
  new Promise((resolve, reject) => read(fd, buf, 0, buf.length, null, (err, n) => (err ? reject(err) : resolve(n))));

const writeAsync = (fd: number, buf: Buffer, off: number): Promise<number> =>
  new Promise((resolve, reject) => write(fd, buf, off, buf.length - off, null, (err, n) => (err ? reject(err) : resolve(n))));

export const VIRTIO_PORTS_DIR = '/dev/virtio-ports';

export class VirtioPort extends EventEmitter<VirtioPortEvents> {
  #connected = false;
  #closed = false;
  #decoder = new StringDecoder('utf8');
  #lines: JsonLineReader;
  /** Writes in order, one at a time (a partial write is finished before the next starts). */
  #writing: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly pollMs: number,
    lineLimit: number,
  ) {
    super();
    this.#lines = new JsonLineReader(lineLimit, (l) => this.emit('line', l), (n) => this.emit('overflow', n));
  }

  /** Open the port (it must exist: the VM has the device) and start reading. */
  static open(path: string, o: { pollMs?: number; lineLimit?: number } = {}): Promise<VirtioPort> {
    return new Promise((resolve, reject) => {
      open(path, fsConstants.O_RDWR | fsConstants.O_NOCTTY, (err, fd) => {
        if (err) {
          const why = err.code === 'ENOENT' ? 'the VM has no such virtio-serial port' : err.code === 'EBUSY' ? 'another process holds the port (one agent per VM)' : err.message;
          reject(new Error(`cannot open ${path}: ${why}`));
          return;
        }
        const port = new VirtioPort(path, fd, o.pollMs ?? 20, o.lineLimit ?? 1024 * 1024);
        void port.#readLoop();
        resolve(port);
      });
    });
  }

  get connected(): boolean {
    return this.#connected;
  }

  async #readLoop(): Promise<void> {
    const buf = Buffer.allocUnsafe(64 * 1024);
    while (!this.#closed) {
      let n: number;
      try {
        n = await readAsync(this.fd, buf);
      } catch (err) {
        if (this.#closed) return;
        // EAGAIN/EINTR cannot happen on a blocking fd; anything else is the device going away
        this.#setConnected(false);
        this.emit('overflow', -1);
        process.emitWarning(`virtio port ${this.path}: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (n === 0) {
        this.#setConnected(false);
        await new Promise((r) => setTimeout(r, this.pollMs));
        continue;
      }
      this.#setConnected(true);
      this.#lines.push(this.#decoder.write(buf.subarray(0, n)));
    }
  }

  #setConnected(c: boolean): void {
    if (c === this.#connected) return;
    this.#connected = c;
    if (!c) {
      // a line cut by the disconnect is not completed by the next host
      this.#decoder = new StringDecoder('utf8');
      this.#lines = new JsonLineReader(1024 * 1024, (l) => this.emit('line', l), (n) => this.emit('overflow', n));
    }
    this.emit(c ? 'connected' : 'disconnected');
  }

  /** Send one JSON line; false (dropped) while no host is connected. */
  writeLine(value: unknown): boolean {
    if (!this.#connected || this.#closed) return false;
    const data = Buffer.from(JSON.stringify(value) + '\n');
    this.#writing = this.#writing.then(async () => {
      let off = 0;
      while (off < data.length && !this.#closed) {
        try {
          off += await writeAsync(this.fd, data, off);
        } catch {
          return; // the port went away: the line is lost with the connection
        }
      }
    });
    return true;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // a read blocked on the thread pool ends with the process; the fd goes now
    close(this.fd, () => undefined);
  }
}
