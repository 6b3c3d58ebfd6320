/**
 * `dpa bench bitmap`: how close one interval's full analysis (Analyzer.push) comes to memory
 * speed, and how much faster it is than the TypeScript reference.
 *
 * - analyze: Analyzer.push on a realistic bitmap (src/bitmap/workload.ts: ~2% of pages dirty in
 *   clustered runs, a quarter of the runs moving every interval), timed after K + 2 warm-up
 *   intervals so the heat ring is full and drops an interval per push. Median over --iterations intervals.
 * - bytes: the data bytes the push reads and writes, from the native accounting (PushTraffic
 *   in native/bitmap/analyzer.h): the whole bitmap read, then per nonzero 64-page word 128 B of
 *   stamps read and written plus a 12 B ring entry written, 4 B per region written, the stamp
 *   sweep (128 B per swept word read and written). Prefetches are not counted: they bring in
 *   the same lines the push then reads.
 * - threads: a push runs on 2 threads from 16 GiB guests (--threads overrides); the memBound
 *   loop then streams on as many threads (a persistent worker, like the push's), so the ratio
 *   compares like with like. The TS reference is single-threaded (JavaScript).
 * - heatHistogram: heat is computed on demand from the heat ring; its time, best of 3, cold.
 * - memBound: the same numbers of bytes read and written by a plain streaming loop
 *   (streamBytes: sequential loads of one buffer, sequential stores to another, on the push's
 *   thread count; sized from the last warm-up push), timed after every timed push from cold
 *   caches too, so that both see the same host load; median and best.
 *   The analyzer's state accesses are scattered cache lines, which no streaming loop pays for:
 *   the ratio shows how far the fused pass is from the machine's sequential bandwidth. `ratio`
 *   is the median over intervals of (push GB/s / yardstick GB/s) of the pair timed together,
 *   `ratioBest` the best push's GB/s over the best yardstick's.
 * - accessPattern: Analyzer.replayLastPattern after each timed push: the same bitmap read and
 *   the same state lines read and rewritten in the same order, without the arithmetic, from
 *   cold caches like the push. The memory-only cost of the push's scattered accesses; the
 *   ratio of the two shows what the arithmetic adds.
 * - times are wall-clock (what a caller waits); CPU times are reported too, since on a shared
 *   host the wall time also counts the time the thread was not scheduled.
 * - tsReference: the TypeScript ReferenceAnalyzer fed the same bitmaps (its own warm-up, fewer
 *   iterations); its GB/s uses the native byte count, so speedupVsTs is the time ratio. Its
 *   results are compared with the native ones on every timed interval.
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { Analyzer, simdLevel, streamBytes } from '../bitmap/index';
import { ReferenceAnalyzer } from '../bitmap/reference';
import { ClusteredWorkload } from '../bitmap/workload';
import type { AnalyzerOptions, PushResult } from '../bitmap/types';

const MiB = 1024 * 1024;
/** Beyond this the reference's state (5 bytes per page plus K bitmaps) gets too large for the host. */
const TS_MAX_BITMAP_MIB = 64;

const options = {
  bitmapMib: { type: 'int', min: 1, max: 256, default: 32, description: 'bitmap size (32 MiB = 1 TiB guest)', unit: 'MiB' },
  dirtyPct: { type: 'number', min: 0.01, max: 50, default: 2, description: 'share of pages dirty per interval', unit: '%' },
  heatIntervals: { type: 'int', min: 1, max: 64, default: 16, description: 'K, heat window', unit: 'intervals' },
  curveLevels: { type: 'int', min: 1, max: 16, default: 10, description: 'L, dirty-curve windows 1 .. 2^(L-1) intervals' },
  regionPages: { type: 'int', min: 512, max: 262144, default: 512, description: 'region size (power of two)', unit: 'pages' },
  iterations: { type: 'int', min: 3, max: 1000, default: 15, description: 'timed native intervals' },
  tsIterations: { type: 'int', min: 0, max: 50, default: 3, description: `timed reference intervals (0: skip; skipped above ${TS_MAX_BITMAP_MIB} MiB)` },
  seed: { type: 'int', min: 1, max: 0xffffffff, default: 42, description: 'workload seed' },
  threads: { type: 'int', min: 0, max: 2, default: 0, description: 'push threads (0: automatic, 2 from 16 GiB guests); the memory-bound loop uses as many' },
  ...jsonOption,
} as const;

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

