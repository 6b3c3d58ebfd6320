/**
 * Issue 4's targets ask, on every scenario, that fitted (2) fails no migration wherever any policy
 * fails none, (3) keeps at least paper's write retention and (4) stays within 0.02 of static's where
 * static fails none. No policy that decides from what it has seen so far can meet 2 together with
 * 3 (or 4) on every scenario. This file checks the argument on the twin scenarios in
 * scenarios/limits/, docs/BENCHMARKS.md ("The targets cannot all hold on every scenario") states it.
 *
 * The twins are equal until T = 150 s; then B's link collapses with 5 GB of base disk left.
 * - A policy sees the same worlds in A and B until T (WorldState holds nothing about the future,
 *   and a decision is a function of the world and the previous decision), so it has let the guest
 *   write the same overlay by T in both.
 * - In B, every policy keeps the guest writing at least γ_SLA while the base disk crosses the
 *   collapsed link, so the overlay at T must leave that much of Ω free; a policy that let the guest
 *   write more before T fails B. mirror-only fails nothing in B, so target 2 requires surviving it.
 * - In A, paper and static keep every byte and fail nothing; a policy that held back enough before
 *   T to survive B kept less than all of A's writes: below paper (target 3) and, here, more than
 *   0.02 below static (target 4).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { simulateAll } from '../../src/sim/compare';
import { simulate, type SimResult } from '../../src/sim/run';
import { loadScenario } from '../../src/sim/scenario';
import { checkTargets } from '../../src/sim/targets';
import type { Decision, Policy, WorldState } from '../../src/policy/types';

const dir = join(__dirname, '..', '..', '..', 'scenarios', 'limits');
const A = loadScenario(join(dir, 'link-collapse-a.json'));
const B = loadScenario(join(dir, 'link-collapse-b.json'));
const T_SEC = 150;

/**
 * A policy that fears B: holds the guest to `prefixBytesPerSec` until T; from T on it sees the link
 * and holds the guest to γ_SLA only if it did collapse.
 */
function forewarned(prefixBytesPerSec: number): Policy {
  return {
    // Not one of the product's policies (the simulator only reads the name into its results).
    name: 'forewarned' as Policy['name'],
    mirrorOnly: false,
    decide(world: WorldState): Decision {
      return {
        policy: 'forewarned',
        atSec: world.nowSec,
        reason: 'fears the link will collapse at T',
        migrations: world.migrations.map((m) => {
          const cap = world.nowSec < T_SEC ? prefixBytesPerSec : world.linkBytesPerSec < 10e6 ? world.slaBytesPerSec : Infinity;
          return {
            id: m.id,
            partitionBytes: world.omegaBytes,
            quotaBytes: world.omegaBytes,
            throttleBytesPerSec: cap < m.writeBytesPerSecDemand ? cap : null,
            linkShareBytesPerSec: world.linkBytesPerSec,
            meanPriority: 1,
            failed: false,
          };
        }),
      };
    },
  };
}

function byPolicy(results: SimResult[], name: string): SimResult {
  const r = results.find((x) => x.policy === name);
  assert.ok(r, name);
  return r;
}

test('the twins differ only in the link after T', () => {
  const { link: linkA, name: _a, description: _da, ...restA } = A;
  const { link: linkB, name: _b, description: _db, ...restB } = B;
  assert.deepEqual(restA, restB);
  assert.ok('bytesPerSec' in linkA && 'points' in linkB);
  assert.deepEqual(linkB.points, [
    [0, linkA.bytesPerSec],
    [T_SEC, 1.6e6],
  ]);
});

test('paper and fitted see the same worlds and decide the same until T in both twins', () => {
  for (const name of ['paper', 'fitted'] as const) {
    const seen = (scenario: typeof A): string[] => {
      const out: string[] = [];
      simulateAll(scenario, [name], {
        onDecision: (world, decision) => {
          if (world.nowSec < T_SEC) out.push(JSON.stringify({ world, decision }));
        },
      });
      return out;
    };
    const a = seen(A);
    const b = seen(B);
    assert.equal(a.length, T_SEC * 10, name);
    assert.deepEqual(b, a, name);
  }
});

