import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import * as nat from '../../src/bitmap/index';
import * as ref from '../../src/bitmap/reference';
import type { AnalyzerOptions, DirtyAnalyzer } from '../../src/bitmap/types';
import { mulberry32 } from '../../src/util/random';

// Every native result is compared with the TypeScript reference, under both SIMD levels
// (switched at run time; the DPA_SIMD variable is checked in a child process below).
const LEVELS: ('avx2' | 'scalar')[] = nat.cpuHasAvx2() ? ['avx2', 'scalar'] : ['scalar'];

function withLevel<T>(level: 'avx2' | 'scalar', fn: () => T): T {
  nat.setSimdLevel(level);
  try {
    return fn();
  } finally {
    nat.setSimdLevel('auto');
  }
}

type Shape = 'random' | 'sparse' | 'clustered' | 'full' | 'empty';
interface BitmapSpec {
  pages: number;
  shape: Shape;
  seed: number;
  /** Byte offset of the view inside its ArrayBuffer (unaligned words). */
  offset: number;
  /** Garbage bytes after ceil(pages / 8). */
  extraBytes: number;
}

function setBit(b: Uint8Array, p: number): void {
  b[p >> 3]! |= 1 << (p & 7);
}

/** A bitmap view at an odd offset, with garbage in the unused bits of its last byte and after it. */
function makeBitmap(spec: BitmapSpec): Uint8Array {
  const { pages, shape, offset, extraBytes } = spec;
  const rand = mulberry32(spec.seed);
  const bytes = Math.ceil(pages / 8);
  const backing = new Uint8Array(offset + bytes + extraBytes);
  for (let i = 0; i < backing.length; i++) backing[i] = (rand() * 256) | 0;
  const view = backing.subarray(offset);
  view.fill(0, 0, bytes);
  switch (shape) {
    case 'random':
      for (let i = 0; i < bytes; i++) view[i] = (rand() * 256) | 0;
      break;
    case 'sparse':
      for (let k = 0; k < pages / 50 + 1; k++) setBit(view, Math.floor(rand() * pages));
      break;
    case 'clustered':
      for (let k = 0; k < pages / 300 + 2; k++) {
        const start = Math.floor(rand() * pages);
        const length = 1 + Math.floor(rand() * (rand() < 0.25 ? 900 : 70));
        for (let p = start; p < Math.min(pages, start + length); p++) setBit(view, p);
      }
      break;
    case 'full':
      view.fill(0xff, 0, bytes);
      break;
    case 'empty':
      break;
  }
  if (pages % 8) view[bytes - 1]! |= (0xff << pages % 8) & 0xff & ((rand() * 256) | 1);
  return view;
}

const pagesArb = fc.oneof(
  fc.constantFrom(1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 511, 512, 513, 1000, 4095, 4097, 20001),
  fc.integer({ min: 0, max: 6000 }),
);
const shapeArb = fc.constantFrom<Shape>('random', 'sparse', 'clustered', 'clustered', 'full', 'empty');
const specArb = (pages: fc.Arbitrary<number>): fc.Arbitrary<BitmapSpec> =>
  fc.record({
    pages,
    shape: shapeArb,
    seed: fc.integer({ min: 0, max: 0x7fffffff }),
    offset: fc.integer({ min: 0, max: 7 }),
    extraBytes: fc.integer({ min: 0, max: 9 }),
  });

function copyOf(view: Uint8Array): Uint8Array {
  const backing = new Uint8Array(view.byteOffset + view.length);
  const out = backing.subarray(view.byteOffset);
  out.set(view);
  return out;
}

