/**
 * A QMP (QEMU Machine Protocol) client over a unix socket.
 *
 * Protocol, as QEMU 7.2 speaks it: the server greets with `{"QMP": {"version", "capabilities"}}`;
 * the client sends `qmp_capabilities` and gets `{"return": {}}`; then each `{"execute", "arguments",
 * "id"}` is answered by exactly one `{"return"|"error", "id"}`, in order, while asynchronous
 * `{"event", "data", "timestamp"}` messages may arrive at any time in between.
 *
 * Design (after QEMU's python/qemu/qmp/qmp_client.py):
 * - every request carries an id and replies are matched by id, so many calls can be in flight;
 *   replies with an unknown id (a call that already timed out) are dropped, as the QMP spec asks;
 * - events are routed apart from replies, to the 'event' listeners;
 * - every failure is a QmpError subclass (errors.ts); when the connection ends, every pending call
 *   rejects with QmpDisconnectedError and 'disconnect' is emitted once;
 * - lines are capped (maxLineBytes): a longer line is a protocol error that drops the connection;
 * - no module-level state: any number of clients can talk to any number of monitors at once.
 */
import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import {
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  type QmpDisconnectReason,
  QmpError,
  QmpGreetingError,
  QmpLineTooLongError,
  QmpNegotiationError,
  QmpParseError,
  QmpTimeoutError,
} from './errors';
import { DEFAULT_MAX_LINE_BYTES, LineSplitter, LineTooLongError, MIN_MAX_LINE_BYTES } from './framing';

export * from './errors';

/** An asynchronous QMP event, e.g. STOP, RESUME, BLOCK_JOB_READY, MIGRATION. */
export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  /** QEMU's wall-clock time of the event (seconds and microseconds since the Unix epoch). */
  timestamp: { seconds: number; microseconds: number };
}

/** The server's greeting. */
export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpConnectOptions {
  /** Deadline for connect + greeting + qmp_capabilities, ms (1..600000; default 5000). */
  timeoutMs?: number;
  /** Longest accepted line from the monitor, bytes (256..2^30; default 16 MiB). */
  maxLineBytes?: number;
  /** Default per-call timeout for execute(), ms (0 = none, up to 3600000; default 30000). */
  commandTimeoutMs?: number;
  /**
   * Retry ENOENT/ECONNREFUSED every 20 ms until timeoutMs runs out (default false). For a QEMU just
   * started: it creates the socket file before it listens, so connecting at once can be refused.
   */
  retry?: boolean;
}

export interface QmpExecuteOptions {
  /** This call's timeout, ms (0 = none, up to 3600000; default: the client's commandTimeoutMs). */
  timeoutMs?: number;
  /** Aborting rejects the call with the signal's reason; QEMU still runs the command. */
  signal?: AbortSignal;
}

/** What command helpers need from a client: QmpClient and ReconnectingQmpClient both provide it. */
export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: QmpExecuteOptions): Promise<T>;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
const MAX_TIMEOUT_MS = 3_600_000;

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
  cleanup: (() => void) | undefined;
}

type Phase = 'connecting' | 'greeting' | 'negotiating' | 'ready' | 'closed';

