/**
 * Dirty curves: D(τ), the number of *distinct* guest pages written during a window of τ seconds.
 *
 * Pre-copy sends, in each iteration, the pages dirtied while the previous iteration was on the
 * wire, so what matters is not the page-write rate but how many distinct pages a window of a
 * given length touches. D is non-decreasing, D(0) = 0, and for real workloads concave: rewrites
 * of an already-dirty page inside the window cost nothing extra. D(τ)/τ is therefore the
 * effective dirty rate at scale τ, which falls as τ grows when the guest has a hot working set.
 */

/** D(τ): distinct pages dirtied in a window of τ seconds. */
export interface DirtyCurve {
  /**
   * Distinct 4 KiB pages dirtied in a window of `windowSec` seconds (windowSec ≥ 0, finite).
   * Non-decreasing in windowSec, 0 at 0.
   */
  pagesInWindow(windowSec: number): number;
  /**
   * Page-write rate at the finest scale, pages/s: the slope of D at τ → 0, i.e. the rate at
   * which the guest writes pages when no rewrite is absorbed. Used where a single scalar rate is
   * needed (auto-converge trigger estimates, text reports).
   */
  ratePagesPerSec: number;
  /** Upper bound of D, pages (the hot set or the guest's page count); Infinity when unbounded. */
  maxPages: number;
}

