/**
 * Every decision with its inputs: an in-memory ring (tests, live views) and optionally a JSON
 * lines file (mode 0600, appended), one record per tick, so any throttle the governor set can be
 * traced back to the telemetry and the policy output that caused it — and replayed: the record
 * holds the full WorldState the policy saw.
 *
 * The file is written through a stream; if the disk cannot keep up (more than `maxBufferedBytes`
 * waiting) records are dropped and counted rather than letting memory grow or the loop block.
 */
import { closeSync, createWriteStream, fchmodSync, openSync, type WriteStream } from 'node:fs';
import type { Decision, WorldState } from '../policy/types';
import type { GovernorAction, VmInputRecord } from './types';

/** One tick of the governor. */
export interface DecisionRecord {
  /** 0, 1, 2, ... per governor. */
  seq: number;
  /** Wall-clock time, ms since the epoch. */
  atMs: number;
  /** Cost of the pure part of the tick (world + policy + plan), µs. */
  tickUs: number;
  /** What the governor read, per VM in the world. */
  inputs: VmInputRecord[];
  world: WorldState;
  decision: Decision;
  /** Changes planned this tick (applied unless `errors` says otherwise). */
  actions: GovernorAction[];
  /** VMs whose migration ended this tick. */
  ended: string[];
  /** Failures of this tick (telemetry, policy, actions). */
  errors: Array<{ id?: string; stage: string; message: string }>;
}

export interface DecisionLogOptions {
  /** Records kept in memory (0..1 000 000, default 600 = one minute at 10 Hz). */
  ringSize?: number;
  /** JSON lines file, created 0600 if absent (and set to 0600 if present). */
  path?: string;
  /** Bytes buffered for the file before records are dropped (default 8 MiB). */
  maxBufferedBytes?: number;
}

/** Infinity is not JSON: write it as null (a DirtyCurve's unbounded maxPages, for one). */
function replacer(_key: string, value: unknown): unknown {
  return typeof value === 'number' && !Number.isFinite(value) ? null : value;
}

export class DecisionLog {
  private readonly ring: DecisionRecord[] = [];
  private head = 0;
  private readonly ringSize: number;
  private readonly stream: WriteStream | undefined;
  private readonly maxBuffered: number;
  /** Records not written to the file because it could not keep up. */
  dropped = 0;
  /** Records written to the file. */
  written = 0;
  private closed = false;

  constructor(options: DecisionLogOptions = {}) {
    const ringSize = options.ringSize ?? 600;
    if (!Number.isInteger(ringSize) || ringSize < 0 || ringSize > 1_000_000) throw new RangeError(`ringSize: must be an integer from 0 to 1000000 (got ${String(ringSize)})`);
    this.ringSize = ringSize;
    this.maxBuffered = options.maxBufferedBytes ?? 8 * 1024 * 1024;
    if (options.path !== undefined) {
      if (typeof options.path !== 'string' || options.path === '') throw new TypeError('decisionLog: must be a non-empty path');
      // Opened synchronously so a bad path fails the constructor, not a later write.
      const fd = openSync(options.path, 'a', 0o600);
      try {
        fchmodSync(fd, 0o600);
      } catch (err) {
        closeSync(fd);
        throw err;
      }
      this.stream = createWriteStream('', { fd, autoClose: true });
      this.stream.on('error', () => {
        this.dropped++;
      });
    }
  }

  add(record: DecisionRecord): void {
    if (this.ringSize > 0) {
      if (this.ring.length < this.ringSize) this.ring.push(record);
      else {
        this.ring[this.head] = record;
        this.head = (this.head + 1) % this.ringSize;
      }
    }
    if (this.stream && !this.closed) {
      if (this.stream.writableLength > this.maxBuffered) {
        this.dropped++;
        return;
      }
      this.stream.write(JSON.stringify(record, replacer) + '\n');
      this.written++;
    }
  }

  /** The records in memory, oldest first. */
  records(): DecisionRecord[] {
    return this.ring.length < this.ringSize ? [...this.ring] : [...this.ring.slice(this.head), ...this.ring.slice(0, this.head)];
  }

  /** The newest record, if any. */
  last(): DecisionRecord | undefined {
    if (this.ring.length === 0) return undefined;
    return this.ring.length < this.ringSize ? this.ring[this.ring.length - 1] : this.ring[(this.head + this.ringSize - 1) % this.ringSize];
  }

  /** Flushes and closes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const s = this.stream;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.end(() => resolve());
      s.once('error', () => resolve());
    });
  }
}
