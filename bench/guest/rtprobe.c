// SPDX-License-Identifier: GPL-2.0
/*
 * rtprobe — a built-in, in-kernel cyclictest for the rtagent B1 benchmark.
 *
 * Why in the kernel: on a PVM host (software hypervisor) guest user space
 * cannot run, so cyclictest cannot either.  This kthread does what
 * cyclictest does with one thread: SCHED_FIFO, bound to one guest CPU, it
 * sleeps to absolute CLOCK_MONOTONIC hrtimer deadlines and records
 * (wake-up time - deadline).  It measures in numbered phases separated by
 * gaps so that a host-side harness can switch the host scenario in each gap
 * while the guest stays booted.
 *
 * Copied into kernel/ of a Debian linux-source-6.1 tree by
 * bench/b1_latency.py and built in (obj-y).  Parameters on the kernel
 * command line (all optional):
 *
 *   rtprobe.mode=probe|off   off = return at once (userspace cyclictest mode)
 *   rtprobe.cpu=1            guest CPU the measuring thread is bound to
 *   rtprobe.prio=50          its SCHED_FIFO priority
 *   rtprobe.interval_us=10000
 *   rtprobe.phases=12        number of measurement phases
 *   rtprobe.phase_ms=15000   length of each phase
 *   rtprobe.gap_ms=8000      idle gap before each phase (scenario switch)
 *   rtprobe_lapic_hz=N       local APIC timer frequency in Hz; skips the
 *                            boot-time calibration (see below)
 *
 * Console protocol (one line each, parsed by the harness):
 *
 *   RTPROBE start phases=P phase_ms=L gap_ms=G interval_us=I cpu=C prio=R
 *   RTPROBE gap phase=N ms=G        phase N starts G ms after this line
 *   RTPROBE begin phase=N
 *   RTPROBE phase=N n=.. min_ns=.. avg_ns=.. p50_ns=.. p99_ns=.. p999_ns=.. max_ns=.. overruns=..
 *   RTPROBE done
 *
 * In probe mode the initcall waits for the thread to finish, so init is never
 * run (there is no user space in this mode anyway).
 */

#include <linux/completion.h>
#include <linux/cpumask.h>
#include <linux/hrtimer.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <uapi/linux/sched/types.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>
#include <asm/apic.h>

/*
 * Under PVM's emulation the PIT tick that the kernel calibrates the local
 * APIC timer against is so irregular that the verification step fails
 * ("APIC timer disabled due to verification failure"): the kernel then has
 * no one-shot clock event device and hrtimers fall back to jiffies
 * resolution, driven by the PIT through vCPU 0.  The calibration itself
 * comes out right (KVM's APIC bus runs at 1 GHz), so the harness passes that
 * frequency and the kernel skips calibration, as it does when a hypervisor
 * reports the APIC frequency.
 */
static int __init rtprobe_lapic_hz(char *arg)
{
	unsigned long v;

	if (arg && !kstrtoul(arg, 10, &v) && v / HZ)
		lapic_timer_period = v / HZ;
	return 0;
}
early_param("rtprobe_lapic_hz", rtprobe_lapic_hz);

static char mode[16] = "probe";
module_param_string(mode, mode, sizeof(mode), 0444);
static int cpu = 1;
module_param(cpu, int, 0444);
static int prio = 50;
module_param(prio, int, 0444);
static uint interval_us = 10000;
module_param(interval_us, uint, 0444);
static uint phases = 12;
module_param(phases, uint, 0444);
static uint phase_ms = 15000;
module_param(phase_ms, uint, 0444);
static uint gap_ms = 8000;
module_param(gap_ms, uint, 0444);

static DECLARE_COMPLETION(rtprobe_done);

