/**
 * Throttle arithmetic (QEMU 7.2's rules for block_set_io_throttle) and the write-demand estimator.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { WriteDemand } from '../../src/governor/demand';
import { effectiveWriteLimit, looksGoverned, readLimits, sameLimits, throttleArgs, UNLIMITED, withWriteLimit } from '../../src/governor/throttle';
import type { ThrottleLimits } from '../../src/governor/types';
import type { BlockDeviceInfo } from '../../src/qmp/types';

const MiB = 1024 * 1024;

const limitsArb: fc.Arbitrary<ThrottleLimits> = fc
  .record({
    total: fc.boolean(),
    bw: fc.integer({ min: 0, max: 1e9 }),
    rd: fc.integer({ min: 0, max: 1e9 }),
    burst: fc.integer({ min: 0, max: 1e9 }),
    len: fc.integer({ min: 1, max: 10 }),
    iops: fc.integer({ min: 0, max: 10_000 }),
  })
  .map(({ total, bw, rd, burst, len, iops }) => {
    // Valid QEMU configurations only: total XOR per-direction; a burst ≥ its average.
    const l: ThrottleLimits = total ? { bps: bw, bps_rd: 0, bps_wr: 0, iops, iops_rd: 0, iops_wr: 0 } : { bps: 0, bps_rd: rd, bps_wr: bw, iops: 0, iops_rd: 0, iops_wr: iops };
    if (bw > 0 && burst > 0) {
      if (total) {
        l.bps_max = bw + burst;
        l.bps_max_length = len;
      } else {
        l.bps_wr_max = bw + burst;
        l.bps_wr_max_length = len;
      }
    }
    return l;
  });

/** QEMU 7.2's throttle_is_valid, restated for the fields we touch. */
function qemuValid(l: ThrottleLimits): boolean {
  if (l.bps > 0 && (l.bps_rd > 0 || l.bps_wr > 0)) return false;
  if ((l.bps_max ?? 0) > 0 && ((l.bps_rd_max ?? 0) > 0 || (l.bps_wr_max ?? 0) > 0)) return false;
  for (const [avg, max] of [
    [l.bps, l.bps_max],
    [l.bps_rd, l.bps_rd_max],
    [l.bps_wr, l.bps_wr_max],
  ] as const) {
    if ((max ?? 0) > 0 && !(avg > 0)) return false;
    if ((max ?? 0) > 0 && max! < avg) return false;
  }
  return true;
}

test('withWriteLimit: valid for QEMU, writes capped at min(γ, own limit), every other limit kept (property)', () => {
  fc.assert(
    fc.property(limitsArb, fc.integer({ min: 1, max: 2e9 }), (orig, g) => {
      const out = withWriteLimit(orig, g);
      assert.ok(qemuValid(out), JSON.stringify(out));
      assert.equal(effectiveWriteLimit(out), Math.min(g, effectiveWriteLimit(orig)));
      if (orig.bps > 0) {
        // The total limit is kept as the read limit.
        assert.equal(out.bps_rd, g >= orig.bps ? orig.bps_rd : orig.bps);
      } else {
        assert.equal(out.bps_rd, orig.bps_rd);
        assert.equal(out.iops_wr, orig.iops_wr);
        // The write burst shrinks with the limit, in proportion (QEMU lets a device run max × length bytes ahead).
        if (orig.bps_wr_max === undefined || g >= orig.bps_wr) assert.equal(out.bps_wr_max, orig.bps_wr_max);
        else assert.equal(out.bps_wr_max, Math.max(g, Math.round((orig.bps_wr_max * g) / orig.bps_wr)));
      }
      assert.ok(looksGoverned(orig, out));
    }),
    { numRuns: 500 },
  );
});

test('sameLimits treats an absent burst field as 0 and an absent burst length as QEMU’s default 1 s', () => {
  assert.ok(sameLimits({ ...UNLIMITED }, { ...UNLIMITED, bps_max: 0, bps_max_length: 1 }));
  assert.ok(!sameLimits({ ...UNLIMITED, bps_wr: 5 }, { ...UNLIMITED, bps_wr: 6 }));
  assert.ok(!sameLimits({ ...UNLIMITED, bps_wr: 5, bps_wr_max: 10, bps_wr_max_length: 2 }, { ...UNLIMITED, bps_wr: 5, bps_wr_max: 10 }));
  assert.ok(sameLimits({ ...UNLIMITED, group: 'a' }, { ...UNLIMITED, group: 'b' }), 'the group is not a limit');
});

test('looksGoverned: only settings withWriteLimit could produce from the original', () => {
  const orig: ThrottleLimits = { ...UNLIMITED, bps_rd: 1000, iops_wr: 7 };
  assert.ok(looksGoverned(orig, orig));
  assert.ok(looksGoverned(orig, { ...orig, bps_wr: 12345 }));
  assert.ok(!looksGoverned(orig, { ...orig, bps_rd: 999, bps_wr: 12345 }), 'someone changed the read limit');
  assert.ok(!looksGoverned(orig, { ...orig, iops_wr: 0 }));
});

