/**
 * U(t): the speed of the link between source and target, estimated from bytes actually moved
 * (RAM pre-copy `transferred`, block-job offsets, bulk-copy byte counters), sampled as cumulative
 * counters at irregular times.
 *
 * Two exponentially weighted averages of *bytes over time* (not of per-sample rates, so a counter
 * that advances in bursts averages to the right rate and irregular sampling needs no care):
 *
 *   rate = Σ bytes_i·e^(−age_i/τ) / Σ Δt_i·e^(−age_i/τ)
 *
 * (the ratio form is its own bias correction: the first interval already gives an unbiased rate).
 * - slow, τ = 8 s: the estimate reported. Each interval's bytes are clipped to
 *   slow × (5·Δt + 250 ms), so a one-off catch-up of several seconds' worth of traffic cannot
 *   drag it; bursts that belong to the flow (rate-limiter slices, chunked counters) pass untouched.
 * - fast, τ = 1 s, unclipped: the level-shift detector. When |ln(fast/slow)| exceeds a bar in the
 *   same direction for 1.5 s of link time, the link has changed speed: the slow average is rebuilt
 *   from the intervals since the disagreement began (all after the change), so the estimate jumps
 *   to the new level instead of drifting there over τ_slow.
 *   The bar is ln 1.5 on a steady flow; on a flow that is bursty at the 1 s scale it widens to
 *   3 σ, σ ≈ the spread of ln(fast) learnt from the log-differences of consecutive 1 s buckets
 *   (differences, so a step adds one difference, not a trend), so burstiness is not taken for a
 *   link change. No detection during the first 3 s while that spread is learnt. A one-off
 *   catch-up of several seconds' worth of bytes keeps fast high long enough to count as a shift;
 *   the rebuild then starts after the interval that carried it, so it is dropped, not averaged in.
 *   Measured (test/unit/model-bandwidth.test.ts): 10 → 1 Gbit/s is within 10 % ≈ 2.1–2.2 s after
 *   the step with 100–250 ms sampling (fast crosses 1/1.5 of slow τ_fast·ln(9/5.67) ≈ 0.46 s
 *   after it, then 1.5 s of persistence); 1 → 10 Gbit/s ≈ 1.6–1.7 s (worst of 10 seeds).
 *
 * Idle time is not link time: a gap between samples longer than `maxGapMs` (default 5 s) is
 * skipped, with whatever bytes it holds, so an estimator fed only while a transfer runs does not
 * mistake a pause for a slow link. The estimator measures throughput achieved; it equals link
 * capacity only while the sender has data queued.
 */

export interface BandwidthEstimatorOptions {
  /** Slow average time constant, ms (100..600 000, default 8000). */
  slowTauMs?: number;
  /** Fast average time constant, ms (10..60 000, default 1000; must be < slowTauMs). */
  fastTauMs?: number;
  /** Minimum fast/slow ratio (either way) taken as a level shift (1.05..100, default 1.5). */
  shiftRatio?: number;
  /** How long the disagreement must persist, ms of link time (0..600 000, default 1500). */
  shiftPersistMs?: number;
  /** Width of the noise-widened bar, in σ of ln(fast) (0..100, default 3; 0 = fixed bar). */
  noiseSigmas?: number;
  /** No level-shift detection during this much initial link time, ms (0..600 000, default 3000). */
  warmupMs?: number;
  /** Clip: an interval may carry slow × (clipFactor·Δt + clipBurstMs) bytes (1..1000 or Infinity = off, default 5). */
  clipFactor?: number;
  /** Burst allowance of the clip, ms of traffic (0..600 000, default 250). */
  clipBurstMs?: number;
  /** Intervals longer than this are idle gaps and skipped, ms (1..86 400 000 or Infinity, default 5000). */
  maxGapMs?: number;
  /** Link time before `ready` turns true, ms (0..600 000, default 500). */
  minSpanMs?: number;
}

interface Span {
  /** End of the interval on the link-time clock (idle gaps removed), ms. */
  endMs: number;
  durMs: number;
  bytes: number;
}

function opt(name: string, value: number | undefined, def: number, min: number, max: number, allowInfinity = false): number {
  if (value === undefined) return def;
  if (typeof value !== 'number' || Number.isNaN(value) || value < min || (value > max && !(allowInfinity && value === Infinity))) {
    throw new RangeError(`${name}: must be a number from ${min} to ${max}${allowInfinity ? ' or Infinity' : ''} (got ${String(value)})`);
  }
  return value;
}

/** Time-weighted exponential average: Σ amount·decay / Σ weight·decay. */
class Decayed {
  amount = 0;
  weight = 0;
  constructor(private readonly tau: number) {}
  add(weight: number, amount: number): void {
    const keep = Math.exp(-weight / this.tau);
    this.amount = this.amount * keep + amount;
    this.weight = this.weight * keep + weight;
  }
  clear(): void {
    this.amount = 0;
    this.weight = 0;
  }
  get mean(): number {
    return this.weight > 0 ? this.amount / this.weight : 0;
  }
}