function checkFiniteNonNegative(name: string, value: number): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name}: must be a finite number ≥ 0 (got ${String(value)})`);
  }
}

function checkWindow(windowSec: number): void {
  if (typeof windowSec !== 'number' || Number.isNaN(windowSec) || windowSec < 0) {
    throw new RangeError(`windowSec: must be a number ≥ 0 (got ${String(windowSec)})`);
  }
}

/**
 * D(τ) = H·(1 − exp(−Rτ/H)) — a guest writing R pages/s, each write to a page drawn uniformly
 * from a hot set of H pages.
 *
 * Why this form: with writes arriving as a Poisson stream of rate R spread uniformly over H
 * pages, a given page escapes all writes during τ with probability exp(−Rτ/H), so the expected
 * number of distinct dirty pages is H(1 − exp(−Rτ/H)). Its limits are the two regimes that
 * decide pre-copy: for τ ≪ H/R every write hits a fresh page (D ≈ Rτ, slope R), for τ ≫ H/R
 * the whole hot set is dirty (D → H) however long the window.
 *
 * @param pagesPerSec R, page writes per second (≥ 0, finite).
 * @param hotPages H, pages in the hot set (> 0; Infinity gives the straight line D = Rτ).
 */
export function uniformHotSetCurve(pagesPerSec: number, hotPages: number): DirtyCurve {
  checkFiniteNonNegative('pagesPerSec', pagesPerSec);
  if (typeof hotPages !== 'number' || Number.isNaN(hotPages) || hotPages <= 0) {
    throw new RangeError(`hotPages: must be a number > 0, Infinity allowed (got ${String(hotPages)})`);
  }
  const R = pagesPerSec;
  const H = hotPages;
  return {
    ratePagesPerSec: R,
    maxPages: R === 0 ? 0 : H,
    pagesInWindow(windowSec: number): number {
      checkWindow(windowSec);
      if (R === 0 || windowSec === 0) return 0;
      if (!Number.isFinite(H)) return R * windowSec;
      // -expm1(-x) keeps full precision when Rτ ≪ H, where 1 - exp(-x) would cancel.
      return H * -Math.expm1((-R * windowSec) / H);
    },
  };
}

/** D(τ) = Rτ, capped at `maxPages` (a guest that never rewrites a page before the cap). */
export function constantRateCurve(pagesPerSec: number, maxPages = Infinity): DirtyCurve {
  checkFiniteNonNegative('pagesPerSec', pagesPerSec);
  if (typeof maxPages !== 'number' || Number.isNaN(maxPages) || maxPages < 0) {
    throw new RangeError(`maxPages: must be a number ≥ 0, Infinity allowed (got ${String(maxPages)})`);
  }
  return {
    ratePagesPerSec: pagesPerSec,
    maxPages: pagesPerSec === 0 ? 0 : maxPages,
    pagesInWindow(windowSec: number): number {
      checkWindow(windowSec);
      return Math.min(pagesPerSec * windowSec, maxPages);
    },
  };
}

/**
 * D(τ) = D_a(τ) + D_b(τ): two guest activities writing disjoint sets of pages, e.g. a workload's
 * hot set and the rest of the guest (kernel, the workload's own bookkeeping) measured apart. Its
 * rate and bound are the sums; capped at `maxPages` when given (the guest's page count).
 */
export function sumCurve(a: DirtyCurve, b: DirtyCurve, maxPages = Infinity): DirtyCurve {
  for (const [name, c] of [['a', a], ['b', b]] as const) {
    if (!c || typeof c.pagesInWindow !== 'function') throw new TypeError(`${name}: must be a DirtyCurve (pagesInWindow(windowSec))`);
  }
  if (typeof maxPages !== 'number' || Number.isNaN(maxPages) || maxPages <= 0) {
    throw new RangeError(`maxPages: must be a number > 0, Infinity allowed (got ${String(maxPages)})`);
  }
  return {
    ratePagesPerSec: a.ratePagesPerSec + b.ratePagesPerSec,
    maxPages: Math.min(a.maxPages + b.maxPages, maxPages),
    pagesInWindow(windowSec: number): number {
      checkWindow(windowSec);
      return Math.min(a.pagesInWindow(windowSec) + b.pagesInWindow(windowSec), maxPages);
    },
  };
}

/**
 * How a guest's dirtying responds to QEMU's CPU throttle (softmmu/cpu-throttle.c): at p % the
 * throttle timer fires every slice/(1 − p) of wall time (slice = 10 ms) and each vCPU then sleeps
 * slice·p/(1 − p), so it runs `slice` out of every slice/(1 − p).
 */
export interface ThrottleResponse {
  /**
   * Share of wall time the guest's vCPUs are busy when not throttled, (0, 1] (default 1: a
   * CPU-bound guest). A guest that paces its work by the wall clock and is busy b of the time
   * loses no work while its run share (1 − p) is still ≥ b: the throttle only takes idle time.
   */
  vcpuBusyFraction?: number;
  /**
   * The longest vCPU stall a wall-clock paced guest makes up for afterwards, s (≥ 0, default
   * Infinity: it catches up on everything it has the CPU for). A guest that credits at most c
   * seconds per wake-up gets min(sleep, c) + slice of wall time done per throttle cycle.
   */
  catchUpSec?: number;
}

/** cpu-throttle.c's CPU_THROTTLE_TIMESLICE_NS, s. */
export const CPU_THROTTLE_SLICE_SEC = 0.01;

function checkResponse(r: ThrottleResponse): { b: number; c: number } {
  const b = r.vcpuBusyFraction ?? 1;
  const c = r.catchUpSec ?? Infinity;
  if (typeof b !== 'number' || !(b > 0 && b <= 1)) throw new RangeError(`vcpuBusyFraction: must be a number > 0 and ≤ 1 (got ${String(b)})`);
  if (typeof c !== 'number' || Number.isNaN(c) || c < 0) throw new RangeError(`catchUpSec: must be a number ≥ 0, Infinity allowed (got ${String(c)})`);
  return { b, c };
}

/**
 * Share of its unthrottled page writes a guest still makes under a CPU throttle of
 * `throttlePct` percent (0..99), 0..1. Per throttle cycle of C = slice/(1 − p) the guest runs
 * `slice` and sleeps S = C − slice; a paced guest wants b·W seconds of CPU for the W seconds of
 * wall time it credits (W = C, or min(S, catchUp) + slice when it caps its catch-up), so it does
 * min(W, slice/b)/C of its work. With the defaults (b = 1, no cap) this is 1 − p/100: a
 * CPU-bound guest slowed in proportion, what QEMU's auto-converge assumes.
 */
export function throttleRunFactor(throttlePct: number, response: ThrottleResponse = {}): number {
  if (typeof throttlePct !== 'number' || !(throttlePct >= 0 && throttlePct < 100)) throw new RangeError(`throttlePct: must be a number ≥ 0 and < 100 (got ${String(throttlePct)})`);
  const { b, c } = checkResponse(response);
  // A CPU-bound guest does exactly its run share (the catch-up limit never binds then).
  if (b === 1) return 1 - throttlePct / 100;
  if (throttlePct === 0) return 1;
  const run = (100 - throttlePct) / 100;
  const slice = CPU_THROTTLE_SLICE_SEC;
  const sleep = (slice * throttlePct) / (100 - throttlePct);
  // Wall time credited per cycle over the cycle: all of it, or (catch-up + slice)·run/slice.
  const credited = sleep <= c ? 1 : ((c + slice) * run) / slice;
  return Math.min(1, credited, run / b);
}

/**
 * D under a CPU throttle of `throttlePct` percent: a wall-clock window τ holds the writes of
 * f·τ seconds of unthrottled execution, f = {@link throttleRunFactor} (1 − p/100 for a CPU-bound
 * guest: QEMU's cpu-throttle sleeps the vCPUs for p% of the time). This scales the page-write
 * rate by f while keeping the saturation at the hot set: throttling cannot make a long window
 * dirty fewer pages than the hot set, only reach it later.
 */
export function throttledPages(curve: DirtyCurve, windowSec: number, throttlePct: number, response?: ThrottleResponse): number {
  const f = response === undefined ? 1 - throttlePct / 100 : throttleRunFactor(throttlePct, response);
  return curve.pagesInWindow(windowSec * f);
}

/** Options of {@link measuredCurve}. */
export interface MeasuredCurveOptions {
  /** The guest's page count: D never exceeds it (default Infinity). */
  totalPages?: number;
}

/**
 * x = Rτ_a/H of the hot-set curve through (τ_a, D_a) and (q·τ_a, D_b), from
 * D_b/D_a = (1 − e^(−qx)) / (1 − e^(−x)), which falls from q (x → 0) to 1 (x → ∞); bisection.
 */
function hotSetXThrough(q: number, ratio: number): number {
  const g = (x: number): number => -Math.expm1(-q * x) / -Math.expm1(-x);
  let lo = 1e-12;
  let hi = 1e3;
  for (let i = 0; i < 200; i++) {
    const mid = Math.sqrt(lo * hi);
    if (g(mid) > ratio) lo = mid;
    else hi = mid;
  }
  return Math.sqrt(lo * hi);
}

/**
 * A dirty curve from measured points, typically the analyzer's D at windows of 2^j sampling
 * intervals (`[windowSec, distinctPages]`).
 *
 * - Points are sorted by window; pages are made non-decreasing (running maximum): a longer window
 *   contains a shorter one, so a drop is measurement noise, not workload.
 * - Between points the curve is a power law (straight line in log-log), D = D_j·(τ/τ_j)^β_j, which
 *   is what the dyadic windows sample evenly; it is monotone and has no overshoot.
 * - Below the first point it is linear from the origin (D ≈ Rτ at short windows, where every write
 *   still hits a fresh page); `ratePagesPerSec` is that slope, D(τ₀)/τ₀.
 * - Beyond the last point it continues as the hot-set curve H(1 − e^(−Rτ/H)) through the last
 *   two points, so extrapolation keeps the observed saturation trend instead of growing linearly
 *   (exact when the guest is a uniform hot set); if the last two points grow in proportion to
 *   the window (no saturation seen) it continues linearly, if they are equal it stays flat.
 *   Always capped at `totalPages`.
 *
 * @param points at least one point with windowSec > 0 (finite) and pages ≥ 0 (finite).
 */
export function measuredCurve(points: ReadonlyArray<readonly [windowSec: number, pages: number]>, options: MeasuredCurveOptions = {}): DirtyCurve {
  if (!Array.isArray(points) || points.length === 0) throw new RangeError('points: must hold at least one [windowSec, pages] pair');
  const totalPages = options.totalPages ?? Infinity;
  if (typeof totalPages !== 'number' || Number.isNaN(totalPages) || totalPages <= 0) {
    throw new RangeError(`totalPages: must be a number > 0 (got ${String(totalPages)})`);
  }
  for (const [i, p] of points.entries()) {
    if (!Array.isArray(p) || p.length !== 2) throw new TypeError(`points[${i}]: must be a [windowSec, pages] pair`);
    const [w, n] = p;
    if (typeof w !== 'number' || !Number.isFinite(w) || w <= 0) throw new RangeError(`points[${i}] windowSec: must be a finite number > 0 (got ${String(w)})`);
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new RangeError(`points[${i}] pages: must be a finite number ≥ 0 (got ${String(n)})`);
  }
  const sorted = [...points].map(([w, n]) => [w, n] as [number, number]).sort((a, b) => a[0] - b[0]);
  // Merge equal windows (keep the larger count), then enforce monotonicity and the cap.
  const ws: number[] = [];
  const ds: number[] = [];
  for (const [w, n] of sorted) {
    const capped = Math.min(n, totalPages);
    if (ws.length && ws[ws.length - 1] === w) {
      ds[ds.length - 1] = Math.max(ds[ds.length - 1]!, capped);
      continue;
    }
    ws.push(w);
    ds.push(Math.max(capped, ds.length ? ds[ds.length - 1]! : 0));
  }
  const last = ws.length - 1;
  const w0 = ws[0]!;
  const d0 = ds[0]!;
  const rate = d0 / w0;

  // Tail beyond the last point.
  const wL = ws[last]!;
  const dL = ds[last]!;
  let tail: (w: number) => number;
  let tailMax: number;
  // With a single point, the origin line continues it.
  const wP = last > 0 ? ws[last - 1]! : 0;
  const dP = last > 0 ? ds[last - 1]! : 0;
  const q = wP > 0 ? wL / wP : Infinity;
  if (dL === 0 || (dP > 0 && dL <= dP)) {
    tail = () => dL;
    tailMax = dL;
  } else if (dP === 0 || dL / dP >= q * (1 - 1e-9)) {
    tail = (w) => (dL * w) / wL;
    tailMax = Infinity;
  } else {
    // The hot-set curve through the last two points, exactly.
    const x = hotSetXThrough(q, dL / dP);
    const H = dP / -Math.expm1(-x);
    const R = (x * H) / wP;
    tail = (w) => H * -Math.expm1((-R * w) / H);
    tailMax = H;
  }
  const maxPages = Math.min(totalPages, tailMax);

  return {
    ratePagesPerSec: rate,
    maxPages,
    pagesInWindow(windowSec: number): number {
      checkWindow(windowSec);
      if (windowSec === 0) return 0;
      let d: number;
      if (windowSec <= w0) d = rate * windowSec;
      else if (windowSec >= wL) d = tail(windowSec);
      else {
        // Binary search the segment [ws[j], ws[j+1]] holding windowSec.
        let lo = 0;
        let hi = last;
        while (hi - lo > 1) {
          const mid = (lo + hi) >> 1;
          if (ws[mid]! <= windowSec) lo = mid;
          else hi = mid;
        }
        const da = ds[lo]!;
        const db = ds[hi]!;
        if (da === 0 || da === db) d = da + (db - da) * ((windowSec - ws[lo]!) / (ws[hi]! - ws[lo]!));
        else {
          // Clamped to the segment's ends: with subnormal counts the power can round past them
          // (or overflow to NaN, then the segment is taken as a straight line).
          const pow = da * Math.pow(windowSec / ws[lo]!, Math.log(db / da) / Math.log(ws[hi]! / ws[lo]!));
          d = Number.isFinite(pow) ? Math.min(db, Math.max(da, pow)) : da + (db - da) * ((windowSec - ws[lo]!) / (ws[hi]! - ws[lo]!));
        }
      }
      return Math.min(d, totalPages);
    },
  };
}
