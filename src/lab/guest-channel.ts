/**
 * The host end of the lab guest's virtio-serial channel (guest/PROTOCOL.md): a unix socket that
 * QEMU listens on (`-chardev socket,server=on,wait=off`), carrying JSON lines.
 *
 * Requests carry ids and are matched to replies by id; the guest answers in order, so a reply
 * with id -1 (a line it could not parse) fails the oldest pending request. Events ('ready',
 * 'interval') are routed apart. When the connection ends every pending request rejects.
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { LineSplitter, LineTooLongError } from '../qmp/framing';
import { GUEST_PROTOCOL_VERSION, type GuestIntervalEvent, type GuestReadyEvent } from './guest-protocol';

/** Longest line accepted from the guest: a GPA report of a 4 GiB buffer in the worst case. */
const MAX_LINE_BYTES = 64 * 1024 * 1024;
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;

/** The guest refused a command (`ok: false`); the channel stays usable. */
export class GuestCommandError extends Error {
  override name = 'GuestCommandError';
  constructor(
    readonly command: string,
    readonly guestMessage: string,
  ) {
    super(`guest command ${command} failed: ${guestMessage}`);
  }
}

/** The channel closed, timed out, or the guest sent something outside the protocol. */
export class GuestChannelError extends Error {
  override name = 'GuestChannelError';
  constructor(
    message: string,
    readonly code: 'ECLOSED' | 'ETIMEDOUT' | 'EPROTO' | 'ECONNECT',
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

interface Pending {
  command: string;
  resolve(reply: Record<string, unknown>): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
}

export interface GuestChannel {
  on(event: 'ready', listener: (ev: GuestReadyEvent) => void): this;
  on(event: 'interval', listener: (ev: GuestIntervalEvent) => void): this;
  /** Any other event line from the guest. */
  on(event: 'event', listener: (ev: Record<string, unknown>) => void): this;
  on(event: 'close', listener: (err: GuestChannelError) => void): this;
  off(event: 'ready', listener: (ev: GuestReadyEvent) => void): this;
  off(event: 'interval', listener: (ev: GuestIntervalEvent) => void): this;
  off(event: 'event', listener: (ev: Record<string, unknown>) => void): this;
  off(event: 'close', listener: (err: GuestChannelError) => void): this;
}

export class GuestChannel extends EventEmitter {
  private readonly splitter = new LineSplitter(MAX_LINE_BYTES);
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedWith: GuestChannelError | undefined;
  private readyEvent: GuestReadyEvent | undefined;
  private readonly closed: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    readonly socketPath: string,
  ) {
    super();
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => {
      // 'close' follows and reports; the socket error itself carries nothing the caller needs.
    });
    socket.on('close', () => this.teardown(new GuestChannelError(`guest channel ${socketPath} closed`, 'ECLOSED')));
  }