function checkKernels(a: Uint8Array, b: Uint8Array, pages: number): void {
  const expectCount = ref.count(a, pages);
  for (const level of LEVELS) {
    withLevel(level, () => {
      const where = `level ${level}, pages ${pages}`;
      assert.equal(nat.count(a, pages), expectCount, where);

      const dn = copyOf(a);
      const dr = copyOf(a);
      assert.equal(nat.orInto(dn, b, pages), ref.orInto(dr, b, pages), where);
      assert.deepEqual(dn, dr, `orInto bytes, ${where}`); // includes the untouched bits/bytes beyond pages
      assert.deepEqual(dn.subarray(Math.ceil(pages / 8)), a.subarray(Math.ceil(pages / 8)));

      const on = copyOf(b);
      const or = copyOf(b);
      assert.equal(nat.andNot(on, a, b, pages), ref.andNot(or, a, b, pages), where);
      assert.deepEqual(on, or, `andNot bytes, ${where}`);
      const inPlace = copyOf(a);
      assert.equal(nat.andNot(inPlace, inPlace, b, pages), ref.andNot(copyOf(a), a, b, pages), where);

      for (const regionPages of [512, 2048, 262144]) {
        const regions = Math.ceil(pages / regionPages);
        const hn = new Uint32Array(regions + 1).fill(7);
        const hr = new Uint32Array(regions + 1).fill(7);
        assert.equal(nat.regionHistogram(a, pages, regionPages, hn), regions);
        ref.regionHistogram(a, pages, regionPages, hr);
        assert.deepEqual(hn, hr, `regionHistogram ${regionPages}, ${where}`);
        assert.equal(hn[regions], 7, 'nothing written past the last region');
      }

      const all = new Uint32Array(2 * (pages + 1));
      const total = ref.extents(a, pages, all, pages + 1).total;
      for (const cap of [total, Math.floor(total / 2), 0]) {
        const en = new Uint32Array(2 * cap + 2).fill(0xeeee);
        const er = new Uint32Array(2 * cap + 2).fill(0xeeee);
        assert.deepEqual(nat.extents(a, pages, en, cap), { returned: cap, total });
        assert.deepEqual(ref.extents(a, pages, er, cap), { returned: cap, total });
        assert.deepEqual(en, er, `extents cap ${cap}, ${where}`);
      }
    });
  }
}

test('kernels: native (avx2 and scalar) equal the reference on random, sparse, clustered bitmaps with odd sizes and garbage tails', () => {
  fc.assert(
    fc.property(pagesArb.chain((pages) => fc.tuple(specArb(fc.constant(pages)), specArb(fc.constant(pages)))), ([sa, sb]) => {
      checkKernels(makeBitmap(sa), makeBitmap(sb), sa.pages);
    }),
    { numRuns: 150 },
  );
});

test('kernels: 1000003 pages, clustered, unaligned, agree between native and reference', () => {
  const a = makeBitmap({ pages: 1000003, shape: 'clustered', seed: 5, offset: 3, extraBytes: 1 });
  const b = makeBitmap({ pages: 1000003, shape: 'sparse', seed: 6, offset: 5, extraBytes: 0 });
  checkKernels(a, b, 1000003);
});

test('kernels: hand-computed values (a wrong reference fails too)', () => {
  // 74 pages: 0..2, 63..66 (across the first word boundary), 72..73 (the last two), and garbage
  // in bits 74..79 of byte 9 and in byte 10.
  const bits = new Uint8Array([0x07, 0, 0, 0, 0, 0, 0, 0x80, 0x07, 0xff, 0xff]);
  for (const k of [nat.nativeKernels, ref.referenceKernels]) {
    assert.equal(k.count(bits, 74), 9);
    assert.equal(k.count(bits, 64), 4);
    const out = new Uint32Array(6);
    assert.deepEqual(k.extents(bits, 74, out, 3), { returned: 3, total: 3 });
    assert.deepEqual([...out], [0, 3, 63, 4, 72, 2]);
    assert.deepEqual(k.extents(bits, 65, out, 1), { returned: 1, total: 2 });
    assert.deepEqual([...out.subarray(0, 2)], [0, 3]);
    const dst = new Uint8Array([0x01, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00, 0xaa]);
    assert.equal(k.orInto(dst, bits, 74), 10); // page 68 was already set in dst
    assert.equal(dst[9], 0x03, 'bits beyond page 73 of dst keep their value (0)');
    assert.equal(dst[10], 0xaa, 'bytes beyond the bitmap are untouched');
    const fresh = new Uint8Array(11);
    assert.equal(k.andNot(fresh, dst, bits, 74), 1); // only page 68
    assert.equal(fresh[8], 0x10);
    const hist = new Uint32Array(3);
    const full = new Uint8Array(188).fill(0xff); // 1500 pages
    assert.equal(k.regionHistogram(full, 1500, 512, hist), 3);
    assert.deepEqual([...hist], [512, 512, 476]);
  }
});

