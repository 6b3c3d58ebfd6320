import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { test } from 'node:test';
import { runCli } from '../../src/cli/main';
import type { CommandIO } from '../../src/cli/command';
import { andNot, count, simdLevel } from '../../src/bitmap/index';
import { ClusteredWorkload } from '../../src/bitmap/workload';

function capture(): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const io: CommandIO = {
    out: (t) => void (out += t),
    err: (t) => void (err += t),
    isTTY: false,
    signal: new AbortController().signal,
  };
  return { io, out: () => out, err: () => err };
}

test('ClusteredWorkload: ~2% of pages dirty, consecutive intervals overlap but differ, deterministic per seed', () => {
  const pages = 1 << 22;
  const options = { pages, dirtyFraction: 0.02, turnover: 0.25, seed: 7 };
  const w = new ClusteredWorkload(options);
  const a = new Uint8Array(pages / 8);
  const b = new Uint8Array(pages / 8);
  w.next(a);
  w.next(b);
  const dirtyA = count(a, pages);
  assert.ok(dirtyA > 0.015 * pages && dirtyA < 0.021 * pages, `dirty ${dirtyA / pages}`);
  const both = dirtyA - andNot(new Uint8Array(pages / 8), a, b, pages); // pages dirty in both
  assert.ok(both > 0.5 * dirtyA && both < 0.95 * dirtyA, `overlap ${both / dirtyA}`);
  const again = new Uint8Array(pages / 8);
  new ClusteredWorkload(options).next(again);
  assert.deepEqual(again, a);
});

test('dpa bench bitmap --json: consistent figures, reference results match native', async () => {
  const { io, out, err } = capture();
  const status = await runCli(['bench', 'bitmap', '--bitmap-mib', '1', '--iterations', '3', '--ts-iterations', '1', '--heat-intervals', '4', '--json'], io);
  assert.equal(status, 0, err());
  const r = JSON.parse(out()) as Record<string, unknown>;
  for (const key of ['bitmapBytes', 'analyzeGBps', 'memBoundGBps', 'ratio', 'tsReferenceGBps', 'speedupVsTs', 'analyzeMsPerInterval', 'dirtyFraction']) {
    assert.equal(typeof r[key], 'number', key);
    assert.ok(Number.isFinite(r[key] as number) && (r[key] as number) > 0, `${key} = ${String(r[key])}`);
  }
  assert.equal(r.bitmapBytes, 1 << 20);
  assert.equal(r.pages, 1 << 23);
  assert.equal(r.simd, simdLevel());
  assert.equal(r.tsMatchesNative, true);
  // ratio is a median of paired ratios: near the ratio of the medians, not equal to it.
  const ratio = (r.analyzeGBps as number) / (r.memBoundGBps as number);
  assert.ok((r.ratio as number) > ratio / 2 && (r.ratio as number) < ratio * 2, `ratio ${String(r.ratio)} vs ${ratio}`);
  const bytesPerInterval = r.bytesPerInterval as { read: number; write: number };
  const best = (bytesPerInterval.read + bytesPerInterval.write) / (r.analyzeBestMsPerInterval as number) / ((r.memBoundBytes as number) / (r.memBoundBestMs as number));
  assert.ok(Math.abs(best - (r.ratioBest as number)) < 0.03 * best + 0.002, `ratioBest ${String(r.ratioBest)} vs ${best}`);
  assert.ok(Math.abs((r.memBoundBytes as number) / (bytesPerInterval.read + bytesPerInterval.write) - 1) < 0.05, 'yardstick sized like a push');
  assert.ok((r.dirtyFraction as number) > 0.015 && (r.dirtyFraction as number) < 0.021);
  const bytes = r.bytesPerInterval as { read: number; write: number };
  assert.ok(bytes.read > (1 << 20) && bytes.write > 0, 'the bitmap and the state are counted');
  // A 32 GiB guest pushes on 2 threads when the host has 2 CPUs; the yardstick streams on as many.
  assert.equal(r.threads, availableParallelism() >= 2 ? 2 : 1);
  assert.equal(r.memBoundThreads, r.threads);
  assert.equal(r.tsReferenceThreads, 1);
  assert.ok(typeof r.heatHistogramMs === 'number' && r.heatHistogramMs > 0, String(r.heatHistogramMs));
  const single = capture();
  assert.equal(await runCli(['bench', 'bitmap', '--bitmap-mib', '1', '--iterations', '3', '--ts-iterations', '0', '--heat-intervals', '4', '--threads', '1', '--json'], single.io), 0, single.err());
  const s1 = JSON.parse(single.out()) as Record<string, unknown>;
  assert.equal(s1.threads, 1);
  assert.equal(s1.memBoundThreads, 1);
  assert.deepEqual(s1.bytesPerInterval, r.bytesPerInterval, 'same workload, same bytes whatever the threads');
});

test('dpa bench bitmap: text output, and out-of-range options are usage errors', async () => {
  const text = capture();
  assert.equal(await runCli(['bench', 'bitmap', '--bitmap-mib', '1', '--iterations', '3', '--ts-iterations', '0'], text.io), 0, text.err());
  assert.match(text.out(), /bitmap 1 MiB \(32 GiB guest, 8388608 pages\)/);
  assert.match(text.out(), /ratio\s+\d\.\d{3} \(analyze \/ memory-bound, median of pairs; best \/ best \d\.\d{3}\)/);
  assert.match(text.out(), /TS reference\s+skipped: --ts-iterations 0/);
  const bad = capture();
  assert.equal(await runCli(['bench', 'bitmap', '--bitmap-mib', '257'], bad.io), 2);
  assert.match(bad.err(), /--bitmap-mib: must be an integer from 1 to 256 MiB \(got '257'\)/);
  const region = capture();
  assert.equal(await runCli(['bench', 'bitmap', '--region-pages', '1000'], region.io), 2);
  assert.match(region.err(), /--region-pages: must be a power of two/);
  const threads = capture();
  assert.equal(await runCli(['bench', 'bitmap', '--threads', '3'], threads.io), 2);
  assert.match(threads.err(), /--threads: must be an integer from 0 to 2/);
});
