import assert from 'node:assert/strict';
import { test } from 'node:test';
import { uniformHotSetCurve } from '../../src/model/dirty-curve';
import { isPolicyName, makePolicy, POLICY_NAMES } from '../../src/policy/index';
import { mirrorOnlyPolicy } from '../../src/policy/mirror-only';
import { staticPolicy } from '../../src/policy/static';
import type { MigrationView, WorldState } from '../../src/policy/types';
import { unthrottledPolicy } from '../../src/policy/unthrottled';

function view(id: string, overlayBytes: number): MigrationView {
  return {
    id,
    phase: 'base',
    startedSec: 0,
    overlayBytes,
    writeBytesPerSecDemand: 5e6,
    baseBytesLeft: 1e9,
    mirrorBytesLeft: overlayBytes,
    ramBytes: 2 ** 30,
    ramDirty: uniformHotSetCurve(10, 100),
    ramPendingBytes: 2 ** 30,
    cpuThrottlePct: 0,
    failed: false,
    mirrorOnly: false,
  };
}
const w: WorldState = { nowSec: 3, intervalSec: 0.1, omegaBytes: 1000, slaBytesPerSec: 10, linkBytesPerSec: 300, ramMaxBandwidthBytesPerSec: 1e9, downtimeLimitMs: 300, migrations: [view('a', 100), view('b', 250), view('c', 0)] };

test('unthrottled: one shared pool, no throttle, each may grow into all of what is free', () => {
  const d = unthrottledPolicy.decide(w, undefined);
  assert.deepEqual(d.migrations.map((m) => [m.partitionBytes, m.throttleBytesPerSec, m.quotaBytes, m.linkShareBytesPerSec]), [
    [null, null, 100 + 650, 100],
    [null, null, 250 + 650, 100],
    [null, null, 0 + 650, 100],
  ]);
});

test('static: a fixed bin per migration, no throttle; bad sizes rejected', () => {
  const d = staticPolicy(300).decide(w, undefined);
  assert.deepEqual(d.migrations.map((m) => [m.partitionBytes, m.quotaBytes, m.throttleBytesPerSec]), [
    [300, 300, null],
    [300, 300, null],
    [300, 300, null],
  ]);
  assert.throws(() => staticPolicy(0), /staticBinBytes/);
  assert.throws(() => staticPolicy(NaN), /staticBinBytes/);
});

test('mirror-only: no overlay at all, and it asks for the mirror-from-start flow', () => {
  const d = mirrorOnlyPolicy.decide(w, undefined);
  assert.equal(mirrorOnlyPolicy.mirrorOnly, true);
  assert.ok(d.migrations.every((m) => m.partitionBytes === 0 && m.quotaBytes === 0 && m.throttleBytesPerSec === null));
});

test('the registry builds every named policy and rejects unknown names', () => {
  for (const name of POLICY_NAMES) {
    assert.ok(isPolicyName(name));
    const p = makePolicy(name, { staticBinBytes: 100 });
    assert.equal(p.name, name);
    assert.equal(p.decide(w, undefined).migrations.length, 3);
  }
  assert.equal(isPolicyName('greedy'), false);
  assert.throws(() => makePolicy('greedy', { staticBinBytes: 1 }), /policy: must be one of paper, fitted, static, unthrottled, mirror-only/);
});
