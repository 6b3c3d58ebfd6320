/**
 * The discrete-time simulator: one scenario, one policy, deterministic (no randomness, no clock).
 *
 * Each tick of `tickMs`:
 * 1. migrations whose start time has come start (overlay created, bulk copy begins);
 * 2. the policy sees the world (overlays, demands, phases, U(t)) and returns its decision;
 * 3. the link U(t) is shared among migrations by weighted max-min fairness, the weights being the
 *    policy's link shares, and inside each migration among its flows (./migration.ts);
 * 4. every migration moves data; guest writes (capped by γ, and by the link while mirrored) grow
 *    the overlays; a write that would exceed the migration's quota (its bin plus whatever the
 *    policy's rules lend it) or Ω itself pauses the guest: a failed migration;
 * 5. a migration that completes frees its overlay.
 * The run ends when every migration is done or at maxSimSeconds; one still running then is
 * counted as failed ("unfinished").
 */
import { waterFill } from '../policy/link-share';
import type { Decision, MigrationDecision, Policy, WorldState } from '../policy/types';
import { BandwidthEstimator } from '../model/bandwidth';
import { QEMU_DEFAULTS } from '../model/precopy';
import { checkSimMigrationModel, SimMigration, type SimMigrationModel, type SimPhase } from './migration';
import { RateTrack, type Scenario } from './scenario';

/** Summary of one policy on one scenario (the `dpa simulate --json` result row). */
export interface SimResult {
  policy: string;
  /** True when some guest was paused because its overlay could not grow (bin, quota or Ω full). */
  overflowed: boolean;
  /** Migrations that failed: paused on a full overlay, or not finished by maxSimSeconds. */
  failedMigrations: number;
  /** Of those, the ones not finished by maxSimSeconds. */
  unfinishedMigrations: number;
  /** Peak of Σ overlays in Ω, bytes. */
  maxOmegaUsedBytes: number;
  /** Bytes the guests were allowed to write / bytes they wanted to write during their migrations (1 when none wanted). */
  writeRetained: number;
  /** Lowest throttle γ given to a running guest, bytes/s; null when no guest was ever throttled. */
  minThrottleBytesPerSec: number | null;
  /** Jain's fairness index of the per-VM writeRetained, (Σx)²/(n·Σx²), 1/n..1. */
  jain: number;
  /** Last completion − first start, seconds; null when some migration did not finish. */
  makespanSec: number | null;
  /** Completion time of each VM's migration, seconds from the scenario start (null: not finished). */
  completionSec: Record<string, number | null>;
  /** Per VM: writeRetained. */
  writeRetainedByVm: Record<string, number>;
  /** Per VM: stop-and-copy duration, ms (null when it never switched over). */
  downtimeMs: Record<string, number | null>;
  /** Per failed VM: when and why. */
  failures: Record<string, { atSec: number; reason: string }>;
  ticks: number;
}

/** Time series for plots, sampled every `traceEverySec`. */
export interface SimTrace {
  policy: string;
  tSec: number[];
  linkBytesPerSec: number[];
  omegaUsedBytes: number[];
  vms: Array<{
    id: string;
    overlayBytes: Array<number | null>;
    partitionBytes: Array<number | null>;
    throttleBytesPerSec: Array<number | null>;
    phase: string[];
  }>;
}

