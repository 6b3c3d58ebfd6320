/**
 * `dpa bench simulate`: times the simulator on a generated many-VM scenario
 * (src/sim/generate.ts): wall and CPU time, ticks per second, migration-ticks per second.
 */
import { jsonOption } from './args';
import { defineCommand } from './command';
import { makePolicy, POLICY_NAMES } from '../policy/index';
import { generateScenario } from '../sim/generate';
import { simulate } from '../sim/run';

export const command = defineCommand({
  words: ['bench', 'simulate'],
  summary: 'time the migration simulator on a generated scenario of N concurrent migrations',
  usage: '[--vms N] [--sim-seconds S] [--tick-ms T] [--policy NAME] [--seed K] [--json]',
  options: {
    vms: { type: 'int', min: 1, max: 4096, default: 64, description: 'concurrent migrations' },
    simSeconds: { type: 'number', min: 1, max: 30 * 86400, default: 3600, description: 'simulated time', unit: 's' },
    tickMs: { type: 'int', min: 1, max: 60_000, default: 100, description: 'simulation tick', unit: 'ms' },
    policy: { type: 'enum', choices: POLICY_NAMES, default: 'fitted', description: 'policy to run' },
    seed: { type: 'int', min: 0, max: 2 ** 31 - 1, default: 1, description: 'scenario generator seed' },
    ...jsonOption,
  },
  async run(options, _positionals, io) {
    const scenario = generateScenario({ vms: options.vms, simSeconds: options.simSeconds, tickMs: options.tickMs, seed: options.seed });
    const policy = makePolicy(options.policy, { staticBinBytes: scenario.staticBinBytes });
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    const { result } = simulate(scenario, policy);
    const wallSec = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const cpuSec = (cpu.user + cpu.system) / 1e6;
    const out = {
      policy: options.policy,
      vms: options.vms,
      simSeconds: options.simSeconds,
      tickMs: options.tickMs,
      seed: options.seed,
      wallSec,
      cpuSec,
      ticks: result.ticks,
      ticksPerSec: result.ticks / wallSec,
      simulatedSecondsPerSec: (result.ticks * options.tickMs) / 1000 / wallSec,
      failedMigrations: result.failedMigrations,
      writeRetained: result.writeRetained,
      maxOmegaUsedBytes: result.maxOmegaUsedBytes,
    };
    if (options.json) io.out(JSON.stringify(out) + '\n');
    else {
      io.out(
        `${options.vms} migrations, ${options.simSeconds} s simulated at ${options.tickMs} ms ticks, policy ${options.policy}:\n` +
          `  ${result.ticks} ticks in ${wallSec.toFixed(3)} s wall (${cpuSec.toFixed(3)} s CPU): ${out.ticksPerSec.toFixed(0)} ticks/s\n` +
          `  failed ${result.failedMigrations}, write retained ${(result.writeRetained * 100).toFixed(1)} %\n`,
      );
    }
    return 0;
  },
});
