// Frozen reference copy of src/policy/paper.ts as it was before the paper policy's fast path
// (BENCHMARKS.md, "Simulator and policies"). test/unit/policy-paper-fastpath.test.ts checks that
// the shipped policy decides exactly what this copy decides. Do not edit: it is the oracle.
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
import type { Bin, Decision, MigrationDecision, Policy, WorldState } from '../../../src/policy/types';

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

function fmtGiB(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
}

/** The paper's policy (Π and γ as published). */
export const paperPolicy: Policy = {
  name: 'paper',
  mirrorOnly: false,
  decide(world: WorldState, previous: Decision | undefined): Decision {
    const present = new Set(world.migrations.map((m) => m.id));
    const failed = new Set((previous?.failedIds ?? []).filter((id) => present.has(id)));
    for (const m of world.migrations) if (m.failed) failed.add(m.id);
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
    const reason =
      world.migrations.length === 0
        ? 'no migration in flight'
        : `Π = Ω/${n} = ${fmtGiB(world.omegaBytes / n)} per bin` +
          (sharded ? `, ${sharded} sharded` : '') +
          (frozen ? `, ${frozen} frozen` : '') +
          (newlyFailed.length ? `, failed now: ${newlyFailed.join(', ')}` : '') +
          `; γ by the paper's formula, capped at U/N`;
    return { policy: 'paper', atSec: world.nowSec, migrations, bins, failedIds: [...failed], reason };
  },
};