// ---------------------------------------------------------------------------------------------
// Analyzer
// ---------------------------------------------------------------------------------------------

function snapshot(a: DirtyAnalyzer): unknown {
  const o = a.options;
  const region = new Uint32Array(Math.ceil(o.pages / o.regionPages));
  a.regionHistogram(region);
  const heatF = new Float64Array(o.heatIntervals + 1);
  a.heatHistogram(heatF);
  const heatU = new Uint32Array(o.heatIntervals + 2).fill(99);
  a.heatHistogram(heatU);
  const curve = new Float64Array(o.curveLevels);
  a.dirtyCurve(curve);
  const heat: number[] = [];
  const step = Math.max(1, Math.floor(o.pages / 300));
  for (let p = 0; p < o.pages; p += step) heat.push(a.heat(p));
  heat.push(a.heat(o.pages - 1));
  return { region: [...region], heatF: [...heatF], heatU: [...heatU], curve: [...curve], heat, intervals: a.intervals() };
}

const optionsArb: fc.Arbitrary<AnalyzerOptions> = fc.record({
  pages: fc.oneof(fc.constantFrom(1, 63, 64, 65, 511, 513, 4097), fc.integer({ min: 1, max: 5000 })),
  heatIntervals: fc.oneof(fc.integer({ min: 1, max: 6 }), fc.constant(64)),
  curveLevels: fc.integer({ min: 1, max: 7 }),
  regionPages: fc.constantFrom(512, 1024, 4096),
});

