/**
 * `dpa lab sim-check SCENARIO`: one scenario (scaled to the lab) run in the simulator and on real
 * QEMU guests over a tbf link into a tmpfs Ω; each VM's completion time (its migration's start to
 * its end) and phase times compared. src/migrate/sim-check.ts says what the simulator is fed.
 * Needs root and QEMU.
 *
 * Output: notes on stderr while it runs; `--json` prints one JSON document, else a table. Exit
 * status 0 when every migration completed in both worlds and the data verified; 1 otherwise;
 * 2 for a scenario the lab cannot run (the message names the field).
 */
import { runSimCheck, SIM_CHECK_POLICIES, type PhaseParts, type SimCheckPolicy } from '../migrate/sim-check';
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';

const fmt = (v: number | null, d = 2): string => (v === null ? 'n/a' : v.toFixed(d));
const parts = (p: PhaseParts | null): string => (p === null ? 'n/a' : [p.setup, p.base, p.mirror, p.ram, p.switchover].map((x) => x.toFixed(2)).join('/'));

export const command = defineCommand({
  words: ['lab', 'sim-check'],
  summary: 'one scenario in the simulator and on real QEMU migrations; completion times compared (root, QEMU)',
  usage: 'SCENARIO.json [--runs N] [--policy unthrottled] [--json]',
  options: {
    policy: { type: 'string', default: 'unthrottled', description: `policy run in both worlds (${SIM_CHECK_POLICIES.join(', ')})` },
    linkLatencyMs: { type: 'int', min: 1, max: 1000, default: 50, description: 'tbf queue of the lab link', unit: 'ms' },
    linkQueue: { type: 'enum', choices: ['fair', 'fifo'], default: 'fair', description: 'lab link queueing: per-flow fair (as the simulator shares the link) or one FIFO' },
    trace: { type: 'boolean', description: 'add each lab migration\'s progress every 100 ms to the JSON (diagnosis)' },
    runs: { type: 'int', min: 1, max: 5, default: 1, description: 'lab runs on fresh guests; times are compared as means over the runs' },
    timeoutS: { type: 'int', min: 10, max: 3600, default: 180, description: 'per-migration limit (then it rolls back)', unit: 's' },
    ...jsonOption,
  },
  async run(options, positionals, io) {
    if (positionals.length !== 1) throw new UsageError(`needs exactly one scenario file (got ${positionals.length})`);
    if (!(SIM_CHECK_POLICIES as readonly string[]).includes(options.policy)) {
      throw new UsageError(`--policy: must be one of ${SIM_CHECK_POLICIES.join(', ')} (got ${JSON.stringify(options.policy)})`);
    }
    let r;
    try {
      r = await runSimCheck({ scenario: positionals[0]!, policy: options.policy as SimCheckPolicy, runs: options.runs, migrationTimeoutS: options.timeoutS, linkLatencyMs: options.linkLatencyMs, linkQueue: options.linkQueue as 'fair' | 'fifo', trace: options.trace === true, onNote: (l) => io.err(l + '\n') });
    } catch (err) {
      if (err instanceof RangeError || err instanceof TypeError) {
        io.err(`${err.message}\n`);
        return 2;
      }
      throw err;
    }
    const ok = r.perVm.every((v) => v.errorPct !== null) && r.dataVerified;
    if (options.json) {
      io.out(JSON.stringify(r) + '\n');
      return ok ? 0 : 1;
    }
    const links = r.details.map((d) => (d.inputs.linkBytesPerSec * 8e-6).toFixed(1)).join(', ');
    io.out(`scenario ${r.scenario}, policy ${r.policy}, ${r.runs} run(s), link goodput ${links} Mbit/s (tbf ${r.details[0]!.inputs.linkMbit})\n`);
    io.out('vm        start s  sim s   lab s   error %  runs: lab s (error %)          parts s setup/base/mirror/ram/switchover: sim | lab\n');
    for (const v of r.perVm) {
      const runs = v.labRunsSec.map((x, k) => `${x.toFixed(2)} (${fmt(v.runErrorPct[k]!, 1)})`).join(' ');
      io.out(
        `${v.id.padEnd(8)}  ${v.startSec.toFixed(1).padStart(7)}  ${fmt(v.simulatedSec).padStart(6)}  ${v.labSec.toFixed(2).padStart(6)}  ${fmt(v.errorPct, 1).padStart(7)}  ` +
          `${runs.padEnd(30)} ${parts(v.simulatedParts)} | ${parts(v.labParts)}${v.verified ? '' : '  (not completed and verified in every run)'}\n`,
      );
    }
    io.out(
      `max |error| ${fmt(r.maxErrorPct, 1)} %, p50 ${fmt(r.p50ErrorPct, 1)} %; per run max ${r.runMaxErrorPct.map((e) => fmt(e, 1)).join(', ')} %; ` +
        `data verified: ${r.dataVerified}; load ${r.loadAverage.start.toFixed(1)}→${r.loadAverage.end.toFixed(1)}\n`,
    );
    return ok ? 0 : 1;
  },
});
