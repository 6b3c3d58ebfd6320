/**
 * LiveMigration: an LXD-shaped QEMU-to-QEMU live migration with non-shared storage, driven over
 * the two QEMUs' monitors. The sequence is LXD's (canonical/lxd driver_qemu.go; see types.ts for
 * the phases); unlike LXD, dpa drives the migration itself, so on failure it may `migrate_cancel`
 * and must put everything back: the source running on its base image with every write the guest
 * made during the attempt (the overlay is committed back), the overlay gone from Ω.
 *
 * Ownership: the QmpClients are the caller's (one connection per monitor: a QEMU monitor serves
 * one client at a time, so the governor shares `source`). run() never closes them. It quits the
 * source QEMU after a completed migration unless `quitSource: false`, and the target after a
 * failed one unless `quitTargetOnFailure: false` (an incoming QEMU that lost its migration is
 * useless). Only what run() itself created is undone.
 */
import { EventEmitter } from 'node:events';
import { constants as fsConstants } from 'node:fs';
import { access, chmod, stat, unlink } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { QmpClient } from '../qmp/client';
import { QmpDisconnectedError } from '../qmp/errors';
import {
  blockCommit,
  blockdevAdd,
  blockdevDel,
  blockdevMirror,
  blockdevSnapshot,
  blockExportAdd,
  blockJobCancel,
  cont,
  migrate,
  migrateCancel,
  migrateContinue,
  migrateIncoming,
  migrateSetCapabilities,
  migrateSetParameters,
  nbdServerStart,
  queryMigrate,
  queryNamedBlockNodes,
  queryStatus,
  quit,
  type MigrateSetParameters,
  type MigrationInfo,
} from '../qmp/commands';
import { run as runTool } from '../lab/exec';
import { copyBaseImage, StallError } from './base-copy';
import { BlockJobError, blockJobComplete, blockJobSetSpeed, commandAndWait, isNotFound, nbdServerStop, waitJob, yank } from './qmp-ops';
import type { MigrationFailure, MigrationPhase, MigrationProgress, MigrationResult, PhaseTimings, RamStatus, RollbackReport } from './types';

export * from './types';

/** Default TCP ports on the target host (NBD's IANA port; QEMU's documentation's migration port). */
export const DEFAULT_NBD_PORT = 10809;
export const DEFAULT_MIGRATION_PORT = 4444;
/**
 * The labs' base receivers listen on this port + the guest's index. The lab's fair link hashes flows
 * by the destination port's low 6 bits (src/lab/netns.ts), and 9000 + i (40..47) stays clear of
 * 10809 + i (57..63, 0) and 4444 + i (28..35) for up to 8 guests. A kernel-chosen port collided
 * now and then, and the two streams then shared one bucket: half the link each.
 */
export const LAB_BASE_COPY_PORT = 9000;

export interface LiveMigrationOptions {
  /** The source QEMU's monitor (shared with the governor). */
  source: QmpClient;
  /** The target QEMU's monitor; the target was started with `-incoming defer`. */
  target: QmpClient;
  /** Ω: the directory the overlay qcow2 is created in (absolute, must exist). */
  omegaDir: string;
  /** Address of the target host as the source reaches it; NBD and migration listen there. */
  targetHost: string;
  /** Target NBD server port, 1..65535 (default 10809). */
  nbdPort?: number;
  /** Target incoming-migration port, 1..65535 (default 4444). */
  migrationPort?: number;
  /**
   * Where the base image goes: a running base receiver (base-copy.ts spawnBaseReceiver), or
   * 'skip' when the target's disk already holds the base (then phase 'base' only emits progress).
   */
  baseCopy: { host: string; port: number } | 'skip';
  /** Send all-zero chunks of the base as holes (default false: every byte crosses the link). */
  skipZeroes?: boolean;
  /** Migration id: 1-32 of [A-Za-z0-9_-] (default random). Names the overlay file and job ids. */
  id?: string;
  /** The source's root block node (default 'lxd_root'); it must be raw (LXD's VM root disk). */
  nodeName?: string;
  /** The target's root block node (default: nodeName). */
  targetNodeName?: string;
  /** migrate-set-parameters max-bandwidth, bytes/s (1..2^53-1). Unset: QEMU's default (LXD sets nothing). */
  maxBandwidthBytesPerSec?: number;
  /** migrate-set-parameters downtime-limit, ms (1..2000000). Unset: QEMU's default (300). */
  downtimeLimitMs?: number;
  /** Mirror rate limit, bytes/s (0 = unlimited, the default; 0..2^53-1). */
  mirrorBytesPerSec?: number;
  /** Period of 'progress' events and of polling QEMU, ms (20..10000; default 250). */
  progressIntervalMs?: number;
  /** A phase that makes no progress this long fails the migration, ms (100..3600000; default 15000). */
  stallTimeoutMs?: number;
  /** The whole migration must finish within this, ms (0 = no limit, the default; up to 86400000). */
  timeoutMs?: number;
  /** Quit the source QEMU after a completed migration (default true, as LXD does). */
  quitSource?: boolean;
  /** Quit the target QEMU after a failed migration (default true). */
  quitTargetOnFailure?: boolean;
}

