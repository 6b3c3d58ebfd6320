/**
 * The governor's pure part: telemetry → WorldState → Decision → planned actions. No I/O, no
 * clock (times come in with the telemetry), so one tick can be timed and unit-tested without
 * QEMU; ./governor.ts does the QMP reads and writes around it.
 *
 * Per VM it keeps what the loop needs between ticks: the write-demand estimator (./demand.ts),
 * the limits and max-bandwidth in force (as confirmed by the executor), the byte counters that
 * feed U(t). For all VMs together it keeps the link estimator U(t) (src/model/bandwidth.ts, fed
 * with the sum of every migration's bytes moved: base copy + mirror offset + RAM transferred)
 * and the policy's previous decision.
 *
 * Planning rules:
 * - throttle: the policy's γ_i, never below γ_SLA, never above the VM's own write limit
 *   (./throttle.ts withWriteLimit keeps every other limit it had). A new setting is sent only when
 *   its effective write limit differs from the one in force by more than `throttleHysteresis`
 *   (relative, at least 1 KiB/s); γ = null (not throttled) restores the VM's own limits.
 * - max-bandwidth: while a migration is in its RAM phase, U(t) × (1 + headroom), never below
 *   `minRamBandwidthBytesPerSec`, sent when it moves by more than `bandwidthHysteresis`. It lifts
 *   QEMU's 128 MiB/s default. It is not the policy's link share: TCP already divides a contended
 *   link between the connections, so a cap at the share could only idle the link when the others
 *   send less than theirs, e.g. a disk-bound base copy. The headroom lets U(t), which measures
 *   throughput achieved, discover a faster link instead of being pinned by the cap it set.
 * - a migration that ended (completed, failed, rolled back) gets its original limits and
 *   max-bandwidth back in the same tick.
 */
import { BandwidthEstimator, type BandwidthEstimatorOptions } from '../model/bandwidth';
import { constantRateCurve, type DirtyCurve } from '../model/dirty-curve';
import { QEMU_DEFAULTS } from '../model/precopy';
import type { Decision, MigrationDecision, MigrationPhase, MigrationView, Policy, WorldState } from '../policy/types';
import { PAGE_BYTES } from '../policy/types';
import { WriteDemand, type DemandOptions } from './demand';
import { effectiveWriteLimit, sameLimits, withWriteLimit } from './throttle';
import { ENDED_PHASES, type GovernedPhase, type GovernedProgress, type GovernorAction, type ThrottleLimits, type VmInputRecord } from './types';

export interface CoreOptions {
  policy: Policy;
  /** Ω_S, bytes (> 0). */
  omegaBytes: number;
  /** γ_SLA, bytes/s (> 0). */
  slaBytesPerSec: number;
  /** The loop's period, ms (20..1000): the policy's intervalSec. */
  intervalMs: number;
  /** Relative change of the write limit below which nothing is sent (0..0.5, default 0.05). */
  throttleHysteresis?: number;
  /** Relative change of max-bandwidth below which nothing is sent (0..1, default 0.1). */
  bandwidthHysteresis?: number;
  /** Set max-bandwidth in the RAM phase from U(t) (default true). */
  manageBandwidth?: boolean;
  /** max-bandwidth = U(t) × (1 + headroom) (0..4, default 0.25). */
  ramBandwidthHeadroom?: number;
  /** Lowest max-bandwidth the governor sets, bytes/s (≥ 1, default 1 MiB/s). */
  minRamBandwidthBytesPerSec?: number;
  /** U(t) assumed until the estimator has seen enough link time, bytes/s (> 0, default 125 MB/s = 1 Gbit/s). */
  linkHintBytesPerSec?: number;
  demand?: DemandOptions;
  bandwidth?: BandwidthEstimatorOptions;
  /**
   * Plan with the overlay's growth, not the bytes written (default false): a guest rewriting
   * clusters its overlay already holds writes without growing it, so the policy is given
   * demand × f and its γ is applied as the write limit γ / f, f being the measured share of
   * written bytes that grow the overlay (Δ actual-size / Δ wr_bytes, 1/16..1; starts at 1; a
   * rise counts at the end of each 256 KiB written, a fall only over whole 1 MiB windows,
   * halfway each). A guest moving from rewrites to new clusters outgrows its plan by less than
   * 512 KiB (two such windows) before f catches up; a mix of both is planned with an f above its
   * true share (conservative).
   */
  overlayGrowth?: boolean;
}

