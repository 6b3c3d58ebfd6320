/**
 * A migration seen only through QMP: for governing migrations that something else drives (LXD)
 * when all dpa has is a monitor of the source QEMU (`dpa govern`).
 *
 * What QMP shows: the RAM migration (query-migrate: status, `ram`, CPU throttle) and the mirror
 * job (query-block-jobs: offset, len). What it does not show is LXD's bulk copy of the base disk
 * (rsync/zfs send over its own websocket): the caller states how much of the base is left when
 * governing starts and the rate it is assumed to move at, and the base copy is projected from
 * that. Phase: RAM migration running → 'ram' ('pre-switchover'/'device' → 'switchover'); it
 * completed → 'completed'; failed or cancelled → 'failed'; else a mirror job → 'mirror'; else
 * 'base'. A migration status QEMU already had when governing started (a previous migration's
 * 'completed') is not taken as this migration's end.
 */
import { performance } from 'node:perf_hooks';
import type { QmpClient } from '../qmp/client';
import { queryBlockJobs, queryMigrate } from '../qmp/commands';
import type { BlockJobInfo, MigrationInfo, MigrationStatus } from '../qmp/types';
import type { GovernedMigration, GovernedPhase, GovernedProgress } from './types';

export interface ObservedMigrationOptions {
  id: string;
  qmp: QmpClient;
  monitorPath: string;
  /** Overlay node (default 'lxd_root_snapshot', as LXD names it). */
  overlayNode?: string;
  deviceQomPath?: string;
  /** Guest RAM, bytes (default: query-memory-size-summary's base-memory). */
  ramBytes?: number;
  /** Base disk bytes still to copy when governing starts (≥ 0, default 0). */
  baseBytesLeft?: number;
  /** Assumed speed of the base copy, bytes/s (> 0, default 100 MiB/s). */
  baseBytesPerSec?: number;
  /** Query deadline, ms (default 1000). */
  timeoutMs?: number;
}

const RAM_ACTIVE: ReadonlySet<MigrationStatus> = new Set(['setup', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover']);
const SWITCHOVER: ReadonlySet<MigrationStatus> = new Set(['pre-switchover', 'device']);

export class ObservedMigration implements GovernedMigration {
  readonly id: string;
  readonly qmp: QmpClient;
  readonly monitorPath: string;
  readonly overlayNode: string;
  readonly deviceQomPath?: string;
  readonly ramBytes: number;
  private readonly baseTotal: number;
  private readonly baseRate: number;
  private readonly startedMs = performance.now();
  private readonly timeoutMs: number;
  private migrate: MigrationInfo = {};
  private mirror: BlockJobInfo | undefined;
  private readonly initialStatus: MigrationStatus | undefined;

  private constructor(o: ObservedMigrationOptions, ramBytes: number, initialStatus: MigrationStatus | undefined) {
    this.id = o.id;
    this.qmp = o.qmp;
    this.monitorPath = o.monitorPath;
    this.overlayNode = o.overlayNode ?? 'lxd_root_snapshot';
    if (o.deviceQomPath !== undefined) this.deviceQomPath = o.deviceQomPath;
    this.ramBytes = ramBytes;
    this.baseTotal = o.baseBytesLeft ?? 0;
    this.baseRate = o.baseBytesPerSec ?? 100 * 1024 * 1024;
    this.timeoutMs = o.timeoutMs ?? 1000;
    this.initialStatus = initialStatus;
  }

  /** Reads the guest's RAM size (unless given) and the migration status QEMU has now. */
  static async create(o: ObservedMigrationOptions): Promise<ObservedMigration> {
    if (o.baseBytesLeft !== undefined && !(o.baseBytesLeft >= 0 && Number.isFinite(o.baseBytesLeft))) throw new RangeError(`baseBytesLeft: must be a finite number ≥ 0 (got ${String(o.baseBytesLeft)})`);
    if (o.baseBytesPerSec !== undefined && !(o.baseBytesPerSec > 0 && Number.isFinite(o.baseBytesPerSec))) throw new RangeError(`baseBytesPerSec: must be a finite number > 0 (got ${String(o.baseBytesPerSec)})`);
    const opts = { timeoutMs: o.timeoutMs ?? 1000 };
    const ramBytes = o.ramBytes ?? (await o.qmp.execute<{ 'base-memory': number }>('query-memory-size-summary', undefined, opts))['base-memory'];
    const status = (await queryMigrate(o.qmp, opts)).status;
    return new ObservedMigration(o, ramBytes, status);
  }

  async refresh(signal: AbortSignal): Promise<void> {
    const opts = { timeoutMs: this.timeoutMs, signal };
    const [migrate, jobs] = await Promise.all([queryMigrate(this.qmp, opts), queryBlockJobs(this.qmp, opts)]);
    this.migrate = migrate;
    this.mirror = jobs.find((j) => j.type === 'mirror');
  }

  describe(): GovernedProgress {
    const status = this.migrate.status;
    const fresh = status !== undefined && status !== this.initialStatus;
    let phase: GovernedPhase = 'base';
    if (status !== undefined && RAM_ACTIVE.has(status)) phase = 'ram';
    else if (status !== undefined && SWITCHOVER.has(status)) phase = 'switchover';
    else if (fresh && status === 'completed') phase = 'completed';
    else if (fresh && (status === 'failed' || status === 'cancelled' || status === 'cancelling')) phase = 'failed';
    else if (this.mirror) phase = 'mirror';
    const copied = Math.min(this.baseTotal, ((performance.now() - this.startedMs) / 1000) * this.baseRate);
    const p: GovernedProgress = { phase, baseBytesTotal: this.baseTotal, baseBytesCopied: phase === 'base' ? copied : this.baseTotal };
    if (this.mirror) p.mirror = { offset: this.mirror.offset, len: this.mirror.len };
    const ram = this.migrate.ram;
    if (ram) p.ram = ram;
    const pct = this.migrate['cpu-throttle-percentage'];
    if (pct !== undefined) p.migration = { cpuThrottlePercent: pct };
    return p;
  }
}
