/**
 * The typed command helpers against QEMU 7.2: every helper's arguments checked against the schema
 * the running QEMU reports, the harmless ones executed for real, the LXD storage sequence (NBD
 * export + blockdev-mirror) run between two QEMUs, and the calc-dirty-rate dirty-bitmap guard.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { QmpClient, QmpCommandError, type QmpExecutor, QmpUnsafeCommandError } from '../../src/qmp/client';
import * as cmd from '../../src/qmp/commands';
import { QmpSchema } from '../../src/qmp/schema';
import { needs, qemuMissing } from '../helpers/prereq';
import { startQemuFor } from '../helpers/qemu';

const qemu = needs('qemu', qemuMissing());
const execFileP = promisify(execFile);
const MiB = 1024 * 1024;

/** Records what a helper would send, without sending it. */
class Recorder implements QmpExecutor {
  calls: { command: string; args: Record<string, unknown> | undefined }[] = [];
  constructor(private readonly answers: Record<string, unknown> = {}) {}
  execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
    this.calls.push({ command, args });
    return Promise.resolve((this.answers[command] ?? {}) as T);
  }
}

test('every helper sends arguments the running QEMU 7.2 schema accepts', qemu, async (t) => {
  const vm = await startQemuFor(t);
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  const schema = await QmpSchema.fetch(c);
  const r = new Recorder({ 'query-kvm': { enabled: true, present: true } });
  await cmd.queryStatus(r);
  await cmd.queryKvm(r);
  await cmd.cont(r);
  await cmd.stop(r);
  await cmd.quit(r);
  await cmd.humanMonitorCommand(r, 'info status', { cpuIndex: 0 });
  await cmd.queryMigrate(r);
  await cmd.migrateSetCapabilities(r, { 'auto-converge': true, 'pause-before-switchover': true, 'zero-blocks': true });
  await cmd.migrateSetParameters(r, { 'max-bandwidth': 128 * MiB, 'downtime-limit': 300, 'cpu-throttle-initial': 50, 'cpu-throttle-increment': 10, 'throttle-trigger-threshold': 20, 'max-cpu-throttle': 99 });
  await cmd.queryMigrateParameters(r);
  await cmd.migrate(r, { uri: 'unix:/run/x.sock' });
  await cmd.migrateIncoming(r, { uri: 'unix:/run/x.sock' });
  await cmd.migrateContinue(r, 'pre-switchover');
  await cmd.migrateCancel(r);
  await cmd.calcDirtyRate(r, { calcTimeS: 1, samplePagesPerGiB: 512 });
  await cmd.calcDirtyRate(r, { calcTimeS: 2, mode: 'dirty-bitmap', vmOnKvm: true });
  await cmd.queryDirtyRate(r);
  await cmd.queryBlockstats(r);
  await cmd.queryBlockstats(r, { queryNodes: true });
  await cmd.queryNamedBlockNodes(r);
  await cmd.queryBlock(r);
  await cmd.queryBlockJobs(r);
  await cmd.blockSetIoThrottle(r, { id: '/machine/peripheral/root/virtio-backend', bps: 0, bps_rd: 0, bps_wr: 10 * MiB, iops: 0, iops_rd: 0, iops_wr: 0 });
  await cmd.blockdevAdd(r, { driver: 'qcow2', 'node-name': 'lxd_root_snapshot', file: { driver: 'file', filename: '/x.qcow2' }, backing: null });
  await cmd.blockdevAdd(r, { driver: 'raw', 'node-name': 'lxd_root_nbd', file: { driver: 'nbd', server: { type: 'unix', path: '/run/nbd.sock' }, export: 'lxd_root' } });
  await cmd.blockdevDel(r, 'lxd_root_nbd');
  await cmd.blockdevSnapshot(r, { node: 'lxd_root', overlay: 'lxd_root_snapshot' });
  await cmd.blockdevMirror(r, { 'job-id': 'm0', device: 'lxd_root_snapshot', target: 'lxd_root_nbd', sync: 'top', 'copy-mode': 'write-blocking', speed: 0, granularity: 65536 });
  await cmd.blockJobCancel(r, { device: 'm0', force: false });
  await cmd.blockCommit(r, { 'job-id': 'c0', device: 'lxd_root_snapshot', 'top-node': 'lxd_root_snapshot', 'base-node': 'lxd_root', speed: 0 });
  await cmd.nbdServerStart(r, { addr: { type: 'unix', data: { path: '/run/nbd.sock' } }, 'max-connections': 4 });
  await cmd.blockExportAdd(r, { type: 'nbd', id: 'exp0', 'node-name': 'lxd_root', writable: true, name: 'lxd_root' });

  const commands = new Set(r.calls.map((x) => x.command));
  for (const name of ['query-status', 'migrate-set-capabilities', 'migrate-set-parameters', 'query-migrate-parameters', 'query-blockstats', 'query-named-block-nodes', 'query-block', 'query-block-jobs', 'block_set_io_throttle', 'blockdev-add', 'blockdev-snapshot', 'blockdev-mirror', 'block-job-cancel', 'block-commit', 'nbd-server-start', 'block-export-add', 'migrate', 'migrate-incoming', 'migrate-continue', 'migrate_cancel', 'calc-dirty-rate', 'query-dirty-rate', 'cont', 'stop', 'quit', 'human-monitor-command']) {
    assert.ok(commands.has(name), `no helper exercised ${name}`);
  }
  const problems = r.calls.flatMap((x) => schema.checkArguments(x.command, x.args));
  assert.deepEqual(problems, []);
  // The check is not vacuous: it catches the mistakes it is there for.
  assert.deepEqual(schema.checkArguments('calc-dirty-rate', { calc_time: 1 }), ["calc-dirty-rate: 'calc_time' is unexpected", "calc-dirty-rate: 'calc-time' is required"]);
  assert.match(schema.checkArguments('nbd-server-start', { addr: { type: 'unix', path: '/x' } }).join(), /'path' is unexpected/);
  assert.match(schema.checkArguments('block_set_io_throttle', { id: 'x', bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0 }).join(), /'iops_wr' is required/);
  assert.match(schema.checkArguments('migrate-continue', { state: 'pre-switchovr' }).join(), /is not one of/);
});

