/**
 * Pre-copy RAM migration predictor: what QEMU 7.2's pre-copy loop (migration/ram.c,
 * migration/migration.c) will do with a guest whose dirtying is described by a {@link DirtyCurve},
 * over a link of a given speed, with a given downtime limit and auto-converge settings.
 *
 * The rules modelled, as QEMU 7.2 applies them:
 * - Iteration 1 sends every page. A page whose content is all zero costs a header on the wire
 *   (8-byte offset/flags word + 1 fill byte, RAM_SAVE_FLAG_ZERO); any other page costs its
 *   4096 bytes + the 8-byte header.
 * - Each later iteration sends the pages dirtied while the previous one was on the wire:
 *   D(duration of the previous iteration), under the CPU throttle in force then. Those pages are
 *   assumed non-zero (they were just written).
 * - Switchover happens at a bitmap sync when the pending RAM, counted as pages × page size,
 *   is below threshold = measured bandwidth × downtime-limit; the stop-and-copy then sends the
 *   pending pages (with headers) and that time is the downtime.
 * - The wire rate is min(link share, max-bandwidth). QEMU's default max-bandwidth is 128 MiB/s
 *   and LXD never changes it, so that cap is the default here too.
 * - Auto-converge (migration_trigger_throttle): at a bitmap sync that ends a period longer than
 *   1 s (periods start at the previous such sync; shorter iterations are pooled into one period),
 *   if the bytes dirtied in the period exceed throttle-trigger-threshold % of the bytes
 *   transferred in it, a counter is incremented (it is never decremented by a quiet period);
 *   when it reaches 2 it is reset and the throttle rises: to cpu-throttle-initial if throttling
 *   is off, else by cpu-throttle-increment, capped at max-cpu-throttle (cpu-throttle-tailslow off,
 *   the default). A throttle of p % makes the guest run (1 − p/100) of the time, so a window of τ
 *   seconds dirties D((1 − p/100)·τ) pages — for a CPU-bound guest. A guest that paces its writes
 *   by the wall clock and is busy only b of the time (`vcpuBusyFraction`) loses nothing while
 *   1 − p/100 ≥ b, and one that makes up at most c seconds of a stall (`throttleCatchUpSec`)
 *   starts losing writes once the throttle's sleeps (10 ms·p/(1 − p) each) exceed c: the window
 *   then dirties D(f·τ), f = throttleRunFactor(p) (dirty-curve.ts, from softmmu/cpu-throttle.c).
 * - With `absorbPendingRewrites`, the syncs after the first pass count what QEMU counts: a page
 *   enters the pending set only if it is not pending already (cpu_physical_memory_sync_dirty_bitmap
 *   adds new bits), so a write to a hot page the pass has not sent yet is sent once, with its new
 *   content. Those counts also feed auto-converge (num_dirty_pages_period).
 *
 * Simplifications (each makes the prediction slightly optimistic or coarser, never hides a
 * non-convergence the rules above would show):
 * - A bitmap sync happens exactly at the end of each pass. QEMU 7.2 syncs when the remaining
 *   dirty bytes drop below the threshold, so a few pages of the previous pass ride along, and
 *   near the threshold it syncs on every 50–100 ms loop: QEMU's dirty-sync-count is therefore
 *   larger than `iterations` here. For the same reason QEMU switches over with the tail of the
 *   last pass still pending, so its real downtime is usually close to the limit: `downtimeMs`
 *   here is a lower bound (the pages dirtied during the last pass only), the limit × 4104/4096
 *   the upper one. Total times are barely affected (the tail is sent either way): against the
 *   tick-level QEMU 7.2 loop of src/sim/migration.ts they agree within 4 % (docs/BENCHMARKS.md).
 * - The throttle changes only at syncs (QEMU also changes it only there) and acts at once
 *   (QEMU's throttle timer needs one 10 ms slice).
 * - Scanning zero pages costs no time beyond their headers on the wire; device state, the
 *   bitmap sync itself and TCP overhead are not modelled; the bandwidth is constant.
 */
