import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { uniformHotSetCurve } from '../../src/model/dirty-curve';
import { binUsed, meanPriority } from '../../src/policy/bins';
import { PAPER_EPSILON_BYTES_PER_SEC, PAPER_MB_BYTES, paperPolicy, paperThrottleBytesPerSec, paperThrottles } from '../../src/policy/paper';
import type { Bin, Decision, MigrationView, WorldState } from '../../src/policy/types';

const MB = PAPER_MB_BYTES;
const curve = uniformHotSetCurve(100, 1000);

function view(id: string, overlayBytes: number, over: Partial<MigrationView> = {}): MigrationView {
  return {
    id,
    phase: 'base',
    startedSec: 0,
    overlayBytes,
    writeBytesPerSecDemand: 1e6,
    baseBytesLeft: 1e9,
    mirrorBytesLeft: overlayBytes,
    ramBytes: 2 ** 30,
    ramDirty: curve,
    ramPendingBytes: 2 ** 30,
    cpuThrottlePct: 0,
    failed: false,
    mirrorOnly: false,
    ...over,
  };
}

function world(omegaBytes: number, migrations: MigrationView[], linkBytesPerSec = 1e9, nowSec = 0): WorldState {
  return { nowSec, intervalSec: 0.1, omegaBytes, slaBytesPerSec: 10_000, linkBytesPerSec, ramMaxBandwidthBytesPerSec: 128 * MB, downtimeLimitMs: 300, migrations };
}

/** The paper's formula evaluated directly in its own units (MB, MB/s), as the plots do. */
function formulaMBps(piMB: number, sMB: number, alpha: number, capMBps: number): number {
  return Math.min(piMB * Math.exp((-alpha * sMB) / (piMB - sMB + 0.01)) + 0.01, capMBps);
}

test("γ matches the paper's formula in its units (MB = 2^20 bytes) at the plotted points, Π = 100 MB, U/N = 10 MB/s", () => {
  for (const alpha of [1, 2]) {
    for (const s of [0, 5, 20, 40, 53, 60, 69, 75, 90, 99, 100]) {
      const got = paperThrottleBytesPerSec({ partitionBytes: 100 * MB, overlayBytes: s * MB, meanPriority: alpha, linkShareBytesPerSec: 10 * MB }) / MB;
      assert.ok(Math.abs(got - formulaMBps(100, s, alpha, 10)) < 1e-9, `Σα=${alpha} s=${s} MB: ${got}`);
    }
  }
  // ε is 0.01 MB/s in bytes/s, and s = Π leaves only ε.
  assert.equal(PAPER_EPSILON_BYTES_PER_SEC, 0.01 * 1048576);
  assert.ok(Math.abs(paperThrottleBytesPerSec({ partitionBytes: 100 * MB, overlayBytes: 100 * MB, meanPriority: 1, linkShareBytesPerSec: 10 * MB }) - PAPER_EPSILON_BYTES_PER_SEC) < 1e-6);
});

test("γ has the shape the paper describes: capped by U/N when the bin is empty, half at 40 % with Σα = 2, crossing U/N near 70 MB and 54 MB", () => {
  const g = (s: number, alpha: number, cap = 10 * MB): number => paperThrottleBytesPerSec({ partitionBytes: 100 * MB, overlayBytes: s * MB, meanPriority: alpha, linkShareBytesPerSec: cap });
  // Near Π at s = 0 (100 MB/s), which is above U/N: capped at 10 MB/s.
  assert.equal(g(0, 1), 10 * MB);
  assert.ok(Math.abs(g(0, 1, Infinity) / MB - 100.01) < 1e-9);
  // "after around 40 % of the capacity ... the throttling rate has been halved" (uncapped curves).
  const ratio = g(40, 2, Infinity) / g(40, 1, Infinity);
  assert.ok(ratio > 0.45 && ratio < 0.56, `ratio ${ratio}`);
  // Where each curve meets U/N = 10 MB/s, read off the paper's figures: ≈ 70 MB (red) and ≈ 54 MB (black).
  const crossing = (alpha: number): number => {
    let lo = 0;
    let hi = 100;
    for (let k = 0; k < 60; k++) {
      const mid = (lo + hi) / 2;
      if (g(mid, alpha, Infinity) > 10 * MB) lo = mid;
      else hi = mid;
    }
    return lo;
  };
  assert.ok(Math.abs(crossing(1) - 70) < 1.5, `red crosses at ${crossing(1)}`);
  assert.ok(Math.abs(crossing(2) - 54) < 1.5, `black crosses at ${crossing(2)}`);
  // Monotone: more data, lower throttle; higher Σα, lower throttle.
  for (let s = 0; s < 99; s += 3) {
    assert.ok(g(s + 3, 1, Infinity) <= g(s, 1, Infinity));
    assert.ok(g(s, 2, Infinity) <= g(s, 1, Infinity));
  }
});

