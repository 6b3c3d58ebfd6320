/**
 * Need projection for one migration: how long it still has to run, and how big its overlay will
 * be by then. The `fitted` policy allots Ω in proportion to these projections.
 *
 * LXD's phases (platform-facts.md, src/policy/types.ts): `base` bulk-copies the base disk while
 * guest writes land in the overlay; `mirror` drains the overlay with a write-blocking
 * blockdev-mirror, each new guest write also crossing the link synchronously; `ram` is QEMU
 * pre-copy with the mirror still synchronous; `switchover` the stop-and-copy. The overlay only
 * goes away when the migration ends, so it grows for the whole remaining time.
 *
 * Link sharing inside one migration follows the simulator's rule (src/policy/link-share.ts):
 * two flows on one share are max-min fair, so a backlog copy (mirror drain, RAM stream) gets
 * max(share − writes, share / 2), capped by its own demand, and synchronous writes the rest.
 */
import { DirtyCurve } from './dirty-curve';
import { PAGE_HEADER_BYTES, predictPrecopy, PrecopyPrediction, QEMU_DEFAULTS } from './precopy';

/** Projected overlay size, bytes: current + writes × remaining time, capped at `capBytes`. */
export function projectOverlay(input: {
  /** s_cow now, bytes (≥ 0). */
  currentBytes: number;
  /** Rate at which the overlay grows, bytes/s (≥ 0): guest writes after γ (new allocations, strictly). */
  writeBytesPerSec: number;
  /** Seconds the migration still runs (≥ 0; Infinity gives capBytes, or Infinity without one). */
  remainingSec: number;
  /**
   * Upper bound, bytes (default Infinity): a qcow2 overlay never holds more data than the disk's
   * virtual size, whatever the write volume.
   */
  capBytes?: number;
}): number {
  const { currentBytes, writeBytesPerSec, remainingSec } = input;
  const capBytes = input.capBytes ?? Infinity;
  checkNonNegative('currentBytes', currentBytes);
  checkNonNegative('writeBytesPerSec', writeBytesPerSec);
  if (typeof remainingSec !== 'number' || Number.isNaN(remainingSec) || remainingSec < 0) {
    throw new RangeError(`remainingSec: must be a number ≥ 0, Infinity allowed (got ${String(remainingSec)})`);
  }
  if (typeof capBytes !== 'number' || Number.isNaN(capBytes) || capBytes < 0) throw new RangeError(`capBytes: must be a number ≥ 0 (got ${String(capBytes)})`);
  // 0 × Infinity is NaN: a migration that does not write does not grow, however long it runs.
  const growth = writeBytesPerSec === 0 ? 0 : writeBytesPerSec * remainingSec;
  // Never below what it already holds, even if that is above the cap.
  return Math.min(currentBytes + growth, Math.max(capBytes, currentBytes));
}

function checkNonNegative(name: string, v: number): void {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new RangeError(`${name}: must be a finite number ≥ 0 (got ${String(v)})`);
}

/**
 * Rate a backlog copy gets when it shares `shareBytesPerSec` max-min fairly with synchronous
 * writes of `writeBytesPerSec`, capped at `capBytesPerSec`, bytes/s.
 */
export function backlogRate(shareBytesPerSec: number, writeBytesPerSec: number, capBytesPerSec = Infinity): number {
  const half = shareBytesPerSec / 2;
  return Math.max(0, Math.min(capBytesPerSec, writeBytesPerSec <= half ? shareBytesPerSec - writeBytesPerSec : half));
}

/** One migration as the need model sees it (a structural subset of the policies' MigrationView). */
export interface MigrationProgress {
  phase: 'base' | 'mirror' | 'ram' | 'switchover';
  /** p_i: base-disk bytes still to bulk-copy (used in `base`). */
  baseBytesLeft: number;
  /** Overlay bytes not yet on the target: the whole overlay in `base`, the mirror backlog in `mirror`. */
  mirrorBytesLeft: number;
  /** Guest RAM, bytes. */
  ramBytes: number;
  /** The guest's RAM dirtying. */
  ramDirty: DirtyCurve;
  /** RAM pending in the current pre-copy pass (pages × 4096), bytes; used in `ram` and `switchover`. */
  ramPendingBytes: number;
  /** CPU throttle in force, percent (used in `ram`). */
  cpuThrottlePct: number;
}

