/**
 * Bitmap kernels and the per-guest Analyzer, backed by the native addon (native/bitmap): AVX2
 * or scalar code chosen at run time, the same API and results as the TypeScript reference in
 * ./reference. Arguments are validated here (./validate) before native code runs.
 *
 * SIMD level: AVX2 when the CPU has it (with POPCNT, BMI1, BMI2), else scalar. The environment
 * variable DPA_SIMD = scalar | avx2 | auto, read when this module loads, forces a level;
 * setSimdLevel() switches it at run time (process-wide; both levels share one state layout,
 * so switching between pushes of a live Analyzer is safe). Tests use both to cross-check.
 *
 * See ./types for the bitmap format and the semantics of every function.
 */
import { native, type NativeBitmapAnalyzer, type NativeBitmapTraffic } from '../native';
import type { AnalyzerOptions, BitmapKernels, DirtyAnalyzer, ExtentsResult, PushResult, SimdLevel } from './types';
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
  MAX_ANALYZER_THREADS,
  regionCount,
} from './validate';

export type { AnalyzerOptions, BitmapKernels, DirtyAnalyzer, ExtentsResult, PushResult, SimdLevel } from './types';

/** The SIMD level the native kernels use now. */
export function simdLevel(): SimdLevel {
  return native.bitmapSimdLevel();
}

/** True when the CPU can run the AVX2 kernels. */
export function cpuHasAvx2(): boolean {
  return native.bitmapCpuHasAvx2();
}

/**
 * Switches the native kernels' SIMD level for the whole process ('auto' = AVX2 when available);
 * returns the level now in use. 'avx2' on a CPU without it throws.
 */
export function setSimdLevel(level: SimdLevel | 'auto'): SimdLevel {
  if (level !== 'avx2' && level !== 'scalar' && level !== 'auto') {
    throw new RangeError(`SIMD level must be one of avx2, scalar, auto (got ${String(level)})`);
  }
  if (level === 'avx2' && !cpuHasAvx2()) throw new RangeError('SIMD level avx2: this CPU lacks AVX2, BMI2 or POPCNT');
  return native.bitmapSetSimdLevel(level);
}

function applyEnvironment(): void {
  const requested = process.env.DPA_SIMD;
  if (requested === undefined || requested === '') return;
  if (requested !== 'avx2' && requested !== 'scalar' && requested !== 'auto') {
    throw new RangeError(`DPA_SIMD must be one of avx2, scalar, auto (got ${JSON.stringify(requested)})`);
  }
  setSimdLevel(requested);
}
applyEnvironment();

export function count(bits: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  return native.bitmapCount(bits, pages);
}

export function orInto(dst: Uint8Array, src: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('dst', dst, pages);
  checkBitmap('src', src, pages);
  checkNoPartialOverlap('dst', dst, 'src', src, bitmapBytes(pages));
  return native.bitmapOrInto(dst, src, pages);
}

export function andNot(out: Uint8Array, a: Uint8Array, b: Uint8Array, pages: number): number {
  checkPages(pages);
  checkBitmap('out', out, pages);
  checkBitmap('a', a, pages);
  checkBitmap('b', b, pages);
  checkNoPartialOverlap('out', out, 'a', a, bitmapBytes(pages));
  checkNoPartialOverlap('out', out, 'b', b, bitmapBytes(pages));
  return native.bitmapAndNot(out, a, b, pages);
}

export function regionHistogram(bits: Uint8Array, pages: number, regionPages: number, out: Uint32Array): number {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  checkRegionPages(regionPages);
  checkUint32Out('out', out, regionCount(pages, regionPages), `one per ${regionPages}-page region`);
  return native.bitmapRegionHistogram(bits, pages, regionPages, out);
}

export function extents(bits: Uint8Array, pages: number, out: Uint32Array, maxExtents: number): ExtentsResult {
  checkPages(pages);
  checkBitmap('bits', bits, pages);
  checkUint32Out('out', out, 0, '');
  checkMaxExtents(maxExtents, out);
  return native.bitmapExtents(bits, pages, out, maxExtents);
}

export const nativeKernels: BitmapKernels = { count, orInto, andNot, regionHistogram, extents };

/**
 * Reads every byte of `src` and writes every byte of `dst` with plain streaming loads and
 * stores at the current SIMD level: the memory-speed yardstick `dpa bench bitmap` compares the
 * Analyzer against. `threads` (1 or 2, default 1): with 2 the upper halves of both buffers are
 * streamed by a persistent native worker thread, as a two-thread push splits its work. Returns a
 * checksum of src (so the reads cannot be optimised away).
 */
export function streamBytes(src: Uint8Array, dst: Uint8Array, threads = 1): number {
  checkBitmap('src', src, 0);
  checkBitmap('dst', dst, 0);
  checkInteger('threads', threads, 1, MAX_ANALYZER_THREADS);
  return native.bitmapStream(src, dst, threads);
}

