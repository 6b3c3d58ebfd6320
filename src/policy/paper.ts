/**
 * The paper's policy, exactly as written ("Improve the VM live migration process", §Π and §γ):
 *
 * Π: a new migration gets Ω_S/(N+1) and every existing bin shrinks to the same share; a
 * completed migration's bin is split equally among the remaining ones; when a bin ends up
 * smaller than its data, or a migration outgrows its bin, the overlap rules of ./bins.ts apply
 * (move to the least-used bin that can hold it, else halves, quarters, …; else the migration
 * fails; the overflowing bin is frozen until space is reclaimed; on a completion a sharded
 * migration brings its k−1, k−2, … smallest shards home, else it fails).
 *
 * γ: γ_i = max(γ_SLA, min(Π·exp(−Σα_i·s/((Π − s) + ε)) + ε, U/N)), then γ_i ≤ γ_j for every
 * bin of j holding a shard of i. The formula mixes units (ε is added to a size in the
 * denominator and to a rate outside), so it is only "the paper's" in the paper's units: sizes in
 * MB, rates in MB/s, ε = 0.01. The paper's one explicit conversion calls
 * `throttling.bps-write=10485760` "10 MB/s", so its MB is 2^20 bytes: we convert bytes to that
 * MB, evaluate, and convert the rate back to bytes/s (ε = 0.01 MB/s = 10 485.76 bytes/s).
 *
 * For a migration that is not sharded and alone in its bin, Π = Π(ω_i) and s = s_cow,i, exactly.
 * The paper does not say which Π and s a sharded migration uses (Π(ω_i) − s_cow,i is negative
 * once it has spilled); its plot caption reads the x-axis as "the capacity of the sharded bins
 * (the non-frozen ones)", so we use Π = the size of the non-frozen bins it can grow in and s = the
 * data in them. With a frozen home and no other bin, Π = s = 0 and γ = ε (then γ_SLA).
 */
import {
  BinIndex,
  binUsed,
  bringShardsHome,
  chargeGrowth,
  cloneBins,
  dropEmptyShards,
  enforceInvariants,
  evictExcess,
  isSharded,
  rehomeOrphan,
  removeMigration,
  thawBins,
} from './bins';
import type { Bin, Decision, MigrationDecision, Policy, WorldState } from './types';

/** The paper's MB, bytes (see the module comment for why 2^20). */
export const PAPER_MB_BYTES = 1024 * 1024;
/** ε in the paper's units (MB in the denominator, MB/s outside). */
export const PAPER_EPSILON_MB = 0.01;
/** ε as a rate, bytes/s. */
export const PAPER_EPSILON_BYTES_PER_SEC = PAPER_EPSILON_MB * PAPER_MB_BYTES;

/** Inputs of the paper's throttle formula, in bytes and bytes/s. */
export interface PaperThrottleInput {
  /** Π: bytes of the bin(s) the migration grows in (≥ 0). */
  partitionBytes: number;
  /** s: bytes of data in them (0 ≤ s; s ≤ Π in every state this code produces). */
  overlayBytes: number;
  /** Σα: mean priority, ≥ 1 (1 when not sharded). */
  meanPriority: number;
  /** U/N: the link share, bytes/s (≥ 0; Infinity = no cap). */
  linkShareBytesPerSec: number;
}

/**
 * min(Π·exp(−Σα·s/((Π − s) + ε)) + ε, U/N) in bytes/s, evaluated in the paper's MB units.
 * No γ_SLA floor here (the policy applies it); never below ε unless U/N is.
 */
export function paperThrottleBytesPerSec(input: PaperThrottleInput): number {
  const { partitionBytes, overlayBytes, meanPriority: alpha, linkShareBytesPerSec } = input;
  for (const [name, v] of [
    ['partitionBytes', partitionBytes],
    ['overlayBytes', overlayBytes],
  ] as const) {
    if (!(v >= 0) || !Number.isFinite(v)) throw new RangeError(`${name}: must be a finite number ≥ 0 (got ${String(v)})`);
  }
  if (!(linkShareBytesPerSec >= 0)) throw new RangeError(`linkShareBytesPerSec: must be a number ≥ 0, Infinity allowed (got ${String(linkShareBytesPerSec)})`);
  if (!(alpha >= 1) || !Number.isFinite(alpha)) throw new RangeError(`meanPriority: must be a finite number ≥ 1 (got ${String(alpha)})`);
  return throttleUnchecked(partitionBytes, overlayBytes, alpha, linkShareBytesPerSec);
}

