#!/bin/sh
# /init of the matrix's initramfs: mount what the daemon needs, run the
# scenarios between markers on the serial console, power off. run.sh
# fills in @BPFTOOL@ and @BPF_OBJ@.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
/bin/busybox mount -t bpf bpf /sys/fs/bpf 2>/dev/null
/bin/busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
/bin/busybox mount -t tmpfs -o mode=1777 tmp /tmp
export PATH=/bin:/opt/bpftoken
echo; echo "INFO lsm $(cat /sys/kernel/security/lsm 2>/dev/null)"
echo "INFO unprivileged_bpf_disabled $(cat /proc/sys/kernel/unprivileged_bpf_disabled)"
echo "BPFTOKEN-VM-BEGIN"
/opt/bpftoken/bpftoken-scenarios --bin-dir /opt/bpftoken --bpftool @BPFTOOL@ --bpf-obj @BPF_OBJ@
echo "BPFTOKEN-VM-END $?"
poweroff -f
