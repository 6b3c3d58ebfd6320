/**
 * The only module that loads the native addon (`build/Release/dpa_native.node`, through
 * `bindings`) and declares its types. Everything else imports from here.
 *
 * Conventions of the addon:
 * - Callers allocate and own every buffer (Uint8Array / Uint32Array / Float64Array); native code
 *   borrows them for the duration of a call and never keeps a pointer past it, except where a
 *   doc comment says so (buffer pools handed to long-running handles).
 * - Bitmaps are one bit per 4 KiB page, little-endian bit order inside 64-bit words: page p is
 *   bit (p % 64) of word (p / 64). Byte lengths need not be multiples of 8: tails are handled.
 * - Failing syscalls throw an Error with `code` ("EIO"), `errno` (negative) and `syscall`.
 * - Arguments are validated in TypeScript (RangeError naming the option) before reaching here.
 */
/* eslint-disable @typescript-eslint/no-var-requires */

/** An Error raised by a failing syscall in native code. */
export interface SysError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

// ---------------------------------------------------------------------------------------------
// bitmap kernels (native/bitmap)
// ---------------------------------------------------------------------------------------------
// Raw bindings: use src/bitmap (validated, documented) instead of calling these directly.
// `pages` is 0 .. 2^32-1 (1 .. 2^32-1 for the analyzer); bitmaps hold >= ceil(pages / 8) bytes.

/** Per-push accounting of the native analyzer (data bytes, see native/bitmap/analyzer.h PushTraffic). */
export interface NativeBitmapTraffic {
  readBytes: number;
  writeBytes: number;
  nonzeroWords: number;
  evictedWords: number;
  sweptWords: number;
}

export interface NativeBitmapAnalyzer {
  push(bitmap: Uint8Array): { dirtyPages: number; newlyDirtyInWindow: number; windowDirtyPages: number };
  regionHistogram(out: Uint32Array): void;
  heatHistogram(out: Float64Array | Uint32Array): void;
  heat(page: number): number;
  dirtyCurve(out: Float64Array): void;
  resetWindow(): void;
  memoryBytes(): number;
  intervals(): number;
  /** Threads a push uses (1 or 2). */
  threads(): number;
  lastTraffic(): NativeBitmapTraffic;
  /** Benchmark yardstick: the last push's memory accesses without its arithmetic. */
  replayLastPattern(bitmap: Uint8Array): number;
  /** Frees the native state now (the finalizer would, later); further calls throw. */
  close(): void;
}

export interface NativeBitmapAnalyzerClass {
  /** threads: 0 = automatic, 1, 2. */
  new (pages: number, heatIntervals: number, curveLevels: number, regionPages: number, threads: number): NativeBitmapAnalyzer;
  memoryFor(pages: number, heatIntervals: number, curveLevels: number, regionPages: number, threads: number): {
    fixedBytes: number;
    ringBytesMax: number;
  };
}

export interface NativeBitmap {
  bitmapCount(bits: Uint8Array, pages: number): number;
  bitmapOrInto(dst: Uint8Array, src: Uint8Array, pages: number): number;
  bitmapAndNot(out: Uint8Array, a: Uint8Array, b: Uint8Array, pages: number): number;
  /** Returns the number of regions written. */
  bitmapRegionHistogram(bits: Uint8Array, pages: number, regionPages: number, out: Uint32Array): number;
  bitmapExtents(bits: Uint8Array, pages: number, out: Uint32Array, maxExtents: number): { returned: number; total: number };
  /** Reads all of src, writes all of dst (the memory-speed yardstick of `dpa bench bitmap`), on 1 or 2 threads. */
  bitmapStream(src: Uint8Array, dst: Uint8Array, threads: number): number;
  bitmapSimdLevel(): 'avx2' | 'scalar';
  bitmapSetSimdLevel(level: 'avx2' | 'scalar' | 'auto'): 'avx2' | 'scalar';
  bitmapCpuHasAvx2(): boolean;
  BitmapAnalyzer: NativeBitmapAnalyzerClass;
}

// ---------------------------------------------------------------------------------------------
// KVM calibration VM (native/kvm)
// ---------------------------------------------------------------------------------------------
// Raw bindings: use src/sources/kvm-calibration.ts (validated, documented) instead.

/** Creation options of a calibration VM (validated by src/sources/kvm-calibration.ts). */
export interface NativeKvmVmConfig {
  /** Guest RAM in MiB (64..65536). */
  guestMib: number;
  /** vCPUs, 1..8 (each gets its own native thread). */
  vcpus: number;
  /** 'bitmap': KVM_GET/CLEAR_DIRTY_LOG with manual protect; 'ring': per-vCPU dirty rings. */
  mode: 'bitmap' | 'ring';
  /** Ring mode: entries per vCPU ring, power of two 256..65536 (ignored in bitmap mode). */
  ringEntries: number;
}

