//! Tracing without root (issue #17, docs/tracing.md): an ordinary user
//! with a token loads a tracepoint program, the daemon opens the perf
//! event the policy names, the program attaches with BPF_LINK_CREATE and
//! runs. Every other target is refused with the exact reason, and the
//! kernel's own limits (no kprobe PMU on this host) are said as such, not
//! blamed on the policy. Threat model row 19.

use std::process::Command;

use bpftoken_tests::*;

const TRACEPOINT: &str = "syscalls:sys_enter_getpid";

/// tracefs mounted (as systemd does at boot; this machine's CI may not).
fn tracing_ready(test: &str) -> Option<()> {
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        let o = output({
            let mut c = Command::new("mount");
            c.args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]);
            c
        });
        if !o.status.success() {
            let why = format!("tracefs is not mounted and cannot be: {}", stderr(&o));
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why}, and CI=true");
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    }
    Some(())
}

/// BPF run statistics on while it lives (run_cnt counts then). Tests that
/// need them take turns (a lock), so none turns them off under another.
struct Stats {
    before: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static STATS_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Stats {
    fn on() -> Stats {
        let turn = STATS_TURN.lock().unwrap_or_else(|p| p.into_inner());
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable BPF stats");
        Stats { before: before.trim().to_owned(), _turn: turn }
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let restore = if self.before.is_empty() { "0" } else { &self.before };
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", restore);
    }
}

fn policy(env: &Env, extra: &str) -> String {
    format!(
        "[[allow]]\nname = \"tracer\"\nusers = [\"bpftk-alice\"]\ncmds = [\"prog_load\", \"map_create\", \
         \"btf_load\"]\nprogs = [\"tracepoint\"]\nattachs = [\"cgroup_inet_ingress\"]\ntracepoints = \
         [\"{TRACEPOINT}\"]\nuprobes = [\"{}\"]\n{extra}",
        env.bin("bpftoken-probe").display()
    )
}

#[test]
fn a_tracepoint_program_attaches_and_runs_without_root() {
    let Some(env) = setup("a_tracepoint_program_attaches_and_runs_without_root") else { return };
    let Some(()) = tracing_ready("a_tracepoint_program_attaches_and_runs_without_root") else { return };
    let _stats = Stats::on();
    let d = TestDaemon::start(&env, &policy(&env, ""), &[]);
    let alice = user(ALICE);
    let probe = env.bin("bpftoken-probe").display().to_string();
    let socket = d.socket.display().to_string();
    let o =
        d.bpftoken(&env, &alice, &["run", "--fd-only", "--", &probe, "attach-tracepoint", &socket, TRACEPOINT, "50"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}\n{}", stderr(&o), d.log_text());
    let lines: Vec<&str> = out.lines().collect();
    let id = std::fs::read_to_string(format!("/sys/kernel/tracing/events/{}/id", TRACEPOINT.replace(':', "/")))
        .expect("tracepoint id");
    assert_eq!(lines[..2], [format!("id {}", id.trim()).as_str(), "attached"], "{out}");
    let runs: u64 = lines[2].strip_prefix("run_cnt ").and_then(|n| n.parse().ok()).expect("run_cnt N");
    assert!(runs >= 50, "the program ran {runs} times for 50 getpid calls: {out}");
    let line = d.wait_for_log("decision=\"traced\"");
    assert!(
        line.contains("trace_target=\"\\\"id of tracepoint syscalls:sys_enter_getpid\\\"\"")
            || line.contains("tracepoint syscalls:sys_enter_getpid"),
        "{line}"
    );
    d.wait_for_log_lines("decision=\"traced\"", 2);

    // Control: the same user cannot read the id or open the event herself.
    let id_file = format!("/sys/kernel/tracing/events/{}/id", TRACEPOINT.replace(':', "/"));
    let mut c = as_user(&alice, "cat");
    c.arg(&id_file);
    let o = output(c);
    assert!(!o.status.success(), "alice read {id_file} without the daemon");
}

/// Each refusal, with the exact text a user sees.
#[test]
fn tracing_targets_outside_the_policy_or_the_kernel_are_refused_exactly() {
    let Some(env) = setup("tracing_targets_outside_the_policy_or_the_kernel_are_refused_exactly") else { return };
    let Some(()) = tracing_ready("tracing_targets_outside_the_policy_or_the_kernel_are_refused_exactly") else {
        return;
    };
    let kprobe_symbol = "do_sys_openat2";
    let d = TestDaemon::start(&env, &policy(&env, &format!("kprobes = [\"{kprobe_symbol}\"]\n")), &[]);
    let alice = user(ALICE);
    let probe = |kind: &str, target: &str| {
        let mut c = as_user(&alice, env.bin("bpftoken-probe"));
        c.args(["open-perf", d.socket.to_str().unwrap(), kind, target]);
        stdout(&output(c)).trim().to_owned()
    };
    let path = d.policy.display();
    assert_eq!(
        probe("tracepoint", "syscalls:sys_enter_getppid"),
        format!(
            "refused: tracepoint \"syscalls:sys_enter_getppid\" is not allowed to uid {} by {path}: add it to \
             `tracepoints` in a rule for you (allowed tracepoints: {TRACEPOINT}) (target_not_allowed)",
            alice.uid
        )
    );
    assert_eq!(probe("tracepoint", TRACEPOINT), "opened");
    let eve = user(EVE);
    let mut c = as_user(&eve, env.bin("bpftoken-probe"));
    c.args(["open-perf", d.socket.to_str().unwrap(), "tracepoint", TRACEPOINT]);
    assert_eq!(
        stdout(&output(c)).trim(),
        format!(
            "refused: tracepoint \"{TRACEPOINT}\" is not allowed to uid {0}: no rule in {path} allows uid {0} (gid \
             {1}); a rule for you with `tracepoints = [\"{TRACEPOINT}\"]` would (target_not_allowed)",
            eve.uid, eve.gid
        )
    );
    // The kernel's limits are the kernel's: this host has no kprobe PMU.
    let kprobe = probe("kprobe", kprobe_symbol);
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(kprobe, "opened");
    } else {
        assert!(
            kprobe.starts_with(
                "refused: this kernel has no kprobe PMU (/sys/bus/event_source/devices/kprobe/type: No such file or \
                 directory (os error 2)); it was built without CONFIG_KPROBE_EVENTS, so kprobes cannot be attached \
                 here, whatever the policy says"
            ) && kprobe.ends_with("(trace_unavailable)"),
            "{kprobe}"
        );
    }
    assert_eq!(
        probe("kprobe", "vfs_read"),
        format!(
            "refused: kernel function \"vfs_read\" is not allowed to uid {} by {path}: add it to `kprobes` in a rule \
             for you (allowed kprobes: {kprobe_symbol}) (target_not_allowed)",
            alice.uid
        )
    );
    // A pid narrows only a uprobe.
    assert_eq!(
        probe("tracepoint", &format!("{TRACEPOINT}@1")),
        format!(
            "refused: a pid narrows only a uprobe; the tracepoint {TRACEPOINT} event is opened for every process \
             (malformed_request)"
        )
    );
    // A uprobe on one process: only on the caller's own.
    let bin = env.bin("bpftoken-probe").display().to_string();
    assert_eq!(
        probe("uprobe", &format!("{bin}@1")),
        format!(
            "refused: pid 1 is not a process of uid {} (a uprobe on one process is only for the caller's own) \
             (target_not_allowed)",
            alice.uid
        )
    );
    assert_eq!(probe("uprobe", &bin), "opened", "a system-wide uprobe on a listed binary");
    assert_eq!(
        probe("uprobe", "/usr/bin/true"),
        format!(
            "refused: binary \"/usr/bin/true\" is not allowed to uid {} by {path}: add it to `uprobes` in a rule for \
             you (allowed uprobes: {bin}) (target_not_allowed)",
            alice.uid
        )
    );
    let log = d.log_text();
    assert!(log.contains("code=\"target_not_allowed\""), "{log}");
}

/// The policy's targets are checked against the running kernel at load.
#[test]
fn check_policy_names_a_tracepoint_that_does_not_exist_and_suggests_one() {
    let Some(env) = setup("check_policy_names_a_tracepoint_that_does_not_exist_and_suggests_one") else { return };
    let Some(()) = tracing_ready("check_policy_names_a_tracepoint_that_does_not_exist_and_suggests_one") else {
        return;
    };
    let dir = scratch_dir("trace-check");
    let path = dir.join("policy.toml");
    write_policy(&path, "[[allow]]\nusers = [\"bpftk-alice\"]\ntracepoints = [\"syscalls:sys_enter_getpdi\"]\n");
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.args(["check-policy", "--policy"]).arg(&path);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).lines().next().unwrap_or_default(),
        format!(
            "{}:3:16: tracepoint \"syscalls:sys_enter_getpdi\" does not exist in this kernel (tracefs) (did you mean \
             \"syscalls:sys_enter_getpid\"?)",
            path.display()
        )
    );
}

