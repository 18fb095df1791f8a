//! The client crate's examples (`client/examples/`), built and run as an
//! unprivileged user against a real daemon: a token from bpftokend used with
//! raw `bpf(2)` calls and with libbpf (libbpf-sys) `bpf_map_create` /
//! `bpf_prog_load`.

use std::path::PathBuf;

use bpftoken_tests::*;

/// Exactly what both examples need.
const POLICY: &str = r#"
[[allow]]
name = "alice-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]
"#;

/// The same without the socket_filter program type (kprobe instead).
const POLICY_NO_SOCKET_FILTER: &str = r#"
[[allow]]
name = "alice-kprobes"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array"]
progs = ["kprobe"]
attachs = ["cgroup_inet_ingress"]
"#;

const GRANT: &str = "cmds=[map_create,prog_load] maps=[array] progs=[socket_filter] attachs=[cgroup_inet_ingress]";
const GRANT_NO_SOCKET_FILTER: &str =
    "cmds=[map_create,prog_load] maps=[array] progs=[kprobe] attachs=[cgroup_inet_ingress]";

/// target/<profile>/examples/NAME, built by `cargo test` or
/// `cargo build --examples`.
fn example(env: &Env, name: &str) -> Option<PathBuf> {
    let path = env.bin_dir.join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    let what = format!("{} is not built (run cargo build -p bpftoken --examples)", path.display());
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{name}: {what}, and CI=true: must not skip in CI");
    eprintln!("SKIPPED example {name}: {what}");
    None
}

/// `fd 5` -> `fd N`.
fn fd_numbers_as_n(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("fd ") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('N');
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Run an example as alice against `d`; (exit code, stdout lines, stderr).
fn run_example(d: &TestDaemon, path: &PathBuf) -> (Option<i32>, Vec<String>, String) {
    let mut c = as_user(&user(ALICE), path);
    c.env("BPFTOKEN_SOCKET", &d.socket);
    let o = output(c);
    // fd numbers depend on what the process inherited: compare without them
    let lines = stdout(&o).lines().map(fd_numbers_as_n).collect();
    (o.status.code(), lines, stderr(&o))
}

#[test]
fn raw_bpf_example_creates_a_map_and_loads_a_program_with_the_token() {
    let Some(env) = setup("raw_bpf_example_creates_a_map_and_loads_a_program_with_the_token") else { return };
    let Some(ex) = example(&env, "raw_bpf") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let (code, out, err) = run_example(&d, &ex);
    assert_eq!(
        out,
        [
            format!("minted token fd N with {GRANT}"),
            "BPF_MAP_CREATE array with the token: map fd N".to_owned(),
            "BPF_PROG_LOAD socket_filter with the token: prog fd N".to_owned(),
        ],
        "{err}\n{}",
        d.log_text()
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "");
    d.wait_for_log(&format!("decision=\"granted\" peer_uid={}", user(ALICE).uid));
}

#[test]
fn libbpf_sys_example_creates_a_map_and_loads_a_program_with_the_token() {
    let Some(env) = setup("libbpf_sys_example_creates_a_map_and_loads_a_program_with_the_token") else { return };
    let Some(ex) = example(&env, "libbpf_sys") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let (code, out, err) = run_example(&d, &ex);
    assert_eq!(
        out,
        [
            format!("minted token fd N with {GRANT}"),
            "bpf_map_create(BPF_MAP_TYPE_ARRAY) with opts.token_fd: map fd N".to_owned(),
            "bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with opts.token_fd: prog fd N".to_owned(),
        ],
        "{err}\n{}",
        d.log_text()
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "");
}

/// With a policy that grants map_create and prog_load but not the
/// socket_filter program type, the daemon mints the token, the map is
/// created, and the kernel refuses the program load with EPERM, which the
/// example reports and exits 1.
#[test]
fn examples_report_eperm_for_a_program_type_outside_the_policy() {
    let Some(env) = setup("examples_report_eperm_for_a_program_type_outside_the_policy") else { return };
    let Some(raw) = example(&env, "raw_bpf") else { return };
    let Some(libbpf) = example(&env, "libbpf_sys") else { return };
    let d = TestDaemon::start(&env, POLICY_NO_SOCKET_FILTER, &[]);

    let (code, out, err) = run_example(&d, &raw);
    assert_eq!(
        out,
        [
            format!("minted token fd N with {GRANT_NO_SOCKET_FILTER}"),
            "BPF_MAP_CREATE array with the token: map fd N".to_owned()
        ],
        "{err}"
    );
    assert_eq!(
        err,
        "raw_bpf: BPF_PROG_LOAD socket_filter with the token: EPERM (Operation not permitted (os error 1))\n"
    );
    assert_eq!(code, Some(1));

    let (code, out, err) = run_example(&d, &libbpf);
    assert_eq!(
        out,
        [
            format!("minted token fd N with {GRANT_NO_SOCKET_FILTER}"),
            "bpf_map_create(BPF_MAP_TYPE_ARRAY) with opts.token_fd: map fd N".to_owned()
        ],
        "{err}"
    );
    assert_eq!(
        err,
        "libbpf_sys: bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with opts.token_fd: EPERM \
         (Operation not permitted (os error 1))\n"
    );
    assert_eq!(code, Some(1));
}

/// A user the policy does not name gets the daemon's refusal from the
/// example, before any bpf() call.
#[test]
fn examples_report_the_daemons_refusal() {
    let Some(env) = setup("examples_report_the_daemons_refusal") else { return };
    let Some(raw) = example(&env, "raw_bpf") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let eve = user(EVE);
    let mut c = as_user(&eve, &raw);
    c.env("BPFTOKEN_SOCKET", &d.socket);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        format!(
            "raw_bpf: mint: refused: no rule in {} allows uid {} (gid {}) (not_in_policy)\n",
            d.policy.display(),
            eve.uid,
            eve.gid
        )
    );
}
