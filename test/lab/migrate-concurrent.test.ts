/**
 * Three concurrent LXD-shaped migrations on real parts (QEMU 7.2 TCG, one tbf-shaped link, one Ω
 * tmpfs), first without the governor, then with it, each on freshly booted guests that write
 * 4 MiB/s (64 KiB O_DIRECT writes) to their disks. Ω (8 MiB) is far too small for the overlays the
 * guests grow over the base copy unthrottled (~70 MiB): the baseline must overflow and pause its
 * guests (which proves this test can fail); governed, nothing overflows, no guest pauses, every
 * migration completes and every guest verifies its own memory and disk on the target.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runConcurrentMigrations } from '../../src/migrate/concurrent';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const MiB = 1024 * 1024;
const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;

test('3 concurrent migrations into one Ω: the baseline overflows, the governed run does not', { ...prereq, timeout: 300_000 }, async (t) => {
  const r = await runConcurrentMigrations({ vms: 3, omegaMib: 8, linkMbit: 150 });
  const base = r.runs.baseline!;
  const gov = r.runs.governed!;
  const why = JSON.stringify({ ...r, runs: { baseline: { ...base, timeline: undefined }, governed: { ...gov, timeline: undefined } } });

  // The setup really is too small for unthrottled overlays.
  assert.ok(r.unthrottledOverlayEstimateBytes > 2 * 8 * MiB, why);
  assert.ok(r.linkBytesPerSec > 0.8 * (150e6 / 8) && r.linkBytesPerSec < 150e6 / 8, `link measured ${r.linkBytesPerSec} B/s`);

  // Baseline: Ω fills up and QEMU pauses guests on ENOSPC.
  assert.equal(base.governed, false);
  assert.equal(r.baseline!.overflow, true, why);
  assert.ok(r.baseline!.pausedGuests > 0, why);
  assert.ok(base.migrations.some((m) => m.enospcEvents > 0), why);
  assert.ok(base.omegaMinFreeBytes < 64 * 1024, why);

  // Governed: every migration completes, Ω never fills, no guest pauses, the data is intact.
  assert.equal(gov.governed, true);
  assert.equal(r.completed, 3, why);
  assert.equal(r.overflow, false, why);
  assert.equal(r.pausedGuests, 0, why);
  assert.equal(r.dataVerified, true, why);
  for (const m of gov.migrations) {
    assert.equal(m.phase, 'completed', why);
    assert.equal(m.verifiedOn, 'target');
    assert.equal(m.verified, true, m.verifyError);
    assert.equal(m.enospcEvents, 0);
    assert.ok(m.overlayPeakBytes > 0 && m.overlayPeakBytes < 8 * MiB);
  }
  assert.ok(gov.omegaMinFreeBytes >= 64 * 1024, why);
  // The governor acted: it throttled writers down to its floor at some point.
  assert.ok(gov.governor!.actionsSent > 0 && gov.governor!.minWriteLimitBytesPerSec !== null, why);
  assert.ok(gov.governor!.minWriteLimitBytesPerSec! < 4 * MiB, why);
  // Write throughput: the guests' own counters over each migration. Ω (8 MiB for overlays that
  // never shrink) is the binding limit here, not the link: the guests wrote 2–5 % of their link
  // share, and that is all Ω could hold. What is asserted is that the governor let the fleet
  // write at least 80 % of what Ω and the link allowed it (Ω_gov / Σ T_j per guest; measured
  // 1.33–1.37). Per guest it is not asserted: fitted splits Ω unequally (least 0.76–1.55).
  for (const m of gov.migrations) {
    assert.ok(m.writeBytesPerSec !== null && m.writeBytesPerSec > 0, why);
    assert.ok(m.linkShareBytesPerSec > r.linkBytesPerSec / 3 - 1 && m.linkShareBytesPerSec <= r.linkBytesPerSec, why);
    assert.equal(m.demandBytesPerSec, 4 * MiB);
    assert.ok(m.writeBytesPerSec < m.demandBytesPerSec, `throttled: ${m.writeBytesPerSec} B/s`);
  }
  assert.ok(r.writeShareRatioMin !== null && r.writeShareRatioMin > 0 && r.writeShareRatioMin < 0.8, why);
  assert.ok(r.writeAllowedRatioMin !== null && r.writeAllowedRatioMin > 0, why);
  assert.ok(gov.fleetWriteAllowedRatio !== null && gov.fleetWriteAllowedRatio >= 0.8, `the fleet wrote ≥ 80 % of what Ω and the link allowed: ${gov.fleetWriteAllowedRatio}`);
  t.diagnostic(
    `governed: writes ${gov.migrations.map((m) => Math.round(m.writeBytesPerSec! / 1000)).join(' / ')} kB/s, link share ${gov.migrations.map((m) => (m.linkShareBytesPerSec / 1e6).toFixed(2)).join(' / ')} MB/s, ` +
      `writeShareRatioMin ${r.writeShareRatioMin!.toFixed(3)}, writeAllowedRatioMin ${r.writeAllowedRatioMin!.toFixed(2)}, fleet ${gov.fleetWriteAllowedRatio!.toFixed(2)}, Ω least free ${(gov.omegaMinFreeBytes / 1024).toFixed(0)} KiB`,
  );
  // The prediction is computed for each completed migration (its accuracy is reported, not asserted).
  assert.ok(r.predictionP90ErrorPct !== null && Number.isFinite(r.predictionP90ErrorPct), why);
  assert.ok(gov.migrations.every((m) => m.predictedMs !== null && m.predictedMs > 0));
});
