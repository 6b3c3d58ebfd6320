/**
 * The parts of `dpa lab accuracy` that need no QEMU: buffer page → RAM page mapping, page-set
 * conversion, the sampled estimate over a subset of pages (cross-checked against the native
 * scanner on a real process), the summary's definitions and the option checks.
 * test/lab/accuracy.test.ts runs the whole thing on a real guest.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  bufferBitsToRam,
  checkAccuracyOptions,
  pagesBitmap,
  ramPagesOfBuffer,
  StratifiedSubset,
  summarizeAccuracy,
  type AccuracyRunFacts,
  type PairedInterval,
} from '../../src/lab/accuracy';
import { q35RamLayout } from '../../src/lab/guest-ram';
import { runCli } from '../../src/cli/main';
import { openGuestMemory } from '../../src/sources/guest-memory';
import { bitsOf, ccMissing, Dirtier } from '../helpers/dirtier';
import { needs } from '../helpers/prereq';

const GiB = 1024 ** 3;

test('ramPagesOfBuffer: runs with step ±1 below and above 4 GiB map to RAM page indices', () => {
  const layout = q35RamLayout(4 * GiB); // 2 GiB low, 2 GiB at 4 GiB
  assert.deepEqual(layout, { lowRamBytes: 2 * GiB, highRamBytes: 2 * GiB });
  const report = {
    pageBytes: 4096,
    pages: 6,
    tag: '1',
    unmappedPages: 0,
    runs: [
      [0, 0x10000, 2, 1],
      [2, 0x30000, 2, -1],
      [4, 4 * GiB + 0x2000, 2, 1],
    ] as [number, number, number, 1 | -1][],
  };
  const pages = ramPagesOfBuffer(report, layout, (4 * GiB) / 4096);
  // Above 4 GiB: RAM offset = lowRam + (gpa - 4 GiB).
  const high = (2 * GiB + 0x2000) / 4096;
  assert.deepEqual([...pages], [0x10, 0x11, 0x30, 0x2f, high, high + 1]);
  assert.throws(() => ramPagesOfBuffer(report, layout, high + 1), /beyond the scanned/);
  const hole = { ...report, runs: report.runs.slice(0, 2), unmappedPages: 2 };
  assert.throws(() => ramPagesOfBuffer(hole, layout, (4 * GiB) / 4096), /buffer page 4 has no guest-physical frame/);
  const pci = { ...report, runs: [[0, 3 * GiB, 6, 1]] as [number, number, number, 1][] };
  assert.throws(() => ramPagesOfBuffer(pci, layout, (4 * GiB) / 4096), /is not guest RAM/);
});

test('bufferBitsToRam: equals the page-by-page mapping for any page set and permutation', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 0, max: 2 ** 31 - 1 }), (bufferPages, seed) => {
      const ramPages = bufferPages * 3;
      // A random injective mapping buffer page -> RAM page.
      let s = seed || 1;
      const rand = (): number => ((s = (s * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
      const free = Array.from({ length: ramPages }, (_, i) => i);
      const ramPageOf = new Uint32Array(bufferPages);
      for (let i = 0; i < bufferPages; i++) ramPageOf[i] = free.splice(Math.floor(rand() * free.length), 1)[0]!;
      const set = new Uint8Array(Math.ceil(bufferPages / 8));
      const written: number[] = [];
      for (let i = 0; i < bufferPages; i++) if (rand() < 0.3) {
        set[i >> 3]! |= 1 << (i & 7);
        written.push(ramPageOf[i]!);
      }
      const out = new Uint8Array(Math.ceil(ramPages / 64) * 8).fill(0xff); // must be cleared
      const n = bufferBitsToRam(set, ramPageOf, out);
      assert.equal(n, written.length);
      assert.deepEqual(bitsOf(out, ramPages), written.sort((a, b) => a - b));
      assert.deepEqual(out, pagesBitmap(written, out.length));
    }),
    { numRuns: 200 },
  );
});

test('StratifiedSubset: weights N_h/n_h per stratum, ragged last stratum, expected sample of a subset', () => {
  // 1000 pages in strata of 512: 512 (n = round(51.2) = 51) and 488 (n = round(48.8) = 49).
  const all = Uint32Array.from({ length: 1000 }, (_, i) => i);
  const s = new StratifiedSubset(1000, 512, 0.1, all);
  assert.deepEqual([...s.weights], [512 / 51, 488 / 49]);
  assert.ok(Math.abs(s.expectedSampled - 100) < 1e-9);
  // n_h = round(0.5 * 5) rounds the half away from zero (as llround does): 3, not 2.
  assert.deepEqual([...new StratifiedSubset(69, 64, 0.1, all.subarray(0, 69)).weights], [64 / 6, 5 / 1]);
  const bits = pagesBitmap([3, 600, 601, 700], 128);
  const sub = Uint32Array.from({ length: 600 }, (_, i) => 200 + i); // pages 200..799
  const e = new StratifiedSubset(1000, 512, 0.1, sub).estimate(bits);
  assert.equal(e.observed, 3); // page 3 is not in the subset; 600, 601, 700 are in stratum 1
  assert.ok(Math.abs(e.estimate - (3 * 488) / 49) < 1e-9);
  assert.ok(Math.abs(new StratifiedSubset(1000, 512, 0.1, sub).expectedSampled - (312 * 51) / 512 - (288 * 49) / 488) < 1e-9);
  assert.ok(e.low >= 3 && e.low < e.estimate && e.estimate < e.high && e.high <= 600);
  // A subset smaller than its weights: the estimate is capped at the subset's size.
  const tiny = new StratifiedSubset(1000, 512, 0.1, Uint32Array.of(3, 4, 600)).estimate(bits);
  assert.deepEqual([tiny.observed, tiny.estimate, tiny.high], [2, 3, 3]);
});

const cc = needs('cc', ccMissing());

test('StratifiedSubset agrees with the native sampled scanner, and its bound covers a subset truth ≥ 24/30 times', cc, async () => {
  // 65 MiB: a ragged last stratum (256 pages). The whole region as the subset must give exactly
  // the scanner's own estimate; a 4096-page window as the subset is how the lab uses it.
  const target = await Dirtier.start(['ram0:65']);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true, mode: 'sampled', sampleFraction: 0.1, strataPages: 512 });
  const pages = 65 * 256;
  let s = (Date.now() % 1e9) | 1;
  const seed = s;
  const rand = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
  const whole = new StratifiedSubset(pages, 512, 0.1, Uint32Array.from({ length: pages }, (_, i) => i));
  let inside = 0;
  const misses: string[] = [];
  try {
    await src.ready;
    for (let trial = 0; trial < 30; trial++) {
      const start = Math.floor(rand() * (pages - 4096));
      const subset = Uint32Array.from({ length: 4096 }, (_, i) => start + i);
      const inSubset = new Set<number>();
      while (inSubset.size < 20 + Math.floor(rand() * 2000)) inSubset.add(start + Math.floor(rand() * 4096));
      const outside = Array.from({ length: 300 }, () => Math.floor(rand() * pages)).filter((p) => p < start || p >= start + 4096);
      await target.dirty([...inSubset, ...outside]);
      const iv = await src.scanOnce();
      const w = whole.estimate(iv.bitmap!);
      assert.ok(Math.abs(w.estimate - iv.dirtyPagesEstimate) < 1e-6, `whole-region estimate ${w.estimate} vs scanner ${iv.dirtyPagesEstimate}`);
      const sub = new StratifiedSubset(pages, 512, 0.1, subset).estimate(iv.bitmap!);
      if (sub.low <= inSubset.size && inSubset.size <= sub.high) inside++;
      else misses.push(`${inSubset.size} not in [${sub.low.toFixed(0)}, ${sub.high.toFixed(0)}]`);
    }
    assert.ok(inside >= 24, `only ${inside}/30 inside (seed ${seed}): ${misses.join('; ')}`);
  } finally {
    await src.close();
    await target.stop();
  }
});

function pair(phase: PairedInterval['phase'], truthPages: number, oursW: number, oursWhole: number, extra: Partial<PairedInterval> = {}): PairedInterval {
  return {
    phase,
    inRun: ['ramp-up', 'measure', 'after-window', 'ramp-down'].includes(phase),
    guestSeqFirst: 0,
    guestSeqLast: 0,
    truthMs: 1000,
    oursMs: 1000,
    truthWrites: truthPages,
    truthPages,
    oursWorkloadPages: oursW,
    oursWorkloadLow: oursW,
    oursWorkloadHigh: oursW,
    missedPages: 0,
    extraPages: 0,
    oursWholePages: oursWhole,
    oursWholeLow: oursWhole,
    oursWholeHigh: oursWhole,
    scanUs: 50_000,
    scanCpuUs: 40_000,
    bytesRead: 100e6,
    lagMs: 5,
    ...extra,
  };
}

const facts: AccuracyRunFacts = {
  askedRatePagesPerSec: 1000,
  mode: 'exact',
  sampleFraction: null,
  seconds: 2,
  intervalMs: 1000,
  bufferPages: 4096,
  hotPages: 4096,
  pattern: 'uniform',
  pagesTotal: 65536,
  ramBytes: 256 * 1024 * 1024,
  hashImpl: 'avx2',
  truthWindowPages: 1800,
  runUnionMissedPages: 0,
  runUnionExtraPages: 2,
  oursWindowWorkloadPages: 1790,
  oursWindowWholePages: 1900,
  qemu: { tStartMs: 0, tEndMs: 2000, dirtyRateMiBPerSec: 3, calcTimeS: 2, samplePagesPerGiB: 512, mode: 'page-sampling' },
};

test('summarizeAccuracy: rates over the window only, errors, idle background, QEMU in pages/s', () => {
  const pairs = [
    pair('settle', 0, 50, 900), // excluded: would wreck every figure
    pair('idle-before', 0, 0, 40),
    pair('ramp-up', 500, 520, 560, { scanUs: 120_000 }),
    pair('measure', 1000, 990, 1050, { truthMs: 1000, oursMs: 990, missedPages: 12, extraPages: 2, lagMs: 4 }),
    pair('measure', 960, 980, 1020, { truthMs: 1010, oursMs: 1010, truthWrites: 1010, missedPages: 3, extraPages: 23, lagMs: 7, scanUs: 70_000 }),
    pair('after-window', 1000, 1000, 1050),
    pair('ramp-down', 200, 180, 230),
    pair('idle-after', 0, 0, 60),
  ];
  const r = summarizeAccuracy(pairs, facts);
  assert.equal(r.intervals, 2);
  assert.ok(Math.abs(r.truthPagesPerSec - 1960 / 2.01) < 1e-9);
  assert.ok(Math.abs(r.oursPagesPerSec - 1970 / 2.0) < 1e-9);
  assert.ok(Math.abs(r.oursErrorPct! - (100 * (985 - 1960 / 2.01)) / (1960 / 2.01)) < 1e-9);
  assert.ok(Math.abs(r.workload.writesPerSec - 1000) < 1e-9); // 2010 writes in 2010 ms
  assert.equal(r.rateReached, true);
  // Interval 2: ours 980 scaled to the truth's 1010 ms = 980, truth 960: +2.083 %.
  assert.ok(Math.abs(r.workload.maxIntervalErrorPct! - (100 * 20) / 960) < 1e-9);
  assert.equal(r.workload.missedPages, 15);
  assert.equal(r.workload.extraPages, 25);
  assert.equal(r.workload.truthWindowPagesPerSec, 900);
  assert.equal(r.workload.oursWindowPagesPerSec, 895);
  assert.equal(r.idle.beforePagesPerSec, 40);
  assert.equal(r.idle.afterPagesPerSec, 60);
  assert.equal(r.whole.idleBackgroundPagesPerSec, 50);
  assert.ok(Math.abs(r.whole.oursPagesPerSec - 1035) < 1e-9);
  assert.ok(Math.abs(r.whole.oursErrorPct! - (100 * (1035 - 50 - r.truthPagesPerSec)) / r.truthPagesPerSec) < 1e-9);
  // QEMU: 3 MiB/s = 768 pages/s, against the truth and against our count of its own estimand.
  assert.equal(r.qemuSamplingPagesPerSec, 768);
  assert.ok(Math.abs(r.qemuErrorPct! - (100 * (768 - r.truthPagesPerSec)) / r.truthPagesPerSec) < 1e-9);
  assert.equal(r.whole.oursWindowPagesPerSec, 950);
  assert.ok(Math.abs(r.whole.qemuErrorPct! - (100 * (768 - 950)) / 950) < 1e-9);
  assert.equal(r.whole.qemuSampledPages, 128);
  assert.ok(Math.abs(r.scanGBps - 200e6 / 0.12 / 1e9) < 1e-9); // 200e6 bytes in 50 + 70 ms of scans
  assert.equal(r.cpuPercent, 4); // 80 ms of CPU in 2000 ms
  assert.equal(r.alignment.lagSpreadMs, 3);
  // The window's edges are the scans closing ramp-up and the last window interval.
  assert.deepEqual(r.alignment.edgeScanMs, [120, 70]);
  assert.equal(r.alignment.edgeBoundPct, (100 * 120) / 2000);
  assert.equal(r.alignment.maxScanMs, 120);
  assert.equal(r.alignment.disturbed, false);
  // The run: ramp-up .. ramp-down, idle intervals (and the settling one) left out.
  assert.equal(r.workload.runTruthPages, 500 + 1000 + 960 + 1000 + 200);
  assert.equal(r.workload.runOursPages, 520 + 990 + 980 + 1000 + 180);
  assert.ok(Math.abs(r.workload.runErrorPct! - (100 * 10) / 3660) < 1e-9);
  assert.deepEqual([r.workload.runUnionMissedPages, r.workload.runUnionExtraPages], [0, 2]);
  assert.equal(r.idle.workloadPagesChanged, 0);
  assert.deepEqual(r.notes, []);
  // A window whose reports came late covers more guest time than QEMU's: said so.
  const late = summarizeAccuracy([pair('measure', 10, 10, 10, { truthMs: 2600 })], facts);
  assert.match(late.notes.join('\n'), /span 2600 ms of guest time, QEMU's 2000 ms/);
  // A stalled scan at a window edge (over a quarter interval) marks the run disturbed; inside the window it does not.
  const stalled = summarizeAccuracy([pair('ramp-up', 10, 10, 10, { scanUs: 1_957_000 }), pair('measure', 10, 10, 10)], facts);
  assert.equal(stalled.alignment.disturbed, true);
  assert.match(stalled.notes.join('\n'), /disturbed: a scan at a window edge took 1957 ms/);
  const inside = summarizeAccuracy([pair('ramp-up', 10, 10, 10), pair('measure', 10, 10, 10, { scanUs: 600_000 }), pair('measure', 10, 10, 10)], facts);
  assert.deepEqual([inside.alignment.disturbed, inside.alignment.maxScanMs], [false, 600]);
});

test('summarizeAccuracy: rate not reached, workload pages changing while idle, merged scans and the sampled bound are reported', () => {
  const r = summarizeAccuracy(
    [
      pair('idle-before', 0, 3, 40),
      pair('measure', 600, 640, 700, { oursWorkloadLow: 580, oursWorkloadHigh: 700, guestSeqFirst: 4, guestSeqLast: 5 }),
      pair('measure', 620, 560, 600, { oursWorkloadLow: 500, oursWorkloadHigh: 610 }),
    ],
    { ...facts, mode: 'sampled', sampleFraction: 0.1, oursWindowWorkloadPages: null, oursWindowWholePages: null },
  );
  assert.equal(r.rateReached, false);
  assert.match(r.notes.join('\n'), /asked rate not reached: the workload made 610 writes\/s of the 1000/);
  assert.match(r.notes.join('\n'), /1 scans each covered several guest reports/);
  assert.equal(r.alignment.mergedIntervals, 1);
  // Sampled: no "changed while idle" check (estimates), no window figures.
  assert.equal(r.idle.workloadPagesChanged, 0);
  assert.equal(r.whole.oursWindowPagesPerSec, null);
  assert.equal(r.whole.qemuErrorPct, null);
  assert.deepEqual(r.workload.bound, { lowPagesPerSec: 540, highPagesPerSec: 655, truthWithin: true, intervalsCovered: 1, intervals: 2 });
  const exact = summarizeAccuracy([pair('idle-after', 0, 3, 40), pair('measure', 10, 10, 10)], facts);
  assert.equal(exact.idle.workloadPagesChanged, 3);
  assert.match(exact.notes.join('\n'), /3 workload pages changed while the workload was stopped/);
  assert.throws(() => summarizeAccuracy([pair('idle-after', 0, 0, 40)], facts), /no paired interval in the measurement window/);
});

test('checkAccuracyOptions: RangeError naming the option and its range', () => {
  const bad: [Parameters<typeof checkAccuracyOptions>[0], number, RegExp][] = [
    [{ ratePagesPerSec: 0 }, 256, /ratePagesPerSec: must be a number from 1 to 1000000 pages\/s/],
    [{ ratePagesPerSec: 100, seconds: 61 }, 256, /seconds: must be an integer from 1 to 60 s/],
    [{ ratePagesPerSec: 100 }, 96, /guestMib: must be an integer from 128 to 8192/],
    [{ ratePagesPerSec: 100, bufferMib: 200 }, 256, /bufferMib: must be an integer from 1 to 192 MiB \(guest RAM 256 MiB − 64\)/],
    [{ ratePagesPerSec: 100, bufferMib: 16, hotPages: 4097 }, 256, /hotPages: must be an integer from 0 to 4096 pages/],
    [{ ratePagesPerSec: 100, intervalMs: 300, seconds: 8 }, 256, /intervalMs: must divide the window/],
    [{ ratePagesPerSec: 100, sampleFraction: 0.2 }, 256, /sampleFraction: only applies to mode 'sampled'/],
    [{ ratePagesPerSec: 100, mode: 'sampled', sampleFraction: 0 }, 256, /sampleFraction: must be a number with 0 < f <= 1/],
    [{ ratePagesPerSec: 100, qemuSamplePagesPerGiB: 100 }, 256, /qemuSamplePagesPerGiB: must be an integer from 128 to 16384/],
  ];
  for (const [o, guestMib, re] of bad) assert.throws(() => checkAccuracyOptions(o, guestMib), (e: unknown) => e instanceof RangeError && re.test(e.message), re.source);
  checkAccuracyOptions({ ratePagesPerSec: 50_000, bufferMib: 192, hotPages: 49152, mode: 'sampled', sampleFraction: 0.05, intervalMs: 250 }, 256);
});

test('dpa lab accuracy: bad options exit 2 naming the flag, before any VM starts', async () => {
  const run = async (argv: string[]): Promise<[number, string]> => {
    let err = '';
    const code = await runCli(argv, { out: () => {}, err: (t) => (err += t), isTTY: false, signal: new AbortController().signal });
    return [code, err];
  };
  const started = Date.now();
  assert.deepEqual(await run(['lab', 'accuracy']), [2, 'dpa lab accuracy: --rate is required: a number from 1 to 1000000\n']);
  const [code, err] = await run(['lab', 'accuracy', '--rate', '100', '--buffer-mib', '300']);
  assert.equal(code, 2);
  assert.match(err, /bufferMib: must be an integer from 1 to 192 MiB/);
  assert.equal((await run(['lab', 'accuracy', '--rate', '100', '--sample-fraction', '0.5']))[0], 2);
  assert.ok(Date.now() - started < 2000, 'no VM was booted');
});