interface Interval {
  result: PushResult;
  ms: number;
  cpuMs: number;
  replayMs: number;
  /** The memory-bound yardstick, timed right after this push under the same conditions. */
  memMs: number;
  readBytes: number;
  writeBytes: number;
  nonzeroWords: number;
}

export const command = defineCommand({
  words: ['bench', 'bitmap'],
  summary: 'benchmark the bitmap Analyzer against memory speed and the TypeScript reference',
  usage: '[--bitmap-mib M] [--dirty-pct P] [--iterations N] [--ts-iterations N] [--json]',
  options,
  async run(o, _positionals, io) {
    if ((o.regionPages & (o.regionPages - 1)) !== 0) {
      throw new RangeError(`--region-pages: must be a power of two from 512 to 262144 (got ${o.regionPages})`);
    }
    const pages = o.bitmapMib * MiB * 8;
    const bitmapBytes = pages / 8;
    const analyzerOptions: AnalyzerOptions = {
      pages,
      heatIntervals: o.heatIntervals,
      curveLevels: o.curveLevels,
      regionPages: o.regionPages,
      threads: o.threads,
    };
    const warmup = o.heatIntervals + 2;
    const workloadOptions = { pages, dirtyFraction: o.dirtyPct / 100, turnover: 0.25, seed: o.seed };
    const bitmap = new Uint8Array(bitmapBytes);

    // Native: warm-up, then timed intervals.
    const analyzer = new Analyzer(analyzerOptions);
    const intervals: Interval[] = [];
    // Streaming through twice the L3 size before each timed call leaves the analyzer state and
    // the bitmap cold, as they are after 100 ms of other work between intervals.
    const flush = new Uint8Array(64 * MiB).fill(3);
    const none = new Uint8Array(0);
    let memoryBytes = 0;
    let threads = 1;
    // Memory yardstick buffers, sized from the last warm-up push's traffic.
    let src = none;
    let dst = none;
    const heatHistogramTimes: number[] = [];
    try {
      threads = analyzer.threads();
      const workload = new ClusteredWorkload(workloadOptions);
      for (let i = 0; i < warmup; i++) {
        workload.next(bitmap);
        analyzer.push(bitmap);
      }
      const sizing = analyzer.lastTraffic();
      src = new Uint8Array(sizing.readBytes).fill(1);
      dst = new Uint8Array(sizing.writeBytes).fill(2);
      for (let i = 0; i < o.iterations; i++) {
        if (io.signal.aborted) return 130;
        workload.next(bitmap);
        streamBytes(flush, none);
        const c0 = process.cpuUsage();
        const t0 = nowMs();
        const result = analyzer.push(bitmap);
        const ms = nowMs() - t0;
        const cpu = process.cpuUsage(c0);
        const t = analyzer.lastTraffic();
        streamBytes(flush, none);
        const r0 = nowMs();
        analyzer.replayLastPattern(bitmap);
        const replayMs = nowMs() - r0;
        streamBytes(flush, none);
        const m0 = nowMs();
        streamBytes(src, dst, threads);
        const memMs = nowMs() - m0;
        intervals.push({ result, ms, cpuMs: (cpu.user + cpu.system) / 1000, replayMs, memMs, readBytes: t.readBytes, writeBytes: t.writeBytes, nonzeroWords: t.nonzeroWords });
      }
      memoryBytes = analyzer.memoryBytes();
      // heatHistogram is computed on demand from the heat ring (read at display rate): its cost.
      const histogram = new Float64Array(o.heatIntervals + 1);
      for (let i = 0; i < 3; i++) {
        streamBytes(flush, none);
        const t0 = nowMs();
        analyzer.heatHistogram(histogram);
        heatHistogramTimes.push(nowMs() - t0);
      }
    } finally {
      analyzer.close();
    }
    const analyzeMs = median(intervals.map((x) => x.ms));
    const analyzeBestMs = Math.min(...intervals.map((x) => x.ms));
    const analyzeCpuMs = median(intervals.map((x) => x.cpuMs));
    const replayMs = median(intervals.map((x) => x.replayMs));
    const analyzeGBps = median(intervals.map((x) => (x.readBytes + x.writeBytes) / (x.ms * 1e6)));
    const readBytes = Math.round(intervals.reduce((s, x) => s + x.readBytes, 0) / intervals.length);
    const writeBytes = Math.round(intervals.reduce((s, x) => s + x.writeBytes, 0) / intervals.length);
    const dirtyFraction = intervals.reduce((s, x) => s + x.result.dirtyPages, 0) / intervals.length / pages;
    const nonzeroWordFraction = intervals.reduce((s, x) => s + x.nonzeroWords, 0) / intervals.length / (pages / 64);

    // Memory yardstick: the same bytes streamed, timed after every push (paired, so a change of
    // load on the shared host affects both); ratio = median of the paired ratios.
    const yardstickBytes = src.length + dst.length;
    const streamMs = median(intervals.map((x) => x.memMs));
    const streamBestMs = Math.min(...intervals.map((x) => x.memMs));
    const memBoundGBps = yardstickBytes / (streamMs * 1e6);
    const pairedRatio = median(intervals.map((x) => (x.readBytes + x.writeBytes) / x.ms / (yardstickBytes / x.memMs)));
    const best = intervals.reduce((a, x) => (x.ms < a.ms ? x : a));
    const ratioBest = (best.readBytes + best.writeBytes) / best.ms / (yardstickBytes / streamBestMs);

    // TypeScript reference on the same bitmap sequence.
    let tsMs: number | null = null;
    let tsCpuMs: number | null = null;
    let tsMatchesNative: boolean | null = null;
    let tsSkipped: string | null = null;
    if (o.tsIterations === 0) tsSkipped = '--ts-iterations 0';
    else if (o.bitmapMib > TS_MAX_BITMAP_MIB) tsSkipped = `bitmap above ${TS_MAX_BITMAP_MIB} MiB (reference state too large)`;
    else {
      const reference = new ReferenceAnalyzer(analyzerOptions);
      try {
        const workload = new ClusteredWorkload(workloadOptions);
        for (let i = 0; i < warmup; i++) {
          if (io.signal.aborted) return 130;
          workload.next(bitmap);
          reference.push(bitmap);
        }
        const times: number[] = [];
        const cpuTimes: number[] = [];
        tsMatchesNative = true;
        for (let i = 0; i < Math.min(o.tsIterations, o.iterations); i++) {
          if (io.signal.aborted) return 130;
          workload.next(bitmap);
          const c0 = process.cpuUsage();
          const t0 = nowMs();
          const result = reference.push(bitmap);
          times.push(nowMs() - t0);
          const cpu = process.cpuUsage(c0);
          cpuTimes.push((cpu.user + cpu.system) / 1000);
          const n = intervals[i]!.result;
          if (result.dirtyPages !== n.dirtyPages || result.newlyDirtyInWindow !== n.newlyDirtyInWindow || result.windowDirtyPages !== n.windowDirtyPages) {
            tsMatchesNative = false;
          }
        }
        tsMs = median(times);
        tsCpuMs = median(cpuTimes);
      } finally {
        reference.close();
      }
    }
    const tsReferenceGBps = tsMs === null ? null : (readBytes + writeBytes) / (tsMs * 1e6);

    const report = {
      bitmapMib: o.bitmapMib,
      bitmapBytes,
      pages,
      guestGib: (pages * 4096) / (1024 * MiB),
      simd: simdLevel(),
      threads,
      memBoundThreads: threads,
      tsReferenceThreads: 1,
      analyzer: analyzerOptions,
      dirtyFraction: round(dirtyFraction, 5),
      nonzeroWordFraction: round(nonzeroWordFraction, 5),
      analyzeMsPerInterval: round(analyzeMs, 3),
      analyzeBestMsPerInterval: round(analyzeBestMs, 3),
      analyzeCpuMsPerInterval: round(analyzeCpuMs, 3),
      analyzeGBps: round(analyzeGBps, 2),
      bytesPerInterval: { read: readBytes, write: writeBytes },
      memBoundMs: round(streamMs, 3),
      memBoundBestMs: round(streamBestMs, 3),
      memBoundBytes: yardstickBytes,
      memBoundGBps: round(memBoundGBps, 2),
      ratio: round(pairedRatio, 3),
      ratioBest: round(ratioBest, 3),
      accessPatternMs: round(replayMs, 3),
      accessPatternGBps: round((readBytes + writeBytes) / (replayMs * 1e6), 2),
      ratioToAccessPattern: round(replayMs / analyzeMs, 3),
      heatHistogramMs: round(Math.min(...heatHistogramTimes), 3),
      tsReferenceMsPerInterval: tsMs === null ? null : round(tsMs, 1),
      tsReferenceCpuMsPerInterval: tsCpuMs === null ? null : round(tsCpuMs, 1),
      tsReferenceGBps: tsReferenceGBps === null ? null : round(tsReferenceGBps, 3),
      speedupVsTs: tsMs === null ? null : round(tsMs / analyzeMs, 1),
      tsMatchesNative,
      tsSkipped,
      memoryBytes,
      memoryBytesPerGib: Math.round(memoryBytes / ((pages * 4096) / (1024 * MiB))),
      iterations: o.iterations,
      tsIterations: tsMs === null ? 0 : Math.min(o.tsIterations, o.iterations),
    };
    if (o.json) {
      io.out(JSON.stringify(report) + '\n');
      return 0;
    }
    const gib = report.guestGib;
    const lines = [
      `bitmap ${o.bitmapMib} MiB (${gib >= 1024 ? gib / 1024 + ' TiB' : gib + ' GiB'} guest, ${pages} pages), simd ${report.simd}, ${threads} push thread(s), K=${o.heatIntervals} L=${o.curveLevels} regions of ${o.regionPages} pages`,
      `  dirty             ${(dirtyFraction * 100).toFixed(2)}% of pages, ${(nonzeroWordFraction * 100).toFixed(2)}% of 64-page words`,
      `  analyze           ${analyzeMs.toFixed(2)} ms/interval (best ${analyzeBestMs.toFixed(2)}, CPU ${analyzeCpuMs.toFixed(2)}), ${analyzeGBps.toFixed(2)} GB/s (${(readBytes / MiB).toFixed(1)} MiB read + ${(writeBytes / MiB).toFixed(1)} MiB written)`,
      `  memory-bound      ${streamMs.toFixed(2)} ms (best ${streamBestMs.toFixed(2)}) for the same bytes streamed on ${threads} thread(s), ${memBoundGBps.toFixed(2)} GB/s`,
      `  ratio             ${report.ratio.toFixed(3)} (analyze / memory-bound, median of pairs; best / best ${report.ratioBest.toFixed(3)})`,
      `  access pattern    ${replayMs.toFixed(2)} ms to replay the push's memory accesses alone, ${report.accessPatternGBps.toFixed(2)} GB/s; analyze reaches ${report.ratioToAccessPattern.toFixed(3)} of it`,
      `  heat histogram    ${report.heatHistogramMs.toFixed(2)} ms on demand (from the heat ring)`,
      tsMs === null
        ? `  TS reference      skipped: ${tsSkipped}`
        : `  TS reference      ${tsMs.toFixed(1)} ms/interval, 1 thread (CPU ${tsCpuMs!.toFixed(1)}), ${tsReferenceGBps!.toFixed(3)} GB/s, native is ${report.speedupVsTs}x faster${tsMatchesNative ? ' (results match)' : ' (RESULTS DIFFER)'}`,
      `  analyzer memory   ${(memoryBytes / MiB).toFixed(1)} MiB (${(report.memoryBytesPerGib / 1024).toFixed(0)} KiB per GiB of guest)`,
    ];
    io.out(lines.join('\n') + '\n');
    return tsMatchesNative === false ? 1 : 0;
  },
});
