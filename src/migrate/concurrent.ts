/**
 * Concurrent migrations into one Ω: K lab guests, each writing to its disk, migrate at once over
 * ONE tbf-shaped link into ONE Ω tmpfs — first without the governor (the baseline), then with it,
 * each run on freshly booted guests.
 *
 * ```
 *  host netns                                     lab netns (one shaped veth)
 *  K source LabVms (TCG, raw disks)   ──────►     K IncomingVms (-incoming defer), K base receivers
 *  one Ω tmpfs: the K overlays share it           (NBD port 10809+i, migration port 4444+i)
 * ```
 *
 * What a run reports, and how it is measured:
 * - overflow: a source reported BLOCK_IO_ERROR with `nospace` (an overlay write hit ENOSPC in Ω),
 *   or Ω's free space (statfs, polled every 100 ms) fell below one qcow2 cluster (64 KiB);
 * - pausedGuests: sources that QEMU paused for an I/O error (BLOCK_IO_ERROR action 'stop', or
 *   query-status 'io-error' at the end): virtio-blk's default werror=enospc stops the guest;
 * - dataVerified: each guest, where it ended up (target if completed, source if rolled back),
 *   stops its workloads and checks every page and block it wrote (guest workload `verify`);
 * - prediction: when a migration's base phase starts, src/model's remainingTime (base, mirror and
 *   pre-copy via predictPrecopy) with the measured link shared K ways, the guest's stated write
 *   rates and its RAM's zero-page share (scanned once its workloads run, as predict-check does)
 *   predicts its total time; the error is |predicted − actual| / actual. A fleet-wide prediction
 *   (the K migrations in the simulator) was tried and did no better: both models let synchronous
 *   writes take their demand from the link share, where a queue-depth-1 writer gets less.
 * - write share (the target "guest write throughput kept ≥ 80 % of what the link share allows"):
 *   per migration, `writeBytesPerSec` is what the guest's disk workload itself completed (its
 *   `totalWrites` counter read over the guest channel just before the migrations start and again
 *   the moment this migration's run() resolves, on the QEMU the guest then runs on) × block size
 *   ÷ host time between the two reads; `linkShareBytesPerSec` is the mean over the migration of
 *   U / N(t), U the link's measured TCP goodput and N(t) the migrations in flight at t (from the
 *   migrations' own start and end times); `demandBytesPerSec` is the workload's configured rate;
 *   `writeShareRatio` = write / min(demand, linkShare), and the run's `writeShareRatioMin` is the
 *   least over its migrations (null when a guest's counters could not be read, e.g. paused).
 *   A guest cannot sustainably write faster than its share of the link drains it, hence the
 *   link share as the ceiling. But LXD's overlay is never shrunk during a migration (the mirror
 *   copies it, the file keeps every cluster until the switchover), so where Ω is the binding
 *   limit the guests cannot write more than Ω holds: `omegaBoundBytesPerSec` = Ω_gov / Σ_j T_j is
 *   the equal rate at which K guests writing only new clusters would just fill the governor's Ω
 *   by the end of their migrations, and `writeAllowedRatio` = write / min(demand, linkShare,
 *   omegaBound) (`writeAllowedRatioMin` per run) says how much of what Ω and the link allowed the
 *   governor let through, `fleetWriteAllowedRatio` the same for the K guests together. It can
 *   exceed 1: overlays of migrations that end early free Ω for the others, and rewrites of
 *   allocated clusters do not grow an overlay.
 * - why a guest writes less than min(demand, U/N): per phase of each migration (`phases`), QEMU's
 *   own mean write latency on the source device (query-blockstats, every 250 ms) and the link's
 *   round trip (TCP SYN → RST across it, every 100 ms). From the mirror on, each write completes
 *   only after crossing the link, so a queue-depth-1 writer is bound by that round trip, not by
 *   U/N. Hence `writeVsUngoverned`: the governed guests' writes ÷ the same command's baseline
 *   guests' mean, when that baseline was not bound by Ω (no overflow, no paused guest) — the
 *   share of what these guests physically reach over this link.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Governor } from '../governor/governor';
import { buildGuestImage, type GuestImage } from '../lab/guest-image';
import type { DiskSummary, MemSummary } from '../lab/guest-protocol';
import { scanZeroPageShare } from '../lab/guest-ram';
import { quantile } from '../util/quantile';
import { createTopology, measureThroughput, spawnInNs, type Topology } from '../lab/netns';
import { createOmega, watchLeastFree, type Omega } from '../lab/omega';
import { RAM_PAD_KIB_FOR_TCG_MIGRATION } from '../lab/qemu-args';
import { IncomingVm } from '../lab/target';
import { LabVm } from '../lab/vm';
import { uniformHotSetCurve } from '../model/dirty-curve';
import { remainingTime } from '../model/need';
import type { QmpEvent } from '../qmp/client';
import { queryBlockstats, queryStatus } from '../qmp/commands';
import { spawnBaseReceiver, type BaseReceiver } from './base-copy';
import { verificationPassed } from './lab';
import { DEFAULT_MIGRATION_PORT, DEFAULT_NBD_PORT, LAB_BASE_COPY_PORT, LiveMigration } from './migration';
import type { MigrationProgress, MigrationResult } from './types';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;
/** qcow2's default cluster: the overlay grows by this much per newly written cluster. */
const CLUSTER_BYTES = 65536;