test('Analyzer: native (avx2, scalar, and levels alternating on a two-thread analyzer) equals the reference after every push', () => {
  fc.assert(
    fc.property(
      optionsArb.chain((options) =>
        fc.record({
          options: fc.constant(options),
          steps: fc.array(specArb(fc.constant(options.pages)), { minLength: 1, maxLength: 24 }),
          resetAt: fc.integer({ min: -1, max: 24 }),
        }),
      ),
      ({ options, steps, resetAt }) => {
        const reference = new ref.ReferenceAnalyzer(options);
        const natives = LEVELS.map(() => new nat.Analyzer(options));
        // Mixed levels, and the push split over two threads (forced: the guests here are small).
        const mixed = new nat.Analyzer({ ...options, threads: 2 });
        assert.equal(mixed.threads(), 2);
        try {
          steps.forEach((spec, t) => {
            const bitmap = makeBitmap(spec);
            if (t === resetAt) for (const a of [reference, mixed, ...natives]) a.resetWindow();
            const expected = reference.push(bitmap);
            LEVELS.forEach((level, i) => assert.deepEqual(withLevel(level, () => natives[i]!.push(bitmap)), expected, `push ${t}, ${level}`));
            assert.deepEqual(withLevel(LEVELS[t % LEVELS.length]!, () => mixed.push(bitmap)), expected, `push ${t}, mixed`);
            const want = snapshot(reference);
            for (const a of [...natives, mixed]) assert.deepEqual(snapshot(a), want, `state after push ${t}`);
          });
        } finally {
          for (const a of [reference, mixed, ...natives]) a.close();
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('Analyzer: hand-computed heat, curve, window and regions after a known 5-interval sequence', () => {
  // 70 pages, K = 2, L = 3 (windows 1, 2, 4 intervals), regions of 512 (one region):
  //   t1 {0,1,2}   t2 {1,2,69}   t3 {}   t4 {2,3}   t5 {2,64}
  const options = { pages: 70, heatIntervals: 2, curveLevels: 3, regionPages: 512 };
  const sets = [[0, 1, 2], [1, 2, 69], [], [2, 3], [2, 64]];
  const makers: [string, () => DirtyAnalyzer][] = [
    ...LEVELS.map((level): [string, () => DirtyAnalyzer] => [level, () => new nat.Analyzer(options)]),
    ['reference', () => new ref.ReferenceAnalyzer(options)],
  ];
  for (const [name, make] of makers) {
    const a = make();
    const level = name === 'reference' ? 'auto' : (name as 'avx2' | 'scalar');
    nat.setSimdLevel(level);
    try {
      const results = sets.map((set) => {
        const b = new Uint8Array(9);
        for (const p of set) setBit(b, p);
        b[8]! |= 0xc0; // pages 70, 71 do not exist
        return a.push(b);
      });
      assert.deepEqual(results[0], { dirtyPages: 3, newlyDirtyInWindow: 3, windowDirtyPages: 3 }, name);
      assert.deepEqual(results[1], { dirtyPages: 3, newlyDirtyInWindow: 1, windowDirtyPages: 4 }, name);
      assert.deepEqual(results[2], { dirtyPages: 0, newlyDirtyInWindow: 0, windowDirtyPages: 4 }, name);
      assert.deepEqual(results[3], { dirtyPages: 2, newlyDirtyInWindow: 1, windowDirtyPages: 5 }, name);
      assert.deepEqual(results[4], { dirtyPages: 2, newlyDirtyInWindow: 1, windowDirtyPages: 6 }, name);
      // Heat over t4, t5.
      assert.deepEqual([a.heat(0), a.heat(1), a.heat(2), a.heat(3), a.heat(64), a.heat(69)], [0, 0, 2, 1, 1, 0], name);
      const hist = new Float64Array(3);
      a.heatHistogram(hist);
      assert.deepEqual([...hist], [67, 2, 1], name);
      // D(1) = |t5| = 2, D(2) = |t4 ∪ t5| = 3, D(4) = |t2 ∪ .. ∪ t5| = |{1,2,3,64,69}| = 5.
      const curve = new Float64Array(3);
      a.dirtyCurve(curve);
      assert.deepEqual([...curve], [2, 3, 5], name);
      const region = new Uint32Array(1);
      a.regionHistogram(region);
      assert.deepEqual([...region], [2], name);
      a.resetWindow();
      const b = new Uint8Array(9);
      setBit(b, 2);
      setBit(b, 3);
      assert.deepEqual(a.push(b), { dirtyPages: 2, newlyDirtyInWindow: 2, windowDirtyPages: 2 }, name);
      // t5, t6: heat of 2 stays 2, 3 is 1, 64 is 1; curve D(1) = 2, D(2) = |{2,64,3}| = 3, D(4) = |t3..t6| = 3.
      a.dirtyCurve(curve);
      assert.deepEqual([...curve], [2, 3, 3], name);
    } finally {
      nat.setSimdLevel('auto');
      a.close();
    }
  }
});

test('Analyzer: dirty curve and window stay right across the 16-bit stamp wrap (page re-dirtied 65539 intervals later)', () => {
  const options = { pages: 64, heatIntervals: 3, curveLevels: 16, regionPages: 512 };
  const reference = new ref.ReferenceAnalyzer(options);
  const native = new nat.Analyzer(options);
  const b = new Uint8Array(8);
  const curveN = new Float64Array(16);
  const curveR = new Float64Array(16);
  try {
    for (let t = 1; t <= 70000; t++) {
      b.fill(0);
      if (t === 5 || t === 5 + 65536 + 3) setBit(b, 0);
      if (t % 7 === 0) setBit(b, 1 + ((t / 7) % 63));
      // The window bit shares the 16-bit stamps: check it across the clamping and the wrap too.
      if (t === 30000 || t === 66000) {
        native.resetWindow();
        reference.resetWindow();
      }
      assert.deepEqual(native.push(b), reference.push(b), `interval ${t}`);
      if (t % 5000 === 0 || (t >= 65540 && t <= 65545)) {
        native.dirtyCurve(curveN);
        reference.dirtyCurve(curveR);
        assert.deepEqual([...curveN], [...curveR], `interval ${t}`);
      }
    }
    native.dirtyCurve(curveN);
    assert.equal(curveN[15], 64, 'every page dirtied within the last 32768 intervals');
  } finally {
    native.close();
    reference.close();
  }
});

test('Analyzer: memory accounting and close()', () => {
  const options = { pages: 262144, heatIntervals: 8, curveLevels: 10, regionPages: 512 };
  const m = nat.Analyzer.memoryFor(options);
  // 1 GiB: 512 KiB of stamps + 512 regions * 4 B + curve 512 * 8 B, plus the ring slots and the
  // pass's prefetch queue (32 KiB whatever the guest size).
  assert.ok(m.fixedBytes >= nat.Analyzer.FIXED_BYTES_PER_GIB + 512 * 4 + 512 * 8, String(m.fixedBytes));
  assert.ok(m.fixedBytes < nat.Analyzer.FIXED_BYTES_PER_GIB + 48 * 1024, String(m.fixedBytes));
  assert.equal(nat.Analyzer.FIXED_BYTES_PER_GIB, 512 * 1024);
  assert.equal(m.ringBytesMax, 8 * 4096 * 12, 'K slots of 12 B per word');
  // A second thread adds its queue, ring slot headers and a curve-delta array.
  const m2 = nat.Analyzer.memoryFor({ ...options, threads: 2 });
  assert.ok(m2.fixedBytes > m.fixedBytes + 512 * 8, String(m2.fixedBytes));
  const a = new nat.Analyzer(options);
  assert.equal(a.memoryBytes(), m.fixedBytes);
  const b = makeBitmap({ pages: 262144, shape: 'clustered', seed: 1, offset: 0, extraBytes: 0 });
  a.push(b);
  const traffic = a.lastTraffic();
  assert.ok(a.memoryBytes() >= m.fixedBytes + traffic.nonzeroWords * 12);
  assert.equal(traffic.readBytes, 32768 + traffic.nonzeroWords * 128 + traffic.sweptWords * 128);
  assert.equal(traffic.writeBytes, traffic.nonzeroWords * (128 + 12) + 512 * 4 + traffic.sweptWords * 128);
  a.close();
  a.close();
  assert.throws(() => a.push(b), /Analyzer is closed/);
  assert.throws(() => a.heat(0), /Analyzer is closed/);
});

test('validation: RangeError/TypeError naming the argument, identical for native and reference', () => {
  const cases: [string, (k: typeof nat | typeof ref) => unknown, RegExp][] = [
    ['pages negative', (k) => k.count(new Uint8Array(1), -1), /^RangeError: pages must be an integer from 0 to 4294967295 \(got -1\)/],
    ['pages fraction', (k) => k.count(new Uint8Array(1), 1.5), /pages must be an integer/],
    ['bits too small', (k) => k.count(new Uint8Array(1), 9), /^RangeError: bits is too small: 1 bytes for 9 pages \(needs at least 2\)/],
    ['bits wrong type', (k) => k.count(new Uint16Array(4) as unknown as Uint8Array, 9), /^TypeError: bits must be a Uint8Array/],
    ['dst too small', (k) => k.orInto(new Uint8Array(1), new Uint8Array(2), 16), /dst is too small/],
    ['b too small', (k) => k.andNot(new Uint8Array(2), new Uint8Array(2), new Uint8Array(1), 16), /^RangeError: b is too small/],
    ['partial overlap', (k) => { const x = new Uint8Array(10); return k.andNot(x.subarray(1), x, x, 64); }, /out must be a itself or not overlap it/],
    ['regionPages 768', (k) => k.regionHistogram(new Uint8Array(8), 64, 768, new Uint32Array(1)), /^RangeError: regionPages must be a power of two from 512 \(2 MiB\) to 262144 \(1 GiB\) \(got 768\)/],
    ['regionPages 256', (k) => k.regionHistogram(new Uint8Array(8), 64, 256, new Uint32Array(1)), /regionPages must be a power of two/],
    ['regionPages 2^19', (k) => k.regionHistogram(new Uint8Array(8), 64, 524288, new Uint32Array(1)), /regionPages must be a power of two/],
    ['region out too small', (k) => k.regionHistogram(new Uint8Array(129), 1025, 512, new Uint32Array(2)), /^RangeError: out is too small: 2 entries, needs 3/],
    ['extents out too small', (k) => k.extents(new Uint8Array(8), 64, new Uint32Array(3), 2), /^RangeError: out is too small: 3 entries, needs 4/],
    ['maxExtents negative', (k) => k.extents(new Uint8Array(8), 64, new Uint32Array(3), -1), /maxExtents must be an integer/],
  ];
  const analyzerCases: [string, unknown, RegExp][] = [
    ['K = 0', { pages: 64, heatIntervals: 0, curveLevels: 4, regionPages: 512 }, /^RangeError: heatIntervals must be an integer from 1 to 64 \(got 0\)/],
    ['K = 65', { pages: 64, heatIntervals: 65, curveLevels: 4, regionPages: 512 }, /heatIntervals must be an integer from 1 to 64 \(got 65\)/],
    ['L = 0', { pages: 64, heatIntervals: 4, curveLevels: 0, regionPages: 512 }, /curveLevels must be an integer from 1 to 16/],
    ['L = 17', { pages: 64, heatIntervals: 4, curveLevels: 17, regionPages: 512 }, /curveLevels must be an integer from 1 to 16/],
    ['pages = 0', { pages: 0, heatIntervals: 4, curveLevels: 4, regionPages: 512 }, /pages must be an integer from 1 to 4294967295/],
    ['regionPages 1000', { pages: 64, heatIntervals: 4, curveLevels: 4, regionPages: 1000 }, /regionPages must be a power of two/],
    ['K string', { pages: 64, heatIntervals: '4', curveLevels: 4, regionPages: 512 }, /^TypeError: heatIntervals must be a number/],
    ['threads = 3', { pages: 64, heatIntervals: 4, curveLevels: 4, regionPages: 512, threads: 3 }, /^RangeError: threads must be an integer from 0 to 2 \(got 3\)/],
    ['not an object', null, /^TypeError: analyzer options must be an object/],
  ];
  for (const k of [nat, ref]) {
    for (const [name, fn, re] of cases) assert.throws(() => fn(k), (e: Error) => re.test(`${e.name}: ${e.message}`), name);
  }
  for (const [name, options, re] of analyzerCases) {
    for (const make of [(o: AnalyzerOptions) => new nat.Analyzer(o), (o: AnalyzerOptions) => new ref.ReferenceAnalyzer(o)]) {
      assert.throws(() => make(options as AnalyzerOptions), (e: Error) => re.test(`${e.name}: ${e.message}`), name);
    }
  }
  const options = { pages: 100, heatIntervals: 4, curveLevels: 5, regionPages: 512 };
  for (const a of [new nat.Analyzer(options), new ref.ReferenceAnalyzer(options)]) {
    assert.throws(() => a.push(new Uint8Array(12)), /^RangeError: bitmap is too small: 12 bytes for 100 pages \(needs at least 13\)$/);
    assert.throws(() => a.heat(100), /page must be an integer from 0 to 99 \(got 100\)/);
    assert.throws(() => a.heatHistogram(new Float64Array(4)), /out is too small: 4 entries, needs heatIntervals \+ 1 = 5/);
    assert.throws(() => a.heatHistogram(new Int32Array(5) as unknown as Uint32Array), /^TypeError: out must be a Float64Array or Uint32Array/);
    assert.throws(() => a.dirtyCurve(new Float64Array(4)), /out is too small: 4 entries, needs curveLevels = 5/);
    assert.throws(() => a.regionHistogram(new Uint32Array(0)), /out is too small: 0 entries, needs 1/);
    a.close();
  }
  assert.throws(() => nat.setSimdLevel('sse' as 'avx2'), /SIMD level must be one of avx2, scalar, auto/);
});

test('DPA_SIMD=scalar selects the scalar path at load; a bad value is refused', () => {
  const modulePath = path.join(__dirname, '..', '..', 'src', 'bitmap', 'index.js');
  const script = `const b = require(${JSON.stringify(modulePath)});
    const bits = new Uint8Array([0xff, 0x0f, 0x01]);
    process.stdout.write(JSON.stringify({ level: b.simdLevel(), count: b.count(bits, 20) }));`;
  const run = (value: string): string =>
    execFileSync(process.execPath, ['-e', script], { env: { ...process.env, DPA_SIMD: value }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.deepEqual(JSON.parse(run('scalar')), { level: 'scalar', count: 13 });
  if (nat.cpuHasAvx2()) assert.deepEqual(JSON.parse(run('auto')), { level: 'avx2', count: 13 });
  assert.throws(() => run('fast'), (e: Error & { stderr?: string }) => /DPA_SIMD must be one of avx2, scalar, auto \(got "fast"\)/.test(e.stderr ?? ''));
});
