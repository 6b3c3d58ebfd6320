/**
 * `dpa lab sim-check` without QEMU: the lab's reading of a scenario (bad fields rejected by name
 * before anything boots), the comparison arithmetic, and the simulator's lab refinements
 * (zero pages, fixed costs, TCP ramp) that the check feeds.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import type { CommandIO } from '../../src/cli/command';
import { runCli } from '../../src/cli/main';
import {
  checkLabScenario,
  checkSimCheckOptions,
  compareTimes,
  LAB_MODEL,
  loadLabScenario,
  runSimCheck,
  simulateWithLabInputs,
  summarizeRuns,
  type SimCheckRun,
  type SimCheckVm,
} from '../../src/migrate/sim-check';
import { unthrottledPolicy } from '../../src/policy/unthrottled';
import { checkSimMigrationModel } from '../../src/sim/migration';
import { simulate } from '../../src/sim/run';
import { parseScenario, type Scenario } from '../../src/sim/scenario';

const MiB = 1024 * 1024;
const shipped = join(__dirname, '..', '..', '..', 'scenarios', 'lab-three.json');

/** A valid lab scenario document (plain JSON, so tests can break one field). */
function doc(): Record<string, unknown> & { vms: Array<Record<string, unknown>> } {
  return {
    version: 1,
    name: 't',
    omegaBytes: 64 * MiB,
    tickMs: 10,
    maxSimSeconds: 300,
    link: { bytesPerSec: 18_750_000 },
    vms: [
      { id: 'a', startSec: 0, diskBytes: 32 * MiB, ramBytes: 128 * MiB, diskWrites: { bytesPerSec: 524288 }, ramDirty: { pagesPerSec: 400, hotPages: 2048 } },
      { id: 'b', startSec: 4, diskBytes: 16 * MiB, ramBytes: 128 * MiB, diskWrites: { bytesPerSec: 12288 }, ramDirty: { pagesPerSec: 0, hotPages: 1 } },
    ],
  };
}

function labError(mutate: (d: ReturnType<typeof doc>) => void): RegExp | string {
  const d = doc();
  mutate(d);
  try {
    checkLabScenario(parseScenario(d));
  } catch (err) {
    assert.ok(err instanceof RangeError, String(err));
    return (err as Error).message;
  }
  return 'accepted';
}

test('the shipped lab scenario is accepted and read as the lab will run it', () => {
  const { scenario, plan } = loadLabScenario(shipped);
  assert.equal(scenario.name, 'lab-three');
  assert.equal(plan.linkMbit, 150);
  assert.equal(plan.omegaBytes, 64 * MiB);
  assert.deepEqual(
    plan.vms.map((v) => [v.id, v.startSec, v.diskMib, v.guestMib, v.blockBytes, v.blocksPerSec, v.memMib, v.hotPages, v.pagesPerSec]),
    [
      ['a', 0, 32, 128, 65536, 8, 8, 2048, 400],
      ['b', 4, 24, 128, 65536, 4, 8, 2048, 300],
      ['c', 8, 16, 128, 65536, 2, 4, 1024, 200],
    ],
  );
  // Rates that are not whole 64 KiB clusters are written in 4 KiB blocks.
  const p = checkLabScenario(parseScenario(doc()));
  assert.deepEqual([p.vms[1]!.blockBytes, p.vms[1]!.blocksPerSec], [4096, 3]);
});

test('fields the lab cannot reproduce are rejected with their JSON path', () => {
  const cases: Array<[string, (d: ReturnType<typeof doc>) => void]> = [
    ['link.points', (d) => (d.link = { points: [[0, 18_750_000], [5, 9_000_000]] })],
    ['link.bytesPerSec', (d) => (d.link = { bytesPerSec: 1_000_000 })],
    ['omegaBytes', (d) => (d.omegaBytes = 8 * 1024 * MiB)],
    ['vms:', (d) => (d.vms = [0, 1, 2, 3, 4].map((i) => ({ ...d.vms[0]!, id: `v${i}` })))],
    ['vms[0].startSec', (d) => (d.vms[0]!.startSec = 500)],
    ['vms[1].diskBytes', (d) => (d.vms[1]!.diskBytes = 16 * MiB + 4096)],
    ['vms[1].diskBytes', (d) => (d.vms[1]!.diskBytes = 4 * MiB)],
    ['vms[0].ramBytes', (d) => (d.vms[0]!.ramBytes = 64 * MiB)],
    ['vms[0].diskWrites.points', (d) => (d.vms[0]!.diskWrites = { points: [[0, 65536], [3, 131072]] })],
    ['vms[0].diskWrites.bytesPerSec', (d) => (d.vms[0]!.diskWrites = { bytesPerSec: 1000 })],
    ['vms[0].diskWrites.bytesPerSec', (d) => (d.vms[0]!.diskWrites = { bytesPerSec: 64 * MiB })],
    ['vms[0].ramDirty.pagesPerSec', (d) => (d.vms[0]!.ramDirty = { pagesPerSec: 50_000, hotPages: 2048 })],
    ['vms[0].ramDirty.hotPages', (d) => (d.vms[0]!.ramDirty = { pagesPerSec: 100, hotPages: 20_000 })],
  ];
  for (const [path, mutate] of cases) {
    const msg = labError(mutate);
    assert.ok(typeof msg === 'string' && msg.startsWith(path), `${path}: got ${String(msg)}`);
    assert.match(String(msg), /dpa lab sim-check/);
  }
  // The scenario format's own checks come first, with their paths.
  assert.match(String(labError((d) => delete (d as Record<string, unknown>).omegaBytes)), /^omegaBytes: missing/);
});

