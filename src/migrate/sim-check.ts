/**
 * Simulator vs lab: one scenario (the simulator's own file format, scaled to the lab) run in the
 * discrete-time simulator (src/sim/) and on real parts — QEMU 7.2 TCG guests whose workloads write
 * at the scenario's rates, LXD-shaped migrations started at the scenario's start times over ONE
 * tbf link of the scenario's speed, overlays in ONE Ω tmpfs of the scenario's size — and each VM's
 * completion time (its migration's start to its end) compared, phase by phase.
 *
 * ```
 *  host netns                                     lab netns (one shaped veth)
 *  K source LabVms (TCG, raw disks)   ──────►     K IncomingVms (-incoming defer), K base receivers
 *  one Ω tmpfs: the K overlays share it           (NBD port 10809+i, migration port 4444+i)
 * ```
 *
 * Policy: `unthrottled` in both, with an Ω the simulator says is never full (checked before the
 * lab runs). This compares the simulator's migration and link model with QEMU — the thing the
 * simulator's policy comparisons rest on — without the governor's actuation (a QMP throttle that
 * acts a tick late, queued writes passing in bursts) in the lab run: that is what
 * `dpa lab migrate-concurrent` measures. `fitted` with an Ω this large sets no throttle either in
 * the simulator, but it re-weights the link 1000:1 towards migrations past their bulk copy, which
 * in the lab would be the governor's max-bandwidth settings: a second experiment, not this one.
 *
 * What the simulator is fed, all measured before the first migration starts, none from a migration:
 * - the link: TCP goodput of one stream across the tbf link (measureThroughput, 1 s);
 * - each VM's RAM: the guest's real RAM size (guestMib + the TCG migration pad) and its zero-page
 *   share from a scan of its RAM (/proc/PID/mem) once its workloads run;
 * - disk sizes, write rates, RAM dirty rates, hot sets, start times: the scenario's (the lab guests
 *   run exactly those);
 * - fixed costs per phase and the TCP ramp (LAB_MODEL): constants of this lab (docs/BENCHMARKS.md
 *   "Simulator vs lab"); a run never tunes its own.
 *
 * The link: one tbf-shaped veth by default with per-flow fair queueing (LinkQueue 'fair'), which
 * is how the simulator shares a link among the streams in flight. On a FIFO ('fifo') TCP shares
 * it as it happens to: a stream that joins late can be held to a fraction of its share for
 * seconds (its congestion window stuck after an early loss while older streams keep theirs),
 * differently in every run.
 * The simulation runs before the migrations start.
 */
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { buildGuestImage, type GuestImage } from '../lab/guest-image';
import type { DiskSummary, MemSummary } from '../lab/guest-protocol';
import { scanZeroPageShare } from '../lab/guest-ram';
import { createTopology, measureThroughput, spawnInNs, type Topology } from '../lab/netns';
import { createOmega, watchLeastFree, type Omega } from '../lab/omega';
import { RAM_PAD_KIB_FOR_TCG_MIGRATION } from '../lab/qemu-args';
import { IncomingVm } from '../lab/target';
import { LabVm } from '../lab/vm';
import { unthrottledPolicy } from '../policy/unthrottled';
import type { SimMigrationModel, SimPhase } from '../sim/migration';
import { simulate, type SimOutput } from '../sim/run';
import { loadScenario, ScenarioError, type Scenario } from '../sim/scenario';
import { spawnBaseReceiver, type BaseReceiver } from './base-copy';
import { quantile } from '../util/quantile';
import { verificationPassed, verifyGuest } from './lab';
import { DEFAULT_MIGRATION_PORT, DEFAULT_NBD_PORT, LAB_BASE_COPY_PORT, LiveMigration } from './migration';
import type { MigrationPhase, MigrationResult } from './types';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;
const CLUSTER_BYTES = 65536;

/** Policies the check can run in both worlds. */
export const SIM_CHECK_POLICIES = ['unthrottled'] as const;
export type SimCheckPolicy = (typeof SIM_CHECK_POLICIES)[number];

/**
 * The lab's constants for the simulator's migration model (SimMigrationModel), s: fixed costs of
 * one LXD-shaped lab migration (src/migrate/migration.ts) beyond moving bytes — QMP round trips,
 * qemu-img, NBD and job set-up, the 100 ms polls that notice a phase's end, the target's start —
 * and the time a new TCP stream takes to win its share of the link from streams already on it.
 * Fixed costs from the phase times of a migration alone. The ramp depends on how the link queues:
 * on the fair link (the default here) a new stream is served its share from its first packets and
 * only its slow start is left, 0.25 s; on a FIFO (LinkQueue 'fifo', FIFO_STREAM_RAMP_SEC) a new
 * stream waits for the old ones' congestion windows to shrink, which takes 0–4 s run to run
 * (docs/BENCHMARKS.md "Simulator vs lab"). A run never tunes its own comparison.
 */
