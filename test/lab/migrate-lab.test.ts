/**
 * `dpa migrate` on real parts: two QEMU 7.2 (TCG) with the dpa guest, the target inside a
 * network namespace behind a tbf-shaped veth, the overlay in a tmpfs Ω. One source VM serves three
 * attempts, in order: target killed during the mirror (rolled back), link cut during RAM pre-copy
 * (rolled back), then a migration that completes. Each rollback must leave the source running on
 * its base image with every write the guest made; the guest's own verification and a host-side
 * scan of the raw base image check that, and the next attempt starts from that state.
 */
import assert from 'node:assert/strict';
import { open, readdir } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { checkUnit, DISK_MAGIC } from '../../src/lab/guest-pattern';
import type { DiskSummary, MemSummary, VerifyResult } from '../../src/lab/guest-protocol';
import { MigrationLab, verifyGuest } from '../../src/migrate/lab';
import { SUCCESS_PHASES, type MigrationPhase, type MigrationProgress, type MigrationResult } from '../../src/migrate/types';
import { migrateSetParameters, queryMigrateParameters } from '../../src/qmp/commands';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const MiB = 1024 * 1024;
const DISK_MIB = 32;
const REGION_BLOCKS = 4096; // 16 MiB of 4 KiB blocks
const LINK_MBIT = 200;

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;

/** Blocks of the workload's region that hold a complete, self-consistent block for their own offset. */
async function validBlocksInImage(path: string): Promise<number> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(REGION_BLOCKS * 4096);
    await fh.read(buf, 0, buf.length, 0);
    let n = 0;
    for (let b = 0; b < REGION_BLOCKS; b++) {
      const u = checkUnit(buf, b * 4096, DISK_MAGIC);
      if (u.ok && u.id === BigInt(b * 4096)) n++;
    }
    return n;
  } finally {
    await fh.close();
  }
}

function assertVerified(v: VerifyResult, where: string): void {
  assert.ok(v.mem && v.disk, `${where}: both workloads verified`);
  assert.equal(v.mem.badPages, 0, `${where}: memory pages lost: ${JSON.stringify(v.mem.firstBad)}`);
  assert.equal(v.mem.contentDigest, v.mem.digest, `${where}: memory digest`);
  assert.equal(v.disk.error, null, `${where}: disk read-back error`);
  assert.equal(v.disk.badBlocks, 0, `${where}: disk blocks lost: ${JSON.stringify(v.disk.firstBad)}`);
  assert.ok(v.disk.checkedBlocks > 100, `${where}: only ${v.disk.checkedBlocks} blocks were ever written`);
}