test('helpers validate before sending: RangeError/TypeError naming the field, matching QEMU 7.2 limits', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', memMib: 256 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  // Our limits and QEMU's agree at the edges: QEMU rejects what we reject, accepts what we accept.
  await assert.rejects(cmd.calcDirtyRate(c, { calcTimeS: 1, samplePagesPerGiB: 127 }), /samplePagesPerGiB: must be an integer from 128 to 16384/);
  await assert.rejects(c.execute('calc-dirty-rate', { 'calc-time': 1, 'sample-pages': 127 }), QmpCommandError);
  await assert.rejects(c.execute('calc-dirty-rate', { 'calc-time': 1, 'sample-pages': 16385 }), QmpCommandError);
  await assert.rejects(cmd.calcDirtyRate(c, { calcTimeS: 61 }), /calcTimeS: must be an integer from 1 to 60/);
  await assert.rejects(cmd.calcDirtyRate(c, { calcTimeS: 0.5 }), RangeError);
  assert.throws(() => cmd.migrateSetParameters(c, { 'downtime-limit': 2_000_001 }), /downtime-limit: must be an integer from 0 to 2000000/);
  await assert.rejects(c.execute('migrate-set-parameters', { 'downtime-limit': 2_000_001 }), QmpCommandError);
  await cmd.migrateSetParameters(c, { 'downtime-limit': 2_000_000 });
  assert.throws(() => cmd.migrateSetParameters(c, { 'cpu-throttle-initial': 100 }), /cpu-throttle-initial: must be an integer from 1 to 99/);
  await assert.rejects(c.execute('migrate-set-parameters', { 'cpu-throttle-initial': 100 }), QmpCommandError);
  assert.throws(() => cmd.blockSetIoThrottle(c, { id: '/x', bps: 0, bps_rd: 0, bps_wr: -1, iops: 0, iops_rd: 0, iops_wr: 0 }), /bps_wr: must be an integer from 0/);
  assert.throws(
    () => cmd.blockSetIoThrottle(c, { bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 }),
    /exactly one of id .* or device/,
  );
  assert.throws(() => cmd.migrateSetCapabilities(c, {}), /at least one capability/);
  assert.throws(() => cmd.blockdevMirror(c, { device: 'a', target: 'b', sync: 'top', granularity: 3000 }), /granularity/);
  assert.equal((await cmd.queryStatus(c)).status, 'running');
});

