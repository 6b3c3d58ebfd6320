/**
 * Turns raw QMP query results taken at known monotonic times into telemetry with rates: QEMU's
 * counters are cumulative (bytes written, bytes transferred, job offset), so a rate is the delta
 * between two polls divided by the monotonic time between them. Pure functions, no I/O.
 *
 * A counter that goes down was reset (a new migration, a re-created device or job, a restarted
 * QEMU): no rate is reported for that step (null, and `counterResets` counts it) instead of a
 * negative or made-up figure.
 */
import type { BlockDeviceInfo, BlockJobInfo, BlockStats, MigrationInfo, MigrationStatus } from './types';

/** Raw results of one poll. A field is absent when that query was not made or failed. */
export interface RawPoll {
  /** Monotonic time (performance.now()) when the last reply arrived, ms. */
  tMs: number;
  migrate?: MigrationInfo;
  blockstats?: BlockStats[];
  nodes?: BlockDeviceInfo[];
  jobs?: BlockJobInfo[];
}

/** Migration state with derived rates. Byte counts are QEMU's cumulative figures. */
export interface MigrationSample {
  status: MigrationStatus;
  /** Guest RAM, bytes (0 before a migration started). */
  ramTotalBytes: number;
  ramTransferredBytes: number;
  ramRemainingBytes: number;
  /** Transfer rate measured from the `ram.transferred` delta, bytes/s (null: first sample or reset). */
  ramTransferBytesPerSec: number | null;
  /** QEMU's own throughput figure for its last period, converted from Mbit/s to bytes/s. */
  qemuThroughputBytesPerSec: number;
  /** QEMU's dirty rate, pages/s (updated at most once a second, 0 during the first pass). */
  dirtyPagesPerSec: number;
  /** Same, bytes/s (× page size). */
  dirtyBytesPerSec: number;
  /** Pre-copy iterations so far (dirty bitmap syncs). */
  dirtySyncCount: number;
  pageSizeBytes: number;
  /** Bytes sent while the guest was stopped (completed migrations). */
  downtimeBytes: number;
  expectedDowntimeMs: number | null;
  /** Actual downtime once completed, ms. */
  downtimeMs: number | null;
  totalTimeMs: number | null;
  setupTimeMs: number | null;
  /** Auto-converge throttle, percent (0 when not throttling). */
  cpuThrottlePercent: number;
  errorDesc: string | null;
}

/** One block device (BlockBackend) with derived I/O rates. */
export interface BlockDeviceSample {
  /** `qdev` if present, else `device`, else `node-name`: the key rates are tracked by. */
  id: string;
  qdev: string | null;
  device: string | null;
  nodeName: string | null;
  rdBytes: number;
  wrBytes: number;
  wrOperations: number;
  /** Highest offset written, bytes. */
  wrHighestOffsetBytes: number;
  rdBytesPerSec: number | null;
  /** Guest write rate, bytes/s. */
  wrBytesPerSec: number | null;
  wrOpsPerSec: number | null;
}

/** One named block node (query-named-block-nodes, flat). */
export interface BlockNodeSample {
  nodeName: string;
  driver: string;
  filename: string;
  /** Host bytes the image occupies (allocated blocks); null when QEMU does not know. */
  actualSizeBytes: number | null;
  virtualSizeBytes: number;
  /** Growth of actualSizeBytes, bytes/s (null: first sample, unknown size, or shrink). */
  actualSizeGrowthBytesPerSec: number | null;
  backingFile: string | null;
  readOnly: boolean;
}

/** One block job (mirror, commit, ...). */
export interface BlockJobSample {
  id: string;
  type: string;
  status: string;
  ready: boolean;
  lenBytes: number;
  offsetBytes: number;
  /** len − offset: bytes the job still has to copy (it can grow as the guest dirties more). */
  remainingBytes: number;
  /** Progress rate from the offset delta, bytes/s. */
  progressBytesPerSec: number | null;
  /** Job rate limit, bytes/s (0 = none). */
  speedLimitBytesPerSec: number;
  error: string | null;
}

/** One poll's telemetry. */
export interface QmpSample {
  /** 0, 1, 2, ... per collector; a gap never happens (missed ticks are counted, not numbered). */
  seq: number;
  /** Monotonic time (performance.now()) of the last reply, ms. */
  tMs: number;
  /** ms since the previous sample (null for the first). */
  dtMs: number | null;
  /** Time from sending the poll's queries to the last reply, ms. */
  pollMs: number;
  migration: MigrationSample | null;
  devices: BlockDeviceSample[] | null;
  nodes: BlockNodeSample[] | null;
  jobs: BlockJobSample[] | null;
  /** Counters seen going down in this sample (their rates are null). */
  counterResets: number;
  /** Queries that failed in this poll (the others still produced data). */
  errors: { command: string; errorName: string; message: string }[];
}

/** A counter's last value and the monotonic time it was read, ms. */
export interface CounterReading {
  v: number;
  tMs: number;
}

/** State carried from one poll to the next. */
export interface TelemetryState {
  tMs: number;
  migrationTransferred: CounterReading | undefined;
  devices: Map<string, { rd: CounterReading; wr: CounterReading; wrOps: CounterReading }>;
  nodes: Map<string, CounterReading>;
  jobs: Map<string, CounterReading>;
}

/**
 * Rate of a cumulative counter, per second: null without a previous value or time step;
 * 'reset' when the counter went down.
 */
