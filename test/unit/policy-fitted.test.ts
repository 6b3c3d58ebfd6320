import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { uniformHotSetCurve } from '../../src/model/dirty-curve';
import { remainingTime } from '../../src/model/need';
import { currentShares, DEFAULT_SLA_RESERVE_SEC, deferredFraction, fittedPolicy, proportionalSizes, SLA_RESERVE_MAX_FRACTION, solveLambdas } from '../../src/policy/fitted';
import { fairShareOfFirst, waterFill } from '../../src/policy/link-share';
import { overlayAt, projectTrajectory } from '../../src/policy/projection';
import type { Decision, MigrationView, WorldState } from '../../src/policy/types';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function view(id: string, over: Partial<MigrationView> = {}): MigrationView {
  return {
    id,
    phase: 'base',
    startedSec: 0,
    overlayBytes: 0,
    writeBytesPerSecDemand: 10e6,
    baseBytesLeft: 20 * GiB,
    mirrorBytesLeft: 0,
    ramBytes: 4 * GiB,
    ramDirty: uniformHotSetCurve(5000, 100_000),
    ramPendingBytes: 4 * GiB,
    cpuThrottlePct: 0,
    failed: false,
    mirrorOnly: false,
    ...over,
  };
}

function world(omegaBytes: number, migrations: MigrationView[], linkBytesPerSec = 125e6): WorldState {
  return { nowSec: 0, intervalSec: 0.1, omegaBytes, slaBytesPerSec: 10_000, linkBytesPerSec, ramMaxBandwidthBytesPerSec: 128 * MiB, downtimeLimitMs: 300, migrations };
}

test('projected phase durations agree with the model’s remainingTime in every phase', () => {
  const cases: MigrationView[] = [
    view('base', { phase: 'base', overlayBytes: 1 * GiB, mirrorBytesLeft: 1 * GiB }),
    view('mirror', { phase: 'mirror', overlayBytes: 3 * GiB, baseBytesLeft: 0, mirrorBytesLeft: 2 * GiB }),
    view('ram', { phase: 'ram', overlayBytes: 3 * GiB, baseBytesLeft: 0, mirrorBytesLeft: 0, ramPendingBytes: 1 * GiB, cpuThrottlePct: 20 }),
  ];
  for (const m of cases) {
    for (const [write, share] of [
      [5e6, 60e6],
      [40e6, 60e6],
      [1e6, 500e6],
    ] as const) {
      const tr = projectTrajectory(m, write, share, 128 * MiB, 300);
      const rt = remainingTime({ migration: m, writeBytesPerSec: write, linkShareBytesPerSec: share });
      assert.ok(Math.abs(tr.t1 - rt.baseSec) < 1e-6, `${m.id} base ${tr.t1} vs ${rt.baseSec}`);
      assert.ok(Math.abs(tr.t2 - tr.t1 - rt.mirrorSec) < 1e-6 * Math.max(1, rt.mirrorSec), `${m.id} mirror`);
      // The RAM part is memoised on a 0.5 % bandwidth grid (and 1/64 of RAM when resumed): close, not identical.
      assert.ok(Math.abs(tr.endSec - tr.t2 - rt.ramSec) <= 0.05 * rt.ramSec + 0.5, `${m.id} ram ${tr.endSec - tr.t2} vs ${rt.ramSec}`);
      // Growth: all writes while the base is copied, only what fits beside the copy afterwards.
      assert.ok(Math.abs(tr.s1 - (m.overlayBytes + write * tr.t1)) < 1);
      const mirrorWrite = Math.min(write, share / 2);
      assert.ok(Math.abs(tr.s2 - tr.s1 - mirrorWrite * (tr.t2 - tr.t1)) < 1);
      assert.ok(tr.finalBytes >= tr.s2 && overlayAt(tr, tr.endSec) === tr.finalBytes && overlayAt(tr, 0) === m.overlayBytes);
    }
  }
});