/** paperThrottleBytesPerSec without the argument checks (inputs already known valid). */
function throttleUnchecked(partitionBytes: number, overlayBytes: number, alpha: number, linkShareBytesPerSec: number): number {
  const pi = partitionBytes / PAPER_MB_BYTES;
  const s = overlayBytes / PAPER_MB_BYTES;
  const denominator = pi - s + PAPER_EPSILON_MB;
  // s > Π + ε cannot arise from the bin rules; treat it as "no room": the exponential term is 0.
  const curveMBps = denominator > 0 ? pi * Math.exp((-alpha * s) / denominator) + PAPER_EPSILON_MB : PAPER_EPSILON_MB;
  return Math.min(curveMBps * PAPER_MB_BYTES, linkShareBytesPerSec);
}

/** Π for a new arrival and every bin after it: Ω_S/(N+1), as bytes. */
export function paperShareBytes(omegaBytes: number, migrationsAfterArrival: number): number {
  return omegaBytes / migrationsAfterArrival;
}

/**
 * Applies the paper's Π rules to the previous layout for the migrations now in `world`:
 * growth since the last call, completions, then arrivals (in world order). Returns the new bins
 * and the ids that failed in this step.
 */
export function paperPartition(world: WorldState, previousBins: readonly Bin[] | undefined, alreadyFailed: ReadonlySet<string>): { bins: Bin[]; newlyFailed: string[]; index: BinIndex } {
  const bins = cloneBins(previousBins);
  const newlyFailed: string[] = [];
  const fail = (id: string): void => {
    if (!alreadyFailed.has(id) && !newlyFailed.includes(id)) newlyFailed.push(id);
  };
  const present = new Set(world.migrations.map((m) => m.id));
  const known = new Set(bins.map((b) => b.home));

  // 1. Growth during the last interval, charged under the layout it happened in. The common
  //    case (room in its own unfrozen home) is O(1); the overlap rules take the slow path.
  //    Own-bin growth is charged first for everyone, the overflows after, in world order.
  const index = new BinIndex(bins);
  const overflowing: Array<[string, number]> = [];
  for (const m of world.migrations) {
    if (!known.has(m.id)) continue;
    const delta = m.overlayBytes - index.accounted(m.id);
    if (delta > 0 && !index.growHome(m.id, delta)) overflowing.push([m.id, delta]);
  }
  for (const [id, delta] of overflowing) if (!chargeGrowth(bins, id, delta)) fail(id);
  let changed = overflowing.length > 0;

  // 2. Completions: reclaimed space split equally, orphans re-placed, sharded ones consolidate.
  const departed = bins.length === present.size && bins.every((b) => present.has(b.home)) ? [] : bins.filter((b) => !present.has(b.home)).map((b) => b.home);
  if (departed.length > 0) {
    changed = true;
    let freed = 0;
    const orphans = [];
    for (const id of departed) {
      const r = removeMigration(bins, id);
      freed += r.freedSizeBytes;
      orphans.push(...r.orphans);
    }
    if (bins.length > 0) for (const b of bins) b.sizeBytes += freed / bins.length;
    thawBins(bins);
    for (const o of orphans) if (!rehomeOrphan(bins, o)) fail(o.id);
    for (const b of [...bins]) {
      if (isSharded(bins, b.home) && !bringShardsHome(bins, b.home)) fail(b.home);
    }
    thawBins(bins);
  }

  // 3. Arrivals: each one resizes every bin to Ω/(N+1); overfull bins shed their excess.
  for (const m of world.migrations) {
    if (known.has(m.id) || bins.some((b) => b.home === m.id)) continue;
    changed = true;
    const share = paperShareBytes(world.omegaBytes, bins.length + 1);
    for (const b of bins) b.sizeBytes = share;
    bins.push({ home: m.id, sizeBytes: share, frozen: false, shards: [{ id: m.id, bytes: 0 }] });
    for (const b of bins) if (binUsed(b) > b.sizeBytes) for (const id of evictExcess(bins, b)) fail(id);
    // A new arrival with data already (a governor attaching mid-migration) is charged now.
    if (m.overlayBytes > 0 && !chargeGrowth(bins, m.id, m.overlayBytes)) fail(m.id);
  }

  if (!changed) return { bins, newlyFailed, index };
  dropEmptyShards(bins);
  enforceInvariants(bins, world.omegaBytes);
  return { bins, newlyFailed, index: new BinIndex(bins) };
}