test('readLimits takes the six base fields and the burst fields QEMU reports, and the group', () => {
  const inserted = { bps: 0, bps_rd: 1, bps_wr: 2, iops: 0, iops_rd: 3, iops_wr: 4, bps_wr_max: 5, bps_wr_max_length: 2, iops_size: 4096, group: 'g', image: {}, drv: 'raw' } as unknown as BlockDeviceInfo;
  assert.deepEqual(readLimits(inserted), { bps: 0, bps_rd: 1, bps_wr: 2, iops: 0, iops_rd: 3, iops_wr: 4, bps_wr_max: 5, bps_wr_max_length: 2, iops_size: 4096, group: 'g' });
  const args = throttleArgs('/machine/peripheral/root/virtio-backend', readLimits(inserted), true);
  assert.equal(args.id, '/machine/peripheral/root/virtio-backend');
  assert.equal(args.group, 'g');
  assert.equal(throttleArgs('/x', readLimits(inserted), false).group, undefined, 'a policy change never moves the device between groups');
  assert.equal(throttleArgs('/x', { ...UNLIMITED, group: 'g' }, true).group, undefined, 'all zeros disables throttling: no group');
});

/** Feeds `rate(tSec)` bytes/s, capped at `limit(tSec)`, at 10 Hz; returns the estimator. */
function run(d: WriteDemand, fromSec: number, toSec: number, rate: (t: number) => number, limit: (t: number) => number, state = { wr: 0 }): WriteDemand {
  for (let t = fromSec; t < toSec - 1e-9; t += 0.1) {
    const l = limit(t);
    state.wr += Math.min(rate(t), l) * 0.1;
    d.update((t + 0.1) * 1000, state.wr, l);
  }
  return d;
}

test('write demand: measured when free; when saturating a limit, kept above it (probe) and never ratcheted down to it', () => {
  const d = new WriteDemand();
  const s = { wr: 0 };
  run(d, 0, 10, () => 10 * MiB, () => Infinity, s);
  assert.ok(Math.abs(d.demandBytesPerSec / (10 * MiB) - 1) < 0.2, `free: ${d.demandBytesPerSec}`);
  assert.ok(!d.saturated);
  // Throttled at 2 MiB/s: the guest fills it. Demand stays at what was measured before.
  run(d, 10, 20, () => 10 * MiB, () => 2 * MiB, s);
  assert.ok(d.saturated);
  assert.ok(Math.abs(d.rateBytesPerSec / (2 * MiB) - 1) < 0.05, `rate ${d.rateBytesPerSec}`);
  assert.ok(d.demandBytesPerSec >= 8 * MiB, `saturated demand ${d.demandBytesPerSec}`);
  // The guest calms down to 0.5 MiB/s under the 2 MiB/s limit: that is measured.
  run(d, 20, 35, () => 0.5 * MiB, () => 2 * MiB, s);
  assert.ok(!d.saturated);
  assert.ok(Math.abs(d.demandBytesPerSec / (0.5 * MiB) - 1) < 0.2, `calm ${d.demandBytesPerSec}`);
  // It wants 8 MiB/s again: saturated at 2 MiB/s, the demand is probed above the limit.
  run(d, 35, 45, () => 8 * MiB, () => 2 * MiB, s);
  assert.ok(d.saturated);
  assert.ok(d.demandBytesPerSec >= 2 * MiB * 1.2, `probe ${d.demandBytesPerSec}`);
});

test('write demand: a policy giving a fraction of the reported demand does not drive the limit to zero', () => {
  const d = new WriteDemand();
  const s = { wr: 0 };
  let limit = Infinity;
  let t = 0;
  for (let k = 0; k < 60; k++) {
    run(d, t, t + 1, () => 10 * MiB, () => limit, s);
    t += 1;
    // A policy that wants 60 % of the demand.
    limit = Math.max(10_000, 0.6 * d.demandBytesPerSec);
  }
  assert.ok(limit >= 0.6 * 10 * MiB * 0.8, `limit settled at ${limit}`);
});

test('write demand: a limit of less than one request per τ still reads as saturated (no collapse to the measured trickle)', () => {
  const d = new WriteDemand();
  let wr = 0;
  let ops = 0;
  let t = 0;
  // Free: 16 KiB requests at 6 MiB/s for 5 s.
  for (; t < 5; t += 0.1) {
    wr += 0.6 * MiB;
    ops += (0.6 * MiB) / 16384;
    d.update((t + 0.1) * 1000, wr, Infinity, ops);
  }
  // Limited to 10 kB/s: QEMU lets one 16 KiB request through every 1.6 s.
  let next = 5;
  let minDemand = Infinity;
  for (; t < 30; t += 0.1) {
    if (t >= next) {
      wr += 16384;
      ops += 1;
      next += 1.6384;
    }
    d.update((t + 0.1) * 1000, wr, 10_000, ops);
    if (t > 7) {
      assert.ok(d.saturated, `t=${t.toFixed(1)}: rate ${d.rateBytesPerSec.toFixed(0)}`);
      minDemand = Math.min(minDemand, d.demandBytesPerSec);
    }
  }
  assert.ok(minDemand >= 5 * MiB, `demand stays the one measured before the limit: ${minDemand}`);
});

test('write demand: the reported value moves only outside the hysteresis band', () => {
  const d = new WriteDemand({ hysteresis: 0.2 });
  const s = { wr: 0 };
  run(d, 0, 10, () => 10 * MiB, () => Infinity, s);
  const before = d.demandBytesPerSec;
  run(d, 10, 20, () => 11 * MiB, () => Infinity, s);
  assert.equal(d.demandBytesPerSec, before, '10 % more: unchanged');
  run(d, 20, 30, () => 14 * MiB, () => Infinity, s);
  assert.ok(Math.abs(d.demandBytesPerSec / (14 * MiB) - 1) < 0.15, `40 % more: ${d.demandBytesPerSec}`);
  assert.throws(() => new WriteDemand({ saturation: 0.1 }), /saturation: must be a number from 0.5 to 1/);
});
