/**
 * Argument checks shared by the native-backed kernels and the TypeScript reference, so both
 * reject the same inputs with the same messages, before any native code runs. TypeError for a
 * wrong type, RangeError (naming the argument and the allowed range) for a wrong value.
 */
import type { AnalyzerOptions } from './types';

/** Largest page count: page numbers travel as u32 (extents output). 2^32-1 pages = 16 TiB. */
export const MAX_PAGES = 0xffffffff;
export const MIN_REGION_PAGES = 512;
export const MAX_REGION_PAGES = 262144;
export const MAX_HEAT_INTERVALS = 64;
export const MAX_CURVE_LEVELS = 16;
export const MAX_ANALYZER_THREADS = 2;
const MAX_EXTENTS = 0x7fffffff;

export function bitmapBytes(pages: number): number {
  return Math.ceil(pages / 8);
}

export function regionCount(pages: number, regionPages: number): number {
  return Math.ceil(pages / regionPages);
}

function describe(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  return (value as object).constructor?.name ?? typeof value;
}

export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number') throw new TypeError(`${name} must be a number (got ${describe(value)})`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer from ${min} to ${max} (got ${describe(value)})`);
  }
  return value;
}

export function checkPages(pages: unknown, name = 'pages', min = 0): number {
  return checkInteger(name, pages, min, MAX_PAGES);
}

/** A Uint8Array (Buffer included) holding at least ceil(pages / 8) bytes. */
export function checkBitmap(name: string, bits: unknown, pages: number): Uint8Array {
  if (!(bits instanceof Uint8Array)) throw new TypeError(`${name} must be a Uint8Array (got ${describe(bits)})`);
  const need = bitmapBytes(pages);
  if (bits.byteLength < need) {
    throw new RangeError(`${name} is too small: ${bits.byteLength} bytes for ${pages} pages (needs at least ${need})`);
  }
  return bits;
}

export function checkRegionPages(regionPages: unknown, name = 'regionPages'): number {
  if (typeof regionPages !== 'number') throw new TypeError(`${name} must be a number (got ${describe(regionPages)})`);
  const ok =
    Number.isInteger(regionPages) &&
    regionPages >= MIN_REGION_PAGES &&
    regionPages <= MAX_REGION_PAGES &&
    (regionPages & (regionPages - 1)) === 0;
  if (!ok) {
    throw new RangeError(
      `${name} must be a power of two from ${MIN_REGION_PAGES} (2 MiB) to ${MAX_REGION_PAGES} (1 GiB) (got ${describe(regionPages)})`,
    );
  }
  return regionPages;
}

export function checkUint32Out(name: string, out: unknown, entries: number, what: string): Uint32Array {
  if (!(out instanceof Uint32Array)) throw new TypeError(`${name} must be a Uint32Array (got ${describe(out)})`);
  if (out.length < entries) throw new RangeError(`${name} is too small: ${out.length} entries, needs ${entries} (${what})`);
  return out;
}

export function checkMaxExtents(maxExtents: unknown, out: Uint32Array): number {
  const n = checkInteger('maxExtents', maxExtents, 0, MAX_EXTENTS);
  if (out.length < 2 * n) {
    throw new RangeError(`out is too small: ${out.length} entries, needs ${2 * n} (2 per extent, maxExtents ${n})`);
  }
  return n;
}

/** out may be exactly a or b, but a partial overlap would read words already overwritten. */
export function checkNoPartialOverlap(outName: string, out: Uint8Array, inName: string, input: Uint8Array, bytes: number): void {
  if (out.buffer !== input.buffer || out.byteOffset === input.byteOffset || bytes === 0) return;
  const overlap = out.byteOffset < input.byteOffset + bytes && input.byteOffset < out.byteOffset + bytes;
  if (overlap) throw new RangeError(`${outName} must be ${inName} itself or not overlap it (partial overlap)`);
}

/** Returns a validated copy of the analyzer options. */
export function checkAnalyzerOptions(options: unknown): AnalyzerOptions {
  if (typeof options !== 'object' || options === null) {
    throw new TypeError(`analyzer options must be an object {pages, heatIntervals, curveLevels, regionPages}`);
  }
  const o = options as Record<string, unknown>;
  return {
    pages: checkPages(o.pages, 'pages', 1),
    heatIntervals: checkInteger('heatIntervals', o.heatIntervals, 1, MAX_HEAT_INTERVALS),
    curveLevels: checkInteger('curveLevels', o.curveLevels, 1, MAX_CURVE_LEVELS),
    regionPages: checkRegionPages(o.regionPages),
    threads: o.threads === undefined ? 0 : checkInteger('threads', o.threads, 0, MAX_ANALYZER_THREADS),
  };
}

export function checkHeatHistogramOut(out: unknown, heatIntervals: number): Float64Array | Uint32Array {
  if (!(out instanceof Float64Array) && !(out instanceof Uint32Array)) {
    throw new TypeError(`out must be a Float64Array or Uint32Array (got ${describe(out)})`);
  }
  if (out.length < heatIntervals + 1) {
    throw new RangeError(`out is too small: ${out.length} entries, needs heatIntervals + 1 = ${heatIntervals + 1}`);
  }
  return out;
}

export function checkCurveOut(out: unknown, curveLevels: number): Float64Array {
  if (!(out instanceof Float64Array)) throw new TypeError(`out must be a Float64Array (got ${describe(out)})`);
  if (out.length < curveLevels) throw new RangeError(`out is too small: ${out.length} entries, needs curveLevels = ${curveLevels}`);
  return out;
}
