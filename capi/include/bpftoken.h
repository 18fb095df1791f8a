/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * bpftoken.h: C client of bpftokend, the daemon that hands local users BPF
 * tokens carrying exactly what a root-owned policy grants them.
 *
 *     #include <bpftoken.h>
 *     #include <bpf/bpf.h>
 *
 *     struct bpftoken_grant grant = { .sz = sizeof(grant) };
 *     int token = bpftoken_mint(NULL, &grant);       // all my policy grants
 *     if (token < 0) {
 *         fprintf(stderr, "bpftoken: %s\n", bpftoken_last_error());
 *         return -token;
 *     }
 *     LIBBPF_OPTS(bpf_map_create_opts, opts,
 *                 .token_fd = token, .map_flags = BPF_F_TOKEN_FD);
 *     int map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "m", 4, 8, 1, &opts);
 *
 * Build with `pkg-config --cflags --libs bpftoken`.
 *
 * ABI stability: the structs below only ever grow at their end. Callers set
 * `sz` to the sizeof() they were compiled with; the library reads or writes
 * only that many bytes, treats fields beyond a caller's `sz` as zero, and
 * refuses (-E2BIG) a request whose bytes beyond the library's own size are
 * not zero. Constants keep their values. Symbols are never removed within
 * a soname (libbpftoken.so.0).
 */
#ifndef BPFTOKEN_H
#define BPFTOKEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Flags of struct bpftoken_request. Without its flag, a mask is ignored
 * and the token carries everything the policy grants in that set; with it,
 * the mask narrows that set. A mask reaching outside the grant is refused
 * (-EPERM, code BPFTOKEN_REFUSED_NOT_GRANTED), never silently cut down.
 */
#define BPFTOKEN_NARROW_CMDS    (1U << 0)
#define BPFTOKEN_NARROW_MAPS    (1U << 1)
#define BPFTOKEN_NARROW_PROGS   (1U << 2)
#define BPFTOKEN_NARROW_ATTACHS (1U << 3)

/*
 * What to ask for. Masks are bitmasks of the kernel's enums, as in the
 * bpffs delegate_* options: bit (1ULL << BPF_MAP_CREATE) in cmds,
 * (1ULL << BPF_MAP_TYPE_ARRAY) in maps, (1ULL << BPF_PROG_TYPE_XDP) in
 * progs, (1ULL << BPF_CGROUP_INET_INGRESS) in attachs. A program load needs
 * its program type's bit and the bit of its expected attach type (0, that
 * is BPF_CGROUP_INET_INGRESS, for a plain load).
 */
struct bpftoken_request {
	size_t sz;                /* sizeof(struct bpftoken_request) */
	uint64_t cmds;            /* with BPFTOKEN_NARROW_CMDS */
	uint64_t maps;            /* with BPFTOKEN_NARROW_MAPS */
	uint64_t progs;           /* with BPFTOKEN_NARROW_PROGS */
	uint64_t attachs;         /* with BPFTOKEN_NARROW_ATTACHS */
	uint32_t flags;           /* BPFTOKEN_NARROW_* */
	uint32_t reserved;        /* must be zero */
	/* The daemon's socket; NULL: $BPFTOKEN_SOCKET, else
	 * /run/bpftokend/socket. */
	const char *socket_path;
};

/* What the token carries: the delegation masks the kernel will enforce. */
struct bpftoken_grant {
	size_t sz;                /* sizeof(struct bpftoken_grant), set by the caller */
	uint64_t cmds;
	uint64_t maps;
	uint64_t progs;
	uint64_t attachs;
};

/*
 * Ask bpftokend for a BPF token.
 *
 * req: NULL asks for everything the policy grants the caller.
 * out: NULL, or filled with the token's masks on success (up to out->sz).
 *
 * Returns the token fd (O_CLOEXEC; the caller closes it) or a negative
 * errno:
 *   -EPERM      refused by the policy (not in policy, not granted, ...)
 *   -EINVAL     bad arguments (sz too small, unknown flags, reserved set),
 *               or the request leaves nothing to delegate
 *   -E2BIG      req->sz is larger than this library knows and the extra
 *               bytes are not zero
 *   -EAGAIN     rate limited by the policy
 *   -EBUSY      the daemon is at its connection limit
 *   -ETIMEDOUT  the daemon timed out
 *   -EPROTO     protocol error or unsupported protocol version
 *   -EIO        the daemon failed to mint, or an internal error
 *   -ENOENT, -ECONNREFUSED, -EACCES, ...  the socket cannot be reached
 *               (the errno of connect(2))
 * bpftoken_last_error() tells why in words.
 */
