// Frozen reference copy of src/policy/bins.ts as it was before the paper policy's fast path
// (BENCHMARKS.md, "Simulator and policies"). test/unit/policy-paper-fastpath.test.ts checks that
// the shipped policy decides exactly what this copy decides. Do not edit: it is the oracle.
/**
 * Bin bookkeeping for the shared overlay buffer Ω, with the paper's overlap ("sharding") rules
 * (§ Π, 3. "Bins overlapping"). Used by the `paper` policy as written and by `fitted` as its
 * safety net.
 *
 * A bin is accounting, not a file: the overlays live in one filesystem Ω, and a bin ω_i is the
 * quota allotted to migration i. "Moving Δ into another bin" means charging Δ of i's overlay to
 * another bin's quota. The rules, as the paper states them:
 * - excess data of a bin (its data above its size Π) moves to the least-used bin that can hold it;
 *   if none can, it is split in halves across two bins, then quarters across four, and so on;
 *   if it still cannot be placed, its migration fails;
 * - the bin that overflowed is frozen (no growth in it) until space is reclaimed (a completion);
 * - shards are stacked in arrival order; the bottom one (the home migration's) has priority 1;
 * - on a completion, a sharded migration brings its k−1 smallest foreign shards home, else the
 *   k−2 smallest, …; if not even one fits, it fails.
 *
 * Decisions the paper leaves open, taken here (documented in docs/scenario-format.md):
 * - a bin's excess is taken from the top of its stack (lowest priority first);
 * - a migration that already has a shard in the target bin adds to that shard (it keeps its
 *   position), so α is a position in the stack and stays ≤ N;
 * - growth fills the migration's home bin, then the other non-frozen bins it holds shards in;
 *   only what is left spills by the overlap rule, and the bins it filled are frozen;
 * - shards left orphaned by a completed bin go home if they fit, else by the overlap rule;
 * - a shard that cannot be placed stays where it is (its migration has failed; its guest is
 *   paused), and its bin is enlarged to hold it at the expense of other bins' free space, so a
 *   bin is never smaller than its data and Σ Π never exceeds Ω.
 *
 * All functions mutate the bins they are given; policies clone the previous decision's bins first.
 */
import type { Bin, Shard } from '../../../src/policy/types';

/** Bytes of data charged to a bin. */
export function binUsed(bin: Bin): number {
  let used = 0;
  for (const s of bin.shards) used += s.bytes;
  return used;
}

/** Deep copy (policies must not mutate a previous decision). */
export function cloneBins(bins: readonly Bin[] | undefined): Bin[] {
  if (!bins) return [];
  return bins.map((b) => ({ home: b.home, sizeBytes: b.sizeBytes, frozen: b.frozen, shards: b.shards.map((s) => ({ id: s.id, bytes: s.bytes })) }));
}

function addToBin(bin: Bin, id: string, bytes: number): void {
  const existing = bin.shards.find((s) => s.id === id);
  if (existing) existing.bytes += bytes;
  else bin.shards.push({ id, bytes });
}

function freeBytes(bin: Bin): number {
  return bin.sizeBytes - binUsed(bin);
}

/**
 * The paper's placement rule for `bytes` of migration `id`'s data that no longer fit where they
 * are: the least-used non-frozen bin (not in `exclude`) that can hold all of it; else halves in
 * the two least-used bins that can each hold a half; else quarters in four; … Returns false (and
 * changes nothing) when no split fits.
 */
export function placeByOverlapRule(bins: Bin[], id: string, bytes: number, exclude: ReadonlySet<Bin>): boolean {
  if (bytes <= 0) return true;
  const candidates = bins
    .map((bin, index) => ({ bin, index, used: binUsed(bin) }))
    .filter((c) => !c.bin.frozen && !exclude.has(c.bin) && c.bin.sizeBytes - c.used > 0)
    .sort((a, b) => a.used - b.used || a.index - b.index);
  for (let parts = 1; parts <= candidates.length; parts *= 2) {
    const part = bytes / parts;
    const fit = candidates.filter((c) => c.bin.sizeBytes - c.used >= part);
    if (fit.length >= parts) {
      for (let k = 0; k < parts; k++) addToBin(fit[k]!.bin, id, part);
      return true;
    }
  }
  return false;
}

/** Bins migration `id` may grow in: its home if not frozen, then other non-frozen bins holding its shards. */
export function growableBins(bins: readonly Bin[], id: string): Bin[] {
  const out: Bin[] = [];
  const home = bins.find((b) => b.home === id);
  if (home && !home.frozen) out.push(home);
  for (const b of bins) {
    if (b === home || b.frozen) continue;
    if (b.shards.some((s) => s.id === id && s.bytes > 0)) out.push(b);
  }
  return out;
}

/**
 * Charges `bytes` of new overlay growth of migration `id`: fills its growable bins, then spills
 * the rest by the overlap rule, freezing the bins it filled. Returns false when the spill could
 * not be placed (the migration fails; the bytes stay charged to its home bin, over its size).
 */