test('the projection grows with the write rate (more writes, larger and later final overlay)', () => {
  fc.assert(
    fc.property(fc.double({ min: 0, max: 100e6, noNaN: true }), fc.double({ min: 0, max: 100e6, noNaN: true }), fc.constantFrom('base', 'mirror', 'ram'), (a, b, phase) => {
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      const m = view('x', { phase: phase as MigrationView['phase'], overlayBytes: GiB, mirrorBytesLeft: phase === 'ram' ? 0 : GiB, baseBytesLeft: phase === 'base' ? 10 * GiB : 0, ramPendingBytes: GiB });
      const p = projectTrajectory(m, lo, 100e6, 128 * MiB, 300);
      const q = projectTrajectory(m, hi, 100e6, 128 * MiB, 300);
      assert.ok(q.finalBytes >= p.finalBytes - 1);
      assert.ok(q.endSec >= p.endSec * (1 - 0.011), `${q.endSec} < ${p.endSec}`);
    }),
    { numRuns: 200 },
  );
});

test('nothing at risk: no throttle at all, Π fills Ω in proportion to need and never below the data', () => {
  const w = world(10 * GiB, [view('a', { overlayBytes: 100 * MiB, writeBytesPerSecDemand: 2e6 }), view('b', { overlayBytes: 10 * MiB, writeBytesPerSecDemand: 0.5e6, baseBytesLeft: 5 * GiB })], 1.25e9);
  const d = fittedPolicy().decide(w, undefined);
  assert.deepEqual(
    d.migrations.map((m) => m.throttleBytesPerSec),
    [null, null],
  );
  const sizes = d.migrations.map((m) => m.partitionBytes!);
  assert.ok(Math.abs(sizes[0]! + sizes[1]! - 10 * GiB) < 1);
  assert.ok(sizes[0]! > sizes[1]!, 'the heavier, longer writer gets the larger bin');
  assert.ok(sizes[0]! >= 100 * MiB && sizes[1]! >= 10 * MiB);
  assert.match(d.reason, /no risk/);
});

test('at risk: the solved plan fits Ω, writers keep ≥ γ_SLA, and a migration that ends first is not held back for later ones', () => {
  // Two heavy writers sharing 1 Gbit/s into 1 GiB: unthrottled they would need several GiB.
  const w = world(GiB, [view('long', { writeBytesPerSecDemand: 30e6, baseBytesLeft: 40 * GiB }), view('short', { writeBytesPerSecDemand: 30e6, baseBytesLeft: 2 * GiB })]);
  const budget = GiB * 0.98;
  const shares = currentShares(w);
  const { lambdas, peakBytes } = solveLambdas(w, shares, budget, 'max-min');
  assert.ok(peakBytes <= budget * (1 + 1e-9), `peak ${peakBytes}`);
  assert.ok(lambdas[0]! < 1 && lambdas[0]! > 0);
  assert.ok(lambdas[1]! >= lambdas[0]!, 'the short one is not held to the long one’s fraction');
  const d = fittedPolicy().decide(w, undefined);
  for (const m of d.migrations) assert.ok(m.throttleBytesPerSec === null || m.throttleBytesPerSec >= w.slaBytesPerSec);
  assert.ok(d.migrations.some((m) => m.throttleBytesPerSec !== null), 'someone is throttled');
  assert.match(d.reason, /at risk/);
  // More demand never loosens the throttle.
  const heavier = world(GiB, [view('long', { writeBytesPerSecDemand: 60e6, baseBytesLeft: 40 * GiB }), view('short', { writeBytesPerSecDemand: 30e6, baseBytesLeft: 2 * GiB })]);
  const l2 = solveLambdas(heavier, currentShares(heavier), budget, 'max-min').lambdas;
  assert.ok(l2[0]! * 60e6 <= lambdas[0]! * 30e6 * 1.0001 || l2[0]! <= lambdas[0]!);
});

test('deferral: no throttle while the plan keeps ≥ 40 % of demand, the plan as is below 10 %, continuous and never below λ', () => {
  assert.equal(deferredFraction(0.4, 0.1, 0.4), 1);
  assert.equal(deferredFraction(0.9, 0.1, 0.4), 1);
  assert.equal(deferredFraction(0.1, 0.1, 0.4), 0.1);
  assert.equal(deferredFraction(0.05, 0.1, 0.4), 0.05);
  fc.assert(
    fc.property(fc.double({ min: 0, max: 1, noNaN: true }), (l) => {
      const f = deferredFraction(l, 0.1, 0.4);
      assert.ok(f >= l && f <= 1);
      assert.ok(Math.abs(deferredFraction(l + 1e-9, 0.1, 0.4) - f) < 1e-6);
    }),
  );
});

