import assert from 'node:assert/strict';
import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { runCli } from '../../src/cli/main';
import type { CommandIO } from '../../src/cli/command';

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: CommandIO = { out: (t) => void (out += t), err: (t) => void (err += t), isTTY: false, signal: new AbortController().signal };
  const code = await runCli(argv, io);
  return { code, out, err };
}

test('dpa predict --json: zero dirtying is one pass of RAM at the wire rate', async () => {
  const { code, out } = await run(['predict', '--ram-mib', '1024', '--dirty-pages-per-sec', '0', '--bandwidth-mbit', '800', '--zero-page-pct', '50', '--json']);
  assert.equal(code, 0);
  const doc = JSON.parse(out) as { input: Record<string, number>; prediction: { converges: boolean; iterations: number; totalSec: number; wireBytesPerSec: number } };
  assert.equal(doc.prediction.converges, true);
  assert.equal(doc.prediction.iterations, 1);
  assert.equal(doc.prediction.wireBytesPerSec, 1e8);
  // 131 072 non-zero pages × 4104 B + 131 072 zero pages × 9 B at 1e8 B/s.
  assert.ok(Math.abs(doc.prediction.totalSec - (131072 * 4104 + 131072 * 9) / 1e8) < 1e-9);
  assert.equal(doc.input.hotPages, 262144);
});

test('dpa predict (text): a non-converging guest shows why and what would make it converge', async () => {
  const { code, out } = await run(['predict', '--ram-mib', '1024', '--dirty-pages-per-sec', '40000', '--bandwidth-mbit', '1000', '--no-auto-converge']);
  assert.equal(code, 0);
  assert.match(out, /^does NOT converge: does not converge without auto-converge/);
  assert.match(out, /to converge, any one of:/);
  assert.match(out, /downtime limit ≥ \d+ ms/);
  assert.match(out, /pass\s+sent MiB\s+seconds\s+dirtied pages\s+throttle %/);
});

test('dpa predict rejects out-of-range options naming the option, exit 2', async () => {
  const bad = [
    [['--ram-mib', '0'], /--ram-mib: must be an integer from 1/],
    [['--bandwidth-mbit', '0'], /--bandwidth-mbit: must be a number from 0.001/],
    [['--zero-page-pct', '101'], /--zero-page-pct: must be a number from 0 to 100/],
    [['--hot-pages', '300000'], /--hot-pages: must be an integer from 1 to 262144/],
    [['--max-cpu-throttle', '100'], /--max-cpu-throttle: must be an integer from 1 to 99/],
    [['--vcpu-busy-pct', '0'], /--vcpu-busy-pct: must be a number from 0.1 to 100/],
    [['--throttle-catch-up-ms', '-1'], /--throttle-catch-up-ms: must be a number from 0/],
  ] as const;
  for (const [extra, message] of bad) {
    const args = new Map<string, string>([
      ['--ram-mib', '1024'],
      ['--dirty-pages-per-sec', '100'],
      ['--bandwidth-mbit', '1000'],
    ]);
    for (let i = 0; i < extra.length; i += 2) args.set(extra[i]!, extra[i + 1]!);
    const { code, err } = await run(['predict', ...[...args].flat()]);
    assert.equal(code, 2, `${extra.join(' ')}`);
    assert.match(err, message);
  }
  const missing = await run(['predict', '--ram-mib', '1024']);
  assert.equal(missing.code, 2);
  assert.match(missing.err, /--dirty-pages-per-sec is required/);
});

test('bin/dpa.js predict runs as a process and prints one JSON document', () => {
  const bin = join(__dirname, '..', '..', '..', 'bin', 'dpa.js');
  const out = execFileSync(process.execPath, [bin, 'predict', '--ram-mib', '2048', '--dirty-pages-per-sec', '5000', '--hot-pages', '50000', '--bandwidth-mbit', '1000', '--json'], { encoding: 'utf8' });
  const doc = JSON.parse(out) as { prediction: { converges: boolean; downtimeMs: number } };
  assert.equal(doc.prediction.converges, true);
  assert.ok(doc.prediction.downtimeMs > 0 && doc.prediction.downtimeMs < 300 * (4104 / 4096));
});

test('dpa predict --json: a wall-clock paced guest (--vcpu-busy-pct, --throttle-catch-up-ms) needs a higher throttle', async () => {
  const common = ['predict', '--ram-mib', '128', '--dirty-pages-per-sec', '12000', '--hot-pages', '4096', '--bandwidth-mbit', '186.4', '--zero-page-pct', '25', '--absorb-pending-rewrites', '--json'];
  const cpu = await run(common);
  const paced = await run([...common, '--vcpu-busy-pct', '10', '--throttle-catch-up-ms', '50']);
  assert.equal(cpu.code, 0);
  assert.equal(paced.code, 0);
  type Doc = { input: { vcpuBusyFraction: number; throttleCatchUpSec?: number; absorbPendingRewrites: boolean }; prediction: { finalThrottlePct: number; totalSec: number } };
  const a = JSON.parse(cpu.out) as Doc;
  const b = JSON.parse(paced.out) as Doc;
  assert.equal(a.input.vcpuBusyFraction, 1);
  assert.equal(a.input.throttleCatchUpSec, undefined);
  assert.equal(b.input.vcpuBusyFraction, 0.1);
  assert.equal(b.input.throttleCatchUpSec, 0.05);
  assert.equal(b.input.absorbPendingRewrites, true);
  // QEMU's sync loop (--absorb-pending-rewrites): a CPU-bound guest at 20 % still dirties more new
  // pages per second than the link sends (model-precopy.test.ts derives 30 %); a paced one loses
  // nothing to the throttle until 90 %.
  assert.equal(a.prediction.finalThrottlePct, 30);
  assert.equal(b.prediction.finalThrottlePct, 90);
  assert.ok(b.prediction.totalSec > a.prediction.totalSec);

  // TCG: each sync waits for the throttled vCPU's wake-up (the link meanwhile drains the socket
  // buffer, and the guest's writes come in bursts), so the prediction changes.
  const tcg = await run([...common, '--vcpu-busy-pct', '10', '--throttle-catch-up-ms', '50', '--tcg-sync-wait', '--socket-buffer-kib', '4096']);
  assert.equal(tcg.code, 0);
  const c = JSON.parse(tcg.out) as Doc & { input: { syncWaitsForThrottledVcpu?: boolean; socketBufferBytes?: number } };
  assert.equal(c.input.syncWaitsForThrottledVcpu, true);
  assert.equal(c.input.socketBufferBytes, 4 * 1024 * 1024);
  assert.ok(Math.abs(c.prediction.totalSec - b.prediction.totalSec) > 0.05, `${c.prediction.totalSec} vs ${b.prediction.totalSec}`);
  const bad = await run(['predict', '--ram-mib', '128', '--dirty-pages-per-sec', '100', '--bandwidth-mbit', '100', '--tcg-sync-wait']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.err, /--tcg-sync-wait: .*needs --absorb-pending-rewrites/);
});
