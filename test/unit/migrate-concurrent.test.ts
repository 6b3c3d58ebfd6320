import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../../src/cli/main';
import { checkConcurrentOptions, quantile, runConcurrentMigrations } from '../../src/migrate/concurrent';

test('checkConcurrentOptions: each option out of range is a RangeError naming it', () => {
  const ok = { vms: 3, omegaMib: 8, linkMbit: 150 };
  assert.doesNotThrow(() => checkConcurrentOptions(ok));
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ vms: 0 }, /^vms: must be an integer from 1 to 8/],
    [{ vms: 9 }, /^vms:/],
    [{ vms: 2.5 }, /^vms:/],
    [{ omegaMib: 0 }, /^omegaMib:/],
    [{ linkMbit: 0.5 }, /^linkMbit: must be a number from 1 to 10000/],
    [{ guestMib: 64 }, /^guestMib:/],
    [{ diskMib: 4 }, /^diskMib:/],
    [{ diskMib: 16, diskRegionMib: 17 }, /^diskRegionMib: must be an integer from 1 to 16/],
    [{ diskBlockBytes: 5000 }, /^diskBlockBytes:/],
    [{ diskWritesPerSec: 0 }, /^diskWritesPerSec:/],
    [{ memWritePagesPerSec: -1 }, /^memWritePagesPerSec:/],
    [{ migrationTimeoutS: 5 }, /^migrationTimeoutS:/],
    [{ governorReserveBytes: 8 * 1024 * 1024 }, /^governorReserveBytes:/],
    [{ runs: 'all' }, /^runs:/],
    [{ ungovernedLinkFraction: 0.01 }, /^ungovernedLinkFraction: must be a number from 0.05 to 2/],
  ];
  for (const [patch, re] of bad) assert.throws(() => checkConcurrentOptions({ ...ok, ...patch } as never), (e: Error) => e instanceof RangeError && re.test(e.message), JSON.stringify(patch));
  assert.throws(() => checkConcurrentOptions({ vms: 3, omegaMib: 8 } as never), /linkMbit: required/);
});

test('runConcurrentMigrations rejects bad options before touching the system', async () => {
  await assert.rejects(runConcurrentMigrations({ vms: 3, omegaMib: 8, linkMbit: 150, diskMib: 32, diskRegionMib: 1, diskBlockBytes: 3 * 4096 * 16 }), /diskRegionMib: must be a multiple of diskBlockBytes/);
});

test('quantile: nearest rank', () => {
  assert.equal(quantile([], 0.9), null);
  assert.equal(quantile([5], 0.9), 5);
  assert.equal(quantile([3, 1, 2], 0.9), 3);
  assert.equal(quantile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.9), 90);
  assert.equal(quantile([1, 2, 3, 4], 0.5), 2);
});

test('dpa lab migrate-concurrent: out-of-range options are usage errors', async () => {
  let err = '';
  const io = { out: () => undefined, err: (t: string) => void (err += t), isTTY: false, signal: new AbortController().signal };
  assert.notEqual(await runCli(['lab', 'migrate-concurrent', '--vms', '9', '--json'], io), 0);
  assert.match(err, /vms/);
  err = '';
  assert.equal(await runCli(['lab', 'migrate-concurrent', '--disk-mib', '16', '--disk-region-mib', '24'], io), 2);
  assert.match(err, /--disk-region-mib: must be at most --disk-mib \(16\)/);
});
