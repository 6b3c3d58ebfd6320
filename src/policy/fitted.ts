/**
 * `fitted`: Π fitted to need, γ solved (not an exponential of the fill level), link shares as the
 * host gives them.
 *
 * Projection (./projection.ts): every migration's overlay trajectory to its end — base disk left
 * over its link share, then the mirror of its overlay (synchronous writes share the link with the
 * backlog), then RAM pre-copy from the pre-copy predictor — at a write rate held constant. Link
 * shares are replayed as processor sharing over the remaining work (shares grow as others finish;
 * holding today's share would overestimate every remaining time but the shortest).
 *
 * Risk is the projected *peak* of Σ overlays in Ω. Overlays only grow until their migration ends
 * and then vanish, so the peak is reached just before some migration's end: one constraint per
 * end, "what is still in Ω just before it ≤ Ω·(1 − margin)". Summing final sizes instead would
 * throttle migrations that never coexist at their largest.
 *
 * Solve: each writer keeps a fraction λ_i of its demand, floored at γ_SLA. Default order
 * 'earliest-end': migrations in order of projected end get all they ask for while the peak fits;
 * the first that cannot gets the largest λ that fits (bisection: the peak is monotone in λ) and
 * the later ones γ_SLA for now — Ω used by an early finisher is freed and rewritten soonest, and
 * the later ones are re-planned as soon as it ends. Projected ends within `tieFraction` (2 %) of
 * each other form one rank, shared max-min fairly: identical migrations get identical λ whatever
 * their order, and noise in the inputs cannot flip which of two near-equal ones is served first
 * (the governor would otherwise move a throttle from one guest to the other at each re-solve). ('max-min' — raise a common λ, fix the λ of
 * the migrations in each constraint that becomes tight — is available, fairer, and measured
 * slightly worse on write retention.) If even γ_SLA for all cannot fit, all get γ_SLA.
 *
 * Apply: the plan assumes today's demands (and link) forever, but demand often drops and links
 * speed up, and throttling early for bytes that are never written loses them for good. Two rules
 * follow. The gate: the plan is not in force while the guests, writing at today's demand for
 * `gateHorizonSec` (default: until the next scheduled re-solve), would keep Σ overlays within
 * `gateFraction` (70 %) of the budget; until then only the brake acts, and the plan is re-solved
 * the moment the gate closes, on what is left of Ω. The bet costs no bytes when the demand does
 * last (the plan then spreads the rest of Ω over the rest of the time: the same bytes, with later
 * throttles up to ~3× harsher, 30 % of Ω instead of all of it), and it keeps every byte of a
 * burst that ends, or of a link that speeds up, before the gate closes; the 30 % kept back is what
 * lets the plan still steer Ω to the migrations that end first. It is not taken when it would
 * last less than a re-solve interval (Ω about to fill within seconds: the plan applies at once).
 * Measured in docs/BENCHMARKS.md ("Targets on random scenarios"). The deferral: a solved λ ≥ 40 %
 * is not applied at all, λ ≤ 10 % as is, linear in between (throttle when it must, not before).
 * Safety does not rest on the projection: a brake caps the total write rate so that the next 3 s
 * of writes (or until each migration's projected end) fit in what is left of Ω less the margin
 * (it acts whether the gate is open or not). A guest whose
 * demand is under its γ is not throttled (null). The plan and the brake keep the same margin (1 %
 * of Ω): the brake's reserve is the safety, and a plan that kept a further margin of its own
 * (it used to keep 2 %, the brake 1 %) only left Ω unwritten at every end it planned for
 * (docs/BENCHMARKS.md, "Targets on random scenarios").
 *
 * Both also keep back γ_SLA × `slaReserveSec` (600 s) per writer, at most 10 % of Ω. γ_SLA is
 * a promise, and a guest at γ_SLA still grows its overlay until its migration ends. The plan's
 * projected ends are wrong exactly when the link gets crowded: arrivals or a link drop stretch
 * every migration, and a RAM copy stops converging. A margin of 1 % of Ω does not grow with the
 * number of writers left to keep that promise to. Without the reserve, 4 of 15 000 generated
 * scenarios ended with every guest paused and Ω full at γ_SLA. With it, none did, at 0.03–0.16
 * points of mean write retention (docs/BENCHMARKS.md, "Link shares").
 *
 * Π: Ω in proportion to each migration's projected final overlay, never below the data a bin holds
 * (plus two intervals of growth when that fits). Bins are re-fitted at every decision, so shards
 * never persist: the paper's overlap rule only acts inside one interval, as the safety net that
 * lends a migration room in other bins when it outgrows its own instead of failing it (quota =
 * own room + what the overlap rule could place elsewhere).
 *
 * Link: every migration gets an equal weight by default, because that is what a host gives. TCP
 * shares a NIC between connections, and dpa can cap QEMU's streams but not lift them above LXD's
 * bulk copy. `latePhaseWeight` > 1 gives migrations past their bulk copy (mirror, RAM, switchover)
 * priority. They finish sooner and free their overlays, so fitted keeps ~1.5 points more of the
 * guests' writes in the simulator. That holds only on a host that shapes its migration traffic
 * (docs/BENCHMARKS.md, "Link shares"). A plan that counts on priority the host does not give
 * overflows Ω more often: 10 against 1 in 10 000 simulated scenarios.
 *
 * A full solve runs when the world changed in a way the projection did not foresee (arrival,
 * completion, phase change, demand change, link change over 2 %, a failure), when Ω use passes the
 * plan's peak, or every `resolveEverySec`; between solves the λ_i of the last one are applied to
 * the current state. The memo travels in the Decision, so the policy stays a pure function of
 * (world, previous decision); the RAM-prediction memo in ./projection.ts caches a pure function.
 *
 * Remaining time with a non-converging RAM phase is the predictor's give-up time, so one such
 * guest does not make every projection infinite; it keeps being re-projected as it grows.
 */
