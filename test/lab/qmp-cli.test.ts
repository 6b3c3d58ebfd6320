/** `dpa profile --qmp` and `dpa bench qmp`, run in-process against real QEMU. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CommandIO } from '../../src/cli/command';
import { runCli } from '../../src/cli/main';
import { needs, qemuMissing } from '../helpers/prereq';
import { startQemuFor } from '../helpers/qemu';

const qemu = needs('qemu', qemuMissing());

function capture(isTTY = false): { io: CommandIO; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return {
    io: { out: (t) => (out += t), err: (t) => (err += t), isTTY, signal: new AbortController().signal },
    out: () => out,
    err: () => err,
  };
}

test('profile --json prints one JSON document per line: qmp samples at the asked rate, then dirty-rate', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', memMib: 256, diskMib: 16 });
  const c = capture();
  const status = await runCli(['profile', '--qmp', vm.socketPath, '--interval-ms', '100', '--seconds', '1.5', '--dirty-rate-seconds', '1', '--json'], c.io);
  assert.equal(status, 0, c.err());
  const docs = c.out().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const qmp = docs.filter((d) => d.type === 'qmp');
  assert.ok(qmp.length >= 12 && qmp.length <= 17, `${qmp.length} samples in 1.5 s at 10 Hz`);
  qmp.forEach((d, i) => assert.equal(d.seq, i));
  const devices = qmp[0]!.devices as { qdev: string }[];
  assert.deepEqual(devices.map((d) => d.qdev), ['/machine/peripheral/vd0/virtio-backend']);
  const dr = docs.filter((d) => d.type === 'dirty-rate');
  assert.equal(dr.length, 1);
  assert.equal(dr[0]!.calcTimeS, 1);
  assert.equal(dr[0]!.mode, 'page-sampling');
});

test('profile on a terminal redraws a view; it exits 1 when QEMU goes away', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', diskMib: 16 });
  const c = capture(true);
  setTimeout(() => vm.child.kill('SIGKILL'), 700);
  const status = await runCli(['profile', '--qmp', vm.socketPath, '--interval-ms', '100', '--dirty-rate-seconds', '0'], c.io);
  assert.equal(status, 1);
  assert.match(c.err(), /QMP connection to .* lost/);
  const frames = c.out().split('\x1b[H\x1b[2J').filter(Boolean);
  assert.ok(frames.length >= 4, `${frames.length} frames`);
  assert.match(frames[frames.length - 1]!, /disk \/machine\/peripheral\/vd0\/virtio-backend: write 0\.00 MiB\/s/);
  assert.match(frames[frames.length - 1]!, /node root \(qcow2\): 0\.\d MiB on host/);
});

test('profile with a missing socket fails with the connect error, not a stack trace', async () => {
  const c = capture();
  await assert.rejects(runCli(['profile', '--qmp', '/nonexistent/qmp.sock', '--seconds', '1'], c.io), /cannot connect to QMP socket \/nonexistent\/qmp.sock: ENOENT/);
  const bad = capture();
  assert.equal(await runCli(['profile', '--qmp', '/x', '--interval-ms', '10'], bad.io), 2);
  assert.match(bad.err(), /--interval-ms: must be an integer from 50 to 60000/);
});

test('bench qmp polls several real monitors at 20 Hz and reports percentiles', qemu, async () => {
  const c = capture();
  const status = await runCli(['bench', 'qmp', '--monitors', '3', '--hz', '20', '--seconds', '1.5', '--machine', 'none', '--json'], c.io);
  assert.equal(status, 0, c.err());
  const r = JSON.parse(c.out()) as Record<string, number>;
  assert.equal(r.monitors, 3);
  assert.equal(r.errors, 0);
  assert.ok(r.achievedHz > 17 && r.achievedHz < 21, `achieved ${r.achievedHz} Hz`);
  assert.ok(r.samples >= 3 * 25, `${r.samples} samples`);
  assert.ok(r.rttP50Ms > 0 && r.rttP50Ms <= r.rttP99Ms && r.rttP99Ms <= r.rttMaxMs);
});