test('brake: with Ω nearly full, the writers together may not fill it within the horizon, whatever the plan says', () => {
  // deferAbove = 0: the plan never throttles, so only the brake can.
  const unplanned = fittedPolicy({ deferAbove: 0, deferBelow: 0 });
  const far = world(GiB, [view('a', { overlayBytes: 0.2 * GiB, writeBytesPerSecDemand: 50e6 })], 1.25e9);
  assert.equal(unplanned.decide(far, undefined).migrations[0]!.throttleBytesPerSec, null, 'room for 3 s of writes: no brake');
  const near = world(GiB, [view('a', { overlayBytes: 0.95 * GiB, writeBytesPerSecDemand: 50e6 })], 1.25e9);
  const d = unplanned.decide(near, undefined);
  const g = d.migrations[0]!.throttleBytesPerSec;
  // Free: Ω less the 1 % margin, less γ_SLA × 600 s kept for the writer's tail, less the data.
  const free = GiB * 0.99 - 10_000 * DEFAULT_SLA_RESERVE_SEC - 0.95 * GiB;
  assert.ok(g !== null && Math.abs(g * 3 - free) < 1, `γ ${g}: 3 s of writes must fill exactly the free ${free}`);
  assert.match(d.reason, /braking/);
  // In a small Ω the γ_SLA reserve is capped at 10 % of Ω (600 s × γ_SLA = 6 MB would be most of 8 MiB).
  const small = unplanned.decide(world(8 * MiB, [view('a', { overlayBytes: 4 * MiB, writeBytesPerSecDemand: 4 * MiB })], 1.25e9), undefined);
  const smallFree = 8 * MiB * 0.99 - SLA_RESERVE_MAX_FRACTION * 8 * MiB - 4 * MiB;
  const gs = small.migrations[0]!.throttleBytesPerSec;
  assert.ok(gs !== null && Math.abs(gs * 3 - smallFree) < 1, `γ ${gs}: 3 s of writes must fill exactly the free ${smallFree}`);
});

test('between solves the plan is reused and re-solved on any change of the world', () => {
  const policy = fittedPolicy();
  const w0 = world(GiB, [view('a', { writeBytesPerSecDemand: 30e6 })]);
  const d0 = policy.decide(w0, undefined);
  const d1 = policy.decide({ ...w0, nowSec: 1, migrations: [view('a', { writeBytesPerSecDemand: 30e6, overlayBytes: 1e6 })] }, d0);
  assert.equal(d1.fitted, d0.fitted, 'same world shape: the memo is reused');
  const d2 = policy.decide({ ...w0, nowSec: 1.1, migrations: [view('a', { writeBytesPerSecDemand: 40e6, overlayBytes: 1e6 })] }, d1);
  assert.notEqual(d2.fitted, d1.fitted);
  assert.equal(d2.fitted!.solvedAtSec, 1.1);
  const d3 = policy.decide({ ...w0, nowSec: 16, migrations: [view('a', { writeBytesPerSecDemand: 40e6, overlayBytes: 2e6 })] }, d2);
  assert.equal(d3.fitted!.solvedAtSec, 1.1, 'within 15 s: reused');
  const d4 = policy.decide({ ...w0, nowSec: 16.2, migrations: [view('a', { writeBytesPerSecDemand: 40e6, overlayBytes: 2e6 })] }, d3);
  assert.equal(d4.fitted!.solvedAtSec, 16.2, 'periodic re-solve after 15 s');
});

