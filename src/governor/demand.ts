/**
 * A guest's disk write demand, estimated from its cumulative `wr_bytes`.
 *
 * Unthrottled, the measured rate is the demand. Throttled, it is capped: a guest writing at its
 * throttle only tells us that it wants *at least* that much. Feeding the policy the capped rate
 * would ratchet the throttle down (the policy gives a fraction of the demand; the next measured
 * demand is that fraction; ...). So:
 * - the measured rate is a time-weighted exponential average (τ = `tauMs`) of bytes over time;
 * - the guest is *saturated* when a write limit is in force and the average (plus one mean
 *   request over τ, since a low limit passes few requests per τ) reaches `saturation` × that limit;
 * - unsaturated for a whole τ: demand = the average, remembered as the last known demand;
 * - saturated: demand = max(last known demand, limit × (1 + probeFraction)). The probe keeps the
 *   demand above the throttle, so a policy that has room to give raises the throttle; if the
 *   guest then fills the new limit too, the probe climbs again; when it stops filling it, its
 *   real demand is measured. A policy like `fitted` that computes an absolute allowed rate R
 *   settles at R whatever the probe says, as long as the demand it sees is above R.
 * - after the limit changes, the average needs about 2τ to reflect it: during that settling time
 *   the demand is held (only raised by a measurement above it).
 * The demand handed to the policy moves only when the estimate leaves a band of ±`hysteresis`
 * around it: measurement noise then does not make every tick look like a new world to the
 * policy (which re-solves on every demand change).
 */

export interface DemandOptions {
  /** Averaging time constant, ms (50..60000, default 2000). */
  tauMs?: number;
  /** Fraction of the limit at which the guest counts as saturated (0.5..1, default 0.85). */
  saturation?: number;
  /** How far above a saturated limit the demand is put (0.01..10, default 0.25). */
  probeFraction?: number;
  /** Relative band the estimate must leave before the reported demand moves (0..1, default 0.2). */
  hysteresis?: number;
}

function opt(name: string, v: number | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !(v >= min && v <= max)) throw new RangeError(`${name}: must be a number from ${min} to ${max} (got ${String(v)})`);
  return v;
}

/** Rates below this are noise (a few metadata writes), bytes/s. */
const NOISE_BYTES_PER_SEC = 1024;

export class WriteDemand {
  /** The averaging time constant, ms. */
  readonly tauMs: number;
  private readonly saturation: number;
  private readonly probe: number;
  private readonly hysteresis: number;
  private lastTMs: number | undefined;
  private lastBytes = 0;
  private lastOps = 0;
  private requestBytes = 0;
  private unsaturatedSinceMs: number | undefined;
  private amount = 0;
  private weight = 0;
  private limitBytesPerSec = Infinity;
  private settleUntilMs = -Infinity;
  private lastKnown = 0;
  private estimate = 0;
  private reported = 0;
  private isSaturated = false;

  constructor(options: DemandOptions = {}) {
    this.tauMs = opt('tauMs', options.tauMs, 2000, 50, 60_000);
    this.saturation = opt('saturation', options.saturation, 0.85, 0.5, 1);
    this.probe = opt('probeFraction', options.probeFraction, 0.25, 0.01, 10);
    this.hysteresis = opt('hysteresis', options.hysteresis, 0.2, 0, 1);
  }

  /**
   * A reading: cumulative bytes written `wrBytes` (and, if known, write requests `wrOps`) at
   * monotonic `tMs`, with the write limit in force since the previous reading `limitBytesPerSec`
   * (Infinity = none).
   */
  update(tMs: number, wrBytes: number, limitBytesPerSec: number, wrOps?: number): void {
    if (limitBytesPerSec !== this.limitBytesPerSec) {
      this.limitBytesPerSec = limitBytesPerSec;
      this.settleUntilMs = tMs + 2 * this.tauMs;
    }
    if (this.lastTMs === undefined || wrBytes < this.lastBytes || tMs < this.lastTMs || (wrOps !== undefined && wrOps < this.lastOps)) {
      // First reading, or the counter restarted (a re-created device): a new baseline.
      this.lastTMs = tMs;
      this.lastBytes = wrBytes;
      this.lastOps = wrOps ?? 0;
      return;
    }
    const dtMs = tMs - this.lastTMs;
    if (dtMs <= 0) return;
    const keep = Math.exp(-dtMs / this.tauMs);
    const bytes = wrBytes - this.lastBytes;
    this.amount = this.amount * keep + bytes;
    this.weight = this.weight * keep + dtMs;
    if (wrOps !== undefined && wrOps > this.lastOps) {
      // Mean request size, for the granularity of the measured rate.
      const k = Math.exp(-(wrOps - this.lastOps) / 64);
      this.requestBytes = this.requestBytes * k + (bytes / (wrOps - this.lastOps)) * (1 - k);
    }
    this.lastTMs = tMs;
    this.lastBytes = wrBytes;
    this.lastOps = wrOps ?? this.lastOps;
    const rate = this.rateBytesPerSec;
    const limit = this.limitBytesPerSec;
    // A limit of a few requests per τ makes the average move in request-sized steps: one
    // request of slack keeps a guest that fills its limit from looking unsaturated between them.
    const slack = (this.requestBytes * 1000) / this.tauMs;
    const saturatedNow = Number.isFinite(limit) && rate + slack >= this.saturation * limit;
    let next: number;
    if (saturatedNow) {
      this.unsaturatedSinceMs = undefined;
      next = Math.max(this.lastKnown, limit * (1 + this.probe));
    } else {
      this.unsaturatedSinceMs ??= tMs;
      // Only a guest seen below its limit for a whole τ (and not just after a limit change)
      // tells its demand; until then the estimate is held (raised by a measurement above it).
      if (tMs < this.settleUntilMs || tMs - this.unsaturatedSinceMs < this.tauMs) {
        next = Math.max(this.estimate, rate);
        // Written freely at `rate`: the demand is at least that (what the probe falls back on).
        this.lastKnown = Math.max(this.lastKnown, rate);
      } else {
        next = rate < NOISE_BYTES_PER_SEC ? 0 : rate;
        this.lastKnown = next;
      }
    }
    this.isSaturated = saturatedNow;
    this.estimate = next;
    if (Math.abs(next - this.reported) > this.hysteresis * this.reported || (next === 0) !== (this.reported === 0)) this.reported = next;
  }

  /** Measured write rate, bytes/s (the average; capped by any limit in force). */
  get rateBytesPerSec(): number {
    return this.weight > 0 ? (this.amount * 1000) / this.weight : 0;
  }

  /** The demand to give the policy, bytes/s (moves only outside the hysteresis band). */
  get demandBytesPerSec(): number {
    return this.reported;
  }

  /** True when the guest writes at its limit (its demand is only known to be at least that). */
  get saturated(): boolean {
    return this.isSaturated;
  }
}
