// SPDX-License-Identifier: GPL-2.0-only
/*
 * bpftokend's enforcer: a BPF LSM program on the four BPF token hooks.
 *
 * - bpf_token_create gives every token a serial (unique while the enforcer
 *   is loaded, never reused), records token -> (scope, serial), counts it
 *   as created in its scope, and appends the serial to the creating task's
 *   record so that a minter that creates a batch of tokens in one task
 *   learns exactly which serials it got, even when other tasks (libbpf
 *   mode clients) create tokens in the same scope at the same time.
 * - bpf_token_free forgets the token and counts it as freed: live tokens
 *   of a scope = created - freed; it also removes the token's lease entry
 *   from `deadlines`, which tells the daemon that the lease's token is gone.
 * - bpf_token_cmd and bpf_token_capable refuse (-EPERM) every use of a
 *   token whose serial, or whose whole scope, the daemon has put in the
 *   `deadlines` map with a deadline that has passed (0: revoked now;
 *   NO_DEADLINE: a lease without expiry, not revoked), or with a binding
 *   the current task does not meet (another uid, outside the cgroup
 *   subtree the lease was minted for, or another program than the file
 *   the lease is bound to).
 * - fentry on free_user_ns (the kernel's deferred free of a user
 *   namespace) removes the whole-scope entry and the counts of a scope that
 *   no longer exists, before its inode number can be reused, so an entry
 *   never outlives its scope and never hits a later, unrelated one.
 *
 * The daemon pins the links and maps in bpffs (see daemon/src/pins.rs), so
 * all of this outlives the daemon and a restarted daemon adopts it.
 *
 * A scope is a user namespace, keyed by its inode number
 * (token->userns->ns.inum, the st_ino of /proc/PID/ns/user). Inode numbers
 * are reused after a namespace is freed; the free_user_ns hook removes
 * the scope's entries first.
 *
 * The kernel types are declared here with preserve_access_index (CO-RE):
 * libbpf relocates the field offsets against the running kernel's BTF at
 * load time, so the build needs neither a vmlinux.h nor BTF on the build
 * machine.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define EPERM 1
#define ENOSPC 28

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct work_struct {
	unsigned long data;
} __attribute__((preserve_access_index));

struct user_namespace {
	struct ns_common ns;
	struct work_struct work;
} __attribute__((preserve_access_index));

struct bpf_token {
	struct user_namespace *userns;
} __attribute__((preserve_access_index));

struct bpf_map;

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct task_struct {
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

struct bpf_prog_aux {
	struct bpf_token *token;
} __attribute__((preserve_access_index));

struct bpf_prog {
	struct bpf_prog_aux *aux;
} __attribute__((preserve_access_index));

/* Shared with daemon/src/enforcer.rs: keep the layouts in step. */

/* Most tokens one task records (the daemon mints at most 8 per child). */
#define TASK_SERIALS 8

struct token_info {
	__u32 scope;
	__u32 creator_tgid;
	__u64 serial;
};

struct scope_count {
	__u64 created;
	__u64 freed;
};

struct task_serials {
	__u32 scope;
	__u32 n;
	__u64 serials[TASK_SERIALS];
};

/* serial 0: the whole scope. */
struct revoke_key {
	__u32 scope;
	__u32 pad;
	__u64 serial;
};

/* The last serial handed out (index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_serial SEC(".maps");

/* Live tokens: kernel address of the struct bpf_token -> what it is. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, __u64);
	__type(value, struct token_info);
} tokens SEC(".maps");

/* Per scope: tokens created and freed since the enforcer was loaded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct scope_count);
} scopes SEC(".maps");

/* Per creating task (tid): the serials it created, in order. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct task_serials);
} task_serials SEC(".maps");

/* A lease that neither expires nor is revoked (yet). */
#define NO_DEADLINE (~0ULL)

/* lease_entry.bind: who may use the lease's tokens. */
#define BIND_UID 1	/* only tasks whose (real, init-namespace) uid is bind_uid */
#define BIND_CGROUP 2	/* only tasks in the cgroup v2 subtree bind_cgroup_id at bind_cgroup_level */
#define BIND_EXE 4	/* only tasks running the file (bind_exe_dev, bind_exe_ino) */

