/**
 * `dpa bench governor`: the synthetic fleet reacts to the governor's throttles, and the command
 * reports the tick cost for fitted and paper.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../../src/cli/main';
import { benchGovernor } from '../../src/governor/bench';
import { GovernorCore } from '../../src/governor/core';
import { SyntheticFleet } from '../../src/governor/synthetic';
import { fittedPolicy } from '../../src/policy/fitted';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

test('synthetic fleet: the throttles the core puts in force cap the guests’ measured writes', () => {
  const fleet = new SyntheticFleet({ vms: 4, intervalMs: 100, seed: 7 });
  const core = new GovernorCore({ policy: fittedPolicy(), omegaBytes: 2 * GiB, slaBytesPerSec: 10_000, intervalMs: 100 });
  for (const s of fleet.setups()) core.attach(s, fleet.nowMs);
  const last = new Map<string, number>();
  let checked = 0;
  for (let k = 0; k < 600; k++) {
    const tel = fleet.step(core);
    for (const [id, t] of tel) {
      const limit = core.inForce(id)?.limits.bps_wr ?? 0;
      const prev = last.get(id);
      // Per-tick noise is at most +40 % of the written bytes.
      if (prev !== undefined && limit > 0 && t.progress.phase === 'base') {
        assert.ok(t.wrBytes! - prev <= limit * 0.1 * 1.4 + 1, `${id}: ${t.wrBytes! - prev} bytes in 100 ms under ${limit} B/s`);
        checked++;
      }
      last.set(id, t.wrBytes!);
    }
    const r = core.tick(fleet.nowMs, tel);
    for (const a of r.actions) core.confirm(a);
    for (const id of r.ended) {
      core.remove(id);
      last.delete(id);
      core.attach(fleet.replace(id), fleet.nowMs);
    }
  }
  assert.ok(checked > 100, `throttled ticks checked: ${checked}`);
});

test('benchGovernor: times the pure tick for fitted and paper on a fleet that needs throttling', () => {
  for (const policy of ['fitted', 'paper'] as const) {
    const r = benchGovernor({ vms: 8, ticks: 200, warmupTicks: 20, intervalMs: 100, policy, omegaBytes: 4 * GiB, linkBytesPerSec: 1.25e9, seed: 3 });
    assert.equal(r.vms, 8);
    assert.equal(r.ticks, 200);
    assert.ok(r.tickUs > 0 && r.tickUs <= r.tickUsP99 && r.tickUsP99 <= r.tickUsMax, JSON.stringify(r));
    assert.ok(r.throttledVmsMean > 0, `${policy}: some VM throttled`);
    assert.ok(r.logBytesMean > 1000);
    if (policy === 'fitted') assert.ok(r.solveFraction! > 0 && r.solveFraction! <= 1);
    else assert.equal(r.solveFraction, null);
  }
});

test('dpa bench governor --json: one document with vms, tickUs, tickUsP99 and both policies', async () => {
  let out = '';
  const io = { out: (s: string) => void (out += s), err: (s: string) => void (out += s), isTTY: false, signal: new AbortController().signal };
  assert.equal(await runCli(['bench', 'governor', '--vms', '4', '--ticks', '50', '--warmup-ticks', '10', '--json'], io), 0);
  const doc = JSON.parse(out) as { vms: number; tickUs: number; tickUsP99: number; policies: Record<string, { tickUs: number }> };
  assert.equal(doc.vms, 4);
  assert.ok(doc.tickUs > 0 && doc.tickUsP99 >= doc.tickUs);
  assert.deepEqual(Object.keys(doc.policies).sort(), ['fitted', 'paper']);
  assert.equal(doc.tickUs, doc.policies.fitted!.tickUs);
  assert.equal(await runCli(['bench', 'governor', '--vms', '0'], io), 2);
});
