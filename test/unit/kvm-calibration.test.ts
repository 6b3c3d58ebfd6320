/**
 * The KVM calibration VM against real KVM: exactness of both harvest modes for every pattern,
 * the shape of each pattern (distinct pages per interval against their exact expectation),
 * multi-vCPU rings, mid-interval ring harvests, bitmaps lent to listeners, a 16 GiB guest's RSS,
 * syscall errors, and option validation (which needs no KVM).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { kvmMissing, needs } from '../helpers/prereq';
import {
  KvmCalibrationSource,
  resolveKvmCalibrationOptions,
  runCalibration,
  type KvmCalibrationOptions,
  type KvmInterval,
} from '../../src/sources/kvm-calibration';
import type { SysError } from '../../src/native';

const KVM = needs('kvm', kvmMissing());

function popcount(bytes: Uint8Array): number {
  let n = 0;
  for (let b of bytes) {
    while (b) {
      n += b & 1;
      b >>= 1;
    }
  }
  return n;
}

/** Expected distinct pages after `w` independent draws with probabilities `p`. */
function expectedDistinct(p: number[], w: number): number {
  return p.reduce((sum, pk) => sum + 1 - Math.pow(1 - pk, w), 0);
}

function zipfProbabilities(n: number, s: number): number[] {
  const raw = Array.from({ length: n }, (_, k) => Math.pow(k + 1, -s));
  const z = raw.reduce((a, b) => a + b, 0);
  return raw.map((x) => x / z);
}

test('validation: every option is range-checked before native code, naming the option and the range', () => {
  const ok: KvmCalibrationOptions = { guestMib: 256, ratePagesPerSec: 1000 };
  assert.equal(resolveKvmCalibrationOptions(ok).hotPages, 65536);
  const bad: [Partial<KvmCalibrationOptions>, RegExp][] = [
    [{ guestMib: 63 }, /^guestMib must be an integer from 64 to 65536 MiB \(got 63\)$/],
    [{ guestMib: 65537 }, /guestMib must be an integer from 64 to 65536/],
    [{ guestMib: 100.5 }, /guestMib must be an integer/],
    [{ vcpus: 0 }, /^vcpus must be an integer from 1 to 8 \(got 0\)$/],
    [{ vcpus: 9 }, /vcpus must be an integer from 1 to 8/],
    [{ mode: 'dirty' as never }, /^mode must be one of bitmap, ring \(got dirty\)$/],
    [{ pattern: 'random' as never }, /^pattern must be one of uniform, sequential, zipf/],
    [{ ratePagesPerSec: 0 }, /ratePagesPerSec must be/],
    [{ ratePagesPerSec: -5 }, /ratePagesPerSec must be a number from/],
    [{ ratePagesPerSec: NaN }, /ratePagesPerSec must be a number from/],
    // 65536 writes per vCPU per interval: at 10 ms one vCPU tops out at 6,553,600 writes/s.
    [{ ratePagesPerSec: 7e6 }, /ratePagesPerSec must be at most 6553600 page writes\/s with 1 vCPU\(s\) at intervalMs 10/],
    [{ hotPages: 0 }, /^hotPages must be an integer from 1 to 65536 pages \(got 0\)$/],
    [{ hotPages: 65537 }, /hotPages must be an integer from 1 to 65536 pages/],
    [{ zipfS: 0 }, /^zipfS must be a number from 0.01 to 10 \(got 0\)$/],
    [{ zipfS: 11 }, /zipfS must be a number from 0.01 to 10/],
    [{ intervalMs: 0 }, /^intervalMs must be an integer from 1 to 1000 ms \(got 0\)$/],
    [{ intervalMs: 1001 }, /intervalMs must be an integer from 1 to 1000 ms/],
    [{ seed: -1 }, /^seed must be an integer from 0 to 9007199254740991/],
    [{ seed: 2 ** 53 }, /seed must be an integer from 0 to 9007199254740991/],
    [{ seconds: 0 }, /^seconds must be a number from 0.001 to 86400 s/],
    [{ ringEntries: 1000 }, /^ringEntries must be a power of two from 256 to 65536 \(got 1000\)$/],
    [{ ringEntries: 128 }, /ringEntries must be an integer from 256 to 65536/],
    [{ bitmapPoolSize: 17 }, /bitmapPoolSize must be an integer from 0 to 16/],
  ];
  for (const [override, message] of bad) {
    assert.throws(() => resolveKvmCalibrationOptions({ ...ok, ...override }), (err: Error) => {
      assert.ok(err instanceof RangeError, `${JSON.stringify(override)} gave ${err.name}`);
      assert.match(err.message, message);
      return true;
    });
  }
  assert.throws(() => resolveKvmCalibrationOptions({ ...ok, guestMib: '256' as never }), TypeError);
  // A rate of 0 is only for the idle benchmark.
  assert.equal(resolveKvmCalibrationOptions({ ...ok, ratePagesPerSec: 0, allowIdle: true }).ratePagesPerSec, 0);
  // With 4 vCPUs four mailboxes are available.
  assert.equal(resolveKvmCalibrationOptions({ ...ok, vcpus: 4, ratePagesPerSec: 7e6 }).vcpus, 4);
  assert.equal(resolveKvmCalibrationOptions({ ...ok, seconds: 1, intervalMs: 5 }).maxIntervals, 200);
  // Validation happens before any VM exists: start() throws the same RangeError.
  assert.throws(() => KvmCalibrationSource.start({ ...ok, guestMib: 1 }), RangeError);
});