/** The throttle of every migration under `bins`, with γ_SLA floor and the same-bin priority rule. */
export function paperThrottles(world: WorldState, bins: Bin[], index: BinIndex = new BinIndex(bins)): Map<string, { throttleBytesPerSec: number; meanPriority: number }> {
  const n = Math.max(1, world.migrations.length);
  const linkShare = world.linkBytesPerSec / n;
  const raw = new Map<string, { throttleBytesPerSec: number; meanPriority: number }>();
  for (const m of world.migrations) {
    let pi = 0;
    let s = 0;
    for (const b of index.growable(m.id)) {
      pi += b.sizeBytes;
      s += index.used.get(b)!;
    }
    const alpha = index.meanPriority(m.id);
    const gamma = paperThrottleBytesPerSec({ partitionBytes: pi, overlayBytes: Math.min(s, pi), meanPriority: alpha, linkShareBytesPerSec: linkShare });
    raw.set(m.id, { throttleBytesPerSec: Math.max(world.slaBytesPerSec, gamma), meanPriority: alpha });
  }
  // γ_SLA ≤ γ_i ≤ γ_j whenever i has a shard in j's home bin.
  const out = new Map(raw);
  for (const b of bins) {
    const home = raw.get(b.home);
    if (!home) continue;
    for (const sh of b.shards) {
      if (sh.id === b.home || sh.bytes <= 0) continue;
      const cur = out.get(sh.id);
      if (cur && cur.throttleBytesPerSec > home.throttleBytesPerSec) out.set(sh.id, { ...cur, throttleBytesPerSec: home.throttleBytesPerSec });
    }
  }
  return out;
}

/**
 * What a bin layout looks like apart from the bytes in its home shards: which bins each migration
 * holds data in, which can grow, its Σα, who shares whose bin. Between two structural events
 * (an overflow, a completion, an arrival) only home shards grow, so the paper policy computes
 * this once per layout and reuses it every interval (the fast path of `paperPolicy.decide`).
 * Indices: migrations in world order at the time it was built (`ids`), bins in array order.
 */
interface Layout {
  ids: string[];
  /** Per migration: its home bin. */
  homeBin: Int32Array;
  /** Per migration: the bins BinIndex.binsOf lists (home first, then foreign bins in order). */
  binsOf: Int32Array[];
  /** Per migration, per entry of binsOf: the position of its shard in that bin. */
  shardAt: Int32Array[];
  /** Per migration: binsOf without the frozen bins (BinIndex.growable), and its shard positions. */
  growable: Int32Array[];
  growableAt: Int32Array[];
  /** True when some bin holds a foreign shard of 0 bytes (dropEmptyShards would change the layout). */
  emptyForeignShards: boolean;
  /** Per migration: Σα (BinIndex.meanPriority). */
  alpha: Float64Array;
  /** (owner, home) migration pairs, in bin and stack order: owner holds data in home's bin. */
  guestOf: Int32Array;
  homeOfGuest: Int32Array;
  /** Bins not frozen, in array order. */
  open: Int32Array;
  sharded: number;
  frozen: number;
}

/** Layouts of bins arrays this module returned (they are never mutated afterwards). */
const layouts = new WeakMap<readonly Bin[], Layout>();

/**
 * Builds the layout of `bins` for the migrations of `world`, or undefined when the bins are not
 * one home per migration with unique shard ids per bin (then every call takes the slow path).
 */
