/**
 * `dpa lab accuracy`: boots a lab VM (TCG) whose workload dirties memory at a known rate and
 * reports exactly which pages it wrote, then measures the same window with our guest-memory
 * collector and with QEMU's calc-dirty-rate (page-sampling), and prints both against the truth.
 * Definitions of every figure: src/lab/accuracy.ts.
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { ACCURACY_LIMITS as L, runLabAccuracy, type AccuracyReport } from '../lab/accuracy';

const options = {
  rate: { type: 'number', min: L.ratePagesPerSec.min, max: L.ratePagesPerSec.max, required: true, description: 'page writes per second asked of the workload', unit: 'pages/s' },
  hotPages: { type: 'int', min: 0, max: L.bufferMib.max * 256, default: 0, description: 'buffer pages the workload writes to (0 = the whole buffer)', unit: 'pages' },
  seconds: { type: 'int', min: L.seconds.min, max: L.seconds.max, default: 8, description: "measurement window (QEMU's calc-time)", unit: 's' },
  bufferMib: { type: 'int', min: L.bufferMib.min, max: L.bufferMib.max, default: 64, description: 'workload buffer (at most guest RAM − 64 MiB)', unit: 'MiB' },
  guestMib: { type: 'int', min: L.guestMib.min, max: L.guestMib.max, default: 256, description: 'guest RAM', unit: 'MiB' },
  vcpus: { type: 'int', min: L.vcpus.min, max: L.vcpus.max, default: 1, description: 'guest vCPUs' },
  intervalMs: { type: 'int', min: L.intervalMs.min, max: L.intervalMs.max, default: 1000, description: 'interval of the truth and of our scans (must divide the window)', unit: 'ms' },
  idleSeconds: { type: 'number', min: L.idleSeconds.min, max: L.idleSeconds.max, default: 2, description: 'idle time before and after the workload (background rate)', unit: 's' },
  mode: { type: 'enum', choices: ['exact', 'sampled'], default: 'exact', description: 'our collector: every page, or a stratified sample' },
  sampleFraction: { type: 'number', min: 0.001, max: 1, description: "sampled mode: fraction of pages per stratum (default 0.1)" },
  pattern: { type: 'enum', choices: ['uniform', 'sequential', 'zipf'], default: 'uniform', description: 'workload access pattern' },
  seed: { type: 'int', min: 0, max: Number.MAX_SAFE_INTEGER, default: 1, description: 'workload PRNG seed' },
  qemuSamplePages: { type: 'int', min: L.qemuSamplePagesPerGiB.min, max: L.qemuSamplePagesPerGiB.max, default: 512, description: 'calc-dirty-rate sample-pages', unit: 'pages/GiB' },
  intervals: { type: 'boolean', description: 'with --json: include every paired interval' },
  qemu: { type: 'string', default: 'qemu-system-x86_64', description: 'QEMU binary' },
  ...jsonOption,
} as const;

const fmt = (x: number | null, digits = 1): string => (x === null ? '–' : x.toFixed(digits));
const signed = (x: number | null): string => (x === null ? '–' : `${x >= 0 ? '+' : ''}${x.toFixed(2)} %`);

function text(r: AccuracyReport & { guestMib: number }): string {
  const w = r.workload;
  const lines = [
    `window ${r.seconds} s (${r.intervals} intervals of ${r.intervalMs} ms), guest ${r.guestMib} MiB, workload ${w.hotPages} hot pages (${w.pattern}), our mode ${r.mode}${r.sampleFraction !== null ? ` f=${r.sampleFraction}` : ''}`,
    `asked ${r.askedRatePagesPerSec} writes/s, achieved ${fmt(w.writesPerSec, 0)} writes/s${r.rateReached ? '' : '  (NOT reached)'}`,
    '',
    'over the workload\'s pages (distinct pages per interval):',
    `  truth              ${fmt(w.truthPagesPerSec)} pages/s`,
    `  ours               ${fmt(w.oursPagesPerSec)} pages/s   error ${signed(w.oursErrorPct)} (worst interval ${fmt(w.maxIntervalErrorPct, 2)} %)`,
    `  whole run          truth ${w.runTruthPages}, ours ${Math.round(w.runOursPages)} pages: error ${signed(w.runErrorPct)} (no window edges)`,
  ];
  if (w.bound) lines.push(`  stated 95% bound   ${fmt(w.bound.lowPagesPerSec)} .. ${fmt(w.bound.highPagesPerSec)} pages/s, truth ${w.bound.truthWithin ? 'inside' : 'OUTSIDE'}; ${w.bound.intervalsCovered}/${w.bound.intervals} intervals covered`);
  else {
    lines.push(`  page-level         window: ${w.missedPages} missed, ${w.extraPages} extra (boundary lag); run union: ${w.runUnionMissedPages} never seen, ${w.runUnionExtraPages} never written`);
  }
  lines.push(
    `  over the window    truth ${fmt(w.truthWindowPagesPerSec)}, ours ${fmt(w.oursWindowPagesPerSec)} distinct pages / ${r.seconds} s`,
    '',
    'whole guest:',
    `  ours               ${fmt(r.whole.oursPagesPerSec)} pages/s (idle background ${fmt(r.whole.idleBackgroundPagesPerSec)}; minus it vs truth ${signed(r.whole.oursErrorPct)})`,
    `  ours over window   ${fmt(r.whole.oursWindowPagesPerSec)} distinct pages / ${r.seconds} s`,
    `  QEMU page-sampling ${fmt(r.qemuSamplingPagesPerSec)} pages/s (${r.whole.qemuMiBPerSec} MiB/s, ${r.whole.qemuSampledPages} pages sampled): vs truth ${signed(r.qemuErrorPct)}, vs ours over its window ${signed(r.whole.qemuErrorPct)}`,
    '',
    `scanner: ${fmt(r.scanGBps, 2)} GB/s (wall), ${fmt(r.scanner.scanCpuGBps, 2)} GB/s per CPU-second, ${fmt(r.cpuPercent)} % CPU, ${fmt(r.scanner.meanScanMs)} ms per scan; boundary lag spread ${fmt(r.alignment.lagSpreadMs)} ms, window edge scans ${r.alignment.edgeScanMs.map((x) => x.toFixed(0)).join(' / ')} ms (edges explain at most ${fmt(r.alignment.edgeBoundPct, 2)} %)`,
  );
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n') + '\n';
}

export const command = defineCommand({
  words: ['lab', 'accuracy'],
  summary: "measure our dirty-rate collector and QEMU's calc-dirty-rate against a lab workload's known truth",
  usage: '--rate PAGES_PER_SEC [--hot-pages H] [--seconds T] [--mode exact|sampled [--sample-fraction f]] [--json]',
  options,
  async run(o, _positionals, io) {
    const report = await runLabAccuracy({
      ratePagesPerSec: o.rate,
      hotPages: o.hotPages,
      seconds: o.seconds,
      bufferMib: o.bufferMib,
      guestMib: o.guestMib,
      vcpus: o.vcpus,
      intervalMs: o.intervalMs,
      idleSeconds: o.idleSeconds,
      mode: o.mode as 'exact' | 'sampled',
      ...(o.sampleFraction !== undefined ? { sampleFraction: o.sampleFraction } : {}),
      pattern: o.pattern as 'uniform' | 'sequential' | 'zipf',
      seed: o.seed,
      qemuSamplePagesPerGiB: o.qemuSamplePages,
      qemuBinary: o.qemu,
      includeIntervals: o.intervals,
      signal: io.signal,
      onProgress: o.json ? undefined : (m) => io.err(`${m}\n`),
    });
    io.out(o.json ? JSON.stringify(report, null, 2) + '\n' : text(report));
    return 0;
  },
});
