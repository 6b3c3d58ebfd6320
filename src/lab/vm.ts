/**
 * LabVm: one QEMU VM of the lab, booting the dpa guest (guest-image.ts) and driving its workload.
 *
 * Each VM gets a private directory (0700, `<tmp>/dpa-lab-<owner pid>-XXXXXX`) holding its QMP
 * socket, the guest channel socket (both chmod 0600), the serial log, QEMU's pid file and the disk
 * image. RAM is a memfd (guest-ram.ts says how to find it). QEMU runs with `-accel tcg` unless
 * `accel: 'kvm'` is asked for (on our hosts KVM hangs booting Linux under nested virtualisation).
 * Every QEMU is registered with processes.ts, which kills it if this process ends first.
 *
 * Lifecycle: `LabVm.start()` resolves once QMP and the guest channel are connected (QEMU is
 * running, the guest is booting); `await vm.ready()` waits for the workload's ready line;
 * `vm.stop()` quits through QMP and SIGKILLs after a timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { QmpClient } from '../qmp/client';
import { run } from './exec';
import { GuestChannel } from './guest-channel';
import { buildGuestImage, type GuestImage } from './guest-image';
import {
  checkDiskParams,
  checkMemParams,
  checkReportSettings,
  type DiskSummary,
  type DiskWorkloadParams,
  type GpaReport,
  type GuestReadyEvent,
  type MemSummary,
  type MemWorkloadParams,
  type ReportSettings,
  type VerifyResult,
} from './guest-protocol';
import { guestRamInfo, type GuestRamInfo } from './guest-ram';
import { processAlive, trackChild } from './processes';
import { buildQemuArgs } from './qemu-args';

export interface LabDiskOptions {
  /** Disk size, MiB (1..1048576). */
  sizeMib: number;
  /** Image format (default 'raw'; the raw file is sparse). */
  format?: 'raw' | 'qcow2';
  /** Block node name (default 'lxd_root', as LXD names a VM's root disk). */
  nodeName?: string;
  /** virtio-blk device id (default 'root'; QOM path /machine/peripheral/root/virtio-backend). */
  deviceId?: string;
}

export interface LabVmOptions {
  /** Guest kernel + initramfs (default: buildGuestImage()). */
  guest?: GuestImage;
  /** Guest RAM, MiB (96..16384; default 256). The cloud kernel's decompressor triple-faults in 64 MiB. */
  guestMib?: number;
  /**
   * Extra guest RAM, KiB (multiple of 8, 0..1016; default 0). A VM that will be migrated under
   * TCG needs RAM_PAD_KIB_FOR_TCG_MIGRATION (qemu-args.ts says why); source and target must agree.
   */
  ramPadKib?: number;
  /** vCPUs (1..16; default 1). */
  vcpus?: number;
  /** Default 'tcg'. */
  accel?: 'tcg' | 'kvm';
  /** The guest's /dev/vda (default 64 MiB raw); null for none. */
  disk?: LabDiskOptions | null;
  /** Extra kernel parameters, one per element, e.g. 'dpa.mem=mib:16,pattern:zipf'. */
  kernelArgs?: readonly string[];
  /** Appended to QEMU's command line as is (e.g. ['-incoming', 'defer']). */
  extraArgs?: readonly string[];
  /** Default 'qemu-system-x86_64' (looked up in PATH). */
  qemuBinary?: string;
  /** Where the private directory is made (default os.tmpdir()). */
  parentDir?: string;
  /** Limit for QEMU to come up with QMP and the channel connected, ms (1..600000; default 20000). */
  startTimeoutMs?: number;
  /** Keep the private directory after stop() (serial log, disk) for inspection. */
  keepDir?: boolean;
  /** QEMU's -name (default 'dpa-lab'). */
  name?: string;
}

/** How QEMU ended. */
export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const NODE_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
const DIR_PREFIX = 'dpa-lab-';
const STDERR_TAIL_BYTES = 16 * 1024;


