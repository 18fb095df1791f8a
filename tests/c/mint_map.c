// SPDX-License-Identifier: MIT OR Apache-2.0
// The C ABI end to end: mint a token with libbpftoken (built against the
// installed bpftoken.h, linked with `pkg-config --libs bpftoken`) and create
// an array map with libbpf's bpf_map_create() and opts.token_fd.
//
// The socket is $BPFTOKEN_SOCKET or the default. Prints one line per step
// on stdout; on failure, the reason on stderr (for a refusal, the daemon's
// message from bpftoken_last_error()) and exits 1.
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <linux/bpf.h>

#include <bpftoken.h>

/* The layout libbpftoken.so was built with (capi/src/ffi.rs). */
_Static_assert(sizeof(struct bpftoken_request) == 56, "struct bpftoken_request layout");
_Static_assert(offsetof(struct bpftoken_request, flags) == 40, "struct bpftoken_request layout");
_Static_assert(offsetof(struct bpftoken_request, socket_path) == 48, "struct bpftoken_request layout");
_Static_assert(sizeof(struct bpftoken_grant) == 40, "struct bpftoken_grant layout");

int main(void)
{
	struct bpftoken_request req = {
		.sz = sizeof(req),
		.flags = BPFTOKEN_NARROW_CMDS | BPFTOKEN_NARROW_MAPS,
		.cmds = 1ULL << BPF_MAP_CREATE,
		.maps = 1ULL << BPF_MAP_TYPE_ARRAY,
	};
	struct bpftoken_grant grant = { .sz = sizeof(grant) };
	int token, map;

	token = bpftoken_mint(&req, &grant);
	if (token < 0) {
		fprintf(stderr, "bpftoken_mint: %s (refusal code %d): %s\n", strerror(-token),
			bpftoken_last_refusal(), bpftoken_last_error());
		return 1;
	}
	printf("bpftoken_mint: token fd %d, cmds 0x%llx maps 0x%llx progs 0x%llx attachs 0x%llx, last error \"%s\"\n",
	       token, (unsigned long long)grant.cmds, (unsigned long long)grant.maps,
	       (unsigned long long)grant.progs, (unsigned long long)grant.attachs, bpftoken_last_error());

	map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "bpftoken_c", 4, 8, 1, NULL);
	printf("bpf_map_create(BPF_MAP_TYPE_ARRAY) without the token: %s\n", map < 0 ? strerror(-map) : "created");

	LIBBPF_OPTS(bpf_map_create_opts, opts, .token_fd = token, .map_flags = BPF_F_TOKEN_FD);
	map = bpf_map_create(BPF_MAP_TYPE_ARRAY, "bpftoken_c", 4, 8, 1, &opts);
	if (map < 0) {
		fprintf(stderr, "bpf_map_create(BPF_MAP_TYPE_ARRAY) with the token: %s\n", strerror(-map));
		return 1;
	}
	printf("bpf_map_create(BPF_MAP_TYPE_ARRAY) with the token: map fd %d\n", map);
	close(map);
	close(token);
	return 0;
}
