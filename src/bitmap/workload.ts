/**
 * A synthetic, realistic dirty-page workload for benchmarks and tests: a set of dirty runs
 * (clustered writes) covering about `dirtyFraction` of the guest, of which `turnover` are
 * replaced by new random runs every interval, so consecutive bitmaps overlap but drift, the way
 * a guest's working set does. Run lengths are log-uniform from 1 to 512 pages (single-page
 * writes up to a whole 2 MiB huge page; mean about 57 pages). Deterministic for a seed.
 */

export interface WorkloadOptions {
  /** Guest pages, 1 .. 2^32-1. */
  pages: number;
  /** Target share of pages dirty per interval, 0 .. 1 (overlapping runs make it a little less). */
  dirtyFraction: number;
  /** Share of runs replaced each interval, 0 .. 1. */
  turnover: number;
  seed: number;
}

const MAX_RUN_LOG2 = 9;

export class ClusteredWorkload {
  private readonly starts: Float64Array;
  private readonly lengths: Uint16Array;
  private state: number;

  constructor(private readonly options: WorkloadOptions) {
    const { pages, dirtyFraction, turnover } = options;
    if (!Number.isInteger(pages) || pages < 1 || pages > 0xffffffff) throw new RangeError(`pages must be an integer from 1 to 4294967295 (got ${pages})`);
    if (!(dirtyFraction >= 0 && dirtyFraction <= 1)) throw new RangeError(`dirtyFraction must be from 0 to 1 (got ${dirtyFraction})`);
    if (!(turnover >= 0 && turnover <= 1)) throw new RangeError(`turnover must be from 0 to 1 (got ${turnover})`);
    this.state = options.seed >>> 0 || 1;
    // Mean of floor(2^(9u)) for u uniform in [0, 1): about 57 pages.
    let meanRun = 0;
    for (let i = 0; i < 4096; i++) meanRun += Math.floor(2 ** ((MAX_RUN_LOG2 * (i + 0.5)) / 4096));
    meanRun /= 4096;
    const runs = Math.round((pages * dirtyFraction) / meanRun);
    this.starts = new Float64Array(runs);
    this.lengths = new Uint16Array(runs);
    for (let i = 0; i < runs; i++) this.replace(i);
  }

  private random(): number {
    // xorshift32: fast and good enough for placing runs.
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state / 4294967296;
  }

  private replace(i: number): void {
    this.lengths[i] = Math.floor(2 ** (MAX_RUN_LOG2 * this.random()));
    this.starts[i] = Math.floor(this.random() * this.options.pages);
  }

  /** Writes the next interval's bitmap into `out` (at least ceil(pages / 8) bytes). */
  next(out: Uint8Array): void {
    const runs = this.starts.length;
    const replaced = Math.round(runs * this.options.turnover);
    for (let k = 0; k < replaced; k++) this.replace(Math.floor(this.random() * runs));
    const pages = this.options.pages;
    out.fill(0, 0, Math.ceil(pages / 8));
    for (let i = 0; i < runs; i++) {
      const start = this.starts[i]!;
      const end = Math.min(pages, start + this.lengths[i]!);
      let p = start;
      for (; p < end && p % 8 !== 0; p++) out[Math.floor(p / 8)]! |= 1 << p % 8;
      const fullEnd = end - (end % 8);
      if (p < fullEnd) {
        out.fill(0xff, p / 8, fullEnd / 8);
        p = fullEnd;
      }
      for (; p < end; p++) out[Math.floor(p / 8)]! |= 1 << p % 8;
    }
  }
}