/** What the governor knows about a VM when it starts governing it. */
export interface VmSetup {
  id: string;
  /** Guest RAM, bytes (> 0). */
  ramBytes: number;
  /** The device's limits before the governor touched it. */
  originalLimits: ThrottleLimits;
  /** max-bandwidth before the governor touched it, bytes/s. */
  originalMaxBandwidthBytesPerSec: number;
  /** downtime-limit, ms. */
  downtimeLimitMs: number;
  ramDirty?: DirtyCurve;
}

/** One VM's readings of one tick. */
export interface VmTelemetry {
  /** Monotonic time of the readings, ms. */
  tMs: number;
  /** Cumulative wr_bytes of the guest's disk device; null when the query failed. */
  wrBytes: number | null;
  /** Cumulative wr_operations of the same device (improves the saturation test), if known. */
  wrOps?: number;
  /** Overlay image.actual-size, bytes; null when unknown (query failed). 0 before it exists. */
  overlayBytes: number | null;
  progress: GovernedProgress;
}

export interface TickResult {
  world: WorldState;
  decision: Decision;
  /** What to change, in order; confirm() each one that succeeded. */
  actions: GovernorAction[];
  /** VMs whose migration has ended: their restore is in `actions`; remove() them once applied. */
  ended: string[];
  inputs: VmInputRecord[];
}

const GOVERNED: ReadonlySet<GovernedPhase> = new Set(['base', 'mirror', 'ram', 'switchover']);
/** Growth share f (CoreOptions.overlayGrowth): floor, bytes written before a rise counts, window of a fall. */
const GROWTH_MIN = 1 / 16;
const GROWTH_RISE_BYTES = 256 * 1024;
const GROWTH_WINDOW_BYTES = 1024 * 1024;
/** Smallest write-limit step worth a QMP call, bytes/s. */
const MIN_STEP_BYTES_PER_SEC = 1024;

function num(name: string, v: number | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !(v >= min && v <= max)) throw new RangeError(`${name}: must be a number from ${min} to ${max} (got ${String(v)})`);
  return v;
}

/** x rounded to a 1/16-octave grid (4.4 % steps), so a slowly drifting value stays identical. */
function quantize(x: number): number {
  if (!(x > 0) || !Number.isFinite(x)) return x;
  return 2 ** (Math.round(Math.log2(x) * 16) / 16);
}

class Vm {
  readonly demand: WriteDemand;
  current: ThrottleLimits;
  currentMaxBw: number;
  phase: GovernedPhase = 'setup';
  progress: GovernedProgress = { phase: 'setup', baseBytesTotal: 0, baseBytesCopied: 0 };
  overlayBytes = 0;
  wrBytes: number | null = null;
  movedBytes = 0;
  private lastBase: number | undefined;
  private lastMirror: number | undefined;
  private lastRam: number | undefined;
  private curveRate = -1;
  private curve: DirtyCurve;
  readonly ramPages: number;
  ended = false;
  /**
   * Until then (monotonic ms) a throttle in force is only tightened, never loosened: set for a VM
   * taken over from a previous governor, whose demand is unknown until measured for τ.
   */
  holdLooserUntilMs = -Infinity;
  /** Share of written bytes that grow the overlay (CoreOptions.overlayGrowth), GROWTH_MIN..1. */
  growthFraction = 1;
  private gLastOverlay: number | undefined;
  private gLastWr: number | undefined;
  private gAccOverlay = 0;
  private gAccWr = 0;
  private gRiseOverlay = 0;
  private gRiseWr = 0;
  /** Last planned γ (null = none) and the limits it gives. */
  lastGamma: number | null = null;
  lastDesired: ThrottleLimits;

  constructor(
    readonly setup: VmSetup,
    readonly startedSec: number,
    demandOptions: DemandOptions | undefined,
  ) {
    this.demand = new WriteDemand(demandOptions);
    this.current = setup.originalLimits;
    this.lastDesired = setup.originalLimits;
    this.currentMaxBw = setup.originalMaxBandwidthBytesPerSec;
    this.ramPages = Math.ceil(setup.ramBytes / PAGE_BYTES);
    this.curve = setup.ramDirty ?? constantRateCurve(0, this.ramPages);
    this.curveRate = setup.ramDirty ? Infinity : 0;
  }