/// Where scripts/setup-test-tools.sh puts the unmodified tools.
const LIBEXEC: &str = "/usr/local/libexec/bpftoken-test";

/// The unmodified tools and objects, or (outside CI) a visible skip.
fn tools(test: &str) -> Option<()> {
    let missing: Vec<String> = ["trace_skel_run", "trace_skel", "bpftool", "obj/trace_skel.bpf.o"]
        .iter()
        .map(|f| format!("{LIBEXEC}/{f}"))
        .filter(|f| !std::path::Path::new(f).exists())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!("{} missing (run scripts/setup-test-tools.sh)", missing.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test}: {why}, and CI=true");
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A policy for the unmodified tools: libbpf mode needs the commands and
/// types libbpf's loading and probing use; `extra` adds tracing keys.
fn tool_policy(extra: &str) -> String {
    format!(
        "[[allow]]\nname = \"tracer\"\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\", \"prog_load\", \"btf_load\", \
         \"obj_pin\", \"obj_get\", \"link_create\"]\nmaps = [\"ringbuf\", \"array\", \"hash\"]\nprogs = [\"tracepoint\", \
         \"kprobe\", \"socket_filter\"]\nattachs = [\"cgroup_inet_ingress\"]\n{extra}"
    )
}

/// Issue #17's first criterion: an unmodified libbpf skeleton (tracepoint
/// and uprobe, ring buffer) attaches as an ordinary user under `bpftoken
/// run` and receives events; without bpftoken, or with the supervisor
/// turned off, the same binary fails.
#[test]
fn an_unmodified_libbpf_skeleton_attaches_and_receives_events() {
    let test = "an_unmodified_libbpf_skeleton_attaches_and_receives_events";
    let Some(env) = setup(test) else { return };
    let (Some(()), Some(())) = (tracing_ready(test), tools(test)) else { return };
    let policy = tool_policy(&format!("tracepoints = [\"{TRACEPOINT}\"]\nuprobes = [\"{LIBEXEC}/trace_skel\"]\n"));
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    let tool = format!("{LIBEXEC}/trace_skel_run");
    let o = d.bpftoken(&env, &alice, &["run", "--", &tool]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "attached\ntracepoint events 10\nuprobe events 3\n"),
        "{}\n{}",
        stderr(&o),
        d.log_text()
    );
    let log = d.wait_for_log_lines("decision=\"traced\"", 3);
    assert!(log.contains("opened tracepoint syscalls:sys_enter_getpid for uid"), "{log}");
    assert!(log.contains(&format!("opened uprobe {LIBEXEC}/trace_skel:")), "{log}");

    // Controls: the tool alone cannot even load; with the token but not
    // the supervisor it loads and fails to attach.
    let o = output(as_user(&alice, &tool));
    assert_ne!(o.status.code(), Some(0), "the tool ran without bpftoken: {}", stdout(&o));
    let o = d.bpftoken(&env, &alice, &["run", "--no-trace-broker", "--", &tool]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("trace_skel: attach failed: -13 (Permission denied)"), "{}", stderr(&o));
}

