/**
 * How right are the dirty rates we measure? A lab VM's workload writes pages at a known rate and
 * reports exactly which pages it wrote in every interval; the guest-memory collector
 * (src/sources/guest-memory.ts) and QEMU's own `calc-dirty-rate` (page-sampling) measure the
 * same guest over the same window, and both are compared with that truth.
 *
 * Definitions (docs/BENCHMARKS.md "Accuracy vs QEMU" has the measured figures):
 *
 * - Interval: the workload reports every `intervalMs` of GUEST time (`reports`, with page sets).
 *   Our scans are not on their own timer here: each guest report triggers one scan (manual
 *   mode), so interval k of the collector spans (about) the same time as the guest's interval k.
 *   The guest's boundary reaches the host a few ms late (virtio-serial), and a scan reads pages
 *   over its own duration, so the boundaries differ by that lag; a page written in that sliver
 *   moves to the neighbouring interval on our side (`missedPages`/`extraPages` count these).
 *   If a guest report arrives while the previous scan is still running, no scan is started and
 *   the next scan covers both guest intervals; its truth is the union of both page sets
 *   (`mergedIntervals`). So both sides always count at the same granularity.
 * - Truth: distinct workload pages written in an interval (the union of the interval's page set),
 *   summed over the window's intervals and divided by the summed guest interval lengths:
 *   pages/s at `intervalMs` granularity. The asked rate is page WRITES per second; with a hot
 *   set a page is often written twice in one interval and counts once, so truth < asked rate is
 *   expected; `workload.writesPerSec` is the achieved write rate, and `rateReached` is false when
 *   it fell below 95% of the asked rate (TCG cannot run the workload arbitrarily fast).
 * - Window and run: the rates are over the window (QEMU's calc-time, whole intervals counted in
 *   guest time). Its two edges are boundaries where the workload is writing, so the boundary lag
 *   moves pages across them: in at one edge, out at the other, cancelling when the scans at both
 *   edges reach the workload's pages equally late (`alignment.edgeScanMs`; the difference is at
 *   most max(edgeScanMs) / window = `alignment.edgeBoundPct`, e.g. 2.5% for 200 ms scans and
 *   8 s; a host stall at an edge makes the run `disturbed`). `workload.runErrorPct` compares the
 *   sums over the whole run instead: workload start to stop, bounded by idle intervals, and the
 *   workload is started and stopped only once the boundary's scan finished, so no write can be
 *   counted outside the run on either side. What is left is the counting error plus pages
 *   rewritten across a shifted boundary (one interval's distinct page on one side, two on the
 *   other); the workload stops as far before the end of its last interval as it started after
 *   the start of its first, so those shifts balance at the run's two ends as well.
 *   `runUnionMissedPages`/`runUnionExtraPages` compare the run page by page (a set, so no
 *   boundary matters): written but never seen changed / seen changed but never written.
 * - Ours: pages whose content changed between two scans (exact mode: all pages compared).
 *   A page written twice in an interval is one changed page, as in the truth. The workload
 *   stores a generation counter and a function of it in every word of a page it writes
 *   (guest/PROTOCOL.md "Data layout"), so every write changes the content: rewrites with
 *   identical content, which we would not count, do not happen in this workload.
 *   Over the workload's pages: our bitmap is restricted to the RAM pages holding the workload's
 *   buffer (its GPAs from `report-gpa`, mapped to RAM offsets by guest-ram.ts), so the guest
 *   kernel's own writes do not count against us. Over the whole guest: everything we see,
 *   including the kernel; `idleBackgroundPagesPerSec` is that rate with the workload stopped
 *   (before and after), and `whole.oursErrorPct` compares ours minus that background with the
 *   truth (an approximation: the kernel's activity is not the same with the workload running).
 * - Sampled mode: our estimate over the workload's pages is the Horvitz-Thompson sum of the
 *   sampled workload pages found changed, each weighted by its stratum's N_h / n_h (as the
 *   scanner weights the whole region); its stated bound is the scanner's own 95% interval
 *   (dirtyPagesInterval) applied to the workload's pages with the expected number of them in the
 *   sample. `bound.intervalsCovered` counts intervals whose truth lies inside; the window's
 *   bound sums the per-interval bounds (conservative: the sample is shared by successive scans).
 * - QEMU: `calc-dirty-rate` page-sampling (never dirty-bitmap: it crashes QEMU 7.2 under TCG)
 *   with calc-time = `seconds`, started right at a guest interval boundary, so its window is
 *   the `seconds × 1000 / intervalMs` intervals we compare. QEMU hashes a random sample of
 *   pages (sample-pages per GiB of each RAM block) at the start and at the end and reports
 *   changed/sampled × block MiB / seconds as a whole number of MiB/s (integer division: one
 *   unit is 256 pages/s, so it reads 0 below that). It counts each page once over the whole
 *   window, so it estimates distinct pages per `seconds`, not per interval: with a hot set much
 *   smaller than rate × seconds it is low even without sampling error. `whole.oursWindowPagesPerSec`
 *   is our exact count of that same quantity (distinct pages over QEMU's window), and
 *   `whole.qemuErrorPct` compares QEMU with it, isolating the sampling error; the top-level
 *   `qemuErrorPct` compares QEMU with the workload's truth, as `oursErrorPct` does ours.
 * - scanGBps: bytes our scans read per second of scan wall time; cpuPercent: the scan thread's
 *   CPU time over the window's wall time.
 */
import { performance } from 'node:perf_hooks';
import { andNot, count, orInto } from '../bitmap';
import { QmpCollector, type DirtyRateSample } from '../sources/qmp-collector';
import { dirtyPagesInterval, openGuestMemory, type GuestMemoryInterval, type GuestMemorySource } from '../sources/guest-memory';
import { buildGuestImage, type GuestImage } from './guest-image';
import { decodePageSet, expandGpaRuns, GUEST_PAGE_BYTES, type AccessPattern, type GpaReport, type GuestIntervalEvent } from './guest-protocol';
import { gpaToRamOffset } from './guest-ram';
import { LabVm } from './vm';

const MiB = 1024 * 1024;
const PAGES_PER_MIB = MiB / GUEST_PAGE_BYTES;
/** Guest RAM the kernel and initramfs keep, MiB (the buffer must fit beside it). */
const GUEST_RESERVED_MIB = 64;
/** Below this fraction of the asked write rate, `rateReached` is false. */
const RATE_REACHED_FRACTION = 0.95;