/** What the last push read and wrote, in data bytes; see native/bitmap/analyzer.h PushTraffic. */
export type PushTraffic = NativeBitmapTraffic;

/**
 * Native per-guest analyzer: one fused pass over each interval's bitmap (see
 * native/bitmap/analyzer.h for the design). Holds native memory until close() (or, later,
 * garbage collection):
 *
 * - fixed: 512 KiB per GiB of guest (per page a 16-bit last-dirty stamp, which also encodes
 *   the page's window bit: 2 bytes per 4 KiB page, 0.49% of guest RAM), plus 4 bytes per
 *   region, 8 * 2^(L-1) bytes of curve counters (twice with two threads) and 32 KiB of prefetch
 *   queue per thread: {@link Analyzer.FIXED_BYTES_PER_GIB}. A 1 TiB guest: 512 MiB.
 * - heat ring: 12 bytes per nonzero 64-page word per held interval (K slots); at most
 *   K * 48 KiB per GiB (every page dirty every interval), about 3.5% of that for a 2%
 *   clustered load. Its high-water capacity is kept and counted by memoryBytes().
 *
 * push() is proportional to the bitmap (streamed) plus the dirty words, and runs on two threads
 * from 16 GiB guests (option `threads`). heat(page) is K binary searches and heatHistogram()
 * is computed on demand from the ring, O(ring entries) (~10-20 ms at 1 TiB, 2% dirty, K = 16):
 * call it at display rate, not per page. resetWindow() is O(pages) (it rewrites the stamps
 * that record "old, in the window"; ~50 ms at 1 TiB): once per migration.
 */
export class Analyzer implements DirtyAnalyzer {
  /** Load-independent native state per GiB of guest (262144 pages = 4096 words of 64 stamps of 2 bytes): 524288 bytes. */
  static readonly FIXED_BYTES_PER_GIB = 4096 * 128;

  /** Native memory an analyzer with these options needs: fixed part and heat-ring worst case. */
  static memoryFor(options: AnalyzerOptions): { fixedBytes: number; ringBytesMax: number } {
    const o = checkAnalyzerOptions(options);
    return native.BitmapAnalyzer.memoryFor(o.pages, o.heatIntervals, o.curveLevels, o.regionPages, o.threads ?? 0);
  }

  readonly options: Readonly<AnalyzerOptions>;
  private handle: NativeBitmapAnalyzer | null;

  constructor(options: AnalyzerOptions) {
    this.options = Object.freeze(checkAnalyzerOptions(options));
    const o = this.options;
    this.handle = new native.BitmapAnalyzer(o.pages, o.heatIntervals, o.curveLevels, o.regionPages, o.threads ?? 0);
  }

  private live(): NativeBitmapAnalyzer {
    if (!this.handle) throw new Error('Analyzer is closed');
    return this.handle;
  }

  push(bitmap: Uint8Array): PushResult {
    const h = this.live();
    checkBitmap('bitmap', bitmap, this.options.pages);
    return h.push(bitmap);
  }

  regionHistogram(out: Uint32Array): void {
    const h = this.live();
    checkUint32Out('out', out, regionCount(this.options.pages, this.options.regionPages), `one per ${this.options.regionPages}-page region`);
    h.regionHistogram(out);
  }

  heatHistogram(out: Float64Array | Uint32Array): void {
    const h = this.live();
    checkHeatHistogramOut(out, this.options.heatIntervals);
    h.heatHistogram(out);
  }

  heat(page: number): number {
    const h = this.live();
    checkInteger('page', page, 0, this.options.pages - 1);
    return h.heat(page);
  }

  dirtyCurve(out: Float64Array): void {
    const h = this.live();
    checkCurveOut(out, this.options.curveLevels);
    h.dirtyCurve(out);
  }

  resetWindow(): void {
    this.live().resetWindow();
  }

  memoryBytes(): number {
    return this.live().memoryBytes();
  }

  intervals(): number {
    return this.live().intervals();
  }

  /** Threads one push uses (1 or 2; see AnalyzerOptions.threads). */
  threads(): number {
    return this.live().threads();
  }

  /** Data bytes the last push read and wrote (bitmap + state), for benchmarks. */
  lastTraffic(): PushTraffic {
    return this.live().lastTraffic();
  }

  /**
   * Benchmark yardstick, not analysis: replays the memory accesses of the last push (the whole
   * bitmap read, every state line it touched read and rewritten unchanged, in the same order
   * with the same prefetching, on as many threads) without its arithmetic. Timing it after evicting the caches
   * gives what the push's access pattern alone costs on this machine. `bitmap` is any bitmap
   * of the analyzer's size (only read). Leaves the state unchanged.
   */
  replayLastPattern(bitmap: Uint8Array): number {
    const h = this.live();
    checkBitmap('bitmap', bitmap, this.options.pages);
    return h.replayLastPattern(bitmap);
  }

  close(): void {
    if (!this.handle) return;
    this.handle.close();
    this.handle = null;
  }
}
