/**
 * The QMP and disk collectors against real QEMU 7.2: rates derived from real counters (qemu-io
 * writes through the guest's disk device, a real migration capped by max-bandwidth), ending
 * cleanly when QEMU dies.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { QmpClient } from '../../src/qmp/client';
import {
  blockdevAdd,
  blockdevSnapshot,
  humanMonitorCommand,
  migrate,
  migrateContinue,
  migrateIncoming,
  migrateSetCapabilities,
  migrateSetParameters,
  queryStatus,
} from '../../src/qmp/commands';
import { DiskCollector, type DiskSample } from '../../src/sources/disk-collector';
import { QmpCollector, type QmpSample } from '../../src/sources/qmp-collector';
import type { Interval } from '../../src/sources/types';
import { needs, qemuMissing } from '../helpers/prereq';
import { startQemuFor } from '../helpers/qemu';

const qemu = needs('qemu', qemuMissing());
const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Writes `bytes` at `offset` through the device's own BlockBackend, so QEMU accounts them as guest writes. */
async function guestWrite(c: QmpClient, offset: number, bytes: number): Promise<void> {
  const dev = '/machine/peripheral/vd0/virtio-backend';
  const out = await humanMonitorCommand(c, `qemu-io -d ${dev} "aio_write -P 0x5a ${offset} ${bytes}"`);
  assert.equal(out, '', `qemu-io: ${out}`);
  await humanMonitorCommand(c, `qemu-io -d ${dev} "aio_flush"`);
}

test('QmpCollector at 20 Hz: contiguous samples, write rate and overlay growth from real qcow2 writes', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', diskMib: 64 });
  // One connection for polling and for the writes: a QEMU -qmp socket serves one client at a time.
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const col = new QmpCollector({ client: c, intervalMs: 50 });
  const samples: QmpSample[] = [];
  col.onSample((s) => samples.push(s));
  col.start();
  await sleep(300);
  await guestWrite(c, 0, 4 * MiB);
  await sleep(300);
  await guestWrite(c, 16 * MiB, 4 * MiB);
  await sleep(400);
  await col.close();

  assert.ok(samples.length >= 15, `${samples.length} samples in ~1 s at 20 Hz`);
  samples.forEach((s, i) => assert.equal(s.seq, i));
  const dts = samples.slice(1).map((s) => s.dtMs!);
  const meanDt = dts.reduce((a, b) => a + b, 0) / dts.length;
  assert.ok(meanDt > 45 && meanDt < 80, `mean dt ${meanDt} ms for a 50 ms interval`);
  assert.ok(samples.every((s) => s.errors.length === 0), JSON.stringify(samples.find((s) => s.errors.length)?.errors));

  const dev = (s: QmpSample) => s.devices!.find((d) => d.qdev === '/machine/peripheral/vd0/virtio-backend')!;
  const first = dev(samples[0]!);
  const last = dev(samples[samples.length - 1]!);
  assert.equal(last.wrBytes - first.wrBytes, 8 * MiB);
  // Integrating the derived rate over time recovers the bytes written.
  const integrated = samples.slice(1).reduce((a, s) => a + (dev(s).wrBytesPerSec! * s.dtMs!) / 1000, 0);
  assert.ok(Math.abs(integrated - 8 * MiB) < 1, `integrated ${integrated}`);
  assert.ok(samples.some((s) => (dev(s).wrBytesPerSec ?? 0) > 4 * MiB), 'a write burst shows as a rate');
  const root = (s: QmpSample) => s.nodes!.find((n) => n.nodeName === 'root')!;
  const grown = root(samples[samples.length - 1]!).actualSizeBytes! - root(samples[0]!).actualSizeBytes!;
  t.diagnostic(`qcow2 actual-size grew ${grown} bytes for ${8 * MiB} written; mean poll dt ${meanDt.toFixed(1)} ms`);
  assert.ok(grown >= 8 * MiB && grown < 9 * MiB, `qcow2 grew by ${grown} bytes for 8 MiB written`);
  assert.equal(col.stats.samples, samples.length);
});

