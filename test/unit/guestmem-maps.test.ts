/**
 * Pure parts of the guest-memory source: /proc/PID/maps parsing and RAM choice, the sampled
 * estimate's confidence interval, option validation, and the native page hash seen from JS.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native';
import {
  dirtyPagesInterval,
  openGuestMemory,
  parseProcMaps,
  pickRamRegion,
  ramCandidates,
  resolveGuestMemoryOptions,
  type GuestMemoryOptions,
  type MapEntry,
} from '../../src/sources/guest-memory';

const QEMU_MAPS = `55d0c0a00000-55d0c0b2e000 r--p 00000000 fd:01 1311                       /usr/bin/qemu-system-x86_64
55d0c1b2e000-55d0c1ff5000 rw-p 00000000 00:00 0                          [heap]
7f2a40000000-7f2a60000000 rw-s 00000000 00:01 2052                       /memfd:memory-backend-memfd (deleted)
7f2a60000000-7f2a60200000 rw-p 00000000 00:00 0
7f2a70000000-7f2a70040000 rw-s 00000000 00:01 2060                       /memfd:vhost-log (deleted)
7f2a80000000-7f2a80400000 rw-s 00000000 00:01 3001                       /dev/zero (deleted)
7f2a90000000-7f2a90001000 r--p 00000000 fd:01 77                         /usr/lib/x86_64-linux-gnu/a file with spaces.so
7ffc1e3f0000-7ffc1e411000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`;

test('parseProcMaps reads every column, paths with spaces and empty paths', () => {
  const e = parseProcMaps(QEMU_MAPS);
  assert.equal(e.length, 9);
  assert.deepEqual(e[2], {
    start: 0x7f2a40000000n,
    end: 0x7f2a60000000n,
    perms: 'rw-s',
    offset: 0n,
    dev: '00:01',
    inode: 2052,
    path: '/memfd:memory-backend-memfd (deleted)',
  });
  assert.equal(e[3]!.path, '');
  assert.equal(e[6]!.path, '/usr/lib/x86_64-linux-gnu/a file with spaces.so');
  assert.equal(e[8]!.start, 0xffffffffff600000n);
  assert.throws(() => parseProcMaps('not a maps line'), TypeError);
});

test('ramCandidates: shared memfds and anonymous shared maps only, largest first', () => {
  const c = ramCandidates(parseProcMaps(QEMU_MAPS));
  assert.deepEqual(
    c.map((r) => [r.name, r.kind, r.bytes]),
    [
      ['memory-backend-memfd', 'memfd', 512 << 20],
      ['anon@0x7f2a80000000', 'anon-shared', 4 << 20],
      ['vhost-log', 'memfd', 256 << 10],
    ],
  );
});

const line = (start: bigint, bytes: bigint, offset: bigint, inode = 9, path = '/memfd:ram0 (deleted)', perms = 'rw-s'): string =>
  `${start.toString(16)}-${(start + bytes).toString(16)} ${perms} ${offset.toString(16).padStart(8, '0')} 00:01 ${inode} ${path}`;

test('ramCandidates joins split maps: contiguous ones into one segment, others in file-offset order', () => {
  const M = 1n << 20n;
  const maps = parseProcMaps(
    [
      line(0x7f0000300000n, 2n * M, 6n * M), // offsets 6..8 MiB, mapped elsewhere
      line(0x7f0000000000n, 4n * M, 0n), // offsets 0..4 MiB
      line(0x7f0000400000n, 2n * M, 4n * M, 9, '/memfd:ram0 (deleted)', 'r--s'), // 4..6, contiguous, other perms
      line(0x7f0001000000n, 1n * M, 2n * M), // a second mapping of 2..3 MiB: counted once
      line(0x7f0002000000n, 8n * M, 0n, 9, '/memfd:ram0 (deleted)', 'rw-p'), // private: ignored
    ].join('\n'),
  );
  const [r] = ramCandidates(maps);
  assert.deepEqual(r!.segments, [
    { address: 0x7f0000000000n, bytes: 6 << 20 },
    { address: 0x7f0000300000n, bytes: 2 << 20 },
  ]);
  assert.equal(r!.bytes, 8 << 20);
});

test('ramCandidates rebuilds any split of a region: page i of the region sits at its offset', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 12 }), // piece sizes, pages
      fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), // place piece right after the previous?
      fc.array(fc.nat(), { minLength: 12, maxLength: 12 }), // shuffle keys
      (sizes, adjacent, keys) => {
        const pieces: { address: bigint; offsetPages: number; pages: number }[] = [];
        let address = 0x7f0000000000n;
        let offsetPages = 0;
        sizes.forEach((pages, i) => {
          if (i && !adjacent[i]) address += 0x100000000n; // leave a gap
          pieces.push({ address, offsetPages, pages });
          address += BigInt(pages) * 4096n;
          offsetPages += pages;
        });
        const shuffled = pieces.map((p, i) => ({ p, k: keys[i]! })).sort((a, b) => a.k - b.k).map((x) => x.p);
        const maps = parseProcMaps(shuffled.map((p) => line(p.address, BigInt(p.pages) * 4096n, BigInt(p.offsetPages) * 4096n)).join('\n'));
        const [r] = ramCandidates(maps);
        assert.equal(r!.bytes, offsetPages * 4096);
        const pageAddress = (i: number): bigint => {
          for (const s of r!.segments) {
            if (i < s.bytes / 4096) return s.address + BigInt(i) * 4096n;
            i -= s.bytes / 4096;
          }
          throw new Error('past the end');
        };
        for (const p of pieces) {
          assert.equal(pageAddress(p.offsetPages), p.address);
          assert.equal(pageAddress(p.offsetPages + p.pages - 1), p.address + BigInt(p.pages - 1) * 4096n);
        }
        // Contiguous neighbours are merged: one segment per run of adjacent pieces.
        assert.equal(r!.segments.length, 1 + adjacent.slice(1, sizes.length).filter((a) => !a).length);
      },
    ),
  );
});

test('pickRamRegion: by name, QEMU type-named memfds with ramBytes, the largest, and its errors', () => {
  const qemu = parseProcMaps(QEMU_MAPS);
  const one = pickRamRegion(qemu, { ramName: 'ram0' }, 'process 7 (qemu-system-x86)');
  assert.equal(one.matchedBy, 'qemu-memfd');
  assert.equal(one.bytes, 512 << 20);
  assert.equal(pickRamRegion(qemu).matchedBy, 'largest');
  assert.equal(pickRamRegion(qemu, { ramName: 'vhost-log' }).bytes, 256 << 10);

  const M = 1n << 20n;
  const numa = parseProcMaps(
    [
      line(0x7f0000000000n, 32n * M, 0n, 11, '/memfd:memory-backend-memfd (deleted)'),
      line(0x7f1000000000n, 64n * M, 0n, 12, '/memfd:memory-backend-memfd (deleted)'),
    ].join('\n'),
  );
  assert.throws(() => pickRamRegion(numa, { ramName: 'm1' }, 'qemu'), { code: 'DPA_AMBIGUOUS_RAM', message: /ramBytes/ });
  assert.equal(pickRamRegion(numa, { ramName: 'm1', ramBytes: 64 << 20 }, 'qemu').segments[0]!.address, 0x7f1000000000n);
  assert.equal(pickRamRegion(numa, { ramBytes: 32 << 20 }, 'qemu').matchedBy, 'bytes');
  // Largest only when clearly larger: 64 vs 32 MiB is comparable (>= half).
  assert.throws(() => pickRamRegion(numa, {}, 'qemu'), { code: 'DPA_AMBIGUOUS_RAM' });
  assert.throws(() => pickRamRegion(numa, { ramBytes: 48 << 20 }, 'qemu'), { code: 'DPA_NO_RAM_MAPPING' });

  const none: MapEntry[] = parseProcMaps(line(0x7f0000000000n, 4096n, 0n, 1, '/usr/lib/libc.so.6', 'r--p'));
  assert.throws(() => pickRamRegion(none, {}, 'process 9 (qemu-system-x86)'), { code: 'DPA_NO_RAM_MAPPING', message: /memory-backend-memfd/ });
  assert.throws(() => pickRamRegion(none, { ramName: 'ram0' }, 'process 9 (bash)'), { code: 'DPA_NOT_QEMU', message: /not a QEMU process/ });
});

// --- the sampled estimate's interval --------------------------------------------------------

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

/** One stratified sample as native/guestmem/scanner.cc draws it; returns [observed, estimate]. */
function sampleOnce(dirty: Uint8Array, strata: number, perStratum: number, rand: () => number): [number, number] {
  let observed = 0;
  const N = dirty.length;
  let estimate = 0;
  const idx = new Int32Array(strata);
  for (let h = 0; h * strata < N; h++) {
    const Nh = Math.min(strata, N - h * strata);
    const nh = Math.max(1, Math.min(Nh, Math.round((perStratum / strata) * Nh)));
    for (let i = 0; i < Nh; i++) idx[i] = i;
    let y = 0;
    for (let j = 0; j < nh; j++) {
      const k = j + Math.floor(rand() * (Nh - j));
      const picked = idx[k]!;
      idx[k] = idx[j]!;
      idx[j] = picked;
      y += dirty[h * strata + picked]!;
    }
    observed += y;
    estimate += (Nh / nh) * y;
  }
  return [observed, estimate];
}

