/**
 * The write-share figures of `dpa lab migrate-concurrent` (src/migrate/concurrent.ts): the mean
 * link share U / N(t) over a migration and the ratio write / min(demand, share).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { meanLinkShare, ungovernedCeiling, writeShareRatio, type ConcurrentMigrationReport } from '../../src/migrate/concurrent';

test('meanLinkShare: U/N(t) averaged over the migration, N counting the migrations in flight', () => {
  // Alone: the whole link.
  assert.equal(meanLinkShare([{ startMs: 0, endMs: 1000 }], 0, 300), 300);
  // Three together for 10 s, then B alone for 10 s, then C alone for 10 s.
  const iv = [
    { startMs: 0, endMs: 10_000 },
    { startMs: 0, endMs: 20_000 },
    { startMs: 0, endMs: 30_000 },
  ];
  assert.equal(meanLinkShare(iv, 0, 300), 100);
  assert.equal(meanLinkShare(iv, 1, 300), (10 * 100 + 10 * 150) / 20);
  assert.equal(meanLinkShare(iv, 2, 300), (10 * 100 + 10 * 150 + 10 * 300) / 30);
  // A migration that starts later shares only from its start.
  assert.equal(meanLinkShare([{ startMs: 0, endMs: 10 }, { startMs: 5, endMs: 15 }], 1, 100), (5 * 50 + 5 * 100) / 10);
  assert.throws(() => meanLinkShare(iv, 3, 300), RangeError);
  assert.throws(() => meanLinkShare([{ startMs: 5, endMs: 5 }], 0, 300), /endMs > startMs/);
  assert.throws(() => meanLinkShare(iv, 0, Number.NaN), /linkBytesPerSec/);
});

test('meanLinkShare: the shares of migrations running together add up to the link while all run', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 10_000 }), fc.double({ min: 1, max: 1e9, noNaN: true }), (n, len, u) => {
      const iv = Array.from({ length: n }, () => ({ startMs: 100, endMs: 100 + len }));
      let sum = 0;
      for (let i = 0; i < n; i++) sum += meanLinkShare(iv, i, u);
      assert.ok(Math.abs(sum - u) <= 1e-9 * u);
    }),
  );
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 1, max: 1000 })), { minLength: 1, maxLength: 6 }), (raw) => {
      const iv = raw.map(([s, l]) => ({ startMs: s, endMs: s + l }));
      for (let i = 0; i < iv.length; i++) {
        const share = meanLinkShare(iv, i, 600);
        // Never more than the link, never less than an even split among all of them.
        assert.ok(share <= 600 + 1e-9 && share >= 600 / iv.length - 1e-9, `${share}`);
      }
    }),
  );
});

test('writeShareRatio: write over the lesser of demand and link share', () => {
  assert.equal(writeShareRatio(80, 100, 1000), 0.8);
  assert.equal(writeShareRatio(80, 1000, 100), 0.8);
  assert.equal(writeShareRatio(null, 100, 100), null);
  assert.equal(writeShareRatio(5, 0, 100), null);
});

test('ungovernedCeiling: the baseline guests\' mean write rate, only when Ω did not bind the baseline', () => {
  const m = (w: number | null): ConcurrentMigrationReport => ({ writeBytesPerSec: w }) as ConcurrentMigrationReport;
  const ok = { overflow: false, pausedGuests: 0, migrations: [m(2e6), m(2.3e6), m(2.2e6)] };
  assert.ok(Math.abs(ungovernedCeiling(ok)! - 6.5e6 / 3) < 1e-6);
  assert.equal(ungovernedCeiling(undefined), null);
  assert.equal(ungovernedCeiling({ ...ok, overflow: true }), null);
  assert.equal(ungovernedCeiling({ ...ok, pausedGuests: 1 }), null);
  assert.equal(ungovernedCeiling({ ...ok, migrations: [m(2e6), m(null)] }), null);
  assert.equal(ungovernedCeiling({ ...ok, migrations: [m(2e6), m(0)] }), null);
  assert.equal(ungovernedCeiling({ ...ok, migrations: [] }), null);
});
