/**
 * The real-time governor: every `intervalMs` (10 Hz by default) it reads each governed VM's
 * telemetry over QMP, runs the pure core (./core.ts: world → policy → planned actions), and acts
 * on QEMU — `block_set_io_throttle` (bps_wr) and `migrate-set-parameters` (max-bandwidth) — and
 * nothing else: it never pauses a guest, never cancels a migration.
 *
 * Crash safety (./state-file.ts): `Governor.start()` first reconciles the state file a previous
 * governor may have left (restoring what it applied; VMs listed in `adopt`, which the caller
 * governs again, are taken over instead: their recorded originals are kept and the settings in
 * force are the policy's starting point, so a restart never lifts a throttle that protects Ω),
 * and from then on the file records every VM's originals as soon as it is attached and every
 * change before it is sent. What the governor
 * changed is put back when the VM's migration ends (for any reason, at once), when the VM is
 * detached, and on stop() (the CLI calls it on SIGINT/SIGTERM). A VM whose QEMU dies is dropped;
 * if its monitor still answers on a fresh connection (only the shared client went away), its
 * originals are restored through that.
 *
 * A link that dies (nothing moving while a copy is pending) drags U(t) toward 0; the policies
 * then hold the writers near γ_SLA, which is what Ω needs while nothing drains the overlays. The
 * moment the driver reports the migration failed or rolled back, that VM's own limits and
 * max-bandwidth are put back, in the same tick.
 *
 * One tick:
 * 1. per VM, concurrently: refresh() if the migration has one, query-blockstats (the device's
 *    wr_bytes) and query-named-block-nodes (the overlay's actual-size), describe();
 * 2. the pure part, timed (`tickUs`): core.tick();
 * 3. if anything changes: the state file is saved (fsync'ed), then the actions are sent, per VM
 *    in order, VMs concurrently; each success is confirmed to the core (a failure is retried by
 *    the next tick's plan, since the core still sees the old setting in force);
 * 4. the decision is recorded (./decision-log.ts) and emitted as 'tick'.
 * Ticks never overlap; a tick that overruns its period delays the next one (counted in
 * `stats.overruns`) instead of queueing several.
 */
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { QEMU_DEFAULTS } from '../model/precopy';
import { makePolicy } from '../policy/index';
import type { Policy } from '../policy/types';
import { QmpClient, QmpDisconnectedError, QmpTimeoutError } from '../qmp/client';
import { blockSetIoThrottle, migrateSetParameters, queryBlock, queryBlockstats, queryMigrateParameters, queryNamedBlockNodes } from '../qmp/commands';
import type { BlockInfo } from '../qmp/types';
import { GovernorCore, type CoreOptions, type TickResult, type VmTelemetry } from './core';
import { DecisionLog, type DecisionRecord } from './decision-log';
import { reconcile, restoreEntry, StateFile, type ReconcileReport, type StateEntry } from './state-file';
import { looksGoverned, readLimits, sameLimits, throttleArgs } from './throttle';
import type { GovernedMigration, GovernorAction } from './types';

export interface GovernorOptions extends Omit<CoreOptions, 'policy' | 'intervalMs' | 'slaBytesPerSec'> {
  /** A policy, or its name (default 'fitted'; 'mirror-only' is refused: it is a migration flow). */
  policy?: Policy | string;
  /** Loop period, ms (20..1000, default 100 = 10 Hz). */
  intervalMs?: number;
  /** γ_SLA, bytes/s (default 10 000, the paper's 10 kB/s). */
  slaBytesPerSec?: number;
  /** State file for crash safety (0600, atomic). Without it a crash leaves throttles behind. */
  stateFile?: string;
  /** JSON lines decision log (0600). */
  decisionLog?: string;
  /** Decisions kept in memory (default 600). */
  decisionRingSize?: number;
  /** Deadline of each QMP query and command, ms (1..60000, default max(1000, 5 × intervalMs)). */
  queryTimeoutMs?: number;
  /** Aborting it stops the governor (restoring everything), as stop() does. */
  signal?: AbortSignal;
  /**
   * Monitor socket paths of VMs the caller attaches right after start(): a previous governor's
   * state-file entries for them are taken over at attach() (originals kept, its settings left in
   * force) instead of restored by the reconcile. Entries never attached are restored by stop().
   */
  adopt?: readonly string[];
}

