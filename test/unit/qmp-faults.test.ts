/**
 * Faults a real QEMU cannot be made to produce (malformed bytes, no greeting, refused negotiation,
 * reordered replies), served by a real unix-socket server speaking bad QMP. Every case must end in
 * a specific error, promptly, with no socket left open on either side.
 */
import assert from 'node:assert/strict';
import { chmodSync, readdirSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  QmpGreetingError,
  QmpLineTooLongError,
  QmpNegotiationError,
  QmpParseError,
  QmpTimeoutError,
} from '../../src/qmp/client';
import { LineSplitter } from '../../src/qmp/framing';
import { makeTempDir, removeTempDir } from '../helpers/qemu';

const GREETING = JSON.stringify({ QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'fake' }, capabilities: ['oob'] } }) + '\n';

function socketFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:')) n++;
    } catch {
      /* closed while listing */
    }
  }
  return n;
}

/** A connection on the fake server, with a line reader for what the client sends. */
class Peer {
  private readonly splitter = new LineSplitter();
  private readonly lines: string[] = [];
  private waiters: ((line: string) => void)[] = [];
  readonly closed: Promise<void>;
  constructor(readonly sock: Socket) {
    sock.on('data', (chunk: Buffer) => {
      for (const l of this.splitter.push(chunk)) {
        const w = this.waiters.shift();
        if (w) w(l);
        else this.lines.push(l);
      }
    });
    sock.on('error', () => undefined);
    this.closed = new Promise((r) => sock.once('close', () => r()));
  }
  /** Next JSON message the client sent. */
  next(): Promise<Record<string, unknown>> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(JSON.parse(l));
    return new Promise((r) => this.waiters.push((line) => r(JSON.parse(line))));
  }
  write(s: string): void {
    this.sock.write(s);
  }
  /** Greets and accepts qmp_capabilities. */
  async handshake(): Promise<void> {
    this.write(GREETING);
    const neg = await this.next();
    assert.equal(neg.execute, 'qmp_capabilities');
    this.write(JSON.stringify({ return: {}, id: neg.id }) + '\n');
  }
}

interface Fake {
  path: string;
  server: Server;
  peers: Peer[];
  /** Closes the server and waits until every connection has closed on the server side. */
  stop(): Promise<void>;
}