export const LAB_MODEL: Readonly<Required<Omit<SimMigrationModel, 'zeroPageFraction'>>> = Object.freeze({
  setupSec: 0.03,
  mirrorSetupSec: 0.12,
  ramSetupSec: 0.1,
  switchoverSec: 0.25,
  streamRampSec: 0.25,
});

/** LAB_MODEL.streamRampSec on a FIFO link: the least mean |error| over 13 recorded runs. */
export const FIFO_STREAM_RAMP_SEC = 2.5;

/** What the lab can reproduce of a scenario (on 2 cores, TCG guests). */
export const LAB_SCENARIO_LIMITS = {
  vms: [1, 4],
  startSec: [0, 120],
  diskMib: [8, 256],
  guestMib: [96, 512],
  diskWriteBytesPerSec: [0, 16 * MiB],
  pagesPerSec: [0, 20_000],
  hotMib: [0, 64],
  linkMbit: [10, 1000],
  omegaMib: [1, 4096],
} as const;

export interface SimCheckOptions {
  /** The scenario, or the path of its JSON file (docs/scenario-format.md), scaled to the lab (checkLabScenario). */
  scenario: Scenario | string;
  /** Policy run in both worlds (default and only: 'unthrottled'). */
  policy?: SimCheckPolicy;
  /** Overrides of the model constants fed to the simulator, s each 0..60 (default LAB_MODEL). */
  labModel?: Partial<typeof LAB_MODEL>;
  /** Each migration fails (and rolls back) if not done by then, s (10..3600; default 180). */
  migrationTimeoutS?: number;
  /** tbf queue of the lab link, ms of the link's rate (1..1000; default 50, the lab topology's). */
  linkLatencyMs?: number;
  /** How the lab link queues (TopologyOptions.queue; default 'fair', as the simulator shares it). */
  linkQueue?: 'fifo' | 'fair';
  /** Lab runs, each on fresh guests, link and Ω (1..5; default 1): the lab is noisy, the simulator is not. */
  runs?: number;
  /** Also report each lab migration's progress every 100 ms (SimCheckVm.trace), for diagnosis. */
  trace?: boolean;
  guest?: GuestImage;
  /** Progress notes (one line each, for humans). */
  onNote?(line: string): void;
  signal?: AbortSignal;
}

/** Phase durations, s: setup (capabilities, overlay), base copy, mirror to ready, RAM pre-copy, switchover. */
export interface PhaseParts {
  setup: number;
  base: number;
  mirror: number;
  ram: number;
  switchover: number;
}

export interface SimCheckVm {
  id: string;
  startSec: number;
  /** Simulated completion time: its start to its end, s (null: did not finish in the simulation). */
  simulatedSec: number | null;
  /** Lab completion time: LiveMigration.run() start to end, s. */
  labSec: number;
  /** Signed (simulated − lab) / lab × 100 (null if either did not complete). */
  errorPct: number | null;
  simulatedParts: PhaseParts | null;
  labParts: PhaseParts;
  /** The lab migration's end state. */
  phase: MigrationResult['phase'];
  failure?: string;
  /** Zero-page share of its RAM from the scan before the migrations, 0..1 (fed to the simulator). */
  zeroPageFraction: number;
  /** What the lab guest really did during its migration: disk bytes/s and page writes/s (its counters over its migration). */
  achieved: { diskWriteBytesPerSec: number; pagesPerSec: number };
  /** Overlay peak in Ω (lab) and mirror bytes (lab), bytes. */
  overlayPeakBytes: number;
  mirrorBytes: number;
  /** QEMU's pre-copy: dirty-bitmap syncs, bytes sent, and the auto-converge throttle seen (%; 0 = none). */
  ram: { syncs: number; transferredBytes: number; maxCpuThrottlePct: number } | null;
  verified: boolean;
  verifyError?: string;
  /** With `trace`: [s since the first migration's start, phase, base bytes acknowledged, RAM bytes sent, mirror offset]. */
  trace?: Array<[number, string, number, number, number]>;
}

/** One lab run (fresh guests, link, Ω) and the simulation fed with what it measured. */
export interface SimCheckRun {
  perVm: SimCheckVm[];
  /** max |errorPct| and its nearest-rank median (null if some VM did not complete in both). */
  maxErrorPct: number | null;
  p50ErrorPct: number | null;
  /** Every guest completed and checked every page and block it wrote, on its target. */
  dataVerified: boolean;
  /** Inputs the simulator got. */
  inputs: {
    linkMbit: number;
    /** How the lab link queued. */
    linkQueue: 'fifo' | 'fair';
    linkBytesPerSec: number;
    ramBytes: Record<string, number>;
    zeroPageFraction: Record<string, number>;
    labModel: typeof LAB_MODEL;
  };
  /** The simulated scenario as run (link and RAM replaced by the measured values). */
  simulatedScenario: Scenario;
  lab: { overflow: boolean; omegaMinFreeBytes: number; wallSec: number };
  /** 1-minute load average at the start and at the end of the lab run. */
  loadAverage: { start: number; end: number };
}

