/**
 * `dpa calibrate` and `dpa bench harvest`, run in-process against real KVM: JSON shape and
 * values, text output, exit statuses and option errors (which need no KVM).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CommandIO } from '../../src/cli/command';
import { runCli } from '../../src/cli/main';
import { kvmMissing, needs } from '../helpers/prereq';

const KVM = needs('kvm', kvmMissing());

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const io: CommandIO = { out: (t) => (out += t), err: (t) => (err += t), isTTY: false, signal: new AbortController().signal };
  return { io, out: () => out, err: () => err };
}

test('calibrate: option errors exit 2 and name the flag and its range', async () => {
  const cases: [string[], RegExp][] = [
    [['--guest-mib', '10'], /--guest-mib: must be an integer from 64 to 65536 MiB/],
    [['--guest-mib', '256', '--hot-pages', '70000'], /--hot-pages: must be an integer from 1 to 65536 pages \(got 70000\)/],
    [['--rate', '1e8'], /--rate: must be at most 6553600 page writes\/s with 1 vCPU\(s\) at intervalMs 10/],
    [['--mode', 'dirty'], /--mode: must be one of bitmap, ring/],
    [['--ring-entries', '1000', '--mode', 'ring'], /--ring-entries: must be a power of two from 256 to 65536/],
    [['--zipf-s', '0'], /--zipf-s: must be a number from 0.01 to 10/],
  ];
  for (const [args, message] of cases) {
    const c = capture();
    assert.equal(await runCli(['calibrate', ...args], c.io), 2, args.join(' '));
    assert.match(c.err(), message);
  }
  const b = capture();
  assert.equal(await runCli(['bench', 'harvest', '--mode', 'neither'], b.io), 2);
  assert.match(b.err(), /--mode: must be one of bitmap, ring, both/);
});

test('calibrate --json: exact ring run with the documented fields', KVM, async () => {
  const c = capture();
  const args = ['--guest-mib', '256', '--vcpus', '2', '--pattern', 'zipf', '--rate', '20000', '--hot-pages', '5000', '--zipf-s', '1.2'];
  const status = await runCli(['calibrate', ...args, '--seconds', '0.3', '--interval-ms', '10', '--mode', 'ring', '--seed', '9', '--json'], c.io);
  assert.equal(status, 0, c.err() + c.out());
  const s = JSON.parse(c.out());
  assert.equal(s.mode, 'ring');
  assert.equal(s.intervals, 30);
  assert.equal(s.mismatchedIntervals, 0);
  assert.equal(s.truthPages, s.measuredPages);
  assert.ok(s.truthPages > 1000 && s.truthPages <= 30 * 200);
  assert.ok(s.harvestHz > 50 && s.harvestHz <= 101, `harvestHz ${s.harvestHz}`);
  assert.ok(s.harvestUsPerGiB > 0);
  assert.ok(Math.abs(s.harvestUsPerGiB - s.harvestUsMean * 4) < 1e-6); // 256 MiB = 1/4 GiB
  assert.ok(s.cpuPercent > 0 && s.cpuPercent < 100);
  assert.equal(typeof s.rateReached, 'boolean');
  assert.equal(s.requestedRatePagesPerSec, 20000);
  assert.ok(s.achievedRatePagesPerSec > 0);
  for (const key of ['vcpuCpuPercent', 'lateIntervals', 'harvestUsP99', 'wallMs']) assert.equal(typeof s[key], 'number', key);
});

test('calibrate text output says EXACT and the achieved rate', KVM, async () => {
  const c = capture();
  const status = await runCli(['calibrate', '--guest-mib', '128', '--rate', '5000', '--hot-pages', '1000', '--seconds', '0.1'], c.io);
  assert.equal(status, 0, c.err());
  assert.match(c.out(), /exactness:\s+EXACT: 0 mismatched interval\(s\)/);
  assert.match(c.out(), /rate:\s+achieved [\d,]+ of 5,000 page writes\/s/);
});

test('bench harvest --mode both --json: bitmap and ring side by side', KVM, async () => {
  const c = capture();
  const status = await runCli(['bench', 'harvest', '--guest-mib', '256', '--mode', 'both', '--seconds', '0.2', '--rate', '20000', '--json'], c.io);
  assert.equal(status, 0, c.err());
  const { results } = JSON.parse(c.out());
  assert.deepEqual(
    results.map((r: { mode: string }) => r.mode),
    ['bitmap', 'ring'],
  );
  for (const r of results) {
    assert.equal(r.exact, true);
    assert.equal(r.dirtyRatePagesPerSec, 20000);
    assert.ok(r.hz > 0 && r.usPerGiB > 0 && r.pagesPerSec > 0, JSON.stringify(r));
    assert.ok(Math.abs(r.hz - 1e6 / r.harvestUsMean) / r.hz < 0.01);
    assert.ok(r.dirtyPagesPerInterval > 150 && r.dirtyPagesPerInterval <= 200);
  }
});
