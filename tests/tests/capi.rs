//! The C ABI end to end: `scripts/install-capi` installs libbpftoken.so,
//! bpftoken.h and bpftoken.pc into a temporary prefix; `tests/c/mint_map.c`
//! is compiled against that installation with `pkg-config --cflags --libs
//! bpftoken` and Debian trixie's libbpf 1.5, and run as an unprivileged
//! user: it mints a token and creates a map with libbpf's
//! `bpf_map_create()` and `token_fd`. The docs' own C example,
//! `docs/examples/mint-with-token.c`, is built and run the same way, with
//! the policy rule its header gives.
//!
//! A temporary prefix rather than /usr/local: the test runs the very script
//! `scripts/install` uses for /usr/local, but leaves the machine's
//! /usr/local alone (CI installs and removes it there for real with
//! `scripts/install`), needs no release build, and cannot race another test.

use std::path::{Path, PathBuf};
use std::process::Command;

use bpftoken_tests::tools::{trixie_libbpf, TrixieLibbpf};
use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "alice-maps"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_owned()
}

fn run_ok(mut c: Command) -> String {
    c.current_dir(repo());
    let what = format!("{c:?}");
    let o = output(c);
    assert!(o.status.success(), "{what} failed ({}):\n{}{}", o.status, stdout(&o), stderr(&o));
    stdout(&o)
}

/// Install the C library into `dir/prefix` and build mint_map against it.
/// Returns the program and the library directory it needs at run time.
/// Whether target/<profile>/libbpftoken.so is built (skip or, in CI, fail
/// if not).
fn library_built(env: &Env) -> bool {
    let built = env.bin_dir.join("libbpftoken.so");
    if built.exists() {
        return true;
    }
    let what = format!("{} is not built (run cargo build -p bpftoken-capi)", built.display());
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{what}, and CI=true: must not skip in CI");
    eprintln!("SKIPPED: {what}");
    false
}

fn build_mint_map(env: &Env, libbpf: &TrixieLibbpf, dir: &Path) -> Option<(PathBuf, PathBuf)> {
    build_c(env, libbpf, dir, "mint_map")
}

/// Install the C library into `dir/prefix` and build `tests/c/NAME.c`
/// against it and trixie's libbpf.
fn build_c(env: &Env, libbpf: &TrixieLibbpf, dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    build_source(env, libbpf, dir, &format!("tests/c/{name}.c"), name)
}

/// [`build_c`] for the C file at `source` (relative to the repository),
/// built as `dir/NAME`.
fn build_source(env: &Env, libbpf: &TrixieLibbpf, dir: &Path, source: &str, name: &str) -> Option<(PathBuf, PathBuf)> {
    if !library_built(env) {
        return None;
    }
    let prefix = dir.join("prefix");
    let mut c = Command::new("scripts/install-capi");
    c.arg("--prefix").arg(&prefix).arg("--from").arg(&env.bin_dir);
    run_ok(c);
    for f in ["lib/libbpftoken.so.0.1.0", "lib/libbpftoken.so.0", "lib/libbpftoken.so", "include/bpftoken.h"] {
        assert!(prefix.join(f).exists(), "install-capi did not install {f}");
    }
    assert_eq!(
        std::fs::read_link(prefix.join("lib/libbpftoken.so.0")).expect("soname link"),
        Path::new("libbpftoken.so.0.1.0")
    );

    let mut c = Command::new("pkg-config");
    c.args(["--cflags", "--libs", "bpftoken"]).env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
    let flags = run_ok(c);
    assert_eq!(
        flags.trim(),
        format!("-I{} -L{} -lbpftoken", prefix.join("include").display(), prefix.join("lib").display())
    );

    let program = dir.join(name);
    let mut c = Command::new("cc");
    c.args(["-Wall", "-Wextra", "-Werror", "-o"]).arg(&program).arg(source);
    c.args(flags.split_whitespace());
    for inc in &libbpf.include_dirs {
        c.arg("-I").arg(inc);
    }
    // Trixie's libbpf needs trixie's libc, which only its loader provides at
    // run time: let the link leave those symbols to it.
    c.arg("-L").arg(&libbpf.lib_dir).args(["-lbpf", "-Wl,--allow-shlib-undefined"]);
    run_ok(c);
    Some((program, prefix.join("lib")))
}