struct lease_entry {
	/* CLOCK_BOOTTIME nanoseconds; 0: revoked now; NO_DEADLINE: none. */
	__u64 deadline;
	__u64 bind_cgroup_id;
	__u32 bind_uid;
	__u32 bind_cgroup_level;
	__u32 bind;
	__u32 scope_uid;	/* never read here: uid owning the scope (the user
			 * namespace's owner), whose max_live_tokens it counts for */
	/* Never read here: what a daemon that adopts the pinned maps after a
	 * restart needs to list and revoke the lease. */
	__u64 lease_id;
	__u64 serial;		/* the token handed out; 0: not known */
	__u64 created;		/* Unix seconds */
	__u64 expires;		/* Unix seconds; 0: never */
	__u32 owner_uid;
	__u32 mode;		/* the daemon's LeaseMode numbering */
	/* BIND_EXE: the executable's inode number and its superblock's
	 * device, in the kernel's dev_t encoding (major << 20 | minor). */
	__u64 bind_exe_ino;
	__u32 bind_exe_dev;
	__u32 pad;
};

/* One entry per lease, written by the daemon only: (scope, serial) ->
 * deadline and binding. Removed here when the token (serial) or the
 * scope (serial 0) is freed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct revoke_key);
	__type(value, struct lease_entry);
} deadlines SEC(".maps");

/* The last lease id the daemon handed out (index 0), written by the daemon
 * only: kept with the pinned maps so that ids are never reused across
 * daemon restarts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_lease SEC(".maps");

/* Learning (`bpftoken learn`): what the tokens of a learning lease's
 * scope were used for, as bit masks over the kernel's enums (the token's
 * delegate_* layout). The daemon creates the entry (all zero) when it
 * grants the learning lease and reads and deletes it when the lease ends;
 * only scopes with an entry are recorded. */
struct learned {
	__u64 cmds;
	__u64 maps;
	__u64 progs;
	__u64 attachs;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct learned);
} learning SEC(".maps");

static __always_inline void learn_bit(__u64 *mask, __u32 bit)
{
	if (bit < 64)
		__sync_fetch_and_or(mask, 1ULL << bit);
}

static __always_inline __u32 scope_of(const struct bpf_token *token)
{
	return BPF_CORE_READ(token, userns, ns.inum);
}

/* Whether the current task runs the file (dev, ino): its mm's exe_file,
 * the file the kernel executed, whatever path or mount namespace it came
 * through. A task without an mm (a kernel thread) runs none. */
static __always_inline int runs_exe(__u32 dev, __u64 ino)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *inode = BPF_CORE_READ(task, mm, exe_file, f_inode);

	if (!inode)
		return 0;
	return BPF_CORE_READ(inode, i_ino) == ino && BPF_CORE_READ(inode, i_sb, s_dev) == dev;
}

/* Whether the lease entry of (scope, serial), if any, refuses the current
 * task: its deadline has passed, or the task is not the one it is bound to. */
static __always_inline int lapsed(__u32 scope, __u64 serial)
{
	struct revoke_key key = { .scope = scope, .serial = serial };
	struct lease_entry *e = bpf_map_lookup_elem(&deadlines, &key);

	if (!e)
		return 0;
	if (e->deadline != NO_DEADLINE && (e->deadline == 0 || bpf_ktime_get_boot_ns() >= e->deadline))
		return 1;
	if ((e->bind & BIND_UID) && (__u32)bpf_get_current_uid_gid() != e->bind_uid)
		return 1;
	if ((e->bind & BIND_CGROUP) &&
	    bpf_get_current_ancestor_cgroup_id(e->bind_cgroup_level) != e->bind_cgroup_id)
		return 1;
	if ((e->bind & BIND_EXE) && !runs_exe(e->bind_exe_dev, e->bind_exe_ino))
		return 1;
	return 0;
}

static __always_inline int check(const struct bpf_token *token)
{
	__u64 addr = (__u64)token;
	struct token_info *info = bpf_map_lookup_elem(&tokens, &addr);
	__u32 scope = info ? info->scope : scope_of(token);

	if (lapsed(scope, 0))
		return -EPERM;
	if (info && lapsed(scope, info->serial))
		return -EPERM;
	return 0;
}