/** Bucket length for the noise measure, ms of link time. */
const BUCKET_MS = 1000;
/** Noise average time constant, ms of link time. */
const NOISE_TAU_MS = 20_000;

/** Link-speed estimator U(t); see the module comment for the method and its time constants. */
export class BandwidthEstimator {
  private readonly shiftBar: number;
  private readonly shiftPersistMs: number;
  private readonly noiseSigmas: number;
  private readonly warmupMs: number;
  private readonly clipFactor: number;
  private readonly clipBurstMs: number;
  private readonly maxGapMs: number;
  private readonly minSpanMs: number;
  private readonly historyMs: number;
  /** mean = bytes per ms. */
  private readonly slow: Decayed;
  private readonly fast: Decayed;
  /** mean = variance of ln(bucket rate) differences. */
  private readonly noise = new Decayed(NOISE_TAU_MS);
  private bucketBytes = 0;
  private bucketMs = 0;
  private prevBucketRate: number | undefined;
  private lastTMs: number | undefined;
  private lastTotalBytes = 0;
  private carriedBytes = 0;
  private linkMs = 0;
  private history: Span[] = [];
  private pendingDir = 0;
  private pendingStartMs = 0;
  private pendingSinceMs = 0;
  private shifts = 0;
  private lastShiftTMs: number | undefined;

  constructor(options: BandwidthEstimatorOptions = {}) {
    const slowTauMs = opt('slowTauMs', options.slowTauMs, 8000, 100, 600_000);
    const fastTauMs = opt('fastTauMs', options.fastTauMs, 1000, 10, 60_000);
    if (fastTauMs >= slowTauMs) throw new RangeError(`fastTauMs: must be < slowTauMs (${fastTauMs} ≥ ${slowTauMs})`);
    this.shiftBar = Math.log(opt('shiftRatio', options.shiftRatio, 1.5, 1.05, 100));
    this.shiftPersistMs = opt('shiftPersistMs', options.shiftPersistMs, 1500, 0, 600_000);
    this.noiseSigmas = opt('noiseSigmas', options.noiseSigmas, 3, 0, 100);
    this.warmupMs = opt('warmupMs', options.warmupMs, 3000, 0, 600_000);
    this.clipFactor = opt('clipFactor', options.clipFactor, 5, 1, 1000, true);
    this.clipBurstMs = opt('clipBurstMs', options.clipBurstMs, 250, 0, 600_000);
    this.maxGapMs = opt('maxGapMs', options.maxGapMs, 5000, 1, 86_400_000, true);
    this.minSpanMs = opt('minSpanMs', options.minSpanMs, 500, 0, 600_000);
    this.slow = new Decayed(slowTauMs);
    this.fast = new Decayed(fastTauMs);
    // Long enough to rebuild the slow average from the start of any disagreement.
    this.historyMs = this.shiftPersistMs + 4 * fastTauMs + 1000;
  }

  /**
   * A cumulative counter sample: `bytesMovedTotal` (≥ 0) bytes moved since some origin, read at
   * `tMs` (monotonic clock, ms, non-decreasing). A counter that goes backwards is taken as
   * restarted: the sample becomes the new baseline.
   */
  addSample(tMs: number, bytesMovedTotal: number): void {
    if (typeof tMs !== 'number' || !Number.isFinite(tMs)) throw new RangeError(`tMs: must be a finite number (got ${String(tMs)})`);
    if (typeof bytesMovedTotal !== 'number' || !Number.isFinite(bytesMovedTotal) || bytesMovedTotal < 0) {
      throw new RangeError(`bytesMovedTotal: must be a finite number ≥ 0 (got ${String(bytesMovedTotal)})`);
    }
    if (this.lastTMs === undefined) {
      this.lastTMs = tMs;
      this.lastTotalBytes = bytesMovedTotal;
      return;
    }
    if (tMs < this.lastTMs) throw new RangeError(`tMs: must not go backwards (${tMs} < ${this.lastTMs})`);
    if (bytesMovedTotal < this.lastTotalBytes) {
      this.lastTotalBytes = bytesMovedTotal;
      this.lastTMs = tMs;
      this.carriedBytes = 0;
      return;
    }
    const bytes = bytesMovedTotal - this.lastTotalBytes;
    this.lastTotalBytes = bytesMovedTotal;
    this.ingest(tMs, bytes);
  }

