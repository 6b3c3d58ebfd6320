/** The QMP client against real QEMU 7.2 processes. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { test } from 'node:test';
import {
  QmpClient,
  QmpCommandError,
  QmpConnectError,
  QmpDisconnectedError,
  type QmpEvent,
  QmpLineTooLongError,
  QmpTimeoutError,
} from '../../src/qmp/client';
import { ReconnectingQmpClient } from '../../src/qmp/reconnecting';
import { needs, qemuMissing } from '../helpers/prereq';
import { makeTempDir, removeTempDir, startQemu, startQemuFor } from '../helpers/qemu';

const qemu = needs('qemu', qemuMissing());

test('connects, reads the greeting of the installed QEMU, executes; the socket is 0600', qemu, async (t) => {
  const vm = await startQemuFor(t);
  assert.equal(statSync(vm.socketPath).mode & 0o777, 0o600);
  assert.equal(statSync(vm.dir).mode & 0o777, 0o700);
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const m = /version (\d+)\.(\d+)\.(\d+)/.exec(execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }))!;
  assert.deepEqual(c.qemuVersion, { major: Number(m[1]), minor: Number(m[2]), micro: Number(m[3]) });
  const status = await c.execute<{ status: string; running: boolean }>('query-status');
  assert.equal(status.running, true);
  assert.equal(status.status, 'running');
  const kvm = await c.execute<{ enabled: boolean }>('query-kvm');
  assert.equal(kvm.enabled, false);
});

test('connect/close cycles leave no socket open', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const socketFds = (): number =>
    readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:');
      } catch {
        return false;
      }
    }).length;
  const before = socketFds();
  for (let i = 0; i < 20; i++) {
    const c = await QmpClient.connect(vm.socketPath);
    await c.execute('query-status');
    await c.close();
  }
  assert.equal(socketFds(), before);
});

test('unknown commands and bad arguments are QmpCommandError with QEMU error class; the connection survives', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const unknown = await c.execute('no-such-command').catch((e: unknown) => e);
  assert.ok(unknown instanceof QmpCommandError);
  assert.equal(unknown.errorClass, 'CommandNotFound');
  assert.match(unknown.desc, /no-such-command/);
  const extra = await c.execute('query-status', { bogus: 1 }).catch((e: unknown) => e);
  assert.ok(extra instanceof QmpCommandError);
  assert.equal(extra.errorClass, 'GenericError');
  assert.match(extra.desc, /bogus/);
  const wrongType = await c.execute('calc-dirty-rate', { 'calc-time': 'soon' }).catch((e: unknown) => e);
  assert.ok(wrongType instanceof QmpCommandError);
  assert.equal(wrongType.errorClass, 'GenericError');
  assert.match(wrongType.desc, /calc-time/);
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'running');
});

test('stop/cont events are routed to listeners, before the reply settles, never as replies', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const events: QmpEvent[] = [];
  c.on('event', (e) => events.push(e));
  const before = Date.now() / 1000;
  const ret = await c.execute('stop');
  assert.deepEqual(ret, {});
  // QEMU emits STOP before it answers `stop`: the listener must have it by now.
  assert.deepEqual(events.map((e) => e.event), ['STOP']);
  const ts = events[0]!.timestamp.seconds + events[0]!.timestamp.microseconds / 1e6;
  assert.ok(Math.abs(ts - before) < 5, `event timestamp ${ts} vs now ${before}`);
  assert.equal((await c.execute<{ status: string }>('query-status')).status, 'paused');
  const resumed = c.waitEvent('RESUME', { timeoutMs: 5000 });
  await c.execute('cont');
  assert.equal((await resumed).event, 'RESUME');
  assert.deepEqual(events.map((e) => e.event), ['STOP', 'RESUME']);
});

test('200 concurrent calls are each resolved with their own reply', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const calls = Array.from({ length: 200 }, (_, i) =>
    i % 3 === 0
      ? c.execute<{ status: string }>('query-status').then((r) => `status:${r.status}`)
      : i % 3 === 1
        ? c.execute<{ present: boolean }>('query-kvm').then((r) => `kvm:${r.present}`)
        : c.execute(`missing-${i}`).then(
            () => 'resolved?',
            (e: QmpCommandError) => `err:${/missing-(\d+)/.exec(e.desc)?.[1]}`,
          ),
  );
  const got = await Promise.all(calls);
  got.forEach((g, i) => assert.equal(g, i % 3 === 0 ? 'status:running' : i % 3 === 1 ? 'kvm:true' : `err:${i}`));
  assert.equal(c.pendingCount, 0);
  assert.equal(c.droppedReplies, 0);
});

test('several monitors at once keep separate state: events and disconnects stay with their QEMU', qemu, async (t) => {
  const vms = await Promise.all([0, 1, 2].map((i) => startQemuFor(t, { extraArgs: ['-name', `vm${i}`] })));
  const clients = await Promise.all(vms.map((v) => QmpClient.connect(v.socketPath)));
  t.after(() => Promise.all(clients.map((c) => c.close())));
  const names = await Promise.all(clients.map((c) => c.execute<{ name: string }>('query-name')));
  assert.deepEqual(names.map((n) => n.name), ['vm0', 'vm1', 'vm2']);
  const seen: string[][] = [[], [], []];
  clients.forEach((c, i) => c.on('event', (e) => seen[i]!.push(e.event)));
  const gone: number[] = [];
  clients.forEach((c, i) => c.on('disconnect', () => gone.push(i)));
  await clients[1]!.execute('stop');
  await vms[2]!.kill();
  // The EOF of the killed monitor reaches its client asynchronously; wait for it (bounded).
  for (const deadline = performance.now() + 5000; gone.length === 0 && performance.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.deepEqual(seen, [[], ['STOP'], []]);
  assert.deepEqual(gone, [2]);
  assert.equal((await clients[0]!.execute<{ status: string }>('query-status')).status, 'running');
  assert.equal((await clients[1]!.execute<{ status: string }>('query-status')).status, 'paused');
});

test('QEMU killed with calls in flight: all reject with QmpDisconnectedError, the stale socket refuses', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  const disconnects: QmpDisconnectedError[] = [];
  c.on('disconnect', (e) => disconnects.push(e));
  const inflight = Array.from({ length: 50 }, () => c.execute('query-blockstats').then(() => 'ok', (e: unknown) => e));
  vm.child.kill('SIGKILL');
  const results = await Promise.all(inflight);
  const failures = results.filter((r) => r !== 'ok');
  assert.ok(failures.length > 0, 'no call was in flight when QEMU died');
  for (const f of failures) {
    assert.ok(f instanceof QmpDisconnectedError, String(f));
    assert.equal(f.reason, 'eof');
  }
  assert.equal(disconnects.length, 1);
  assert.equal(c.pendingCount, 0);
  await assert.rejects(c.execute('query-status'), QmpDisconnectedError);
  await c.close();
  await vm.exited;
  const stale = await QmpClient.connect(vm.socketPath).catch((e: unknown) => e);
  assert.ok(stale instanceof QmpConnectError);
  assert.equal(stale.code, 'ECONNREFUSED');
});

test('a second client on a busy monitor gets no greeting until the first leaves (QEMU serves one at a time)', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const first = await QmpClient.connect(vm.socketPath);
  const err = await QmpClient.connect(vm.socketPath, { timeoutMs: 300 }).catch((e: unknown) => e);
  assert.ok(err instanceof QmpTimeoutError, String(err));
  assert.equal(err.command, 'greeting');
  await first.close();
  const second = await QmpClient.connect(vm.socketPath, { timeoutMs: 3000 });
  assert.equal((await second.execute<{ running: boolean }>('query-status')).running, true);
  await second.close();
});

test('quit: SHUTDOWN event, then a clean eof disconnect', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  const shutdown = c.waitEvent('SHUTDOWN', { timeoutMs: 5000 });
  const disconnect = new Promise<QmpDisconnectedError>((r) => c.once('disconnect', r));
  await c.execute('quit');
  assert.equal((await shutdown).event, 'SHUTDOWN');
  assert.equal((await disconnect).reason, 'eof');
  assert.equal((await vm.exited).code, 0);
});

test('the line cap applies to real replies: query-qmp-schema (~200 KiB) passes by default, not under 64 KiB', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const big = await QmpClient.connect(vm.socketPath);
  const schema = await big.execute<unknown[]>('query-qmp-schema');
  assert.ok(schema.length > 500, `schema has ${schema.length} entries`);
  await big.close();
  const small = await QmpClient.connect(vm.socketPath, { maxLineBytes: 65536 });
  const err = await small.execute('query-qmp-schema').catch((e: unknown) => e);
  assert.ok(err instanceof QmpDisconnectedError);
  assert.ok(err.cause instanceof QmpLineTooLongError);
  await small.close();
  // The monitor itself is fine: a new connection works.
  const again = await QmpClient.connect(vm.socketPath);
  assert.equal((await again.execute<{ running: boolean }>('query-status')).running, true);
  await again.close();
});

test('reconnects with backoff to a QEMU restarted on the same socket path', qemu, async (t) => {
  const dir = makeTempDir();
  let vm = await startQemu({ dir, extraArgs: ['-name', 'first'] });
  t.after(async () => {
    await vm.kill();
    removeTempDir(dir);
  });
  const rc = new ReconnectingQmpClient(vm.socketPath, { initialDelayMs: 40, maxDelayMs: 320, factor: 2, jitter: 0 });
  t.after(() => rc.close());
  const log: string[] = [];
  const delays: number[] = [];
  rc.on('connected', ({ attempt }) => log.push(`connected#${attempt}`));
  rc.on('disconnect', (e) => log.push(`disconnect:${e.reason}`));
  rc.on('reconnecting', ({ attempt, delayMs, error }) => {
    delays.push(delayMs);
    log.push(`retry#${attempt}:${(error as QmpConnectError).code ?? error.name}`);
  });
  rc.start();
  const c1 = await rc.ready(5000);
  assert.equal((await rc.execute<{ name: string }>('query-name')).name, 'first');

  await vm.kill();
  await new Promise((r) => setTimeout(r, 700));
  // While down, calls fail at once rather than queueing.
  await assert.rejects(rc.execute('query-status'), QmpDisconnectedError);
  vm = await startQemu({ dir, extraArgs: ['-name', 'second'] });
  const c2 = await rc.ready(5000);
  assert.notEqual(c2, c1);
  assert.equal((await rc.execute<{ name: string }>('query-name')).name, 'second');

  assert.equal(log[0], 'connected#1');
  assert.ok(log[1]!.startsWith('disconnect:'), log.join(' '));
  // Backoff: 40, 80, 160, 320, 320, ... ms while QEMU was away (~700 ms → at least 4 retries).
  assert.deepEqual(delays.slice(0, 4), [40, 80, 160, 320]);
  assert.ok(delays.every((d) => d <= 320));
  assert.ok(log.some((l) => /retry#\d+:(ECONNREFUSED|ENOENT)/.test(l)), log.join(' '));
  assert.match(log[log.length - 1]!, /^connected#\d+$/);
  assert.ok(Number(/#(\d+)/.exec(log[log.length - 1]!)![1]) >= 4);
});