SEC("lsm/bpf_token_create")
int BPF_PROG(token_create, struct bpf_token *token, union bpf_attr *attr, const void *path, int ret)
{
	__u32 zero = 0;
	__u64 *last;
	__u64 addr = (__u64)token;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct token_info info = {};
	struct scope_count fresh = {}, *count;
	struct task_serials *mine, empty = {};

	if (ret)
		return ret;
	last = bpf_map_lookup_elem(&last_serial, &zero);
	if (!last)
		return -ENOSPC;
	info.scope = scope_of(token);
	info.creator_tgid = bpf_get_current_pid_tgid() >> 32;
	info.serial = __sync_fetch_and_add(last, 1) + 1;
	/* A token the enforcer cannot track is a token it cannot revoke:
	 * refuse it rather than hand out one that escapes. */
	if (bpf_map_update_elem(&tokens, &addr, &info, BPF_NOEXIST))
		return -ENOSPC;

	count = bpf_map_lookup_elem(&scopes, &info.scope);
	if (!count) {
		bpf_map_update_elem(&scopes, &info.scope, &fresh, BPF_NOEXIST);
		count = bpf_map_lookup_elem(&scopes, &info.scope);
	}
	if (count)
		__sync_fetch_and_add(&count->created, 1);

	mine = bpf_map_lookup_elem(&task_serials, &tid);
	if (!mine) {
		bpf_map_update_elem(&task_serials, &tid, &empty, BPF_NOEXIST);
		mine = bpf_map_lookup_elem(&task_serials, &tid);
	}
	if (mine) {
		__u32 n = mine->n;

		if (n < TASK_SERIALS) {
			mine->serials[n] = info.serial;
			mine->scope = info.scope;
		}
		mine->n = n + 1;
	}
	return 0;
}

SEC("lsm/bpf_token_free")
int BPF_PROG(token_free, struct bpf_token *token)
{
	__u64 addr = (__u64)token;
	struct token_info *info = bpf_map_lookup_elem(&tokens, &addr);
	struct scope_count *count;
	struct revoke_key key = {};
	__u32 scope;

	if (!info)
		return 0;
	scope = info->scope;
	key.scope = scope;
	key.serial = info->serial;
	bpf_map_delete_elem(&tokens, &addr);
	bpf_map_delete_elem(&deadlines, &key);
	count = bpf_map_lookup_elem(&scopes, &scope);
	if (count)
		__sync_fetch_and_add(&count->freed, 1);
	return 0;
}

/* The kernel frees a user namespace in a work item (free_user_ns), after
 * its last reference is gone and before its inode number is released. */
SEC("fentry/free_user_ns")
int BPF_PROG(userns_free, struct work_struct *work)
{
	struct user_namespace *ns = (void *)work - bpf_core_field_offset(struct user_namespace, work);
	struct revoke_key key = {};
	__u32 scope = BPF_CORE_READ(ns, ns.inum);

	key.scope = scope;
	bpf_map_delete_elem(&deadlines, &key);
	bpf_map_delete_elem(&scopes, &scope);
	bpf_map_delete_elem(&learning, &scope);
	return 0;
}

SEC("lsm/bpf_token_cmd")
int BPF_PROG(token_cmd, const struct bpf_token *token, enum bpf_cmd cmd, int ret)
{
	struct learned *l;
	__u32 scope;

	if (ret)
		return ret;
	ret = check(token);
	if (ret)
		return ret;
	scope = scope_of(token);
	l = bpf_map_lookup_elem(&learning, &scope);
	if (l)
		learn_bit(&l->cmds, cmd);
	return 0;
}

/* The kernel calls these after it has accepted the token for the command
 * (and, for programs, for the program and attach type); without a token,
 * or with one that does not cover the call, there is none. Later kernels
 * add arguments after `token`; they are not read. */
SEC("lsm/bpf_map_create")
int BPF_PROG(learn_map, struct bpf_map *map, union bpf_attr *attr, struct bpf_token *token)
{
	struct learned *l;
	__u32 scope;

	if (!token)
		return 0;
	scope = scope_of(token);
	l = bpf_map_lookup_elem(&learning, &scope);
	if (l)
		learn_bit(&l->maps, attr->map_type);
	return 0;
}

SEC("lsm/bpf_prog_load")
int BPF_PROG(learn_prog, struct bpf_prog *prog, union bpf_attr *attr)
{
	/* bpf_prog_load() moves the token into prog->aux before this hook,
	 * so its `token` argument is always NULL: read the program's. */
	struct bpf_token *token = BPF_CORE_READ(prog, aux, token);
	struct learned *l;
	__u32 scope;

	if (!token)
		return 0;
	scope = scope_of(token);
	l = bpf_map_lookup_elem(&learning, &scope);
	if (l) {
		learn_bit(&l->progs, attr->prog_type);
		learn_bit(&l->attachs, attr->expected_attach_type);
	}
	return 0;
}

SEC("lsm/bpf_token_capable")
int BPF_PROG(token_capable, const struct bpf_token *token, int cap, int ret)
{
	if (ret)
		return ret;
	return check(token);
}

char LICENSE[] SEC("license") = "GPL";
