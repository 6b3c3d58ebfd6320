/**
 * The guest-memory source against real processes: test/helpers/dirtier.c (memfd "guest RAM"
 * whose writes the test chooses) and, where installed, a real QEMU with a memfd backend.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { openGuestMemory, type GuestMemoryEnd, type GuestMemoryInterval } from '../../src/sources/guest-memory';
import { bitsOf, ccMissing, Dirtier } from '../helpers/dirtier';
import { needs, qemuMissing, rootMissing } from '../helpers/prereq';

const PAGE = 4096;
const fdCount = (): number => readdirSync('/proc/self/fd').length;

/** fd number -> what it points to, for this process. */
function fdSnapshot(): Map<string, string> {
  const out = new Map<string, string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      out.set(fd, readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // the fd of the directory listing itself
    }
  }
  return out;
}

/** Fails when an fd open now was not open (to the same thing) in `before`. */
function assertNoNewFds(before: Map<string, string>): void {
  const leaked = [...fdSnapshot()].filter(([fd, link]) => before.get(fd) !== link);
  assert.deepEqual(leaked, [], 'fds opened since the snapshot and still open');
}

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

function randomPages(rand: () => number, pages: number, count: number): number[] {
  const set = new Set<number>();
  while (set.size < count) set.add(Math.floor(rand() * pages));
  return [...set].sort((a, b) => a - b);
}

const cc = needs('cc', ccMissing());

test('exact mode: each bitmap is exactly the set of pages the target changed', cc, async () => {
  const target = await Dirtier.start(['ram0:64']);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true, chunkBytes: 256 * 1024 });
  try {
    const pages = 16384;
    assert.equal(src.pagesTotal, pages);
    assert.equal(src.region.matchedBy, 'name');
    assert.deepEqual(src.region.segments, [{ address: target.regions[0]!.address, bytes: 64 << 20 }]);
    const base = await src.ready;
    assert.equal(base.pagesRead, pages);
    const rand = rng(1234);
    // First/last page, both sides of chunk (64-page) boundaries, and random sets of varied size.
    const sets = [[0, 63, 64, 65, 127, 128, pages - 1], [], randomPages(rand, pages, 1), randomPages(rand, pages, 700), randomPages(rand, pages, 9000)];
    for (const [k, set] of sets.entries()) {
      await target.dirty(set);
      const iv = await src.scanOnce();
      assert.deepEqual(bitsOf(iv.bitmap!, pages), set);
      if (k === 0) {
        // The dpa bitmap format: page p is bit p % 64 of little-endian 64-bit word p / 64.
        const words = new BigUint64Array(iv.bitmap!.buffer, iv.bitmap!.byteOffset, iv.bitmap!.byteLength / 8);
        assert.equal(words.length, 256);
        assert.deepEqual([words[0], words[1], words[2], words[3], words[255]], [1n | (1n << 63n), 1n | 2n | (1n << 63n), 1n, 0n, 1n << 63n]);
      }
      assert.equal(iv.dirtyPages, set.length);
      assert.equal(iv.observedDirtyPages, set.length);
      assert.equal(iv.pagesCompared, pages);
      assert.equal(iv.bytesRead, 64 << 20);
      assert.equal(iv.mode, 'exact');
      assert.ok(iv.tEndMs > iv.tStartMs && iv.tEndMs <= performance.now());
    }
  } finally {
    await src.close();
    await target.stop();
  }
});