/** Option ranges, checked before anything starts. */
export const ACCURACY_LIMITS = {
  ratePagesPerSec: { min: 1, max: 1_000_000 },
  seconds: { min: 1, max: 60 },
  bufferMib: { min: 1, max: 4096 },
  /** QEMU 7.2's page sampling skips RAM blocks under 128 MiB (platform facts). */
  guestMib: { min: 128, max: 8192 },
  intervalMs: { min: 100, max: 10_000 },
  idleSeconds: { min: 0, max: 60 },
  strataPages: { min: 64, max: 65536 },
  qemuSamplePagesPerGiB: { min: 128, max: 16384 },
  vcpus: { min: 1, max: 8 },
} as const;

export interface AccuracyOptions {
  /** Page writes per second the workload is asked for (1..1e6). */
  ratePagesPerSec: number;
  /** Pages of the buffer the workload writes to (0 = the whole buffer; default 0). */
  hotPages?: number;
  /** The measurement window, whole seconds (1..60; it is QEMU's calc-time; default 8). */
  seconds?: number;
  /** Workload buffer, MiB (1..4096, at most guest RAM − 64; default 64). */
  bufferMib?: number;
  /** Interval of the truth and of our scans, ms (100..10000; default 1000). */
  intervalMs?: number;
  /** Idle time before and after the workload, for the background rate, s (0..60; default 2). */
  idleSeconds?: number;
  /** Our collector's mode (default 'exact'). */
  mode?: 'exact' | 'sampled';
  /** Sampled mode: fraction of pages per stratum, 0 < f ≤ 1 (default 0.1). */
  sampleFraction?: number;
  /** Sampled mode: pages per stratum (64..65536; default 512). */
  strataPages?: number;
  /** Workload access pattern (default 'uniform'). */
  pattern?: AccessPattern;
  /** Workload PRNG seed (integer 0..2^53-1; default 1). */
  seed?: number;
  /** calc-dirty-rate sample-pages per GiB (128..16384; default QEMU's 512). */
  qemuSamplePagesPerGiB?: number;
  signal?: AbortSignal;
  /** Progress lines (phases), for a CLI's stderr. */
  onProgress?: (message: string) => void;
  /** Put every paired interval into the report (`pairs`). */
  includeIntervals?: boolean;
}

export interface LabAccuracyOptions extends AccuracyOptions {
  /** Guest RAM, MiB (128..8192; default 256). ≥ 128 MiB: QEMU samples no smaller RAM block. */
  guestMib?: number;
  /** vCPUs (1..8; default 1). */
  vcpus?: number;
  qemuBinary?: string;
  guest?: GuestImage;
}

/** Which part of the run an interval belongs to; only 'measure' intervals make the figures. */
export type AccuracyPhase = 'settle' | 'idle-before' | 'ramp-up' | 'measure' | 'after-window' | 'ramp-down' | 'idle-after' | 'mixed';

/** One of our scans paired with the guest interval(s) it covers. Counts are 4 KiB pages. */
export interface PairedInterval {
  phase: AccuracyPhase;
  /** The workload wrote (or may have written) in this interval: ramp-up through ramp-down. */
  inRun: boolean;
  /** Guest report seqs covered (first..last; last > first when reports were merged). */
  guestSeqFirst: number;
  guestSeqLast: number;
  /** Guest-timed length of the covered interval(s), ms. */
  truthMs: number;
  /**
   * Host-timed length of our interval, ms: from the request of the previous scan to this one's
   * (our boundaries; a scan's end time varies with its duration, its start does not).
   */
  oursMs: number;
  /** Page writes the workload made. */
  truthWrites: number;
  /** Distinct workload pages written (union of the page sets). */
  truthPages: number;
  /** Ours over the workload's pages: exact count, or the sampled estimate. */
  oursWorkloadPages: number;
  /** Stated 95% bound of oursWorkloadPages (equal to it in exact mode). */
  oursWorkloadLow: number;
  oursWorkloadHigh: number;
  /** Exact mode: truth pages we did not see changed / workload pages we saw changed that the truth lacks. */
  missedPages: number;
  extraPages: number;
  /** Ours over the whole guest RAM (exact count or the scanner's estimate) and its bound. */
  oursWholePages: number;
  oursWholeLow: number;
  oursWholeHigh: number;
  scanUs: number;
  scanCpuUs: number;
  bytesRead: number;
  /** Host receive time of the guest report minus its guest timestamp, ms (offset + channel lag). */
  lagMs: number;
}

