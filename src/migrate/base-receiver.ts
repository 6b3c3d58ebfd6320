/**
 * The receiving end of the base-image copy, a standalone program run on the target side (in the
 * lab: inside the target's network namespace, via spawnInNs):
 *
 *   node base-receiver.js --host ADDR --port N --image PATH [--idle-timeout-ms MS] [--exit-on-stdin-eof]
 *
 * It listens on ADDR:N (N = 0: any free port), accepts exactly one sender, writes the image
 * (a regular file is truncated and re-sized first, so ZERO frames stay holes; a block device is
 * written in place and must be large enough), checks the SHA-256 the sender computed, and exits.
 * stdout carries JSON lines: `{"listening": {"host", "port"}}` first, then `{"done": {"bytes",
 * "sha256", "durationMs"}}` (exit 0) or `{"error": message}` (exit 1). A sender silent for
 * idle-timeout-ms (default 30000) is an error: a cut link must not leave this process behind.
 *
 * Writes are synchronous on purpose: this process does nothing else, and blocking the event loop
 * while a chunk goes to disk stops reading the socket, which is the backpressure TCP needs.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fdatasyncSync, fstatSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import {
  decodeFrameHeader,
  decodeHello,
  FRAME_DATA,
  FRAME_END,
  FRAME_HEADER_BYTES,
  FRAME_ZERO,
  HELLO_BYTES,
  SHA256_BYTES,
} from './base-protocol';

interface ReceiverArgs {
  host: string;
  port: number;
  image: string;
  idleTimeoutMs: number;
}

function parse(argv: readonly string[]): ReceiverArgs {
  const get = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const host = get('--host');
  const image = get('--image');
  const port = Number(get('--port') ?? '0');
  const idleTimeoutMs = Number(get('--idle-timeout-ms') ?? '30000');
  if (!host) throw new TypeError('--host: required, an address to listen on');
  if (!image) throw new TypeError('--image: required, the target image path');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`--port: must be an integer from 0 to 65535 (got ${get('--port')})`);
  if (!Number.isInteger(idleTimeoutMs) || idleTimeoutMs < 100 || idleTimeoutMs > 3_600_000) {
    throw new RangeError(`--idle-timeout-ms: must be an integer from 100 to 3600000 (got ${get('--idle-timeout-ms')})`);
  }
  return { host, port, image, idleTimeoutMs };
}

function say(msg: unknown): void {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

/** Receives one image over `sock`; resolves with the byte count and digest once it is on disk. */
function receive(sock: Socket, imagePath: string, idleTimeoutMs: number): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    // O_CLOEXEC: Node/libuv adds it to every open(); 0600: an image is guest data.
    const fd = openSync(imagePath, constants.O_RDWR | constants.O_CREAT, 0o600);
    const hash = createHash('sha256');
    let pending: Buffer = Buffer.alloc(0);
    let total = -1;
    let maxFrame = 0;
    let expected = 0;
    let finished = false;
    let zeroes: Buffer | null = null;
    const finish = (err: Error | null, value?: { bytes: number; sha256: string }): void => {
      if (finished) return;
      finished = true;
      clearTimeout(idle);
      try {
        closeSync(fd);
      } catch {
        // closing is best effort once we failed
      }
      if (err) {
        if (!sock.destroyed) sock.end(JSON.stringify({ error: err.message }) + '\n');
        reject(err);
      } else {
        sock.end(JSON.stringify({ done: value }) + '\n');
        resolve(value!);
      }
    };
    let idle = setTimeout(() => finish(new Error(`no data from the sender for ${idleTimeoutMs} ms`)), idleTimeoutMs);
    const step = (): void => {
      for (;;) {
        if (total < 0) {
          if (pending.length < HELLO_BYTES) return;
          const hello = decodeHello(pending.subarray(0, HELLO_BYTES));
          total = hello.totalBytes;
          maxFrame = hello.maxFrameBytes;
          pending = pending.subarray(HELLO_BYTES);
          const st = fstatSync(fd);
          if (st.isFile()) {
            // Empty first: ZERO frames then need no write and leave holes, as rsync --sparse would.
            ftruncateSync(fd, 0);
            ftruncateSync(fd, total);
          } else if (st.size !== 0 && st.size < total) {
            throw new Error(`${imagePath}: ${st.size} bytes, the image needs ${total}`);
          }
          continue;
        }
        if (pending.length < FRAME_HEADER_BYTES) return;
        const h = decodeFrameHeader(pending);
        const payload = h.type === FRAME_DATA ? h.length : h.type === FRAME_END ? SHA256_BYTES : 0;
        if (h.type === FRAME_END) {
          if (h.offset !== total || expected !== total) throw new Error(`END at ${h.offset} after ${expected} of ${total} bytes`);
        } else {
          if (h.type !== FRAME_DATA && h.type !== FRAME_ZERO) throw new Error(`unknown frame type ${h.type}`);
          if (h.offset !== expected) throw new Error(`frame at ${h.offset}, expected ${expected}`);
          if (h.length < 1 || h.length > maxFrame || h.offset + h.length > total) throw new Error(`frame length ${h.length} at ${h.offset} does not fit`);
        }
        if (pending.length < FRAME_HEADER_BYTES + payload) return;
        const body = pending.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + payload);
        pending = pending.subarray(FRAME_HEADER_BYTES + payload);
        if (h.type === FRAME_END) {
          fdatasyncSync(fd);
          const digest = hash.digest();
          if (!digest.equals(body)) throw new Error(`SHA-256 mismatch: received ${digest.toString('hex')}, sender ${body.toString('hex')}`);
          finish(null, { bytes: total, sha256: digest.toString('hex') });
          return;
        }
        if (h.type === FRAME_DATA) {
          let off = 0;
          while (off < body.length) off += writeSync(fd, body, off, body.length - off, h.offset + off);
          hash.update(body);
        } else {
          if (!zeroes || zeroes.length < h.length) zeroes = Buffer.alloc(maxFrame);
          hash.update(zeroes.subarray(0, h.length));
        }
        expected += h.length;
        sock.write(JSON.stringify({ ack: expected }) + '\n');
      }
    };
    sock.on('data', (chunk: Buffer) => {
      if (finished) return;
      clearTimeout(idle);
      idle = setTimeout(() => finish(new Error(`no data from the sender for ${idleTimeoutMs} ms`)), idleTimeoutMs);
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      try {
        step();
      } catch (err) {
        finish(err as Error);
      }
    });
    sock.on('error', (err) => finish(err));
    sock.on('close', () => finish(new Error(`sender closed the connection after ${expected} of ${total < 0 ? '?' : total} bytes`)));
  });
}

