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
import { PAGE_HEADER_BYTES, QEMU_DEFAULTS, THROTTLE_PERIOD_SEC, ZERO_PAGE_WIRE_BYTES } from '../model/precopy';
import { fairShareOfFirst } from '../policy/link-share';
import type { MigrationPhase, MigrationView } from '../policy/types';
import { PAGE_BYTES } from '../policy/types';
import { RateTrack, type ScenarioVm } from './scenario';

export type SimPhase = 'waiting' | MigrationPhase | 'done';

const PAGE_WIRE_BYTES = PAGE_BYTES + PAGE_HEADER_BYTES;

/**
 * Optional refinements of one migration's model, all off by default (a scenario file cannot set
 * them: they describe a particular host; `dpa lab sim-check` feeds its measured zero-page shares and its lab constants).
 * Fixed costs are times in which the migration moves nothing over the link: QMP round trips, job
 * and NBD set-up, the polling that notices a phase's end, the target's start. On a 10 Gbit/s link
 * with GiB disks they are noise; on a lab link with 16 MiB disks they are several percent.
 */
export interface SimMigrationModel {
  /** Share of guest RAM in zero pages when pre-copy starts, 0..1: the first pass sends them as ZERO_PAGE_WIRE_BYTES each (default 0). */
  zeroPageFraction?: number;
  /** Before the base copy (capabilities, overlay creation, blockdev-snapshot), s ≥ 0 (default 0). */
  setupSec?: number;
  /** Start of the mirror (NBD export, blockdev-add, job start, noticing `ready`), s ≥ 0; guest writes go to the backlog meanwhile (default 0). */
  mirrorSetupSec?: number;
  /** Start of RAM pre-copy (migrate-incoming, migrate, QEMU's setup), s ≥ 0; guest writes stay synchronous (default 0). */
  ramSetupSec?: number;
  /** Switchover beyond the bytes (noticing pre-switchover, mirror cancel, migrate-continue, target start), s ≥ 0; guest paused (default 0). */
  switchoverSec?: number;
  /**
   * TCP convergence, s ≥ 0 (default 0: a new stream gets its fair share at once). Each of base,
   * mirror and RAM opens a new TCP connection; against streams already filling a deep queue (tbf)
   * it takes a while to win its share: its link weight grows linearly from 0 to 1 over this time
   * after the phase's set-up. Alone on the link it still takes all (water filling).
   */
  streamRampSec?: number;
}

