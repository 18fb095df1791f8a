// SPDX-License-Identifier: MIT OR Apache-2.0
// An ordinary libbpf 1.5 tracing tool, unmodified: a bpftool-generated
// skeleton of tests/bpf/trace_skel.bpf.c, opened, loaded and auto-attached
// (a tracepoint and a uprobe on bpftoken_uprobe_target below), then 10
// getpid calls and 3 calls of the target, and the ring buffer's events
// counted. Under `bpftoken run` (libbpf mode) it gets its token from
// LIBBPF_BPF_TOKEN_PATH and its perf events from the supervisor; without
// it, it fails. `trace_skel getpid N` only calls getpid N times (for
// bpftool's autoattach test).
//
// Built by scripts/setup-test-tools.sh into
// /usr/local/libexec/bpftoken-test/trace_skel (run it with trace_skel_run).
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/libbpf.h>

#include "trace_skel.skel.h"

static int counts[3];
static unsigned self;

__attribute__((noinline)) int bpftoken_uprobe_target(int x)
{
	asm volatile("" ::: "memory");
	return x + 1;
}

static int on_event(void *ctx, void *data, size_t len)
{
	const unsigned *e = data;

	(void)ctx;
	/* The tracepoint fires for every process: count ours only. */
	if (len >= 8 && e[0] == self && e[1] < 3)
		counts[e[1]]++;
	return 0;
}

int main(int argc, char **argv)
{
	struct trace_skel *skel;
	struct ring_buffer *rb;
	int err, i, sum = 0;

	if (argc == 3 && !strcmp(argv[1], "getpid")) {
		for (i = 0; i < atoi(argv[2]); i++)
			syscall(SYS_getpid);
		return 0;
	}
	self = (unsigned)getpid();
	skel = trace_skel__open_and_load();
	if (!skel) {
		fprintf(stderr, "trace_skel: open_and_load failed: %s\n", strerror(errno));
		return 1;
	}
	err = trace_skel__attach(skel);
	if (err) {
		fprintf(stderr, "trace_skel: attach failed: %d (%s)\n", err, strerror(-err));
		return 1;
	}
	printf("attached\n");
	rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_event, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "trace_skel: ring_buffer__new: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < 10; i++)
		syscall(SYS_getpid);
	for (i = 0; i < 3; i++)
		sum += bpftoken_uprobe_target(i);
	ring_buffer__poll(rb, 200);
	printf("tracepoint events %d\nuprobe events %d\n", counts[1], counts[2]);
	ring_buffer__free(rb);
	trace_skel__destroy(skel);
	return (counts[1] >= 10 && counts[2] >= 3 && sum == 6) ? 0 : 3;
}
