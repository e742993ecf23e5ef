#!/usr/bin/env bash
# Packages the benchmarks need on top of scripts/setup-host.sh (Debian 12, as
# root).  Idempotent: apt-get install is a no-op for installed packages, and
# nothing else is changed.
#
# B1 (guest-observed latency) builds a minimal guest kernel from Debian's
# linux-source-6.1 (bench/guest/build.py, cached in bench/.cache/) and, for the
# userspace cyclictest mode on hardware KVM, an initramfs from busybox-static
# and rt-tests' cyclictest.  The host noise is stress-ng.  B3 runs Debian's
# tuned next to rtagent.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup-bench.sh: must run as root (installs packages)" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
pkgs=(
  # guest kernel build
  linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev xz-utils patch file
  # cyclictest initramfs (hardware KVM only)
  busybox-static rt-tests cpio gzip
  # host noise
  stress-ng
  # B3's side-by-side reference (its daemon is started and stopped by the
  # benchmark itself; the package's service is not started without systemd)
  tuned
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup-bench.sh: benchmark packages present (${#missing[@]} installed now)"
