/**
 * Pure-TypeScript reference of the bitmap kernels and of the Analyzer: the test oracle for the
 * native ones (test/unit/bitmap.test.ts) and a fallback with the same API.
 *
 * Written for obviousness, not speed: byte by byte, bit by bit inside nonzero bytes, straight
 * from the definitions. The Analyzer deliberately uses other algorithms than the native one,
 * so that a cross-check compares two independent derivations: dense copies of the last K
 * bitmaps (not sparse word lists), per-page heat counters kept at every push (not counted on
 * demand from the word lists), a dense window bitmap (not window classes encoded in the
 * stamps), full 32-bit interval stamps (not 16-bit stamps with a sweep), and the heat histogram
 * and dirty curve computed on demand by scanning every page (not bit-sliced counting over the
 * word lists, not incremental per-interval counts). Its cost per push is therefore two bitmap scans plus per-dirty-page work, and
 * each query is O(pages).
 */
import type { AnalyzerOptions, BitmapKernels, DirtyAnalyzer, ExtentsResult, PushResult } from './types';
import {
  bitmapBytes,
  checkAnalyzerOptions,
  checkBitmap,
  checkCurveOut,
  checkHeatHistogramOut,
  checkInteger,
  checkMaxExtents,
  checkNoPartialOverlap,
  checkPages,
  checkRegionPages,
  checkUint32Out,
  regionCount,
} from './validate';

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >> 1]!;

/** Mask of the bits of byte `byteIndex` that are pages below `pages`. */
function byteMask(byteIndex: number, pages: number): number {
  const first = byteIndex * 8;
  return pages - first >= 8 ? 0xff : (1 << (pages - first)) - 1;
}

function bitAt(bits: Uint8Array, page: number): number {
  return (bits[Math.floor(page / 8)]! >> page % 8) & 1;
}

export function count(bits: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  let n = 0;
  const bytes = bitmapBytes(pages);
  for (let i = 0; i < bytes; i++) n += POPCOUNT[bits[i]! & byteMask(i, pages)]!;
  return n;
}

/** Applies f byte-wise on the first `pages` bits, keeping out's bits beyond them; returns out's count. */
function combine(out: Uint8Array, pages: number, f: (i: number) => number): number {
  let n = 0;
  const bytes = bitmapBytes(pages);
  for (let i = 0; i < bytes; i++) {
    const mask = byteMask(i, pages);
    const value = f(i) & mask;
    out[i] = (out[i]! & ~mask) | value;
    n += POPCOUNT[value]!;
  }
  return n;
}

export function orInto(dst: Uint8Array, src: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('dst', dst, pages);
  checkBitmap('src', src, pages);
  checkNoPartialOverlap('dst', dst, 'src', src, bitmapBytes(pages));
  return combine(dst, pages, (i) => dst[i]! | src[i]!);
}

export function andNot(out: Uint8Array, a: Uint8Array, b: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('out', out, pages);
  checkBitmap('a', a, pages);
  checkBitmap('b', b, pages);
  checkNoPartialOverlap('out', out, 'a', a, bitmapBytes(pages));
  checkNoPartialOverlap('out', out, 'b', b, bitmapBytes(pages));
  return combine(out, pages, (i) => a[i]! & ~b[i]!);
}

export function regionHistogram(bits: Uint8Array, pages: number, regionPages: number, out: Uint32Array): number {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  checkRegionPages(regionPages);
  const regions = regionCount(pages, regionPages);
  checkUint32Out('out', out, regions, `one per ${regionPages}-page region`);
  out.fill(0, 0, regions);
  const bytes = bitmapBytes(pages);
  for (let i = 0; i < bytes; i++) {
    // regionPages is a multiple of 8, so a byte never straddles two regions.
    out[Math.floor((i * 8) / regionPages)]! += POPCOUNT[bits[i]! & byteMask(i, pages)]!;
  }
  return regions;
}

export function extents(bits: Uint8Array, pages: number, out: Uint32Array, maxExtents: number): ExtentsResult {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  checkUint32Out('out', out, 0, '');
  checkMaxExtents(maxExtents, out);
  let returned = 0;
  let total = 0;
  let page = 0;
  while (page < pages) {
    if (page % 8 === 0 && bits[page / 8] === 0) {
      page += 8; // a clear byte: no run starts in it
      continue;
    }
    if (!bitAt(bits, page)) {
      page++;
      continue;
    }
    const start = page;
    while (page < pages && bitAt(bits, page)) page++;
    if (returned < maxExtents) {
      out[2 * returned] = start;
      out[2 * returned + 1] = page - start;
      returned++;
    }
    total++;
  }
  return { returned, total };
}

