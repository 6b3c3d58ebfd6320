import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { constantRateCurve, measuredCurve, sumCurve, throttledPages, uniformHotSetCurve } from '../../src/model/dirty-curve';

const close = (actual: number, expected: number, rel: number, msg?: string): void => {
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${msg ?? ''} ${actual} not within ${rel * 100}% of ${expected}`);
};

test('uniformHotSetCurve: slope R as τ → 0, saturates at H as τ → ∞, H(1−e^(−Rτ/H)) in between', () => {
  const c = uniformHotSetCurve(5000, 20000);
  close(c.pagesInWindow(1e-9) / 1e-9, 5000, 1e-6, 'slope at 0');
  close(c.pagesInWindow(1e-4) / 1e-4, 5000, 1e-4, 'slope at 0.1 ms');
  assert.equal(c.pagesInWindow(0), 0);
  close(c.pagesInWindow(1e4), 20000, 1e-12, 'τ → ∞');
  assert.equal(c.pagesInWindow(Infinity), 20000);
  // τ = H/R: 1 − 1/e of the hot set.
  close(c.pagesInWindow(4), 20000 * (1 - Math.exp(-1)), 1e-12, 'τ = H/R');
  assert.equal(c.ratePagesPerSec, 5000);
  assert.equal(c.maxPages, 20000);
  // No hot set: a straight line.
  assert.equal(uniformHotSetCurve(300, Infinity).pagesInWindow(2), 600);
});

test('uniformHotSetCurve is non-decreasing, concave, below both Rτ and H (property)', () => {
  fc.assert(
    fc.property(
      fc.double({ min: 0, max: 1e7, noNaN: true }),
      fc.double({ min: 1, max: 1e9, noNaN: true }),
      fc.double({ min: 0, max: 1e3, noNaN: true }),
      fc.double({ min: 0, max: 1e3, noNaN: true }),
      (R, H, a, b) => {
        const c = uniformHotSetCurve(R, H);
        const [t1, t2] = a < b ? [a, b] : [b, a];
        const d1 = c.pagesInWindow(t1);
        const d2 = c.pagesInWindow(t2);
        assert.ok(d1 <= d2 + 1e-9 * Math.max(1, d2));
        assert.ok(d2 <= R * t2 * (1 + 1e-12) + 1e-12 && d2 <= H * (1 + 1e-12));
        // Concavity: the midpoint is above the chord.
        const mid = c.pagesInWindow((t1 + t2) / 2);
        assert.ok(mid >= (d1 + d2) / 2 - 1e-9 * Math.max(1, d2));
      },
    ),
    { numRuns: 500 },
  );
});

test('throttledPages: a p% throttle scales the rate by (1 − p/100) but not the hot-set ceiling', () => {
  const c = uniformHotSetCurve(10000, 1_000_000);
  close(throttledPages(c, 0.01, 75), 0.25 * c.pagesInWindow(0.01), 1e-3, 'short window: rate × 0.25');
  close(throttledPages(c, 1e6, 75), 1_000_000, 1e-9, 'long window still fills the hot set');
  assert.equal(throttledPages(constantRateCurve(1000), 2, 40), 1200);
});

test('measuredCurve passes through the points and recovers a hot-set guest beyond the last one', () => {
  const truth = uniformHotSetCurve(20000, 50000);
  const points: Array<[number, number]> = [];
  for (let j = 0; j <= 10; j++) points.push([0.001 * 2 ** j, truth.pagesInWindow(0.001 * 2 ** j)]);
  const m = measuredCurve(points);
  for (const [w, d] of points) close(m.pagesInWindow(w), d, 1e-12, `at ${w}`);
  // Below the first point: linear from the origin with the first point's slope.
  close(m.pagesInWindow(0.0005), points[0]![1] / 2, 1e-12, 'below first');
  close(m.ratePagesPerSec, points[0]![1] / 0.001, 1e-12, 'rate');
  // Between points: within 1% of the truth (power-law interpolation of a concave curve).
  for (const w of [0.0015, 0.05, 0.7]) close(m.pagesInWindow(w), truth.pagesInWindow(w), 0.01, `between at ${w}`);
  // Beyond: the hot-set tail through the last two points is the truth itself.
  for (const w of [2, 8, 64]) close(m.pagesInWindow(w), truth.pagesInWindow(w), 1e-6, `beyond at ${w}`);
  close(m.maxPages, 50000, 1e-6, 'maxPages');
});

test('measuredCurve: noisy, unsorted, non-monotone points still give a non-decreasing curve (property)', () => {
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.double({ min: 1e-4, max: 100, noNaN: true }), fc.double({ min: 0, max: 1e6, noNaN: true })), { minLength: 1, maxLength: 20 }),
      fc.array(fc.double({ min: 0, max: 500, noNaN: true }), { minLength: 2, maxLength: 20 }),
      (points, windows) => {
        const m = measuredCurve(points);
        const sorted = [...windows].sort((a, b) => a - b);
        let prev = 0;
        for (const w of sorted) {
          const d = m.pagesInWindow(w);
          assert.ok(Number.isFinite(d) && d >= 0);
          assert.ok(d >= prev - 1e-9 * Math.max(1, prev), `D(${w}) = ${d} < ${prev}`);
          prev = d;
        }
      },
    ),
    { numRuns: 300 },
  );
});

test('measuredCurve: extrapolation is linear without saturation, flat when saturated, capped at totalPages', () => {
  const linear = measuredCurve([
    [1, 100],
    [2, 200],
  ]);
  assert.equal(linear.pagesInWindow(10), 1000);
  assert.equal(linear.maxPages, Infinity);
  const flat = measuredCurve([
    [1, 100],
    [2, 100],
  ]);
  assert.equal(flat.pagesInWindow(50), 100);
  const capped = measuredCurve([[1, 100]], { totalPages: 250 });
  assert.equal(capped.pagesInWindow(2), 200);
  assert.equal(capped.pagesInWindow(10), 250);
  assert.equal(capped.maxPages, 250);
  // A drop between windows is noise: the later window keeps the larger count.
  const dip = measuredCurve([
    [1, 100],
    [2, 80],
    [4, 150],
  ]);
  assert.equal(dip.pagesInWindow(2), 100);
});

test('dirty curves reject bad input with the field named', () => {
  assert.throws(() => uniformHotSetCurve(-1, 10), /pagesPerSec: must be a finite number ≥ 0/);
  assert.throws(() => uniformHotSetCurve(1, 0), /hotPages: must be a number > 0/);
  assert.throws(() => uniformHotSetCurve(1, 10).pagesInWindow(-1), /windowSec/);
  assert.throws(() => measuredCurve([]), /points: must hold at least one/);
  assert.throws(() => measuredCurve([[0, 10]]), /points\[0\] windowSec/);
  assert.throws(() => measuredCurve([[1, NaN]]), /points\[0\] pages/);
  assert.throws(() => measuredCurve([[1, 1]], { totalPages: 0 }), /totalPages/);
});

test('measuredCurve: subnormal counts between close windows stay within the segment (regression)', () => {
  // Found by the property above: a power law through (1e-4, 5e-324) and (1.0166e-4, 8.9e-16).
  const m = measuredCurve([
    [0.0001, 5e-324],
    [0.00010166307803532869, 8.881784197000537e-16],
  ]);
  for (const w of [0.0001, 0.00010083, 0.00010166307803532868, 0.00010166307803532869]) {
    const d = m.pagesInWindow(w);
    assert.ok(Number.isFinite(d) && d >= 5e-324 && d <= 8.881784197000537e-16, `D(${w}) = ${d}`);
  }
});

test('sumCurve: a hot set plus the rest of the guest, capped at the page count', () => {
  const hot = uniformHotSetCurve(12000, 4096);
  const rest = measuredCurve([[0.25, 70], [1, 100]]);
  const both = sumCurve(hot, rest, 32768);
  for (const w of [0, 0.01, 0.25, 0.5, 1, 3, 100]) close(both.pagesInWindow(w) + 1e-300, hot.pagesInWindow(w) + rest.pagesInWindow(w) + 1e-300, 1e-12, `w=${w}`);
  assert.equal(both.ratePagesPerSec, 12000 + 280);
  close(both.maxPages, 4096 + rest.maxPages, 1e-12);
  const capped = sumCurve(constantRateCurve(1000), constantRateCurve(500), 2000);
  assert.equal(capped.pagesInWindow(1), 1500);
  assert.equal(capped.pagesInWindow(10), 2000);
  assert.equal(capped.maxPages, 2000);
  assert.throws(() => sumCurve(hot, {} as never), /b: must be a DirtyCurve/);
  assert.throws(() => sumCurve(hot, rest, 0), /maxPages: must be a number > 0/);
  assert.throws(() => both.pagesInWindow(-1), /windowSec/);
});