test('QEMU killed mid-poll: the collector ends once with QMP_DISCONNECTED and emits nothing after', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', diskMib: 16 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const col = new QmpCollector({ client: c, intervalMs: 50 });
  const ends: { code: string; message: string }[] = [];
  let samplesAfterEnd = 0;
  col.onSample(() => {
    if (ends.length) samplesAfterEnd++;
  });
  const ended = new Promise<void>((r) => col.onEnd((e) => (ends.push(e), r())));
  col.start();
  await sleep(300);
  vm.child.kill('SIGKILL');
  const t0 = performance.now();
  await ended;
  assert.ok(performance.now() - t0 < 1000, 'ended promptly');
  await sleep(200);
  assert.equal(ends.length, 1);
  assert.equal(ends[0]!.code, 'QMP_DISCONNECTED');
  assert.equal(samplesAfterEnd, 0);
  assert.ok(col.stats.samples >= 3);
  assert.equal(col.hasEnded, true);
  await col.close();
});

test('measureDirtyRate: page-sampling result as a sample and an Interval; one at a time; adopts a running one', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', memMib: 256 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const col = new QmpCollector({ client: c, intervalMs: 200, queries: { migrate: true, blockstats: false, nodes: false, jobs: false } });
  const intervals: Interval[] = [];
  col.onInterval((i) => intervals.push(i));
  col.start();
  t.after(() => col.close());
  const first = col.measureDirtyRate({ calcTimeS: 1, samplePagesPerGiB: 1024 });
  await assert.rejects(col.measureDirtyRate({ calcTimeS: 1 }), /already running/);
  const r = await first;
  assert.equal(r.calcTimeS, 1);
  assert.equal(r.samplePagesPerGiB, 1024);
  assert.equal(r.mode, 'page-sampling');
  assert.ok(r.dirtyRateMiBPerSec >= 0);
  assert.ok(r.tEndMs - r.tStartMs >= 1000, `${r.tEndMs - r.tStartMs} ms`);
  assert.equal(intervals.length, 1);
  assert.equal(intervals[0]!.source, 'qmp');
  assert.equal(intervals[0]!.seq, 0);
  assert.equal(intervals[0]!.pagesTotal, (256 * MiB) / 4096);
  assert.equal(intervals[0]!.tEndMs - intervals[0]!.tStartMs, 1000);
  assert.equal(intervals[0]!.dirtyPages, Math.round(r.dirtyRateMiBPerSec * 256 * 1));
  // Someone else started a 2 s measurement: the collector reports that one instead of failing.
  await c.execute('calc-dirty-rate', { 'calc-time': 2 });
  const adopted = await col.measureDirtyRate({ calcTimeS: 1 });
  assert.equal(adopted.calcTimeS, 2);
  assert.equal(intervals.length, 2);
  assert.equal(intervals[1]!.seq, 1);
});

test('DiskCollector: an LXD-style overlay (blockdev-add + blockdev-snapshot) grows with guest writes, the base does not', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', diskMib: 64 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const overlayPath = join(vm.dir, 'migration_snapshot.qcow2');
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', overlayPath, '64M']);
  await blockdevAdd(c, { driver: 'file', filename: overlayPath, 'node-name': 'lxd_root_snapshot_file' });
  await blockdevAdd(c, { driver: 'qcow2', file: 'lxd_root_snapshot_file', 'node-name': 'lxd_root_snapshot', backing: null });
  await blockdevSnapshot(c, { node: 'root', overlay: 'lxd_root_snapshot' });

  const disk = new DiskCollector({ client: c, vm: 'vm-a', intervalMs: 100, overlayNodeName: 'lxd_root_snapshot' });
  const samples: DiskSample[] = [];
  disk.onSample((s) => samples.push(s));
  disk.start();
  await sleep(250);
  await guestWrite(c, 8 * MiB, 6 * MiB);
  await sleep(350);
  await disk.close();

  const first = samples[0]!;
  const last = samples[samples.length - 1]!;
  assert.equal(first.vm, 'vm-a');
  assert.ok(first.overlay && last.overlay);
  const grown = last.overlay.actualSizeBytes! - first.overlay.actualSizeBytes!;
  assert.ok(grown >= 6 * MiB && grown < 7 * MiB, `overlay grew ${grown} bytes for 6 MiB of writes`);
  assert.equal(last.guestWrittenBytes - first.guestWrittenBytes, 6 * MiB);
  assert.ok(samples.some((s) => (s.overlay?.growthBytesPerSec ?? 0) > 6 * MiB), 'growth shows as a rate');
  assert.ok(samples.some((s) => (s.guestWriteBytesPerSec ?? 0) > 6 * MiB), 'guest writes show as a rate');
  // The base image is read-only now: nothing landed in it.
  const nodes = await c.execute<{ 'node-name': string; ro: boolean }[]>('query-named-block-nodes', { flat: true });
  assert.equal(nodes.find((n) => n['node-name'] === 'root')!.ro, true);
});

