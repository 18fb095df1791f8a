//! Leases need the BPF LSM enforcer; where it cannot run, a rule with
//! `ttl` follows the policy's `require_enforcement`, and the daemon says
//! which state it is in at start, in STATUS= and in `bpftoken query`.
//! On this project's hosts the kernel refuses BPF LSM programs (EPERM),
//! so these tests see "unavailable"; the kernel matrix VM (6.12 with
//! `lsm=...,bpf`) sees "enforcing" (`tests/vm`, capability `enforcer`).

use bpftoken_tests::*;

const TTL_POLICY: &str = r#"
[[allow]]
name = "short-lived"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
ttl = 600
"#;

/// The reason in "unavailable: REASON" on a kernel that refuses BPF LSM
/// programs, as this project's hosts do
/// (docs/design.md, "BPF LSM on this project's hosts").
const REFUSED: &str = "unavailable: the kernel refused to load BPF LSM programs (EPERM at BPF_PROG_LOAD, \
                       before the verifier; lockdown or the platform forbids them)";

fn not_enforceable(state: &str, policy: &std::path::Path) -> String {
    let why = match state.strip_prefix("unavailable: ") {
        Some(reason) => format!("enforcement is unavailable: {reason}"),
        // Where it enforces, a ttl is not refused at all.
        None => panic!("these tests expect a kernel without the enforcer (state {state:?})"),
    };
    format!(
        "rule \"short-lived\" limits tokens to 600 s (ttl), which this daemon cannot enforce: {why}; {} requires \
         enforcement (require_enforcement = true)",
        policy.display()
    )
}

#[test]
fn the_start_line_says_whether_enforcement_runs() {
    let Some(env) = setup("the_start_line_says_whether_enforcement_runs") else { return };
    let d = TestDaemon::start(&env, TTL_POLICY, &[]);
    let state = d.enforcement();
    let log = d.log_text();
    assert_eq!(log.matches("enforcement: ").count(), 1, "one line: {log}");
    // This project's hosts refuse LSM program loads (REFUSED); a kernel
    // booted without `bpf` in lsm= names its active LSMs; the VM enforces.
    assert!(
        state == REFUSED
            || state == "enforcing"
            || state.starts_with("unavailable: the BPF LSM is not active (active LSMs: "),
        "{log}"
    );
}

#[test]
fn ttl_is_refused_where_enforcement_is_required_but_unavailable() {
    let Some(env) = setup("ttl_is_refused_where_enforcement_is_required_but_unavailable") else { return };
    let d = TestDaemon::start(&env, TTL_POLICY, &[]);
    let state = d.enforcement();
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let message = not_enforceable(&state, &d.policy);
    assert_eq!(stderr(&o), format!("bpftoken: refused: {message} (not_enforceable)\n"));
    d.wait_for_log("code=\"not_enforceable\"");
    // query says the same without minting, and names the state.
    let o = d.bpftoken(&env, &alice, &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("\nenforcement: {state}\n")), "{out}");
    assert!(out.ends_with(&format!("a request now would be refused: {message} (not_enforceable)\n")), "{out}");
}