export async function main(argv: readonly string[]): Promise<number> {
  let args: ReceiverArgs;
  try {
    args = parse(argv);
  } catch (err) {
    say({ error: (err as Error).message });
    return 2;
  }
  const started = performance.now();
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: args.host, port: args.port, exclusive: true }, resolve);
  });
  const addr = server.address();
  say({ listening: { host: args.host, port: typeof addr === 'object' && addr ? addr.port : args.port } });
  // Nobody connecting is as fatal as a silent sender.
  const acceptTimer = setTimeout(() => {
    say({ error: `no sender connected within ${args.idleTimeoutMs} ms` });
    process.exit(1);
  }, args.idleTimeoutMs);
  const sock = await new Promise<Socket>((resolve) => server.once('connection', resolve));
  clearTimeout(acceptTimer);
  server.close();
  try {
    const r = await receive(sock, args.image, args.idleTimeoutMs);
    say({ done: { ...r, durationMs: Math.round(performance.now() - started) } });
    return 0;
  } catch (err) {
    say({ error: (err as Error).message });
    return 1;
  }
}

if (require.main === module) {
  if (process.argv.includes('--exit-on-stdin-eof')) {
    // The parent holds our stdin: when it dies, its end closes, and so does this receiver.
    process.stdin.on('end', () => process.exit(1));
    process.stdin.resume();
  }
  void main(process.argv.slice(2)).then((code) => process.exit(code));
}
