"""The B1 latency guest: a minimal Linux kernel with a built-in measurement
kthread (rtprobe.c), and an optional cyclictest initramfs for hardware KVM.
Built by :mod:`bench.guest.build`, cached under ``bench/.cache/``."""
