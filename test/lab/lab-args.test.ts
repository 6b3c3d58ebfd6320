/**
 * The lab's pure parts, no QEMU needed: the QEMU command line, q35's RAM layout, the guest data
 * layout (against splitmix64's published first output), option checks, GPA run expansion.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { checkUnit, digestTerm, fillUnit, MEM_MAGIC, mix64, parseHex64 } from '../../src/lab/guest-pattern';
import { checkDiskParams, checkMemParams, checkReportSettings, expandGpaRuns } from '../../src/lab/guest-protocol';
import { gpaToRamOffset, q35RamLayout } from '../../src/lab/guest-ram';
import { buildQemuArgs, qemuOptValue, type QemuConfig } from '../../src/lab/qemu-args';
import { LabVm } from '../../src/lab/vm';

const GIB = 2 ** 30;

function config(over: Partial<QemuConfig> = {}): QemuConfig {
  return {
    kernelPath: '/k/vmlinuz',
    initrdPath: '/k/initrd',
    kernelArgs: ['dpa.mem=mib:8'],
    guestMib: 512,
    vcpus: 2,
    accel: 'tcg',
    qmpSocketPath: '/d/qmp.sock',
    channelSocketPath: '/d/channel.sock',
    serialLogPath: '/d/serial.log',
    pidFilePath: '/d/qemu.pid',
    disk: { path: '/d/disk.raw', format: 'raw', nodeName: 'lxd_root', deviceId: 'root' },
    name: 'vm1',
    extraArgs: ['-incoming', 'defer'],
    ...over,
  };
}

function optAfter(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));
}

test('QEMU command line: memfd RAM the scanner can find, accel, sockets, disk node, extras last', () => {
  const args = buildQemuArgs(config());
  assert.deepEqual(optAfter(args, '-object'), ['memory-backend-memfd,id=ram0,size=512M,share=on']);
  assert.deepEqual(optAfter(args, '-machine'), ['q35,memory-backend=ram0']);
  assert.deepEqual(optAfter(args, '-m'), ['512M']);
  assert.deepEqual(optAfter(args, '-accel'), ['tcg']);
  assert.deepEqual(optAfter(args, '-cpu'), [], 'TCG keeps the default CPU model');
  assert.deepEqual(optAfter(args, '-smp'), ['2']);
  assert.ok(optAfter(args, '-append')[0]!.endsWith(' dpa.mem=mib:8'));
  assert.ok(optAfter(args, '-append')[0]!.startsWith('console=ttyS0 '));
  assert.ok(optAfter(args, '-chardev').includes('socket,id=qmp0,path=/d/qmp.sock,server=on,wait=off'));
  assert.ok(optAfter(args, '-device').includes('virtserialport,bus=vser0.0,chardev=dpa0,name=dpa.0'));
  assert.deepEqual(optAfter(args, '-blockdev'), ['driver=file,filename=/d/disk.raw,node-name=lxd_root-file', 'driver=raw,file=lxd_root-file,node-name=lxd_root']);
  assert.ok(optAfter(args, '-device').includes('virtio-blk-pci,drive=lxd_root,id=root'));
  assert.deepEqual(args.slice(-2), ['-incoming', 'defer']);

  const kvm = buildQemuArgs(config({ accel: 'kvm', disk: null }));
  assert.deepEqual(optAfter(kvm, '-accel'), ['kvm']);
  assert.deepEqual(optAfter(kvm, '-cpu'), ['host']);
  assert.deepEqual(optAfter(kvm, '-blockdev'), []);
});

test('QEMU option values: commas in paths are doubled, so a path cannot inject options', () => {
  assert.equal(qemuOptValue('/tmp/a,b'), '/tmp/a,,b');
  const args = buildQemuArgs(config({ serialLogPath: '/d/x,server=on/serial.log' }));
  assert.ok(optAfter(args, '-chardev').includes('file,id=serial0,path=/d/x,,server=on/serial.log'));
});

test('q35 RAM layout follows QEMU 7.2: below 2.75 GiB all low, from 2.75 GiB low is 2 GiB', () => {
  assert.deepEqual(q35RamLayout(256 * 2 ** 20), { lowRamBytes: 256 * 2 ** 20, highRamBytes: 0 });
  assert.deepEqual(q35RamLayout(0xb0000000 - 4096), { lowRamBytes: 0xb0000000 - 4096, highRamBytes: 0 });
  assert.deepEqual(q35RamLayout(0xb0000000), { lowRamBytes: 2 * GIB, highRamBytes: 0xb0000000 - 2 * GIB });
  assert.deepEqual(q35RamLayout(8 * GIB), { lowRamBytes: 2 * GIB, highRamBytes: 6 * GIB });
  const l = q35RamLayout(8 * GIB);
  assert.equal(gpaToRamOffset(0x1000, l), 0x1000);
  assert.equal(gpaToRamOffset(4 * GIB, l), 2 * GIB);
  assert.equal(gpaToRamOffset(10 * GIB - 1, l), 8 * GIB - 1);
  assert.throws(() => gpaToRamOffset(3 * GIB, l), /not guest RAM/);
  assert.throws(() => gpaToRamOffset(10 * GIB, l), /not guest RAM/);
  assert.throws(() => gpaToRamOffset(256 * 2 ** 20, q35RamLayout(256 * 2 ** 20)), /not guest RAM/);
  // Every RAM byte has exactly one GPA: the mapping is a bijection onto 0..ramBytes.
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 64 }), fc.double({ min: 0, max: 1, noNaN: true }), (quarterGib, frac) => {
      const ram = quarterGib * GIB / 4;
      const layout = q35RamLayout(ram);
      const off = Math.min(ram - 1, Math.floor(frac * ram));
      const gpa = off < layout.lowRamBytes ? off : 4 * GIB + (off - layout.lowRamBytes);
      return gpaToRamOffset(gpa, layout) === off;
    }),
  );
});

test('mix64 is splitmix64 (published first outputs for seed 0)', () => {
  // splitmix64 seeded with 0 yields 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, ... (Vigna's reference).
  assert.equal(mix64(0n), 0xe220a8397b1dcdafn);
  assert.equal(mix64(0x9e3779b97f4a7c15n), 0x6e789e6aa1b965f4n);
  assert.notEqual(digestTerm(1n, 0n), digestTerm(0n, 1n));
});

test('checkUnit accepts exactly what fillUnit writes and rejects any single flipped bit', () => {
  const page = new Uint8Array(8192);
  fillUnit(page, 4096, MEM_MAGIC, 77n, 5n, 0x1234n);
  const c = checkUnit(page, 4096, MEM_MAGIC);
  assert.deepEqual(c, { ok: true, magicOk: true, id: 77n, generation: 5n, tag: 0x1234n });
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 4096 * 8 - 1 }), (bit) => {
      const copy = page.slice();
      copy[4096 + (bit >> 3)]! ^= 1 << (bit & 7);
      return checkUnit(copy, 4096, MEM_MAGIC).ok === false;
    }),
    { numRuns: 300 },
  );
  assert.equal(checkUnit(page, 0, MEM_MAGIC).magicOk, false);
  assert.equal(parseHex64('00000000000000ff'), 255n);
  assert.throws(() => parseHex64('ff'), TypeError);
});

test('workload options are checked with errors naming the option and its range', () => {
  assert.throws(() => checkMemParams({ mib: 0 }), /^RangeError: mib: must be an integer from 1 to 65536/);
  assert.throws(() => checkMemParams({ mib: 4, hotPages: 1025 }), /hotPages: must be an integer from 0 to 1024/);
  assert.throws(() => checkMemParams({ ratePagesPerSec: -1 }), /ratePagesPerSec: must be a number from 0/);
  assert.throws(() => checkMemParams({ zipfS: Number.NaN }), /zipfS/);
  assert.throws(() => checkMemParams({ rate: 5 } as never), /^TypeError: mem workload: unknown option 'rate'/);
  assert.throws(() => checkDiskParams({ offsetBytes: 100 }), /offsetBytes: must be a multiple of 4096/);
  assert.throws(() => checkDiskParams({ mode: 'sync' as never }), /mode: must be one of direct, fsync/);
  assert.throws(() => checkDiskParams({ queueDepth: 0 }), /^RangeError: queueDepth: must be an integer from 1 to 64/);
  assert.throws(() => checkDiskParams({ queueDepth: 65 }), /queueDepth: must be an integer from 1 to 64/);
  assert.throws(() => checkDiskParams({ queueDepth: 8, regionBlocks: 4 }), /queueDepth: must be ≤ regionBlocks \(4\)/);
  assert.throws(() => checkReportSettings({ intervalMs: 5 }), /intervalMs: must be 0 \(off\) or from 10/);
  checkMemParams({ mib: 4, hotPages: 1024, pattern: 'zipf', zipfS: 0, seed: 0, ratePagesPerSec: 0 });
  checkDiskParams({ blockBytes: 8192, offsetBytes: 4096, mode: 'fsync', pattern: 'uniform', queueDepth: 64 });
});

test('LabVm.start refuses bad options before creating anything', async () => {
  await assert.rejects(LabVm.start({ guestMib: 64 }), /^RangeError: guestMib: must be an integer from 96 to 16384/);
  await assert.rejects(LabVm.start({ accel: 'hvf' as never }), /accel: must be tcg or kvm/);
  await assert.rejects(LabVm.start({ disk: { sizeMib: 0 } }), /disk.sizeMib: must be an integer from 1/);
  await assert.rejects(LabVm.start({ disk: { sizeMib: 8, nodeName: 'a,b' } }), /disk.nodeName: must match/);
  await assert.rejects(LabVm.start({ kernelArgs: ['a b'] }), /^TypeError: kernelArgs/);
});

test('LabVm.start with a QEMU that cannot be run rejects with the errno and removes its directory', async () => {
  const parentDir = mkdtempSync(join(tmpdir(), 'dpa-lab-args-'));
  try {
    const guest = { dir: '/nonexistent', kernelPath: '/nonexistent/vmlinuz', initrdPath: '/nonexistent/initrd', manifest: {} as never };
    const t0 = Date.now();
    await assert.rejects(LabVm.start({ guest, qemuBinary: '/nonexistent/qemu-system-x86_64', parentDir, disk: null }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT' && typeof e.errno === 'number' && /spawn/.test(e.syscall ?? ''));
    assert.ok(Date.now() - t0 < 2000, 'fails at once, not after the start timeout');
    assert.deepEqual(readdirSync(parentDir), []);
  } finally {
    rmSync(parentDir, { recursive: true, force: true });
  }
});

test('GPA runs expand in both directions', () => {
  const gpas = expandGpaRuns({ pageBytes: 4096, pages: 5, tag: '0'.repeat(16), unmappedPages: 0, runs: [[0, 0x10000, 2, 1], [2, 0x20000, 3, -1]] });
  assert.deepEqual([...gpas], [0x10000, 0x11000, 0x20000, 0x1f000, 0x1e000]);
});