test('calc-dirty-rate dirty-bitmap is refused under TCG (it would crash QEMU 7.2); page-sampling measures', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', memMib: 256 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  await assert.rejects(cmd.calcDirtyRate(c, { calcTimeS: 1, mode: 'dirty-bitmap' }), (e: unknown) => e instanceof RangeError && /vmOnKvm/.test(e.message));
  // The caller claims KVM, QEMU says TCG: refused after query-kvm, nothing sent.
  await assert.rejects(cmd.calcDirtyRate(c, { calcTimeS: 1, mode: 'dirty-bitmap', vmOnKvm: true }), QmpUnsafeCommandError);
  assert.throws(() => cmd.humanMonitorCommand(c, 'calc_dirty_rate -b 1'), /dirty-bitmap/);
  assert.equal((await cmd.queryDirtyRate(c)).status, 'unstarted', 'nothing was started');
  assert.equal((await cmd.queryStatus(c)).status, 'running');
  assert.equal(vm.child.exitCode, null, 'QEMU is alive');

  await cmd.calcDirtyRate(c, { calcTimeS: 1, samplePagesPerGiB: 256 });
  // QEMU starts the measuring thread asynchronously: just after the command it may not have run yet.
  assert.match((await cmd.queryDirtyRate(c)).status, /^(unstarted|measuring)$/);
  let info = await cmd.queryDirtyRate(c);
  for (const deadline = performance.now() + 15_000; info.status !== 'measured' && performance.now() < deadline; ) {
    await new Promise((r) => setTimeout(r, 100));
    info = await cmd.queryDirtyRate(c);
  }
  assert.equal(info.status, 'measured');
  assert.equal(info['calc-time'], 1);
  assert.equal(info['sample-pages'], 256);
  assert.equal(info.mode, 'page-sampling');
  assert.equal(typeof info['dirty-rate'], 'number');
});

test('migration capabilities, parameters and I/O throttle round-trip through QEMU', qemu, async (t) => {
  const vm = await startQemuFor(t, { machine: 'q35', diskMib: 16 });
  const c = await QmpClient.connect(vm.socketPath);
  t.after(() => c.close());
  await cmd.migrateSetCapabilities(c, { 'auto-converge': true, 'pause-before-switchover': true });
  const caps = await c.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities');
  const on = new Set(caps.filter((x) => x.state).map((x) => x.capability));
  assert.ok(on.has('auto-converge') && on.has('pause-before-switchover') && !on.has('zero-blocks'));
  await cmd.migrateSetParameters(c, { 'max-bandwidth': 48 * MiB, 'downtime-limit': 123, 'cpu-throttle-initial': 50 });
  const p = await cmd.queryMigrateParameters(c);
  assert.equal(p['max-bandwidth'], 48 * MiB);
  assert.equal(p['downtime-limit'], 123);
  assert.equal(p['cpu-throttle-initial'], 50);

  const [blk] = await cmd.queryBlock(c);
  assert.equal(blk!.qdev, '/machine/peripheral/vd0/virtio-backend');
  await cmd.blockSetIoThrottle(c, { id: blk!.qdev!, bps: 0, bps_rd: 0, bps_wr: 5 * MiB, iops: 0, iops_rd: 0, iops_wr: 300 });
  let ins = (await cmd.queryBlock(c))[0]!.inserted!;
  assert.equal(ins.bps_wr, 5 * MiB);
  assert.equal(ins.iops_wr, 300);
  await cmd.blockSetIoThrottle(c, { id: blk!.qdev!, bps: 0, bps_rd: 0, bps_wr: 0, iops: 0, iops_rd: 0, iops_wr: 0 });
  ins = (await cmd.queryBlock(c))[0]!.inserted!;
  assert.equal(ins.bps_wr, 0);
  assert.equal(ins.iops_wr, 0);
});