/** One calibration run (the workload and its pacing). */
export interface NativeKvmRunConfig {
  pattern: 'uniform' | 'sequential' | 'zipf';
  /** Page writes per second requested of the guest (not distinct pages). */
  ratePagesPerSec: number;
  /** Hot set size in pages, 1..guest pages. */
  hotPages: number;
  /** Zipf exponent (> 0; used by pattern 'zipf'). */
  zipfS: number;
  /** Seed of the workload generators (integer 0..2^53-1). */
  seed: number;
  /** Interval length, ms (1..1000). */
  intervalMs: number;
  /** Intervals to run before ending on its own; 0 = until close(). */
  maxIntervals: number;
}

/** One interval as the native harvest thread reports it. */
export interface NativeKvmInterval {
  seq: number;
  /** CLOCK_MONOTONIC in ms (the clock of process.hrtime()): guest released / harvest began. */
  tStartMs: number;
  tEndMs: number;
  /** Page writes the guest was told to do this interval. */
  writesRequested: number;
  /** Distinct pages written (the truth) and distinct pages the harvest reported. */
  truthPages: number;
  measuredPages: number;
  /** missingPages (written, not reported) + extraPages (reported, not written). */
  mismatchedPages: number;
  missingPages: number;
  extraPages: number;
  /** One differing guest page number, or null. */
  mismatchPage: number | null;
  /** Dirty-log or ring harvest incl. clear/reset, µs. */
  harvestUs: number;
  /** From releasing the vCPUs until the last one halted (list generation + KVM_RUN), µs. */
  guestRunUs: number;
  /** Truth bitmap construction + bit-by-bit comparison, µs. */
  compareUs: number;
  ringFullExits: number;
  earlyHarvests: number;
  /** The guest finished this interval's writes after the interval's deadline. */
  late: boolean;
  /** A buffer pool was given but no buffer was free (or one was detached): no bitmap. */
  bitmapDropped: boolean;
  /** The measured bitmap, in a pool buffer: valid only during the callback (copy to keep). */
  bitmap?: Uint8Array;
}

/** Cumulative counters of a run (ms / µs as named; CLOCK_MONOTONIC times). */
export interface NativeKvmRunStats {
  intervals: number;
  droppedIntervals: number;
  bitmapDropped: number;
  lateIntervals: number;
  skippedTicks: number;
  mismatchedIntervals: number;
  mismatchedPages: number;
  writes: number;
  truthPages: number;
  measuredPages: number;
  ringFullExits: number;
  earlyHarvests: number;
  foreignEntries: number;
  harvestUsTotal: number;
  harvestUsMax: number;
  compareUsTotal: number;
  guestRunUsTotal: number;
  firstStartMs: number;
  lastEndMs: number;
  harvestThreadCpuMs: number;
  vcpuCpuMs: number;
}

/** Why a run ended on its own: COMPLETE, EGUEST, EOVERFLOW (dirty ring), or an errno name. */
export interface NativeKvmRunEnd {
  code: string;
  message: string;
  errno?: number;
  syscall?: string;
  stats: NativeKvmRunStats;
}

export interface NativeKvmCalibrationVm {
  readonly guestPages: number;
  /** Bytes of one bitmap (one bit per guest page, whole 64-bit words). */
  readonly bitmapBytes: number;
  readonly auxBytes: number;
  readonly closed: boolean;
  /**
   * Starts the run on native threads and returns. onInterval runs on the JS thread per interval;
   * onEnd once when the run ends on its own (not after close()). `buffers` (each >= bitmapBytes)
   * are kept and lent back one per interval; do not transfer or detach them.
   */
  start(
    run: NativeKvmRunConfig,
    onInterval: (interval: NativeKvmInterval) => void,
    onEnd: (end: NativeKvmRunEnd) => void,
    buffers: Uint8Array[],
  ): void;
  /** Stops the threads and releases every fd and mapping. Idempotent. */
  close(): void;
  stats(): NativeKvmRunStats;
  /** KVM_GET_DIRTY_LOG without clearing; returns the dirty page count. ENXIO in ring mode. */
  readDirtyLog(out: Uint8Array): number;
  /** Whether an active run keeps the event loop alive (default: it does). */
  ref(): void;
  unref(): void;
}

export interface NativeKvmCapabilities {
  apiVersion: number;
  manualDirtyLogProtect2: boolean;
  /** 0 when the kernel has no dirty ring. */
  dirtyRingMaxEntries: number;
  maxVcpus: number;
  /** Guest-physical address width, bits. */
  physBits: number;
}

export interface NativeKvm {
  KvmCalibrationVm: new (config: NativeKvmVmConfig) => NativeKvmCalibrationVm;
  /** Opens /dev/kvm and reports what it supports (throws a SysError when it cannot). */
  kvmCapabilities(): NativeKvmCapabilities;
  /** maxVcpus: 8; mailboxEntries: page writes per vCPU per interval (65536). */
  kvmLimits: { maxVcpus: number; mailboxEntries: number };
}

