/**
 * The base-image copy (phase 'base') between a real sender and the real receiver program over
 * loopback TCP, its failure modes (receiver frozen, receiver killed), and the argument checks of
 * the copy and of LiveMigration (against real QEMU monitors).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { copyBaseImage, spawnBaseReceiver, StallError } from '../../src/migrate/base-copy';
import { LiveMigration, type LiveMigrationOptions } from '../../src/migrate/migration';
import { QmpClient } from '../../src/qmp/client';
import { needs, qemuMissing } from '../helpers/prereq';
import { startQemuFor } from '../helpers/qemu';

const MiB = 1024 * 1024;
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dpa-basecopy-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** An image with random data, all-zero stretches and a tail that is not a whole chunk. */
function makeImage(bytes: number, chunk: number): Buffer {
  const img = randomBytes(bytes);
  // Zero chunks 1, 2 and 5 (whole chunks: what skipZeroes can skip) and a partial one at 7.
  for (const c of [1, 2, 5]) img.fill(0, c * chunk, (c + 1) * chunk);
  img.fill(0, 7 * chunk + 100, 7 * chunk + 200);
  return img;
}

test('copies an image byte for byte over TCP; progress is what the receiver acknowledged; zero chunks can stay holes', async () => {
  const chunk = 256 * 1024;
  const img = makeImage(10 * chunk + 12345, chunk);
  const src = join(dir, 'base.raw');
  await writeFile(src, img);
  for (const skipZeroes of [false, true]) {
    const dst = join(dir, `target-${skipZeroes}.raw`);
    // A target with old, longer content: it must end up exactly the image.
    await writeFile(dst, Buffer.alloc(img.length + 3 * MiB, 0xee));
    const receiver = await spawnBaseReceiver({ host: '127.0.0.1', imagePath: dst });
    const seen: number[] = [];
    const r = await copyBaseImage({ imagePath: src, totalBytes: img.length, host: receiver.host, port: receiver.port, chunkBytes: chunk, skipZeroes, onProgress: (b) => seen.push(b) });
    const done = await receiver.done;
    const expected = createHash('sha256').update(img).digest('hex');
    assert.equal(r.sha256, expected);
    assert.equal(done.sha256, expected);
    assert.equal(r.bytes, img.length);
    assert.equal(r.dataBytes, skipZeroes ? img.length - 3 * chunk : img.length);
    const out = await readFile(dst);
    assert.equal(out.length, img.length);
    assert.ok(out.equals(img), 'target content equals the image');
    // Acknowledgements arrive per frame, in order, ending at the total.
    assert.ok(seen.length >= 8, `${seen.length} progress calls`);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i]! > seen[i - 1]!);
    assert.equal(seen[seen.length - 1], img.length);
    if (skipZeroes) {
      const st = await stat(dst);
      assert.ok(st.blocks * 512 <= img.length - 3 * chunk + 64 * 1024, `skipped chunks stay holes (${st.blocks * 512} bytes allocated)`);
    }
  }
});

test('a frozen receiver (SIGSTOP) fails the copy with StallError after the stall timeout', async () => {
  const src = join(dir, 'big.raw');
  await writeFile(src, randomBytes(64 * MiB));
  const receiver = await spawnBaseReceiver({ host: '127.0.0.1', imagePath: join(dir, 'big-target.raw') });
  const stallTimeoutMs = 600;
  let stoppedAt = 0;
  try {
    const err = await copyBaseImage({
      imagePath: src,
      totalBytes: 64 * MiB,
      host: receiver.host,
      port: receiver.port,
      stallTimeoutMs,
      onProgress: () => {
        if (!stoppedAt) {
          stoppedAt = performance.now();
          process.kill(receiver.pid, 'SIGSTOP');
        }
      },
    }).then(
      () => assert.fail('the copy completed although the receiver was frozen'),
      (e: unknown) => e,
    );
    const elapsed = performance.now() - stoppedAt;
    assert.ok(err instanceof StallError, String(err));
    assert.equal(err.stallMs, stallTimeoutMs);
    assert.ok(elapsed >= stallTimeoutMs && elapsed < stallTimeoutMs + 1500, `failed ${elapsed.toFixed(0)} ms after the freeze`);
  } finally {
    process.kill(receiver.pid, 'SIGCONT');
    await receiver.kill();
  }
  await assert.rejects(receiver.done, /base receiver/);
});