test('dirtyPagesInterval covers the true count in >= 94% of simulated stratified samples', () => {
  const N = 16384;
  const rand = rng(99);
  for (const [D, clustered] of [[0, false], [3, false], [40, true], [400, false], [400, true], [3000, false], [9000, true], [16000, false]] as const) {
    let covered = 0;
    const trials = 400;
    for (let t = 0; t < trials; t++) {
      const dirty = new Uint8Array(N);
      if (clustered) {
        const start = Math.floor(rand() * (N - D));
        dirty.fill(1, start, start + D);
      } else {
        let placed = 0;
        while (placed < D) {
          const p = Math.floor(rand() * N);
          if (!dirty[p]) (dirty[p] = 1), placed++;
        }
      }
      const [observed, estimate] = sampleOnce(dirty, 512, 51, rand);
      const { low, high } = dirtyPagesInterval(N, 32 * 51, estimate, observed);
      assert.ok(low <= estimate + 1e-9 && estimate <= high + 1e-9);
      if (low <= D && D <= high) covered++;
    }
    assert.ok(covered / trials >= 0.94, `D=${D}${clustered ? ' clustered' : ''}: coverage ${covered}/${trials}`);
  }
});

test('dirtyPagesInterval: exact with the whole region, never below what was seen, finite when nothing was seen', () => {
  assert.deepEqual(dirtyPagesInterval(1000, 1000, 37, 37), { low: 37, high: 37 });
  const none = dirtyPagesInterval(16384, 1632, 0, 0);
  assert.equal(none.low, 0);
  assert.ok(none.high > 10 && none.high < 100, `upper bound with an empty sample: ${none.high}`);
  const some = dirtyPagesInterval(16384, 1632, 10 * 10.04, 10);
  assert.ok(some.low >= 10);
  assert.ok(some.high <= 16384 - (1632 - 10));
  // The width shrinks as the sample grows.
  const w = (n: number): number => {
    const r = dirtyPagesInterval(16384, n, 1000, (1000 * n) / 16384);
    return r.high - r.low;
  };
  assert.ok(w(8192) < w(1632) && w(1632) < w(400));
});