export interface RemainingTimeInput {
  migration: MigrationProgress;
  /** Guest disk write rate from now on (after γ), bytes/s: grows the overlay and, from `mirror` on, crosses the link. */
  writeBytesPerSec: number;
  /** This migration's share of U(t), bytes/s (> 0). */
  linkShareBytesPerSec: number;
  /** QEMU max-bandwidth for the RAM stream, bytes/s (default 128 MiB/s). */
  ramMaxBandwidthBytesPerSec?: number;
  /** QEMU downtime-limit, ms (default 300). */
  downtimeLimitMs?: number;
  /** Share of RAM in zero pages for a first pass not yet started, 0..1 (default 0: no credit). */
  zeroPageFraction?: number;
  /** Auto-converge (default true, as LXD sets it). */
  autoConverge?: boolean;
  /** The guest's vCPU busy share, (0, 1] (default 1, CPU-bound): see PrecopyInput.vcpuBusyFraction. */
  vcpuBusyFraction?: number;
  /** Longest vCPU stall a paced guest makes up for, s (default Infinity): see PrecopyInput.throttleCatchUpSec. */
  throttleCatchUpSec?: number;
  /** QEMU's own sync loop, counting only newly dirty pages at each sync (default false): see PrecopyInput.absorbPendingRewrites. */
  absorbPendingRewrites?: boolean;
  /** TCG: each bitmap sync waits for the throttled vCPU (default false): see PrecopyInput.syncWaitsForThrottledVcpu. */
  syncWaitsForThrottledVcpu?: boolean;
  /** The migration socket's send buffer, bytes: see PrecopyInput.socketBufferBytes. */
  socketBufferBytes?: number;
  /**
   * Bytes the overlay gains in the next `windowSec` seconds (in `base`; default writeBytesPerSec ×
   * windowSec). A qcow2 overlay allocates whole clusters (64 KiB by default), so small scattered
   * writes grow it, and the mirror's backlog, by far more than the bytes written: pass the
   * expected newly allocated clusters × cluster size. Must be ≥ 0 and non-decreasing.
   */
  overlayGrowthBytes?(windowSec: number): number;
  /**
   * Fixed costs of the migration's orchestration, s (each ≥ 0, default 0), added once for each
   * phase still ahead: `mirror` = starting the mirror (NBD export and client, blockdev-mirror,
   * waiting for BLOCK_JOB_READY) beyond copying its backlog, counted while in `base`;
   * `switchover` = the steps around the stop-and-copy (block-job-cancel, migrate-continue, the
   * device state, starting the target) beyond sending the pending RAM, counted in `base`,
   * `mirror` and `ram`.
   */
  fixedCostSec?: { mirror?: number; switchover?: number };
}

export interface RemainingTime {
  /** Seconds until the migration completes (Infinity when its RAM phase never converges). */
  totalSec: number;
  /** Seconds of each remaining phase (0 for phases already done). */
  baseSec: number;
  mirrorSec: number;
  ramSec: number;
  /** Stop-and-copy, seconds (included in ramSec when the RAM phase is ahead). */
  switchoverSec: number;
  /** Fixed orchestration costs included in totalSec (see RemainingTimeInput.fixedCostSec), s. */
  fixedSec: number;
  /** The mirror backlog when `mirror` starts (or now, in `mirror`), bytes. */
  mirrorBacklogBytes: number;
  /** The pre-copy prediction used for the RAM phase (absent in `switchover`). */
  ram?: PrecopyPrediction;
}

/**
 * Remaining time of one migration, phase by phase, holding the write rate and the link share
 * constant. The RAM part comes from {@link predictPrecopy} with the RAM stream's part of the share
 * (resumed from the pending bytes and throttle in `ram`). When pre-copy does not converge the
 * total is Infinity: that migration's overlay would grow without bound, which is what a
 * need-based allotment must see.
 */
