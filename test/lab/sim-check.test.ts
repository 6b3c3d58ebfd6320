/**
 * Simulator vs lab on real parts (src/migrate/sim-check.ts): scenarios/lab-three.json — three
 * 128 MiB TCG guests with 32/24/16 MiB disks starting 0, 4 and 8 s apart over one 150 Mbit/s link
 * (tbf rate, per-flow fair queueing: how the simulator shares a link) into a 64 MiB tmpfs Ω — run
 * in the simulator (fed with the link goodput and zero-page shares measured before the
 * migrations) and twice in the lab, each time on fresh guests. Asserted: issue 5's target, every
 * VM's mean completion time within 15 % of the simulator's, and every VM within 25 % in each
 * single run. ~100–120 s. (On a FIFO link, `--link-queue fifo`, TCP's own sharing decides who
 * waits, differently in every run: docs/BENCHMARKS.md "Simulator vs lab".)
 *
 * What would make it fail if the comparison were broken: the simulator fed a link 1.5× too fast or
 * too slow misses the 15 % on some VM against the same lab times, and so does the simulator with
 * the FIFO link's join ramp (streams that take 2.5 s to win their share); both worlds must show
 * the concurrency (each VM slower than it would be alone), so a lab that ran the migrations one
 * after the other, or a simulator that did not share the link, would fail (b and c take ~2× their
 * time alone in both).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { compareTimes, FIFO_STREAM_RAMP_SEC, loadLabScenario, runSimCheck, simulateWithLabInputs } from '../../src/migrate/sim-check';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;
const shipped = join(__dirname, '..', '..', '..', 'scenarios', 'lab-three.json');

test('sim-check: lab-three in the simulator and twice on real QEMU, mean completions compared', { ...prereq, timeout: 300_000 }, async (t) => {
  const r = await runSimCheck({ scenario: shipped, runs: 2 });
  const why = JSON.stringify({ ...r, details: r.details.map((d) => ({ ...d, simulatedScenario: undefined })) });
  for (const v of r.perVm) {
    t.diagnostic(`${v.id}: simulated ${v.simulatedSec?.toFixed(2)} s, lab ${v.labRunsSec.map((x) => x.toFixed(2)).join(' / ')} s, error of the mean ${v.errorPct?.toFixed(1)} % (runs ${v.runErrorPct.map((e) => e?.toFixed(1)).join(' / ')} %)`);
  }
  t.diagnostic(`max |error| ${r.maxErrorPct?.toFixed(1)} %, per run ${r.runMaxErrorPct.map((e) => e?.toFixed(1)).join(' / ')} %, load ${r.loadAverage.start} → ${r.loadAverage.end}`);
  const { scenario } = loadLabScenario(shipped);
  assert.equal(r.scenario, 'lab-three');
  assert.equal(r.policy, 'unthrottled');
  assert.equal(r.runs, 2);
  assert.deepEqual(r.perVm.map((v) => v.id), ['a', 'b', 'c'], why);
  for (const d of r.details) {
    // Inputs were measured: tbf 150 Mbit/s gives ~95 % of it as TCP goodput; a booted guest is ~30 % zero pages.
    assert.ok(d.inputs.linkBytesPerSec > 0.8 * (150e6 / 8) && d.inputs.linkBytesPerSec < 150e6 / 8, why);
    assert.equal(d.lab.overflow, false, why);
    for (const v of d.perVm) {
      assert.equal(v.phase, 'completed', why);
      assert.equal(v.verified, true, why);
      assert.ok(v.zeroPageFraction > 0.05 && v.zeroPageFraction < 0.6, why);
      // The guests ran the scenario's rates (±25 %), and QEMU never throttled them (no auto-converge).
      const vm = scenario.vms.find((x) => x.id === v.id)!;
      const disk = 'bytesPerSec' in vm.diskWrites ? vm.diskWrites.bytesPerSec : NaN;
      assert.ok(Math.abs(v.achieved.diskWriteBytesPerSec - disk) <= 0.25 * disk, why);
      assert.ok(Math.abs(v.achieved.pagesPerSec - vm.ramDirty.pagesPerSec) <= 0.25 * vm.ramDirty.pagesPerSec, why);
      assert.equal(v.ram?.maxCpuThrottlePct, 0, why);
    }
    assert.equal(d.inputs.linkQueue, 'fair');
    // A single run is noisier (a burst of host load slows a whole run): bounded at 25 %.
    assert.ok(d.maxErrorPct !== null && d.maxErrorPct <= 25, why);
  }
  assert.equal(r.dataVerified, true, why);
  // The target: every VM within 15 % (the mean of its runs).
  for (const v of r.perVm) {
    assert.ok(v.verified && v.errorPct !== null, why);
    assert.ok(Math.abs(v.errorPct) <= 15, `${v.id}: ${v.errorPct.toFixed(1)} % ${why}`);
  }

  // Concurrency is real in both worlds: b and c, which start into a busy link, take ≥ 1.5× what
  // they would take alone (simulated, ~2.1× measured); a, alone for its first 4 s, ≥ 1.1×.
  const inputs = r.details[0]!.inputs;
  for (const v of r.perVm) {
    const vm = scenario.vms.find((x) => x.id === v.id)!;
    const solo = simulateWithLabInputs({ ...scenario, vms: [{ ...vm, startSec: 0 }] }, inputs).perVm[v.id]!.simulatedSec!;
    const factor = v.id === 'a' ? 1.1 : 1.5;
    assert.ok(v.simulatedSec! > factor * solo && v.labSec > factor * solo, `${v.id}: alone ${solo.toFixed(2)} s ${why}`);
  }
  // The comparison can fail: fed a link 1.5× off either way, the simulator misses the same lab times.
  for (const factor of [1.5, 1 / 1.5]) {
    const wrong = simulateWithLabInputs(scenario, { ...inputs, linkBytesPerSec: inputs.linkBytesPerSec * factor });
    const cmp = compareTimes(r.perVm.map((v) => ({ simulatedSec: wrong.perVm[v.id]!.simulatedSec, labSec: v.labSec })));
    assert.ok(cmp.maxErrorPct! > 15, `link ×${factor.toFixed(2)}: max ${cmp.maxErrorPct} %`);
  }
  // … and so can the link model: with a FIFO's join ramp the first migration keeps the link too long.
  const fifo = simulateWithLabInputs(scenario, { ...inputs, labModel: { ...inputs.labModel, streamRampSec: FIFO_STREAM_RAMP_SEC } });
  const cmpFifo = compareTimes(r.perVm.map((v) => ({ simulatedSec: fifo.perVm[v.id]!.simulatedSec, labSec: v.labSec })));
  assert.ok(cmpFifo.maxErrorPct! > 15, `FIFO ramp: max ${cmpFifo.maxErrorPct} %`);
});