import { DirtyCurve, ThrottleResponse, throttledPages } from './dirty-curve';

/** QEMU 7.2's migration parameter defaults (migration/migration.c). */
export const QEMU_DEFAULTS = Object.freeze({
  downtimeLimitMs: 300,
  /** MAX_THROTTLE = 128 MiB/s. */
  maxBandwidthBytesPerSec: 128 * 1024 * 1024,
  cpuThrottleInitialPct: 20,
  cpuThrottleIncrementPct: 10,
  throttleTriggerThresholdPct: 50,
  maxCpuThrottlePct: 99,
});

/** Bytes on the wire per normal page beyond its content: the be64 offset|flags word. */
export const PAGE_HEADER_BYTES = 8;
/** Bytes on the wire per zero page: the header + the one fill byte. */
export const ZERO_PAGE_WIRE_BYTES = PAGE_HEADER_BYTES + 1;
/** QEMU only re-evaluates auto-converge at syncs more than this far apart. */
export const THROTTLE_PERIOD_SEC = 1;

export interface PrecopyInput {
  /** Guest RAM, bytes (> 0). */
  ramBytes: number;
  /** Target page size, bytes (default 4096; a power of two 512..65536). */
  pageBytes?: number;
  /** Share of RAM that is zero pages in the first pass, 0..1 (they cost ZERO_PAGE_WIRE_BYTES each). */
  zeroPageFraction: number;
  /** This migration's share of the link, bytes/s (> 0). */
  bandwidthBytesPerSec: number;
  /** QEMU's max-bandwidth, bytes/s (> 0, Infinity = uncapped); default 128 MiB/s, QEMU's default. */
  maxBandwidthBytesPerSec?: number;
  /** QEMU's downtime-limit, ms (> 0; QEMU accepts 0..2 000 000). */
  downtimeLimitMs: number;
  /** The guest's dirtying. */
  dirty: DirtyCurve;
  /** Auto-converge capability (default true: LXD and Incus enable it). */
  autoConverge?: boolean;
  /** cpu-throttle-initial, percent 1..99 (default 20). */
  cpuThrottleInitialPct?: number;
  /** cpu-throttle-increment, percent 1..99 (default 10). */
  cpuThrottleIncrementPct?: number;
  /** throttle-trigger-threshold, percent 1..100 (default 50). */
  throttleTriggerThresholdPct?: number;
  /** max-cpu-throttle, percent 1..99 (default 99). */
  maxCpuThrottlePct?: number;
  /**
   * Share of wall time the guest's vCPUs are busy when not throttled, (0, 1] (default 1: a
   * CPU-bound guest, whose dirtying the throttle cuts to 1 − p). A guest pacing its writes by
   * the wall clock loses nothing to a throttle of p until 1 − p < b (see throttleRunFactor).
   * Measure it before the migration from the vCPU threads' CPU time.
   */
  vcpuBusyFraction?: number;
  /**
   * The longest vCPU stall, s, after which a wall-clock paced guest makes up the writes it
   * missed (≥ 0; default Infinity). Only matters with vcpuBusyFraction < 1: a throttle of p
   * stalls each vCPU 10 ms·p/(1 − p) at a time, so above this the guest loses writes.
   */
  throttleCatchUpSec?: number;
  /**
   * Count only the pages QEMU counts (default false). QEMU's bitmap sync adds a dirtied page to
   * the pending set only if it is not pending already (cpu_physical_memory_sync_dirty_bitmap
   * counts new bits): a write to a page the current pass has not sent yet costs nothing extra.
   * true models that for a bounded hot set (`dirty.maxPages` finite) from the second pass on: of
   * the hot pages a pass sends, only those written after they went out come back. The first
   * (bulk) pass of a fresh migration is still counted in full: that is what QEMU 7.2 did on the
   * lab's TCG guests (docs/BENCHMARKS.md, "Predictor vs reality": right after the first sync the
   * pending RAM, and the bytes unthrottled migrations send, match every distinct page written
   * during the bulk pass). Caveat: on TCG, QEMU before 9.0 does not re-arm the TLB's dirty
   * tracking when a sync clears bits (fixed by "physmem: ... cpu_physical_memory_dirty_bits_cleared",
   * Fixes: aa8dc044772), so after the first sync stores through cached TLB entries go uncounted;
   * this option matched the lab's bytes and auto-converge steps, but on TCG part of what it
   * models is that under-count. On KVM (exact dirty log) QEMU's rule applies to the first pass
   * too; that case is not measured here. Off, every distinct page dirtied during any pass is sent
   * again — the rule the simulator (src/sim/migration.ts) also uses, kept as the default so the
   * two stay comparable (in the lab it sent ~14 % more bytes than QEMU under auto-converge).
   */
  absorbPendingRewrites?: boolean;
  /** Pre-copy passes after which the prediction gives up (1..100 000, default 1000). QEMU itself never gives up. */
  maxIterations?: number;
  /**
   * A CPU throttle held from the start, percent 0..99 (default 0), to ask "what if". With
   * auto-converge on, QEMU-style increments start from it.
   */
  fixedThrottlePct?: number;
  /**
   * To predict the rest of a pre-copy already under way: the RAM still to send in the current
   * pass, bytes (pages × page size, 0..ramBytes). The modelled first pass then sends these pages
   * (as non-zero pages) instead of all RAM; pass `fixedThrottlePct` = the throttle in force.
   * Absent: a fresh migration. The pages dirtied since the current pass began are unknown and
   * not counted, so a resumed prediction is slightly optimistic.
   */
  pendingBytes?: number;
  /**
   * Compute `toConverge` when it does not converge (default true). It costs ~100 extra
   * simulations; callers in a hot loop that only need the verdict pass false.
   */
  explain?: boolean;
}

