/**
 * Starts real QEMU processes for tests and benchmarks, and makes sure every one is killed: by the
 * test's own teardown (`t.after`), and, as a last resort, when this process exits (also after a
 * failed assertion or an uncaught exception).
 *
 * Each instance gets a private 0700 directory; its QMP socket is chmod'ed to 0600 as soon as QEMU
 * creates it (QEMU creates it with the process umask).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface QemuOptions {
  /** 'none' (default): no guest at all, the cheapest QMP endpoint. 'q35': a PC under TCG. */
  machine?: 'none' | 'q35';
  /** Guest RAM, MiB (q35 only; default 64). */
  memMib?: number;
  /** Create a qcow2 of this many MiB and attach it: file node 'root-file', qcow2 node 'root', virtio-blk device 'vd0' (q35 only). */
  diskMib?: number;
  /** Reuse this directory (e.g. to restart QEMU on the same socket path). Default: a new 0700 temp dir. */
  dir?: string;
  /** Socket file name inside dir (default 'qmp.sock'). */
  socketName?: string;
  extraArgs?: string[];
}

export interface QemuInstance {
  readonly pid: number;
  readonly dir: string;
  readonly socketPath: string;
  /** The qcow2 path when diskMib was given. */
  readonly diskPath: string | undefined;
  readonly child: ChildProcess;
  /** QEMU's stderr so far. */
  stderr(): string;
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `signal` (default SIGKILL) and waits for the exit. Idempotent. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const live = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
    for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
}

/** A new private (0700) temporary directory, removed when this process exits. */
export function makeTempDir(prefix = 'dpa-qmp-'): string {
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** Removes a directory made by makeTempDir now. */
export function removeTempDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True when a connection to `path` is accepted (it is closed at once; QEMU just drops that client). */
function probe(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ path });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** Starts QEMU and waits until its QMP socket exists (mode 0600). */
export async function startQemu(opts: QemuOptions = {}): Promise<QemuInstance> {
  installExitHook();
  const machine = opts.machine ?? 'none';
  const dir = opts.dir ?? makeTempDir();
  const socketPath = join(dir, opts.socketName ?? 'qmp.sock');
  const args = ['-nodefaults', '-display', 'none', '-no-user-config', '-qmp', `unix:${socketPath},server=on,wait=off`];
  let diskPath: string | undefined;
  if (machine === 'none') args.unshift('-machine', 'none');
  else {
    args.unshift('-machine', 'q35', '-accel', 'tcg', '-m', String(opts.memMib ?? 64));
    if (opts.diskMib !== undefined) {
      diskPath = join(dir, 'disk.qcow2');
      await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', diskPath, `${opts.diskMib}M`]);
      args.push(
        '-blockdev', `driver=file,filename=${diskPath},node-name=root-file`,
        '-blockdev', 'driver=qcow2,file=root-file,node-name=root',
        '-device', 'virtio-blk-pci,drive=root,id=vd0',
      );
    }
  }
  if (opts.extraArgs) args.push(...opts.extraArgs);
  // A stale socket of an earlier QEMU on the same path would look ready; QEMU replaces it anyway.
  rmSync(socketPath, { force: true });
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(child);
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => {
    if (err.length < 65536) err += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
  });
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const instance: QemuInstance = {
    pid: child.pid ?? -1,
    dir,
    socketPath,
    diskPath,
    child,
    stderr: () => err,
    exited,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  let gone: string | undefined;
  void exited.then((e) => (gone = `QEMU exited early (code ${e.code}, signal ${e.signal}): ${err}`));
  void spawnError.then((e) => (gone = `cannot start QEMU: ${e.message}`));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (gone) throw new Error(gone);
    try {
      const st = statSync(socketPath);
      // QEMU binds (the file appears) before it listens: only a successful connect means ready.
      if (st.isSocket() && (await probe(socketPath))) {
        chmodSync(socketPath, 0o600);
        break;
      }
    } catch {
      /* not there yet */
    }
    if (Date.now() > deadline) {
      await instance.kill();
      throw new Error(`QEMU did not create ${socketPath} within 15 s: ${err}`);
    }
    await sleep(10);
  }
  return instance;
}

/** startQemu, killed (and its directory removed) when test `t` ends, pass or fail. */
export async function startQemuFor(t: { after(fn: () => unknown): void }, opts: QemuOptions = {}): Promise<QemuInstance> {
  const q = await startQemu(opts);
  t.after(async () => {
    await q.kill();
    if (!opts.dir) removeTempDir(q.dir);
  });
  return q;
}
