/**
 * Scenario files (version 1): what the simulator runs. The format is documented in
 * docs/scenario-format.md and docs/scenario.schema.json; this module is the one that decides.
 * A bad file is rejected with a ScenarioError naming the JSON path of the first problem, e.g.
 * `vms[2].diskWrites.points[3][0]: times must increase`.
 */
import { readFileSync } from 'node:fs';

/** A rate that is constant, or piecewise constant from `points` ([tSec, bytesPerSec], tSec from 0, increasing). */
export type RateSpec = { bytesPerSec: number } | { points: Array<[number, number]> };

export interface ScenarioVm {
  id: string;
  /** When its migration starts, seconds from the scenario start. */
  startSec: number;
  diskBytes: number;
  ramBytes: number;
  /** Guest disk writes it asks for; point times are relative to its own start. */
  diskWrites: RateSpec;
  /** RAM dirtying: uniform random page writes over a hot set. */
  ramDirty: { pagesPerSec: number; hotPages: number };
}

export interface Scenario {
  version: 1;
  name: string;
  description?: string;
  omegaBytes: number;
  slaBytesPerSec: number;
  tickMs: number;
  maxSimSeconds: number;
  link: RateSpec;
  staticBinBytes: number;
  vms: ScenarioVm[];
}

/** A scenario that does not validate; `path` is the JSON path of the problem. */
export class ScenarioError extends RangeError {
  override name = 'ScenarioError';
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`${path}: ${problem}`);
  }
}

export const SCENARIO_DEFAULTS = Object.freeze({ slaBytesPerSec: 10_000, tickMs: 100 });
/** Limits that keep a run bounded (a typo of 10^6 VMs should fail, not hang). */
export const SCENARIO_LIMITS = Object.freeze({ maxVms: 4096, maxTicks: 50_000_000, maxPoints: 100_000, maxTickMs: 60_000 });
const PAGE_BYTES = 4096;

type Json = unknown;

function isObject(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(path: string, obj: Record<string, Json>, allowed: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) throw new ScenarioError(path ? `${path}.${key}` : key, `unknown key (allowed: ${allowed.join(', ')})`);
  }
}

function need(path: string, obj: Record<string, Json>, key: string): Json {
  if (!(key in obj)) throw new ScenarioError(path ? `${path}.${key}` : key, 'missing');
  return obj[key];
}

function number(path: string, v: Json, opts: { min?: number; minExclusive?: number; max?: number; integer?: boolean }): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ScenarioError(path, `must be a finite number (got ${JSON.stringify(v)})`);
  if (opts.integer && !Number.isInteger(v)) throw new ScenarioError(path, `must be an integer (got ${v})`);
  if (opts.min !== undefined && v < opts.min) throw new ScenarioError(path, `must be ≥ ${opts.min} (got ${v})`);
  if (opts.minExclusive !== undefined && v <= opts.minExclusive) throw new ScenarioError(path, `must be > ${opts.minExclusive} (got ${v})`);
  if (opts.max !== undefined && v > opts.max) throw new ScenarioError(path, `must be ≤ ${opts.max} (got ${v})`);
  return v;
}

function string(path: string, v: Json): string {
  if (typeof v !== 'string' || v.length === 0) throw new ScenarioError(path, `must be a non-empty string (got ${JSON.stringify(v)})`);
  return v;
}

function rate(path: string, v: Json, opts: { positiveConstant: boolean }): RateSpec {
  if (!isObject(v)) throw new ScenarioError(path, 'must be {bytesPerSec} or {points: [[tSec, bytesPerSec], ...]}');
  if ('bytesPerSec' in v && 'points' in v) throw new ScenarioError(path, 'give either bytesPerSec or points, not both');
  if ('bytesPerSec' in v) {
    checkKeys(path, v, ['bytesPerSec']);
    const b = opts.positiveConstant ? number(`${path}.bytesPerSec`, v.bytesPerSec, { minExclusive: 0 }) : number(`${path}.bytesPerSec`, v.bytesPerSec, { min: 0 });
    return { bytesPerSec: b };
  }
  if (!('points' in v)) throw new ScenarioError(`${path}.bytesPerSec`, 'missing (or give points)');
  checkKeys(path, v, ['points']);
  const pts = v.points;
  if (!Array.isArray(pts) || pts.length === 0) throw new ScenarioError(`${path}.points`, 'must be a non-empty array of [tSec, bytesPerSec]');
  if (pts.length > SCENARIO_LIMITS.maxPoints) throw new ScenarioError(`${path}.points`, `at most ${SCENARIO_LIMITS.maxPoints} points`);
  const out: Array<[number, number]> = [];
  for (let k = 0; k < pts.length; k++) {
    const p = pts[k];
    const pp = `${path}.points[${k}]`;
    if (!Array.isArray(p) || p.length !== 2) throw new ScenarioError(pp, 'must be a pair [tSec, bytesPerSec]');
    const t = number(`${pp}[0]`, p[0], { min: 0 });
    if (k === 0 && t !== 0) throw new ScenarioError(`${pp}[0]`, 'the first point must be at time 0');
    if (k > 0 && t <= out[k - 1]![0]) throw new ScenarioError(`${pp}[0]`, 'times must increase');
    const b = number(`${pp}[1]`, p[1], { min: 0 });
    out.push([t, b]);
  }
  return { points: out };
}

/**
 * Validates a parsed scenario document and fills in defaults. Throws ScenarioError (a
 * RangeError) naming the JSON path of the first problem.
 */
