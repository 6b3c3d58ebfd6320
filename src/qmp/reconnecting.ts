/**
 * An opt-in wrapper that keeps a QMP connection to one socket path alive across QEMU restarts,
 * reconnecting with exponential backoff and jitter.
 *
 * Calls made while disconnected reject at once with QmpDisconnectedError: they are never queued
 * and replayed, because replaying `migrate`, `stop` or `blockdev-add` on a restarted QEMU would
 * act on a different VM than the caller meant. Use `ready()` to wait for a connection.
 */
import { EventEmitter } from 'node:events';
import { QmpClient, type QmpConnectOptions, type QmpEvent, type QmpExecuteOptions, type QmpExecutor } from './client';
import { QmpDisconnectedError, QmpTimeoutError } from './errors';

export interface BackoffOptions {
  /** Delay before the first reconnect attempt, ms (1..600000; default 100). */
  initialDelayMs?: number;
  /** Upper bound of the delay, ms (1..600000; default 5000). */
  maxDelayMs?: number;
  /** Growth factor per failed attempt (1..10; default 2). */
  factor?: number;
  /** Relative random spread of each delay, 0..1 (default 0.2: ±20%), so many clients do not retry in lockstep. */
  jitter?: number;
  /** Attempts after which the wrapper gives up and emits 'give-up' (1..1e9; default unlimited). */
  maxAttempts?: number;
}

export interface ReconnectingOptions extends QmpConnectOptions, BackoffOptions {}

function checkNumber(name: string, v: number | undefined, min: number, max: number, integer: boolean): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max} (got ${String(v)})`);
  }
}

/** Validates backoff options; throws RangeError naming the option. */
export function validateBackoff(o: BackoffOptions): void {
  checkNumber('initialDelayMs', o.initialDelayMs, 1, 600_000, true);
  checkNumber('maxDelayMs', o.maxDelayMs, 1, 600_000, true);
  checkNumber('factor', o.factor, 1, 10, false);
  checkNumber('jitter', o.jitter, 0, 1, false);
  checkNumber('maxAttempts', o.maxAttempts, 1, 1e9, true);
  if (o.initialDelayMs !== undefined && o.maxDelayMs !== undefined && o.initialDelayMs > o.maxDelayMs) {
    throw new RangeError(`initialDelayMs (${o.initialDelayMs}) must not exceed maxDelayMs (${o.maxDelayMs})`);
  }
}

/**
 * Delay before reconnect attempt `attempt` (1-based), ms: initial × factor^(attempt−1), capped at
 * maxDelayMs, then spread by ±jitter using `random` (a value in [0, 1)).
 */
export function backoffDelayMs(attempt: number, o: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = o.initialDelayMs ?? 100;
  const max = o.maxDelayMs ?? 5000;
  const factor = o.factor ?? 2;
  const jitter = o.jitter ?? 0.2;
  const base = Math.min(max, initial * Math.pow(factor, Math.max(0, attempt - 1)));
  return Math.max(0, Math.round(base * (1 + jitter * (2 * random() - 1))));
}

export interface ReconnectingQmpClient {
  on(event: 'event', listener: (event: QmpEvent) => void): this;
  /** Every successful connection; `attempt` counts attempts since the last loss (1 = first try worked). */
  on(event: 'connected', listener: (info: { client: QmpClient; attempt: number }) => void): this;
  on(event: 'disconnect', listener: (err: QmpDisconnectedError) => void): this;
  /** A connection attempt failed; the next one follows after `delayMs`. */
  on(event: 'reconnecting', listener: (info: { attempt: number; delayMs: number; error: Error }) => void): this;
  /** maxAttempts were used up; the wrapper is closed. */
  on(event: 'give-up', listener: (info: { attempts: number; error: Error }) => void): this;
  once(event: string, listener: (...args: never[]) => void): this;
  off(event: string, listener: (...args: never[]) => void): this;
}

/** A QMP connection that comes back after QEMU restarts on the same socket path. */
export class ReconnectingQmpClient extends EventEmitter implements QmpExecutor {
  private client: QmpClient | undefined;
  private closed = false;
  private attempt = 0;
  private timer: NodeJS.Timeout | undefined;
  private connecting: Promise<void> | undefined;

  constructor(
    readonly socketPath: string,
    private readonly opts: ReconnectingOptions = {},
  ) {
    super();
    if (typeof socketPath !== 'string' || socketPath === '') throw new TypeError('socketPath: must be a non-empty string');
    validateBackoff(opts);
  }

  /** Starts connecting (first attempt immediately). Returns at once; see ready(). */
  start(): this {
    if (!this.closed && !this.client && !this.connecting && !this.timer) this.tryConnect();
    return this;
  }

  /** The current connection, if any. */
  get current(): QmpClient | undefined {
    return this.client;
  }

  get connected(): boolean {
    return this.client?.connected === true;
  }

  /** Resolves with the connected client, waiting up to `timeoutMs` (default 30000). */
  ready(timeoutMs = 30_000): Promise<QmpClient> {
    if (this.client?.connected) return Promise.resolve(this.client);
    if (this.closed) return Promise.reject(new QmpDisconnectedError(`reconnecting client for ${this.socketPath} is closed`, 'closed'));
    this.start();
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('connected', onConnected);
        this.off('give-up', onGiveUp);
      };
      const onConnected = (info: { client: QmpClient }): void => {
        done();
        resolve(info.client);
      };
      const onGiveUp = (info: { error: Error }): void => {
        done();
        reject(info.error);
      };
      const timer = setTimeout(() => {
        done();
        reject(new QmpTimeoutError('connect', timeoutMs));
      }, timeoutMs);
      this.on('connected', onConnected);
      this.on('give-up', onGiveUp);
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts?: QmpExecuteOptions): Promise<T> {
    const c = this.client;
    if (!c?.connected) {
      return Promise.reject(new QmpDisconnectedError(`QMP ${command}: not connected to ${this.socketPath} (reconnecting)`, this.closed ? 'closed' : 'eof'));
    }
    return c.execute<T>(command, args, opts);
  }

  /** Stops reconnecting and closes the current connection. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.connecting?.catch(() => undefined);
    const c = this.client;
    this.client = undefined;
    await c?.close();
  }

  private tryConnect(): void {
    this.timer = undefined;
    this.attempt++;
    const attempt = this.attempt;
    this.connecting = QmpClient.connect(this.socketPath, this.opts).then(
      (client) => {
        this.connecting = undefined;
        if (this.closed) {
          void client.close();
          return;
        }
        this.client = client;
        this.attempt = 0;
        client.on('event', (e) => this.emit('event', e));
        client.once('disconnect', (err) => {
          if (this.client === client) this.client = undefined;
          this.emit('disconnect', err);
          if (!this.closed) this.schedule(err);
        });
        this.emit('connected', { client, attempt });
      },
      (error: Error) => {
        this.connecting = undefined;
        if (this.closed) return;
        if (this.opts.maxAttempts !== undefined && attempt >= this.opts.maxAttempts) {
          this.closed = true;
          this.emit('give-up', { attempts: attempt, error });
          return;
        }
        this.schedule(error);
      },
    );
  }

  private schedule(error: Error): void {
    const delayMs = backoffDelayMs(this.attempt + 1, this.opts);
    this.emit('reconnecting', { attempt: this.attempt + 1, delayMs, error });
    this.timer = setTimeout(() => this.tryConnect(), delayMs);
  }
}