export interface PrecopyIteration {
  /** 1 = the full first pass. */
  iteration: number;
  /** Bytes put on the wire in this pass (page contents + headers). */
  sendBytes: number;
  durationSec: number;
  /** Distinct pages the guest dirtied while this pass was on the wire (sent by the next one). */
  dirtiedPages: number;
  /** CPU throttle in force during this pass, percent. */
  throttlePct: number;
}

export interface PrecopyPrediction {
  /** True when the switchover condition is reached within maxIterations. */
  converges: boolean;
  /** Pre-copy passes, the first full pass included (the stop-and-copy is not counted). */
  iterations: number;
  /** Bytes on the wire, stop-and-copy included (when it converges). */
  bytesSent: number;
  /** Seconds from the start to the end of the stop-and-copy (to the last pass when it does not converge). */
  totalSec: number;
  /** Stop-and-copy duration, ms (NaN when it does not converge). */
  downtimeMs: number;
  /** QEMU's cpu-throttle-percentage after the last bitmap sync, percent (0 = not throttling). */
  finalThrottlePct: number;
  /** min(link share, max-bandwidth), bytes/s. */
  wireBytesPerSec: number;
  /** Switchover threshold: wire bytes/s × downtime-limit, bytes. */
  thresholdBytes: number;
  /** RAM still pending (pages × page size) at the end: below thresholdBytes when it converges. */
  pendingBytes: number;
  perIteration: PrecopyIteration[];
  /** Why it converges or not, in one sentence. */
  reason: string;
  /**
   * When it does not converge: the smallest single change (others held) that makes it converge,
   * each found by bisection on this model; a field is absent when no value in its range works.
   * `bandwidthBytesPerSec` is a wire rate: max-bandwidth must be raised to it too.
   */
  toConverge?: { bandwidthBytesPerSec?: number; downtimeLimitMs?: number; throttlePct?: number };
}

interface Resolved {
  ramBytes: number;
  pageBytes: number;
  zeroPageFraction: number;
  bandwidthBytesPerSec: number;
  maxBandwidthBytesPerSec: number;
  downtimeLimitMs: number;
  dirty: DirtyCurve;
  autoConverge: boolean;
  cpuThrottleInitialPct: number;
  cpuThrottleIncrementPct: number;
  throttleTriggerThresholdPct: number;
  maxCpuThrottlePct: number;
  maxIterations: number;
  fixedThrottlePct: number;
  pendingBytes: number | undefined;
  /** undefined = CPU-bound (1 − p). */
  response: ThrottleResponse | undefined;
  absorbPendingRewrites: boolean;
}