function buildLayout(world: WorldState, bins: readonly Bin[]): Layout | undefined {
  const n = world.migrations.length;
  if (bins.length !== n || n === 0) return undefined;
  const slot = new Map<string, number>();
  const ids = world.migrations.map((m, i) => {
    slot.set(m.id, i);
    return m.id;
  });
  const homeBin = new Int32Array(n).fill(-1);
  const binsOf: number[][] = ids.map(() => []);
  const shardAt: number[][] = ids.map(() => []);
  const guests: number[] = [];
  const homes: number[] = [];
  let emptyForeignShards = false;
  for (let b = 0; b < n; b++) {
    const i = slot.get(bins[b]!.home);
    if (i === undefined || homeBin[i] !== -1 || bins[b]!.shards[0]?.id !== bins[b]!.home) return undefined;
    homeBin[i] = b;
    binsOf[i]!.push(b);
    shardAt[i]!.push(0);
  }
  for (let b = 0; b < n; b++) {
    const bin = bins[b]!;
    const seen = new Set<string>();
    for (let k = 0; k < bin.shards.length; k++) {
      const sh = bin.shards[k]!;
      if (seen.has(sh.id)) return undefined;
      seen.add(sh.id);
      if (sh.id === bin.home) continue;
      if (sh.bytes <= 0) {
        emptyForeignShards = true;
        continue;
      }
      const i = slot.get(sh.id);
      if (i === undefined) return undefined;
      binsOf[i]!.push(b);
      shardAt[i]!.push(k);
      guests.push(i);
      homes.push(slot.get(bin.home)!);
    }
  }
  const alpha = new Float64Array(n);
  let sharded = 0;
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (let e = 0; e < binsOf[i]!.length; e++) sum += e === 0 ? 1 : shardAt[i]![e]! + 1;
    alpha[i] = sum / binsOf[i]!.length;
    if (binsOf[i]!.length > 1) sharded++;
  }
  const open: number[] = [];
  for (let b = 0; b < n; b++) if (!bins[b]!.frozen) open.push(b);
  return {
    ids,
    homeBin,
    binsOf: binsOf.map((l) => Int32Array.from(l)),
    shardAt: shardAt.map((l) => Int32Array.from(l)),
    growable: binsOf.map((l) => Int32Array.from(l.filter((b) => !bins[b]!.frozen))),
    growableAt: binsOf.map((l, i) => Int32Array.from(shardAt[i]!.filter((_, e) => !bins[l[e]!]!.frozen))),
    emptyForeignShards,
    alpha,
    guestOf: Int32Array.from(guests),
    homeOfGuest: Int32Array.from(homes),
    open: Int32Array.from(open),
    sharded,
    frozen: n - open.length,
  };
}

/**
 * The decision when nothing structural happened since `previousBins` (same migrations in the same
 * order, every one's growth fits in its unfrozen home): exactly what the general path computes
 * (same operations in the same order, so the same floating-point results), without cloning the
 * layout or rebuilding its index. Undefined when the general path must run.
 */