  /** Adds this tick's bytes moved to `movedBytes`; returns the increase. A counter that went down restarted. */
  advanceMoved(p: GovernedProgress): number {
    const step = (last: number | undefined, cur: number | undefined): number => (cur === undefined || last === undefined || cur < last ? 0 : cur - last);
    const base = p.baseBytesCopied;
    const mirror = p.mirror?.offset;
    const ram = p.ram?.transferred;
    const d = step(this.lastBase, base) + step(this.lastMirror, mirror) + step(this.lastRam, ram);
    this.lastBase = base;
    this.lastMirror = mirror;
    this.lastRam = ram;
    this.movedBytes += d;
    return d;
  }

  /** Folds one reading into growthFraction (only while the overlay exists and both counters move forward). */
  observeGrowth(overlayBytes: number | null, wrBytes: number | null): void {
    if (overlayBytes === null || wrBytes === null) return;
    const lo = this.gLastOverlay;
    const lw = this.gLastWr;
    this.gLastOverlay = overlayBytes;
    this.gLastWr = wrBytes;
    if (lo === undefined || lw === undefined || lo <= 0 || overlayBytes < lo || wrBytes < lw) {
      this.gAccOverlay = this.gAccWr = this.gRiseOverlay = this.gRiseWr = 0;
      return;
    }
    const dO = overlayBytes - lo;
    const dW = wrBytes - lw;
    this.gAccOverlay += dO;
    this.gAccWr += dW;
    this.gRiseOverlay += dO;
    this.gRiseWr += dW;
    // qcow2 metadata can make the overlay grow a little more than the data written: capped at 1.
    // New clusters again (short window): the limit must come down now.
    if (this.gRiseWr >= GROWTH_RISE_BYTES) {
      const f = Math.min(1, this.gRiseOverlay / this.gRiseWr);
      if (f > this.growthFraction) this.growthFraction = quantize(f);
      this.gRiseOverlay = this.gRiseWr = 0;
    }
    // Rewrites (long window): loosen only by halves.
    if (this.gAccWr >= GROWTH_WINDOW_BYTES) {
      const f = Math.min(1, this.gAccOverlay / this.gAccWr);
      if (f < this.growthFraction) this.growthFraction = Math.max(GROWTH_MIN, quantize((this.growthFraction + f) / 2));
      this.gAccOverlay = this.gAccWr = 0;
    }
  }

  ramDirty(): DirtyCurve {
    if (this.setup.ramDirty) return this.setup.ramDirty;
    const rate = this.phase === 'ram' || this.phase === 'switchover' ? (this.progress.ram?.['dirty-pages-rate'] ?? 0) : 0;
    // One curve object per distinct rate: the policy memoises predictions per curve object.
    if (rate !== this.curveRate && Number.isFinite(rate) && rate >= 0) {
      this.curveRate = rate;
      this.curve = constantRateCurve(rate, this.ramPages);
    }
    return this.curve;
  }
}

/** The governor's decision core (see the module comment). */
export class GovernorCore {
  readonly policy: Policy;
  readonly intervalMs: number;
  private readonly o: Required<Omit<CoreOptions, 'policy' | 'demand' | 'bandwidth'>>;
  private readonly demandOptions: DemandOptions | undefined;
  private readonly link: BandwidthEstimator;
  private readonly vms = new Map<string, Vm>();
  private previous: Decision | undefined;
  private movedTotal = 0;
  private t0Ms: number | undefined;
  private lastNowMs = 0;

  constructor(options: CoreOptions) {
    if (!options.policy || typeof options.policy.decide !== 'function') throw new TypeError('policy: must be a Policy');
    if (options.policy.mirrorOnly) throw new RangeError(`policy: '${options.policy.name}' changes the migration flow itself; the governor can only throttle and share the link`);
    this.policy = options.policy;
    const omegaBytes = num('omegaBytes', options.omegaBytes, NaN, 1, Number.MAX_SAFE_INTEGER);
    if (Number.isNaN(omegaBytes)) throw new RangeError('omegaBytes: required, a number of bytes ≥ 1');
    this.intervalMs = num('intervalMs', options.intervalMs, 100, 20, 1000);
    this.o = {
      omegaBytes,
      slaBytesPerSec: num('slaBytesPerSec', options.slaBytesPerSec, 10_000, 1, 1e12),
      intervalMs: this.intervalMs,
      throttleHysteresis: num('throttleHysteresis', options.throttleHysteresis, 0.05, 0, 0.5),
      bandwidthHysteresis: num('bandwidthHysteresis', options.bandwidthHysteresis, 0.1, 0, 1),
      manageBandwidth: options.manageBandwidth ?? true,
      ramBandwidthHeadroom: num('ramBandwidthHeadroom', options.ramBandwidthHeadroom, 0.25, 0, 4),
      minRamBandwidthBytesPerSec: num('minRamBandwidthBytesPerSec', options.minRamBandwidthBytesPerSec, 1024 * 1024, 1, 1e12),
      linkHintBytesPerSec: num('linkHintBytesPerSec', options.linkHintBytesPerSec, 125e6, 1, 1e12),
      overlayGrowth: options.overlayGrowth ?? false,
    };
    if (typeof this.o.overlayGrowth !== 'boolean') throw new TypeError('overlayGrowth: must be a boolean');
    this.demandOptions = options.demand;
    // The loop samples continuously: only idle stretches (nothing moving) are gaps.
    this.link = new BandwidthEstimator(options.bandwidth);
  }

