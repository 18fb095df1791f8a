// SPDX-License-Identifier: GPL-2.0
// A socket filter that counts the packets it sees in an array map and
// passes them all. Program type socket_filter, expected attach type 0
// (cgroup_inet_ingress), one array map: what a token must delegate to
// load it is cmds map_create+prog_load (+btf_load for its BTF), maps array,
// progs socket_filter, attachs cgroup_inet_ingress.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} packets SEC(".maps");

SEC("socket")
int count_packets(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&packets, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