import { waterFill } from './link-share';
import { projectTrajectory, type Trajectory } from './projection';
import type { Decision, FittedMemo, MigrationDecision, MigrationView, Policy, WorldState } from './types';

export interface FittedOptions {
  /** Fraction of Ω kept free, by the plan and by the brake, 0..0.5 (default 0.01). */
  marginFraction?: number;
  /**
   * Deferral: a solved λ at or above `deferAbove` (0..1, default 0.4) is not applied at all, one
   * at or below `deferBelow` (0..deferAbove, default 0.1) is applied as is, linear in between.
   */
  deferAbove?: number;
  deferBelow?: number;
  /** How the solver shares a scarce Ω (default 'earliest-end'; see the module comment). */
  solver?: 'max-min' | 'earliest-end';
  /**
   * 'earliest-end': projected ends within this fraction of each other (0..1, default 0.02) are one
   * rank, shared max-min fairly.
   */
  tieFraction?: number;
  /** How remaining link shares are projected (default 'processor-sharing'; 'current' holds today's). */
  shareModel?: 'processor-sharing' | 'current';
  /**
   * Link weight of a migration in `mirror`, `ram` or `switchover` relative to one in `base` (≥ 1).
   * Default 1: equal shares, what a host without a traffic shaper gives (see the module comment).
   */
  latePhaseWeight?: number;
  /**
   * Brake horizon, seconds (≥ 0, default 3; 0 = off): whatever the projection says, the guests
   * together may not write more than the free part of Ω (less the margin) within this time.
   */
  brakeHorizonSec?: number;
  /**
   * Ω kept free for each writer to go on writing at γ_SLA for this long, seconds, on top of the
   * margin (≥ 0, default 600; see the module comment).
   */
  slaReserveSec?: number;
  /** Longest time between full solves, seconds (> 0, default 15). */
  resolveEverySec?: number;
  /**
   * Plan gate (0..1, default 0.7; 0 = the plan always applies): the solved throttles are put in
   * force only once the guests, writing at their current demand for `gateHorizonSec`, would take Σ
   * overlays past this fraction of the budget Ω·(1 − margin). Below it the plan is a bet on
   * today's demand lasting; see the module comment.
   */
  gateFraction?: number;
  /** Look-ahead of the plan gate, seconds (≥ 0, default `resolveEverySec`). */
  gateHorizonSec?: number;
}

