/**
 * Seeded random scenarios, for `dpa bench simulate` and for exploring policies. Deterministic:
 * the same options give the same scenario (mulberry32 PRNG).
 */
import type { RateSpec, Scenario, ScenarioVm } from './scenario';
import { mulberry32 as prng } from '../util/random';

export interface GenerateOptions {
  /** VMs, 1..4096. */
  vms: number;
  /** Simulated seconds (maxSimSeconds), > 0. */
  simSeconds: number;
  /** Tick, ms (1..60000). */
  tickMs: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** Link speed, bytes/s (default 10 Gbit/s = 1.25 GB/s). */
  linkBytesPerSec?: number;
  /** Ω, bytes (default 10 GiB, LXD's proposed default). */
  omegaBytes?: number;
  /** Migrations start within this many seconds of each other (default 60). */
  arrivalSpreadSec?: number;
}

const GiB = 2 ** 30;

/**
 * `vms` concurrent migrations sized so that, sharing the link equally, their base copies last
 * about all of `simSeconds` (most are still in flight at the end): the many-VM load
 * `dpa bench simulate` times. Writes vary per VM (0.2 to
 * 8 MB/s, one change point); RAM 1–8 GiB with hot sets of 5–50 %.
 */
export function generateScenario(options: GenerateOptions): Scenario {
  const { vms: count, simSeconds, tickMs } = options;
  if (!Number.isInteger(count) || count < 1 || count > 4096) throw new RangeError(`vms: must be an integer from 1 to 4096 (got ${count})`);
  if (!(simSeconds > 0)) throw new RangeError(`simSeconds: must be > 0 (got ${simSeconds})`);
  if (!Number.isInteger(tickMs) || tickMs < 1 || tickMs > 60_000) throw new RangeError(`tickMs: must be an integer from 1 to 60000 (got ${tickMs})`);
  const rnd = prng(options.seed ?? 1);
  const link = options.linkBytesPerSec ?? 1.25e9;
  const spread = options.arrivalSpreadSec ?? 60;
  const perVmShare = link / count;
  const vms: ScenarioVm[] = [];
  for (let i = 0; i < count; i++) {
    const ramGiB = 1 + Math.floor(rnd() * 8);
    const ramPages = (ramGiB * GiB) / 4096;
    // Sized to keep the migration in flight for (most of) the whole run: the load being timed.
    const disk = Math.round(perVmShare * simSeconds * (0.9 + 0.6 * rnd()));
    const w0 = Math.round(2e5 + rnd() * 8e6);
    const diskWrites: RateSpec = rnd() < 0.5 ? { bytesPerSec: w0 } : { points: [[0, w0], [Math.round(rnd() * simSeconds * 0.5), Math.round(2e5 + rnd() * 8e6)]] };
    vms.push({
      id: `vm${i}`,
      startSec: Math.round(rnd() * spread * 10) / 10,
      diskBytes: Math.max(GiB, disk),
      ramBytes: ramGiB * GiB,
      diskWrites,
      ramDirty: { pagesPerSec: Math.round(500 + rnd() * 20_000), hotPages: Math.max(1, Math.round(ramPages * (0.05 + 0.45 * rnd()))) },
    });
  }
  const omegaBytes = options.omegaBytes ?? 10 * GiB;
  return {
    version: 1,
    name: `generated-${count}vms-seed${options.seed ?? 1}`,
    description: `${count} migrations over ${(link / 1e9).toFixed(2)} GB/s, generated (seed ${options.seed ?? 1})`,
    omegaBytes,
    slaBytesPerSec: 10_000,
    tickMs,
    maxSimSeconds: simSeconds,
    link: { bytesPerSec: link },
    staticBinBytes: omegaBytes / count,
    vms,
  };
}

export interface RandomScenarioOptions {
  /** Ω range, bytes (log-uniform); default 1 GiB .. 16 GiB around LXD's proposed 10 GiB. */
  omegaMinBytes?: number;
  omegaMaxBytes?: number;
  /** Most VMs (1..64, default 5). */
  maxVms?: number;
  /** Tick, ms (default 200). */
  tickMs?: number;
}

function logUniform(rnd: () => number, lo: number, hi: number): number {
  return Math.exp(Math.log(lo) + rnd() * (Math.log(hi) - Math.log(lo)));
}

function randomRate(rnd: () => number, lo: number, hi: number): RateSpec {
  if (rnd() < 0.6) return { bytesPerSec: Math.round(logUniform(rnd, lo, hi)) };
  const points: Array<[number, number]> = [[0, Math.round(logUniform(rnd, lo, hi))]];
  let t = 0;
  const changes = 1 + Math.floor(rnd() * 3);
  for (let k = 0; k < changes; k++) {
    t += Math.round(10 + rnd() * 400);
    points.push([t, Math.round(logUniform(rnd, lo, hi))]);
  }
  return { points };
}

/**
 * A small random scenario for checking policies against each other (tests and
 * `dpa simulate --random`): 1..maxVms VMs starting within 5 minutes; disks 1–20 GiB; RAM
 * 0.5–8 GiB with 0–30 000 dirty pages/s over a hot set of 1–51 % of RAM; disk writes 0.2–50 MB/s
 * (15 % of guests idle), constant or with 1–3 steps; a link of 100 MB/s–1.25 GB/s, constant or
 * with 1–3 steps; Ω log-uniform in the given range. Deterministic in `seed`.
 */
export function randomScenario(seed: number, options: RandomScenarioOptions = {}): Scenario {
  const rnd = prng(seed);
  const maxVms = options.maxVms ?? 5;
  const n = 1 + Math.floor(rnd() * maxVms);
  const vms: ScenarioVm[] = [];
  for (let i = 0; i < n; i++) {
    const ramBytes = Math.round(logUniform(rnd, 512, 8192)) * 2 ** 20;
    const pages = Math.floor(ramBytes / 4096);
    vms.push({
      id: `v${i}`,
      startSec: Math.round(rnd() * 300),
      diskBytes: Math.round(logUniform(rnd, 1, 20) * GiB),
      ramBytes,
      diskWrites: rnd() < 0.15 ? { bytesPerSec: 0 } : randomRate(rnd, 2e5, 5e7),
      ramDirty: { pagesPerSec: Math.round(rnd() * 30_000), hotPages: Math.max(1, Math.round(pages * (0.01 + rnd() * 0.5))) },
    });
  }
  const omegaBytes = Math.round(logUniform(rnd, options.omegaMinBytes ?? GiB, options.omegaMaxBytes ?? 16 * GiB));
  const link = randomRate(rnd, 1e8, 1.25e9);
  return {
    version: 1,
    name: `random-${seed}`,
    omegaBytes,
    slaBytesPerSec: 10_000,
    tickMs: options.tickMs ?? 200,
    maxSimSeconds: 6000,
    link,
    staticBinBytes: omegaBytes / n,
    vms,
  };
}