/** The migration was stopped by abort(). */
export class MigrationAbortedError extends Error {
  override name = 'MigrationAbortedError';
}

/** The migration did not finish within its timeoutMs. */
export class MigrationTimeoutError extends Error {
  override name = 'MigrationTimeoutError';
}

/** The target QEMU's monitor went away (QEMU died or was killed). */
export class TargetLostError extends Error {
  override name = 'TargetLostError';
}

const ID_RE = /^[A-Za-z0-9_-]{1,32}$/;
const NODE_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
const RUNNING_MIGRATION: ReadonlySet<string> = new Set(['setup', 'active', 'pre-switchover', 'device', 'wait-unplug', 'cancelling', 'postcopy-active', 'postcopy-paused', 'postcopy-recover']);
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function checkInt(name: string, v: unknown, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

function checkOptions(o: LiveMigrationOptions): void {
  if (typeof o !== 'object' || o === null) throw new TypeError('LiveMigration: options must be an object');
  for (const k of ['source', 'target'] as const) {
    if (!o[k] || typeof o[k].execute !== 'function') throw new TypeError(`${k}: must be a connected QmpClient`);
  }
  if (o.source === o.target) throw new TypeError('source and target: must be two different monitors');
  if (typeof o.omegaDir !== 'string' || !isAbsolute(o.omegaDir)) throw new TypeError(`omegaDir: must be an absolute directory path (got ${JSON.stringify(o.omegaDir)})`);
  if (typeof o.targetHost !== 'string' || !/^[A-Za-z0-9.:_-]{1,253}$/.test(o.targetHost)) throw new TypeError(`targetHost: must be a host name or IP address (got ${JSON.stringify(o.targetHost)})`);
  checkInt('nbdPort', o.nbdPort, 1, 65535);
  checkInt('migrationPort', o.migrationPort, 1, 65535);
  if ((o.nbdPort ?? DEFAULT_NBD_PORT) === (o.migrationPort ?? DEFAULT_MIGRATION_PORT)) throw new RangeError('nbdPort and migrationPort: must differ');
  if (o.baseCopy !== 'skip') {
    if (typeof o.baseCopy !== 'object' || o.baseCopy === null || typeof o.baseCopy.host !== 'string' || o.baseCopy.host === '') {
      throw new TypeError("baseCopy: must be { host, port } of a base receiver, or 'skip'");
    }
    checkInt('baseCopy.port', o.baseCopy.port, 1, 65535);
  }
  if (o.id !== undefined && (typeof o.id !== 'string' || !ID_RE.test(o.id))) throw new TypeError(`id: must match ${ID_RE} (got ${JSON.stringify(o.id)})`);
  for (const k of ['nodeName', 'targetNodeName'] as const) {
    const v = o[k];
    if (v !== undefined && (typeof v !== 'string' || !NODE_RE.test(v))) throw new TypeError(`${k}: must match ${NODE_RE} (got ${JSON.stringify(v)})`);
  }
  checkInt('maxBandwidthBytesPerSec', o.maxBandwidthBytesPerSec, 1, MAX_SAFE);
  checkInt('downtimeLimitMs', o.downtimeLimitMs, 1, 2_000_000);
  checkInt('mirrorBytesPerSec', o.mirrorBytesPerSec, 0, MAX_SAFE);
  checkInt('progressIntervalMs', o.progressIntervalMs, 20, 10_000);
  checkInt('stallTimeoutMs', o.stallTimeoutMs, 100, 3_600_000);
  checkInt('timeoutMs', o.timeoutMs, 0, 86_400_000);
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(asError(signal.reason));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(asError(signal!.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Races a promise against the abort signal (the promise keeps running; its result is ignored). */
function guard<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    p.catch(() => undefined);
    return Promise.reject(asError(signal.reason));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(asError(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function ramStatus(info: MigrationInfo): RamStatus {
  const s: RamStatus = { status: info.status ?? 'none' };
  if (info['total-time'] !== undefined) s.totalTimeMs = info['total-time'];
  if (info['expected-downtime'] !== undefined) s.expectedDowntimeMs = info['expected-downtime'];
  if (info.downtime !== undefined) s.downtimeMs = info.downtime;
  if (info['cpu-throttle-percentage'] !== undefined) s.cpuThrottlePercent = info['cpu-throttle-percentage'];
  return s;
}

export interface LiveMigration {
  on(event: 'progress', listener: (p: MigrationProgress) => void): this;
  on(event: 'phase', listener: (p: MigrationProgress) => void): this;
  once(event: 'progress', listener: (p: MigrationProgress) => void): this;
  once(event: 'phase', listener: (p: MigrationProgress) => void): this;
  off(event: 'progress', listener: (p: MigrationProgress) => void): this;
  off(event: 'phase', listener: (p: MigrationProgress) => void): this;
}

/**
 * One migration. Emits 'phase' (MigrationProgress, at each phase change) and 'progress'
 * (MigrationProgress, every progressIntervalMs and at each phase change). Never emits 'error'.
 */
export class LiveMigration extends EventEmitter {
  readonly id: string;
  /** The source monitor (shared: the governor sets max-bandwidth through it, or via setMaxBandwidth()). */
  readonly source: QmpClient;
  readonly target: QmpClient;
  /** Node names, LXD's scheme: `<root>_snapshot` (overlay) and `<root>_nbd` (NBD client). */
  readonly nodeName: string;
  readonly overlayNode: string;
  readonly nbdNode: string;
  /** The NBD protocol node under nbdNode (the one that owns the connection). */
  readonly nbdProtocolNode: string;
  /** The overlay qcow2 in Ω. */
  readonly overlayPath: string;
  readonly mirrorJobId: string;
  readonly commitJobId: string;

  private readonly o: LiveMigrationOptions;
  private readonly targetNodeName: string;
  private readonly pollMs: number;
  private readonly stallTimeoutMs: number;
  private readonly ctl = new AbortController();
  private phase: MigrationPhase = 'setup';
  private t0 = 0;
  private phaseStartMs = 0;
  private readonly phaseMs: PhaseTimings = {};
  private runPromise: Promise<MigrationResult> | undefined;
  private mirrorSpeed: number;

  // What run() has done so far, so the rollback undoes exactly that.
  private wasRunning = true;
  private overlayFileCreated = false;
  private overlayAdded = false;
  private snapshotted = false;
  private nbdAdded = false;
  private mirrorStarted = false;
  private migrateStarted = false;
  private targetNbdStarted = false;
  private completed = false;

  /** The source's raw root image (from query-named-block-nodes), read by the base copy. */
  private baseImagePath = '';
  // Latest figures, for progress events.
  private baseBytesTotal = 0;
  private baseBytesCopied = 0;
  private baseRate = { tMs: 0, bytes: 0, bytesPerSec: 0 };
  private overlayBytes: number | undefined;
  private overlayPeakBytes = 0;
  private mirror: MigrationProgress['mirror'];
  private mirrorBytes = 0;
  private ram: MigrationProgress['ram'];
  private migration: RamStatus | undefined;

  constructor(options: LiveMigrationOptions) {
    super();
    checkOptions(options);
    this.o = { ...options };
    this.id = options.id ?? `m${randomBytes(4).toString('hex')}`;
    this.source = options.source;
    this.target = options.target;
    this.nodeName = options.nodeName ?? 'lxd_root';
    this.targetNodeName = options.targetNodeName ?? this.nodeName;
    this.overlayNode = `${this.nodeName}_snapshot`;
    this.nbdNode = `${this.nodeName}_nbd`;
    this.nbdProtocolNode = `${this.nodeName}_nbd_conn`;
    this.overlayPath = join(options.omegaDir, `dpa-${this.id}-overlay.qcow2`);
    this.mirrorJobId = `${this.id}-mirror`;
    this.commitJobId = `${this.id}-commit`;
    this.pollMs = options.progressIntervalMs ?? 250;
    this.stallTimeoutMs = options.stallTimeoutMs ?? 15_000;
    this.mirrorSpeed = options.mirrorBytesPerSec ?? 0;
  }

  /** The current phase. */
  get currentPhase(): MigrationPhase {
    return this.phase;
  }

  /** The latest progress figures (what the next 'progress' event will carry). */
  progress(): MigrationProgress {
    const p: MigrationProgress = {
      id: this.id,
      phase: this.phase,
      tMs: this.t0 ? performance.now() - this.t0 : 0,
      baseBytesTotal: this.baseBytesTotal,
      baseBytesCopied: this.baseBytesCopied,
      baseBytesPerSec: this.phase === 'base' ? this.baseRate.bytesPerSec : 0,
      overlayNode: this.overlayNode,
      overlayPath: this.overlayPath,
    };
    if (this.overlayBytes !== undefined) p.overlayBytes = this.overlayBytes;
    if (this.mirror) p.mirror = { ...this.mirror };
    if (this.ram) p.ram = { ...this.ram };
    if (this.migration) p.migration = { ...this.migration };
    return p;
  }

  /** Sets the RAM phase's bandwidth cap live, bytes/s (1..2^53-1). */
  async setMaxBandwidth(bytesPerSec: number): Promise<void> {
    checkInt('bytesPerSec', bytesPerSec, 1, MAX_SAFE);
    await migrateSetParameters(this.source, { 'max-bandwidth': bytesPerSec });
  }

  /** Sets the switchover downtime limit live, ms (1..2000000). */
  async setDowntimeLimit(ms: number): Promise<void> {
    checkInt('ms', ms, 1, 2_000_000);
    await migrateSetParameters(this.source, { 'downtime-limit': ms });
  }

  /** Sets the mirror's rate limit, bytes/s (0 = unlimited); applies at once if the mirror runs. */
  async setMirrorSpeed(bytesPerSec: number): Promise<void> {
    checkInt('bytesPerSec', bytesPerSec, 0, MAX_SAFE);
    this.mirrorSpeed = bytesPerSec;
    if (this.mirrorStarted) await blockJobSetSpeed(this.source, this.mirrorJobId, bytesPerSec);
  }

  /**
   * Stops the migration: run() rolls back and resolves with phase 'rolled-back' (or 'failed').
   * Resolves when run() has finished. No effect once the migration has completed.
   */
  async abort(reason = 'aborted'): Promise<void> {
    if (!this.completed) this.ctl.abort(new MigrationAbortedError(`migration ${this.id} aborted: ${reason}`));
    if (this.runPromise) await this.runPromise;
  }

  /**
   * Runs the migration once. Resolves with the outcome in every case the QEMUs can be reasoned
   * about: 'completed', 'rolled-back' (failed; the source runs with all its writes), 'failed'
   * (failed and the rollback could not finish: see rollback.errors). Rejects only for misuse
   * (called twice).
   */
  run(): Promise<MigrationResult> {
    if (this.runPromise) return Promise.reject(new Error(`LiveMigration ${this.id}: run() was already called`));
    this.runPromise = this.doRun();
    return this.runPromise;
  }

  // -------------------------------------------------------------------------------------------

  private async doRun(): Promise<MigrationResult> {
    this.t0 = performance.now();
    this.phaseStartMs = this.t0;
    const signal = this.ctl.signal;
    const onTargetGone = (err: QmpDisconnectedError): void => {
      if (!this.completed) this.ctl.abort(new TargetLostError(`target QEMU monitor gone: ${err.message}`));
    };
    const onSourceGone = (err: QmpDisconnectedError): void => {
      if (!this.completed) this.ctl.abort(err);
    };
    this.target.on('disconnect', onTargetGone);
    this.source.on('disconnect', onSourceGone);
    // The guest's pause as seen from here: source STOP (pause-before-switchover) → target RESUME.
    let stopAtMs: number | undefined;
    let resumeAtMs: number | undefined;
    const onTargetEvent = (e: { event: string }): void => {
      if (e.event === 'RESUME' && stopAtMs !== undefined) resumeAtMs ??= performance.now();
    };
    this.target.on('event', onTargetEvent);
    const onSourceEvent = (e: { event: string; data?: Record<string, unknown> }): void => {
      if (e.event === 'STOP' && this.migrateStarted) stopAtMs ??= performance.now();
      // A mirror that ends on its own (target I/O error) fails the migration at once, in any phase.
      if (!this.mirrorStarted || e.data?.device !== this.mirrorJobId) return;
      if (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED' || e.event === 'BLOCK_JOB_ERROR') {
        if (this.phase !== 'switchover' || e.event === 'BLOCK_JOB_ERROR') {
          const why = typeof e.data.error === 'string' ? e.data.error : typeof e.data.operation === 'string' ? `${e.data.operation} error` : e.event;
          this.ctl.abort(new BlockJobError(this.mirrorJobId, `mirror ${this.mirrorJobId} ended: ${why}`));
        }
      }
    };
    this.source.on('event', onSourceEvent);
    let timeout: NodeJS.Timeout | undefined;
    if (this.o.timeoutMs) {
      timeout = setTimeout(() => this.ctl.abort(new MigrationTimeoutError(`migration ${this.id} not done within timeoutMs ${this.o.timeoutMs} ms`)), this.o.timeoutMs);
    }
    let ticking = false;
    const ticker = setInterval(() => {
      if (ticking) return;
      ticking = true;
      void this.tick().finally(() => (ticking = false));
    }, this.pollMs);
    this.emitPhase();

    let failure: MigrationFailure | undefined;
    let rollback: RollbackReport | undefined;
    let finalPhase: MigrationResult['phase'] = 'completed';
    let targetStatus: string | undefined;
    try {
      await this.setup(signal);
      this.setPhase('base');
      await this.copyBase(signal);
      this.setPhase('mirror');
      await this.runMirror(signal);
      this.setPhase('ram');
      await this.runRam(signal);
      this.setPhase('switchover');
      targetStatus = await this.switchover(signal);
      this.setPhase('completed');
    } catch (err) {
      const cause = signal.aborted ? asError(signal.reason) : asError(err);
      failure = { phase: this.phase, message: cause.message, errorName: cause.name };
      this.setPhase('failed');
      rollback = await this.rollback();
      finalPhase = rollback.errors.length === 0 ? 'rolled-back' : 'failed';
      if (finalPhase === 'rolled-back') this.setPhase('rolled-back');
      else this.emit('progress', this.progress());
    } finally {
      clearInterval(ticker);
      if (timeout) clearTimeout(timeout);
      this.target.off('disconnect', onTargetGone);
      this.source.off('disconnect', onSourceGone);
      this.source.off('event', onSourceEvent);
      this.target.off('event', onTargetEvent);
    }
    const result: MigrationResult = {
      id: this.id,
      phase: finalPhase,
      totalMs: performance.now() - this.t0,
      phaseMs: { ...this.phaseMs },
      baseBytesTotal: this.baseBytesTotal,
      baseBytesCopied: this.baseBytesCopied,
      overlayPeakBytes: this.overlayPeakBytes,
      mirrorBytes: this.mirrorBytes,
    };
    if (failure) result.failure = failure;
    if (rollback) result.rollback = rollback;
    if (this.ram) result.ram = { ...this.ram };
    if (this.completed && this.migration?.downtimeMs !== undefined) result.downtimeMs = this.migration.downtimeMs;
    if (targetStatus) result.targetStatus = targetStatus;
    if (this.completed && stopAtMs !== undefined && resumeAtMs !== undefined) result.blackoutMs = resumeAtMs - stopAtMs;
    return result;
  }

  private setPhase(next: MigrationPhase): void {
    const now = performance.now();
    this.phaseMs[this.phase] = (this.phaseMs[this.phase] ?? 0) + (now - this.phaseStartMs);
    this.phaseStartMs = now;
    this.phase = next;
    this.emitPhase();
  }

  private emitPhase(): void {
    const p = this.progress();
    this.emit('phase', p);
    this.emit('progress', p);
  }

  /** Periodic: overlay size from the file system, base rate, then a progress event. */
  private async tick(): Promise<void> {
    if (this.overlayFileCreated) {
      try {
        const st = await stat(this.overlayPath);
        // Allocated blocks, not the apparent size: what the overlay takes from Ω.
        this.overlayBytes = st.blocks * 512;
        this.overlayPeakBytes = Math.max(this.overlayPeakBytes, this.overlayBytes);
      } catch {
        this.overlayBytes = undefined;
      }
    }
    const now = performance.now() - this.t0;
    if (this.phase === 'base' && now > this.baseRate.tMs) {
      this.baseRate = { tMs: now, bytes: this.baseBytesCopied, bytesPerSec: ((this.baseBytesCopied - this.baseRate.bytes) * 1000) / (now - this.baseRate.tMs) };
    }
    if (this.phase !== 'completed' && this.phase !== 'rolled-back') this.emit('progress', this.progress());
  }

  // ---- phase 'setup' ------------------------------------------------------------------------

  private async setup(signal: AbortSignal): Promise<void> {
    const [status, mig, nodes, tStatus, tNodes] = await guard(
      Promise.all([queryStatus(this.source), queryMigrate(this.source), queryNamedBlockNodes(this.source), queryStatus(this.target), queryNamedBlockNodes(this.target)]),
      signal,
    );
    this.wasRunning = status.running;
    if (mig.status && RUNNING_MIGRATION.has(mig.status)) throw new Error(`source: a migration is already ${mig.status}`);
    if (tStatus.status !== 'inmigrate') throw new Error(`target: run state is '${tStatus.status}', expected 'inmigrate' (start it with -incoming defer)`);
    const root = nodes.find((n) => n['node-name'] === this.nodeName);
    if (!root) throw new Error(`source: no block node '${this.nodeName}' (have ${nodes.map((n) => n['node-name']).join(', ')})`);
    for (const name of [this.overlayNode, this.nbdNode]) {
      if (nodes.some((n) => n['node-name'] === name)) throw new Error(`source: block node '${name}' already exists (a migration in progress, or leftovers of one)`);
    }
    if (root.drv !== 'raw') throw new Error(`source: root node '${this.nodeName}' is ${root.drv}; the base copy streams a raw image (LXD's VM root disk format)`);
    if (root.backing_file_depth !== 0) throw new Error(`source: root node '${this.nodeName}' already has a backing chain`);
    const tRoot = tNodes.find((n) => n['node-name'] === this.targetNodeName);
    if (!tRoot) throw new Error(`target: no block node '${this.targetNodeName}'`);
    const size = root.image['virtual-size'];
    if (tRoot.image['virtual-size'] < size) throw new Error(`target: '${this.targetNodeName}' has ${tRoot.image['virtual-size']} bytes, the source's root ${size}`);
    this.baseBytesTotal = size;
    this.baseImagePath = root.file;

    await guard(
      migrateSetCapabilities(this.source, { 'auto-converge': true, 'pause-before-switchover': true, 'zero-blocks': true, events: true }),
      signal,
    );
    // Target: activate its disks at `cont`, not when the incoming stream ends. Until the NBD
    // export is removed it holds the write permission that virtio-blk wants unshared, and QEMU
    // 7.2 fails the activation ("Permission conflict on node ...") otherwise (libvirt does the same).
    await guard(migrateSetCapabilities(this.target, { 'late-block-activate': true }), signal);
    const params: MigrateSetParameters = {};
    if (this.o.maxBandwidthBytesPerSec !== undefined) params['max-bandwidth'] = this.o.maxBandwidthBytesPerSec;
    if (this.o.downtimeLimitMs !== undefined) params['downtime-limit'] = this.o.downtimeLimitMs;
    if (Object.keys(params).length) await guard(migrateSetParameters(this.source, params), signal);

    // A standalone qcow2 of the root's size (no backing in the file): blockdev-snapshot gives it
    // the base as backing. LXD then unlinks it and passes an fd; Node cannot pass fds over QMP,
    // so the file stays until the migration ends.
    const exists = await access(this.overlayPath, fsConstants.F_OK).then(
      () => true,
      () => false,
    );
    if (exists) throw new Error(`${this.overlayPath} already exists`);
    this.overlayFileCreated = true;
    await guard(runTool('qemu-img', ['create', '-q', '-f', 'qcow2', this.overlayPath, String(size)], { timeoutMs: 30_000 }), signal);
    await chmod(this.overlayPath, 0o600);
    await guard(
      blockdevAdd(this.source, {
        driver: 'qcow2',
        'node-name': this.overlayNode,
        file: { driver: 'file', filename: this.overlayPath },
        backing: null,
      }),
      signal,
    );
    this.overlayAdded = true;
    await guard(blockdevSnapshot(this.source, { node: this.nodeName, overlay: this.overlayNode }), signal);
    this.snapshotted = true;
  }

  // ---- phase 'base' -------------------------------------------------------------------------

  private async copyBase(signal: AbortSignal): Promise<void> {
    if (this.o.baseCopy === 'skip') {
      this.baseBytesCopied = 0;
      return;
    }
    this.baseRate = { tMs: performance.now() - this.t0, bytes: 0, bytesPerSec: 0 };
    await copyBaseImage({
      imagePath: this.baseImagePath,
      totalBytes: this.baseBytesTotal,
      host: this.o.baseCopy.host,
      port: this.o.baseCopy.port,
      skipZeroes: this.o.skipZeroes ?? false,
      stallTimeoutMs: this.stallTimeoutMs,
      signal,
      onProgress: (bytes) => {
        this.baseBytesCopied = bytes;
      },
    });
  }

  // ---- phase 'mirror' -----------------------------------------------------------------------

  private async runMirror(signal: AbortSignal): Promise<void> {
    const host = this.o.targetHost;
    const nbdPort = String(this.o.nbdPort ?? DEFAULT_NBD_PORT);
    await guard(nbdServerStart(this.target, { addr: { type: 'inet', data: { host, port: nbdPort } } }), signal);
    this.targetNbdStarted = true;
    // Exporting activates the target's (incoming, inactive) node for writing: after the base copy.
    await guard(blockExportAdd(this.target, { type: 'nbd', id: `${this.id}-export`, 'node-name': this.targetNodeName, writable: true, name: this.targetNodeName }), signal);
    await guard(
      blockdevAdd(this.source, {
        driver: 'raw',
        'node-name': this.nbdNode,
        // Named, because yank addresses the NBD protocol node, not the raw node above it.
        file: { driver: 'nbd', 'node-name': this.nbdProtocolNode, server: { type: 'inet', host, port: nbdPort }, export: this.targetNodeName },
      }),
      signal,
    );
    this.nbdAdded = true;
    await commandAndWait(
      this.source,
      this.mirrorJobId,
      async () => {
        await guard(
          blockdevMirror(this.source, {
            'job-id': this.mirrorJobId,
            device: this.overlayNode,
            target: this.nbdNode,
            sync: 'top',
            'copy-mode': 'write-blocking',
            ...(this.mirrorSpeed ? { speed: this.mirrorSpeed } : {}),
          }),
          signal,
        );
        this.mirrorStarted = true;
      },
      {
      until: 'ready',
      pollMs: this.pollMs,
      stallTimeoutMs: this.stallTimeoutMs,
      signal,
      onPoll: (job) => {
        this.mirror = { offset: job.offset, len: job.len, ready: job.ready, speedBytesPerSec: job.speed };
        this.mirrorBytes = job.len;
      },
    });
    if (this.mirror) this.mirror = { ...this.mirror, ready: true, offset: this.mirror.len };
  }

  // ---- phase 'ram' --------------------------------------------------------------------------

  private async runRam(signal: AbortSignal): Promise<void> {
    const uri = `tcp:${this.o.targetHost}:${this.o.migrationPort ?? DEFAULT_MIGRATION_PORT}`;
    await guard(migrateIncoming(this.target, { uri }), signal);
    await guard(migrate(this.source, { uri }), signal);
    this.migrateStarted = true;
    let lastBytes = -1;
    let lastAdvance = performance.now();
    for (;;) {
      const info = await guard(queryMigrate(this.source), signal);
      this.noteMigration(info);
      const status = info.status ?? 'none';
      if (status === 'pre-switchover') return;
      if (status === 'failed' || status === 'cancelled' || status === 'cancelling') {
        throw new Error(`RAM migration ${status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
      }
      if (status === 'completed') throw new Error('RAM migration completed without pausing at pre-switchover');
      const bytes = info.ram?.transferred ?? 0;
      const now = performance.now();
      if (bytes !== lastBytes || status === 'setup') {
        lastBytes = bytes;
        lastAdvance = now;
      } else if (now - lastAdvance > this.stallTimeoutMs) {
        throw new StallError(`RAM migration to ${uri} (${bytes} bytes sent, status ${status})`, this.stallTimeoutMs);
      }
      await this.pollMirrorQuietly();
      await sleep(this.pollMs, signal);
    }
  }

  private noteMigration(info: MigrationInfo): void {
    if (info.ram) this.ram = info.ram;
    this.migration = ramStatus(info);
  }

  /** Mirror figures while RAM moves (write-blocking keeps it in sync; len grows with guest writes). */
  private async pollMirrorQuietly(): Promise<void> {
    try {
      const jobs = await this.source.execute<Array<{ device: string; offset: number; len: number; ready: boolean; speed: number }>>('query-block-jobs', undefined, { timeoutMs: 5000 });
      const job = jobs.find((j) => j.device === this.mirrorJobId);
      if (job) {
        this.mirror = { offset: job.offset, len: job.len, ready: job.ready, speedBytesPerSec: job.speed };
        this.mirrorBytes = job.len;
      }
    } catch {
      // Figures only; failures show up in the migration or mirror events.
    }
  }

  // ---- phase 'switchover' -------------------------------------------------------------------

  private async switchover(signal: AbortSignal): Promise<string> {
    // The VM is paused (pause-before-switchover): no new guest writes. Cancelling a ready mirror
    // completes it without pivoting, target consistent (BLOCK_JOB_COMPLETED, no error).
    const end = await commandAndWait(this.source, this.mirrorJobId, () => guard(blockJobCancel(this.source, { device: this.mirrorJobId }), signal), {
      until: 'end',
      pollMs: 50,
      timeoutMs: Math.max(30_000, this.stallTimeoutMs),
      signal,
    });
    if (end !== 'ready' && end.error) throw new BlockJobError(this.mirrorJobId, `mirror ${this.mirrorJobId} failed at switchover: ${end.error}`, end);
    if (end !== 'ready' && end.len !== undefined) this.mirrorBytes = end.len;
    this.mirrorStarted = false;
    await guard(blockdevDel(this.source, this.nbdNode), signal);
    this.nbdAdded = false;
    await guard(migrateContinue(this.source, 'pre-switchover'), signal);
    for (;;) {
      const info = await guard(queryMigrate(this.source), signal);
      this.noteMigration(info);
      if (info.status === 'completed') break;
      if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`switchover ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
      await sleep(Math.min(this.pollMs, 20), signal);
    }
    // Past this point the guest lives on the target: nothing may resume the source unless the
    // target is gone.
    this.completed = true;
    const targetStatus = await this.startTarget();
    if (this.o.quitSource ?? true) {
      const gone = new Promise<void>((r) => {
        if (!this.source.connected) r();
        else this.source.once('disconnect', () => r());
      });
      await quit(this.source).catch(() => undefined);
      await Promise.race([gone, sleep(10_000)]);
    }
    await this.removeOverlayFile();
    return targetStatus;
  }

  /**
   * Waits for the target to finish loading, removes its NBD export (it holds write permission on
   * the root node), then `cont`s it unless it already runs; returns its run state ('running').
   */
  private async startTarget(): Promise<string> {
    const deadline = performance.now() + Math.max(30_000, this.stallTimeoutMs);
    const status = async (): Promise<string> => {
      try {
        return (await queryStatus(this.target, { timeoutMs: 10_000 })).status;
      } catch (err) {
        throw new TargetLostError(`target after switchover: ${asError(err).message}`);
      }
    };
    let st = await status();
    while (st === 'inmigrate' || st === 'finish-migrate' || st === 'restore-vm') {
      if (performance.now() > deadline) throw new TargetLostError(`target still '${st}' after the switchover`);
      await sleep(20);
      st = await status();
    }
    await nbdServerStop(this.target).catch(() => undefined);
    this.targetNbdStarted = false;
    if (st === 'paused' || st === 'prelaunch') {
      await cont(this.target);
      st = await status();
    }
    if (st !== 'running') throw new TargetLostError(`target after switchover is '${st}', not running`);
    return st;
  }

  private async removeOverlayFile(): Promise<boolean> {
    try {
      await unlink(this.overlayPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    this.overlayFileCreated = false;
    this.overlayBytes = undefined;
    return true;
  }

  // ---- rollback -----------------------------------------------------------------------------

  /**
   * Undoes what run() did, in the order that keeps guest writes flowing: mirror (its NBD link may
   * hang the guest's write-blocking writes), migration (unpauses the VM), resume, then commit the
   * overlay into the base and remove it. Every step runs even if an earlier one failed.
   */
  private async rollback(): Promise<RollbackReport> {
    const started = performance.now();
    const r: RollbackReport = {
      migrationCancelled: false,
      mirrorCancelled: false,
      nbdYanked: false,
      committed: false,
      committedBytes: 0,
      overlayRemoved: false,
      resumed: false,
      sourceStatus: 'unknown',
      durationMs: 0,
      errors: [],
    };
    const s = this.source;
    const step = async (name: string, fn: () => Promise<void>): Promise<boolean> => {
      try {
        await fn();
        return true;
      } catch (err) {
        r.errors.push(`${name}: ${asError(err).message}`);
        return false;
      }
    };
    if (!s.connected) {
      r.errors.push('source monitor disconnected: nothing can be rolled back (is the source QEMU still alive?)');
      r.durationMs = performance.now() - started;
      return r;
    }
    if (this.completed) {
      // The target took over and then was lost: resuming the source is only safe without it.
      if (this.target.connected) {
        r.errors.push('migration completed but the target could not be confirmed running while its monitor is still connected: not resuming the source (two copies of the guest must never run)');
        r.durationMs = performance.now() - started;
        return r;
      }
    }

    // 1. Mirror: yank first, since a cut link would hang the cancel (and the guest's writes) for minutes.
    if (this.nbdAdded || this.mirrorStarted) {
      await step('yank NBD', async () => {
        r.nbdYanked = (await yank(s, [{ type: 'block-node', 'node-name': this.nbdProtocolNode }])).length > 0;
      });
    }
    if (this.mirrorStarted) {
      const ok = await step('cancel mirror', async () => {
        try {
          await blockJobCancel(s, { device: this.mirrorJobId, force: true });
        } catch (err) {
          if (isNotFound(err)) return; // it already ended (e.g. failed on the target's I/O error)
          throw err;
        }
        await waitJob(s, this.mirrorJobId, { until: 'end', pollMs: 50, timeoutMs: 30_000, existing: true });
      });
      if (ok) this.mirrorStarted = false;
      r.mirrorCancelled = ok;
    }
    if (this.nbdAdded) {
      if (
        await step('remove NBD node', async () => {
          try {
            await blockdevDel(s, this.nbdNode);
          } catch (err) {
            if (!isNotFound(err)) throw err;
          }
        })
      ) {
        this.nbdAdded = false;
      }
    }

    // 2. Migration: cancel it (allowed: dpa drives this migration, no LXD waits on it).
    if (this.migrateStarted) {
      await step('cancel migration', async () => {
        let info = await queryMigrate(s);
        if (info.status && RUNNING_MIGRATION.has(info.status)) {
          await migrateCancel(s);
          r.migrationCancelled = true;
        }
        const deadline = performance.now() + 15_000;
        let yanked = false;
        while (info.status && RUNNING_MIGRATION.has(info.status)) {
          if (!yanked && performance.now() > deadline - 10_000) {
            // migrate_cancel shuts the socket down; if the thread is still stuck, yank it.
            await yank(s, [{ type: 'migration' }]).catch(() => undefined);
            yanked = true;
          }
          if (performance.now() > deadline) throw new Error(`migration still '${info.status}' 15 s after migrate_cancel`);
          await sleep(20);
          info = await queryMigrate(s);
        }
        this.noteMigration(info);
      });
    }

    // 3. Make the source run again (pause-before-switchover or a failed completion may have left it paused).
    await step('resume source', async () => {
      const st = await queryStatus(s);
      if (this.wasRunning && !st.running && st.status !== 'shutdown' && st.status !== 'internal-error' && st.status !== 'guest-panicked') {
        await cont(s);
        r.resumed = true;
      }
    });

    // 4. Commit the overlay back into the base (an active commit: mirror until ready, then pivot).
    if (this.snapshotted) {
      r.committed = await step('commit overlay', async () => {
        await commandAndWait(s, this.commitJobId, () => blockCommit(s, { 'job-id': this.commitJobId, device: this.overlayNode }), {
          until: 'ready',
          pollMs: 50,
          stallTimeoutMs: Math.max(this.stallTimeoutMs, 30_000),
        });
        const end = await commandAndWait(s, this.commitJobId, () => blockJobComplete(s, this.commitJobId), { until: 'end', pollMs: 50, timeoutMs: 60_000 });
        if (end !== 'ready') {
          if (end.error) throw new Error(`commit job failed: ${end.error}`);
          r.committedBytes = end.len ?? end.offset ?? 0;
        }
        const active = await this.activeRootNode();
        if (active !== this.nodeName) throw new Error(`after the commit the device's active node is '${active}', expected '${this.nodeName}'`);
        this.snapshotted = false;
      });
    }
    if (this.overlayAdded && !this.snapshotted) {
      if (
        await step('remove overlay node', async () => {
          try {
            await blockdevDel(s, this.overlayNode);
          } catch (err) {
            if (!isNotFound(err)) throw err;
          }
        })
      ) {
        this.overlayAdded = false;
      }
    }
    if (this.overlayFileCreated && !this.overlayAdded) {
      r.overlayRemoved = await step('delete overlay file', async () => {
        await this.removeOverlayFile();
      });
    } else if (!this.overlayFileCreated) {
      r.overlayRemoved = true;
    }

    // 5. The target: an incoming QEMU that lost its migration is of no use.
    if ((this.o.quitTargetOnFailure ?? true) && this.target.connected) {
      if (this.targetNbdStarted) await nbdServerStop(this.target).catch(() => undefined);
      await quit(this.target).catch(() => undefined);
    }

    await step('source status', async () => {
      const st = await queryStatus(s);
      r.sourceStatus = st.status;
      if (this.wasRunning && !st.running) throw new Error(`source is '${st.status}', not running`);
    });
    r.durationMs = performance.now() - started;
    return r;
  }

  /** The node the root device reads and writes through (query-block's inserted node). */
  private async activeRootNode(): Promise<string | undefined> {
    const blocks = await this.source.execute<Array<{ inserted?: { 'node-name'?: string; backing_file_depth?: number } }>>('query-block');
    const names = blocks.map((b) => b.inserted?.['node-name']);
    return names.find((n) => n === this.nodeName || n === this.overlayNode) ?? names.find((n) => n !== undefined);
  }
}
