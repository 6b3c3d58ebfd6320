/**
 * The paper policy's fast path (src/policy/paper.ts, decideFast) must decide exactly what the
 * policy decided before it existed: test/helpers/paper-reference/ is a frozen copy of that code.
 * Both run side by side on the same worlds, tick by tick, each fed its own previous decision, and
 * every decision (Π, quotas, γ, Σα, failures, the bin layout, the reason) must be deep-equal,
 * bit for bit (deepStrictEqual compares numbers with Object.is).
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { paperPolicy } from '../../src/policy/paper';
import type { Decision, Policy } from '../../src/policy/types';
import { generateScenario, randomScenario } from '../../src/sim/generate';
import { simulate, type SimResult } from '../../src/sim/run';
import { loadScenario, type Scenario } from '../../src/sim/scenario';
import { paperPolicy as referencePaper } from '../helpers/paper-reference/paper';

const dir = join(__dirname, '..', '..', '..', 'scenarios');

/** Runs the shipped policy on `scenario`, checking every decision against the reference's. */
function lockstep(scenario: Scenario): { result: SimResult; decisions: number; structural: number } {
  let refPrevious: Decision | undefined;
  let decisions = 0;
  let structural = 0;
  let lastBins: unknown;
  const checked: Policy = {
    name: 'paper',
    mirrorOnly: false,
    decide(world, previous) {
      const got = paperPolicy.decide(world, previous);
      const want = referencePaper.decide(world, refPrevious);
      assert.deepStrictEqual(got, want, `${scenario.name} at ${world.nowSec} s`);
      refPrevious = want;
      decisions++;
      // Count decisions whose layout differs from the last one's in more than home growth.
      if (got.bins !== lastBins && JSON.stringify(got.bins?.map((b) => [b.home, b.frozen, b.shards.length])) !== JSON.stringify((lastBins as Decision['bins'])?.map((b) => [b.home, b.frozen, b.shards.length]))) structural++;
      lastBins = got.bins;
      return got;
    },
  };
  const { result } = simulate(scenario, checked);
  const plain = simulate(scenario, referencePaper).result;
  assert.deepStrictEqual(result, plain);
  return { result, decisions, structural };
}

for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
  test(`paper fast path: identical decisions on the shipped scenario ${file}`, () => {
    const { decisions } = lockstep(loadScenario(join(dir, file)));
    assert.ok(decisions > 100);
  });
}

test('paper fast path: identical decisions on 40 random scenarios (seeds 1000..1039) and stressed ones (Ω 256 MiB)', () => {
  let failures = 0;
  for (let seed = 1000; seed < 1040; seed++) {
    failures += lockstep(randomScenario(seed)).result.failedMigrations;
    failures += lockstep(randomScenario(seed, { omegaMinBytes: 256 * 2 ** 20, omegaMaxBytes: 256 * 2 ** 20 })).result.failedMigrations;
  }
  // The stressed ones must exercise the overlap rules and failures, not only the fast path.
  assert.ok(failures > 0, 'no paper failure at all: the scenarios do not stress the bins');
});

test('paper fast path: identical decisions with 24 sharded bins (the bench load, shortened)', () => {
  const scenario = generateScenario({ vms: 24, simSeconds: 1800, tickMs: 500, seed: 3, omegaBytes: 2 * 2 ** 30 });
  const { result, structural, decisions } = lockstep(scenario);
  assert.ok(result.failedMigrations > 0 && structural > 24, `structural changes ${structural} of ${decisions}: the bins must overflow and shard`);
});
