/**
 * The governor on real QEMU 7.2 (TCG) with guests that really write to their disks:
 * - it throttles a writing guest when Ω is at risk, the throttle acts (the guest's measured write
 *   rate drops to it), the VM's other limits are kept, and stop() puts back the previous limits
 *   exactly, including a user's own throttle (burst, iops, group);
 * - crash: `dpa govern` in a child process is SIGKILLed after it throttled; a new governor's
 *   reconcile puts the originals back and clears the state file;
 * - QEMU killed while governed: the governor drops that VM and goes on with the other.
 * The migration is synthetic (phase 'base', a base copy progressing at a stated rate) and the
 * overlay is the guest's raw disk itself (its actual-size grows as the guest writes), so the
 * policy sees a real growing overlay and real write rates.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { Governor } from '../../src/governor/governor';
import { readStateFile } from '../../src/governor/state-file';
import { readLimits, throttleArgs } from '../../src/governor/throttle';
import type { GovernedMigration, GovernedProgress, ThrottleLimits } from '../../src/governor/types';
import { LabVm } from '../../src/lab/vm';
import type { QmpClient, QmpEvent } from '../../src/qmp/client';
import { blockSetIoThrottle, queryBlock, queryBlockstats, queryMigrateParameters, queryNamedBlockNodes, queryStatus } from '../../src/qmp/commands';
import { needs, qemuMissing } from '../helpers/prereq';
import { waitFor } from '../helpers/wait';

const qemu = needs('qemu', qemuMissing());
const MiB = 1024 * 1024;
const QDEV = '/machine/peripheral/root/virtio-backend';
const DPA = join(__dirname, '..', '..', '..', 'bin', 'dpa.js');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A user's own throttle on VM B, with every kind of field the governor must keep and restore. */
const USER_LIMITS = { bps: 0, bps_rd: 30_000_000, bps_wr: 20_000_000, iops: 0, iops_rd: 0, iops_wr: 400, bps_wr_max: 30_000_000, bps_wr_max_length: 2, group: 'userg' };

async function limitsOf(q: QmpClient): Promise<ThrottleLimits> {
  const dev = (await queryBlock(q)).find((b) => b.qdev === QDEV);
  return readLimits(dev!.inserted!);
}

async function wrBytes(q: QmpClient): Promise<number> {
  return (await queryBlockstats(q)).find((s) => s.qdev === QDEV)!.stats.wr_bytes;
}

async function actualSize(q: QmpClient): Promise<number> {
  return (await queryNamedBlockNodes(q)).find((n) => n['node-name'] === 'lxd_root')!.image['actual-size'] ?? 0;
}

/**
 * Finds a 2 s window in which one of `vms` has a steady governor throttle ≥ 100 kB/s (unchanged
 * since ≥ 0.75 s before the window) and measures its guest's write rate over it; `burst` is the
 * device's write burst rate then, if it has one.
 */
async function measureUnderSteadyThrottle(vms: LabVm[], timeoutMs: number): Promise<{ vm: LabVm; limit: number; burst: number | undefined; rate: number }> {
  const deadline = performance.now() + timeoutMs;
  const since = new Map<LabVm, { limit: number; atMs: number }>();
  while (performance.now() < deadline) {
    for (const vm of vms) {
      const limit = (await limitsOf(vm.qmp)).bps_wr;
      const prev = since.get(vm);
      if (!prev || prev.limit !== limit) since.set(vm, { limit, atMs: performance.now() });
    }
    const ready = vms.find((vm) => {
      const s = since.get(vm)!;
      return s.limit >= 100_000 && s.limit < USER_LIMITS.bps_wr && performance.now() - s.atMs >= 750;
    });
    if (!ready) {
      await sleep(100);
      continue;
    }
    const limit = since.get(ready)!.limit;
    const burst = (await limitsOf(ready.qmp)).bps_wr_max;
    const t0 = performance.now();
    const w0 = await wrBytes(ready.qmp);
    let steady = true;
    for (let i = 0; i < 8 && steady; i++) {
      await sleep(250);
      steady = (await limitsOf(ready.qmp)).bps_wr === limit;
    }
    const rate = ((await wrBytes(ready.qmp)) - w0) / ((performance.now() - t0) / 1000);
    if (steady) return { vm: ready, limit, burst, rate };
    since.delete(ready);
  }
  throw new Error(`no steady throttle ≥ 100 kB/s for 2.75 s within ${timeoutMs} ms`);
}

