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
# /tmp needs no tmpfs of its own: the root is one (no root= is given), and one mounted over
# /tmp would hide a build tree there, where the fixture sits at the path compiled into the tests.

# A user database as Debian's, of the two users the tests need: `leaktrace run` under sudo runs
# the command as the user who ran sudo, looked up by uid.
mkdir -p /etc
echo 'root:x:0:0:root:/root:/bin/sh' >/etc/passwd
echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >>/etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' >/etc/group

# Loopback starts down in a bare initramfs; the tests talk over it.
ip link set lo up
sh /suite/suite.sh /suite
poweroff -f