export interface GovernorStats {
  ticks: number;
  /** Ticks that took longer than the period. */
  overruns: number;
  /** Pure part of the tick, µs: median and 99th percentile over the last 1024 ticks. */
  tickUsP50: number;
  tickUsP99: number;
  /** Whole tick including QMP, ms: median over the last 1024 ticks. */
  wallMsP50: number;
  actionsSent: number;
  actionsFailed: number;
  telemetryErrors: number;
  /** VMs dropped because their QMP connection ended. */
  dropped: number;
}

export interface StopReport {
  /** VMs whose originals were put back (or had nothing to put back). */
  restored: string[];
  /** VMs that could not be restored: kept in the state file for reconcile(). */
  failed: Array<{ id: string; error: string }>;
}

interface Attached {
  m: GovernedMigration;
  qomPath: string;
  entry: StateEntry;
  onDisconnect: () => void;
  /** Serializes this VM's QMP changes. */
  chain: Promise<void>;
}

const RING = 1024;

function pickDevice(blocks: readonly BlockInfo[], overlayNode: string): string {
  const devices = blocks.filter((b) => b.qdev && b.inserted);
  const active = devices.find((b) => b.inserted!['node-name'] === overlayNode);
  if (active) return active.qdev!;
  if (devices.length === 1) return devices[0]!.qdev!;
  throw new RangeError(`deviceQomPath: cannot tell which device is the migrating disk (${devices.map((d) => d.qdev).join(', ') || 'no device with a medium'}); pass it`);
}

function percentile(values: Float64Array, count: number, p: number): number {
  if (count === 0) return 0;
  const s = Float64Array.from(values.subarray(0, count)).sort();
  return s[Math.min(count - 1, Math.floor(p * count))]!;
}

export interface Governor {
  /** Each tick's record (also kept in `decisions`). */
  on(event: 'tick', listener: (record: DecisionRecord) => void): this;
  /** A VM left: its migration ended (restored), it was detached, or its QEMU went away. */
  on(event: 'released', listener: (info: { id: string; reason: string; restored: boolean }) => void): this;
  /** Something failed that the governor worked around (telemetry, an action, a restore). */
  on(event: 'warning', listener: (info: { id?: string; stage: string; message: string }) => void): this;
}

export class Governor extends EventEmitter {
  readonly core: GovernorCore;
  readonly decisions: DecisionLog;
  readonly intervalMs: number;
  /** What start() found and restored from a previous governor's state file (null: no state file). */
  reconcileReport: ReconcileReport | null = null;
  private readonly state: StateFile | undefined;
  private readonly queryTimeoutMs: number;
  private readonly vms = new Map<string, Attached>();
  private readonly attaching = new Set<string>();
  /** Entries of VMs the governor could not restore (kept in the state file). */
  private orphans: StateEntry[] = [];
  /** A previous governor's entries handed over by the reconcile, by monitor path, until attached. */
  private readonly adoptable = new Map<string, StateEntry>();
  private readonly adopt: readonly string[] | undefined;
  /** drop()s in progress (stop() waits for them before its last state save). */
  private readonly drops = new Set<Promise<void>>();
  private stateDirty = false;
  private stopping = false;
  private stopped: Promise<StopReport> | undefined;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private seq = 0;
  private readonly tickUs = new Float64Array(RING);
  private readonly wallMs = new Float64Array(RING);
  private readonly counters = { ticks: 0, overruns: 0, actionsSent: 0, actionsFailed: 0, telemetryErrors: 0, dropped: 0 };
  private readonly abort = new AbortController();