/** Default of FittedOptions.tieFraction. */
export const DEFAULT_TIE_FRACTION = 0.02;
/** Default of FittedOptions.latePhaseWeight. */
export const DEFAULT_LATE_PHASE_WEIGHT = 1;
/** Default of FittedOptions.slaReserveSec. */
export const DEFAULT_SLA_RESERVE_SEC = 600;
/**
 * The γ_SLA reserve never takes more than this fraction of Ω: in a small Ω (a lab's 8 MiB) the
 * reserve for minutes of γ_SLA would exceed Ω itself and throttle every guest to γ_SLA at once.
 */
export const SLA_RESERVE_MAX_FRACTION = 0.1;
/** Default of FittedOptions.gateFraction. */
export const DEFAULT_GATE_FRACTION = 0.7;

function linkCap(world: WorldState, m: MigrationView): number {
  return m.phase === 'ram' ? world.ramMaxBandwidthBytesPerSec + m.writeBytesPerSecDemand : m.phase === 'switchover' ? world.ramMaxBandwidthBytesPerSec : Infinity;
}

function linkWeights(world: WorldState, latePhaseWeight: number): Float64Array {
  const out = new Float64Array(world.migrations.length);
  for (let i = 0; i < out.length; i++) out[i] = world.migrations[i]!.phase === 'base' ? 1 : latePhaseWeight;
  return out;
}

/** Link share of each migration now: the simulator's max-min rule with these weights. */
export function currentShares(world: WorldState, weights: Float64Array = new Float64Array(world.migrations.length).fill(1)): Float64Array {
  const n = world.migrations.length;
  const out = new Float64Array(n);
  waterFill(
    world.linkBytesPerSec,
    world.migrations.map((m) => linkCap(world, m)),
    weights,
    out,
  );
  return out;
}

/**
 * Average link share of each migration over the rest of its life, bytes/s. Shares grow as
 * others complete, so holding today's share constant overestimates every remaining time but the
 * shortest. This replays processor sharing on the work left (base disk + mirror backlog + RAM
 * pending; growth and RAM re-sends ignored), with today's per-phase caps, and returns
 * work ÷ completion time. Never below today's share.
 */
export function expectedShares(world: WorldState, linkWeight: Float64Array = new Float64Array(world.migrations.length).fill(1)): Float64Array {
  const n = world.migrations.length;
  const now = currentShares(world, linkWeight);
  const work = new Float64Array(n);
  const left = new Float64Array(n);
  const caps = new Float64Array(n);
  const done = new Float64Array(n);
  const alloc = new Float64Array(n);
  const weights = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const m = world.migrations[i]!;
    const ram = m.phase === 'ram' || m.phase === 'switchover' ? m.ramPendingBytes : m.ramBytes;
    work[i] = left[i] = m.baseBytesLeft + m.mirrorBytesLeft + ram;
    caps[i] = linkCap(world, m);
  }
  if (world.linkBytesPerSec <= 0) return now;
  let t = 0;
  for (let round = 0; round < n; round++) {
    for (let i = 0; i < n; i++) weights[i] = left[i]! > 0 ? linkWeight[i]! : 0;
    const demand = caps.map((c, i) => (left[i]! > 0 ? c : 0));
    waterFill(world.linkBytesPerSec, demand, weights, alloc);
    let step = Infinity;
    for (let i = 0; i < n; i++) if (left[i]! > 0 && alloc[i]! > 0) step = Math.min(step, left[i]! / alloc[i]!);
    if (!Number.isFinite(step)) break;
    t += step;
    let remaining = 0;
    for (let i = 0; i < n; i++) {
      if (!(left[i]! > 0)) continue;
      left[i] = left[i]! - alloc[i]! * step;
      if (left[i]! <= work[i]! * 1e-9) {
        left[i] = 0;
        done[i] = t;
      } else remaining++;
    }
    if (remaining === 0) break;
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = done[i]! > 0 && work[i]! > 0 ? Math.max(now[i]!, work[i]! / done[i]!) : now[i]!;
  return out;
}

/**
 * The fraction applied now for a solved λ: 1 when λ ≥ hi, λ when λ ≤ lo, linear in between
 * (continuous, non-decreasing, never below λ).
 */
export function deferredFraction(lambda: number, lo: number, hi: number): number {
  if (lambda >= hi) return 1;
  if (lambda <= lo) return lambda;
  return lo + ((lambda - lo) * (1 - lo)) / (hi - lo);
}

