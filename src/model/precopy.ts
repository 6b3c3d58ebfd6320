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
 * - With `absorbPendingRewrites`, the model follows QEMU's own sync loop instead of whole passes
 *   (ram_save_pending, migration/ram.c): QEMU syncs the bitmap when the pending RAM drops below
 *   the threshold, looking after each ram_save_iterate call (MAX_WAIT, QEMU_ITERATE_SEC of
 *   sending), so about threshold − one call's worth of pages is still pending at each sync; and
 *   cpu_physical_memory_sync_dirty_bitmap (include/exec/ram_addr.h; the word-wise path and the
 *   page-wise one alike) counts as new only the pages not already set in the RAMBlock bitmap. So
 *   a rewrite is absorbed only by a page still pending at the sync, not by every page a pass had
 *   not sent yet: a page written before it was sent stays set in the global dirty log after
 *   migration_bitmap_clear_dirty clears its RAMBlock bit, and is counted again. The switchover
 *   comes at a sync after which pending < threshold, so the pages newly counted between two syncs
 *   must fall below one call's worth: it converges once the guest's new pages per second
 *   (dirty rate × (1 − pending-at-sync/hot set)) drop below the pages sent per second. Under TCG
 *   (`syncWaitsForThrottledVcpu`) each sync also waits for a throttled vCPU to wake (see there).
 *   Against lab traces of query-migrate every 40 ms (docs/BENCHMARKS.md): 690–780 pages pending
 *   at a sync at 100 Mbit/s (model 731), 1 335–1 571 at 200 Mbit/s (model 1 462), and with the
 *   guest's pages outside the workload's buffer measured, QEMU's throttle steps within 0.1–0.8 s.
 *
 * Simplifications (each makes the prediction slightly optimistic or coarser, never hides a
 * non-convergence the rules above would show):
 * - Without `absorbPendingRewrites`, a bitmap sync happens exactly at the end of each pass.
 *   QEMU 7.2 syncs when the remaining dirty bytes drop below the threshold, so a few pages of the
 *   previous pass ride along, and near the threshold it syncs on every 50–100 ms loop: QEMU's
 *   dirty-sync-count is therefore larger than `iterations` here. For the same reason QEMU
 *   switches over with the tail of the last pass still pending, so its real downtime is usually
 *   close to the limit: `downtimeMs` here is a lower bound (the pages dirtied during the last pass
 *   only), the limit × 4104/4096 the upper one. Total times are barely affected (the tail is sent
 *   either way): against the tick-level QEMU 7.2 loop of src/sim/migration.ts they agree within
 *   4 % (docs/BENCHMARKS.md). With `absorbPendingRewrites` the syncs are QEMU's own; the pages
 *   pending at a sync are taken as threshold − one call's worth, which is what the lab traces show
 *   (a crossing uniform within a call would leave half a call more; bursts of the socket's send
 *   buffer and the 64-page granularity of the call's clock check make the calls uneven).
 * - The throttle changes only at syncs (QEMU also changes it only there) and acts at once
 *   (QEMU's throttle timer needs one 10 ms slice).
 * - Scanning zero pages costs no time beyond their headers on the wire; device state, the
 *   bitmap sync itself and TCP overhead are not modelled; the bandwidth is constant.
 */
import { DirtyCurve, ThrottleResponse, throttledPages, throttleRunFactor } from './dirty-curve';

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
/**
 * migration/ram.c MAX_WAIT: one ram_save_iterate call sends for about this long before QEMU
 * looks at the pending RAM again (and syncs the bitmap when it is below the threshold), s.
 */
export const QEMU_ITERATE_SEC = 0.05;
/** softmmu/cpu-throttle.c CPU_THROTTLE_TIMESLICE_NS: the vCPU's run slice per throttle cycle, s. */
export const THROTTLE_SLICE_SEC = 0.01;
/** Linux's default net.ipv4.tcp_wmem maximum, bytes: how much a TCP socket's send buffer can hold. */
export const DEFAULT_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

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
   * Follow QEMU 7.2's own sync loop and count only the pages QEMU counts (default false).
   * QEMU does not sync the dirty bitmap at the end of a pass: ram_save_pending syncs when the
   * pending RAM drops below the switchover threshold (bandwidth × downtime-limit), checked after
   * each ram_save_iterate call (~QEMU_ITERATE_SEC of sending), so about threshold − one call's
   * worth of pages is still pending at each sync. cpu_physical_memory_sync_dirty_bitmap counts as
   * new only the bits not already set in the RAMBlock bitmap, so a rewrite is absorbed only by a
   * page STILL PENDING at the sync: a page written before it was sent in the interval had its bit
   * in the global dirty log, got sent (its bitmap bit cleared, the log is not), and is counted
   * again. So: between two syncs the guest dirties D(τ) pages; of the r pages pending at the
   * sync, r·D(τ)/maxPages were among them (hot pages, uniform writes) and are not counted; at the
   * first sync the pending pages are the end of RAM in scan order, not the hot set, so
   * r·D(τ)/totalPages. The switchover happens at a sync after which pending < threshold, so the
   * pages dirtied between two syncs must fall below one call's worth, not below the threshold.
   * Those counts also feed auto-converge (num_dirty_pages_period). Each perIteration entry is then
   * one sync interval (QEMU's dirty-sync-count), not one pass over the pending set.
   * Off: whole passes, a sync at the end of each, every distinct page dirtied in a pass sent again
   * — the rule the simulator (src/sim/migration.ts) is compared with (test/unit/model-precopy-vs-sim).
   */
  absorbPendingRewrites?: boolean;
  /**
   * QEMU's TCG accelerator (default false; only with absorbPendingRewrites): every bitmap sync
   * ends with run_on_cpu(do_nothing) on the vCPU (softmmu/physmem.c tcg_log_global_after_sync,
   * via memory_global_after_dirty_log_sync), which runs only after the vCPU's current throttle
   * sleep (cpu_throttle_thread: THROTTLE_SLICE_SEC·p/(1 − p), 0.99 s at 99 %) has ended. So under
   * a throttle of p a sync that falls in a sleep waits for the vCPU's next wake-up (wake-ups every
   * THROTTLE_SLICE_SEC/(1 − p), counted from the sync that last raised the throttle); meanwhile
   * the migration thread sends nothing new, but the link keeps draining the socket's send buffer
   * (`socketBufferBytes`), which QEMU refills at once after the wait; and a paced guest's writes
   * come as one burst per wake-up, counted by the sync window that holds it. KVM syncs do not
   * wait. Not modelled: QEMU's next bandwidth estimate spans the wait and reads low, so the
   * threshold the following sync must beat is lower; at 99 % that makes QEMU's tail a matter of
   * luck (4–10 s in the lab traces where this model says ~3 s; docs/BENCHMARKS.md).
   */
  syncWaitsForThrottledVcpu?: boolean;
  /**
   * Send buffer of the migration socket, bytes (0..1 GiB; default DEFAULT_SOCKET_BUFFER_BYTES,
   * Linux's tcp_wmem maximum): what the link sends while QEMU's migration thread waits in a sync
   * (syncWaitsForThrottledVcpu).
   */
  socketBufferBytes?: number;
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
  /**
   * With absorbPendingRewrites: pages still pending when this interval's sync counted (QEMU's
   * RAMBlock bitmap bits it did not count again), and the time the sync waited for a throttled
   * vCPU (included in durationSec; syncWaitsForThrottledVcpu).
   */
  pendingAtSyncPages?: number;
  syncWaitSec?: number;
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
  syncWaitsForThrottledVcpu: boolean;
  socketBufferBytes: number;
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
    syncWaitsForThrottledVcpu: input.syncWaitsForThrottledVcpu ?? false,
    socketBufferBytes: num('socketBufferBytes', input.socketBufferBytes ?? DEFAULT_SOCKET_BUFFER_BYTES, 0, 1024 ** 3),
  };
  if (typeof r.absorbPendingRewrites !== 'boolean') throw new TypeError(`absorbPendingRewrites: must be a boolean (got ${String(input.absorbPendingRewrites)})`);
  if (typeof r.syncWaitsForThrottledVcpu !== 'boolean') throw new TypeError(`syncWaitsForThrottledVcpu: must be a boolean (got ${String(input.syncWaitsForThrottledVcpu)})`);
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
  return r.absorbPendingRewrites ? simulateSyncLoop(r) : simulatePasses(r);
}

/**
 * QEMU 7.2's auto-converge bookkeeping at a bitmap sync (migration_bitmap_sync → mig_throttle_guest_down):
 * over periods of more than THROTTLE_PERIOD_SEC, a period whose dirtied bytes exceed
 * throttle-trigger-threshold % of the bytes sent counts as high; at the second high period in a
 * row the throttle is switched on at cpu-throttle-initial or raised by cpu-throttle-increment.
 */
class AutoConverge {
  throttlePct: number;
  private throttling: boolean;
  private highCount = 0;
  private periodStartSec = 0;
  private periodDirtyBytes = 0;
  private periodXferBytes = 0;

  constructor(private readonly r: Resolved) {
    this.throttlePct = r.fixedThrottlePct;
    this.throttling = this.throttlePct > 0;
  }

  /** A sync at `nowSec` after `dirtiedBytes` new dirty bytes and `sentBytes` sent since the last: true when it raised the throttle. */
  sync(nowSec: number, dirtiedBytes: number, sentBytes: number): boolean {
    const r = this.r;
    let raised = false;
    this.periodDirtyBytes += dirtiedBytes;
    this.periodXferBytes += sentBytes;
    if (nowSec - this.periodStartSec > THROTTLE_PERIOD_SEC) {
      if (r.autoConverge && this.periodDirtyBytes > (this.periodXferBytes * r.throttleTriggerThresholdPct) / 100 && ++this.highCount >= 2) {
        this.highCount = 0;
        const next = this.throttling ? Math.min(this.throttlePct + r.cpuThrottleIncrementPct, r.maxCpuThrottlePct) : r.cpuThrottleInitialPct;
        raised = next !== this.throttlePct;
        this.throttlePct = next;
        this.throttling = true;
      }
      this.periodStartSec = nowSec;
      this.periodDirtyBytes = 0;
      this.periodXferBytes = 0;
    }
    return raised;
  }
}

type LoopState = Pick<PrecopyPrediction, 'iterations' | 'wireBytesPerSec' | 'thresholdBytes' | 'perIteration' | 'finalThrottlePct' | 'pendingBytes'>;

/** The prediction when the pending RAM fits the downtime: what is left goes in the stop-and-copy. */
function switchover(r: Resolved, base: LoopState, after: string, tSec: number, bytesSent: number, stopCopyBytes: number, throttlePct: number, capNote: string): PrecopyPrediction {
  const downtimeSec = stopCopyBytes / base.wireBytesPerSec;
  const throttleNote = throttlePct > 0 ? ` with the guest throttled to ${throttlePct}%` : '';
  return {
    ...base,
    converges: true,
    bytesSent: bytesSent + stopCopyBytes,
    totalSec: tSec + downtimeSec,
    downtimeMs: downtimeSec * 1000,
    reason: `converges after ${after}${throttleNote}: ${fmtMiB(base.pendingBytes)} pending < ${fmtMiB(base.thresholdBytes)} switchover threshold (${fmtMiB(base.wireBytesPerSec)}/s × ${r.downtimeLimitMs} ms)${capNote}`,
  };
}

/** The throttle's state, for a verdict that it does not converge. */
function throttleState(r: Resolved, throttlePct: number, canRise: boolean): string {
  if (canRise) return `throttle ${throttlePct}%`;
  return r.autoConverge ? `at the maximum CPU throttle ${throttlePct}%` : `without auto-converge${throttlePct > 0 ? ` (throttle fixed at ${throttlePct}%)` : ''}`;
}

/** Whole passes, a sync at the end of each (absorbPendingRewrites off). */
function simulatePasses(r: Resolved): PrecopyPrediction {
  const wire = Math.min(r.bandwidthBytesPerSec, r.maxBandwidthBytesPerSec);
  const pageWire = r.pageBytes + PAGE_HEADER_BYTES;
  const thresholdBytes = wire * (r.downtimeLimitMs / 1000);
  const totalPages = Math.ceil(r.ramBytes / r.pageBytes);
  const zeroPages = Math.round(totalPages * r.zeroPageFraction);

  const ac = new AutoConverge(r);
  let throttle = ac.throttlePct;
  let t = 0;
  let bytesSent = 0;
  let sendBytes =
    r.pendingBytes === undefined
      ? (totalPages - zeroPages) * pageWire + zeroPages * ZERO_PAGE_WIRE_BYTES
      : Math.ceil(r.pendingBytes / r.pageBytes) * pageWire;
  const perIteration: PrecopyIteration[] = [];
  const capNote = r.bandwidthBytesPerSec > r.maxBandwidthBytesPerSec ? ` (link capped by max-bandwidth ${fmtMiB(r.maxBandwidthBytesPerSec)}/s)` : '';

  for (let k = 1; ; k++) {
    const durationSec = sendBytes / wire;
    const throttleDuring = throttle;
    const dirtied = Math.min(throttledPages(r.dirty, durationSec, throttleDuring, r.response), totalPages);
    perIteration.push({ iteration: k, sendBytes, durationSec, dirtiedPages: dirtied, throttlePct: throttleDuring });
    t += durationSec;
    bytesSent += sendBytes;

    // Bitmap sync at the end of the pass: auto-converge bookkeeping first, as in migration_bitmap_sync.
    const raised = ac.sync(t, dirtied * r.pageBytes, sendBytes);
    throttle = ac.throttlePct;

    const pendingBytes = dirtied * r.pageBytes;
    const base = { iterations: k, wireBytesPerSec: wire, thresholdBytes, perIteration, finalThrottlePct: throttle, pendingBytes };
    if (pendingBytes < thresholdBytes || pendingBytes === 0) {
      return switchover(r, base, `${k} pass${k > 1 ? 'es' : ''}`, t, bytesSent, dirtied * pageWire, throttleDuring, capNote);
    }
    const nextSend = dirtied * pageWire;
    const notConverged = (why: string): PrecopyPrediction => ({ ...base, converges: false, bytesSent, totalSec: t, downtimeMs: NaN, reason: why + capNote });
    // With the throttle fixed from here on, D monotone makes the pass sizes a monotone sequence:
    // once a pass is no smaller than the one before, none will ever be, so it never converges.
    const throttleCanRise = r.autoConverge && throttle < r.maxCpuThrottlePct;
    const at = throttleState(r, throttle, throttleCanRise);
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
  }
}

/** Syncs in a row without a new lowest pending, the throttle unable to rise: it does not converge. */
const STALE_SYNCS = 8;

/**
 * QEMU 7.2's sync loop (absorbPendingRewrites): each step sends until the pending RAM is below
 * the threshold (then QEMU looks after each ram_save_iterate call, so about one call's worth
 * below it is still pending), syncs — counting only the dirtied pages not still pending — maybe
 * waits for a throttled TCG vCPU, and switches over when the pending RAM after the sync is below
 * the threshold.
 */
function simulateSyncLoop(r: Resolved): PrecopyPrediction {
  const wire = Math.min(r.bandwidthBytesPerSec, r.maxBandwidthBytesPerSec);
  const pageWire = r.pageBytes + PAGE_HEADER_BYTES;
  const thresholdBytes = wire * (r.downtimeLimitMs / 1000);
  // ram_save_pending compares pages × page size with the threshold.
  const thresholdPages = thresholdBytes / r.pageBytes;
  const callPages = (wire * QEMU_ITERATE_SEC) / pageWire;
  const leftAtSync = Math.max(0, thresholdPages - callPages);
  const totalPages = Math.ceil(r.ramBytes / r.pageBytes);
  const zeroPages = Math.round(totalPages * r.zeroPageFraction);
  // Pages the guest dirties are hot pages: a pending one was written during τ with probability
  // D(τ)/maxPages (uniform writes over the bounded set); an unbounded curve never rewrites.
  const hotPages = Number.isFinite(r.dirty.maxPages) && r.dirty.maxPages > 0 ? Math.min(r.dirty.maxPages, totalPages) : Infinity;
  const capNote = r.bandwidthBytesPerSec > r.maxBandwidthBytesPerSec ? ` (link capped by max-bandwidth ${fmtMiB(r.maxBandwidthBytesPerSec)}/s)` : '';

  // Pending pages: the rest of a fresh first pass (zero pages among them: mean wire cost
  // firstPageWire), which QEMU's scan reaches before it wraps round, and pages dirtied since.
  const fresh = r.pendingBytes === undefined;
  const firstPageWire = totalPages > 0 ? ((totalPages - zeroPages) * pageWire + zeroPages * ZERO_PAGE_WIRE_BYTES) / totalPages : pageWire;
  let firstPass = fresh ? totalPages : 0;
  let dirty = fresh ? 0 : Math.ceil((r.pendingBytes ?? 0) / r.pageBytes);
  const take = (pages: number): number => {
    const a = Math.min(firstPass, pages);
    firstPass -= a;
    const b = Math.min(dirty, pages - a);
    dirty -= b;
    return a * firstPageWire + b * pageWire;
  };

  const ac = new AutoConverge(r);
  let throttle = ac.throttlePct;
  let t = 0;
  let bytesSent = 0;
  // Guest time since the last count, in seconds of unthrottled running (what D is a function of).
  let guestSec = 0;
  // A time at which the throttled vCPU wakes; its throttle cycles are counted from there.
  let wakeSec = 0;
  const runFactor = (p: number): number => (r.response === undefined ? 1 - p / 100 : throttleRunFactor(p, r.response));
  // The guest's running between `from` and `to` under a throttle of p. When the syncs wait for
  // the vCPU's wake-ups they are locked to its cycle, so its writes are not spread evenly over a
  // sync interval: a paced guest makes each cycle's writes in the slice after a wake-up. Then
  // count whole cycles by their bursts (a cycle's worth of running each), else the mean rate.
  // After a raise the throttle timer's current cycle runs out at the old percentage first.
  let oldThrottle = 0;
  let oldThrottleUntilSec = -Infinity;
  const advance = (from: number, to: number, p: number): void => {
    if (!(to > from)) return;
    if (from < oldThrottleUntilSec) {
      const mid = Math.min(to, oldThrottleUntilSec);
      guestSec += (mid - from) * runFactor(oldThrottle);
      if (mid >= to) return;
      from = mid;
    }
    if (r.syncWaitsForThrottledVcpu && p > 0) {
      const cycle = THROTTLE_SLICE_SEC / (1 - p / 100);
      const burst = wakeSec + THROTTLE_SLICE_SEC / 2;
      const n = Math.floor((to - burst) / cycle) - Math.floor((from - burst) / cycle);
      guestSec += n * cycle * runFactor(p);
    } else guestSec += (to - from) * runFactor(p);
  };
  // What the link drained from the socket while the last sync waited: QEMU refills it at once.
  let creditBytes = 0;
  let firstSync = fresh;
  let minPending = Infinity;
  let stale = 0;
  const perIteration: PrecopyIteration[] = [];

  for (let k = 1; ; k++) {
    const throttleDuring = throttle;
    let pending = firstPass + dirty;
    let sendBytes = 0;
    const instant = Math.min(pending, creditBytes / pageWire);
    creditBytes = 0;
    if (instant > 0) {
      sendBytes += take(instant);
      pending -= instant;
    }
    let leftPages: number;
    let sendSec: number;
    if (instant > 0 && pending < thresholdPages) {
      // Already below the threshold after the refill: one call's worth, then the next sync.
      const call = Math.min(pending, callPages);
      const b = take(call);
      sendBytes += b;
      sendSec = b / wire;
      leftPages = pending - call;
    } else {
      const n = Math.max(0, pending - leftAtSync);
      const b = take(n);
      sendBytes += b;
      sendSec = b / wire;
      leftPages = pending - n;
    }
    advance(t, t + sendSec, throttleDuring);
    t += sendSec;
    bytesSent += sendBytes;

    // The sync: what the guest dirtied since the last one, less the pages still pending then.
    const all = Math.min(r.dirty.pagesInWindow(guestSec), totalPages);
    const writtenShare = firstSync ? all / totalPages : Number.isFinite(hotPages) ? Math.min(1, all / hotPages) : 0;
    const dirtied = Math.max(0, Math.min(all - leftPages * writtenShare, totalPages - leftPages));
    dirty += dirtied;
    guestSec = 0;
    firstSync = false;

    let waitSec = 0;
    if (r.syncWaitsForThrottledVcpu && throttleDuring > 0) {
      const cycle = THROTTLE_SLICE_SEC / (1 - throttleDuring / 100);
      const into = (((t - wakeSec) % cycle) + cycle) % cycle;
      if (into > THROTTLE_SLICE_SEC) waitSec = cycle - into;
    }
    advance(t, t + waitSec, throttleDuring);
    t += waitSec;
    creditBytes = Math.min(wire * waitSec, r.socketBufferBytes);

    // Auto-converge bookkeeping, as in migration_bitmap_sync (after the wait).
    const raised = ac.sync(t, dirtied * r.pageBytes, sendBytes);
    throttle = ac.throttlePct;
    if (raised) {
      // cpu_throttle_set: switching the throttle on ticks the timer at once (a sleep at the new
      // percentage starts now); a later raise takes effect at the running timer's next tick,
      // on average half an old cycle away.
      const oldCycle = throttleDuring > 0 ? THROTTLE_SLICE_SEC / (1 - throttleDuring / 100) : 0;
      oldThrottle = throttleDuring;
      oldThrottleUntilSec = t + oldCycle / 2;
      wakeSec = oldThrottleUntilSec + THROTTLE_SLICE_SEC / (1 - throttle / 100) - THROTTLE_SLICE_SEC;
    }

    perIteration.push({
      iteration: k,
      sendBytes,
      durationSec: sendSec + waitSec,
      dirtiedPages: dirtied,
      throttlePct: throttleDuring,
      pendingAtSyncPages: leftPages,
      syncWaitSec: waitSec,
    });
    const pendingPages = firstPass + dirty;
    const pendingBytes = pendingPages * r.pageBytes;
    const base = { iterations: k, wireBytesPerSec: wire, thresholdBytes, perIteration, finalThrottlePct: throttle, pendingBytes };
    if (pendingBytes < thresholdBytes || pendingPages === 0) {
      return switchover(r, base, `${k} bitmap sync${k > 1 ? 's' : ''}`, t, bytesSent, firstPass * firstPageWire + dirty * pageWire, throttleDuring, capNote);
    }
    const notConverged = (why: string): PrecopyPrediction => ({ ...base, converges: false, bytesSent, totalSec: t, downtimeMs: NaN, reason: why + capNote });
    const throttleCanRise = r.autoConverge && throttle < r.maxCpuThrottlePct;
    const at = throttleState(r, throttle, throttleCanRise);
    if (raised || throttleCanRise) {
      minPending = Infinity;
      stale = 0;
    } else if (pendingPages < minPending * (1 - 1e-9)) {
      minPending = pendingPages;
      stale = 0;
    } else if (++stale >= STALE_SYNCS) {
      return notConverged(
        `does not converge ${at}: the pending RAM after each sync stops shrinking at ${fmtMiB(minPending * r.pageBytes)}, above the ${fmtMiB(thresholdBytes)} switchover threshold (${fmtMiB(wire)}/s × ${r.downtimeLimitMs} ms)`,
      );
    }
    if (k >= r.maxIterations) {
      return notConverged(`does not converge ${at}: no switchover within ${r.maxIterations} syncs, ${fmtMiB(pendingBytes)} still pending, threshold ${fmtMiB(thresholdBytes)}`);
    }
  }
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
