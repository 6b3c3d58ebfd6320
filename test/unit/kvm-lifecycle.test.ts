/**
 * Lifecycle of the calibration VM: close() releases every fd, mapping and thread; nothing keeps
 * the process alive after a run ends (with or without close()), and an unref'd endless run lets
 * the process exit cleanly (the env cleanup hook stops the threads before Node tears down).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { kvmMissing, needs } from '../helpers/prereq';
import { KvmCalibrationSource } from '../../src/sources/kvm-calibration';

const KVM = needs('kvm', kvmMissing());

/** fd targets of this process (anon_inode:kvm-vm, anon_inode:[timerfd], /dev/kvm, ...). */
function fdTargets(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      out.push(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // the directory's own fd, gone by now
    }
  }
  return out.sort();
}

/** Mappings belonging to a VM: kvm_run/ring (anon_inode:kvm-vcpu) or exactly the RAM's size. */
function vmMappings(ramBytes: number): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+)/.exec(line);
      if (!m) return false;
      const bytes = Number(BigInt('0x' + m[2]) - BigInt('0x' + m[1]));
      return line.includes('kvm') || bytes === ramBytes;
    });
}

test('close() releases every fd (kvm, vm, vcpus, timerfd, eventfd) and every mapping (RAM, aux, kvm_run, rings)', KVM, async () => {
  const guestMib = 1000; // a size nothing else in the process maps
  const ramBytes = guestMib * 1024 * 1024;
  // Warm up once so that lazily opened fds of Node itself are already there.
  const warm = KvmCalibrationSource.start({ guestMib: 64, ratePagesPerSec: 1000, seconds: 0.02 });
  await warm.ended;
  await warm.close();

  const fds0 = fdTargets();
  const maps0 = vmMappings(ramBytes);
  for (const mode of ['bitmap', 'ring'] as const) {
    const source = KvmCalibrationSource.start({ guestMib, vcpus: 3, mode, ratePagesPerSec: 20000, hotPages: 1000, intervalMs: 5 });
    await new Promise<void>((resolve) => source.onInterval((i) => i.seq === 3 && resolve()));
    const during = fdTargets();
    assert.equal(during.filter((t) => t.includes('kvm-vcpu')).length, 3);
    assert.equal(during.filter((t) => t.includes('kvm-vm')).length, 1);
    assert.ok(during.some((t) => t.includes('timerfd')));
    const mapsDuring = vmMappings(ramBytes);
    assert.ok(mapsDuring.length >= 1 + 3 * (mode === 'ring' ? 2 : 1), mapsDuring.join('\n'));
    await source.close();
    assert.deepEqual(fdTargets(), fds0);
    assert.deepEqual(vmMappings(ramBytes), maps0);
  }
});

function runChild(script: string, timeoutMs: number): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { cwd: ROOT, timeout: timeoutMs }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number; signal?: string }) | null;
      resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

// This file runs as dist/test/unit/*.js; the child loads the same compiled source.
const ROOT = path.resolve(__dirname, '..', '..', '..');
const SOURCE = `require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'sources', 'kvm-calibration.js'))}).KvmCalibrationSource`;

test('nothing keeps the process alive after a finished run: with close(), and when close() is forgotten', KVM, async () => {
  const withClose = await runChild(
    `const S = ${SOURCE}; const s = S.start({ guestMib: 256, ratePagesPerSec: 20000, seconds: 0.3 });
     s.ended.then(async (e) => { await s.close(); console.log('ended', e.code, e.stats.intervals); });`,
    15000,
  );
  assert.equal(withClose.code, 0, withClose.stderr);
  assert.match(withClose.stdout, /^ended COMPLETE 30$/m);

  const forgotten = await runChild(
    `const S = ${SOURCE}; const s = S.start({ guestMib: 256, ratePagesPerSec: 20000, seconds: 0.3 });
     s.ended.then((e) => console.log('ended', e.code, e.stats.mismatchedIntervals));`,
    15000,
  );
  assert.equal(forgotten.code, 0, forgotten.stderr);
  assert.match(forgotten.stdout, /^ended COMPLETE 0$/m);
  // It exits on its own soon after the run (well before the test's timeout).
  assert.ok(forgotten.ms < 10000, `took ${forgotten.ms} ms`);
});

test('an endless run keeps the process alive until close(); unref() lets it exit with threads stopped cleanly', KVM, async () => {
  const closedLater = await runChild(
    `const S = ${SOURCE}; const s = S.start({ guestMib: 128, ratePagesPerSec: 5000 });
     let n = 0; s.onInterval(() => { if (++n === 20) { s.close().then(() => console.log('closed after', n)); } });`,
    15000,
  );
  assert.equal(closedLater.code, 0, closedLater.stderr + closedLater.stdout);
  assert.match(closedLater.stdout, /^closed after 20$/m);

  const unrefd = await runChild(
    `const S = ${SOURCE}; const s = S.start({ guestMib: 128, ratePagesPerSec: 5000, vcpus: 2 }).unref();
     const poll = () => (s.stats().intervals > 2 ? console.log('running') : setTimeout(poll, 10));
     poll();`,
    15000,
  );
  // The script returns with the run still active; the process must exit by itself, cleanly.
  assert.equal(unrefd.code, 0, unrefd.stderr + unrefd.stdout);
  assert.equal(unrefd.signal, null);
  assert.match(unrefd.stdout, /^running$/m);
});

test('a listener that throws surfaces as an uncaught exception: the process fails loudly instead of hanging', KVM, async () => {
  const r = await runChild(
    `const S = ${SOURCE}; const s = S.start({ guestMib: 128, ratePagesPerSec: 5000 });
     s.onInterval((i) => { if (i.seq === 3) throw new Error('listener boom'); });`,
    15000,
  );
  assert.equal(r.code, 1);
  assert.equal(r.signal, null); // an ordinary exit, not an abort or the test's timeout
  assert.match(r.stderr, /Error: listener boom/);
});