function writeRate(m: MigrationView, lambda: number, slaBytesPerSec: number): number {
  const d = m.failed ? 0 : m.writeBytesPerSecDemand;
  return Math.min(d, Math.max(slaBytesPerSec, lambda * d));
}

/** Trajectories of all migrations in structure-of-arrays form (the solver evaluates many). */
class Plan {
  readonly n: number;
  readonly t1: Float64Array;
  readonly t2: Float64Array;
  readonly end: Float64Array;
  readonly s0: Float64Array;
  readonly s1: Float64Array;
  readonly s2: Float64Array;
  readonly sEnd: Float64Array;
  /** Slopes of the three segments, bytes/s. */
  private readonly k1: Float64Array;
  private readonly k2: Float64Array;
  private readonly k3: Float64Array;
  private readonly scratch: Trajectory = { t1: 0, t2: 0, endSec: 0, s0: 0, s1: 0, s2: 0, finalBytes: 0, converges: true };
  private readonly order: number[];
  private readonly events: Float64Array;
  private readonly eventKind: Int32Array;

  constructor(
    private readonly world: WorldState,
    private readonly shares: Float64Array,
  ) {
    const n = (this.n = world.migrations.length);
    this.t1 = new Float64Array(n);
    this.t2 = new Float64Array(n);
    this.end = new Float64Array(n);
    this.s0 = new Float64Array(n);
    this.s1 = new Float64Array(n);
    this.s2 = new Float64Array(n);
    this.sEnd = new Float64Array(n);
    this.k1 = new Float64Array(n);
    this.k2 = new Float64Array(n);
    this.k3 = new Float64Array(n);
    this.order = Array.from({ length: 3 * n }, (_, k) => k);
    this.events = new Float64Array(3 * n);
    this.eventKind = new Int32Array(3 * n);
  }

  set(i: number, lambda: number): void {
    const w = this.world;
    const m = w.migrations[i]!;
    const tr = projectTrajectory(m, writeRate(m, lambda, w.slaBytesPerSec), this.shares[i]!, w.ramMaxBandwidthBytesPerSec, w.downtimeLimitMs, this.scratch);
    this.t1[i] = tr.t1;
    this.t2[i] = tr.t2;
    this.end[i] = tr.endSec;
    this.s0[i] = tr.s0;
    this.s1[i] = tr.s1;
    this.s2[i] = tr.s2;
    this.sEnd[i] = tr.finalBytes;
    this.k1[i] = tr.t1 > 0 ? (tr.s1 - tr.s0) / tr.t1 : 0;
    this.k2[i] = tr.t2 > tr.t1 ? (tr.s2 - tr.s1) / (tr.t2 - tr.t1) : 0;
    this.k3[i] = tr.endSec > tr.t2 ? (tr.finalBytes - tr.s2) / (tr.endSec - tr.t2) : 0;
  }

  /**
   * Peak of Σ overlays over the projection and the earliest end time at which Σ exceeds
   * `budget` (Infinity when none does). A sweep from the last end backwards: each migration
   * joins the sum at its end, the sum is linear between breakpoints.
   */
  peak(budget: number): { peakBytes: number; firstOverSec: number } {
    const n = this.n;
    let now = 0;
    for (let i = 0; i < n; i++) now += this.s0[i]!;
    let peakBytes = now;
    let firstOverSec = now > budget ? 0 : Infinity;
    for (let i = 0; i < n; i++) {
      this.events[3 * i] = this.end[i]!;
      this.eventKind[3 * i] = 0;
      this.events[3 * i + 1] = this.t2[i]!;
      this.eventKind[3 * i + 1] = 2;
      this.events[3 * i + 2] = this.t1[i]!;
      this.eventKind[3 * i + 2] = 1;
    }
    const ev = this.events;
    const kind = this.eventKind;
    // Later first; at equal times the join comes before its own breakpoints. Insertion sort on
    // the previous order: between the evaluations of one solve the order barely changes, so this
    // is close to linear.
    const order = this.order;
    const before = (a: number, b: number): boolean => ev[a]! > ev[b]! || (ev[a] === ev[b] && kind[a]! < kind[b]!);
    for (let x = 1; x < order.length; x++) {
      const k = order[x]!;
      let y = x - 1;
      while (y >= 0 && before(k, order[y]!)) {
        order[y + 1] = order[y]!;
        y--;
      }
      order[y + 1] = k;
    }
    let sum = 0;
    let slope = 0;
    let tau = Infinity;
    for (const k of this.order) {
      const t = ev[k]!;
      const i = (k / 3) | 0;
      if (tau !== Infinity) sum -= slope * (tau - t);
      tau = t;
      switch (kind[k]) {
        case 0: {
          sum += this.sEnd[i]!;
          slope += this.k3[i]!;
          if (sum > peakBytes) peakBytes = sum;
          if (sum > budget && t < firstOverSec) firstOverSec = t;
          break;
        }
        case 2:
          slope += this.k2[i]! - this.k3[i]!;
          break;
        default:
          slope += this.k1[i]! - this.k2[i]!;
      }
    }
    return { peakBytes, firstOverSec };
  }
}