/** A lab VM's disk image in `dir` (raw: sparse file; qcow2: qemu-img), mode 0600. */
export async function createDiskImage(
  dir: string,
  d: LabDiskOptions,
): Promise<{ path: string; format: 'raw' | 'qcow2'; nodeName: string; deviceId: string }> {
  const format = d.format ?? 'raw';
  const path = join(dir, `disk.${format}`);
  if (format === 'raw') {
    const fh = await open(path, 'wx', 0o600);
    await fh.truncate(d.sizeMib * 1024 * 1024);
    await fh.close();
  } else {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', path, `${d.sizeMib}M`]);
    await chmod(path, 0o600);
  }
  return { path, format, nodeName: d.nodeName ?? 'lxd_root', deviceId: d.deviceId ?? 'root' };
}

/** A QEMU started by launchQemu, with its monitor and guest channel connected. */
export interface LaunchedQemu {
  proc: ChildProcess;
  /** performance.now() when QEMU was spawned. */
  spawnedAtMs: number;
  exited: Promise<VmExit>;
  /** The end of QEMU's stderr. */
  stderrTail: () => string;
  qmp: QmpClient;
  channel: GuestChannel;
}

/**
 * Spawns a lab QEMU whose sockets are `dir`/qmp.sock and `dir`/channel.sock (what buildQemuArgs
 * names) and resolves once QMP and the guest channel are connected, both sockets then 0600. If
 * QEMU exits first, or `startTimeoutMs` passes, QEMU is killed and the error (with QEMU's stderr)
 * is thrown; the caller owns and removes `dir`. Shared by source VMs and incoming targets.
 */
export async function launchQemu(dir: string, spawnQemu: () => ChildProcess, startTimeoutMs: number): Promise<LaunchedQemu> {
  let child: ChildProcess | undefined;
  // Ends the connect retries when QEMU dies or the launch gives up.
  const abort = new AbortController();
  let connecting: Promise<[QmpClient, GuestChannel]> | undefined;
  try {
    const spawnedAtMs = performance.now();
    const proc = spawnQemu();
    child = proc;
    let stderr = '';
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (s: string) => {
      stderr = (stderr + s).slice(-STDERR_TAIL_BYTES);
    });
    const exited = new Promise<VmExit>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    const spawnFailed = new Promise<never>((_, reject) => proc.once('error', reject));
    spawnFailed.catch(() => abort.abort());
    trackChild(proc, `qemu ${dir}`);
    void exited.then(() => abort.abort());
    const exitedEarly = Promise.race([exited, spawnFailed]).then((e) => {
      throw new Error(`QEMU exited while starting (${e.code !== null ? `status ${e.code}` : `signal ${e.signal}`}): ${stderr.trim() || '(no stderr)'}`);
    });
    exitedEarly.catch(() => {});
    const connect = async (): Promise<[QmpClient, GuestChannel]> => {
      const deadline = Date.now() + startTimeoutMs;
      let qmp: QmpClient | undefined;
      // QEMU creates its sockets while it parses options: retry until they exist.
      for (;;) {
        try {
          qmp = await QmpClient.connect(join(dir, 'qmp.sock'), { timeoutMs: Math.max(1, Math.min(5000, deadline - Date.now())) });
          break;
        } catch (err) {
          if (abort.signal.aborted || Date.now() >= deadline) throw err;
          await delay(20);
        }
      }
      try {
        const channel = await GuestChannel.connect(join(dir, 'channel.sock'), { timeoutMs: Math.max(1, deadline - Date.now()), abort: abort.signal });
        return [qmp, channel];
      } catch (err) {
        await qmp.close();
        throw err;
      }
    };
    connecting = connect();
    const [qmp, channel] = await Promise.race([connecting, exitedEarly]);
    await chmod(join(dir, 'qmp.sock'), 0o600);
    await chmod(join(dir, 'channel.sock'), 0o600);
    return { proc, spawnedAtMs, exited, stderrTail: () => stderr, qmp, channel };
  } catch (err) {
    abort.abort();
    // A connection that completes after the race was lost must not keep the loop alive.
    void connecting?.then(([q, c]) => Promise.all([q.close(), c.close()])).catch(() => {});
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
    }
    throw err;
  }
}

