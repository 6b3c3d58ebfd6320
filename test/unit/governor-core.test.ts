/**
 * The governor's pure part: telemetry → world → decision → planned actions, without QEMU.
 * Policies here are real pure policies: `fitted` and `paper`, and small fixed-answer policies
 * (a Policy is a plain function, so a fixed one is an input, not a mock of a part).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GovernorCore, type VmSetup, type VmTelemetry } from '../../src/governor/core';
import { UNLIMITED } from '../../src/governor/throttle';
import type { GovernedProgress, GovernorAction, ThrottleLimits } from '../../src/governor/types';
import { fittedPolicy } from '../../src/policy/fitted';
import { paperPolicy, paperThrottleBytesPerSec } from '../../src/policy/paper';
import type { Decision, Policy, WorldState } from '../../src/policy/types';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A policy answering γ (and a link share) from a mutable table; records the worlds it saw. */
function fixedPolicy(): Policy & { gamma: Map<string, number | null>; share: number; worlds: WorldState[] } {
  const gamma = new Map<string, number | null>();
  const worlds: WorldState[] = [];
  const p = {
    name: 'static' as const,
    mirrorOnly: false,
    gamma,
    share: 50 * MiB,
    worlds,
    decide(world: WorldState): Decision {
      worlds.push(world);
      return {
        policy: 'fixed',
        atSec: world.nowSec,
        reason: 'fixed',
        migrations: world.migrations.map((m) => ({
          id: m.id,
          partitionBytes: null,
          quotaBytes: Infinity,
          throttleBytesPerSec: gamma.get(m.id) ?? null,
          linkShareBytesPerSec: p.share,
          meanPriority: 1,
          failed: false,
        })),
      };
    },
  };
  return p;
}

function setup(id: string, originalLimits: ThrottleLimits = UNLIMITED): VmSetup {
  return { id, ramBytes: 1 * GiB, originalLimits, originalMaxBandwidthBytesPerSec: 128 * MiB, downtimeLimitMs: 300 };
}

/** Feeds a core: one VM writing at `wBps` (capped by what the core has in force), base copy at `baseBps`. */
class Feed {
  tMs = 1000;
  wr = new Map<string, number>();
  copied = new Map<string, number>();
  constructor(readonly core: GovernorCore) {}
  step(progress: (id: string) => Partial<GovernedProgress>, wBps: number, baseBps = 100 * MiB, dtMs = 100, overlay = 64 * MiB): { actions: GovernorAction[]; ended: string[]; world: WorldState; decision: Decision } {
    this.tMs += dtMs;
    const tel = new Map<string, VmTelemetry>();
    for (const id of this.core.ids()) {
      const limit = this.core.inForce(id)!.limits.bps_wr || Infinity;
      this.wr.set(id, (this.wr.get(id) ?? 0) + (Math.min(wBps, limit) * dtMs) / 1000);
      this.copied.set(id, (this.copied.get(id) ?? 0) + (baseBps * dtMs) / 1000);
      tel.set(id, {
        tMs: this.tMs,
        wrBytes: this.wr.get(id)!,
        overlayBytes: overlay,
        progress: { phase: 'base', baseBytesTotal: 100 * GiB, baseBytesCopied: this.copied.get(id)!, ...progress(id) },
      });
    }
    return this.core.tick(this.tMs, tel);
  }
}

function applyAll(core: GovernorCore, actions: readonly GovernorAction[]): void {
  for (const a of actions) core.confirm(a);
}

test('throttle planned from the decision, with hysteresis: small changes are not sent, large ones are', () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 10_000, intervalMs: 100, throttleHysteresis: 0.05 });
  core.attach(setup('a'), 1000);
  const feed = new Feed(core);
  policy.gamma.set('a', 5_000_000);
  let r = feed.step(() => ({}), 8 * MiB);
  assert.equal(r.actions.length, 1);
  const a0 = r.actions[0]!;
  assert.equal(a0.kind, 'set-throttle');
  assert.equal(a0.kind === 'set-throttle' && a0.why, 'policy');
  assert.deepEqual(a0.kind === 'set-throttle' && a0.limits, { ...UNLIMITED, bps_wr: 5_000_000 });
  // Not confirmed (the QMP call failed): the next tick plans it again.
  r = feed.step(() => ({}), 8 * MiB);
  assert.equal(r.actions.length, 1);
  applyAll(core, r.actions);
  assert.equal(core.inForce('a')!.limits.bps_wr, 5_000_000);
  // 4 % change: inside the 5 % band, nothing sent.
  policy.gamma.set('a', 5_200_000);
  assert.deepEqual(feed.step(() => ({}), 8 * MiB).actions, []);
  policy.gamma.set('a', 4_800_000);
  assert.deepEqual(feed.step(() => ({}), 8 * MiB).actions, []);
  // 6 % change: sent.
  policy.gamma.set('a', 5_300_000);
  r = feed.step(() => ({}), 8 * MiB);
  assert.equal(r.actions.length, 1);
  assert.equal((r.actions[0] as { writeBytesPerSec: number }).writeBytesPerSec, 5_300_000);
  applyAll(core, r.actions);
  // γ = null (not throttled): the VM's own limits come back.
  policy.gamma.set('a', null);
  r = feed.step(() => ({}), 8 * MiB);
  assert.equal(r.actions.length, 1);
  assert.deepEqual((r.actions[0] as { limits: ThrottleLimits }).limits, UNLIMITED);
  assert.equal((r.actions[0] as { writeBytesPerSec: number }).writeBytesPerSec, 0);
});