// --- validation ----------------------------------------------------------------------------

test('options are validated in TypeScript with the option name and its range', () => {
  const bad: [Partial<GuestMemoryOptions> & Record<string, unknown>, RegExp, typeof RangeError | typeof TypeError][] = [
    [{ pid: 0 }, /^pid: must be an integer from 1 to 4194304 \(got 0\)/, RangeError],
    [{ pid: -5 }, /^pid: /, RangeError],
    [{ pid: 1.5 }, /^pid: /, RangeError],
    [{ pid: '12' as unknown as number }, /^pid: must be an integer/, TypeError],
    [{ pid: 1, intervalMs: 9 }, /^intervalMs: must be an integer from 10 to 10000 ms \(got 9\)/, RangeError],
    [{ pid: 1, intervalMs: 10001 }, /^intervalMs: /, RangeError],
    [{ pid: 1, mode: 'sampled', sampleFraction: 0 }, /^sampleFraction: must be a number with 0 < f <= 1 \(got 0\)/, RangeError],
    [{ pid: 1, mode: 'sampled', sampleFraction: 1.01 }, /^sampleFraction: /, RangeError],
    [{ pid: 1, mode: 'sampled', sampleFraction: NaN }, /^sampleFraction: /, RangeError],
    [{ pid: 1, sampleFraction: 0.5 }, /^sampleFraction: only applies to mode 'sampled'/, RangeError],
    [{ pid: 1, mode: 'fast' as 'exact' }, /^mode: /, RangeError],
    [{ pid: 1, chunkBytes: 65535 }, /^chunkBytes: must be an integer from 65536 to 67108864 bytes/, RangeError],
    [{ pid: 1, chunkBytes: 65536 + 512 }, /^chunkBytes: must be a multiple of 4096/, RangeError],
    [{ pid: 1, chunkBytes: 128 << 20 }, /^chunkBytes: /, RangeError],
    [{ pid: 1, strataPages: 63 }, /^strataPages: must be an integer from 64 to 65536 pages/, RangeError],
    [{ pid: 1, resampleEvery: 0 }, /^resampleEvery: /, RangeError],
    [{ pid: 1, poolSize: 65 }, /^poolSize: /, RangeError],
    [{ pid: 1, maxInFlight: 0 }, /^maxInFlight: /, RangeError],
    [{ pid: 1, ramName: 'a b' }, /^ramName: /, TypeError],
    [{ pid: 1, ramBytes: 1000 }, /^ramBytes: /, RangeError],
    [{ pid: 1, ramName: 'ram0', segments: [{ address: 4096n, bytes: 4096 }] }, /^segments: give either/, TypeError],
    [{ pid: 1, segments: [] }, /^segments: /, RangeError],
    [{ pid: 1, segments: [{ address: 4097n, bytes: 4096 }] }, /^segments\[0\]\.address: /, RangeError],
    [{ pid: 1, segments: [{ address: 4096n, bytes: 100 }] }, /^segments\[0\]\.bytes: /, RangeError],
    [{ pid: 1, seed: -1n }, /^seed: /, RangeError],
    [{ pid: 1, hash: 'sse' as 'auto' }, /^hash: /, RangeError],
    [{ pid: 1, bitmapPool: [new Uint16Array(8) as unknown as Uint8Array] }, /^bitmapPool\[0\]: must be a Uint8Array/, TypeError],
  ];
  for (const [opts, message, type] of bad) {
    assert.throws(() => resolveGuestMemoryOptions(opts as GuestMemoryOptions), (e: Error) => {
      assert.ok(e instanceof type, `${JSON.stringify(opts, (_, v) => (typeof v === 'bigint' ? String(v) : v))}: ${e.constructor.name} ${e.message}`);
      assert.match(e.message, message);
      return true;
    });
  }
  // openGuestMemory rejects before any native call: a pid of 0 never reaches pidfd_open.
  assert.throws(() => openGuestMemory({ pid: 0 }), RangeError);
  // A pool buffer too small for the region, checked once the region is known.
  assert.throws(
    () => openGuestMemory({ pid: process.pid, segments: [{ address: 4096n * 1000n, bytes: 64 * 4096 * 3 }], bitmapPool: [new Uint8Array(16)] }),
    { name: 'RangeError', message: /bitmapPool\[0\]: must hold at least 24 bytes for 192 pages/ },
  );
  const d = resolveGuestMemoryOptions({ pid: 1 });
  assert.equal(d.intervalMs, 100);
  assert.equal(d.mode, 'exact');
  assert.equal(d.chunkBytes, 1 << 20);
  assert.equal(resolveGuestMemoryOptions({ pid: 1, mode: 'sampled' }).sampleFraction, 0.1);
});

// --- the native page hash ---------------------------------------------------------------------

test('page hash: AVX2 and scalar agree on random pages; the key and every byte matter', () => {
  const avx2 = native.guestmemCpuHasAvx2();
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 4096, maxLength: 4096 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.nat(4095), (page, seed, at) => {
      const a = new BigUint64Array(1);
      const b = new BigUint64Array(1);
      native.guestmemHashPages(page, a, 'scalar', seed);
      if (avx2) {
        native.guestmemHashPages(page, b, 'avx2', seed);
        assert.equal(a[0], b[0]);
      }
      const changed = Uint8Array.from(page);
      changed[at] = changed[at]! ^ 0x10;
      native.guestmemHashPages(changed, b, 'auto', seed);
      assert.notEqual(a[0], b[0]);
      native.guestmemHashPages(page, b, 'auto', seed ^ 1n);
      assert.notEqual(a[0], b[0]);
    }),
    { numRuns: 300 },
  );
  assert.throws(() => native.guestmemHashPages(new Uint8Array(100), new BigUint64Array(1), 'auto', 1n), RangeError);
});
