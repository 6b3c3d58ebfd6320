/**
 * KVM calibration source: a VM this process creates through /dev/kvm, whose guest (written in
 * this project, native/kvm/guest_image.cc) writes exactly the pages the host lists for each
 * interval. Every vCPU is halted at each interval boundary, so the set of pages asked for is the
 * exact truth; the harvest (KVM dirty bitmap or dirty ring) is compared with it bit by bit on the
 * native harvest thread. It answers "does this harvest path see every written page, and nothing
 * else, at this rate and frequency?" and measures what harvesting costs.
 *
 * - Guest RAM is memslot 0 with dirty logging (the measured region), mapped MAP_NORESERVE: a
 *   16 GiB guest costs only the pages it writes. Page tables, code and page lists live in an aux
 *   memslot above RAM without dirty logging, so they never show up in the measurement.
 * - Harvest modes: 'bitmap' = KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect, 1 GiB
 *   chunks with set bits); 'ring' = per-vCPU dirty rings harvested then KVM_RESET_DIRTY_RINGS.
 * - Pacing: intervals on absolute CLOCK_MONOTONIC deadlines on a dedicated native thread (not the
 *   libuv pool). If the guest cannot finish an interval's writes in time, the interval is `late`,
 *   the rate achieved is reported and `rateReached` is false; nothing is hidden.
 * - Bitmaps are lent from a pool of caller-side Uint8Arrays: `interval.bitmap` is valid only
 *   during the listener call (copy it to keep it). When no buffer is free the counts are still
 *   delivered with `bitmapDropped: true`.
 * - A run with `seconds` ends on its own; after that nothing keeps the event loop alive even if
 *   close() is forgotten (the fds then go at garbage collection or exit). close() releases every
 *   fd, mapping and thread at once and is idempotent.
 */
import { performance } from 'node:perf_hooks';
import {
  native,
  type NativeKvmCalibrationVm,
  type NativeKvmInterval,
  type NativeKvmRunEnd,
  type NativeKvmRunStats,
} from '../native';
import type { DirtySource, Interval } from './types';

export type KvmHarvestMode = 'bitmap' | 'ring';
export type KvmPattern = 'uniform' | 'sequential' | 'zipf';

/** Pages per MiB of guest RAM (4 KiB pages). */
const PAGES_PER_MIB = 256;

/** Ranges of every option, checked before native code runs. */
export const KVM_CALIBRATION_LIMITS = {
  guestMib: { min: 64, max: 65536 },
  vcpus: { min: 1, max: 8 },
  ringEntries: { min: 256, max: 65536 },
  zipfS: { min: 0.01, max: 10 },
  intervalMs: { min: 1, max: 1000 },
  seconds: { min: 0.001, max: 86400 },
  seed: { min: 0, max: Number.MAX_SAFE_INTEGER },
  bitmapPoolSize: { min: 0, max: 16 },
  ratePagesPerSec: { min: 0, max: 1e9 },
  /** Page writes one vCPU can be given per interval (its mailbox in the aux region). */
  writesPerVcpuPerInterval: 65536,
} as const;

export interface KvmCalibrationOptions {
  /** Guest RAM, MiB: integer 64..65536. */
  guestMib: number;
  /** vCPUs, integer 1..8 (one native thread each). Default 1. */
  vcpus?: number;
  /** Harvest mode. Default 'bitmap'. */
  mode?: KvmHarvestMode;
  /** Ring mode: entries per vCPU ring, a power of two 256..65536. Default 4096. */
  ringEntries?: number;
  /** Write pattern over the hot set. Default 'uniform'. */
  pattern?: KvmPattern;
  /**
   * Page writes per second (not distinct pages), > 0 (0 allowed only with `allowIdle`).
   * ratePagesPerSec × intervalMs / 1000 must not exceed 65536 × vcpus (the mailboxes).
   */
  ratePagesPerSec: number;
  /** Hot set, pages: integer 1..guest pages (guestMib × 256). Default min(guest pages, 65536). */
  hotPages?: number;
  /** Zipf exponent s, 0.01..10 (pattern 'zipf'). Default 1.1. */
  zipfS?: number;
  /** Interval, ms: integer 1..1000 (1000..1 Hz). Default 10. */
  intervalMs?: number;
  /** Run length, seconds (0.001..86400): ends on its own after round(seconds / interval) intervals. Omit to run until close(). */
  seconds?: number;
  /** Workload seed: integer 0..2^53-1. Default 1. */
  seed?: number;
  /** Bitmap buffers lent to listeners, 0..16 (0 = counts only). Default 4. */
  bitmapPoolSize?: number;
  /** Accept ratePagesPerSec = 0 (an idle guest: measures the harvest's fixed cost). */
  allowIdle?: boolean;
}

