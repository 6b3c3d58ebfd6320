/**
 * `dpa simulate FILE`: runs a scenario (docs/scenario-format.md) under every policy, or one, and
 * reports failed migrations, Ω use, write retention, throttles and fairness; `--plot` writes a
 * self-contained HTML page of the traces.
 */
import { writeFileSync } from 'node:fs';
import { jsonOption, UsageError } from './args';
import { defineCommand } from './command';
import { POLICY_NAMES, type PolicyName } from '../policy/index';
import { simulateAll, traceIntervalSec } from '../sim/compare';
import { renderPlotHtml } from '../sim/plot';
import type { SimOptions, SimResult, SimTrace } from '../sim/run';
import { DEFAULT_LATE_PHASE_WEIGHT } from '../policy/fitted';
import { randomScenario } from '../sim/generate';
import { loadScenario } from '../sim/scenario';
import { checkTargets } from '../sim/targets';
import type { CommandIO } from './command';

function fmtBytes(b: number): string {
  if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(2)} GiB`;
  if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(1)} MiB`;
  return `${(b / 1024).toFixed(1)} KiB`;
}

function table(results: readonly SimResult[]): string {
  const head = ['policy', 'failed', 'overflowed', 'max Ω used', 'write retained', 'min γ', 'Jain', 'makespan'];
  const rows = results.map((r) => [
    r.policy,
    String(r.failedMigrations),
    r.overflowed ? 'yes' : 'no',
    fmtBytes(r.maxOmegaUsedBytes),
    `${(r.writeRetained * 100).toFixed(1)} %`,
    r.minThrottleBytesPerSec === null ? '-' : `${fmtBytes(r.minThrottleBytesPerSec)}/s`,
    r.jain.toFixed(3),
    r.makespanSec === null ? 'unfinished' : `${r.makespanSec.toFixed(1)} s`,
  ]);
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ');
  const failures = results
    .flatMap((r) => Object.entries(r.failures).map(([id, f]) => `  ${r.policy}: ${id} failed at ${f.atSec.toFixed(1)} s: ${f.reason}`))
    .join('\n');
  return [line(head), ...rows.map(line)].join('\n') + (failures ? `\n\nfailures:\n${failures}` : '') + '\n';
}

type LinkSharing = NonNullable<SimOptions['linkSharing']>;

export const command = defineCommand({
  words: ['simulate'],
  summary: 'run a migration scenario under every policy (or one) and compare them',
  usage: 'FILE [--policy NAME] [--plot out.html] [--measured-link] [--late-phase-weight W] [--link-sharing policy|equal] [--json]  |  --random N [--seed S] [--omega-min-mib A] [--omega-max-mib B] [--max-vms K] [--late-phase-weight W] [--link-sharing policy|equal] [--json]',
  options: {
    policy: { type: 'enum', choices: POLICY_NAMES, description: 'run only this policy (default: all five)' },
    plot: { type: 'string', description: 'write a self-contained HTML page of the traces to this file' },
    measuredLink: { type: 'boolean', description: 'policies see U(t) as measured by the bandwidth estimator (lags changes by ~2 s) instead of exactly' },
    random: { type: 'int', min: 1, max: 100_000, description: 'instead of FILE: run N generated scenarios and check fitted against its targets' },
    seed: { type: 'int', min: 0, max: 2 ** 31 - 1, default: 1, description: 'first seed of --random (scenario k uses seed + k)' },
    omegaMinMib: { type: 'number', min: 1, max: 2 ** 24, default: 1024, description: 'smallest Ω of --random scenarios', unit: 'MiB' },
    omegaMaxMib: { type: 'number', min: 1, max: 2 ** 24, default: 16384, description: 'largest Ω of --random scenarios', unit: 'MiB' },
    maxVms: { type: 'int', min: 1, max: 64, default: 5, description: 'most VMs per --random scenario' },
    latePhaseWeight: {
      type: 'number',
      min: 1,
      max: 1e6,
      default: DEFAULT_LATE_PHASE_WEIGHT,
      description: "fitted's link weight for migrations past their base copy, against 1 for those still copying (1 = equal shares, all a host gives without a traffic shaper)",
    },
    linkSharing: {
      type: 'enum',
      choices: ['policy', 'equal'],
      default: 'policy',
      description: "how migrations share the link: by the policy's link shares, or equally whatever it says (TCP on a host that shapes nothing)",
    },
    ...jsonOption,
  },
  async run(options, positionals, io) {
    // The parser checked it against the enum's choices.
    const linkSharing = options.linkSharing as LinkSharing;
    if (options.random !== undefined) {
      if (positionals.length !== 0) throw new UsageError('--random takes no scenario file');
      if (options.omegaMinMib > options.omegaMaxMib) throw new UsageError('--omega-min-mib: must be ≤ --omega-max-mib');
      return runRandom({ ...options, linkSharing }, io);
    }
    if (positionals.length !== 1) throw new UsageError(`needs exactly one scenario file (got ${positionals.length})`);
    const scenario = loadScenario(positionals[0]!);
    const names: PolicyName[] = options.policy ? [options.policy as PolicyName] : [...POLICY_NAMES];
    const outputs = simulateAll(
      scenario,
      names,
      {
        ...(options.plot ? { traceEverySec: traceIntervalSec(scenario) } : {}),
        link: options.measuredLink ? 'measured' : 'exact',
        linkSharing,
      },
      { latePhaseWeight: options.latePhaseWeight },
    );
    const results = outputs.map((o) => o.result);
    if (options.plot) {
      writeFileSync(options.plot, renderPlotHtml(scenario, outputs.map((o) => ({ result: o.result, trace: o.trace as SimTrace }))), { mode: 0o644 });
    }
    if (options.json) {
      const summary = {
        name: scenario.name,
        ...(scenario.description !== undefined ? { description: scenario.description } : {}),
        file: positionals[0],
        omegaBytes: scenario.omegaBytes,
        slaBytesPerSec: scenario.slaBytesPerSec,
        tickMs: scenario.tickMs,
        maxSimSeconds: scenario.maxSimSeconds,
        vms: scenario.vms.length,
      };
      io.out(JSON.stringify({ scenario: summary, results }, null, 2) + '\n');
    } else {
      io.out(`${scenario.name}: ${scenario.vms.length} VM(s), Ω = ${fmtBytes(scenario.omegaBytes)}${scenario.description ? `\n${scenario.description}` : ''}\n\n`);
      io.out(table(results));
      if (options.plot) io.out(`\nplot written to ${options.plot}\n`);
    }
    return 0;
  },
});

