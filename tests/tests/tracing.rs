//! Tracing without root (issue #17, docs/tracing.md): an ordinary user
//! with a token loads a tracepoint program, the daemon opens the perf
//! event the policy names, the program attaches with BPF_LINK_CREATE and
//! runs. Every other target is refused with the exact reason, and the
//! kernel's own limits (no kprobe PMU on this host) are said as such, not
//! blamed on the policy. Threat model row 17.

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

/// BPF run statistics on while it lives (run_cnt counts then). Only one
/// test of this file turns them on, so none turns them off under another.
struct Stats(String);

impl Stats {
    fn on() -> Stats {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").expect("enable BPF stats");
        Stats(before.trim().to_owned())
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if self.0.is_empty() { "0" } else { &self.0 });
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