async function fakeServer(onPeer: (p: Peer) => void | Promise<void>): Promise<Fake> {
  const dir = makeTempDir('dpa-qmp-fake-');
  const path = join(dir, 'qmp.sock');
  const peers: Peer[] = [];
  const server = createServer((sock) => {
    const p = new Peer(sock);
    peers.push(p);
    void Promise.resolve(onPeer(p)).catch(() => sock.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  // The directory is 0700 already; the socket itself is made 0600 before any client is told its path.
  chmodSync(path, 0o600);
  return {
    path,
    server,
    peers,
    async stop() {
      await Promise.all(peers.map((p) => p.closed));
      await new Promise<void>((r) => server.close(() => r()));
      removeTempDir(dir);
    },
  };
}

/** Runs `body` against a fresh fake server; then checks the client left nothing open. */
async function withFake(onPeer: (p: Peer) => void | Promise<void>, body: (f: Fake) => Promise<void>): Promise<void> {
  const before = socketFds();
  const f = await fakeServer(onPeer);
  try {
    await body(f);
  } finally {
    for (const p of f.peers) p.sock.end();
    await f.stop();
  }
  assert.equal(socketFds(), before, 'socket fds leaked');
}

async function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`hung for ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

test('the fake server socket is 0600 inside a 0700 directory', async () => {
  await withFake(
    () => undefined,
    async (f) => {
      assert.equal(statSync(f.path).mode & 0o777, 0o600);
      assert.equal(statSync(join(f.path, '..')).mode & 0o777, 0o700);
      assert.ok(statSync(f.path).isSocket());
    },
  );
});

test('garbage instead of a greeting is a QmpParseError carrying the bytes', async () => {
  await withFake(
    (p) => p.write('this is { not json\n'),
    async (f) => {
      const err = await within(3000, QmpClient.connect(f.path).then(() => assert.fail('connected'), (e: unknown) => e));
      assert.ok(err instanceof QmpParseError, String(err));
      assert.equal(err.excerpt, 'this is { not json');
      await within(3000, f.peers[0]!.closed);
    },
  );
});

test('a greeting without the QMP key is a QmpGreetingError', async () => {
  await withFake(
    (p) => p.write('{"hello": {"version": 1}}\n'),
    async (f) => {
      await assert.rejects(within(3000, QmpClient.connect(f.path)), (e: unknown) => e instanceof QmpGreetingError && /did not greet/.test(e.message));
    },
  );
});

test('a monitor that never greets times out with QmpTimeoutError(greeting) and the socket is closed', async () => {
  await withFake(
    () => undefined,
    async (f) => {
      const t0 = performance.now();
      const err = await within(3000, QmpClient.connect(f.path, { timeoutMs: 200 }).then(() => assert.fail('connected'), (e: unknown) => e));
      const elapsedMs = performance.now() - t0;
      assert.ok(err instanceof QmpTimeoutError, String(err));
      assert.equal(err.command, 'greeting');
      assert.equal(err.timeoutMs, 200);
      assert.ok(elapsedMs >= 190 && elapsedMs < 1500, `timed out after ${elapsedMs} ms`);
      await within(3000, f.peers[0]!.closed);
    },
  );
});

test('refused negotiation is a QmpNegotiationError with QEMU error class and desc', async () => {
  await withFake(
    async (p) => {
      p.write(GREETING);
      const neg = await p.next();
      p.write(JSON.stringify({ error: { class: 'GenericError', desc: 'Capabilities negotiation is already complete' }, id: neg.id }) + '\n');
    },
    async (f) => {
      const err = await within(3000, QmpClient.connect(f.path).then(() => assert.fail('connected'), (e: unknown) => e));
      assert.ok(err instanceof QmpNegotiationError, String(err));
      assert.equal(err.errorClass, 'GenericError');
      assert.equal(err.desc, 'Capabilities negotiation is already complete');
    },
  );
});

test('a non-empty return to qmp_capabilities is a QmpNegotiationError', async () => {
  await withFake(
    async (p) => {
      p.write(GREETING);
      const neg = await p.next();
      p.write(JSON.stringify({ return: { surprise: true }, id: neg.id }) + '\n');
    },
    async (f) => {
      await assert.rejects(within(3000, QmpClient.connect(f.path)), (e: unknown) => e instanceof QmpNegotiationError && e.errorClass === undefined);
    },
  );
});

test('an oversized greeting line is rejected at the cap without buffering the rest', async () => {
  await withFake(
    (p) => p.write('{"QMP": "' + 'x'.repeat(64 * 1024)),
    async (f) => {
      const err = await within(3000, QmpClient.connect(f.path, { maxLineBytes: 4096 }).then(() => assert.fail('connected'), (e: unknown) => e));
      assert.ok(err instanceof QmpLineTooLongError, String(err));
      assert.equal(err.maxLineBytes, 4096);
      assert.ok(err.excerpt.startsWith('{"QMP": "xxx'));
      await within(3000, f.peers[0]!.closed);
    },
  );
});

test('an oversized reply drops the connection: the pending call rejects, disconnect is emitted once', async () => {
  await withFake(
    async (p) => {
      await p.handshake();
      const cmd = await p.next();
      assert.equal(cmd.execute, 'query-qmp-schema');
      p.write('{"return": "' + 'y'.repeat(20_000) + '", "id": ' + JSON.stringify(cmd.id) + '}\n');
    },
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path, { maxLineBytes: 8192 }));
      const disconnects: QmpDisconnectedError[] = [];
      c.on('disconnect', (e) => disconnects.push(e));
      const err = await within(3000, c.execute('query-qmp-schema').then(() => assert.fail('resolved'), (e: unknown) => e));
      assert.ok(err instanceof QmpDisconnectedError, String(err));
      assert.equal(err.reason, 'protocol-error');
      assert.ok(err.cause instanceof QmpLineTooLongError);
      assert.equal(disconnects.length, 1);
      assert.equal(disconnects[0], err);
      assert.equal(c.connected, false);
      await assert.rejects(c.execute('query-status'), (e: unknown) => e instanceof QmpDisconnectedError);
      await within(3000, f.peers[0]!.closed);
      await c.close();
    },
  );
});

test('a monitor closing mid-reply rejects every pending call with QmpDisconnectedError(eof)', async () => {
  await withFake(
    async (p) => {
      await p.handshake();
      await p.next();
      await p.next();
      p.write('{"return": {"status": "runn');
      p.sock.end();
    },
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path));
      const a = c.execute('query-status').catch((e: unknown) => e);
      const b = c.execute('query-migrate').catch((e: unknown) => e);
      const [ea, eb] = await within(3000, Promise.all([a, b]));
      for (const e of [ea, eb]) {
        assert.ok(e instanceof QmpDisconnectedError, String(e));
        assert.equal(e.reason, 'eof');
      }
      assert.equal(c.pendingCount, 0);
      await c.close();
    },
  );
});

test('garbage after negotiation drops the connection with a QmpParseError cause', async () => {
  await withFake(
    async (p) => {
      await p.handshake();
      await p.next();
      p.write('\x00\xff\xfe garbage\n');
    },
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path));
      const err = await within(3000, c.execute('query-status').then(() => assert.fail('resolved'), (e: unknown) => e));
      assert.ok(err instanceof QmpDisconnectedError);
      assert.ok(err.cause instanceof QmpParseError);
      assert.match(err.message, /invalid JSON/);
      await c.close();
    },
  );
});

test('a reply without an id, or of a non-object, is a protocol error', async () => {
  for (const bad of ['{"return": {}}\n', '[1, 2, 3]\n', '{"id": "dpa-2"}\n']) {
    await withFake(
      async (p) => {
        await p.handshake();
        await p.next();
        p.write(bad);
      },
      async (f) => {
        const c = await within(3000, QmpClient.connect(f.path));
        const err = await within(3000, c.execute('query-status').then(() => assert.fail('resolved'), (e: unknown) => e));
        assert.ok(err instanceof QmpDisconnectedError, bad);
        assert.ok(err.cause instanceof QmpParseError, bad);
        await c.close();
      },
    );
  }
});

test('replies are matched by id even when they arrive out of order; events are routed apart', async () => {
  await withFake(
    async (p) => {
      await p.handshake();
      const cmds = [await p.next(), await p.next(), await p.next()];
      // Answer in reverse order, with an event in between and a reply for an id never sent.
      p.write(JSON.stringify({ return: { n: cmds[2]!.execute }, id: cmds[2]!.id }) + '\n');
      p.write(JSON.stringify({ event: 'STOP', timestamp: { seconds: 1, microseconds: 2 } }) + '\n');
      p.write(JSON.stringify({ return: {}, id: 'never-sent' }) + '\n');
      p.write(JSON.stringify({ error: { class: 'DeviceNotFound', desc: 'no such thing' }, id: cmds[1]!.id }) + '\n');
      p.write(JSON.stringify({ return: { n: cmds[0]!.execute }, id: cmds[0]!.id }) + '\n');
    },
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path));
      const events: string[] = [];
      c.on('event', (e) => events.push(`${e.event}@${e.timestamp.seconds}.${e.timestamp.microseconds}`));
      const [a, b, d] = await within(
        3000,
        Promise.all([c.execute('cmd-a'), c.execute('cmd-b').catch((e: unknown) => e), c.execute('cmd-c')]),
      );
      assert.deepEqual(a, { n: 'cmd-a' });
      assert.deepEqual(d, { n: 'cmd-c' });
      assert.ok(b instanceof QmpCommandError);
      assert.equal(b.errorClass, 'DeviceNotFound');
      assert.equal(b.command, 'cmd-b');
      assert.deepEqual(events, ['STOP@1.2']);
      assert.equal(c.droppedReplies, 1);
      assert.equal(c.connected, true);
      await c.close();
    },
  );
});

test('a call times out alone; its late reply is dropped and later calls still work', async () => {
  await withFake(
    async (p) => {
      await p.handshake();
      const slow = await p.next();
      const fast = await p.next();
      setTimeout(() => {
        p.write(JSON.stringify({ return: 'late', id: slow.id }) + '\n');
        p.write(JSON.stringify({ return: 'ok', id: fast.id }) + '\n');
      }, 250);
    },
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path));
      const slow = c.execute('slow', undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
      const fast = c.execute('fast', undefined, { timeoutMs: 2000 });
      const e = await within(3000, slow);
      assert.ok(e instanceof QmpTimeoutError);
      assert.equal(e.command, 'slow');
      assert.equal(await within(3000, fast), 'ok');
      assert.equal(c.droppedReplies, 1);
      await c.close();
    },
  );
});

test('close() rejects pending calls with reason closed and is idempotent', async () => {
  await withFake(
    (p) => p.handshake(),
    async (f) => {
      const c = await within(3000, QmpClient.connect(f.path));
      let disconnect: QmpDisconnectedError | undefined;
      c.on('disconnect', (e) => (disconnect = e));
      const pending = c.execute('never-answered').catch((e: unknown) => e);
      await c.close();
      await c.close();
      const e = await pending;
      assert.ok(e instanceof QmpDisconnectedError);
      assert.equal(e.reason, 'closed');
      assert.equal(disconnect?.reason, 'closed');
    },
  );
});

test('connecting to a missing path or a path with no listener is a QmpConnectError with code, errno, syscall', async () => {
  const dir = makeTempDir();
  try {
    const missing = await QmpClient.connect(join(dir, 'nope.sock')).catch((e: unknown) => e);
    assert.ok(missing instanceof QmpConnectError, String(missing));
    assert.equal(missing.code, 'ENOENT');
    assert.equal(missing.errno, -2);
    assert.equal(missing.syscall, 'connect');
    // A path that exists but has no listener (connect(2) answers ECONNREFUSED; a killed QEMU's
    // stale socket behaves the same, see test/lab/qmp-client.test.ts).
    const plain = join(dir, 'plain-file');
    writeFileSync(plain, '', { mode: 0o600 });
    const refused = await QmpClient.connect(plain).catch((e: unknown) => e);
    assert.ok(refused instanceof QmpConnectError, String(refused));
    assert.equal(refused.code, 'ECONNREFUSED');
  } finally {
    removeTempDir(dir);
  }
});

test('retry: connect waits for a socket that appears later; without it, ENOENT at once', async () => {
  const dir = makeTempDir();
  const path = join(dir, 'late.sock');
  const before = socketFds();
  await assert.rejects(QmpClient.connect(path), (e: unknown) => e instanceof QmpConnectError && e.code === 'ENOENT');
  const server = createServer((sock) => {
    const p = new Peer(sock);
    void p.handshake();
  });
  setTimeout(() => server.listen(path, () => chmodSync(path, 0o600)), 200);
  const t0 = performance.now();
  const c = await within(3000, QmpClient.connect(path, { retry: true, timeoutMs: 2000 }));
  assert.ok(performance.now() - t0 >= 190);
  await c.close();
  // Retrying stops at the deadline with the last connect error.
  const t1 = performance.now();
  await assert.rejects(QmpClient.connect(join(dir, 'never.sock'), { retry: true, timeoutMs: 150 }), (e: unknown) => e instanceof QmpConnectError && e.code === 'ENOENT');
  assert.ok(performance.now() - t1 < 1000);
  await new Promise<void>((r) => server.close(() => r()));
  removeTempDir(dir);
  assert.equal(socketFds(), before);
});

test('bad options are RangeError/TypeError naming the option, before any connection', async () => {
  await assert.rejects(QmpClient.connect('/x', { timeoutMs: 0 }), /timeoutMs: must be an integer from 1 to 600000/);
  await assert.rejects(QmpClient.connect('/x', { maxLineBytes: 10 }), /maxLineBytes: must be an integer from 256/);
  await assert.rejects(QmpClient.connect(''), TypeError);
  await withFake(
    (p) => p.handshake(),
    async (f) => {
      const c = await QmpClient.connect(f.path);
      await assert.rejects(c.execute('x', undefined, { timeoutMs: -1 }), RangeError);
      await assert.rejects(c.execute(''), TypeError);
      await assert.rejects(c.execute('x', { big: 1n } as unknown as Record<string, unknown>), /cannot be sent as JSON/);
      await c.close();
    },
  );
});
