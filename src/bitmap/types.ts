/**
 * The bitmap kernels' API, shared by the native-backed implementation (./index) and the
 * TypeScript reference (./reference). Both validate arguments identically (./validate) and
 * must return identical results; test/unit/bitmap.test.ts cross-checks them.
 *
 * Bitmap format: one bit per 4 KiB page; page p is bit (p % 64) of the little-endian 64-bit
 * word p / 64, i.e. bit (p % 8) of byte p / 8. A bitmap is a Uint8Array of at least
 * ceil(pages / 8) bytes, at any byte offset; bits at or beyond `pages` (in the last byte or in
 * extra bytes) are ignored on input and never modified on output. Callers allocate every
 * output buffer.
 */

/** SIMD code path in use by the native kernels. */
export type SimdLevel = 'avx2' | 'scalar';

/** Result of {@link BitmapKernels.extents}. */
export interface ExtentsResult {
  /** Runs written to `out` (min(total, maxExtents)). */
  returned: number;
  /** Runs of set bits in the whole bitmap, including those beyond the cap. */
  total: number;
}

export interface BitmapKernels {
  /** Number of set bits among the first `pages` (0 .. 2^32-1). */
  count(bits: Uint8Array, pages: number): number;
  /**
   * dst |= src on the first `pages` bits (OR-accumulate); returns dst's set-bit count afterwards.
   * dst may be src.
   */
  orInto(dst: Uint8Array, src: Uint8Array, pages: number): number;
  /**
   * out = a & ~b on the first `pages` bits and returns its set-bit count: with `b` a previous
   * bitmap, the pages newly dirty since then. out may be a or b, but not partially overlap them.
   */
  andNot(out: Uint8Array, a: Uint8Array, b: Uint8Array, pages: number): number;
  /**
   * out[r] = dirty pages in region r = pages [r * regionPages, (r + 1) * regionPages), for the
   * ceil(pages / regionPages) regions; regionPages is a power of two from 512 (2 MiB) to 262144
   * (1 GiB). Entries past the last region are left alone. Returns the number of regions.
   */
  regionHistogram(bits: Uint8Array, pages: number, regionPages: number, out: Uint32Array): number;
  /**
   * Maximal runs of set bits in page order: out[2i] = first page, out[2i + 1] = length in
   * pages, for the first maxExtents runs (out holds at least 2 * maxExtents entries).
   */
  extents(bits: Uint8Array, pages: number, out: Uint32Array, maxExtents: number): ExtentsResult;
}

/** Options of a per-guest {@link DirtyAnalyzer}. */
export interface AnalyzerOptions {
  /** Guest pages (4 KiB each) covered by every pushed bitmap: 1 .. 2^32-1. */
  pages: number;
  /** K: heat counts the intervals among the last K in which a page was dirty; 1 .. 64. */
  heatIntervals: number;
  /** L: the dirty curve has windows of 1, 2, 4 .. 2^(L-1) intervals; 1 .. 16. */
  curveLevels: number;
  /** Pages per region of the region histogram: power of two, 512 (2 MiB) .. 262144 (1 GiB). */
  regionPages: number;
  /**
   * Threads of one push of the native Analyzer: 0 = automatic (2 from 16 GiB guests on a host
   * with 2+ CPUs, else 1), 1 or 2. Results never depend on it; the reference ignores it.
   * Default 0.
   */
  threads?: number;
}

/** What one interval did, returned by {@link DirtyAnalyzer.push}. */
export interface PushResult {
  /** Pages dirty in this interval. */
  dirtyPages: number;
  /** Of those, pages not dirty before in the current window (since construction or resetWindow()). */
  newlyDirtyInWindow: number;
  /** Distinct pages dirty in the current window, this interval included. */
  windowDirtyPages: number;
}

/**
 * Per-guest dirty-page analysis, fed one bitmap per interval. Interval numbers start at 1 with
 * the first push.
 */
export interface DirtyAnalyzer {
  readonly options: Readonly<AnalyzerOptions>;
  /** Analyses one interval's bitmap (at least ceil(pages / 8) bytes). */
  push(bitmap: Uint8Array): PushResult;
  /** Dirty pages per region in the last pushed interval (zeros before the first push). */
  regionHistogram(out: Uint32Array): void;
  /** out[h], h = 0 .. K: number of pages whose heat is h (out holds at least K + 1 entries). */
  heatHistogram(out: Float64Array | Uint32Array): void;
  /** In how many of the last K intervals page `page` (0 .. pages-1) was dirty: 0 .. K. */
  heat(page: number): number;
  /**
   * out[j], j = 0 .. L-1: D(2^j) = distinct pages dirtied over the last 2^j intervals (over all
   * intervals pushed so far, if fewer). Non-decreasing in j.
   */
  dirtyCurve(out: Float64Array): void;
  /** Starts a new window for newlyDirtyInWindow / windowDirtyPages; heat and curve are unaffected. */
  resetWindow(): void;
  /** Bytes of state held now (arrays plus the heat ring's current capacity). */
  memoryBytes(): number;
  /** Intervals pushed so far. */
  intervals(): number;
  /** Releases the state; every later call except close() throws. */
  close(): void;
}
