//! Tracing targets (`tracepoints`, `kprobes`, `uprobes`): decided per rule,
//! deny wins, checked against a kernel catalog with suggestions.

use super::*;

const TRACING: &str = r#"
[[allow]]
name = "tracers"
users = ["alice"]
tracepoints = ["syscalls:sys_enter_getpid", "sched:*"]
kprobes = ["do_sys_openat2"]
uprobes = ["/bin/sh"]

[[allow]]
name = "maps"
users = ["alice", "bob"]
cmds = ["map_create"]

[[deny]]
name = "no-switch"
users = ["alice"]
tracepoints = ["sched:sched_switch"]
"#;

fn catalog() -> trace::TraceCatalog {
    trace::TraceCatalog {
        tracepoints: Ok([
            "syscalls:sys_enter_getpid",
            "syscalls:sys_enter_getppid",
            "sched:sched_switch",
            "sched:sched_wakeup",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()),
        symbols: Ok(["do_sys_openat2", "vfs_read"].iter().map(|s| (*s).to_owned()).collect()),
    }
}

#[test]
fn tracing_targets_are_decided_per_rule_and_deny_wins() {
    use trace::TraceKind::*;
    let mut p = parse(TRACING).unwrap();
    p.check_trace_targets(&catalog()).unwrap();
    let alice = peer(1000, 1000, &[]);
    assert_eq!(
        p.decide_trace(&alice, Tracepoint, "syscalls:sys_enter_getpid"),
        TraceDecision::Allow { rule: "tracers".into() }
    );
    assert_eq!(
        p.decide_trace(&alice, Tracepoint, "sched:sched_wakeup"),
        TraceDecision::Allow { rule: "tracers".into() }
    );
    assert_eq!(p.decide_trace(&alice, Kprobe, "do_sys_openat2"), TraceDecision::Allow { rule: "tracers".into() });
    assert_eq!(p.decide_trace(&alice, Uprobe, "/bin/sh"), TraceDecision::Allow { rule: "tracers".into() });
    assert_eq!(
        p.decide_trace(&alice, Tracepoint, "sched:sched_switch"),
        TraceDecision::Refuse {
            code: RefusalCode::TargetNotAllowed,
            message: "tracepoint \"sched:sched_switch\" is denied to uid 1000 by /etc/bpftokend/policy.toml (rule \
                      no-switch)"
                .into()
        }
    );
    assert_eq!(
        p.decide_trace(&alice, Kprobe, "vfs_read"),
        TraceDecision::Refuse {
            code: RefusalCode::TargetNotAllowed,
            message: "kernel function \"vfs_read\" is not allowed to uid 1000 by /etc/bpftokend/policy.toml: add it \
                      to `kprobes` in a rule for you (allowed kprobes: do_sys_openat2)"
                .into()
        }
    );
    // bob has a rule, but no tracing keys in it.
    let TraceDecision::Refuse { message, .. } = p.decide_trace(&peer(1001, 1001, &[]), Uprobe, "/bin/sh") else {
        panic!()
    };
    assert!(message.ends_with("(allowed uprobes: none)"), "{message}");
    let TraceDecision::Refuse { message, .. } = p.decide_trace(&peer(4242, 4242, &[]), Tracepoint, "a:b") else {
        panic!()
    };
    assert_eq!(
        message,
        "tracepoint \"a:b\" is not allowed to uid 4242: no rule in /etc/bpftokend/policy.toml allows uid 4242 (gid \
         4242); a rule for you with `tracepoints = [\"a:b\"]` would"
    );
    // A rule with only tracing keys is a rule.
    assert!(parse("[[allow]]\nusers = [\"alice\"]\ntracepoints = [\"sched:*\"]\n").is_ok());
}

#[test]
fn tracing_targets_are_checked_against_the_kernel_with_suggestions() {
    let check = |text: &str| parse(text).unwrap().check_trace_targets(&catalog()).map_err(|e| e.to_string());
    assert_eq!(
        check("[[allow]]\nusers = [\"alice\"]\ntracepoints = [\"syscalls:sys_enter_getpdi\"]\n"),
        Err("/etc/bpftokend/policy.toml:3:16: tracepoint \"syscalls:sys_enter_getpdi\" does not exist in this kernel \
             (tracefs) (did you mean \"syscalls:sys_enter_getpid\"?)"
            .into())
    );
    assert_eq!(
        check("[[allow]]\nusers = [\"alice\"]\nkprobes = [\"tcp_*\"]\n"),
        Err("/etc/bpftokend/policy.toml:3:12: kernel function pattern \"tcp_*\" matches nothing in /proc/kallsyms"
            .into())
    );
    assert_eq!(
        check("[[allow]]\nusers = [\"alice\"]\nuprobes = [\"/no/such/binary\"]\n"),
        Err("/etc/bpftokend/policy.toml:3:12: uprobe binary \"/no/such/binary\" is not a file on this host".into())
    );
    // Where tracefs cannot be read, the patterns load unchecked, with a warning.
    let none = trace::TraceCatalog::unavailable("tracefs is not mounted at /sys/kernel/tracing");
    let mut p = parse("[[allow]]\nusers = [\"alice\"]\ntracepoints = [\"sched:*\", \"x:y\"]\n").unwrap();
    p.check_trace_targets(&none).unwrap();
    assert_eq!(
        p.warnings(),
        ["/etc/bpftokend/policy.toml:3: tracepoints cannot be checked against this kernel (tracefs is not mounted at \
          /sys/kernel/tracing); a request for one is checked when it is made"]
    );
    assert_eq!(
        err("[[allow]]\nusers = [\"alice\"]\ntracepoints = [\"sys_enter_getpid\"]\n"),
        "/etc/bpftokend/policy.toml:3:16: tracepoint \"sys_enter_getpid\" must be CATEGORY:NAME (letters, digits, _ \
         and * only), e.g. \"syscalls:sys_enter_openat\""
    );
}