test('options and files are checked before anything boots', async () => {
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, policy: 'fitted' as 'unthrottled' }), /^RangeError: policy: must be one of unthrottled/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, labModel: { warpSec: 1 } as never }), /labModel\.warpSec: unknown/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, labModel: { setupSec: -1 } }), /labModel\.setupSec: must be a number of seconds from 0 to 60/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, migrationTimeoutS: 5 }), /migrationTimeoutS: must be an integer from 10 to 3600/);
  assert.throws(() => checkSimCheckOptions({ scenario: '' }), /scenario: must be a non-empty file path/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, runs: 0 }), /runs: must be an integer from 1 to 5/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, runs: 1.5 }), /runs: must be an integer from 1 to 5/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, linkLatencyMs: 0 }), /linkLatencyMs: must be an integer from 1 to 1000/);
  assert.throws(() => checkSimCheckOptions({ scenario: shipped, linkQueue: 'sfq' as never }), /^RangeError: linkQueue: must be 'fair' or 'fifo' \(got "sfq"\)/);
  assert.throws(() => loadLabScenario('/nonexistent/lab.json'), /^RangeError: scenario: cannot read \/nonexistent\/lab\.json/);
  const dir = mkdtempSync(join(tmpdir(), 'dpa-simcheck-'));
  try {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"version": 1,');
    assert.throws(() => loadLabScenario(bad), /^ScenarioError: \$: not valid JSON/);
    // Ω too small for an unthrottled comparison: refused by the simulator's own verdict, before QEMU.
    const small = doc();
    small.omegaBytes = 2 * MiB;
    const file = join(dir, 'small.json');
    writeFileSync(file, JSON.stringify(small));
    await assert.rejects(runSimCheck({ scenario: file }), /^ScenarioError: omegaBytes: too small for the unthrottled comparison/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dpa lab sim-check: usage and scenario errors exit 2 naming the problem', async () => {
  const run = async (argv: string[]): Promise<[number, string]> => {
    let err = '';
    const io: CommandIO = { out: () => undefined, err: (t) => (err += t), isTTY: false, signal: new AbortController().signal };
    return [await runCli(argv, io), err];
  };
  const [code0, err0] = await run(['lab', 'sim-check']);
  assert.equal(code0, 2);
  assert.match(err0, /needs exactly one scenario file/);
  const [code1, err1] = await run(['lab', 'sim-check', shipped, '--policy', 'paper']);
  assert.equal(code1, 2);
  assert.match(err1, /--policy: must be one of unthrottled/);
  const [code2, err2] = await run(['lab', 'sim-check', '/nonexistent/lab.json']);
  assert.equal(code2, 2);
  assert.match(err2, /scenario: cannot read/);
});

test('compareTimes: signed errors per VM, max and median of their magnitudes', () => {
  const c = compareTimes([
    { simulatedSec: 11, labSec: 10 },
    { simulatedSec: 16, labSec: 20 },
    { simulatedSec: 30, labSec: 30 },
  ]);
  assert.deepEqual(c.errorPct.map((e) => Math.round(e! * 1e9) / 1e9), [10, -20, 0]);
  assert.equal(Math.round(c.maxErrorPct! * 1e9) / 1e9, 20);
  assert.equal(Math.round(c.p50ErrorPct! * 1e9) / 1e9, 10);
  const missing = compareTimes([{ simulatedSec: null, labSec: 10 }, { simulatedSec: 5, labSec: 5 }]);
  assert.equal(missing.errorPct[0], null);
  assert.equal(missing.maxErrorPct, null);
});

