/**
 * Types and argument checks of the lab guest's line protocol (guest/PROTOCOL.md, version 1).
 * The guest checks every field again; checking here first gives the caller a RangeError naming
 * the option before anything is sent.
 */

/** The protocol version this host side speaks; the guest's `ready` event must match it. */
export const GUEST_PROTOCOL_VERSION = 1;

/** Guest page size, bytes. */
export const GUEST_PAGE_BYTES = 4096;

/** How the workload picks the next page (or disk block) to write. */
export type AccessPattern = 'uniform' | 'sequential' | 'zipf';

/** Parameters of the memory workload (`mem-start`). */
export interface MemWorkloadParams {
  /** Buffer size, MiB (1..65536; default 16). Must fit in guest RAM beside the kernel (~40 MiB). */
  mib?: number;
  /** Pages the pattern draws from, counted from the buffer's start (0 = the whole buffer; default 0). */
  hotPages?: number;
  /** Default 'uniform'. Zipf ranks are page indices: page 0 of the hot set is the hottest. */
  pattern?: AccessPattern;
  /** Page writes per second (0 = as fast as the vCPU allows; 0..1e9; default 1000). */
  ratePagesPerSec?: number;
  /** Zipf exponent s (0..10; default 1). */
  zipfS?: number;
  /** PRNG seed (integer 0..2^53-1; default 1). */
  seed?: number;
}

/** Parameters of the disk workload (`disk-start`) on the guest's /dev/vda. */
export interface DiskWorkloadParams {
  /** Bytes per write, a multiple of 4096 (4096..1048576; default 4096). */
  blockBytes?: number;
  /** Start of the written region on the disk, bytes, a multiple of 4096 (default 0). */
  offsetBytes?: number;
  /** Blocks in the region (0 = up to the end of the disk; default 0). */
  regionBlocks?: number;
  /** Block writes per second (0 = unthrottled; 0..1e7; default 100). */
  blocksPerSec?: number;
  /** Default 'sequential'. */
  pattern?: AccessPattern;
  /** Zipf exponent s (0..10; default 1). */
  zipfS?: number;
  /** PRNG seed (integer 0..2^53-1; default 1). */
  seed?: number;
  /** 'direct': O_DIRECT writes; 'fsync': buffered writes made durable every 10 ms batch. Default 'direct'. */
  mode?: 'direct' | 'fsync';
  /**
   * Writes in flight (1..64, ≤ regionBlocks; default 1): that many writer threads, each paced at
   * blocksPerSec / queueDepth and owning the blocks b with b % queueDepth equal to its index, as a
   * guest doing writeback or async I/O keeps several writes queued. At 1 each write waits for the
   * previous one, so the rate is bound by the write latency.
   */
  queueDepth?: number;
}

/** The guest's first line, once its workload has opened the port. */
export interface GuestReadyEvent {
  event: 'ready';
  protocol: number;
  /** Guest time since its kernel booted, ms. */
  uptimeMs: number;
  pageBytes: number;
  memTotalBytes: number;
  cpus: number;
  /** The disk the workload writes, e.g. /dev/vda. */
  disk: string;
  /** 0 when the VM has no disk. */
  diskBytes: number;
  port: string;
}

/** Memory workload state, as `mem-start`, `mem-stop`, `quiesce` and `status` return it. */
export interface MemSummary {
  running: boolean;
  pages: number;
  hotPages: number;
  pattern: AccessPattern;
  totalWrites: number;
  /** Run tag (hex u64) written into every page. */
  tag: string;
  /** XOR over pages of digestTerm(page, generation), hex u64 (see guest-pattern.ts). */
  digest: string;
}

export interface DiskSummary {
  running: boolean;
  blockBytes: number;
  regionBlocks: number;
  offsetBytes: number;
  mode: 'direct' | 'fsync';
  pattern: AccessPattern;
  /** Writer threads, each with one write in flight. */
  queueDepth: number;
  totalWrites: number;
  /** fdatasync calls (fsync mode). */
  totalSyncs: number;
  /** strerror of the last failed write or sync, or null. */
  lastError: string | null;
}

export interface MemVerification {
  pages: number;
  badPages: number;
  /** Up to 8 buffer page indices that failed. */
  firstBad: number[];
  /** Expected digest, from the generations the workload recorded. */
  digest: string;
  /** Digest recomputed from the pages' contents; equals `digest` when nothing was lost. */
  contentDigest: string;
  totalWrites: number;
}

export interface DiskVerification {
  /** Region blocks written at least once, each read back with O_DIRECT. */
  checkedBlocks: number;
  badBlocks: number;
  /** Up to 8 region block indices that failed. */
  firstBad: number[];
  totalWrites: number;
  /** strerror when reading back failed, else null. */
  error: string | null;
}

export interface VerifyResult {
  mem?: MemVerification;
  disk?: DiskVerification;
}

/** `[bufferPage, gpa, pages, step]`: buffer page bufferPage+k is at gpa + k*step*4096 (step ±1). */
export type GpaRun = [bufferPage: number, gpa: number, pages: number, step: 1 | -1];

export interface GpaReport {
  pageBytes: number;
  pages: number;
  tag: string;
  runs: GpaRun[];
  /** Buffer pages without a frame (should be 0: the buffer is mlocked). */
  unmappedPages: number;
}

