/**
 * The public contract of `src/migrate/`: what a running LiveMigration reports and what it returns.
 * The governor (src/governor/) subscribes to these events; keep them stable.
 *
 * ```ts
 * const m = new LiveMigration({ source, target, omegaDir, targetHost, baseCopy });
 * m.on('phase', (p) => ...);      // once per phase change, p.phase is the new phase
 * m.on('progress', (p) => ...);   // every progressIntervalMs while it runs, and at each phase change
 * await m.setMaxBandwidth(64 * 2 ** 20);  // live knob for the RAM phase (migrate-set-parameters)
 * await m.setMirrorSpeed(16 * 2 ** 20);   // live knob for the mirror (block-job-set-speed)
 * const result = await m.run();   // never rejects for a migration failure: see MigrationResult
 * ```
 *
 * Phases, in order (LXD's order for non-shared storage, canonical/lxd driver_qemu.go):
 * - 'setup': migration capabilities, overlay qcow2 created in Ω, blockdev-add + blockdev-snapshot
 *   (from here the guest writes land in the overlay; the base is read-only);
 * - 'base': bulk copy of the base image to the target over TCP (byte counts in baseBytes*);
 * - 'mirror': target NBD export, `blockdev-mirror sync=top copy-mode=write-blocking` of the overlay
 *   until the job is ready (offset/len in `mirror`);
 * - 'ram': `migrate` pre-copy until QEMU pauses at 'pre-switchover' (stats in `ram`);
 * - 'switchover': mirror cancelled in ready state (a clean completion), `migrate-continue`,
 *   until 'completed'; the target runs, the source stays in 'postmigrate';
 * - 'completed': done; the overlay is gone.
 * On any failure the migration goes to 'failed' (transiently), then rolls back — migration
 * cancelled, mirror cancelled, overlay committed back into the base, overlay removed, source
 * running — and ends in 'rolled-back'. If the rollback itself fails it ends in 'failed'.
 */
import type { MigrationStats, MigrationStatus } from '../qmp/types';

export type MigrationPhase = 'setup' | 'base' | 'mirror' | 'ram' | 'switchover' | 'completed' | 'failed' | 'rolled-back';

/** The ordered phases of a migration that succeeds. */
export const SUCCESS_PHASES: readonly MigrationPhase[] = ['setup', 'base', 'mirror', 'ram', 'switchover', 'completed'];

/** query-migrate's top-level figures that matter while RAM moves (QEMU's names → ours with units). */
export interface RamStatus {
  /** QEMU's migration status ('active', 'pre-switchover', 'completed', ...). */
  status: MigrationStatus | 'none';
  /** ms since `migrate` was issued (QEMU's total-time). */
  totalTimeMs?: number;
  /** QEMU's expected switchover downtime, ms (while active). */
  expectedDowntimeMs?: number;
  /** Actual downtime, ms (once completed). */
  downtimeMs?: number;
  /** Auto-converge vCPU throttle, percent (only while throttling). */
  cpuThrottlePercent?: number;
}

export interface MigrationProgress {
  /** The migration's id (also the prefix of its job ids and the overlay's file name). */
  id: string;
  phase: MigrationPhase;
  /** ms since run() started (performance.now() based, monotonic). */
  tMs: number;
  /** Size of the base image, bytes (0 until known, in 'setup'). */
  baseBytesTotal: number;
  /** Base bytes read, sent and acknowledged by the receiver so far, bytes. */
  baseBytesCopied: number;
  /** Base copy rate over the last progress interval, bytes per second (0 outside 'base'). */
  baseBytesPerSec: number;
  /** Node name of the overlay (LXD: 'lxd_root_snapshot'). */
  overlayNode: string;
  /** The overlay qcow2 inside Ω (absolute path). */
  overlayPath: string;
  /**
   * Bytes the overlay occupies in Ω (qcow2 `actual-size`): what the governor's Ω partition must
   * hold. Undefined before the overlay exists and after it is gone.
   */
  overlayBytes?: number;
  /** The mirror job's progress, bytes (len grows while the guest dirties new data). */
  mirror?: { offset: number; len: number; ready: boolean; speedBytesPerSec: number };
  /** query-migrate `ram` as QEMU reports it (bytes, pages, mbps; see MigrationStats). */
  ram?: MigrationStats;
  /** query-migrate's status and top-level times. */
  migration?: RamStatus;
}

/** Why a migration failed. */
export interface MigrationFailure {
  /** The phase the migration was in when it failed. */
  phase: MigrationPhase;
  message: string;
  /** Error class name of the cause (QmpCommandError, QmpDisconnectedError, StallError, ...). */
  errorName: string;
}

/** What the rollback did (present when the migration failed). */
export interface RollbackReport {
  /** migrate_cancel was sent (the RAM migration was running). */
  migrationCancelled: boolean;
  /** The mirror job was cancelled (force) and its NBD node removed. */
  mirrorCancelled: boolean;
  /** The NBD connection had to be yanked (a hung link, requests would never return). */
  nbdYanked: boolean;
  /** The overlay was committed into the base (`block-commit` of the active layer + complete). */
  committed: boolean;
  /** Bytes the commit job moved from the overlay into the base. */
  committedBytes: number;
  /** The overlay node was deleted and its file removed from Ω. */
  overlayRemoved: boolean;
  /** `cont` was needed to make the source run again. */
  resumed: boolean;
  /** The source's final run state (should be 'running'). */
  sourceStatus: string;
  /** How long the rollback took, ms. */
  durationMs: number;
  /** Steps that failed (the rollback goes on after a failed step). */
  errors: string[];
}

/** Per-phase durations, ms (a phase that did not run is absent; 'failed' is the rollback's time). */
export type PhaseTimings = Partial<Record<MigrationPhase, number>>;

export interface MigrationResult {
  id: string;
  /** 'completed', 'rolled-back' (failed, source running, no write lost), or 'failed' (rollback incomplete). */
  phase: 'completed' | 'rolled-back' | 'failed';
  /** Present unless completed. */
  failure?: MigrationFailure;
  rollback?: RollbackReport;
  /** run() start to end (including rollback), ms. */
  totalMs: number;
  phaseMs: PhaseTimings;
  baseBytesTotal: number;
  baseBytesCopied: number;
  /** Largest overlay size observed in Ω, bytes. */
  overlayPeakBytes: number;
  /** Final mirror job length, bytes (data of the overlay sent over NBD). */
  mirrorBytes: number;
  /** Final query-migrate `ram` (completed or at failure). */
  ram?: MigrationStats;
  /** QEMU's reported downtime of the switchover, ms (completed only). */
  downtimeMs?: number;
  /**
   * The guest's pause as dpa saw it: from the source's STOP event (pause-before-switchover) to the
   * target's RESUME event, host receive times, ms (completed only). Includes dpa's own round trips
   * at pre-switchover (mirror cancel, NBD node removal), which QEMU's downtime may not.
   */
  blackoutMs?: number;
  /** Target run state after completion ('running' when completed). */
  targetStatus?: string;
}
