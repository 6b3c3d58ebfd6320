/**
 * Issue 5's target "guest write throughput kept ≥ 80 % of what the link share allows", on real
 * parts (QEMU 7.2 TCG, one tbf-shaped 150 Mbit/s link, three concurrent LXD-shaped migrations of
 * guests writing 4 MiB/s in 64 KiB O_DIRECT writes, one at a time).
 *
 * What the link allows a queue-depth-1 writer is not U/N: from the mirror on, every guest write
 * completes only once it has crossed the link (write-blocking mirror), so it is bound by the
 * link's round trip, which the bulk streams keep long (measured here per phase: QEMU's own write
 * latency on the source device, and a TCP round trip across the link). The ceiling is therefore
 * measured, in the same command: the same guests migrating with no governor over the same link
 * into an Ω they cannot fill (1 GiB: not binding for the governor's plan either — 3 guests at
 * 4 MiB/s for ~45 s could write ~0.55 GiB — so it must not throttle; with 512 MiB it did, to
 * 3.2 MB/s, for a moment). The governed guests must write ≥ 80 % of that, each of them.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runConcurrentMigrations } from '../../src/migrate/concurrent';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;

test('governed guests write ≥ 80 % of what the same guests write ungoverned over the same link', { ...prereq, timeout: 300_000 }, async (t) => {
  const r = await runConcurrentMigrations({ vms: 3, omegaMib: 1024, linkMbit: 150 });
  const base = r.runs.baseline!;
  const gov = r.runs.governed!;
  const why = JSON.stringify({ ...r, runs: { baseline: base, governed: { ...gov, timeline: undefined } } });

  // The ceiling is usable: Ω did not bind the baseline, and every guest's counter was read.
  assert.equal(base.overflow, false, why);
  assert.equal(base.pausedGuests, 0, why);
  assert.equal(base.completed, 3, why);
  assert.ok(r.ungovernedWriteBytesPerSec !== null && r.ungovernedWriteBytesPerSec > 0, why);
  // Why the ceiling is below the demand: the writes that wait for the link. Base copy (overlay
  // on tmpfs, nothing crosses the link per write) vs RAM phase (write-blocking mirror).
  for (const m of base.migrations) {
    const b = m.phases['base'];
    const ram = m.phases['ram'];
    assert.ok(b && ram && b.writeMeanMs !== null && ram.writeMeanMs !== null, why);
    assert.ok(ram.writeMeanMs > 5 * b.writeMeanMs && ram.writeMeanMs > 5, `${m.id}: write latency base ${b.writeMeanMs} ms, RAM ${ram.writeMeanMs} ms`);
    assert.ok(ram.rttP50Ms !== null && ram.rttP50Ms > 1, `${m.id}: link round trip in the RAM phase ${ram.rttP50Ms} ms`);
    assert.ok(m.writeBytesPerSec! < 0.95 * m.demandBytesPerSec, `${m.id}: ungoverned ${m.writeBytesPerSec} B/s`);
  }

  // Governed: all complete and verify, nothing overflows, and with Ω not binding the governor
  // never limits a writer below its demand.
  assert.equal(gov.completed, 3, why);
  assert.equal(gov.overflow, false, why);
  assert.equal(gov.pausedGuests, 0, why);
  assert.equal(gov.dataVerified, true, why);
  assert.ok(gov.governor!.minWriteLimitBytesPerSec === null || gov.governor!.minWriteLimitBytesPerSec >= 0.95 * 4 * 1024 * 1024, why);

  // The target.
  for (const m of gov.migrations) assert.ok(m.writeVsUngoverned !== null && m.writeVsUngoverned >= 0.8, `${m.id}: ${m.writeVsUngoverned}; ${why}`);
  assert.equal(r.writeVsUngovernedMin, Math.min(...gov.migrations.map((m) => m.writeVsUngoverned!)));

  const ms = (x: number | null | undefined): string => (x === null || x === undefined ? 'n/a' : x.toFixed(1));
  t.diagnostic(
    `ungoverned ${(r.ungovernedWriteBytesPerSec! / 1e6).toFixed(2)} MB/s mean; governed ${gov.migrations.map((m) => (m.writeBytesPerSec! / 1e6).toFixed(2)).join(' / ')} MB/s; ` +
      `writeVsUngoverned ${gov.migrations.map((m) => m.writeVsUngoverned!.toFixed(2)).join(' / ')}; writeShareRatio ${gov.migrations.map((m) => m.writeShareRatio!.toFixed(2)).join(' / ')} ` +
      `(baseline ${base.migrations.map((m) => m.writeShareRatio!.toFixed(2)).join(' / ')}); RAM-phase write latency ungoverned ${base.migrations.map((m) => ms(m.phases['ram']?.writeMeanMs)).join(' / ')} ms, ` +
      `governed ${gov.migrations.map((m) => ms(m.phases['ram']?.writeMeanMs)).join(' / ')} ms; RTT p50 ${base.migrations.map((m) => ms(m.phases['ram']?.rttP50Ms)).join(' / ')} vs ${gov.migrations.map((m) => ms(m.phases['ram']?.rttP50Ms)).join(' / ')} ms`,
  );
});