test('LXD storage sequence between two QEMUs: NBD export, overlay, write-blocking mirror until ready, cancel', qemu, async (t) => {
  const src = await startQemuFor(t, { machine: 'q35', diskMib: 32 });
  const dst = await startQemuFor(t);
  const sc = await QmpClient.connect(src.socketPath);
  const dc = await QmpClient.connect(dst.socketPath);
  t.after(() => Promise.all([sc.close(), dc.close()]));
  const dev = '/machine/peripheral/vd0/virtio-backend';
  await cmd.humanMonitorCommand(sc, `qemu-io -d ${dev} "aio_write -P 0x3c 1M 3M"`);
  await cmd.humanMonitorCommand(sc, `qemu-io -d ${dev} "aio_flush"`);

  // Target: a disk of the same size exported writable over NBD (what LXD's target does for lxd_root).
  const dstDisk = join(dst.dir, 'root.qcow2');
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', dstDisk, '32M']);
  await cmd.blockdevAdd(dc, { driver: 'qcow2', 'node-name': 'lxd_root', file: { driver: 'file', filename: dstDisk } });
  const nbdPath = join(dst.dir, 'nbd.sock');
  await cmd.nbdServerStart(dc, { addr: { type: 'unix', data: { path: nbdPath } } });
  await cmd.blockExportAdd(dc, { type: 'nbd', id: 'exp0', 'node-name': 'lxd_root', writable: true });

  // Source: overlay over the base, then mirror the overlay's whole chain to the NBD node.
  const ovl = join(src.dir, 'migration_snapshot.qcow2');
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', ovl, '32M']);
  await cmd.blockdevAdd(sc, { driver: 'qcow2', 'node-name': 'lxd_root_snapshot', file: { driver: 'file', filename: ovl }, backing: null });
  await cmd.blockdevSnapshot(sc, { node: 'root', overlay: 'lxd_root_snapshot' });
  await cmd.blockdevAdd(sc, { driver: 'raw', 'node-name': 'lxd_root_nbd', file: { driver: 'nbd', server: { type: 'unix', path: nbdPath }, export: 'lxd_root' } });
  const ready = sc.waitEvent('BLOCK_JOB_READY', { timeoutMs: 20_000 });
  await cmd.blockdevMirror(sc, { 'job-id': 'mirror0', device: 'lxd_root_snapshot', target: 'lxd_root_nbd', sync: 'full', 'copy-mode': 'write-blocking' });
  assert.equal((await ready).data?.device, 'mirror0');
  const [job] = await cmd.queryBlockJobs(sc);
  assert.equal(job!.type, 'mirror');
  assert.equal(job!.ready, true);
  assert.equal(job!.offset, job!.len);
  // Cancelling a ready mirror leaves the target consistent: BLOCK_JOB_COMPLETED, not CANCELLED.
  const completed = sc.waitEvent('BLOCK_JOB_COMPLETED', { timeoutMs: 10_000 });
  await cmd.blockJobCancel(sc, { device: 'mirror0' });
  assert.equal((await completed).data?.device, 'mirror0');
  assert.deepEqual(await cmd.queryBlockJobs(sc), []);
  // The guest data really arrived: read the target image from outside (shared read, QEMU holds it).
  const readBack = (offset: string, len: string): Promise<{ code: number; out: string }> =>
    execFileP('qemu-io', ['-U', '-r', '-f', 'qcow2', '-c', `read -P 0x3c ${offset} ${len}`, dstDisk]).then(
      (r) => ({ code: 0, out: r.stdout }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    );
  const good = await readBack('1M', '3M');
  assert.equal(good.code, 0, good.out);
  assert.match(good.out, /read 3145728\/3145728 bytes/);
  const bad = await readBack('8M', '1M');
  assert.equal(bad.code, 1);
  assert.match(bad.out, /Pattern verification failed/);
});