/** Throws a RangeError naming the first bad field of a SimMigrationModel (`where` prefixes it). */
export function checkSimMigrationModel(m: SimMigrationModel, where = 'model'): void {
  if (typeof m !== 'object' || m === null) throw new TypeError(`${where}: must be an object`);
  for (const [k, v] of Object.entries(m)) {
    const max = k === 'zeroPageFraction' ? 1 : k.endsWith('Sec') ? 3600 : NaN;
    if (Number.isNaN(max)) throw new RangeError(`${where}.${k}: unknown field (allowed: zeroPageFraction, setupSec, mirrorSetupSec, ramSetupSec, switchoverSec, streamRampSec)`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > max) throw new RangeError(`${where}.${k}: must be a number from 0 to ${max} (got ${String(v)})`);
  }
}

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
  /** Fixed cost left in the current phase, s (SimMigrationModel); nothing crosses the link meanwhile. */
  private holdSec = 0;
  /** First-pass pages not yet sent (they include the zero pages) and their mean wire cost, bytes. */
  private firstPassPages = 0;
  private readonly firstPassWireBytes: number;
  /** When the current phase's stream began (its set-up over), s; for the TCP ramp. */
  private streamStartSec = 0;
  /** When each phase began, s from the scenario start. */
  readonly phaseStartSec: Partial<Record<SimPhase, number>> = {};

  constructor(
    readonly vm: ScenarioVm,
    readonly mirrorOnly: boolean,
    readonly model: SimMigrationModel = {},
  ) {
    const z = model.zeroPageFraction ?? 0;
    this.firstPassWireBytes = z * ZERO_PAGE_WIRE_BYTES + (1 - z) * PAGE_WIRE_BYTES;
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
      this.enter('mirror', nowSec);
      this.mirrorBytesLeft = this.vm.diskBytes;
      this.baseBytesLeft = 0;
    } else {
      this.enter('base', nowSec);
      this.holdSec = this.model.setupSec ?? 0;
    }
  }

  private enter(phase: SimPhase, atSec: number): void {
    this.phase = phase;
    this.phaseStartSec[phase] = atSec;
    this.streamStartSec = atSec;
  }

  /** The stop-and-copy is over at `atSec`: the migration is done. */
  private finish(atSec: number): void {
    this.switchoverBytesLeft = 0;
    this.enter('done', atSec);
    this.endSec = atSec;
  }

  /**
   * Factor on this migration's link weight at `nowSec`, 0.02..1: 1 unless the model has a TCP
   * ramp (SimMigrationModel.streamRampSec) and its current stream is younger than the ramp.
   */
  linkWeight(nowSec: number): number {
    const ramp = this.model.streamRampSec ?? 0;
    if (ramp <= 0 || this.phase === 'switchover') return 1;
    return Math.min(1, Math.max(0.02, (nowSec - this.streamStartSec) / ramp));
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
    if (this.holdSec > 0) return this.phase === 'ram' ? syncWriteBytesPerSec : 0;
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
    if (this.holdSec > 0) return this.hold(nowSec, dtSec, linkBytesPerSec, want);
    switch (this.phase) {
      case 'base': {
        this.baseBytesLeft -= linkBytesPerSec * dtSec;
        if (this.baseBytesLeft <= 0) {
          this.baseBytesLeft = 0;
          this.enter('mirror', nowSec + dtSec);
          this.holdSec = this.model.mirrorSetupSec ?? 0;
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
          this.enter('ram', nowSec + dtSec);
          this.runSecSinceSync = 0;
          this.periodStartSec = nowSec + dtSec;
          this.ramIterations = 1;
          this.firstPassPages = this.ramPages;
          this.holdSec = this.model.ramSetupSec ?? 0;
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
        if (this.switchoverBytesLeft <= 1e-6) this.finish(nowSec + dtSec);
        return 0;
      }
      default:
        return 0;
    }
  }

  /** One tick inside a fixed cost: no link bytes of the phase's own; guest writes go where that phase sends them. */
  private hold(nowSec: number, dtSec: number, linkBytesPerSec: number, want: number): number {
    this.holdSec -= dtSec;
    const over = this.holdSec <= 1e-9;
    if (over) {
      this.holdSec = 0;
      this.streamStartSec = nowSec + dtSec;
    }
    switch (this.phase) {
      case 'base':
        return want;
      case 'mirror':
        // The job is not running yet: the writes are backlog it will copy.
        this.mirrorBytesLeft += want * dtSec;
        return want;
      case 'ram': {
        // QEMU syncs the bitmap when `migrate` has set up: dirtying before that is in the first pass.
        if (over) {
          this.runSecSinceSync = 0;
          this.periodStartSec = nowSec + dtSec;
        }
        return Math.min(want, linkBytesPerSec);
      }
      case 'switchover':
        if (over && this.switchoverBytesLeft <= 1e-6) this.finish(nowSec + dtSec);
        return 0;
      default:
        return 0;
    }
  }

  private stepRam(endSec: number, dtSec: number, ramBytesPerSec: number): void {
    if (!this.failed) this.runSecSinceSync += dtSec * (1 - this.cpuThrottlePct / 100);
    const sentBytes = ramBytesPerSec * dtSec;
    this.periodXferBytes += sentBytes;
    if (this.firstPassWireBytes === PAGE_WIRE_BYTES) this.ramPendingPages = Math.max(0, this.ramPendingPages - sentBytes / PAGE_WIRE_BYTES);
    else {
      // QEMU's first pass walks all of RAM; zero pages cost a header and a byte, the rest a page.
      const first = Math.min(this.firstPassPages, sentBytes / this.firstPassWireBytes);
      this.firstPassPages -= first;
      const rest = (sentBytes - first * this.firstPassWireBytes) / PAGE_WIRE_BYTES;
      this.ramPendingPages = Math.max(0, this.ramPendingPages - first - rest);
    }
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
      this.enter('switchover', endSec);
      const firstLeft = Math.min(this.firstPassPages, this.ramPendingPages);
      this.switchoverBytesLeft =
        this.firstPassWireBytes === PAGE_WIRE_BYTES
          ? this.ramPendingPages * PAGE_WIRE_BYTES
          : firstLeft * this.firstPassWireBytes + (this.ramPendingPages - firstLeft) * PAGE_WIRE_BYTES;
      this.downtimeMs = (this.switchoverBytesLeft / ramBytesPerSec) * 1000;
      this.holdSec = this.model.switchoverSec ?? 0;
      if (this.switchoverBytesLeft <= 0 && this.holdSec <= 0) this.finish(endSec);
    } else this.ramIterations++;
  }
}