export function chargeGrowth(bins: Bin[], id: string, bytes: number): boolean {
  let left = bytes;
  if (left <= 0) return true;
  const growable = growableBins(bins, id);
  for (const b of growable) {
    const take = Math.min(left, Math.max(0, freeBytes(b)));
    if (take > 0) addToBin(b, id, take);
    left -= take;
    if (left <= 0) return true;
  }
  for (const b of growable) b.frozen = true;
  const home = bins.find((b) => b.home === id);
  if (placeByOverlapRule(bins, id, left, new Set(home ? [...growable, home] : growable))) return true;
  if (home) addToBin(home, id, left);
  return false;
}

/**
 * Moves a bin's excess (data above its size) out, top of the stack first, by the overlap rule,
 * then freezes the bin. Returns the ids whose data could not be placed (those migrations fail).
 */
export function evictExcess(bins: Bin[], bin: Bin): string[] {
  let excess = binUsed(bin) - bin.sizeBytes;
  if (excess <= 0) return [];
  const failed: string[] = [];
  for (let k = bin.shards.length - 1; k >= 0 && excess > 0; k--) {
    const shard = bin.shards[k]!;
    const take = Math.min(shard.bytes, excess);
    if (take <= 0) continue;
    shard.bytes -= take;
    if (placeByOverlapRule(bins, shard.id, take, new Set([bin]))) excess -= take;
    else {
      shard.bytes += take;
      failed.push(shard.id);
    }
  }
  bin.frozen = true;
  return failed;
}

/**
 * Keeps the two invariants whatever happened: no bin smaller than its data, Σ Π ≤ Ω. A bin over
 * its size (data that could not be placed) grows to its data; the overshoot of Σ Π over Ω is
 * taken from the other bins' free space in proportion to it. Requires Σ data ≤ Ω.
 */
export function enforceInvariants(bins: Bin[], omegaBytes: number): void {
  let total = 0;
  let slack = 0;
  for (const b of bins) {
    const used = binUsed(b);
    if (b.sizeBytes < used) b.sizeBytes = used;
    total += b.sizeBytes;
    slack += b.sizeBytes - used;
  }
  const over = total - omegaBytes;
  if (over <= 0 || slack <= 0) return;
  const keep = Math.max(0, 1 - over / slack);
  for (const b of bins) {
    const used = binUsed(b);
    b.sizeBytes = used + (b.sizeBytes - used) * keep;
  }
}

/** Drops foreign shards that hold nothing (the home shard always stays at the bottom). */
export function dropEmptyShards(bins: Bin[]): void {
  for (const b of bins) {
    let empty = false;
    for (let k = 1; k < b.shards.length; k++) if (b.shards[k]!.bytes <= 0) empty = true;
    if (empty) b.shards = b.shards.filter((s, k) => k === 0 || s.bytes > 0);
  }
}

/** Σα_i: mean stack position (1 = bottom) of `id` over the bins it occupies; its home bin counts 1. */
export function meanPriority(bins: readonly Bin[], id: string): number {
  let sum = 0;
  let count = 0;
  for (const b of bins) {
    if (b.home === id) {
      sum += 1;
      count++;
      continue;
    }
    const at = b.shards.findIndex((s) => s.id === id && s.bytes > 0);
    if (at >= 0) {
      sum += at + 1;
      count++;
    }
  }
  return count === 0 ? 1 : sum / count;
}

/** True when migration `id` has data charged outside its home bin. */
export function isSharded(bins: readonly Bin[], id: string): boolean {
  return bins.some((b) => b.home !== id && b.shards.some((s) => s.id === id && s.bytes > 0));
}

/**
 * The paper's consolidation on a completion: migration `id`, sharded into k parts, moves its
 * k−1 smallest foreign shards home if its home bin can hold them, else the k−2 smallest, …
 * Returns false when not even the smallest one fits (the paper then fails the migration).
 * Moving a shard home never breaks an invariant: the home bin only takes what it has room for.
 */
export function bringShardsHome(bins: Bin[], id: string): boolean {
  const home = bins.find((b) => b.home === id);
  if (!home) return false;
  const foreign: Array<{ bin: Bin; shard: Shard }> = [];
  for (const b of bins) {
    if (b === home) continue;
    for (const s of b.shards) if (s.id === id && s.bytes > 0) foreign.push({ bin: b, shard: s });
  }
  if (foreign.length === 0) return true;
  foreign.sort((a, b) => a.shard.bytes - b.shard.bytes);
  const room = freeBytes(home);
  for (let m = foreign.length; m >= 1; m--) {
    let sum = 0;
    for (let k = 0; k < m; k++) sum += foreign[k]!.shard.bytes;
    if (sum <= room) {
      for (let k = 0; k < m; k++) {
        addToBin(home, id, foreign[k]!.shard.bytes);
        foreign[k]!.shard.bytes = 0;
      }
      return true;
    }
  }
  return false;
}

/**
 * Removes a completed migration: its bin disappears (its size is returned), its shards elsewhere
 * are freed, and the foreign shards its bin held are returned as orphans to be re-placed.
 */