/// Issue #19: narrowing a request to the types an object uses must not
/// break libbpf, whose feature probes load a socket filter with an array
/// map. `bpftoken run` adds what the probes need where the policy grants
/// it, and says so once; where the policy does not, the load fails as it
/// did (`.bss` is not created, the verifier refuses the program) and
/// `--explain` names the refused probes.
#[test]
fn a_narrowed_libbpf_load_gets_what_libbpfs_feature_probes_need() {
    let test = "a_narrowed_libbpf_load_gets_what_libbpfs_feature_probes_need";
    let Some(env) = setup(test) else { return };
    let (Some(()), Some(())) = (tracing_ready(test), tools(test)) else { return };
    let targets = format!("tracepoints = [\"{TRACEPOINT}\"]\nuprobes = [\"{LIBEXEC}/trace_skel\"]\n");
    let narrowed = ["--progs", "tracepoint,kprobe", "--maps", "ringbuf"];
    let tool = format!("{LIBEXEC}/trace_skel_run");
    let added = "bpftoken: also asking for map type array, program type socket_filter: libbpf probes kernel \
                 features with them before it loads an object, and takes a refused probe for a missing feature \
                 (--fd-only asks for exactly your lists)";
    let d = TestDaemon::start(&env, &tool_policy(&targets), &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &[&["run"][..], &narrowed, &["--", &tool]].concat());
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "attached\ntracepoint events 10\nuprobe events 3\n"),
        "{}",
        stderr(&o)
    );
    let said: Vec<String> = stderr(&o).lines().filter(|l| l.starts_with("bpftoken:")).map(str::to_owned).collect();
    assert_eq!(said, [added]);

    // A policy without socket_filter: nothing to add it from.
    let policy = tool_policy(&targets).replace(", \"socket_filter\"", "");
    assert!(!policy.contains("socket_filter"), "{policy}");
    let d = TestDaemon::start(&env, &policy, &[]);
    let o = d.bpftoken(&env, &alice, &[&["run", "--explain"][..], &narrowed, &["--", &tool]].concat());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is not pointing to valid bpf_map"), "{err}");
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("bpftoken:")).collect();
    assert_eq!(
        said,
        [
            "bpftoken: also asking for map type array: libbpf probes kernel features with them before it loads an \
             object, and takes a refused probe for a missing feature (--fd-only asks for exactly your lists)",
            "bpftoken: the command exited with status 1; its token carries:",
            "bpftoken:   cmds: map_create,prog_load,obj_pin,obj_get,btf_load,link_create",
            "bpftoken:   maps: array,ringbuf",
            "bpftoken:   progs: kprobe,tracepoint",
            "bpftoken:   attachs: cgroup_inet_ingress",
            "bpftoken: libbpf's feature probes were refused: the token lacks program type socket_filter; libbpf \
             takes that for missing kernel features and goes on without them",
            "bpftoken:   without the global-variable feature, objects with .data, .rodata or .bss fail to load \
             later, in the verifier (\"fd N is not pointing to valid bpf_map\")",
            "bpftoken:   no rule of the policy gives you program type socket_filter",
            "bpftoken: the policy would also grant (ask with --cmds/--maps/--progs/--attachs):",
            "bpftoken:   maps: hash",
        ]
    );
}

