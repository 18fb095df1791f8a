//! The ways a token reaches a tool: libbpf mode (the default of
//! `bpftoken run`), plain fd mode, container mode, delegated mounts
//! (`bpftoken unshare`), and `bpftoken inspect` / `run --explain`. Real
//! bpftool 7.5 and clang-built objects from `scripts/setup-test-tools.sh`.

use std::os::fd::AsRawFd;

use bpftoken_tests::tools::{bpf_object, bpftool};
use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "alice-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]

[[allow]]
name = "alice-containers"
userns_owners = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]
"#;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// `sh -c SCRIPT` through `bpftoken ARGS... --`, as `user`.
fn sh(d: &TestDaemon, env: &Env, user: &User, args: &[&str], script: &str) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--", "sh", "-c", script]);
    d.bpftoken(env, user, &all)
}

#[test]
fn libbpf_mode_lets_unmodified_bpftool_load_and_pin() {
    let Some(env) = setup("libbpf_mode_lets_unmodified_bpftool_load_and_pin") else { return };
    let (Some(bpftool), Some(obj)) = (bpftool(), bpf_object("sockfilter")) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let script = format!(
        "{b} prog load {o} $BPFTOKEN_PIN_DIR/filter 2>/dev/null && {b} prog show pinned $BPFTOKEN_PIN_DIR/filter",
        b = bpftool.display(),
        o = obj.display()
    );
    let o = sh(&d, &env, &alice, &["run"], &script);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    let out = stdout(&o);
    assert!(out.contains(": socket_filter  name sock_filter") || out.contains(": socket_filter"), "{out}");
    d.wait_for_log("mode=\"libbpf\"");
}

#[test]
fn a_program_type_outside_the_policy_is_refused_by_the_kernel_and_explained() {
    let Some(env) = setup("a_program_type_outside_the_policy_is_refused_by_the_kernel_and_explained") else { return };
    let (Some(bpftool), Some(obj)) = (bpftool(), bpf_object("xdp_pass")) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let script = format!("{} prog load {} $BPFTOKEN_PIN_DIR/xdp", bpftool.display(), obj.display());
    let o = sh(&d, &env, &alice, &["run", "--explain", "--maps", "array"], &script);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    let err = stderr(&o);
    // libbpf says what the kernel said; bpftoken says what the token lacks.
    assert!(err.contains("libbpf: prog 'pass': BPF program load failed: Operation not permitted"), "{err}");
    let explained: Vec<&str> = err.lines().filter(|l| l.starts_with("bpftoken:")).collect();
    assert_eq!(
        explained,
        [
            "bpftoken: the command exited with status 255; its token carries:",
            "bpftoken:   cmds: map_create,prog_load",
            "bpftoken:   maps: array",
            "bpftoken:   progs: socket_filter",
            "bpftoken:   attachs: cgroup_inet_ingress",
            "bpftoken: the kernel refused 2 bpf() calls of the command (the last one usually made it fail):",
            // The policy gives no btf_load: libbpf goes on without BTF.
            "bpftoken: bpf(BPF_BTF_LOAD) was refused (EPERM): the token lacks command btf_load",
            "bpftoken:   libbpf then loads an object without its BTF, unless a program needs BTF",
            "bpftoken:   no rule of the policy gives you command btf_load",
            "bpftoken: bpf(BPF_PROG_LOAD) of program type xdp (attach type cgroup_inet_ingress) was refused (EPERM): \
             the token lacks program type xdp",
            "bpftoken:   no rule of the policy gives you program type xdp",
            // libbpf's probe for expected attach types, refused too.
            "bpftoken: libbpf's feature probes were refused: the token lacks program type cgroup_sock, attach type \
             cgroup_inet_sock_create; libbpf takes that for missing kernel features and goes on without them",
            "bpftoken:   no rule of the policy gives you program type cgroup_sock, attach type cgroup_inet_sock_create",
            "bpftoken: the policy would also grant (ask with --cmds/--maps/--progs/--attachs):",
            "bpftoken:   maps: hash",
        ]
    );
}

