/**
 * `dpa calibrate`: runs the KVM calibration VM (src/sources/kvm-calibration.ts) and checks the
 * chosen harvest path against exact truth, interval by interval. Exit status 1 when any interval
 * mismatched or the run failed; 2 for bad options; 130 when interrupted.
 */
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';
import { resolveKvmCalibrationOptions, runCalibration, type CalibrationSummary, type KvmCalibrationOptions } from '../sources/kvm-calibration';

const options = {
  guestMib: { type: 'int', min: 64, max: 65536, default: 1024, description: 'guest RAM', unit: 'MiB' },
  vcpus: { type: 'int', min: 1, max: 8, default: 1, description: 'vCPUs (one thread each)' },
  pattern: { type: 'enum', choices: ['uniform', 'sequential', 'zipf'], default: 'uniform', description: 'write pattern over the hot set' },
  rate: { type: 'number', min: 0.001, max: 1e9, default: 50000, description: 'page writes per second asked of the guest', unit: 'pages/s' },
  hotPages: { type: 'int', min: 1, max: 65536 * 256, description: 'hot set size (default: min(guest pages, 65536))', unit: 'pages' },
  zipfS: { type: 'number', min: 0.01, max: 10, default: 1.1, description: 'zipf exponent s' },
  seconds: { type: 'number', min: 0.01, max: 86400, default: 5, description: 'run length', unit: 's' },
  intervalMs: { type: 'int', min: 1, max: 1000, default: 10, description: 'harvest interval', unit: 'ms' },
  mode: { type: 'enum', choices: ['bitmap', 'ring'], default: 'bitmap', description: 'harvest mode: dirty bitmap or dirty ring' },
  ringEntries: { type: 'int', min: 256, max: 65536, default: 4096, description: 'ring mode: entries per vCPU ring (power of two)' },
  seed: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER, default: 1, description: 'workload seed' },
  ...jsonOption,
} as const;

const FLAG: Record<string, string> = { ratePagesPerSec: '--rate' };

/** Library validation names options in camelCase; the CLI speaks in --flags. */
export function asUsageError(err: unknown): never {
  if (err instanceof RangeError || err instanceof TypeError) {
    const m = /^(\w+)( .*)$/s.exec(err.message);
    if (m) {
      const flag = FLAG[m[1]!] ?? '--' + m[1]!.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
      throw new UsageError(`${flag}:${m[2]}`);
    }
  }
  throw err;
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function calibrationText(s: CalibrationSummary): string {
  const lines = [
    `calibration: ${s.mode} harvest, ${s.guestMib} MiB guest, ${s.vcpus} vCPU(s), ${s.pattern} writes over ${s.hotPages} hot pages, ` +
      `${fmt(s.requestedRatePagesPerSec)} page writes/s, ${s.intervalMs} ms intervals`,
    `intervals:  ${s.intervals} in ${fmt(s.wallMs / 1000, 2)} s (${fmt(s.harvestHz, 1)} Hz)` +
      (s.droppedIntervals ? `, ${s.droppedIntervals} compared but not delivered to JS` : ''),
    `exactness:  ${s.mismatchedIntervals === 0 ? 'EXACT' : 'MISMATCH'}: ${s.mismatchedIntervals} mismatched interval(s), ` +
      `${s.mismatchedPages} page(s); truth ${fmt(s.truthPages)} pages, measured ${fmt(s.measuredPages)} pages`,
    `harvest:    mean ${fmt(s.harvestUsMean, 1)} µs (p50 ${fmt(s.harvestUsP50, 1)}, p99 ${fmt(s.harvestUsP99, 1)}, max ${fmt(s.harvestUsMax, 1)}), ` +
      `${fmt(s.harvestUsPerGiB, 2)} µs/GiB`,
    `cpu:        harvest thread ${fmt(s.cpuPercent, 1)} % of wall, vCPU threads ${fmt(s.vcpuCpuPercent, 1)} %`,
    `rate:       achieved ${fmt(s.achievedRatePagesPerSec)} of ${fmt(s.requestedRatePagesPerSec)} page writes/s` +
      (s.rateReached ? '' : ` (NOT reached: the guest could not write that fast; ${s.lateIntervals} late interval(s))`) +
      (s.rateReached && s.lateIntervals ? ` (${s.lateIntervals} late interval(s))` : ''),
  ];
  if (s.mode === 'ring') lines.push(`ring:       ${s.ringFullExits} KVM_EXIT_DIRTY_RING_FULL, ${s.earlyHarvests} mid-interval harvests`);
  if (s.endCode !== 'COMPLETE') lines.push(`ended:      ${s.endCode}: ${s.endMessage}`);
  return lines.join('\n') + '\n';
}

export const command = defineCommand({
  words: ['calibrate'],
  summary: 'check KVM dirty-page harvesting (bitmap or ring) against exact truth from a VM this process runs',
  usage:
    '--guest-mib N --vcpus V --pattern uniform|sequential|zipf --rate PAGES_PER_SEC --hot-pages H [--zipf-s S] ' +
    '--seconds T --interval-ms I --mode bitmap|ring --seed X [--json]',
  options,
  async run(o, _positionals, io) {
    const calibration: KvmCalibrationOptions = {
      guestMib: o.guestMib,
      vcpus: o.vcpus,
      mode: o.mode as 'bitmap' | 'ring',
      ringEntries: o.ringEntries,
      pattern: o.pattern as 'uniform' | 'sequential' | 'zipf',
      ratePagesPerSec: o.rate,
      zipfS: o.zipfS,
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
    const summary = await runCalibration(calibration, { signal: io.signal });
    if (o.json) io.out(JSON.stringify(summary, null, 2) + '\n');
    else io.out(calibrationText(summary));
    if (summary.endCode === 'CLOSED') return 130;
    if (summary.endCode !== 'COMPLETE' || summary.mismatchedIntervals > 0) return 1;
    return 0;
  },
});
