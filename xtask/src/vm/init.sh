#!/bin/busybox sh
# PID 1 of a test guest: mount what leaktrace and the tests use, run the suite, power off.
# vm-test passes settings on the kernel command line, which the kernel hands to PID 1 as
# environment variables (see suite.sh).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# The tests of --cgroup make cgroups of their own.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# /tmp needs no tmpfs of its own: the root is one (no root= is given), and one mounted over
# /tmp would hide a build tree there, where the fixture sits at the path compiled into the tests.

# Loopback starts down in a bare initramfs; the tests talk over it.
ip link set lo up
sh /suite/suite.sh /suite
poweroff -f
