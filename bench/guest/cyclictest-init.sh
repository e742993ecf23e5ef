#!/bin/sh
# /init of the B1 cyclictest initramfs (userspace mode, hardware KVM only:
# PVM cannot run guest user space).  Same console protocol as rtprobe.c, so
# the harness parses both modes alike.  Parameters from the kernel command
# line: rtb.phases= rtb.phase_s= rtb.gap_s= rtb.interval_us= rtb.cpu= rtb.prio=
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp

arg() { # arg NAME DEFAULT
	v=$(tr ' ' '\n' < /proc/cmdline | sed -n "s/^rtb\.$1=//p" | tail -n 1)
	echo "${v:-$2}"
}
PHASES=$(arg phases 12)
PHASE_S=$(arg phase_s 15)
GAP_S=$(arg gap_s 8)
INTERVAL=$(arg interval_us 10000)
CPU=$(arg cpu 1)
PRIO=$(arg prio 50)

echo "RTPROBE start phases=$PHASES phase_ms=$((PHASE_S * 1000)) gap_ms=$((GAP_S * 1000)) interval_us=$INTERVAL cpu=$CPU prio=$PRIO mode=cyclictest" > /dev/console
p=1
while [ "$p" -le "$PHASES" ]; do
	echo "RTPROBE gap phase=$p ms=$((GAP_S * 1000))" > /dev/console
	sleep "$GAP_S"
	echo "RTPROBE begin phase=$p" > /dev/console
	# One FIFO thread on CPU $CPU, absolute clock_nanosleep (cyclictest's
	# default), histogram in µs up to 100 ms so percentiles can be taken.
	cyclictest -q -m -t 1 -a "$CPU" -p "$PRIO" -i "$INTERVAL" -D "$PHASE_S" -h 100000 \
		> /tmp/hist 2>/tmp/err
	# (cyclictest zero-pads; busybox awk would read 000013 as octal)
	awk -v phase="$p" '
		function num(s) { sub(/^0+/, "", s); return s + 0 }
		BEGIN { nb = 0; n = 0 }
		/^[0-9]+[ \t]/ { c = num($2); if (c > 0) { bin[nb] = num($1); cnt[nb] = c; nb++; n += c } }
		/# Min Latencies/ { min = num($4) }
		/# Avg Latencies/ { avg = num($4) }
		/# Max Latencies/ { max = num($4) }
		/# Histogram Overflows/ { ovf = num($4) }
		END {
			if (n == 0) { printf "RTPROBE phase=%d n=0\n", phase; exit }
			t50 = n * 0.5; t99 = n * 0.99; t999 = n * 0.999; s = 0
			for (i = 0; i < nb; i++) {
				s += cnt[i]
				if (p50 == "" && s >= t50) p50 = bin[i]
				if (p99 == "" && s >= t99) p99 = bin[i]
				if (p999 == "" && s >= t999) p999 = bin[i]
			}
			if (p99 == "") p99 = max; if (p999 == "") p999 = max
			printf "RTPROBE phase=%d n=%d min_ns=%d avg_ns=%d p50_ns=%d p99_ns=%d p999_ns=%d max_ns=%d overruns=%d\n",
				phase, n + ovf, min * 1000, avg * 1000, p50 * 1000, p99 * 1000, p999 * 1000, max * 1000, ovf
		}' /tmp/hist > /dev/console
	[ -s /tmp/err ] && sed 's/^/RTPROBE stderr: /' /tmp/err > /dev/console
	p=$((p + 1))
done
echo "RTPROBE done" > /dev/console
sleep 3600
poweroff -f
