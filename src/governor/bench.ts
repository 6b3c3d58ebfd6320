/**
 * The control tick's own cost: the pure part of the governor (fold in telemetry, build the
 * world, run the policy, plan the actions) on a synthetic fleet (./synthetic.ts), without any
 * QMP wait. Each tick's core.tick() is timed with performance.now(); the fleet's stepping and
 * the executor's confirmations are outside the timed span. The JSON encoding of the decision
 * record (what the decision log costs per tick) is timed separately.
 */
import { performance } from 'node:perf_hooks';
import { makePolicy } from '../policy/index';
import { GovernorCore } from './core';
import { SyntheticFleet } from './synthetic';

export interface GovernorBenchOptions {
  /** Migrations in flight (1..4096). */
  vms: number;
  /** Timed ticks (≥ 1). */
  ticks: number;
  /** Untimed ticks first (JIT warm-up), ≥ 0. */
  warmupTicks: number;
  intervalMs: number;
  policy: 'fitted' | 'paper';
  /** Ω_S, bytes. */
  omegaBytes: number;
  /** The synthetic link, bytes/s. */
  linkBytesPerSec: number;
  seed: number;
}

export interface GovernorBenchResult {
  policy: string;
  vms: number;
  ticks: number;
  /** Pure tick cost, µs: median, 99th percentile, mean, maximum. */
  tickUs: number;
  tickUsP99: number;
  tickUsMean: number;
  tickUsMax: number;
  /** JSON encoding of one decision record (decision log line), µs median. */
  logUsP50: number;
  /** Mean decision-log line, bytes. */
  logBytesMean: number;
  /** Full solves of `fitted` per timed tick (0..1); null for other policies. */
  solveFraction: number | null;
  /** QMP commands the plan asked for, per tick. */
  actionsPerTick: number;
  /** Mean number of VMs with a governor throttle in force. */
  throttledVmsMean: number;
  /** Migrations that completed during the run (replaced by new ones). */
  completedMigrations: number;
  /** Largest Σ overlays seen, bytes. */
  maxOmegaUsedBytes: number;
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

export function benchGovernor(o: GovernorBenchOptions): GovernorBenchResult {
  const policy = makePolicy(o.policy, { staticBinBytes: o.omegaBytes / 4 });
  const fleet = new SyntheticFleet({ vms: o.vms, intervalMs: o.intervalMs, seed: o.seed, linkBytesPerSec: o.linkBytesPerSec });
  const core = new GovernorCore({ policy, omegaBytes: o.omegaBytes, slaBytesPerSec: 10_000, intervalMs: o.intervalMs });
  for (const s of fleet.setups()) core.attach(s, fleet.nowMs);
  const times = new Float64Array(o.ticks);
  const logTimes = new Float64Array(o.ticks);
  let logBytes = 0;
  let solves = 0;
  let actions = 0;
  let throttled = 0;
  let maxOmega = 0;
  for (let k = 0; k < o.warmupTicks + o.ticks; k++) {
    const telemetry = fleet.step(core);
    const nowMs = fleet.nowMs;
    const t0 = performance.now();
    const r = core.tick(nowMs, telemetry);
    const t1 = performance.now();
    for (const a of r.actions) core.confirm(a);
    for (const id of r.ended) {
      core.remove(id);
      core.attach(fleet.replace(id), nowMs);
    }
    let used = 0;
    for (const t of telemetry.values()) used += t.overlayBytes ?? 0;
    if (used > maxOmega) maxOmega = used;
    if (k < o.warmupTicks) continue;
    const i = k - o.warmupTicks;
    times[i] = (t1 - t0) * 1000;
    const l0 = performance.now();
    const line = JSON.stringify({ seq: k, atMs: 0, tickUs: times[i], inputs: r.inputs, world: r.world, decision: r.decision, actions: r.actions, ended: r.ended, errors: [] });
    logTimes[i] = (performance.now() - l0) * 1000;
    logBytes += line.length;
    actions += r.actions.length;
    if (r.decision.fitted && r.decision.fitted.solvedAtSec === r.world.nowSec) solves++;
    for (const v of r.inputs) if (v.writeLimitBytesPerSec > 0) throttled++;
  }
  const sorted = Float64Array.from(times).sort();
  let sum = 0;
  for (const t of times) sum += t;
  return {
    policy: o.policy,
    vms: o.vms,
    ticks: o.ticks,
    tickUs: quantile(sorted, 0.5),
    tickUsP99: quantile(sorted, 0.99),
    tickUsMean: sum / o.ticks,
    tickUsMax: sorted[sorted.length - 1] ?? 0,
    logUsP50: quantile(Float64Array.from(logTimes).sort(), 0.5),
    logBytesMean: logBytes / o.ticks,
    solveFraction: o.policy === 'fitted' ? solves / o.ticks : null,
    actionsPerTick: actions / o.ticks,
    throttledVmsMean: throttled / o.ticks,
    completedMigrations: fleet.completed,
    maxOmegaUsedBytes: maxOmega,
  };
}