export function removeMigration(bins: Bin[], id: string): { freedSizeBytes: number; orphans: Shard[] } {
  const at = bins.findIndex((b) => b.home === id);
  let freedSizeBytes = 0;
  const orphans: Shard[] = [];
  if (at >= 0) {
    const [bin] = bins.splice(at, 1);
    freedSizeBytes = bin!.sizeBytes;
    for (const s of bin!.shards) if (s.id !== id && s.bytes > 0) orphans.push(s);
  }
  for (const b of bins) b.shards = b.shards.filter((s) => s.id !== id);
  return { freedSizeBytes, orphans };
}

/** Re-places an orphaned shard: home first if it fits, else the overlap rule. False when neither works. */
export function rehomeOrphan(bins: Bin[], orphan: Shard): boolean {
  const home = bins.find((b) => b.home === orphan.id);
  if (home && !home.frozen && freeBytes(home) >= orphan.bytes) {
    addToBin(home, orphan.id, orphan.bytes);
    return true;
  }
  if (placeByOverlapRule(bins, orphan.id, orphan.bytes, new Set())) return true;
  // Unplaceable: keep the data charged to its home (over size) so nothing is lost from the books.
  if (home) addToBin(home, orphan.id, orphan.bytes);
  return false;
}

/** Unfreezes bins that have room again (space was reclaimed). */
export function thawBins(bins: Bin[]): void {
  for (const b of bins) if (b.frozen && freeBytes(b) > 0) b.frozen = false;
}

const MAX_SPLIT_PARTS = 8;

/**
 * Per-decision lookups over a layout: bins by home, the bins holding each migration's data, and
 * each bin's data. Rebuild it after any change other than growth of a home shard.
 */
export class BinIndex {
  readonly byHome = new Map<string, Bin>();
  /** Bins holding a non-empty shard of the migration, plus its home bin (home first). */
  readonly binsOf = new Map<string, Bin[]>();
  readonly used = new Map<Bin, number>();

  constructor(readonly bins: Bin[]) {
    for (const b of bins) {
      this.byHome.set(b.home, b);
      this.used.set(b, binUsed(b));
      const list = this.binsOf.get(b.home);
      if (list) list.unshift(b);
      else this.binsOf.set(b.home, [b]);
    }
    for (const b of bins) {
      for (const sh of b.shards) {
        if (sh.id === b.home || sh.bytes <= 0) continue;
        const list = this.binsOf.get(sh.id);
        if (list) list.push(b);
        else this.binsOf.set(sh.id, [b]);
      }
    }
  }

  free(bin: Bin): number {
    return bin.sizeBytes - this.used.get(bin)!;
  }

  accounted(id: string): number {
    let total = 0;
    for (const b of this.binsOf.get(id) ?? []) for (const sh of b.shards) if (sh.id === id) total += sh.bytes;
    return total;
  }

  /** Adds growth to `id`'s home shard when its home is not frozen and has room; false otherwise. */
  growHome(id: string, bytes: number): boolean {
    const home = this.byHome.get(id);
    if (!home || home.frozen || home.shards[0]?.id !== id || this.free(home) < bytes) return false;
    home.shards[0]!.bytes += bytes;
    this.used.set(home, this.used.get(home)! + bytes);
    return true;
  }

  growable(id: string): Bin[] {
    return (this.binsOf.get(id) ?? []).filter((b) => !b.frozen);
  }

  /**
   * Headroom of every migration: room in the bins it can grow in + what the overlap rule could
   * place in the other non-frozen bins (k parts in the k roomiest, k = 1, 2, 4, 8). Splits into
   * more than 8 parts are not counted: this is a lower bound of what the rule can place, which
   * only matters if one interval's growth outgrows all of that.
   */
  headrooms(ids: readonly string[]): Map<string, number> {
    const open = this.bins
      .filter((b) => !b.frozen && this.free(b) > 0)
      .map((b) => ({ bin: b, free: this.free(b) }))
      .sort((a, b) => b.free - a.free);
    const out = new Map<string, number>();
    for (const id of ids) {
      const own = this.growable(id);
      const home = this.byHome.get(id);
      let room = 0;
      for (const b of own) room += Math.max(0, this.free(b));
      let best = 0;
      let rank = 0;
      let next = 1;
      for (const o of open) {
        if (o.bin === home || own.includes(o.bin)) continue;
        rank++;
        if (rank === next) {
          best = Math.max(best, rank * o.free);
          next *= 2;
          if (next > MAX_SPLIT_PARTS) break;
        }
      }
      out.set(id, room + best);
    }
    return out;
  }

  /** Σα of `id` (see meanPriority). */
  meanPriority(id: string): number {
    let sum = 0;
    let count = 0;
    for (const b of this.binsOf.get(id) ?? []) {
      if (b.home === id) sum += 1;
      else sum += b.shards.findIndex((s) => s.id === id) + 1;
      count++;
    }
    return count === 0 ? 1 : sum / count;
  }
}
