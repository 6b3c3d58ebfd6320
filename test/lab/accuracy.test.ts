/**
 * `dpa lab accuracy` on a real QEMU 7.2 guest (TCG): our guest-memory collector and QEMU's
 * calc-dirty-rate against the workload's own page sets, over the same window.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { runCli } from '../../src/cli/main';
import { measureAccuracy, type AccuracyReport, type PairedInterval } from '../../src/lab/accuracy';
import { LabVm } from '../../src/lab/vm';
import { needs, qemuMissing } from '../helpers/prereq';

const BUFFER_PAGES = 16384; // the default 64 MiB buffer, all of it hot

/** Expected distinct pages among `writes` uniform draws from `hot` pages. */
function expectedDistinct(hot: number, writes: number): number {
  return hot * (1 - Math.pow(1 - 1 / hot, writes));
}

const finite = (x: unknown): boolean => typeof x === 'number' && Number.isFinite(x);

/**
 * One run, and a second one if the host stalled the scanner (a scan longer than half an
 * interval: the report says `disturbed`); the second run's figures are asserted whatever they are.
 */
async function measureOnQuietHost(vm: LabVm, o: Parameters<typeof measureAccuracy>[1], t: { diagnostic(s: string): void }): Promise<AccuracyReport> {
  const r = await measureAccuracy(vm, o);
  if (!r.alignment.disturbed) return r;
  t.diagnostic(`first run disturbed (${r.notes.join('; ')}); measuring again`);
  return measureAccuracy(vm, o);
}

/** Checks every headline and nested field exists with a sane value; returns the measure pairs. */
function checkShape(r: AccuracyReport, rate: number, seconds: number): PairedInterval[] {
  for (const k of ['truthPagesPerSec', 'oursPagesPerSec', 'oursErrorPct', 'qemuSamplingPagesPerSec', 'qemuErrorPct', 'scanGBps', 'cpuPercent'] as const) {
    assert.ok(finite(r[k]), `${k} = ${String(r[k])}`);
  }
  assert.equal(r.askedRatePagesPerSec, rate);
  // Whole intervals covering QEMU's window in guest time; a late guest report makes one longer.
  assert.ok(r.intervals >= seconds - 2 && r.intervals <= seconds, `${r.intervals} intervals`);
  assert.ok(Math.abs(r.windowMs - seconds * 1000) < 700, `window ${r.windowMs} ms for ${seconds} s`);
  // The write rate is the guest's own count; under a loaded host it may fall short, and then the
  // report must say so.
  assert.ok(r.workload.writesPerSec > 0.5 * rate && r.workload.writesPerSec < 1.05 * rate, `writes/s ${r.workload.writesPerSec}`);
  assert.equal(r.rateReached, r.workload.writesPerSec >= 0.95 * rate);
  if (!r.rateReached) assert.match(r.notes.join('\n'), /asked rate not reached/);
  // Distinct pages ≤ writes, and a page written twice counts once.
  assert.ok(r.truthPagesPerSec <= r.workload.writesPerSec + 1e-9);
  assert.ok(r.workload.truthWindowPagesPerSec <= r.truthPagesPerSec + 1e-9, 'distinct over the window ≤ sum of distinct per interval');
  // QEMU: a whole number of MiB/s, from 512 pages/GiB of 256 MiB.
  assert.ok(r.qemuSamplingPagesPerSec >= 0 && r.qemuSamplingPagesPerSec % 256 === 0, `QEMU ${r.qemuSamplingPagesPerSec} pages/s`);
  assert.equal(r.whole.qemuSamplingPagesPerSec, r.qemuSamplingPagesPerSec);
  assert.equal(r.whole.qemuCalcTimeS, seconds);
  assert.equal(r.whole.qemuSampledPages, 128);
  assert.ok(r.scanGBps > 0.05 && r.scanGBps < 100, `scanGBps ${r.scanGBps}`);
  assert.ok(r.cpuPercent > 0 && r.cpuPercent < 100, `cpuPercent ${r.cpuPercent}`);
  assert.equal(r.whole.pagesTotal, 65536);
  assert.ok(finite(r.whole.idleBackgroundPagesPerSec) && r.whole.idleBackgroundPagesPerSec! > 0, 'the idle guest kernel dirties some pages');
  assert.ok(r.whole.oursPagesPerSec >= r.oursPagesPerSec, 'the whole guest includes the workload');
  assert.ok(r.alignment.lagSpreadMs >= 0 && r.alignment.lagSpreadMs < 500, `lag spread ${r.alignment.lagSpreadMs} ms`);
  assert.ok(r.alignment.edgeScanMs.every((ms) => ms > 0 && ms < 5000), `edge scans ${r.alignment.edgeScanMs}`);
  assert.ok(finite(r.workload.runErrorPct) && r.workload.runTruthPages >= r.truthPagesPerSec * (r.windowMs / 1000) * 0.9, 'the run holds the window');
  const pairs = r.pairs!;
  const measure = pairs.filter((p) => p.phase === 'measure');
  assert.equal(measure.length, r.intervals);
  assert.equal(r.workload.runTruthPages, pairs.filter((p) => p.inRun).reduce((s, p) => s + p.truthPages, 0));
  assert.ok(pairs.some((p) => p.phase === 'idle-before') && pairs.some((p) => p.phase === 'idle-after'));
  return measure;
}