export interface AccuracyReport {
  /** Headline figures: over the workload's pages, at intervalMs granularity. */
  askedRatePagesPerSec: number;
  truthPagesPerSec: number;
  oursPagesPerSec: number;
  /** 100 × (ours − truth) / truth; null when the truth is 0. */
  oursErrorPct: number | null;
  /** QEMU's whole-guest figure, pages/s. */
  qemuSamplingPagesPerSec: number;
  /** 100 × (qemu − truth) / truth (QEMU includes the guest kernel's pages; see whole). */
  qemuErrorPct: number | null;
  /** Bytes read per second of scan wall time, GB/s (1e9). */
  scanGBps: number;
  /** Scan thread CPU over the window's wall time, % of one core. */
  cpuPercent: number;
  /** Achieved write rate ≥ 95% of the asked one. */
  rateReached: boolean;
  mode: 'exact' | 'sampled';
  sampleFraction: number | null;
  /** QEMU's calc-time = our window, s. */
  seconds: number;
  intervalMs: number;
  /** Paired intervals in the window. */
  intervals: number;
  /** Length of the window on the host clock, ms. */
  windowMs: number;
  workload: {
    bufferPages: number;
    hotPages: number;
    pattern: AccessPattern;
    /** Page writes per second achieved (guest counters). */
    writesPerSec: number;
    truthPagesPerSec: number;
    oursPagesPerSec: number;
    oursErrorPct: number | null;
    /** Largest |error| of a single interval, % of its truth (intervals with truth > 0). */
    maxIntervalErrorPct: number | null;
    /**
     * Over the whole run (every interval from the workload's start to its stop, bounded by idle
     * intervals, so no write can be counted outside it on either side): summed distinct pages
     * per interval, truth and ours, and 100 × (ours − truth) / truth. The window's error adds
     * the boundary lag at its two edges to this.
     */
    runTruthPages: number;
    runOursPages: number;
    runErrorPct: number | null;
    /**
     * Page by page over the whole run (exact mode; null in sampled): workload pages written at
     * least once that we never saw change, and ones we saw change that were never written.
     * Both must be 0 for a collector that misses no content change and invents none.
     */
    runUnionMissedPages: number | null;
    runUnionExtraPages: number | null;
    /** Summed over the window (exact mode; 0 in sampled mode). */
    missedPages: number;
    extraPages: number;
    /** Distinct workload pages over the whole window / seconds: QEMU's granularity. */
    truthWindowPagesPerSec: number;
    /** Ours at that granularity (exact mode; null in sampled mode). */
    oursWindowPagesPerSec: number | null;
    /** Sampled mode: the stated bound over the window and how often the truth was inside it. */
    bound: { lowPagesPerSec: number; highPagesPerSec: number; truthWithin: boolean; intervalsCovered: number; intervals: number } | null;
  };
  whole: {
    pagesTotal: number;
    oursPagesPerSec: number;
    /** Distinct guest pages changed over QEMU's window / seconds (exact mode; null in sampled). */
    oursWindowPagesPerSec: number | null;
    idleBackgroundPagesPerSec: number | null;
    /** 100 × (ours − idle background − truth) / truth. */
    oursErrorPct: number | null;
    qemuSamplingPagesPerSec: number;
    qemuMiBPerSec: number;
    /** 100 × (qemu − oursWindow) / oursWindow: QEMU's sampling error on its own estimand. */
    qemuErrorPct: number | null;
    qemuCalcTimeS: number;
    qemuSamplePagesPerGiB: number;
    /** Pages QEMU hashes: floor(RAM bytes × sample-pages / 1 GiB). */
    qemuSampledPages: number;
  };
  idle: {
    beforePagesPerSec: number | null;
    afterPagesPerSec: number | null;
    /** Workload pages we saw change while the workload was stopped (should be 0; exact mode). */
    workloadPagesChanged: number;
    intervals: number;
  };
  scanner: {
    hashImpl: string;
    meanScanMs: number;
    bytesReadPerScan: number;
    /** Bytes per CPU-second of the scan thread, GB/s. */
    scanCpuGBps: number;
  };
  alignment: {
    /** Spread (max − min) of lagMs over the window: how steadily our boundaries follow the guest's, ms. */
    lagSpreadMs: number;
    /**
     * Our scans that covered more than one guest report (reports came closer together than a
     * scan took: a slow scan, or a late guest report followed by a punctual one). Each is
     * compared with the union of those reports' page sets; one straddling two phases is left
     * out of the window (the window then has fewer intervals than QEMU's, and a note says so).
     */
    mergedIntervals: number;
    /**
     * Scan durations at the window's start and end boundaries, ms. A page is attributed by the
     * time the scan reads it, up to this much after the boundary; the window's error from its
     * edges is at most rate × |difference of those lags|, i.e. ≲ max(edgeScanMs) / window.
     */
    edgeScanMs: [number, number];
    /** 100 × max(edgeScanMs) / windowMs: how much of the window's error the edges can explain, at most. */
    edgeBoundPct: number;
    /** Longest scan during the run, ms. */
    maxScanMs: number;
    /**
     * A scan at a window edge took longer than a quarter of an interval: the host stalled the
     * scanner there, and the window's figures carry that lag. (A slow scan inside the window only
     * moves pages between two intervals of the window: the totals keep them.)
     */
    disturbed: boolean;
  };
  notes: string[];
  /** Every paired interval of the run, in order (with `includeIntervals`). */
  pairs?: PairedInterval[];
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

function checkNum(name: string, v: unknown, min: number, max: number, integer: boolean, unit = ''): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}${unit} (got ${String(v)})`);
  }
}

/** Throws RangeError/TypeError naming the first bad option; `guestMib` is the VM's RAM. */
export function checkAccuracyOptions(o: AccuracyOptions, guestMib: number): void {
  if (typeof o !== 'object' || o === null) throw new TypeError('options: must be an object');
  const L = ACCURACY_LIMITS;
  if (o.ratePagesPerSec === undefined) throw new RangeError(`ratePagesPerSec: required, a number from ${L.ratePagesPerSec.min} to ${L.ratePagesPerSec.max} pages/s`);
  checkNum('ratePagesPerSec', o.ratePagesPerSec, L.ratePagesPerSec.min, L.ratePagesPerSec.max, false, ' pages/s');
  checkNum('seconds', o.seconds, L.seconds.min, L.seconds.max, true, ' s');
  checkNum('guestMib', guestMib, L.guestMib.min, L.guestMib.max, true, ' MiB');
  const maxBuffer = Math.min(L.bufferMib.max, guestMib - GUEST_RESERVED_MIB);
  checkNum('bufferMib', o.bufferMib, L.bufferMib.min, maxBuffer, true, ` MiB (guest RAM ${guestMib} MiB − ${GUEST_RESERVED_MIB})`);
  const bufferPages = (o.bufferMib ?? Math.min(64, maxBuffer)) * PAGES_PER_MIB;
  checkNum('hotPages', o.hotPages, 0, bufferPages, true, ' pages (0 = the whole buffer)');
  checkNum('intervalMs', o.intervalMs, L.intervalMs.min, L.intervalMs.max, true, ' ms');
  checkNum('idleSeconds', o.idleSeconds, L.idleSeconds.min, L.idleSeconds.max, false, ' s');
  checkNum('strataPages', o.strataPages, L.strataPages.min, L.strataPages.max, true, ' pages');
  checkNum('qemuSamplePagesPerGiB', o.qemuSamplePagesPerGiB, L.qemuSamplePagesPerGiB.min, L.qemuSamplePagesPerGiB.max, true);
  checkNum('seed', o.seed, 0, Number.MAX_SAFE_INTEGER, true);
  if (o.mode !== undefined && o.mode !== 'exact' && o.mode !== 'sampled') throw new RangeError(`mode: must be exact or sampled (got ${String(o.mode)})`);
  if (o.sampleFraction !== undefined) {
    if (typeof o.sampleFraction !== 'number' || !(o.sampleFraction > 0 && o.sampleFraction <= 1)) {
      throw new RangeError(`sampleFraction: must be a number with 0 < f <= 1 (got ${String(o.sampleFraction)})`);
    }
    if ((o.mode ?? 'exact') !== 'sampled') throw new RangeError(`sampleFraction: only applies to mode 'sampled'`);
  }
  if (o.strataPages !== undefined && (o.mode ?? 'exact') !== 'sampled') throw new RangeError(`strataPages: only applies to mode 'sampled'`);
  if (o.pattern !== undefined && !['uniform', 'sequential', 'zipf'].includes(o.pattern)) {
    throw new RangeError(`pattern: must be one of uniform, sequential, zipf (got ${String(o.pattern)})`);
  }
  const intervalMs = o.intervalMs ?? 1000;
  if (((o.seconds ?? 8) * 1000) % intervalMs !== 0) {
    throw new RangeError(`intervalMs: must divide the window (seconds × 1000 = ${(o.seconds ?? 8) * 1000} ms) so QEMU's window holds whole intervals (got ${intervalMs})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Page mapping and the sampled estimate over a subset (pure; unit-tested)
