#!/usr/bin/env bash
# Prepare a Debian 12 host (as root) for rtagent's tests and demo:
# packages, libvirt's QEMU config, hugetlbfs, and running virtlogd/libvirtd.
# Idempotent: safe to run again on a prepared machine.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh: must run as root (installs packages, starts libvirtd)" >&2
  exit 2
fi

export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients \
  qemu-system-x86 qemu-utils libvirt-dev pkg-config libcap-dev \
  python3-venv python3-dev gcc rt-tests stress-ng prometheus prometheus-alertmanager \
  procps util-linux iproute2 systemd libcap2-bin \
  debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
  debootstrap dpkg-dev e2fsprogs >/dev/null

# QEMU must run as root to open /dev/kvm on hosts where the kvm group is not set
# up (the PVM /dev/kvm here is 0600 root).
conf=/etc/libvirt/qemu.conf
set_conf() {  # set_conf KEY VALUE: idempotent "KEY = VALUE" in qemu.conf
  if grep -qE "^$1 = " "$conf"; then
    sed -i -E "s|^$1 = .*|$1 = $2|" "$conf"
  else
    echo "$1 = $2" >> "$conf"
  fi
}
set_conf user '"root"'
set_conf group '"root"'
# QEMU runs as root here, so there is no owner to remember; the trusted.*
# xattrs libvirt would write need CAP_SYS_ADMIN on the image directory's
# filesystem, which a restricted libvirtd (or an overlay) may lack.
set_conf remember_owner 0

# hugetlbfs for hugepage-backed test guests: libvirt reads mounts when it
# starts, so mount before libvirtd.  256 × 2 MiB (512 MiB): a handful of 64 MiB test guests at once.
mkdir -p /dev/hugepages
if ! mountpoint -q /dev/hugepages; then
  mount -t hugetlbfs -o pagesize=2M hugetlbfs /dev/hugepages
  mounted_now=1
fi
want=${RTAGENT_HUGEPAGES:-256}
have=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
if [ "$have" -lt "$want" ]; then
  echo "$want" > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
fi

# tracefs for the interference accounting (systemd mounts it as
# sys-kernel-tracing.mount; there is no systemd here).
if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing
fi

# No systemd here: start the daemons directly when they are not running.
# libvirtd started before hugetlbfs was mounted does not know the mount:
# restart it then (only if we can find its PID file).
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/virtlogd.pid; then
  virtlogd -d
fi
if running /run/libvirtd.pid && [ "${mounted_now:-0}" = 1 ]; then
  echo "setup-host.sh: warning: libvirtd was already running before hugetlbfs was mounted;" \
       "restart it so hugepage-backed guests can start" >&2
fi
if ! running /run/libvirtd.pid; then
  libvirtd -d
fi
for _ in $(seq 1 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null
echo "setup-host.sh: libvirt ready ($(virsh -c qemu:///system version | sed -n 's/^Running hypervisor: //p'))," \
  "/dev/kvm $( [ -w /dev/kvm ] && echo usable || echo missing: TCG fallback)," \
  "hugepages 2M: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)"