describe('lab accuracy on QEMU (TCG)', needs('qemu', qemuMissing()), () => {
  let vm: LabVm;

  before(async () => {
    vm = await LabVm.start({ guestMib: 256, disk: null, name: 'dpa-accuracy-test' });
    await vm.ready();
  });
  after(() => vm?.stop());

  test('2000 pages/s for 8 s: exact mode within 2% of the truth over the workload pages; QEMU reported beside', async (t) => {
    const r = await measureOnQuietHost(vm, { ratePagesPerSec: 2000, seconds: 8, idleSeconds: 1, includeIntervals: true }, t);
    t.diagnostic(`truth ${r.truthPagesPerSec.toFixed(1)}, ours ${r.oursPagesPerSec.toFixed(1)} (${r.oursErrorPct!.toFixed(2)} %), QEMU ${r.qemuSamplingPagesPerSec} (${r.qemuErrorPct!.toFixed(1)} %), whole ${r.whole.oursPagesPerSec.toFixed(1)}, idle ${r.whole.idleBackgroundPagesPerSec!.toFixed(1)}, scan ${r.scanGBps.toFixed(2)} GB/s`);
    const measure = checkShape(r, 2000, 8);
    assert.ok(Math.abs(r.oursErrorPct!) <= 2, `ours ${r.oursPagesPerSec} vs truth ${r.truthPagesPerSec}: ${r.oursErrorPct} %`);
    // Without the window's edges only rewrites across shifted boundaries differ (a few per mille).
    assert.ok(Math.abs(r.workload.runErrorPct!) <= 1, `run: ours ${r.workload.runOursPages} vs truth ${r.workload.runTruthPages}`);
    // The truth itself: uniform draws over the 16384-page buffer give the birthday-style count.
    for (const p of measure) {
      const e = expectedDistinct(BUFFER_PAGES, p.truthWrites);
      assert.ok(Math.abs(p.truthPages - e) <= 0.03 * e + 5, `interval with ${p.truthWrites} writes: ${p.truthPages} distinct, expected ${e.toFixed(0)}`);
      assert.ok(p.oursWholePages >= p.oursWorkloadPages, 'exact: the whole-guest bitmap contains the workload part');
    }
    // Our restriction to the workload's frames is right: nothing there changes while it is stopped...
    assert.equal(r.idle.workloadPagesChanged, 0);
    // ...every page written in the run was seen changing, and no other workload page was.
    assert.deepEqual([r.workload.runUnionMissedPages, r.workload.runUnionExtraPages], [0, 0]);
    // ...and page by page, only the writes in the boundary lag land in the neighbouring interval.
    const total = measure.reduce((s, p) => s + p.truthPages, 0);
    assert.ok(r.workload.missedPages < 0.15 * total && r.workload.extraPages < 0.15 * total, `missed ${r.workload.missedPages}, extra ${r.workload.extraPages} of ${total}`);
    const w = r.workload.oursWindowPagesPerSec!;
    assert.ok(Math.abs(w - r.workload.truthWindowPagesPerSec) <= 0.02 * r.workload.truthWindowPagesPerSec, `window: ours ${w} vs truth ${r.workload.truthWindowPagesPerSec}`);
    assert.ok(finite(r.whole.qemuErrorPct) && finite(r.whole.oursErrorPct));
  });

  test('100 pages/s for 10 s: exact mode within 2% at a low rate too', async (t) => {
    const r = await measureOnQuietHost(vm, { ratePagesPerSec: 100, seconds: 10, idleSeconds: 1, includeIntervals: true }, t);
    t.diagnostic(`truth ${r.truthPagesPerSec.toFixed(1)}, ours ${r.oursPagesPerSec.toFixed(1)} (${r.oursErrorPct!.toFixed(2)} %), QEMU ${r.qemuSamplingPagesPerSec}`);
    const measure = checkShape(r, 100, 10);
    assert.ok(Math.abs(r.oursErrorPct!) <= 2, `ours ${r.oursPagesPerSec} vs truth ${r.truthPagesPerSec}: ${r.oursErrorPct} %`);
    // At 100 writes/s over 16384 pages a page is almost never written twice: the run's counts agree to a page or two.
    assert.ok(Math.abs(r.workload.runOursPages - r.workload.runTruthPages) <= 3, `run: ours ${r.workload.runOursPages} vs truth ${r.workload.runTruthPages}`);
    assert.equal(r.idle.workloadPagesChanged, 0);
    for (const p of measure) assert.ok(p.truthPages >= p.truthWrites - 2, 'at 100 writes/s over 16384 pages, repeats are rare');
  });
});

