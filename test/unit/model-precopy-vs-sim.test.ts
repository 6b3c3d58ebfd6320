/**
 * Cross-check of two independent implementations of QEMU 7.2 pre-copy: the pass-level predictor
 * (src/model/precopy.ts) and the simulator's tick-level loop (src/sim/migration.ts), which syncs
 * the bitmap whenever the pending bytes drop below the threshold, as ram_save_pending does.
 * Total RAM-phase time and the final auto-converge throttle must agree; the downtime does not,
 * by design (the predictor's is a lower bound, see precopy.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { uniformHotSetCurve } from '../../src/model/dirty-curve';
import { predictPrecopy } from '../../src/model/precopy';
import { SimMigration } from '../../src/sim/migration';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

test('predictPrecopy agrees with the simulator on RAM-phase time (≤ 5 %) and throttle (≤ one step)', (t) => {
  const bandwidth = 100 * MiB;
  const guests: Array<[ramGiB: number, pagesPerSec: number, hotPages: number]> = [
    [1, 0, 1],
    [1, 5000, 262144],
    [4, 10000, 200000],
    [4, 20000, 100000],
    [4, 30000, 1000000],
    [8, 40000, 2000000],
    [2, 60000, 30000],
    [4, 25000, 4096],
  ];
  const rows: string[] = ['ram GiB  pages/s   hot pages  sim s    pred s   diff    sim thr  pred thr  sim dt ms  pred dt ms'];
  for (const [ramGiB, R, H] of guests) {
    const vm = { id: 'g', startSec: 0, diskBytes: 1, ramBytes: ramGiB * GiB, diskWrites: { bytesPerSec: 0 }, ramDirty: { pagesPerSec: R, hotPages: H } };
    const sim = new SimMigration(vm, false);
    sim.start(0);
    const dtSec = 0.01;
    let now = 0;
    let ramStart: number | null = null;
    while (sim.phase !== 'done' && now < 3600) {
      sim.demandAt(now);
      if (sim.phase === 'ram' && ramStart === null) ramStart = now;
      sim.transfer(now, dtSec, bandwidth, null);
      now += dtSec;
    }
    assert.equal(sim.phase, 'done', `sim of ${ramGiB} GiB / ${R} pages/s did not finish`);
    const simSec = now - ramStart!;
    const p = predictPrecopy({ ramBytes: ramGiB * GiB, zeroPageFraction: 0, bandwidthBytesPerSec: bandwidth, downtimeLimitMs: 300, dirty: uniformHotSetCurve(R, H), explain: false });
    assert.equal(p.converges, true);
    const diff = p.totalSec / simSec - 1;
    rows.push(
      `${String(ramGiB).padStart(7)}  ${String(R).padStart(7)}  ${String(H).padStart(10)}  ${simSec.toFixed(2).padStart(7)}  ${p.totalSec.toFixed(2).padStart(7)}  ${(diff * 100).toFixed(1).padStart(5)}%  ${String(sim.cpuThrottlePct).padStart(7)}  ${String(p.finalThrottlePct).padStart(8)}  ${sim.downtimeMs.toFixed(0).padStart(9)}  ${p.downtimeMs.toFixed(0).padStart(10)}`,
    );
    assert.ok(Math.abs(diff) <= 0.05, `${ramGiB} GiB / ${R} pages/s: predicted ${p.totalSec} s vs simulated ${simSec} s`);
    assert.ok(Math.abs(p.finalThrottlePct - sim.cpuThrottlePct) <= 10, `throttle ${p.finalThrottlePct} vs ${sim.cpuThrottlePct}`);
    // The predictor's downtime never exceeds what QEMU's switchover rule allows.
    assert.ok(p.downtimeMs <= 300 * (4104 / 4096) + 1e-9);
  }
  for (const row of rows) t.diagnostic(row);
});
