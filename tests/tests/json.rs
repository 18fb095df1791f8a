//! `--json` output (docs/json.md) end to end: `bpftoken query`, `leases`
//! and `inspect` as a real user against a real daemon, and `bpftokend
//! check-policy --explain USER` as root, each parsed as one JSON document
//! with the concrete values the policy and the token say (with a drop-in,
//! the file each rule is defined in).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use bpftoken_tests::*;
use serde_json::{json, Value};

const POLICY: &str = r#"
[[allow]]
name = "json-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]
mints_per_minute = 600

[[deny]]
name = "no-lru"
users = ["bpftk-alice"]
maps = ["lru_hash"]
"#;

/// stdout of a successful command, parsed as exactly one JSON document
/// (anything after it fails the parse).
fn document(o: &Output) -> Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status, stderr(o));
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{}", stdout(o)))
}

#[test]
fn query_json_names_the_grant_and_its_rules() {
    let Some(env) = setup("query_json_names_the_grant_and_its_rules") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let v = document(&d.bpftoken(&env, &user(ALICE), &["query", "--json"]));
    assert_eq!(v["schema"], "bpftoken.query/1", "{v:#}");
    assert_eq!(v["policy"], d.policy.display().to_string());
    assert_eq!(v["allowed_by"], json!(["json-loader"]));
    assert_eq!(v["denied_by"], json!(["no-lru"]));
    assert_eq!(
        v["grant"],
        json!({
            "cmds": ["map_create", "prog_load"],
            "maps": ["hash", "array"],
            "progs": ["socket_filter"],
            "attachs": ["cgroup_inet_ingress"]
        })
    );
    assert_eq!(v["rate_limits"], json!([{"rule": "json-loader", "mints_per_minute": 600}]));
    match d.enforcement().strip_prefix("unavailable: ") {
        Some(reason) => assert_eq!(v["enforcement"], json!({"state": "unavailable", "reason": reason})),
        None => assert!(v["enforcement"]["state"].as_str().is_some_and(|s| s.starts_with("enforcing")), "{v:#}"),
    }
    assert_eq!(v["other_builds"], json!([]));
    assert!(v["refusal"].is_null(), "{v:#}");

    // Outside the policy: no rule, and the refusal any request would get.
    let v = document(&d.bpftoken(&env, &user(EVE), &["query", "--json"]));
    assert_eq!(v["allowed_by"], json!([]));
    assert_eq!(v["grant"]["maps"], json!([]));
    assert_eq!(v["refusal"]["code"], "not_in_policy", "{v:#}");
    assert!(v["refusal"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v:#}");
}

#[test]
fn leases_json_lists_the_callers_lease_with_ids_as_numbers() {
    let Some(env) = setup("leases_json_lists_the_callers_lease_with_ids_as_numbers") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let socket = d.socket.to_str().expect("socket path");
    let bpftoken = env.bin("bpftoken");
    let bpftoken = bpftoken.to_str().expect("bpftoken path");
    // The lease lives as long as its token, which `leases` inherits.
    let o = d.bpftoken(
        &env,
        &alice,
        &["run", "--fd-only", "--maps", "array", "--", bpftoken, "--socket", socket, "leases", "--json"],
    );
    let v = document(&o);
    assert_eq!(v["schema"], "bpftoken.leases/1", "{v:#}");
    let leases = v["leases"].as_array().expect("leases is a list");
    assert_eq!(leases.len(), 1, "{v:#}");
    let lease = &leases[0];
    assert_eq!(lease["id"], 1);
    assert_eq!(lease["uid"], alice.uid);
    assert_eq!(lease["mode"], "owner");
    assert!(lease["scope"].as_u64().is_some_and(|s| s > 0), "{v:#}");
    assert!(lease["created"].as_u64().is_some_and(|s| s > 0), "{v:#}");
    assert_eq!(lease["whole_scope"], false);
    assert!(lease["expires"].is_null() && lease["bound_uid"].is_null() && lease["bound_cgroup"].is_null(), "{v:#}");
    let state = lease["state"].as_str().unwrap_or_default();
    assert!(["active", "not_enforced"].contains(&state), "{v:#}");

    // No lease: an empty list, not a missing one.
    let v = document(&d.bpftoken(&env, &user(EVE), &["leases", "--json"]));
    assert_eq!(v, json!({"schema": "bpftoken.leases/1", "leases": [], "forgotten": []}));
}

#[test]
fn inspect_json_names_the_tokens_masks() {
    let Some(env) = setup("inspect_json_names_the_tokens_masks") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let bpftoken = env.bin("bpftoken");
    let bpftoken = bpftoken.to_str().expect("bpftoken path");
    // libbpf mode: inspect runs as root of the token's user namespace. (A
    // set narrowed to leave out `array` would get it back there, for
    // libbpf's probes: docs/usage.md, "Narrowing a request for a libbpf tool".)
    let o = d.bpftoken(&env, &user(ALICE), &["run", "--maps", "array", "--", bpftoken, "inspect", "--json"]);
    let v = document(&o);
    assert_eq!(v["schema"], "bpftoken.inspect/1", "{v:#}");
    assert!(v["fd"].as_i64().is_some_and(|fd| fd >= 0), "{v:#}");
    assert_eq!(
        v["masks"],
        json!({
            "cmds": ["map_create", "prog_load"],
            "maps": ["array"],
            "progs": ["socket_filter"],
            "attachs": ["cgroup_inet_ingress"]
        })
    );
    let source = v["source"].as_str().unwrap_or_default();
    assert!(["bpf_obj_get_info", "fdinfo"].contains(&source), "{v:#}");

    // A failure prints nothing on stdout.
    let o = d.bpftoken(&env, &user(ALICE), &["inspect", "--json", "--fd", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
}

#[test]
fn check_policy_explain_json_names_rules_limits_and_grant() {
    let Some(env) = setup("check_policy_explain_json_names_rules_limits_and_grant") else { return };
    let dir = scratch_dir("explain-json");
    let policy = dir.join("policy.toml");
    write_policy(
        &policy,
        "[[allow]]\nname = \"devs\"\ngroups = [\"bpftk-dev\"]\ncmds = [\"map_create\"]\nmaps = [\"array\", \
         \"hash\"]\nmints_per_minute = 60\n\n[[allow]]\nname = \"alice-ci\"\nusers = [\"bpftk-alice\"]\ncmds = \
         [\"map_create\"]\nmaps = [\"array\"]\nttl = 600\nbind = [\"uid\", \"cgroup\"]\nlearn = true\n\n[[deny]]\n\
         name = \"no-hash\"\nusers = [\"bpftk-alice\"]\nmaps = [\"hash\"]\n",
    );
    let explain = |extra: &[&str]| {
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy).args(["--enforcer", "available"]);
        c.args(["--explain", ALICE, "--json"]).args(extra);
        output(c)
    };
    let alice = user(ALICE);
    let dev = uzers::get_group_by_name(DEV_GROUP).expect("group bpftk-dev").gid();
    let v = document(&explain(&["--group", DEV_GROUP]));
    assert_eq!(v["schema"], "bpftokend.explain/1", "{v:#}");
    assert_eq!(v["policy"], policy.display().to_string());
    assert_eq!((v["allow_rules"].as_u64(), v["deny_rules"].as_u64()), (Some(2), Some(1)));
    assert_eq!(v["warnings"], json!([]));
    assert_eq!(v["require_enforcement"], true);
    assert_eq!(
        v["caller"],
        json!({"uid": alice.uid, "gid": alice.gid, "groups": [dev], "exe": null, "cgroup": null, "userns_owner": null})
    );
    assert_eq!(v["allowed_by"], json!(["devs", "alice-ci"]));
    assert_eq!(v["denied_by"], json!(["no-hash"]));
    assert_eq!(v["grant"], json!({"cmds": ["map_create"], "maps": ["array"], "progs": [], "attachs": []}));
    assert_eq!(v["removed"], json!({"cmds": [], "maps": ["hash"], "progs": [], "attachs": []}));
    assert_eq!(
        v["limits"],
        json!({
            "mints_per_minute": [{"rule": "devs", "value": 60}],
            "max_live_tokens": null,
            "ttl": {"rule": "alice-ci", "value": 600}
        })
    );
    assert_eq!(v["bind"], json!({"uid": "alice-ci", "cgroup": "alice-ci", "exe": null, "identity_cgroup": null}));
    assert_eq!(v["learn_rules"], json!(["alice-ci"]));
    let rules = v["rules"].as_array().expect("rules is a list");
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["devs", "alice-ci"]);
    assert_eq!(
        rules[1],
        json!({
            "name": "alice-ci",
            "file": policy.display().to_string(),
            "line": 8,
            "grant": {"cmds": ["map_create"], "maps": ["array"], "progs": [], "attachs": []},
            "mints_per_minute": null,
            "max_live_tokens": null,
            "ttl": 600,
            "bind": ["uid", "cgroup"],
            "learn": true
        })
    );
    assert_eq!(rules[0]["line"], 1);
    assert_eq!(rules[0]["grant"]["maps"], json!(["hash", "array"]));

    // Outside the policy: no rule, nothing granted; an unknown user fails
    // with nothing on stdout.
    let mut c = Command::new(env.bin("bpftokend"));
    c.arg("check-policy").arg("--policy").arg(&policy).args(["--enforcer", "available", "--explain", EVE, "--json"]);
    let v = document(&output(c));
    assert_eq!((v["allowed_by"].clone(), v["rules"].clone()), (json!([]), json!([])));
    assert_eq!(v["grant"]["cmds"], json!([]));
    let mut c = Command::new(env.bin("bpftokend"));
    c.arg("check-policy").arg("--policy").arg(&policy).args(["--explain", "bpftk-nosuchuser", "--json"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert_eq!(stderr(&o), "bpftokend: unknown user \"bpftk-nosuchuser\"\n");

    // With a drop-in, each rule names the file it is defined in: the main
    // file's rules the policy as given, the drop-in's its own path.
    let dropins = dir.join("policy.d");
    std::fs::create_dir(&dropins).expect("create policy.d");
    std::fs::set_permissions(&dropins, std::fs::Permissions::from_mode(0o755)).expect("chmod policy.d");
    let dropin = dropins.join("50-alice.toml");
    write_policy(
        &dropin,
        "# Queues for alice.\n\n[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"queue\"]\n",
    );
    let v = document(&explain(&["--group", DEV_GROUP]));
    let rules: Vec<(&str, &str, u64)> = v["rules"]
        .as_array()
        .expect("rules is a list")
        .iter()
        .map(|r| {
            (r["name"].as_str().unwrap_or("?"), r["file"].as_str().unwrap_or("?"), r["line"].as_u64().unwrap_or(0))
        })
        .collect();
    let (main, dropin) = (policy.display().to_string(), dropin.display().to_string());
    assert_eq!(
        rules,
        [("devs", main.as_str(), 1), ("alice-ci", main.as_str(), 8), ("50-alice.toml:allow[0]", dropin.as_str(), 3)],
        "{v:#}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn query_json_lists_the_tracing_targets_the_callers_rules_name() {
    let Some(env) = setup("query_json_lists_the_tracing_targets_the_callers_rules_name") else { return };
    let policy = "[[allow]]\nname = \"tracer\"\nusers = [\"bpftk-alice\"]\ncmds = [\"prog_load\"]\nprogs = \
                  [\"tracepoint\"]\ntracepoints = [\"syscalls:sys_enter_getpid\"]\n\n[[deny]]\nname = \
                  \"no-exit\"\nusers = [\"bpftk-alice\"]\ntracepoints = [\"syscalls:sys_enter_exit*\"]\n";
    let d = TestDaemon::start(&env, policy, &[]);
    let v = document(&d.bpftoken(&env, &user(ALICE), &["query", "--json"]));
    assert_eq!(
        v["tracing"],
        json!([
            {"key": "tracepoints", "pattern": "syscalls:sys_enter_getpid", "rule": "tracer", "denied": false},
            {"key": "tracepoints", "pattern": "syscalls:sys_enter_exit*", "rule": "no-exit", "denied": true}
        ]),
        "{v:#}"
    );
    // A caller no rule names: none.
    let v = document(&d.bpftoken(&env, &user(EVE), &["query", "--json"]));
    assert_eq!(v["tracing"], json!([]), "{v:#}");
}