test('never below γ_SLA: a policy asking for less gets the SLA floor (rounded up to a whole byte/s)', () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 12_345.5, intervalMs: 100 });
  core.attach(setup('a'), 0);
  const feed = new Feed(core);
  for (const g of [0, 1, 12_000]) {
    policy.gamma.set('a', g);
    const r = feed.step(() => ({}), 8 * MiB);
    const limits = r.actions.length ? (r.actions[0] as { limits: ThrottleLimits }).limits : core.inForce('a')!.limits;
    assert.equal(limits.bps_wr, 12_346, `γ = ${g}`);
    applyAll(core, r.actions);
  }
  policy.gamma.set('a', 20_000);
  const r = feed.step(() => ({}), 8 * MiB);
  assert.equal((r.actions[0] as { limits: ThrottleLimits }).limits.bps_wr, 20_000);
});

test("the VM's other limits are kept; its own write limit is never loosened; a total limit is split", () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  const user: ThrottleLimits = { bps: 0, bps_rd: 3_000_000, bps_wr: 20_000_000, iops: 0, iops_rd: 0, iops_wr: 400, bps_wr_max: 30_000_000, bps_wr_max_length: 2, group: 'userg' };
  const total: ThrottleLimits = { bps: 8_000_000, bps_rd: 0, bps_wr: 0, iops: 100, iops_rd: 0, iops_wr: 0, bps_max: 9_000_000, bps_max_length: 3, group: 't' };
  core.attach(setup('u', user), 0);
  core.attach(setup('t', total), 0);
  const feed = new Feed(core);
  policy.gamma.set('u', 5_000_000);
  policy.gamma.set('t', 2_000_000);
  let r = feed.step(() => ({}), 8 * MiB);
  const byId = new Map(r.actions.map((a) => [a.id, (a as { limits: ThrottleLimits }).limits]));
  // The write burst scales with the write limit (30/20 × 5 MB/s; 9/8 × 2 MB/s), the read burst stays.
  assert.deepEqual(byId.get('u'), { ...user, bps_wr: 5_000_000, bps_wr_max: 7_500_000 });
  assert.deepEqual(byId.get('t'), { bps: 0, bps_rd: 8_000_000, bps_wr: 2_000_000, iops: 100, iops_rd: 0, iops_wr: 0, bps_rd_max: 9_000_000, bps_wr_max: 2_250_000, bps_rd_max_length: 3, bps_wr_max_length: 3, group: 't' });
  applyAll(core, r.actions);
  // γ above the user's own 20 MB/s: the user's limit is what stays (back to the original).
  policy.gamma.set('u', 50_000_000);
  r = feed.step(() => ({}), 8 * MiB);
  assert.equal(r.actions.length, 1);
  assert.deepEqual((r.actions[0] as { limits: ThrottleLimits }).limits, user);
});