interface RandomOptions {
  random?: number;
  seed: number;
  omegaMinMib: number;
  omegaMaxMib: number;
  maxVms: number;
  latePhaseWeight: number;
  linkSharing: LinkSharing;
  json: boolean;
}

/** `--random N`: fitted's targets over N generated scenarios (src/sim/generate.ts randomScenario). */
function runRandom(options: RandomOptions, io: CommandIO): number {
  const count = options.random!;
  const tally = { overflow: 0, 'failed-where-others-did-not': 0, 'below-paper': 0, 'below-static': 0 };
  let belowPaperLiteral = 0;
  const misses: Array<{ seed: number; violations: string[]; writeRetained: Record<string, number>; failedMigrations: Record<string, number> }> = [];
  const sums: Record<string, { writeRetained: number; failedMigrations: number; scenariosWithFailures: number }> = {};
  for (let k = 0; k < count; k++) {
    if (io.signal.aborted) break;
    const seed = options.seed + k;
    const scenario = randomScenario(seed, { omegaMinBytes: options.omegaMinMib * 2 ** 20, omegaMaxBytes: options.omegaMaxMib * 2 ** 20, maxVms: options.maxVms });
    const results = simulateAll(scenario, POLICY_NAMES, { linkSharing: options.linkSharing }, { latePhaseWeight: options.latePhaseWeight }).map((o) => o.result);
    for (const r of results) {
      const s = (sums[r.policy] ??= { writeRetained: 0, failedMigrations: 0, scenariosWithFailures: 0 });
      s.writeRetained += r.writeRetained / count;
      s.failedMigrations += r.failedMigrations;
      if (r.failedMigrations > 0) s.scenariosWithFailures++;
    }
    const check = checkTargets(results);
    if (check.belowPaperLiteral) belowPaperLiteral++;
    for (const v of check.violations) tally[v]++;
    if (check.violations.length || check.belowPaperLiteral) {
      misses.push({
        seed,
        violations: check.violations.length ? check.violations : ['below-paper-literal'],
        writeRetained: Object.fromEntries(results.map((r) => [r.policy, r.writeRetained])),
        failedMigrations: Object.fromEntries(results.map((r) => [r.policy, r.failedMigrations])),
      });
    }
  }
  const out = {
    random: { count, firstSeed: options.seed, omegaMinBytes: options.omegaMinMib * 2 ** 20, omegaMaxBytes: options.omegaMaxMib * 2 ** 20, maxVms: options.maxVms, latePhaseWeight: options.latePhaseWeight, linkSharing: options.linkSharing },
    violations: tally,
    belowPaperLiteral,
    perPolicy: sums,
    misses,
  };
  if (options.json) io.out(JSON.stringify(out, null, 2) + '\n');
  else {
    io.out(`${count} random scenarios (seeds ${options.seed}..${options.seed + count - 1}, Ω ${options.omegaMinMib}–${options.omegaMaxMib} MiB, ≤ ${options.maxVms} VMs):\n`);
    for (const [name, s] of Object.entries(sums)) {
      io.out(`  ${name.padEnd(12)} mean write retained ${(s.writeRetained * 100).toFixed(1).padStart(5)} %, scenarios with failed migrations ${s.scenariosWithFailures}\n`);
    }
    io.out(`fitted target misses: ${Object.entries(tally).map(([k, v]) => `${k} ${v}`).join(', ')}; below paper's write retention where paper failed a migration: ${belowPaperLiteral - tally['below-paper']}\n`);
    for (const m of misses) io.out(`  seed ${m.seed}: ${m.violations.join(', ')} (fitted ${m.writeRetained.fitted!.toFixed(4)}, paper ${m.writeRetained.paper!.toFixed(4)} with ${m.failedMigrations.paper} failed)\n`);
  }
  return 0;
}