test('content-change semantics: storing the bytes a page already holds is not counted', cc, async () => {
  const target = await Dirtier.start(['ram0:16']);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true });
  try {
    await src.ready;
    await target.cmd('same 1 2 3 4 5 100 200');
    await target.dirty([3, 300]);
    const iv = await src.scanOnce();
    assert.deepEqual(bitsOf(iv.bitmap!, src.pagesTotal), [3, 300]);
    await target.cmd('same 3 300');
    assert.equal((await src.scanOnce()).dirtyPages, 0);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('a RAM mapping split into several maps (mprotect) is joined into one region', cc, async () => {
  const target = await Dirtier.start(['ram0:16']);
  await target.cmd('protect 1000 24');
  const maps = readFileSync(`/proc/${target.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes('/memfd:ram0'));
  assert.equal(maps.length, 3);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true });
  try {
    assert.deepEqual(src.region.segments, [{ address: target.regions[0]!.address, bytes: 16 << 20 }]);
    await src.ready;
    await target.dirty([0, 999, 1024, 4095]);
    assert.deepEqual(bitsOf((await src.scanOnce()).bitmap!, 4096), [0, 999, 1024, 4095]);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('explicit segments: two pieces concatenated in the order given', cc, async () => {
  const target = await Dirtier.start(['ram0:4', 'ram1:4']);
  const [r0, r1] = target.regions as [{ address: bigint; bytes: number }, { address: bigint; bytes: number }];
  // Region 1's second half, then region 0's first MiB: page 0 = r1 page 512, page 512 = r0 page 0.
  const src = openGuestMemory({
    pid: target.pid,
    segments: [
      { address: r1.address + 2n * 1048576n, bytes: 2 << 20 },
      { address: r0.address, bytes: 1 << 20 },
    ],
    manual: true,
  });
  try {
    assert.equal(src.pagesTotal, 768);
    assert.equal(src.region.matchedBy, 'explicit');
    await src.ready;
    await target.dirty([0, 5, 255, 256]); // region 0 pages; 256 lies outside the scanned MiB
    assert.deepEqual(bitsOf((await src.scanOnce()).bitmap!, 768), [512, 517, 767]);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('sampled mode: the estimate falls inside its 95% interval in at least 24 of 30 trials', cc, async () => {
  // Each interval claims 95% coverage (simulated >= 95.2%, see guestmem-maps.test.ts). With 30
  // independent trials, P[more than 6 misses | coverage 95%] = 0.06%: the false-failure rate.
  // An estimator biased by a factor 1.5, or an interval half as wide, would miss most trials.
  const target = await Dirtier.start(['ram0:64']);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true, mode: 'sampled', sampleFraction: 0.1 });
  const seed = Date.now() % 1e9;
  const rand = rng(seed);
  const pages = 16384;
  let inside = 0;
  const misses: string[] = [];
  try {
    await src.ready;
    for (let trial = 0; trial < 30; trial++) {
      const count = 50 + Math.floor(rand() * 4000);
      // Half the trials scatter the writes, half write one contiguous run (strata matter there).
      let truth: number[];
      if (trial % 2) truth = randomPages(rand, pages, count);
      else {
        const start = Math.floor(rand() * (pages - count));
        truth = Array.from({ length: count }, (_, i) => start + i);
      }
      await target.dirty(truth);
      const iv = await src.scanOnce();
      assert.equal(iv.mode, 'sampled');
      assert.equal(iv.pagesCompared, 32 * 51); // 32 strata of 512 pages, round(0.1 * 512) each
      const truthSet = new Set(truth);
      for (const p of bitsOf(iv.bitmap!, pages)) assert.ok(truthSet.has(p), `page ${p} flagged but not written`);
      assert.ok(iv.dirtyPagesLow <= iv.dirtyPagesEstimate && iv.dirtyPagesEstimate <= iv.dirtyPagesHigh);
      if (iv.dirtyPagesLow <= count && count <= iv.dirtyPagesHigh) inside++;
      else misses.push(`${count} not in [${iv.dirtyPagesLow.toFixed(0)}, ${iv.dirtyPagesHigh.toFixed(0)}]`);
    }
    assert.ok(inside >= 24, `only ${inside}/30 inside (seed ${seed}): ${misses.join('; ')}`);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('periodic scans: seq has no gaps, intervals tile, overrunning scans are late and skip ticks', cc, async () => {
  const target = await Dirtier.start(['ram0:128']);
  // 128 MiB cannot be read in 10 ms (process_vm_readv copies at well under 13 GB/s).
  const fast = openGuestMemory({ pid: target.pid, ramName: 'ram0', intervalMs: 10, chunkBytes: 64 * 1024 });
  const got: GuestMemoryInterval[] = [];
  try {
    await fast.ready;
    await new Promise<void>((resolve) => {
      fast.onInterval((iv) => {
        got.push({ ...iv, bitmap: undefined });
        if (got.length === 6) resolve();
      });
    });
  } finally {
    await fast.close();
  }
  got.forEach((iv, i) => {
    assert.equal(iv.seq, i);
    if (i) assert.equal(iv.tStartMs, got[i - 1]!.tEndMs);
    assert.ok(iv.late, `interval ${i}: a ${iv.scanUs} us scan with a 10 ms period must be late`);
    assert.ok(iv.skippedTicks >= 1);
    // The next scan starts on the next free tick: intervals are about (1 + skipped) periods long.
    if (i) assert.ok(iv.tEndMs - iv.tStartMs <= (iv.skippedTicks + 2) * 10 + iv.scanUs / 1000 + 50);
  });
  const slow = openGuestMemory({ pid: target.pid, ramName: 'ram0', intervalMs: 400, chunkBytes: 4 << 20 });
  try {
    const iv = await new Promise<GuestMemoryInterval>((resolve) => slow.onInterval((i) => resolve({ ...i, bitmap: undefined })));
    assert.equal(iv.late, false);
    assert.equal(iv.skippedTicks, 0);
    assert.ok(iv.tEndMs - iv.tStartMs > 200 && iv.tEndMs - iv.tStartMs < 2000, `${iv.tEndMs - iv.tStartMs} ms`);
  } finally {
    await slow.close();
    await target.stop();
  }
});

test('the target exits mid-scan: an end event with ESRCH, the thread stops, no fd is leaked', cc, async (t) => {
  const target = await Dirtier.start(['ram0:256']);
  const fdsBefore = fdSnapshot();
  // Back-to-back scans of 256 MiB in 64 KiB chunks: the kill lands inside a scan almost surely.
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', intervalMs: 10, chunkBytes: 64 * 1024 });
  assert.ok(fdCount() >= fdsBefore.size + 3, 'pidfd, pagemap fd and eventfd are open');
  let intervals = 0;
  src.onInterval(() => intervals++);
  const ended = new Promise<GuestMemoryEnd>((resolve) => src.onEnd(resolve));
  await src.ready;
  await new Promise((r) => setTimeout(r, 30));
  target.kill();
  const reason = await ended;
  t.diagnostic(`ended ${reason.duringScan ? 'during a scan' : 'between scans'}: ${reason.syscall}: ${reason.message}`);
  assert.equal(reason.code, 'ESRCH');
  assert.equal(reason.errno, -3);
  assert.equal(typeof reason.syscall, 'string');
  const after = intervals;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(intervals, after, 'no interval after the end event');
  await assert.rejects(src.scanOnce(), { code: 'ESRCH' });
  await src.close();
  await src.close();
  await target.exited;
  assertNoNewFds(fdsBefore);
});

test('the RAM unmapped while the process lives: an end event with EFAULT', cc, async () => {
  const target = await Dirtier.start(['ram0:8']);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true });
  try {
    const ended = new Promise<GuestMemoryEnd>((resolve) => src.onEnd(resolve));
    await src.ready;
    await target.cmd('unmap');
    await assert.rejects(src.scanOnce(), { code: 'EFAULT', syscall: 'process_vm_readv' });
    assert.equal((await ended).duringScan, true);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('pages absent from the target are not read, so scanning does not grow its memory', cc, async () => {
  const target = await Dirtier.start(['ram0:64:sparse']);
  const rss = (): number => Number(/RssShmem:\s+(\d+)/.exec(readFileSync(`/proc/${target.pid}/status`, 'utf8'))![1]);
  await target.dirty([10, 20]);
  const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', manual: true });
  try {
    const base = await src.ready;
    assert.ok(base.pagesRead <= 3, `${base.pagesRead} pages read`); // 10, 20 and the probe of page 0
    assert.ok(rss() < 1024, `target RssShmem ${rss()} kB`);
    await target.cmd('read 30'); // faults a zero page in: not a content change
    await target.dirty([40]);
    const iv = await src.scanOnce();
    assert.deepEqual(bitsOf(iv.bitmap!, src.pagesTotal), [40]);
    assert.ok(iv.pagesAbsent > 16000);
  } finally {
    await src.close();
    await target.stop();
  }
});

test('choosing the RAM: by name, the largest, anonymous shared; errors list the candidates', cc, async () => {
  const t = await Dirtier.start(['ram1:16', 'small:2', 'anon:4']);
  try {
    assert.throws(() => openGuestMemory({ pid: t.pid, ramName: 'ram0' }), (e: Error & { code?: string; candidates?: unknown[] }) => {
      assert.equal(e.code, 'DPA_NOT_QEMU');
      assert.match(e.message, /not a QEMU process and has no memfd named 'ram0'.*ram1 \(16 MiB at 0x/);
      assert.equal(e.candidates!.length, 3);
      return true;
    });
    const auto = openGuestMemory({ pid: t.pid, manual: true });
    assert.equal(auto.region.name, 'ram1');
    assert.equal(auto.region.matchedBy, 'largest');
    await auto.close();
    const bySize = openGuestMemory({ pid: t.pid, ramBytes: 4 << 20, manual: true });
    assert.equal(bySize.region.kind, 'anon-shared');
    await bySize.close();
  } finally {
    await t.stop();
  }
  const two = await Dirtier.start(['ram0:16', 'ram1:12']);
  try {
    assert.throws(() => openGuestMemory({ pid: two.pid }), { code: 'DPA_AMBIGUOUS_RAM', message: /ram0 \(16 MiB.*ram1 \(12 MiB/ });
  } finally {
    await two.stop();
  }
});

test('a process that does not exist: ESRCH with the syscall, by name and by address', () => {
  const pid = 4194303;
  assert.throws(() => openGuestMemory({ pid, ramName: 'ram0' }), { code: 'ESRCH', errno: -3, syscall: 'open' });
  assert.throws(() => openGuestMemory({ pid, segments: [{ address: 0x10000n, bytes: PAGE }] }), {
    code: 'ESRCH',
    errno: -3,
    syscall: 'pidfd_open',
  });
});

test('without ptrace rights (uid nobody vs a root target): EPERM from process_vm_readv, EACCES on maps', needs('root', rootMissing()).skip ? needs('root', rootMissing()) : cc, async () => {
  const target = await Dirtier.start(['ram0:4']);
  try {
    const script = `
      const gm = require(process.argv[1]);
      process.setgid(65534); process.setuid(65534);
      const out = {};
      const tries = { explicit: { pid: +process.argv[2], segments: [{ address: BigInt(process.argv[3]), bytes: 4096 }] },
                      byName: { pid: +process.argv[2], ramName: 'ram0' } };
      for (const [k, o] of Object.entries(tries)) {
        try { gm.openGuestMemory(o).close(); out[k] = 'opened'; }
        catch (e) { out[k] = { code: e.code, errno: e.errno, syscall: e.syscall, message: e.message }; }
      }
      process.stdout.write(JSON.stringify(out));`;
    const mod = join(__dirname, '..', '..', 'src', 'sources', 'guest-memory.js');
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script, mod, String(target.pid), String(target.regions[0]!.address)], { timeout: 20_000 });
    const out = JSON.parse(stdout) as Record<string, { code: string; errno: number; syscall: string; message: string }>;
    assert.equal(out.explicit!.code, 'EPERM');
    assert.equal(out.explicit!.errno, -1);
    assert.equal(out.explicit!.syscall, 'process_vm_readv');
    assert.match(out.explicit!.message, /ptrace rights/);
    assert.equal(out.byName!.code, 'EACCES');
    assert.equal(out.byName!.syscall, 'open');
  } finally {
    await target.stop();
  }
});

test('close(): idempotent, prompt during a baseline scan, ready rejects, all fds released', cc, async () => {
  const target = await Dirtier.start(['ram0:512']);
  try {
    const before = fdSnapshot();
    const src = openGuestMemory({ pid: target.pid, ramName: 'ram0', chunkBytes: 64 * 1024 });
    const t0 = performance.now();
    await src.close();
    assert.ok(performance.now() - t0 < 500, 'the scan is cancelled between chunks');
    await src.close();
    await assert.rejects(src.ready, /closed before the baseline/);
    assertNoNewFds(before);
  } finally {
    await target.stop();
  }
});

test('an open source keeps the process alive only while it runs', cc, async () => {
  const target = await Dirtier.start(['ram0:8']);
  try {
    const mod = join(__dirname, '..', '..', 'src', 'sources', 'guest-memory.js');
    // Closed after the baseline: the child must exit on its own (no handle left behind).
    const script = `const gm = require(process.argv[1]);
      const s = gm.openGuestMemory({ pid: +process.argv[2], ramName: 'ram0', intervalMs: 50 });
      s.ready.then(() => s.close()).then(() => process.stdout.write('closed'));`;
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script, mod, String(target.pid)], { timeout: 15_000 });
    assert.equal(stdout, 'closed');
    // Never closed: the scans keep it alive until the target dies, then it exits by itself.
    const child = spawn(process.execPath, ['-e', `const gm = require(process.argv[1]);
      const s = gm.openGuestMemory({ pid: +process.argv[2], ramName: 'ram0', intervalMs: 50 });
      s.onEnd((r) => process.stdout.write(r.code));`, mod, String(target.pid)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(child.exitCode, null, 'still running while the source runs');
    target.kill();
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000))]);
    if (code === 'timeout') child.kill('SIGKILL');
    assert.equal(code, 0);
    assert.equal(out, 'ESRCH');
  } finally {
    await target.stop();
  }
});

test('the finalizer frees a native scanner that was never closed', cc, async () => {
  const target = await Dirtier.start(['ram0:8']);
  try {
    // Direct native use (no TypeScript wrapper, which closes on end): after the target dies and
    // the scanner is garbage, its pidfd, pagemap fd and eventfd must be gone.
    const script = `
      const { native } = require(process.argv[1]);
      const { readdirSync, readlinkSync } = require('fs');
      const snap = () => new Map(readdirSync('/proc/self/fd').map((fd) => { try { return [fd, readlinkSync('/proc/self/fd/' + fd)]; } catch { return [fd, '']; } }));
      const before = snap();
      const added = () => [...snap()].filter(([fd, l]) => before.get(fd) !== l && /pidfd|eventfd|pagemap/.test(l)).map(([, l]) => l.replace(/[0-9]+/g, 'N')).sort();
      let s = new native.GuestScanner({ pid: +process.argv[2], segments: [{ address: BigInt(process.argv[3]), bytes: 8 << 20 }],
        chunkBytes: 1 << 20, sampled: false, sampleFraction: 1, strataPages: 512, resampleEvery: 8, skipAbsent: true,
        hash: 'auto', seed: 0n, intervalMs: 20, manual: false, maxInFlight: 8, pool: [new Uint8Array(256)] },
        (kind) => { if (kind === 'end') ended(); });
      const open = added();
      process.stdout.write('started\\n');
      function ended() {
        s = null;
        setTimeout(async () => {
          for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setImmediate(r)); }
          process.stdout.write(JSON.stringify({ open, after: added() }));
        }, 50);
      }`;
    const child = spawn(process.execPath, ['--expose-gc', '-e', script, join(__dirname, '..', '..', 'src', 'native.js'), String(target.pid), String(target.regions[0]!.address)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const started = new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.startsWith('started\n')) resolve();
      }),
    );
    const exited = new Promise((r) => child.once('exit', r));
    await Promise.race([started, exited]);
    target.kill();
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    child.kill('SIGKILL');
    const result = JSON.parse(out.replace('started\n', '')) as { open: string[]; after: string[] };
    assert.deepEqual(result.open, ['/proc/N/pagemap', 'anon_inode:[eventfd]', 'anon_inode:[pidfd]']);
    assert.deepEqual(result.after, []);
  } finally {
    await target.stop();
  }
});

test('finds the RAM of a real QEMU (memfd named by type, not id) and reads without populating it', needs('qemu', qemuMissing()), async () => {
  const qemu = spawn(
    'qemu-system-x86_64',
    ['-machine', 'pc', '-accel', 'tcg', '-S', '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none',
      '-object', 'memory-backend-memfd,id=m0,size=32M', '-object', 'memory-backend-memfd,id=m1,size=64M',
      '-numa', 'node,memdev=m0', '-numa', 'node,memdev=m1', '-m', '96M'],
    { stdio: 'ignore' },
  );
  const exited = new Promise((r) => qemu.once('exit', r));
  try {
    const pid = qemu.pid!;
    let maps = '';
    for (let i = 0; i < 100 && (maps.match(/memory-backend-memfd/g) ?? []).length < 2; i++) {
      await new Promise((r) => setTimeout(r, 100));
      maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    }
    assert.throws(() => openGuestMemory({ pid, ramName: 'm1' }), { code: 'DPA_AMBIGUOUS_RAM', message: /ramBytes/ });
    const src = openGuestMemory({ pid, ramName: 'm1', ramBytes: 64 << 20, manual: true });
    try {
      assert.equal(src.region.matchedBy, 'qemu-memfd');
      assert.equal(src.pagesTotal, 16384);
      const rssBefore = Number(/RssShmem:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
      const base = await src.ready;
      const iv = await src.scanOnce();
      const rssAfter = Number(/RssShmem:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
      assert.ok(base.pagesAbsent > 16000, 'a paused guest has not touched its RAM');
      assert.equal(iv.dirtyPages, 0);
      assert.ok(rssAfter - rssBefore < 1024, `QEMU RssShmem grew by ${rssAfter - rssBefore} kB`);
    } finally {
      await src.close();
    }
  } finally {
    qemu.kill('SIGKILL');
    await exited;
  }
});

test('QEMU killed mid-scan: the source ends with an ESRCH end event, no exception, no fd left', needs('qemu', qemuMissing()), async () => {
  // A running (not paused) TCG QEMU whose 256 MiB are read in full on every scan (skipAbsent off),
  // scanning back to back, so the kill lands inside a scan.
  const fdsBefore = fdCount();
  const qemu = spawn(
    'qemu-system-x86_64',
    ['-machine', 'pc', '-accel', 'tcg', '-nodefaults', '-display', 'none', '-serial', 'none', '-monitor', 'none',
      '-object', 'memory-backend-memfd,id=ram0,size=256M', '-machine', 'memory-backend=ram0', '-m', '256M'],
    { stdio: 'ignore' },
  );
  const exited = new Promise((r) => qemu.once('exit', r));
  try {
    const pid = qemu.pid!;
    for (let i = 0; i < 100 && !/memory-backend-memfd/.test(readFileSync(`/proc/${pid}/maps`, 'utf8')); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const src = openGuestMemory({ pid, intervalMs: 10, skipAbsent: false });
    const ended = new Promise<GuestMemoryEnd>((resolve) => src.onEnd(resolve));
    let intervals = 0;
    src.onInterval(() => intervals++);
    await src.ready;
    await new Promise((r) => setTimeout(r, 150));
    qemu.kill('SIGKILL');
    const end = await Promise.race([ended, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no end event within 5 s')), 5000))]);
    assert.equal(end.code, 'ESRCH');
    assert.ok(intervals >= 1, `scanned ${intervals} intervals before the kill`);
    await src.close();
  } finally {
    qemu.kill('SIGKILL');
    await exited;
  }
  assert.equal(fdCount(), fdsBefore, 'every fd released');
});
