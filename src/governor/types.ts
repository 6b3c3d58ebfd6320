/**
 * What the governor needs from a migration in flight, and what it plans.
 *
 * The governor does not drive migrations: something else does (src/migrate's LiveMigration, or
 * LXD observed through QMP, ./observed.ts), and hands the governor one GovernedMigration per VM.
 * The contract is small on purpose so a driver can satisfy it by keeping its last progress event:
 *
 * ```ts
 * let last: MigrationProgress | undefined;
 * m.on('progress', (p) => (last = p));
 * governor.attach({ id, qmp, monitorPath, overlayNode, ramBytes, describe: () => last ?? { phase: 'setup', baseBytesTotal: 0, baseBytesCopied: 0 } });
 * ```
 *
 * Units: bytes, bytes/s, ms, exactly as the field names say.
 */
import type { DirtyCurve } from '../model/dirty-curve';
import type { QmpClient } from '../qmp/client';
import type { MigrationStats } from '../qmp/types';
import type { BlockIoThrottle } from '../qmp/types';

/** The migration driver's phases (src/migrate's, LXD's order). */
export type GovernedPhase = 'setup' | 'base' | 'mirror' | 'ram' | 'switchover' | 'completed' | 'failed' | 'rolled-back';

/** Phases after which the migration no longer needs (or tolerates) a throttle. */
export const ENDED_PHASES: ReadonlySet<GovernedPhase> = new Set(['completed', 'failed', 'rolled-back']);

/**
 * A migration's progress as its driver reports it; a structural subset of src/migrate's
 * MigrationProgress, so a driver can hand its last progress event over as is.
 */
export interface GovernedProgress {
  phase: GovernedPhase;
  /** Size of the base image, bytes (0 while unknown). */
  baseBytesTotal: number;
  /** Base bytes copied to the target so far, bytes (cumulative). */
  baseBytesCopied: number;
  /** The mirror job's progress (cumulative offset; len grows with new dirty data), bytes. */
  mirror?: { offset: number; len: number };
  /** query-migrate `ram` as QEMU reports it. */
  ram?: Pick<MigrationStats, 'transferred' | 'remaining' | 'total'> & Partial<Pick<MigrationStats, 'dirty-pages-rate' | 'page-size'>>;
  /** query-migrate's top level: the auto-converge throttle in force, percent. */
  migration?: { cpuThrottlePercent?: number };
}

/** One migration the governor governs. */
export interface GovernedMigration {
  /** Stable id (the VM's); unique among governed migrations. */
  id: string;
  /**
   * An already-connected client of the VM's QMP monitor. A monitor serves one client at a time,
   * so the governor shares the driver's client and never closes it.
   */
  qmp: QmpClient;
  /** The monitor's socket path: recorded in the state file so a restarted governor can reconnect. */
  monitorPath: string;
  /**
   * QOM path of the guest's disk device (query-block `qdev`), the `id` block_set_io_throttle
   * wants. Default: the query-block device whose active node is `overlayNode`, else the only
   * device with a `qdev`.
   */
  deviceQomPath?: string;
  /** Node whose `image.actual-size` is the overlay's size in Ω (LXD: 'lxd_root_snapshot'). */
  overlayNode: string;
  /** Guest RAM, bytes (> 0). */
  ramBytes: number;
  /**
   * The guest's RAM dirty curve if known (from a profile); otherwise QEMU's dirty-pages-rate is
   * used once the RAM phase publishes one, and 0 before.
   */
  ramDirty?: DirtyCurve;
  /** Called once per tick before describe(), for drivers that must query something first. */
  refresh?(signal: AbortSignal): Promise<void>;
  /** The migration's progress now. Must not throw; must be cheap. */
  describe(): GovernedProgress;
}

/**
 * A device's I/O limits as block_set_io_throttle takes them and query-block reports them
 * (`inserted`): the six base limits always, the burst fields and the group only when set.
 * Rates in bytes/s or operations/s, burst lengths in seconds; 0 = unlimited.
 */
export type ThrottleLimits = Omit<BlockIoThrottle, 'id' | 'device'>;

/** One change the governor makes to a VM. */
export type GovernorAction =
  | {
      kind: 'set-throttle';
      id: string;
      /** The complete limits to send (all six base fields, the VM's other limits kept). */
      limits: ThrottleLimits;
      /** The effective write limit this sets, bytes/s (0 = none). */
      writeBytesPerSec: number;
      why: 'policy' | 'restore';
    }
  | {
      kind: 'set-max-bandwidth';
      id: string;
      /** migrate-set-parameters max-bandwidth, bytes/s. */
      bytesPerSec: number;
      why: 'policy' | 'restore';
    };

/** What the governor saw of one VM in one tick (logged with the decision). */
export interface VmInputRecord {
  id: string;
  phase: GovernedPhase;
  /** Cumulative guest bytes written (query-blockstats wr_bytes); null when the query failed. */
  wrBytes: number | null;
  /** Measured guest write rate (smoothed), bytes/s. */
  writeBytesPerSec: number;
  /** Estimated demand given to the policy, bytes/s. */
  demandBytesPerSec: number;
  /** True when the guest writes at its throttle, so its demand is only known to be ≥ it. */
  saturated: boolean;
  /** Effective write limit in force during the tick, bytes/s (0 = none). */
  writeLimitBytesPerSec: number;
  overlayBytes: number;
  /** Cumulative bytes this migration moved (base + mirror + RAM). */
  movedBytes: number;
  /** Share of written bytes that grew the overlay (with CoreOptions.overlayGrowth). */
  growthFraction?: number;
}
