/**
 * Ω in the lab: the shared overlay buffer of the paper, made real as a fixed-size filesystem in
 * which migration overlays (qcow2) live. When the overlays outgrow it, writes fail with a real
 * ENOSPC from the kernel, which is exactly the failure the governor must prevent.
 *
 * Two kinds:
 * - 'tmpfs' (default): `mount -t tmpfs -o size=<bytes>,mode=0700`. Capacity is exactly sizeBytes
 *   (rounded up to whole pages); RAM-backed, so it costs no disk and no disk I/O.
 * - 'loop': an ext4 image of sizeBytes, preallocated with fallocate (so the filesystem under it
 *   can never run out first), loop-mounted. Real block-filesystem behaviour (metadata, journal,
 *   delayed allocation); usable capacity is ~15-20% below sizeBytes for small images.
 *
 * Mount points are private directories `<dir>/dpa-omega-<pid>-XXXXXX` (mode 0700), the image is
 * next to it as `….img` (mode 0600). The pid in the name lets reapStaleOmega() find leftovers of
 * crashed runs; Ω is also unmounted and removed when this process exits.
 */
import { promises as fsp, rmdirSync, rmSync, statfsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ExecError, pidAlive, registerExitCleanup, run, runSync } from './exec';

export type OmegaKind = 'tmpfs' | 'loop';

export const OMEGA_MIN_BYTES: Record<OmegaKind, number> = { tmpfs: 1024 * 1024, loop: 8 * 1024 * 1024 };
/** Upper bound of sizeBytes: 1 TiB. */
export const OMEGA_MAX_BYTES = 2 ** 40;

export interface OmegaOptions {
  /** Capacity, bytes: tmpfs 1 MiB..1 TiB, loop 8 MiB..1 TiB (integer). */
  sizeBytes: number;
  /** Existing absolute directory that receives the private mount point; default os.tmpdir(). */
  dir?: string;
  /** 'tmpfs' (default) or 'loop' (ext4 image). */
  kind?: OmegaKind;
}

export interface Omega {
  /** The mount point: put overlays here. */
  readonly path: string;
  readonly kind: OmegaKind;
  /** Requested size, bytes. */
  readonly sizeBytes: number;
  /** Backing image of a 'loop' Ω, else null. */
  readonly imagePath: string | null;
  readonly destroyed: boolean;
  /** Bytes in use per statfs (blocks − free blocks), including filesystem metadata. */
  usedBytes(): Promise<number>;
  /** Bytes still writable by this process per statfs (available blocks). */
  freeBytes(): Promise<number>;
  /** Total data capacity per statfs, bytes (≤ sizeBytes for 'loop'). */
  capacityBytes(): Promise<number>;
  /** Unmounts (lazily when still busy) and removes mount point and image. Idempotent. */
  destroy(): Promise<void>;
}

const NAME_PREFIX = 'dpa-omega-';
const NAME_RE = /^dpa-omega-(\d{1,7})-[A-Za-z0-9]{6}(\.img)?$/;
const CMD_TIMEOUT_MS = 60_000;

function checkOptions(opts: OmegaOptions): { sizeBytes: number; dir: string; kind: OmegaKind } {
  if (typeof opts !== 'object' || opts === null) throw new TypeError('createOmega: options must be an object');
  const kind = opts.kind ?? 'tmpfs';
  if (kind !== 'tmpfs' && kind !== 'loop') throw new TypeError(`kind: must be 'tmpfs' or 'loop' (got ${JSON.stringify(kind)})`);
  const min = OMEGA_MIN_BYTES[kind];
  const { sizeBytes } = opts;
  if (typeof sizeBytes !== 'number' || !Number.isInteger(sizeBytes) || sizeBytes < min || sizeBytes > OMEGA_MAX_BYTES) {
    throw new RangeError(`sizeBytes: must be an integer from ${min} to ${OMEGA_MAX_BYTES} bytes for kind '${kind}' (got ${String(sizeBytes)})`);
  }
  const dir = opts.dir ?? os.tmpdir();
  if (typeof dir !== 'string' || !path.isAbsolute(dir) || dir.includes('\0')) {
    throw new TypeError(`dir: must be an absolute directory path (got ${JSON.stringify(dir)})`);
  }
  return { sizeBytes, dir: path.resolve(dir), kind };
}

