import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { kvmMissing, needs, qemuMissing } from '../helpers/prereq';

const run = promisify(execFile);
const DPA = join(__dirname, '..', '..', '..', 'bin', 'dpa.js');

interface Snap {
  final?: boolean;
  endReason?: string;
  intervals: number;
  dirtyPagesPerSec: number;
  workingSetPages: number;
  curve: { windowSec: number; pages: number }[];
  truth?: { intervalsChecked: number; mismatchedIntervals: number };
  migration?: { prediction: { converges: boolean; totalSec: number } };
}

function lastJson(stdout: string): Snap {
  const lines = stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  return JSON.parse(lines[lines.length - 1]!) as Snap;
}

test('npm start on KVM: the calibration VM profile matches what the workload wrote', needs('kvm', kvmMissing()), async () => {
  // Sequential writes over a hot set larger than the run: every write is a new page, so each
  // 100 ms interval dirties exactly 500 distinct pages and a window of w intervals 500·w.
  const { stdout } = await run(process.execPath, [
    DPA, 'start', '--seconds', '2', '--guest-mib', '256', '--pattern', 'sequential', '--rate', '5000',
    '--hot-pages', '60000', '--interval-ms', '100', '--refresh-ms', '500', '--json',
  ], { timeout: 60_000 });
  const s = lastJson(stdout);
  assert.equal(s.final, true);
  assert.match(s.endReason!, /^COMPLETE/);
  assert.equal(s.intervals, 20);
  assert.deepEqual(s.truth && { ...s.truth }, { intervalsChecked: 20, mismatchedIntervals: 0, mismatchedPages: 0 });
  assert.equal(Math.round(s.dirtyPagesPerSec), 5000);
  assert.equal(s.workingSetPages, 16 * 500); // heat window K = 16 intervals
  for (const c of s.curve) assert.equal(c.pages, Math.round(c.windowSec / 0.1) * 500, `D(${c.windowSec}s)`);
  assert.equal(s.curve.length, 5); // windows 1, 2, 4, 8, 16 intervals within 20 pushed
  assert.equal(s.migration?.prediction.converges, true);
});

test('npm start --source simulate runs the shipped scenario under every policy', async () => {
  const { stdout } = await run(process.execPath, [DPA, 'start', '--source', 'simulate', '--json'], { timeout: 60_000 });
  const doc = JSON.parse(stdout) as { scenario: { name: string } | string; results: { policy: string }[] };
  assert.deepEqual(doc.results.map((r) => r.policy).sort(), ['fitted', 'mirror-only', 'paper', 'static', 'unthrottled']);
});

test('npm start --source qemu profiles a TCG lab guest with the guest-memory scanner', needs('qemu', qemuMissing()), async () => {
  const { stdout } = await run(process.execPath, [
    DPA, 'start', '--source', 'qemu', '--seconds', '5', '--guest-mib', '256', '--pattern', 'sequential',
    '--rate', '2000', '--hot-pages', '16384', '--interval-ms', '200', '--refresh-ms', '1000', '--json',
  ], { timeout: 180_000 });
  const s = lastJson(stdout);
  assert.equal(s.final, true);
  assert.match(s.endReason!, /^COMPLETE/);
  assert.ok(s.intervals >= 15, `intervals ${s.intervals}`);
  assert.equal(s.truth, undefined); // content scanning has no exact truth
  // 2000 sequential page writes/s, each a new page (16384-page hot set); TCG may run the guest
  // slower than asked and the guest kernel adds a little background dirtying.
  assert.ok(s.dirtyPagesPerSec > 1000 && s.dirtyPagesPerSec < 3000, `dirtyPagesPerSec ${s.dirtyPagesPerSec}`);
});