  private constructor(options: GovernorOptions) {
    super();
    const policy = typeof options.policy === 'object' && options.policy !== null ? options.policy : makePolicy(options.policy ?? 'fitted', { staticBinBytes: Math.max(1, options.omegaBytes / 4) });
    this.intervalMs = options.intervalMs ?? 100;
    if (!Number.isInteger(this.intervalMs) || this.intervalMs < 20 || this.intervalMs > 1000) throw new RangeError(`intervalMs: must be an integer from 20 to 1000 (got ${String(options.intervalMs)})`);
    this.queryTimeoutMs = options.queryTimeoutMs ?? Math.max(1000, 5 * this.intervalMs);
    if (!Number.isInteger(this.queryTimeoutMs) || this.queryTimeoutMs < 1 || this.queryTimeoutMs > 60_000) throw new RangeError(`queryTimeoutMs: must be an integer from 1 to 60000 (got ${String(options.queryTimeoutMs)})`);
    this.core = new GovernorCore({ ...options, policy, intervalMs: this.intervalMs, slaBytesPerSec: options.slaBytesPerSec ?? 10_000 });
    this.state = options.stateFile !== undefined ? new StateFile(options.stateFile) : undefined;
    if (options.adopt !== undefined && (!Array.isArray(options.adopt) || options.adopt.some((p) => typeof p !== 'string' || p === ''))) throw new TypeError('adopt: must be an array of monitor socket paths');
    this.adopt = options.adopt;
    this.decisions = new DecisionLog({ ringSize: options.decisionRingSize, path: options.decisionLog });
  }

  /**
   * Creates a governor: validates the options, reconciles the state file (restoring what a
   * crashed predecessor applied), and starts the loop. Attach migrations afterwards.
   */
  static async start(options: GovernorOptions): Promise<Governor> {
    const g = new Governor(options);
    try {
      if (g.state) g.reconcileReport = await reconcile(g.state.path, g.adopt ? { adopt: new Set(g.adopt) } : {});
      for (const e of g.reconcileReport?.adopted ?? []) {
        g.adoptable.set(e.monitorPath, e);
        g.orphans.push(e);
      }
    } catch (err) {
      await g.decisions.close();
      throw err;
    }
    if (options.signal) {
      if (options.signal.aborted) {
        await g.decisions.close();
        throw new Error('governor: aborted before it started');
      }
      options.signal.addEventListener('abort', () => void g.stop().catch((err: Error) => g.emit('warning', { stage: 'stop', message: err.message })), { once: true });
    }
    g.loop = g.run();
    return g;
  }

  get stats(): GovernorStats {
    const n = Math.min(this.counters.ticks, RING);
    return {
      ...this.counters,
      tickUsP50: percentile(this.tickUs, n, 0.5),
      tickUsP99: percentile(this.tickUs, n, 0.99),
      wallMsP50: percentile(this.wallMs, n, 0.5),
    };
  }

  /** Ids of the VMs governed now. */
  governed(): string[] {
    return [...this.vms.keys()];
  }

