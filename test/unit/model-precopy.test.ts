import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { constantRateCurve, throttleRunFactor, uniformHotSetCurve } from '../../src/model/dirty-curve';
import { PAGE_HEADER_BYTES, predictPrecopy, PrecopyInput, QEMU_DEFAULTS, ZERO_PAGE_WIRE_BYTES } from '../../src/model/precopy';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const PAGE_WIRE = 4096 + PAGE_HEADER_BYTES;

const close = (actual: number, expected: number, rel: number, msg?: string): void => {
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${msg ?? ''} ${actual} not within ${rel} of ${expected}`);
};

test('no dirtying: one pass; time = (non-zero pages × 4104 + zero pages × 9) / bandwidth', () => {
  const p = predictPrecopy({ ramBytes: GiB, zeroPageFraction: 0.25, bandwidthBytesPerSec: 1e8, downtimeLimitMs: 300, dirty: uniformHotSetCurve(0, 1) });
  const pages = GiB / 4096;
  const wire = (pages * 0.75 * PAGE_WIRE + pages * 0.25 * ZERO_PAGE_WIRE_BYTES);
  assert.equal(ZERO_PAGE_WIRE_BYTES, 9);
  assert.equal(p.converges, true);
  assert.equal(p.iterations, 1);
  assert.equal(p.bytesSent, wire);
  close(p.totalSec, wire / 1e8, 1e-12);
  assert.equal(p.downtimeMs, 0);
  assert.equal(p.finalThrottlePct, 0);
  assert.equal(p.toConverge, undefined);
});

test('the wire rate is min(link, max-bandwidth), QEMU default 128 MiB/s', () => {
  const base = { ramBytes: GiB, zeroPageFraction: 0, downtimeLimitMs: 300, dirty: uniformHotSetCurve(0, 1) };
  const capped = predictPrecopy({ ...base, bandwidthBytesPerSec: 1.25e9 });
  assert.equal(capped.wireBytesPerSec, QEMU_DEFAULTS.maxBandwidthBytesPerSec);
  assert.equal(QEMU_DEFAULTS.maxBandwidthBytesPerSec, 128 * MiB);
  const uncapped = predictPrecopy({ ...base, bandwidthBytesPerSec: 1.25e9, maxBandwidthBytesPerSec: Infinity });
  assert.equal(uncapped.wireBytesPerSec, 1.25e9);
  close(capped.totalSec / uncapped.totalSec, 1.25e9 / (128 * MiB), 1e-12);
});

/**
 * Constant rate R pages/s, no hot set, bandwidth b, no throttling: pass k lasts T_k = ρ^(k−1)·T₁
 * with ρ = R·4104/b, leaves R·T_k·4096 bytes pending, and the stop-and-copy lasts ρ^k·T₁; so the
 * first k with R·T_k·4096 < b·downtime is the switchover and the total is T₁(1 − ρ^(k+1))/(1 − ρ).
 */
function geometric(R: number, b: number, ramBytes: number, downtimeMs: number): { k: number; totalSec: number; downtimeMs: number } {
  const T1 = ((ramBytes / 4096) * PAGE_WIRE) / b;
  const rho = (R * PAGE_WIRE) / b;
  const x = (b * (downtimeMs / 1000)) / (4096 * R * T1);
  const k = Math.floor(Math.log(x) / Math.log(rho)) + 2;
  return { k, totalSec: (T1 * (1 - rho ** (k + 1))) / (1 - rho), downtimeMs: rho ** k * T1 * 1000 };
}

test('constant dirty rate: geometric passes, hand-computed case (1 GiB, 12 000 pages/s, 100 MB/s)', () => {
  const p = predictPrecopy({
    ramBytes: GiB,
    zeroPageFraction: 0,
    bandwidthBytesPerSec: 1e8,
    downtimeLimitMs: 300,
    dirty: constantRateCurve(12000),
    autoConverge: false,
  });
  // ρ = 12000·4104/1e8 = 0.49248, T₁ = 262144·4104/1e8 = 10.7584 s, pending after pass k =
  // 5.288e8·ρ^(k−1) bytes: pass 5 leaves 3.11e7 ≥ 3e7, pass 6 leaves 1.53e7 < 3e7.
  assert.equal(p.iterations, 6);
  const g = geometric(12000, 1e8, GiB, 300);
  assert.equal(g.k, 6);
  close(p.totalSec, g.totalSec, 1e-9);
  close(p.downtimeMs, g.downtimeMs, 1e-9);
  close(p.perIteration[1]!.durationSec / p.perIteration[0]!.durationSec, 0.49248, 1e-9);
});

test('constant dirty rate: closed form holds across rates, links and limits (property)', () => {
  fc.assert(
    fc.property(
      fc.double({ min: 1e7, max: 1e10, noNaN: true }),
      fc.double({ min: 0.01, max: 0.9, noNaN: true }),
      fc.integer({ min: 64, max: 65536 }),
      fc.integer({ min: 10, max: 2000 }),
      (b, rho, ramMib, downtimeMs) => {
        const R = (rho * b) / PAGE_WIRE;
        const g = geometric(R, b, ramMib * MiB, downtimeMs);
        fc.pre(g.k >= 2); // first pass always sends everything, whatever the threshold
        // Skip draws within rounding of a pass boundary.
        const x = (b * (downtimeMs / 1000)) / (4096 * R * (((ramMib * MiB) / 4096) * PAGE_WIRE) / b);
        const frac = Math.log(x) / Math.log(rho);
        fc.pre(Math.abs(frac - Math.round(frac)) > 1e-6);
        const p = predictPrecopy({ ramBytes: ramMib * MiB, zeroPageFraction: 0, bandwidthBytesPerSec: b, maxBandwidthBytesPerSec: Infinity, downtimeLimitMs: downtimeMs, dirty: constantRateCurve(R), autoConverge: false });
        assert.equal(p.converges, true);
        assert.equal(p.iterations, g.k);
        close(p.totalSec, g.totalSec, 1e-9);
        close(p.downtimeMs, g.downtimeMs, 1e-6);
        assert.ok(p.downtimeMs < downtimeMs * (PAGE_WIRE / 4096) + 1e-9);
      },
    ),
    { numRuns: 300 },
  );
});

test('dirty rate above the link: no convergence without auto-converge; with it, QEMU throttle steps to 60%', () => {
  // 30 000 pages/s dirty 1.2288e8 B/s over a 1e8 B/s link. The trigger fires while the bytes
  // dirtied per period exceed half those sent: (1 − p)·30000·4096/1e8 > 0.5 ⇔ p < 59.3 %.
  const input: PrecopyInput = { ramBytes: GiB, zeroPageFraction: 0, bandwidthBytesPerSec: 1e8, maxBandwidthBytesPerSec: Infinity, downtimeLimitMs: 300, dirty: constantRateCurve(30000) };
  const off = predictPrecopy({ ...input, autoConverge: false });
  assert.equal(off.converges, false);
  assert.match(off.reason, /without auto-converge/);
  assert.ok(Number.isNaN(off.downtimeMs));
  // Pass 1 lasts 10.76 s, long enough to dirty all 262 144 pages: pass 2 would be no smaller than
  // pass 1, and with the throttle fixed the passes never shrink again, so it stops after pass 1.
  assert.equal(off.iterations, 1);

  const on = predictPrecopy(input);
  assert.equal(on.converges, true);
  // Two high periods per step (dirty_rate_high_cnt ≥ 2, then reset), each pass here > 1 s:
  const throttles = on.perIteration.map((it) => it.throttlePct);
  assert.deepEqual(throttles.slice(0, 11), [0, 0, 20, 20, 30, 30, 40, 40, 50, 50, 60]);
  assert.equal(on.finalThrottlePct, 60);
  assert.ok(throttles.every((t) => t <= 60));
  assert.ok(on.downtimeMs <= 300 * (PAGE_WIRE / 4096));
});

test('auto-converge parameters change the throttle path as QEMU applies them', () => {
  const input: PrecopyInput = { ramBytes: GiB, zeroPageFraction: 0, bandwidthBytesPerSec: 1e8, maxBandwidthBytesPerSec: Infinity, downtimeLimitMs: 300, dirty: constantRateCurve(30000) };
  // Incus' settings: initial 50 %, trigger at 20 % → every period is "high" while
  // (1 − p)·1.2288 > 0.2 ⇔ p < 83.7 %, but at 70 % the passes shrink by ρ = 0.3·1.2312 = 0.369
  // and pass 8 leaves 13.5 MB < 30 MB. Pass 7 lasts 0.99 s, so it is pooled with pass 8 into one
  // period: a single high count after the step to 70 %, no step to 80 %.
  const incus = predictPrecopy({ ...input, cpuThrottleInitialPct: 50, throttleTriggerThresholdPct: 20 });
  assert.deepEqual(incus.perIteration.map((i) => i.throttlePct), [0, 0, 50, 50, 60, 60, 70, 70]);
  assert.equal(incus.finalThrottlePct, 70);
  // max-cpu-throttle caps it: at 15 % the guest still dirties 0.85·1.2312 = 1.05× what the link
  // sends per pass, so the passes stop shrinking at the maximum.
  const capped = predictPrecopy({ ...input, cpuThrottleInitialPct: 10, cpuThrottleIncrementPct: 5, maxCpuThrottlePct: 15 });
  assert.equal(capped.converges, false);
  assert.deepEqual(capped.perIteration.map((i) => i.throttlePct), [0, 0, 10, 10, 15]);
  assert.equal(capped.finalThrottlePct, 15);
  assert.match(capped.reason, /maximum CPU throttle 15%/);
});

test('a guest dirtying faster than the link even at 99 % throttle converges only if its hot set fits the threshold', () => {
  // 500 000 pages/s at 99 % is 5000 pages/s = 20.5 MB/s over a 10 MB/s link: the passes grow
  // towards the hot set. A 1 GiB hot set stays far above the 3 MB threshold; a 2 MiB one fits.
  const base = { ramBytes: 4 * GiB, zeroPageFraction: 0.5, bandwidthBytesPerSec: 1e7, downtimeLimitMs: 300 };
  const big = predictPrecopy({ ...base, dirty: uniformHotSetCurve(500_000, 262_144) });
  assert.equal(big.converges, false);
  assert.equal(big.finalThrottlePct, 99);
  assert.match(big.reason, /maximum CPU throttle 99%/);
  assert.equal(big.toConverge?.throttlePct, undefined, 'no throttle suffices');
  assert.ok(big.toConverge?.downtimeLimitMs !== undefined && big.toConverge.downtimeLimitMs > 60_000);
  const small = predictPrecopy({ ...base, dirty: uniformHotSetCurve(500_000, 512) });
  assert.equal(small.converges, true);
  assert.ok(small.downtimeMs <= 300 * (PAGE_WIRE / 4096));
});

function inputArb(): fc.Arbitrary<PrecopyInput> {
  return fc.record({
    ramBytes: fc.integer({ min: 16, max: 8192 }).map((m) => m * MiB),
    zeroPageFraction: fc.double({ min: 0, max: 1, noNaN: true }),
    bandwidthBytesPerSec: fc.double({ min: 1e6, max: 2e9, noNaN: true }),
    maxBandwidthBytesPerSec: fc.constantFrom(Infinity, 128 * MiB),
    downtimeLimitMs: fc.integer({ min: 10, max: 5000 }),
    dirty: fc.tuple(fc.double({ min: 0, max: 5e5, noNaN: true }), fc.integer({ min: 1, max: 2 ** 21 })).map(([R, H]) => uniformHotSetCurve(R, H)),
    autoConverge: fc.boolean(),
  });
}

test('more bandwidth never increases the total time of a converging migration (property)', () => {
  fc.assert(
    fc.property(inputArb(), fc.double({ min: 1, max: 10, noNaN: true }), (input, factor) => {
      const slow = predictPrecopy({ ...input, autoConverge: false });
      const fast = predictPrecopy({ ...input, autoConverge: false, bandwidthBytesPerSec: input.bandwidthBytesPerSec * factor });
      if (slow.converges) {
        assert.equal(fast.converges, true);
        assert.ok(fast.totalSec <= slow.totalSec * (1 + 1e-12), `${fast.totalSec} > ${slow.totalSec}`);
        assert.ok(fast.iterations <= slow.iterations);
      }
    }),
    { numRuns: 300 },
  );
});

test('a larger downtime limit never increases the passes, with or without auto-converge (property)', () => {
  fc.assert(
    fc.property(inputArb(), fc.integer({ min: 1, max: 5000 }), (input, extraMs) => {
      const a = predictPrecopy(input);
      const b = predictPrecopy({ ...input, downtimeLimitMs: input.downtimeLimitMs + extraMs });
      if (a.converges) {
        assert.equal(b.converges, true);
        assert.ok(b.iterations <= a.iterations, `${b.iterations} > ${a.iterations}`);
      }
    }),
    { numRuns: 300 },
  );
});

/** Inputs that mostly do not converge: dirtying 1–20× the link over a large hot set. */
function hardInputArb(): fc.Arbitrary<PrecopyInput> {
  return fc
    .record({
      ramMib: fc.integer({ min: 64, max: 8192 }),
      b: fc.double({ min: 1e6, max: 1e9, noNaN: true }),
      ratio: fc.double({ min: 1.05, max: 20, noNaN: true }),
      hotShare: fc.double({ min: 0.05, max: 1, noNaN: true }),
      autoConverge: fc.boolean(),
      maxCpuThrottlePct: fc.integer({ min: 20, max: 99 }),
      downtimeLimitMs: fc.integer({ min: 10, max: 2000 }),
    })
    .map(({ ramMib, b, ratio, hotShare, autoConverge, maxCpuThrottlePct, downtimeLimitMs }) => ({
      ramBytes: ramMib * MiB,
      zeroPageFraction: 0,
      bandwidthBytesPerSec: b,
      maxBandwidthBytesPerSec: Infinity,
      downtimeLimitMs,
      dirty: uniformHotSetCurve((ratio * b) / 4096, Math.max(1, Math.round(((ramMib * MiB) / 4096) * hotShare))),
      autoConverge,
      maxCpuThrottlePct,
    }));
}

test('toConverge: each suggested change, applied alone, makes the prediction converge (property)', () => {
  let nonConverging = 0;
  fc.assert(
    fc.property(fc.oneof(inputArb(), hardInputArb()), (input) => {
      const p = predictPrecopy(input);
      if (p.converges) return;
      nonConverging++;
      const t = p.toConverge!;
      assert.ok(t, 'toConverge present');
      if (t.bandwidthBytesPerSec !== undefined) {
        assert.ok(t.bandwidthBytesPerSec > p.wireBytesPerSec);
        assert.equal(predictPrecopy({ ...input, bandwidthBytesPerSec: t.bandwidthBytesPerSec, maxBandwidthBytesPerSec: Infinity }).converges, true);
      }
      if (t.downtimeLimitMs !== undefined) {
        assert.ok(t.downtimeLimitMs > input.downtimeLimitMs);
        assert.equal(predictPrecopy({ ...input, downtimeLimitMs: t.downtimeLimitMs }).converges, true);
        // Minimal up to the 1 ms bisection step.
        if (t.downtimeLimitMs - 2 > input.downtimeLimitMs) assert.equal(predictPrecopy({ ...input, downtimeLimitMs: t.downtimeLimitMs - 2 }).converges, false);
      }
      if (t.throttlePct !== undefined) {
        assert.equal(predictPrecopy({ ...input, autoConverge: false, fixedThrottlePct: t.throttlePct }).converges, true);
        if (t.throttlePct > 1) assert.equal(predictPrecopy({ ...input, autoConverge: false, fixedThrottlePct: t.throttlePct - 1 }).converges, false);
      }
      // A downtime limit that covers all of RAM always converges, so that field is never absent.
      assert.ok(t.downtimeLimitMs !== undefined);
    }),
    { numRuns: 200 },
  );
  assert.ok(nonConverging > 50, `only ${nonConverging} non-converging draws: the property was barely exercised`);
});

test('resuming from the middle of a pre-copy predicts the same remaining passes', () => {
  const input: PrecopyInput = { ramBytes: 2 * GiB, zeroPageFraction: 0.3, bandwidthBytesPerSec: 1e8, downtimeLimitMs: 300, dirty: uniformHotSetCurve(15000, 300_000), autoConverge: false };
  const fresh = predictPrecopy(input);
  assert.ok(fresh.converges && fresh.iterations >= 4);
  const j = 3; // resume at the start of pass 3: pending = pages dirtied during pass 2
  const pendingBytes = Math.ceil(fresh.perIteration[j - 2]!.dirtiedPages) * 4096;
  const resumed = predictPrecopy({ ...input, pendingBytes: fresh.perIteration[j - 2]!.dirtiedPages * 4096 });
  assert.ok(pendingBytes > 0);
  assert.equal(resumed.iterations, fresh.iterations - (j - 1));
  const elapsed = fresh.perIteration.slice(0, j - 1).reduce((s, it) => s + it.durationSec, 0);
  close(resumed.totalSec, fresh.totalSec - elapsed, 1e-3);
});

test('bad input is rejected with the field and its range named', () => {
  const ok: PrecopyInput = { ramBytes: GiB, zeroPageFraction: 0, bandwidthBytesPerSec: 1e8, downtimeLimitMs: 300, dirty: constantRateCurve(1) };
  assert.throws(() => predictPrecopy({ ...ok, ramBytes: 0 }), /ramBytes: must be a number > 0/);
  assert.throws(() => predictPrecopy({ ...ok, zeroPageFraction: 1.5 }), /zeroPageFraction: must be a number ≥ 0 and ≤ 1/);
  assert.throws(() => predictPrecopy({ ...ok, bandwidthBytesPerSec: 0 }), RangeError);
  assert.throws(() => predictPrecopy({ ...ok, downtimeLimitMs: -1 }), /downtimeLimitMs/);
  assert.throws(() => predictPrecopy({ ...ok, pageBytes: 3000 }), /pageBytes: must be a power of two/);
  assert.throws(() => predictPrecopy({ ...ok, maxCpuThrottlePct: 100 }), /maxCpuThrottlePct: must be a number ≥ 1 and ≤ 99/);
  assert.throws(() => predictPrecopy({ ...ok, maxIterations: 1.5 }), /maxIterations: must be an integer/);
  assert.throws(() => predictPrecopy({ ...ok, pendingBytes: 2 * GiB }), /pendingBytes/);
  assert.throws(() => predictPrecopy({ ...ok, bandwidthBytesPerSec: Number('x') }), TypeError);
  assert.throws(() => predictPrecopy({ ...ok, dirty: {} as never }), /dirty: must be a DirtyCurve/);
});

test('cost: ~tens of µs per prediction; explain: false skips the ~100-simulation toConverge search', (t) => {
  const converging: PrecopyInput = { ramBytes: 16 * GiB, zeroPageFraction: 0.5, bandwidthBytesPerSec: 1.25e8, downtimeLimitMs: 300, dirty: uniformHotSetCurve(40000, 4e6) };
  const stuck: PrecopyInput = { ramBytes: 4 * GiB, zeroPageFraction: 0, bandwidthBytesPerSec: 1e7, downtimeLimitMs: 300, dirty: uniformHotSetCurve(500_000, 262_144) };
  const perCallUs = (input: PrecopyInput, n: number): number => {
    for (let i = 0; i < 20; i++) predictPrecopy(input);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) predictPrecopy(input);
    return Number(process.hrtime.bigint() - t0) / 1e3 / n;
  };
  const a = perCallUs(converging, 500);
  const b = perCallUs(stuck, 50);
  const c = perCallUs({ ...stuck, explain: false }, 500);
  t.diagnostic(`converging 16 GiB guest (${predictPrecopy(converging).iterations} passes): ${a.toFixed(1)} µs/call`);
  t.diagnostic(`non-converging with toConverge: ${b.toFixed(0)} µs/call; explain: false: ${c.toFixed(1)} µs/call`);
  assert.equal(predictPrecopy({ ...stuck, explain: false }).toConverge, undefined);
  assert.ok(b > 10 * c, `explain costs ${b} µs vs ${c} µs without`);
});

test('throttleRunFactor: 1 − p for a CPU-bound guest; a paced guest loses only what its CPU share or its catch-up cannot cover', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 99 }), (p) => {
      close(throttleRunFactor(p), 1 - p / 100, 1e-12);
      close(throttleRunFactor(p, { vcpuBusyFraction: 1 }), 1 - p / 100, 1e-12);
    }),
  );
  // Busy 10 % with no catch-up limit: nothing lost while the run share 1 − p is ≥ 0.1.
  assert.equal(throttleRunFactor(90, { vcpuBusyFraction: 0.1 }), 1);
  close(throttleRunFactor(95, { vcpuBusyFraction: 0.1 }), 0.5, 1e-12);
  close(throttleRunFactor(60, { vcpuBusyFraction: 0.5 }), 0.8, 1e-12);
  // The lab guest (busy 10 %, makes up ≤ 50 ms): at 80 % each vCPU sleeps 40 ms per 50 ms cycle,
  // all made up; at 90 % it sleeps 90 ms per 100 ms, 50 ms made up + 10 ms run = 0.6; at 99 %
  // 990 ms per 1 s, 0.06.
  const lab = { vcpuBusyFraction: 0.1, catchUpSec: 0.05 };
  assert.equal(throttleRunFactor(80, lab), 1);
  close(throttleRunFactor(90, lab), 0.6, 1e-9);
  close(throttleRunFactor(99, lab), 0.06, 1e-9);
  // Never more than the guest wants, never less than the CPU-bound 1 − p (property).
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 99 }), fc.double({ min: 0.01, max: 1, noNaN: true }), fc.double({ min: 0, max: 2, noNaN: true }), (p, b, c) => {
      const f = throttleRunFactor(p, { vcpuBusyFraction: b, catchUpSec: c });
      assert.ok(f <= 1 && f >= 1 - p / 100 - 1e-12, `${p} ${b} ${c}: ${f}`);
    }),
  );
  assert.throws(() => throttleRunFactor(100), /throttlePct/);
  assert.throws(() => throttleRunFactor(50, { vcpuBusyFraction: 0 }), /vcpuBusyFraction: must be a number > 0 and ≤ 1/);
  assert.throws(() => throttleRunFactor(50, { catchUpSec: -1 }), /catchUpSec/);
});

test('vcpuBusyFraction: 1 (explicit) is the default; a paced lab guest needs QEMU to throttle to 90 %, not 20 %', () => {
  fc.assert(
    fc.property(fc.integer({ min: 100, max: 60000 }), fc.integer({ min: 512, max: 200000 }), fc.integer({ min: 5, max: 200 }), (R, H, mbps) => {
      const input: PrecopyInput = { ramBytes: GiB, zeroPageFraction: 0.2, bandwidthBytesPerSec: mbps * MiB, downtimeLimitMs: 300, dirty: uniformHotSetCurve(R, H), explain: false };
      assert.deepEqual(predictPrecopy({ ...input, vcpuBusyFraction: 1 }), predictPrecopy(input));
    }),
    { numRuns: 40 },
  );
  // The lab's case (docs/BENCHMARKS.md): 128 MiB, 12 000 pages/s over a 16 MiB hot set, 23.3 MB/s.
  const lab: PrecopyInput = { ramBytes: 128 * MiB, zeroPageFraction: 0.25, bandwidthBytesPerSec: 23.3e6, downtimeLimitMs: 300, dirty: uniformHotSetCurve(12000, 4096), absorbPendingRewrites: true };
  const cpuBound = predictPrecopy(lab);
  const paced = predictPrecopy({ ...lab, vcpuBusyFraction: 0.1, throttleCatchUpSec: 0.05 });
  assert.ok(cpuBound.converges && paced.converges);
  // QEMU's loop converges once the pages newly counted per second fall below the pages sent per
  // second (s = 23.3e6 / 4104 = 5677): the guest's rate × (1 − r/H), r = 1423 pages still pending
  // at each sync. CPU-bound, 20 % leaves 9600 × 0.65 = 6270 (it levels off at ~450 pages a sync,
  // above the 284 that switch over), 30 % leaves 8400 × 0.65 = 5485: enough. Paced, nothing
  // changes up to 80 % and 90 % is the first step that cuts the rate (to 0.6 × 12 000).
  assert.equal(cpuBound.finalThrottlePct, 30);
  assert.equal(paced.finalThrottlePct, 90);
  assert.ok(paced.totalSec > 1.5 * cpuBound.totalSec, `${paced.totalSec} vs ${cpuBound.totalSec}`);
  // Up to 80 % the paced guest's passes dirty what unthrottled ones of the same length would.
  const unthrottled = (sec: number): number => uniformHotSetCurve(12000, 4096).pagesInWindow(sec);
  const mid = paced.perIteration.filter((i) => i.throttlePct > 0 && i.throttlePct <= 80);
  assert.ok(mid.length > 5);
  const cpuMid = cpuBound.perIteration.filter((i) => i.throttlePct > 0);
  assert.ok(cpuMid.every((i) => i.dirtiedPages < unthrottled(i.durationSec)), 'a CPU-bound guest slows at once');
  assert.throws(() => predictPrecopy({ ...lab, vcpuBusyFraction: 0 }), /vcpuBusyFraction: must be a number > 0 and ≤ 1/);
  assert.throws(() => predictPrecopy({ ...lab, vcpuBusyFraction: 1.5 }), /vcpuBusyFraction/);
  assert.throws(() => predictPrecopy({ ...lab, throttleCatchUpSec: -0.1 }), /throttleCatchUpSec: must be a number ≥ 0/);
});

test('absorbPendingRewrites: QEMU syncs with a threshold less one call still pending; only those pages absorb rewrites (closed form)', () => {
  // Uniform hot set H at R pages/s, nothing throttled. QEMU syncs once the pending RAM is below
  // the threshold T = bw × 0.3 s (in pages of 4096 B), looking after each ~50 ms call, so
  // L = T − bw × 0.05 / 4104 pages are still pending at every sync. The first sync counts what the
  // guest wrote during the first interval, D1 = H(1 − e^(−R d1/H)), d1 = (N − L) × 4104 / bw, less
  // the L pending pages it wrote to: those are the end of RAM, L × D1/N. Each later interval sends
  // what the previous sync added, and its sync counts D2 less L × D2/H (the pending pages are hot).
  const ramBytes = 256 * MiB;
  const bw = 50 * MiB;
  const H = 8192;
  const N = ramBytes / 4096;
  const T = (bw * 0.3) / 4096;
  const L = T - (bw * 0.05) / PAGE_WIRE;
  const d1 = ((N - L) * PAGE_WIRE) / bw;
  const R = H / d1; // R d1 / H = 1
  const input: PrecopyInput = { ramBytes, zeroPageFraction: 0, bandwidthBytesPerSec: bw, downtimeLimitMs: 300, dirty: uniformHotSetCurve(R, H), autoConverge: false, explain: false };
  const off = predictPrecopy(input);
  const on = predictPrecopy({ ...input, absorbPendingRewrites: true });
  const D1 = H * (1 - Math.exp(-1));
  const new1 = D1 - (L * D1) / N;
  close(on.perIteration[0]!.durationSec, d1, 1e-12);
  close(on.perIteration[0]!.pendingAtSyncPages!, L, 1e-12);
  close(on.perIteration[0]!.dirtiedPages, new1, 1e-12);
  const d2 = (new1 * PAGE_WIRE) / bw;
  const D2 = H * (1 - Math.exp((-R * d2) / H));
  close(on.perIteration[1]!.durationSec, d2, 1e-9);
  close(on.perIteration[1]!.dirtiedPages, D2 - (L * D2) / H, 1e-9);
  // The pass model (off) counts every page written during a whole pass.
  close(off.perIteration[0]!.dirtiedPages, H * (1 - Math.exp((-R * ((N * PAGE_WIRE) / bw)) / H)), 1e-12);
  assert.equal(off.perIteration[0]!.pendingAtSyncPages, undefined);
  // Bookkeeping: the intervals add up to the time before the stop-and-copy, the bytes to what was sent.
  for (const p of [on, off]) {
    assert.ok(p.converges);
    close(p.perIteration.reduce((a, i) => a + i.durationSec, 0) + p.downtimeMs / 1000, p.totalSec, 1e-9);
  }
  const stopCopy = (on.downtimeMs / 1000) * bw;
  close(on.perIteration.reduce((a, i) => a + i.sendBytes, 0) + stopCopy, on.bytesSent, 1e-9);
  assert.ok(on.pendingBytes < on.thresholdBytes);
  // Properties: a sync never counts more than the guest wrote since the last one, leaves at most
  // the threshold pending, and the pages it counts are never more than the pass model's.
  fc.assert(
    fc.property(fc.integer({ min: 100, max: 40000 }), fc.integer({ min: 256, max: 100000 }), fc.integer({ min: 5, max: 100 }), fc.boolean(), (r, h, mbps, ac) => {
      const i: PrecopyInput = { ramBytes: 512 * MiB, zeroPageFraction: 0.1, bandwidthBytesPerSec: mbps * MiB, downtimeLimitMs: 300, dirty: uniformHotSetCurve(r, h), autoConverge: ac, explain: false, maxIterations: 300 };
      const b = predictPrecopy({ ...i, absorbPendingRewrites: true });
      const thresholdPages = b.thresholdBytes / 4096;
      let before = 0;
      for (const it of b.perIteration) {
        // Right after a raise the timer's current cycle still runs at the old percentage.
        const written = Math.min(uniformHotSetCurve(r * throttleRunFactor(Math.min(before, it.throttlePct)), h).pagesInWindow(it.durationSec), (512 * MiB) / 4096);
        before = it.throttlePct;
        assert.ok(it.dirtiedPages <= written * (1 + 1e-9) + 1e-9, `${it.dirtiedPages} > ${written}`);
        assert.ok(it.pendingAtSyncPages! <= thresholdPages * (1 + 1e-12));
        assert.equal(it.syncWaitSec, 0);
      }
      if (b.converges) assert.ok(b.pendingBytes < b.thresholdBytes);
    }),
    { numRuns: 60 },
  );
  assert.throws(() => predictPrecopy({ ...input, absorbPendingRewrites: 'yes' as unknown as boolean }), /absorbPendingRewrites: must be a boolean/);
});

test('syncWaitsForThrottledVcpu (TCG): a sync under a throttle of p completes at a vCPU wake-up; the socket keeps sending meanwhile', () => {
  // Throttle fixed at 99 %: the vCPU sleeps 0.99 s and runs 0.01 s in every second, wake-ups at
  // whole seconds. A hot set that refills the threshold each second keeps QEMU syncing.
  const base: PrecopyInput = {
    ramBytes: 128 * MiB,
    zeroPageFraction: 0.25,
    bandwidthBytesPerSec: 12e6,
    downtimeLimitMs: 300,
    dirty: uniformHotSetCurve(12000, 4096),
    vcpuBusyFraction: 0.1,
    throttleCatchUpSec: 0.05,
    absorbPendingRewrites: true,
    autoConverge: false,
    fixedThrottlePct: 99,
    explain: false,
  };
  const kvm = predictPrecopy(base);
  const tcg = predictPrecopy({ ...base, syncWaitsForThrottledVcpu: true });
  assert.ok(kvm.perIteration.every((i) => i.syncWaitSec === 0));
  let t = 0;
  let waited = 0;
  for (const [k, it] of tcg.perIteration.entries()) {
    t += it.durationSec;
    // After each sync (and its wait) the time is a wake-up or inside the 10 ms run slice after one.
    const into = t - Math.floor(t + 1e-9);
    assert.ok(into <= 0.01 + 1e-9 || into >= 1 - 1e-9, `sync ${k + 1} ends ${into} s into a cycle`);
    assert.ok(it.syncWaitSec! >= 0 && it.syncWaitSec! < 0.99 + 1e-9);
    if (it.syncWaitSec! > 0) {
      waited++;
      // The link drained the socket meanwhile; QEMU refills it at once in the next interval.
      const next = tcg.perIteration[k + 1];
      if (next) assert.ok(next.sendBytes >= Math.min(12e6 * it.syncWaitSec!, 4 * MiB) - 1e-6 || next.pendingAtSyncPages === 0, `${next.sendBytes}`);
    }
  }
  assert.ok(waited > 0);
  assert.ok(tcg.totalSec > kvm.totalSec);
  // With no socket buffer nothing moves during a wait: never faster.
  const noBuffer = predictPrecopy({ ...base, syncWaitsForThrottledVcpu: true, socketBufferBytes: 0 });
  assert.ok(!noBuffer.converges || noBuffer.totalSec >= tcg.totalSec - 1e-9);
  assert.throws(() => predictPrecopy({ ...base, syncWaitsForThrottledVcpu: 1 as unknown as boolean }), /syncWaitsForThrottledVcpu: must be a boolean/);
  assert.throws(() => predictPrecopy({ ...base, socketBufferBytes: -1 }), /socketBufferBytes: must be a number ≥ 0/);
});