// ---------------------------------------------------------------------------------------------

/**
 * RAM page index (= RAM offset / 4096, the guest-memory scanner's page index) of every buffer
 * page, from the workload's GPA report. Throws when a buffer page has no frame or its GPA is not
 * in RAM or beyond `pagesTotal`.
 */
export function ramPagesOfBuffer(report: GpaReport, layout: { lowRamBytes: number; highRamBytes: number }, pagesTotal: number): Uint32Array {
  if (report.pageBytes !== GUEST_PAGE_BYTES) throw new RangeError(`report.pageBytes: must be ${GUEST_PAGE_BYTES} (got ${report.pageBytes})`);
  const gpas = expandGpaRuns(report);
  const out = new Uint32Array(report.pages);
  for (let i = 0; i < gpas.length; i++) {
    const gpa = gpas[i]!;
    if (Number.isNaN(gpa)) throw new RangeError(`buffer page ${i} has no guest-physical frame (unmappedPages ${report.unmappedPages})`);
    const page = gpaToRamOffset(gpa, layout) / GUEST_PAGE_BYTES;
    if (page >= pagesTotal) throw new RangeError(`buffer page ${i}: RAM page ${page} is beyond the scanned ${pagesTotal} pages`);
    out[i] = page;
  }
  return out;
}

/** Bitmap (scanner format: page p is bit p % 8 of byte p / 8) of the given RAM pages; `bytes` long. */
export function pagesBitmap(pages: ArrayLike<number>, bytes: number): Uint8Array {
  const bits = new Uint8Array(bytes);
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i]!;
    bits[p >> 3]! |= 1 << (p & 7);
  }
  return bits;
}

/**
 * Sets in `out` (cleared first) the RAM pages of the buffer pages set in `bufferBits` (the
 * workload's pageSet format: bit i % 8 of byte i / 8 is buffer page i). Returns how many.
 */
export function bufferBitsToRam(bufferBits: Uint8Array, ramPageOf: Uint32Array, out: Uint8Array): number {
  out.fill(0);
  let n = 0;
  const limit = Math.min(bufferBits.length, Math.ceil(ramPageOf.length / 8));
  for (let byte = 0; byte < limit; byte++) {
    let b = bufferBits[byte]!;
    while (b) {
      const bit = 31 - Math.clz32(b & -b);
      b &= b - 1;
      const i = byte * 8 + bit;
      if (i >= ramPageOf.length) break;
      const p = ramPageOf[i]!;
      out[p >> 3]! |= 1 << (p & 7);
      n++;
    }
  }
  return n;
}

/**
 * The scanner's stratified sample, seen from a subset of pages: per-page weight N_h / n_h (what
 * the scanner gives each sampled page of stratum h, native/guestmem/scanner.cc DrawSample) and
 * the expected number of the subset's pages in a sample.
 */
export class StratifiedSubset {
  /** Weight of a sampled page of each stratum. */
  readonly weights: Float64Array;
  /** Expected sampled pages of the subset: Σ over its pages of n_h / N_h. */
  readonly expectedSampled: number;

  constructor(
    readonly pagesTotal: number,
    readonly strataPages: number,
    readonly sampleFraction: number,
    readonly subset: Uint32Array,
  ) {
    const strata = Math.ceil(pagesTotal / strataPages);
    this.weights = new Float64Array(strata);
    for (let h = 0; h < strata; h++) {
      const Nh = Math.min(strataPages, pagesTotal - h * strataPages);
      const nh = Math.min(Nh, Math.max(1, roundHalfAway(sampleFraction * Nh)));
      this.weights[h] = Nh / nh;
    }
    let e = 0;
    for (let i = 0; i < subset.length; i++) e += 1 / this.weights[Math.floor(subset[i]! / strataPages)]!;
    this.expectedSampled = e;
  }

  /**
   * The estimate of the subset's changed pages from a sampled interval's bitmap (bits only for
   * sampled pages found changed; at most the subset's size), with the scanner's 95% interval
   * applied to the subset.
   */
  estimate(bitmap: Uint8Array): { estimate: number; observed: number; low: number; high: number } {
    let estimate = 0;
    let observed = 0;
    for (let i = 0; i < this.subset.length; i++) {
      const p = this.subset[i]!;
      if ((bitmap[p >> 3]! >> (p & 7)) & 1) {
        observed++;
        estimate += this.weights[Math.floor(p / this.strataPages)]!;
      }
    }
    // Weights are set for whole strata: a subset's sum can exceed the subset, which cannot.
    estimate = Math.min(estimate, this.subset.length);
    const bound = dirtyPagesInterval(this.subset.length, Math.max(observed, Math.round(this.expectedSampled)), estimate, observed);
    return { estimate, observed, ...bound };
  }
}

/** C's llround: halves away from zero (Math.round rounds them up; equal for positive values). */
function roundHalfAway(x: number): number {
  return Math.sign(x) * Math.round(Math.abs(x));
}

// ---------------------------------------------------------------------------------------------
// Summary (pure; unit-tested)
// ---------------------------------------------------------------------------------------------

/** What summarizeAccuracy needs besides the paired intervals. */
export interface AccuracyRunFacts {
  askedRatePagesPerSec: number;
  mode: 'exact' | 'sampled';
  sampleFraction: number | null;
  seconds: number;
  intervalMs: number;
  bufferPages: number;
  hotPages: number;
  pattern: AccessPattern;
  pagesTotal: number;
  ramBytes: number;
  hashImpl: string;
  /** Distinct workload pages over the window's intervals (union of the truth). */
  truthWindowPages: number;
  /**
   * Exact mode: workload pages written during the run that we never saw change, and workload
   * pages we saw change that were not written (over the run's unions); null in sampled mode.
   */
  runUnionMissedPages: number | null;
  runUnionExtraPages: number | null;
  /** Exact mode: distinct workload / whole-guest pages we saw change over the window; null in sampled mode. */
  oursWindowWorkloadPages: number | null;
  oursWindowWholePages: number | null;
  qemu: DirtyRateSample;
}