test('a migration that ends gets its originals back in the same tick and leaves the world', () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  const user: ThrottleLimits = { bps: 0, bps_rd: 1_000_000, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 50, group: 'keep' };
  core.attach(setup('a', user), 0);
  core.attach(setup('b'), 0);
  const feed = new Feed(core);
  policy.gamma.set('a', 1_000_000);
  policy.gamma.set('b', 1_000_000);
  policy.share = 40 * MiB;
  // RAM phase long enough for U(t) to be measured: max-bandwidth is set from U(t), not from the
  // policy's share (TCP divides the link; a cap at the share would only idle it).
  let r = feed.step(() => ({ phase: 'ram', ram: { transferred: 0, remaining: GiB, total: GiB } }), 8 * MiB);
  for (let i = 0; i < 8; i++) {
    applyAll(core, r.actions);
    r = feed.step((id) => ({ phase: 'ram', ram: { transferred: feed.tMs * 10_000 + (id === 'a' ? 0 : 1), remaining: GiB, total: GiB } }), 8 * MiB);
  }
  applyAll(core, r.actions);
  assert.ok(core.linkReady);
  const maxBw = core.inForce('a')!.maxBandwidthBytesPerSec!;
  assert.ok(Math.abs(maxBw - core.linkBytesPerSec * 1.25) <= 0.1 * maxBw, `${maxBw} vs U ${core.linkBytesPerSec}`);
  assert.ok(Math.abs(maxBw - 40 * MiB * 1.25) > 0.2 * maxBw, `${maxBw}: not the share`);
  assert.equal(core.inForce('a')!.limits.bps_wr, 1_000_000);
  r = feed.step((id) => (id === 'a' ? { phase: 'rolled-back' } : { phase: 'ram', ram: { transferred: feed.tMs * 10_000, remaining: GiB, total: GiB } }), 8 * MiB);
  assert.deepEqual(r.ended, ['a']);
  assert.deepEqual(
    r.actions.filter((a) => a.id === 'a'),
    [
      { kind: 'set-throttle', id: 'a', limits: user, writeBytesPerSec: 0, why: 'restore' },
      { kind: 'set-max-bandwidth', id: 'a', bytesPerSec: 128 * MiB, why: 'restore' },
    ],
  );
  assert.deepEqual(
    r.world.migrations.map((m) => m.id),
    ['b'],
  );
  applyAll(core, r.actions);
  assert.deepEqual(core.planRestore('a'), []);
  core.remove('a');
  assert.deepEqual(core.ids(), ['b']);
});

test('planRestore / end(): exact originals for whatever was changed, nothing when nothing was', () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  core.attach(setup('a'), 0);
  assert.deepEqual(core.planRestore('a'), []);
  core.confirm({ kind: 'set-throttle', id: 'a', limits: { ...UNLIMITED, bps_wr: 77_777 }, writeBytesPerSec: 77_777, why: 'policy' });
  assert.deepEqual(core.end('a'), [{ kind: 'set-throttle', id: 'a', limits: UNLIMITED, writeBytesPerSec: 0, why: 'restore' }]);
  // Ended: left out of the world, only restored, every tick until confirmed.
  const feed = new Feed(core);
  const r = feed.step(() => ({}), 1 * MiB);
  assert.deepEqual(r.world.migrations, []);
  assert.deepEqual(r.ended, ['a']);
  assert.equal(r.actions.length, 1);
});