test('bad formula inputs are RangeErrors naming the field', () => {
  assert.throws(() => paperThrottleBytesPerSec({ partitionBytes: -1, overlayBytes: 0, meanPriority: 1, linkShareBytesPerSec: 1 }), /partitionBytes/);
  assert.throws(() => paperThrottleBytesPerSec({ partitionBytes: 1, overlayBytes: 0, meanPriority: 0.5, linkShareBytesPerSec: 1 }), /meanPriority/);
  assert.throws(() => paperThrottleBytesPerSec({ partitionBytes: 1, overlayBytes: NaN, meanPriority: 1, linkShareBytesPerSec: 1 }), /overlayBytes/);
});

/** The paper's worked example (its 4-bin figure): b0 and b2 frozen; b1 = [1, 2, 0], b3 = [3, 0, 2] bottom first. */
function workedExample(): Bin[] {
  const q = 100 * MB;
  return [
    { home: 'm0', sizeBytes: q, frozen: true, shards: [{ id: 'm0', bytes: q }] },
    { home: 'm1', sizeBytes: q, frozen: false, shards: [{ id: 'm1', bytes: 40 * MB }, { id: 'm2', bytes: 20 * MB }, { id: 'm0', bytes: 20 * MB }] },
    { home: 'm2', sizeBytes: q, frozen: true, shards: [{ id: 'm2', bytes: q }] },
    { home: 'm3', sizeBytes: q, frozen: false, shards: [{ id: 'm3', bytes: 5 * MB }, { id: 'm0', bytes: 15 * MB }, { id: 'm2', bytes: 10 * MB }] },
  ];
}

test("the paper's worked example: Σα_0 = Σα_2 = 2, the unsharded ones 1; a guest in another's bin is throttled no harder than it", () => {
  const bins = workedExample();
  assert.equal(meanPriority(bins, 'm0'), 2);
  assert.equal(meanPriority(bins, 'm2'), 2);
  assert.equal(meanPriority(bins, 'm1'), 1);
  assert.equal(meanPriority(bins, 'm3'), 1);
  const w = world(400 * MB, ['m0', 'm1', 'm2', 'm3'].map((id) => view(id, bins.reduce((a, b) => a + b.shards.filter((s) => s.id === id).reduce((x, s) => x + s.bytes, 0), 0))), 400 * MB);
  const t = paperThrottles(w, bins);
  assert.equal(t.get('m0')!.meanPriority, 2);
  for (const [sharded, homes] of [
    ['m0', ['m1', 'm3']],
    ['m2', ['m1', 'm3']],
  ] as const) {
    for (const h of homes) assert.ok(t.get(sharded)!.throttleBytesPerSec <= t.get(h)!.throttleBytesPerSec, `γ_${sharded} ≤ γ_${h}`);
    assert.ok(t.get(sharded)!.throttleBytesPerSec >= w.slaBytesPerSec);
  }
});

test('Π: arrivals share Ω equally, a shrunk bin sheds its excess to the least-used bin and freezes, completions give space back', () => {
  const omega = 300 * MB;
  let d: Decision = paperPolicy.decide(world(omega, [view('a', 0)]), undefined);
  assert.equal(d.migrations[0]!.partitionBytes, omega);
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB)]), d);
  // b arrives: two bins of 150 MB, a (140 MB) still fits.
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB), view('b', 0)]), d);
  assert.deepEqual(d.migrations.map((m) => m.partitionBytes), [150 * MB, 150 * MB]);
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB), view('b', 30 * MB)]), d);
  // c arrives: bins of 100 MB; a holds 140 → Δ = 40 MB moves to the least-used bin that can hold it (c's, empty).
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB), view('b', 30 * MB), view('c', 0)]), d);
  const bins = d.bins!;
  assert.deepEqual(bins.map((b) => b.sizeBytes), [100 * MB, 100 * MB, 100 * MB]);
  const [ba, bb, bc] = bins;
  assert.equal(binUsed(ba!), 100 * MB);
  assert.equal(ba!.frozen, true);
  assert.equal(binUsed(bb!), 30 * MB);
  assert.deepEqual(bc!.shards, [{ id: 'c', bytes: 0 }, { id: 'a', bytes: 40 * MB }]);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.meanPriority, 1.5);
  assert.ok(d.migrations.every((m) => !m.failed));
  // b completes: its 100 MB are split equally between a and c (150 each); a brings its shard home and thaws.
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB), view('c', 10 * MB)]), d);
  assert.deepEqual(d.bins!.map((b) => b.sizeBytes), [150 * MB, 150 * MB]);
  assert.deepEqual(d.bins![0]!.shards, [{ id: 'a', bytes: 140 * MB }]);
  assert.equal(d.bins![0]!.frozen, false);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.meanPriority, 1);
});