  /** γ_SLA as the integer the governor never goes below, bytes/s. */
  get slaFloorBytesPerSec(): number {
    return Math.ceil(this.o.slaBytesPerSec);
  }

  /** U(t) the policy sees, bytes/s. */
  get linkBytesPerSec(): number {
    return this.link.ready ? this.link.bytesPerSec : this.o.linkHintBytesPerSec;
  }

  get linkReady(): boolean {
    return this.link.ready;
  }

  /** Ids of governed VMs, in attach order. */
  ids(): string[] {
    return [...this.vms.keys()];
  }

  has(id: string): boolean {
    return this.vms.has(id);
  }

  /**
   * Starts governing a VM. `nowMs` is the monotonic time (its migration's start on the world
   * clock). `inForce`: what a previous governor left applied (taken over from its state file);
   * the planning starts from it, and it is only tightened until the guest's demand has been
   * measured for τ (lifting it on an unknown demand would let the guest write at full speed).
   */
  attach(setup: VmSetup, nowMs: number, inForce?: { limits: ThrottleLimits; maxBandwidthBytesPerSec: number }): void {
    if (typeof setup.id !== 'string' || setup.id === '') throw new TypeError('id: must be a non-empty string');
    if (this.vms.has(setup.id)) throw new RangeError(`id: '${setup.id}' is already governed`);
    if (!(setup.ramBytes > 0) || !Number.isFinite(setup.ramBytes)) throw new RangeError(`ramBytes: must be a finite number > 0 (got ${String(setup.ramBytes)})`);
    this.t0Ms ??= nowMs;
    const vm = new Vm(setup, (nowMs - this.t0Ms) / 1000, this.demandOptions);
    if (inForce) {
      vm.current = inForce.limits;
      vm.currentMaxBw = inForce.maxBandwidthBytesPerSec;
      vm.holdLooserUntilMs = nowMs + vm.demand.tauMs;
    }
    this.vms.set(setup.id, vm);
  }

  /** Stops governing a VM without any action (after its restore was applied, or when it is gone). */
  remove(id: string): void {
    this.vms.delete(id);
  }

  /** The limits and max-bandwidth in force on a VM as far as the core knows. */
  inForce(id: string): { limits: ThrottleLimits; maxBandwidthBytesPerSec: number } | undefined {
    const vm = this.vms.get(id);
    return vm && { limits: vm.current, maxBandwidthBytesPerSec: vm.currentMaxBw };
  }

  /** The VM's setup (originals). */
  setupOf(id: string): VmSetup | undefined {
    return this.vms.get(id)?.setup;
  }

  /** Records that `action` was applied. */
  confirm(action: GovernorAction): void {
    const vm = this.vms.get(action.id);
    if (!vm) return;
    if (action.kind === 'set-throttle') vm.current = action.limits;
    else vm.currentMaxBw = action.bytesPerSec;
  }

  /** The actions that bring a VM back to its original limits and max-bandwidth (none if nothing changed). */
  planRestore(id: string): GovernorAction[] {
    const vm = this.vms.get(id);
    if (!vm) return [];
    const out: GovernorAction[] = [];
    const orig = vm.setup.originalLimits;
    if (!sameLimits(vm.current, orig)) {
      const w = effectiveWriteLimit(orig);
      out.push({ kind: 'set-throttle', id, limits: orig, writeBytesPerSec: Number.isFinite(w) ? w : 0, why: 'restore' });
    }
    if (vm.currentMaxBw !== vm.setup.originalMaxBandwidthBytesPerSec) {
      out.push({ kind: 'set-max-bandwidth', id, bytesPerSec: vm.setup.originalMaxBandwidthBytesPerSec, why: 'restore' });
    }
    return out;
  }