/// `bpftool prog loadall OBJ DIR autoattach` (trixie's bpftool 7.5),
/// unmodified: its tracepoint program attaches and its run count rises.
#[test]
fn bpftool_loadall_autoattach_attaches_and_the_program_runs() {
    let test = "bpftool_loadall_autoattach_attaches_and_the_program_runs";
    let Some(env) = setup(test) else { return };
    let (Some(()), Some(())) = (tracing_ready(test), tools(test)) else { return };
    let _stats = Stats::on();
    let policy = tool_policy(&format!("tracepoints = [\"{TRACEPOINT}\"]\nuprobes = [\"{LIBEXEC}/trace_skel\"]\n"));
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    let script = format!(
        "{LIBEXEC}/bpftool prog loadall {LIBEXEC}/obj/trace_skel.bpf.o $BPFTOKEN_PIN_DIR/t autoattach && \
         {{ {LIBEXEC}/bpftool link show pinned $BPFTOKEN_PIN_DIR/t/on_getpid; {LIBEXEC}/trace_skel_run getpid 1000; }}"
    );
    let o = d.bpftoken(&env, &alice, &["run", "--", "/bin/sh", "-c", &script]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}\n{}", stderr(&o), d.log_text());
    // "124: perf_event  prog 6221" (bpftool exits 255 after printing it:
    // it cannot read which processes hold the link, root's to know). The
    // link stays pinned in the scope's bpffs, so root can look at the
    // program.
    let prog = out
        .split_whitespace()
        .skip_while(|w| *w != "prog")
        .nth(1)
        .unwrap_or_else(|| panic!("no prog id in bpftool link show: {out}"));
    let show = output({
        let mut c = Command::new(format!("{LIBEXEC}/bpftool"));
        c.args(["prog", "show", "id", prog]);
        c
    });
    let shown = stdout(&show);
    let runs: u64 = shown
        .split_whitespace()
        .skip_while(|w| *w != "run_cnt")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run_cnt: {shown}{}", stderr(&show)));
    assert!(shown.contains("tracepoint") && runs >= 1000, "{shown}");
}