test('plan gate: the plan is solved but not in force while 15 s of today’s writes keep Ω under 70 % of the budget; in force, re-solved, once they would not', () => {
  // One guest at 40 MB/s with 40 GiB of base left over 125 MB/s: ~13.7 GB of overlay unthrottled
  // against 2 GiB of Ω, so the plan throttles it hard.
  const heavy = (overlayBytes: number): MigrationView => view('a', { writeBytesPerSecDemand: 40e6, baseBytesLeft: 40 * GiB, overlayBytes });
  const budget = 2 * GiB * 0.99 - 10_000 * DEFAULT_SLA_RESERVE_SEC;
  const policy = fittedPolicy();
  // 0.5 GiB + 15 s × 40 MB/s = 1.14 GB ≤ 0.7 × budget = 1.49 GB: open.
  const open = policy.decide(world(2 * GiB, [heavy(0.5 * GiB)]), undefined);
  assert.ok(open.fitted!.lambdas[0]! < 0.2, `the plan itself throttles (λ ${open.fitted!.lambdas[0]})`);
  assert.equal(open.migrations[0]!.throttleBytesPerSec, null, 'but it is not in force');
  assert.match(open.reason, /plan not in force/);
  assert.equal(open.fitted!.gateOpen, true);
  // The same plan as the gate-less policy solves, applied when the gate is off.
  const gateless = fittedPolicy({ gateFraction: 0 }).decide(world(2 * GiB, [heavy(0.5 * GiB)]), undefined);
  assert.deepEqual(gateless.fitted!.lambdas, open.fitted!.lambdas);
  const g0 = gateless.migrations[0]!.throttleBytesPerSec;
  assert.ok(g0 !== null && g0 < 20e6, `gate off: throttled at once (${g0})`);
  // 1 s later, nothing else changed but the overlay: past 0.7 × budget − 15 s of writes the gate closes,
  // which forces a re-solve on what is left of Ω (the memo is 1 s old, well within 15 s).
  const atEdge = 0.7 * budget - 15 * 40e6 + 1e6;
  const closed = policy.decide({ ...world(2 * GiB, [heavy(atEdge)]), nowSec: 1 }, open);
  assert.equal(closed.fitted!.gateOpen, false);
  assert.equal(closed.fitted!.solvedAtSec, 1, 'the gate closing forces a new solve');
  const g1 = closed.migrations[0]!.throttleBytesPerSec;
  assert.ok(g1 !== null && g1 >= 10_000 && g1 < g0, `in force, and harsher than at 0.5 GiB: ${g1} vs ${g0}`);
  // Just under the edge it is still open.
  const under = policy.decide({ ...world(2 * GiB, [heavy(atEdge - 2e6)]), nowSec: 1 }, open);
  assert.equal(under.migrations[0]!.throttleBytesPerSec, null);
  // A look-ahead the guests fill within seconds (256 MiB, two at 20 MiB/s) never opens it.
  const small = fittedPolicy().decide(world(256 * MiB, [view('x', { writeBytesPerSecDemand: 20 * MiB, overlayBytes: 16 * MiB }), view('y', { writeBytesPerSecDemand: 20 * MiB, overlayBytes: 16 * MiB })]), undefined);
  assert.ok(small.migrations.every((m) => m.throttleBytesPerSec !== null), 'Ω would pass 70 % within 15 s: the plan applies at once');
  assert.throws(() => fittedPolicy({ gateFraction: 1.5 }), /gateFraction: must be from 0 to 1/);
  assert.throws(() => fittedPolicy({ gateHorizonSec: -1 }), /gateHorizonSec: must be ≥ 0/);
});

