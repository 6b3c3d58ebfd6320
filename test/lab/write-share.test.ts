/**
 * Issue 5's target "guest write throughput kept ≥ 80 % of what the link share allows", on real
 * parts (QEMU 7.2 TCG, one 150 Mbit/s link with per-flow fair queueing, three concurrent
 * LXD-shaped migrations of guests writing 64 KiB O_DIRECT blocks, one at a time), into an Ω they
 * cannot fill (1 GiB: not binding for the governor's plan either), so the governor has no reason
 * to throttle. The link is fair so that each stream gets its share: on a FIFO a mirror that
 * starts while other migrations' RAM streams fill the queue can be held to a trickle for seconds
 * (once 12.6 s, its guest's writes waiting 1.2 s each), which is TCP's doing, not the governor's;
 * docs/BENCHMARKS.md has the FIFO runs.
 *
 * The target as written: each governed guest writes ≥ 80 % of min(demand, U/N), U the link's
 * measured goodput and N(t) the migrations in flight. At 2 MiB/s per guest this 2-core host can
 * carry the guests' writes with no governor (0.79–0.94 measured), so a governor that held a
 * writer back would show here. And each writes ≥ 80 % of what the same guests write with no
 * governor, same link, same command (`writeVsUngoverned`).
 *
 * At 4 MiB/s per guest (the command's default) the host itself cannot carry the demand: from the
 * mirror on every write waits for the link (write-blocking mirror), three TCG guests and their
 * migrations share 2 cores, and with no governor at all the guests write 0.5–0.9 of
 * min(demand, U/N), varying run to run (one guest alone: 0.9; a queue depth of 8 instead of 1
 * changes nothing). docs/BENCHMARKS.md records those runs; a test on that ratio would measure
 * the host's noise, not the governor.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runConcurrentMigrations } from '../../src/migrate/concurrent';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;

test('governed guests write ≥ 80 % of min(demand, U/N) where the host can carry the demand', { ...prereq, timeout: 300_000 }, async (t) => {
  const writesPerSec = 32; // × 64 KiB = 2 MiB/s per guest
  const r = await runConcurrentMigrations({ vms: 3, omegaMib: 1024, linkMbit: 150, diskWritesPerSec: writesPerSec, linkQueue: 'fair' });
  const base = r.runs.baseline!;
  const gov = r.runs.governed!;
  const why = JSON.stringify({ ...r, runs: { baseline: base, governed: { ...gov, timeline: undefined } } });
  assert.equal(base.completed, 3, why);
  assert.equal(base.overflow, false, why);
  assert.equal(gov.completed, 3, why);
  assert.equal(gov.overflow, false, why);
  assert.equal(gov.pausedGuests, 0, why);
  assert.equal(gov.dataVerified, true, why);
  const demand = writesPerSec * 64 * 1024;
  for (const m of gov.migrations) {
    assert.equal(m.demandBytesPerSec, demand);
    // The link share is above the demand here, so the demand is what the link allows.
    assert.ok(m.linkShareBytesPerSec > demand, `${m.id}: share ${m.linkShareBytesPerSec} B/s`);
    assert.ok(m.writeShareRatio !== null && m.writeShareRatio >= 0.8, `${m.id}: writeShareRatio ${m.writeShareRatio}; ${why}`);
  }
  assert.equal(gov.writeShareRatioMin, Math.min(...gov.migrations.map((m) => m.writeShareRatio!)));
  // And against the same guests with no governor over the same link, in the same command.
  assert.ok(r.ungovernedWriteBytesPerSec !== null, why);
  for (const m of gov.migrations) assert.ok(m.writeVsUngoverned !== null && m.writeVsUngoverned >= 0.8, `${m.id}: writeVsUngoverned ${m.writeVsUngoverned}`);
  assert.ok(gov.governor!.minWriteLimitBytesPerSec === null || gov.governor!.minWriteLimitBytesPerSec >= 0.95 * demand, why);
  t.diagnostic(
    `writeShareRatio governed ${gov.migrations.map((m) => m.writeShareRatio!.toFixed(2)).join(' / ')}, ungoverned ${base.migrations.map((m) => m.writeShareRatio!.toFixed(2)).join(' / ')}; ` +
      `writes ${gov.migrations.map((m) => (m.writeBytesPerSec! / 1e6).toFixed(2)).join(' / ')} MB/s of ${(demand / 1e6).toFixed(2)}; link share ${gov.migrations.map((m) => (m.linkShareBytesPerSec / 1e6).toFixed(2)).join(' / ')} MB/s`,
  );
});