/** A migration in its base phase: `baseMib` to copy at `mibPerSec`, overlay = the guest's disk node. */
function syntheticMigration(id: string, vm: LabVm, baseMib: number, mibPerSec: number): GovernedMigration {
  const t0 = performance.now();
  return {
    id,
    qmp: vm.qmp,
    monitorPath: vm.qmpSocketPath,
    overlayNode: 'lxd_root',
    ramBytes: vm.guestMib * MiB,
    describe(): GovernedProgress {
      const copied = Math.min(baseMib * MiB, ((performance.now() - t0) / 1000) * mibPerSec * MiB);
      return { phase: 'base', baseBytesTotal: baseMib * MiB, baseBytesCopied: copied };
    },
  };
}

describe('governor on real QEMU', qemu, () => {
  let dir = '';
  let a: LabVm | undefined;
  let b: LabVm | undefined;
  let originalA: ThrottleLimits;
  let originalB: ThrottleLimits;
  const stops: QmpEvent[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dpa-gov-lab-'));
    // Each VM gets a second monitor: QEMU serves one client per monitor, and the crash test's
    // child governor needs one while this process keeps the first.
    const start = (name: string): Promise<LabVm> =>
      LabVm.start({ disk: { sizeMib: 256 }, name, extraArgs: ['-qmp', `unix:${join(dir, `${name}-gov.sock`)},server=on,wait=off`] });
    [a, b] = await Promise.all([start('A'), start('B')]);
    await Promise.all([a.ready(), b.ready()]);
    for (const name of ['A', 'B']) chmodSync(join(dir, `${name}-gov.sock`), 0o600);
    for (const vm of [a, b]) vm.qmp.on('event', (e) => void (e.event === 'STOP' && stops.push(e)));
    await blockSetIoThrottle(b.qmp, throttleArgs(QDEV, USER_LIMITS, true));
    originalA = await limitsOf(a.qmp);
    originalB = await limitsOf(b.qmp);
    assert.deepEqual(originalB, USER_LIMITS, 'the user throttle is in force as set');
    // 16 KiB O_DIRECT writes, 400 per second: 6.25 MiB/s per guest.
    await Promise.all([a, b].map((vm) => vm.diskStart({ blockBytes: 16384, blocksPerSec: 400, mode: 'direct' })));
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  });

  test('throttles a writing guest when Ω is at risk; the throttle acts; stop() restores the previous limits exactly', async (t) => {
    const vmA = a!;
    const vmB = b!;
    const w0 = await wrBytes(vmA.qmp);
    await sleep(1500);
    const freeRate = ((await wrBytes(vmA.qmp)) - w0) / 1.5;
    assert.ok(freeRate > 3 * MiB, `unthrottled guest writes ${(freeRate / MiB).toFixed(2)} MiB/s`);

    // Ω: what the two overlays hold now plus 128 MiB; a 2 GiB base copy at 16 MiB/s each
    // (~128 s) would add ~800 MiB each at 6 MiB/s: the policy must throttle.
    const used = (await actualSize(vmA.qmp)) + (await actualSize(vmB.qmp));
    const stateFile = join(dir, 'state-1.json');
    const decisionLog = join(dir, 'decisions-1.jsonl');
    const gov = await Governor.start({ omegaBytes: used + 128 * MiB, intervalMs: 100, stateFile, decisionLog });
    try {
      await gov.attach(syntheticMigration('A', vmA, 2048, 16));
      await gov.attach(syntheticMigration('B', vmB, 2048, 16));
      // The originals are on disk before anything is changed.
      const st0 = await readStateFile(stateFile);
      assert.deepEqual(
        st0!.entries.map((e) => [e.id, e.deviceQomPath, e.monitorPath]),
        [
          ['A', QDEV, vmA.qmpSocketPath],
          ['B', QDEV, vmB.qmpSocketPath],
        ],
      );
      assert.deepEqual(st0!.entries[1]!.originalLimits, USER_LIMITS);

      // fitted brakes progressively (and re-solves every 5 s), so the first limit seen may be an
      // intermediate one: wait for A's throttle to reach below half of what the guest wants.
      let lastA = 0;
      const limitA = await waitFor(
        `A throttled below ${(freeRate / 2).toFixed(0)} B/s`,
        async () => {
          lastA = (await limitsOf(vmA.qmp)).bps_wr;
          return lastA > 0 && lastA < freeRate / 2 ? lastA : false;
        },
        8000,
      );
      const governedB = await waitFor('a throttle on B', async () => {
        const l = await limitsOf(vmB.qmp);
        return l.bps_wr !== USER_LIMITS.bps_wr && l;
      }, 8000);
      assert.ok(limitA >= 10_000 && limitA < freeRate / 2, `A throttled to ${limitA} B/s (guest wants ${freeRate.toFixed(0)})`);
      // B: only the write limit and, in proportion, its burst changed; the user's read limit,
      // iops, burst length and group are kept.
      assert.deepEqual({ ...governedB, bps_wr: 0, bps_wr_max: 0 }, { ...USER_LIMITS, bps_wr: 0, bps_wr_max: 0 });
      assert.ok(governedB.bps_wr < USER_LIMITS.bps_wr);
      assert.equal(governedB.bps_wr_max, Math.max(governedB.bps_wr, Math.round((USER_LIMITS.bps_wr_max * governedB.bps_wr) / USER_LIMITS.bps_wr)));
      assert.equal(statSync(stateFile).mode & 0o777, 0o600);

      // The throttle acts: over a 2 s window with a steady limit (set ≥ 0.75 s before, so QEMU's
      // burst bucket has drained), the guest writes at ≈ that limit. The policy may move the
      // limits between VMs at its re-solves (every 5 s), so look for such a window on A or B.
      // B keeps a write burst (scaled with its limit): until its bucket is full QEMU lets it write
      // at that burst rate, so its ceiling is the burst rate, not the limit.
      const m = await measureUnderSteadyThrottle([vmA, vmB], 15_000);
      const ceiling = Math.max(m.limit * 1.25, (m.burst ?? 0) * 1.05) + 16384;
      assert.ok(m.rate <= ceiling && m.rate >= m.limit * 0.7, `guest writes ${m.rate.toFixed(0)} B/s under a steady throttle of ${m.limit} B/s (burst ${m.burst ?? 'none'})`);
      assert.ok(m.rate < freeRate / 2, `the rate dropped: ${m.rate.toFixed(0)} vs ${freeRate.toFixed(0)} B/s unthrottled`);
      t.diagnostic(`guest ${m.vm === vmA ? 'A' : 'B'}: ${(freeRate / MiB).toFixed(2)} MiB/s free (A); under a steady ${m.limit} B/s throttle it wrote ${m.rate.toFixed(0)} B/s; B: bps_wr ${governedB.bps_wr} under the user's 20 MB/s`);

      // Every decision is recorded with its inputs; the guest was never paused.
      const recs = gov.decisions.records();
      const throttling = recs.find((r) => r.actions.some((x) => x.id === 'A' && x.kind === 'set-throttle'));
      assert.ok(throttling, 'a recorded decision throttled A');
      const inA = throttling.inputs.find((i) => i.id === 'A')!;
      assert.ok(inA.demandBytesPerSec > 2 * MiB && inA.overlayBytes > 0 && inA.wrBytes! > 0, JSON.stringify(inA));
      assert.equal(throttling.world.migrations.length, 2);
      assert.equal((await queryStatus(vmA.qmp)).status, 'running');
      assert.equal(gov.stats.ticks > 30, true);
      t.diagnostic(`governor: ${gov.stats.ticks} ticks, pure tick p50 ${gov.stats.tickUsP50.toFixed(0)} µs p99 ${gov.stats.tickUsP99.toFixed(0)} µs, whole tick (QMP included) p50 ${gov.stats.wallMsP50.toFixed(1)} ms, ${gov.stats.actionsSent} actions`);
    } finally {
      const report = await gov.stop();
      assert.deepEqual(report.restored.sort(), ['A', 'B']);
    }
    assert.deepEqual(await limitsOf(vmA.qmp), originalA);
    assert.deepEqual(await limitsOf(vmB.qmp), originalB, "the user's throttle is back exactly");
    assert.equal(existsSync(stateFile), false, 'state file cleared');
    assert.equal((await queryMigrateParameters(vmA.qmp))['max-bandwidth'], 128 * MiB, 'max-bandwidth untouched outside the RAM phase');
    assert.equal(statSync(decisionLog).mode & 0o777, 0o600);
    assert.deepEqual(stops, [], 'no guest was paused');
  });

  test('RAM phase: max-bandwidth set from the link share; a migration that rolls back gets everything back at once', async () => {
    const vmA = a!;
    const stateFile = join(dir, 'state-ram.json');
    const used = await actualSize(vmA.qmp);
    const gov = await Governor.start({ omegaBytes: used + 16 * MiB, intervalMs: 50, stateFile });
    const t0 = performance.now();
    let phase: GovernedProgress['phase'] = 'ram';
    const released: Array<{ id: string; reason: string; restored: boolean }> = [];
    gov.on('released', (e) => released.push(e));
    try {
      await gov.attach({
        ...syntheticMigration('A', vmA, 64, 64),
        describe: (): GovernedProgress => ({
          phase,
          baseBytesTotal: 64 * MiB,
          baseBytesCopied: 64 * MiB,
          // RAM moving at 40 MiB/s: U(t) is measured from it.
          ram: { transferred: ((performance.now() - t0) / 1000) * 40 * MiB, remaining: 100 * MiB, total: 256 * MiB, 'dirty-pages-rate': 1000 },
        }),
      });
      const bw = await waitFor('max-bandwidth to change', async () => {
        const v = (await queryMigrateParameters(vmA.qmp))['max-bandwidth']!;
        return v !== 128 * MiB && v;
      }, 5000);
      // One migration has the whole link: its share is U ≈ 40 MiB/s, plus the 25 % headroom.
      assert.ok(bw > 40 * MiB && bw < 60 * MiB, `max-bandwidth ${bw}`);
      assert.equal((await readStateFile(stateFile))!.entries[0]!.applied.maxBandwidthBytesPerSec, bw);
      phase = 'rolled-back';
      const tEnd = performance.now();
      await waitFor('A released', async () => released.length > 0, 2000);
      const restoreMs = performance.now() - tEnd;
      assert.deepEqual(released, [{ id: 'A', reason: 'migration rolled-back', restored: true }]);
      assert.equal((await queryMigrateParameters(vmA.qmp))['max-bandwidth'], 128 * MiB);
      assert.deepEqual(await limitsOf(vmA.qmp), originalA);
      assert.ok(restoreMs < 1000, `restored ${restoreMs.toFixed(0)} ms after the migration ended`);
      assert.equal(existsSync(stateFile), false, 'nothing left to undo');
      assert.deepEqual(gov.governed(), []);
    } finally {
      await gov.stop();
    }
  });

  test('dpa govern: SIGTERM stops it cleanly, restoring what it changed', async () => {
    const vmA = a!;
    const stateFile = join(dir, 'state-term.json');
    const used = await actualSize(vmA.qmp);
    const child = spawn(
      process.execPath,
      [DPA, 'govern', '--omega-mib', String(Math.ceil((used + 32 * MiB) / MiB)), '--base-mib', '2048', '--base-mib-per-sec', '16', '--overlay-node', 'lxd_root', '--state-file', stateFile, '--json', join(dir, 'A-gov.sock')],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      await waitFor(
        'dpa govern to throttle A',
        async () => {
          if (child.exitCode !== null) throw new Error(`dpa govern exited: ${stderr}`);
          return (await limitsOf(vmA.qmp)).bps_wr > 0;
        },
        15_000,
      );
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string; stop?: { restored: string[] }; actions?: unknown[] });
    assert.equal(lines[0]!.type, 'start');
    assert.ok(lines.some((l) => l.type === 'tick' && l.actions!.length > 0), 'a tick with an action was printed');
    const end = lines[lines.length - 1]!;
    assert.equal(end.type, 'end');
    assert.deepEqual(end.stop!.restored, ['vm']);
    assert.deepEqual(await limitsOf(vmA.qmp), originalA);
    assert.equal(existsSync(stateFile), false);
  });

  test('crash: dpa govern SIGKILLed after throttling; a new governor reconciles the originals back and clears the state file', async () => {
    const vmA = a!;
    const vmB = b!;
    const stateFile = join(dir, 'state-crash.json');
    const used = (await actualSize(vmA.qmp)) + (await actualSize(vmB.qmp));
    const child = spawn(
      process.execPath,
      [DPA, 'govern', '--omega-mib', String(Math.ceil((used + 48 * MiB) / MiB)), '--base-mib', '512', '--base-mib-per-sec', '16', '--overlay-node', 'lxd_root', '--state-file', stateFile, '--json', join(dir, 'A-gov.sock'), join(dir, 'B-gov.sock')],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_code, signal) => r(signal)));
    try {
      await waitFor(
        'the child governor to throttle both VMs',
        async () => {
          if (child.exitCode !== null) throw new Error(`dpa govern exited: ${stderr}`);
          return (await limitsOf(vmA.qmp)).bps_wr > 0 && (await limitsOf(vmB.qmp)).bps_wr !== USER_LIMITS.bps_wr;
        },
        15_000,
      );
    } finally {
      child.kill('SIGKILL');
    }
    assert.equal(await exited, 'SIGKILL');
    // What the crash left behind: throttles in force, and the state file that records them.
    assert.ok((await limitsOf(vmA.qmp)).bps_wr > 0);
    const st = await readStateFile(stateFile);
    assert.equal(statSync(stateFile).mode & 0o777, 0o600);
    assert.deepEqual(st!.entries.map((e) => e.monitorPath).sort(), [join(dir, 'A-gov.sock'), join(dir, 'B-gov.sock')]);
    const recB = st!.entries.find((e) => e.monitorPath.endsWith('B-gov.sock'))!;
    assert.deepEqual(recB.originalLimits, USER_LIMITS);
    assert.ok(recB.applied.limits!.bps_wr < USER_LIMITS.bps_wr);

    // A new governor on the same state file reconciles before doing anything else.
    const gov = await Governor.start({ omegaBytes: 1024 * MiB, stateFile });
    try {
      assert.deepEqual(gov.reconcileReport!.restored.sort(), ['vm0', 'vm1']);
      assert.deepEqual(await limitsOf(vmA.qmp), originalA);
      assert.deepEqual(await limitsOf(vmB.qmp), originalB, "the user's throttle is back exactly");
      assert.equal(existsSync(stateFile), false, 'state file cleared');
    } finally {
      await gov.stop();
    }
  });

  test('QEMU killed while governed: the governor drops that VM and keeps governing the other', async () => {
    const vmA = a!;
    const vmB = b!;
    const stateFile = join(dir, 'state-kill.json');
    const used = (await actualSize(vmA.qmp)) + (await actualSize(vmB.qmp));
    const gov = await Governor.start({ omegaBytes: used + 48 * MiB, intervalMs: 50, stateFile });
    const released: Array<{ id: string; reason: string; restored: boolean }> = [];
    gov.on('released', (e) => released.push(e));
    const warnings: unknown[] = [];
    gov.on('warning', (w) => warnings.push(w));
    try {
      await gov.attach(syntheticMigration('A', vmA, 512, 16));
      await gov.attach(syntheticMigration('B', vmB, 512, 16));
      await waitFor('throttles on both', async () => (await limitsOf(vmA.qmp)).bps_wr > 0 && (await limitsOf(vmB.qmp)).bps_wr !== USER_LIMITS.bps_wr, 8000);
      process.kill(vmB.pid, 'SIGKILL');
      await vmB.exited;
      await waitFor('B to be released', async () => released.find((e) => e.id === 'B'), 5000);
      assert.deepEqual(released, [{ id: 'B', reason: released[0]!.reason, restored: true }], JSON.stringify(warnings));
      assert.deepEqual(gov.governed(), ['A']);
      const ticks = gov.stats.ticks;
      await sleep(500);
      assert.ok(gov.stats.ticks >= ticks + 5, `still ticking: ${ticks} → ${gov.stats.ticks}`);
      // A is still in the policy's world (alone now: whether it still needs a throttle is the policy's call).
      assert.deepEqual(
        gov.decisions.last()!.world.migrations.map((m) => m.id),
        ['A'],
      );
      const st = await readStateFile(stateFile);
      assert.deepEqual(
        st!.entries.map((e) => e.id),
        ['A'],
      );
    } finally {
      await gov.stop();
    }
    assert.deepEqual(await limitsOf(vmA.qmp), originalA);
    assert.equal(existsSync(stateFile), false);
  });
});