int bpftoken_mint(const struct bpftoken_request *req, struct bpftoken_grant *out);

/*
 * Why the last bpftoken_mint() of the calling thread failed: the daemon's
 * refusal ("no rule in /etc/bpftokend/policy.toml allows uid 1001 (gid
 * 1001) (not_in_policy)") or the transport error. "" after a success or
 * before any call; never NULL. Valid until the thread's next
 * bpftoken_mint() call.
 */
const char *bpftoken_last_error(void);

/*
 * Stable code of the daemon's refusal in the calling thread's last
 * bpftoken_mint(), or 0 if that call was not refused by the daemon.
 */
#define BPFTOKEN_REFUSED_NOT_IN_POLICY       1
#define BPFTOKEN_REFUSED_NOT_GRANTED         2
#define BPFTOKEN_REFUSED_EMPTY_GRANT         3
#define BPFTOKEN_REFUSED_UNMAPPED_PEER       4
#define BPFTOKEN_REFUSED_UNSUPPORTED_PEER    5
#define BPFTOKEN_REFUSED_RATE_LIMITED        6
#define BPFTOKEN_REFUSED_BAD_NAMESPACE       7
#define BPFTOKEN_REFUSED_NOT_ENFORCEABLE     8
#define BPFTOKEN_REFUSED_TOO_MANY_TOKENS     9
#define BPFTOKEN_REFUSED_UNSUPPORTED_VERSION 10
#define BPFTOKEN_REFUSED_MALFORMED_REQUEST   11
#define BPFTOKEN_REFUSED_FRAME_TOO_LARGE     12
#define BPFTOKEN_REFUSED_TIMEOUT             13
#define BPFTOKEN_REFUSED_BUSY                14
#define BPFTOKEN_REFUSED_UNKNOWN_LEASE       15
#define BPFTOKEN_REFUSED_NOT_YOUR_LEASE      16
#define BPFTOKEN_REFUSED_REVOCATION_UNAVAILABLE 17
#define BPFTOKEN_REFUSED_LEARNING_NOT_ALLOWED 18
#define BPFTOKEN_REFUSED_LEARNING_UNAVAILABLE 19
#define BPFTOKEN_REFUSED_MINT_FAILED         20
#define BPFTOKEN_REFUSED_BAD_PROGRAM         21
#define BPFTOKEN_REFUSED_TARGET_NOT_ALLOWED  22
#define BPFTOKEN_REFUSED_TRACE_UNAVAILABLE   23
#define BPFTOKEN_REFUSED_ANSWER_TOO_LARGE    24
int bpftoken_last_refusal(void);

/*
 * Tracing without root (docs/tracing.md): with a token, tracepoint, kprobe
 * and uprobe programs load; to attach one, ask the daemon for the perf
 * event of a target the policy names (`tracepoints`, `kprobes`, `uprobes`),
 * then BPF_LINK_CREATE(prog_fd, event_fd, BPF_PERF_EVENT) and
 * ioctl(event_fd, PERF_EVENT_IOC_ENABLE, 0) as libbpf does.
 * socket_path NULL: $BPFTOKEN_SOCKET or the default. Each returns a new
 * fd (close-on-exec), or for bpftoken_tracepoint_id() the id, or a
 * negative errno; bpftoken_last_error() and bpftoken_last_refusal() say
 * why (BPFTOKEN_REFUSED_TARGET_NOT_ALLOWED: no rule names the target,
 * -EPERM; BPFTOKEN_REFUSED_TRACE_UNAVAILABLE: the kernel cannot, e.g. no
 * kprobe PMU, -EOPNOTSUPP).
 */
int bpftoken_tracepoint_id(const char *socket_path, const char *category, const char *name);
int bpftoken_open_tracepoint(const char *socket_path, const char *category, const char *name);
int bpftoken_open_kprobe(const char *socket_path, const char *symbol, unsigned long long offset, int retprobe);
/* pid -1: every process running the binary (the policy must list it);
 * else one of the caller's own processes. */
int bpftoken_open_uprobe(const char *socket_path, const char *binary, unsigned long long offset, int retprobe,
			 int pid);

#ifdef __cplusplus
}
#endif

#endif /* BPFTOKEN_H */