const sum = (xs: readonly PairedInterval[], f: (p: PairedInterval) => number): number => xs.reduce((s, p) => s + f(p), 0);
const pct = (value: number, reference: number): number | null => (reference > 0 ? (100 * (value - reference)) / reference : null);
const perSec = (pages: number, ms: number): number => (ms > 0 ? (pages * 1000) / ms : 0);

/** Scan duration of pairs[i] in ms (the scan that closes it), 0 if none. */
function edgeScanMs(pairs: readonly PairedInterval[], i: number): number {
  return i >= 0 && i < pairs.length ? pairs[i]!.scanUs / 1000 : 0;
}

/** Turns the paired intervals and run facts into the report (see the module comment for every definition). */
export function summarizeAccuracy(pairs: readonly PairedInterval[], f: AccuracyRunFacts): AccuracyReport {
  const win = pairs.filter((p) => p.phase === 'measure');
  const idleBefore = pairs.filter((p) => p.phase === 'idle-before');
  const idleAfter = pairs.filter((p) => p.phase === 'idle-after');
  const idle = [...idleBefore, ...idleAfter];
  const notes: string[] = [];
  if (win.length === 0) throw new Error('no paired interval in the measurement window');

  const truthMs = sum(win, (p) => p.truthMs);
  const oursMs = sum(win, (p) => p.oursMs);
  const truthPagesPerSec = perSec(sum(win, (p) => p.truthPages), truthMs);
  const oursPagesPerSec = perSec(sum(win, (p) => p.oursWorkloadPages), oursMs);
  const writesPerSec = perSec(sum(win, (p) => p.truthWrites), truthMs);
  const rateReached = writesPerSec >= RATE_REACHED_FRACTION * f.askedRatePagesPerSec;
  if (!rateReached) {
    notes.push(`asked rate not reached: the workload made ${writesPerSec.toFixed(0)} writes/s of the ${f.askedRatePagesPerSec} asked (guest vCPU too slow under TCG or starved)`);
  }
  const intervalErrors = win.filter((p) => p.truthPages > 0).map((p) => Math.abs(pct(p.oursWorkloadPages * (p.truthMs / Math.max(p.oursMs, 1e-9)), p.truthPages)!));
  const wholeOursPagesPerSec = perSec(sum(win, (p) => p.oursWholePages), oursMs);
  const idleMs = sum(idle, (p) => p.oursMs);
  const idleBackgroundPagesPerSec = idle.length ? perSec(sum(idle, (p) => p.oursWholePages), idleMs) : null;
  const windowS = f.seconds;
  const qemuPagesPerSec = f.qemu.dirtyRateMiBPerSec * PAGES_PER_MIB;
  const oursWindowWholePagesPerSec = f.oursWindowWholePages === null ? null : f.oursWindowWholePages / windowS;
  if (f.qemu.calcTimeS !== f.seconds) notes.push(`QEMU measured over ${f.qemu.calcTimeS} s, not the ${f.seconds} s asked (another calc-dirty-rate was running)`);

  let bound: AccuracyReport['workload']['bound'] = null;
  if (f.mode === 'sampled') {
    const low = perSec(sum(win, (p) => p.oursWorkloadLow), oursMs);
    const high = perSec(sum(win, (p) => p.oursWorkloadHigh), oursMs);
    bound = {
      lowPagesPerSec: low,
      highPagesPerSec: high,
      truthWithin: truthPagesPerSec >= low && truthPagesPerSec <= high,
      intervalsCovered: win.filter((p) => p.truthPages >= p.oursWorkloadLow && p.truthPages <= p.oursWorkloadHigh).length,
      intervals: win.length,
    };
  }
  const run = pairs.filter((p) => p.inRun);
  const runTruthPages = sum(run, (p) => p.truthPages);
  const runOursPages = sum(run, (p) => p.oursWorkloadPages);
  const windowGuestMs = sum(win, (p) => p.truthMs);
  if (Math.abs(windowGuestMs - f.seconds * 1000) > f.intervalMs / 2 + 50) {
    notes.push(`the window's intervals span ${windowGuestMs.toFixed(0)} ms of guest time, QEMU's ${f.seconds * 1000} ms (late guest reports)`);
  }
  const merged = pairs.filter((p) => p.guestSeqLast > p.guestSeqFirst).length;
  const edges: [number, number] = [edgeScanMs(pairs, pairs.indexOf(win[0]!) - 1), edgeScanMs(pairs, pairs.indexOf(win[win.length - 1]!))];
  const maxScanMs = Math.max(0, ...run.map((p) => p.scanUs / 1000));
  const disturbed = Math.max(...edges) > f.intervalMs / 4;
  if (disturbed) {
    notes.push(
      `disturbed: a scan at a window edge took ${Math.max(...edges).toFixed(0)} ms (interval ${f.intervalMs} ms); ` +
        'pages move across the window edges by up to that lag, so the window figures are unreliable: run again on a quieter host',
    );
  }
  if (merged) notes.push(`${merged} scans each covered several guest reports (reports came closer together than a scan took); each is compared with the union of their page sets`);
  const lags = win.map((p) => p.lagMs);
  const scanUs = sum(win, (p) => p.scanUs);
  const scanCpuUs = sum(win, (p) => p.scanCpuUs);
  const bytesRead = sum(win, (p) => p.bytesRead);
  const workloadPagesChanged = f.mode === 'exact' ? sum(idle, (p) => p.oursWorkloadPages) : 0;
  if (workloadPagesChanged) notes.push(`${workloadPagesChanged} workload pages changed while the workload was stopped`);
  return {
    askedRatePagesPerSec: f.askedRatePagesPerSec,
    truthPagesPerSec,
    oursPagesPerSec,
    oursErrorPct: pct(oursPagesPerSec, truthPagesPerSec),
    qemuSamplingPagesPerSec: qemuPagesPerSec,
    qemuErrorPct: pct(qemuPagesPerSec, truthPagesPerSec),
    scanGBps: scanUs > 0 ? bytesRead / scanUs / 1000 : 0,
    cpuPercent: oursMs > 0 ? (scanCpuUs / 1000 / oursMs) * 100 : 0,
    rateReached,
    mode: f.mode,
    sampleFraction: f.sampleFraction,
    seconds: f.seconds,
    intervalMs: f.intervalMs,
    intervals: win.length,
    windowMs: oursMs,
    workload: {
      bufferPages: f.bufferPages,
      hotPages: f.hotPages,
      pattern: f.pattern,
      writesPerSec,
      truthPagesPerSec,
      oursPagesPerSec,
      oursErrorPct: pct(oursPagesPerSec, truthPagesPerSec),
      maxIntervalErrorPct: intervalErrors.length ? Math.max(...intervalErrors) : null,
      runTruthPages,
      runOursPages,
      runErrorPct: pct(runOursPages, runTruthPages),
      runUnionMissedPages: f.runUnionMissedPages,
      runUnionExtraPages: f.runUnionExtraPages,
      missedPages: sum(win, (p) => p.missedPages),
      extraPages: sum(win, (p) => p.extraPages),
      truthWindowPagesPerSec: f.truthWindowPages / windowS,
      oursWindowPagesPerSec: f.oursWindowWorkloadPages === null ? null : f.oursWindowWorkloadPages / windowS,
      bound,
    },
    whole: {
      pagesTotal: f.pagesTotal,
      oursPagesPerSec: wholeOursPagesPerSec,
      oursWindowPagesPerSec: oursWindowWholePagesPerSec,
      idleBackgroundPagesPerSec,
      oursErrorPct: idleBackgroundPagesPerSec === null ? null : pct(wholeOursPagesPerSec - idleBackgroundPagesPerSec, truthPagesPerSec),
      qemuSamplingPagesPerSec: qemuPagesPerSec,
      qemuMiBPerSec: f.qemu.dirtyRateMiBPerSec,
      qemuErrorPct: oursWindowWholePagesPerSec === null ? null : pct(qemuPagesPerSec, oursWindowWholePagesPerSec),
      qemuCalcTimeS: f.qemu.calcTimeS,
      qemuSamplePagesPerGiB: f.qemu.samplePagesPerGiB,
      qemuSampledPages: Math.floor((f.ramBytes * f.qemu.samplePagesPerGiB) / (1024 * MiB)),
    },
    idle: {
      beforePagesPerSec: idleBefore.length ? perSec(sum(idleBefore, (p) => p.oursWholePages), sum(idleBefore, (p) => p.oursMs)) : null,
      afterPagesPerSec: idleAfter.length ? perSec(sum(idleAfter, (p) => p.oursWholePages), sum(idleAfter, (p) => p.oursMs)) : null,
      workloadPagesChanged,
      intervals: idle.length,
    },
    scanner: {
      hashImpl: f.hashImpl,
      meanScanMs: scanUs / 1000 / win.length,
      bytesReadPerScan: bytesRead / win.length,
      scanCpuGBps: scanCpuUs > 0 ? bytesRead / scanCpuUs / 1000 : 0,
    },
    alignment: {
      lagSpreadMs: Math.max(...lags) - Math.min(...lags),
      mergedIntervals: merged,
      edgeScanMs: edges,
      edgeBoundPct: oursMs > 0 ? (100 * Math.max(...edges)) / oursMs : 0,
      maxScanMs,
      disturbed,
    },
    notes,
  };
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('aborted');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal!));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Phases in which the workload runs (or is being started or stopped). */
const RUN_PHASES: ReadonlySet<AccuracyPhase> = new Set(['ramp-up', 'measure', 'after-window', 'ramp-down']);