  /** True once the VM's migration ended (or end() was called): only its restore is planned. */
  isEnded(id: string): boolean {
    return this.vms.get(id)?.ended ?? false;
  }

  /** VMs whose migration has ended and that are still waiting for remove(). */
  endedIds(): string[] {
    return [...this.vms.values()].filter((v) => v.ended).map((v) => v.setup.id);
  }

  /** Marks a VM as ending (e.g. the governor stops): the next ticks leave it out of the world and only restore it. */
  end(id: string): GovernorAction[] {
    const vm = this.vms.get(id);
    if (!vm) return [];
    vm.ended = true;
    return this.planRestore(id);
  }

  /**
   * One control step at monotonic time `nowMs`: fold in the readings (VMs without a reading keep
   * their last values), build the world, ask the policy, plan the actions.
   */
  tick(nowMs: number, telemetry: ReadonlyMap<string, VmTelemetry>): TickResult {
    this.t0Ms ??= nowMs;
    if (nowMs < this.lastNowMs) throw new RangeError(`nowMs: must not go backwards (${nowMs} < ${this.lastNowMs})`);
    this.lastNowMs = nowMs;
    const nowSec = (nowMs - this.t0Ms) / 1000;
    const actions: GovernorAction[] = [];
    const ended: string[] = [];
    const inputs: VmInputRecord[] = [];
    const governed: Vm[] = [];
    let moving = false;
    for (const vm of this.vms.values()) {
      const t = telemetry.get(vm.setup.id);
      if (t) {
        vm.progress = t.progress;
        vm.phase = t.progress.phase;
        if (t.overlayBytes !== null) vm.overlayBytes = t.overlayBytes;
        if (t.wrBytes !== null) {
          vm.wrBytes = t.wrBytes;
          vm.demand.update(t.tMs, t.wrBytes, effectiveWriteLimit(vm.current), t.wrOps);
        }
        if (this.o.overlayGrowth && GOVERNED.has(t.progress.phase)) vm.observeGrowth(t.overlayBytes, t.wrBytes);
        this.movedTotal += vm.advanceMoved(t.progress);
      }
      if (ENDED_PHASES.has(vm.phase)) vm.ended = true;
      if (vm.ended) {
        ended.push(vm.setup.id);
        for (const a of this.planRestore(vm.setup.id)) actions.push(a);
        continue;
      }
      if (vm.phase !== 'base' && vm.phase !== 'setup') moving = true;
      if (vm.phase === 'base' && vm.progress.baseBytesCopied < vm.progress.baseBytesTotal) moving = true;
      if (GOVERNED.has(vm.phase)) governed.push(vm);
    }
    // Only while something should be moving: time with nothing to send is not link time.
    if (moving) this.link.addSample(nowMs, this.movedTotal);

    const link = this.linkBytesPerSec;
    let downtimeLimitMs = Infinity;
    let ramMaxBw = Infinity;
    const views: MigrationView[] = new Array(governed.length);
    for (let i = 0; i < governed.length; i++) {
      const vm = governed[i]!;
      const p = vm.progress;
      const phase = vm.phase as MigrationPhase;
      downtimeLimitMs = Math.min(downtimeLimitMs, vm.setup.downtimeLimitMs);
      ramMaxBw = Math.min(ramMaxBw, vm.setup.originalMaxBandwidthBytesPerSec);
      const lateRam = phase === 'ram' || phase === 'switchover';
      views[i] = {
        id: vm.setup.id,
        phase,
        startedSec: vm.startedSec,
        overlayBytes: vm.overlayBytes,
        writeBytesPerSecDemand: vm.demand.demandBytesPerSec * vm.growthFraction,
        baseBytesLeft: phase === 'base' ? Math.max(0, p.baseBytesTotal - p.baseBytesCopied) : 0,
        mirrorBytesLeft: phase === 'base' ? vm.overlayBytes : phase === 'mirror' && p.mirror ? Math.max(0, p.mirror.len - p.mirror.offset) : 0,
        ramBytes: vm.setup.ramBytes,
        ramDirty: vm.ramDirty(),
        ramPendingBytes: lateRam ? (p.ram?.remaining ?? vm.setup.ramBytes) : vm.setup.ramBytes,
        cpuThrottlePct: p.migration?.cpuThrottlePercent ?? 0,
        failed: false,
        mirrorOnly: false,
      };
    }
    const world: WorldState = {
      nowSec,
      intervalSec: this.intervalMs / 1000,
      omegaBytes: this.o.omegaBytes,
      slaBytesPerSec: this.o.slaBytesPerSec,
      linkBytesPerSec: link,
      // Managed: each RAM stream may use its share and more (see planning rules), so the link
      // is the cap; quantized so the policy's pre-copy memo stays valid while U drifts.
      ramMaxBandwidthBytesPerSec: this.o.manageBandwidth ? quantize(link) : Number.isFinite(ramMaxBw) ? ramMaxBw : QEMU_DEFAULTS.maxBandwidthBytesPerSec,
      downtimeLimitMs: Number.isFinite(downtimeLimitMs) ? downtimeLimitMs : QEMU_DEFAULTS.downtimeLimitMs,
      migrations: views,
    };
    const decision = this.policy.decide(world, this.previous);
    this.previous = decision;

    let byId: Map<string, MigrationDecision> | undefined;
    for (let i = 0; i < governed.length; i++) {
      const vm = governed[i]!;
      const id = vm.setup.id;
      let md: MigrationDecision | undefined = decision.migrations[i];
      if (!md || md.id !== id) {
        byId ??= new Map(decision.migrations.map((d) => [d.id, d]));
        md = byId.get(id);
      }
      this.planVm(vm, md, actions, nowMs);
      inputs.push(this.inputRecord(vm));
    }
    return { world, decision, actions, ended, inputs };
  }