  /**
   * Connects to QEMU's listening socket, retrying while it does not exist yet or refuses
   * (QEMU creates it while parsing its options) until `timeoutMs` (1..600000; default 10000).
   * `abort` ends the retries early (e.g. when QEMU exited).
   */
  static async connect(socketPath: string, opts: { timeoutMs?: number; abort?: AbortSignal } = {}): Promise<GuestChannel> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 600_000) {
      throw new RangeError(`timeoutMs: must be an integer from 1 to 600000 (got ${timeoutMs})`);
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection({ path: socketPath });
          s.once('connect', () => {
            s.removeListener('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        return new GuestChannel(socket, socketPath);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const retry = code === 'ENOENT' || code === 'ECONNREFUSED';
        if (!retry || Date.now() >= deadline || opts.abort?.aborted) {
          throw new GuestChannelError(`cannot connect to guest channel ${socketPath}: ${(err as Error).message}`, 'ECONNECT', { cause: err });
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** True until the connection ends. */
  get connected(): boolean {
    return this.closedWith === undefined;
  }

  /** The guest's ready event, once it arrived. */
  get ready(): GuestReadyEvent | undefined {
    return this.readyEvent;
  }

  /** Resolves with the ready event (at once if it already came); rejects after `timeoutMs` or on close. */
  waitReady(timeoutMs: number): Promise<GuestReadyEvent> {
    if (this.readyEvent) return Promise.resolve(this.readyEvent);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('ready', onReady);
        this.off('close', onClose);
      };
      const onReady = (ev: GuestReadyEvent): void => {
        done();
        resolve(ev);
      };
      const onClose = (err: GuestChannelError): void => {
        done();
        reject(err);
      };
      const timer = setTimeout(() => {
        done();
        reject(new GuestChannelError(`guest not ready within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.on('ready', onReady);
      this.on('close', onClose);
    });
  }

  /**
   * Sends one command and resolves with the reply's fields (without id/ok). Rejects with
   * GuestCommandError when the guest refused it, GuestChannelError on timeout or close.
   * `timeoutMs`: 1..3600000, default 30000.
   */
  request<T = Record<string, unknown>>(command: string, args: Record<string, unknown> = {}, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 3_600_000) {
      return Promise.reject(new RangeError(`timeoutMs: must be an integer from 1 to 3600000 (got ${timeoutMs})`));
    }
    for (const [k, v] of Object.entries(args)) {
      // The guest's parser takes flat objects only (guest/PROTOCOL.md).
      if (!['number', 'string', 'boolean'].includes(typeof v)) return Promise.reject(new TypeError(`${k}: guest command fields must be numbers, strings or booleans`));
    }
    const id = this.nextId++;
    const line = JSON.stringify({ id, cmd: command, ...args }) + '\n';
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new GuestChannelError(`guest command ${command} timed out after ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (r: Record<string, unknown>) => void, reject, timer });
      this.socket.write(line);
    });
  }

  /** Closes the connection; pending requests reject. Idempotent. */
  async close(): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }

  private onData(chunk: Buffer): void {
    let lines: string[];
    try {
      lines = this.splitter.push(chunk);
    } catch (err) {
      if (!(err instanceof LineTooLongError)) throw err;
      this.protocolError(`guest line longer than ${err.maxLineBytes} bytes`);
      return;
    }
    for (const line of lines) {
      if (line.trim() === '') continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch {
        this.protocolError(`guest sent a line that is not JSON: ${line.slice(0, 200)}`);
        return;
      }
      if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
        this.protocolError(`guest sent a non-object: ${line.slice(0, 200)}`);
        return;
      }
      this.dispatch(msg as Record<string, unknown>);
    }
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      if (msg.event === 'ready') {
        const ev = msg as unknown as GuestReadyEvent;
        if (ev.protocol !== GUEST_PROTOCOL_VERSION) {
          this.protocolError(`guest speaks protocol ${String(ev.protocol)}, host speaks ${GUEST_PROTOCOL_VERSION} (rebuild the guest)`);
          return;
        }
        this.readyEvent = ev;
        this.emit('ready', ev);
      } else if (msg.event === 'interval') {
        this.emit('interval', msg as unknown as GuestIntervalEvent);
      } else {
        this.emit('event', msg);
      }
      return;
    }
    if (typeof msg.id !== 'number' || typeof msg.ok !== 'boolean') {
      this.protocolError(`guest sent a line that is neither an event nor a reply: ${JSON.stringify(msg).slice(0, 200)}`);
      return;
    }
    let id = msg.id;
    // id -1: the guest could not read the id of a command; it handles commands in order, so it
    // was the oldest one pending.
    if (id === -1 && this.pending.size > 0) id = Math.min(...this.pending.keys());
    const p = this.pending.get(id);
    if (!p) {
      // id 0: replies to commands from the kernel command line; others: calls that timed out.
      this.emit('event', msg);
      return;
    }
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (msg.ok) {
      const { id: _id, ok: _ok, ...rest } = msg;
      p.resolve(rest);
    } else {
      p.reject(new GuestCommandError(p.command, typeof msg.error === 'string' ? msg.error : JSON.stringify(msg)));
    }
  }

  private protocolError(message: string): void {
    this.teardown(new GuestChannelError(message, 'EPROTO'));
    this.socket.destroy();
  }

  private teardown(err: GuestChannelError): void {
    if (this.closedWith) return;
    this.closedWith = err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.emit('close', err);
  }
}