function decideFast(world: WorldState, previousBins: readonly Bin[], failed: ReadonlySet<string>, previous?: Decision): Decision | undefined {
  const layout = layouts.get(previousBins);
  const ms = world.migrations;
  const n = ms.length;
  if (!layout || layout.ids.length !== n) return undefined;
  for (let i = 0; i < n; i++) if (ms[i]!.id !== layout.ids[i]) return undefined;
  const used = new Float64Array(n);
  for (let b = 0; b < n; b++) used[b] = binUsed(previousBins[b]!);
  // Copy-on-write: a bin (its shard array) is copied the first time this decision changes it, and
  // a shard is replaced, never changed in place, so the previous decision's layout stays intact.
  let bins = previousBins as Bin[];
  const copied = new Uint8Array(n);
  const writable = (b: number): Bin => {
    if (bins === previousBins) bins = previousBins.slice();
    if (!copied[b]) {
      const o = bins[b]!;
      bins[b] = { home: o.home, sizeBytes: o.sizeBytes, frozen: o.frozen, shards: o.shards.slice() };
      copied[b] = 1;
    }
    return bins[b]!;
  };
  const addBytes = (b: number, k: number, bytes: number): void => {
    const shards = writable(b).shards;
    const old = shards[k]!;
    shards[k] = { id: old.id, bytes: old.bytes + bytes };
  };
  // 1. Growth in the own home (BinIndex.growHome); the rest goes by chargeGrowth below.
  const overflowing: number[] = [];
  for (let i = 0; i < n; i++) {
    const list = layout.binsOf[i]!;
    const at = layout.shardAt[i]!;
    let accounted = 0;
    for (let e = 0; e < list.length; e++) accounted += previousBins[list[e]!]!.shards[at[e]!]!.bytes;
    const delta = ms[i]!.overlayBytes - accounted;
    if (!(delta > 0)) continue;
    const h = layout.homeBin[i]!;
    const home = previousBins[h]!;
    if (home.frozen || home.sizeBytes - used[h]! < delta) {
      overflowing.push(i, delta);
      continue;
    }
    addBytes(h, 0, delta);
    used[h] = used[h]! + delta;
  }
  if (overflowing.length > 0) {
    // chargeGrowth, as long as the growth fits in the bins the migration can already grow in
    // (nothing spills, nothing freezes); otherwise the general path runs.
    if (layout.emptyForeignShards) return undefined;
    for (let k = 0; k < overflowing.length; k += 2) {
      const i = overflowing[k]!;
      let left = overflowing[k + 1]!;
      const list = layout.growable[i]!;
      const at = layout.growableAt[i]!;
      for (let e = 0; e < list.length && left > 0; e++) {
        const b = list[e]!;
        const take = Math.min(left, Math.max(0, bins[b]!.sizeBytes - binUsed(bins[b]!)));
        if (take > 0) addBytes(b, at[e]!, take);
        left -= take;
      }
      if (left > 0) return undefined;
    }
    // The general path then re-checks the invariants (enforceInvariants) and re-indexes.
    let total = 0;
    let slack = 0;
    for (let b = 0; b < n; b++) {
      used[b] = binUsed(bins[b]!);
      if (bins[b]!.sizeBytes < used[b]!) writable(b).sizeBytes = used[b]!;
      total += bins[b]!.sizeBytes;
      slack += bins[b]!.sizeBytes - used[b]!;
    }
    const over = total - world.omegaBytes;
    if (over > 0 && slack > 0) {
      const keep = Math.max(0, 1 - over / slack);
      for (let b = 0; b < n; b++) {
        const size = used[b]! + (bins[b]!.sizeBytes - used[b]!) * keep;
        if (size !== bins[b]!.sizeBytes) writable(b).sizeBytes = size;
      }
    }
  }
  if (bins !== previousBins) layouts.set(bins, layout);
  else if (previous) {
    // Nothing moved since the previous decision, itself taken on these very bins with nothing
    // moving: same inputs, same answer (the steady state of paused or idle guests).
    const last = still.get(previous.migrations);
    if (last && last.bins === bins && last.linkBytesPerSec === world.linkBytesPerSec && last.slaBytesPerSec === world.slaBytesPerSec && last.omegaBytes === world.omegaBytes && failed.size === (previous.failedIds?.length ?? 0)) {
      let same = true;
      for (let i = 0; i < n && same; i++) same = ms[i]!.overlayBytes === last.overlayBytes[i] && failed.has(ms[i]!.id) === previous.migrations[i]!.failed;
      if (same) {
        const migrations = previous.migrations.slice();
        still.set(migrations, last);
        return { policy: 'paper', atSec: world.nowSec, migrations, bins, failedIds: [...failed], reason: previous.reason };
      }
    }
  }

  // γ (paperThrottles), then the same-bin rule.
  const linkShare = world.linkBytesPerSec / Math.max(1, n);
  const raw = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let pi = 0;
    let s = 0;
    for (const b of layout.growable[i]!) {
      pi += bins[b]!.sizeBytes;
      s += used[b]!;
    }
    raw[i] = Math.max(world.slaBytesPerSec, throttleUnchecked(pi, Math.min(s, pi), layout.alpha[i]!, linkShare));
  }
  const gamma = Float64Array.from(raw);
  for (let k = 0; k < layout.guestOf.length; k++) {
    const g = layout.guestOf[k]!;
    const home = raw[layout.homeOfGuest[k]!]!;
    if (gamma[g]! > home) gamma[g] = home;
  }

  // Headroom (BinIndex.headrooms): own room + what the overlap rule could place elsewhere.
  const free = new Float64Array(n);
  for (let b = 0; b < n; b++) free[b] = bins[b]!.sizeBytes - used[b]!;
  const open: number[] = [];
  for (const b of layout.open) if (free[b]! > 0) open.push(b);
  open.sort((a, b) => free[b]! - free[a]!);
  const perVm = linkShare;
  const migrations: MigrationDecision[] = new Array(n);
  // mine[b] === i + 1: bin b is one migration i can grow in (instead of a search per bin).
  const mine = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const m = ms[i]!;
    const own = layout.growable[i]!;
    const homeBin = layout.homeBin[i]!;
    let room = 0;
    for (const b of own) {
      room += Math.max(0, free[b]!);
      mine[b] = i + 1;
    }
    let best = 0;
    let rank = 0;
    let next = 1;
    for (const b of open) {
      if (b === homeBin || mine[b] === i + 1) continue;
      rank++;
      if (rank === next) {
        best = Math.max(best, rank * free[b]!);
        next *= 2;
        if (next > MAX_SPLIT_PARTS) break;
      }
    }
    const isFailed = failed.has(m.id);
    migrations[i] = {
      id: m.id,
      partitionBytes: bins[homeBin]!.sizeBytes,
      quotaBytes: isFailed ? m.overlayBytes : m.overlayBytes + (room + best),
      throttleBytesPerSec: gamma[i]!,
      linkShareBytesPerSec: perVm,
      meanPriority: layout.alpha[i]!,
      failed: isFailed,
    };
  }
  if (bins === previousBins) {
    const overlayBytes = new Float64Array(n);
    for (let i = 0; i < n; i++) overlayBytes[i] = ms[i]!.overlayBytes;
    still.set(migrations, { bins, linkBytesPerSec: world.linkBytesPerSec, slaBytesPerSec: world.slaBytesPerSec, omegaBytes: world.omegaBytes, overlayBytes });
  }
  return { policy: 'paper', atSec: world.nowSec, migrations, bins, failedIds: [...failed], reason: paperReason(world, layout.sharded, layout.frozen, []) };
}

