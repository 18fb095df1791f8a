// SPDX-License-Identifier: GPL-2.0
// An XDP program that passes every packet, and has no map: a program type
// the test policies do not grant, for refusal tests.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