function checkInt(name: string, value: number | undefined, min: number, max: number): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(value)})`);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function excerptOf(line: string): string {
  return line.length > 200 ? line.slice(0, 200) + '…' : line;
}

function validGreeting(msg: Record<string, unknown>): msg is Record<string, unknown> & QmpGreeting {
  const qmp = msg.QMP;
  if (!isPlainObject(qmp) || !isPlainObject(qmp.version) || !Array.isArray(qmp.capabilities)) return false;
  const qemu = qmp.version.qemu;
  return isPlainObject(qemu) && typeof qemu.major === 'number' && typeof qemu.minor === 'number';
}

export interface QmpClient {
  on(event: 'event', listener: (event: QmpEvent) => void): this;
  on(event: 'disconnect', listener: (err: QmpDisconnectedError) => void): this;
  once(event: 'event', listener: (event: QmpEvent) => void): this;
  once(event: 'disconnect', listener: (err: QmpDisconnectedError) => void): this;
  off(event: 'event', listener: (event: QmpEvent) => void): this;
  off(event: 'disconnect', listener: (err: QmpDisconnectedError) => void): this;
}

/**
 * One QMP connection. Create with `QmpClient.connect(path)`. Emits 'event' (QmpEvent) and, once,
 * 'disconnect' (QmpDisconnectedError, with `reason` and `cause`). Never emits 'error'.
 *
 * Ordering: events the monitor sends before a reply are delivered to listeners before that
 * call's promise settles.
 */
export class QmpClient extends EventEmitter implements QmpExecutor {
  /** The greeting the monitor sent (QEMU version, capabilities). */
  greeting!: QmpGreeting;
  /** Replies dropped because their call had already timed out or been aborted. */
  droppedReplies = 0;

  private phase: Phase = 'connecting';
  private readonly splitter: LineSplitter;
  private readonly pending = new Map<string, Pending>();
  private nextId = 0;
  private socketError: NodeJS.ErrnoException | undefined;
  private closeError: QmpDisconnectedError | undefined;
  private closedPromise: Promise<void>;
  private handshake:
    | { resolve(): void; reject(err: Error): void; timer: NodeJS.Timeout; negotiationId: string | undefined }
    | undefined;

  private constructor(
    private readonly socket: Socket,
    /** The monitor's socket path. */
    readonly socketPath: string,
    maxLineBytes: number,
    private readonly commandTimeoutMs: number,
  ) {
    super();
    // Collectors, waitEvent() calls and wrappers each add a listener: dozens are normal here.
    this.setMaxListeners(100);
    this.splitter = new LineSplitter(maxLineBytes);
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.socketError ??= err;
    });
    socket.on('close', () => this.onSocketClose());
  }

  /**
   * Connects to a monitor socket, reads the greeting and negotiates capabilities (no OOB).
   * Rejects with QmpConnectError (ENOENT, ECONNREFUSED, ...), QmpTimeoutError (no greeting in
   * time), QmpGreetingError, QmpNegotiationError or QmpParseError; the socket is closed in every
   * failure case.
   */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    if (!opts.retry) return QmpClient.connectOnce(socketPath, opts);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    checkInt('timeoutMs', timeoutMs, 1, 600_000);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const remainingMs = Math.ceil(deadline - performance.now());
      try {
        return await QmpClient.connectOnce(socketPath, { ...opts, timeoutMs: Math.max(1, remainingMs) });
      } catch (err) {
        const notYet = err instanceof QmpConnectError && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED');
        if (!notYet || remainingMs <= 20) throw err;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private static connectOnce(socketPath: string, opts: QmpConnectOptions): Promise<QmpClient> {
    if (typeof socketPath !== 'string' || socketPath === '') {
      return Promise.reject(new TypeError('socketPath: must be a non-empty string'));
    }
    try {
      checkInt('timeoutMs', opts.timeoutMs, 1, 600_000);
      checkInt('maxLineBytes', opts.maxLineBytes, MIN_MAX_LINE_BYTES, 2 ** 30);
      checkInt('commandTimeoutMs', opts.commandTimeoutMs, 0, MAX_TIMEOUT_MS);
    } catch (err) {
      return Promise.reject(err);
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const socket = createConnection({ path: socketPath });
    const client = new QmpClient(
      socket,
      socketPath,
      opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES,
      opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS,
    );
    socket.once('connect', () => {
      if (client.phase === 'connecting') client.phase = 'greeting';
    });
    return new Promise<QmpClient>((resolve, reject) => {
      const timer = setTimeout(() => {
        const what = client.phase === 'negotiating' ? 'qmp_capabilities' : client.phase === 'greeting' ? 'greeting' : 'connect';
        client.abortHandshake(new QmpTimeoutError(what, timeoutMs));
      }, timeoutMs);
      client.handshake = {
        resolve: () => resolve(client),
        reject: (err) => reject(err),
        timer,
        negotiationId: undefined,
      };
    });
  }

  /** True until the connection ends. */
  get connected(): boolean {
    return this.phase === 'ready';
  }

  /** Calls sent and not yet answered. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** QEMU's version from the greeting. */
  get qemuVersion(): { major: number; minor: number; micro: number } {
    return this.greeting.QMP.version.qemu;
  }

  /**
   * Sends one command and resolves with its `return` value. Rejects with QmpCommandError when
   * QEMU answers with an error (the connection stays up), QmpTimeoutError, QmpDisconnectedError,
   * or TypeError for a bad command name or arguments that cannot be serialized.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (typeof command !== 'string' || command === '') return Promise.reject(new TypeError('command: must be a non-empty string'));
    if (args !== undefined && !isPlainObject(args)) return Promise.reject(new TypeError(`${command}: arguments must be an object`));
    try {
      checkInt('timeoutMs', opts.timeoutMs, 0, MAX_TIMEOUT_MS);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.phase !== 'ready') {
      return Promise.reject(
        this.closeError ?? new QmpDisconnectedError(`QMP ${command}: not connected to ${this.socketPath}`, 'closed'),
      );
    }
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason);
    const id = `dpa-${++this.nextId}`;
    let line: string;
    try {
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      line = JSON.stringify(msg) + '\n';
    } catch (err) {
      return Promise.reject(new TypeError(`${command}: arguments cannot be sent as JSON: ${(err as Error).message}`));
    }
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { command, resolve: resolve as (v: unknown) => void, reject, timer: undefined, cleanup: undefined };
      const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.settle(id)?.reject(new QmpTimeoutError(command, timeoutMs));
        }, timeoutMs);
      }
      const signal = opts.signal;
      if (signal) {
        const onAbort = (): void => this.settle(id)?.reject(signal.reason as Error);
        signal.addEventListener('abort', onAbort, { once: true });
        p.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      this.pending.set(id, p);
      this.socket.write(line);
    });
  }

  /**
   * Resolves with the next event named `name` (and accepted by `filter`). Rejects with
   * QmpTimeoutError after `timeoutMs` (default 30000; 0 = none) or QmpDisconnectedError.
   */
  waitEvent(name: string, opts: { timeoutMs?: number; filter?: (e: QmpEvent) => boolean; signal?: AbortSignal } = {}): Promise<QmpEvent> {
    checkInt('timeoutMs', opts.timeoutMs, 0, MAX_TIMEOUT_MS);
    if (this.phase === 'closed') return Promise.reject(this.closeError);
    return new Promise((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        this.off('event', onEvent);
        this.off('disconnect', onDisconnect);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const onEvent = (e: QmpEvent): void => {
        if (e.event !== name || (opts.filter && !opts.filter(e))) return;
        cleanup();
        resolve(e);
      };
      const onDisconnect = (err: QmpDisconnectedError): void => {
        cleanup();
        reject(err);
      };
      const onAbort = (): void => {
        cleanup();
        reject(opts.signal!.reason);
      };
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              cleanup();
              reject(new QmpTimeoutError(`event ${name}`, timeoutMs));
            }, timeoutMs)
          : undefined;
      this.on('event', onEvent);
      this.on('disconnect', onDisconnect);
      opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Closes the connection; pending calls reject with QmpDisconnectedError (reason 'closed'). Idempotent. */
  async close(): Promise<void> {
    if (this.phase !== 'closed') {
      this.teardown(new QmpDisconnectedError(`QMP connection to ${this.socketPath} closed by the client`, 'closed'));
    }
    await this.closedPromise;
  }

  // -------------------------------------------------------------------------------------------

  private settle(id: string): Pending | undefined {
    const p = this.pending.get(id);
    if (!p) return undefined;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    p.cleanup?.();
    return p;
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'closed') return;
    let lines: string[];
    try {
      lines = this.splitter.push(chunk);
    } catch (err) {
      if (!(err instanceof LineTooLongError)) throw err;
      this.protocolError(new QmpLineTooLongError(err.maxLineBytes, err.excerpt));
      return;
    }
    for (const line of lines) {
      // onMessage() may have ended the connection while handling the previous line.
      if ((this.phase as Phase) === 'closed') return;
      if (line.trim() === '') continue;
      let msg: unknown;
      try {
        msg = JSON.parse(line);
      } catch (err) {
        this.protocolError(new QmpParseError(`QMP monitor ${this.socketPath} sent invalid JSON: ${(err as Error).message}`, excerptOf(line), { cause: err }));
        return;
      }
      if (!isPlainObject(msg)) {
        this.protocolError(new QmpParseError(`QMP monitor ${this.socketPath} sent a JSON ${Array.isArray(msg) ? 'array' : typeof msg}, not an object`, excerptOf(line)));
        return;
      }
      this.onMessage(msg, line);
    }
  }

  private onMessage(msg: Record<string, unknown>, line: string): void {
    if (this.phase === 'greeting') {
      if (!validGreeting(msg)) {
        this.abortHandshake(new QmpGreetingError(`${this.socketPath} did not greet with a QMP greeting: ${excerptOf(line)}`));
        return;
      }
      this.greeting = msg;
      this.phase = 'negotiating';
      const id = `dpa-${++this.nextId}`;
      this.handshake!.negotiationId = id;
      this.socket.write(JSON.stringify({ execute: 'qmp_capabilities', id }) + '\n');
      return;
    }
    if (typeof msg.event === 'string') {
      this.deliverEvent(msg, line);
      return;
    }
    if (this.phase === 'negotiating') {
      const err = msg.error;
      if (isPlainObject(err)) {
        const cls = String(err.class);
        const desc = String(err.desc);
        this.abortHandshake(new QmpNegotiationError(`qmp_capabilities refused by ${this.socketPath}: ${cls}: ${desc}`, cls, desc));
      } else if (msg.id !== this.handshake!.negotiationId || !isPlainObject(msg.return) || Object.keys(msg.return).length !== 0) {
        this.abortHandshake(new QmpNegotiationError(`unexpected answer to qmp_capabilities from ${this.socketPath}: ${excerptOf(line)}`));
      } else {
        this.phase = 'ready';
        const hs = this.handshake!;
        this.handshake = undefined;
        clearTimeout(hs.timer);
        hs.resolve();
      }
      return;
    }
    // phase === 'ready'
    if (!('id' in msg)) {
      // We send an id with every command; QEMU omits it only when it could not parse our input.
      this.protocolError(new QmpParseError(`QMP monitor ${this.socketPath} sent a reply without an id`, excerptOf(line)));
      return;
    }
    const hasReturn = 'return' in msg;
    const err = msg.error;
    if (!hasReturn && !isPlainObject(err)) {
      this.protocolError(new QmpParseError(`QMP monitor ${this.socketPath} sent a message that is neither event nor reply`, excerptOf(line)));
      return;
    }
    const p = typeof msg.id === 'string' ? this.settle(msg.id) : undefined;
    if (!p) {
      this.droppedReplies++;
      return;
    }
    if (hasReturn) p.resolve(msg.return);
    else {
      const e = err as Record<string, unknown>;
      p.reject(new QmpCommandError(p.command, String(e.class), String(e.desc)));
    }
  }

  private deliverEvent(msg: Record<string, unknown>, line: string): void {
    const ts = msg.timestamp;
    if (!isPlainObject(ts) || typeof ts.seconds !== 'number' || typeof ts.microseconds !== 'number') {
      this.protocolError(new QmpParseError(`QMP event without a valid timestamp from ${this.socketPath}`, excerptOf(line)));
      return;
    }
    const event: QmpEvent = { event: msg.event as string, timestamp: { seconds: ts.seconds, microseconds: ts.microseconds } };
    if (isPlainObject(msg.data)) event.data = msg.data;
    try {
      this.emit('event', event);
    } catch (err) {
      // A listener's bug must not desynchronise the reply stream: report it out of band.
      process.nextTick(() => {
        throw err;
      });
    }
  }

  private protocolError(err: QmpParseError): void {
    if (this.handshake) {
      this.abortHandshake(err);
      return;
    }
    this.teardown(new QmpDisconnectedError(`QMP connection to ${this.socketPath} dropped: ${err.message}`, 'protocol-error', { cause: err }));
  }

  private abortHandshake(err: QmpError): void {
    const hs = this.handshake;
    this.handshake = undefined;
    if (hs) clearTimeout(hs.timer);
    this.teardown(new QmpDisconnectedError(`QMP connection to ${this.socketPath} failed: ${err.message}`, 'protocol-error', { cause: err }));
    hs?.reject(err);
  }

  private onSocketClose(): void {
    if (this.phase === 'closed') return;
    const cause = this.socketError;
    if (this.handshake) {
      const hs = this.handshake;
      let err: QmpError;
      if (this.phase === 'connecting' && cause) err = new QmpConnectError(this.socketPath, cause);
      else if (this.phase === 'negotiating') err = new QmpNegotiationError(`${this.socketPath} closed during qmp_capabilities`, undefined, undefined, { cause });
      else err = new QmpGreetingError(`${this.socketPath} closed the connection before greeting`, { cause });
      this.handshake = undefined;
      clearTimeout(hs.timer);
      this.teardown(new QmpDisconnectedError(err.message, cause && this.phase === 'connecting' ? 'socket-error' : 'eof', { cause: err }));
      hs.reject(err);
      return;
    }
    // ECONNRESET/EPIPE on a unix socket only mean the peer closed (QEMU exits with unread input queued).
    const peerGone = !cause || cause.code === 'ECONNRESET' || cause.code === 'EPIPE';
    const reason: QmpDisconnectReason = peerGone ? 'eof' : 'socket-error';
    const what = cause ? `socket error ${cause.code ?? cause.message}` : 'monitor closed the connection';
    this.teardown(new QmpDisconnectedError(`QMP connection to ${this.socketPath} lost: ${what}`, reason, { cause }));
  }

  /** Ends the connection once: rejects every pending call, emits 'disconnect' if the client was ready. */
  private teardown(err: QmpDisconnectedError): void {
    if (this.phase === 'closed') return;
    const wasReady = this.phase === 'ready';
    this.phase = 'closed';
    this.closeError = err;
    this.socket.destroy();
    for (const id of [...this.pending.keys()]) this.settle(id)!.reject(err);
    if (wasReady) this.emit('disconnect', err);
  }
}