export interface ConcurrentOptions {
  /** Guests migrating at once, 1..8. */
  vms: number;
  /** Ω tmpfs capacity, MiB (1..65536). */
  omegaMib: number;
  /** tbf rate of the one link, Mbit/s (1..10000). */
  linkMbit: number;
  /** Guest RAM, MiB (96..1024; default 128; plus the TCG migration pad). */
  guestMib?: number;
  /** Raw root disk, MiB (8..1024; default 32). */
  diskMib?: number;
  /** Disk region each guest writes, MiB from offset 0 (1..diskMib; default diskMib − 8). */
  diskRegionMib?: number;
  /** Bytes per guest disk write, a multiple of 4096 (4096..1048576; default 65536 = one qcow2 cluster). */
  diskBlockBytes?: number;
  /** Guest disk writes per second (1..10000; default 64: 4 MiB/s with 64 KiB blocks). */
  diskWritesPerSec?: number;
  /**
   * Guest disk writes in flight (1..64, default 1): writer threads in the guest, each with one
   * O_DIRECT write outstanding (DiskWorkloadParams.queueDepth). From the mirror on every write
   * waits for a round trip over the link, so at 1 the guest's rate is bound by that latency.
   */
  diskQueueDepth?: number;
  /** How the link queues (TopologyOptions.queue; default 'fifo'). */
  linkQueue?: 'fifo' | 'fair';
  /** Guest memory workload buffer, MiB (1..64; default 8). */
  memMib?: number;
  /** Guest page writes per second (0..100000; default 500). */
  memWritePagesPerSec?: number;
  /** Which runs: both (baseline first), or one of them (default 'both'). */
  runs?: 'both' | 'baseline' | 'governed';
  /** Each migration fails (and rolls back) if not done by then, s (10..3600; default 150). */
  migrationTimeoutS?: number;
  /**
   * Ω the governor must leave unplanned, bytes (0..omega; default vms × 256 KiB): the overlays'
   * first writes land before the first throttle acts, and a queued 64 KiB write passes QEMU's
   * throttle in bursts. Measured, 3 guests: Ω 6 MiB left 52 KiB free (too tight), 8 MiB 756 KiB.
   */
  governorReserveBytes?: number;
  /** Governor period, ms (20..1000; default 100). */
  governorIntervalMs?: number;
  /** Keep the governed run's decision log (JSON lines, 0600) at this path (default: a temporary file, removed). */
  decisionLog?: string;
  /**
   * The governor plans with overlay growth, not bytes written (CoreOptions.overlayGrowth; default
   * true here): guests rewriting their region were otherwise held at γ_SLA with Ω a third free.
   */
  governorOverlayGrowth?: boolean;
  /**
   * Ungoverned run only: cap each migration's RAM stream (max-bandwidth) and mirror (job speed)
   * at this fraction of the measured link ÷ K (0.05..2; default: no cap, as LXD sets none).
   */
  ungovernedLinkFraction?: number;
  guest?: GuestImage;
  /** Progress notes (one line each, for humans). */
  onNote?(line: string): void;
  signal?: AbortSignal;
}

export const CONCURRENT_LIMITS = {
  vms: [1, 8],
  omegaMib: [1, 65536],
  linkMbit: [1, 10_000],
  guestMib: [96, 1024],
  diskMib: [8, 1024],
  diskWritesPerSec: [1, 10_000],
  diskQueueDepth: [1, 64],
  memMib: [1, 64],
  memWritePagesPerSec: [0, 100_000],
  migrationTimeoutS: [10, 3600],
  governorIntervalMs: [20, 1000],
} as const;

/** One migration of a run. */
export interface ConcurrentMigrationReport {
  id: string;
  phase: MigrationResult['phase'];
  failure?: string;
  totalMs: number;
  overlayPeakBytes: number;
  /** QEMU paused this guest for an I/O error (ENOSPC in Ω). */
  paused: boolean;
  /** BLOCK_IO_ERROR events with nospace from this source. */
  enospcEvents: number;
  verifiedOn: 'target' | 'source' | null;
  verified: boolean;
  verifyError?: string;
  /** Predicted total time at the start of the base phase, ms (null if the phase never started). */
  predictedMs: number | null;
  /** |predicted − actual| / actual × 100 (completed migrations only). */
  predictionErrorPct: number | null;
  /** Guest disk writes completed during the migration (the workload's own counter), bytes/s; null if unreadable. */
  writeBytesPerSec: number | null;
  /** Mean of U / N(t) over this migration, bytes/s (U: measured link goodput; N(t): migrations in flight). */
  linkShareBytesPerSec: number;
  /** The workload's configured write rate, bytes/s. */
  demandBytesPerSec: number;
  /** writeBytesPerSec / min(demand, linkShare); null if the write rate is unknown. */
  writeShareRatio: number | null;
  /**
   * The equal write rate at which the run's K overlays (every write a new cluster, nothing freed
   * before its migration ends) would just fill the governor's Ω: Ω_gov / Σ_j T_j, bytes/s.
   */
  omegaBoundBytesPerSec: number;
  /** writeBytesPerSec / min(demand, linkShare, omegaBound): the share of what Ω AND the link allowed. */
  writeAllowedRatio: number | null;
  /**
   * Per migration phase (the phase this migration was in): the guest's disk writes as QEMU timed
   * them on the source's virtio-blk device (query-blockstats wr_total_time_ns / wr_operations,
   * sampled every 250 ms: throttle wait + overlay write + the write-blocking mirror's round trip),
   * and the link's round trip (TCP SYN → RST to the target namespace, every 100 ms) at the same
   * time: what makes a queue-depth-1 writer slow.
   */
  phases: Record<string, PhaseLatency>;
  /**
   * Governed run, when the same command's baseline ran with Ω not binding (no overflow, no paused
   * guest, every counter read): writeBytesPerSec ÷ the baseline guests' mean writeBytesPerSec —
   * the share of what these guests physically reach over this link with no governor at all.
   * Null otherwise.
   */
  writeVsUngoverned: number | null;
}

