import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { constantRateCurve, uniformHotSetCurve } from '../../src/model/dirty-curve';
import { backlogRate, MigrationProgress, projectOverlay, remainingTime } from '../../src/model/need';
import { predictPrecopy } from '../../src/model/precopy';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

const close = (actual: number, expected: number, rel: number, msg?: string): void => {
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${msg ?? ''} ${actual} not within ${rel} of ${expected}`);
};

test('projectOverlay: current + rate × time, capped, never below what it holds', () => {
  assert.equal(projectOverlay({ currentBytes: 100, writeBytesPerSec: 10, remainingSec: 5 }), 150);
  assert.equal(projectOverlay({ currentBytes: 100, writeBytesPerSec: 10, remainingSec: 5, capBytes: 120 }), 120);
  assert.equal(projectOverlay({ currentBytes: 200, writeBytesPerSec: 10, remainingSec: 5, capBytes: 120 }), 200);
  assert.equal(projectOverlay({ currentBytes: 100, writeBytesPerSec: 0, remainingSec: Infinity }), 100);
  assert.equal(projectOverlay({ currentBytes: 100, writeBytesPerSec: 1, remainingSec: Infinity }), Infinity);
  assert.equal(projectOverlay({ currentBytes: 100, writeBytesPerSec: 1, remainingSec: Infinity, capBytes: 10 * GiB }), 10 * GiB);
  assert.throws(() => projectOverlay({ currentBytes: -1, writeBytesPerSec: 1, remainingSec: 1 }), /currentBytes/);
  assert.throws(() => projectOverlay({ currentBytes: 1, writeBytesPerSec: NaN, remainingSec: 1 }), /writeBytesPerSec/);
  assert.throws(() => projectOverlay({ currentBytes: 1, writeBytesPerSec: 1, remainingSec: -1 }), /remainingSec/);
});

test('backlogRate: max-min fair between a backlog copy and synchronous writes', () => {
  assert.equal(backlogRate(100, 30), 70); // writes below half: they get all they ask
  assert.equal(backlogRate(100, 80), 50); // writes above half: fair halves
  assert.equal(backlogRate(100, 30, 40), 40); // the backlog's own cap (max-bandwidth)
  assert.equal(backlogRate(100, 0), 100);
  fc.assert(
    fc.property(fc.double({ min: 1, max: 1e10, noNaN: true }), fc.double({ min: 0, max: 1e11, noNaN: true }), (share, w) => {
      const b = backlogRate(share, w);
      assert.ok(b >= share / 2 - 1e-6 && b <= share);
      // Work-conserving: backlog + what the writes get (min(w, share − b)) = share when writes want it.
      if (w >= share - b) close(b + (share - b), share, 1e-12);
    }),
  );
});

function migration(over: Partial<MigrationProgress> = {}): MigrationProgress {
  return {
    phase: 'base',
    baseBytesLeft: 10 * GiB,
    mirrorBytesLeft: 1 * GiB,
    ramBytes: 4 * GiB,
    ramDirty: uniformHotSetCurve(2000, 100_000),
    ramPendingBytes: 4 * GiB,
    cpuThrottlePct: 0,
    ...over,
  };
}

test('remainingTime in base: bulk copy, then a mirror backlog grown by the writes, then RAM', () => {
  const share = 100 * MiB;
  const w = 10 * MiB;
  const r = remainingTime({ migration: migration(), writeBytesPerSec: w, linkShareBytesPerSec: share });
  // 10 GiB at 100 MiB/s = 102.4 s; the overlay grows from 1 GiB by 10 MiB/s × 102.4 s = 1024 MiB.
  close(r.baseSec, 102.4, 1e-12);
  assert.equal(r.mirrorBacklogBytes, 2 * GiB);
  // The drain gets 100 − 10 = 90 MiB/s while the writes go to the target synchronously.
  close(r.mirrorSec, 2048 / 90, 1e-12);
  // RAM: the stream gets 90 MiB/s too (below the 128 MiB/s max-bandwidth).
  const ram = predictPrecopy({ ramBytes: 4 * GiB, zeroPageFraction: 0, bandwidthBytesPerSec: 90 * MiB, downtimeLimitMs: 300, dirty: uniformHotSetCurve(2000, 100_000) });
  assert.ok(ram.converges);
  close(r.ramSec, ram.totalSec, 1e-12);
  close(r.totalSec, 102.4 + 2048 / 90 + ram.totalSec, 1e-12);
  close(r.switchoverSec, ram.downtimeMs / 1000, 1e-12);
});

test('remainingTime: later phases skip what is done; a non-converging RAM phase is Infinity', () => {
  const share = 100 * MiB;
  const mirror = remainingTime({ migration: migration({ phase: 'mirror', baseBytesLeft: 0, mirrorBytesLeft: 300 * MiB }), writeBytesPerSec: 80 * MiB, linkShareBytesPerSec: share });
  assert.equal(mirror.baseSec, 0);
  close(mirror.mirrorSec, 300 / 50, 1e-12); // heavy writes: fair halves
  const ram = remainingTime({
    migration: migration({ phase: 'ram', baseBytesLeft: 0, mirrorBytesLeft: 0, ramPendingBytes: 512 * MiB, cpuThrottlePct: 30 }),
    writeBytesPerSec: 0,
    linkShareBytesPerSec: share,
  });
  assert.equal(ram.mirrorSec, 0);
  assert.equal(ram.ram?.perIteration[0]!.sendBytes, (512 * MiB / 4096) * 4104);
  assert.equal(ram.ram?.perIteration[0]!.throttlePct, 30);
  const stuck = remainingTime({
    migration: migration({ phase: 'ram', ramDirty: constantRateCurve(1e6), ramPendingBytes: GiB }),
    writeBytesPerSec: 0,
    linkShareBytesPerSec: 10 * MiB,
    autoConverge: false,
  });
  assert.equal(stuck.totalSec, Infinity);
  assert.equal(stuck.ram?.converges, false);
  const sw = remainingTime({ migration: migration({ phase: 'switchover', ramPendingBytes: 4096 * 1000 }), writeBytesPerSec: 0, linkShareBytesPerSec: 4104 * 1000 });
  close(sw.totalSec, 1, 1e-12);
  assert.throws(() => remainingTime({ migration: migration(), writeBytesPerSec: 0, linkShareBytesPerSec: 0 }), /linkShareBytesPerSec/);
});

test('remainingTime never decreases when the link share shrinks (property)', () => {
  fc.assert(
    fc.property(
      fc.constantFrom<MigrationProgress['phase']>('base', 'mirror', 'ram'),
      fc.double({ min: 1 * MiB, max: 1e9, noNaN: true }),
      fc.double({ min: 0.1, max: 1, noNaN: true }),
      fc.double({ min: 0, max: 50 * MiB, noNaN: true }),
      (phase, share, shrink, w) => {
        const m = migration({ phase });
        const a = remainingTime({ migration: m, writeBytesPerSec: w, linkShareBytesPerSec: share, autoConverge: false });
        const b = remainingTime({ migration: m, writeBytesPerSec: w, linkShareBytesPerSec: share * shrink, autoConverge: false });
        assert.ok(b.totalSec >= a.totalSec * (1 - 1e-12), `${b.totalSec} < ${a.totalSec}`);
      },
    ),
    { numRuns: 200 },
  );
});

test('remainingTime: fixed orchestration costs for the phases ahead; overlay growth by clusters; guest response passed on', () => {
  const share = 100 * MiB;
  const w = 10 * MiB;
  const plain = remainingTime({ migration: migration(), writeBytesPerSec: w, linkShareBytesPerSec: share });
  assert.equal(plain.fixedSec, 0);
  const fixedCostSec = { mirror: 0.2, switchover: 0.3 };
  const base = remainingTime({ migration: migration(), writeBytesPerSec: w, linkShareBytesPerSec: share, fixedCostSec });
  close(base.fixedSec, 0.5, 1e-12);
  close(base.totalSec, plain.totalSec + 0.5, 1e-12);
  // In `mirror` the mirror has started: only the switchover's cost is ahead; in `ram` too.
  const inMirror = remainingTime({ migration: migration({ phase: 'mirror', baseBytesLeft: 0 }), writeBytesPerSec: w, linkShareBytesPerSec: share, fixedCostSec });
  close(inMirror.fixedSec, 0.3, 1e-12);
  const inRam = remainingTime({ migration: migration({ phase: 'ram', baseBytesLeft: 0, mirrorBytesLeft: 0 }), writeBytesPerSec: 0, linkShareBytesPerSec: share, fixedCostSec });
  close(inRam.fixedSec, 0.3, 1e-12);
  const sw = remainingTime({ migration: migration({ phase: 'switchover', ramPendingBytes: 4096 }), writeBytesPerSec: 0, linkShareBytesPerSec: share, fixedCostSec });
  assert.equal(sw.fixedSec, 0);
  // The overlay grows by the given function of the base phase's length, not by writes × time.
  const seen: number[] = [];
  const grown = remainingTime({
    migration: migration(),
    writeBytesPerSec: w,
    linkShareBytesPerSec: share,
    overlayGrowthBytes: (sec) => {
      seen.push(sec);
      return 64 * 1024 * 100;
    },
  });
  close(seen[0]!, 102.4, 1e-12);
  assert.equal(grown.mirrorBacklogBytes, GiB + 64 * 1024 * 100);
  close(grown.mirrorSec, (GiB + 64 * 1024 * 100) / (90 * MiB), 1e-12);
  assert.throws(() => remainingTime({ migration: migration(), writeBytesPerSec: w, linkShareBytesPerSec: share, overlayGrowthBytes: () => -1 }), /overlayGrowthBytes: must return a finite number ≥ 0/);
  assert.throws(() => remainingTime({ migration: migration(), writeBytesPerSec: w, linkShareBytesPerSec: share, fixedCostSec: { mirror: -1 } }), /fixedCostSec.mirror/);
  // The guest's throttle response and QEMU's dirty count reach predictPrecopy.
  const paced = { vcpuBusyFraction: 0.1, throttleCatchUpSec: 0.05, absorbPendingRewrites: true };
  const m = migration({ ramBytes: 128 * MiB, ramDirty: uniformHotSetCurve(12000, 4096) });
  const withResponse = remainingTime({ migration: m, writeBytesPerSec: 0, linkShareBytesPerSec: 23.3e6, zeroPageFraction: 0.25, ...paced });
  const direct = predictPrecopy({ ramBytes: 128 * MiB, zeroPageFraction: 0.25, bandwidthBytesPerSec: 23.3e6, downtimeLimitMs: 300, dirty: uniformHotSetCurve(12000, 4096), ...paced });
  assert.equal(withResponse.ram?.finalThrottlePct, 90);
  close(withResponse.ramSec, direct.totalSec, 1e-12);
});