  /**
   * Starts governing a migration: reads the device's limits and the migration parameters now in
   * force (the originals to restore), records them in the state file, then lets the loop act.
   */
  async attach(m: GovernedMigration): Promise<void> {
    if (this.stopping) throw new Error('governor: stopped');
    if (typeof m !== 'object' || m === null) throw new TypeError('migration: must be a GovernedMigration');
    if (typeof m.id !== 'string' || m.id === '') throw new TypeError('id: must be a non-empty string');
    if (!(m.qmp instanceof QmpClient) || !m.qmp.connected) throw new TypeError(`qmp: must be a connected QmpClient (migration '${m.id}')`);
    if (typeof m.monitorPath !== 'string' || m.monitorPath === '') throw new TypeError('monitorPath: must be a non-empty string');
    if (typeof m.overlayNode !== 'string' || m.overlayNode === '') throw new TypeError('overlayNode: must be a non-empty string');
    if (typeof m.describe !== 'function') throw new TypeError('describe: must be a function');
    if (!(m.ramBytes > 0) || !Number.isFinite(m.ramBytes)) throw new RangeError(`ramBytes: must be a finite number > 0 (got ${String(m.ramBytes)})`);
    if (this.vms.has(m.id) || this.attaching.has(m.id)) throw new RangeError(`id: '${m.id}' is already governed`);
    this.attaching.add(m.id);
    try {
      const opts = { timeoutMs: this.queryTimeoutMs };
      const [blocks, params] = await Promise.all([queryBlock(m.qmp, opts), queryMigrateParameters(m.qmp, opts)]);
      const qomPath = m.deviceQomPath ?? pickDevice(blocks, m.overlayNode);
      const dev = blocks.find((b) => b.qdev === qomPath);
      if (!dev?.inserted) throw new RangeError(`deviceQomPath: no device '${qomPath}' with a medium in query-block`);
      const currentLimits = readLimits(dev.inserted);
      const currentMaxBw = params['max-bandwidth'] ?? QEMU_DEFAULTS.maxBandwidthBytesPerSec;
      // A previous governor's record of this VM (adopt): its originals are the true ones, and what
      // is in force now is its last setting, unless someone else changed the limits since.
      const prev = this.adoptable.get(m.monitorPath);
      const samePrev = prev !== undefined && prev.deviceQomPath === qomPath;
      const adopted = samePrev && looksGoverned(prev.originalLimits, currentLimits);
      const originalLimits = adopted ? prev.originalLimits : currentLimits;
      const originalMaxBw = adopted ? prev.originalMaxBandwidthBytesPerSec : currentMaxBw;
      const entry: StateEntry = {
        id: m.id,
        monitorPath: m.monitorPath,
        deviceQomPath: qomPath,
        originalLimits,
        originalMaxBandwidthBytesPerSec: originalMaxBw,
        applied: {
          limits: sameLimits(currentLimits, originalLimits) ? null : currentLimits,
          maxBandwidthBytesPerSec: currentMaxBw === originalMaxBw ? null : currentMaxBw,
        },
      };
      if (this.stopping) throw new Error('governor: stopped');
      // Same device: this entry replaces the previous one (adopted, or left alone as reconcile would a modified one).
      if (samePrev) {
        this.adoptable.delete(m.monitorPath);
        this.orphans = this.orphans.filter((e) => e !== prev);
      }
      const onDisconnect = (): void => this.dropLater(m.id, 'QMP connection closed');
      this.vms.set(m.id, { m, qomPath, entry, onDisconnect, chain: Promise.resolve() });
      m.qmp.on('disconnect', onDisconnect);
      this.core.attach(
        {
          id: m.id,
          ramBytes: m.ramBytes,
          originalLimits,
          originalMaxBandwidthBytesPerSec: originalMaxBw,
          downtimeLimitMs: params['downtime-limit'] ?? QEMU_DEFAULTS.downtimeLimitMs,
          ...(m.ramDirty ? { ramDirty: m.ramDirty } : {}),
        },
        performance.now(),
        adopted ? { limits: currentLimits, maxBandwidthBytesPerSec: currentMaxBw } : undefined,
      );
      // The originals are on disk before the loop can change anything on this VM.
      try {
        await this.saveState();
      } catch (err) {
        m.qmp.off('disconnect', onDisconnect);
        this.vms.delete(m.id);
        this.core.remove(m.id);
        if (samePrev) {
          this.adoptable.set(m.monitorPath, prev);
          this.orphans.push(prev);
        }
        throw err;
      }
    } finally {
      this.attaching.delete(m.id);
    }
  }

