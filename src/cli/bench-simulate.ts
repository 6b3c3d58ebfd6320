/**
 * `dpa bench simulate`: times the simulator on a generated many-VM scenario
 * (src/sim/generate.ts): wall and CPU time, ticks per second, migration-ticks per second. One
 * policy per run (default fitted) unless `--policy all`; the JSON's `perPolicy` gives each
 * policy's own wall time.
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { makePolicy, POLICY_NAMES, type PolicyName } from '../policy/index';
import { generateScenario } from '../sim/generate';
import { simulate } from '../sim/run';

export const command = defineCommand({
  words: ['bench', 'simulate'],
  summary: 'time the migration simulator on a generated scenario of N concurrent migrations',
  usage: '[--vms N] [--sim-seconds S] [--tick-ms T] [--policy NAME|all] [--seed K] [--json]',
  options: {
    vms: { type: 'int', min: 1, max: 4096, default: 64, description: 'concurrent migrations' },
    simSeconds: { type: 'number', min: 1, max: 30 * 86400, default: 3600, description: 'simulated time', unit: 's' },
    tickMs: { type: 'int', min: 1, max: 60_000, default: 100, description: 'simulation tick', unit: 'ms' },
    policy: { type: 'enum', choices: [...POLICY_NAMES, 'all'], default: 'fitted', description: 'policy to run, or all five one after the other' },
    seed: { type: 'int', min: 0, max: 2 ** 31 - 1, default: 1, description: 'scenario generator seed' },
    ...jsonOption,
  },
  async run(options, _positionals, io) {
    const scenario = generateScenario({ vms: options.vms, simSeconds: options.simSeconds, tickMs: options.tickMs, seed: options.seed });
    const names: PolicyName[] = options.policy === 'all' ? [...POLICY_NAMES] : [options.policy as PolicyName];
    const perPolicy: Record<string, { wallSec: number; cpuSec: number; ticks: number; ticksPerSec: number; failedMigrations: number; writeRetained: number; maxOmegaUsedBytes: number }> = {};
    for (const name of names) {
      if (io.signal.aborted) break;
      const policy = makePolicy(name, { staticBinBytes: scenario.staticBinBytes });
      const cpu0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const { result } = simulate(scenario, policy);
      const wallSec = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpu = process.cpuUsage(cpu0);
      perPolicy[name] = {
        wallSec,
        cpuSec: (cpu.user + cpu.system) / 1e6,
        ticks: result.ticks,
        ticksPerSec: result.ticks / wallSec,
        failedMigrations: result.failedMigrations,
        writeRetained: result.writeRetained,
        maxOmegaUsedBytes: result.maxOmegaUsedBytes,
      };
    }
    const rows = Object.values(perPolicy);
    const sum = (f: (r: (typeof rows)[number]) => number): number => rows.reduce((a, r) => a + f(r), 0);
    // Top level: the one policy run, or with --policy all the totals over all five (run one after
    // the other); `perPolicy` always has each policy's own figures.
    const wallSec = sum((r) => r.wallSec);
    const ticks = sum((r) => r.ticks);
    const one = rows.length === 1 ? rows[0]! : undefined;
    const out = {
      policy: options.policy,
      vms: options.vms,
      simSeconds: options.simSeconds,
      tickMs: options.tickMs,
      seed: options.seed,
      wallSec,
      cpuSec: sum((r) => r.cpuSec),
      ticks,
      ticksPerSec: ticks / wallSec,
      simulatedSecondsPerSec: (ticks * options.tickMs) / 1000 / wallSec,
      ...(one ? { failedMigrations: one.failedMigrations, writeRetained: one.writeRetained, maxOmegaUsedBytes: one.maxOmegaUsedBytes } : {}),
      perPolicy,
    };
    if (options.json) io.out(JSON.stringify(out) + '\n');
    else {
      io.out(`${options.vms} migrations, ${options.simSeconds} s simulated at ${options.tickMs} ms ticks:\n`);
      for (const [name, r] of Object.entries(perPolicy)) {
        io.out(
          `  ${name.padEnd(12)} ${r.ticks} ticks in ${r.wallSec.toFixed(3)} s wall (${r.cpuSec.toFixed(3)} s CPU): ${r.ticksPerSec.toFixed(0)} ticks/s; ` +
            `failed ${r.failedMigrations}, write retained ${(r.writeRetained * 100).toFixed(1)} %\n`,
        );
      }
    }
    return 0;
  },
});
