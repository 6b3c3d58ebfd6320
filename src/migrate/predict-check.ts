/**
 * Predictor vs reality: single lab migrations over a grid of guest memory dirty rates × link
 * speeds, each one's total time predicted at its start by the model alone (src/model/need.ts
 * remainingTime, pre-copy via predictPrecopy) and compared with the time it really took.
 *
 * What the prediction of one migration may use, and where each input comes from:
 * - link: TCP goodput measured once per link speed (measureThroughput, 1 s after 0.3 s warm-up) on
 *   the first lab topology of that speed, before any migration at that speed;
 * - RAM dirtying: uniformHotSetCurve(rate, hot set) from the workload's own parameters (uniform
 *   writes over a `memMib` buffer);
 * - zero-page share: a scan of the source's guest RAM (/proc/PID/mem, GuestPhysMemory) right
 *   before that migration starts — the pages QEMU will send as zero pages in its first pass. Not
 *   taken from this (or any) migration's own counters;
 * - disk: the base copy's size from the first `base` progress event (the moment of prediction)
 *   and the workload's write rate.
 * The prediction is made at the first `base` progress event: the time spent so far (setup) plus
 * remainingTime().totalSec. Error = |predicted − actual| / actual.
 */
import { performance } from 'node:perf_hooks';
import { buildGuestImage, type GuestImage } from '../lab/guest-image';
import { GuestPhysMemory } from '../lab/guest-ram';
import type { DiskSummary, MemSummary } from '../lab/guest-protocol';
import { measureThroughput } from '../lab/netns';
import { uniformHotSetCurve } from '../model/dirty-curve';
import { remainingTime } from '../model/need';
import { quantile } from './concurrent';
import { MigrationLab, verificationPassed, verifyGuest } from './lab';
import type { MigrationProgress } from './types';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;

export interface PredictCheckOptions {
  /** Guest page writes per second, one grid axis (each 0..100000; 1..12 values; default [500, 4000, 12000]). */
  dirtyPagesPerSec?: number[];
  /** tbf link rates, Mbit/s, the other axis (each 10..10000; 1..6 values; default [100, 200]). */
  linkMbit?: number[];
  /** Guest RAM, MiB (96..512; default 128; plus the TCG migration pad). */
  guestMib?: number;
  /** Raw root disk, MiB (8..256; default 16). */
  diskMib?: number;
  /** Guest memory workload buffer (the hot set), MiB (1..64; default 16). */
  memMib?: number;
  /** Guest 4 KiB disk writes per second into the first 8 MiB (0..10000; default 50). */
  diskWriteBlocksPerSec?: number;
  /** Each migration fails (and rolls back) if not done by then, s (10..3600; default 120). */
  migrationTimeoutS?: number;
  guest?: GuestImage;
  /** Progress notes (one line each, for humans). */
  onNote?(line: string): void;
}

export const PREDICT_CHECK_LIMITS = {
  dirtyPagesPerSec: [0, 100_000],
  linkMbit: [10, 10_000],
  guestMib: [96, 512],
  diskMib: [8, 256],
  memMib: [1, 64],
  diskWriteBlocksPerSec: [0, 10_000],
  migrationTimeoutS: [10, 3600],
} as const;

/** One migration of the grid. */
export interface PredictCheckMigration {
  dirtyPagesPerSec: number;
  linkMbit: number;
  /** Page writes per second the guest really made (its write count over the time it ran). */
  achievedPagesPerSec: number;
  /** Share of guest RAM in zero pages at the start (guest-memory scan), 0..1. */
  zeroPageFraction: number;
  phase: 'completed' | 'rolled-back' | 'failed';
  failure?: string;
  /** Predicted total time at the start of the base phase, s (Infinity if the model says pre-copy never converges; null if never predicted). */
  predictedSec: number | null;
  actualSec: number;
  /** The model's phases, s (base + mirror + ram = predicted − setup). */
  predictedParts: { setupSec: number; baseSec: number; mirrorSec: number; ramSec: number } | null;
  /** Measured phases, s. */
  actualParts: Record<string, number>;
  /** The model's pre-copy: passes, bytes on the wire, final CPU throttle (null if never predicted). */
  predictedRam: { iterations: number; bytesSent: number; finalThrottlePct: number } | null;
  /** QEMU's own count at the end (query-migrate ram; null if absent). */
  actualRam: { iterations: number; bytesSent: number; zeroPages: number; normalPages: number } | null;
  /** |predicted − actual| / actual × 100 (completed migrations with a finite prediction only). */
  errorPct: number | null;
  /** Signed (predicted − actual) / actual × 100. */
  signedErrorPct: number | null;
  verified: boolean;
}