static int cmp_s64(const void *a, const void *b)
{
	s64 x = *(const s64 *)a, y = *(const s64 *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile (per mille) of a sorted array. */
static s64 pct(const s64 *v, size_t n, unsigned int permille)
{
	size_t rank = DIV_ROUND_UP(n * permille, 1000);

	if (rank == 0)
		rank = 1;
	return v[rank - 1];
}

static void sleep_until(ktime_t t)
{
	set_current_state(TASK_UNINTERRUPTIBLE);
	schedule_hrtimeout_range(&t, 0, HRTIMER_MODE_ABS);
	__set_current_state(TASK_RUNNING);
}

static void run_phase(unsigned int phase, s64 *lat, size_t cap)
{
	ktime_t interval = ns_to_ktime((u64)interval_us * NSEC_PER_USEC);
	ktime_t start, end, next, now;
	size_t n = 0;
	unsigned long overruns = 0;
	s64 sum = 0;

	pr_info("RTPROBE begin phase=%u\n", phase);
	start = ktime_get();
	end = ktime_add_ms(start, phase_ms);
	next = ktime_add(start, interval);
	while (ktime_before(next, end) && n < cap) {
		sleep_until(next);
		now = ktime_get();
		lat[n] = ktime_to_ns(ktime_sub(now, next));
		sum += lat[n];
		n++;
		/*
		 * Like cyclictest: the next deadline is one interval after the
		 * previous one.  If a wake-up was so late that deadlines were
		 * missed, skip them (count them) instead of bursting.
		 */
		next = ktime_add(next, interval);
		while (ktime_before(next, now)) {
			next = ktime_add(next, interval);
			overruns++;
		}
	}
	if (n == 0) {
		pr_info("RTPROBE phase=%u n=0\n", phase);
		return;
	}
	sort(lat, n, sizeof(*lat), cmp_s64, NULL);
	pr_info("RTPROBE phase=%u n=%zu min_ns=%lld avg_ns=%lld p50_ns=%lld p99_ns=%lld p999_ns=%lld max_ns=%lld overruns=%lu\n",
		phase, n, lat[0], div64_s64(sum, n), pct(lat, n, 500),
		pct(lat, n, 990), pct(lat, n, 999), lat[n - 1], overruns);
}

static int rtprobe_thread(void *unused)
{
	size_t cap = div_u64((u64)phase_ms * 1000, interval_us) + 2;
	s64 *lat;
	unsigned int p;

	lat = kmalloc_array(cap, sizeof(*lat), GFP_KERNEL);
	if (!lat) {
		pr_err("RTPROBE error=nomem cap=%zu\n", cap);
		goto out;
	}
	pr_info("RTPROBE start phases=%u phase_ms=%u gap_ms=%u interval_us=%u cpu=%d prio=%d\n",
		phases, phase_ms, gap_ms, interval_us, smp_processor_id(), prio);
	for (p = 1; p <= phases; p++) {
		pr_info("RTPROBE gap phase=%u ms=%u\n", p, gap_ms);
		sleep_until(ktime_add_ms(ktime_get(), gap_ms));
		run_phase(p, lat, cap);
	}
	kfree(lat);
	pr_info("RTPROBE done\n");
out:
	complete(&rtprobe_done);
	return 0;
}

static int __init rtprobe_init(void)
{
	struct sched_param sp = { .sched_priority = prio };
	struct task_struct *t;

	if (strcmp(mode, "probe") != 0) {
		pr_info("RTPROBE off mode=%s\n", mode);
		return 0;
	}
	if (cpu < 0 || cpu >= nr_cpu_ids || !cpu_online(cpu)) {
		pr_err("RTPROBE error=cpu_offline cpu=%d online=%u\n", cpu, num_online_cpus());
		return 0;
	}
	if (interval_us < 100 || phase_ms == 0) {
		pr_err("RTPROBE error=bad_params\n");
		return 0;
	}
	t = kthread_create(rtprobe_thread, NULL, "rtprobe/%d", cpu);
	if (IS_ERR(t)) {
		pr_err("RTPROBE error=kthread %ld\n", PTR_ERR(t));
		return 0;
	}
	kthread_bind(t, cpu);
	sched_setscheduler_nocheck(t, SCHED_FIFO, &sp);
	wake_up_process(t);
	/* Nothing to run after us in probe mode: keep init here. */
	wait_for_completion(&rtprobe_done);
	return 0;
}
late_initcall(rtprobe_init);