test('summarizeRuns: per VM means over runs; the error is the mean simulation against the mean lab time', () => {
  const parts = (x: number) => ({ setup: x, base: x, mirror: x, ram: x, switchover: x });
  const vm = (id: string, sim: number | null, lab: number, phase: SimCheckVm['phase'] = 'completed', verified = true): SimCheckVm => ({
    id,
    startSec: 0,
    simulatedSec: sim,
    labSec: lab,
    errorPct: sim === null || phase !== 'completed' ? null : ((sim - lab) / lab) * 100,
    simulatedParts: sim === null ? null : parts(sim / 5),
    labParts: parts(lab / 5),
    phase,
    zeroPageFraction: 0.3,
    achieved: { diskWriteBytesPerSec: 0, pagesPerSec: 0 },
    overlayPeakBytes: 0,
    mirrorBytes: 0,
    ram: null,
    verified,
  });
  const run = (vms: SimCheckVm[]): SimCheckRun => {
    const c = compareTimes(vms.map((v) => ({ simulatedSec: v.simulatedSec, labSec: v.phase === 'completed' ? v.labSec : null })));
    return { perVm: vms, maxErrorPct: c.maxErrorPct, p50ErrorPct: c.p50ErrorPct, dataVerified: vms.every((v) => v.verified) } as SimCheckRun;
  };
  const s = summarizeRuns([run([vm('a', 11, 10), vm('b', 20, 25)]), run([vm('a', 13, 14), vm('b', 20, 15)])]);
  assert.deepEqual(s.perVm.map((v) => [v.id, v.simulatedSec, v.labSec, v.labRunsSec]), [['a', 12, 12, [10, 14]], ['b', 20, 20, [25, 15]]]);
  assert.deepEqual(s.perVm.map((v) => Math.round(v.errorPct! * 1e9) / 1e9), [0, 0]);
  // Each run alone was off by up to 33 %: the means agree, and the per-run figures say how much each run missed.
  assert.deepEqual(s.runMaxErrorPct.map((e) => Math.round(e! * 10) / 10), [20, 33.3]);
  assert.equal(s.perVm[0]!.labParts.ram, 2.4);
  assert.equal(s.dataVerified, true);
  // A VM that failed in one run has no error figure, and the data is not verified.
  const f = summarizeRuns([run([vm('a', 11, 10)]), run([vm('a', 11, 30, 'rolled-back', false)])]);
  assert.equal(f.perVm[0]!.errorPct, null);
  assert.equal(f.perVm[0]!.labSec, 10);
  assert.equal(f.maxErrorPct, null);
  assert.equal(f.dataVerified, false);
});

/** One VM alone: 16 MiB disk, 128 MiB RAM, no guest activity, 10 ms ticks. */
function alone(link = 20e6): Scenario {
  return parseScenario({
    version: 1,
    name: 'alone',
    omegaBytes: 64 * MiB,
    tickMs: 10,
    maxSimSeconds: 120,
    link: { bytesPerSec: link },
    vms: [{ id: 'a', startSec: 0, diskBytes: 16 * MiB, ramBytes: 128 * MiB, diskWrites: { bytesPerSec: 0 }, ramDirty: { pagesPerSec: 0, hotPages: 1 } }],
  });
}

test('simulator: zero pages cost 9 bytes in the first pass; fixed costs add their time', () => {
  const s = alone();
  const plain = simulate(s, unthrottledPolicy, { phaseTimes: true });
  const p0 = plain.phaseStartSec!.a!;
  const ram0 = p0.switchover! - p0.ram!;
  // 32768 pages × 4104 B at 20 MB/s, minus the last 300 ms that go at the switchover.
  assert.ok(Math.abs(ram0 - (32768 * 4104) / 20e6) < 0.35, `ram ${ram0}`);
  const half = simulate(s, unthrottledPolicy, { phaseTimes: true, migrationModel: { a: { zeroPageFraction: 0.5 } } });
  const p1 = half.phaseStartSec!.a!;
  const ram1 = p1.switchover! - p1.ram!;
  const expected = (16384 * 4104 + 16384 * 9) / 20e6;
  assert.ok(Math.abs(ram1 - expected) < 0.35 && ram1 < 0.6 * ram0, `ram ${ram1} vs ${expected}`);
  // Fixed costs: alone and idle, the completion grows by their sum (to a tick per phase).
  const costs = { setupSec: 0.2, mirrorSetupSec: 0.3, ramSetupSec: 0.4, switchoverSec: 0.5 };
  const fixed = simulate(s, unthrottledPolicy, { migrationModel: { a: costs } }).result.completionSec.a!;
  const grown = fixed - plain.result.completionSec.a!;
  assert.ok(Math.abs(grown - 1.4) <= 0.05, `grew ${grown}`);
  // Alone, a TCP ramp changes nothing (water filling gives a lone stream the whole link).
  const ramped = simulate(s, unthrottledPolicy, { migrationModel: { a: { streamRampSec: 2 } } }).result.completionSec.a!;
  assert.ok(Math.abs(ramped - plain.result.completionSec.a!) < 0.05, `ramped ${ramped}`);
  assert.throws(() => simulate(s, unthrottledPolicy, { migrationModel: { zz: {} } }), /migrationModel\.zz: no VM with this id/);
  assert.throws(() => checkSimMigrationModel({ zeroPageFraction: 1.5 }), /model\.zeroPageFraction: must be a number from 0 to 1/);
  assert.throws(() => checkSimMigrationModel({ speedUp: 1 } as never), /model\.speedUp: unknown field/);
});