export interface PredictCheckReport {
  guest: { guestMib: number; diskMib: number; memMib: number; diskWriteBlocksPerSec: number };
  /** Measured goodput per link speed, bytes/s (key: linkMbit). */
  linkBytesPerSec: Record<string, number>;
  migrations: PredictCheckMigration[];
  completed: number;
  /** Nearest-rank quantiles of errorPct over the completed migrations (null if none). */
  p50ErrorPct: number | null;
  p90ErrorPct: number | null;
  wallSec: number;
}

function checkNum(name: string, v: unknown, min: number, max: number, integer = true): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    throw new RangeError(`${name}: must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max} (got ${String(v)})`);
  }
}

function checkList(name: string, v: unknown, min: number, max: number, maxLen: number): void {
  if (v === undefined) return;
  if (!Array.isArray(v) || v.length < 1 || v.length > maxLen) throw new RangeError(`${name}: must be a list of 1 to ${maxLen} numbers`);
  v.forEach((x, i) => checkNum(`${name}[${i}]`, x, min, max, false));
}

export function checkPredictCheckOptions(o: PredictCheckOptions): void {
  if (typeof o !== 'object' || o === null) throw new TypeError('options: must be an object');
  checkList('dirtyPagesPerSec', o.dirtyPagesPerSec, ...PREDICT_CHECK_LIMITS.dirtyPagesPerSec, 12);
  checkList('linkMbit', o.linkMbit, ...PREDICT_CHECK_LIMITS.linkMbit, 6);
  checkNum('guestMib', o.guestMib, ...PREDICT_CHECK_LIMITS.guestMib);
  checkNum('diskMib', o.diskMib, ...PREDICT_CHECK_LIMITS.diskMib);
  checkNum('memMib', o.memMib, ...PREDICT_CHECK_LIMITS.memMib);
  checkNum('diskWriteBlocksPerSec', o.diskWriteBlocksPerSec, PREDICT_CHECK_LIMITS.diskWriteBlocksPerSec[0], PREDICT_CHECK_LIMITS.diskWriteBlocksPerSec[1], false);
  checkNum('migrationTimeoutS', o.migrationTimeoutS, ...PREDICT_CHECK_LIMITS.migrationTimeoutS);
  if (o.diskMib !== undefined && o.diskMib < 8) throw new RangeError('diskMib: must be at least 8');
}

/** Share of `ramBytes` of guest RAM (from GPA 0, one low-RAM region) that is all zero bytes. */
export function zeroPageShare(mem: Pick<GuestPhysMemory, 'read'>, ramBytes: number): number {
  const chunk = new Uint8Array(MiB);
  const words = new Uint32Array(chunk.buffer);
  const wordsPerPage = PAGE_BYTES / 4;
  let zero = 0;
  let pages = 0;
  for (let gpa = 0; gpa < ramBytes; gpa += MiB) {
    const len = Math.min(MiB, ramBytes - gpa);
    const view = len === MiB ? chunk : chunk.subarray(0, len);
    mem.read(gpa, view);
    const n = len / PAGE_BYTES;
    for (let p = 0; p < n; p++) {
      let w = p * wordsPerPage;
      const end = w + wordsPerPage;
      while (w < end && words[w] === 0) w++;
      if (w === end) zero++;
    }
    pages += n;
  }
  return pages ? zero / pages : 0;
}

interface Prediction {
  totalSec: number;
  parts: NonNullable<PredictCheckMigration['predictedParts']>;
  ram: PredictCheckMigration['predictedRam'];
}