function num(name: string, value: unknown, min: number, max: number, opts: { integer?: boolean; minExclusive?: boolean } = {}): number {
  if (typeof value !== 'number' || Number.isNaN(value)) throw new TypeError(`${name}: must be a number (got ${String(value)})`);
  const lowOk = opts.minExclusive ? value > min : value >= min;
  if (!lowOk || value > max || (opts.integer && !Number.isInteger(value))) {
    const kind = opts.integer ? 'an integer' : 'a number';
    throw new RangeError(`${name}: must be ${kind} ${opts.minExclusive ? '>' : '≥'} ${min} and ≤ ${max} (got ${value})`);
  }
  return value;
}

function resolve(input: PrecopyInput): Resolved {
  if (input === null || typeof input !== 'object') throw new TypeError('predictPrecopy: input must be an object');
  const d = input.dirty;
  if (!d || typeof d.pagesInWindow !== 'function') throw new TypeError('dirty: must be a DirtyCurve (pagesInWindow(windowSec))');
  const pageBytes = num('pageBytes', input.pageBytes ?? 4096, 512, 65536, { integer: true });
  if ((pageBytes & (pageBytes - 1)) !== 0) throw new RangeError(`pageBytes: must be a power of two from 512 to 65536 (got ${pageBytes})`);
  const r: Resolved = {
    ramBytes: num('ramBytes', input.ramBytes, 0, Number.MAX_SAFE_INTEGER, { minExclusive: true }),
    pageBytes,
    zeroPageFraction: num('zeroPageFraction', input.zeroPageFraction, 0, 1),
    bandwidthBytesPerSec: num('bandwidthBytesPerSec', input.bandwidthBytesPerSec, 0, Number.MAX_VALUE, { minExclusive: true }),
    maxBandwidthBytesPerSec: num('maxBandwidthBytesPerSec', input.maxBandwidthBytesPerSec ?? QEMU_DEFAULTS.maxBandwidthBytesPerSec, 0, Infinity, { minExclusive: true }),
    downtimeLimitMs: num('downtimeLimitMs', input.downtimeLimitMs, 0, Number.MAX_VALUE, { minExclusive: true }),
    dirty: d,
    autoConverge: input.autoConverge ?? true,
    cpuThrottleInitialPct: num('cpuThrottleInitialPct', input.cpuThrottleInitialPct ?? QEMU_DEFAULTS.cpuThrottleInitialPct, 1, 99),
    cpuThrottleIncrementPct: num('cpuThrottleIncrementPct', input.cpuThrottleIncrementPct ?? QEMU_DEFAULTS.cpuThrottleIncrementPct, 1, 99),
    throttleTriggerThresholdPct: num('throttleTriggerThresholdPct', input.throttleTriggerThresholdPct ?? QEMU_DEFAULTS.throttleTriggerThresholdPct, 1, 100),
    maxCpuThrottlePct: num('maxCpuThrottlePct', input.maxCpuThrottlePct ?? QEMU_DEFAULTS.maxCpuThrottlePct, 1, 99),
    maxIterations: num('maxIterations', input.maxIterations ?? 1000, 1, 100_000, { integer: true }),
    fixedThrottlePct: num('fixedThrottlePct', input.fixedThrottlePct ?? 0, 0, 99),
    pendingBytes: undefined,
    response: undefined,
    absorbPendingRewrites: input.absorbPendingRewrites ?? false,
  };
  if (typeof r.absorbPendingRewrites !== 'boolean') throw new TypeError(`absorbPendingRewrites: must be a boolean (got ${String(input.absorbPendingRewrites)})`);
  if (input.vcpuBusyFraction !== undefined || input.throttleCatchUpSec !== undefined) {
    const vcpuBusyFraction = num('vcpuBusyFraction', input.vcpuBusyFraction ?? 1, 0, 1, { minExclusive: true });
    const catchUpSec = num('throttleCatchUpSec', input.throttleCatchUpSec ?? Infinity, 0, Infinity);
    // At 1 the guest is CPU-bound whatever its catch-up: the default 1 − p, same arithmetic.
    if (vcpuBusyFraction < 1) r.response = { vcpuBusyFraction, catchUpSec };
  }
  if (input.pendingBytes !== undefined) r.pendingBytes = num('pendingBytes', input.pendingBytes, 0, r.ramBytes);
  if (!Number.isFinite(r.ramBytes / r.bandwidthBytesPerSec)) throw new RangeError('bandwidthBytesPerSec: too small for ramBytes');
  return r;
}