interface PendingTruth {
  seqFirst: number;
  seqLast: number;
  truthMs: number;
  writes: number;
  phases: Set<AccuracyPhase>;
  lagMs: number;
}

/**
 * Pairs guest interval reports with scans: each report triggers one scan unless one is running,
 * in which case its page set waits for the next scan (union of both).
 */
class Pairer {
  readonly pairs: PairedInterval[] = [];
  /** The label the interval now running gets when it ends. */
  phase: AccuracyPhase = 'settle';
  /** Unions over the 'measure' intervals (RAM page space). */
  readonly truthWindow: Uint8Array;
  readonly oursWindowWhole: Uint8Array;
  private readonly truthRam: Uint8Array;
  private readonly oursW: Uint8Array;
  private readonly diff: Uint8Array;
  private readonly pendingBuffer: Uint8Array;
  private pending: PendingTruth | undefined;
  private scanning = false;
  private lastTriggerMs: number | undefined;
  /** Guest time reported so far, ms (sum of the reports' intervalMs). */
  guestMs = 0;
  /** When the last guest report arrived (performance.now() ms). */
  lastEventAtMs = 0;
  /** Unions over the run (ramp-up .. ramp-down): the truth, and ours on the workload's pages (exact mode). */
  readonly truthRun: Uint8Array;
  readonly oursRun: Uint8Array;
  private failed: Error | undefined;
  private readonly eventWaiters: (() => void)[] = [];
  private readonly scanWaiters: (() => void)[] = [];
  // Guest timestamps are its CLOCK_MONOTONIC; only the spread of (receive time − tMs) matters.
  private readonly epochMs = Date.now() - performance.now();

  constructor(
    private readonly source: GuestMemorySource,
    private readonly ramPageOf: Uint32Array,
    private readonly notWorkloadBits: Uint8Array,
    private readonly sampled: StratifiedSubset | undefined,
  ) {
    const bytes = source.bitmapBytes;
    this.truthWindow = new Uint8Array(bytes);
    this.oursWindowWhole = new Uint8Array(bytes);
    this.truthRam = new Uint8Array(bytes);
    this.truthRun = new Uint8Array(bytes);
    this.oursRun = new Uint8Array(bytes);
    this.oursW = new Uint8Array(bytes);
    this.diff = new Uint8Array(bytes);
    this.pendingBuffer = new Uint8Array(Math.ceil(ramPageOf.length / 8));
  }

  readonly onEvent = (ev: GuestIntervalEvent): void => {
    if (!ev.mem || ev.mem.pageSet === undefined || this.failed) return;
    this.lastEventAtMs = performance.now();
    const lagMs = this.lastEventAtMs + this.epochMs - ev.tMs;
    const set = decodePageSet(ev.mem.pageSet);
    const n = Math.min(set.length, this.pendingBuffer.length);
    for (let i = 0; i < n; i++) this.pendingBuffer[i]! |= set[i]!;
    const p = (this.pending ??= { seqFirst: ev.seq, seqLast: ev.seq, truthMs: 0, writes: 0, phases: new Set(), lagMs });
    p.seqLast = ev.seq;
    p.truthMs += ev.intervalMs;
    p.writes += ev.mem.writes;
    p.phases.add(this.phase);
    p.lagMs = lagMs;
    this.guestMs += ev.intervalMs;
    if (!this.scanning) void this.scan();
    for (const w of this.eventWaiters.splice(0)) w();
  };

