/**
 * Overlay trajectories for the `fitted` policy: for one migration, at a given guest write rate g
 * held from now on, when does each remaining phase end and how big is the overlay then.
 *
 * The phase durations are those of ../model/need.ts `remainingTime` (same rules as the simulator:
 * the bulk copy has the share to itself, the mirror backlog and the RAM stream share it max-min
 * fairly with the synchronous guest writes); this module adds what `fitted` needs on top:
 * the overlay growth of each phase (in `mirror` and `ram` only the writes that fit beside the
 * backlog copy go through) and a memo of the RAM prediction, because the policy evaluates
 * hundreds of trajectories per decision. A unit test cross-checks the durations against
 * `remainingTime`.
 */
import { backlogRate } from '../model/need';
import { PAGE_HEADER_BYTES, predictPrecopy } from '../model/precopy';
import type { DirtyCurve } from '../model/dirty-curve';
import type { MigrationView } from './types';
import { PAGE_BYTES } from './types';

/** s(t) for t in [0, endSec]: piecewise linear through (0, s0), (t1, s1), (t2, s2), (endSec, sEnd). */
export interface Trajectory {
  /** Seconds from now to the end of each phase: base, mirror, RAM pre-copy + stop-and-copy. */
  t1: number;
  t2: number;
  endSec: number;
  s0: number;
  s1: number;
  s2: number;
  /** Overlay bytes when the migration completes (its projected final size). */
  finalBytes: number;
  /** False when the RAM prediction did not converge (endSec is where the model gave up). */
  converges: boolean;
}

/** Overlay bytes at `tSec` from now (tSec ≤ endSec). */
export function overlayAt(tr: Trajectory, tSec: number): number {
  if (tSec <= 0) return tr.s0;
  if (tSec < tr.t1) return tr.s0 + ((tr.s1 - tr.s0) * tSec) / tr.t1;
  if (tSec < tr.t2) return tr.s1 + ((tr.s2 - tr.s1) * (tSec - tr.t1)) / (tr.t2 - tr.t1);
  if (tSec < tr.endSec) return tr.s2 + ((tr.finalBytes - tr.s2) * (tSec - tr.t2)) / (tr.endSec - tr.t2);
  return tr.finalBytes;
}

interface RamMemo {
  sec: number;
  converges: boolean;
  maxBw: number;
  downtimeMs: number;
}
/** Per dirty curve (one per guest), keyed by bucketed rate and, when resumed, pending and throttle. */
const ramMemo = new WeakMap<DirtyCurve, Map<number, RamMemo>>();
/** Rates are bucketed to 0.5 % (log scale) for the memo: well inside the model's own accuracy. */
const RATE_BUCKET = Math.log(1.005);
const RATE_BUCKETS = 16384;

function ramSeconds(m: MigrationView, ramRateBytesPerSec: number, maxBwBytesPerSec: number, downtimeLimitMs: number): RamMemo {
  if (!(ramRateBytesPerSec >= 1)) return { sec: Infinity, converges: false, maxBw: maxBwBytesPerSec, downtimeMs: downtimeLimitMs };
  const bucket = Math.min(RATE_BUCKETS - 1, Math.round(Math.log(ramRateBytesPerSec) / RATE_BUCKET));
  const resumed = m.phase === 'ram';
  // Resumed predictions depend on the pending bytes (bucketed to 1/64 of RAM) and the throttle.
  const pendingBucket = resumed ? Math.round((m.ramPendingBytes / m.ramBytes) * 64) : 0;
  const key = resumed ? bucket + RATE_BUCKETS * (1 + pendingBucket + 65 * Math.round(m.cpuThrottlePct)) : bucket;
  let perCurve = ramMemo.get(m.ramDirty);
  if (!perCurve) ramMemo.set(m.ramDirty, (perCurve = new Map()));
  const hit = perCurve.get(key);
  if (hit && hit.maxBw === maxBwBytesPerSec && hit.downtimeMs === downtimeLimitMs) return hit;
  const p = predictPrecopy({
    ramBytes: m.ramBytes,
    zeroPageFraction: 0,
    bandwidthBytesPerSec: Math.exp(bucket * RATE_BUCKET),
    maxBandwidthBytesPerSec: maxBwBytesPerSec,
    downtimeLimitMs,
    dirty: m.ramDirty,
    ...(resumed ? { pendingBytes: Math.min(m.ramBytes, (pendingBucket / 64) * m.ramBytes), fixedThrottlePct: Math.min(99, m.cpuThrottlePct) } : {}),
  });
  const out = { sec: p.totalSec, converges: p.converges, maxBw: maxBwBytesPerSec, downtimeMs: downtimeLimitMs };
  if (perCurve.size > 4096) perCurve.clear();
  perCurve.set(key, out);
  return out;
}

/**
 * The trajectory of `m`'s overlay if its guest writes `writeBytesPerSec` (after γ) from now on
 * and it keeps `linkShareBytesPerSec` of the link. Writes into `out` when given (no allocation).
 */
export function projectTrajectory(
  m: MigrationView,
  writeBytesPerSec: number,
  linkShareBytesPerSec: number,
  ramMaxBandwidthBytesPerSec: number,
  downtimeLimitMs: number,
  out: Trajectory = { t1: 0, t2: 0, endSec: 0, s0: 0, s1: 0, s2: 0, finalBytes: 0, converges: true },
): Trajectory {
  const g = m.failed ? 0 : writeBytesPerSec;
  const L = Math.max(linkShareBytesPerSec, 1e-9);
  const s0 = m.overlayBytes;
  if (m.phase === 'switchover') {
    const sec = ((m.ramPendingBytes / PAGE_BYTES) * (PAGE_BYTES + PAGE_HEADER_BYTES)) / Math.min(L, ramMaxBandwidthBytesPerSec);
    return fill(out, 0, 0, sec, s0, s0, s0, s0, true);
  }
  let t1 = 0;
  let s1 = s0;
  let backlog = m.mirrorBytesLeft;
  if (m.phase === 'base') {
    t1 = m.baseBytesLeft / L;
    s1 = s0 + g * t1;
    backlog += g * t1;
  }
  let t2 = t1;
  let s2 = s1;
  if ((m.phase === 'base' || m.phase === 'mirror') && backlog > 0) {
    const copy = backlogRate(L, g);
    const dur = backlog / copy;
    t2 = t1 + dur;
    s2 = s1 + (L - copy) * dur;
  }
  const ramRate = backlogRate(L, g, ramMaxBandwidthBytesPerSec);
  const ram = ramSeconds(m, ramRate, ramMaxBandwidthBytesPerSec, downtimeLimitMs);
  const ramWrite = Math.min(g, L - ramRate);
  const endSec = t2 + ram.sec;
  const finalBytes = s2 + (ram.sec > 0 ? ramWrite * ram.sec : 0);
  return fill(out, t1, t2, endSec, s0, s1, s2, finalBytes, ram.converges);
}

function fill(out: Trajectory, t1: number, t2: number, endSec: number, s0: number, s1: number, s2: number, finalBytes: number, converges: boolean): Trajectory {
  out.t1 = t1;
  out.t2 = t2;
  out.endSec = endSec;
  out.s0 = s0;
  out.s1 = s1;
  out.s2 = s2;
  out.finalBytes = finalBytes;
  out.converges = converges;
  return out;
}