/// mint_map as `who`, with trixie's loader and libraries.
fn run_mint_map(d: &TestDaemon, who: &User, libbpf: &TrixieLibbpf, program: &Path, lib: &Path) -> std::process::Output {
    run_c(d, who, libbpf, program, lib, &[])
}

/// A C program as `who`, with trixie's loader and libraries.
fn run_c(
    d: &TestDaemon,
    who: &User,
    libbpf: &TrixieLibbpf,
    program: &Path,
    lib: &Path,
    args: &[&str],
) -> std::process::Output {
    let mut c = as_user(who, &libbpf.loader);
    c.arg("--library-path")
        .arg(format!("{}:{}", libbpf.lib_dir.display(), lib.display()))
        .arg(program)
        .args(args)
        .env("BPFTOKEN_SOCKET", &d.socket);
    output(c)
}

/// Tracing without root through the C ABI (docs/tracing.md): the daemon
/// opens the perf event a rule names, the program attaches and runs; a
/// tracepoint no rule names is refused with the daemon's reason.
#[test]
fn c_program_attaches_a_tracepoint_program_with_the_daemons_perf_event() {
    let Some(env) = setup("c_program_attaches_a_tracepoint_program_with_the_daemons_perf_event") else { return };
    let Some(libbpf) = trixie_libbpf() else { return };
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        let o = output({
            let mut c = Command::new("mount");
            c.args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]);
            c
        });
        assert!(o.status.success(), "tracefs is not mounted and cannot be: {}", stderr(&o));
    }
    let dir = scratch_dir("capi-trace");
    let Some((program, lib)) = build_c(&env, &libbpf, &dir, "trace_tp") else { return };
    let policy = "[[allow]]\nname = \"tracer\"\nusers = [\"bpftk-alice\"]\ncmds = [\"prog_load\"]\nprogs = \
                  [\"tracepoint\"]\nattachs = [\"cgroup_inet_ingress\"]\ntracepoints = [\"syscalls:sys_enter_getpid\"]\n";
    let d = TestDaemon::start(&env, policy, &[]);
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable BPF stats");
    let alice = user(ALICE);
    let o = run_c(&d, &alice, &libbpf, &program, &lib, &["syscalls", "sys_enter_getpid", "sys_enter_getppid"]);
    let _ =
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if stats.trim().is_empty() { "0" } else { stats.trim() });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stderr(&o), "", "{}", d.log_text());
    let id = std::fs::read_to_string("/sys/kernel/tracing/events/syscalls/sys_enter_getpid/id").expect("id");
    assert_eq!(
        stdout(&o),
        format!(
            "id {}\nrun_cnt at least 50: yes\nsyscalls:sys_enter_getppid: Operation not permitted (-1, refusal 22)\n\
             tracepoint \"syscalls:sys_enter_getppid\" is not allowed to uid {} by {}: add it to `tracepoints` in a rule \
             for you (allowed tracepoints: syscalls:sys_enter_getpid) (target_not_allowed)\n",
            id.trim(),
            alice.uid,
            d.policy.display()
        )
    );
}