test('in A nothing is at risk: paper, static and fitted keep every byte', () => {
  const results = simulateAll(A).map((o) => o.result);
  for (const name of ['paper', 'static', 'fitted', 'mirror-only']) {
    const r = byPolicy(results, name);
    assert.equal(r.failedMigrations, 0, name);
    assert.equal(r.writeRetained, 1, name);
  }
  assert.deepEqual(checkTargets(results).violations, []);
});

test('in B only a policy that held the guest back before T survives; mirror-only does, so target 2 asks for it', () => {
  // The overlay at T any survivor must stay under: Ω less γ_SLA × the time the base disk left at T
  // takes over the collapsed link (a lower bound: the mirror and the RAM copy come on top).
  let baseLeftAtT = NaN;
  let overlayAtT = NaN;
  simulateAll(B, ['paper'], {
    onDecision: (world) => {
      if (Math.abs(world.nowSec - T_SEC) < 1e-6) {
        baseLeftAtT = world.migrations[0]!.baseBytesLeft;
        overlayAtT = world.migrations[0]!.overlayBytes;
      }
    },
  });
  assert.equal(baseLeftAtT, 20e9 - T_SEC * 100e6);
  const collapsedLink = 1.6e6;
  const maxOverlayAtT = B.omegaBytes - B.slaBytesPerSec * (baseLeftAtT / collapsedLink);
  // The guest's full demand until T (what paper, static and fitted let it write) is over that bound.
  assert.ok(Math.abs(overlayAtT - 2e6 * T_SEC) < 1, String(overlayAtT));
  assert.ok(overlayAtT > maxOverlayAtT + 50e6, `${overlayAtT} vs ${maxOverlayAtT}`);

  const results = simulateAll(B).map((o) => o.result);
  for (const name of ['paper', 'static', 'unthrottled', 'fitted']) assert.ok(byPolicy(results, name).failedMigrations > 0, `${name} survived B`);
  assert.equal(byPolicy(results, 'mirror-only').failedMigrations, 0);
  // A policy that fears B, holding the guest to 1 MB/s before T (150 MB, under the bound with room
  // for the mirror and the RAM copy), survives B...
  const warned = forewarned(1e6);
  const inB = simulate(B, warned).result;
  assert.equal(inB.failedMigrations, 0);
  assert.ok(!inB.overflowed);
  // ...and, in A, where it cannot tell it is not in B, it keeps less than paper and static.
  const inA = simulate(A, warned).result;
  assert.equal(inA.failedMigrations, 0);
  assert.ok(inA.writeRetained < 1 - 0.02, String(inA.writeRetained));
  // So does any policy that survives B: it withheld at least overlayAtT − maxOverlayAtT bytes
  // before T, in A as in B, out of what the guest wanted in A: at most 2 MB/s over paper's whole
  // migration (with one migration the link is all its own; holding writes back only shortens the
  // mirror and the RAM copy).
  const wantedInA = 2e6 * byPolicy(simulateAll(A, ['paper']).map((o) => o.result), 'paper').completionSec.v!;
  const bestSurvivorInA = 1 - (overlayAtT - maxOverlayAtT) / wantedInA;
  assert.ok(bestSurvivorInA < 0.9 && inA.writeRetained <= bestSurvivorInA, `${inA.writeRetained} vs ${bestSurvivorInA}`);
});

test('fitted, like any policy that cannot see the future, misses a target on one of the twins: it takes A and fails B', () => {
  const inA = checkTargets(simulateAll(A).map((o) => o.result)).violations;
  const inB = checkTargets(simulateAll(B).map((o) => o.result)).violations;
  assert.ok(inA.length > 0 || inB.includes('failed-where-others-did-not'), `A: ${inA.join()}, B: ${inB.join()}`);
  // Which side it takes is a design choice: plan on today's link (docs/BENCHMARKS.md).
  assert.deepEqual(inA, []);
  assert.deepEqual(inB, ['overflow', 'failed-where-others-did-not']);
});