/** Options with every default filled in, as passed to the native VM. */
export interface ResolvedKvmCalibrationOptions {
  guestMib: number;
  vcpus: number;
  mode: KvmHarvestMode;
  ringEntries: number;
  pattern: KvmPattern;
  ratePagesPerSec: number;
  hotPages: number;
  zipfS: number;
  intervalMs: number;
  /** 0 = until close(). */
  maxIntervals: number;
  seed: number;
  bitmapPoolSize: number;
}

function checkInt(name: string, v: unknown, min: number, max: number, unit = ''): number {
  if (typeof v !== 'number') throw new TypeError(`${name} must be a number (got ${typeof v})`);
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} must be an integer from ${min} to ${max}${unit ? ' ' + unit : ''} (got ${v})`);
  }
  return v;
}

function checkNumber(name: string, v: unknown, min: number, max: number, unit = ''): number {
  if (typeof v !== 'number') throw new TypeError(`${name} must be a number (got ${typeof v})`);
  if (!Number.isFinite(v) || v < min || v > max) {
    throw new RangeError(`${name} must be a number from ${min} to ${max}${unit ? ' ' + unit : ''} (got ${v})`);
  }
  return v;
}

function checkEnum<T extends string>(name: string, v: unknown, choices: readonly T[]): T {
  if (typeof v !== 'string' || !(choices as readonly string[]).includes(v)) {
    throw new RangeError(`${name} must be one of ${choices.join(', ')} (got ${String(v)})`);
  }
  return v as T;
}

/** Validates and fills defaults. Throws RangeError/TypeError naming the option and its range. */
export function resolveKvmCalibrationOptions(o: KvmCalibrationOptions): ResolvedKvmCalibrationOptions {
  if (typeof o !== 'object' || o === null) throw new TypeError('options must be an object');
  const L = KVM_CALIBRATION_LIMITS;
  const guestMib = checkInt('guestMib', o.guestMib, L.guestMib.min, L.guestMib.max, 'MiB');
  const guestPages = guestMib * PAGES_PER_MIB;
  const vcpus = checkInt('vcpus', o.vcpus ?? 1, L.vcpus.min, L.vcpus.max);
  const mode = checkEnum('mode', o.mode ?? 'bitmap', ['bitmap', 'ring'] as const);
  const ringEntries = checkInt('ringEntries', o.ringEntries ?? 4096, L.ringEntries.min, L.ringEntries.max);
  if ((ringEntries & (ringEntries - 1)) !== 0) {
    throw new RangeError(`ringEntries must be a power of two from ${L.ringEntries.min} to ${L.ringEntries.max} (got ${ringEntries})`);
  }
  const pattern = checkEnum('pattern', o.pattern ?? 'uniform', ['uniform', 'sequential', 'zipf'] as const);
  const intervalMs = checkInt('intervalMs', o.intervalMs ?? 10, L.intervalMs.min, L.intervalMs.max, 'ms');
  const minRate = o.allowIdle ? 0 : Number.MIN_VALUE;
  const ratePagesPerSec = checkNumber('ratePagesPerSec', o.ratePagesPerSec, minRate, L.ratePagesPerSec.max, 'page writes/s');
  if (ratePagesPerSec === 0 && !o.allowIdle) throw new RangeError('ratePagesPerSec must be > 0');
  // The guest executes at most one mailbox of writes per vCPU per interval: a higher rate could
  // never be reached, whatever the machine.
  const maxRate = (L.writesPerVcpuPerInterval * vcpus * 1000) / intervalMs;
  if (ratePagesPerSec > maxRate) {
    throw new RangeError(
      `ratePagesPerSec must be at most ${maxRate} page writes/s with ${vcpus} vCPU(s) at intervalMs ${intervalMs} ` +
        `(${L.writesPerVcpuPerInterval} writes per vCPU per interval; got ${ratePagesPerSec})`,
    );
  }
  const hotPages = checkInt('hotPages', o.hotPages ?? Math.min(guestPages, 65536), 1, guestPages, 'pages');
  const zipfS = checkNumber('zipfS', o.zipfS ?? 1.1, L.zipfS.min, L.zipfS.max);
  const seed = checkInt('seed', o.seed ?? 1, L.seed.min, L.seed.max);
  let maxIntervals = 0;
  if (o.seconds !== undefined) {
    const seconds = checkNumber('seconds', o.seconds, L.seconds.min, L.seconds.max, 's');
    maxIntervals = Math.max(1, Math.round((seconds * 1000) / intervalMs));
  }
  const bitmapPoolSize = checkInt('bitmapPoolSize', o.bitmapPoolSize ?? 4, L.bitmapPoolSize.min, L.bitmapPoolSize.max);
  return { guestMib, vcpus, mode, ringEntries, pattern, ratePagesPerSec, hotPages, zipfS, intervalMs, maxIntervals, seed, bitmapPoolSize };
}

/** An interval of the calibration VM: the common Interval plus the truth and timing details. */
export interface KvmInterval extends Interval {
  truthPages: number;
  mismatchedPages: number;
  harvestUs: number;
  /** Written but not reported / reported but not written. */
  missingPages: number;
  extraPages: number;
  mismatchPage: number | null;
  writesRequested: number;
  /** From releasing the vCPUs until the last one halted, µs. */
  guestRunUs: number;
  compareUs: number;
  /** The guest finished after the interval's deadline. */
  late: boolean;
  ringFullExits: number;
  earlyHarvests: number;
  bitmapDropped: boolean;
}

export type KvmRunStats = NativeKvmRunStats;

/** How a run ended: the native end codes, or CLOSED when close() came first. */
export interface KvmRunEnd {
  code: string;
  message: string;
  errno?: number;
  syscall?: string;
  stats: KvmRunStats;
}

// performance.now() counts from the process's time origin; the native side reports raw
// CLOCK_MONOTONIC (the clock of process.hrtime). Offset taken once.
const MONO_TO_PERF_MS = performance.now() - Number(process.hrtime.bigint()) / 1e6;

/** The calibration VM as a DirtySource. Create with KvmCalibrationSource.start(). */
export class KvmCalibrationSource implements DirtySource {
  readonly name: string;
  readonly options: ResolvedKvmCalibrationOptions;
  readonly pagesTotal: number;
  /** Resolves when the run ends on its own (COMPLETE or an error code) or with CLOSED on close(). */
  readonly ended: Promise<KvmRunEnd>;
  private readonly vm: NativeKvmCalibrationVm;
  private readonly intervalListeners: ((i: KvmInterval) => void)[] = [];
  private readonly endListeners: ((r: { code: string; message: string }) => void)[] = [];
  private resolveEnded!: (end: KvmRunEnd) => void;
  private settled = false;
  private closed = false;

  private constructor(options: ResolvedKvmCalibrationOptions) {
    this.options = options;
    this.name = `kvm-${options.mode}`;
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    this.vm = new native.KvmCalibrationVm({
      guestMib: options.guestMib,
      vcpus: options.vcpus,
      mode: options.mode,
      ringEntries: options.ringEntries,
    });
    this.pagesTotal = this.vm.guestPages;
  }

  /** Validates `options`, creates the VM and starts the run. Throws SysError if KVM refuses. */
  static start(options: KvmCalibrationOptions): KvmCalibrationSource {
    const resolved = resolveKvmCalibrationOptions(options);
    const source = new KvmCalibrationSource(resolved);
    try {
      const buffers = Array.from({ length: resolved.bitmapPoolSize }, () => new Uint8Array(source.vm.bitmapBytes));
      source.vm.start(
        {
          pattern: resolved.pattern,
          ratePagesPerSec: resolved.ratePagesPerSec,
          hotPages: resolved.hotPages,
          zipfS: resolved.zipfS,
          seed: resolved.seed,
          intervalMs: resolved.intervalMs,
          maxIntervals: resolved.maxIntervals,
        },
        (i) => source.dispatch(i),
        (end) => source.finish(end),
        buffers,
      );
    } catch (err) {
      source.vm.close();
      throw err;
    }
    return source;
  }

  /** Bytes of one bitmap (one bit per guest page). */
  get bitmapBytes(): number {
    return this.vm.bitmapBytes;
  }

  onInterval(listener: (interval: KvmInterval) => void): void {
    this.intervalListeners.push(listener);
  }

  onEnd(listener: (reason: { code: string; message: string }) => void): void {
    this.endListeners.push(listener);
  }

  /** Cumulative counters so far (valid after close() too). */
  stats(): KvmRunStats {
    return this.vm.stats();
  }

  /** KVM_GET_DIRTY_LOG without clearing (bitmap mode); SysError ENXIO in ring mode, EBADF after close(). */
  readDirtyLog(out: Uint8Array): number {
    if (!(out instanceof Uint8Array)) throw new TypeError('out must be a Uint8Array');
    if (out.byteLength < this.vm.bitmapBytes) throw new RangeError(`out must hold at least ${this.vm.bitmapBytes} bytes`);
    return this.vm.readDirtyLog(out);
  }

  /** Let an active run stop keeping the event loop alive (like timer.unref()). */
  unref(): this {
    this.vm.unref();
    return this;
  }

  ref(): this {
    this.vm.ref();
    return this;
  }

  /** Stops the run and releases every fd, mapping and thread. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.vm.close();
    if (!this.settled) {
      this.settled = true;
      this.resolveEnded({ code: 'CLOSED', message: 'closed', stats: this.vm.stats() });
    }
  }

  private dispatch(n: NativeKvmInterval): void {
    if (this.closed) return;
    const interval: KvmInterval = {
      source: this.name,
      seq: n.seq,
      tStartMs: n.tStartMs + MONO_TO_PERF_MS,
      tEndMs: n.tEndMs + MONO_TO_PERF_MS,
      pagesTotal: this.pagesTotal,
      dirtyPages: n.measuredPages,
      truthPages: n.truthPages,
      mismatchedPages: n.mismatchedPages,
      harvestUs: n.harvestUs,
      missingPages: n.missingPages,
      extraPages: n.extraPages,
      mismatchPage: n.mismatchPage,
      writesRequested: n.writesRequested,
      guestRunUs: n.guestRunUs,
      compareUs: n.compareUs,
      late: n.late,
      ringFullExits: n.ringFullExits,
      earlyHarvests: n.earlyHarvests,
      bitmapDropped: n.bitmapDropped,
    };
    if (n.bitmap) interval.bitmap = n.bitmap;
    this.emit(this.intervalListeners, interval);
  }

  // Called from native code: a listener's exception is rethrown outside the native callback so
  // it surfaces as an ordinary uncaught exception (Node would otherwise only print a warning).
  private emit<T>(listeners: ((value: T) => void)[], value: T): void {
    for (const l of listeners) {
      try {
        l(value);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  private finish(end: NativeKvmRunEnd): void {
    if (this.settled) return;
    this.settled = true;
    this.resolveEnded({ ...end });
    this.emit(this.endListeners, { code: end.code, message: end.message });
  }
}

/** What `dpa calibrate` reports. Times in ms/µs as named; rates per second of wall time. */
export interface CalibrationSummary {
  mode: KvmHarvestMode;
  guestMib: number;
  vcpus: number;
  pattern: KvmPattern;
  intervalMs: number;
  hotPages: number;
  seed: number;
  /** How the run ended: COMPLETE, CLOSED (stopped early), or an error code. */
  endCode: string;
  endMessage: string;
  intervals: number;
  /** Intervals compared natively but not delivered to JS (event loop too busy). */
  droppedIntervals: number;
  truthPages: number;
  measuredPages: number;
  mismatchedIntervals: number;
  mismatchedPages: number;
  /** Achieved intervals per second of wall time. */
  harvestHz: number;
  harvestUsMean: number;
  harvestUsP50: number;
  harvestUsP99: number;
  harvestUsMax: number;
  /** Mean harvest µs per interval divided by guest GiB. */
  harvestUsPerGiB: number;
  /** Harvest thread CPU time (harvest, truth comparison, pacing) as % of wall time. */
  cpuPercent: number;
  /** Sum of all vCPU threads' CPU time as % of wall time (can exceed 100). */
  vcpuCpuPercent: number;
  requestedRatePagesPerSec: number;
  achievedRatePagesPerSec: number;
  /** achievedRatePagesPerSec >= 95 % of the requested rate. */
  rateReached: boolean;
  /** Intervals whose writes the guest had not finished by the deadline. */
  lateIntervals: number;
  ringFullExits: number;
  earlyHarvests: number;
  bitmapDropped: number;
  wallMs: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * Runs one calibration to its end (options.seconds is required) and summarises it. Aborting the
 * signal closes the VM early (endCode CLOSED). The VM is always closed when this settles.
 */
export async function runCalibration(
  options: KvmCalibrationOptions,
  hooks: { signal?: AbortSignal; onInterval?: (i: KvmInterval) => void } = {},
): Promise<CalibrationSummary> {
  if (options.seconds === undefined) throw new RangeError('seconds must be given (0.001 to 86400 s) for runCalibration');
  const source = KvmCalibrationSource.start(options);
  const harvestUs: number[] = [];
  source.onInterval((i) => {
    harvestUs.push(i.harvestUs);
    hooks.onInterval?.(i);
  });
  const onAbort = (): void => void source.close();
  hooks.signal?.addEventListener('abort', onAbort, { once: true });
  if (hooks.signal?.aborted) onAbort();
  let end: KvmRunEnd;
  try {
    end = await source.ended;
  } finally {
    hooks.signal?.removeEventListener('abort', onAbort);
    await source.close();
  }
  const o = source.options;
  const s = source.stats();
  const wallMs = Math.max(0, s.lastEndMs - s.firstStartMs);
  const wallSec = wallMs / 1000;
  harvestUs.sort((a, b) => a - b);
  const harvestUsMean = s.intervals ? s.harvestUsTotal / s.intervals : 0;
  const achieved = wallSec > 0 ? s.writes / wallSec : 0;
  return {
    mode: o.mode,
    guestMib: o.guestMib,
    vcpus: o.vcpus,
    pattern: o.pattern,
    intervalMs: o.intervalMs,
    hotPages: o.hotPages,
    seed: o.seed,
    endCode: end.code,
    endMessage: end.message,
    intervals: s.intervals,
    droppedIntervals: s.droppedIntervals,
    truthPages: s.truthPages,
    measuredPages: s.measuredPages,
    mismatchedIntervals: s.mismatchedIntervals,
    mismatchedPages: s.mismatchedPages,
    harvestHz: wallSec > 0 ? s.intervals / wallSec : 0,
    harvestUsMean,
    harvestUsP50: percentile(harvestUs, 50),
    harvestUsP99: percentile(harvestUs, 99),
    harvestUsMax: s.harvestUsMax,
    harvestUsPerGiB: harvestUsMean / (o.guestMib / 1024),
    cpuPercent: wallMs > 0 ? (100 * s.harvestThreadCpuMs) / wallMs : 0,
    vcpuCpuPercent: wallMs > 0 ? (100 * s.vcpuCpuMs) / wallMs : 0,
    requestedRatePagesPerSec: o.ratePagesPerSec,
    achievedRatePagesPerSec: achieved,
    rateReached: achieved >= 0.95 * o.ratePagesPerSec,
    lateIntervals: s.lateIntervals,
    ringFullExits: s.ringFullExits,
    earlyHarvests: s.earlyHarvests,
    bitmapDropped: s.bitmapDropped,
    wallMs,
  };
}
