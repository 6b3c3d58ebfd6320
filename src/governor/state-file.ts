/**
 * Crash safety: what the governor changed, on disk, before it changes it.
 *
 * The state file (JSON, mode 0600) lists, for every VM the governor has touched, how to reach it
 * again (monitor socket path, device QOM path) and what to put back (the device's original
 * limits, the original max-bandwidth), plus what the governor applied or is about to apply.
 * It is replaced atomically — written to a temporary file in the same directory (O_EXCL, 0600),
 * fsync'ed, renamed over the old one, then the directory fsync'ed — so after a crash at any
 * instant the file is either the old or the new complete version, never a torn one. The governor
 * writes it BEFORE sending any change, so a change on a VM always has its undo on disk.
 *
 * reconcile() is what a governor runs on start: it reconnects to every recorded monitor, puts the
 * originals back on VMs that still exist, and clears the file. It leaves a VM alone when its
 * current limits are not a setting this governor could have made (someone changed them since),
 * and keeps the entry of a VM it could not reach (its monitor busy) for the next attempt.
 * A governor restarted to govern the same VMs again asks reconcile() to hand their entries over
 * (`adopt`) instead: restoring first would leave the guest unthrottled, its overlay growing into
 * Ω at full speed, until the new governor's first decision (measured on a real migration:
 * ~0.2 s and +1.1 MiB of overlay at 4 MiB/s).
 */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { QmpClient, QmpConnectError, type QmpExecutor } from '../qmp/client';
import { blockSetIoThrottle, migrateSetParameters, queryBlock, queryMigrateParameters } from '../qmp/commands';
import { checkLimits, looksGoverned, readLimits, throttleArgs } from './throttle';
import type { ThrottleLimits } from './types';

/** One VM's undo record. */
export interface StateEntry {
  id: string;
  /** QMP monitor socket of the VM. */
  monitorPath: string;
  /** QOM path of the throttled device (block_set_io_throttle `id`). */
  deviceQomPath: string;
  /** The device's limits before the governor touched it. */
  originalLimits: ThrottleLimits;
  /** max-bandwidth before the governor touched it, bytes/s. */
  originalMaxBandwidthBytesPerSec: number;
  /** What the governor applied or is about to apply (null: left as it was). */
  applied: { limits: ThrottleLimits | null; maxBandwidthBytesPerSec: number | null };
}

export interface GovernorState {
  version: 1;
  /** The governor process that wrote it. */
  pid: number;
  /** Wall-clock time of the write, ms since the epoch. */
  updatedAtMs: number;
  entries: StateEntry[];
}

/** Writes `text` to `path` atomically with mode 0600 (see the module comment). */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  await rm(tmp, { force: true });
  // 'wx' = O_CREAT|O_EXCL (never follows a planted symlink); Node adds O_CLOEXEC.
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.chmod(0o600); // whatever the umask
    await fh.writeFile(text);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function str(name: string, v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new TypeError(`${name}: must be a non-empty string`);
  return v;
}

function bytes(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new TypeError(`${name}: must be an integer ≥ 0`);
  return v;
}

/** Validates a parsed state document; throws TypeError naming the first bad field. */
export function parseState(doc: unknown, where = 'state'): GovernorState {
  if (typeof doc !== 'object' || doc === null) throw new TypeError(`${where}: must be a JSON object`);
  const d = doc as Record<string, unknown>;
  if (d.version !== 1) throw new TypeError(`${where}.version: must be 1 (got ${JSON.stringify(d.version)})`);
  if (!Array.isArray(d.entries)) throw new TypeError(`${where}.entries: must be an array`);
  const entries = d.entries.map((e: unknown, i: number): StateEntry => {
    const at = `${where}.entries[${i}]`;
    if (typeof e !== 'object' || e === null) throw new TypeError(`${at}: must be an object`);
    const o = e as Record<string, unknown>;
    const applied = o.applied as Record<string, unknown> | undefined;
    if (typeof applied !== 'object' || applied === null) throw new TypeError(`${at}.applied: must be an object`);
    return {
      id: str(`${at}.id`, o.id),
      monitorPath: str(`${at}.monitorPath`, o.monitorPath),
      deviceQomPath: str(`${at}.deviceQomPath`, o.deviceQomPath),
      originalLimits: checkLimits(`${at}.originalLimits`, o.originalLimits),
      originalMaxBandwidthBytesPerSec: bytes(`${at}.originalMaxBandwidthBytesPerSec`, o.originalMaxBandwidthBytesPerSec),
      applied: {
        limits: applied.limits === null ? null : checkLimits(`${at}.applied.limits`, applied.limits),
        maxBandwidthBytesPerSec: applied.maxBandwidthBytesPerSec === null ? null : bytes(`${at}.applied.maxBandwidthBytesPerSec`, applied.maxBandwidthBytesPerSec),
      },
    };
  });
  return { version: 1, pid: typeof d.pid === 'number' ? d.pid : 0, updatedAtMs: typeof d.updatedAtMs === 'number' ? d.updatedAtMs : 0, entries };
}

/** Reads a state file; null when there is none. Throws TypeError (naming the field) for a corrupt one. */
export async function readStateFile(path: string): Promise<GovernorState | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new TypeError(`${path}: not valid JSON (${(err as Error).message})`);
  }
  return parseState(doc, path);
}