const MiB = 1024 * 1024;
const fmtMiB = (bytes: number): string => `${(bytes / MiB).toFixed(bytes < 10 * MiB ? 2 : 1)} MiB`;

/** The simulation itself, on validated input; no toConverge search. */
function simulate(r: Resolved): PrecopyPrediction {
  const wire = Math.min(r.bandwidthBytesPerSec, r.maxBandwidthBytesPerSec);
  const pageWire = r.pageBytes + PAGE_HEADER_BYTES;
  const thresholdBytes = wire * (r.downtimeLimitMs / 1000);
  const totalPages = Math.ceil(r.ramBytes / r.pageBytes);
  const zeroPages = Math.round(totalPages * r.zeroPageFraction);

  let throttle = r.fixedThrottlePct;
  let throttling = throttle > 0;
  let highCount = 0;
  let periodStartSec = 0;
  let periodDirtyBytes = 0;
  let periodXferBytes = 0;
  let t = 0;
  let bytesSent = 0;
  let sendBytes =
    r.pendingBytes === undefined
      ? (totalPages - zeroPages) * pageWire + zeroPages * ZERO_PAGE_WIRE_BYTES
      : Math.ceil(r.pendingBytes / r.pageBytes) * pageWire;
  const perIteration: PrecopyIteration[] = [];
  const capNote = r.bandwidthBytesPerSec > r.maxBandwidthBytesPerSec ? ` (link capped by max-bandwidth ${fmtMiB(r.maxBandwidthBytesPerSec)}/s)` : '';

  // Hot pages in the current pass's send set: all of them in a fresh first pass; after that every
  // page a pass sends (what the guest dirtied) is hot.
  // An unbounded curve (maxPages = Infinity) says every write hits a fresh page: no overlap.
  const hotPages = r.absorbPendingRewrites && Number.isFinite(r.dirty.maxPages) ? Math.min(r.dirty.maxPages, totalPages) : Infinity;
  // A resumed pass sends pages the guest dirtied, hot ones. A fresh first pass is counted in
  // full (see absorbPendingRewrites: measured, QEMU's first sync finds about every page written
  // during the bulk pass).
  let hotInPass = r.pendingBytes === undefined ? 0 : Math.min(Math.ceil(r.pendingBytes / r.pageBytes), hotPages);

  for (let k = 1; ; k++) {
    const durationSec = sendBytes / wire;
    const throttleDuring = throttle;
    const dirtied = newlyDirtied(r, durationSec, throttleDuring, hotPages, hotInPass, totalPages);
    perIteration.push({ iteration: k, sendBytes, durationSec, dirtiedPages: dirtied, throttlePct: throttleDuring });
    t += durationSec;
    bytesSent += sendBytes;

    // Bitmap sync at the end of the pass: auto-converge bookkeeping first, as in migration_bitmap_sync.
    let raised = false;
    periodDirtyBytes += dirtied * r.pageBytes;
    periodXferBytes += sendBytes;
    if (t - periodStartSec > THROTTLE_PERIOD_SEC) {
      if (r.autoConverge && periodDirtyBytes > (periodXferBytes * r.throttleTriggerThresholdPct) / 100 && ++highCount >= 2) {
        highCount = 0;
        const next = throttling ? Math.min(throttle + r.cpuThrottleIncrementPct, r.maxCpuThrottlePct) : r.cpuThrottleInitialPct;
        raised = next !== throttle;
        throttle = next;
        throttling = true;
      }
      periodStartSec = t;
      periodDirtyBytes = 0;
      periodXferBytes = 0;
    }

    const pendingBytes = dirtied * r.pageBytes;
    const base = { iterations: k, wireBytesPerSec: wire, thresholdBytes, perIteration, finalThrottlePct: throttle, pendingBytes };
    if (pendingBytes < thresholdBytes || pendingBytes === 0) {
      const stopCopyBytes = dirtied * pageWire;
      const downtimeSec = stopCopyBytes / wire;
      const throttleNote = throttleDuring > 0 ? ` with the guest throttled to ${throttleDuring}%` : '';
      return {
        ...base,
        converges: true,
        bytesSent: bytesSent + stopCopyBytes,
        totalSec: t + downtimeSec,
        downtimeMs: downtimeSec * 1000,
        reason: `converges after ${k} pass${k > 1 ? 'es' : ''}${throttleNote}: ${fmtMiB(pendingBytes)} pending < ${fmtMiB(thresholdBytes)} switchover threshold (${fmtMiB(wire)}/s × ${r.downtimeLimitMs} ms)${capNote}`,
      };
    }
    const nextSend = dirtied * pageWire;
    const notConverged = (why: string): PrecopyPrediction => ({ ...base, converges: false, bytesSent, totalSec: t, downtimeMs: NaN, reason: why + capNote });
    // With the throttle fixed from here on, D monotone makes the pass sizes a monotone sequence:
    // once a pass is no smaller than the one before, none will ever be, so it never converges.
    const throttleCanRise = r.autoConverge && throttle < r.maxCpuThrottlePct;
    const at = throttleCanRise
      ? `throttle ${throttle}%`
      : r.autoConverge
        ? `at the maximum CPU throttle ${throttle}%`
        : `without auto-converge${throttle > 0 ? ` (throttle fixed at ${throttle}%)` : ''}`;
    if (!raised && !throttleCanRise && nextSend >= sendBytes * (1 - 1e-12)) {
      return notConverged(
        `does not converge ${at}: the pending RAM stops shrinking at ${fmtMiB(pendingBytes)}, above the ${fmtMiB(thresholdBytes)} switchover threshold (${fmtMiB(wire)}/s × ${r.downtimeLimitMs} ms)`,
      );
    }
    // Near a fixed point above the threshold the passes shrink ever more slowly (for a concave D,
    // the shrink ratio only rises as the passes shrink): if even the current ratio cannot reach
    // the threshold within the remaining budget, stop now with the same verdict as the cap.
    if (!raised && !throttleCanRise && k >= 2 && nextSend < sendBytes) {
      const ratio = nextSend / sendBytes;
      const passesNeeded = Math.log(thresholdBytes / pendingBytes) / Math.log(ratio);
      if (passesNeeded > r.maxIterations - k) {
        return notConverged(
          `does not converge ${at}: no switchover within ${r.maxIterations} passes, the pending RAM (${fmtMiB(pendingBytes)}) shrinks by only ${((1 - ratio) * 100).toPrecision(2)}% per pass towards a level above the ${fmtMiB(thresholdBytes)} threshold`,
        );
      }
    }
    if (k >= r.maxIterations) {
      return notConverged(`does not converge ${at}: no switchover within ${r.maxIterations} passes, ${fmtMiB(pendingBytes)} still pending, threshold ${fmtMiB(thresholdBytes)}`);
    }
    sendBytes = nextSend;
    hotInPass = Math.min(dirtied, hotPages);
  }
}