// ---------------------------------------------------------------------------------------------
// guest-memory scanner (native/guestmem)
// ---------------------------------------------------------------------------------------------
/** Options of the native scanner; src/sources/guest-memory.ts validates and fills every field. */
export interface NativeGuestScannerOptions {
  /** Target process id. */
  pid: number;
  /** The region, in page-index order: page-aligned pieces of the target's address space. */
  segments: { address: bigint; bytes: number }[];
  /** Bytes per process_vm_readv call (multiple of 4096, 4096..256 MiB). */
  chunkBytes: number;
  /** false: every page every scan; true: a stratified sample of sampleFraction of the pages. */
  sampled: boolean;
  /** Fraction of pages per stratum, (0, 1]. */
  sampleFraction: number;
  /** Pages per stratum, 1..65536. */
  strataPages: number;
  /** Scans between redraws of the sample, >= 1. */
  resampleEvery: number;
  /** Skip pages absent from the target's page tables (/proc/PID/pagemap) instead of reading them. */
  skipAbsent: boolean;
  hash: 'auto' | 'avx2' | 'scalar';
  /** Hash key and sampling seed; 0n = random. */
  seed: bigint;
  /** Scan period, ms (ignored when manual). */
  intervalMs: number;
  /** Scan only on scanNow(). */
  manual: boolean;
  /** Intervals posted but not yet handled before further ones are dropped (seq gap), 1..1024. */
  maxInFlight: number;
  /**
   * Bitmap buffers, each >= bitmapBytes. Kept (referenced) by the scanner until close(); the scan
   * thread writes into a buffer only while it is on the free list, and lends it to the callback
   * for one call. Do not detach or transfer them while the scanner is open.
   */
  pool: Uint8Array[];
}

/** Counters of one scan, as posted by the scan thread. Times are CLOCK_MONOTONIC milliseconds. */
export interface NativeScanInfo {
  seq: number;
  tStartMonoMs: number;
  tEndMonoMs: number;
  /** Pages whose change was tested: all pages (exact) or the sample. */
  pagesCompared: number;
  /** Pages copied from the target (absent pages are not read). */
  pagesRead: number;
  /** Pages of the scan plan skipped because absent from the target's page tables. */
  pagesAbsent: number;
  /** Bits set: changed pages among those compared. */
  dirtyPages: number;
  /** Horvitz-Thompson estimate of changed pages in the whole region (= dirtyPages when exact). */
  dirtyEstimate: number;
  bytesRead: number;
  scanUs: number;
  /** CPU time of the scan thread during the scan, microseconds. */
  scanCpuUs: number;
  late: boolean;
  lateMs: number;
  skippedTicks: number;
}

/** Why a scanner ended on its own (the target exited: code 'ESRCH'; mapping gone: 'EFAULT'). */
export interface NativeScanEnd {
  code: string;
  errno: number;
  syscall: string;
  message: string;
  duringScan: boolean;
  tEndMonoMs: number;
}

export type NativeScanCallback = (
  kind: 'baseline' | 'interval' | 'end',
  info: NativeScanInfo | NativeScanEnd,
  /** Pool index of the bitmap lent for this call (intervals only; undefined = no free buffer). */
  bufferIndex: number | undefined,
) => void;

/** A running scan thread. Throws SysError from the constructor (ESRCH, EPERM, EFAULT, EACCES). */
export interface NativeGuestScanner {
  /** Requests a scan now (coalesced while one runs). */
  scanNow(): void;
  /** Stops and joins the thread, frees fds and the hash table; idempotent. Queued events are dropped. */
  close(): void;
  readonly pagesTotal: number;
  /** ceil(pagesTotal / 64) * 8. */
  readonly bitmapBytes: number;
  readonly hashImpl: 'avx2' | 'scalar';
}

export interface NativeGuestmem {
  GuestScanner: new (options: NativeGuestScannerOptions, callback: NativeScanCallback) => NativeGuestScanner;
  /** Hashes pages.length / 4096 pages into out (one entry per page) with the key from seed. */
  guestmemHashPages(pages: Uint8Array, out: BigUint64Array, impl: 'auto' | 'avx2' | 'scalar', seed: bigint): void;
  /** One process_vm_readv of dest.length bytes at address in pid; returns bytes copied. Reads only. */
  guestmemReadInto(pid: number, address: bigint, dest: Uint8Array): number;
  guestmemCpuHasAvx2(): boolean;
}

export type NativeAddon = NativeBitmap & NativeKvm & NativeGuestmem;

function load(): NativeAddon {
  try {
    // DPA_ADDON_PATH loads another build of the same sources, e.g. the ASan+UBSan one that
    // scripts/native-test.js runs the JavaScript suites against.
    const explicit = process.env.DPA_ADDON_PATH;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    if (explicit) return require(explicit) as NativeAddon;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (name: string) => unknown;
    return bindings('dpa_native') as NativeAddon;
  } catch (err) {
    const e = new Error(
      `dpa: the native addon is not built or failed to load (${(err as Error).message}). ` +
        'Run `npm install` (or `npm run build:native`) in the project directory.',
    );
    (e as Error & { cause?: unknown }).cause = err;
    throw e;
  }
}

/** The loaded addon. Loading is synchronous and happens once, on first import. */
export const native: NativeAddon = load();
