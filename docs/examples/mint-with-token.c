// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * mint-with-token.c: a complete libbpf program that gets its BPF token from
 * bpftokend through libbpftoken, then creates a map and loads a program
 * with it, as an ordinary user. The program is a socket filter that counts
 * the packets its socket receives; attaching a socket filter needs no
 * privilege, creating the map and loading the program need the token.
 *
 * Build (scripts/install puts bpftoken.h, libbpftoken.so and bpftoken.pc
 * under /usr/local; libbpf >= 1.4):
 *
 *     cc -o mint-with-token mint-with-token.c $(pkg-config --cflags --libs bpftoken libbpf)
 *
 * Run it as a user this policy rule allows (the socket is $BPFTOKEN_SOCKET,
 * else /run/bpftokend/socket):
 *
 *     [[allow]]
 *     users = ["alice"]
 *     cmds = ["map_create", "prog_load"]
 *     maps = ["array"]
 *     progs = ["socket_filter"]
 *     attachs = ["cgroup_inet_ingress"]   # a plain program load's attach type
 *
 * Why the token goes to libbpf as an fd (opts.token_fd) and not as
 * bpf_object_open_opts.bpf_token_path: from a path libbpf creates a token
 * itself, and the kernel lets only a process inside that bpffs's user
 * namespace do that; the token bpftoken_mint() returns is already made and
 * works from the caller's own namespaces. Tools built on bpf_object
 * (skeletons, bpftool) run under `bpftoken run` instead, which sets
 * LIBBPF_BPF_TOKEN_PATH for them (docs/usage.md).
 *
 * Prints one line per step; on failure, why on stderr (for a refusal, the
 * daemon's own sentence from bpftoken_last_error()) and exits 1. Compiled
 * and run as an unprivileged user by tests/tests/capi.rs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <linux/bpf.h>

#include <bpftoken.h>

#define PACKETS 3

static int fail(const char *what, int err)
{
	fprintf(stderr, "%s: %s\n", what, strerror(err));
	return 1;
}

int main(void)
{
	/* Ask for exactly what this program uses, not all the policy grants:
	 * a request beyond the grant is refused, never cut down. */
	struct bpftoken_request req = {
		.sz = sizeof(req),
		.flags = BPFTOKEN_NARROW_CMDS | BPFTOKEN_NARROW_MAPS | BPFTOKEN_NARROW_PROGS |
			 BPFTOKEN_NARROW_ATTACHS,
		.cmds = (1ULL << BPF_MAP_CREATE) | (1ULL << BPF_PROG_LOAD),
		.maps = 1ULL << BPF_MAP_TYPE_ARRAY,
		.progs = 1ULL << BPF_PROG_TYPE_SOCKET_FILTER,
		.attachs = 1ULL << BPF_CGROUP_INET_INGRESS,
	};
	struct bpftoken_grant grant = { .sz = sizeof(grant) };
	int token = bpftoken_mint(&req, &grant);
	if (token < 0) {
		fprintf(stderr, "bpftoken_mint: %s: %s\n", strerror(-token), bpftoken_last_error());
		return 1;
	}
	printf("token: cmds %#llx maps %#llx progs %#llx attachs %#llx\n", (unsigned long long)grant.cmds,
	       (unsigned long long)grant.maps, (unsigned long long)grant.progs, (unsigned long long)grant.attachs);

	/* The token goes with BPF_F_TOKEN_FD in each command's flags. */
	LIBBPF_OPTS(bpf_map_create_opts, map_opts, .token_fd = token, .map_flags = BPF_F_TOKEN_FD);
	int map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "pkt_count", sizeof(__u32), sizeof(__u64), 1, &map_opts);
	if (map < 0)
		return fail("bpf_map_create", -map);
	printf("bpf_map_create(BPF_MAP_TYPE_ARRAY) with the token: ok\n");

	/* The filter: add 1 to slot 0 of the map, keep the packet. */
	struct bpf_insn insns[] = {
		/* *(u32 *)(r10 - 4) = 0: the key, on the stack */
		{ .code = BPF_ST | BPF_MEM | BPF_W, .dst_reg = BPF_REG_10, .off = -4, .imm = 0 },
		/* r2 = r10 - 4 */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_10 },
		{ .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = BPF_REG_2, .imm = -4 },
		/* r1 = the map (a 16-byte instruction: the kernel swaps the fd for the map) */
		{ .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map },
		{ 0 },
		/* r0 = bpf_map_lookup_elem(r1, r2) */
		{ .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_map_lookup_elem },
		/* if (r0 == NULL) skip the next two */
		{ .code = BPF_JMP | BPF_JEQ | BPF_K, .dst_reg = BPF_REG_0, .off = 2, .imm = 0 },
		/* r1 = 1; lock *(u64 *)(r0 + 0) += r1 */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_1, .imm = 1 },
		{ .code = BPF_STX | BPF_ATOMIC | BPF_DW, .dst_reg = BPF_REG_0, .src_reg = BPF_REG_1, .imm = BPF_ADD },
		/* return 0xffff: keep up to 64 KiB of the packet */
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0xffff },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	char log[4096] = "";
	LIBBPF_OPTS(bpf_prog_load_opts, prog_opts, .token_fd = token, .prog_flags = BPF_F_TOKEN_FD,
		    .log_buf = log, .log_size = sizeof(log));
	int prog = bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, "pkt_count", "Dual MIT/GPL", insns,
				 sizeof(insns) / sizeof(insns[0]), &prog_opts);
	if (prog < 0) {
		fprintf(stderr, "%s", log); /* the verifier's reasons, if it refused */
		return fail("bpf_prog_load", -prog);
	}
	printf("bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with the token: ok\n");
	/* Everything this program needed the token for is done. */
	close(token);

	/* A UDP socket on loopback that sends to itself, with the filter. */
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	struct timeval timeout = { .tv_sec = 5 };
	char buf[16];
	if (sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof(addr)) ||
	    getsockname(sock, (struct sockaddr *)&addr, &len) ||
	    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)))
		return fail("UDP socket on 127.0.0.1", errno);
	if (setsockopt(sock, SOL_SOCKET, SO_ATTACH_BPF, &prog, sizeof(prog)))
		return fail("setsockopt(SO_ATTACH_BPF)", errno);
	for (int i = 0; i < PACKETS; i++) {
		if (sendto(sock, "ping", 4, 0, (struct sockaddr *)&addr, len) != 4)
			return fail("sendto", errno);
		if (recv(sock, buf, sizeof(buf), 0) != 4)
			return fail("recv", errno);
	}

	__u32 key = 0;
	__u64 count = 0;
	if (bpf_map_lookup_elem(map, &key, &count))
		return fail("bpf_map_lookup_elem", errno);
	printf("received %d datagrams; the filter counted %llu\n", PACKETS, (unsigned long long)count);
	close(sock);
	close(prog);
	close(map);
	return 0;
}
