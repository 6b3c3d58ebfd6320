#!/usr/bin/env bash
# Installs, idempotently, everything the build and the tests need from Debian's packages.
# Safe to run repeatedly: it only calls apt-get when a package is missing.
set -euo pipefail

packages=(
  build-essential python3 cmake          # native addon (node-gyp) and the CMake/ctest build
  qemu-system-x86 qemu-utils             # the QEMU lab
  busybox-static cpio xz-utils zstd      # guest initramfs
  iproute2                               # network namespaces, veth, tc tbf
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host: missing packages: ${missing[*]} (run this script as root)" >&2
    exit 1
  fi
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup-host: all ${#packages[@]} packages present"
fi

# KVM: the calibration VM needs /dev/kvm read-write. Say so clearly rather than fail later.
if [[ -e /dev/kvm ]]; then
  [[ -r /dev/kvm && -w /dev/kvm ]] || echo "setup-host: /dev/kvm exists but is not read-write for $(id -un)" >&2
else
  echo "setup-host: /dev/kvm is missing: the calibration VM and its tests cannot run here" >&2
fi
