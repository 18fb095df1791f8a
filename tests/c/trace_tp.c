// SPDX-License-Identifier: MIT OR Apache-2.0
// Tracing without root through the C ABI: mint a token, load a tracepoint
// program with it (libbpf), ask the daemon for the tracepoint's id and
// perf event (bpftoken_tracepoint_id, bpftoken_open_tracepoint), attach
// with bpf_link_create(BPF_PERF_EVENT), call getpid, read run_cnt; then
// ask for a tracepoint the policy does not name and print the refusal.
//
// argv[1]: the allowed tracepoint's category, argv[2] its name, argv[3]
// another tracepoint's name in that category. Needs kernel.bpf_stats_enabled=1.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>

#include <bpftoken.h>

int main(int argc, char **argv)
{
	struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	struct bpf_prog_info info = {};
	__u32 info_len = sizeof(info);
	int token, prog, id, event, link, i, refused;

	if (argc != 4)
		return 2;
	token = bpftoken_mint(NULL, NULL);
	if (token < 0) {
		fprintf(stderr, "bpftoken_mint: %s\n", bpftoken_last_error());
		return 1;
	}
	LIBBPF_OPTS(bpf_prog_load_opts, opts, .token_fd = token, .prog_flags = BPF_F_TOKEN_FD);
	prog = bpf_prog_load(BPF_PROG_TYPE_TRACEPOINT, "tp", "GPL", insns, 2, &opts);
	if (prog < 0) {
		fprintf(stderr, "bpf_prog_load: %s\n", strerror(-prog));
		return 1;
	}
	id = bpftoken_tracepoint_id(NULL, argv[1], argv[2]);
	event = bpftoken_open_tracepoint(NULL, argv[1], argv[2]);
	if (id < 0 || event < 0) {
		fprintf(stderr, "bpftoken: %s\n", bpftoken_last_error());
		return 1;
	}
	printf("id %d\n", id);
	link = bpf_link_create(prog, event, BPF_PERF_EVENT, NULL);
	if (link < 0 || ioctl(event, PERF_EVENT_IOC_ENABLE, 0) < 0) {
		fprintf(stderr, "attach: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < 50; i++)
		syscall(SYS_getpid);
	if (bpf_prog_get_info_by_fd(prog, &info, &info_len) < 0) {
		fprintf(stderr, "bpf_prog_get_info_by_fd: %s\n", strerror(errno));
		return 1;
	}
	printf("run_cnt at least 50: %s\n", info.run_cnt >= 50 ? "yes" : "no");
	refused = bpftoken_open_tracepoint(NULL, argv[1], argv[3]);
	printf("%s:%s: %s (%d, refusal %d)\n", argv[1], argv[3], strerror(-refused), refused, bpftoken_last_refusal());
	printf("%s\n", bpftoken_last_error());
	return 0;
}