test('world built from telemetry: overlay, base left, mirror backlog, RAM pending; setup is not governed; demand from wr_bytes', () => {
  const policy = fixedPolicy();
  const core = new GovernorCore({ policy, omegaBytes: 1 * GiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  core.attach(setup('base'), 0);
  core.attach(setup('mir'), 0);
  core.attach(setup('ram'), 0);
  core.attach(setup('new'), 0);
  const feed = new Feed(core);
  const prog = (id: string): Partial<GovernedProgress> =>
    id === 'mir'
      ? { phase: 'mirror', mirror: { offset: 10 * MiB, len: 30 * MiB } }
      : id === 'ram'
        ? { phase: 'ram', ram: { transferred: 5, remaining: 123 * MiB, total: GiB, 'dirty-pages-rate': 2500 }, migration: { cpuThrottlePercent: 30 } }
        : id === 'new'
          ? { phase: 'setup' }
          : {};
  let r = feed.step(prog, 6 * MiB);
  for (let i = 0; i < 40; i++) r = feed.step(prog, 6 * MiB);
  const w = r.world;
  assert.deepEqual(
    w.migrations.map((m) => [m.id, m.phase]),
    [
      ['base', 'base'],
      ['mir', 'mirror'],
      ['ram', 'ram'],
    ],
  );
  const [b, m, ram] = w.migrations;
  assert.equal(b!.overlayBytes, 64 * MiB);
  assert.equal(b!.mirrorBytesLeft, 64 * MiB, 'during base the whole overlay is still to mirror');
  assert.equal(b!.baseBytesLeft, 100 * GiB - feed.copied.get('base')!);
  assert.equal(m!.baseBytesLeft, 0);
  assert.equal(m!.mirrorBytesLeft, 20 * MiB);
  assert.equal(ram!.ramPendingBytes, 123 * MiB);
  assert.equal(ram!.cpuThrottlePct, 30);
  assert.equal(ram!.ramDirty.ratePagesPerSec, 2500);
  assert.equal(b!.ramDirty.ratePagesPerSec, 0);
  // 4.1 s of 6 MiB/s writes: the demand estimate is within the hysteresis band of it.
  assert.ok(Math.abs(b!.writeBytesPerSecDemand / (6 * MiB) - 1) < 0.2, `demand ${b!.writeBytesPerSecDemand}`);
  assert.equal(w.omegaBytes, GiB);
  assert.equal(w.slaBytesPerSec, 10_000);
  assert.equal(w.intervalSec, 0.1);
  // attached at 0, first reading at 1100 ms, 41 readings 100 ms apart.
  assert.ok(Math.abs(w.nowSec - 5.1) < 1e-9, `nowSec ${w.nowSec}`);
});

test('with the real fitted policy: a small Ω and a long base copy make it throttle below demand, never below γ_SLA', () => {
  const core = new GovernorCore({ policy: fittedPolicy(), omegaBytes: 256 * MiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  core.attach(setup('a'), 0);
  core.attach(setup('b'), 0);
  const feed = new Feed(core);
  let limits: number[] = [];
  for (let i = 0; i < 40; i++) {
    // 20 MiB/s of writes, 10 GiB of base left at 50 MiB/s: ~200 s → 4 GiB of overlay unthrottled.
    const r = feed.step(() => ({ baseBytesTotal: 10 * GiB }), 20 * MiB, 50 * MiB, 100, 16 * MiB);
    applyAll(core, r.actions);
    limits = ['a', 'b'].map((id) => core.inForce(id)!.limits.bps_wr);
  }
  for (const limit of limits) {
    assert.ok(limit >= 10_000, `≥ γ_SLA (${limit})`);
    assert.ok(limit < 20 * MiB * 0.5, `well below the 20 MiB/s demand (${limit})`);
  }
  // What it allows over the rest of the base copy fits in what is left of Ω.
  const total = limits[0]! + limits[1]!;
  assert.ok((total * (10 * GiB - 2 * 20 * MiB)) / (50 * MiB) < 256 * MiB - 32 * MiB, `${limits.join(' + ')} B/s keeps Ω`);
});

test("with the real paper policy: the applied throttle is the paper's γ = min(Π·exp(−s/(Π−s+ε))+ε, U/N)", () => {
  const core = new GovernorCore({ policy: paperPolicy, omegaBytes: 256 * MiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  core.attach(setup('a'), 0);
  core.attach(setup('b'), 0);
  const feed = new Feed(core);
  for (const overlay of [16 * MiB, 100 * MiB, 125 * MiB]) {
    let world: WorldState | undefined;
    for (let i = 0; i < 20; i++) {
      const r = feed.step(() => ({ baseBytesTotal: 10 * GiB }), 20 * MiB, 50 * MiB, 100, overlay);
      applyAll(core, r.actions);
      world = r.world;
    }
    const expected = Math.max(10_000, paperThrottleBytesPerSec({ partitionBytes: 128 * MiB, overlayBytes: overlay, meanPriority: 1, linkShareBytesPerSec: world!.linkBytesPerSec / 2 }));
    for (const id of ['a', 'b']) {
      const got = core.inForce(id)!.limits.bps_wr;
      assert.ok(Math.abs(got / expected - 1) <= 0.05 + 1e-9, `overlay ${overlay / MiB} MiB: ${got} vs paper γ ${expected}`);
    }
  }
});

test('bad options are refused with the option named', () => {
  const policy = fixedPolicy();
  assert.throws(() => new GovernorCore({ policy, omegaBytes: 0, slaBytesPerSec: 1, intervalMs: 100 }), /omegaBytes/);
  assert.throws(() => new GovernorCore({ policy, omegaBytes: 1, slaBytesPerSec: 1, intervalMs: 10 }), /intervalMs: must be a number from 20 to 1000/);
  assert.throws(() => new GovernorCore({ policy, omegaBytes: 1, slaBytesPerSec: 1, intervalMs: 100, throttleHysteresis: 0.9 }), /throttleHysteresis/);
  assert.throws(() => new GovernorCore({ policy: { ...policy, mirrorOnly: true }, omegaBytes: 1, slaBytesPerSec: 1, intervalMs: 100 }), /migration flow/);
  const core = new GovernorCore({ policy, omegaBytes: 1, slaBytesPerSec: 1, intervalMs: 100 });
  core.attach(setup('a'), 0);
  assert.throws(() => core.attach(setup('a'), 0), /already governed/);
  assert.throws(() => core.attach({ ...setup('z'), ramBytes: 0 }, 0), /ramBytes/);
});
