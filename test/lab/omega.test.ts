/**
 * Ω as a real fixed-size filesystem: tmpfs and loop-mounted ext4, filled until the kernel says
 * ENOSPC. Needs root (mount).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, promises as fsp, readFileSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { createTopology, spawnInNs } from '../../src/lab/netns';
import { createOmega, mountPoints, reapStaleOmega, type Omega } from '../../src/lab/omega';
import { needs, rootMissing } from '../helpers/prereq';

const MiB = 1024 * 1024;

function toolsMissing(): string | null {
  const dirs = (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(':').filter(Boolean);
  for (const tool of ['mount', 'umount', 'mkfs.ext4', 'fallocate']) {
    const found = dirs.some((d) => {
      try {
        accessSync(path.join(d, tool), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
    if (!found) return `${tool} not found in PATH (util-linux / e2fsprogs)`;
  }
  return null;
}

function omegaPrereq(): { skip?: string; timeout: number } {
  const root = needs('root', rootMissing());
  return { ...(root.skip ? root : needs('mount tools', toolsMissing())), timeout: 30_000 };
}

async function mountOf(target: string): Promise<{ source: string; fstype: string; options: string } | undefined> {
  return (await mountPoints()).find((m) => m.target === target);
}

/** Writes `chunk`-sized blocks with fs.write until it fails; returns bytes written and the error. */
async function fillUntilError(file: string, chunkBytes: number): Promise<{ written: number; error: NodeJS.ErrnoException }> {
  const fh = await fsp.open(file, 'w', 0o600);
  const buf = Buffer.alloc(chunkBytes, 0xa5);
  let written = 0;
  try {
    for (;;) {
      const { bytesWritten } = await fh.write(buf, 0, buf.length);
      written += bytesWritten;
      if (written > 4 * 1024 * MiB) throw new Error('no ENOSPC after 4 GiB: Ω is not size-limited');
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === undefined) throw err;
    return { written, error: err as NodeJS.ErrnoException };
  } finally {
    await fh.close().catch(() => undefined);
  }
}

