/**
 * Phase 'base': the bulk copy of the (now read-only) base image to the target, as a raw stream
 * over one TCP connection (wire format: base-protocol.ts). LXD sends the same bytes with rsync
 * or a raw block stream over its `fs` websocket; what matters for the governor is the same: the
 * copy is limited by the link and competes with nothing else yet.
 *
 * copyBaseImage() is the sender (runs where the source QEMU runs). spawnBaseReceiver() starts
 * base-receiver.js wherever a spawn function puts it (the lab: inside the target's namespace).
 */
import { type ChildProcess, spawn as nodeSpawn, type SpawnOptions } from 'node:child_process';
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { encodeFrameHeader, encodeHello, FRAME_DATA, FRAME_END, FRAME_ZERO, MAX_FRAME_BYTES } from './base-protocol';

/** Raised when a phase stops making progress for longer than its stall timeout. */
export class StallError extends Error {
  override name = 'StallError';
  constructor(
    readonly what: string,
    readonly stallMs: number,
  ) {
    super(`${what}: no progress for ${stallMs} ms`);
  }
}

export interface BaseCopyOptions {
  /** The base image (raw) on this host. */
  imagePath: string;
  /** Bytes to send from the start of the image (its virtual size). */
  totalBytes: number;
  /** Receiver address. */
  host: string;
  /** Receiver port, 1..65535. */
  port: number;
  /** Bytes per frame, 4096..16777216 (default 1 MiB). */
  chunkBytes?: number;
  /** Send all-zero chunks as ZERO frames (no payload; the target keeps holes). Default false: every byte crosses the link, as with a plain rsync of a new file. */
  skipZeroes?: boolean;
  /** Fail when the receiver acknowledges nothing new for this long, ms (100..3600000; default 15000). */
  stallTimeoutMs?: number;
  /** Called after each acknowledgement with the bytes now on the target's disk. */
  onProgress?(bytesCopied: number): void;
  signal?: AbortSignal;
}

export interface BaseCopyResult {
  bytes: number;
  /** Bytes actually sent as data (less than `bytes` when zero chunks were skipped). */
  dataBytes: number;
  sha256: string;
  durationMs: number;
}

