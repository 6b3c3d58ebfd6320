/**
 * Write throttles as QEMU 7.2 takes them: how to read a device's limits, how to lower its write
 * limit while keeping every other limit it had, and how to compare two settings.
 *
 * QEMU rules this has to respect (util/throttle.c throttle_is_valid, blockdev.c
 * qmp_block_set_io_throttle):
 * - block_set_io_throttle replaces the whole configuration (omitted burst fields reset to
 *   none), so every call sends all of the VM's limits, not just bps_wr;
 * - a total limit (`bps`, `bps_max`) cannot be combined with read/write limits: a device limited
 *   by `bps` is throttled by splitting it into `bps_rd` = `bps_wr` = bps (reads keep their limit;
 *   reads and writes together may then reach 2 × bps while the governor holds it — documented
 *   approximation, exact again on restore);
 * - a burst `*_max` must be ≥ its average and needs one;
 * - all six base limits 0 = throttling off (the device leaves its group).
 * A throttle group is shared by its member devices: changing one member's limits changes the
 * group's, i.e. every member's. Devices of one VM put in a common group by the user are governed
 * together, which is the user's choice.
 */
import type { BlockDeviceInfo, BlockIoThrottle } from '../qmp/types';
import type { ThrottleLimits } from './types';

export const BASE_FIELDS = ['bps', 'bps_rd', 'bps_wr', 'iops', 'iops_rd', 'iops_wr'] as const;
export const OPTIONAL_FIELDS = [
  'bps_max',
  'bps_rd_max',
  'bps_wr_max',
  'iops_max',
  'iops_rd_max',
  'iops_wr_max',
  'bps_max_length',
  'bps_rd_max_length',
  'bps_wr_max_length',
  'iops_max_length',
  'iops_rd_max_length',
  'iops_wr_max_length',
  'iops_size',
] as const;

/** QEMU's THROTTLE_VALUE_MAX: limits above this are refused. */
export const THROTTLE_VALUE_MAX = 1e15;

/** No limits at all (throttling off). */
export const UNLIMITED: Readonly<ThrottleLimits> = Object.freeze({ bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 });

function int(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
}

/** The limits in a query-block `inserted` (or query-named-block-nodes) entry. */
export function readLimits(info: Pick<BlockDeviceInfo, (typeof BASE_FIELDS)[number]> & Record<string, unknown>): ThrottleLimits {
  const out: ThrottleLimits = { bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 };
  for (const f of BASE_FIELDS) out[f] = int(info[f]) ?? 0;
  for (const f of OPTIONAL_FIELDS) {
    const v = int(info[f]);
    if (v !== undefined) out[f] = v;
  }
  if (typeof info.group === 'string' && info.group !== '') out.group = info.group;
  return out;
}

/** Checks a limits object read from a file (state file): throws TypeError naming the field. */
export function checkLimits(name: string, v: unknown): ThrottleLimits {
  if (typeof v !== 'object' || v === null) throw new TypeError(`${name}: must be an object of throttle limits`);
  const o = v as Record<string, unknown>;
  for (const f of BASE_FIELDS) {
    if (int(o[f]) === undefined) throw new TypeError(`${name}.${f}: must be an integer ≥ 0`);
  }
  for (const f of OPTIONAL_FIELDS) {
    if (o[f] !== undefined && int(o[f]) === undefined) throw new TypeError(`${name}.${f}: must be an integer ≥ 0 when present`);
  }
  if (o.group !== undefined && typeof o.group !== 'string') throw new TypeError(`${name}.group: must be a string when present`);
  return readLimits(o as unknown as BlockDeviceInfo);
}

/** The write limit a setting enforces, bytes/s (Infinity when writes are not limited by bytes). */
export function effectiveWriteLimit(l: ThrottleLimits): number {
  if (l.bps_wr > 0) return l.bps_wr;
  if (l.bps > 0) return l.bps;
  return Infinity;
}