export interface SimOptions {
  /** Record a trace every this many seconds (> 0); no trace when absent. */
  traceEverySec?: number;
  /** Receives every decision (tests use it to check invariants); keep it cheap. */
  onDecision?: (world: WorldState, decision: Decision) => void;
  /**
   * What policies see as U(t): 'exact' (default) the scenario's link speed; 'measured' the
   * model's BandwidthEstimator fed with the bytes the migrations moved, on the link-time clock of
   * the ticks where they saturated the link (so it lags a change by ~2 s, as the governor will).
   */
  link?: 'exact' | 'measured';
  /**
   * Per VM id: refinements of its migration model (zero-page share, fixed costs; see
   * SimMigrationModel). Absent: the plain model. `dpa lab sim-check` feeds what the lab measured.
   */
  migrationModel?: Readonly<Record<string, SimMigrationModel>>;
  /**
   * How the link is divided between migrations: 'policy' (default) in proportion to the link
   * shares the policy decides; 'equal' alike whatever the policy says, as TCP connections share a
   * NIC when nothing shapes the traffic (a host where dpa can cap QEMU's streams but not lift them
   * above LXD's bulk copy).
   */
  linkSharing?: 'policy' | 'equal';
  /** Also return when each VM entered each phase (SimOutput.phaseStartSec). */
  phaseTimes?: boolean;
}

export interface SimOutput {
  result: SimResult;
  trace?: SimTrace;
  /** Per VM id: when it entered each phase ('base', 'mirror', 'ram', 'switchover', 'done'), s from the scenario start (with `phaseTimes`). */
  phaseStartSec?: Record<string, Partial<Record<SimPhase, number>>>;
}

/** Jain's fairness index of non-negative values: 1 when all equal (also when all are 0). */
export function jainIndex(values: readonly number[]): number {
  if (values.length === 0) return 1;
  let sum = 0;
  let sumSq = 0;
  for (const v of values) {
    sum += v;
    sumSq += v * v;
  }
  return sumSq === 0 ? 1 : (sum * sum) / (values.length * sumSq);
}

