// SPDX-License-Identifier: GPL-2.0-only
/* What an ordinary tracing tool loads (tests/c/trace_skel.c, and bpftool
 * prog loadall ... autoattach): a tracepoint program on sys_enter_getpid
 * and a uprobe on a function of the test program, each writing an event
 * into a ring buffer. Attaching either needs a perf event, which
 * bpftoken run's supervisor gets from the daemon (docs/tracing.md). No
 * kernel types are needed, so no vmlinux.h. A global variable (.bss), as
 * most tools have: libbpf creates it only where its feature probes pass
 * (docs/usage.md, "Narrowing a request for a libbpf tool"). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct event {
	__u32 pid;
	__u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

/* Events emitted, in .bss. */
__u64 emitted;

static __always_inline void emit(__u32 kind)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->kind = kind;
	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&emitted, 1);
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
	emit(1);
	return 0;
}

SEC("uprobe//usr/local/libexec/bpftoken-test/trace_skel:bpftoken_uprobe_target")
int on_target(void *ctx)
{
	emit(2);
	return 0;
}
