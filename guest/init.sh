#!/bin/sh
# /init of the dpa lab guest (busybox sh, PID 1). Built into the initramfs by scripts/build-guest.sh.
# The initramfs has no /dev/console node (building it would need root), so stdio is attached
# after devtmpfs is mounted.
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /tmp && mount -t tmpfs tmp /tmp

# The cloud kernel builds virtio as modules; build-guest.sh lists the ones the kernel lacks
# built in, in dependency order.
for m in $(cat /etc/dpa-modules); do
  insmod "/lib/modules/$m.ko" || echo "dpa-init: insmod $m failed"
done

# The workload's buffer must stay on the same guest-physical pages once reported to the host:
# no transparent huge pages (khugepaged would collapse and move them) and no compaction of
# mlocked pages.
[ -w /sys/kernel/mm/transparent_hugepage/enabled ] && echo never >/sys/kernel/mm/transparent_hugepage/enabled
[ -w /proc/sys/vm/compact_unevictable_allowed ] && echo 0 >/proc/sys/vm/compact_unevictable_allowed

# A virtio block device (virtio device id 2) may finish probing just after insmod returns.
if grep -qx 0x0002 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 20 ]; do sleep 0.05; i=$((i + 1)); done
fi

echo "dpa-init: starting workload ($(cut -d' ' -f1 /proc/uptime)s since boot)"
/bin/dpa-workload
echo "dpa-init: workload exited with status $?; powering off"
sync
poweroff -f