export function counterRate(prev: number | undefined, cur: number, dtMs: number | null): number | null | 'reset' {
  if (prev === undefined || dtMs === null || !(dtMs > 0)) return null;
  if (cur < prev) return 'reset';
  return ((cur - prev) * 1000) / dtMs;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

function optNum(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** Key a device is tracked by. */
export function deviceKey(s: BlockStats): string {
  return s.qdev || s.device || s['node-name'] || '';
}

/**
 * Derives a sample from a raw poll and the previous state; returns the sample and the new state.
 * `seq` and `pollMs` are filled by the caller.
 */
export function derive(
  prev: TelemetryState | undefined,
  raw: RawPoll,
): { sample: Omit<QmpSample, 'seq' | 'pollMs' | 'errors'>; state: TelemetryState } {
  const dtMs = prev ? raw.tMs - prev.tMs : null;
  let resets = 0;
  const reading = (v: number): CounterReading => ({ v, tMs: raw.tMs });
  // Each counter's own previous reading: after a failed query its last value is older than prev.tMs.
  const rate = (p: CounterReading | undefined, c: number): number | null => {
    const r = counterRate(p?.v, c, p ? raw.tMs - p.tMs : null);
    if (r === 'reset') {
      resets++;
      return null;
    }
    return r;
  };
  const state: TelemetryState = {
    tMs: raw.tMs,
    // Keep last-known counters of a query that failed this time, so one failed poll costs one rate, not two.
    migrationTransferred: raw.migrate ? undefined : prev?.migrationTransferred,
    devices: raw.blockstats ? new Map() : (prev?.devices ?? new Map()),
    nodes: raw.nodes ? new Map() : (prev?.nodes ?? new Map()),
    jobs: raw.jobs ? new Map() : (prev?.jobs ?? new Map()),
  };

  let migration: MigrationSample | null = null;
  if (raw.migrate) {
    const m = raw.migrate;
    const ram = m.ram;
    const transferred = num(ram?.transferred);
    const pageSize = num(ram?.['page-size']) || 4096;
    state.migrationTransferred = ram ? reading(transferred) : undefined;
    migration = {
      status: m.status ?? 'none',
      ramTotalBytes: num(ram?.total),
      ramTransferredBytes: transferred,
      ramRemainingBytes: num(ram?.remaining),
      ramTransferBytesPerSec: ram ? rate(prev?.migrationTransferred, transferred) : null,
      qemuThroughputBytesPerSec: (num(ram?.mbps) * 1e6) / 8,
      dirtyPagesPerSec: num(ram?.['dirty-pages-rate']),
      dirtyBytesPerSec: num(ram?.['dirty-pages-rate']) * pageSize,
      dirtySyncCount: num(ram?.['dirty-sync-count']),
      pageSizeBytes: pageSize,
      downtimeBytes: num(ram?.['downtime-bytes']),
      expectedDowntimeMs: optNum(m['expected-downtime']),
      downtimeMs: optNum(m.downtime),
      totalTimeMs: optNum(m['total-time']),
      setupTimeMs: optNum(m['setup-time']),
      cpuThrottlePercent: num(m['cpu-throttle-percentage']),
      errorDesc: m['error-desc'] ?? null,
    };
  }

  let devices: BlockDeviceSample[] | null = null;
  if (raw.blockstats) {
    devices = raw.blockstats.map((b) => {
      const id = deviceKey(b);
      const p = prev?.devices.get(id);
      const s = b.stats;
      state.devices.set(id, { rd: reading(num(s.rd_bytes)), wr: reading(num(s.wr_bytes)), wrOps: reading(num(s.wr_operations)) });
      return {
        id,
        qdev: b.qdev ?? null,
        device: b.device || null,
        nodeName: b['node-name'] ?? null,
        rdBytes: num(s.rd_bytes),
        wrBytes: num(s.wr_bytes),
        wrOperations: num(s.wr_operations),
        wrHighestOffsetBytes: num(s.wr_highest_offset),
        rdBytesPerSec: rate(p?.rd, num(s.rd_bytes)),
        wrBytesPerSec: rate(p?.wr, num(s.wr_bytes)),
        wrOpsPerSec: rate(p?.wrOps, num(s.wr_operations)),
      };
    });
  }

  let nodes: BlockNodeSample[] | null = null;
  if (raw.nodes) {
    nodes = raw.nodes
      .filter((n) => n['node-name'])
      .map((n) => {
        const name = n['node-name']!;
        const actual = optNum(n.image?.['actual-size']);
        const p = prev?.nodes.get(name);
        if (actual !== null) state.nodes.set(name, reading(actual));
        // A shrinking image (discard, truncation) is not a counter reset: report no growth rate.
        const growth = actual === null ? null : counterRate(p?.v, actual, p ? raw.tMs - p.tMs : null);
        return {
          nodeName: name,
          driver: n.drv,
          filename: n.file,
          actualSizeBytes: actual,
          virtualSizeBytes: num(n.image?.['virtual-size']),
          actualSizeGrowthBytesPerSec: growth === 'reset' ? null : growth,
          backingFile: n.backing_file ?? null,
          readOnly: n.ro,
        };
      });
  }

  let jobs: BlockJobSample[] | null = null;
  if (raw.jobs) {
    jobs = raw.jobs.map((j) => {
      const key = `${j.type}:${j.device}`;
      const p = prev?.jobs.get(key);
      state.jobs.set(key, reading(num(j.offset)));
      return {
        id: j.device,
        type: j.type,
        status: j.status,
        ready: j.ready,
        lenBytes: num(j.len),
        offsetBytes: num(j.offset),
        remainingBytes: Math.max(0, num(j.len) - num(j.offset)),
        progressBytesPerSec: rate(p, num(j.offset)),
        speedLimitBytesPerSec: num(j.speed),
        error: j.error ?? null,
      };
    });
  }

  return { sample: { tMs: raw.tMs, dtMs, migration, devices, nodes, jobs, counterResets: resets }, state };
}
