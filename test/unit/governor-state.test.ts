/**
 * Crash-safety state file (atomic, 0600, round trip, validation, reconcile of VMs that are gone)
 * and the decision log (JSON lines 0600, ring).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DecisionLog, type DecisionRecord } from '../../src/governor/decision-log';
import { parseState, readStateFile, reconcile, StateFile, writeFileAtomic, type StateEntry } from '../../src/governor/state-file';
import { UNLIMITED } from '../../src/governor/throttle';
import { constantRateCurve } from '../../src/model/dirty-curve';

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'dpa-gov-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const entry = (id: string, monitorPath: string): StateEntry => ({
  id,
  monitorPath,
  deviceQomPath: '/machine/peripheral/root/virtio-backend',
  originalLimits: { bps: 0, bps_rd: 3_000_000, bps_wr: 20_000_000, iops: 0, iops_rd: 0, iops_wr: 400, bps_wr_max: 30_000_000, bps_wr_max_length: 2, group: 'userg' },
  originalMaxBandwidthBytesPerSec: 134_217_728,
  applied: { limits: { bps: 0, bps_rd: 3_000_000, bps_wr: 1_234_567, iops: 0, iops_rd: 0, iops_wr: 400, bps_wr_max: 30_000_000, bps_wr_max_length: 2 }, maxBandwidthBytesPerSec: 52_428_800 },
});

const mode = (path: string): number => statSync(path).mode & 0o777;

test('state file: round trip, mode 0600 whatever the umask, no temporary file left, serialized saves', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'state.json');
  const file = new StateFile(path);
  const old = process.umask(0);
  try {
    const entries = [entry('a', '/run/a.sock'), entry('b', '/run/b.sock')];
    await file.save(entries);
    assert.equal(mode(path), 0o600);
    const back = await readStateFile(path);
    assert.deepEqual(back!.entries, entries);
    assert.equal(back!.pid, process.pid);
    // Many saves in flight: applied in call order, the last one wins, nothing torn or left over.
    const saves = [];
    for (let i = 0; i < 20; i++) saves.push(file.save([{ ...entry('a', '/run/a.sock'), applied: { limits: null, maxBandwidthBytesPerSec: i } }]));
    await Promise.all(saves);
    const last = await readStateFile(path);
    assert.equal(last!.entries.length, 1);
    assert.equal(last!.entries[0]!.applied.maxBandwidthBytesPerSec, 19);
    assert.deepEqual(readdirSync(dir), ['state.json']);
    assert.equal(mode(path), 0o600);
    await file.clear();
    assert.deepEqual(readdirSync(dir), []);
    assert.equal(await readStateFile(path), null);
  } finally {
    process.umask(old);
  }
});

test('atomic write: replaces an existing 0644 file by a 0600 one; a failed rename leaves the target untouched and no temporary', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'x.json');
  writeFileSync(path, 'old', { mode: 0o644 });
  await writeFileAtomic(path, 'new');
  assert.equal(readFileSync(path, 'utf8'), 'new');
  assert.equal(mode(path), 0o600);
  // Target is a non-empty directory: rename fails after the temporary was written.
  const blocked = join(dir, 'blocked');
  mkdirSync(blocked);
  writeFileSync(join(blocked, 'keep'), 'k');
  await assert.rejects(writeFileAtomic(blocked, 'data'), (err: NodeJS.ErrnoException) => err.syscall === 'rename');
  assert.deepEqual(readdirSync(dir).sort(), ['blocked', 'x.json']);
  assert.equal(readFileSync(join(blocked, 'keep'), 'utf8'), 'k');
});

test('state file validation names the bad field', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'bad.json');
  writeFileSync(path, '{not json');
  await assert.rejects(readStateFile(path), /not valid JSON/);
  const good = { version: 1, pid: 1, updatedAtMs: 0, entries: [entry('a', '/s')] };
  assert.throws(() => parseState({ ...good, version: 2 }), /version: must be 1/);
  const e0 = entry('a', '/s');
  assert.throws(() => parseState({ ...good, entries: [{ ...e0, originalLimits: { ...e0.originalLimits, bps_wr: -1 } }] }), /entries\[0\]\.originalLimits\.bps_wr/);
  assert.throws(() => parseState({ ...good, entries: [{ ...e0, monitorPath: '' }] }), /entries\[0\]\.monitorPath/);
  assert.throws(() => parseState({ ...good, entries: [{ ...e0, applied: { limits: { bps: 1 }, maxBandwidthBytesPerSec: null } }] }), /applied\.limits\.bps_rd/);
});

test('reconcile: VMs whose monitor is gone (no socket, or a socket nobody listens on) are dropped and the file cleared', async (t) => {
  const dir = tempDir(t);
  // A unix socket file with no listener behind it, as a SIGKILLed QEMU leaves: connect gets ECONNREFUSED.
  const stale = join(dir, 'stale.sock');
  const child = spawn(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`listener exited early (${code})`)));
  });
  child.removeAllListeners('exit');
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
  assert.ok(statSync(stale).isSocket(), 'stale socket file left in place');
  const path = join(dir, 'state.json');
  await new StateFile(path).save([entry('a', join(dir, 'missing.sock')), entry('b', stale)]);
  const report = await reconcile(path);
  assert.equal(report.entries, 2);
  assert.deepEqual(report.gone.sort(), ['a', 'b']);
  assert.deepEqual(report.restored, []);
  assert.deepEqual(report.failed, []);
  assert.equal(await readStateFile(path), null);
  assert.deepEqual(await reconcile(path), { entries: 0, restored: [], gone: [], modified: [], failed: [] });
});

function record(seq: number): DecisionRecord {
  return {
    seq,
    atMs: 1_700_000_000_000 + seq,
    tickUs: 12.5,
    inputs: [{ id: 'vm', phase: 'base', wrBytes: 4096 * seq, writeBytesPerSec: 1e6, demandBytesPerSec: 1.2e6, saturated: true, writeLimitBytesPerSec: 1e6, overlayBytes: 5e6, movedBytes: 7e9 }],
    world: {
      nowSec: seq / 10,
      intervalSec: 0.1,
      omegaBytes: 1e9,
      slaBytesPerSec: 1e4,
      linkBytesPerSec: 1e8,
      ramMaxBandwidthBytesPerSec: 1e8,
      downtimeLimitMs: 300,
      migrations: [
        { id: 'vm', phase: 'base', startedSec: 0, overlayBytes: 5e6, writeBytesPerSecDemand: 1.2e6, baseBytesLeft: 1e9, mirrorBytesLeft: 5e6, ramBytes: 1e9, ramDirty: constantRateCurve(100), ramPendingBytes: 1e9, cpuThrottlePct: 0, failed: false, mirrorOnly: false },
      ],
    },
    decision: { policy: 'fitted', atSec: seq / 10, reason: 'at risk', migrations: [{ id: 'vm', partitionBytes: 1e9, quotaBytes: 1e9, throttleBytesPerSec: 1e6, linkShareBytesPerSec: 1e8, meanPriority: 1, failed: false }] },
    actions: [{ kind: 'set-throttle', id: 'vm', limits: { ...UNLIMITED, bps_wr: 1e6 }, writeBytesPerSec: 1e6, why: 'policy' }],
    ended: [],
    errors: [],
  };
}

test('decision log: one JSON line per decision with its inputs, file 0600, ring keeps the newest in order', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'decisions.jsonl');
  writeFileSync(path, '', { mode: 0o644 });
  const log = new DecisionLog({ path, ringSize: 3 });
  for (let i = 0; i < 5; i++) log.add(record(i));
  assert.deepEqual(
    log.records().map((r) => r.seq),
    [2, 3, 4],
  );
  assert.equal(log.last()!.seq, 4);
  await log.close();
  assert.equal(mode(path), 0o600);
  const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
  assert.equal(lines.length, 5);
  const parsed = lines.map((l) => JSON.parse(l) as DecisionRecord);
  assert.deepEqual(
    parsed.map((r) => r.seq),
    [0, 1, 2, 3, 4],
  );
  const r3 = parsed[3]!;
  assert.equal(r3.inputs[0]!.wrBytes, 4096 * 3);
  assert.equal(r3.world.migrations[0]!.overlayBytes, 5e6);
  assert.equal(r3.world.migrations[0]!.ramDirty.maxPages, null as unknown as number, 'Infinity is written as null');
  assert.equal(r3.world.migrations[0]!.ramDirty.ratePagesPerSec, 100);
  assert.equal(r3.decision.migrations[0]!.throttleBytesPerSec, 1e6);
  assert.equal((r3.actions[0] as { limits: { bps_wr: number } }).limits.bps_wr, 1e6);
  assert.equal(log.written, 5);
  assert.throws(() => new DecisionLog({ ringSize: -1 }), /ringSize: must be an integer from 0 to 1000000/);
  assert.throws(() => new DecisionLog({ path: join(dir, 'no', 'such', 'dir', 'x.jsonl') }), /ENOENT/);
});