/**
 * The inputs of a fast-path decision taken when no bin changed (its `used` are the plain sums of
 * the bins), keyed by its migrations array: the next one on the same inputs is the same decision.
 */
interface StillInputs {
  bins: readonly Bin[];
  linkBytesPerSec: number;
  slaBytesPerSec: number;
  omegaBytes: number;
  overlayBytes: Float64Array;
}
const still = new WeakMap<readonly MigrationDecision[], StillInputs>();

/** BinIndex.headrooms counts splits into at most this many parts. */
const MAX_SPLIT_PARTS = 8;

function paperReason(world: WorldState, sharded: number, frozen: number, newlyFailed: readonly string[]): string {
  const n = Math.max(1, world.migrations.length);
  return world.migrations.length === 0
    ? 'no migration in flight'
    : `Π = Ω/${n} = ${fmtGiB(world.omegaBytes / n)} per bin` +
        (sharded ? `, ${sharded} sharded` : '') +
        (frozen ? `, ${frozen} frozen` : '') +
        (newlyFailed.length ? `, failed now: ${newlyFailed.join(', ')}` : '') +
        `; γ by the paper's formula, capped at U/N`;
}

function fmtGiB(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

/** The paper's policy (Π and γ as published). */
export const paperPolicy: Policy = {
  name: 'paper',
  mirrorOnly: false,
  decide(world: WorldState, previous: Decision | undefined): Decision {
    const carried = previous?.failedIds ?? [];
    const present = carried.length > 0 ? new Set(world.migrations.map((m) => m.id)) : undefined;
    const failed = new Set(carried.filter((id) => present!.has(id)));
    for (const m of world.migrations) if (m.failed) failed.add(m.id);
    if (previous?.bins) {
      const fast = decideFast(world, previous.bins, failed, previous);
      if (fast) return fast;
    }
    const { bins, newlyFailed, index } = paperPartition(world, previous?.bins, failed);
    for (const id of newlyFailed) failed.add(id);
    const throttles = paperThrottles(world, bins, index);
    const headrooms = index.headrooms(world.migrations.map((m) => m.id));
    const n = Math.max(1, world.migrations.length);
    const migrations: MigrationDecision[] = world.migrations.map((m) => {
      const home = index.byHome.get(m.id);
      const t = throttles.get(m.id)!;
      const isFailed = failed.has(m.id);
      return {
        id: m.id,
        partitionBytes: home ? home.sizeBytes : 0,
        quotaBytes: isFailed ? m.overlayBytes : m.overlayBytes + headrooms.get(m.id)!,
        throttleBytesPerSec: t.throttleBytesPerSec,
        linkShareBytesPerSec: world.linkBytesPerSec / n,
        meanPriority: t.meanPriority,
        failed: isFailed,
      };
    });
    let sharded = 0;
    for (const m of world.migrations) if ((index.binsOf.get(m.id)?.length ?? 0) > 1) sharded++;
    const frozen = bins.filter((b) => b.frozen).length;
    const layout = buildLayout(world, bins);
    if (layout) layouts.set(bins, layout);
    return { policy: 'paper', atSec: world.nowSec, migrations, bins, failedIds: [...failed], reason: paperReason(world, sharded, frozen, newlyFailed) };
  },
};