/** Points of the Simpson rule averaging D over a pass (even). */
const SIMPSON_INTERVALS = 16;

/**
 * Pages the bitmap sync at the end of a pass of `durationSec` finds newly dirty. A write to a page
 * still waiting to be sent in this pass costs nothing extra (its bit is already set; QEMU sends
 * the new content and does not count it at the sync): of the `hotInPass` hot pages the pass sends,
 * at uniformly spread times u, only those written after u count, in expectation the average of
 * D(d − u)/H over the pass; the other H − hotInPass hot pages count if written at all, D(d)/H.
 * Without a bounded hot set (maxPages = Infinity) this is D(d), every write a fresh page.
 */
function newlyDirtied(r: Resolved, durationSec: number, throttlePct: number, hotPages: number, hotInPass: number, totalPages: number): number {
  const all = throttledPages(r.dirty, durationSec, throttlePct, r.response);
  if (!Number.isFinite(hotPages) || hotPages <= 0 || hotInPass <= 0 || all === 0) return Math.min(all, totalPages);
  const n = SIMPSON_INTERVALS;
  let sum = all;
  for (let i = 1; i < n; i++) sum += (i % 2 ? 4 : 2) * throttledPages(r.dirty, (durationSec * i) / n, throttlePct, r.response);
  const meanPages = sum / (3 * n);
  const sent = Math.min(hotInPass, hotPages);
  return Math.min((all * (hotPages - sent)) / hotPages + (meanPages * sent) / hotPages, totalPages);
}