/** Decodes the octal escapes (\040 for space …) of /proc/mounts fields. */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points currently listed in /proc/mounts (this mount namespace). */
export async function mountPoints(): Promise<Array<{ source: string; target: string; fstype: string; options: string }>> {
  const text = await fsp.readFile('/proc/mounts', 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [source = '', target = '', fstype = '', options = ''] = line.split(' ');
      return { source: unescapeMountField(source), target: unescapeMountField(target), fstype, options };
    });
}

function isNotMounted(err: unknown): boolean {
  return err instanceof ExecError && /not mounted|no mount point specified|No such file or directory/i.test(err.stderr);
}

function isBusy(err: unknown): boolean {
  return err instanceof ExecError && /busy/i.test(err.stderr);
}

/** Unmount; a busy Ω (a process still holds an overlay open) is detached lazily instead. */
async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target], { timeoutMs: CMD_TIMEOUT_MS });
  } catch (err) {
    if (isNotMounted(err)) return;
    if (!isBusy(err)) throw err;
    await run('umount', ['-l', target], { timeoutMs: CMD_TIMEOUT_MS });
  }
}

function unmountSync(target: string): void {
  try {
    runSync('umount', [target], { timeoutMs: CMD_TIMEOUT_MS });
  } catch (err) {
    if (isNotMounted(err)) return;
    if (!isBusy(err)) throw err;
    runSync('umount', ['-l', target], { timeoutMs: CMD_TIMEOUT_MS });
  }
}

class LabOmega implements Omega {
  destroyed = false;
  private destroying: Promise<void> | null = null;
  private unregisterExit: (() => void) | null;

  constructor(
    readonly path: string,
    readonly kind: OmegaKind,
    readonly sizeBytes: number,
    readonly imagePath: string | null,
  ) {
    this.unregisterExit = registerExitCleanup(() => this.destroySync());
  }

  private async statfs(): Promise<{ bsize: number; blocks: number; bfree: number; bavail: number }> {
    if (this.destroyed) throw new Error(`Ω ${this.path} was destroyed`);
    const s = await fsp.statfs(this.path);
    return { bsize: Number(s.bsize), blocks: Number(s.blocks), bfree: Number(s.bfree), bavail: Number(s.bavail) };
  }

  async usedBytes(): Promise<number> {
    const s = await this.statfs();
    return (s.blocks - s.bfree) * s.bsize;
  }

  async freeBytes(): Promise<number> {
    const s = await this.statfs();
    return s.bavail * s.bsize;
  }

  async capacityBytes(): Promise<number> {
    const s = await this.statfs();
    return s.blocks * s.bsize;
  }

  destroy(): Promise<void> {
    if (!this.destroying) this.destroying = this.destroyAsync();
    return this.destroying;
  }

  private async destroyAsync(): Promise<void> {
    await unmount(this.path);
    await fsp.rmdir(this.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    if (this.imagePath) await fsp.rm(this.imagePath, { force: true });
    this.finish();
  }

  destroySync(): void {
    if (this.destroyed) return;
    unmountSync(this.path);
    try {
      rmdirSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (this.imagePath) rmSync(this.imagePath, { force: true });
    this.finish();
  }

  private finish(): void {
    this.destroyed = true;
    this.unregisterExit?.();
    this.unregisterExit = null;
  }

  toJSON(): Record<string, unknown> {
    return { path: this.path, kind: this.kind, sizeBytes: this.sizeBytes, imagePath: this.imagePath };
  }
}

/**
 * Polls Ω's free space every `intervalMs` (default 100) until stop(), which resolves to the least
 * seen, bytes (Infinity if no reading succeeded): how close a run came to an overflow.
 */
export function watchLeastFree(omega: Pick<Omega, 'freeBytes'>, intervalMs = 100): { stop(): Promise<number> } {
  let min = Infinity;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      min = Math.min(min, await omega.freeBytes().catch(() => Infinity));
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return min;
    },
  };
}

/**
 * Mounts a fresh Ω of `sizeBytes`. First removes leftovers of crashed runs (reapStaleOmega on
 * `dir`). Needs root (mount). The Ω is destroyed when this process exits if not before.
 */