/// The token's masks as `run --explain` prints them under POLICY.
const POLICY_TOKEN: [&str; 4] = [
    "bpftoken:   cmds: map_create,prog_load",
    "bpftoken:   maps: hash,array",
    "bpftoken:   progs: socket_filter",
    "bpftoken:   attachs: cgroup_inet_ingress",
];

/// `bpftoken: ` lines of `run --explain`'s stderr, after its header and
/// the token's masks (checked here against POLICY's).
fn explained_after_masks(err: &str, status: i32) -> Vec<String> {
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("bpftoken:")).collect();
    let header = format!("bpftoken: the command exited with status {status}; its token carries:");
    assert_eq!(lines.first().copied(), Some(header.as_str()), "{err}");
    assert_eq!(lines[1..5], POLICY_TOKEN, "{err}");
    lines[5..].iter().map(|l| (*l).to_owned()).collect()
}

/// Issue #19: bpftool `map create` never passes a token (it calls
/// `bpf_map_create()` without one). `--explain` watches its bpf() calls
/// and says exactly that, not "the policy does not give it to you".
#[test]
fn explain_says_bpftool_map_create_did_not_pass_the_token() {
    let Some(env) = setup("explain_says_bpftool_map_create_did_not_pass_the_token") else { return };
    let Some(bpftool) = bpftool() else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let script =
        format!("{} map create $BPFTOKEN_PIN_DIR/m type array key 4 value 4 entries 1 name m", bpftool.display());
    let o = sh(&d, &env, &user(ALICE), &["run", "--explain"], &script);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("Error: map create failed: Operation not permitted"), "{err}");
    assert_eq!(
        explained_after_masks(&err, 255),
        [
            "bpftoken: bpf(BPF_MAP_CREATE) of map type array was refused (EPERM): the token allows it, but the \
             command did not pass the token",
            "bpftoken:   a call uses a token only if the program passes it (BPF_F_TOKEN_FD and the token's fd); \
             libbpf does when it loads a BPF object, not in bpf_map_create() and the like unless the program sets \
             token_fd",
            "bpftoken:   declare the map in a BPF object and let libbpf load it (bpftool: prog load OBJ PATH pinmaps \
             DIR), or have the program pass the token",
        ]
    );
}

/// Walking ids (`bpftool prog show`) needs CAP_SYS_ADMIN in the initial
/// user namespace: `--explain` says no token gives that.
#[test]
fn explain_says_an_id_walk_needs_a_privilege_no_token_gives() {
    let Some(env) = setup("explain_says_an_id_walk_needs_a_privilege_no_token_gives") else { return };
    let Some(bpftool) = bpftool() else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let o = sh(&d, &env, &user(ALICE), &["run", "--explain"], &format!("{} prog show", bpftool.display()));
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("Error: can't get next program: Operation not permitted"), "{err}");
    assert_eq!(
        explained_after_masks(&err, 255),
        [
            "bpftoken: bpf(BPF_PROG_GET_NEXT_ID) was refused (EPERM): walking or opening BPF objects by id needs \
             CAP_SYS_ADMIN in the initial user namespace, which no token gives",
            "bpftoken:   work on objects you hold instead: pinned ones (bpftool prog show pinned PATH) or the fds the \
             program keeps",
        ]
    );
}

/// A command that fails without any bpf() call refused: not the token's.
#[test]
fn explain_says_when_a_failure_is_not_the_tokens() {
    let Some(env) = setup("explain_says_when_a_failure_is_not_the_tokens") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let o = sh(&d, &env, &user(ALICE), &["run", "--explain"], "exit 3");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        explained_after_masks(&stderr(&o), 3),
        ["bpftoken: no bpf() call of the command was refused for lack of privilege (EPERM or EACCES): the failure \
             is not the token's"]
    );
}