function checkInt(name: string, v: unknown, min: number, max: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

/**
 * Sends `totalBytes` of `imagePath` to a base receiver and resolves once the receiver has the
 * whole image on disk with a matching SHA-256. Rejects with StallError (no acknowledgement for
 * stallTimeoutMs: a cut link), the receiver's error, a socket error, or the signal's reason.
 */
export async function copyBaseImage(o: BaseCopyOptions): Promise<BaseCopyResult> {
  checkInt('totalBytes', o.totalBytes, 0, Number.MAX_SAFE_INTEGER);
  checkInt('port', o.port, 1, 65535);
  const chunkBytes = o.chunkBytes ?? 1024 * 1024;
  checkInt('chunkBytes', chunkBytes, 4096, MAX_FRAME_BYTES);
  const stallTimeoutMs = o.stallTimeoutMs ?? 15_000;
  checkInt('stallTimeoutMs', stallTimeoutMs, 100, 3_600_000);
  o.signal?.throwIfAborted();

  const started = performance.now();
  const file = await open(o.imagePath, 'r');
  let sock: Socket | undefined;
  try {
    sock = connect({ host: o.host, port: o.port });
    sock.setNoDelay(true);
    const s = sock;
    let acked = 0;
    let lastAdvance = performance.now();
    let failure: Error | undefined;
    let doneLine: { bytes: number; sha256: string } | undefined;
    let wake: (() => void) | undefined;
    const poke = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const fail = (err: Error): void => {
      failure ??= err;
      s.destroy();
      poke();
    };
    const onAbort = (): void => fail(o.signal!.reason instanceof Error ? o.signal!.reason : new Error(String(o.signal!.reason)));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const watchdog = setInterval(() => {
      if (performance.now() - lastAdvance > stallTimeoutMs) fail(new StallError(`base copy to ${o.host}:${o.port} (${acked} of ${o.totalBytes} bytes acknowledged)`, stallTimeoutMs));
    }, Math.min(250, stallTimeoutMs));
    const lines = createInterface({ input: s });
    // readline re-emits its input's errors; the socket's own 'error' listener reports them.
    lines.on('error', () => undefined);
    lines.on('line', (line) => {
      let msg: { ack?: number; done?: { bytes: number; sha256: string }; error?: string };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return fail(new Error(`base receiver sent a line that is not JSON: ${line.slice(0, 200)}`));
      }
      if (typeof msg.ack === 'number') {
        if (msg.ack > acked) {
          acked = msg.ack;
          lastAdvance = performance.now();
          o.onProgress?.(acked);
        }
      } else if (msg.done) {
        doneLine = msg.done;
        poke();
      } else if (typeof msg.error === 'string') fail(new Error(`base receiver: ${msg.error}`));
    });
    s.on('error', (err) => fail(err));
    s.on('close', () => {
      if (!doneLine) fail(new Error(`base copy connection to ${o.host}:${o.port} closed after ${acked} of ${o.totalBytes} bytes`));
      poke();
    });
    const waitFor = (cond: () => boolean): Promise<void> =>
      new Promise((resolve) => {
        const check = (): void => {
          if (failure || cond()) resolve();
          else wake = check;
        };
        check();
      });
    try {
      await new Promise<void>((resolve) => {
        s.once('connect', () => resolve());
        s.once('close', () => resolve());
      });
      if (failure) throw failure;
      lastAdvance = performance.now();
      const hash = createHash('sha256');
      const zero = Buffer.alloc(chunkBytes);
      const buf = Buffer.alloc(chunkBytes);
      let dataBytes = 0;
      s.write(encodeHello(o.totalBytes, chunkBytes));
      for (let offset = 0; offset < o.totalBytes; ) {
        const len = Math.min(chunkBytes, o.totalBytes - offset);
        let got = 0;
        while (got < len) {
          const { bytesRead } = await file.read(buf, got, len - got, offset + got);
          if (bytesRead === 0) throw new Error(`${o.imagePath}: ends at ${offset + got} bytes, expected ${o.totalBytes}`);
          got += bytesRead;
        }
        if (failure) throw failure;
        const chunk = buf.subarray(0, len);
        hash.update(chunk);
        let flushed: boolean;
        if (o.skipZeroes && chunk.equals(zero.subarray(0, len))) {
          flushed = s.write(encodeFrameHeader(FRAME_ZERO, offset, len));
        } else {
          s.write(encodeFrameHeader(FRAME_DATA, offset, len));
          // The buffer is reused for the next chunk: hand the socket a copy.
          flushed = s.write(Buffer.from(chunk));
          dataBytes += len;
        }
        offset += len;
        if (!flushed) {
          let drained = false;
          s.once('drain', () => {
            drained = true;
            poke();
          });
          await waitFor(() => drained);
          if (failure) throw failure;
        }
      }
      const digest = hash.digest();
      s.write(encodeFrameHeader(FRAME_END, o.totalBytes, digest.length));
      s.write(digest);
      await waitFor(() => doneLine !== undefined);
      if (failure && !doneLine) throw failure;
      if (doneLine!.sha256 !== digest.toString('hex') || doneLine!.bytes !== o.totalBytes) {
        throw new Error(`base receiver confirmed ${doneLine!.bytes} bytes ${doneLine!.sha256}, sent ${o.totalBytes} bytes ${digest.toString('hex')}`);
      }
      if (acked < o.totalBytes) o.onProgress?.(o.totalBytes);
      return { bytes: o.totalBytes, dataBytes, sha256: doneLine!.sha256, durationMs: performance.now() - started };
    } finally {
      clearInterval(watchdog);
      o.signal?.removeEventListener('abort', onAbort);
      lines.close();
    }
  } finally {
    sock?.destroy();
    await file.close();
  }
}

