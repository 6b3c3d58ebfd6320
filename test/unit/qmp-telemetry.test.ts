import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { counterRate, derive, type RawPoll, type TelemetryState } from '../../src/qmp/telemetry';
import type { BlockStats, MigrationInfo } from '../../src/qmp/types';
import { percentile } from '../../src/cli/bench-qmp';
import { toDiskSample } from '../../src/sources/disk-collector';

function stats(qdev: string, wr: number, rd = 0, wrOps = 0): BlockStats {
  return { device: '', qdev, stats: { wr_bytes: wr, rd_bytes: rd, wr_operations: wrOps } as BlockStats['stats'] };
}

function migrate(transferred: number, extra: Partial<NonNullable<MigrationInfo['ram']>> = {}): MigrationInfo {
  return {
    status: 'active',
    ram: { transferred, remaining: 100, total: 1 << 30, 'page-size': 4096, 'dirty-pages-rate': 250, mbps: 80, 'dirty-sync-count': 3, ...extra } as MigrationInfo['ram'],
  };
}

test('rates are counter deltas over monotonic time; a decrease is a reset with no rate', () => {
  assert.equal(counterRate(undefined, 10, 100), null);
  assert.equal(counterRate(0, 10, null), null);
  assert.equal(counterRate(0, 500, 250), 2000);
  assert.equal(counterRate(500, 100, 250), 'reset');
  fc.assert(
    fc.property(
      fc.array(fc.record({ inc: fc.integer({ min: -1000, max: 1_000_000 }), dtMs: fc.integer({ min: 1, max: 5000 }) }), { minLength: 1, maxLength: 30 }),
      (steps) => {
        let state: TelemetryState | undefined;
        let t = 1000;
        let wr = 0;
        for (const [i, step] of steps.entries()) {
          const prevWr = wr;
          t += step.dtMs;
          // A negative increment models a reset: the counter restarts from a small value.
          wr = step.inc >= 0 ? wr + step.inc : -step.inc - 1;
          const isReset = i > 0 && wr < prevWr;
          const { sample, state: next } = derive(state, { tMs: t, blockstats: [stats('/dev/a', wr)] });
          state = next;
          const r = sample.devices![0]!.wrBytesPerSec;
          if (i === 0) assert.equal(r, null);
          else if (isReset) {
            assert.equal(r, null);
            assert.equal(sample.counterResets, 1);
          } else {
            assert.ok(Math.abs(r! - ((wr - prevWr) * 1000) / step.dtMs) < 1e-6);
            assert.equal(sample.counterResets, 0);
          }
        }
      },
    ),
  );
});

test('after a failed query the next rate spans back to the last good reading', () => {
  let s = derive(undefined, { tMs: 0, migrate: migrate(0), blockstats: [stats('/d', 0)] });
  s = derive(s.state, { tMs: 100, blockstats: [stats('/d', 1000)] }); // query-migrate failed
  assert.equal(s.sample.migration, null);
  s = derive(s.state, { tMs: 200, migrate: migrate(4000), blockstats: [stats('/d', 1500)] });
  assert.equal(s.sample.migration!.ramTransferBytesPerSec, 20_000); // 4000 B over 200 ms, not 100 ms
  assert.equal(s.sample.devices![0]!.wrBytesPerSec, 5000);
  assert.equal(s.sample.dtMs, 100);
});

test('migration fields are converted with their units', () => {
  const { sample } = derive(undefined, { tMs: 5, migrate: { ...migrate(10), 'expected-downtime': 42, 'cpu-throttle-percentage': 30 } });
  const m = sample.migration!;
  assert.equal(m.dirtyBytesPerSec, 250 * 4096);
  assert.equal(m.qemuThroughputBytesPerSec, 10_000_000);
  assert.equal(m.expectedDowntimeMs, 42);
  assert.equal(m.cpuThrottlePercent, 30);
  assert.equal(m.downtimeMs, null);
  const idle = derive(undefined, { tMs: 5, migrate: {} }).sample.migration!;
  assert.equal(idle.status, 'none');
  assert.equal(idle.ramTransferBytesPerSec, null);
});

test('overlay growth and job progress are tracked per node and per job', () => {
  const node = (name: string, actual: number | undefined): NonNullable<RawPoll['nodes']>[number] =>
    ({ 'node-name': name, drv: 'qcow2', file: `/x/${name}`, ro: false, image: { 'actual-size': actual, 'virtual-size': 1 << 30 } }) as NonNullable<RawPoll['nodes']>[number];
  const job = (offset: number, len: number): NonNullable<RawPoll['jobs']>[number] =>
    ({ type: 'mirror', device: 'mirror0', offset, len, ready: false, status: 'running', speed: 0 }) as NonNullable<RawPoll['jobs']>[number];
  let s = derive(undefined, { tMs: 0, nodes: [node('base', 1000), node('ovl', 196_608)], jobs: [job(0, 1000)] });
  s = derive(s.state, { tMs: 500, nodes: [node('base', 1000), node('ovl', 1_245_184)], jobs: [job(600, 1200)] });
  const ovl = s.sample.nodes!.find((n) => n.nodeName === 'ovl')!;
  assert.equal(ovl.actualSizeGrowthBytesPerSec, ((1_245_184 - 196_608) * 1000) / 500);
  assert.equal(s.sample.nodes!.find((n) => n.nodeName === 'base')!.actualSizeGrowthBytesPerSec, 0);
  assert.equal(s.sample.jobs![0]!.progressBytesPerSec, 1200);
  assert.equal(s.sample.jobs![0]!.remainingBytes, 600);
  // A new job with the same id starts over: reset, no rate.
  s = derive(s.state, { tMs: 1000, nodes: [node('ovl', undefined)], jobs: [job(10, 5000)] });
  assert.equal(s.sample.jobs![0]!.progressBytesPerSec, null);
  assert.equal(s.sample.counterResets, 1);
  assert.equal(s.sample.nodes![0]!.actualSizeBytes, null);
});

test('the disk view sums guest devices and picks the overlay node', () => {
  let s = derive(undefined, { tMs: 0, blockstats: [stats('/q/a', 0), stats('/q/b', 0), { 'node-name': 'n', stats: { wr_bytes: 9 } as BlockStats['stats'] }] });
  s = derive(s.state, { tMs: 1000, blockstats: [stats('/q/a', 3000), stats('/q/b', 1000), { 'node-name': 'n', stats: { wr_bytes: 99 } as BlockStats['stats'] }] });
  const full = { ...s.sample, seq: 1, pollMs: 1, errors: [] };
  const all = toDiskSample(full, 'vm1', 'ovl', undefined);
  assert.equal(all.guestWriteBytesPerSec, 4000);
  assert.equal(all.guestWrittenBytes, 4000);
  assert.equal(all.overlay, null);
  assert.deepEqual(all.devices.map((d) => d.id), ['/q/a', '/q/b']);
  const one = toDiskSample(full, 'vm1', undefined, ['/q/b']);
  assert.equal(one.guestWriteBytesPerSec, 1000);
});

test('bench percentiles are nearest-rank', () => {
  const v = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(v, 50), 50);
  assert.equal(percentile(v, 99), 99);
  assert.equal(percentile(v, 100), 100);
  assert.equal(percentile([7], 99), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});