/** Runs `policy` on `scenario`. */
export function simulate(scenario: Scenario, policy: Policy, options: SimOptions = {}): SimOutput {
  const dt = scenario.tickMs / 1000;
  const totalTicks = Math.ceil(scenario.maxSimSeconds / dt - 1e-9);
  const link = new RateTrack(scenario.link);
  const models = options.migrationModel ?? {};
  for (const [id, m] of Object.entries(models)) {
    if (!scenario.vms.some((vm) => vm.id === id)) throw new RangeError(`migrationModel.${id}: no VM with this id in the scenario`);
    checkSimMigrationModel(m, `migrationModel.${id}`);
  }
  const all = scenario.vms.map((vm) => new SimMigration(vm, policy.mirrorOnly, models[vm.id]));
  const waiting = [...all].sort((a, b) => a.vm.startSec - b.vm.startSec);
  let waitCursor = 0;
  let active: SimMigration[] = [];
  let previous: Decision | undefined;
  let maxOmegaUsed = 0;
  let minThrottle = Infinity;
  let overflowed = false;

  const traceEvery = options.traceEverySec !== undefined ? Math.max(1, Math.round(options.traceEverySec / dt)) : 0;
  const trace: SimTrace | undefined = traceEvery
    ? {
        policy: policy.name,
        tSec: [],
        linkBytesPerSec: [],
        omegaUsedBytes: [],
        vms: all.map((m) => ({ id: m.id, overlayBytes: [], partitionBytes: [], throttleBytesPerSec: [], phase: [] })),
      }
    : undefined;
  const traceIndex = new Map(all.map((m, i) => [m, i]));

  let alloc = new Float64Array(0);
  let demands = new Float64Array(0);
  let weights = new Float64Array(0);
  let writes = new Float64Array(0);
  let ticks = 0;
  const estimator = options.link === 'measured' ? new BandwidthEstimator() : undefined;
  const equalShares = options.linkSharing === 'equal';
  let linkTimeMs = 0;

  for (let k = 0; k < totalTicks; k++) {
    let now = k * dt;
    if (active.length === 0) {
      if (waitCursor >= waiting.length) break;
      // Nothing in flight: jump to the tick of the next start.
      const nextK = Math.max(k, Math.ceil(waiting[waitCursor]!.vm.startSec / dt - 1e-9));
      if (nextK >= totalTicks) break;
      k = nextK;
      now = k * dt;
    }
    while (waitCursor < waiting.length && waiting[waitCursor]!.vm.startSec <= now + 1e-9) {
      const m = waiting[waitCursor++]!;
      m.start(now);
      active.push(m);
    }
    ticks++;
    const n = active.length;
    const u = link.at(now);
    for (const m of active) m.demandAt(now);
    const world: WorldState = {
      nowSec: now,
      intervalSec: dt,
      omegaBytes: scenario.omegaBytes,
      slaBytesPerSec: scenario.slaBytesPerSec,
      linkBytesPerSec: estimator?.ready ? estimator.bytesPerSec : u,
      ramMaxBandwidthBytesPerSec: QEMU_DEFAULTS.maxBandwidthBytesPerSec,
      downtimeLimitMs: QEMU_DEFAULTS.downtimeLimitMs,
      migrations: active.map((m) => m.view()),
    };
    const decision = policy.decide(world, previous);
    options.onDecision?.(world, decision);
    previous = decision;
    // Policies answer in world order; fall back to a lookup if one does not.
    let byId: Map<string, MigrationDecision> | undefined;
    const decisionFor = (i: number, id: string): MigrationDecision | undefined => {
      const d = decision.migrations[i];
      if (d && d.id === id) return d;
      byId ??= new Map(decision.migrations.map((x) => [x.id, x]));
      return byId.get(id);
    };

    if (alloc.length < n) {
      alloc = new Float64Array(n * 2);
      demands = new Float64Array(n * 2);
      weights = new Float64Array(n * 2);
      writes = new Float64Array(n * 2);
    }
    const decisions: MigrationDecision[] = [];
    for (let i = 0; i < n; i++) {
      const m = active[i]!;
      const d = decisionFor(i, m.id);
      if (!d) throw new Error(`policy ${policy.name} returned no decision for migration ${m.id}`);
      decisions.push(d);
      if (d.failed && !m.failed) {
        m.fail(now, 'the policy could not place its overlay data (bins full)');
        overflowed = true;
      }
      if (m.guestWriting && d.throttleBytesPerSec !== null && d.throttleBytesPerSec < minThrottle) minThrottle = d.throttleBytesPerSec;
      const syncWrite = m.guestWriting ? Math.min(m.issuableBytesPerSec, d.throttleBytesPerSec ?? Infinity) : 0;
      demands[i] = m.linkDemand(dt, syncWrite);
      weights[i] = (equalShares ? 1 : d.linkShareBytesPerSec) * m.linkWeight(now);
    }
    waterFill(u, demands.subarray(0, n), weights.subarray(0, n), alloc);
    if (estimator) {
      let moved = 0;
      for (let i = 0; i < n; i++) moved += alloc[i]!;
      // Only a saturated link shows its speed; idle or demand-limited ticks are not link time.
      if (u > 0 && moved >= 0.98 * u) {
        linkTimeMs += dt * 1000;
        estimator.add(moved * dt, linkTimeMs);
      }
    }

    // Transfers, then guest writes against the quotas and Ω.
    let used = 0;
    for (const m of active) used += m.overlayBytes;
    let growthTotal = 0;
    for (let i = 0; i < n; i++) {
      const m = active[i]!;
      const d = decisions[i]!;
      if (m.phase === 'base' || m.phase === 'mirror' || m.phase === 'ram') m.wantedBytes += m.demandBytesPerSec * dt;
      const w = m.transfer(now, dt, alloc[i]!, d.throttleBytesPerSec);
      if (m.mirrorOnly) {
        m.allowedBytes += w * dt;
        writes[i] = 0;
        continue;
      }
      let growth = w * dt;
      const room = d.quotaBytes - m.overlayBytes;
      if (growth > room + 0.5) {
        growth = Math.max(0, room);
        m.fail(now + dt, d.partitionBytes === null ? 'Ω is full' : 'its overlay reached its quota (bin full)');
        overflowed = true;
      }
      writes[i] = growth;
      growthTotal += growth;
    }
    const free = scenario.omegaBytes - used;
    if (growthTotal > free + 0.5) {
      const scale = Math.max(0, free) / growthTotal;
      for (let i = 0; i < n; i++) {
        if (writes[i]! > 0) {
          writes[i] = writes[i]! * scale;
          active[i]!.fail(now + dt, 'Ω is full');
        }
      }
      overflowed = true;
    }
    let usedAfter = 0;
    for (let i = 0; i < n; i++) {
      const m = active[i]!;
      if (!m.mirrorOnly) {
        m.overlayBytes += writes[i]!;
        m.allowedBytes += writes[i]!;
      }
      usedAfter += m.overlayBytes;
    }
    if (usedAfter > maxOmegaUsed) maxOmegaUsed = usedAfter;

    if (trace && k % traceEvery === 0) {
      trace.tSec.push(now);
      trace.linkBytesPerSec.push(u);
      trace.omegaUsedBytes.push(usedAfter);
      const seen = new Set<number>();
      for (let i = 0; i < n; i++) {
        const m = active[i]!;
        const t = trace.vms[traceIndex.get(m)!]!;
        seen.add(traceIndex.get(m)!);
        t.overlayBytes.push(m.overlayBytes);
        t.partitionBytes.push(decisions[i]!.partitionBytes);
        t.throttleBytesPerSec.push(m.guestWriting ? decisions[i]!.throttleBytesPerSec : null);
        t.phase.push(m.failed ? `${m.phase} (failed)` : m.phase);
      }
      for (let j = 0; j < trace.vms.length; j++) {
        if (seen.has(j)) continue;
        const t = trace.vms[j]!;
        t.overlayBytes.push(null);
        t.partitionBytes.push(null);
        t.throttleBytesPerSec.push(null);
        t.phase.push(all[j]!.phase);
      }
    }

    if (active.some((m) => m.phase === 'done')) active = active.filter((m) => m.phase !== 'done');
    if (active.length === 0 && waitCursor >= waiting.length) break;
  }

  const endSec = ticks > 0 ? Math.min(scenario.maxSimSeconds, totalTicks * dt) : 0;
  let unfinished = 0;
  for (const m of all) {
    if (m.phase !== 'done') {
      unfinished++;
      m.fail(endSec, m.phase === 'waiting' ? 'never started before maxSimSeconds' : 'unfinished by maxSimSeconds');
    }
  }
  const retained = all.map((m) => (m.wantedBytes > 0 ? m.allowedBytes / m.wantedBytes : 1));
  let wanted = 0;
  let allowed = 0;
  for (const m of all) {
    wanted += m.wantedBytes;
    allowed += m.allowedBytes;
  }
  const failures: SimResult['failures'] = {};
  for (const m of all) if (m.failed) failures[m.id] = { atSec: m.failedAtSec, reason: m.failReason };
  const firstStart = Math.min(...all.map((m) => m.vm.startSec));
  const result: SimResult = {
    policy: policy.name,
    overflowed,
    failedMigrations: all.filter((m) => m.failed).length,
    unfinishedMigrations: unfinished,
    maxOmegaUsedBytes: maxOmegaUsed,
    writeRetained: wanted > 0 ? allowed / wanted : 1,
    minThrottleBytesPerSec: Number.isFinite(minThrottle) ? minThrottle : null,
    jain: jainIndex(retained),
    makespanSec: unfinished === 0 ? Math.max(...all.map((m) => m.endSec)) - firstStart : null,
    completionSec: Object.fromEntries(all.map((m) => [m.id, Number.isFinite(m.endSec) ? m.endSec : null])),
    writeRetainedByVm: Object.fromEntries(all.map((m, i) => [m.id, retained[i]!])),
    downtimeMs: Object.fromEntries(all.map((m) => [m.id, Number.isFinite(m.downtimeMs) ? m.downtimeMs : null])),
    failures,
    ticks,
  };
  const out: SimOutput = trace ? { result, trace } : { result };
  if (options.phaseTimes) out.phaseStartSec = Object.fromEntries(all.map((m) => [m.id, { ...m.phaseStartSec }]));
  return out;
}