  private planVm(vm: Vm, md: MigrationDecision | undefined, actions: GovernorAction[], nowMs: number): void {
    const id = vm.setup.id;
    const orig = vm.setup.originalLimits;
    const gamma = md?.throttleBytesPerSec;
    // γ is an overlay growth rate; the write limit that gives it is γ / f (f = 1 unless overlayGrowth).
    const g = gamma === null || gamma === undefined || !Number.isFinite(gamma) ? null : Math.max(this.slaFloorBytesPerSec, Math.round(gamma / vm.growthFraction));
    // The same γ as last tick gives the same object: once applied, a reference check suffices.
    if (g !== vm.lastGamma) {
      vm.lastGamma = g;
      vm.lastDesired = g === null ? orig : withWriteLimit(orig, g);
    }
    const desired = vm.lastDesired;
    if (desired !== vm.current && !sameLimits(desired, vm.current)) {
      const want = effectiveWriteLimit(desired);
      const have = effectiveWriteLimit(vm.current);
      const band = Math.max(MIN_STEP_BYTES_PER_SEC, this.o.throttleHysteresis * have);
      const held = nowMs < vm.holdLooserUntilMs && !(want < have);
      if (!held && !(Number.isFinite(want) && Number.isFinite(have) && Math.abs(want - have) <= band)) {
        actions.push({ kind: 'set-throttle', id, limits: desired, writeBytesPerSec: Number.isFinite(want) ? want : 0, why: 'policy' });
      }
    }
    if (this.o.manageBandwidth && md && vm.phase === 'ram' && this.link.ready) {
      const want = Math.round(Math.max(this.o.minRamBandwidthBytesPerSec, this.linkBytesPerSec * (1 + this.o.ramBandwidthHeadroom)));
      if (Math.abs(want - vm.currentMaxBw) > this.o.bandwidthHysteresis * vm.currentMaxBw) {
        actions.push({ kind: 'set-max-bandwidth', id, bytesPerSec: want, why: 'policy' });
      }
    }
  }

  private inputRecord(vm: Vm): VmInputRecord {
    const w = effectiveWriteLimit(vm.current);
    return {
      id: vm.setup.id,
      phase: vm.phase,
      wrBytes: vm.wrBytes,
      writeBytesPerSec: vm.demand.rateBytesPerSec,
      demandBytesPerSec: vm.demand.demandBytesPerSec,
      saturated: vm.demand.saturated,
      writeLimitBytesPerSec: Number.isFinite(w) ? w : 0,
      overlayBytes: vm.overlayBytes,
      movedBytes: vm.movedBytes,
      ...(this.o.overlayGrowth ? { growthFraction: vm.growthFraction } : {}),
    };
  }
}
