/**
 * A profiling session: any DirtySource with bitmaps → the bitmap Analyzer (counts, regions, heat,
 * dirty curve) → the model (pre-copy prediction from the measured dirty curve). It is the
 * "analysis + model" half of the pipeline in docs/ARCHITECTURE.md, with no I/O of its own: the
 * caller renders `snapshot()` however it likes (terminal, JSON lines).
 */
import { Analyzer } from '../bitmap';
import { measuredCurve } from '../model/dirty-curve';
import { predictPrecopy, type PrecopyPrediction } from '../model/precopy';
import type { DirtySource, Interval } from '../sources/types';

const PAGE_BYTES = 4096;

export interface ProfileOptions {
  /** Guest pages covered by the source's bitmaps. */
  pages: number;
  /** The source's interval, ms (converts interval counts to seconds). */
  intervalMs: number;
  /** Heat window K, intervals (1..64; default 16). */
  heatIntervals?: number;
  /** Dirty curve windows 1, 2, 4 .. 2^(L-1) intervals (1..16; default 12). */
  curveLevels?: number;
  /** Region size for the hottest-regions list, pages (power of two, 512..262144; default 512 = 2 MiB). */
  regionPages?: number;
  /** Rates are averaged over this many most recent intervals (default: 1 s worth). */
  rateWindowIntervals?: number;
  /** "What would a migration cost": link share, bytes/s (default 125 MB/s = 1 Gbit/s). */
  bandwidthBytesPerSec?: number;
  /** QEMU downtime-limit for the prediction, ms (default 300, QEMU's default). */
  downtimeLimitMs?: number;
  /** Hottest regions listed (default 5). */
  topRegions?: number;
}

export interface ProfileSnapshot {
  source: string;
  intervals: number;
  /** Intervals missing from the source's sequence (a gap means lost, never merged). */
  lostIntervals: number;
  intervalMs: number;
  pagesTotal: number;
  /** Distinct pages dirtied per interval, averaged over the rate window, per second. */
  dirtyPagesPerSec: number;
  dirtyBytesPerSec: number;
  /** D(τ): distinct pages dirtied over windows of 1, 2, 4 ... intervals. */
  curve: { windowSec: number; pages: number }[];
  /** Pages dirtied at least once in the last K intervals (the short-term working set). */
  workingSetPages: number;
  /** heatHistogram[h] = pages dirty in exactly h of the last K intervals. */
  heatHistogram: number[];
  heatIntervals: number;
  /** Regions with most dirty pages over the rate window. */
  hottestRegions: { region: number; startMib: number; regionMib: number; dirtyPages: number; regionPages: number }[];
  /** Mean time the source spent harvesting/scanning one interval, µs, and per GiB of guest. */
  harvestUsMean: number;
  harvestUsPerGiB: number;
  /** Exactness, when the source knows the truth (the calibration VM). */
  truth?: { intervalsChecked: number; mismatchedIntervals: number; mismatchedPages: number };
  /** Pre-copy prediction at the configured bandwidth and downtime limit, from the measured curve. */
  migration?: {
    bandwidthBytesPerSec: number;
    downtimeLimitMs: number;
    prediction: Pick<PrecopyPrediction, 'converges' | 'iterations' | 'bytesSent' | 'totalSec' | 'downtimeMs' | 'finalThrottlePct' | 'reason' | 'toConverge'>;
  };
}

export class ProfileSession {
  readonly options: Required<ProfileOptions>;
  private readonly analyzer: Analyzer;
  private readonly regionSums: Float64Array;
  private readonly regionScratch: Uint32Array;
  /** Per-interval region histograms of the rate window, oldest first, so sums can be slid. */
  private readonly regionRing: Uint32Array[] = [];
  private readonly dirtyRing: number[] = [];
  private readonly harvestRing: number[] = [];
  private intervals = 0;
  private lost = 0;
  private lastSeq = -1;
  private truth = { intervalsChecked: 0, mismatchedIntervals: 0, mismatchedPages: 0 };
  private sourceName = '';

  constructor(options: ProfileOptions) {
    const intervalMs = options.intervalMs;
    if (!(intervalMs > 0)) throw new RangeError(`intervalMs must be > 0 (got ${intervalMs})`);
    this.options = {
      pages: options.pages,
      intervalMs,
      heatIntervals: options.heatIntervals ?? 16,
      curveLevels: options.curveLevels ?? 12,
      regionPages: options.regionPages ?? 512,
      rateWindowIntervals: options.rateWindowIntervals ?? Math.max(1, Math.round(1000 / intervalMs)),
      bandwidthBytesPerSec: options.bandwidthBytesPerSec ?? 125e6,
      downtimeLimitMs: options.downtimeLimitMs ?? 300,
      topRegions: options.topRegions ?? 5,
    };
    const o = this.options;
    this.analyzer = new Analyzer({ pages: o.pages, heatIntervals: o.heatIntervals, curveLevels: o.curveLevels, regionPages: o.regionPages });
    const regions = Math.ceil(o.pages / o.regionPages);
    this.regionSums = new Float64Array(regions);
    this.regionScratch = new Uint32Array(regions);
  }