const PATTERN_RUN = { guestMib: 256, ratePagesPerSec: 20000, hotPages: 5000, zipfS: 1.1, seconds: 1, intervalMs: 10, seed: 7 } as const;

for (const pattern of ['uniform', 'sequential', 'zipf'] as const) {
  test(`exact in both modes, ${pattern}: 1 s at 100 Hz on a 256 MiB guest; both modes see the same workload`, KVM, async () => {
    const perMode: Record<string, KvmInterval[]> = {};
    for (const mode of ['bitmap', 'ring'] as const) {
      const intervals: KvmInterval[] = [];
      let bitmapsChecked = 0;
      const summary = await runCalibration(
        { ...PATTERN_RUN, pattern, mode, bitmapPoolSize: 2 },
        {
          onInterval: (i) => {
            intervals.push({ ...i, bitmap: undefined });
            if (i.bitmap) {
              // The lent bitmap holds exactly the measured pages.
              assert.equal(popcount(i.bitmap), i.dirtyPages);
              bitmapsChecked++;
            }
          },
        },
      );
      assert.equal(summary.endCode, 'COMPLETE', summary.endMessage);
      assert.equal(summary.intervals, 100);
      assert.equal(summary.mismatchedIntervals, 0);
      assert.equal(summary.mismatchedPages, 0);
      assert.equal(summary.truthPages, summary.measuredPages);
      assert.equal(intervals.length, 100);
      assert.ok(bitmapsChecked >= 90, `only ${bitmapsChecked} intervals carried a bitmap`);
      intervals.forEach((i, k) => {
        assert.equal(i.seq, k);
        assert.equal(i.source, `kvm-${mode}`);
        assert.equal(i.pagesTotal, 256 * 256);
        assert.equal(i.writesRequested, 200);
        assert.ok(i.tEndMs > i.tStartMs);
        assert.equal(i.mismatchedPages, 0);
      });
      // Interval times are on the performance.now() clock.
      assert.ok(Math.abs(intervals[99]!.tEndMs - performance.now()) < 2000);
      perMode[mode] = intervals;
    }
    // Same seed, same pages: the two harvest paths measured the identical workload.
    assert.deepEqual(
      perMode.bitmap!.map((i) => i.truthPages),
      perMode.ring!.map((i) => i.truthPages),
    );
    const distinct = perMode.bitmap!.reduce((a, i) => a + i.truthPages, 0);
    if (pattern === 'sequential') {
      // A sweep below the hot-set size never repeats a page within an interval.
      assert.equal(distinct, 100 * 200);
    } else {
      const p = pattern === 'uniform' ? new Array(5000).fill(1 / 5000) : zipfProbabilities(5000, 1.1);
      const expected = 100 * expectedDistinct(p, 200);
      const tolerance = pattern === 'uniform' ? 0.01 : 0.03;
      assert.ok(Math.abs(distinct / expected - 1) < tolerance, `${pattern}: ${distinct} distinct pages, expected ${expected.toFixed(0)}`);
    }
  });
}

test('ring mode with 4 vCPUs at 200 Hz is exact; vCPU threads do the writing', KVM, async () => {
  const s = await runCalibration({ guestMib: 256, vcpus: 4, mode: 'ring', ratePagesPerSec: 40000, hotPages: 20000, seconds: 1, intervalMs: 5 });
  assert.equal(s.endCode, 'COMPLETE', s.endMessage);
  assert.equal(s.intervals, 200);
  assert.equal(s.mismatchedIntervals, 0);
  assert.ok(s.truthPages > 30000);
  assert.ok(s.vcpuCpuPercent > 0);
  assert.ok(s.cpuPercent > 0);
});