test('simulator: a TCP ramp favours the migration already on the link', () => {
  const two = parseScenario({
    ...alone(),
    vms: [
      { id: 'a', startSec: 0, diskBytes: 16 * MiB, ramBytes: 128 * MiB, diskWrites: { bytesPerSec: 0 }, ramDirty: { pagesPerSec: 0, hotPages: 1 } },
      { id: 'b', startSec: 2, diskBytes: 16 * MiB, ramBytes: 128 * MiB, diskWrites: { bytesPerSec: 0 }, ramDirty: { pagesPerSec: 0, hotPages: 1 } },
    ],
  });
  const fair = simulate(two, unthrottledPolicy).result.completionSec;
  const ramp = simulate(two, unthrottledPolicy, { migrationModel: { a: { streamRampSec: 2 }, b: { streamRampSec: 2 } } }).result.completionSec;
  assert.ok(ramp.a! < fair.a! - 0.2, `a ${ramp.a} vs ${fair.a}`);
  // The link does the same work in all: the last to finish ends at the same time to a few ticks.
  assert.ok(Math.abs(Math.max(ramp.a!, ramp.b!) - Math.max(fair.a!, fair.b!)) < 0.1);
});

test('simulateWithLabInputs replaces link and RAM by the measured values and reports phase parts', () => {
  const { scenario } = loadLabScenario(shipped);
  const ids = scenario.vms.map((v) => v.id);
  const inputs = {
    linkBytesPerSec: 17.9e6,
    ramBytes: Object.fromEntries(ids.map((id) => [id, 128 * MiB + 8192])),
    zeroPageFraction: Object.fromEntries(ids.map((id) => [id, 0.3])),
    labModel: LAB_MODEL,
  };
  const r = simulateWithLabInputs(scenario, inputs);
  assert.deepEqual(r.scenario.link, { bytesPerSec: 17.9e6 });
  assert.ok(r.scenario.vms.every((v) => v.ramBytes === 128 * MiB + 8192));
  for (const id of ids) {
    const v = r.perVm[id]!;
    const p = v.parts!;
    assert.ok(v.simulatedSec! > 0);
    assert.equal(p.setup, LAB_MODEL.setupSec);
    const sum = p.setup + p.base + p.mirror + p.ram + p.switchover;
    assert.ok(Math.abs(sum - v.simulatedSec!) < 1e-6, `${id}: parts ${sum} vs ${v.simulatedSec}`);
    assert.ok(p.ram > p.base, `${id}: RAM (≈100 MB) dominates its disk (≤ 32 MiB)`);
  }
  // Concurrency slows each one down: alone, each would take less; b and c start into a busy link.
  for (const vm of scenario.vms) {
    const solo = simulateWithLabInputs({ ...scenario, vms: [{ ...vm, startSec: 0 }] }, inputs).perVm[vm.id]!.simulatedSec!;
    const factor = vm.id === 'a' ? 1.15 : 1.8;
    assert.ok(r.perVm[vm.id]!.simulatedSec! > factor * solo, `${vm.id}: ${r.perVm[vm.id]!.simulatedSec} vs alone ${solo}`);
  }
  // A slower link makes every migration slower.
  const slow = simulateWithLabInputs(scenario, { ...inputs, linkBytesPerSec: 12e6 });
  for (const id of ids) assert.ok(slow.perVm[id]!.simulatedSec! > r.perVm[id]!.simulatedSec! * 1.2);
});