  /** An increment: `bytes` (≥ 0) moved since the previous call, observed at `tMs`. */
  add(bytes: number, tMs: number): void {
    if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes < 0) throw new RangeError(`bytes: must be a finite number ≥ 0 (got ${String(bytes)})`);
    this.addSample(tMs, (this.lastTMs === undefined ? 0 : this.lastTotalBytes) + bytes);
  }

  private ingest(tMs: number, bytes: number): void {
    const durMs = tMs - this.lastTMs!;
    if (durMs === 0) {
      // Same instant: hold the bytes for the next interval rather than divide by zero.
      this.carriedBytes += bytes;
      return;
    }
    this.lastTMs = tMs;
    bytes += this.carriedBytes;
    this.carriedBytes = 0;
    if (durMs > this.maxGapMs) return;

    this.linkMs += durMs;
    this.history.push({ endMs: this.linkMs, durMs, bytes });
    while (this.history.length > 1 && this.history[0]!.endMs < this.linkMs - this.historyMs) this.history.shift();

    const slowPerMs = this.slow.mean;
    const established = this.slow.weight >= this.minSpanMs && slowPerMs > 0;
    const cap = established ? slowPerMs * (this.clipFactor * durMs + this.clipBurstMs) : Infinity;
    this.slow.add(durMs, Math.min(bytes, cap));
    this.fast.add(durMs, bytes);
    this.updateNoise(durMs, bytes);
    this.detectShift(tMs);
  }

  private updateNoise(durMs: number, bytes: number): void {
    this.bucketBytes += bytes;
    this.bucketMs += durMs;
    if (this.bucketMs < BUCKET_MS) return;
    // A silent bucket counts as 1/16 of the level: a large but finite log difference.
    const floor = this.slow.mean / 16;
    const rate = Math.max(this.bucketBytes / this.bucketMs, floor, Number.MIN_VALUE);
    if (this.prevBucketRate !== undefined) {
      const d = Math.log(rate / this.prevBucketRate);
      // Winsorized so a level shift (one or two large differences) barely moves the bar.
      const cap = 2 * this.bar();
      this.noise.add(1, Math.min(d * d, cap * cap));
    }
    this.prevBucketRate = rate;
    this.bucketBytes = 0;
    this.bucketMs = 0;
  }

  /**
   * |ln(fast/slow)| beyond which a shift is suspected. Var(d) = 2·Var(ln bucket) for independent
   * buckets, and an EWMA with τ = 1 bucket has about half the bucket variance: σ(ln fast) ≈ σ_d/2.
   */
  private bar(): number {
    return Math.max(this.shiftBar, (this.noiseSigmas * Math.sqrt(this.noise.mean)) / 2);
  }

  private detectShift(tMs: number): void {
    const slow = this.slow.mean;
    let dir = 0;
    if (slow > 0 && this.linkMs >= this.warmupMs) {
      const dev = Math.log(Math.max(this.fast.mean / slow, 1 / 16));
      const bar = this.bar();
      if (dev > bar) dir = 1;
      else if (dev < -bar) dir = -1;
    }
    if (dir === 0) {
      this.pendingDir = 0;
      return;
    }
    const lastSpan = this.history[this.history.length - 1]!;
    if (dir !== this.pendingDir) {
      this.pendingDir = dir;
      // The disagreement starts with this interval, which may straddle the change: the rebuild
      // uses only the intervals after it (or this one if it is the only one).
      this.pendingStartMs = lastSpan.endMs - lastSpan.durMs;
      this.pendingSinceMs = lastSpan.endMs;
    }
    if (this.linkMs - this.pendingStartMs < this.shiftPersistMs) return;
    this.slow.clear();
    let after = this.history.filter((s) => s.endMs > this.pendingSinceMs);
    if (after.length === 0) after = [lastSpan];
    for (const s of after) this.slow.add(s.durMs, s.bytes);
    this.pendingDir = 0;
    this.shifts++;
    this.lastShiftTMs = tMs;
  }

  /** U(t), bytes/s: the slow (clipped) average; 0 before the first interval. */
  get bytesPerSec(): number {
    return this.slow.mean * 1000;
  }

  /** The fast, unclipped average, bytes/s (noisier; reacts within ~1 s). */
  get fastBytesPerSec(): number {
    return this.fast.mean * 1000;
  }

  /** True once `minSpanMs` of link time has been seen. */
  get ready(): boolean {
    return this.linkMs >= this.minSpanMs && this.linkMs > 0;
  }

  /** Link time seen so far (idle gaps excluded), ms. */
  get linkTimeMs(): number {
    return this.linkMs;
  }

  /** Level shifts detected so far. */
  get levelShifts(): number {
    return this.shifts;
  }

  /** Sample time (caller's clock, ms) of the last detected level shift. */
  get lastShiftMs(): number | undefined {
    return this.lastShiftTMs;
  }

  /** Forgets everything (e.g. the link or the transfer changed). */
  reset(): void {
    this.slow.clear();
    this.fast.clear();
    this.noise.clear();
    this.bucketBytes = 0;
    this.bucketMs = 0;
    this.prevBucketRate = undefined;
    this.lastTMs = undefined;
    this.lastTotalBytes = 0;
    this.carriedBytes = 0;
    this.linkMs = 0;
    this.history = [];
    this.pendingDir = 0;
    this.shifts = 0;
    this.lastShiftTMs = undefined;
  }
}