test('ring mode harvests mid-interval when an interval writes more than half a ring per vCPU', KVM, async () => {
  // 600 sequential pages per 10 ms interval on a 256-entry ring: 5 pieces of 128 per interval.
  const s = await runCalibration({
    guestMib: 128,
    mode: 'ring',
    ringEntries: 256,
    pattern: 'sequential',
    ratePagesPerSec: 60000,
    hotPages: 30000,
    seconds: 0.2,
    intervalMs: 10,
  });
  assert.equal(s.endCode, 'COMPLETE', s.endMessage);
  assert.equal(s.mismatchedIntervals, 0);
  assert.equal(s.truthPages, 20 * 600);
  assert.ok(s.earlyHarvests + s.ringFullExits >= 20 * 4, `${s.earlyHarvests} early harvests, ${s.ringFullExits} ring-full exits`);
});

test('a 16 GiB guest costs little RSS (MAP_NORESERVE, only written pages are backed)', KVM, async () => {
  const rssKiB = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);
  const before = rssKiB();
  const source = KvmCalibrationSource.start({ guestMib: 16384, ratePagesPerSec: 20000, hotPages: 2000, seconds: 0.5, intervalMs: 10 });
  let during = 0;
  source.onInterval((i) => {
    if (i.seq === 25) during = rssKiB();
  });
  const end = await source.ended;
  await source.close();
  assert.equal(end.code, 'COMPLETE');
  assert.equal(end.stats.mismatchedIntervals, 0);
  assert.equal(source.pagesTotal, 16384 * 256);
  assert.equal(source.bitmapBytes, (16384 * 256) / 8);
  // 2000 written pages (8 MiB) + 4 pool bitmaps + 2 native bitmaps (512 KiB each) + slack.
  const deltaMiB = (during - before) / 1024;
  assert.ok(during > 0 && deltaMiB < 48, `RSS grew by ${deltaMiB.toFixed(1)} MiB for a 16 GiB guest`);
});

test('syscall failures are Errors with code, errno and syscall', KVM, async () => {
  const ring = KvmCalibrationSource.start({ guestMib: 64, mode: 'ring', ratePagesPerSec: 1000, seconds: 0.05 });
  const out = new Uint8Array(ring.bitmapBytes);
  // KVM refuses the bitmap interface once dirty rings are enabled.
  assert.throws(
    () => ring.readDirtyLog(out),
    (e: SysError) => e.code === 'ENXIO' && e.errno === -6 && e.syscall === 'ioctl(KVM_GET_DIRTY_LOG)' && /ENXIO/.test(e.message),
  );
  await ring.close();

  // 100 writes at the start of each 100 ms interval: halfway through one, the log holds them.
  const bitmap = KvmCalibrationSource.start({ guestMib: 64, ratePagesPerSec: 1000, hotPages: 10000, intervalMs: 100, seed: 3 });
  const dirtyMidInterval = await new Promise<number>((resolve) =>
    bitmap.onInterval((i) => i.seq === 1 && setTimeout(() => resolve(bitmap.readDirtyLog(out)), 50)),
  );
  assert.ok(dirtyMidInterval > 90 && dirtyMidInterval <= 100, `${dirtyMidInterval} dirty pages mid-interval`);
  await bitmap.close();
  await bitmap.close(); // idempotent
  // After close the VM fd is gone: the ioctl fails cleanly instead of touching a reused fd.
  assert.throws(
    () => bitmap.readDirtyLog(out),
    (e: SysError) => e.code === 'EBADF' && e.errno === -9 && e.syscall === 'ioctl(KVM_GET_DIRTY_LOG)',
  );
  assert.throws(() => bitmap.readDirtyLog(new Uint8Array(8)), RangeError);
});

test('close() mid-run stops at once and resolves `ended` with CLOSED; no interval is delivered after it', KVM, async () => {
  const source = KvmCalibrationSource.start({ guestMib: 256, ratePagesPerSec: 10000, intervalMs: 10 });
  let afterClose = 0;
  let closed = false;
  await new Promise<void>((resolve) =>
    source.onInterval((i) => {
      if (closed) afterClose++;
      if (i.seq === 5) resolve();
    }),
  );
  const t0 = performance.now();
  await source.close();
  closed = true;
  assert.ok(performance.now() - t0 < 500, 'close() took too long');
  const end = await source.ended;
  assert.equal(end.code, 'CLOSED');
  assert.ok(end.stats.intervals >= 6);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(afterClose, 0);
});