  /** Stops governing one VM, restoring its originals. Resolves true when they are back. */
  async detach(id: string): Promise<boolean> {
    const a = this.vms.get(id);
    if (!a) return false;
    const actions = this.core.end(id);
    const errors: DecisionRecord['errors'] = [];
    await this.apply(actions, errors);
    // A tick may have released it meanwhile (it saw the VM ended): then it is restored unless orphaned.
    if (!this.vms.has(id)) return !this.orphans.some((e) => e.id === id);
    return this.release(id, 'detached');
  }

  /**
   * Stops the loop and restores every VM (idempotent). VMs that could not be restored stay in the
   * state file for the next governor's reconcile().
   */
  stop(): Promise<StopReport> {
    this.stopped ??= this.doStop();
    return this.stopped;
  }

  private async doStop(): Promise<StopReport> {
    this.stopping = true;
    this.abort.abort();
    this.wake?.();
    await this.loop;
    await Promise.all(this.drops);
    const report: StopReport = { restored: [], failed: [] };
    const errors: DecisionRecord['errors'] = [];
    const ids = [...this.vms.keys()];
    const actions = ids.flatMap((id) => this.core.end(id));
    await this.apply(actions, errors);
    for (const id of ids) {
      if (this.vms.has(id) && (await this.release(id, 'governor stopped'))) report.restored.push(id);
      else report.failed.push({ id, error: errors.find((e) => e.id === id)?.message ?? 'not restored' });
    }
    // Entries handed over for adoption whose VM was never attached: restored through a fresh connection.
    for (const e of [...this.adoptable.values()]) {
      const outcome = await this.restoreAfterDisconnect(e);
      if (outcome === true) {
        this.orphans = this.orphans.filter((o) => o !== e);
        report.restored.push(e.id);
      } else report.failed.push({ id: e.id, error: outcome });
    }
    this.adoptable.clear();
    await this.saveState();
    await this.decisions.close();
    return report;
  }