/** Write latency and link round trip over one phase of one migration. */
export interface PhaseLatency {
  /** Time spent in the phase (as sampled), ms. */
  ms: number;
  /** Guest writes QEMU completed in the phase. */
  writes: number;
  /** Mean write latency, ms (null without writes). */
  writeMeanMs: number | null;
  /** Link round trip p50 / p90 while in the phase, ms (null without probes). */
  rttP50Ms: number | null;
  rttP90Ms: number | null;
}

export interface ConcurrentRunReport {
  governed: boolean;
  completed: number;
  rolledBack: number;
  failed: number;
  overflow: boolean;
  pausedGuests: number;
  dataVerified: boolean;
  /** Least free space Ω had during the run, bytes (statfs). */
  omegaMinFreeBytes: number;
  omegaCapacityBytes: number;
  /** Sum of the overlays' peaks, bytes (what Ω would have needed all at once, at most). */
  overlayPeakSumBytes: number;
  /** p90 of predictionErrorPct over the completed migrations (null if none completed). */
  predictionP90ErrorPct: number | null;
  /** Zero pages in the first RAM pass, mean share of guest RAM (QEMU's duplicate pages; null if no RAM phase). */
  zeroPageFraction: number | null;
  /** The first migration's start to the last one's end, ms. */
  wallMs: number;
  /** Least writeShareRatio over the migrations (null if any is unknown). */
  writeShareRatioMin: number | null;
  /** Least writeAllowedRatio over the migrations (null if any is unknown). */
  writeAllowedRatioMin: number | null;
  /**
   * The fleet's: Σ write / Σ min(demand, linkShare, omegaBound) (null if any write is unknown).
   * A policy may split Ω unequally (fitted ranks migrations by when they end), so the least
   * per-VM ratio says how fair it was, this one how much of Ω it let the guests use.
   */
  fleetWriteAllowedRatio: number | null;
  /** Least writeVsUngoverned over the migrations (null unless every one is known). */
  writeVsUngovernedMin: number | null;
  migrations: ConcurrentMigrationReport[];
  /** Governed run: every 10th tick, what the governor saw per VM (overlay KiB, write rate and limit, bytes/s). */
  timeline?: Array<{ tMs: number; vms: Array<{ id: string; phase: string; overlayKib: number; writeBps: number; limitBps: number }> }>;
  governor?: { ticks: number; actionsSent: number; actionsFailed: number; minWriteLimitBytesPerSec: number | null };
}

export interface ConcurrentReport {
  vms: number;
  omegaMib: number;
  linkMbit: number;
  /** Measured TCP goodput of the link (one stream), bytes/s. */
  linkBytesPerSec: number;
  guest: { guestMib: number; diskMib: number; diskRegionMib: number; diskWriteBytesPerSec: number; diskQueueDepth: number; memWritePagesPerSec: number };
  /** Ω the governor planned with, bytes. */
  governorOmegaBytes: number;
  /** Overlay growth the guests would make over the base copy, bytes: Σ min(region, rate × baseSec). */
  unthrottledOverlayEstimateBytes: number;
  // Headline figures: the governed run's.
  completed: number | null;
  overflow: boolean | null;
  pausedGuests: number | null;
  dataVerified: boolean | null;
  predictionP90ErrorPct: number | null;
  /** The governed run's least write share ratio (see the module comment). */
  writeShareRatioMin: number | null;
  /** The governed run's least write allowed ratio (Ω taken into account; see the module comment). */
  writeAllowedRatioMin: number | null;
  /** The governed run's least writeVsUngoverned (null without a usable baseline in the same command). */
  writeVsUngovernedMin: number | null;
  /** The baseline guests' mean write rate, bytes/s, when it is usable as the ceiling (see writeVsUngoverned). */
  ungovernedWriteBytesPerSec: number | null;
  baseline: Pick<ConcurrentRunReport, 'completed' | 'overflow' | 'pausedGuests' | 'writeShareRatioMin'> | null;
  runs: { baseline?: ConcurrentRunReport; governed?: ConcurrentRunReport };
}