/** The receiver program (compiled next to this file). */
export const BASE_RECEIVER_PATH = join(__dirname, 'base-receiver.js');

/** How to start a process where the receiver must run: node's spawn, or spawnInNs bound to a namespace. */
export type SpawnFn = (cmd: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface BaseReceiverOptions {
  /** Address to listen on (must be reachable from the source host). */
  host: string;
  /** Port, 0..65535 (default 0: any free port). */
  port?: number;
  /** Target image path (a regular file is replaced; see base-receiver.ts). */
  imagePath: string;
  /** The receiver gives up when the sender is silent this long, ms (100..3600000; default 30000). */
  idleTimeoutMs?: number;
  /** Default: node's spawn (this network namespace). */
  spawn?: SpawnFn;
  /** Limit for the receiver to report its port, ms (default 10000). */
  startTimeoutMs?: number;
}

export interface BaseReceiver {
  host: string;
  port: number;
  pid: number;
  /** Resolves with the receiver's result, rejects with its error (or if it dies). */
  readonly done: Promise<{ bytes: number; sha256: string; durationMs: number }>;
  /** Kills the receiver (SIGKILL) if it still runs; resolves once it has exited. */
  kill(): Promise<void>;
}

/** Starts base-receiver.js and resolves once it listens. */
export async function spawnBaseReceiver(o: BaseReceiverOptions): Promise<BaseReceiver> {
  const port = o.port ?? 0;
  checkInt('port', port, 0, 65535);
  const idleTimeoutMs = o.idleTimeoutMs ?? 30_000;
  checkInt('idleTimeoutMs', idleTimeoutMs, 100, 3_600_000);
  const startTimeoutMs = o.startTimeoutMs ?? 10_000;
  checkInt('startTimeoutMs', startTimeoutMs, 1, 600_000);
  if (typeof o.host !== 'string' || o.host === '') throw new TypeError('host: must be a non-empty string');
  if (typeof o.imagePath !== 'string' || o.imagePath === '') throw new TypeError('imagePath: must be a non-empty string');
  const spawnFn = o.spawn ?? ((cmd, args, opts) => nodeSpawn(cmd, [...args], opts));
  const child = spawnFn(
    process.execPath,
    [BASE_RECEIVER_PATH, '--host', o.host, '--port', String(port), '--image', o.imagePath, '--idle-timeout-ms', String(idleTimeoutMs), '--exit-on-stdin-eof'],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    stderr = (stderr + d).slice(-4096);
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let resolveListening!: (port: number) => void;
  let rejectListening!: (err: Error) => void;
  const listening = new Promise<number>((res, rej) => {
    resolveListening = res;
    rejectListening = rej;
  });
  let result: { bytes: number; sha256: string; durationMs: number } | undefined;
  let error: string | undefined;
  const out = createInterface({ input: child.stdout! });
  out.on('error', () => undefined);
  out.on('line', (line) => {
    let msg: { listening?: { port: number }; done?: typeof result; error?: string };
    try {
      msg = JSON.parse(line) as typeof msg;
    } catch {
      return;
    }
    if (msg.listening) resolveListening(msg.listening.port);
    else if (msg.done) result = msg.done;
    else if (typeof msg.error === 'string') error = msg.error;
  });
  const done = exited.then(() => {
    if (result) return result;
    throw new Error(`base receiver: ${error ?? `exited (${child.exitCode ?? child.signalCode}) ${stderr.trim()}`}`);
  });
  done.catch(() => undefined);
  void exited.then(() => rejectListening(new Error(`base receiver exited before listening: ${error ?? stderr.trim()}`)));
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
  const timer = setTimeout(() => rejectListening(new Error(`base receiver did not listen within ${startTimeoutMs} ms: ${stderr.trim()}`)), startTimeoutMs);
  try {
    const actualPort = await listening;
    return { host: o.host, port: actualPort, pid: child.pid ?? -1, done, kill };
  } catch (err) {
    await kill();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