test('a real migration capped at 64 MiB/s: the derived transfer rate matches the cap', qemu, async (t) => {
  // Guest RAM backed by a file of random bytes: every page is non-zero, so all of it goes on the wire.
  const ramMib = 96;
  const srcDir = await startQemuFor(t, {}).then(async (q) => (await q.kill(), q.dir));
  const ramPath = join(srcDir, 'ram.bin');
  const fd = openSync(ramPath, 'w', 0o600);
  const chunk = Buffer.alloc(4 * MiB);
  for (let i = 0; i < ramMib / 4; i++) writeSync(fd, randomFillSync(chunk));
  closeSync(fd);
  const machine = ['-machine', 'memory-backend=ram0'];
  const src = await startQemuFor(t, {
    machine: 'q35',
    memMib: ramMib,
    extraArgs: ['-object', `memory-backend-file,id=ram0,size=${ramMib}M,mem-path=${ramPath},share=off`, ...machine],
  });
  const dst = await startQemuFor(t, {
    machine: 'q35',
    memMib: ramMib,
    extraArgs: ['-object', `memory-backend-ram,id=ram0,size=${ramMib}M`, ...machine, '-incoming', 'defer'],
  });
  const sc = await QmpClient.connect(src.socketPath);
  const dc = await QmpClient.connect(dst.socketPath);
  t.after(() => Promise.all([sc.close(), dc.close()]));
  const uri = `unix:${join(dst.dir, 'migrate.sock')}`;
  await migrateIncoming(dc, { uri });
  await migrateSetCapabilities(sc, { 'pause-before-switchover': true });
  await migrateSetParameters(sc, { 'max-bandwidth': 64 * MiB, 'downtime-limit': 300 });

  const col = new QmpCollector({ client: sc, intervalMs: 100, queries: { migrate: true, blockstats: false, nodes: false, jobs: false } });
  const samples: QmpSample[] = [];
  const intervals: Interval[] = [];
  col.onSample((s) => samples.push(s));
  col.onInterval((i) => intervals.push(i));
  col.start();
  await migrate(sc, { uri });
  const deadline = Date.now() + 20_000;
  while (samples[samples.length - 1]?.migration?.status !== 'pre-switchover') {
    assert.ok(Date.now() < deadline, `stuck in ${samples[samples.length - 1]?.migration?.status}`);
    assert.notEqual(samples[samples.length - 1]?.migration?.status, 'failed');
    await sleep(50);
  }
  await migrateContinue(sc, 'pre-switchover');
  while (samples[samples.length - 1]?.migration?.status !== 'completed') {
    assert.ok(Date.now() < deadline, 'did not complete');
    await sleep(50);
  }
  await col.close();

  const active = samples.filter((s) => s.migration!.status === 'active' && s.migration!.ramTransferBytesPerSec !== null);
  assert.ok(active.length >= 5, `${active.length} active samples`);
  const rates = active.map((s) => s.migration!.ramTransferBytesPerSec!).sort((a, b) => a - b);
  const median = rates[Math.floor(rates.length / 2)]!;
  t.diagnostic(`median derived transfer rate ${(median / MiB).toFixed(1)} MiB/s (cap 64), ${active.length} active samples`);
  assert.ok(median > 0.7 * 64 * MiB && median < 1.3 * 64 * MiB, `median transfer rate ${(median / MiB).toFixed(1)} MiB/s vs cap 64`);
  const done = samples[samples.length - 1]!.migration!;
  assert.ok(done.ramTotalBytes >= ramMib * MiB, `total ${done.ramTotalBytes}`);
  // SeaBIOS zeroes some low memory (zero pages cost only a header on the wire): most, not all, is sent.
  assert.ok(done.ramTransferredBytes >= 0.9 * ramMib * MiB, `transferred ${done.ramTransferredBytes}`);
  assert.ok(done.downtimeMs !== null && done.downtimeMs >= 0);
  assert.equal((await queryStatus(dc)).status, 'running');
  // Idle guest: no migration dirty-rate intervals claim more pages than exist.
  for (const i of intervals) assert.ok(i.dirtyPages <= i.pagesTotal);
});
