/**
 * IncomingVm: the target QEMU of a lab migration. Same machine as a LabVm (buildQemuArgs: memfd
 * RAM, q35, the guest's virtio-serial channel, a root disk with the same node name and device id)
 * started with `-S -incoming defer`, optionally inside a lab network namespace (spawnInNs), so that
 * the NBD and migration streams cross the shaped veth.
 *
 * Its disk is a new sparse raw image of the source's size in the VM's private directory, written
 * by the base copy and then by the mirror. QMP and channel sockets live in that 0700 directory
 * (chmod 0600); a unix socket path reaches into the namespace, which separates networks, not
 * files. The directory is named like a LabVm's, so reapOrphanedVms() also finds crashed targets.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { QmpClient } from '../qmp/client';
import type { GuestChannel } from './guest-channel';
import type { GuestImage } from './guest-image';
import type { Topology } from './netns';
import { spawnInNs } from './netns';
import { buildQemuArgs } from './qemu-args';
import { createDiskImage, launchQemu, type VmExit } from './vm';

export interface IncomingVmOptions {
  /** The same guest image as the source (kernel + initramfs; the ROMs must match in size). */
  guest: GuestImage;
  /** Guest RAM, MiB (96..16384): must equal the source's. */
  guestMib: number;
  /** Extra RAM, KiB (multiple of 8, 0..1016; default 0): must equal the source's (LabVmOptions.ramPadKib). */
  ramPadKib?: number;
  /** vCPUs (1..16; default 1): must equal the source's. */
  vcpus?: number;
  accel?: 'tcg' | 'kvm';
  /** The source's extra kernel parameters (default none). */
  kernelArgs?: readonly string[];
  /** Root disk: a new sparse raw image of sizeMib (1..1048576); null for none. */
  disk: { sizeMib: number; nodeName?: string; deviceId?: string } | null;
  /** Run QEMU in this lab namespace (default: this process's network namespace). */
  topology?: Pick<Topology, 'nsName'> | null;
  /** Default 'dpa-lab' (as LabVm). */
  name?: string;
  qemuBinary?: string;
  /** Where the private directory is made (default os.tmpdir()). */
  parentDir?: string;
  /** Limit for QMP and the channel to connect, ms (1..600000; default 20000). */
  startTimeoutMs?: number;
  keepDir?: boolean;
}

function checkInt(name: string, v: unknown, min: number, max: number): void {
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name}: must be an integer from ${min} to ${max} (got ${String(v)})`);
  }
}

export class IncomingVm {
  private exitInfo: VmExit | undefined;
  private stopping: Promise<VmExit> | undefined;

  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
    readonly dir: string,
    readonly qmp: QmpClient,
    /** Connected before the migration, so the guest finds its host end connected when it arrives. */
    readonly channel: GuestChannel,
    readonly diskPath: string | null,
    readonly exited: Promise<VmExit>,
    private readonly stderrTail: () => string,
    private readonly keepDir: boolean,
  ) {
    void exited.then((e) => {
      this.exitInfo = e;
    });
  }

  get qmpSocketPath(): string {
    return join(this.dir, 'qmp.sock');
  }
  get running(): boolean {
    return this.exitInfo === undefined;
  }
  /** The end of QEMU's stderr (why an incoming migration failed, for instance). */
  stderr(): string {
    return this.stderrTail();
  }

  static async start(o: IncomingVmOptions): Promise<IncomingVm> {
    checkInt('guestMib', o.guestMib, 96, 16384);
    checkInt('vcpus', o.vcpus, 1, 16);
    checkInt('startTimeoutMs', o.startTimeoutMs, 1, 600_000);
    if (o.disk) checkInt('disk.sizeMib', o.disk.sizeMib, 1, 1_048_576);
    const startTimeoutMs = o.startTimeoutMs ?? 20_000;
    const dir = await mkdtemp(join(o.parentDir ?? tmpdir(), `dpa-lab-${process.pid}-`));
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
        // -S as LXD and libvirt do: the target must not start (and take its disk's write lock)
        // before the NBD export is gone; the migration's driver sends `cont`.
        extraArgs: ['-S', '-incoming', 'defer'],
      });
      const bin = o.qemuBinary ?? 'qemu-system-x86_64';
      const opts = { stdio: ['ignore', 'ignore', 'pipe'] as ['ignore', 'ignore', 'pipe'] };
      // `ip netns exec` execs QEMU in place: the child's pid is QEMU's.
      const q = await launchQemu(dir, () => (o.topology ? spawnInNs(o.topology, bin, args, opts) : spawn(bin, args, opts)), startTimeoutMs);
      return new IncomingVm(q.proc, q.proc.pid!, dir, q.qmp, q.channel, disk?.path ?? null, q.exited, q.stderrTail, o.keepDir ?? false);
    } catch (err) {
      if (!o.keepDir) await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Sends `signal` (default SIGKILL) and waits for QEMU to exit: a target host dying. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<VmExit> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /** `quit` over QMP, SIGKILL after timeoutMs (default 5000); closes sockets, removes the directory. Idempotent. */
  stop(opts: { timeoutMs?: number } = {}): Promise<VmExit> {
    checkInt('timeoutMs', opts.timeoutMs, 1, 600_000);
    this.stopping ??= this.doStop(opts.timeoutMs ?? 5000);
    return this.stopping;
  }

  private async doStop(timeoutMs: number): Promise<VmExit> {
    if (this.running && this.qmp.connected) void this.qmp.execute('quit', {}, { timeoutMs }).catch(() => {});
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), timeoutMs)));
    if ((await Promise.race([this.exited, timedOut])) === 'timeout' && this.running) this.child.kill('SIGKILL');
    clearTimeout(timer);
    const exit = await this.exited;
    await Promise.all([this.channel.close(), this.qmp.close()]);
    if (!this.keepDir) await rm(this.dir, { recursive: true, force: true });
    return exit;
  }
}