  /** Resolves after the next guest report; rejects on a scan failure, abort, or after timeoutMs. */
  nextEvent(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      const waiter = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (this.failed) reject(this.failed);
        else resolve();
      };
      const timer = setTimeout(() => {
        this.dropWaiter(waiter);
        signal?.removeEventListener('abort', onAbort);
        reject(new Error(`no guest interval report within ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = (): void => {
        clearTimeout(timer);
        this.dropWaiter(waiter);
        reject(abortError(signal!));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.eventWaiters.push(waiter);
    });
  }

  /** Ends the pairing: pending and later nextEvent() calls reject with `err`. */
  readonly fail = (err: unknown): void => {
    this.failed ??= err instanceof Error ? err : new Error(String(err));
    for (const w of this.eventWaiters.splice(0)) w();
  };

  /** Resolves once no scan is running. */
  settled(): Promise<void> {
    if (!this.scanning) return Promise.resolve();
    return new Promise((resolve) => this.scanWaiters.push(resolve));
  }

  private dropWaiter(w: () => void): void {
    const i = this.eventWaiters.indexOf(w);
    if (i >= 0) this.eventWaiters.splice(i, 1);
  }

  private async scan(): Promise<void> {
    const p = this.pending!;
    this.pending = undefined;
    // truthRam stays this scan's until it is done: the next scan starts only after.
    const truthPages = bufferBitsToRam(this.pendingBuffer, this.ramPageOf, this.truthRam);
    this.pendingBuffer.fill(0);
    const phase: AccuracyPhase = p.phases.size === 1 ? [...p.phases][0]! : 'mixed';
    const inRun = [...p.phases].some((x) => RUN_PHASES.has(x));
    this.scanning = true;
    const triggerMs = performance.now();
    const sinceMs = this.lastTriggerMs;
    this.lastTriggerMs = triggerMs;
    try {
      const iv = await this.source.scanOnce();
      // The first scan after the baseline has no previous request: its own span.
      this.record(iv, p, phase, inRun, truthPages, sinceMs === undefined ? iv.tEndMs - iv.tStartMs : triggerMs - sinceMs);
    } catch (err) {
      this.fail(err);
    } finally {
      this.scanning = false;
      for (const w of this.scanWaiters.splice(0)) w();
    }
  }

  private record(iv: GuestMemoryInterval, p: PendingTruth, phase: AccuracyPhase, inRun: boolean, truthPages: number, oursMs: number): void {
    const pages = iv.pagesTotal;
    const bitmap = iv.bitmap;
    if (!bitmap) throw new Error('guest-memory interval without a bitmap');
    let oursW: number;
    let low: number;
    let high: number;
    let missed = 0;
    let extra = 0;
    if (this.sampled) {
      const e = this.sampled.estimate(bitmap);
      [oursW, low, high] = [e.estimate, e.low, e.high];
    } else {
      // Our changed pages restricted to the workload's: bitmap & ~(not workload).
      oursW = andNot(this.oursW, bitmap, this.notWorkloadBits, pages);
      [low, high] = [oursW, oursW];
      missed = andNot(this.diff, this.truthRam, this.oursW, pages);
      extra = andNot(this.diff, this.oursW, this.truthRam, pages);
    }
    if (phase === 'measure') {
      orInto(this.truthWindow, this.truthRam, pages);
      orInto(this.oursWindowWhole, bitmap, pages);
    }
    if (inRun) {
      orInto(this.truthRun, this.truthRam, pages);
      if (!this.sampled) orInto(this.oursRun, this.oursW, pages);
    }
    this.pairs.push({
      phase,
      inRun,
      guestSeqFirst: p.seqFirst,
      guestSeqLast: p.seqLast,
      truthMs: p.truthMs,
      oursMs,
      truthWrites: p.writes,
      truthPages,
      oursWorkloadPages: oursW,
      oursWorkloadLow: low,
      oursWorkloadHigh: high,
      missedPages: missed,
      extraPages: extra,
      oursWholePages: this.sampled ? iv.dirtyPagesEstimate : iv.dirtyPages,
      oursWholeLow: iv.dirtyPagesLow,
      oursWholeHigh: iv.dirtyPagesHigh,
      scanUs: iv.scanUs,
      scanCpuUs: iv.scanCpuUs,
      bytesRead: iv.bytesRead,
      lagMs: p.lagMs,
    });
  }
}

/**
 * Measures on a running lab VM whose guest is ready (LabVm.ready() resolved). Uses the memory
 * workload (a buffer of the same size is kept across runs, so runs can be chained on one VM) and
 * the VM's QMP connection; leaves the workload stopped and the interval reports on at
 * `intervalMs` with page sets. Sequence, every step at a guest interval boundary: one settling
 * interval (the first scan spans the baseline to the first report), idle intervals, workload
 * start, one ramp-up interval, the window (calc-dirty-rate started at its first boundary),
 * workload stop, idle intervals.
 */
export async function measureAccuracy(vm: LabVm, o: AccuracyOptions): Promise<AccuracyReport> {
  checkAccuracyOptions(o, vm.guestMib);
  const seconds = o.seconds ?? 8;
  const intervalMs = o.intervalMs ?? 1000;
  const idleIntervals = Math.ceil(((o.idleSeconds ?? 2) * 1000) / intervalMs);
  const windowIntervals = (seconds * 1000) / intervalMs;
  const mode = o.mode ?? 'exact';
  const sampleFraction = mode === 'sampled' ? (o.sampleFraction ?? 0.1) : null;
  const strataPages = o.strataPages ?? 512;
  const bufferMib = o.bufferMib ?? Math.min(64, vm.guestMib - GUEST_RESERVED_MIB);
  const mem = { mib: bufferMib, hotPages: o.hotPages ?? 0, pattern: o.pattern ?? 'uniform', ratePagesPerSec: o.ratePagesPerSec, seed: o.seed ?? 1 };
  const progress = o.onProgress ?? ((): void => {});
  const signal = o.signal;
  const checkAbort = (): void => {
    if (signal?.aborted) throw abortError(signal);
  };
  // Generous: a loaded host can delay a TCG guest's report by seconds.
  const eventTimeoutMs = 5 * intervalMs + 15_000;

  await vm.reports({ intervalMs, pageSets: true });
  // The buffer must exist (mlocked, so its frames stay put) before report-gpa and the idle phase.
  await vm.memStart(mem);
  await vm.memStop();
  const gpa = await vm.reportGpa();
  checkAbort();
  const ram = vm.guestRam();
  const source = openGuestMemory({
    pid: vm.pid,
    ramName: ram.ramName,
    ramBytes: ram.ramBytes,
    manual: true,
    mode,
    ...(mode === 'sampled' ? { sampleFraction: sampleFraction!, strataPages } : {}),
  });
  let workloadRunning = false;
  const collector = new QmpCollector({ client: vm.qmp });
  // Ends QEMU's measurement wait (up to calc-time) when the run ends early, so no timer outlives it.
  const stopQemuWait = new AbortController();
  const qemuSignal = signal ? AbortSignal.any([signal, stopQemuWait.signal]) : stopQemuWait.signal;
  let pairer: Pairer | undefined;
  try {
    await source.ready;
    const pagesTotal = source.pagesTotal;
    if (pagesTotal * GUEST_PAGE_BYTES !== ram.ramBytes) throw new Error(`scanned ${pagesTotal} pages, guest RAM is ${ram.ramBytes / GUEST_PAGE_BYTES}`);
    const ramPageOf = ramPagesOfBuffer(gpa, ram, pagesTotal);
    const workloadBits = pagesBitmap(ramPageOf, source.bitmapBytes);
    if (count(workloadBits, pagesTotal) !== ramPageOf.length) throw new Error('the workload buffer maps two pages to one guest frame');
    const notWorkloadBits = workloadBits.map((b) => ~b & 0xff);
    const sampled = mode === 'sampled' ? new StratifiedSubset(pagesTotal, strataPages, sampleFraction!, ramPageOf) : undefined;
    const pr = (pairer = new Pairer(source, ramPageOf, notWorkloadBits, sampled));
    vm.channel.on('interval', pr.onEvent);
    vm.channel.on('close', pr.fail);
    const next = (): Promise<void> => pr.nextEvent(eventTimeoutMs, signal);

    progress(`baseline scan done (${pagesTotal} pages); settling, then ${idleIntervals} idle intervals`);
    await next();
    pr.phase = 'idle-before';
    for (let i = 0; i < idleIntervals; i++) await next();
    // Start and stop the workload only once the boundary's scan is done: a write between the
    // guest's boundary and our scan's read of that page would land in our previous interval.
    await pr.settled();
    pr.phase = 'ramp-up';
    progress(`workload: ${o.ratePagesPerSec} writes/s on ${mem.hotPages || gpa.pages} of ${gpa.pages} pages (${mem.pattern})`);
    workloadRunning = true;
    await vm.memStart(mem);
    // How far into the ramp-up interval the workload started: it stops as far before the end of
    // the ramp-down interval, so both partial intervals hold the same length of writing and the
    // boundary lag shifts as many rewrites across the run's first boundary as across its last.
    const startOffsetMs = performance.now() - pr.lastEventAtMs;
    await next();
    pr.phase = 'measure';
    progress(`window: ${windowIntervals} intervals of ${intervalMs} ms, calc-dirty-rate page-sampling over ${seconds} s`);
    const qemuPromise = collector.measureDirtyRate({ calcTimeS: seconds, samplePagesPerGiB: o.qemuSamplePagesPerGiB ?? 512, signal: qemuSignal });
    qemuPromise.catch(() => {});
    // Counted in guest time, as QEMU's window is in real time: a late report covers more.
    const windowStartGuestMs = pr.guestMs;
    while (pr.guestMs - windowStartGuestMs < seconds * 1000 - intervalMs / 2) await next();
    // The window's edges move by the same lag, in and out: the workload keeps running for one
    // more interval so that the writes leaving at the end are matched by writes entering.
    pr.phase = 'after-window';
    await next();
    pr.phase = 'ramp-down';
    const qemu = await qemuPromise;
    await pr.settled();
    const stopAtMs = pr.lastEventAtMs + intervalMs - startOffsetMs;
    if (stopAtMs > performance.now()) await sleep(stopAtMs - performance.now(), signal);
    await vm.memStop();
    workloadRunning = false;
    await next();
    pr.phase = 'idle-after';
    for (let i = 0; i < idleIntervals; i++) await next();
    pr.phase = 'mixed';
    await pr.settled();

    const scratch = new Uint8Array(source.bitmapBytes);
    const exact = mode === 'exact';
    const report = summarizeAccuracy(pr.pairs, {
      askedRatePagesPerSec: o.ratePagesPerSec,
      mode,
      sampleFraction,
      seconds,
      intervalMs,
      bufferPages: gpa.pages,
      hotPages: mem.hotPages || gpa.pages,
      pattern: mem.pattern,
      pagesTotal,
      ramBytes: ram.ramBytes,
      hashImpl: source.hashImpl,
      truthWindowPages: count(pr.truthWindow, pagesTotal),
      runUnionMissedPages: exact ? andNot(scratch, pr.truthRun, pr.oursRun, pagesTotal) : null,
      runUnionExtraPages: exact ? andNot(scratch, pr.oursRun, pr.truthRun, pagesTotal) : null,
      oursWindowWorkloadPages: exact ? andNot(scratch, pr.oursWindowWhole, notWorkloadBits, pagesTotal) : null,
      oursWindowWholePages: exact ? count(pr.oursWindowWhole, pagesTotal) : null,
      qemu,
    });
    if (o.includeIntervals) report.pairs = pr.pairs;
    return report;
  } finally {
    stopQemuWait.abort();
    if (pairer) {
      vm.channel.off('interval', pairer.onEvent);
      vm.channel.off('close', pairer.fail);
    }
    await pairer?.settled();
    await source.close();
    await collector.close();
    if (workloadRunning && vm.running) await vm.memStop().catch(() => {});
  }
}

/** Boots a lab VM (TCG, no disk), runs measureAccuracy on it and stops it. */
export async function runLabAccuracy(o: LabAccuracyOptions): Promise<AccuracyReport & { guestMib: number; vcpus: number; bootMs: number }> {
  const guestMib = o.guestMib ?? 256;
  checkAccuracyOptions(o, guestMib);
  checkNum('vcpus', o.vcpus, ACCURACY_LIMITS.vcpus.min, ACCURACY_LIMITS.vcpus.max, true);
  const guest = o.guest ?? (await buildGuestImage());
  const vcpus = o.vcpus ?? 1;
  o.onProgress?.(`booting a ${guestMib} MiB TCG guest`);
  const vm = await LabVm.start({ guest, guestMib, vcpus, disk: null, qemuBinary: o.qemuBinary, name: 'dpa-accuracy' });
  try {
    await vm.ready();
    const report = await measureAccuracy(vm, o);
    return { guestMib, vcpus, bootMs: vm.bootMs ?? 0, ...report };
  } finally {
    await vm.stop();
  }
}