/** One VM over all runs: means, and each run's figures. */
export interface SimCheckVmSummary {
  id: string;
  startSec: number;
  /** Mean simulated completion time over the runs (each fed with its run's measurements), s; null if one did not finish. */
  simulatedSec: number | null;
  /** Mean lab completion time, s (over the runs where it completed). */
  labSec: number;
  /** Signed (simulatedSec − labSec) / labSec × 100; null unless it completed in every run and simulation. */
  errorPct: number | null;
  simulatedParts: PhaseParts | null;
  labParts: PhaseParts;
  /** Each run's lab completion time, s, and its signed error against that run's simulation, %. */
  labRunsSec: number[];
  runErrorPct: Array<number | null>;
  /** Completed and verified on its target in every run. */
  verified: boolean;
}

export interface SimCheckReport {
  scenario: string;
  policy: SimCheckPolicy;
  runs: number;
  perVm: SimCheckVmSummary[];
  /** max |errorPct| over the VMs (means over the runs) and its nearest-rank median; null if some VM has none. */
  maxErrorPct: number | null;
  p50ErrorPct: number | null;
  /** Each run's own max |error| (its simulation against its lab times). */
  runMaxErrorPct: Array<number | null>;
  /** Every guest of every run completed and checked every page and block it wrote, on its target. */
  dataVerified: boolean;
  /** 1-minute load average before the first run and after the last. */
  loadAverage: { start: number; end: number };
  /** The runs in full (inputs, phases, workload rates, QEMU's counters). */
  details: SimCheckRun[];
}

function fail(path: string, problem: string): never {
  throw new ScenarioError(path, `${problem} (dpa lab sim-check)`);
}

function wholeMib(path: string, bytes: number, [min, max]: readonly [number, number]): number {
  const mib = bytes / MiB;
  if (!Number.isInteger(mib) || mib < min || mib > max) fail(path, `must be a whole number of MiB from ${min} to ${max} MiB for the lab (got ${bytes} bytes)`);
  return mib;
}

/** The lab's reading of one scenario VM. */
export interface LabVmPlan {
  id: string;
  startSec: number;
  diskMib: number;
  guestMib: number;
  /** Disk workload: bytes per write and writes/s (0 writes/s: no disk workload). */
  blockBytes: number;
  blocksPerSec: number;
  /** Memory workload: buffer MiB, hot pages, page writes/s (0: none). */
  memMib: number;
  hotPages: number;
  pagesPerSec: number;
}

export interface LabPlan {
  linkMbit: number;
  omegaBytes: number;
  vms: LabVmPlan[];
}

/**
 * Checks that the lab can run `s` as written and says how: ScenarioError (a RangeError) naming the
 * JSON path of the first field it cannot reproduce. The lab needs constant rates (the guest
 * workloads run at one rate), whole MiB sizes, and sizes and rates a TCG guest on 2 cores sustains.
 */