/**
 * The governor's state file. save() and clear() are serialized in call order, so a slow write
 * can never land after a newer one.
 */
export class StateFile {
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly path: string) {
    if (typeof path !== 'string' || path === '') throw new TypeError('stateFile: must be a non-empty path');
  }

  /** Replaces the file with these entries (atomically, 0600). */
  save(entries: readonly StateEntry[]): Promise<void> {
    const text = JSON.stringify({ version: 1, pid: process.pid, updatedAtMs: Date.now(), entries: [...entries] } satisfies GovernorState, null, 1) + '\n';
    return this.enqueue(() => writeFileAtomic(this.path, text));
  }

  /** Removes the file (nothing left to undo). */
  clear(): Promise<void> {
    return this.enqueue(async () => {
      await rm(this.path, { force: true });
      await syncDir(dirname(this.path));
    });
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const next = this.chain.then(fn);
    this.chain = next.catch(() => {});
    return next;
  }
}

export interface ReconcileOptions {
  /**
   * Connected clients by monitor socket path, used instead of opening a connection (a monitor
   * serves one client at a time, so pass the ones this process already holds).
   */
  clients?: ReadonlyMap<string, QmpExecutor>;
  /** Connect + greeting deadline per monitor, ms (1..60000, default 2000). */
  connectTimeoutMs?: number;
  /**
   * Monitor socket paths of VMs the caller governs again right away: their entries are not
   * restored but returned in `adopted` (and kept in the file, so the undo stays on disk until
   * the new governor records them itself).
   */
  adopt?: ReadonlySet<string>;
}

export interface ReconcileReport {
  /** Entries found in the file. */
  entries: number;
  /** VMs whose original limits (and max-bandwidth) are back. */
  restored: string[];
  /** VMs that no longer exist (monitor socket gone or refusing, or the device gone). */
  gone: string[];
  /** VMs whose limits were changed by someone else since: left alone. */
  modified: string[];
  /** VMs that could not be reached or restored: kept in the file. */
  failed: Array<{ id: string; error: string }>;
  /** With options.adopt: the entries handed over to the caller, not restored (kept in the file). */
  adopted?: StateEntry[];
}

function isGone(err: unknown): boolean {
  return err instanceof QmpConnectError && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED');
}

/** Puts one entry's originals back through `q`. */
export async function restoreEntry(q: QmpExecutor, e: StateEntry): Promise<'restored' | 'gone' | 'modified'> {
  const dev = (await queryBlock(q)).find((b) => b.qdev === e.deviceQomPath);
  if (!dev?.inserted) return 'gone';
  let modified = false;
  if (e.applied.limits !== null) {
    const current = readLimits(dev.inserted);
    if (looksGoverned(e.originalLimits, current)) await blockSetIoThrottle(q, throttleArgs(e.deviceQomPath, e.originalLimits, true));
    else modified = true;
  }
  // max-bandwidth has no structure to recognise our settings by; LXD never sets it, so a value
  // other than the original is taken as ours.
  if (e.applied.maxBandwidthBytesPerSec !== null) {
    const now = (await queryMigrateParameters(q))['max-bandwidth'];
    if (now !== e.originalMaxBandwidthBytesPerSec) await migrateSetParameters(q, { 'max-bandwidth': e.originalMaxBandwidthBytesPerSec });
  }
  return modified ? 'modified' : 'restored';
}

/**
 * Restores what a previous governor (crashed or killed) left applied, per the state file at
 * `path`, then removes the file (or rewrites it with the entries that could not be handled).
 * A missing file is an empty report.
 */
export async function reconcile(path: string, options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const timeoutMs = options.connectTimeoutMs ?? 2000;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 60_000) throw new RangeError(`connectTimeoutMs: must be an integer from 1 to 60000 (got ${String(timeoutMs)})`);
  const report: ReconcileReport = { entries: 0, restored: [], gone: [], modified: [], failed: [] };
  const adopted: StateEntry[] = [];
  if (options.adopt) report.adopted = adopted;
  const state = await readStateFile(path);
  if (!state) return report;
  report.entries = state.entries.length;
  const keep: StateEntry[] = [];
  for (const e of state.entries) if (options.adopt?.has(e.monitorPath)) adopted.push(e);
  await Promise.all(
    state.entries.filter((e) => !adopted.includes(e)).map(async (e) => {
      let own: QmpClient | undefined;
      try {
        let q = options.clients?.get(e.monitorPath);
        if (!q) {
          try {
            q = own = await QmpClient.connect(e.monitorPath, { timeoutMs, commandTimeoutMs: Math.max(1000, timeoutMs) });
          } catch (err) {
            if (isGone(err)) {
              report.gone.push(e.id);
              return;
            }
            throw err;
          }
        }
        const outcome = await restoreEntry(q, e);
        report[outcome].push(e.id);
      } catch (err) {
        report.failed.push({ id: e.id, error: (err as Error).message });
        keep.push(e);
      } finally {
        await own?.close();
      }
    }),
  );
  const file = new StateFile(path);
  keep.push(...adopted);
  if (keep.length > 0) await file.save(keep);
  else await file.clear();
  return report;
}