test('property: Π sums to Ω, no bin below its data, quotas cover the data, γ within [γ_SLA, demand)', () => {
  const mig = fc.record({
    overlayMiB: fc.integer({ min: 0, max: 2000 }),
    demandMBps: fc.double({ min: 0, max: 80, noNaN: true }),
    baseGiB: fc.double({ min: 0, max: 50, noNaN: true }),
    phase: fc.constantFrom('base', 'mirror', 'ram'),
  });
  fc.assert(
    fc.property(fc.integer({ min: 256, max: 16384 }), fc.array(mig, { minLength: 1, maxLength: 8 }), fc.integer({ min: 10, max: 2000 }), (omegaMiB, ms, linkMBps) => {
      const used = ms.reduce((a, m) => a + m.overlayMiB, 0);
      fc.pre(used <= omegaMiB);
      const w = world(
        omegaMiB * MiB,
        ms.map((m, i) =>
          view(`m${i}`, {
            phase: m.phase as MigrationView['phase'],
            overlayBytes: m.overlayMiB * MiB,
            writeBytesPerSecDemand: m.demandMBps * 1e6,
            baseBytesLeft: m.phase === 'base' ? m.baseGiB * GiB : 0,
            mirrorBytesLeft: m.phase === 'ram' ? 0 : m.overlayMiB * MiB,
            ramPendingBytes: 2 * GiB,
          }),
        ),
        linkMBps * 1e6,
      );
      const d: Decision = fittedPolicy().decide(w, undefined);
      const total = d.migrations.reduce((a, m) => a + m.partitionBytes!, 0);
      assert.ok(total <= w.omegaBytes * (1 + 1e-9), `Σ Π ${total}`);
      d.migrations.forEach((md, i) => {
        const m = w.migrations[i]!;
        assert.ok(md.partitionBytes! >= m.overlayBytes - 1e-6);
        assert.ok(md.quotaBytes >= m.overlayBytes);
        if (md.throttleBytesPerSec !== null) {
          assert.ok(md.throttleBytesPerSec >= w.slaBytesPerSec - 1e-9);
          assert.ok(md.throttleBytesPerSec < m.writeBytesPerSecDemand);
        }
      });
    }),
    { numRuns: 120 },
  );
});

test('proportionalSizes: Σ = Ω when the floors fit, each ≥ its floor, proportional among the unfloored', () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.double({ min: 0, max: 1e9, noNaN: true }), fc.double({ min: 0, max: 1e8, noNaN: true })), { minLength: 1, maxLength: 10 }), (pairs) => {
      const need = pairs.map((p) => p[0]);
      const floor = pairs.map((p) => p[1]);
      const omega = 1e9;
      const sizes = proportionalSizes(omega, need, floor);
      const floorSum = floor.reduce((a, b) => a + b, 0);
      sizes.forEach((s, i) => assert.ok(s >= floor[i]! - 1e-6));
      if (floorSum <= omega) assert.ok(Math.abs(sizes.reduce((a, b) => a + b, 0) - omega) < 1e-3);
    }),
  );
});

test('link sharing: water filling is max-min fair, weighted, work-conserving', () => {
  const out = new Float64Array(3);
  waterFill(100, [10, Infinity, Infinity], [1, 1, 1], out);
  assert.deepEqual(Array.from(out), [10, 45, 45]);
  waterFill(100, [Infinity, Infinity, 5], [3, 1, 1], out);
  assert.deepEqual(Array.from(out), [71.25, 23.75, 5]);
  waterFill(100, [Infinity, 20], [1000, 1], out);
  assert.ok(out[0]! > 99.8 && Math.abs(out[0]! + out[1]! - 100) < 1e-9);
  waterFill(100, [30, 20], [1, 1], out);
  assert.deepEqual(Array.from(out).slice(0, 2), [30, 20]);
  assert.equal(fairShareOfFirst(100, 80, Infinity), 50);
  assert.equal(fairShareOfFirst(100, 80, 30), 70);
  assert.equal(fairShareOfFirst(100, 20, Infinity), 20);
});

/** The governor's case: two identical guests in `base` sharing a small Ω. */
function twins(noise: (k: number) => number = () => 0): WorldState {
  const ms = ['vm-a', 'vm-b'].map((id, k) =>
    view(id, {
      overlayBytes: 14 * MiB * (1 + noise(2 * k)),
      mirrorBytesLeft: 14 * MiB * (1 + noise(2 * k)),
      writeBytesPerSecDemand: 6.27 * MiB * (1 + noise(2 * k + 1)),
      baseBytesLeft: 500 * MiB,
    }),
  );
  return world(75 * MiB, ms, 32 * MiB);
}