  private async run(): Promise<void> {
    let next = performance.now();
    while (!this.stopping) {
      const start = performance.now();
      try {
        await this.tick();
      } catch (err) {
        this.emit('warning', { stage: 'tick', message: (err as Error).message });
      }
      const end = performance.now();
      next += this.intervalMs;
      if (end > next) {
        this.counters.overruns++;
        next = end;
      }
      this.wallMs[(this.counters.ticks - 1 + RING) % RING] = end - start;
      if (this.stopping) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, next - performance.now());
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private async tick(): Promise<void> {
    const errors: DecisionRecord['errors'] = [];
    const telemetry = new Map<string, VmTelemetry>();
    const opts = { timeoutMs: this.queryTimeoutMs, signal: this.abort.signal };
    await Promise.all(
      this.core.ids().map(async (id) => {
        const a = this.vms.get(id);
        if (!a) return;
        try {
          if (a.m.refresh) await a.m.refresh(this.abort.signal);
          const [stats, nodes] = await Promise.all([queryBlockstats(a.m.qmp, {}, opts), queryNamedBlockNodes(a.m.qmp, opts)]);
          const dev = stats.find((s) => s.qdev === a.qomPath)?.stats;
          const node = nodes.find((n) => n['node-name'] === a.m.overlayNode);
          telemetry.set(id, {
            tMs: performance.now(),
            wrBytes: typeof dev?.wr_bytes === 'number' ? dev.wr_bytes : null,
            ...(typeof dev?.wr_operations === 'number' ? { wrOps: dev.wr_operations } : {}),
            overlayBytes: node ? (node.image?.['actual-size'] ?? null) : 0,
            progress: a.m.describe(),
          });
        } catch (err) {
          if (this.stopping) return;
          if (err instanceof QmpDisconnectedError) {
            this.dropLater(id, `QMP connection lost: ${err.message}`);
            return;
          }
          this.counters.telemetryErrors++;
          errors.push({ id, stage: 'telemetry', message: (err as Error).message });
          // The phase still counts: a migration that ended must be restored even if a query failed.
          try {
            telemetry.set(id, { tMs: performance.now(), wrBytes: null, overlayBytes: null, progress: a.m.describe() });
          } catch {
            // describe() must not throw; if it does, this VM simply has no reading this tick
          }
        }
      }),
    );
    if (this.stopping) return;
    const t0 = performance.now();
    let result: TickResult;
    try {
      result = this.core.tick(t0, telemetry);
    } catch (err) {
      // The policy failed: no new decision, but migrations that ended are still restored.
      this.emit('warning', { stage: 'policy', message: (err as Error).message });
      const ended = this.core.endedIds();
      await this.apply(
        ended.flatMap((id) => this.core.planRestore(id)),
        errors,
      );
      for (const id of ended) if (this.core.planRestore(id).length === 0) await this.release(id, 'migration ended');
      for (const e of errors) this.emit('warning', e);
      return;
    }
    const tickUs = (performance.now() - t0) * 1000;
    this.tickUs[this.counters.ticks % RING] = tickUs;
    this.counters.ticks++;
    if (result.actions.length > 0) await this.apply(result.actions, errors);
    for (const id of result.ended) {
      if (this.core.planRestore(id).length === 0) await this.release(id, `migration ${this.vms.get(id)?.m.describe().phase ?? 'ended'}`);
    }
    if (this.stateDirty) await this.saveState();
    const record: DecisionRecord = {
      seq: this.seq++,
      atMs: Date.now(),
      tickUs,
      inputs: result.inputs,
      world: result.world,
      decision: result.decision,
      actions: result.actions,
      ended: result.ended,
      errors,
    };
    this.decisions.add(record);
    for (const e of errors) this.emit('warning', e);
    this.emit('tick', record);
  }

  /**
   * Saves the intent, then sends the actions: per VM in order on that VM's chain (so a restore
   * can never be overtaken by a policy change planned before it), VMs concurrently.
   */
  private async apply(actions: readonly GovernorAction[], errors: DecisionRecord['errors']): Promise<void> {
    if (actions.length === 0) return;
    let intentChanged = false;
    for (const a of actions) {
      const entry = this.vms.get(a.id)?.entry;
      if (!entry || a.why !== 'policy') continue;
      if (a.kind === 'set-throttle') entry.applied.limits = a.limits;
      else entry.applied.maxBandwidthBytesPerSec = a.bytesPerSec;
      intentChanged = true;
    }
    let noUndoOnDisk = false;
    if (intentChanged) {
      try {
        await this.saveState();
      } catch (err) {
        // No undo on disk: send no new change (a crash now would leave it behind); restores still go.
        noUndoOnDisk = true;
        errors.push({ stage: 'state-file', message: (err as Error).message });
      }
    }
    const byVm = new Map<string, GovernorAction[]>();
    for (const a of actions) byVm.set(a.id, [...(byVm.get(a.id) ?? []), a]);
    await Promise.all([...byVm].map(([id, list]) => this.onChain(id, () => this.send(id, list, noUndoOnDisk, errors))));
  }

  private onChain(id: string, fn: () => Promise<void>): Promise<void> {
    const att = this.vms.get(id);
    if (!att) return Promise.resolve();
    const next = att.chain.then(fn);
    att.chain = next.catch(() => {});
    return next;
  }

  private async send(id: string, list: readonly GovernorAction[], skipPolicy: boolean, errors: DecisionRecord['errors']): Promise<void> {
    const att = this.vms.get(id);
    if (!att) return;
    for (const a of list) {
      // A VM that ended since this was planned only gets its restore.
      if (a.why === 'policy' && (skipPolicy || this.core.isEnded(id))) continue;
      try {
        const opts = { timeoutMs: this.queryTimeoutMs };
        if (a.kind === 'set-throttle') await blockSetIoThrottle(att.m.qmp, throttleArgs(att.qomPath, a.limits, a.why === 'restore'), opts);
        else await migrateSetParameters(att.m.qmp, { 'max-bandwidth': a.bytesPerSec }, opts);
        this.counters.actionsSent++;
        this.core.confirm(a);
        if (a.why === 'restore') {
          if (a.kind === 'set-throttle') att.entry.applied.limits = null;
          else att.entry.applied.maxBandwidthBytesPerSec = null;
          this.stateDirty = true;
        }
      } catch (err) {
        this.counters.actionsFailed++;
        errors.push({ id, stage: a.kind, message: (err as Error).message });
        if (err instanceof QmpDisconnectedError) this.dropLater(id, `QMP connection lost: ${err.message}`);
        return;
      }
    }
  }

  /** Forgets a VM whose restore is done (or not needed); returns true when nothing of ours is left on it. */
  private async release(id: string, reason: string): Promise<boolean> {
    const a = this.vms.get(id);
    if (!a) return false;
    const restored = this.core.planRestore(id).length === 0;
    a.m.qmp.off('disconnect', a.onDisconnect);
    this.vms.delete(id);
    this.core.remove(id);
    if (!restored) this.orphans.push(a.entry);
    this.stateDirty = true;
    if (!this.stopping) await this.saveState();
    this.emit('released', { id, reason, restored });
    return restored;
  }

  private dropLater(id: string, reason: string): void {
    const p = this.drop(id, reason).finally(() => this.drops.delete(p));
    this.drops.add(p);
  }

  /**
   * The VM's QMP connection ended. If QEMU is gone there is nothing to restore; if only the
   * shared client went away, a fresh connection restores the originals; if the monitor is busy
   * (another client), the entry stays in the state file for reconcile().
   */
  private async drop(id: string, reason: string): Promise<void> {
    const a = this.vms.get(id);
    if (!a) return;
    a.m.qmp.off('disconnect', a.onDisconnect);
    this.vms.delete(id);
    const changed = this.core.planRestore(id).length > 0;
    this.core.remove(id);
    this.counters.dropped++;
    let restored = !changed;
    if (changed) {
      const outcome = await this.restoreAfterDisconnect(a.entry);
      restored = outcome === true;
      if (!restored) {
        this.orphans.push(a.entry);
        this.emit('warning', { id, stage: 'drop', message: `could not restore after the connection ended: ${String(outcome)}` });
      }
    }
    this.stateDirty = true;
    if (!this.stopping) await this.saveState().catch((err: Error) => this.emit('warning', { id, stage: 'state-file', message: err.message }));
    this.emit('released', { id, reason, restored });
  }

  /**
   * Tries a fresh connection to a VM whose client disconnected: true when its originals are back
   * or QEMU is gone (socket missing or refusing), else the reason. A dying QEMU may still accept
   * and then close before its greeting: that is retried for a second.
   */
  private async restoreAfterDisconnect(entry: StateEntry): Promise<true | string> {
    const deadline = performance.now() + 1500;
    for (;;) {
      let c: QmpClient | undefined;
      try {
        c = await QmpClient.connect(entry.monitorPath, { timeoutMs: 1000, commandTimeoutMs: 2000 });
        // 'gone' (the device was removed) leaves nothing of ours behind either.
        return (await restoreEntry(c, entry)) !== 'modified' ? true : 'limits changed by someone else since';
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'ENOENT' || code === 'ECONNREFUSED') return true;
        // A monitor that accepts but never greets is held by another client: leave it to reconcile().
        if (err instanceof QmpTimeoutError || performance.now() > deadline) return (err as Error).message;
        await new Promise((r) => setTimeout(r, 100));
      } finally {
        await c?.close();
      }
    }
  }

  private async saveState(): Promise<void> {
    if (!this.state) return;
    this.stateDirty = false;
    const entries = [...[...this.vms.values()].map((a) => a.entry), ...this.orphans];
    if (entries.length === 0) await this.state.clear();
    else await this.state.save(entries);
  }
}
