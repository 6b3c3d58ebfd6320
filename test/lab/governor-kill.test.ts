/**
 * The governor killed mid-migration and restarted, on a REAL migration (issue 5's fault list):
 * one LXD-shaped LiveMigration (QEMU 7.2 TCG, raw base copy + NBD mirror + RAM pre-copy over a
 * tbf-shaped link) whose overlay lives in an Ω tmpfs far too small for the guest's unthrottled
 * writes (4 MiB/s of 64 KiB O_DIRECT writes for a ~25 s migration into 8 MiB), governed by
 * `dpa govern` running as a separate process on the source VM's second QMP monitor.
 *
 * 1. governor #1 throttles the guest's writes (bps_wr, seen in query-block and in its state
 *    file); it is SIGKILLed during the base copy. Nothing touches anything while it is dead: the
 *    throttle stays in force and the state file keeps the undo record (the TRUE originals).
 * 2. governor #2 starts on the same state file, for the same monitor: its reconcile hands the
 *    entry over (`adopted`, nothing restored) and #2 governs the still-running migration from
 *    the throttle in force — a sampler checks every 20 ms that the throttle is never lifted
 *    between the kill and the takeover (restoring first, then throttling again, let the guest
 *    write unthrottled for ~0.2 s, +1.1 MiB of overlay, measured before the takeover existed);
 *    #2 records the true originals, not #1's throttle. In the RAM phase #2 sets max-bandwidth;
 *    it is SIGKILLed again with that in force.
 * 3. governor #3 takes the max-bandwidth over (not reset to the default) and governs to the end.
 * The migration completes; the guest verifies every page and block it wrote, on the target;
 * Ω never filled (no ENOSPC, free space never under one qcow2 cluster); on the source (kept in
 * 'postmigrate' to be inspected) bps_wr is 0 and max-bandwidth is QEMU's default again: the
 * originals recorded by #1 survived two crashes; the state file is gone and #3 exited 0 having
 * released the VM restored. (Plain reconcile — a new governor NOT governing those VMs restores
 * them at start — is tested in governor-qemu.test.ts.)
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { readStateFile, type GovernorState } from '../../src/governor/state-file';
import { buildGuestImage } from '../../src/lab/guest-image';
import { createTopology, spawnInNs, type Topology } from '../../src/lab/netns';
import { createOmega, type Omega } from '../../src/lab/omega';
import { RAM_PAD_KIB_FOR_TCG_MIGRATION } from '../../src/lab/qemu-args';
import { IncomingVm } from '../../src/lab/target';
import { LabVm } from '../../src/lab/vm';
import { spawnBaseReceiver, type BaseReceiver } from '../../src/migrate/base-copy';
import { verificationPassed, verifyGuest } from '../../src/migrate/lab';
import { LiveMigration } from '../../src/migrate/migration';
import type { MigrationProgress, MigrationResult } from '../../src/migrate/types';
import type { QmpEvent } from '../../src/qmp/client';
import { queryBlock, queryMigrateParameters } from '../../src/qmp/commands';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';
import { waitFor } from '../helpers/wait';

const MiB = 1024 * 1024;
const QDEV = '/machine/peripheral/root/virtio-backend';
const DPA = join(__dirname, '..', '..', '..', 'bin', 'dpa.js');
/** QEMU 7.2's default max-bandwidth (128 MiB/s): what must be back at the end. */
const DEFAULT_MAX_BW = 128 * MiB;
const LINK_MBIT = 40;
const OMEGA_MIB = 8;
/** What the governor may plan with: Ω minus a 1 MiB reserve (its first throttle lands after the first writes). */
const GOVERNOR_OMEGA_MIB = 7;
const DISK_MIB = 32;
const WRITE_BLOCK = 65536;
const WRITES_PER_SEC = 64; // 4 MiB/s

const needQemu = needs('qemu', qemuMissing());
const needRoot = needs('root', rootMissing());
const prereq = needQemu.skip ? needQemu : needRoot;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface GovLine {
  type: string;
  reconcile?: { entries: number; restored: string[]; gone: string[]; modified: string[]; failed: unknown[]; adopted?: GovernorState['entries'] } | null;
  stop?: { restored: string[]; failed: unknown[] };
  actions?: Array<{ kind: string; why: string }>;
  id?: string;
  restored?: boolean;
}