export function remainingTime(input: RemainingTimeInput): RemainingTime {
  const m = input.migration;
  if (!m || typeof m !== 'object') throw new TypeError('migration: must be an object');
  checkNonNegative('writeBytesPerSec', input.writeBytesPerSec);
  const share = input.linkShareBytesPerSec;
  if (typeof share !== 'number' || !Number.isFinite(share) || share <= 0) throw new RangeError(`linkShareBytesPerSec: must be a finite number > 0 (got ${String(share)})`);
  checkNonNegative('baseBytesLeft', m.baseBytesLeft);
  checkNonNegative('mirrorBytesLeft', m.mirrorBytesLeft);
  checkNonNegative('ramPendingBytes', m.ramPendingBytes);
  const maxBw = input.ramMaxBandwidthBytesPerSec ?? QEMU_DEFAULTS.maxBandwidthBytesPerSec;
  const downtimeLimitMs = input.downtimeLimitMs ?? QEMU_DEFAULTS.downtimeLimitMs;
  const w = input.writeBytesPerSec;
  const out: RemainingTime = { totalSec: 0, baseSec: 0, mirrorSec: 0, ramSec: 0, switchoverSec: 0, fixedSec: 0, mirrorBacklogBytes: 0 };
  const fixedMirror = input.fixedCostSec?.mirror ?? 0;
  const fixedSwitchover = input.fixedCostSec?.switchover ?? 0;
  checkNonNegative('fixedCostSec.mirror', fixedMirror);
  checkNonNegative('fixedCostSec.switchover', fixedSwitchover);
  const ramRate = backlogRate(share, w, maxBw);

  if (m.phase === 'switchover') {
    out.switchoverSec = ((m.ramPendingBytes / 4096) * (4096 + PAGE_HEADER_BYTES)) / Math.min(share, maxBw);
    out.totalSec = out.switchoverSec;
    return out;
  }
  if (m.phase === 'base') {
    // The bulk copy has the share to itself; writes only land in the overlay, growing the backlog.
    out.baseSec = m.baseBytesLeft / share;
    const growth = input.overlayGrowthBytes ? input.overlayGrowthBytes(out.baseSec) : w * out.baseSec;
    if (typeof growth !== 'number' || !Number.isFinite(growth) || growth < 0) throw new RangeError(`overlayGrowthBytes: must return a finite number ≥ 0 (got ${String(growth)})`);
    out.mirrorBacklogBytes = m.mirrorBytesLeft + growth;
    out.fixedSec += fixedMirror;
  } else if (m.phase === 'mirror') out.mirrorBacklogBytes = m.mirrorBytesLeft;
  if (m.phase === 'base' || m.phase === 'mirror') {
    // write-blocking: new writes go to the target synchronously, so the backlog only shrinks.
    out.mirrorSec = out.mirrorBacklogBytes === 0 ? 0 : out.mirrorBacklogBytes / backlogRate(share, w);
  }
  const ram = predictPrecopy({
    ramBytes: m.ramBytes,
    zeroPageFraction: m.phase === 'ram' ? 0 : (input.zeroPageFraction ?? 0),
    bandwidthBytesPerSec: ramRate,
    maxBandwidthBytesPerSec: maxBw,
    downtimeLimitMs,
    dirty: m.ramDirty,
    autoConverge: input.autoConverge ?? true,
    ...(input.vcpuBusyFraction !== undefined ? { vcpuBusyFraction: input.vcpuBusyFraction } : {}),
    ...(input.throttleCatchUpSec !== undefined ? { throttleCatchUpSec: input.throttleCatchUpSec } : {}),
    ...(input.absorbPendingRewrites !== undefined ? { absorbPendingRewrites: input.absorbPendingRewrites } : {}),
    ...(input.syncWaitsForThrottledVcpu !== undefined ? { syncWaitsForThrottledVcpu: input.syncWaitsForThrottledVcpu } : {}),
    ...(input.socketBufferBytes !== undefined ? { socketBufferBytes: input.socketBufferBytes } : {}),
    ...(m.phase === 'ram' ? { pendingBytes: Math.min(m.ramPendingBytes, m.ramBytes), fixedThrottlePct: Math.min(99, Math.max(0, m.cpuThrottlePct)) } : {}),
  });
  out.ram = ram;
  out.ramSec = ram.converges ? ram.totalSec : Infinity;
  out.switchoverSec = ram.converges ? ram.downtimeMs / 1000 : Infinity;
  out.fixedSec += fixedSwitchover;
  out.totalSec = out.baseSec + out.mirrorSec + out.ramSec + out.fixedSec;
  return out;
}
