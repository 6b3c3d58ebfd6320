/**
 * One simulated migration, stepped in discrete time through LXD's phases (platform-facts.md):
 *
 * 1. `base`: LXD bulk-copies the base disk (diskBytes) over the link; guest writes, capped by γ,
 *    land in the overlay in Ω.
 * 2. `mirror`: write-blocking `blockdev-mirror` (sync: top) copies the overlay's backlog; every new
 *    guest write is sent synchronously, so it shares the migration's link with the backlog copy
 *    (max-min fair between the two flows) and still lands in the overlay. In the `mirror-only`
 *    flow this phase starts at once with the whole disk as backlog and there is no overlay.
 * 3. `ram`: QEMU pre-copy, as QEMU 7.2 runs it: the first pass sends every page, the dirty bitmap
 *    is synced whenever the pages pending drop below bandwidth × downtime-limit, and the switchover
 *    happens at a sync that leaves less than that; auto-converge raises the CPU throttle at syncs
 *    (see ../model/precopy.ts for the rules). Guest disk writes stay synchronous (the block job
 *    is only cancelled at pre-switchover) and share the link with the RAM stream.
 * 4. `switchover`: the guest is paused while the rest is sent; then the migration completes and
 *    its overlay is freed.
 *
 * A guest whose write finds its overlay full (its quota or Ω) is paused — QEMU's default
 * werror=enospc — and the migration counts as failed. It is not aborted: LXD cannot shrink an
 * overlay and nobody resumes the guest, so the migration runs on with a paused guest (no disk
 * writes, no RAM dirtying) until it completes, still holding its overlay and its link share.
 */
import { DirtyCurve, uniformHotSetCurve } from '../model/dirty-curve';
import { PAGE_HEADER_BYTES, QEMU_DEFAULTS, THROTTLE_PERIOD_SEC } from '../model/precopy';
import { fairShareOfFirst } from '../policy/link-share';
import type { MigrationPhase, MigrationView } from '../policy/types';
import { PAGE_BYTES } from '../policy/types';
import { RateTrack, type ScenarioVm } from './scenario';

export type SimPhase = 'waiting' | MigrationPhase | 'done';

const PAGE_WIRE_BYTES = PAGE_BYTES + PAGE_HEADER_BYTES;

export class SimMigration {
  phase: SimPhase = 'waiting';
  overlayBytes = 0;
  baseBytesLeft: number;
  mirrorBytesLeft = 0;
  readonly ramPages: number;
  ramPendingPages: number;
  /** Guest run time since the last bitmap sync, seconds (wall time × (1 − throttle)). */
  private runSecSinceSync = 0;
  private periodStartSec = 0;
  private periodDirtyBytes = 0;
  private periodXferBytes = 0;
  private highCount = 0;
  cpuThrottlePct = 0;
  ramIterations = 0;
  switchoverBytesLeft = 0;
  downtimeMs = NaN;
  /** Bytes the guest wanted to write / was allowed to write during its migration. */
  wantedBytes = 0;
  allowedBytes = 0;
  failed = false;
  failReason = '';
  failedAtSec = NaN;
  startedSec = NaN;
  endSec = NaN;
  /** Demand this tick (set by `demandAt`). */
  demandBytesPerSec = 0;
  readonly curve: DirtyCurve;
  private readonly writes: RateTrack;

  constructor(
    readonly vm: ScenarioVm,
    readonly mirrorOnly: boolean,
  ) {
    this.baseBytesLeft = vm.diskBytes;
    this.ramPages = Math.ceil(vm.ramBytes / PAGE_BYTES);
    this.ramPendingPages = this.ramPages;
    this.curve = uniformHotSetCurve(vm.ramDirty.pagesPerSec, vm.ramDirty.hotPages);
    this.writes = new RateTrack(vm.diskWrites);
  }

  get id(): string {
    return this.vm.id;
  }

  get inFlight(): boolean {
    return this.phase !== 'waiting' && this.phase !== 'done';
  }

