/**
 * `dpa predict`: QEMU 7.2 pre-copy prediction for one guest described by its RAM, its dirtying
 * (page-write rate over a hot set) and the link — no QEMU involved (src/model/precopy.ts).
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { uniformHotSetCurve } from '../model/dirty-curve';
import { predictPrecopy, PrecopyPrediction, QEMU_DEFAULTS } from '../model/precopy';

const MiB = 1024 * 1024;
const PAGE_BYTES = 4096;

const options = {
  ramMib: { type: 'int', min: 1, max: 4 * 1024 * 1024, required: true, description: 'guest RAM', unit: 'MiB' },
  dirtyPagesPerSec: { type: 'number', min: 0, max: 1e9, required: true, description: 'page writes per second (each to a uniformly random hot page)', unit: 'pages/s' },
  hotPages: { type: 'int', min: 1, max: 2 ** 40, description: 'pages in the hot set (default: all of RAM)', unit: 'pages' },
  bandwidthMbit: { type: 'number', min: 0.001, max: 10_000_000, required: true, description: "the migration's share of the link", unit: 'Mbit/s' },
  downtimeMs: { type: 'int', min: 1, max: 2_000_000, default: QEMU_DEFAULTS.downtimeLimitMs, description: 'QEMU downtime-limit', unit: 'ms' },
  zeroPagePct: { type: 'number', min: 0, max: 100, default: 0, description: 'share of RAM that is zero pages in the first pass', unit: '%' },
  maxBandwidthMib: { type: 'number', min: 0.001, max: 10_000_000, default: QEMU_DEFAULTS.maxBandwidthBytesPerSec / MiB, description: 'QEMU max-bandwidth (LXD leaves the default)', unit: 'MiB/s' },
  noAutoConverge: { type: 'boolean', description: 'auto-converge off (LXD turns it on)' },
  cpuThrottleInitial: { type: 'int', min: 1, max: 99, default: QEMU_DEFAULTS.cpuThrottleInitialPct, description: 'cpu-throttle-initial', unit: '%' },
  cpuThrottleIncrement: { type: 'int', min: 1, max: 99, default: QEMU_DEFAULTS.cpuThrottleIncrementPct, description: 'cpu-throttle-increment', unit: '%' },
  throttleTriggerThreshold: { type: 'int', min: 1, max: 100, default: QEMU_DEFAULTS.throttleTriggerThresholdPct, description: 'throttle-trigger-threshold', unit: '%' },
  maxCpuThrottle: { type: 'int', min: 1, max: 99, default: QEMU_DEFAULTS.maxCpuThrottlePct, description: 'max-cpu-throttle', unit: '%' },
  vcpuBusyPct: { type: 'number', min: 0.1, max: 100, default: 100, description: "share of the time the guest's vCPUs are busy unthrottled (100 = CPU-bound: the throttle cuts dirtying in proportion)", unit: '%' },
  throttleCatchUpMs: { type: 'number', min: 0, max: 1e9, description: 'longest vCPU stall a wall-clock paced guest makes up for (default: all)', unit: 'ms' },
  absorbPendingRewrites: { type: 'boolean', description: "follow QEMU's own sync loop (a sync whenever the pending RAM drops below the threshold), counting only pages not still pending at each sync, as QEMU does" },
  tcgSyncWait: { type: 'boolean', description: 'QEMU on TCG: each bitmap sync waits for a throttled vCPU to wake (needs --absorb-pending-rewrites)' },
  socketBufferKib: { type: 'int', min: 0, max: 1024 * 1024, description: "the migration socket's send buffer, drained while a sync waits (default: Linux's tcp_wmem maximum, 4 MiB)", unit: 'KiB' },
  maxIterations: { type: 'int', min: 1, max: 100_000, default: 1000, description: 'passes after which the prediction gives up' },
  ...jsonOption,
} as const;

function mib(bytes: number): string {
  return (bytes / MiB).toFixed(bytes < 10 * MiB ? 2 : 1);
}

function table(p: PrecopyPrediction): string[] {
  const rows = p.perIteration.map((it) => [String(it.iteration), mib(it.sendBytes), it.durationSec.toFixed(3), Math.round(it.dirtiedPages).toString(), String(it.throttlePct)]);
  const head = ['pass', 'sent MiB', 'seconds', 'dirtied pages', 'throttle %'];
  // Long runs: the first and last passes tell the story.
  const shown: string[][] = rows.length > 24 ? [...rows.slice(0, 12), ['…', '', '', '', ''], ...rows.slice(-12)] : rows;
  const widths = head.map((h, i) => Math.max(h.length, ...shown.map((r) => r[i]!.length)));
  const fmt = (r: string[]): string => '  ' + r.map((c, i) => c.padStart(widths[i]!)).join('  ');
  return [fmt(head), ...shown.map(fmt)];
}

export const command = defineCommand({
  words: ['predict'],
  summary: 'predict QEMU 7.2 pre-copy RAM migration: passes, total time, downtime, auto-converge throttle',
  usage: '--ram-mib M --dirty-pages-per-sec R [--hot-pages H] --bandwidth-mbit B [--downtime-ms D] [--zero-page-pct Z] [--no-auto-converge] [--vcpu-busy-pct B] [--throttle-catch-up-ms C] [--absorb-pending-rewrites [--tcg-sync-wait] [--socket-buffer-kib K]] [--json]',
  options,
  async run(o, _positionals, io) {
    const ramBytes = o.ramMib * MiB;
    const ramPages = Math.ceil(ramBytes / PAGE_BYTES);
    const hotPages = (o.hotPages as number | undefined) ?? ramPages;
    if (hotPages > ramPages) throw new RangeError(`--hot-pages: must be an integer from 1 to ${ramPages} (the guest's pages) (got ${hotPages})`);
    if (o.tcgSyncWait === true && o.absorbPendingRewrites !== true) throw new RangeError("--tcg-sync-wait: models a step of QEMU's sync loop, so it needs --absorb-pending-rewrites");
    if (o.socketBufferKib !== undefined && o.tcgSyncWait !== true) throw new RangeError('--socket-buffer-kib: only matters while a sync waits, so it needs --tcg-sync-wait');
    const input = {
      ramBytes,
      zeroPageFraction: o.zeroPagePct / 100,
      bandwidthBytesPerSec: (o.bandwidthMbit * 1e6) / 8,
      maxBandwidthBytesPerSec: o.maxBandwidthMib * MiB,
      downtimeLimitMs: o.downtimeMs,
      autoConverge: !o.noAutoConverge,
      cpuThrottleInitialPct: o.cpuThrottleInitial,
      cpuThrottleIncrementPct: o.cpuThrottleIncrement,
      throttleTriggerThresholdPct: o.throttleTriggerThreshold,
      maxCpuThrottlePct: o.maxCpuThrottle,
      maxIterations: o.maxIterations,
      vcpuBusyFraction: o.vcpuBusyPct / 100,
      ...(o.throttleCatchUpMs !== undefined ? { throttleCatchUpSec: (o.throttleCatchUpMs as number) / 1000 } : {}),
      absorbPendingRewrites: o.absorbPendingRewrites === true,
      ...(o.tcgSyncWait === true ? { syncWaitsForThrottledVcpu: true } : {}),
      ...(o.socketBufferKib !== undefined ? { socketBufferBytes: (o.socketBufferKib as number) * 1024 } : {}),
    };
    const p = predictPrecopy({ ...input, dirty: uniformHotSetCurve(o.dirtyPagesPerSec, hotPages) });
    if (o.json) {
      io.out(JSON.stringify({ input: { ...input, dirtyPagesPerSec: o.dirtyPagesPerSec, hotPages, pageBytes: PAGE_BYTES }, prediction: p }) + '\n');
      return 0;
    }
    const lines = [
      `${p.converges ? 'converges' : 'does NOT converge'}: ${p.reason}`,
      `  wire rate        ${mib(p.wireBytesPerSec)} MiB/s (link ${mib(input.bandwidthBytesPerSec)} MiB/s, max-bandwidth ${mib(input.maxBandwidthBytesPerSec)} MiB/s)`,
      `  passes           ${p.iterations}`,
      `  total            ${p.totalSec.toFixed(2)} s${p.converges ? '' : ' (until the prediction gave up)'}`,
      `  downtime         ${p.converges ? p.downtimeMs.toFixed(1) + ' ms' : '—'} (limit ${input.downtimeLimitMs} ms)`,
      `  sent             ${mib(p.bytesSent)} MiB`,
      `  final throttle   ${p.finalThrottlePct}%${input.autoConverge ? '' : ' (auto-converge off)'}`,
    ];
    if (p.toConverge) {
      const t = p.toConverge;
      lines.push('  to converge, any one of:');
      lines.push(`    bandwidth      ${t.bandwidthBytesPerSec !== undefined ? `≥ ${((t.bandwidthBytesPerSec * 8) / 1e6).toFixed(1)} Mbit/s wire rate (max-bandwidth raised to match)` : 'no bandwidth in range suffices'}`);
      lines.push(`    downtime limit ${t.downtimeLimitMs !== undefined ? `≥ ${t.downtimeLimitMs} ms` : 'no limit in range suffices'}`);
      lines.push(`    CPU throttle   ${t.throttlePct !== undefined ? `≥ ${t.throttlePct}% held from the start` : 'not even 99% suffices'}`);
    }
    lines.push('', ...table(p));
    io.out(lines.join('\n') + '\n');
    return 0;
  },
});
