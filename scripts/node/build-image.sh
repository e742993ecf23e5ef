#!/usr/bin/env bash
# Build (once) the node tier's Debian 12 image: systemd as PID 1, cgroup v2,
# Debian's cloud kernel (no RT group scheduling), libvirt + QEMU, and
# rtagent's runtime dependencies from Debian (so `apt install ./rtagent_*.deb`
# works inside without a network).  The image holds no rtagent: the .deb and
# the scenarios come on a payload disk at each boot.
#
# Cached by a hash of its inputs (this script, the runner, the package list):
# prints the cache directory holding rootfs.img, vmlinuz, initrd.img.
# The mirror is the one apt on this machine uses, read at run time.
# Usage (root): scripts/node/build-image.sh   [RTAGENT_NODE_CACHE=/var/cache/rtagent-node]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${RTAGENT_NODE_CACHE:-/var/cache/rtagent-node}
suite=bookworm
# debootstrap resolves no virtual packages: libpam-systemd is the
# default-logind that polkitd (libvirt-daemon-system) depends on.
packages=(
  systemd systemd-sysv libpam-systemd udev dbus kmod util-linux procps iproute2
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils python3
  python3-libvirt python3-prometheus-client python3-prctl
  linux-image-cloud-amd64 initramfs-tools
)

key=$( { cat "$here/build-image.sh" "$here/runner.sh" "$here/rtagent-node-runner.service"; echo "$suite ${packages[*]}"; } \
       | sha256sum | cut -c1-16)
out=$cache_root/$key
if [ -f "$out/ok" ]; then
  echo "$out"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "build-image.sh: must run as root (debootstrap, chroot)" >&2
  exit 2
fi
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [ -f "$out/ok" ]; then echo "$out"; exit 0; fi

mirror=$(python3 "$here/apt_mirror.py" "$suite")
rm -rf "$cache_root"/build.* 2>/dev/null || true
work=$(mktemp -d "$cache_root/build.XXXXXX")

# Kept on failure for a look at the logs; removed when the image is ready.
root=$work/root
log=$work/debootstrap.log
echo "build-image.sh: debootstrap $suite into $root (log $log)" >&2
start=$SECONDS
mkdir -p "$cache_root/debs"
if ! debootstrap --variant=minbase --cache-dir="$cache_root/debs" --include="$(IFS=,; echo "${packages[*]}")" \
     "$suite" "$root" "$mirror" > "$log" 2>&1; then
  tail -n 30 "$log" >&2
  grep -B2 -A12 -i "error\|fail" "$root/debootstrap/debootstrap.log" | tail -n 60 >&2 || true
  echo "build-image.sh: kept $work" >&2
  exit 1
fi
echo "build-image.sh: debootstrap took $((SECONDS - start)) s" >&2

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
echo rtnode > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 rtnode\n::1 localhost\n' > "$root/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
: > "$root/etc/machine-id"
# libvirt-daemon-system's users were not created inside debootstrap's chroot
# (its postinst ran before systemd-sysusers could): create them the way the
# package would have.
in_root getent group kvm >/dev/null || in_root groupadd --system kvm
in_root getent group libvirt >/dev/null || in_root groupadd --system libvirt
in_root getent group libvirt-qemu >/dev/null || in_root groupadd --system libvirt-qemu
in_root getent passwd libvirt-qemu >/dev/null || \
  in_root useradd --system -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
in_root chown -R libvirt-qemu:libvirt-qemu /var/lib/libvirt/qemu 2>/dev/null || true
install -m 0755 "$here/runner.sh" "$root/usr/local/sbin/rtagent-node-runner"
install -m 0644 "$here/rtagent-node-runner.service" "$root/etc/systemd/system/rtagent-node-runner.service"
in_root systemctl enable libvirtd.service libvirtd.socket virtlogd.socket rtagent-node-runner.service >&2
# Nothing in the node may reach a network: no DHCP or time sync waits.
in_root systemctl mask systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer >&2 2>/dev/null || true
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

mkdir -p "$work/out"
cp "$(ls "$root"/boot/vmlinuz-* | sort | tail -n1)" "$work/out/vmlinuz"
cp "$(ls "$root"/boot/initrd.img-* | sort | tail -n1)" "$work/out/initrd.img"
mkfs.ext4 -q -F -L rtnode -d "$root" "$work/out/rootfs.img" 4G
touch "$work/out/ok"
rm -rf "$out"
mv "$work/out" "$out"
rm -rf "$work"
echo "build-image.sh: image ready in $((SECONDS - start)) s: $out" >&2
echo "$out"
