/**
 * `dpa migrate` as a command, run in-process: option checking, the monitors mode against two QEMUs
 * started here (target in this network namespace, Ω a plain directory), and the lab mode, which
 * builds everything itself and reports the guest's own verification.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from '../../src/cli/main';
import { renderProgress } from '../../src/cli/migrate';
import { buildGuestImage } from '../../src/lab/guest-image';
import type { VerifyResult } from '../../src/lab/guest-protocol';
import { buildQemuArgs, RAM_PAD_KIB_FOR_TCG_MIGRATION } from '../../src/lab/qemu-args';
import { IncomingVm } from '../../src/lab/target';
import { LabVm } from '../../src/lab/vm';
import { SUCCESS_PHASES, type MigrationProgress } from '../../src/migrate/types';
import type { GovernedProgress } from '../../src/governor/types';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await runCli(argv, { out: (t) => (out += t), err: (t) => (err += t), isTTY: false, signal: new AbortController().signal });
  return { code, out, err };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

type Line = { type: 'phase' | 'progress' | 'result' } & Record<string, unknown>;
const parseLines = (out: string): Line[] => out.trim().split('\n').map((l) => JSON.parse(l) as Line);

test('options: each mode refuses the other\'s options, required ones are named, ranges are enforced (exit 2)', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['migrate', '--lab', '--source-qmp', '/x'], /--source-qmp: not valid with --lab/],
    [['migrate', '--guest-mib', '128'], /--guest-mib: only valid with --lab/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', '/tmp'], /--target-addr is required without --lab/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', '/tmp', '--target-addr', '10.0.0.1'], /--target-disk is required unless --skip-base-copy/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', 'tmp', '--target-addr', '10.0.0.1', '--skip-base-copy'], /--omega-dir: must be an absolute directory path/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', '/nonexistent-dir', '--target-addr', '10.0.0.1', '--skip-base-copy'], /--omega-dir: \/nonexistent-dir is not an existing directory/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', '/tmp', '--target-addr', '10.0.0.1', '--skip-base-copy', '--nbd-port', '4444'], /--nbd-port and --migration-port: must differ/],
    [['migrate', '--source-qmp', '/a', '--target-qmp', '/b', '--omega-dir', '/tmp', '--target-addr', '10.0.0.1', '--target-disk', '/d', '--target-netns', '-bad'], /--target-netns: namespace name: must match/],
    [['migrate', '--lab', '--link-mbit', '0'], /--link-mbit: must be a number from 1 to 10000 Mbit\/s/],
    [['migrate', '--lab', '--guest-mib', '64'], /--guest-mib: must be an integer from 96 to 4096 MiB/],
    [['migrate', '--lab', '--stall-timeout-ms', '10'], /--stall-timeout-ms: must be an integer from 100 to 3600000 ms/],
    [['migrate', '--lab', '--max-bandwidth-mib', '0'], /--max-bandwidth-mib: must be a number from 0.001 to 1000000 MiB\/s/],
    [['migrate', '--lab', 'extra'], /unexpected argument 'extra'/],
  ];
  for (const [argv, re] of cases) {
    const r = await cli(argv);
    assert.equal(r.code, 2, `${argv.join(' ')} → ${r.err}`);
    assert.match(r.err, re, argv.join(' '));
    assert.equal(r.out, '');
  }
});

test('the progress view shows each part of the migration with its figures', () => {
  const p: MigrationProgress = {
    id: 'm1',
    phase: 'ram',
    tMs: 4200,
    baseBytesTotal: 64 * 2 ** 20,
    baseBytesCopied: 64 * 2 ** 20,
    baseBytesPerSec: 0,
    overlayNode: 'lxd_root_snapshot',
    overlayPath: '/omega/x.qcow2',
    overlayBytes: 12 * 2 ** 20,
    mirror: { offset: 6 * 2 ** 20, len: 8 * 2 ** 20, ready: true, speedBytesPerSec: 0 },
    ram: { total: 128 * 2 ** 20, remaining: 32 * 2 ** 20, transferred: 100 * 2 ** 20, mbps: 190, 'dirty-sync-count': 3, 'dirty-pages-rate': 1500 } as MigrationProgress['ram'],
    migration: { status: 'active', cpuThrottlePercent: 20 },
  };
  // The governor consumes these events as they are (its contract is a structural subset).
  const governed: GovernedProgress = p;
  assert.equal(governed.mirror!.offset, 6 * 2 ** 20);
  const lines = renderProgress(p);
  assert.equal(lines.length, 5);
  assert.match(lines[0]!, /migration m1 +phase ram +4\.2 s/);
  assert.match(lines[1]!, /base +\[#{24}\] 100% +64\.0\/64\.0 MiB/);
  assert.match(lines[2]!, /mirror +\[#{18}-{6}\] +75% +6\.0\/8\.0 MiB +ready/);
  assert.match(lines[3]!, /ram +\[#{18}-{6}\] +75% +100\.0 MiB sent, 32\.0 MiB left, 190 Mbit\/s, pass 3, dirty 1500 pages\/s, throttle 20%/);
  assert.match(lines[4]!, /overlay 12\.0 MiB in Ω/);
});

test('monitors mode: migrates a running guest between two QEMUs given only their monitors; JSON lines; the guest verifies on the target', needs('qemu', qemuMissing()), async (t) => {
  const guest = await buildGuestImage();
  const omegaDir = await mkdtemp(join(tmpdir(), 'dpa-omega-cli-'));
  const source = await LabVm.start({ guest, guestMib: 128, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION, disk: { sizeMib: 16 } });
  const target = await IncomingVm.start({ guest, guestMib: 128, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION, disk: { sizeMib: 16 } });
  t.after(async () => {
    await Promise.all([source.stop({ timeoutMs: 2000 }), target.stop()]);
    await rm(omegaDir, { recursive: true, force: true });
  });
  await source.ready();
  await source.memStart({ mib: 8, ratePagesPerSec: 1000 });
  await source.diskStart({ regionBlocks: 1024, blocksPerSec: 100, pattern: 'uniform' });
  // A QEMU monitor serves one client: hand both over to the command.
  await source.qmp.close();
  await target.qmp.close();
  const [nbdPort, migrationPort] = [await freePort(), await freePort()];
  const r = await cli([
    'migrate', '--source-qmp', source.qmpSocketPath, '--target-qmp', target.qmpSocketPath, '--omega-dir', omegaDir,
    '--target-addr', '127.0.0.1', '--target-disk', target.diskPath!, '--nbd-port', String(nbdPort), '--migration-port', String(migrationPort),
    '--skip-zeroes', '--progress-interval-ms', '100', '--json',
  ]);
  assert.equal(r.code, 0, r.err + r.out.slice(-2000));
  const lines = parseLines(r.out);
  assert.deepEqual(lines.filter((l) => l.type === 'phase').map((l) => l.phase), [...SUCCESS_PHASES]);
  assert.ok(lines.filter((l) => l.type === 'progress').length > 5);
  const result = lines[lines.length - 1]!;
  assert.equal(result.type, 'result');
  assert.equal(result.phase, 'completed');
  assert.equal(result.baseBytesCopied, 16 * 2 ** 20);
  assert.equal(result.targetStatus, 'running');
  assert.deepEqual(await readdir(omegaDir), []);
  const v = await target.channel.request<VerifyResult>('verify', { target: 'all' }, { timeoutMs: 60_000 });
  assert.equal(v.mem!.badPages, 0);
  assert.equal(v.disk!.badBlocks, 0);
  assert.ok(v.disk!.checkedBlocks > 0);
  const exit = await Promise.race([source.exited, new Promise<'alive'>((res) => setTimeout(() => res('alive'), 5000))]);
  assert.notEqual(exit, 'alive', 'the source QEMU was quit');
});

test('lab mode: builds namespace, link, Ω and both QEMUs, migrates under load, reports the guest\'s verification, leaves nothing behind', needs('qemu', qemuMissing()).skip ? needs('qemu', qemuMissing()) : needs('root', rootMissing()), async () => {
  const before = (await readdir(tmpdir())).filter((n) => n.startsWith(`dpa-omega-${process.pid}-`) || n.startsWith(`dpa-lab-${process.pid}-`));
  const r = await cli(['migrate', '--lab', '--disk-mib', '16', '--link-mbit', '300', '--disk-write-rate', '150', '--json']);
  assert.equal(r.code, 0, r.err + r.out.slice(-2000));
  const lines = parseLines(r.out);
  assert.deepEqual(lines.filter((l) => l.type === 'phase').map((l) => l.phase), [...SUCCESS_PHASES]);
  const result = lines[lines.length - 1] as Line & { lab: { verified: boolean; verifiedOn: string; verification: VerifyResult; omegaLeftovers: string[] } };
  assert.equal(result.type, 'result');
  assert.equal(result.phase, 'completed');
  assert.equal(result.lab.verifiedOn, 'target');
  assert.equal(result.lab.verified, true);
  assert.ok(result.lab.verification.disk!.checkedBlocks > 0);
  assert.equal(result.lab.verification.mem!.badPages, 0);
  assert.deepEqual(result.lab.omegaLeftovers, []);
  const leftovers = (await readdir(tmpdir())).filter((n) => n.startsWith(`dpa-omega-${process.pid}-`) || n.startsWith(`dpa-lab-${process.pid}-`));
  assert.deepEqual(leftovers, before, 'no VM directory or Ω mount point left');
});

test('migration lab VMs get RAM that is not a multiple of 256 KiB (QEMU 7.2 TCG loses writes otherwise); the pad is checked', () => {
  const base = {
    kernelPath: '/k', initrdPath: '/i', kernelArgs: [], guestMib: 128, vcpus: 1, accel: 'tcg' as const, qmpSocketPath: '/q', channelSocketPath: '/c',
    serialLogPath: '/s', pidFilePath: '/p', disk: null, name: 'n', extraArgs: [],
  };
  const plain = buildQemuArgs(base);
  assert.ok(plain.includes('memory-backend-memfd,id=ram0,size=128M,share=on') && plain.includes('128M'));
  const padded = buildQemuArgs({ ...base, ramPadKib: RAM_PAD_KIB_FOR_TCG_MIGRATION });
  const bytes = (128 * 1024 + RAM_PAD_KIB_FOR_TCG_MIGRATION) * 1024;
  assert.ok(padded.includes(`memory-backend-memfd,id=ram0,size=${bytes}B,share=on`));
  assert.equal(padded[padded.indexOf('-m') + 1], `${bytes}B`);
  assert.notEqual(bytes % (256 * 1024), 0);
  assert.throws(() => buildQemuArgs({ ...base, ramPadKib: 4 }), /ramPadKib: must be a multiple of 8 from 0 to 1016/);
  assert.throws(() => buildQemuArgs({ ...base, ramPadKib: 1024 }), RangeError);
});