function checkNum(name: string, v: unknown, min: number, max: number, integer = true): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max} (got ${String(v)})`);
  }
}

export function checkConcurrentOptions(o: ConcurrentOptions): void {
  if (typeof o !== 'object' || o === null) throw new TypeError('options: must be an object');
  for (const k of ['vms', 'omegaMib', 'linkMbit'] as const) if (o[k] === undefined) throw new RangeError(`${k}: required`);
  checkNum('vms', o.vms, ...CONCURRENT_LIMITS.vms);
  checkNum('omegaMib', o.omegaMib, ...CONCURRENT_LIMITS.omegaMib);
  checkNum('linkMbit', o.linkMbit, CONCURRENT_LIMITS.linkMbit[0], CONCURRENT_LIMITS.linkMbit[1], false);
  checkNum('guestMib', o.guestMib, ...CONCURRENT_LIMITS.guestMib);
  checkNum('diskMib', o.diskMib, ...CONCURRENT_LIMITS.diskMib);
  checkNum('diskRegionMib', o.diskRegionMib, 1, o.diskMib ?? 32);
  checkNum('diskBlockBytes', o.diskBlockBytes, 4096, 1 << 20);
  if (o.diskBlockBytes !== undefined && o.diskBlockBytes % 4096 !== 0) throw new RangeError(`diskBlockBytes: must be a multiple of 4096 (got ${o.diskBlockBytes})`);
  checkNum('diskWritesPerSec', o.diskWritesPerSec, CONCURRENT_LIMITS.diskWritesPerSec[0], CONCURRENT_LIMITS.diskWritesPerSec[1], false);
  checkNum('diskQueueDepth', o.diskQueueDepth, ...CONCURRENT_LIMITS.diskQueueDepth);
  if (o.linkQueue !== undefined && o.linkQueue !== 'fifo' && o.linkQueue !== 'fair') throw new RangeError(`linkQueue: must be 'fifo' or 'fair' (got ${JSON.stringify(o.linkQueue)})`);
  checkNum('memMib', o.memMib, ...CONCURRENT_LIMITS.memMib);
  checkNum('memWritePagesPerSec', o.memWritePagesPerSec, CONCURRENT_LIMITS.memWritePagesPerSec[0], CONCURRENT_LIMITS.memWritePagesPerSec[1], false);
  checkNum('migrationTimeoutS', o.migrationTimeoutS, ...CONCURRENT_LIMITS.migrationTimeoutS);
  checkNum('governorReserveBytes', o.governorReserveBytes, 0, o.omegaMib * MiB - 1);
  checkNum('governorIntervalMs', o.governorIntervalMs, ...CONCURRENT_LIMITS.governorIntervalMs);
  checkNum('ungovernedLinkFraction', o.ungovernedLinkFraction, 0.05, 2, false);
  if (o.runs !== undefined && !['both', 'baseline', 'governed'].includes(o.runs)) throw new RangeError(`runs: must be 'both', 'baseline' or 'governed' (got ${JSON.stringify(o.runs)})`);
}

export { quantile };

/**
 * Mean over interval `i` of U / N(t), bytes/s, where N(t) is how many of `intervals` (start, end
 * in ms, end > start) contain t — the link share of migration i averaged over its life when U is
 * split evenly among the migrations in flight. Intervals are half-open [start, end).
 */
export function meanLinkShare(intervals: ReadonlyArray<{ startMs: number; endMs: number }>, i: number, linkBytesPerSec: number): number {
  const me = intervals[i];
  if (!me || !(me.endMs > me.startMs)) throw new RangeError(`intervals[${i}]: must exist with endMs > startMs`);
  if (!(linkBytesPerSec >= 0) || !Number.isFinite(linkBytesPerSec)) throw new RangeError(`linkBytesPerSec: must be a finite number ≥ 0 (got ${linkBytesPerSec})`);
  const cuts = new Set<number>([me.startMs, me.endMs]);
  for (const o of intervals) for (const t of [o.startMs, o.endMs]) if (t > me.startMs && t < me.endMs) cuts.add(t);
  const ts = [...cuts].sort((a, b) => a - b);
  let sum = 0;
  for (let k = 0; k + 1 < ts.length; k++) {
    const a = ts[k]!;
    const b = ts[k + 1]!;
    const n = intervals.filter((o) => o.startMs <= a && o.endMs > a).length;
    sum += ((b - a) * linkBytesPerSec) / n;
  }
  return sum / (me.endMs - me.startMs);
}

/** write / min(demand, linkShare): how much of what it was allowed the guest wrote (null when write is unknown). */
export function writeShareRatio(writeBytesPerSec: number | null, demandBytesPerSec: number, linkShareBytesPerSec: number): number | null {
  if (writeBytesPerSec === null) return null;
  const allowed = Math.min(demandBytesPerSec, linkShareBytesPerSec);
  return allowed > 0 ? writeBytesPerSec / allowed : null;
}

interface Settings {
  k: number;
  guest: GuestImage;
  guestMib: number;
  diskMib: number;
  regionMib: number;
  blockBytes: number;
  writesPerSec: number;
  queueDepth: number;
  memMib: number;
  memRate: number;
  omegaBytes: number;
  linkBytesPerSec: number;
  timeoutMs: number;
  governorIntervalMs: number;
  /** Ω the governor may plan with, bytes (capacity minus the reserve). */
  governorOmegaBytes: number;
  decisionLog?: string;
  overlayGrowth: boolean;
  ungovernedLinkFraction?: number;
  note(line: string): void;
  signal?: AbortSignal;
}

interface Slot {
  i: number;
  id: string;
  source: LabVm;
  target?: IncomingVm;
  receiver?: BaseReceiver;
  paused: boolean;
  enospc: number;
  last?: MigrationProgress;
  predictedMs: number | null;
  /** Guest RAM (with the TCG pad) and its zero-page share, scanned once its workloads run. */
  ram?: { bytes: number; zeroFraction: number };
  /** Workload writes completed (guest counter) and host time when the migrations started, and at this one's end. */
  writesAtStart?: { writes: number; tMs: number };
  writesAtEnd?: { writes: number; tMs: number };
  /** query-blockstats samples: per phase, Δ wr_operations and Δ wr_total_time_ns, and time. */
  lat: Map<string, { ms: number; ops: number; ns: number; rtts: number[] }>;
  /** Host times this migration ran, ms. */
  startMs?: number;
  endMs?: number;
}

/** The phase bucket of a slot right now, or null when its migration is not running. */
function phaseOf(sl: Slot): string | null {
  if (sl.startMs === undefined || sl.endMs !== undefined) return null;
  return sl.last?.phase ?? 'setup';
}

function bucket(sl: Slot, phase: string): { ms: number; ops: number; ns: number; rtts: number[] } {
  let b = sl.lat.get(phase);
  if (!b) sl.lat.set(phase, (b = { ms: 0, ops: 0, ns: 0, rtts: [] }));
  return b;
}

/**
 * While the migrations run: every 250 ms each source's virtio-blk write counters (count and
 * QEMU's cumulative write time), and every 100 ms one TCP round trip across the link (a SYN to a
 * closed port of the target namespace, answered by RST: both directions' tbf queues). Both are
 * credited to the phase each migration is in.
 */
function watchLatency(slots: Slot[], host: string): { stop(): Promise<void> } {
  let stopped = false;
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const sampler = async (sl: Slot): Promise<void> => {
    let prev: { tMs: number; ops: number; ns: number } | undefined;
    while (!stopped) {
      const phase = phaseOf(sl);
      const stats = await queryBlockstats(sl.source.qmp, {}, { timeoutMs: 2000 }).catch(() => undefined);
      const t = performance.now();
      const dev = stats?.filter((x) => x.qdev).sort((a, b) => b.stats.wr_operations - a.stats.wr_operations)[0]?.stats;
      if (dev && phase !== null && phaseOf(sl) === phase) {
        if (prev) {
          const b = bucket(sl, phase);
          b.ms += t - prev.tMs;
          b.ops += dev.wr_operations - prev.ops;
          b.ns += dev.wr_total_time_ns - prev.ns;
        }
        prev = { tMs: t, ops: dev.wr_operations, ns: dev.wr_total_time_ns };
      } else prev = undefined;
      await sleep(250);
    }
  };
  const probe = async (): Promise<void> => {
    while (!stopped) {
      const t0 = performance.now();
      const rtt = await new Promise<number | null>((resolve) => {
        // Port 9 (discard) has no listener in the namespace: the RST is the reply.
        const sock = net.connect({ host, port: 9 });
        const done = (ok: boolean): void => {
          sock.destroy();
          resolve(ok ? performance.now() - t0 : null);
        };
        sock.setTimeout(1000, () => done(false));
        sock.once('connect', () => done(true));
        sock.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED'));
      });
      if (rtt !== null) {
        for (const sl of slots) {
          const phase = phaseOf(sl);
          if (phase !== null) bucket(sl, phase).rtts.push(rtt);
        }
      }
      await sleep(Math.max(0, 100 - (performance.now() - t0)));
    }
  };
  const loops = [...slots.map(sampler), probe()];
  return {
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

function phaseLatency(sl: Slot): Record<string, PhaseLatency> {
  const out: Record<string, PhaseLatency> = {};
  for (const [phase, b] of sl.lat) {
    out[phase] = {
      ms: Math.round(b.ms),
      writes: b.ops,
      writeMeanMs: b.ops > 0 ? Math.round(b.ns / b.ops / 1e4) / 100 : null,
      rttP50Ms: b.rtts.length ? Math.round(quantile(b.rtts, 0.5)! * 100) / 100 : null,
      rttP90Ms: b.rtts.length ? Math.round(quantile(b.rtts, 0.9)! * 100) / 100 : null,
    };
  }
  return out;
}

function predictTotalMs(s: Settings, p: MigrationProgress, writeBytesPerSec: number, ram: { bytes: number; zeroFraction: number }): number {
  const r = remainingTime({
    migration: {
      phase: 'base',
      baseBytesLeft: Math.max(0, p.baseBytesTotal - p.baseBytesCopied),
      mirrorBytesLeft: p.overlayBytes ?? 0,
      ramBytes: ram.bytes,
      ramDirty: uniformHotSetCurve(s.memRate, (s.memMib * MiB) / PAGE_BYTES),
      ramPendingBytes: ram.bytes,
      cpuThrottlePct: 0,
    },
    writeBytesPerSec,
    linkShareBytesPerSec: s.linkBytesPerSec / s.k,
    zeroPageFraction: ram.zeroFraction,
  });
  return p.tMs + r.totalSec * 1000;
}

function capped(bytesPerSec: number): { maxBandwidthBytesPerSec: number; mirrorBytesPerSec: number } {
  const b = Math.max(1, Math.round(bytesPerSec));
  return { maxBandwidthBytesPerSec: b, mirrorBytesPerSec: b };
}

async function runFleetOn(s: Settings, topology: Topology, governed: boolean): Promise<ConcurrentRunReport> {
  const tag = governed ? 'governed' : 'baseline';
  const slots: Slot[] = [];
  let omega: Omega | undefined;
  let gov: Governor | undefined;
  let govDir: string | undefined;
  let latency: { stop(): Promise<void> } | undefined;
  try {
    omega = await createOmega({ sizeBytes: s.omegaBytes });
    s.note(`${tag}: booting ${s.k} guests`);
    const sources = await Promise.allSettled(
      Array.from({ length: s.k }, (_, i) =>
        LabVm.start({ guest: s.guest, guestMib: s.guestMib, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION, disk: { sizeMib: s.diskMib, format: 'raw' }, name: `dpa-c${i}`, startTimeoutMs: 60_000 }),
      ),
    );
    sources.forEach((r, i) => {
      if (r.status === 'fulfilled') slots.push({ i, id: `${tag.slice(0, 1)}${i}`, source: r.value, paused: false, enospc: 0, predictedMs: null, lat: new Map() });
    });
    const bad = sources.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
    await Promise.all(slots.map((sl) => sl.source.ready(120_000)));
    for (const sl of slots) {
      sl.source.qmp.on('event', (e: QmpEvent) => {
        if (e.event !== 'BLOCK_IO_ERROR') return;
        if (e.data?.nospace === true) sl.enospc++;
        if (e.data?.action === 'stop') sl.paused = true;
      });
    }
    for (const sl of slots) {
      sl.target = await IncomingVm.start({ guest: s.guest, guestMib: s.guestMib, ramPadKib: sl.source.ramPadKib, disk: { sizeMib: s.diskMib }, topology, name: `dpa-c${sl.i}-in` });
      const imagePath = sl.target.diskPath!;
      sl.receiver = await spawnBaseReceiver({ host: topology.nsAddr, port: LAB_BASE_COPY_PORT + sl.i, imagePath, spawn: (cmd, args, opts) => spawnInNs(topology, cmd, args, opts) });
    }
    // Workloads start only now, so every overlay begins with the migration, not before.
    await Promise.all(
      slots.map(async (sl) => {
        await sl.source.memStart({ mib: s.memMib, pattern: 'uniform', ratePagesPerSec: s.memRate, seed: sl.i + 1 });
        await sl.source.diskStart({ blockBytes: s.blockBytes, regionBlocks: (s.regionMib * MiB) / s.blockBytes, blocksPerSec: s.writesPerSec, pattern: 'sequential', mode: 'direct', seed: sl.i + 1, queueDepth: s.queueDepth });
      }),
    );
    // What each first pass will send as zero pages, for the predictions (as predict-check does).
    for (const sl of slots) {
      const ram = sl.source.guestRam();
      sl.ram = { bytes: ram.ramBytes, zeroFraction: scanZeroPageShare(ram) };
    }

    let minLimit: number | null = null;
    const limits = new Map<string, number>();
    let t0 = performance.now();
    const timeline: NonNullable<ConcurrentRunReport['timeline']> = [];
    if (governed) {
      govDir = await mkdtemp(join(tmpdir(), 'dpa-concurrent-'));
      gov = await Governor.start({
        omegaBytes: s.governorOmegaBytes,
        intervalMs: s.governorIntervalMs,
        linkHintBytesPerSec: s.linkBytesPerSec,
        stateFile: join(govDir, 'state.json'),
        decisionLog: s.decisionLog ?? join(govDir, 'decisions.jsonl'),
        overlayGrowth: s.overlayGrowth,
      });
      gov.on('warning', (w) => s.note(`governor warning${w.id ? ` (${w.id})` : ''}: ${w.stage}: ${w.message}`));
    }

    const migrations = slots.map(
      (sl) =>
        new LiveMigration({
          source: sl.source.qmp,
          target: sl.target!.qmp,
          omegaDir: omega!.path,
          targetHost: topology.nsAddr,
          baseCopy: { host: sl.receiver!.host, port: sl.receiver!.port },
          nbdPort: DEFAULT_NBD_PORT + sl.i,
          migrationPort: DEFAULT_MIGRATION_PORT + sl.i,
          id: sl.id,
          timeoutMs: s.timeoutMs,
          stallTimeoutMs: 30_000,
          ...(!governed && s.ungovernedLinkFraction !== undefined ? capped(s.ungovernedLinkFraction * (s.linkBytesPerSec / s.k)) : {}),
        }),
    );
    migrations.forEach((m, j) => {
      const sl = slots[j]!;
      m.on('progress', (p: MigrationProgress) => {
        sl.last = p;
        if (sl.predictedMs === null && p.phase === 'base' && p.baseBytesTotal > 0) {
          // The write rate from here on: governed, the governor's limit once its first decision is
          // in force (a few ticks into the base copy); otherwise the guest's own rate.
          const limit = limits.get(sl.id) ?? 0;
          const own = s.writesPerSec * s.blockBytes;
          const early = governed && limit === 0 && p.baseBytesCopied < p.baseBytesTotal / 2;
          if (!early) sl.predictedMs = predictTotalMs(s, p, limit > 0 ? Math.min(limit, own) : own, sl.ram!);
        }
      });
    });
    if (gov) {
      for (const [j, m] of migrations.entries()) {
        const sl = slots[j]!;
        await gov.attach({
          id: sl.id,
          qmp: sl.source.qmp,
          monitorPath: sl.source.qmpSocketPath,
          overlayNode: m.overlayNode,
          ramBytes: s.guestMib * MiB,
          describe: () => sl.last ?? { phase: 'setup', baseBytesTotal: 0, baseBytesCopied: 0 },
        });
      }
      gov.on('tick', (rec) => {
        if (rec.seq % 10 === 0) {
          timeline.push({
            tMs: Math.round(performance.now() - t0),
            vms: rec.inputs.map((v) => ({ id: v.id, phase: v.phase, overlayKib: Math.round(v.overlayBytes / 1024), writeBps: Math.round(v.writeBytesPerSec), limitBps: v.writeLimitBytesPerSec })),
          });
        }
        for (const v of rec.inputs) {
          const lim = v.writeLimitBytesPerSec;
          limits.set(v.id, lim);
          if (lim > 0) minLimit = minLimit === null ? lim : Math.min(minLimit, lim);
        }
      });
    }

    const watch = watchLeastFree(omega);
    latency = watchLatency(slots, topology.nsAddr);
    t0 = performance.now();
    s.note(`${tag}: ${s.k} migrations start`);
    const abortAll = (): void => migrations.forEach((m) => void m.abort(`interrupted`));
    s.signal?.addEventListener('abort', abortAll, { once: true });
    // The guests' own write counters now, and again the moment each migration ends (on the QEMU
    // the guest then runs on): the write throughput achieved during that migration.
    await Promise.all(
      slots.map(async (sl) => {
        const t = performance.now();
        const st = await sl.source.status().catch(() => undefined);
        if (st) sl.writesAtStart = { writes: st.disk.totalWrites, tMs: (t + performance.now()) / 2 };
      }),
    );
    const results = await Promise.all(
      migrations.map(async (m, j) => {
        const sl = slots[j]!;
        sl.startMs = performance.now();
        const r = await m.run();
        sl.endMs = performance.now();
        const channel = r.phase === 'completed' ? sl.target!.channel : sl.source.channel;
        const t = performance.now();
        const st = await channel.request<{ disk: DiskSummary }>('status', {}, { timeoutMs: 5000 }).catch(() => undefined);
        if (st) sl.writesAtEnd = { writes: st.disk.totalWrites, tMs: (t + performance.now()) / 2 };
        return r;
      }),
    );
    s.signal?.removeEventListener('abort', abortAll);
    const wallMs = performance.now() - t0;
    const omegaMinFreeBytes = await watch.stop();
    await latency.stop();
    latency = undefined;
    let govStats: ConcurrentRunReport['governor'];
    if (gov) {
      await gov.stop();
      const st = gov.stats;
      govStats = { ticks: st.ticks, actionsSent: st.actionsSent, actionsFailed: st.actionsFailed, minWriteLimitBytesPerSec: minLimit };
      gov = undefined;
    }
    s.note(`${tag}: migrations ended (${results.map((r) => r.phase).join(', ')}) in ${(wallMs / 1000).toFixed(1)} s; verifying`);

    const intervals = slots.map((sl) => ({ startMs: sl.startMs!, endMs: Math.max(sl.endMs!, sl.startMs! + 1) }));
    const demandBytesPerSec = s.writesPerSec * s.blockBytes;
    const omegaBoundBytesPerSec = (s.governorOmegaBytes * 1000) / intervals.reduce((a, iv) => a + (iv.endMs - iv.startMs), 0);
    const reports = await Promise.all(
      results.map(async (r, j): Promise<ConcurrentMigrationReport> => {
        const sl = slots[j]!;
        const a = sl.writesAtStart;
        const b = sl.writesAtEnd;
        const writeBytesPerSec = a && b && b.tMs > a.tMs ? ((b.writes - a.writes) * s.blockBytes * 1000) / (b.tMs - a.tMs) : null;
        const linkShareBytesPerSec = meanLinkShare(intervals, j, s.linkBytesPerSec);
        const onTarget = r.phase === 'completed';
        const where = onTarget ? sl.target! : sl.source;
        let verified = false;
        let verifyError: string | undefined;
        let verifiedOn: 'target' | 'source' | null = null;
        if (!onTarget) {
          const st = await queryStatus(sl.source.qmp).catch(() => undefined);
          if (st?.status === 'io-error') sl.paused = true;
        }
        if (onTarget || r.phase === 'rolled-back') {
          verifiedOn = onTarget ? 'target' : 'source';
          try {
            await where.channel.request<{ mem: MemSummary; disk: DiskSummary }>('quiesce', {}, { timeoutMs: 30_000 });
            const v = await where.channel.request<Parameters<typeof verificationPassed>[0]>('verify', { target: 'all' }, { timeoutMs: 60_000 });
            verified = verificationPassed(v);
            if (!verified) verifyError = JSON.stringify(v);
          } catch (err) {
            verifyError = (err as Error).message;
          }
        }
        const predictionErrorPct = onTarget && sl.predictedMs !== null ? (Math.abs(sl.predictedMs - r.totalMs) / r.totalMs) * 100 : null;
        return {
          id: sl.id,
          phase: r.phase,
          ...(r.failure ? { failure: `${r.failure.phase}: ${r.failure.errorName}: ${r.failure.message}` } : {}),
          totalMs: r.totalMs,
          overlayPeakBytes: r.overlayPeakBytes,
          paused: sl.paused,
          enospcEvents: sl.enospc,
          verifiedOn,
          verified,
          ...(verifyError !== undefined ? { verifyError } : {}),
          predictedMs: sl.predictedMs,
          predictionErrorPct,
          writeBytesPerSec,
          linkShareBytesPerSec,
          demandBytesPerSec,
          writeShareRatio: writeShareRatio(writeBytesPerSec, demandBytesPerSec, linkShareBytesPerSec),
          omegaBoundBytesPerSec,
          writeAllowedRatio: writeShareRatio(writeBytesPerSec, demandBytesPerSec, Math.min(linkShareBytesPerSec, omegaBoundBytesPerSec)),
          phases: phaseLatency(sl),
          writeVsUngoverned: null,
        };
      }),
    );
    const omegaCapacityBytes = await omega.capacityBytes();
    const zeroShares = results.filter((r) => r.ram && r.ram.total > 0).map((r) => Math.min(1, (r.ram!.duplicate * PAGE_BYTES) / r.ram!.total));
    const errs = reports.map((r) => r.predictionErrorPct).filter((e): e is number => e !== null);
    return {
      governed,
      completed: reports.filter((r) => r.phase === 'completed').length,
      rolledBack: reports.filter((r) => r.phase === 'rolled-back').length,
      failed: reports.filter((r) => r.phase === 'failed').length,
      overflow: reports.some((r) => r.enospcEvents > 0) || omegaMinFreeBytes < CLUSTER_BYTES,
      pausedGuests: reports.filter((r) => r.paused).length,
      dataVerified: reports.every((r) => r.verified),
      omegaMinFreeBytes,
      omegaCapacityBytes,
      overlayPeakSumBytes: reports.reduce((a, r) => a + r.overlayPeakBytes, 0),
      predictionP90ErrorPct: quantile(errs, 0.9),
      zeroPageFraction: zeroShares.length ? zeroShares.reduce((a, b) => a + b, 0) / zeroShares.length : null,
      wallMs,
      writeShareRatioMin: reports.some((r) => r.writeShareRatio === null) ? null : Math.min(...reports.map((r) => r.writeShareRatio!)),
      writeAllowedRatioMin: reports.some((r) => r.writeAllowedRatio === null) ? null : Math.min(...reports.map((r) => r.writeAllowedRatio!)),
      fleetWriteAllowedRatio: reports.some((r) => r.writeBytesPerSec === null)
        ? null
        : reports.reduce((a, r) => a + r.writeBytesPerSec!, 0) / reports.reduce((a, r) => a + Math.min(r.demandBytesPerSec, r.linkShareBytesPerSec, r.omegaBoundBytesPerSec), 0),
      writeVsUngovernedMin: null,
      migrations: reports,
      ...(govStats ? { governor: govStats, timeline } : {}),
    };
  } finally {
    await latency?.stop();
    await gov?.stop().catch(() => undefined);
    for (const sl of slots) {
      await sl.receiver?.kill().catch(() => undefined);
      await sl.target?.stop().catch(() => undefined);
      await sl.source.stop().catch(() => undefined);
    }
    await omega?.destroy().catch(() => undefined);
    if (govDir) await rm(govDir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * The baseline guests' mean write rate, bytes/s, if the baseline can serve as "what the link
 * allows": Ω did not bind it (no overflow, no paused guest) and every guest's counter was read.
 */
export function ungovernedCeiling(baseline: Pick<ConcurrentRunReport, 'overflow' | 'pausedGuests' | 'migrations'> | undefined): number | null {
  if (!baseline || baseline.overflow || baseline.pausedGuests > 0 || baseline.migrations.length === 0) return null;
  const w = baseline.migrations.map((m) => m.writeBytesPerSec);
  if (w.some((x) => x === null || !(x > 0))) return null;
  return (w as number[]).reduce((a, b) => a + b, 0) / w.length;
}

/** `dpa lab migrate-concurrent`: baseline and governed runs of K concurrent migrations. Root, QEMU. */
export async function runConcurrentMigrations(o: ConcurrentOptions): Promise<ConcurrentReport> {
  checkConcurrentOptions(o);
  const diskMib = o.diskMib ?? 32;
  const regionMib = o.diskRegionMib ?? Math.max(1, diskMib - 8);
  const blockBytes = o.diskBlockBytes ?? CLUSTER_BYTES;
  if ((regionMib * MiB) % blockBytes !== 0) throw new RangeError(`diskRegionMib: must be a multiple of diskBlockBytes (${blockBytes} bytes)`);
  const note = o.onNote ?? ((): void => undefined);
  const guest = o.guest ?? (await buildGuestImage());
  const topology = await createTopology({ linkMbit: o.linkMbit, ...(o.linkQueue ? { queue: o.linkQueue } : {}) });
  try {
    const link = await measureThroughput(topology, { durationMs: 1000, warmupMs: 300 });
    note(`link: ${link.mbitPerSec.toFixed(1)} Mbit/s goodput measured (tbf ${o.linkMbit} Mbit/s)`);
    const s: Settings = {
      k: o.vms,
      guest,
      guestMib: o.guestMib ?? 128,
      diskMib,
      regionMib,
      blockBytes,
      writesPerSec: o.diskWritesPerSec ?? 64,
      queueDepth: o.diskQueueDepth ?? 1,
      memMib: o.memMib ?? 8,
      memRate: o.memWritePagesPerSec ?? 500,
      omegaBytes: o.omegaMib * MiB,
      linkBytesPerSec: link.bytesPerSec,
      timeoutMs: (o.migrationTimeoutS ?? 150) * 1000,
      governorIntervalMs: o.governorIntervalMs ?? 100,
      governorOmegaBytes: o.omegaMib * MiB - Math.min(o.omegaMib * MiB - 1, o.governorReserveBytes ?? o.vms * 256 * 1024),
      ...(o.decisionLog !== undefined ? { decisionLog: o.decisionLog } : {}),
      overlayGrowth: o.governorOverlayGrowth ?? true,
      ...(o.ungovernedLinkFraction !== undefined ? { ungovernedLinkFraction: o.ungovernedLinkFraction } : {}),
      note,
      ...(o.signal ? { signal: o.signal } : {}),
    };
    const writeBps = s.writesPerSec * s.blockBytes;
    const baseSec = (s.k * diskMib * MiB) / link.bytesPerSec;
    const estimate = s.k * Math.min(regionMib * MiB, writeBps * baseSec);
    const runs = o.runs ?? 'both';
    const out: ConcurrentReport['runs'] = {};
    if (runs !== 'governed') out.baseline = await runFleetOn(s, topology, false);
    if (runs !== 'baseline') out.governed = await runFleetOn(s, topology, true);
    const g = out.governed;
    const ungoverned = ungovernedCeiling(out.baseline);
    if (g && ungoverned !== null) {
      for (const m of g.migrations) m.writeVsUngoverned = m.writeBytesPerSec === null ? null : m.writeBytesPerSec / ungoverned;
      g.writeVsUngovernedMin = g.migrations.some((m) => m.writeVsUngoverned === null) ? null : Math.min(...g.migrations.map((m) => m.writeVsUngoverned!));
    }
    return {
      vms: s.k,
      omegaMib: o.omegaMib,
      linkMbit: o.linkMbit,
      linkBytesPerSec: link.bytesPerSec,
      guest: { guestMib: s.guestMib, diskMib, diskRegionMib: regionMib, diskWriteBytesPerSec: writeBps, diskQueueDepth: s.queueDepth, memWritePagesPerSec: s.memRate },
      governorOmegaBytes: s.governorOmegaBytes,
      unthrottledOverlayEstimateBytes: estimate,
      completed: g?.completed ?? null,
      overflow: g?.overflow ?? null,
      pausedGuests: g?.pausedGuests ?? null,
      dataVerified: g?.dataVerified ?? null,
      predictionP90ErrorPct: g?.predictionP90ErrorPct ?? null,
      writeShareRatioMin: g?.writeShareRatioMin ?? null,
      writeAllowedRatioMin: g?.writeAllowedRatioMin ?? null,
      writeVsUngovernedMin: g?.writeVsUngovernedMin ?? null,
      ungovernedWriteBytesPerSec: ungoverned,
      baseline: out.baseline ? { completed: out.baseline.completed, overflow: out.baseline.overflow, pausedGuests: out.baseline.pausedGuests, writeShareRatioMin: out.baseline.writeShareRatioMin } : null,
      runs: out,
    };
  } finally {
    await topology.destroy().catch(() => undefined);
  }
}
