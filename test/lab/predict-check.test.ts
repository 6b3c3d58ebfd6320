/**
 * Predictor vs reality on real parts (QEMU 7.2 TCG guests, a tbf-shaped link): three single
 * migrations at 200 Mbit/s with the guest dirtying 500, 4000 and 12000 pages/s over a 16 MiB hot
 * set, each predicted at its start by the model alone (src/migrate/predict-check.ts says which
 * inputs it may use: goodput, write rate, zero pages and vCPU busy share measured before the
 * migration, never its own counters).
 *
 * Bounds come from measurement (docs/BENCHMARKS.md "Predictor vs reality": the grid run 6 times
 * and this test 3 times, load 1–11 on 2 shared cores). At 200 Mbit/s the unthrottled cases
 * (500, 4000 pages/s) were within 9.7 %: ≤ 15 % is asserted. At 12000 pages/s QEMU throttles
 * the guest; 8 of 9 runs were within 5.6 %, the model naming QEMU's top throttle (90 %; once QEMU
 * stopped at 80 %), but in one QEMU switched over at 50 % after 16.6 s instead of ~24 s
 * (predicted 24.1 s, +45 %): the host starved the guest's vCPU, which then lost writes (its
 * pacer makes up at most 50 ms) — something no input measured at the start can foresee. So for the throttled case only the direction the
 * fix is about is asserted: the model is not optimistic (error ≥ −15 %; the old CPU-bound model
 * was −42 %), and it does not name a lower throttle than QEMU reached (the old model said 20 % or
 * 40 % where QEMU went to 90 %). The target, p90 ≤ 10 %, is not asserted: it was not
 * met over the full grid at these loads.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runPredictCheck } from '../../src/migrate/predict-check';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;

test('predict-check: 3 migrations at 200 Mbit/s, predicted vs actual total time, throttle and bytes', { ...prereq, timeout: 300_000 }, async (t) => {
  const r = await runPredictCheck({ dirtyPagesPerSec: [500, 4000, 12000], linkMbit: [200] });
  const why = JSON.stringify(r);
  for (const m of r.migrations) {
    t.diagnostic(
      `${m.dirtyPagesPerSec} pages/s: predicted ${m.predictedSec?.toFixed(2)} s, actual ${m.actualSec.toFixed(2)} s, error ${m.signedErrorPct?.toFixed(1)} %, ` +
        `throttle ${m.predictedRam?.finalThrottlePct}/${m.actualMaxThrottlePct} %, bytes ${((m.predictedRam?.bytesSent ?? 0) / 1e6).toFixed(1)}/${((m.actualRam?.bytesSent ?? 0) / 1e6).toFixed(1)} MB, vCPU busy ${(m.vcpuBusyFraction * 100).toFixed(1)} %`,
    );
  }
  assert.equal(r.migrations.length, 3, why);
  assert.equal(r.completed, 3, why);
  // The link is measured, not assumed: tbf 200 Mbit/s gives ~95 % of it as TCP goodput.
  const link = r.linkBytesPerSec['200']!;
  assert.ok(link > 0.8 * (200e6 / 8) && link < 200e6 / 8, why);
  for (const m of r.migrations) {
    assert.equal(m.phase, 'completed', why);
    assert.equal(m.verified, true, why);
    assert.ok(m.predictedSec !== null && Number.isFinite(m.predictedSec) && m.predictedSec > 0, why);
    assert.ok(m.errorPct !== null && Number.isFinite(m.errorPct), why);
    // The scan sees what QEMU then sends as zero pages: a booted 128 MiB guest is ~25 % zero.
    assert.ok(m.zeroPageFraction > 0.05 && m.zeroPageFraction < 0.6, why);
    // A TCG vCPU running the paced workload is busy a small part of the time (measured 5–16 %).
    assert.ok(m.vcpuBusyFraction > 0.01 && m.vcpuBusyFraction < 0.5, why);
    // The rest of the guest (kernel, the workload's bookkeeping, the disk workload) changes some
    // pages outside the buffer in any window, far fewer than the 4096 of the hot set (measured
    // 66–120 over 0.3–1.1 s), and a longer window holds at least those of the shorter one.
    assert.equal(m.backgroundPages.length, 2, why);
    const [[w1, b1], [w2, b2]] = m.backgroundPages as [[number, number], [number, number]];
    assert.ok(w1 >= 0.2 && w1 < 0.8 && w2 >= 0.9 && w2 < 2.5, why);
    assert.ok(b1 > 0 && b2 >= b1 && b2 < 2000, why);
    // Bytes on the wire (model incl. stop-and-copy vs QEMU's transferred): within 10 % where
    // the guest kept writing (0.96–1.02 measured at 200 Mbit/s); a starved guest makes QEMU send less.
    const bytes = m.predictedRam!.bytesSent / m.actualRam!.bytesSent;
    assert.ok(bytes > 0.9, `${m.dirtyPagesPerSec} pages/s: bytes ratio ${bytes} ${why}`);
  }
  const [slow, mid, fast] = r.migrations;
  // Unthrottled at 500 and 4000 pages/s: both agree, and the time is within 15 % (measured ≤ 9.7 %).
  for (const m of [slow!, mid!]) {
    assert.equal(m.predictedRam!.finalThrottlePct, 0, why);
    assert.equal(m.actualMaxThrottlePct, 0, why);
    assert.ok(m.errorPct! <= 15, `${m.dirtyPagesPerSec} pages/s: ${m.signedErrorPct} % ${why}`);
    assert.ok(m.predictedRam!.bytesSent / m.actualRam!.bytesSent < 1.1, why);
  }
  // Throttled at 12000 pages/s: QEMU needs auto-converge, and the model is neither optimistic
  // about the time nor about the throttle the paced guest needs.
  assert.ok(fast!.actualMaxThrottlePct >= 20, why);
  assert.ok(fast!.predictedRam!.finalThrottlePct >= 80, why);
  assert.ok(fast!.predictedRam!.finalThrottlePct >= fast!.actualMaxThrottlePct, why);
  assert.ok(fast!.signedErrorPct! >= -15, `12000 pages/s: ${fast!.signedErrorPct} % ${why}`);
  // The model follows QEMU's own sync loop (a sync whenever the pending RAM drops below the
  // threshold), so its syncs are QEMU's dirty-sync-count: 70–83 vs 79–82 measured; the old
  // pass model said 49.
  const syncs = fast!.predictedRam!.iterations / fast!.actualRam!.iterations;
  assert.ok(syncs > 0.65 && syncs < 1.35, `syncs ${fast!.predictedRam!.iterations}/${fast!.actualRam!.iterations} ${why}`);
  assert.ok(fast!.actualSec > 2 * slow!.actualSec && fast!.predictedSec! > 2 * slow!.predictedSec!, why);
});
