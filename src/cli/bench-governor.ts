/**
 * `dpa bench governor`: the governor's control tick cost without QMP waits (world + policy +
 * plan, see src/governor/bench.ts) for N synthetic migrations, for `fitted` and `paper`.
 */
import { benchGovernor, type GovernorBenchResult } from '../governor/bench';
import { jsonOption } from './args';
import { defineCommand } from './command';

const MiB = 1024 * 1024;

export const command = defineCommand({
  words: ['bench', 'governor'],
  summary: "time the governor's control tick (world + policy + plan, no QMP) on N synthetic migrations",
  usage: '[--vms N] [--ticks T] [--policy fitted|paper|both] [--json]',
  options: {
    vms: { type: 'int', min: 1, max: 4096, default: 16, description: 'migrations in flight' },
    ticks: { type: 'int', min: 10, max: 1_000_000, default: 3000, description: 'timed ticks per policy' },
    warmupTicks: { type: 'int', min: 0, max: 1_000_000, default: 300, description: 'untimed ticks first (JIT warm-up)' },
    intervalMs: { type: 'int', min: 20, max: 1000, default: 100, description: 'governor period (simulated time per tick)', unit: 'ms' },
    policy: { type: 'enum', choices: ['fitted', 'paper', 'both'], default: 'both', description: 'policy to time' },
    omegaMib: { type: 'int', min: 1, max: 16 * 1024 * 1024, default: 10 * 1024, description: 'Ω size', unit: 'MiB' },
    linkMbit: { type: 'number', min: 1, max: 1_000_000, default: 10_000, description: 'synthetic link', unit: 'Mbit/s' },
    seed: { type: 'int', min: 0, max: 2 ** 31 - 1, default: 1, description: 'fleet seed' },
    ...jsonOption,
  },
  async run(options, _positionals, io) {
    const policies = options.policy === 'both' ? (['fitted', 'paper'] as const) : ([options.policy] as ['fitted' | 'paper']);
    const results: Record<string, GovernorBenchResult> = {};
    for (const policy of policies) {
      results[policy] = benchGovernor({
        vms: options.vms,
        ticks: options.ticks,
        warmupTicks: options.warmupTicks,
        intervalMs: options.intervalMs,
        policy,
        omegaBytes: options.omegaMib * MiB,
        linkBytesPerSec: (options.linkMbit * 1e6) / 8,
        seed: options.seed,
      });
    }
    const headline = results.fitted ?? results[policies[0]!]!;
    const out = {
      vms: options.vms,
      policy: headline.policy,
      tickUs: headline.tickUs,
      tickUsP99: headline.tickUsP99,
      intervalMs: options.intervalMs,
      ticks: options.ticks,
      node: process.version,
      policies: results,
    };
    if (options.json) {
      io.out(JSON.stringify(out) + '\n');
      return 0;
    }
    io.out(`${options.vms} synthetic migrations, ${options.ticks} ticks of ${options.intervalMs} ms, Ω ${options.omegaMib} MiB, link ${options.linkMbit} Mbit/s\n`);
    for (const r of Object.values(results)) {
      io.out(
        `  ${r.policy.padEnd(7)} tick p50 ${r.tickUs.toFixed(1)} µs, p99 ${r.tickUsP99.toFixed(1)} µs, mean ${r.tickUsMean.toFixed(1)} µs, max ${r.tickUsMax.toFixed(0)} µs` +
          `${r.solveFraction !== null ? `; full solves ${(r.solveFraction * 100).toFixed(1)} % of ticks` : ''}\n` +
          `          ${r.actionsPerTick.toFixed(2)} QMP actions/tick, ${r.throttledVmsMean.toFixed(1)} VMs throttled on average, ${r.completedMigrations} migrations completed;` +
          ` decision-log line ${(r.logBytesMean / 1024).toFixed(1)} KiB, ${r.logUsP50.toFixed(0)} µs to encode\n`,
      );
    }
    return 0;
  },
});
