/**
 * IncomingVm: the target QEMU of a lab migration. Same machine as a LabVm (buildQemuArgs: memfd
 * RAM, q35, the guest's virtio-serial channel, a root disk with the same node name and device id)
 * started with `-S -incoming defer`, optionally inside a lab network namespace (spawnInNs), so that
 * the NBD and migration streams cross the shaped veth.
 *
 * Its disk is a new sparse raw image of the source's size in the VM's private directory, written
 * by the base copy and then by the mirror. QMP and channel sockets live in that 0700 directory
 * (chmod 0600); a unix socket path reaches into the namespace, which separates networks, not
 * files. Started by QemuProcess.launch like a LabVm, so reapOrphanedVms() also finds crashed targets.
 */
import type { GuestImage } from './guest-image';
import type { Topology } from './netns';
import { spawnInNs } from './netns';
import { checkInt, QemuProcess } from './vm';

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

/** The guest channel is connected before the migration, so the guest finds its host end connected when it arrives. */
export class IncomingVm extends QemuProcess {
  static async start(o: IncomingVmOptions): Promise<IncomingVm> {
    checkInt('guestMib', o.guestMib, 96, 16384);
    checkInt('vcpus', o.vcpus, 1, 16);
    checkInt('startTimeoutMs', o.startTimeoutMs, 1, 600_000);
    if (o.disk) checkInt('disk.sizeMib', o.disk.sizeMib, 1, 1_048_576);
    const { launched, dir, diskPath } = await QemuProcess.launch({
      ...o,
      // -S as LXD and libvirt do: the target must not start (and take its disk's write lock)
      // before the NBD export is gone; the migration's driver sends `cont`.
      extraArgs: ['-S', '-incoming', 'defer'],
      // `ip netns exec` execs QEMU in place: the child's pid is QEMU's.
      ...(o.topology ? { spawnQemu: (bin, args, opts) => spawnInNs(o.topology!, bin, args, opts) } : {}),
    });
    return new IncomingVm(launched, dir, diskPath, o.keepDir ?? false);
  }
}