/// A tracepoint the policy does not name: the tool sees the EACCES it
/// would have seen without bpftoken, and one line on stderr names the
/// target and the key that would allow it.
#[test]
fn a_tracepoint_outside_the_policy_fails_as_without_bpftoken_and_says_why() {
    let test = "a_tracepoint_outside_the_policy_fails_as_without_bpftoken_and_says_why";
    let Some(env) = setup(test) else { return };
    let (Some(()), Some(())) = (tracing_ready(test), tools(test)) else { return };
    let d = TestDaemon::start(&env, &tool_policy("tracepoints = [\"syscalls:sys_enter_getppid\"]\n"), &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", &format!("{LIBEXEC}/trace_skel_run")]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    let line = format!(
        "bpftoken: tracepoint syscalls:sys_enter_getpid: refused: tracepoint \"syscalls:sys_enter_getpid\" is not \
         allowed to uid {} by {}: add it to `tracepoints` in a rule for you (allowed tracepoints: \
         syscalls:sys_enter_getppid) (target_not_allowed)",
        alice.uid,
        d.policy.display()
    );
    assert_eq!(err.lines().filter(|l| *l == line).count(), 1, "{err}");
    assert!(err.contains("Permission denied"), "the tool saw EACCES: {err}");
}

/// `bpftoken query` and `bpftokend check-policy --explain` list the
/// tracing targets a user's rules name.
#[test]
fn query_and_explain_list_the_tracing_targets() {
    let Some(env) = setup("query_and_explain_list_the_tracing_targets") else { return };
    let Some(()) = tracing_ready("query_and_explain_list_the_tracing_targets") else { return };
    let extra =
        "[[deny]]\nname = \"no-getppid\"\nusers = [\"bpftk-alice\"]\ntracepoints = [\"syscalls:sys_enter_getppid\"]\n";
    let d = TestDaemon::start(&env, &policy(&env, extra), &[]);
    let probe = env.bin("bpftoken-probe").display().to_string();
    let want = [
        format!("tracing: tracepoints {TRACEPOINT} allowed (rule tracer)"),
        format!("tracing: uprobes {probe} allowed (rule tracer)"),
        "tracing: tracepoints syscalls:sys_enter_getppid denied (rule no-getppid)".to_owned(),
    ];
    let o = d.bpftoken(&env, &user(ALICE), &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let got: Vec<&str> = out.lines().filter(|l| l.starts_with("tracing: ")).collect();
    assert_eq!(got, want, "{out}");
    // A caller whose rules name no target gets no tracing line at all.
    let o = d.bpftoken(&env, &user(EVE), &["query"]);
    assert!(!stdout(&o).contains("tracing:"), "{}", stdout(&o));
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.args(["check-policy", "--policy"]).arg(&d.policy).args(["--explain", ALICE]);
        c
    });
    let out = stdout(&o);
    let got: Vec<String> = out.lines().filter(|l| l.starts_with("tracing:")).map(str::to_owned).collect();
    let want: Vec<String> = want.iter().map(|l| l.replacen("tracing: ", "tracing:  ", 1)).collect();
    assert_eq!(got, want, "{out}{}", stderr(&o));
}