/** RangeError naming `name` unless `v` is undefined or an integer in min..max. */
export function checkInt(name: string, v: unknown, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

function checkOptions(o: LabVmOptions): void {
  checkInt('guestMib', o.guestMib, 96, 16384);
  checkInt('ramPadKib', o.ramPadKib, 0, 1016);
  if (o.ramPadKib !== undefined && o.ramPadKib % 8 !== 0) throw new RangeError(`ramPadKib: must be a multiple of 8 from 0 to 1016 (got ${o.ramPadKib})`);
  checkInt('vcpus', o.vcpus, 1, 16);
  checkInt('startTimeoutMs', o.startTimeoutMs, 1, 600_000);
  if (o.accel !== undefined && o.accel !== 'tcg' && o.accel !== 'kvm') throw new RangeError(`accel: must be tcg or kvm (got ${String(o.accel)})`);
  if (o.disk) {
    checkInt('disk.sizeMib', o.disk.sizeMib, 1, 1_048_576);
    if (o.disk.sizeMib === undefined) throw new RangeError('disk.sizeMib: required, an integer from 1 to 1048576');
    if (o.disk.format !== undefined && o.disk.format !== 'raw' && o.disk.format !== 'qcow2') throw new RangeError(`disk.format: must be raw or qcow2 (got ${String(o.disk.format)})`);
    for (const k of ['nodeName', 'deviceId'] as const) {
      const v = o.disk[k];
      if (v !== undefined && !NODE_NAME_RE.test(v)) throw new RangeError(`disk.${k}: must match ${NODE_NAME_RE} (got ${JSON.stringify(v)})`);
    }
  }
  for (const a of o.kernelArgs ?? []) {
    if (typeof a !== 'string' || a === '' || /[\s"'\\]/.test(a)) throw new TypeError(`kernelArgs: each must be one parameter without whitespace or quotes (got ${JSON.stringify(a)})`);
  }
  for (const a of o.extraArgs ?? []) if (typeof a !== 'string') throw new TypeError('extraArgs: must be strings');
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** What a lab QEMU is started from: the machine (buildQemuArgs) and where its process runs. */
export interface QemuLaunchOptions {
  guest: GuestImage;
  guestMib: number;
  ramPadKib?: number;
  vcpus?: number;
  accel?: 'tcg' | 'kvm';
  kernelArgs?: readonly string[];
  disk: LabDiskOptions | null;
  name?: string;
  qemuBinary?: string;
  parentDir?: string;
  startTimeoutMs?: number;
  keepDir?: boolean;
  extraArgs: readonly string[];
  /** Spawns QEMU (default: child_process.spawn in this network namespace). */
  spawnQemu?: (bin: string, args: string[], opts: { stdio: ['ignore', 'ignore', 'pipe'] }) => ChildProcess;
}

/**
 * A lab QEMU process with its private directory, monitor and guest channel: what a source LabVm
 * and an incoming target share (start, kill, stop, the directory's sockets and logs).
 */
export class QemuProcess {
  /** QEMU's pid. */
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly channel: GuestChannel;
  /** Resolves when QEMU has exited. */
  readonly exited: Promise<VmExit>;
  protected readonly child: ChildProcess;
  protected readonly spawnedAtMs: number;
  private readonly stderrTail: () => string;
  private exitInfo: VmExit | undefined;
  private stopping: Promise<VmExit> | undefined;

  protected constructor(
    launched: LaunchedQemu,
    /** The private directory (0700). */
    readonly dir: string,
    /** The disk image, or null. */
    readonly diskPath: string | null,
    private readonly keepDir: boolean,
  ) {
    this.child = launched.proc;
    this.pid = launched.proc.pid!;
    this.qmp = launched.qmp;
    this.channel = launched.channel;
    this.exited = launched.exited;
    this.spawnedAtMs = launched.spawnedAtMs;
    this.stderrTail = launched.stderrTail;
    void this.exited.then((e) => {
      this.exitInfo = e;
    });
  }

  /**
   * Makes the private directory (mkdtemp: 0700, named so reapOrphanedVms() finds it), the disk
   * image, and launches QEMU; removes the directory if that fails (unless keepDir).
   */
  protected static async launch(o: QemuLaunchOptions): Promise<{ launched: LaunchedQemu; dir: string; diskPath: string | null }> {
    const dir = await mkdtemp(join(o.parentDir ?? tmpdir(), `${DIR_PREFIX}${process.pid}-`));
    try {
      const disk = o.disk ? await createDiskImage(dir, o.disk) : null;
      const args = buildQemuArgs({
        kernelPath: o.guest.kernelPath,
        initrdPath: o.guest.initrdPath,
        kernelArgs: o.kernelArgs ?? [],
        guestMib: o.guestMib,
        ...(o.ramPadKib ? { ramPadKib: o.ramPadKib } : {}),
        vcpus: o.vcpus ?? 1,
        accel: o.accel ?? 'tcg',
        qmpSocketPath: join(dir, 'qmp.sock'),
        channelSocketPath: join(dir, 'channel.sock'),
        serialLogPath: join(dir, 'serial.log'),
        pidFilePath: join(dir, 'qemu.pid'),
        disk,
        name: o.name ?? 'dpa-lab',
        extraArgs: o.extraArgs,
      });
      const bin = o.qemuBinary ?? 'qemu-system-x86_64';
      const spawnQemu = o.spawnQemu ?? spawn;
      const launched = await launchQemu(dir, () => spawnQemu(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] }), o.startTimeoutMs ?? 20_000);
      return { launched, dir, diskPath: disk?.path ?? null };
    } catch (err) {
      if (!o.keepDir) await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  get qmpSocketPath(): string {
    return join(this.dir, 'qmp.sock');
  }
  get channelSocketPath(): string {
    return join(this.dir, 'channel.sock');
  }
  get serialLogPath(): string {
    return join(this.dir, 'serial.log');
  }
  /** True until QEMU exits. */
  get running(): boolean {
    return this.exitInfo === undefined;
  }
  /** The end of QEMU's stderr (why an incoming migration failed, for instance). */
  stderr(): string {
    return this.stderrTail();
  }

  /** Sends `signal` (default SIGKILL) and waits for QEMU to exit: a host dying. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<VmExit> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /**
   * Stops QEMU: `quit` over QMP, then SIGKILL if it has not exited within `timeoutMs`
   * (1..600000; default 5000). Closes the sockets and removes the private directory unless
   * keepDir. Idempotent.
   */
  stop(opts: { timeoutMs?: number } = {}): Promise<VmExit> {
    checkInt('timeoutMs', opts.timeoutMs, 1, 600_000);
    this.stopping ??= this.doStop(opts.timeoutMs ?? 5000);
    return this.stopping;
  }

  private async doStop(timeoutMs: number): Promise<VmExit> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => {
      timer = setTimeout(() => r('timeout'), timeoutMs);
    });
    if (this.running && this.qmp.connected) {
      // QEMU answers, then exits; the connection may drop before the answer arrives. Not awaited:
      // the exit (or the deadline) is what counts.
      void this.qmp.execute('quit', {}, { timeoutMs }).catch(() => {});
    }
    if ((await Promise.race([this.exited, timedOut])) === 'timeout' && this.running) this.child.kill('SIGKILL');
    clearTimeout(timer);
    const exit = await this.exited;
    await Promise.all([this.channel.close(), this.qmp.close()]);
    if (!this.keepDir) await rm(this.dir, { recursive: true, force: true });
    return exit;
  }
}

export class LabVm extends QemuProcess {
  /** Host time from spawning QEMU to the guest's ready line, ms (set by ready()). */
  bootMs: number | undefined;

  private constructor(
    launched: LaunchedQemu,
    dir: string,
    diskPath: string | null,
    keepDir: boolean,
    readonly guestMib: number,
    /** RAM beyond guestMib, KiB (LabVmOptions.ramPadKib). */
    readonly ramPadKib: number,
  ) {
    super(launched, dir, diskPath, keepDir);
  }

  /** Starts QEMU; resolves once QMP and the guest channel are connected (the guest is still booting). */
  static async start(options: LabVmOptions = {}): Promise<LabVm> {
    checkOptions(options);
    const guest = options.guest ?? (await buildGuestImage());
    const guestMib = options.guestMib ?? 256;
    const { launched, dir, diskPath } = await QemuProcess.launch({
      ...options,
      guest,
      guestMib,
      disk: options.disk === undefined ? { sizeMib: 64 } : options.disk,
      extraArgs: options.extraArgs ?? [],
    });
    return new LabVm(launched, dir, diskPath, options.keepDir ?? false, guestMib, options.ramPadKib ?? 0);
  }

  /**
   * Waits for the guest workload's ready line (timeoutMs 1..600000; default 60000). On timeout the
   * error carries the end of the serial log, where the guest kernel says what went wrong.
   */
  async ready(timeoutMs = 60_000): Promise<GuestReadyEvent> {
    checkInt('timeoutMs', timeoutMs, 1, 600_000);
    try {
      const ev = await this.channel.waitReady(timeoutMs);
      this.bootMs ??= performance.now() - this.spawnedAtMs;
      return ev;
    } catch (err) {
      const log = await this.serialLog().catch(() => '');
      throw new Error(`${(err as Error).message}; serial log ends:\n${log.split('\n').slice(-20).join('\n')}${this.stderr() ? `\nQEMU stderr: ${this.stderr()}` : ''}`, { cause: err });
    }
  }

  /** The serial console output so far. */
  serialLog(): Promise<string> {
    return readFile(this.serialLogPath, 'utf8');
  }

  /** Where this VM's RAM is: for the guest-memory scanner and GuestPhysMemory. */
  guestRam(): GuestRamInfo {
    return guestRamInfo(this.pid, this.guestMib * 1024 * 1024 + this.ramPadKib * 1024);
  }

  ping(): Promise<{ uptimeMs: number }> {
    return this.channel.request('ping');
  }

  /** Starts (or restarts with new parameters) the memory workload. */
  async memStart(params: MemWorkloadParams = {}): Promise<MemSummary> {
    checkMemParams(params);
    return (await this.channel.request<{ mem: MemSummary }>('mem-start', { ...params })).mem;
  }

  async memStop(): Promise<MemSummary> {
    return (await this.channel.request<{ mem: MemSummary }>('mem-stop')).mem;
  }

  async diskStart(params: DiskWorkloadParams = {}): Promise<DiskSummary> {
    checkDiskParams(params);
    return (await this.channel.request<{ disk: DiskSummary }>('disk-start', { ...params })).disk;
  }

  async diskStop(): Promise<DiskSummary> {
    return (await this.channel.request<{ disk: DiskSummary }>('disk-stop')).disk;
  }

  /** Guest-side verification of its buffer and/or disk region (timeoutMs default 120000). */
  verify(target: 'mem' | 'disk' | 'all' = 'all', timeoutMs = 120_000): Promise<VerifyResult> {
    if (!['mem', 'disk', 'all'].includes(target)) return Promise.reject(new RangeError(`target: must be mem, disk or all (got ${String(target)})`));
    return this.channel.request<VerifyResult>('verify', { target }, { timeoutMs });
  }

  /** Guest-physical addresses of the memory workload's buffer (see expandGpaRuns). */
  reportGpa(): Promise<GpaReport> {
    return this.channel.request<GpaReport>('report-gpa');
  }

  /** Stops both workloads and syncs the disk. */
  quiesce(): Promise<{ mem: MemSummary; disk: DiskSummary }> {
    return this.channel.request('quiesce', {}, { timeoutMs: 60_000 });
  }

  status(): Promise<{ uptimeMs: number; mem: MemSummary; disk: DiskSummary }> {
    return this.channel.request('status');
  }

  /** Sets how often the guest sends interval reports ('interval' events on vm.channel). */
  async reports(settings: ReportSettings): Promise<Required<ReportSettings>> {
    checkReportSettings(settings);
    return this.channel.request<Required<ReportSettings>>('reports', { ...settings });
  }
}

/**
 * Kills QEMUs left behind by lab processes that died without cleaning up (SIGKILL), and removes
 * their directories. Looks at `<parentDir>/dpa-lab-<owner pid>-*` whose owner is gone; a QEMU is
 * killed only if its command line names that directory. Returns the pids killed.
 */
export async function reapOrphanedVms(parentDir: string = tmpdir()): Promise<number[]> {
  const killed: number[] = [];
  for (const name of await readdir(parentDir)) {
    const m = /^dpa-lab-(\d+)-/.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    const dir = join(parentDir, name);
    const pid = Number((await readFile(join(dir, 'qemu.pid'), 'utf8').catch(() => '')).trim());
    if (pid > 0 && processAlive(pid)) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(dir + '/')) {
        try {
          process.kill(pid, 'SIGKILL');
          killed.push(pid);
        } catch {
          // exited meanwhile
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
  return killed;
}
