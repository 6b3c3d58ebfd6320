/**
 * What every source of dirty state yields: one Interval per tick. Sources are the KVM calibration
 * VM (exact, bitmap or ring harvest), the guest-memory scanner of a QEMU process (content-change
 * bitmaps) and QMP polling (counters only, no bitmap). Downstream code (analysis, model, policy)
 * sees only this type, so the profiler, the governor and the simulator share it.
 */
export interface Interval {
  /** Which source produced it, e.g. 'kvm-bitmap', 'kvm-ring', 'guest-memory', 'qmp'. */
  source: string;
  /** 0, 1, 2, ... per source instance; a gap means intervals were lost (reported, never hidden). */
  seq: number;
  /** Start and end on the monotonic clock, milliseconds (same clock as performance.now()). */
  tStartMs: number;
  tEndMs: number;
  /** Pages covered (guest RAM / 4 KiB). */
  pagesTotal: number;
  /** Distinct pages dirtied during the interval, as measured. */
  dirtyPages: number;
  /**
   * One bit per page (see src/native.ts for bit order), when the source has one. Valid only
   * during the listener call: sources reuse a pool of buffers, so copy it to keep it.
   */
  bitmap?: Uint8Array;
  /** Exact truth when the source knows it (the calibration VM): distinct pages really written. */
  truthPages?: number;
  /** Pages where measurement and truth differ (0 = exact). */
  mismatchedPages?: number;
  /** Time spent harvesting/scanning this interval, microseconds. */
  harvestUs?: number;
}

/** A started source. Emits intervals until closed; close() releases every fd, mapping and thread. */
export interface DirtySource {
  readonly name: string;
  onInterval(listener: (interval: Interval) => void): void;
  /** Called once with the reason when the source ends on its own (process exited, VM died). */
  onEnd(listener: (reason: { code: string; message: string }) => void): void;
  close(): Promise<void>;
}
