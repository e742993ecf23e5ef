#!/bin/bash
# Baked into the node image as /usr/local/sbin/rtagent-node-runner and run once
# at boot by rtagent-node-runner.service: mounts the per-run payload disk
# (/dev/vdb: the freshly built .deb and the scenarios), runs its run.sh with
# all output on the second serial port (ttyS1, a file on the host), then
# powers the node off.  No payload disk: power off at once.
set -u
out=/dev/ttyS1
mkdir -p /mnt/payload
if mount -o ro /dev/vdb /mnt/payload 2>/dev/null; then
  echo "node-runner: payload mounted, $(uname -r), $(nproc) CPUs" > "$out"
  bash /mnt/payload/run.sh > "$out" 2>&1
  echo "node-runner: run.sh exited $?" > "$out"
else
  echo "node-runner: no payload disk" > "$out"
fi
sync
systemctl poweroff --no-block
