/**
 * `dpa bench harvest`: what harvesting the KVM dirty state of a guest costs, bitmap vs ring, on
 * a calibration VM this process runs (every harvest is also checked against exact truth).
 *
 * - hz: 1e6 / mean harvest µs, the highest harvest frequency one core could sustain if it did
 *   nothing but harvest (the interval actually run is --interval-ms).
 * - usPerGiB: mean harvest µs per GiB of guest RAM (the bitmap mode scales with RAM, the ring
 *   with dirty pages).
 * - pagesPerSec: dirty pages harvested per second of harvest time (mean dirty pages per interval
 *   / mean harvest seconds).
 * - dirtyRatePagesPerSec: the page-write rate asked of the guest; achieved rate and distinct dirty
 *   pages per interval are reported next to it.
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { asUsageError } from './calibrate';
import { resolveKvmCalibrationOptions, runCalibration, type KvmCalibrationOptions, type KvmHarvestMode } from '../sources/kvm-calibration';

const options = {
  guestMib: { type: 'int', min: 64, max: 65536, default: 4096, description: 'guest RAM', unit: 'MiB' },
  mode: { type: 'enum', choices: ['bitmap', 'ring', 'both'], default: 'both', description: 'harvest mode(s) to measure' },
  rate: { type: 'number', min: 0, max: 1e9, default: 50000, description: 'page writes per second during the benchmark (0: idle guest)', unit: 'pages/s' },
  hotPages: { type: 'int', min: 1, max: 65536 * 256, description: 'hot set (default: min(guest pages, 65536))', unit: 'pages' },
  pattern: { type: 'enum', choices: ['uniform', 'sequential', 'zipf'], default: 'uniform', description: 'write pattern' },
  vcpus: { type: 'int', min: 1, max: 8, default: 1, description: 'vCPUs' },
  intervalMs: { type: 'int', min: 1, max: 1000, default: 10, description: 'harvest interval', unit: 'ms' },
  seconds: { type: 'number', min: 0.05, max: 3600, default: 3, description: 'run length per mode', unit: 's' },
  seed: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER, default: 1, description: 'workload seed' },
  ...jsonOption,
} as const;

export interface HarvestBenchResult {
  mode: KvmHarvestMode;
  guestMib: number;
  vcpus: number;
  intervalMs: number;
  intervals: number;
  dirtyRatePagesPerSec: number;
  achievedRatePagesPerSec: number;
  dirtyPagesPerInterval: number;
  harvestUsMean: number;
  harvestUsP50: number;
  harvestUsP99: number;
  hz: number;
  usPerGiB: number;
  pagesPerSec: number;
  exact: boolean;
  cpuPercent: number;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export const command = defineCommand({
  words: ['bench', 'harvest'],
  summary: 'measure KVM dirty-log (bitmap) and dirty-ring harvest cost on a calibration VM',
  usage: '--guest-mib N --mode bitmap|ring|both [--rate PAGES_PER_SEC] [--interval-ms I] [--seconds T] [--json]',
  options,
  async run(o, _positionals, io) {
    const modes: KvmHarvestMode[] = o.mode === 'both' ? ['bitmap', 'ring'] : [o.mode as KvmHarvestMode];
    const results: HarvestBenchResult[] = [];
    for (const mode of modes) {
      const calibration: KvmCalibrationOptions = {
        guestMib: o.guestMib,
        vcpus: o.vcpus,
        mode,
        pattern: o.pattern as 'uniform' | 'sequential' | 'zipf',
        ratePagesPerSec: o.rate,
        allowIdle: true,
        intervalMs: o.intervalMs,
        seconds: o.seconds,
        seed: o.seed,
        bitmapPoolSize: 0,
        ...(o.hotPages !== undefined ? { hotPages: o.hotPages } : {}),
      };
      try {
        resolveKvmCalibrationOptions(calibration);
      } catch (err) {
        asUsageError(err);
      }
      const s = await runCalibration(calibration, { signal: io.signal });
      if (s.endCode === 'CLOSED') return 130;
      if (s.endCode !== 'COMPLETE') throw new Error(`${mode} run failed: ${s.endCode}: ${s.endMessage}`);
      const dirtyPerInterval = s.intervals ? s.measuredPages / s.intervals : 0;
      results.push({
        mode,
        guestMib: s.guestMib,
        vcpus: s.vcpus,
        intervalMs: s.intervalMs,
        intervals: s.intervals,
        dirtyRatePagesPerSec: s.requestedRatePagesPerSec,
        achievedRatePagesPerSec: round(s.achievedRatePagesPerSec, 0),
        dirtyPagesPerInterval: round(dirtyPerInterval, 1),
        harvestUsMean: round(s.harvestUsMean, 2),
        harvestUsP50: round(s.harvestUsP50, 2),
        harvestUsP99: round(s.harvestUsP99, 2),
        hz: s.harvestUsMean > 0 ? round(1e6 / s.harvestUsMean, 0) : 0,
        usPerGiB: round(s.harvestUsPerGiB, 3),
        pagesPerSec: s.harvestUsMean > 0 ? round(dirtyPerInterval / (s.harvestUsMean / 1e6), 0) : 0,
        exact: s.mismatchedIntervals === 0,
        cpuPercent: round(s.cpuPercent, 2),
      });
    }
    if (o.json) {
      io.out(JSON.stringify(results.length === 1 ? results[0] : { results }, null, 2) + '\n');
    } else {
      for (const r of results) {
        io.out(
          `${r.mode.padEnd(6)} ${r.guestMib} MiB, ${r.dirtyRatePagesPerSec} writes/s asked (${r.achievedRatePagesPerSec} achieved, ` +
            `${r.dirtyPagesPerInterval} dirty pages/interval): harvest ${r.harvestUsMean} µs mean (p50 ${r.harvestUsP50}, ` +
            `p99 ${r.harvestUsP99}) -> ${r.hz} Hz max, ${r.usPerGiB} µs/GiB, ${r.pagesPerSec} pages/s, ` +
            `${r.exact ? 'exact' : 'MISMATCH'}\n`,
        );
      }
    }
    return results.every((r) => r.exact) ? 0 : 1;
  },
});