test('Π: growth beyond the bin spills to the least-used bin that can hold it; growth no split can place fails the migration', () => {
  const omega = 500 * MB;
  const at = (a: number, b: number, c: number, d: number, e: number, failedA = false): WorldState =>
    world(omega, [view('a', a * MB, { failed: failedA }), view('b', b * MB), view('c', c * MB), view('d', d * MB), view('e', e * MB)]);
  let d = paperPolicy.decide(at(0, 0, 0, 0, 0), undefined);
  d = paperPolicy.decide(at(90, 60, 70, 95, 97), d);
  // b grows 70 MB: 40 MB fill its own bin, the other 30 go whole to the only bin that can hold them: c (30 free).
  d = paperPolicy.decide(at(90, 130, 70, 95, 97), d);
  assert.deepEqual(d.bins!.find((x) => x.home === 'c')!.shards, [{ id: 'c', bytes: 70 * MB }, { id: 'b', bytes: 30 * MB }]);
  assert.equal(d.bins!.find((x) => x.home === 'b')!.frozen, true);
  assert.equal(d.migrations.find((m) => m.id === 'b')!.meanPriority, 1.5);
  // Free now: a 10, d 5, e 3 (18 MB in all). a grows 17: its 10 MB of room, then 7 MB to place: no bin holds 7,
  // no two hold 3.5 each (e has 3), four parts need four bins: a fails although Ω still has room.
  d = paperPolicy.decide(at(107, 130, 70, 95, 97), d);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.failed, true);
  assert.ok(d.failedIds!.includes('a'));
  for (const bin of d.bins!) assert.ok(bin.sizeBytes + 1e-6 >= binUsed(bin), 'no bin below its data, even after a failure');
  assert.ok(d.bins!.reduce((x, bin) => x + bin.sizeBytes, 0) <= omega + 1e-6);
  // The failure is remembered, and a failed migration may not grow any more.
  d = paperPolicy.decide(at(107, 130, 70, 95, 97, true), d);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.failed, true);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.quotaBytes, 107 * MB);
});

test('Π: halves go to the two least-used bins that can each hold a half', () => {
  const omega = 400 * MB;
  let d = paperPolicy.decide(world(omega, [view('a', 0), view('b', 0), view('c', 0)]), undefined);
  // After d arrives bins are 100 MB: b and c hold 75 MB (25 free each), d empty... fill d to 80 first.
  d = paperPolicy.decide(world(omega, [view('a', 100 * MB), view('b', 75 * MB), view('c', 75 * MB)]), d);
  d = paperPolicy.decide(world(omega, [view('a', 100 * MB), view('b', 75 * MB), view('c', 75 * MB), view('d', 0)]), d);
  // a's excess (100 − 100 = 0): nothing moves. Now d grows to 80.
  d = paperPolicy.decide(world(omega, [view('a', 100 * MB), view('b', 75 * MB), view('c', 75 * MB), view('d', 80 * MB)]), d);
  // a grows 40 MB: its bin is full → 40 MB to place; free: b 25, c 25, d 20 → no bin holds 40, halves of 20 go to
  // the two least-used bins that can hold 20: d (80 used) cannot be first since b and c are less used (75).
  d = paperPolicy.decide(world(omega, [view('a', 140 * MB), view('b', 75 * MB), view('c', 75 * MB), view('d', 80 * MB)]), d);
  const holder = (home: string): number => d.bins!.find((b) => b.home === home)!.shards.find((s) => s.id === 'a')?.bytes ?? 0;
  assert.equal(holder('b'), 20 * MB);
  assert.equal(holder('c'), 20 * MB);
  assert.equal(holder('d'), 0);
  assert.equal(d.migrations.find((m) => m.id === 'a')!.failed, false);
});

