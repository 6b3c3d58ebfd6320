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
export const BASE_KERNEL_ARGS: readonly string[] = ['console=ttyS0', 'loglevel=4', 'panic=-1', 'mitigations=off'];

export function buildQemuArgs(c: QemuConfig): string[] {
  const v = qemuOptValue;
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-name', `${v(c.name)},debug-threads=on`,
    // RAM in a named memfd so the guest-memory scanner can find it in /proc/PID/maps (guest-ram.ts).
    '-object', `memory-backend-memfd,id=ram0,size=${c.guestMib}M,share=on`,
    '-machine', 'q35,memory-backend=ram0',
    '-m', `${c.guestMib}M`,
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