#[test]
fn ttl_mints_unenforced_when_the_policy_allows_it() {
    let Some(env) = setup("ttl_mints_unenforced_when_the_policy_allows_it") else { return };
    let policy = format!("require_enforcement = false\n{TTL_POLICY}");
    let d = TestDaemon::start(&env, &policy, &[]);
    let state = d.enforcement();
    let alice = user(ALICE);
    let probe = env.bin("bpftoken-probe");
    let o = d.bpftoken(&env, &alice, &["run", "--fd-only", "--", probe.to_str().unwrap(), "try", "map:array"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "map:array ok\n");
    let log = d.wait_for_log("decision=\"granted\"");
    let line = log.lines().find(|l| l.contains("decision=\"granted\"")).unwrap_or_default();
    assert!(line.contains(" enforced=\"false\" "), "{line}");
    let o = d.bpftoken(&env, &alice, &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.ends_with(&format!("\nenforcement: {state}\n")), "no refusal expected: {out}");
}

#[test]
fn rules_without_ttl_mint_whatever_the_enforcement() {
    let Some(env) = setup("rules_without_ttl_mint_whatever_the_enforcement") else { return };
    let policy = TTL_POLICY.replace("ttl = 600\n", "");
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = d.wait_for_log("decision=\"granted\"");
    let line = log.lines().find(|l| l.contains("decision=\"granted\"")).unwrap_or_default();
    assert!(line.contains(" enforced=\"-\" "), "{line}");
}

const LIVE_POLICY: &str = r#"
[[allow]]
name = "two-at-a-time"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
max_live_tokens = 2
"#;

/// `max_live_tokens` needs the enforcer's counts: where it cannot run, the
/// policy's `require_enforcement` decides, as for `ttl`. (Counting and the
/// `too_many_tokens` refusal are tested in the VM, capability `live-limit`.)
#[test]
fn max_live_tokens_follows_require_enforcement_where_tokens_cannot_be_counted() {
    let Some(env) = setup("max_live_tokens_follows_require_enforcement_where_tokens_cannot_be_counted") else {
        return;
    };
    let d = TestDaemon::start(&env, LIVE_POLICY, &[]);
    let state = d.enforcement();
    let alice = user(ALICE);
    let Some(reason) = state.strip_prefix("unavailable: ") else {
        eprintln!("enforcement runs here ({state}): the VM scenario live-limit covers it");
        return;
    };
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: rule \"two-at-a-time\" allows at most 2 live tokens per uid, which this daemon \
             cannot count: enforcement is unavailable: {reason}; {} requires enforcement (require_enforcement = \
             true) (not_enforceable)\n",
            d.policy.display()
        )
    );

    let d = TestDaemon::start(&env, &format!("require_enforcement = false\n{LIVE_POLICY}"), &[]);
    // Not counted, so not limited: more than two are minted, each marked.
    for _ in 0..3 {
        let o = d.bpftoken(&env, &alice, &["run", "--fd-only", "--", "true"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let log = d.wait_for_log_lines("decision=\"granted\"", 3);
    let granted: Vec<&str> = log.lines().filter(|l| l.contains("decision=\"granted\"")).collect();
    assert_eq!(granted.len(), 3, "{log}");
    assert!(granted.iter().all(|l| l.contains(" enforced=\"false\" ")), "{log}");
}

const BIND_POLICY: &str = r#"
[[allow]]
name = "own-uid"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
bind = ["uid"]

[[allow]]
name = "own-cgroup"
users = ["bpftk-alice"]
cmds = ["map_create"]
bind = ["cgroup"]
"#;

/// `bind` needs the enforcer: where it cannot run, `require_enforcement`
/// decides, as for `ttl`. (The binding itself is tested in the VM,
/// capabilities `bind-uid` and `bind-cgroup`.)
#[test]
fn bind_follows_require_enforcement_where_it_cannot_be_enforced() {
    let Some(env) = setup("bind_follows_require_enforcement_where_it_cannot_be_enforced") else { return };
    let d = TestDaemon::start(&env, BIND_POLICY, &[]);
    let state = d.enforcement();
    let alice = user(ALICE);
    let Some(reason) = state.strip_prefix("unavailable: ") else {
        eprintln!("enforcement runs here ({state}): the VM scenarios bind-uid and bind-cgroup cover it");
        return;
    };
    let message = format!(
        "binding tokens to their owner uid (rule \"own-uid\") and to the cgroup they are minted from (rule \
         \"own-cgroup\") (bind) cannot be enforced by this daemon: enforcement is unavailable: {reason}; {} \
         requires enforcement (require_enforcement = true)",
        d.policy.display()
    );
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o), format!("bpftoken: refused: {message} (not_enforceable)\n"));
    let log = d.wait_for_log("code=\"not_enforceable\"");
    assert_eq!(log.lines().filter(|l| l.contains("decision=\"refused\"")).count(), 1, "{log}");
    // query says the same without minting.
    let o = d.bpftoken(&env, &alice, &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).ends_with(&format!("a request now would be refused: {message} (not_enforceable)\n")));

    // require_enforcement = false: minted, marked not enforced, and the
    // lease still says what it was meant to be bound to.
    let d = TestDaemon::start(&env, &format!("require_enforcement = false\n{BIND_POLICY}"), &[]);
    let probe = env.bin("bpftoken-probe");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let go = d.dir.join("go");
    let mut c = as_user(&alice, env.bin("bpftoken"));
    c.arg("--socket").arg(&d.socket).args(["run", "--fd-only", "--"]).arg(&probe).arg("wait-try").arg(&go);
    c.arg("map:array").stdout(std::process::Stdio::piped());
    let mut holder = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut lines = Vec::new();
    while lines.last().is_none_or(|l: &String| l != "waiting") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0, "{lines:?}");
        lines.push(line.trim_end().to_owned());
    }
    assert_eq!(lines[1..], ["map:array ok", "waiting"]);
    let log = d.wait_for_log("decision=\"granted\"");
    let line = log.lines().find(|l| l.contains("decision=\"granted\"")).unwrap_or_default();
    // The test runs the client in its own cgroup (it inherits ours).
    let cgroup = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(line.contains(" enforced=\"false\" "), "{line}");
    assert!(line.contains(&format!(" bound_uid=\"{}\" ", alice.uid)), "{line}");
    assert!(line.contains(&format!(" bound_cgroup={cgroup:?}")), "{line}");
    let o = d.bpftoken(&env, &alice, &["leases"]);
    let out = stdout(&o);
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(row.ends_with(&format!("  not_enforced  never         uid {}, cgroup {cgroup}", alice.uid)), "{out}");
    std::fs::write(&go, b"").unwrap();
    assert!(holder.wait().unwrap().success());
}