describe('dpa migrate: LXD-shaped QEMU-to-QEMU migration with non-shared storage', prereq, () => {
  let lab: MigrationLab;
  const timings: string[] = [];

  const startWorkloads = async (): Promise<{ mem: MemSummary; disk: DiskSummary }> => ({
    mem: await lab.source.memStart({ mib: 16, pattern: 'uniform', ratePagesPerSec: 2000, seed: 3 }),
    disk: await lab.source.diskStart({ regionBlocks: REGION_BLOCKS, blocksPerSec: 200, pattern: 'uniform', seed: 5 }),
  });

  /** Quiesces the source, has the guest verify, scans the base image from the host, restarts the workloads. */
  const checkSourceIntact = async (where: string): Promise<VerifyResult> => {
    const q = await lab.source.quiesce();
    const v = await lab.source.verify('all');
    assertVerified(v, where);
    assert.equal(v.disk!.totalWrites, q.disk.totalWrites);
    // The overlay is gone, so every write must be in the raw base image itself.
    assert.equal(await validBlocksInImage(lab.source.diskPath!), v.disk!.checkedBlocks, `${where}: base image lacks blocks the guest wrote`);
    const blocks = await lab.source.qmp.execute<Array<{ inserted?: { 'node-name'?: string; backing_file_depth: number } }>>('query-block');
    const root = blocks.find((b) => b.inserted?.['node-name'] === 'lxd_root');
    assert.ok(root, `${where}: the device's active node is lxd_root again (${JSON.stringify(blocks.map((b) => b.inserted?.['node-name']))})`);
    assert.equal(root.inserted!.backing_file_depth, 0);
    assert.deepEqual(await readdir(lab.omega.path), [], `${where}: Ω is empty`);
    await startWorkloads();
    return v;
  };

  before(async () => {
    const t0 = performance.now();
    lab = await MigrationLab.create({ guestMib: 128, diskMib: DISK_MIB, linkMbit: LINK_MBIT, omegaMib: 64 });
    await startWorkloads();
    timings.push(`lab up (namespace, Ω, source boot) ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  });

  after(async () => {
    if (timings.length) process.stderr.write(`migrate-lab timings:\n  ${timings.join('\n  ')}\n`);
    await lab?.destroy();
  });

  test('target QEMU killed during the mirror: source keeps running, overlay committed into the base and removed, no write lost', async () => {
    const t = await lab.prepareTarget();
    // A rate-limited mirror (4 MiB/s over ~10 MiB of overlay) leaves time to kill the target mid-way.
    const m = lab.migration(t, { mirrorBytesPerSec: 4 * MiB, stallTimeoutMs: 3000 });
    let killedAt: MigrationProgress | undefined;
    const writesBefore = (await lab.source.status()).disk.totalWrites;
    m.on('progress', (p) => {
      if (!killedAt && p.phase === 'mirror' && p.mirror && p.mirror.offset > 0) {
        killedAt = p;
        void t.vm.kill('SIGKILL');
      }
    });
    const r = await m.run();
    assert.ok(killedAt, 'the mirror ran');
    assert.ok(killedAt.mirror!.offset < killedAt.mirror!.len, 'killed before the mirror was in sync');
    assert.equal(r.phase, 'rolled-back', JSON.stringify(r));
    assert.equal(r.failure!.phase, 'mirror');
    const rb = r.rollback!;
    assert.deepEqual(rb.errors, []);
    assert.equal(rb.committed, true);
    assert.ok(rb.committedBytes > MiB, `the overlay held guest writes (${rb.committedBytes} bytes committed)`);
    assert.equal(rb.overlayRemoved, true);
    assert.equal(rb.migrationCancelled, false, 'RAM migration had not started');
    assert.equal(rb.sourceStatus, 'running');
    assert.ok(r.overlayPeakBytes > MiB);
    assert.equal((await lab.source.qmp.execute<{ status: string }>('query-status')).status, 'running');
    // The guest kept writing through all of it.
    const s = await lab.source.status();
    assert.ok(s.disk.totalWrites > writesBefore, 'disk writes went on');
    await checkSourceIntact('after target kill');
    timings.push(`kill during mirror: failed after ${(killedAt.tMs / 1000).toFixed(2)} s, rollback ${rb.durationMs.toFixed(0)} ms, committed ${(rb.committedBytes / MiB).toFixed(1)} MiB`);
  });

  test('link cut during RAM pre-copy: failure within the stall timeout, NBD and migration unblocked, source running, data intact', async () => {
    const t = await lab.prepareTarget();
    const stallTimeoutMs = 2000;
    const m = lab.migration(t, { stallTimeoutMs });
    let cutAtMs: number | undefined;
    let failedAtMs: number | undefined;
    let knob: Promise<void> | undefined;
    m.on('phase', (p) => {
      // The governor's live knob, through the shared source monitor: 4 MiB/s keeps pre-copy going
      // for ~30 s, so the cut lands in it.
      if (p.phase === 'ram') knob = m.setMaxBandwidth(4 * MiB);
    });
    m.on('progress', (p) => {
      if (cutAtMs === undefined && p.phase === 'ram' && p.ram && p.ram.transferred > 4 * MiB) {
        cutAtMs = performance.now();
        void lab.topology.cut();
      }
    });
    m.on('phase', (p) => {
      if (p.phase === 'failed') failedAtMs = performance.now();
    });
    let r: MigrationResult;
    try {
      r = await m.run();
    } finally {
      await lab.topology.restore();
    }
    await knob;
    const params = await queryMigrateParameters(lab.source.qmp);
    assert.equal(params['max-bandwidth'], 4 * MiB, 'setMaxBandwidth() reached QEMU');
    await migrateSetParameters(lab.source.qmp, { 'max-bandwidth': 128 * MiB }); // QEMU's default, for the next test
    assert.ok(cutAtMs !== undefined && failedAtMs !== undefined, 'the link was cut during pre-copy and the failure noticed');
    const detectMs = failedAtMs - cutAtMs;
    assert.ok(detectMs >= stallTimeoutMs * 0.9 && detectMs < stallTimeoutMs + 2500, `failure noticed ${detectMs.toFixed(0)} ms after the cut (stall timeout ${stallTimeoutMs} ms)`);
    assert.equal(r.phase, 'rolled-back', JSON.stringify(r));
    assert.equal(r.failure!.phase, 'ram');
    assert.equal(r.failure!.errorName, 'StallError');
    const rb = r.rollback!;
    assert.deepEqual(rb.errors, []);
    assert.equal(rb.migrationCancelled, true);
    assert.equal(rb.nbdYanked, true, 'the hung NBD connection was yanked');
    assert.equal(rb.mirrorCancelled, true);
    assert.equal(rb.committed, true);
    assert.equal(rb.overlayRemoved, true);
    assert.equal(rb.sourceStatus, 'running');
    assert.ok(rb.durationMs < 10_000, `rollback took ${rb.durationMs} ms`);
    // The failed target was told to quit.
    const exit = await Promise.race([t.vm.exited, new Promise<'alive'>((res) => setTimeout(() => res('alive'), 5000))]);
    assert.notEqual(exit, 'alive', 'target QEMU quit after the failure');
    await checkSourceIntact('after link cut');
    timings.push(`link cut during RAM: detected ${detectMs.toFixed(0)} ms after the cut, rollback ${rb.durationMs.toFixed(0)} ms (NBD yanked, migrate_cancel)`);
  });

  test('abort() during the base copy (the governor giving up): copy stopped, overlay committed, source intact', async () => {
    const t = await lab.prepareTarget();
    const m = lab.migration(t);
    let abortedAt: MigrationProgress | undefined;
    m.on('progress', (p) => {
      if (!abortedAt && p.phase === 'base' && p.baseBytesCopied >= 4 * MiB) {
        abortedAt = p;
        void m.abort('test');
      }
    });
    const r = await m.run();
    assert.ok(abortedAt);
    assert.equal(r.phase, 'rolled-back', JSON.stringify(r));
    assert.equal(r.failure!.phase, 'base');
    assert.equal(r.failure!.errorName, 'MigrationAbortedError');
    assert.ok(r.baseBytesCopied < r.baseBytesTotal, 'the copy stopped part-way');
    const rb = r.rollback!;
    assert.deepEqual(rb.errors, []);
    assert.equal(rb.committed, true);
    assert.equal(rb.mirrorCancelled, false);
    assert.equal(rb.migrationCancelled, false);
    await assert.rejects(t.receiver.done, /base receiver/, 'the receiver saw the copy end early');
    await t.stop();
    await checkSourceIntact('after abort');
    timings.push(`abort during base copy at ${(abortedAt.baseBytesCopied / MiB).toFixed(1)} MiB: rollback ${rb.durationMs.toFixed(0)} ms`);
  });

  test('timeoutMs fails a migration that cannot finish in time, and it rolls back', async () => {
    const t = await lab.prepareTarget();
    const m = lab.migration(t, { maxBandwidthBytesPerSec: 2 * MiB, timeoutMs: 4000 });
    let r: MigrationResult;
    try {
      r = await m.run();
    } finally {
      await migrateSetParameters(lab.source.qmp, { 'max-bandwidth': 128 * MiB });
    }
    assert.equal(r.phase, 'rolled-back', JSON.stringify(r));
    assert.equal(r.failure!.phase, 'ram');
    assert.equal(r.failure!.errorName, 'MigrationTimeoutError');
    const failedAt = r.totalMs - r.rollback!.durationMs;
    // setTimeout counts from the event loop's cached clock, which can lag performance.now() by a
    // few ms when the loop is busy: the timer may fire that much "early" on our clock.
    assert.ok(failedAt >= 3990 && failedAt < 5500, `failed after ${failedAt.toFixed(1)} ms`);
    assert.equal(r.rollback!.migrationCancelled, true);
    assert.deepEqual(r.rollback!.errors, []);
    await checkSourceIntact('after timeout');
  });

  test('full migration over a 200 Mbit/s link under a disk+memory write workload: completes, the guest verifies its data on the target, overlay gone', async () => {
    const t = await lab.prepareTarget();
    const m = lab.migration(t);
    const phases: MigrationPhase[] = [];
    let progressEvents = 0;
    let maxBaseRate = 0;
    m.on('phase', (p) => phases.push(p.phase));
    m.on('progress', (p) => {
      progressEvents++;
      maxBaseRate = Math.max(maxBaseRate, p.baseBytesPerSec);
    });
    const before = await lab.source.status();
    const r = await m.run();
    assert.equal(r.phase, 'completed', JSON.stringify(r));
    assert.deepEqual(phases, [...SUCCESS_PHASES]);
    assert.ok(progressEvents > 10);
    assert.equal(r.targetStatus, 'running');
    assert.equal(r.baseBytesCopied, DISK_MIB * MiB);
    assert.equal(r.baseBytesTotal, DISK_MIB * MiB);
    // The base crossed the shaped link: no faster than the link allows (tbf meters frames, so TCP
    // gets ~95%), and not absurdly slower.
    const linkBytesPerSec = (LINK_MBIT * 1e6) / 8;
    const baseMs = r.phaseMs.base!;
    assert.ok(baseMs >= ((DISK_MIB * MiB) / linkBytesPerSec) * 1000 * 0.95, `base copy took ${baseMs.toFixed(0)} ms, faster than the link`);
    assert.ok(baseMs < ((DISK_MIB * MiB) / linkBytesPerSec) * 1000 * 3, `base copy took ${baseMs.toFixed(0)} ms`);
    assert.ok(maxBaseRate <= linkBytesPerSec * 1.1, `base rate ${maxBaseRate} bytes/s above the link`);
    assert.ok(r.mirrorBytes > MiB, 'the overlay (guest writes during the base copy) was mirrored');
    assert.ok(r.ram && r.ram.transferred > 32 * MiB, 'guest RAM was sent');
    assert.ok(r.blackoutMs !== undefined && r.blackoutMs > 0 && r.blackoutMs < 5000, `guest paused ${r.blackoutMs} ms`);
    assert.deepEqual(await readdir(lab.omega.path), [], 'the overlay left Ω');
    // LXD quits the source once the target runs.
    const srcExit = await Promise.race([lab.source.exited, new Promise<'alive'>((res) => setTimeout(() => res('alive'), 5000))]);
    assert.notEqual(srcExit, 'alive', 'source QEMU quit');

    // The guest now runs on the target and keeps writing; then it checks every page and block it
    // ever wrote, on the target's RAM and disk.
    await new Promise((res) => setTimeout(res, 500));
    const q = await t.vm.channel.request<{ mem: MemSummary; disk: DiskSummary }>('quiesce', {}, { timeoutMs: 60_000 });
    assert.ok(q.disk.totalWrites > before.disk.totalWrites && q.mem.totalWrites > before.mem.totalWrites, 'the workloads ran on across the migration');
    const v = await verifyGuest(t.vm.channel);
    assertVerified(v, 'on the target');
    assert.equal(await validBlocksInImage(t.vm.diskPath!), v.disk!.checkedBlocks, "the target's image holds every block the guest wrote");
    timings.push(
      `full migration: ${(r.totalMs / 1000).toFixed(2)} s (${Object.entries(r.phaseMs)
        .map(([k, ms]) => `${k} ${((ms ?? 0) / 1000).toFixed(2)} s`)
        .join(', ')}), RAM ${(r.ram!.transferred / MiB).toFixed(1)} MiB in ${r.ram!['dirty-sync-count']} passes, mirror ${(r.mirrorBytes / MiB).toFixed(1)} MiB, QEMU downtime ${r.downtimeMs} ms, guest paused ${r.blackoutMs!.toFixed(0)} ms`,
    );
  });
});
