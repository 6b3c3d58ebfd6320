import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { LineSplitter, LineTooLongError } from '../../src/qmp/framing';
import { backoffDelayMs, validateBackoff } from '../../src/qmp/reconnecting';

/** Cuts `bytes` at the given (sorted, deduplicated) offsets. */
function cut(bytes: Buffer, offsets: number[]): Buffer[] {
  const points = [...new Set(offsets.map((o) => o % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of points) {
    out.push(bytes.subarray(prev, p));
    prev = p;
  }
  out.push(bytes.subarray(prev));
  return out;
}

test('any chunking of a stream yields the same lines, multi-byte UTF-8 included', () => {
  fc.assert(
    fc.property(
      fc.array(fc.string({ unit: 'grapheme', maxLength: 40 }).map((s) => s.replace(/\n/g, ' ')), { maxLength: 12 }),
      fc.array(fc.nat(), { maxLength: 20 }),
      (lines, offsets) => {
        const bytes = Buffer.from(lines.map((l) => l + '\n').join(''), 'utf8');
        const splitter = new LineSplitter(4096);
        const got: string[] = [];
        for (const chunk of cut(bytes, offsets)) got.push(...splitter.push(chunk));
        assert.deepEqual(got, lines);
        assert.equal(splitter.bufferedBytes, 0);
      },
    ),
    { numRuns: 300 },
  );
});

test('a line over the cap throws however it is chunked; a line at the cap passes', () => {
  fc.assert(
    fc.property(fc.integer({ min: 256, max: 2000 }), fc.array(fc.nat(), { maxLength: 10 }), (cap, offsets) => {
      const exact = Buffer.from('a'.repeat(cap) + '\n');
      const s1 = new LineSplitter(cap);
      const got: string[] = [];
      for (const c of cut(exact, offsets)) got.push(...s1.push(c));
      assert.deepEqual(got, ['a'.repeat(cap)]);

      const over = Buffer.from('b'.repeat(cap + 1) + '\n');
      const s2 = new LineSplitter(cap);
      assert.throws(() => {
        for (const c of cut(over, offsets)) s2.push(c);
      }, (e: unknown) => e instanceof LineTooLongError && e.maxLineBytes === cap && e.excerpt.startsWith('bbb'));
    }),
    { numRuns: 200 },
  );
});

test('the cap bounds buffering even when no newline ever comes', () => {
  const s = new LineSplitter(1024);
  s.push(Buffer.alloc(1000, 0x41));
  assert.equal(s.bufferedBytes, 1000);
  assert.throws(() => s.push(Buffer.alloc(100, 0x41)), LineTooLongError);
  assert.throws(() => new LineSplitter(10), /maxLineBytes: must be an integer from 256/);
});

test('backoff grows geometrically to the cap, with jitter inside ±jitter', () => {
  const o = { initialDelayMs: 100, maxDelayMs: 3000, factor: 2, jitter: 0 };
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelayMs(a, o)), [100, 200, 400, 800, 1600, 3000, 3000]);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 40 }), fc.double({ min: 0, max: 0.999, noNaN: true }), (attempt, r) => {
      const base = Math.min(3000, 100 * 2 ** (attempt - 1));
      const d = backoffDelayMs(attempt, { ...o, jitter: 0.25 }, () => r);
      assert.ok(d >= Math.floor(base * 0.75) && d <= Math.ceil(base * 1.25), `${attempt}: ${d} vs ${base}`);
    }),
  );
  assert.throws(() => validateBackoff({ jitter: 2 }), /jitter: must be a number from 0 to 1/);
  assert.throws(() => validateBackoff({ initialDelayMs: 500, maxDelayMs: 100 }), /must not exceed maxDelayMs/);
});