export const referenceKernels: BitmapKernels = { count, orInto, andNot, regionHistogram, extents };

/** Reference {@link DirtyAnalyzer}; interval numbers are kept as u32 (2^32-1 pushes at most). */
export class ReferenceAnalyzer implements DirtyAnalyzer {
  readonly options: Readonly<AnalyzerOptions>;
  private now = 0;
  private windowDirty = 0;
  private closed = false;
  private heatOf: Uint8Array;
  /** Interval in which each page was last dirty, 0 = never. */
  private lastSeen: Uint32Array;
  private window: Uint8Array;
  private region: Uint32Array;
  /** history[t % K] = the (masked) bitmap of interval t, for the last K intervals. */
  private history: (Uint8Array | undefined)[];

  constructor(options: AnalyzerOptions) {
    this.options = Object.freeze(checkAnalyzerOptions(options));
    const { pages, heatIntervals, regionPages } = this.options;
    this.heatOf = new Uint8Array(pages);
    this.lastSeen = new Uint32Array(pages);
    this.window = new Uint8Array(bitmapBytes(pages));
    this.region = new Uint32Array(regionCount(pages, regionPages));
    this.history = new Array<Uint8Array | undefined>(heatIntervals).fill(undefined);
  }

  private live(): void {
    if (this.closed) throw new Error('Analyzer is closed');
  }

  push(bitmap: Uint8Array): PushResult {
    this.live();
    const { pages, heatIntervals, regionPages } = this.options;
    checkBitmap('bitmap', bitmap, pages);
    this.now++;
    const bytes = bitmapBytes(pages);
    const slot = this.now % heatIntervals;
    // Interval now - K leaves the heat window.
    const evicted = this.history[slot];
    if (evicted) {
      for (let i = 0; i < bytes; i++) {
        const v = evicted[i]!;
        if (v === 0) continue;
        for (let b = 0; b < 8; b++) if ((v >> b) & 1) this.heatOf[i * 8 + b]!--;
      }
    }
    const copy = evicted ?? new Uint8Array(bytes);
    this.region.fill(0);
    let dirty = 0;
    let newly = 0;
    for (let i = 0; i < bytes; i++) {
      const v = bitmap[i]! & byteMask(i, pages);
      copy[i] = v;
      if (v === 0) continue;
      for (let b = 0; b < 8; b++) {
        if (((v >> b) & 1) === 0) continue;
        const page = i * 8 + b;
        dirty++;
        this.heatOf[page]!++;
        this.lastSeen[page] = this.now;
        if (((this.window[i]! >> b) & 1) === 0) {
          newly++;
          this.window[i]! |= 1 << b;
        }
        this.region[Math.floor(page / regionPages)]!++;
      }
    }
    this.history[slot] = copy;
    this.windowDirty += newly;
    return { dirtyPages: dirty, newlyDirtyInWindow: newly, windowDirtyPages: this.windowDirty };
  }

  regionHistogram(out: Uint32Array): void {
    this.live();
    checkUint32Out('out', out, this.region.length, `one per ${this.options.regionPages}-page region`);
    out.set(this.region);
  }

  heatHistogram(out: Float64Array | Uint32Array): void {
    this.live();
    checkHeatHistogramOut(out, this.options.heatIntervals);
    out.fill(0, 0, this.options.heatIntervals + 1);
    for (let p = 0; p < this.options.pages; p++) out[this.heatOf[p]!]!++;
  }

  heat(page: number): number {
    this.live();
    checkInteger('page', page, 0, this.options.pages - 1);
    return this.heatOf[page]!;
  }

  dirtyCurve(out: Float64Array): void {
    this.live();
    const levels = this.options.curveLevels;
    checkCurveOut(out, levels);
    out.fill(0, 0, levels);
    for (let p = 0; p < this.options.pages; p++) {
      const seen = this.lastSeen[p]!;
      if (seen === 0) continue;
      const age = this.now - seen; // 0 = dirty in the last interval
      for (let j = 0; j < levels; j++) if (age < 2 ** j) out[j]!++;
    }
  }

  resetWindow(): void {
    this.live();
    this.window.fill(0);
    this.windowDirty = 0;
  }

  memoryBytes(): number {
    this.live();
    let bytes = this.heatOf.byteLength + this.lastSeen.byteLength + this.window.byteLength + this.region.byteLength;
    for (const h of this.history) bytes += h?.byteLength ?? 0;
    return bytes;
  }

  intervals(): number {
    this.live();
    return this.now;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.heatOf = new Uint8Array(0);
    this.lastSeen = new Uint32Array(0);
    this.window = new Uint8Array(0);
    this.history = [];
  }
}
