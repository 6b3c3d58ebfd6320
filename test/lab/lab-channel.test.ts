/**
 * GuestChannel against a real unix socket whose far end plays the guest, including the faults a
 * real guest does not produce on demand (bad JSON, a wrong protocol version, out-of-order replies).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { GuestChannel, GuestChannelError, GuestCommandError } from '../../src/lab/guest-channel';

const dir = mkdtempSync(join(tmpdir(), 'dpa-lab-chan-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** A listening socket; resolves the channel and the server side of its connection. */
async function pair(opts: { listenAfterMs?: number } = {}): Promise<{ ch: GuestChannel; peer: Socket; lines: string[]; server: Server }> {
  const path = join(dir, `s${n++}.sock`);
  const server = createServer();
  const peerP = new Promise<Socket>((r) => server.once('connection', r));
  const listen = (): void => void server.listen(path);
  if (opts.listenAfterMs) setTimeout(listen, opts.listenAfterMs);
  else listen();
  const ch = await GuestChannel.connect(path, { timeoutMs: 2000 });
  const peer = await peerP;
  const lines: string[] = [];
  let buf = '';
  peer.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  return { ch, peer, lines, server };
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(cond(), 'condition not reached');
}

async function done(p: { ch: GuestChannel; server: Server }): Promise<void> {
  await p.ch.close();
  await new Promise((r) => p.server.close(r));
}

const READY = '{"event":"ready","protocol":1,"uptimeMs":5,"pageBytes":4096,"memTotalBytes":1,"cpus":1,"disk":"/dev/vda","diskBytes":0,"port":"/dev/vport0p1"}\n';

test('connect retries until the socket appears; ready seen before waitReady still resolves it', async () => {
  const p = await pair({ listenAfterMs: 150 });
  p.peer.write(READY);
  await until(() => p.ch.ready !== undefined);
  assert.equal((await p.ch.waitReady(10)).uptimeMs, 5);
  await done(p);
});

test('replies are matched by id, events routed apart, commands sent as flat JSON lines', async () => {
  const p = await pair();
  const intervals: unknown[] = [];
  p.ch.on('interval', (e) => intervals.push(e));
  const a = p.ch.request<{ v: number }>('ping');
  const b = p.ch.request<{ v: number }>('status', { seed: 3, pattern: 'zipf', pageSets: true });
  await until(() => p.lines.length === 2);
  const sent = p.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(sent[1], { id: sent[0]!.id as number + 1, cmd: 'status', seed: 3, pattern: 'zipf', pageSets: true });
  p.peer.write(`{"id":${sent[1]!.id},"ok":true,"v":2}\n{"event":"interval","seq":0}\n{"id":${sent[0]!.id},"ok":true,"v":1}\n`);
  assert.deepEqual(await a, { v: 1 });
  assert.deepEqual(await b, { v: 2 });
  assert.deepEqual(intervals, [{ event: 'interval', seq: 0 }]);
  await assert.rejects(p.ch.request('x', { nested: { a: 1 } }), /^TypeError: nested: guest command fields/);
  await done(p);
});

test('a refusal rejects only its call; id -1 (unparsable command) fails the oldest pending call', async () => {
  const p = await pair();
  const a = p.ch.request('first');
  const b = p.ch.request('second');
  await until(() => p.lines.length === 2);
  p.peer.write('{"id":-1,"ok":false,"error":"malformed command"}\n');
  await assert.rejects(a, (e: unknown) => e instanceof GuestCommandError && e.command === 'first' && e.guestMessage === 'malformed command');
  p.peer.write(`{"id":${(JSON.parse(p.lines[1]!) as { id: number }).id},"ok":true}\n`);
  assert.deepEqual(await b, {});
  assert.equal(p.ch.connected, true);
  await done(p);
});

test('a timed-out call rejects; its late reply is surfaced as an event, not misdelivered', async () => {
  const p = await pair();
  const late: unknown[] = [];
  p.ch.on('event', (e) => late.push(e));
  await assert.rejects(p.ch.request('slow', {}, { timeoutMs: 30 }), (e: unknown) => e instanceof GuestChannelError && e.code === 'ETIMEDOUT');
  const next = p.ch.request('next');
  await until(() => p.lines.length === 2);
  const [slowId, nextId] = p.lines.map((l) => (JSON.parse(l) as { id: number }).id);
  p.peer.write(`{"id":${slowId},"ok":true,"late":true}\n{"id":${nextId},"ok":true,"x":1}\n`);
  assert.deepEqual(await next, { x: 1 });
  assert.deepEqual(late, [{ id: slowId, ok: true, late: true }]);
  await done(p);
});

test('bytes outside the protocol close the channel and fail pending calls with EPROTO', async () => {
  for (const bad of ['not json\n', '[1,2]\n', '{"hello":1}\n', READY.replace('"protocol":1', '"protocol":2')]) {
    const p = await pair();
    const closed = new Promise<GuestChannelError>((r) => p.ch.on('close', r));
    const pending = p.ch.request('ping');
    p.peer.write(bad);
    await assert.rejects(pending, (e: unknown) => e instanceof GuestChannelError && e.code === 'EPROTO');
    assert.equal((await closed).code, 'EPROTO');
    assert.equal(p.ch.connected, false);
    await assert.rejects(p.ch.request('ping'), /EPROTO|outside|not JSON|non-object|neither|protocol/);
    await done(p);
  }
});

test('the peer going away fails pending calls and waitReady with ECLOSED', async () => {
  const p = await pair();
  const pending = p.ch.request('ping');
  const ready = p.ch.waitReady(5000);
  p.peer.destroy();
  await assert.rejects(pending, (e: unknown) => e instanceof GuestChannelError && e.code === 'ECLOSED');
  await assert.rejects(ready, (e: unknown) => e instanceof GuestChannelError && e.code === 'ECLOSED');
  await done(p);
});

test('connect gives up with ECONNECT when nothing listens', async () => {
  await assert.rejects(GuestChannel.connect(join(dir, 'nobody.sock'), { timeoutMs: 100 }), (e: unknown) => e instanceof GuestChannelError && e.code === 'ECONNECT');
});
