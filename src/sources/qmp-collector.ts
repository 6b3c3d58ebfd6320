/**
 * The QMP source: polls one QEMU monitor (query-migrate, query-blockstats,
 * query-named-block-nodes, query-block-jobs) at up to 20 Hz and emits a QmpSample per poll with
 * rates derived from QEMU's cumulative counters (src/qmp/telemetry.ts). On request it runs
 * calc-dirty-rate in page-sampling mode.
 *
 * QMP has no dirty bitmap. As a DirtySource it emits an Interval (source 'qmp', no bitmap) for
 * (a) each completed calc-dirty-rate measurement, covering its window, and (b) during a migration,
 * each new dirty-rate figure QEMU publishes (it recomputes it at most once a second). In both
 * cases `dirtyPages` is QEMU's rate × the window length: an estimate, not a count (page-sampling
 * under-reports; see docs/BENCHMARKS.md).
 *
 * Scheduling: ticks on a fixed monotonic grid; polls never overlap. A poll that overruns its tick
 * by less than a period is followed at once by the next (`lateTicks`), so the rate holds; ticks a
 * whole period or more behind are skipped (`missedTicks`) instead of bunching up.
 * The source ends on its own (onEnd) when the monitor connection is lost.
 */
import { EventEmitter } from 'node:events';
import type { QmpClient } from '../qmp/client';
import { calcDirtyRate, MAX_SAMPLE_PAGES_PER_GIB, MIN_SAMPLE_PAGES_PER_GIB, queryBlockJobs, queryBlockstats, queryDirtyRate, queryMigrate, queryNamedBlockNodes } from '../qmp/commands';
import { QmpCommandError, QmpDisconnectedError, QmpError } from '../qmp/errors';
import { derive, type QmpSample, type RawPoll, type TelemetryState } from '../qmp/telemetry';
import type { DirtySource, Interval } from './types';

export type { QmpSample } from '../qmp/telemetry';

/** Fastest poll: 20 Hz. */
export const MIN_QMP_INTERVAL_MS = 50;
export const MAX_QMP_INTERVAL_MS = 60_000;

const PAGE_BYTES = 4096;
const PAGES_PER_MIB = (1024 * 1024) / PAGE_BYTES;

export interface QmpCollectorOptions {
  /** A connected client. The collector listens for its 'disconnect' to end. */
  client: QmpClient;
  /** Poll period, ms (50..60000, i.e. at most 20 Hz; default 100). */
  intervalMs?: number;
  /** Which queries to make each poll (default: all four). */
  queries?: { migrate?: boolean; blockstats?: boolean; nodes?: boolean; jobs?: boolean };
  /** Timeout of each query, ms (1..600000; default max(1000, 5 × intervalMs)). */
  pollTimeoutMs?: number;
  /** Close the client when the collector is closed (default false). */
  ownsClient?: boolean;
}

/** A completed calc-dirty-rate measurement. */
export interface DirtyRateSample {
  /** Monotonic times around the measurement window, ms. */
  tStartMs: number;
  tEndMs: number;
  /** QEMU's estimate, MiB/s. */
  dirtyRateMiBPerSec: number;
  calcTimeS: number;
  samplePagesPerGiB: number;
  mode: string;
}

export interface DirtyRateRequest {
  /** Measurement window, whole seconds (1..60). */
  calcTimeS: number;
  /** Pages sampled per GiB (128..16384; QEMU default 512). */
  samplePagesPerGiB?: number;
  signal?: AbortSignal;
}

export interface QmpCollectorStats {
  samples: number;
  /** Polls started late (the previous poll overran its tick by less than a period). */
  lateTicks: number;
  /** Ticks skipped because polling fell a whole period or more behind. */
  missedTicks: number;
  /** Failed queries (command errors and timeouts), summed over polls. */
  queryErrors: number;
}