export function parseScenario(doc: Json): Scenario {
  if (!isObject(doc)) throw new ScenarioError('$', 'a scenario must be a JSON object');
  checkKeys('', doc, ['version', 'name', 'description', 'omegaBytes', 'slaBytesPerSec', 'tickMs', 'maxSimSeconds', 'link', 'staticBinBytes', 'vms']);
  const version = need('', doc, 'version');
  if (version !== 1) throw new ScenarioError('version', `unknown version ${JSON.stringify(version)} (this dpa reads version 1)`);
  const name = string('name', need('', doc, 'name'));
  const description = doc.description === undefined ? undefined : string('description', doc.description);
  const omegaBytes = number('omegaBytes', need('', doc, 'omegaBytes'), { minExclusive: 0 });
  const slaBytesPerSec = doc.slaBytesPerSec === undefined ? SCENARIO_DEFAULTS.slaBytesPerSec : number('slaBytesPerSec', doc.slaBytesPerSec, { minExclusive: 0 });
  const tickMs = doc.tickMs === undefined ? SCENARIO_DEFAULTS.tickMs : number('tickMs', doc.tickMs, { min: 1, max: SCENARIO_LIMITS.maxTickMs, integer: true });
  const maxSimSeconds = number('maxSimSeconds', need('', doc, 'maxSimSeconds'), { minExclusive: 0 });
  if (maxSimSeconds / (tickMs / 1000) > SCENARIO_LIMITS.maxTicks) {
    throw new ScenarioError('maxSimSeconds', `maxSimSeconds / tick is over ${SCENARIO_LIMITS.maxTicks} ticks: raise tickMs or shorten the run`);
  }
  const link = rate('link', need('', doc, 'link'), { positiveConstant: true });
  const vmsRaw = need('', doc, 'vms');
  if (!Array.isArray(vmsRaw) || vmsRaw.length === 0) throw new ScenarioError('vms', 'must be a non-empty array');
  if (vmsRaw.length > SCENARIO_LIMITS.maxVms) throw new ScenarioError('vms', `at most ${SCENARIO_LIMITS.maxVms} VMs`);
  const ids = new Set<string>();
  const vms: ScenarioVm[] = vmsRaw.map((v: Json, i: number) => {
    const p = `vms[${i}]`;
    if (!isObject(v)) throw new ScenarioError(p, 'must be an object');
    checkKeys(p, v, ['id', 'startSec', 'diskBytes', 'ramBytes', 'diskWrites', 'ramDirty']);
    const id = string(`${p}.id`, need(p, v, 'id'));
    if (ids.has(id)) throw new ScenarioError(`${p}.id`, `duplicate id '${id}'`);
    ids.add(id);
    const startSec = number(`${p}.startSec`, need(p, v, 'startSec'), { min: 0 });
    const diskBytes = number(`${p}.diskBytes`, need(p, v, 'diskBytes'), { minExclusive: 0 });
    const ramBytes = number(`${p}.ramBytes`, need(p, v, 'ramBytes'), { min: PAGE_BYTES });
    const diskWrites = rate(`${p}.diskWrites`, need(p, v, 'diskWrites'), { positiveConstant: false });
    const rd = need(p, v, 'ramDirty');
    if (!isObject(rd)) throw new ScenarioError(`${p}.ramDirty`, 'must be {pagesPerSec, hotPages}');
    checkKeys(`${p}.ramDirty`, rd, ['pagesPerSec', 'hotPages']);
    const pagesPerSec = number(`${p}.ramDirty.pagesPerSec`, need(`${p}.ramDirty`, rd, 'pagesPerSec'), { min: 0 });
    const ramPages = Math.floor(ramBytes / PAGE_BYTES);
    const hotPages = number(`${p}.ramDirty.hotPages`, need(`${p}.ramDirty`, rd, 'hotPages'), { min: 1, max: ramPages, integer: true });
    return { id, startSec, diskBytes, ramBytes, diskWrites, ramDirty: { pagesPerSec, hotPages } };
  });
  const staticBinBytes = doc.staticBinBytes === undefined ? omegaBytes / vms.length : number('staticBinBytes', doc.staticBinBytes, { minExclusive: 0 });
  return { version: 1, name, ...(description !== undefined ? { description } : {}), omegaBytes, slaBytesPerSec, tickMs, maxSimSeconds, link, staticBinBytes, vms };
}

/** Reads and validates a scenario file; JSON syntax errors are reported as ScenarioError at `$`. */
export function loadScenario(file: string): Scenario {
  const text = readFileSync(file, 'utf8');
  let doc: Json;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ScenarioError('$', `not valid JSON: ${(err as Error).message}`);
  }
  return parseScenario(doc);
}

/**
 * Piecewise-constant lookup with a cursor for monotone time (O(1) amortised per call when
 * called with non-decreasing t, O(log n) otherwise).
 */
export class RateTrack {
  private readonly times: Float64Array;
  private readonly values: Float64Array;
  private cursor = 0;

  constructor(spec: RateSpec) {
    if ('bytesPerSec' in spec) {
      this.times = Float64Array.of(0);
      this.values = Float64Array.of(spec.bytesPerSec);
    } else {
      this.times = Float64Array.from(spec.points.map((p) => p[0]));
      this.values = Float64Array.from(spec.points.map((p) => p[1]));
    }
  }

  /** Bytes/s at time `tSec` (≥ 0; before 0, the first value). */
  at(tSec: number): number {
    const n = this.times.length;
    if (n === 1) return this.values[0]!;
    if (tSec < this.times[this.cursor]!) {
      let lo = 0;
      let hi = this.cursor;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (this.times[mid]! <= tSec) lo = mid;
        else hi = mid;
      }
      this.cursor = lo;
    }
    while (this.cursor + 1 < n && this.times[this.cursor + 1]! <= tSec) this.cursor++;
    return this.values[this.cursor]!;
  }
}