/**
 * `original` with its byte write limit lowered to at most `writeBytesPerSec` (an integer ≥ 1),
 * every other limit kept but the write burst, which is scaled with it. When the original already
 * limits writes at or below that, the result equals the original.
 *
 * Why the burst scales: QEMU lets a device write until its bucket holds `bps_wr_max` ×
 * `bps_wr_max_length` bytes above the average (util/throttle.c throttle_compute_wait), and the
 * bucket leaks at the average. A user burst of 30 MB/s × 2 s kept under a governor limit of
 * 1.3 MB/s let a guest that had been writing freely go on at its full 6.5 MB/s for ~11 s after
 * the limit dropped: 60 MB into Ω the plan did not count. Scaled by limit / original average, the
 * burst keeps its shape and its bytes shrink with the limit.
 */
export function withWriteLimit(original: ThrottleLimits, writeBytesPerSec: number): ThrottleLimits {
  const g = Math.min(THROTTLE_VALUE_MAX, Math.max(1, Math.round(writeBytesPerSec)));
  if (effectiveWriteLimit(original) <= g) return original;
  const out: ThrottleLimits = { ...original };
  if (original.bps > 0) {
    // Total limit → per-direction limits (QEMU refuses both kinds at once), see module comment.
    out.bps = 0;
    out.bps_rd = original.bps;
    out.bps_wr = g;
    if (original.bps_max !== undefined && original.bps_max > 0) {
      out.bps_rd_max = original.bps_max;
      out.bps_wr_max = scaledBurst(original.bps_max, original.bps, g);
      if (original.bps_max_length !== undefined) {
        out.bps_rd_max_length = original.bps_max_length;
        out.bps_wr_max_length = original.bps_max_length;
      }
    }
    delete out.bps_max;
    delete out.bps_max_length;
    return out;
  }
  out.bps_wr = g;
  if (original.bps_wr_max !== undefined && original.bps_wr_max > 0) out.bps_wr_max = scaledBurst(original.bps_wr_max, original.bps_wr, g);
  return out;
}

/** A burst rate `max` over average `avg`, for the average lowered to `g`: same ratio, never below `g` (QEMU wants max ≥ avg). */
function scaledBurst(max: number, avg: number, g: number): number {
  return avg > 0 ? Math.max(g, Math.round((max * g) / avg)) : max;
}

/** True when two settings are the same configuration (the group name is not compared). */
export function sameLimits(a: ThrottleLimits, b: ThrottleLimits): boolean {
  for (const f of BASE_FIELDS) if (a[f] !== b[f]) return false;
  for (const f of OPTIONAL_FIELDS) {
    // QEMU reports burst fields only when set; an absent field and 0 mean the same. A burst
    // length of 1 s is QEMU's default, reported only alongside a burst rate.
    const av = a[f] ?? 0;
    const bv = b[f] ?? 0;
    if (av !== bv && !(f.endsWith('_length') && (av || 1) === (bv || 1))) return false;
  }
  return true;
}

/**
 * True when `current` is what withWriteLimit(original, x) gives for some x: a setting this
 * governor could have made. Used by reconcile() to leave alone limits someone else set since.
 */
export function looksGoverned(original: ThrottleLimits, current: ThrottleLimits): boolean {
  if (sameLimits(original, current)) return true;
  if (!(current.bps_wr > 0)) return false;
  return sameLimits(withWriteLimit(original, current.bps_wr), current);
}

/** block_set_io_throttle arguments for `limits` on the device `qomPath`. */
export function throttleArgs(qomPath: string, limits: ThrottleLimits, includeGroup: boolean): BlockIoThrottle {
  const args: BlockIoThrottle = { id: qomPath, bps: limits.bps, bps_rd: limits.bps_rd, bps_wr: limits.bps_wr, iops: limits.iops, iops_rd: limits.iops_rd, iops_wr: limits.iops_wr };
  for (const f of OPTIONAL_FIELDS) {
    const v = limits[f];
    if (v !== undefined) args[f] = v;
  }
  // Passing the group moves the device into it; only a restore does that (back where it was).
  if (includeGroup && limits.group !== undefined && BASE_FIELDS.some((f) => limits[f] > 0)) args.group = limits.group;
  return args;
}