export function checkLabScenario(s: Scenario): LabPlan {
  if (!('bytesPerSec' in s.link)) fail('link.points', 'the lab link has one speed; give {bytesPerSec}');
  const linkMbit = (s.link.bytesPerSec * 8) / 1e6;
  const [lmin, lmax] = LAB_SCENARIO_LIMITS.linkMbit;
  if (linkMbit < lmin || linkMbit > lmax) fail('link.bytesPerSec', `must be ${lmin}..${lmax} Mbit/s for the lab (got ${linkMbit} Mbit/s)`);
  const omegaMib = s.omegaBytes / MiB;
  if (omegaMib < LAB_SCENARIO_LIMITS.omegaMib[0] || omegaMib > LAB_SCENARIO_LIMITS.omegaMib[1]) {
    fail('omegaBytes', `must be ${LAB_SCENARIO_LIMITS.omegaMib[0]}..${LAB_SCENARIO_LIMITS.omegaMib[1]} MiB for the lab (got ${s.omegaBytes} bytes)`);
  }
  const [vmin, vmax] = LAB_SCENARIO_LIMITS.vms;
  if (s.vms.length < vmin || s.vms.length > vmax) fail('vms', `the lab runs ${vmin} to ${vmax} guests on this machine (got ${s.vms.length})`);
  const vms = s.vms.map((vm, i): LabVmPlan => {
    const p = `vms[${i}]`;
    if (vm.startSec > LAB_SCENARIO_LIMITS.startSec[1]) fail(`${p}.startSec`, `must be ≤ ${LAB_SCENARIO_LIMITS.startSec[1]} s for the lab (got ${vm.startSec})`);
    const diskMib = wholeMib(`${p}.diskBytes`, vm.diskBytes, LAB_SCENARIO_LIMITS.diskMib);
    const guestMib = wholeMib(`${p}.ramBytes`, vm.ramBytes, LAB_SCENARIO_LIMITS.guestMib);
    if (!('bytesPerSec' in vm.diskWrites)) fail(`${p}.diskWrites.points`, 'the lab guest writes at one constant rate; give {bytesPerSec}');
    const w = vm.diskWrites.bytesPerSec;
    const [wmin, wmax] = LAB_SCENARIO_LIMITS.diskWriteBytesPerSec;
    if (w % PAGE_BYTES !== 0 || w < wmin || w > wmax) fail(`${p}.diskWrites.bytesPerSec`, `must be a multiple of 4096 from ${wmin} to ${wmax} for the lab (got ${w})`);
    // Whole qcow2 clusters when the rate allows: each write then grows the overlay by exactly its size.
    const blockBytes = w > 0 && w % CLUSTER_BYTES === 0 ? CLUSTER_BYTES : PAGE_BYTES;
    const { pagesPerSec, hotPages } = vm.ramDirty;
    if (pagesPerSec > LAB_SCENARIO_LIMITS.pagesPerSec[1]) fail(`${p}.ramDirty.pagesPerSec`, `must be ≤ ${LAB_SCENARIO_LIMITS.pagesPerSec[1]} for the lab (got ${pagesPerSec})`);
    const memMib = Math.max(1, Math.ceil((hotPages * PAGE_BYTES) / MiB));
    if (pagesPerSec > 0 && memMib > LAB_SCENARIO_LIMITS.hotMib[1]) fail(`${p}.ramDirty.hotPages`, `must be ≤ ${(LAB_SCENARIO_LIMITS.hotMib[1] * MiB) / PAGE_BYTES} pages (${LAB_SCENARIO_LIMITS.hotMib[1]} MiB) for the lab (got ${hotPages})`);
    if (pagesPerSec > 0 && memMib > guestMib / 2) fail(`${p}.ramDirty.hotPages`, `the hot set must fit in half the guest's RAM beside its kernel (got ${hotPages} pages for ${guestMib} MiB)`);
    return { id: vm.id, startSec: vm.startSec, diskMib, guestMib, blockBytes, blocksPerSec: w / blockBytes, memMib, hotPages, pagesPerSec };
  });
  return { linkMbit, omegaBytes: Math.ceil(omegaMib) * MiB, vms };
}

export function checkSimCheckOptions(o: SimCheckOptions): void {
  if (typeof o !== 'object' || o === null) throw new TypeError('options: must be an object');
  if (typeof o.scenario !== 'string' && (typeof o.scenario !== 'object' || o.scenario === null)) throw new TypeError('scenario: must be a file path or a parsed scenario');
  if (typeof o.scenario === 'string' && o.scenario.length === 0) throw new TypeError('scenario: must be a non-empty file path');
  if (o.policy !== undefined && !SIM_CHECK_POLICIES.includes(o.policy)) {
    throw new RangeError(`policy: must be one of ${SIM_CHECK_POLICIES.join(', ')} (got ${JSON.stringify(o.policy)})`);
  }
  if (o.linkQueue !== undefined && o.linkQueue !== 'fair' && o.linkQueue !== 'fifo') throw new RangeError(`linkQueue: must be 'fair' or 'fifo' (got ${JSON.stringify(o.linkQueue)})`);
  if (o.labModel !== undefined) {
    if (typeof o.labModel !== 'object' || o.labModel === null) throw new TypeError('labModel: must be an object');
    for (const [k, v] of Object.entries(o.labModel)) {
      if (!(k in LAB_MODEL)) throw new RangeError(`labModel.${k}: unknown (allowed: ${Object.keys(LAB_MODEL).join(', ')})`);
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 60) throw new RangeError(`labModel.${k}: must be a number of seconds from 0 to 60 (got ${String(v)})`);
    }
  }
  if (o.runs !== undefined && (!Number.isInteger(o.runs) || o.runs < 1 || o.runs > 5)) throw new RangeError(`runs: must be an integer from 1 to 5 (got ${String(o.runs)})`);
  if (o.linkLatencyMs !== undefined && (!Number.isInteger(o.linkLatencyMs) || o.linkLatencyMs < 1 || o.linkLatencyMs > 1000)) {
    throw new RangeError(`linkLatencyMs: must be an integer from 1 to 1000 (got ${String(o.linkLatencyMs)})`);
  }
  if (o.migrationTimeoutS !== undefined && (!Number.isInteger(o.migrationTimeoutS) || o.migrationTimeoutS < 10 || o.migrationTimeoutS > 3600)) {
    throw new RangeError(`migrationTimeoutS: must be an integer from 10 to 3600 (got ${String(o.migrationTimeoutS)})`);
  }
}

