#!/usr/bin/env bash
# Builds the dpa lab guest: Debian's cloud kernel (downloaded with apt-get, extracted, never
# installed) and an initramfs holding busybox, the virtio modules the kernel lacks built in, the
# /init in guest/init.sh and the static workload in guest/workload.c.
#
# Output goes to a cache outside the tree:
#   ${DPA_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/dpa}/guest/<inputs hash>/
#     vmlinuz  initramfs.cpio.zst  manifest.json
# The hash covers this script, guest/*, the kernel package version, busybox's and gcc's versions,
# so any change rebuilds and an unchanged tree returns the cached build at once. Prints the output
# directory as the last line on stdout; logs go to stderr. The only network access is apt's.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${DPA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dpa}
meta_pkg=linux-image-cloud-amd64
# Drivers the lab needs: virtio-pci transport, the disk (/dev/vda), the host channel (virtio-serial).
wanted=(VIRTIO_PCI:virtio_pci VIRTIO_BLK:virtio_blk VIRTIO_CONSOLE:virtio_console)

log() { echo "build-guest: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in apt-cache apt-get dpkg-deb dpkg-query gcc objcopy cpio zstd sha256sum flock; do
  command -v "$tool" >/dev/null || die "missing $tool (run scripts/setup-host.sh)"
done
# busybox-static's /bin/busybox (the dynamic "busybox" package would not run in the initramfs).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
  die "busybox-static is not installed (run scripts/setup-host.sh)"

# The metapackage depends on the versioned image package; resolving it is local (apt lists) but
# apt-cache takes ~1 s, so the answer is remembered until the apt lists change.
lists_key=$(find /var/lib/apt/lists -maxdepth 1 -type f -printf '%f %s %T@\n' 2>/dev/null | LC_ALL=C sort | sha256sum | cut -c1-16)
resolved=$cache/apt-resolved.$lists_key
if [[ -f $resolved ]]; then
  read -r kpkg kver <"$resolved"
else
  kpkg=$(apt-cache depends "$meta_pkg" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [[ -n $kpkg ]] || die "cannot resolve $meta_pkg's kernel package (apt-get update?)"
  kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
  [[ -n $kver && $kver != "(none)" ]] || die "no candidate version for $kpkg"
  mkdir -p "$cache"
  rm -f "$cache"/apt-resolved.*
  echo "$kpkg $kver" >"$resolved.$$" && mv "$resolved.$$" "$resolved"
fi
bbver=$(dpkg-query -W -f='${Version}' busybox-static)
gccver=$(gcc -dumpfullversion)

hash=$(
  {
    echo "kernel $kpkg $kver busybox $bbver gcc $gccver"
    sha256sum "$repo/scripts/build-guest.sh"
    (cd "$repo" && find guest -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -c1-16
)
out=$cache/guest/$hash
if [[ -f $out/manifest.json ]]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

mkdir -p "$cache/guest" "$cache/debs"
exec 9>"$cache/guest/.lock"
flock 9
if [[ -f $out/manifest.json ]]; then # another build finished while we waited
  echo "$out"
  exit 0
fi
t0=$(date +%s.%N)

deb=$cache/debs/${kpkg}_${kver}_amd64.deb
if [[ ! -f $deb ]]; then
  log "downloading $kpkg $kver"
  dl=$(mktemp -d "$cache/debs/.dl.XXXXXX")
  # apt-get download writes to the current directory; the _apt sandbox warning as root is harmless.
  (cd "$dl" && apt-get download -q "$kpkg=$kver" 2>&1 | grep -v 'unsandboxed' >&2) || true
  f=$(find "$dl" -name '*.deb' -print -quit)
  [[ -n $f ]] || { rm -rf "$dl"; die "apt-get download $kpkg=$kver failed"; }
  mv "$f" "$deb"
  rm -rf "$dl"
fi

work=$(mktemp -d "$cache/guest/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/pkg"
vmlinuz=$(find "$work/pkg/boot" -name 'vmlinuz-*' -print -quit)
config=$(find "$work/pkg/boot" -name 'config-*' -print -quit)
[[ -n $vmlinuz && -n $config ]] || die "$deb has no vmlinuz/config"
krel=${vmlinuz##*/vmlinuz-}
moddir=$work/pkg/lib/modules/$krel/kernel

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules}

# Modules: only those the config marks =m, with their dependencies (from each .ko's .modinfo,
# since the package ships no modules.dep), parents first.
declare -A seen=()
order=()
ko_path() { find "$moddir" -name "$1.ko" -print -quit; }
add_module() {
  local name=$1 ko deps d
  [[ -n ${seen[$name]:-} ]] && return
  seen[$name]=1
  ko=$(ko_path "$name")
  [[ -n $ko ]] || die "module $name.ko not in $kpkg"
  deps=$(objcopy -O binary --only-section=.modinfo "$ko" /dev/stdout | tr '\0' '\n' | sed -n 's/^depends=//p')
  for d in ${deps//,/ }; do add_module "$d"; done
  cp "$ko" "$root/lib/modules/$name.ko"
  order+=("$name")
}
for w in "${wanted[@]}"; do
  sym=${w%%:*} mod=${w#*:}
  case $(sed -n "s/^CONFIG_$sym=//p" "$config") in
    y) log "CONFIG_$sym=y: built in" ;;
    m) add_module "$mod" ;;
    *) die "CONFIG_$sym is not enabled in $krel" ;;
  esac
done
printf '%s\n' "${order[@]}" >"$root/etc/dpa-modules"
log "modules (load order): ${order[*]:-none}"

cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
ln -sf ../bin/busybox "$root/sbin/init"
install -m 0755 "$repo/guest/init.sh" "$root/init"
gcc -static -O2 -Wall -Wextra -Werror -pthread -o "$root/bin/dpa-workload" "$repo/guest/workload.c" -lm
strip "$root/bin/dpa-workload"

mkdir -p "$work/out"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc -R 0:0 --reproducible --quiet) | zstd -q -10 -o "$work/out/initramfs.cpio.zst"
cp "$vmlinuz" "$work/out/vmlinuz"
t1=$(date +%s.%N)
cat >"$work/out/manifest.json" <<EOF
{
  "inputsHash": "$hash",
  "kernelPackage": "$kpkg",
  "kernelPackageVersion": "$kver",
  "kernelRelease": "$krel",
  "busyboxVersion": "$bbver",
  "modules": [$(printf '"%s",' "${order[@]}" | sed 's/,$//')],
  "kernel": "vmlinuz",
  "initramfs": "initramfs.cpio.zst",
  "buildSeconds": $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}")
}
EOF
rm -rf "$out"
mv "$work/out" "$out"
log "built $out in $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s"
echo "$out"