/// The C example of the docs (README.md, "From C"), built the way it says
/// and run as a user its policy rule allows: it mints a narrowed token,
/// creates a map and loads a socket filter with it, and the filter counts
/// the datagrams its socket receives. As a user no rule allows, it prints
/// the daemon's refusal.
#[test]
fn docs_c_example_loads_a_socket_filter_with_a_minted_token() {
    let Some(env) = setup("docs_c_example_loads_a_socket_filter_with_a_minted_token") else { return };
    let Some(libbpf) = trixie_libbpf() else { return };
    let dir = scratch_dir("capi-docs");
    let Some((program, lib)) = build_source(&env, &libbpf, &dir, "docs/examples/mint-with-token.c", "mint-with-token")
    else {
        return;
    };
    // The rule the example's header comment gives, for bpftk-alice.
    let example = std::fs::read_to_string(repo().join("docs/examples/mint-with-token.c")).expect("example");
    let rule: String = example
        .lines()
        .skip_while(|l| !l.contains("[[allow]]"))
        .take_while(|l| l.starts_with(" *     "))
        .map(|l| format!("{}\n", l.trim_start_matches(" *     ").replace("\"alice\"", &format!("\"{ALICE}\""))))
        .collect();
    assert!(rule.contains("progs = [\"socket_filter\"]"), "the example's rule: {rule}");
    let d = TestDaemon::start(&env, &rule, &[]);

    let o = run_c(&d, &user(ALICE), &libbpf, &program, &lib, &[]);
    assert_eq!(stderr(&o), "", "{}", d.log_text());
    assert_eq!(
        stdout(&o),
        "token: cmds 0x21 maps 0x4 progs 0x2 attachs 0x1\n\
         bpf_map_create(BPF_MAP_TYPE_ARRAY) with the token: ok\n\
         bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with the token: ok\n\
         received 3 datagrams; the filter counted 3\n"
    );
    assert_eq!(o.status.code(), Some(0));

    let eve = user(EVE);
    let o = run_c(&d, &eve, &libbpf, &program, &lib, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken_mint: Operation not permitted: no rule in {} allows uid {} (gid {}) (not_in_policy)\n",
            d.policy.display(),
            eve.uid,
            eve.gid
        )
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn c_program_mints_a_token_and_creates_a_map_with_libbpf() {
    let Some(env) = setup("c_program_mints_a_token_and_creates_a_map_with_libbpf") else { return };
    let Some(libbpf) = trixie_libbpf() else { return };
    let dir = scratch_dir("capi");
    let Some((program, lib)) = build_mint_map(&env, &libbpf, &dir) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);

    let o = run_mint_map(&d, &user(ALICE), &libbpf, &program, &lib);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stderr(&o), "", "{}", d.log_text());
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // The request narrowed cmds to map_create (bit 0) and maps to array
    // (bit 2): the grant is exactly that.
    assert!(lines[0].starts_with("bpftoken_mint: token fd "), "{out}");
    assert!(lines[0].ends_with(", cmds 0x1 maps 0x4 progs 0x0 attachs 0x0, last error \"\""), "{out}");
    assert_eq!(lines[1], "bpf_map_create(BPF_MAP_TYPE_ARRAY) without the token: Operation not permitted");
    assert!(lines[2].starts_with("bpf_map_create(BPF_MAP_TYPE_ARRAY) with the token: map fd "), "{out}");
    assert_eq!(o.status.code(), Some(0));
    d.wait_for_log(&format!("decision=\"granted\" peer_uid={}", user(ALICE).uid));
}

#[test]
fn c_program_gets_the_daemons_refusal_from_bpftoken_last_error() {
    let Some(env) = setup("c_program_gets_the_daemons_refusal_from_bpftoken_last_error") else { return };
    let Some(libbpf) = trixie_libbpf() else { return };
    let dir = scratch_dir("capi");
    let Some((program, lib)) = build_mint_map(&env, &libbpf, &dir) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let eve = user(EVE);

    let o = run_mint_map(&d, &eve, &libbpf, &program, &lib);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stdout(&o), "");
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken_mint: Operation not permitted (refusal code 1): no rule in {} allows uid {} (gid {}) \
             (not_in_policy)\n",
            d.policy.display(),
            eve.uid,
            eve.gid
        )
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn install_capi_uninstall_removes_what_it_installed() {
    let Some(env) = setup("install_capi_uninstall_removes_what_it_installed") else { return };
    if !library_built(&env) {
        return;
    }
    let dir = scratch_dir("capi");
    let prefix = dir.join("prefix");
    let mut c = Command::new("scripts/install-capi");
    c.arg("--prefix").arg(&prefix).arg("--from").arg(&env.bin_dir);
    run_ok(c);
    let mut c = Command::new("scripts/install-capi");
    c.arg("--prefix").arg(&prefix).arg("--uninstall");
    run_ok(c);
    let mut left: Vec<PathBuf> = Vec::new();
    let mut stack = vec![prefix.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read prefix").flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                left.push(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(left, Vec::<PathBuf>::new());
}