/** One `dpa govern` child and its JSON lines. */
class GovernorProcess {
  readonly lines: GovLine[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly child: ChildProcess;
  private buf = '';

  constructor(args: string[]) {
    this.child = spawn(process.execPath, [DPA, 'govern', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => {
      this.buf += d.toString();
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const l = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (l.trim()) this.lines.push(JSON.parse(l) as GovLine);
      }
    });
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((r) => this.child.once('exit', (code, signal) => r({ code, signal })));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  start(): Promise<GovLine> {
    return waitFor(
      'dpa govern to start',
      () => {
        if (!this.alive) throw new Error(`dpa govern exited early: ${this.stderr}`);
        return this.lines.find((l) => l.type === 'start');
      },
      20_000,
    );
  }

  async kill(): Promise<void> {
    if (this.alive) this.child.kill('SIGKILL');
    await this.exited;
  }
}

async function bpsWr(vm: LabVm): Promise<number> {
  const dev = (await queryBlock(vm.qmp)).find((b) => b.qdev === QDEV);
  return dev!.inserted!.bps_wr;
}

async function maxBandwidth(vm: LabVm): Promise<number> {
  return (await queryMigrateParameters(vm.qmp))['max-bandwidth']!;
}

test('governor SIGKILLed twice during a real migration and restarted: reconcile, resume, complete, nothing lost, nothing left behind', { ...prereq, timeout: 240_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-gov-kill-'));
  const govSock = join(dir, 'gov.sock');
  const stateFile = join(dir, 'state.json');
  const decisionLog = join(dir, 'decisions.jsonl');
  let topology: Topology | undefined;
  let omega: Omega | undefined;
  let source: LabVm | undefined;
  let target: IncomingVm | undefined;
  let receiver: BaseReceiver | undefined;
  const governors: GovernorProcess[] = [];
  try {
    const guest = await buildGuestImage();
    topology = await createTopology({ linkMbit: LINK_MBIT });
    omega = await createOmega({ sizeBytes: OMEGA_MIB * MiB });
    // A second monitor for the governor process: QEMU serves one client per monitor, and this
    // process's LiveMigration holds the first.
    source = await LabVm.start({
      guest,
      guestMib: 128,
      ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION,
      disk: { sizeMib: DISK_MIB, format: 'raw' },
      name: 'dpa-gk',
      extraArgs: ['-qmp', `unix:${govSock},server=on,wait=off`],
    });
    chmodSync(govSock, 0o600);
    await source.ready(120_000);
    target = await IncomingVm.start({ guest, guestMib: 128, ramPadKib: source.ramPadKib, disk: { sizeMib: DISK_MIB }, topology, name: 'dpa-gk-in' });
    receiver = await spawnBaseReceiver({ host: topology.nsAddr, imagePath: target.diskPath!, spawn: (cmd, args, opts) => spawnInNs(topology!, cmd, args, opts) });
    const src = source;

    const ioErrors: QmpEvent[] = [];
    src.qmp.on('event', (e: QmpEvent) => void (e.event === 'BLOCK_IO_ERROR' && ioErrors.push(e)));
    assert.equal(await bpsWr(src), 0);
    assert.equal(await maxBandwidth(src), DEFAULT_MAX_BW);

    await src.memStart({ mib: 8, pattern: 'uniform', ratePagesPerSec: 500, seed: 7 });
    await src.diskStart({ blockBytes: WRITE_BLOCK, regionBlocks: (24 * MiB) / WRITE_BLOCK, blocksPerSec: WRITES_PER_SEC, pattern: 'sequential', mode: 'direct', seed: 7 });

    const linkMibPerSec = (LINK_MBIT * 1e6) / 8 / MiB;
    const govArgs = (baseMib: number): string[] => [
      '--omega-mib', String(GOVERNOR_OMEGA_MIB),
      '--base-mib', baseMib.toFixed(3),
      '--base-mib-per-sec', linkMibPerSec.toFixed(3),
      '--link-mbit', String(LINK_MBIT),
      '--state-file', stateFile,
      '--decision-log', decisionLog,
      '--report-ms', '60000',
      '--json',
      govSock,
    ];

    // Ω's least free space over the whole migration.
    let omegaMinFree = Infinity;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        omegaMinFree = Math.min(omegaMinFree, await omega!.freeBytes().catch(() => Infinity));
        await sleep(100);
      }
    })();

    // ---- governor #1, before the migration starts (the overlay's first writes must be governed).
    const g1 = new GovernorProcess(govArgs(DISK_MIB));
    governors.push(g1);
    const start1 = await g1.start();
    assert.equal(start1.reconcile!.entries, 0, 'nothing to reconcile on the first start');

    let last: MigrationProgress | undefined;
    const m = new LiveMigration({
      source: src.qmp,
      target: target.qmp,
      omegaDir: omega.path,
      targetHost: topology.nsAddr,
      baseCopy: { host: receiver.host, port: receiver.port },
      id: 'gk',
      stallTimeoutMs: 30_000,
      timeoutMs: 150_000,
      // Kept in 'postmigrate' so the end state of its throttle and max-bandwidth can be read.
      quitSource: false,
    });
    m.on('progress', (p: MigrationProgress) => (last = p));
    const run: Promise<MigrationResult> = m.run();
    const phase = (): string => last?.phase ?? 'setup';

    try {
      // ---- 1. governor #1 throttles writes; SIGKILL it during the base copy.
      const throttled1 = await waitFor(
        'governor #1 to throttle writes, recorded in its state file',
        async () => {
          if (!g1.alive) throw new Error(`governor #1 exited: ${g1.stderr}`);
          const bw = await bpsWr(src);
          const st = await readStateFile(stateFile);
          const e = st?.entries[0];
          return bw > 0 && e?.applied.limits?.bps_wr === bw && st!.pid === g1.pid && { bw, st };
        },
        20_000,
      );
      assert.equal(phase(), 'base', `killed during the base copy (phase ${phase()})`);
      assert.ok(throttled1.bw < WRITES_PER_SEC * WRITE_BLOCK, `throttle ${throttled1.bw} B/s is below the guest's 4 MiB/s`);
      await g1.kill();
      assert.equal((await g1.exited).signal, 'SIGKILL');
      // What the crash left: the state file (with the TRUE originals) and the throttle in force.
      const left1 = (await readStateFile(stateFile))!;
      assert.equal(left1.pid, g1.pid);
      assert.equal(left1.entries[0]!.originalLimits.bps_wr, 0);
      assert.equal(left1.entries[0]!.originalMaxBandwidthBytesPerSec, DEFAULT_MAX_BW);
      const frozen = await bpsWr(src);
      assert.ok(frozen > 0, 'the dead governor’s throttle is still in force');
      await sleep(700);
      assert.equal(await bpsWr(src), frozen, 'nothing touched the throttle while no governor ran');
      assert.ok(phase() === 'base' || phase() === 'mirror', `migration still running (phase ${phase()})`);

      // ---- 2. governor #2 takes the VM over from the state file and governs again; SIGKILL it in
      // the RAM phase. A sampler watches the throttle from the kill until #2 owns the VM: it must
      // never be lifted (restoring first and throttling again would let the guest write at full
      // speed into a nearly full Ω).
      const lifted: number[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const bw = await bpsWr(src).catch(() => -1);
          if (bw === 0) lifted.push(performance.now());
          await sleep(20);
        }
      })();
      const baseLeftMib = last ? Math.max(0, last.baseBytesTotal - last.baseBytesCopied) / MiB : DISK_MIB;
      const g2 = new GovernorProcess(govArgs(baseLeftMib));
      governors.push(g2);
      const start2 = await g2.start();
      const r2 = start2.reconcile!;
      assert.deepEqual({ ...r2, adopted: undefined }, { entries: 1, restored: [], gone: [], modified: [], failed: [], adopted: undefined }, 'governor #2 takes over, restores nothing');
      assert.equal(r2.adopted!.length, 1);
      assert.equal(r2.adopted![0]!.originalLimits.bps_wr, 0);
      assert.equal(r2.adopted![0]!.applied.limits!.bps_wr, frozen, "#1's last throttle is what #2 takes over");
      const own2 = await waitFor(
        'governor #2 to record the VM in its own state file',
        async () => {
          const st = await readStateFile(stateFile);
          return st?.pid === g2.pid && st.entries.length === 1 && st;
        },
        10_000,
      );
      await sleep(500); // a few of #2's ticks
      sampling = false;
      await sampler;
      assert.deepEqual(lifted, [], 'the write throttle was never lifted between the kill and the takeover');
      // Had the state file's originals been lost, #2 would have taken #1's throttle for the original.
      assert.equal(own2.entries[0]!.originalLimits.bps_wr, 0, 'the originals #2 records are the true ones');
      assert.equal(own2.entries[0]!.originalMaxBandwidthBytesPerSec, DEFAULT_MAX_BW);
      assert.ok(own2.entries[0]!.applied.limits!.bps_wr > 0, '#2 records the throttle in force as its own');