/** Reads the scenario (a path or a parsed one) and checks it for the lab. */
export function loadLabScenario(scenario: Scenario | string): { scenario: Scenario; plan: LabPlan } {
  let s: Scenario;
  if (typeof scenario === 'string') {
    try {
      s = loadScenario(scenario);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT' || e.code === 'EACCES' || e.code === 'EISDIR') throw new RangeError(`scenario: cannot read ${scenario}: ${e.message}`);
      throw err;
    }
  } else s = scenario;
  return { scenario: s, plan: checkLabScenario(s) };
}

/** Phase durations from phase entry times (s); a phase not entered lasts 0. */
function partsFromStarts(starts: Partial<Record<SimPhase, number>>, setupSec: number): PhaseParts | null {
  const order: SimPhase[] = ['base', 'mirror', 'ram', 'switchover', 'done'];
  if (starts.done === undefined || starts.base === undefined) return null;
  const at = (k: number): number => {
    for (let j = k; j < order.length; j++) if (starts[order[j]!] !== undefined) return starts[order[j]!]!;
    return starts.done!;
  };
  const d = (k: number): number => (starts[order[k]!] === undefined ? 0 : at(k + 1) - at(k));
  // The simulator's base phase begins with the setup's fixed cost.
  return { setup: setupSec, base: d(0) - setupSec, mirror: d(1), ram: d(2), switchover: d(3) };
}

function labParts(ms: Partial<Record<MigrationPhase, number>>): PhaseParts {
  const s = (k: MigrationPhase): number => (ms[k] ?? 0) / 1000;
  return { setup: s('setup'), base: s('base'), mirror: s('mirror'), ram: s('ram'), switchover: s('switchover') };
}

/**
 * Runs the scenario in the simulator with the lab's measured inputs (exported for tests: the same
 * inputs with a wrong link speed must miss).
 */
export function simulateWithLabInputs(
  scenario: Scenario,
  inputs: { linkBytesPerSec: number; ramBytes: Record<string, number>; zeroPageFraction: Record<string, number>; labModel: typeof LAB_MODEL },
): { output: SimOutput; scenario: Scenario; perVm: Record<string, { simulatedSec: number | null; parts: PhaseParts | null }> } {
  const sim: Scenario = {
    ...scenario,
    link: { bytesPerSec: inputs.linkBytesPerSec },
    vms: scenario.vms.map((vm) => ({ ...vm, ramBytes: inputs.ramBytes[vm.id] ?? vm.ramBytes })),
  };
  const migrationModel: Record<string, SimMigrationModel> = {};
  for (const vm of sim.vms) migrationModel[vm.id] = { ...inputs.labModel, zeroPageFraction: inputs.zeroPageFraction[vm.id] ?? 0 };
  const output = simulate(sim, unthrottledPolicy, { migrationModel, phaseTimes: true });
  const perVm: Record<string, { simulatedSec: number | null; parts: PhaseParts | null }> = {};
  for (const vm of sim.vms) {
    const end = output.result.completionSec[vm.id];
    const starts = output.phaseStartSec![vm.id]!;
    perVm[vm.id] = { simulatedSec: end === null || end === undefined ? null : end - vm.startSec, parts: partsFromStarts(starts, inputs.labModel.setupSec) };
  }
  return { output, scenario: sim, perVm };
}

/** Signed (sim − lab) / lab × 100 per VM, and max / p50 of the magnitudes (null if any is missing). */
export function compareTimes(rows: Array<{ simulatedSec: number | null; labSec: number | null }>): { errorPct: Array<number | null>; maxErrorPct: number | null; p50ErrorPct: number | null } {
  const errorPct = rows.map((r) => (r.simulatedSec === null || r.labSec === null || !(r.labSec > 0) ? null : ((r.simulatedSec - r.labSec) / r.labSec) * 100));
  const abs = errorPct.map((e) => (e === null ? null : Math.abs(e)));
  if (abs.some((e) => e === null) || abs.length === 0) return { errorPct, maxErrorPct: null, p50ErrorPct: null };
  const vals = abs as number[];
  return { errorPct, maxErrorPct: Math.max(...vals), p50ErrorPct: quantile(vals, 0.5) };
}