test('dpa lab accuracy --mode sampled --json: the truth lies inside the stated bound', needs('qemu', qemuMissing()), async (t) => {
  let out = '';
  let err = '';
  const code = await runCli(['lab', 'accuracy', '--rate', '3000', '--seconds', '4', '--idle-seconds', '1', '--mode', 'sampled', '--sample-fraction', '0.1', '--json'], {
    out: (s) => (out += s),
    err: (s) => (err += s),
    isTTY: false,
    signal: new AbortController().signal,
  });
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as AccuracyReport & { guestMib: number };
  t.diagnostic(`truth ${r.truthPagesPerSec.toFixed(1)}, ours ${r.oursPagesPerSec.toFixed(1)} [${r.workload.bound?.lowPagesPerSec.toFixed(0)}, ${r.workload.bound?.highPagesPerSec.toFixed(0)}], ${r.workload.bound?.intervalsCovered}/${r.workload.bound?.intervals} intervals covered, CPU ${r.cpuPercent.toFixed(1)} %`);
  assert.equal(r.mode, 'sampled');
  assert.equal(r.sampleFraction, 0.1);
  assert.equal(r.guestMib, 256);
  assert.equal(r.pairs, undefined, 'intervals only with --intervals');
  for (const k of ['truthPagesPerSec', 'oursPagesPerSec', 'oursErrorPct', 'qemuSamplingPagesPerSec', 'qemuErrorPct', 'scanGBps', 'cpuPercent'] as const) assert.ok(finite(r[k]), k);
  const b = r.workload.bound!;
  assert.ok(b.lowPagesPerSec <= r.oursPagesPerSec && r.oursPagesPerSec <= b.highPagesPerSec);
  assert.ok(b.truthWithin, `truth ${r.truthPagesPerSec} outside [${b.lowPagesPerSec}, ${b.highPagesPerSec}]`);
  // A 10% sample is far from exact but not wild: the bound's half-width is well under the rate.
  assert.ok(b.highPagesPerSec - b.lowPagesPerSec < r.truthPagesPerSec, 'bound narrower than the rate itself');
  assert.equal(r.whole.oursWindowPagesPerSec, null);
  assert.equal(r.workload.runUnionMissedPages, null);
});
