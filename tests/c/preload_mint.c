// SPDX-License-Identifier: MIT OR Apache-2.0
// An attack on `executables` rules (threat model row 17): code injected
// into the allowed program with LD_PRELOAD. Its constructor runs inside
// that program before main(): it connects to $PRELOAD_SOCKET, sends a
// plain mint request and takes the token the answer carries, then execs
// $PRELOAD_EXEC (another program); only in the program $PRELOAD_TARGET names with the token in BPF_TOKEN_FD. With
// the enforcer the token is bound to the allowed program's file, so the
// other program gets EPERM; without it (an advisory rule) it works, and
// the audit event says the identity was only claimed.
//
// Built by scripts/setup-test-tools.sh into
// /usr/local/libexec/bpftoken-test/preload_mint.so.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Protocol version 1, RequestBody::Mint(MintRequest::default()): a 4-byte
 * little-endian length, the 2-byte version, the postcard body (variant 0,
 * four empty options). tests/tests/identity.rs checks these bytes against
 * the codec. */
static const unsigned char MINT_FRAME[] = { 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0 };

__attribute__((constructor)) static void preload_mint(void)
{
	const char *path = getenv("PRELOAD_SOCKET");
	const char *exec = getenv("PRELOAD_EXEC");
	const char *target = getenv("PRELOAD_TARGET");
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	char buf[4096], control[CMSG_SPACE(sizeof(int))], fdtext[16];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
			      .msg_controllen = sizeof(control) };
	struct cmsghdr *c;
	int sock, token = -1;

	/* Only in the program attacked, not in what starts it (setpriv). */
	if (!path || !exec || !target || n <= 0)
		return;
	self[n] = 0;
	if (strcmp(self, target))
		return;
	unsetenv("LD_PRELOAD");
	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
	if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) ||
	    write(sock, MINT_FRAME, sizeof(MINT_FRAME)) != (ssize_t)sizeof(MINT_FRAME) || recvmsg(sock, &msg, 0) <= 0) {
		perror("preload_mint: asking bpftokend");
		_exit(3);
	}
	for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(&token, CMSG_DATA(c), sizeof(int));
	if (token < 0) {
		fprintf(stderr, "preload_mint: refused (no token in the answer)\n");
		_exit(4);
	}
	snprintf(fdtext, sizeof(fdtext), "%d", token);
	setenv("BPF_TOKEN_FD", fdtext, 1);
	execl(exec, exec, "try", "map:array", (char *)NULL);
	perror("preload_mint: exec");
	_exit(5);
}