  /** Feeds every interval of `source` into this session. */
  attach(source: DirtySource): void {
    this.sourceName = source.name;
    source.onInterval((i) => this.push(i));
  }

  /** Analyses one interval (its bitmap is only read during this call). */
  push(interval: Interval): void {
    if (!this.sourceName) this.sourceName = interval.source;
    if (this.lastSeq >= 0 && interval.seq > this.lastSeq + 1) this.lost += interval.seq - this.lastSeq - 1;
    this.lastSeq = interval.seq;
    if (interval.truthPages !== undefined) {
      this.truth.intervalsChecked++;
      if (interval.mismatchedPages) {
        this.truth.mismatchedIntervals++;
        this.truth.mismatchedPages += interval.mismatchedPages;
      }
    }
    this.slide(this.dirtyRing, interval.dirtyPages);
    this.slide(this.harvestRing, interval.harvestUs ?? 0);
    if (!interval.bitmap) return; // counts only (the source dropped the bitmap): analysis skips it
    this.intervals++;
    this.analyzer.push(interval.bitmap);
    this.analyzer.regionHistogram(this.regionScratch);
    const copy = this.regionScratch.slice();
    for (let r = 0; r < copy.length; r++) this.regionSums[r]! += copy[r]!;
    this.regionRing.push(copy);
    if (this.regionRing.length > this.options.rateWindowIntervals) {
      const old = this.regionRing.shift()!;
      for (let r = 0; r < old.length; r++) this.regionSums[r]! -= old[r]!;
    }
  }

  private slide(ring: number[], value: number): void {
    ring.push(value);
    if (ring.length > this.options.rateWindowIntervals) ring.shift();
  }

  snapshot(withPrediction = true): ProfileSnapshot {
    const o = this.options;
    const intervalSec = o.intervalMs / 1000;
    const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
    const dirtyPagesPerSec = mean(this.dirtyRing) / intervalSec;
    const curveRaw = new Float64Array(o.curveLevels);
    this.analyzer.dirtyCurve(curveRaw);
    const curve: ProfileSnapshot['curve'] = [];
    for (let j = 0; j < o.curveLevels; j++) {
      const windowIntervals = 2 ** j;
      if (windowIntervals > Math.max(1, this.intervals)) break; // longer windows are not measured yet
      curve.push({ windowSec: windowIntervals * intervalSec, pages: curveRaw[j]! });
    }
    const heat = new Float64Array(o.heatIntervals + 1);
    this.analyzer.heatHistogram(heat);
    const heatHistogram = Array.from(heat);
    const workingSetPages = heatHistogram.slice(1).reduce((a, b) => a + b, 0);
    const order = Array.from(this.regionSums.keys())
      .filter((r) => this.regionSums[r]! > 0)
      .sort((a, b) => this.regionSums[b]! - this.regionSums[a]!)
      .slice(0, o.topRegions);
    const regionMib = (o.regionPages * PAGE_BYTES) / 2 ** 20;
    const hottestRegions = order.map((r) => ({
      region: r,
      startMib: r * regionMib,
      regionMib,
      dirtyPages: this.regionSums[r]!,
      regionPages: Math.min(o.regionPages, o.pages - r * o.regionPages),
    }));
    const harvestUsMean = mean(this.harvestRing);
    const guestGiB = (o.pages * PAGE_BYTES) / 2 ** 30;
    const snap: ProfileSnapshot = {
      source: this.sourceName,
      intervals: this.intervals,
      lostIntervals: this.lost,
      intervalMs: o.intervalMs,
      pagesTotal: o.pages,
      dirtyPagesPerSec,
      dirtyBytesPerSec: dirtyPagesPerSec * PAGE_BYTES,
      curve,
      workingSetPages,
      heatHistogram,
      heatIntervals: o.heatIntervals,
      hottestRegions,
      harvestUsMean,
      harvestUsPerGiB: guestGiB > 0 ? harvestUsMean / guestGiB : 0,
    };
    if (this.truth.intervalsChecked > 0) snap.truth = { ...this.truth };
    if (withPrediction && curve.length > 0 && curve[curve.length - 1]!.pages > 0) {
      const p = predictPrecopy({
        ramBytes: o.pages * PAGE_BYTES,
        zeroPageFraction: 0,
        bandwidthBytesPerSec: o.bandwidthBytesPerSec,
        downtimeLimitMs: o.downtimeLimitMs,
        dirty: measuredCurve(
          curve.map((c) => [c.windowSec, c.pages] as [number, number]),
          { totalPages: o.pages },
        ),
      });
      snap.migration = {
        bandwidthBytesPerSec: o.bandwidthBytesPerSec,
        downtimeLimitMs: o.downtimeLimitMs,
        prediction: {
          converges: p.converges,
          iterations: p.iterations,
          bytesSent: p.bytesSent,
          totalSec: p.totalSec,
          downtimeMs: p.downtimeMs,
          finalThrottlePct: p.finalThrottlePct,
          reason: p.reason,
          toConverge: p.toConverge,
        },
      };
    }
    return snap;
  }

  close(): void {
    this.analyzer.close();
  }
}