      const bw2 = await waitFor(
        'the RAM phase with governor #2’s max-bandwidth in force and recorded',
        async () => {
          if (!g2.alive) throw new Error(`governor #2 exited: ${g2.stderr}`);
          if (phase() === 'completed' || phase() === 'failed' || phase() === 'rolled-back') throw new Error(`migration ended (${phase()}) before the RAM-phase kill`);
          const bw = await maxBandwidth(src);
          const st = await readStateFile(stateFile);
          return phase() === 'ram' && bw !== DEFAULT_MAX_BW && st?.entries[0]?.applied.maxBandwidthBytesPerSec === bw && bw;
        },
        60_000,
      );
      assert.ok(bw2 < DEFAULT_MAX_BW / 4, `max-bandwidth ${bw2} B/s follows the ${LINK_MBIT} Mbit/s link`);
      await g2.kill();
      assert.equal(await maxBandwidth(src), bw2, 'the dead governor’s max-bandwidth is still in force');
      assert.equal((await readStateFile(stateFile))!.entries[0]!.applied.maxBandwidthBytesPerSec, bw2);

      // ---- 3. governor #3 takes over the max-bandwidth and governs to the end.
      const g3 = new GovernorProcess(govArgs(0));
      governors.push(g3);
      const start3 = await g3.start();
      const r3 = start3.reconcile!;
      assert.equal(r3.adopted!.length, 1);
      assert.deepEqual(r3.restored, []);
      assert.equal(r3.adopted![0]!.applied.maxBandwidthBytesPerSec, bw2);
      assert.equal(r3.adopted![0]!.originalMaxBandwidthBytesPerSec, DEFAULT_MAX_BW);
      const own3 = await waitFor('governor #3’s own state file', async () => {
        const st: GovernorState | null = await readStateFile(stateFile).catch(() => null);
        return st?.pid === g3.pid && st;
      }, 10_000);
      assert.notEqual(await maxBandwidth(src), DEFAULT_MAX_BW, 'max-bandwidth was not lifted by the takeover');
      assert.equal(own3.entries[0]!.originalMaxBandwidthBytesPerSec, DEFAULT_MAX_BW, 'the originals #3 records are the true ones');
      assert.equal(own3.entries[0]!.originalLimits.bps_wr, 0);

