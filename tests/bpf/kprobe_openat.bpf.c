// SPDX-License-Identifier: GPL-2.0-only
/* A kprobe an unmodified bpftool attaches (`prog loadall ... autoattach`)
 * under bpftoken run in the kernel matrix's VM (capability trace-kprobe):
 * libbpf opens the kprobe PMU event, the supervisor gets it from the
 * daemon. No kernel types are read, so no vmlinux.h. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("kprobe/do_sys_openat2")
int on_open(void *ctx)
{
	return 0;
}