/**
 * Write fractions λ_i (0..1, 0 = γ_SLA) such that the projected peak of Σ overlays stays within
 * `budget`, bytes, in the given order (see the module comment); `shares` are the link shares,
 * bytes/s, to project with. Returns λ per migration index, the plan at those λ and a summary.
 */
export function solveLambdas(
  world: WorldState,
  shares: Float64Array,
  budget: number,
  order: 'max-min' | 'earliest-end' = 'max-min',
  tieFraction = DEFAULT_TIE_FRACTION,
): { lambdas: Float64Array; plan: Plan; peakBytes: number; summary: string } {
  const n = world.migrations.length;
  const plan = new Plan(world, shares);
  const lambdas = new Float64Array(n).fill(1);
  const free: number[] = [];
  for (let i = 0; i < n; i++) {
    const m = world.migrations[i]!;
    if (!m.failed && m.writeBytesPerSecDemand > world.slaBytesPerSec) free.push(i);
    plan.set(i, 1);
  }
  const unthrottled = plan.peak(budget);
  if (unthrottled.peakBytes <= budget || free.length === 0) {
    return { lambdas, plan, peakBytes: unthrottled.peakBytes, summary: `no risk: projected peak ${fmtGiB(unthrottled.peakBytes)} ≤ budget ${fmtGiB(budget)}` };
  }
  const setFree = (group: readonly number[], lambda: number): void => {
    for (const i of group) {
      lambdas[i] = lambda;
      plan.set(i, lambda);
    }
  };
  setFree(free, 0);
  const floor = plan.peak(budget);
  if (floor.peakBytes > budget) {
    return { lambdas, plan, peakBytes: floor.peakBytes, summary: `over budget even at γ_SLA: projected peak ${fmtGiB(floor.peakBytes)} > ${fmtGiB(budget)}` };
  }
  let stages = 0;
  // Max-min fair among `group`: raise a common λ until some constraint binds, fix the λ of the
  // migrations in that constraint, raise the others further; symmetric in the migrations, so equal
  // needs get equal λ.
  const maxMin = (start: readonly number[]): void => {
    let group = start;
    let lo = 0;
    while (group.length > 0) {
      stages++;
      setFree(group, 1);
      if (plan.peak(budget).peakBytes <= budget) break;
      let hi = 1;
      for (let it = 0; it < 12 && hi - lo > 1e-3; it++) {
        const mid = (lo + hi) / 2;
        setFree(group, mid);
        if (plan.peak(budget).peakBytes <= budget) lo = mid;
        else hi = mid;
      }
      // Which constraint binds just above lo: every migration still in Ω at the first end where
      // Σ exceeds the budget takes part in it; those stop at lo.
      setFree(group, hi);
      const over = plan.peak(budget).firstOverSec;
      const bound = group.filter((i) => plan.end[i]! >= over);
      const rest = bound.length > 0 ? group.filter((i) => plan.end[i]! < over) : [];
      setFree(group, lo);
      group = rest;
    }
  };
  if (order === 'earliest-end') {
    // Lexicographic by projected end: the earliest-ending get all they ask for while the others
    // (at their current λ) allow; the first that cannot have all they ask for share what is left
    // max-min fairly; the later ones get γ_SLA. Ends within `tieFraction` of each other count as
    // one rank (treated alike: identical migrations get identical λ, and noise in the inputs does
    // not flip which of two near-equal ones is served first).
    const ends = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      plan.set(i, 1);
      ends[i] = plan.end[i]!;
    }
    for (const i of free) plan.set(i, 0);
    const byEnd = [...free].sort((a, b) => ends[a]! - ends[b]! || a - b);
    for (let g = 0; g < byEnd.length; ) {
      let h = g + 1;
      const limit = ends[byEnd[g]!]! * (1 + tieFraction);
      while (h < byEnd.length && ends[byEnd[h]!]! <= limit) h++;
      const rank = byEnd.slice(g, h);
      stages++;
      setFree(rank, 1);
      if (plan.peak(budget).peakBytes <= budget) {
        g = h;
        continue;
      }
      setFree(rank, 0);
      maxMin(rank);
      // Some constraint is now tight at or before these ends, and every later-ending migration
      // is still in Ω then: none of them can rise above the floor.
      break;
    }
  } else maxMin(free);
  const { peakBytes } = plan.peak(budget);
  let min = 1;
  let throttled = 0;
  for (const i of free) {
    if (lambdas[i]! < 1) throttled++;
    min = Math.min(min, lambdas[i]!);
  }
  return {
    lambdas,
    plan,
    peakBytes,
    summary: `at risk: unthrottled peak ${fmtGiB(unthrottled.peakBytes)} > budget ${fmtGiB(budget)}; ${throttled} writer(s) held to ≥ ${(min * 100).toFixed(1)} % of demand (${stages} stage(s))`,
  };
}