  /** The guest issues writes: in flight, not paused by a failure, not in the stop-and-copy. */
  /**
   * Write rate the guest issues now, bytes/s. Disk writes are taken as I/O-bound: QEMU's
   * auto-converge CPU throttle slows RAM dirtying, not the disk write demand (modelling both
   * would add a loss that depends on RAM-phase timing, not on Ω, and blur the comparison).
   */
  get issuableBytesPerSec(): number {
    return this.demandBytesPerSec;
  }

  get guestWriting(): boolean {
    return !this.failed && (this.phase === 'base' || this.phase === 'mirror' || this.phase === 'ram');
  }

  start(nowSec: number): void {
    this.startedSec = nowSec;
    this.periodStartSec = nowSec;
    if (this.mirrorOnly) {
      this.phase = 'mirror';
      this.mirrorBytesLeft = this.vm.diskBytes;
      this.baseBytesLeft = 0;
    } else this.phase = 'base';
  }

  /** Sets and returns the guest's write demand at world time `nowSec`, bytes/s. */
  demandAt(nowSec: number): number {
    this.demandBytesPerSec = this.writes.at(nowSec - this.startedSec);
    return this.demandBytesPerSec;
  }

  private cachedView: MigrationView | undefined;

  /**
   * What policies see of this migration now. The object is reused from tick to tick (refreshed
   * here), so a policy must not keep it across calls — none does; they copy what they carry.
   */
  view(): MigrationView {
    const v = this.cachedView;
    if (v) {
      v.phase = this.phase as MigrationPhase;
      v.overlayBytes = this.overlayBytes;
      v.writeBytesPerSecDemand = this.issuableBytesPerSec;
      v.baseBytesLeft = this.baseBytesLeft;
      v.mirrorBytesLeft = this.phase === 'base' ? this.overlayBytes : this.mirrorBytesLeft;
      v.ramPendingBytes = this.ramPendingPages * PAGE_BYTES;
      v.cpuThrottlePct = this.cpuThrottlePct;
      v.failed = this.failed;
      return v;
    }
    return (this.cachedView = {
      id: this.vm.id,
      phase: this.phase as MigrationPhase,
      startedSec: this.startedSec,
      overlayBytes: this.overlayBytes,
      writeBytesPerSecDemand: this.issuableBytesPerSec,
      baseBytesLeft: this.baseBytesLeft,
      mirrorBytesLeft: this.phase === 'base' ? this.overlayBytes : this.mirrorBytesLeft,
      ramBytes: this.vm.ramBytes,
      ramDirty: this.curve,
      ramPendingBytes: this.ramPendingPages * PAGE_BYTES,
      cpuThrottlePct: this.cpuThrottlePct,
      failed: this.failed,
      mirrorOnly: this.mirrorOnly,
    });
  }

  /**
   * Bytes/s of link this migration can use this tick, given the guest write rate it would send
   * synchronously (`syncWriteBytesPerSec`, only counted in `mirror` and `ram`).
   */
  linkDemand(dtSec: number, syncWriteBytesPerSec: number): number {
    switch (this.phase) {
      case 'base':
        return this.baseBytesLeft / dtSec;
      case 'mirror':
        return this.mirrorBytesLeft / dtSec + syncWriteBytesPerSec;
      case 'ram':
        return QEMU_DEFAULTS.maxBandwidthBytesPerSec + syncWriteBytesPerSec;
      case 'switchover':
        return Math.min(QEMU_DEFAULTS.maxBandwidthBytesPerSec, this.switchoverBytesLeft / dtSec);
      default:
        return 0;
    }
  }

  fail(nowSec: number, reason: string): void {
    if (this.failed) return;
    this.failed = true;
    this.failReason = reason;
    this.failedAtSec = nowSec;
  }

