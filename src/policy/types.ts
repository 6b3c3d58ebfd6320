/**
 * The contract between the world (simulator or real-time governor) and a policy.
 *
 * A policy is a pure function `(world, previous) → decision`: no I/O, no clock, no randomness.
 * Everything it remembers between calls travels inside the Decision it returned last time, so the
 * same code runs in the simulator, the governor and property tests, and a decision can be logged
 * and replayed.
 *
 * Units: bytes, bytes/s, seconds, exactly as the field names say.
 */
import type { DirtyCurve } from '../model/dirty-curve';

/**
 * LXD's phases of one VM migration with non-shared storage (see docs/scenario-format.md):
 * - `base`: the base disk is bulk-copied while guest writes land in the overlay in Ω;
 * - `mirror`: write-blocking `blockdev-mirror` drains the overlay; new guest writes are mirrored
 *   synchronously (so they are capped by the link), and still land in the overlay;
 * - `ram`: pre-copy of RAM, the mirror still synchronous;
 * - `switchover`: the guest is paused for the stop-and-copy.
 */
export type MigrationPhase = 'base' | 'mirror' | 'ram' | 'switchover';

/**
 * What the world knows about one migration in flight. Valid during one `decide` call: the
 * simulator refreshes the same objects every tick, so a policy copies what it wants to carry.
 */
export interface MigrationView {
  /** Stable id (the VM's). */
  id: string;
  phase: MigrationPhase;
  /** When the migration started, seconds on the world clock. */
  startedSec: number;
  /** s_cow: bytes this migration's overlay occupies in Ω now (grows until the migration ends). */
  overlayBytes: number;
  /**
   * Bytes/s the guest asks to write to its disk now, before γ (the simulator knows it exactly;
   * the governor estimates it). Policies project it as constant.
   */
  writeBytesPerSecDemand: number;
  /** p_i: bytes of the pre-migration disk still to copy (0 once the base copy is done). */
  baseBytesLeft: number;
  /**
   * Overlay bytes not yet on the target: all of the overlay during `base`, the mirror's
   * backlog during `mirror`, 0 afterwards.
   */
  mirrorBytesLeft: number;
  /** Guest RAM, bytes. */
  ramBytes: number;
  /** The guest's RAM dirtying (distinct pages per window). */
  ramDirty: DirtyCurve;
  /** RAM pages still pending in the current pre-copy pass × page size, bytes (ramBytes before `ram`). */
  ramPendingBytes: number;
  /** QEMU auto-converge CPU throttle in force, percent 0..99. */
  cpuThrottlePct: number;
  /** True when this migration has failed (its guest is paused on a full overlay). */
  failed: boolean;
  /**
   * True when this migration has no overlay at all (the `mirror-only` flow: write-blocking mirror
   * from the start).
   */
  mirrorOnly: boolean;
}

/** What a policy sees at one decision point. */
export interface WorldState {
  /** World clock, seconds. */
  nowSec: number;
  /** Seconds until the next decision (the simulator's tick, the governor's interval); > 0. */
  intervalSec: number;
  /** Ω_S: size of the shared overlay buffer, bytes. */
  omegaBytes: number;
  /** γ_SLA: the lowest write throttle a guest may be given, bytes/s. */
  slaBytesPerSec: number;
  /** U(t): the estimated speed of the link between source and target, bytes/s. */
  linkBytesPerSec: number;
  /** QEMU's max-bandwidth for the RAM stream, bytes/s (128 MiB/s unless changed). */
  ramMaxBandwidthBytesPerSec: number;
  /** QEMU's downtime-limit, ms. */
  downtimeLimitMs: number;
  /** Migrations in flight (arrivals appear, completions disappear). */
  migrations: readonly MigrationView[];
}

/** One shard of overlay data in a bin (paper §3, "Bins overlapping"). */
export interface Shard {
  /** Owner migration. */
  id: string;
  bytes: number;
}

/**
 * One bin ω of Ω. `shards` is the stack, bottom first: index 0 is always the home migration's
 * own shard (possibly 0 bytes), so the bottom shard has the highest priority, α = index + 1.
 */
export interface Bin {
  /** The migration whose home this bin is. */
  home: string;
  /** Π(ω): bytes of Ω allotted to this bin. */
  sizeBytes: number;
  /** A bin that overflowed stays frozen (no growth in it) until space is reclaimed. */
  frozen: boolean;
  shards: Shard[];
}

/** Per-migration output of a policy. */
export interface MigrationDecision {
  id: string;
  /**
   * Π(ω_i): bytes of Ω allotted to this migration's (home) bin; null when the policy does not
   * partition (one shared pool), 0 when there is no overlay.
   */
  partitionBytes: number | null;
  /**
   * Total overlay bytes this migration may hold before its next write hits ENOSPC (≥ its
   * current overlay): its own room plus whatever the policy's overflow rules would lend it.
   * The world pauses the guest (a failed migration) when a write would exceed it.
   */
  quotaBytes: number;
  /** γ_i: write throttle to apply to the guest's disk, bytes/s; null = not throttled. */
  throttleBytesPerSec: number | null;
  /** The link share the policy gives this migration, bytes/s (the world redistributes what it leaves unused). */
  linkShareBytesPerSec: number;
  /** Σα_i: mean priority over the bins it occupies (paper), 1 when not sharded. */
  meanPriority: number;
  /** True when the policy declares this migration failed (e.g. a shard could not be placed). */
  failed: boolean;
}

/** A policy's answer. */
export interface Decision {
  policy: string;
  atSec: number;
  migrations: MigrationDecision[];
  /** The bin layout (paper and fitted); carried to the next call. */
  bins?: Bin[];
  /** Ids this policy has declared failed so far (carried to the next call). */
  failedIds?: string[];
  /** `fitted`'s solver memo (carried to the next call). */
  fitted?: FittedMemo;
  /** One line for humans: why the policy decided this. */
  reason: string;
}

/** What `fitted` carries from one decision to the next. */
export interface FittedMemo {
  solvedAtSec: number;
  /** The world at the last solve, per migration (in world order): a change forces a new solve. */
  ids: string[];
  phases: string[];
  demands: number[];
  failed: boolean[];
  linkBytesPerSec: number;
  /** λ_i per migration (same order), 0..1. */
  lambdas: number[];
  /** Projected final overlay per migration (same order) at the last solve, bytes. */
  needBytes: number[];
  /** Projected remaining time per migration (same order) at the last solve, seconds. */
  endSec: number[];
  /** Projected peak of Σ overlays at the last solve, bytes. */
  peakBytes: number;
  summary: string;
  /** Whether the plan gate was open at the last solve (a change forces a new solve). */
  gateOpen?: boolean;
}

/** A pure decision function with a name. */
export interface Policy {
  readonly name: PolicyName;
  /** True for `mirror-only`: migrations skip the overlay and mirror the disk from the start. */
  readonly mirrorOnly: boolean;
  decide(world: WorldState, previous: Decision | undefined): Decision;
}

export const POLICY_NAMES = ['paper', 'fitted', 'static', 'unthrottled', 'mirror-only'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Page size QEMU uses for x86-64 guests, bytes. */
export const PAGE_BYTES = 4096;