/**
 * Bin sizes in proportion to `need`, each at least its `floor`, Σ = Ω when Σ floor ≤ Ω
 * (otherwise the floors).
 */
export function proportionalSizes(omegaBytes: number, need: ArrayLike<number>, floor: ArrayLike<number>): Float64Array {
  const n = need.length;
  const sizes = new Float64Array(n);
  const fixed = new Uint8Array(n);
  for (;;) {
    let left = omegaBytes;
    let needSum = 0;
    let open = 0;
    for (let i = 0; i < n; i++) {
      if (fixed[i]) left -= floor[i]!;
      else {
        needSum += need[i]!;
        open++;
      }
    }
    if (open === 0 || left <= 0) {
      for (let i = 0; i < n; i++) sizes[i] = fixed[i] ? floor[i]! : Math.max(floor[i]!, 0);
      return sizes;
    }
    let changed = false;
    for (let i = 0; i < n; i++) {
      if (fixed[i]) {
        sizes[i] = floor[i]!;
        continue;
      }
      const share = needSum > 0 ? (left * need[i]!) / needSum : left / open;
      if (share < floor[i]!) {
        fixed[i] = 1;
        changed = true;
      }
      sizes[i] = share;
    }
    if (!changed) return sizes;
  }
}

/**
 * Quota of each migration: its data + room in its bin + what the paper's overlap rule could
 * place in the other bins (the most over splits into 2^j equal parts in the 2^j roomiest bins).
 */
function quotas(sizes: Float64Array, data: ArrayLike<number>): Float64Array {
  const n = sizes.length;
  const free = new Float64Array(n);
  // The five roomiest bins (indices), enough for splits into 1, 2 and 4 parts excluding any one bin.
  const top = [-1, -1, -1, -1, -1];
  for (let i = 0; i < n; i++) {
    free[i] = Math.max(0, sizes[i]! - data[i]!);
    let j = i;
    for (let r = 0; r < top.length; r++) {
      const t = top[r]!;
      if (t < 0 || free[j]! > free[t]!) {
        top[r] = j;
        if (t < 0) break;
        j = t;
      }
    }
  }
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    let rank = 0;
    let next = 1;
    for (const t of top) {
      if (t < 0 || t === i) continue;
      rank++;
      if (rank === next) {
        best = Math.max(best, rank * free[t]!);
        next *= 2;
      }
    }
    out[i] = data[i]! + free[i]! + best;
  }
  return out;
}