  /**
   * Moves the transfer side forward by one tick with `linkBytesPerSec` for this migration and
   * returns the guest write rate that actually left the guest, bytes/s (before the Ω check,
   * which the runner does across migrations). `throttle` is γ (null = none).
   */
  transfer(nowSec: number, dtSec: number, linkBytesPerSec: number, throttleBytesPerSec: number | null): number {
    const want = this.guestWriting ? Math.min(this.issuableBytesPerSec, throttleBytesPerSec ?? Infinity) : 0;
    switch (this.phase) {
      case 'base': {
        this.baseBytesLeft -= linkBytesPerSec * dtSec;
        if (this.baseBytesLeft <= 0) {
          this.baseBytesLeft = 0;
          this.phase = 'mirror';
          // The overlay as of now is the mirror's backlog; this tick's writes land after the
          // snapshot of the bitmap, i.e. they are mirrored synchronously from now on.
          this.mirrorBytesLeft = this.overlayBytes;
        }
        return want;
      }
      case 'mirror': {
        const backlogDemand = this.mirrorBytesLeft / dtSec;
        const write = fairShareOfFirst(linkBytesPerSec, want, backlogDemand);
        this.mirrorBytesLeft -= Math.min(backlogDemand, linkBytesPerSec - write) * dtSec;
        if (this.mirrorBytesLeft <= 1e-6) {
          this.mirrorBytesLeft = 0;
          this.phase = 'ram';
          this.runSecSinceSync = 0;
          this.periodStartSec = nowSec + dtSec;
          this.ramIterations = 1;
        }
        return write;
      }
      case 'ram': {
        const ramDemand = QEMU_DEFAULTS.maxBandwidthBytesPerSec;
        const write = fairShareOfFirst(linkBytesPerSec, want, ramDemand);
        const ramRate = Math.min(ramDemand, linkBytesPerSec - write);
        this.stepRam(nowSec + dtSec, dtSec, ramRate);
        return write;
      }
      case 'switchover': {
        this.switchoverBytesLeft -= linkBytesPerSec * dtSec;
        if (this.switchoverBytesLeft <= 1e-6) {
          this.switchoverBytesLeft = 0;
          this.phase = 'done';
          this.endSec = nowSec + dtSec;
        }
        return 0;
      }
      default:
        return 0;
    }
  }

  private stepRam(endSec: number, dtSec: number, ramBytesPerSec: number): void {
    if (!this.failed) this.runSecSinceSync += dtSec * (1 - this.cpuThrottlePct / 100);
    const sentBytes = ramBytesPerSec * dtSec;
    this.periodXferBytes += sentBytes;
    this.ramPendingPages = Math.max(0, this.ramPendingPages - sentBytes / PAGE_WIRE_BYTES);
    // QEMU computes the threshold from the bandwidth it measured; the rate of this tick is that.
    const thresholdBytes = ramBytesPerSec * (QEMU_DEFAULTS.downtimeLimitMs / 1000);
    if (this.ramPendingPages * PAGE_BYTES >= thresholdBytes || ramBytesPerSec <= 0) return;
    // ram_save_pending: below the threshold, sync the bitmap and look again.
    const dirtied = Math.min(this.curve.pagesInWindow(this.runSecSinceSync), this.ramPages);
    this.runSecSinceSync = 0;
    this.ramPendingPages = Math.min(this.ramPages, this.ramPendingPages + dirtied);
    this.periodDirtyBytes += dirtied * PAGE_BYTES;
    if (endSec - this.periodStartSec > THROTTLE_PERIOD_SEC) {
      // migration_trigger_throttle (QEMU 7.2), with LXD's auto-converge on and default parameters.
      if (this.periodDirtyBytes > (this.periodXferBytes * QEMU_DEFAULTS.throttleTriggerThresholdPct) / 100 && ++this.highCount >= 2) {
        this.highCount = 0;
        this.cpuThrottlePct =
          this.cpuThrottlePct === 0
            ? QEMU_DEFAULTS.cpuThrottleInitialPct
            : Math.min(this.cpuThrottlePct + QEMU_DEFAULTS.cpuThrottleIncrementPct, QEMU_DEFAULTS.maxCpuThrottlePct);
      }
      this.periodStartSec = endSec;
      this.periodDirtyBytes = 0;
      this.periodXferBytes = 0;
    }
    if (this.ramPendingPages * PAGE_BYTES < thresholdBytes) {
      this.phase = 'switchover';
      this.switchoverBytesLeft = this.ramPendingPages * PAGE_WIRE_BYTES;
      this.downtimeMs = (this.switchoverBytesLeft / ramBytesPerSec) * 1000;
      if (this.switchoverBytesLeft <= 0) {
        this.phase = 'done';
        this.endSec = endSec;
      }
    } else this.ramIterations++;
  }
}
