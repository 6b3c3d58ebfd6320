/**
 * CoreOptions.overlayGrowth: the governor plans with the overlay's growth, not with the bytes
 * written, so a guest rewriting clusters its overlay already holds is not throttled for writes
 * that cost Ω nothing (found in `dpa lab migrate-concurrent --omega-mib 96`: guests rewriting a
 * 24 MiB region were held at γ_SLA with a third of Ω free).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GovernorCore } from '../../src/governor/core';
import { UNLIMITED } from '../../src/governor/throttle';
import type { Decision, Policy, WorldState } from '../../src/policy/types';

const MiB = 1024 * 1024;
const GAMMA = 100_000;

/** γ = GAMMA growth for every migration; records the demands it was given. */
function recordingPolicy(): Policy & { demands: number[] } {
  const demands: number[] = [];
  return {
    name: 'static',
    mirrorOnly: false,
    demands,
    decide(world: WorldState): Decision {
      for (const m of world.migrations) demands.push(m.writeBytesPerSecDemand);
      return {
        policy: 'rec',
        atSec: world.nowSec,
        reason: 'rec',
        migrations: world.migrations.map((m) => ({ id: m.id, partitionBytes: null, quotaBytes: Infinity, throttleBytesPerSec: GAMMA, linkShareBytesPerSec: 1 * MiB, meanPriority: 1, failed: false })),
      };
    },
  };
}

/** Drives one VM: 100 ms ticks, `wrStep` bytes written per tick of which `growStep` grow the overlay. */
function driver(overlayGrowth: boolean) {
  const policy = recordingPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 64 * MiB, slaBytesPerSec: 10_000, intervalMs: 100, overlayGrowth });
  core.attach({ id: 'vm', ramBytes: 128 * MiB, originalLimits: { ...UNLIMITED }, originalMaxBandwidthBytesPerSec: 128 * MiB, downtimeLimitMs: 300 }, 0);
  let tMs = 0;
  let wr = 0;
  let overlay = 256 * 1024;
  return {
    policy,
    core,
    run(ticks: number, wrStep: number, growStep: number): void {
      for (let i = 0; i < ticks; i++) {
        tMs += 100;
        wr += wrStep;
        overlay += growStep;
        const r = core.tick(tMs, new Map([['vm', { tMs, wrBytes: wr, overlayBytes: overlay, progress: { phase: 'base' as const, baseBytesTotal: 1024 * MiB, baseBytesCopied: tMs * 1000 } }]]));
        for (const a of r.actions) core.confirm(a);
      }
    },
    limit(): number {
      return core.inForce('vm')!.limits.bps_wr;
    },
  };
}

test('overlayGrowth: fresh writes keep the limit at γ; rewrites loosen it by halves down to γ·16; fresh writes again tighten it at once', () => {
  const d = driver(true);
  // 100 kB per tick (1 MB/s), every byte a new cluster: f = 1, limit = γ.
  d.run(30, 100_000, 100_000);
  assert.equal(d.limit(), GAMMA);
  // Rewrites only: the overlay stops growing; f halves per 1 MiB window (≈ 10.5 ticks), floor 1/16.
  // (The first window still holds fresh writes from before; the next is all rewrites: f halves.)
  d.run(11, 100_000, 0);
  const a1 = d.limit();
  d.run(11, 100_000, 0);
  const a2 = d.limit();
  assert.ok(a1 > GAMMA && a2 > 1.8 * a1 && a2 < 2.2 * a1, `windows: ${a1}, ${a2}`);
  d.run(100, 100_000, 0);
  const loosest = d.limit();
  assert.ok(loosest > 14 * GAMMA && loosest <= 16 * GAMMA, `floor 1/16: ${loosest}`);
  // The demand the policy sees is the growth: ~1 MB/s × f.
  const lastDemand = d.policy.demands[d.policy.demands.length - 1]!;
  assert.ok(lastDemand < 0.1 * 1_000_000, `demand given to the policy ${lastDemand}`);
  // New clusters again: within two 256 KiB windows written (6 ticks here) f is back up, limit γ.
  d.run(6, 100_000, 100_000);
  assert.equal(d.limit(), GAMMA);
});

test('without overlayGrowth (the default) every written byte counts: the limit stays γ whatever the overlay does', () => {
  const d = driver(false);
  d.run(30, 100_000, 100_000);
  d.run(100, 100_000, 0);
  assert.equal(d.limit(), GAMMA);
  assert.throws(() => new GovernorCore({ policy: recordingPolicy(), omegaBytes: 1, slaBytesPerSec: 1, intervalMs: 100, overlayGrowth: 'yes' as unknown as boolean }), /overlayGrowth/);
});

test('overlayGrowth: readings before the overlay exists (0) or a shrinking overlay do not count as rewrites', () => {
  const d = driver(true);
  const core = d.core;
  let wr = 0;
  for (let tMs = 100; tMs <= 5000; tMs += 100) {
    wr += 100_000;
    const r = core.tick(tMs, new Map([['vm', { tMs, wrBytes: wr, overlayBytes: 0, progress: { phase: 'base' as const, baseBytesTotal: 1024 * MiB, baseBytesCopied: 0 } }]]));
    for (const a of r.actions) core.confirm(a);
  }
  assert.equal(d.limit(), GAMMA, '5 MB written into no overlay: f stays 1');
});