/** One interval report; `mem`/`disk` appear once that workload has a buffer/region. */
export interface GuestIntervalEvent {
  event: 'interval';
  seq: number;
  /** Guest monotonic time at the report, ms. */
  tMs: number;
  /** Guest time since the previous report, ms. */
  intervalMs: number;
  mem?: {
    running: boolean;
    /** Page writes in this interval. */
    writes: number;
    /** Distinct buffer pages written in this interval. */
    distinctPages: number;
    totalWrites: number;
    /** Base64 bitmap of the pages written (with `reports({pageSets: true})`); see decodePageSet. */
    pageSet?: string;
  };
  disk?: { running: boolean; writes: number; bytes: number; totalWrites: number };
}

export interface ReportSettings {
  /** 0 = no interval reports, else 10..3600000 ms (guest default 1000). */
  intervalMs?: number;
  /** Include the bitmap of written pages in each report (default false). */
  pageSets?: boolean;
}

const MAX_SEED = Number.MAX_SAFE_INTEGER;

function checkNumber(name: string, v: unknown, min: number, max: number, integer: boolean): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max} (got ${String(v)})`);
  }
}

function checkEnum<T extends string>(name: string, v: unknown, allowed: readonly T[]): void {
  if (v === undefined) return;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new RangeError(`${name}: must be one of ${allowed.join(', ')} (got ${String(v)})`);
  }
}

function checkKnown(what: string, params: object, known: readonly string[]): void {
  if (typeof params !== 'object' || params === null || Array.isArray(params)) throw new TypeError(`${what}: must be an object`);
  for (const key of Object.keys(params)) {
    if (!known.includes(key)) throw new TypeError(`${what}: unknown option '${key}' (known: ${known.join(', ')})`);
  }
}

const PATTERNS: readonly AccessPattern[] = ['uniform', 'sequential', 'zipf'];

/** Throws RangeError/TypeError naming the first bad option. */
export function checkMemParams(p: MemWorkloadParams): void {
  checkKnown('mem workload', p, ['mib', 'hotPages', 'pattern', 'ratePagesPerSec', 'zipfS', 'seed']);
  checkNumber('mib', p.mib, 1, 65536, true);
  const pages = ((p.mib ?? 16) * 1024 * 1024) / GUEST_PAGE_BYTES;
  checkNumber('hotPages', p.hotPages, 0, pages, true);
  checkEnum('pattern', p.pattern, PATTERNS);
  checkNumber('ratePagesPerSec', p.ratePagesPerSec, 0, 1e9, false);
  checkNumber('zipfS', p.zipfS, 0, 10, false);
  checkNumber('seed', p.seed, 0, MAX_SEED, true);
}

/** Throws RangeError/TypeError naming the first bad option (the disk size is checked by the guest). */
export function checkDiskParams(p: DiskWorkloadParams): void {
  checkKnown('disk workload', p, ['blockBytes', 'offsetBytes', 'regionBlocks', 'blocksPerSec', 'pattern', 'zipfS', 'seed', 'mode', 'queueDepth']);
  checkNumber('blockBytes', p.blockBytes, 4096, 1 << 20, true);
  if (p.blockBytes !== undefined && p.blockBytes % 4096 !== 0) throw new RangeError(`blockBytes: must be a multiple of 4096 (got ${p.blockBytes})`);
  checkNumber('offsetBytes', p.offsetBytes, 0, MAX_SEED, true);
  if (p.offsetBytes !== undefined && p.offsetBytes % 4096 !== 0) throw new RangeError(`offsetBytes: must be a multiple of 4096 (got ${p.offsetBytes})`);
  checkNumber('regionBlocks', p.regionBlocks, 0, MAX_SEED, true);
  checkNumber('blocksPerSec', p.blocksPerSec, 0, 1e7, false);
  checkEnum('pattern', p.pattern, PATTERNS);
  checkNumber('zipfS', p.zipfS, 0, 10, false);
  checkNumber('seed', p.seed, 0, MAX_SEED, true);
  checkEnum('mode', p.mode, ['direct', 'fsync'] as const);
  checkNumber('queueDepth', p.queueDepth, 1, 64, true);
  if (p.queueDepth !== undefined && p.regionBlocks && p.queueDepth > p.regionBlocks) {
    throw new RangeError(`queueDepth: must be ≤ regionBlocks (${p.regionBlocks}) (got ${p.queueDepth})`);
  }
}

export function checkReportSettings(p: ReportSettings): void {
  checkKnown('reports', p, ['intervalMs', 'pageSets']);
  checkNumber('intervalMs', p.intervalMs, 0, 3_600_000, true);
  if (p.intervalMs !== undefined && p.intervalMs > 0 && p.intervalMs < 10) {
    throw new RangeError(`intervalMs: must be 0 (off) or from 10 to 3600000 (got ${p.intervalMs})`);
  }
  if (p.pageSets !== undefined && typeof p.pageSets !== 'boolean') throw new TypeError('pageSets: must be a boolean');
}

/** Decodes an interval's `pageSet` into a bitmap: bit (i % 8) of byte (i / 8) is buffer page i. */
export function decodePageSet(pageSet: string): Uint8Array {
  return new Uint8Array(Buffer.from(pageSet, 'base64'));
}

/** Buffer page → guest-physical address, expanded from a GPA report (index = buffer page). */
export function expandGpaRuns(report: GpaReport): Float64Array {
  const gpas = new Float64Array(report.pages).fill(Number.NaN);
  for (const [first, gpa, pages, step] of report.runs) {
    for (let k = 0; k < pages; k++) gpas[first + k] = gpa + k * step * report.pageBytes;
  }
  return gpas;
}