test('a receiver killed mid-copy fails the copy at once with the connection error, not a stall', async () => {
  const src = join(dir, 'big2.raw');
  await writeFile(src, randomBytes(64 * MiB));
  const receiver = await spawnBaseReceiver({ host: '127.0.0.1', imagePath: join(dir, 'big2-target.raw') });
  let killedAt = 0;
  const err = await copyBaseImage({
    imagePath: src,
    totalBytes: 64 * MiB,
    host: receiver.host,
    port: receiver.port,
    stallTimeoutMs: 30_000,
    onProgress: () => {
      if (!killedAt) {
        killedAt = performance.now();
        void receiver.kill();
      }
    },
  }).then(
    () => assert.fail('the copy completed although the receiver died'),
    (e: unknown) => e as Error,
  );
  assert.ok(!(err instanceof StallError));
  assert.match(err.message, /closed|ECONNRESET|EPIPE/);
  assert.ok(performance.now() - killedAt < 5000);
});

test('bad arguments are refused before anything starts', async () => {
  await assert.rejects(copyBaseImage({ imagePath: '/nonexistent', totalBytes: 1, host: '127.0.0.1', port: 0 }), /port: must be an integer from 1 to 65535/);
  await assert.rejects(copyBaseImage({ imagePath: '/nonexistent', totalBytes: 1, host: '127.0.0.1', port: 1, chunkBytes: 100 }), /chunkBytes: must be an integer from 4096 to 16777216/);
  await assert.rejects(copyBaseImage({ imagePath: '/nonexistent', totalBytes: -1, host: '127.0.0.1', port: 1 }), RangeError);
  await assert.rejects(spawnBaseReceiver({ host: '127.0.0.1', imagePath: '/x', idleTimeoutMs: 5 }), /idleTimeoutMs: must be an integer from 100/);
  await assert.rejects(spawnBaseReceiver({ host: '', imagePath: '/x' }), TypeError);
});

test('LiveMigration checks its options (RangeError/TypeError naming the option) before touching QEMU', needs('qemu', qemuMissing()), async (t) => {
  const a = await startQemuFor(t);
  const b = await startQemuFor(t);
  const source = await QmpClient.connect(a.socketPath);
  const target = await QmpClient.connect(b.socketPath);
  t.after(() => Promise.all([source.close(), target.close()]));
  const good: LiveMigrationOptions = { source, target, omegaDir: dir, targetHost: '127.0.0.1', baseCopy: 'skip' };
  const bad: Array<[Partial<LiveMigrationOptions>, RegExp]> = [
    [{ omegaDir: 'relative/dir' }, /omegaDir: must be an absolute directory path/],
    [{ targetHost: 'a b' }, /targetHost: must be a host name or IP address/],
    [{ nbdPort: 0 }, /nbdPort: must be an integer from 1 to 65535/],
    [{ nbdPort: 4444, migrationPort: 4444 }, /nbdPort and migrationPort: must differ/],
    [{ baseCopy: { host: '127.0.0.1', port: 70000 } }, /baseCopy.port: must be an integer from 1 to 65535/],
    [{ id: 'has space' }, /id: must match/],
    [{ nodeName: '1bad' }, /nodeName: must match/],
    [{ maxBandwidthBytesPerSec: 0 }, /maxBandwidthBytesPerSec: must be an integer from 1 to/],
    [{ downtimeLimitMs: 2_000_001 }, /downtimeLimitMs: must be an integer from 1 to 2000000/],
    [{ mirrorBytesPerSec: -1 }, /mirrorBytesPerSec: must be an integer from 0/],
    [{ progressIntervalMs: 5 }, /progressIntervalMs: must be an integer from 20 to 10000/],
    [{ stallTimeoutMs: 50 }, /stallTimeoutMs: must be an integer from 100 to 3600000/],
    [{ target: source }, /source and target: must be two different monitors/],
  ];
  for (const [over, re] of bad) assert.throws(() => new LiveMigration({ ...good, ...over }), re, JSON.stringify(Object.keys(over)));
  // Nothing was sent: both QEMUs are as they were.
  const m = new LiveMigration(good);
  assert.equal(m.overlayNode, 'lxd_root_snapshot');
  assert.equal(m.nbdNode, 'lxd_root_nbd');
  assert.match(m.overlayPath, new RegExp(`^${dir}/dpa-${m.id}-overlay\\.qcow2$`));
  await assert.rejects(m.setMaxBandwidth(0), /bytesPerSec: must be an integer from 1/);
  assert.deepEqual(await source.execute('query-migrate'), {});
  // run() on a target that is not waiting for a migration fails in 'setup' and undoes nothing it did not do.
  const r = await m.run();
  assert.equal(r.phase, 'rolled-back');
  assert.equal(r.failure!.phase, 'setup');
  assert.match(r.failure!.message, /target: run state is '(prelaunch|running|paused)', expected 'inmigrate'/);
  assert.deepEqual(r.rollback!.errors, []);
  await assert.rejects(m.run(), /run\(\) was already called/);
});
