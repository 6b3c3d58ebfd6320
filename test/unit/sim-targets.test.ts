import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { simulateAll } from '../../src/sim/compare';
import { randomScenario } from '../../src/sim/generate';
import { fittedPolicy } from '../../src/policy/fitted';
import { simulate, type SimResult } from '../../src/sim/run';
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

test('a burst that ends, a link that speeds up: the plan gate keeps what the plan alone would have throttled away', () => {
  // One guest, 12 GiB of base disk, Ω 2 GiB: at today's demand and link the plan projects several
  // GiB of overlay and throttles; the burst ends (or the link speeds up) before Ω is 70 % full.
  const GiB = 2 ** 30;
  const one = (name: string, link: Scenario['link'], diskWrites: Scenario['vms'][number]['diskWrites']): Scenario => ({
    version: 1,
    name,
    omegaBytes: 2 * GiB,
    slaBytesPerSec: 10_000,
    tickMs: 100,
    maxSimSeconds: 2000,
    link,
    staticBinBytes: 2 * GiB,
    vms: [{ id: 'a', startSec: 0, diskBytes: 12 * GiB, ramBytes: GiB, diskWrites, ramDirty: { pagesPerSec: 2000, hotPages: 20_000 } }],
  });
  for (const scenario of [
    one('burst: 44 MB/s for 15 s, then 0.7 MB/s', { bytesPerSec: 120e6 }, { points: [[0, 44e6], [15, 0.7e6]] }),
    one('link: 100 MB/s, 1 GB/s from 10 s', { points: [[0, 100e6], [10, 1e9]] }, { bytesPerSec: 60e6 }),
  ]) {
    const [paper, fitted] = simulateAll(scenario, ['paper', 'fitted']).map((o) => o.result);
    const gateless = simulate(scenario, fittedPolicy({ gateFraction: 0 })).result;
    for (const r of [paper!, fitted!, gateless]) assert.equal(r.failedMigrations, 0, `${scenario.name}: ${r.policy}`);
    assert.ok(fitted!.writeRetained >= paper!.writeRetained, `${scenario.name}: fitted ${fitted!.writeRetained} < paper ${paper!.writeRetained}`);
    assert.ok(fitted!.writeRetained >= 0.99, `${scenario.name}: fitted keeps ${fitted!.writeRetained}`);
    assert.ok(gateless.writeRetained <= fitted!.writeRetained - 0.1, `${scenario.name}: without the gate ${gateless.writeRetained} (the plan throttled early)`);
  }
});

test('random scenarios where the plan alone lost 17–29 points to paper on bursts and link changes (seeds 23629, 21148, 30567 stress): every guest keeps all its writes', () => {
  const GiB = 2 ** 30;
  for (const scenario of [randomScenario(23629), randomScenario(21148), randomScenario(30567, { omegaMinBytes: GiB / 4, omegaMaxBytes: 8 * GiB })]) {
    const [paper, fitted] = simulateAll(scenario, ['paper', 'fitted']).map((o) => o.result);
    const gateless = simulate(scenario, fittedPolicy({ gateFraction: 0 })).result;
    assert.equal(fitted!.failedMigrations, 0, scenario.name);
    for (const [id, r] of Object.entries(fitted!.writeRetainedByVm)) assert.ok(r >= paper!.writeRetainedByVm[id]! && r > 0.9999, `${scenario.name} ${id}: fitted ${r}, paper ${paper!.writeRetainedByVm[id]}`);
    assert.ok(gateless.writeRetained < paper!.writeRetained - 0.15, `${scenario.name}: the gate-less plan ${gateless.writeRetained} vs paper ${paper!.writeRetained}`);
  }
});