/** `dpa lab predict-check`: the grid, one fresh lab per migration. Root, QEMU. */
export async function runPredictCheck(o: PredictCheckOptions = {}): Promise<PredictCheckReport> {
  checkPredictCheckOptions(o);
  const rates = o.dirtyPagesPerSec ?? [500, 4000, 12000];
  const links = o.linkMbit ?? [100, 200];
  const guestMib = o.guestMib ?? 128;
  const diskMib = o.diskMib ?? 16;
  const memMib = o.memMib ?? 16;
  const diskRate = o.diskWriteBlocksPerSec ?? 50;
  const timeoutMs = (o.migrationTimeoutS ?? 120) * 1000;
  const note = o.onNote ?? ((): void => undefined);
  const guest = o.guest ?? (await buildGuestImage());
  const linkBytesPerSec: Record<string, number> = {};
  const migrations: PredictCheckMigration[] = [];
  const w0 = performance.now();

  for (const linkMbit of links) {
    for (const rate of rates) {
      const lab = await MigrationLab.create({ guest, guestMib, diskMib, linkMbit, omegaMib: 64 });
      try {
        const key = String(linkMbit);
        if (linkBytesPerSec[key] === undefined) {
          const link = await measureThroughput(lab.topology, { durationMs: 1000, warmupMs: 300 });
          linkBytesPerSec[key] = link.bytesPerSec;
          note(`link ${linkMbit} Mbit/s: ${link.mbitPerSec.toFixed(1)} Mbit/s goodput measured`);
        }
        const share = linkBytesPerSec[key]!;
        const target = await lab.prepareTarget();
        const m0 = performance.now();
        if (rate > 0) await lab.source.memStart({ mib: memMib, pattern: 'uniform', ratePagesPerSec: rate, seed: 1 });
        if (diskRate > 0) await lab.source.diskStart({ regionBlocks: (8 * MiB) / PAGE_BYTES, blocksPerSec: diskRate, pattern: 'uniform', seed: 1 });
        const ram = lab.source.guestRam();
        const mem = new GuestPhysMemory(ram);
        let zeroFrac: number;
        try {
          zeroFrac = zeroPageShare(mem, ram.ramBytes);
        } finally {
          mem.close();
        }
        const mig = lab.migration(target, { timeoutMs, stallTimeoutMs: 30_000 });
        let predicted: Prediction | null = null;
        mig.on('progress', (p: MigrationProgress) => {
          if (predicted !== null || p.phase !== 'base' || p.baseBytesTotal <= 0) return;
          const r = remainingTime({
            migration: {
              phase: 'base',
              baseBytesLeft: Math.max(0, p.baseBytesTotal - p.baseBytesCopied),
              mirrorBytesLeft: p.overlayBytes ?? 0,
              ramBytes: ram.ramBytes,
              ramDirty: uniformHotSetCurve(rate, (memMib * MiB) / PAGE_BYTES),
              ramPendingBytes: ram.ramBytes,
              cpuThrottlePct: 0,
            },
            writeBytesPerSec: diskRate * PAGE_BYTES,
            linkShareBytesPerSec: share,
            zeroPageFraction: zeroFrac,
          });
          const setupSec = p.tMs / 1000;
          predicted = {
            totalSec: setupSec + r.totalSec,
            parts: { setupSec, baseSec: r.baseSec, mirrorSec: r.mirrorSec, ramSec: r.ramSec },
            ram: r.ram ? { iterations: r.ram.iterations, bytesSent: r.ram.bytesSent, finalThrottlePct: r.ram.finalThrottlePct } : null,
          };
        });
        note(`migration: ${rate} pages/s over ${linkMbit} Mbit/s (zero pages ${(zeroFrac * 100).toFixed(1)} %)`);
        const result = await mig.run();
        const onTarget = result.phase === 'completed';
        const channel = onTarget ? target.vm.channel : lab.source.channel;
        const q = await channel.request<{ mem: MemSummary; disk: DiskSummary }>('quiesce', {}, { timeoutMs: 60_000 });
        const ranSec = (performance.now() - m0) / 1000;
        const v = await verifyGuest(channel, 'all', 60_000).catch(() => null);
        const actualSec = result.totalMs / 1000;
        const pr = predicted as Prediction | null;
        const finite = pr !== null && Number.isFinite(pr.totalSec);
        const signed = onTarget && finite ? ((pr.totalSec - actualSec) / actualSec) * 100 : null;
        const row: PredictCheckMigration = {
          dirtyPagesPerSec: rate,
          linkMbit,
          achievedPagesPerSec: rate > 0 ? (q.mem?.totalWrites ?? 0) / ranSec : 0,
          zeroPageFraction: zeroFrac,
          phase: result.phase,
          ...(result.failure ? { failure: `${result.failure.phase}: ${result.failure.errorName}: ${result.failure.message}` } : {}),
          predictedSec: pr === null ? null : pr.totalSec,
          actualSec,
          predictedParts: pr === null ? null : pr.parts,
          predictedRam: pr?.ram ?? null,
          actualRam: result.ram
            ? { iterations: result.ram['dirty-sync-count'], bytesSent: result.ram.transferred, zeroPages: result.ram.duplicate, normalPages: result.ram.normal }
            : null,
          actualParts: Object.fromEntries(Object.entries(result.phaseMs).map(([k, ms]) => [k, (ms ?? 0) / 1000])),
          errorPct: signed === null ? null : Math.abs(signed),
          signedErrorPct: signed,
          verified: v !== null && verificationPassed(v),
        };
        migrations.push(row);
        note(
          `  ${result.phase}: predicted ${row.predictedSec === null ? 'n/a' : row.predictedSec.toFixed(1)} s, actual ${actualSec.toFixed(1)} s` +
            (row.signedErrorPct === null ? '' : `, error ${row.signedErrorPct.toFixed(1)} %`),
        );
      } finally {
        await lab.destroy().catch((err: Error) => note(`teardown: ${err.message}`));
      }
    }
  }
  const errs = migrations.map((m) => m.errorPct).filter((e): e is number => e !== null);
  return {
    guest: { guestMib, diskMib, memMib, diskWriteBlocksPerSec: diskRate },
    linkBytesPerSec,
    migrations,
    completed: migrations.filter((m) => m.phase === 'completed').length,
    p50ErrorPct: quantile(errs, 0.5),
    p90ErrorPct: quantile(errs, 0.9),
    wallSec: (performance.now() - w0) / 1000,
  };
}