export async function createOmega(options: OmegaOptions): Promise<Omega> {
  const o = checkOptions(options);
  const st = await fsp.stat(o.dir).catch((err: NodeJS.ErrnoException) => {
    throw new TypeError(`dir: ${o.dir} is not usable (${err.code})`);
  });
  if (!st.isDirectory()) throw new TypeError(`dir: ${o.dir} is not a directory`);
  await reapStaleOmega(o.dir).catch(() => undefined);
  if (o.kind === 'loop') {
    const s = statfsSync(o.dir);
    const avail = Number(s.bavail) * Number(s.bsize);
    if (avail < o.sizeBytes) throw new RangeError(`sizeBytes: ${o.sizeBytes} bytes do not fit in ${o.dir} (${avail} bytes free) for a loop image`);
  }

  // mkdtemp makes the directory 0700 and unpredictable; the mount's own mode=0700 keeps it so.
  const mountDir = await fsp.mkdtemp(path.join(o.dir, `${NAME_PREFIX}${process.pid}-`));
  const imagePath = o.kind === 'loop' ? `${mountDir}.img` : null;
  const omega = new LabOmega(mountDir, o.kind, o.sizeBytes, imagePath);
  try {
    if (o.kind === 'tmpfs') {
      await run('mount', ['-t', 'tmpfs', '-o', `size=${o.sizeBytes},mode=0700,nosuid,nodev`, `dpa-omega`, mountDir], { timeoutMs: CMD_TIMEOUT_MS });
    } else {
      const fh = await fsp.open(imagePath!, 'wx', 0o600);
      await fh.close();
      await run('fallocate', ['-l', String(o.sizeBytes), imagePath!], { timeoutMs: CMD_TIMEOUT_MS });
      // -m 0: no root-reserved blocks (we run as root, so they would silently enlarge Ω).
      await run('mkfs.ext4', ['-F', '-q', '-m', '0', '-E', 'nodiscard', '-L', 'dpa-omega', imagePath!], { timeoutMs: CMD_TIMEOUT_MS });
      // `-o loop` sets autoclear: the loop device goes away with the (last) unmount.
      await run('mount', ['-t', 'ext4', '-o', 'loop,nosuid,nodev', imagePath!, mountDir], { timeoutMs: CMD_TIMEOUT_MS });
      await fsp.chmod(mountDir, 0o700);
    }
    return omega;
  } catch (err) {
    await omega.destroy().catch(() => undefined);
    throw err;
  }
}

export interface OmegaReapReport {
  /** Mount points unmounted. */
  unmounted: string[];
  /** Directories and images removed. */
  removed: string[];
}

/**
 * Removes Ω leftovers of dead processes: any mounted `…/dpa-omega-<pid>-XXXXXX` (wherever it is)
 * and any such directory or image in `dir` whose pid is dead. Live runs are never touched.
 */
export async function reapStaleOmega(dir: string = os.tmpdir()): Promise<OmegaReapReport> {
  if (typeof dir !== 'string' || !path.isAbsolute(dir)) throw new TypeError(`dir: must be an absolute directory path (got ${JSON.stringify(dir)})`);
  const report: OmegaReapReport = { unmounted: [], removed: [] };
  const stale = (name: string): boolean => {
    const m = NAME_RE.exec(name);
    if (!m) return false;
    const pid = Number(m[1]);
    return pid !== process.pid && !pidAlive(pid);
  };
  for (const m of await mountPoints()) {
    if (!path.isAbsolute(m.target) || !stale(path.basename(m.target))) continue;
    await unmount(m.target);
    report.unmounted.push(m.target);
    await fsp.rmdir(m.target).catch(() => undefined);
  }
  let entries: string[] = [];
  try {
    entries = await fsp.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const stillMounted = new Set((await mountPoints()).map((m) => m.target));
  for (const name of entries) {
    if (!stale(name)) continue;
    const full = path.join(dir, name);
    if (stillMounted.has(full)) continue;
    if (name.endsWith('.img')) await fsp.rm(full, { force: true });
    else await fsp.rmdir(full).catch(() => undefined);
    report.removed.push(full);
  }
  return report;
}