      const result = await run;
      assert.equal(result.phase, 'completed', JSON.stringify(result.failure ?? result));
      // #3 sees the migration complete, restores, and exits on its own.
      const exit3 = await Promise.race([g3.exited, sleep(15_000).then(() => null)]);
      assert.deepEqual(exit3, { code: 0, signal: null }, g3.stderr);
      const end3 = g3.lines[g3.lines.length - 1]!;
      assert.equal(end3.type, 'end');
      const released = g3.lines.filter((l) => l.type === 'released');
      assert.deepEqual(
        released.map((l) => [l.id, l.restored]),
        [['vm', true]],
        'the VM was released, restored, when its migration ended',
      );
      assert.deepEqual(end3.stop!.failed, []);
      t.diagnostic(
        `migration ${(result.totalMs / 1000).toFixed(1)} s (phases ${Object.entries(result.phaseMs).map(([k, v]) => `${k} ${((v ?? 0) / 1000).toFixed(1)}`).join(', ')}), overlay peak ${(result.overlayPeakBytes / MiB).toFixed(2)} MiB of Ω ${OMEGA_MIB} MiB, Ω least free ${(omegaMinFree / 1024).toFixed(0)} KiB; #1 throttle ${throttled1.bw} B/s, #2 max-bandwidth ${bw2} B/s`,
      );

      // Nothing left behind: no throttle, max-bandwidth back, no state file.
      assert.equal(await bpsWr(src), 0, 'no write throttle left on the source');
      assert.equal(await maxBandwidth(src), DEFAULT_MAX_BW, 'max-bandwidth back to the default');
      assert.equal(existsSync(stateFile), false, 'state file cleared');

      // Ω never overflowed, the guest never hit an I/O error.
      watching = false;
      await watcher;
      assert.deepEqual(ioErrors, [], 'no BLOCK_IO_ERROR (ENOSPC in Ω)');
      assert.ok(omegaMinFree >= 65536, `Ω least free ${omegaMinFree} B`);
      assert.ok(result.overlayPeakBytes > 0 && result.overlayPeakBytes < OMEGA_MIB * MiB);

      // The guest's own check, on the target: every page and block it ever wrote.
      await target.channel.request('quiesce', {}, { timeoutMs: 30_000 });
      const v = await verifyGuest(target.channel, 'all', 120_000);
      assert.ok(verificationPassed(v), JSON.stringify(v));
      assert.ok(v.disk!.checkedBlocks > 16, `only ${v.disk!.checkedBlocks} blocks written`);
    } finally {
      watching = false;
      await watcher;
      if (!['completed', 'rolled-back', 'failed'].includes(phase())) await m.abort('test failed');
      await run.catch(() => undefined);
    }
  } finally {
    for (const g of governors) await g.kill();
    await receiver?.kill().catch(() => undefined);
    await target?.stop().catch(() => undefined);
    await source?.stop().catch(() => undefined);
    await omega?.destroy().catch(() => undefined);
    await topology?.destroy().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
});