/**
 * Smallest value in (lo, hi] for which `converges(v)` holds, assuming converges(hi); bisection
 * keeps `hi` converging, so the result always converges even where the model is not monotone.
 */
function bisect(lo: number, hi: number, converges: (v: number) => boolean, done: (lo: number, hi: number) => boolean): number {
  while (!done(lo, hi)) {
    const mid = lo + (hi - lo) / 2;
    if (converges(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

function findToConverge(r: Resolved): NonNullable<PrecopyPrediction['toConverge']> {
  const out: NonNullable<PrecopyPrediction['toConverge']> = {};
  const quick = (over: Partial<Resolved>): boolean => simulate({ ...r, ...over }).converges;

  // Bandwidth: a wire rate, so max-bandwidth is lifted with it.
  const wire = Math.min(r.bandwidthBytesPerSec, r.maxBandwidthBytesPerSec);
  const withWire = (w: number): boolean => quick({ bandwidthBytesPerSec: w, maxBandwidthBytesPerSec: Infinity });
  let hi = wire * 2;
  while (hi < 1e13 && !withWire(hi)) hi *= 2;
  if (withWire(hi)) out.bandwidthBytesPerSec = Math.ceil(bisect(wire, hi, withWire, (lo, h) => h - lo <= Math.max(1, lo * 1e-4)));

  // Downtime limit: one pass always fits once the threshold exceeds all of RAM.
  const dtCap = ((Math.ceil(r.ramBytes / r.pageBytes) * r.pageBytes) / wire) * 1000 + 1;
  const withDowntime = (ms: number): boolean => quick({ downtimeLimitMs: ms });
  let dHi = Math.min(r.downtimeLimitMs * 2, dtCap);
  while (dHi < dtCap && !withDowntime(dHi)) dHi = Math.min(dHi * 2, dtCap);
  if (withDowntime(dHi)) out.downtimeLimitMs = Math.ceil(bisect(r.downtimeLimitMs, dHi, withDowntime, (lo, h) => h - lo <= 1));

  // Throttle held from the start (integer percent, as QEMU takes it), auto-converge off.
  const withThrottle = (p: number): boolean => quick({ fixedThrottlePct: p, autoConverge: false });
  if (withThrottle(99)) {
    let lo = Math.floor(r.fixedThrottlePct);
    let tHi = 99;
    while (tHi - lo > 1) {
      const mid = (lo + tHi) >> 1;
      if (withThrottle(mid)) tHi = mid;
      else lo = mid;
    }
    out.throttlePct = tHi;
  }
  return out;
}

/**
 * Predicts QEMU 7.2 pre-copy for one guest (see the module comment for the rules and the
 * simplifications). Throws RangeError/TypeError naming the field on bad input.
 */
export function predictPrecopy(input: PrecopyInput): PrecopyPrediction {
  const r = resolve(input);
  const prediction = simulate(r);
  if (!prediction.converges && input.explain !== false) prediction.toConverge = findToConverge(r);
  return prediction;
}