async function writeFileSynced(file: string, bytes: number): Promise<void> {
  const fh = await fsp.open(file, 'w', 0o600);
  try {
    await fh.write(Buffer.alloc(bytes, 0x3c));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

test('bad Ω options are refused with the option and its range', async () => {
  await assert.rejects(createOmega({ sizeBytes: 0 }), { name: 'RangeError', message: /sizeBytes: must be an integer from 1048576 to 1099511627776 bytes for kind 'tmpfs' \(got 0\)/ });
  await assert.rejects(createOmega({ sizeBytes: 2 * MiB + 0.5 }), RangeError);
  await assert.rejects(createOmega({ sizeBytes: 2 ** 41 }), RangeError);
  await assert.rejects(createOmega({ sizeBytes: 4 * MiB, kind: 'loop' }), /from 8388608 .* for kind 'loop'/);
  await assert.rejects(createOmega({ sizeBytes: 4 * MiB, kind: 'zfs' as never }), { name: 'TypeError', message: /kind: must be 'tmpfs' or 'loop'/ });
  await assert.rejects(createOmega({ sizeBytes: 4 * MiB, dir: 'relative/dir' }), /dir: must be an absolute directory path/);
  await assert.rejects(createOmega({ sizeBytes: 4 * MiB, dir: '/nonexistent/dpa' }), /dir: \/nonexistent\/dpa is not usable \(ENOENT\)/);
});

test('tmpfs Ω: exact capacity, mode 0700, usedBytes tracks a file, overflow is ENOSPC, destroy unmounts', omegaPrereq(), async () => {
  const omega = await createOmega({ sizeBytes: 8 * MiB });
  let destroyed = false;
  try {
    const m = await mountOf(omega.path);
    assert.equal(m?.fstype, 'tmpfs', `${omega.path} is not a tmpfs mount`);
    assert.match(m.options, /(^|,)size=8192k(,|$)/);
    assert.match(m.options, /(^|,)mode=700(,|$)/);
    assert.equal(statSync(omega.path).mode & 0o777, 0o700);
    assert.equal(path.dirname(omega.path), os.tmpdir());
    assert.equal(await omega.capacityBytes(), 8 * MiB);

    const base = await omega.usedBytes();
    assert.equal(base, 0);
    await writeFileSynced(path.join(omega.path, 'overlay.qcow2'), 3 * MiB);
    assert.equal((await omega.usedBytes()) - base, 3 * MiB);
    assert.equal(await omega.freeBytes(), 5 * MiB);
    await fsp.unlink(path.join(omega.path, 'overlay.qcow2'));
    assert.equal(await omega.usedBytes(), base);

    const { written, error } = await fillUntilError(path.join(omega.path, 'fill'), 64 * 1024);
    assert.equal(error.code, 'ENOSPC', `expected ENOSPC, got ${error.code}: ${error.message}`);
    // It fails at the size, not before: tmpfs counts whole pages, so all 8 MiB are usable.
    assert.equal(written, 8 * MiB);
    assert.equal(await omega.freeBytes(), 0);

    await omega.destroy();
    destroyed = true;
    assert.equal(await mountOf(omega.path), undefined, 'still in /proc/mounts after destroy()');
    assert.equal(existsSync(omega.path), false, 'mount point directory left behind');
    await omega.destroy(); // idempotent
    await assert.rejects(omega.usedBytes(), /was destroyed/);
  } finally {
    if (!destroyed) await omega.destroy();
  }
});

test('loop ext4 Ω: real block filesystem, ENOSPC near its size, destroy detaches the loop device', omegaPrereq(), async () => {
  const sizeBytes = 32 * MiB;
  const omega = await createOmega({ sizeBytes, kind: 'loop' });
  let destroyed = false;
  try {
    const m = await mountOf(omega.path);
    assert.equal(m?.fstype, 'ext4');
    assert.match(m.source, /^\/dev\/loop\d+$/);
    const loopName = path.basename(m.source);
    assert.equal(readFileSync(`/sys/block/${loopName}/loop/backing_file`, 'utf8').trim(), omega.imagePath);
    assert.equal(statSync(omega.path).mode & 0o777, 0o700);
    assert.equal(statSync(omega.imagePath!).mode & 0o777, 0o600);
    // Preallocated: the image already owns its blocks on the filesystem under it.
    assert.ok(statSync(omega.imagePath!).blocks * 512 >= sizeBytes);

    // ext4's fixed overhead (journal, inode tables) is ~20% of a 32 MiB image, ~5% of 1 GiB.
    const capacity = await omega.capacityBytes();
    assert.ok(capacity <= sizeBytes && capacity > sizeBytes * 0.75, `capacity ${capacity}`);
    const freeAtStart = await omega.freeBytes();
    const base = await omega.usedBytes();
    await writeFileSynced(path.join(omega.path, 'overlay.qcow2'), 4 * MiB);
    const delta = (await omega.usedBytes()) - base;
    assert.ok(delta >= 4 * MiB && delta <= 4 * MiB + 256 * 1024, `usedBytes grew by ${delta} for a 4 MiB file`);

    const { written, error } = await fillUntilError(path.join(omega.path, 'fill'), 64 * 1024);
    assert.equal(error.code, 'ENOSPC', `expected ENOSPC, got ${error.code}: ${error.message}`);
    // It fails when the free space is used up (less ext4's delayed-allocation reserve), not before.
    const total = written + 4 * MiB;
    assert.ok(total >= freeAtStart * 0.9 && total <= freeAtStart, `ENOSPC after ${total} bytes with ${freeAtStart} free at start`);

    await omega.destroy();
    destroyed = true;
    assert.equal(await mountOf(omega.path), undefined);
    assert.equal(existsSync(omega.path), false);
    assert.equal(existsSync(omega.imagePath!), false, 'image left behind');
    assert.equal(existsSync(`/sys/block/${loopName}/loop/backing_file`) && readFileSync(`/sys/block/${loopName}/loop/backing_file`, 'utf8').trim() === omega.imagePath, false, 'loop device still attached');
  } finally {
    if (!destroyed) await omega.destroy();
  }
});

test('Ω is visible and writable from a process in a lab namespace', omegaPrereq(), async () => {
  const topo = await createTopology({ linkMbit: 10 });
  let omega: Omega | null = null;
  try {
    // Mounted after the namespace exists, as the orchestrator will do.
    omega = await createOmega({ sizeBytes: 4 * MiB });
    const child = spawnInNs(topo, 'dd', ['if=/dev/zero', `of=${path.join(omega.path, 'from-ns')}`, 'bs=1M', 'count=2'], { stdio: 'ignore' });
    assert.equal(await new Promise((r) => child.once('exit', r)), 0);
    assert.equal(statSync(path.join(omega.path, 'from-ns')).size, 2 * MiB);
    assert.equal(await omega.usedBytes(), 2 * MiB);
  } finally {
    await omega?.destroy();
    await topo.destroy();
  }
});

async function childOmega(mode: 'exit' | 'SIGKILL'): Promise<string> {
  const modulePath = path.resolve(__dirname, '../../src/lab/omega.js');
  const script = `
    require(process.argv[1]).createOmega({ sizeBytes: 2 * 1024 * 1024 }).then((o) => {
      process.stdout.write(o.path + '\\n');
      if (process.argv[2] === 'exit') process.exit(0);
      setInterval(() => {}, 1000);
    });`;
  const child = spawn(process.execPath, ['-e', script, modulePath, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((r) => child.once('exit', r));
  const mountPath = await new Promise<string>((resolve) => createInterface({ input: child.stdout }).once('line', resolve));
  if (mode === 'SIGKILL') child.kill('SIGKILL');
  await exited;
  return mountPath;
}

test('Ω is unmounted at process exit; reapStaleOmega() removes a SIGKILLed run\'s Ω', omegaPrereq(), async () => {
  const clean = await childOmega('exit');
  assert.equal(await mountOf(clean), undefined);
  assert.equal(existsSync(clean), false);

  const live = await createOmega({ sizeBytes: 2 * MiB });
  try {
    const left = await childOmega('SIGKILL');
    assert.equal((await mountOf(left))?.fstype, 'tmpfs', 'SIGKILL cannot be caught: the mount must still be there');
    const report = await reapStaleOmega();
    assert.ok(report.unmounted.includes(left), JSON.stringify(report));
    assert.equal(await mountOf(left), undefined);
    assert.equal(existsSync(left), false);
    assert.equal((await mountOf(live.path))?.fstype, 'tmpfs', 'a live Ω must survive reaping');
  } finally {
    await live.destroy();
  }
});