function checkInt(name: string, v: number | undefined, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

export class QmpCollector implements DirtySource {
  readonly name = 'qmp';
  readonly intervalMs: number;
  readonly stats: QmpCollectorStats = { samples: 0, lateTicks: 0, missedTicks: 0, queryErrors: 0 };

  private readonly client: QmpClient;
  private readonly queries: Required<NonNullable<QmpCollectorOptions['queries']>>;
  private readonly pollTimeoutMs: number;
  private readonly ownsClient: boolean;
  private readonly emitter = new EventEmitter();
  private state: TelemetryState | undefined;
  private closed = false;
  private ended = false;
  private wake: (() => void) | undefined;
  private loopDone: Promise<void> = Promise.resolve();
  private intervalSeq = 0;
  private measuring = false;
  private lastMigrationInterval: { tMs: number; syncCount: number; rate: number } | undefined;
  private guestPages: number | undefined;
  private readonly onDisconnect = (err: QmpDisconnectedError): void => this.end('QMP_DISCONNECTED', err.message);

  constructor(opts: QmpCollectorOptions) {
    if (!opts || typeof opts.client?.execute !== 'function') throw new TypeError('client: must be a connected QmpClient');
    checkInt('intervalMs', opts.intervalMs, MIN_QMP_INTERVAL_MS, MAX_QMP_INTERVAL_MS);
    checkInt('pollTimeoutMs', opts.pollTimeoutMs, 1, 600_000);
    this.client = opts.client;
    this.intervalMs = opts.intervalMs ?? 100;
    const q = opts.queries ?? {};
    this.queries = { migrate: q.migrate ?? true, blockstats: q.blockstats ?? true, nodes: q.nodes ?? true, jobs: q.jobs ?? true };
    this.pollTimeoutMs = opts.pollTimeoutMs ?? Math.max(1000, 5 * this.intervalMs);
    this.ownsClient = opts.ownsClient ?? false;
    // Listeners of a long-lived collector plus a CLI's: more than the default 10 is not a leak.
    this.emitter.setMaxListeners(100);
  }

  /** Starts polling (first poll immediately). */
  start(): this {
    if (this.closed || this.ended) throw new QmpError('collector already closed or ended');
    if (!this.client.connected) {
      // Ending asynchronously keeps the contract: listeners attached after start() still hear it.
      queueMicrotask(() => this.end('QMP_DISCONNECTED', `not connected to ${this.client.socketPath}`));
      return this;
    }
    this.client.on('disconnect', this.onDisconnect);
    this.loopDone = this.loop();
    return this;
  }

  /** Every poll's telemetry. The listener must not throw. */
  onSample(listener: (sample: QmpSample) => void): void {
    this.emitter.on('sample', listener);
  }

  /** Every completed calc-dirty-rate measurement. */
  onDirtyRate(listener: (sample: DirtyRateSample) => void): void {
    this.emitter.on('dirty-rate', listener);
  }

  onInterval(listener: (interval: Interval) => void): void {
    this.emitter.on('interval', listener);
  }

  onEnd(listener: (reason: { code: string; message: string }) => void): void {
    this.emitter.on('end', listener);
  }

  /** True after the source ended on its own. */
  get hasEnded(): boolean {
    return this.ended;
  }

  /**
   * Runs calc-dirty-rate (page-sampling; never dirty-bitmap, which crashes QEMU 7.2 under TCG)
   * and resolves when QEMU has the result, about calcTimeS seconds later. One at a time.
   */
  async measureDirtyRate(req: DirtyRateRequest): Promise<DirtyRateSample> {
    checkInt('calcTimeS', req.calcTimeS, 1, 60);
    checkInt('samplePagesPerGiB', req.samplePagesPerGiB, MIN_SAMPLE_PAGES_PER_GIB, MAX_SAMPLE_PAGES_PER_GIB);
    if (this.closed || this.ended) throw new QmpError('collector closed');
    if (this.measuring) throw new QmpError('a dirty-rate measurement is already running on this collector');
    this.measuring = true;
    try {
      if (this.guestPages === undefined) {
        const mem = await this.client.execute<{ 'base-memory': number; 'plugged-memory'?: number }>('query-memory-size-summary');
        this.guestPages = Math.floor((mem['base-memory'] + (mem['plugged-memory'] ?? 0)) / PAGE_BYTES);
      }
      const tStartMs = performance.now();
      let waitS = req.calcTimeS;
      try {
        await calcDirtyRate(this.client, { calcTimeS: req.calcTimeS, samplePagesPerGiB: req.samplePagesPerGiB, signal: req.signal });
      } catch (err) {
        // Another client (or an earlier run) started one: QEMU allows one at a time, so adopt
        // its result rather than fail; it reports its own calc-time and sample-pages.
        if (!(err instanceof QmpCommandError && /already being measured/.test(err.desc))) throw err;
        waitS = 0;
      }
      await this.sleepFor(waitS * 1000, req.signal);
      const deadline = performance.now() + (waitS === 0 ? 70_000 : 10_000);
      for (;;) {
        const info = await queryDirtyRate(this.client, { signal: req.signal });
        if (info.status === 'measured' && info['dirty-rate'] !== undefined) {
          const tEndMs = performance.now();
          const sample: DirtyRateSample = {
            tStartMs,
            tEndMs,
            dirtyRateMiBPerSec: info['dirty-rate'],
            calcTimeS: info['calc-time'],
            samplePagesPerGiB: info['sample-pages'],
            mode: info.mode,
          };
          this.emitter.emit('dirty-rate', sample);
          this.emitInterval(tEndMs - info['calc-time'] * 1000, tEndMs, this.guestPages, Math.round(info['dirty-rate'] * PAGES_PER_MIB * info['calc-time']));
          return sample;
        }
        if (performance.now() > deadline) throw new QmpError(`calc-dirty-rate: no result in time (status ${info.status})`);
        await this.sleepFor(100, req.signal);
      }
    } finally {
      this.measuring = false;
    }
  }

  /** Stops polling; closes the client if the collector owns it. Emits no 'end'. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    this.client.off('disconnect', this.onDisconnect);
    // Closing an owned client first makes a poll stuck on a hung monitor fail now, not at its timeout.
    if (this.ownsClient) await this.client.close();
    await this.loopDone;
  }

  // -------------------------------------------------------------------------------------------

  private end(code: string, message: string): void {
    if (this.ended || this.closed) return;
    this.ended = true;
    this.wake?.();
    this.client.off('disconnect', this.onDisconnect);
    this.emitter.emit('end', { code, message });
  }

  private sleepFor(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal!.reason);
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Sleeps until `untilMs` (monotonic) or until close()/end wakes it. */
  private sleepUntil(untilMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, Math.max(0, untilMs - performance.now()));
      this.wake = done;
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    });
  }

  private async loop(): Promise<void> {
    let nextMs = performance.now();
    let seq = 0;
    while (!this.closed && !this.ended) {
      const sample = await this.pollOnce(seq);
      if (this.closed || this.ended) break;
      if (sample) {
        seq++;
        this.stats.samples++;
        this.emitter.emit('sample', sample);
        this.migrationInterval(sample);
      }
      nextMs += this.intervalMs;
      const now = performance.now();
      if (now > nextMs) {
        // Less than a period late: poll at once and keep the grid (the rate holds). A whole
        // period or more: skip those ticks rather than fire a burst of back-to-back polls.
        this.stats.lateTicks++;
        const behind = Math.floor((now - nextMs) / this.intervalMs);
        if (behind > 0) {
          this.stats.missedTicks += behind;
          nextMs += behind * this.intervalMs;
        }
      }
      await this.sleepUntil(nextMs);
    }
  }

  private async pollOnce(seq: number): Promise<QmpSample | undefined> {
    const opts = { timeoutMs: this.pollTimeoutMs };
    const c = this.client;
    const names: string[] = [];
    const calls: Promise<unknown>[] = [];
    const add = (name: string, p: () => Promise<unknown>): void => {
      names.push(name);
      calls.push(p());
    };
    // Sent back to back without waiting: QEMU answers in order, one round trip per poll.
    const t0 = performance.now();
    if (this.queries.migrate) add('query-migrate', () => queryMigrate(c, opts));
    if (this.queries.blockstats) add('query-blockstats', () => queryBlockstats(c, {}, opts));
    if (this.queries.nodes) add('query-named-block-nodes', () => queryNamedBlockNodes(c, opts));
    if (this.queries.jobs) add('query-block-jobs', () => queryBlockJobs(c, opts));
    const results = await Promise.allSettled(calls);
    const tMs = performance.now();
    const raw: RawPoll = { tMs };
    const errors: QmpSample['errors'] = [];
    results.forEach((r, i) => {
      const name = names[i]!;
      if (r.status === 'rejected') {
        const e = r.reason as Error;
        errors.push({ command: name, errorName: e.name, message: e.message });
        return;
      }
      if (name === 'query-migrate') raw.migrate = r.value as RawPoll['migrate'];
      else if (name === 'query-blockstats') raw.blockstats = r.value as RawPoll['blockstats'];
      else if (name === 'query-named-block-nodes') raw.nodes = r.value as RawPoll['nodes'];
      else raw.jobs = r.value as RawPoll['jobs'];
    });
    if (results.some((r) => r.status === 'rejected' && r.reason instanceof QmpDisconnectedError)) {
      // The 'disconnect' listener ends the source; a partial poll is not worth reporting.
      return undefined;
    }
    this.stats.queryErrors += errors.length;
    const { sample, state } = derive(this.state, raw);
    this.state = state;
    return { ...sample, seq, pollMs: tMs - t0, errors };
  }

  /** During a migration, one Interval per new dirty-rate figure from QEMU (≥ 1 s apart). */
  private migrationInterval(s: QmpSample): void {
    const m = s.migration;
    if (!m || (m.status !== 'active' && m.status !== 'pre-switchover' && m.status !== 'device')) {
      this.lastMigrationInterval = undefined;
      return;
    }
    // QEMU's rate is 0 until the first sync after the bulk pass.
    if (m.dirtySyncCount < 2) return;
    const last = this.lastMigrationInterval;
    if (!last) {
      this.lastMigrationInterval = { tMs: s.tMs, syncCount: m.dirtySyncCount, rate: m.dirtyPagesPerSec };
      return;
    }
    if (m.dirtySyncCount === last.syncCount && m.dirtyPagesPerSec === last.rate) return;
    if (s.tMs - last.tMs < 1000) return;
    const pagesTotal = Math.floor(m.ramTotalBytes / m.pageSizeBytes);
    this.emitInterval(last.tMs, s.tMs, pagesTotal, Math.round((m.dirtyPagesPerSec * (s.tMs - last.tMs)) / 1000));
    this.lastMigrationInterval = { tMs: s.tMs, syncCount: m.dirtySyncCount, rate: m.dirtyPagesPerSec };
  }

  private emitInterval(tStartMs: number, tEndMs: number, pagesTotal: number, dirtyPages: number): void {
    const interval: Interval = {
      source: this.name,
      seq: this.intervalSeq++,
      tStartMs,
      tEndMs,
      pagesTotal,
      dirtyPages: Math.min(pagesTotal, Math.max(0, dirtyPages)),
    };
    this.emitter.emit('interval', interval);
  }
}
