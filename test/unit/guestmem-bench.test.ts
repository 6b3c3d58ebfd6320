/** `dpa bench scan`: runs against its own small QEMU target and reports consistent figures. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../../src/cli/main';
import type { CommandIO } from '../../src/cli/command';
import { needs, qemuMissing } from '../helpers/prereq';

function io(): CommandIO & { stdout: string; stderr: string } {
  const o = {
    stdout: '',
    stderr: '',
    isTTY: false,
    signal: new AbortController().signal,
    out: (t: string) => void (o.stdout += t),
    err: (t: string) => void (o.stderr += t),
  };
  return o;
}

test('dpa bench scan --json: one document, scan bounded by the copy it is made of', needs('qemu', qemuMissing()), async () => {
  const sink = io();
  const status = await runCli(['bench', 'scan', '--mib', '64', '--scans', '3', '--cpu-seconds', '0.5', '--json'], sink);
  assert.equal(status, 0, sink.stderr);
  const r = JSON.parse(sink.stdout) as Record<string, number | string | boolean>;
  assert.equal(r.targetMib, 64);
  assert.equal(r.pagesRead, 16384, 'every page of the (made resident) target is read');
  for (const k of ['scanGBps', 'copyGBps', 'hashGBps', 'hashScalarGBps', 'cpuPercentAt10Hz', 'cpuPercentSampledAt10Hz']) {
    assert.ok(typeof r[k] === 'number' && (r[k] as number) > 0, `${k} = ${r[k]}`);
  }
  // Reading and hashing cannot beat reading alone by much (different CPU clocks: thread vs process).
  assert.ok((r.scanVsCopy as number) < 1.6, `scan/copy ${r.scanVsCopy}`);
  assert.equal(r.hashStateBytesPerGiB, 2 * 1024 * 1024);
});

test('dpa bench scan rejects bad options before starting anything', async () => {
  const sink = io();
  assert.equal(await runCli(['bench', 'scan', '--mib', '8'], sink), 2);
  assert.match(sink.stderr, /--mib: must be an integer from 16 to 16384 MiB/);
  const sink2 = io();
  assert.equal(await runCli(['bench', 'scan', '--hash', 'sse'], sink2), 2);
  assert.match(sink2.stderr, /--hash: must be one of auto, avx2, scalar/);
  const sink3 = io();
  assert.equal(await runCli(['bench', 'scan', '--chunk-kib', '66'], sink3), 2);
  assert.match(sink3.stderr, /--chunk-kib: must be a multiple of 4/);
});