interface Slot {
  plan: LabVmPlan;
  i: number;
  source: LabVm;
  target?: IncomingVm;
  receiver?: BaseReceiver;
  zero: number;
  ramBytes: number;
  maxThrottle: number;
  memAtStart?: MemSummary;
  diskAtStart?: DiskSummary;
  /** Workload counters right after its migration ended, and when. */
  atEnd?: { mem?: MemSummary; disk?: DiskSummary; sec: number };
  trace: NonNullable<SimCheckVm['trace']>;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal?.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

function meanParts(ps: readonly PhaseParts[]): PhaseParts {
  const k = ['setup', 'base', 'mirror', 'ram', 'switchover'] as const;
  return Object.fromEntries(k.map((x) => [x, mean(ps.map((p) => p[x]))])) as unknown as PhaseParts;
}

/** Per VM over runs: means and each run's figures (exported for tests). */
export function summarizeRuns(runs: readonly SimCheckRun[]): Pick<SimCheckReport, 'perVm' | 'maxErrorPct' | 'p50ErrorPct' | 'runMaxErrorPct' | 'dataVerified'> {
  const perVm = runs[0]!.perVm.map((v0, j): SimCheckVmSummary => {
    const rows = runs.map((r) => r.perVm[j]!);
    const done = rows.filter((v) => v.phase === 'completed');
    const sims = rows.map((v) => v.simulatedSec);
    const allSim = sims.every((x): x is number => x !== null);
    const simParts = rows.map((v) => v.simulatedParts);
    const labSec = done.length ? mean(done.map((v) => v.labSec)) : mean(rows.map((v) => v.labSec));
    const simulatedSec = allSim ? mean(sims as number[]) : null;
    return {
      id: v0.id,
      startSec: v0.startSec,
      simulatedSec,
      labSec,
      errorPct: simulatedSec !== null && done.length === rows.length ? ((simulatedSec - labSec) / labSec) * 100 : null,
      simulatedParts: simParts.every((p): p is PhaseParts => p !== null) ? meanParts(simParts as PhaseParts[]) : null,
      labParts: meanParts(rows.map((v) => v.labParts)),
      labRunsSec: rows.map((v) => v.labSec),
      runErrorPct: rows.map((v) => v.errorPct),
      verified: rows.every((v) => v.verified),
    };
  });
  const cmp = compareTimes(perVm.map((v) => ({ simulatedSec: v.simulatedSec, labSec: v.errorPct === null ? null : v.labSec })));
  return {
    perVm,
    maxErrorPct: cmp.maxErrorPct,
    p50ErrorPct: cmp.p50ErrorPct,
    runMaxErrorPct: runs.map((r) => r.maxErrorPct),
    dataVerified: runs.every((r) => r.dataVerified),
  };
}

/** `dpa lab sim-check`: the scenario in the simulator and in the lab, completion times compared. Root, QEMU. */
export async function runSimCheck(o: SimCheckOptions): Promise<SimCheckReport> {
  checkSimCheckOptions(o);
  const { scenario, plan } = loadLabScenario(o.scenario);
  const policy: SimCheckPolicy = o.policy ?? 'unthrottled';
  // The comparison assumes nothing is throttled or paused: Ω must hold every overlay at once.
  const probe = simulate(scenario, unthrottledPolicy).result;
  if (probe.overflowed) fail('omegaBytes', `too small for the unthrottled comparison: the simulator fills Ω (peak demand over ${Math.round(probe.maxOmegaUsedBytes / MiB)} MiB)`);
  const guest = o.guest ?? (await buildGuestImage());
  const note = o.onNote ?? ((): void => undefined);
  const load0 = loadavg()[0]!;
  const details: SimCheckRun[] = [];
  const n = o.runs ?? 1;
  for (let k = 0; k < n; k++) {
    if (o.signal?.aborted) throw new Error('interrupted');
    if (n > 1) note(`run ${k + 1} of ${n}`);
    details.push(await runOnce(o, scenario, plan, guest, note));
  }
  return { scenario: scenario.name, policy, runs: n, ...summarizeRuns(details), loadAverage: { start: load0, end: loadavg()[0]! }, details };
}

/** One lab run on fresh guests, link and Ω, and the simulation fed with what it measured. */
async function runOnce(o: SimCheckOptions, scenario: Scenario, plan: LabPlan, guest: GuestImage, note: (line: string) => void): Promise<SimCheckRun> {
  const labModel = { ...LAB_MODEL, ...(o.linkQueue === 'fifo' ? { streamRampSec: FIFO_STREAM_RAMP_SEC } : {}), ...(o.labModel ?? {}) };
  const timeoutMs = (o.migrationTimeoutS ?? 180) * 1000;
  const load0 = loadavg()[0]!;
  const topology: Topology = await createTopology({
    linkMbit: plan.linkMbit,
    queue: o.linkQueue ?? 'fair',
    ...(o.linkLatencyMs !== undefined ? { latencyMs: o.linkLatencyMs } : {}),
  });
  const slots: Slot[] = [];
  let omega: Omega | undefined;
  try {
    const link = await measureThroughput(topology, { durationMs: 1000, warmupMs: 300 });
    note(`link: ${link.mbitPerSec.toFixed(1)} Mbit/s goodput measured (tbf ${plan.linkMbit} Mbit/s)`);
    omega = await createOmega({ sizeBytes: plan.omegaBytes });
    note(`booting ${plan.vms.length} guests`);
    const booted = await Promise.allSettled(
      plan.vms.map((v, i) =>
        LabVm.start({ guest, guestMib: v.guestMib, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION, disk: { sizeMib: v.diskMib, format: 'raw' }, name: `dpa-sc${i}`, startTimeoutMs: 60_000 }),
      ),
    );
    booted.forEach((r, i) => {
      if (r.status === 'fulfilled') slots.push({ plan: plan.vms[i]!, i, source: r.value, zero: 0, ramBytes: 0, maxThrottle: 0, trace: [] });
    });
    const bad = booted.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
    await Promise.all(slots.map((sl) => sl.source.ready(120_000)));
    for (const sl of slots) {
      sl.target = await IncomingVm.start({ guest, guestMib: sl.plan.guestMib, ramPadKib: sl.source.ramPadKib, disk: { sizeMib: sl.plan.diskMib }, topology, name: `dpa-sc${sl.i}-in` });
      sl.receiver = await spawnBaseReceiver({ host: topology.nsAddr, port: LAB_BASE_COPY_PORT + sl.i, imagePath: sl.target.diskPath!, spawn: (cmd, args, opts) => spawnInNs(topology, cmd, args, opts) });
    }
    // Workloads run from here on (a write before a VM's migration lands in its base, which the
    // base copy carries); each guest's RAM is scanned once its buffer is written.
    for (const sl of slots) {
      const v = sl.plan;
      if (v.pagesPerSec > 0) await sl.source.memStart({ mib: v.memMib, hotPages: v.hotPages, pattern: 'uniform', ratePagesPerSec: v.pagesPerSec, seed: sl.i + 1 });
      if (v.blocksPerSec > 0) {
        await sl.source.diskStart({ blockBytes: v.blockBytes, regionBlocks: (v.diskMib * MiB) / v.blockBytes, blocksPerSec: v.blocksPerSec, pattern: 'sequential', mode: 'direct', seed: sl.i + 1 });
      }
    }
    for (const sl of slots) {
      const ram = sl.source.guestRam();
      sl.zero = scanZeroPageShare(ram);
      sl.ramBytes = ram.ramBytes;
    }
    const inputs: SimCheckRun['inputs'] = {
      linkMbit: plan.linkMbit,
      linkQueue: o.linkQueue ?? 'fair',
      linkBytesPerSec: link.bytesPerSec,
      ramBytes: Object.fromEntries(slots.map((sl) => [sl.plan.id, sl.ramBytes])),
      zeroPageFraction: Object.fromEntries(slots.map((sl) => [sl.plan.id, sl.zero])),
      labModel,
    };
    // Simulated before anything migrates: nothing of the lab run can leak into it.
    const sim = simulateWithLabInputs(scenario, inputs);
    if (sim.output.result.overflowed) fail('omegaBytes', 'too small for the unthrottled comparison with the measured inputs: the simulator fills Ω');
    note(`simulated: ${slots.map((sl) => `${sl.plan.id} ${sim.perVm[sl.plan.id]!.simulatedSec?.toFixed(2) ?? 'unfinished'} s`).join(', ')}`);

    const watch = watchLeastFree(omega);
    const t0 = performance.now();
    const runs = slots.map(async (sl) => {
      await sleep(t0 + sl.plan.startSec * 1000 - performance.now(), o.signal);
      if (o.signal?.aborted) throw new Error('interrupted');
      const q = await sl.source.channel.request<{ mem?: MemSummary; disk?: DiskSummary }>('status', {}, { timeoutMs: 10_000 }).catch(() => undefined);
      if (q?.mem) sl.memAtStart = q.mem;
      if (q?.disk) sl.diskAtStart = q.disk;
      const m = new LiveMigration({
        source: sl.source.qmp,
        target: sl.target!.qmp,
        omegaDir: omega!.path,
        targetHost: topology.nsAddr,
        baseCopy: { host: sl.receiver!.host, port: sl.receiver!.port },
        nbdPort: DEFAULT_NBD_PORT + sl.i,
        migrationPort: DEFAULT_MIGRATION_PORT + sl.i,
        id: `sc${sl.i}`,
        progressIntervalMs: 100,
        timeoutMs,
        stallTimeoutMs: 30_000,
      });
      m.on('progress', (p) => {
        const th = p.migration?.cpuThrottlePercent ?? 0;
        if (th > sl.maxThrottle) sl.maxThrottle = th;
        if (o.trace) sl.trace.push([Math.round(performance.now() - t0) / 1000, p.phase, p.baseBytesCopied, p.ram?.transferred ?? 0, p.mirror?.offset ?? 0]);
      });
      note(`${sl.plan.id}: migration starts at ${((performance.now() - t0) / 1000).toFixed(2)} s`);
      const abort = (): void => void m.abort('interrupted');
      o.signal?.addEventListener('abort', abort, { once: true });
      const r = await m.run();
      o.signal?.removeEventListener('abort', abort);
      // The guest runs on wherever it ended up: its counters now end its migration's share.
      const ch = r.phase === 'completed' ? sl.target!.channel : sl.source.channel;
      const st = await ch.request<{ mem?: MemSummary; disk?: DiskSummary }>('status', {}, { timeoutMs: 10_000 }).catch(() => undefined);
      sl.atEnd = { ...(st?.mem ? { mem: st.mem } : {}), ...(st?.disk ? { disk: st.disk } : {}), sec: r.totalMs / 1000 };
      note(`${sl.plan.id}: ${r.phase} in ${(r.totalMs / 1000).toFixed(2)} s`);
      return r;
    });
    const results = await Promise.all(runs);
    const wallSec = (performance.now() - t0) / 1000;
    const omegaMinFreeBytes = await watch.stop();

    const perVm = await Promise.all(
      results.map(async (r, j): Promise<SimCheckVm> => {
        const sl = slots[j]!;
        const onTarget = r.phase === 'completed';
        const channel = onTarget ? sl.target!.channel : sl.source.channel;
        let verified = false;
        let verifyError: string | undefined;
        let achieved = { diskWriteBytesPerSec: 0, pagesPerSec: 0 };
        if (r.phase !== 'failed') {
          try {
            await channel.request<{ mem: MemSummary; disk: DiskSummary }>('quiesce', {}, { timeoutMs: 30_000 });
            const e = sl.atEnd;
            if (e) {
              achieved = {
                diskWriteBytesPerSec: e.disk ? ((e.disk.totalWrites - (sl.diskAtStart?.totalWrites ?? 0)) * e.disk.blockBytes) / e.sec : 0,
                pagesPerSec: e.mem ? (e.mem.totalWrites - (sl.memAtStart?.totalWrites ?? 0)) / e.sec : 0,
              };
            }
            const v = await verifyGuest(channel, 'all', 60_000);
            verified = onTarget && verificationPassed(v);
            if (!verificationPassed(v)) verifyError = JSON.stringify(v);
          } catch (err) {
            verifyError = (err as Error).message;
          }
        }
        const s = sim.perVm[sl.plan.id]!;
        return {
          id: sl.plan.id,
          startSec: sl.plan.startSec,
          simulatedSec: s.simulatedSec,
          labSec: r.totalMs / 1000,
          errorPct: null,
          simulatedParts: s.parts,
          labParts: labParts(r.phaseMs),
          phase: r.phase,
          ...(r.failure ? { failure: `${r.failure.phase}: ${r.failure.errorName}: ${r.failure.message}` } : {}),
          zeroPageFraction: sl.zero,
          achieved,
          overlayPeakBytes: r.overlayPeakBytes,
          mirrorBytes: r.mirrorBytes,
          ram: r.ram ? { syncs: r.ram['dirty-sync-count'], transferredBytes: r.ram.transferred, maxCpuThrottlePct: sl.maxThrottle } : null,
          verified,
          ...(verifyError !== undefined ? { verifyError } : {}),
          ...(o.trace ? { trace: sl.trace } : {}),
        };
      }),
    );
    const cmp = compareTimes(perVm.map((v) => ({ simulatedSec: v.simulatedSec, labSec: v.phase === 'completed' ? v.labSec : null })));
    perVm.forEach((v, j) => (v.errorPct = cmp.errorPct[j]!));
    return {
      perVm,
      maxErrorPct: cmp.maxErrorPct,
      p50ErrorPct: cmp.p50ErrorPct,
      dataVerified: perVm.every((v) => v.verified),
      inputs,
      simulatedScenario: sim.scenario,
      lab: { overflow: omegaMinFreeBytes < CLUSTER_BYTES, omegaMinFreeBytes, wallSec },
      loadAverage: { start: load0, end: loadavg()[0]! },
    };
  } finally {
    for (const sl of slots) {
      await sl.receiver?.kill().catch(() => undefined);
      await sl.target?.stop().catch(() => undefined);
      await sl.source.stop().catch(() => undefined);
    }
    await omega?.destroy().catch(() => undefined);
    await topology.destroy().catch(() => undefined);
  }
}
