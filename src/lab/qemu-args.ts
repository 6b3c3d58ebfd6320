/**
 * The QEMU command line of a lab VM, as an argument array (never a shell string). Pure, so unit
 * tests can check it without starting QEMU.
 */

/** Everything the command line depends on; paths are absolute. */
export interface QemuConfig {
  kernelPath: string;
  initrdPath: string;
  /** Extra kernel parameters, one per element (no whitespace inside). */
  kernelArgs: readonly string[];
  guestMib: number;
  /**
   * Extra guest RAM beyond guestMib, KiB (multiple of 8, 0..1016; default 0). Set by migration
   * labs: see RAM_PAD_KIB_FOR_TCG_MIGRATION.
   */
  ramPadKib?: number;
  vcpus: number;
  accel: 'tcg' | 'kvm';
  qmpSocketPath: string;
  channelSocketPath: string;
  serialLogPath: string;
  pidFilePath: string;
  disk: { path: string; format: 'raw' | 'qcow2'; nodeName: string; deviceId: string } | null;
  name: string;
  extraArgs: readonly string[];
}

/** The virtio-serial port name the guest workload looks for. */
export const GUEST_PORT_NAME = 'dpa.0';

/** QEMU's option syntax splits on ','; a literal comma in a value is written ',,'. */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** Kernel parameters of every lab guest: serial console, quiet boot, no reboot loop on panic. */
/**
 * `no_timer_check`: a TCG vCPU starved by a loaded host can miss the IO-APIC timer check at boot
 * and the kernel panics ("IO-APIC + timer doesn't work!"; seen at load ~10 on 2 cores).
 */
export const BASE_KERNEL_ARGS: readonly string[] = ['console=ttyS0', 'loglevel=4', 'panic=-1', 'mitigations=off', 'no_timer_check'];

/**
 * QEMU before 9.0 loses vCPU writes while migrating under TCG: when a RAM block's length is a
 * multiple of 64 pages, the migration dirty bitmap is synced a word at a time without resetting
 * TCG's TLB, so a page written through a still-cached TLB entry after a sync is never marked
 * dirty again (fixed upstream by "physmem: Fix migration dirty bitmap coherency with TCG memory
 * access", QEMU 9.0). Measured on Debian 12's 7.2: 7 of 7 rate-limited migrations (several
 * pre-copy passes) of a 128 MiB guest left the target's kernel corrupt (oopses in hrtimer, psi,
 * bio code). With RAM that is not a multiple of 256 KiB, 7.2 syncs page by page, which does reset
 * the TLB: 0 of the 12 such migrations we ran, each checked by the guest's own verification.
 */
export const RAM_PAD_KIB_FOR_TCG_MIGRATION = 8;

export function buildQemuArgs(c: QemuConfig): string[] {
  const v = qemuOptValue;
  const pad = c.ramPadKib ?? 0;
  if (!Number.isInteger(pad) || pad < 0 || pad > 1016 || pad % 8 !== 0) {
    throw new RangeError(`ramPadKib: must be a multiple of 8 from 0 to 1016 (got ${String(pad)})`);
  }
  // QEMU rounds -m up to 8 KiB; bytes ('B') keep the backend and -m equal to the byte.
  const ramSize = pad ? (c.guestMib * 1024 + pad) * 1024 : c.guestMib;
  const ramUnit = pad ? 'B' : 'M';
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-name', `${v(c.name)},debug-threads=on`,
    // RAM in a named memfd so the guest-memory scanner can find it in /proc/PID/maps (guest-ram.ts).
    '-object', `memory-backend-memfd,id=ram0,size=${ramSize}${ramUnit},share=on`,
    '-machine', 'q35,memory-backend=ram0',
    '-m', `${ramSize}${ramUnit}`,
    '-accel', c.accel,
    // TCG's default CPU (qemu64) boots the cloud kernel; KVM needs the host's.
    ...(c.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-smp', String(c.vcpus),
    '-display', 'none',
    '-no-reboot',
    '-pidfile', c.pidFilePath,
    '-kernel', c.kernelPath,
    '-initrd', c.initrdPath,
    '-append', [...BASE_KERNEL_ARGS, ...c.kernelArgs].join(' '),
    '-chardev', `file,id=serial0,path=${v(c.serialLogPath)}`,
    '-serial', 'chardev:serial0',
    '-chardev', `socket,id=qmp0,path=${v(c.qmpSocketPath)},server=on,wait=off`,
    '-mon', 'chardev=qmp0,mode=control',
    '-device', 'virtio-serial-pci,id=vser0',
    '-chardev', `socket,id=dpa0,path=${v(c.channelSocketPath)},server=on,wait=off`,
    '-device', `virtserialport,bus=vser0.0,chardev=dpa0,name=${GUEST_PORT_NAME}`,
  ];
  if (c.disk) {
    const d = c.disk;
    args.push(
      '-blockdev', `driver=file,filename=${v(d.path)},node-name=${v(d.nodeName)}-file`,
      '-blockdev', `driver=${d.format},file=${v(d.nodeName)}-file,node-name=${v(d.nodeName)}`,
      '-device', `virtio-blk-pci,drive=${v(d.nodeName)},id=${v(d.deviceId)}`,
    );
  }
  args.push(...c.extraArgs);
  return args;
}
