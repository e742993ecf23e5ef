#!/usr/bin/env bash
# The demo: boot a tiny realtime guest, run rtagent on it, show what it sees
# and does.  Run as root on Debian 12: sudo bash scripts/demo.sh
# Leaves nothing running: the guest and the daemon are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
VENV=${RTAGENT_VENV:-.venv}
[ -x "$VENV/bin/rtagent" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -e '.[test]'; }
RT="$VENV/bin/rtagent"

work=$(mktemp -d /tmp/rtagent-demo.XXXXXX)
name=rtagent-demo
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null || true
  virsh -q destroy "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@" || true; }

# CPU 0 is housekeeping, the last CPU is realtime.
last=$(( $(nproc) - 1 ))
cat > "$work/rtagent.toml" <<TOML
[host]
realtime_cpus = "$last"
[daemon]
resync_interval_s = 1.0
lock_file = "$work/rtagent.lock"
[status]
socket = "$work/rtagent.sock"
[metrics]
listen = "127.0.0.1:9847"
# The demo leaves kernel threads and IRQs alone; see 'rtagent host apply'.
[host_tuning]
kthreads = false
kthread_priorities = false
irqs = false
workqueues = false
TOML

step "A tiny diskless guest: vCPU 0 + emulator on CPU 0, realtime vCPU 1 on CPU $last (rtagent metadata)"
"$VENV/bin/python" - "$name" "$last" > "$work/guest.xml" <<'PY'
import sys
from tests.guests import domain_xml, pinned_cputune, rt_metadata
name, last = sys.argv[1], sys.argv[2]
print(domain_xml(name, vcpus=2, memory_mib=64,
                 cputune=pinned_cputune({0: "0", 1: last}, emulator="0"),
                 metadata=rt_metadata(mask="^0", priority=1, policy="fifo"),
                 memory_backing="<memoryBacking><hugepages/></memoryBacking>"))
PY
run virsh -q create "$work/guest.xml"
sleep 2

step "The intent rtagent derives from the guest's XML"
virsh dumpxml "$name" > "$work/live.xml"
run "$RT" plan --xml "$work/live.xml" --config "$work/rtagent.toml"

step "Audit before tuning: libvirt pinned the threads, nothing is realtime"
run "$RT" check --config "$work/rtagent.toml" "$name"

step "Start the daemon (it tunes the guest from its events and resync)"
"$RT" run --config "$work/rtagent.toml" 2> "$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 1 50); do [ -S "$work/rtagent.sock" ] && break; sleep 0.2; done
sleep 2

step "rtagent status"
run "$RT" status --socket "$work/rtagent.sock"
run "$RT" status --socket "$work/rtagent.sock" "$name"

step "Drift behind the daemon's back: chrt -o on the realtime vCPU (the drift watch, on by default, undoes it within milliseconds; 'drift watch' in status says which way it found it)"
pid=$(cat /run/libvirt/qemu/$name.pid)
tid=$(grep -l '^CPU 1/' /proc/$pid/task/*/comm | cut -d/ -f5)
run chrt -o -p 0 "$tid"
run chrt -p "$tid"
sleep 2
run chrt -p "$tid"
run "$RT" status --socket "$work/rtagent.sock"

step "Prometheus metrics (excerpt)"
python3 - <<'PY'
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9847/metrics", timeout=5).read().decode()
keep = ("rtagent_libvirt_up", "rtagent_domain_compliant", "rtagent_domain_violations",
        "rtagent_drift_corrections_total", "rtagent_vcpu_run_delay_seconds_total", "rtagent_vcpu_priority",
        "rtagent_domain_memory_")
for line in text.splitlines():
    if line.startswith(keep):
        print(line)
PY

step "Daemon log"
cat "$work/daemon.log"
echo
echo "demo done: guest and daemon are stopped on exit (memlock stays a violation here: RLIMIT_MEMLOCK is 8 MiB on this host)"