/// `bpftoken unshare` delegates its bpffs to libbpf tools: a narrowed set
/// gets what libbpf's feature probes load, where the policy grants it.
#[test]
fn unshare_adds_what_libbpfs_probes_need_to_a_narrowed_set() {
    let Some(env) = setup("unshare_adds_what_libbpfs_probes_need_to_a_narrowed_set") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let o = d.bpftoken(
        &env,
        &user(ALICE),
        &["unshare", "--maps", "hash", "--", "sh", "-c", "grep ' /sys/fs/bpf ' /proc/self/mountinfo"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(",delegate_maps=hash:array,"), "{}", stdout(&o));
    assert_eq!(
        stderr(&o),
        "bpftoken: also asking for map type array: libbpf probes kernel features with them before it loads an \
         object, and takes a refused probe for a missing feature\n"
    );
    // Exactly the lists in fd mode, where libbpf never sees the token.
    let inspect = format!("{} inspect", env.bin("bpftoken").display());
    let o = sh(&d, &env, &user(ALICE), &["run", "--fd-only", "--maps", "hash"], &inspect);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\nmaps: hash\n"), "{}", stdout(&o));
    assert_eq!(stderr(&o), "");
}

#[test]
fn libbpf_mode_enters_the_tokens_namespace_and_fd_mode_does_not() {
    let Some(env) = setup("libbpf_mode_enters_the_tokens_namespace_and_fd_mode_does_not") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let script =
        "id -u; cat /proc/self/uid_map; echo \"token=${BPF_TOKEN_FD:+set} libbpf=${LIBBPF_BPF_TOKEN_PATH:-unset}\"";
    let o = sh(&d, &env, &alice, &["run"], script);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let l = lines(&out);
    assert_eq!(l[0], "0", "{out}");
    assert_eq!(l[1].split_whitespace().collect::<Vec<_>>(), ["0", &alice.uid.to_string(), "1"], "{out}");
    assert!(l[2].starts_with("token=set libbpf=/proc/self/fd/"), "{out}");

    let o = sh(&d, &env, &alice, &["run", "--fd-only"], script);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let l = lines(&out);
    assert_eq!(l[0], alice.uid.to_string(), "{out}");
    assert_eq!(l[1].split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295"], "{out}");
    assert_eq!(l[2], "token=set libbpf=unset", "{out}");
}

#[test]
fn libbpf_mode_adds_exactly_the_namespace_and_the_bpffs() {
    let Some(env) = setup("libbpf_mode_adds_exactly_the_namespace_and_the_bpffs") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let mut c = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    c.args(["scope-fds", d.socket.to_str().unwrap()]);
    let o = output(c);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        lines(&stdout(&o)),
        ["new fds 3", "token cloexec true", "userns cloexec true", "bpffs cloexec true"],
        "{}",
        stderr(&o)
    );
}

#[test]
fn unshare_gives_unmodified_bpftool_a_bpffs_at_sys_fs_bpf() {
    let Some(env) = setup("unshare_gives_unmodified_bpftool_a_bpffs_at_sys_fs_bpf") else { return };
    let (Some(bpftool), Some(obj)) = (bpftool(), bpf_object("sockfilter")) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    // No token flags, no environment: libbpf finds the delegated bpffs at
    // /sys/fs/bpf by itself.
    let script = format!(
        "{b} prog load {o} /sys/fs/bpf/p 2>/dev/null && {b} prog show pinned /sys/fs/bpf/p && grep ' /sys/fs/bpf ' /proc/self/mountinfo",
        b = bpftool.display(),
        o = obj.display()
    );
    let o = d.bpftoken(&env, &alice, &["unshare", "--", "env", "-u", "BPF_TOKEN_FD", "sh", "-c", &script]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    let out = stdout(&o);
    assert!(out.contains(": socket_filter"), "{out}");
    assert!(out.contains("delegate_progs=socket_filter"), "{out}");
    d.wait_for_log("mode=\"delegated_mount\"");
}

#[test]
fn container_mode_mints_in_the_callers_own_namespace() {
    let Some(env) = setup("container_mode_mints_in_the_callers_own_namespace") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    // A rootless container's root: alice's own user namespace.
    let mut c = as_user(&alice, "unshare");
    c.args(["-U", "-r", "--"]).arg(env.bin("bpftoken")).arg("--socket").arg(&d.socket);
    c.args(["run", "--fd-only", "--"]).arg(env.bin("bpftoken-probe")).args(["try", "map:array", "map:hash"]);
    let o = output(c);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    // Only the userns_owners rule applies inside: hash is alice's on the host only.
    assert_eq!(lines(&stdout(&o)), ["map:array ok", "map:hash EPERM"]);
    let log = d.wait_for_log("mode=\"container\"");
    let line = log.lines().find(|l| l.contains("mode=\"container\"")).unwrap_or_default();
    assert!(line.contains(&format!(" userns_owner=\"{}\"", alice.uid)), "{line}");

    // Another uid's container matches no rule, and is told why.
    let bob = user(BOB);
    let mut c = as_user(&bob, "unshare");
    c.args(["-U", "-r", "--"]).arg(env.bin("bpftoken")).arg("--socket").arg(&d.socket).args(["run", "--", "true"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "bpftoken: refused: no rule in {} allows uid {uid} (gid {gid}) (uid {uid} calls from a user namespace \
             owned by uid {uid}, such as a rootless container; only rules with `userns_owners` match there) \
             (not_in_policy)",
            d.policy.display(),
            uid = bob.uid,
            gid = bob.gid
        )
    );
}

#[test]
fn a_delegated_mount_needs_a_user_namespace_the_caller_owns() {
    let Some(env) = setup("a_delegated_mount_needs_a_user_namespace_the_caller_owns") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let bob = user(BOB);
    // Bob's namespace, opened by root and inherited by alice's probe.
    let mut holder = as_user(&bob, "unshare");
    holder.args(["-U", "sleep", "30"]);
    let mut holder = holder.spawn().expect("bob's namespace");
    let bobs_ns = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let children = children(holder.id());
            let pid = children.first().copied().unwrap_or(holder.id());
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).ok()?;
            let ours = std::fs::metadata("/proc/self/ns/user").ok()?;
            use std::os::unix::fs::MetadataExt;
            (ns.metadata().ok()?.ino() != ours.ino()).then_some(ns)
        })
        .expect("bob's user namespace");
    let init_ns = std::fs::File::open("/proc/self/ns/user").unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    let net_ns = std::fs::File::open("/proc/self/ns/net").unwrap();
    let cases = [
        (&bobs_ns, format!("the user namespace sent is owned by uid {}, not by you (uid {})", bob.uid, alice.uid)),
        (&init_ns, "the fd sent is the initial user namespace; send one your uid created".to_owned()),
        (&null, "the fd sent is not a namespace (send an fd of /proc/PID/ns/user)".to_owned()),
        (&net_ns, "the fd sent is a namespace of type 0x40000000, not a user namespace".to_owned()),
    ];
    for (file, message) in cases {
        let fd = file.as_raw_fd();
        // Inherited across exec (other tests' children may inherit it too,
        // which is harmless).
        rustix::io::fcntl_setfd(file, rustix::io::FdFlags::empty()).unwrap();
        let mut c = as_user(&alice, env.bin("bpftoken-probe"));
        c.args(["delegate", d.socket.to_str().unwrap(), &fd.to_string()]);
        let o = output(c);
        assert_eq!(stdout(&o).trim(), format!("refused: {message} (bad_namespace)"), "{}", stderr(&o));
    }
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn inspect_names_a_tokens_masks_and_refuses_other_fds() {
    let Some(env) = setup("inspect_names_a_tokens_masks_and_refuses_other_fds") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(
        &env,
        &alice,
        &["run", "--fd-only", "--maps", "hash", "--", env.bin("bpftoken").to_str().unwrap(), "inspect"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        lines(&stdout(&o)),
        [
            "cmds: map_create,prog_load",
            "maps: hash",
            "progs: socket_filter",
            "attachs: cgroup_inet_ingress",
            "source: bpf_obj_get_info"
        ]
    );
    let o = d.bpftoken(&env, &alice, &["inspect", "--fd", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "bpftoken: fd 0 is not a BPF token (/dev/null)");
    let o = d.bpftoken(&env, &alice, &["inspect", "--fd", "77"]);
    assert_eq!(stderr(&o).trim(), "bpftoken: fd 77 is not open");
    let o = d.bpftoken(&env, &alice, &["inspect"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim(), "bpftoken: no --fd given and BPF_TOKEN_FD is not set");
}