/** True when the world still matches the one `memo` was solved for (see module comment). */
function unchanged(world: WorldState, memo: FittedMemo): boolean {
  const ms = world.migrations;
  if (ms.length !== memo.ids.length) return false;
  for (let i = 0; i < ms.length; i++) {
    const m = ms[i]!;
    if (m.id !== memo.ids[i] || m.phase !== memo.phases[i] || m.writeBytesPerSecDemand !== memo.demands[i] || m.failed !== memo.failed[i]) return false;
  }
  return Math.abs(world.linkBytesPerSec - memo.linkBytesPerSec) <= 0.02 * memo.linkBytesPerSec;
}

/** The `fitted` policy. */
export function fittedPolicy(options: FittedOptions = {}): Policy {
  const margin = options.marginFraction ?? 0.01;
  if (!(margin >= 0 && margin <= 0.5)) throw new RangeError(`marginFraction: must be from 0 to 0.5 (got ${String(margin)})`);
  const deferAbove = options.deferAbove ?? 0.4;
  const deferBelow = options.deferBelow ?? 0.1;
  if (!(deferAbove >= 0 && deferAbove <= 1)) throw new RangeError(`deferAbove: must be from 0 to 1 (got ${String(deferAbove)})`);
  if (!(deferBelow >= 0 && deferBelow <= deferAbove)) throw new RangeError(`deferBelow: must be from 0 to deferAbove (got ${String(deferBelow)})`);
  const resolveEverySec = options.resolveEverySec ?? 15;
  const gateFraction = options.gateFraction ?? DEFAULT_GATE_FRACTION;
  if (!(gateFraction >= 0 && gateFraction <= 1)) throw new RangeError(`gateFraction: must be from 0 to 1 (got ${String(gateFraction)})`);
  const gateHorizonSec = options.gateHorizonSec ?? resolveEverySec;
  if (!(gateHorizonSec >= 0)) throw new RangeError(`gateHorizonSec: must be ≥ 0 (got ${String(gateHorizonSec)})`);
  const tieFraction = options.tieFraction ?? DEFAULT_TIE_FRACTION;
  if (!(tieFraction >= 0 && tieFraction <= 1)) throw new RangeError(`tieFraction: must be from 0 to 1 (got ${String(tieFraction)})`);
  const latePhaseWeight = options.latePhaseWeight ?? DEFAULT_LATE_PHASE_WEIGHT;
  const brakeHorizonSec = options.brakeHorizonSec ?? 3;
  const slaReserveSec = options.slaReserveSec ?? DEFAULT_SLA_RESERVE_SEC;
  if (!(slaReserveSec >= 0)) throw new RangeError(`slaReserveSec: must be ≥ 0 (got ${String(slaReserveSec)})`);
  if (!(brakeHorizonSec >= 0)) throw new RangeError(`brakeHorizonSec: must be ≥ 0 (got ${String(brakeHorizonSec)})`);
  if (!(latePhaseWeight >= 1)) throw new RangeError(`latePhaseWeight: must be ≥ 1 (got ${String(latePhaseWeight)})`);
  if (!(resolveEverySec > 0)) throw new RangeError(`resolveEverySec: must be > 0 (got ${String(resolveEverySec)})`);
  return {
    name: 'fitted',
    mirrorOnly: false,
    decide(world: WorldState, previous: Decision | undefined): Decision {
      const n = world.migrations.length;
      if (n === 0) return { policy: 'fitted', atSec: world.nowSec, migrations: [], bins: [], reason: 'no migration in flight' };
      let reserve = 0;
      if (slaReserveSec > 0) for (const m of world.migrations) if (!m.failed) reserve += Math.min(m.writeBytesPerSecDemand, world.slaBytesPerSec) * slaReserveSec;
      reserve = Math.min(reserve, SLA_RESERVE_MAX_FRACTION * world.omegaBytes);
      const budget = world.omegaBytes * (1 - margin) - reserve;
      const weights = linkWeights(world, latePhaseWeight);
      const nowShares = currentShares(world, weights);
      let used = 0;
      for (const m of world.migrations) used += m.overlayBytes;
      // Plan gate: Ω the guests would fill at today's demand within the look-ahead.
      let demandSum = 0;
      for (const m of world.migrations) if (!m.failed) demandSum += m.writeBytesPerSecDemand;
      const gateOpen = gateFraction > 0 && used + demandSum * Math.max(world.intervalSec, gateHorizonSec) <= gateFraction * budget;
      const old = previous?.fitted;
      const fresh =
        old !== undefined &&
        world.nowSec - old.solvedAtSec < resolveEverySec &&
        // The gate closing means Ω was written past what the last plan counted on: solve again.
        (old.gateOpen ?? false) === gateOpen &&
        // Ω use beyond what the last solve projected as its peak means the plan is off: solve again.
        (used <= budget || used <= old.peakBytes) &&
        unchanged(world, old);
      let memo: FittedMemo;
      if (fresh) memo = old;
      else {
        const shares = options.shareModel === 'current' ? nowShares : expectedShares(world, weights);
        const solved = solveLambdas(world, shares, budget, options.solver ?? 'earliest-end', tieFraction);
        memo = {
          solvedAtSec: world.nowSec,
          ids: world.migrations.map((m) => m.id),
          phases: world.migrations.map((m) => m.phase),
          demands: world.migrations.map((m) => m.writeBytesPerSecDemand),
          failed: world.migrations.map((m) => m.failed),
          linkBytesPerSec: world.linkBytesPerSec,
          lambdas: Array.from(solved.lambdas),
          needBytes: Array.from(solved.plan.sEnd),
          endSec: Array.from(solved.plan.end),
          peakBytes: solved.peakBytes,
          summary: solved.summary,
          gateOpen,
        };
      }

      // The memo is aligned with world.migrations (same ids in the same order) whenever it is reused.
      const rates = new Float64Array(n);
      const data = new Float64Array(n);
      const need = new Float64Array(n);
      let floor = new Float64Array(n);
      let floorSum = 0;
      for (let i = 0; i < n; i++) {
        const m = world.migrations[i]!;
        rates[i] = gateOpen ? (m.failed ? 0 : m.writeBytesPerSecDemand) : writeRate(m, deferredFraction(memo.lambdas[i]!, deferBelow, deferAbove), world.slaBytesPerSec);
        data[i] = m.overlayBytes;
        need[i] = Math.max(m.overlayBytes, memo.needBytes[i]!);
        floor[i] = m.overlayBytes + rates[i]! * 2 * world.intervalSec;
        floorSum += floor[i]!;
      }
      if (floorSum > world.omegaBytes) floor = data;
      // Brake: the writes of the next `brakeHorizonSec` (or until each migration's projected end,
      // if sooner) must fit in the free part of Ω less the margin; scales every writer alike,
      // never below γ_SLA.
      let braked = false;
      if (brakeHorizonSec > 0) {
        let total = 0;
        for (let i = 0; i < n; i++) total += rates[i]! * Math.max(world.intervalSec, Math.min(brakeHorizonSec, memo.endSec[i]! - (world.nowSec - memo.solvedAtSec)));
        const free = budget - used;
        if (total > free) {
          const factor = Math.max(0, free) / total;
          for (let i = 0; i < n; i++) {
            const m = world.migrations[i]!;
            rates[i] = Math.min(rates[i]!, Math.max(Math.min(m.failed ? 0 : m.writeBytesPerSecDemand, world.slaBytesPerSec), rates[i]! * factor));
          }
          braked = true;
        }
      }
      const sizes = proportionalSizes(world.omegaBytes, need, floor);
      const quota = quotas(sizes, data);
      const migrations: MigrationDecision[] = world.migrations.map((m, i) => {
        const g = rates[i]!;
        return {
          id: m.id,
          partitionBytes: sizes[i]!,
          quotaBytes: quota[i]!,
          throttleBytesPerSec: !m.failed && g < m.writeBytesPerSecDemand ? g : null,
          linkShareBytesPerSec: nowShares[i]!,
          meanPriority: 1,
          failed: false,
        };
      });
      return {
        policy: 'fitted',
        atSec: world.nowSec,
        migrations,
        fitted: memo,
        reason: `${memo.summary}; projected peak ${fmtGiB(memo.peakBytes)} (solved at ${memo.solvedAtSec.toFixed(1)} s)${gateOpen ? `; plan not in force: Ω use ${fmtGiB(used)} stays under ${Math.round(gateFraction * 100)} % of the budget for ${Math.max(world.intervalSec, gateHorizonSec)} s at today's demand` : ''}${braked ? '; braking: Ω nearly full' : ''}`,
      };
    },
  };
}

function fmtGiB(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}