test('Π: on a completion a sharded migration that cannot bring even its smallest shard home fails', () => {
  const omega = 300 * MB;
  let d = paperPolicy.decide(world(omega, [view('a', 0), view('b', 0)]), undefined);
  d = paperPolicy.decide(world(omega, [view('a', 150 * MB), view('b', 10 * MB)]), d);
  d = paperPolicy.decide(world(omega, [view('a', 150 * MB), view('b', 10 * MB), view('c', 0)]), d);
  // a: 100 home + 50 in c's bin (least used). Now b fills up to 100 and c to 45.
  d = paperPolicy.decide(world(omega, [view('a', 150 * MB), view('b', 100 * MB), view('c', 45 * MB)]), d);
  // c completes: its 100 MB split between a and b (150 each); the orphan 50 MB of a goes home (room 50): fine.
  const after = paperPolicy.decide(world(omega, [view('a', 150 * MB), view('b', 100 * MB)]), d);
  assert.equal(after.migrations.find((m) => m.id === 'a')!.failed, false);
  assert.deepEqual(after.bins![0]!.shards, [{ id: 'a', bytes: 150 * MB }]);
  // Instead: a sharded into b's bin, then c (not holding a's shard) completes while a's home cannot take the shard back.
  let e = paperPolicy.decide(world(omega, [view('a', 0), view('b', 0), view('c', 0)]), undefined);
  e = paperPolicy.decide(world(omega, [view('a', 100 * MB), view('b', 10 * MB), view('c', 95 * MB)]), e);
  e = paperPolicy.decide(world(omega, [view('a', 180 * MB), view('b', 10 * MB), view('c', 95 * MB)]), e); // 80 MB to b's bin
  assert.equal(e.bins!.find((x) => x.home === 'b')!.shards.find((s) => s.id === 'a')!.bytes, 80 * MB);
  // c completes: a's home grows to 150 → 50 MB of room < its 80 MB shard → fails (k−1 = 1 shard, none fits).
  e = paperPolicy.decide(world(omega, [view('a', 180 * MB), view('b', 10 * MB)]), e);
  assert.equal(e.migrations.find((m) => m.id === 'a')!.failed, true);
});

interface Step {
  kind: 'arrive' | 'grow' | 'complete';
  pick: number;
  bytes: number;
}

test('property: Σ Π ≤ Ω, no bin below its data, books equal the overlays, γ_SLA ≤ γ ≤ max(U/N, γ_SLA)', () => {
  const steps = fc.array(
    fc.record({ kind: fc.constantFrom<Step['kind']>('arrive', 'grow', 'grow', 'grow', 'complete'), pick: fc.nat(100), bytes: fc.integer({ min: 0, max: 200 * MB }) }),
    { minLength: 1, maxLength: 40 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 50, max: 2000 }), fc.integer({ min: 1, max: 1000 }), steps, (omegaMB, linkMB, plan) => {
      const omega = omegaMB * MB;
      const link = linkMB * MB;
      let live: MigrationView[] = [];
      let next = 0;
      let d: Decision | undefined;
      for (const s of plan) {
        if (s.kind === 'arrive' || live.length === 0) live = [...live, view(`m${next++}`, 0)];
        else if (s.kind === 'complete') live = live.filter((_, k) => k !== s.pick % live.length);
        else {
          const k = s.pick % live.length;
          const used = live.reduce((a, m) => a + m.overlayBytes, 0);
          // The world never lets Ω overfill, and a failed (paused) guest does not grow.
          const room = Math.min(omega - used, d?.migrations.find((m) => m.id === live[k]!.id)?.quotaBytes ?? omega);
          const grow = live[k]!.failed ? 0 : Math.max(0, Math.min(s.bytes, room - live[k]!.overlayBytes));
          live = live.map((m, j) => (j === k ? { ...m, overlayBytes: m.overlayBytes + grow } : m));
        }
        const w = world(omega, live, link);
        d = paperPolicy.decide(w, d);
        live = live.map((m) => ({ ...m, failed: d!.migrations.find((x) => x.id === m.id)!.failed }));
        const bins = d.bins!;
        assert.ok(bins.reduce((a, b) => a + b.sizeBytes, 0) <= omega * (1 + 1e-12));
        for (const b of bins) assert.ok(b.sizeBytes >= binUsed(b) - 1e-6, `bin ${b.home} ${b.sizeBytes} < ${binUsed(b)}`);
        for (const m of live) {
          const books = bins.reduce((a, b) => a + b.shards.filter((x) => x.id === m.id).reduce((y, x) => y + x.bytes, 0), 0);
          assert.ok(Math.abs(books - m.overlayBytes) < 1, `books of ${m.id}: ${books} vs ${m.overlayBytes}`);
          const md = d.migrations.find((x) => x.id === m.id)!;
          const cap = Math.max(link / live.length, w.slaBytesPerSec);
          assert.ok(md.throttleBytesPerSec! >= w.slaBytesPerSec && md.throttleBytesPerSec! <= cap + PAPER_EPSILON_BYTES_PER_SEC, `γ ${md.throttleBytesPerSec}`);
          assert.ok(md.quotaBytes >= m.overlayBytes);
          assert.ok(md.meanPriority >= 1 && md.meanPriority <= live.length);
        }
      }
    }),
    { numRuns: 150 },
  );
});