test('fitted is max-min fair between identical migrations: equal throttles, stable across re-solves with tiny input noise', () => {
  const policy = fittedPolicy();
  const d0 = policy.decide(twins(), undefined);
  const [a, b] = d0.migrations.map((m) => m.throttleBytesPerSec);
  assert.ok(a !== null && b !== null, `both must be throttled (Ω is far too small): ${a}, ${b}`);
  assert.ok(Math.abs(a - b) <= 0.01 * Math.max(a, b), `identical needs, unequal throttles: ${a} vs ${b}`);
  assert.ok(a > 10_000, 'the fair share is above γ_SLA: neither is starved');
  // Re-solves every call (the demands move by ≤ 0.1 %), each fed the previous decision.
  let seed = 7;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  let previous: Decision = d0;
  for (let k = 1; k <= 60; k++) {
    const noise = [0, 1, 2, 3].map(() => (rnd() - 0.5) * 2e-3);
    const d = policy.decide({ ...twins((j) => noise[j]!), nowSec: k * 0.1 }, previous);
    assert.equal(d.fitted!.solvedAtSec, k * 0.1, 'a demand change forces a re-solve');
    const [ga, gb] = d.migrations.map((m) => m.throttleBytesPerSec);
    assert.ok(ga !== null && gb !== null && Math.abs(ga - gb) <= 0.01 * Math.max(ga, gb), `solve ${k}: ${ga} vs ${gb}`);
    assert.ok(Math.abs(ga - a) <= 0.02 * a, `solve ${k}: throttle moved from ${a} to ${ga} on 0.1 % noise`);
    previous = d;
  }
});

test('property: permuting the migrations permutes fitted’s decision', () => {
  const arbView = fc.record({
    phase: fc.constantFrom<'base' | 'mirror'>('base', 'mirror'),
    overlayMiB: fc.integer({ min: 0, max: 2000 }),
    demandMBps: fc.double({ min: 0, max: 60, noNaN: true }),
    baseGiB: fc.double({ min: 0.1, max: 40, noNaN: true }),
    copies: fc.integer({ min: 1, max: 3 }),
  });
  fc.assert(
    fc.property(fc.array(arbView, { minLength: 1, maxLength: 4 }), fc.double({ min: 0.25, max: 16, noNaN: true }), fc.integer({ min: 0, max: 1000 }), (specs, omegaGiB, shuffleSeed) => {
      const ms: MigrationView[] = [];
      for (const [k, s] of specs.entries()) {
        for (let c = 0; c < s.copies; c++) {
          ms.push(
            view(`vm${k}-${c}`, {
              phase: s.phase,
              overlayBytes: s.overlayMiB * MiB,
              writeBytesPerSecDemand: s.demandMBps * 1e6,
              baseBytesLeft: s.phase === 'base' ? s.baseGiB * GiB : 0,
              mirrorBytesLeft: s.phase === 'base' ? s.overlayMiB * MiB : s.overlayMiB * MiB * 0.5,
            }),
          );
        }
      }
      const omega = Math.max(omegaGiB * GiB, ms.reduce((a, m) => a + m.overlayBytes, 0) * 1.1 + MiB);
      const perm = ms.map((_, i) => i);
      let r = shuffleSeed + 1;
      for (let i = perm.length - 1; i > 0; i--) {
        r = (r * 48271) % 2147483647;
        const j = r % (i + 1);
        [perm[i], perm[j]] = [perm[j]!, perm[i]!];
      }
      const d1 = fittedPolicy().decide(world(omega, ms), undefined);
      const d2 = fittedPolicy().decide(world(omega, perm.map((i) => ms[i]!)), undefined);
      const close = (x: number | null, y: number | null): boolean => (x === null || y === null ? x === y : Math.abs(x - y) <= 1e-3 * Math.max(Math.abs(x), Math.abs(y)) + 1e-6);
      for (const [j, i] of perm.entries()) {
        const p = d1.migrations[i]!;
        const q = d2.migrations[j]!;
        assert.equal(q.id, p.id);
        for (const key of ['throttleBytesPerSec', 'partitionBytes', 'quotaBytes', 'linkShareBytesPerSec'] as const) {
          assert.ok(close(p[key], q[key]), `${p.id} ${key}: ${p[key]} vs ${q[key]} (perm ${perm.join(',')})`);
        }
      }
    }),
    { numRuns: 150, seed: 4242 },
  );
});
