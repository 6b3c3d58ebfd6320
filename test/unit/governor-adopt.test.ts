/**
 * Taking over a crashed governor's VMs (restart of `dpa govern` on the same monitors): reconcile
 * hands their entries over instead of restoring them, and the core starts from the settings in
 * force, only tightening them until the guest's demand has been measured. (End to end on a real
 * migration: test/lab/governor-kill.test.ts.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { GovernorCore } from '../../src/governor/core';
import { readStateFile, reconcile, StateFile, type StateEntry } from '../../src/governor/state-file';
import { UNLIMITED, withWriteLimit } from '../../src/governor/throttle';
import type { GovernorAction } from '../../src/governor/types';
import type { Decision, Policy, WorldState } from '../../src/policy/types';

const MiB = 1024 * 1024;

function entry(id: string, monitorPath: string): StateEntry {
  return {
    id,
    monitorPath,
    deviceQomPath: '/machine/peripheral/root/virtio-backend',
    originalLimits: { ...UNLIMITED },
    originalMaxBandwidthBytesPerSec: 128 * MiB,
    applied: { limits: withWriteLimit(UNLIMITED, 200_000), maxBandwidthBytesPerSec: 6 * MiB },
  };
}

test('reconcile with adopt: the adopted entries are handed over and kept in the file, the others reconciled', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-adopt-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'state.json');
  // Neither monitor exists: without adopt both would be 'gone' and the file cleared.
  const kept = entry('a', join(dir, 'a.sock'));
  await new StateFile(path).save([kept, entry('b', join(dir, 'b.sock'))]);
  const report = await reconcile(path, { adopt: new Set([kept.monitorPath]) });
  assert.deepEqual(report, { entries: 2, restored: [], gone: ['b'], modified: [], failed: [], adopted: [kept] });
  assert.deepEqual((await readStateFile(path))!.entries, [kept], 'the undo of the adopted VM stays on disk');
  // Without adopt the same entry is reconciled (gone) and the file removed.
  assert.deepEqual(await reconcile(path), { entries: 1, restored: [], gone: ['a'], modified: [], failed: [] });
  assert.equal(await readStateFile(path), null);
});

/** Always answers γ = `gamma` (null: no throttle). */
function constPolicy(gamma: () => number | null): Policy {
  return {
    name: 'static',
    mirrorOnly: false,
    decide(world: WorldState): Decision {
      return {
        policy: 'const',
        atSec: world.nowSec,
        reason: 'const',
        migrations: world.migrations.map((m) => ({ id: m.id, partitionBytes: null, quotaBytes: Infinity, throttleBytesPerSec: gamma(), linkShareBytesPerSec: 1 * MiB, meanPriority: 1, failed: false })),
      };
    },
  };
}

test('core: a throttle taken over is only tightened until the demand has been measured for τ, then the policy rules', () => {
  let gamma: number | null = null;
  const core = new GovernorCore({ policy: constPolicy(() => gamma), omegaBytes: 64 * MiB, slaBytesPerSec: 10_000, intervalMs: 100, demand: { tauMs: 1000 } });
  const taken = withWriteLimit(UNLIMITED, 200_000);
  core.attach({ id: 'vm', ramBytes: 128 * MiB, originalLimits: { ...UNLIMITED }, originalMaxBandwidthBytesPerSec: 128 * MiB, downtimeLimitMs: 300 }, 0, { limits: taken, maxBandwidthBytesPerSec: 6 * MiB });
  assert.deepEqual(core.inForce('vm'), { limits: taken, maxBandwidthBytesPerSec: 6 * MiB });
  let wr = 0;
  const step = (tMs: number): GovernorAction[] => {
    wr += 20_000; // 200 kB/s at 100 ms ticks: the guest fills its throttle
    const r = core.tick(tMs, new Map([['vm', { tMs, wrBytes: wr, overlayBytes: 1 * MiB, progress: { phase: 'base' as const, baseBytesTotal: 64 * MiB, baseBytesCopied: tMs * 1000 } }]]));
    for (const a of r.actions) core.confirm(a);
    return r.actions;
  };
  // The policy says "no throttle" from the first tick: the taken-over throttle is held for τ.
  for (let tMs = 100; tMs < 1000; tMs += 100) assert.deepEqual(step(tMs), [], `held at ${tMs} ms`);
  // Tightening is never held back.
  gamma = 50_000;
  const tighter = step(1000 - 50);
  assert.equal(tighter.length, 1);
  assert.equal(tighter[0]!.kind === 'set-throttle' && tighter[0]!.writeBytesPerSec, 50_000);
  // After τ the policy's "no throttle" is applied: the originals come back.
  gamma = null;
  const after = step(1100);
  assert.deepEqual(
    after.map((a) => [a.kind, a.why, a.kind === 'set-throttle' ? a.limits : null]),
    [['set-throttle', 'policy', UNLIMITED]],
  );
  // And at the end the restore puts back the original max-bandwidth too (taken over as in force).
  assert.deepEqual(
    core.end('vm').map((a) => [a.kind, a.kind === 'set-max-bandwidth' ? a.bytesPerSec : null]),
    [['set-max-bandwidth', 128 * MiB]],
  );
});