test('the γ_SLA reserve: where a crowded link stops a RAM copy converging, fitted without it pauses every guest; with it, none (seeds 90413, 457 and 95369 stress)', () => {
  // Each time a plan let Ω fill to its margin, then arrivals (or a link drop) stretched the
  // migrations, and five guests writing at γ_SLA filled the last 1 % (docs/BENCHMARKS.md, "Link shares").
  const GiB = 2 ** 30;
  const stress = { omegaMinBytes: GiB / 4, omegaMaxBytes: 8 * GiB };
  for (const scenario of [randomScenario(90413), randomScenario(457, stress), randomScenario(95369, stress)]) {
    const without = simulate(scenario, fittedPolicy({ slaReserveSec: 0 })).result;
    assert.ok(without.overflowed && without.failedMigrations > 0, `${scenario.name}: without the reserve ${without.failedMigrations} failed`);
    const results = simulateAll(scenario).map((o) => o.result);
    const fitted = results.find((r) => r.policy === 'fitted')!;
    assert.equal(fitted.failedMigrations, 0, scenario.name);
    assert.ok(!fitted.overflowed, scenario.name);
    assert.ok(!checkTargets(results).violations.includes('overflow'));
  }
  assert.throws(() => fittedPolicy({ slaReserveSec: -1 }), /slaReserveSec: must be ≥ 0/);
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

// Not met literally on every random scenario (on every possible scenario no policy can meet it
// together with target 2: test/unit/sim-limits.test.ts). With equal link shares (fitted's default,
// what a host gives), fitted keeps less of the guests' writes than paper, where paper fails no
// migration, in 19 of `dpa simulate --random 4000 --seed 1000` (worst 9.4 points), 21 of `--seed
// 20000` (8.1), 2 of the stress run `--random 1000 --seed 1 --omega-min-mib 256 --omega-max-mib
// 8192` (15.4) and 4 of the stress run from 30000 (5.7). docs/BENCHMARKS.md has the breakdown and
// what was tried. This 400-scenario sample (seed fixed before the run) asserts the bound the
// earlier code was held to, not more: per scenario at most PAPER_GAP below paper (where paper
// fails none), such scenarios at most 1 % of the runs, and at least paper's write retention on the
// mean.
const PAPER_GAP = 0.025;

test('property: on random scenarios fitted keeps paper’s write retention: ≥ paper on the mean, ≤ 2.5 points below on any one, rarely below', () => {
  let runs = 0;
  let below = 0;
  let fittedSum = 0;
  let paperSum = 0;
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (seed) => {
      const results = assertTargets(randomScenario(seed), false);
      const [paper, fitted] = results;
      runs++;
      fittedSum += fitted!.writeRetained;
      paperSum += paper!.writeRetained;
      if (checkTargets(results).violations.includes('below-paper')) {
        below++;
        const gap = paper!.writeRetained - fitted!.writeRetained;
        assert.ok(gap <= PAPER_GAP, `seed ${seed}: fitted ${fitted!.writeRetained} is ${gap} below paper ${paper!.writeRetained} (bound ${PAPER_GAP})`);
      }
    }),
    { numRuns: 400, seed: 20251126 },
  );
  assert.equal(runs, 400);
  assert.ok(below <= runs / 100, `${below} of ${runs} scenarios below paper`);
  assert.ok(fittedSum >= paperSum, `mean write retained: fitted ${fittedSum / runs} < paper ${paperSum / runs}`);
});

test('where fitted’s aggregate is below paper’s it can still be at least as good for every guest (seeds 701 stress, 3735; late-phase priority)', () => {
  // The aggregate ratio is not monotone in the per-guest ones: finishing a fully served migration
  // sooner removes its bytes from both sides of Σ allowed ÷ Σ wanted and lowers the ratio. Seen
  // with fitted's late-phase link priority (a shaped host), which finishes migrations sooner; with
  // equal shares (the default) its misses on these seed ranges are all genuine (docs/BENCHMARKS.md).
  const GiB = 2 ** 30;
  for (const scenario of [randomScenario(701, { omegaMinBytes: GiB / 4, omegaMaxBytes: 8 * GiB }), randomScenario(3735)]) {
    const [paper, fitted] = simulateAll(scenario, ['paper', 'fitted'], {}, { latePhaseWeight: 1000 }).map((o) => o.result);
    assert.equal(paper!.failedMigrations, 0, scenario.name);
    assert.equal(fitted!.failedMigrations, 0, scenario.name);
    let sooner = 0;
    for (const [id, r] of Object.entries(paper!.writeRetainedByVm)) {
      const f = fitted!.writeRetainedByVm[id]!;
      assert.ok(f >= r - 1e-9, `${scenario.name} ${id}: fitted ${f} < paper ${r}`);
      // The guests fitted serves in full end no later than under paper (their bytes leave the ratio).
      if (f === 1) {
        assert.ok(fitted!.completionSec[id]! <= paper!.completionSec[id]! + 1e-9, `${scenario.name} ${id}: fitted finishes later`);
        if (fitted!.completionSec[id]! < paper!.completionSec[id]! - 1) sooner++;
      }
    }
    assert.ok(sooner > 0, `${scenario.name}: some fully served migration ends sooner under fitted`);
  }
});
