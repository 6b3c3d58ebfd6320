/**
 * `dpa lab predict-check`: predictor vs reality. Single lab migrations over a grid of guest memory
 * dirty rates × link speeds; each one's total time is predicted at its start by the model alone
 * and compared with what it took (src/migrate/predict-check.ts says where each model input comes
 * from). Needs root and QEMU.
 *
 * Output: notes on stderr while it runs; `--json` prints one JSON document (the report), else a
 * table. Exit status 0 when every migration completed with a finite prediction; 1 otherwise.
 */
import { DEFAULT_MIRROR_FIXED_MS, DEFAULT_SWITCHOVER_FIXED_MS, runPredictCheck } from '../migrate/predict-check';
import { jsonOption } from './args';
import { defineCommand } from './command';

/** Parses "500,4000,12000" into numbers, each in [min, max]; RangeError naming the option. */
export function parseNumberList(option: string, text: string, min: number, max: number, maxLen: number): number[] {
  const parts = text.split(',').map((t) => t.trim());
  if (parts.length < 1 || parts.length > maxLen || parts.some((t) => t === '')) {
    throw new RangeError(`--${option}: must be a comma-separated list of 1 to ${maxLen} numbers (got ${JSON.stringify(text)})`);
  }
  return parts.map((t) => {
    const v = Number(t);
    if (!Number.isFinite(v) || v < min || v > max) throw new RangeError(`--${option}: each value must be a number from ${min} to ${max} (got ${JSON.stringify(t)})`);
    return v;
  });
}

const fmt = (v: number | null, d = 1): string => (v === null ? 'n/a' : Number.isFinite(v) ? v.toFixed(d) : 'inf');

export const command = defineCommand({
  words: ['lab', 'predict-check'],
  summary: 'predicted vs actual total time of single lab migrations over dirty rates × link speeds (root, QEMU)',
  usage: '[--rates 500,4000,12000] [--links 100,200] [--mirror-fixed-ms M] [--switchover-fixed-ms S] [--trace-ms T] [--json]',
  options: {
    rates: { type: 'string', default: '500,4000,12000', description: 'guest page writes per second, comma-separated (each 0..100000, up to 12)' },
    links: { type: 'string', default: '100,200', description: 'link rates in Mbit/s, comma-separated (each 10..10000, up to 6)' },
    guestMib: { type: 'int', min: 96, max: 512, default: 128, description: 'guest RAM (plus the TCG migration pad)', unit: 'MiB' },
    diskMib: { type: 'int', min: 8, max: 256, default: 16, description: 'raw root disk', unit: 'MiB' },
    memMib: { type: 'int', min: 1, max: 64, default: 16, description: 'guest memory workload buffer (hot set)', unit: 'MiB' },
    diskWriteRate: { type: 'number', min: 0, max: 10_000, default: 50, description: 'guest 4 KiB disk writes per second', unit: 'writes/s' },
    timeoutS: { type: 'int', min: 10, max: 3600, default: 120, description: 'per-migration limit (then it rolls back)', unit: 's' },
    mirrorFixedMs: { type: 'int', min: 0, max: 10_000, default: DEFAULT_MIRROR_FIXED_MS, description: 'modelled fixed cost of starting the mirror, beyond its backlog', unit: 'ms' },
    switchoverFixedMs: { type: 'int', min: 0, max: 10_000, default: DEFAULT_SWITCHOVER_FIXED_MS, description: 'modelled fixed cost of the steps around the stop-and-copy', unit: 'ms' },
    traceMs: { type: 'int', min: 0, max: 1000, default: 0, description: "record QEMU's RAM figures this often into each migration's trace (0 = off, else 20..1000)", unit: 'ms' },
    ...jsonOption,
  },
  async run(options, _positionals, io) {
    let rates: number[];
    let links: number[];
    try {
      rates = parseNumberList('rates', options.rates, 0, 100_000, 12);
      links = parseNumberList('links', options.links, 10, 10_000, 6);
    } catch (err) {
      io.err(`${(err as Error).message}\n`);
      return 2;
    }
    const r = await runPredictCheck({
      dirtyPagesPerSec: rates,
      linkMbit: links,
      guestMib: options.guestMib,
      diskMib: options.diskMib,
      memMib: options.memMib,
      diskWriteBlocksPerSec: options.diskWriteRate,
      migrationTimeoutS: options.timeoutS,
      mirrorFixedMs: options.mirrorFixedMs,
      switchoverFixedMs: options.switchoverFixedMs,
      traceIntervalMs: options.traceMs,
      onNote: (l) => io.err(l + '\n'),
    });
    const ok = r.migrations.every((m) => m.phase === 'completed' && m.errorPct !== null);
    if (options.json) {
      io.out(JSON.stringify(r, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v)) + '\n');
      return ok ? 0 : 1;
    }
    io.out('pages/s  Mbit/s  zero%  busy%  predicted s  actual s  error %   syncs model/QEMU  throttle model/QEMU\n');
    for (const m of r.migrations) {
      io.out(
        `${String(m.dirtyPagesPerSec).padStart(7)}  ${String(m.linkMbit).padStart(6)}  ${(m.zeroPageFraction * 100).toFixed(1).padStart(5)}  ${(m.vcpuBusyFraction * 100).toFixed(1).padStart(5)}  ` +
          `${fmt(m.predictedSec).padStart(11)}  ${m.actualSec.toFixed(1).padStart(8)}  ${fmt(m.signedErrorPct).padStart(7)}  ` +
          `${`${m.predictedRam?.iterations ?? 'n/a'}/${m.actualRam?.iterations ?? 'n/a'}`.padStart(17)}  ${`${m.predictedRam?.finalThrottlePct ?? 'n/a'}/${m.actualMaxThrottlePct}`.padStart(18)}` +
          `${m.phase === 'completed' ? '' : `  (${m.phase})`}\n`,
      );
    }
    io.out(`p50 |error| ${fmt(r.p50ErrorPct)} %, p90 |error| ${fmt(r.p90ErrorPct)} % over ${r.completed} completed migrations (${r.wallSec.toFixed(0)} s)\n`);
    return ok ? 0 : 1;
  },
});
