/**
 * `dpa lab migrate-concurrent`: K lab guests migrate at once over one shaped link into one Ω
 * tmpfs, first without the governor (baseline), then with it, on fresh guests each time
 * (src/migrate/concurrent.ts). Needs root and QEMU.
 *
 * Output: notes on stderr while it runs; `--json` prints one JSON document (the report), else a
 * summary. Exit status 0 when the governed run completed every migration with no overflow, no
 * paused guest and every guest's data verified; 1 otherwise.
 */
import { resolve } from 'node:path';
import { runConcurrentMigrations, type ConcurrentRunReport } from '../migrate/concurrent';
import { jsonOption } from './args';
import { defineCommand } from './command';

const MiB = 1024 * 1024;

function line(name: string, r: ConcurrentRunReport): string {
  return (
    `${name.padEnd(9)} completed ${r.completed}/${r.migrations.length}, rolled back ${r.rolledBack}, overflow ${r.overflow ? 'YES' : 'no'}, ` +
    `paused guests ${r.pausedGuests}, data verified ${r.dataVerified ? 'yes' : 'NO'}, Ω min free ${(r.omegaMinFreeBytes / MiB).toFixed(2)} MiB, ` +
    `overlay peaks Σ ${(r.overlayPeakSumBytes / MiB).toFixed(1)} MiB, write share min ${r.writeShareRatioMin === null ? 'n/a' : r.writeShareRatioMin.toFixed(2)} (of what Ω and link allow ${r.writeAllowedRatioMin === null ? 'n/a' : r.writeAllowedRatioMin.toFixed(2)}), ${(r.wallMs / 1000).toFixed(1)} s\n`
  );
}

export const command = defineCommand({
  words: ['lab', 'migrate-concurrent'],
  summary: 'K guests migrate at once over one link into one Ω: baseline, then governed (root, QEMU)',
  usage: '--vms K --omega-mib M --link-mbit L [--runs both|baseline|governed] [--json]',
  options: {
    vms: { type: 'int', min: 1, max: 8, default: 3, description: 'guests migrating at once' },
    omegaMib: { type: 'int', min: 1, max: 65536, default: 8, description: 'Ω tmpfs capacity shared by all overlays', unit: 'MiB' },
    linkMbit: { type: 'number', min: 1, max: 10_000, default: 150, description: 'tbf rate of the one link', unit: 'Mbit/s' },
    guestMib: { type: 'int', min: 96, max: 1024, default: 128, description: 'guest RAM (plus the TCG migration pad)', unit: 'MiB' },
    diskMib: { type: 'int', min: 8, max: 1024, default: 32, description: 'raw root disk per guest', unit: 'MiB' },
    diskRegionMib: { type: 'int', min: 1, max: 1024, default: 24, description: 'disk region each guest writes', unit: 'MiB' },
    diskWritesPerSec: { type: 'number', min: 1, max: 10_000, default: 64, description: 'guest 64 KiB disk writes per second', unit: 'writes/s' },
    diskQueueDepth: { type: 'int', min: 1, max: 64, default: 1, description: 'guest disk writes in flight (writer threads); at 1 every write waits for the previous one' },
    linkQueue: { type: 'enum', choices: ['fifo', 'fair'], default: 'fifo', description: 'link queueing: one FIFO (a plain router port) or per-flow fair' },
    memWriteRate: { type: 'number', min: 0, max: 100_000, default: 500, description: 'guest page writes per second', unit: 'pages/s' },
    runs: { type: 'enum', choices: ['both', 'baseline', 'governed'], default: 'both', description: 'which runs' },
    timeoutS: { type: 'int', min: 10, max: 3600, default: 150, description: 'per-migration limit (then it rolls back)', unit: 's' },
    decisionLog: { type: 'string', description: "keep the governed run's decision log (JSON lines) at this path" },
    ungovernedLinkFraction: { type: 'number', min: 0.05, max: 2, description: 'baseline only: cap each RAM stream and mirror at this fraction of the link ÷ K' },
    countAllWrites: { type: 'boolean', description: 'the governor counts every written byte as overlay growth (its library default) instead of measuring the growth' },
    ...jsonOption,
  },
  async run(options, _positionals, io) {
    if (options.diskRegionMib > options.diskMib) {
      io.err(`--disk-region-mib: must be at most --disk-mib (${options.diskMib})\n`);
      return 2;
    }
    const report = await runConcurrentMigrations({
      vms: options.vms,
      omegaMib: options.omegaMib,
      linkMbit: options.linkMbit,
      guestMib: options.guestMib,
      diskMib: options.diskMib,
      diskRegionMib: options.diskRegionMib,
      diskWritesPerSec: options.diskWritesPerSec,
      diskQueueDepth: options.diskQueueDepth,
      linkQueue: options.linkQueue as 'fifo' | 'fair',
      memWritePagesPerSec: options.memWriteRate,
      runs: options.runs as 'both' | 'baseline' | 'governed',
      migrationTimeoutS: options.timeoutS,
      ...(options.decisionLog !== undefined ? { decisionLog: resolve(options.decisionLog) } : {}),
      governorOverlayGrowth: options.countAllWrites !== true,
      ...(options.ungovernedLinkFraction !== undefined ? { ungovernedLinkFraction: options.ungovernedLinkFraction } : {}),
      onNote: (l) => io.err(l + '\n'),
      signal: io.signal,
    });
    const g = report.runs.governed;
    const ok = g ? g.completed === g.migrations.length && !g.overflow && g.pausedGuests === 0 && g.dataVerified : false;
    if (options.json) {
      io.out(JSON.stringify(report) + '\n');
      return ok ? 0 : 1;
    }
    io.out(`${report.vms} guests, link ${report.linkMbit} Mbit/s (measured ${((report.linkBytesPerSec * 8) / 1e6).toFixed(1)}), Ω ${report.omegaMib} MiB\n`);
    if (report.runs.baseline) io.out(line('baseline', report.runs.baseline));
    if (g) {
      io.out(line('governed', g));
      io.out(`prediction p90 |error| ${g.predictionP90ErrorPct === null ? 'n/a' : g.predictionP90ErrorPct.toFixed(1) + ' %'}\n`);
      if (report.writeVsUngovernedMin !== null) io.out(`governed writes ÷ ungoverned (same guests, same link) min ${report.writeVsUngovernedMin.toFixed(2)}\n`);
    }
    return ok ? 0 : 1;
  },
});
