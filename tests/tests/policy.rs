//! The policy language end to end: matchers the kernel vouches for
//! (executable, cgroup), deny rules, rate limits, reload, explanations.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bpftoken_tests::*;

/// Replace the policy atomically (write a sibling, rename over).
fn replace_policy(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    write_policy(&tmp, text);
    std::fs::rename(&tmp, path).expect("rename policy");
}

fn sighup(d: &TestDaemon) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(d.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

fn wait_for_log(d: &TestDaemon, needle: &str) {
    d.wait_for_log(needle);
}

#[test]
fn executable_rule_matches_the_real_path_not_a_copy() {
    let Some(env) = setup("executable_rule_matches_the_real_path_not_a_copy") else { return };
    let real = env.bin("bpftoken");
    let policy = format!(
        "[[allow]]\nname = \"only-the-real-cli\"\nusers = [\"bpftk-alice\"]\nexecutables = [\"{}\"]\nenforce_identity = false\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n",
        real.display()
    );
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    // Without the enforcer the match is only claimed, and says so.
    let line = d.wait_for_log("decision=\"granted\"");
    assert!(line.contains("identity=\"claimed\"") && line.contains("exe_source=\"running\""), "{line}");

    // The same binary at another path does not match.
    let copy_dir = scratch_dir("exe-copy");
    let copy = copy_dir.join("bpftoken");
    std::fs::copy(&real, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = as_user(&alice, &copy);
    c.arg("--socket").arg(&d.socket).args(["run", "--", "true"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: no rule in {} allows uid {} (gid {}) (not_in_policy)\n",
            d.policy.display(),
            alice.uid,
            alice.gid
        )
    );
    d.wait_for_log(&format!("exe={:?}", copy.display().to_string()));
    let _ = std::fs::remove_dir_all(copy_dir);
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` or, on hybrid systems,
/// `/sys/fs/cgroup/unified`).
fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find(|l| l.split(" - ").nth(1).is_some_and(|rest| rest.starts_with("cgroup2 ")))
        .and_then(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .expect("cgroup2 is mounted")
}

#[test]
fn cgroup_rule_matches_a_process_moved_into_the_cgroup() {
    let Some(env) = setup("cgroup_rule_matches_a_process_moved_into_the_cgroup") else { return };
    let name = format!("bpftoken-e2e-{}", std::process::id());
    let dir = cgroup2_root().join(&name);
    std::fs::create_dir(&dir).expect("create test cgroup");
    let policy = format!(
        "[[allow]]\nname = \"agent-cgroup\"\nusers = [\"bpftk-alice\"]\ncgroups = [\"/{name}\"]\nenforce_identity = false\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n"
    );
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    // Outside the cgroup: refused.
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Moved in (by root, then dropping to alice): granted.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec setpriv --reuid {ALICE} --regid {ALICE} --init-groups -- {} --socket {} run -- true",
        dir.display(),
        env.bin("bpftoken").display(),
        d.socket.display()
    );
    let o = output({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    let granted = o.status.success();
    let _ = std::fs::remove_dir(&dir);
    assert!(granted, "{}\n{}", stderr(&o), d.log_text());
    d.wait_for_log(&format!("cgroup=\"/{name}\" rules=agent-cgroup"));
}

#[test]
fn deny_beats_allow_and_rate_limits_refuse() {
    let Some(env) = setup("deny_beats_allow_and_rate_limits_refuse") else { return };
    let policy = r#"
[[allow]]
name = "devs"
groups = ["bpftk-dev"]
users = ["bpftk-bob"]
cmds = ["map_create"]
maps = ["array", "hash"]
mints_per_minute = 3

[[deny]]
name = "no-hash"
users = ["bpftk-bob"]
maps = ["hash"]
"#;
    let d = TestDaemon::start(&env, policy, &[]);
    let bob = user(BOB);
    let probe = env.bin("bpftoken-probe");
    let o = d.bpftoken(&env, &bob, &["run", "--", probe.to_str().unwrap(), "try", "map:array", "map:hash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "map:array ok\nmap:hash EPERM\n");
    let o = d.bpftoken(&env, &bob, &["run", "--maps", "hash", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with(&format!(
            "bpftoken: refused: map type \"hash\" is denied to uid {} by {} (rule no-hash) (not_granted)\n\
             bpftoken: {} grants you (allowed by devs):\nbpftoken:   minus what no-hash deny\n",
            bob.uid,
            d.policy.display(),
            d.policy.display()
        )),
        "{}",
        stderr(&o)
    );
    // Two granted so far (the refusal did not count); the third passes,
    // the fourth meets the limit.
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!(
            "bpftoken: refused: uid {} reached the limit of 3 mints per minute of rule \"devs\"; retry in ",
            bob.uid
        )) && first.ends_with(" s (rate_limited)"),
        "{err}"
    );
    assert!(err.contains("bpftoken:   at most 3 mints per minute (rule devs)\n"), "{err}");
}

#[test]
fn sighup_reload_while_minting_loses_nothing_and_takes_effect() {
    let Some(env) = setup("sighup_reload_while_minting_loses_nothing_and_takes_effect") else { return };
    let v1 = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
    let v2 = format!(
        "{v1}\n[[allow]]\nname = \"bob-too\"\nusers = [\"bpftk-bob\"]\ncmds = [\"map_create\"]\nmaps = [\"queue\"]\n"
    );
    let d = TestDaemon::start(&env, v1, &[]);
    let (alice, bob) = (user(ALICE), user(BOB));
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "bob is not in v1");

    let mut minting = as_user(&alice, env.bin("bpftoken-probe"));
    minting.args(["mint-loop", d.socket.to_str().unwrap(), "3000"]).stdout(std::process::Stdio::piped());
    let minting = minting.spawn().expect("spawn minting client");
    for i in 0..10 {
        replace_policy(&d.policy, if i % 2 == 0 { &v2 } else { v1 });
        sighup(&d);
        std::thread::sleep(Duration::from_millis(30));
    }
    replace_policy(&d.policy, &v2);
    sighup(&d);
    let o = minting.wait_with_output().expect("minting client");
    assert_eq!(stdout(&o), "minted 3000\n", "zero failed mints across reloads");
    wait_for_log(&d, "policy reloaded");
    std::thread::sleep(Duration::from_millis(100));
    let o = d.bpftoken(&env, &bob, &["run", "--", env.bin("bpftoken-probe").to_str().unwrap(), "try", "map:queue"]);
    assert!(o.status.success(), "the new rule is in force: {}\n{}", stderr(&o), d.log_text());
    assert_eq!(stdout(&o), "map:queue ok\n");
}

#[test]
fn broken_policy_on_reload_keeps_the_old_one() {
    let Some(env) = setup("broken_policy_on_reload_keeps_the_old_one") else { return };
    let v1 = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
    let d = TestDaemon::start(&env, v1, &[]);
    let alice = user(ALICE);
    replace_policy(&d.policy, "[[allow]]\nusers = [\"bpftk-alice\"]\nmaps = [\"arrray\"]\n");
    sighup(&d);
    wait_for_log(&d, "reload rejected");
    assert!(d.log_text().contains("unknown map type \"arrray\" (did you mean \"array\"?)"), "{}", d.log_text());
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "the old policy still serves: {}", stderr(&o));
    // An unsafe file is refused the same way.
    replace_policy(&d.policy, v1);
    std::fs::set_permissions(&d.policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    sighup(&d);
    wait_for_log(&d, "is writable by group or others");
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Swapped for a symlink (to a file that would grant more).
    let other = d.dir.join("other.toml");
    write_policy(&other, "[[allow]]\nuids = [0]\ncmds = [\"any\"]\n");
    std::fs::remove_file(&d.policy).unwrap();
    std::os::unix::fs::symlink(&other, &d.policy).unwrap();
    sighup(&d);
    wait_for_log(&d, "it is a symbolic link");
    // Truncated in the middle of a rule.
    std::fs::remove_file(&d.policy).unwrap();
    write_policy(&d.policy, "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_cr");
    sighup(&d);
    wait_for_log(&d, "invalid basic string");
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "the first policy is still in force: {}", stderr(&o));
    assert!(
        !d.log_text().contains("policy reloaded"),
        "no unsafe or partial policy was ever loaded:\n{}",
        d.log_text()
    );
}

#[test]
fn check_policy_explains_a_grant() {
    let Some(env) = setup("check_policy_explains_a_grant") else { return };
    let dir = scratch_dir("explain");
    let policy = dir.join("policy.toml");
    write_policy(
        &policy,
        "[[allow]]\nname = \"devs\"\ngroups = [\"bpftk-dev\"]\ncmds = [\"map_create\"]\nmaps = [\"array\", \"hash\"]\n\
         \n[[deny]]\nname = \"no-hash\"\nusers = [\"bpftk-bob\"]\nmaps = [\"hash\"]\n",
    );
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy).args(["--explain", BOB]);
        c
    });
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("allowed by: devs\n"), "{out}");
    assert!(out.contains("denied by:  no-hash (removes cmds=[] maps=[hash] progs=[] attachs=[])\n"), "{out}");
    assert!(out.contains("maps:    array\n"), "{out}");
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy).args(["--explain", EVE]);
        c
    });
    assert!(stdout(&o).contains("no allow rule matches: every request is refused (not_in_policy)"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_policy_explain_shows_ttl_bind_and_learn_per_rule() {
    let Some(env) = setup("check_policy_explain_shows_ttl_bind_and_learn_per_rule") else { return };
    let dir = scratch_dir("explain-rules");
    let policy = dir.join("policy.toml");
    write_policy(
        &policy,
        "[[allow]]\nname = \"devs\"\ngroups = [\"bpftk-dev\"]\ncmds = [\"map_create\"]\nmaps = [\"array\", \
         \"hash\"]\nmints_per_minute = 60\n\n[[allow]]\nname = \"bob-ci\"\nusers = [\"bpftk-bob\"]\ncmds = \
         [\"map_create\"]\nmaps = [\"array\"]\nttl = 600\nbind = [\"uid\", \"cgroup\"]\nlearn = true\n\n[[deny]]\n\
         name = \"no-hash\"\nusers = [\"bpftk-bob\"]\nmaps = [\"hash\"]\n",
    );
    let explain = |who: &str| {
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy).args(["--explain", who, "--group", DEV_GROUP]);
        let o = output(c);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let dev = uzers::get_group_by_name(DEV_GROUP).expect("group bpftk-dev").gid();
    let (bob, alice) = (user(BOB), user(ALICE));
    let head =
        format!("{}: ok, 2 allow and 1 deny rule(s); names checked against the running kernel", policy.display());
    let out = explain(BOB);
    assert!(out.starts_with(&head), "{out}");
    let body = out.split_once('\n').map_or("", |(_, rest)| rest);
    assert_eq!(
        body,
        format!(
            "uid {} gid {} groups [{dev}] exe (any) cgroup (any)
allowed by: devs, bob-ci
denied by:  no-hash (removes cmds=[] maps=[hash] progs=[] attachs=[])
limit:      60 mints per minute (rule devs)
limit:      tokens work 600 s (ttl, rule bob-ci)
bind:       tokens work only for their owner uid (rule bob-ci) and only inside the cgroup they are minted from (rule \
             bob-ci)
learn:      yes: `bpftoken learn` gets the grant of rule bob-ci only
enforcement: required (require_enforcement = true): without the enforcer these grants are refused (not_enforceable)
cmds:    map_create
maps:    array
progs:   (none)
attachs: (none)
rules:
  devs (line 1): ttl -; bind -; learn no
  bob-ci (line 8): ttl 600 s; bind uid+cgroup; learn yes
",
            bob.uid, bob.gid
        )
    );
    // Alice matches only the rule without ttl, bind or learn.
    let out = explain(ALICE);
    let body = out.split_once('\n').map_or("", |(_, rest)| rest);
    assert_eq!(
        body,
        format!(
            "uid {} gid {} groups [{dev}] exe (any) cgroup (any)
allowed by: devs
limit:      60 mints per minute (rule devs)
bind:       none
learn:      no (no matching allow rule sets learn = true)
cmds:    map_create
maps:    hash, array
progs:   (none)
attachs: (none)
rules:
  devs (line 1): ttl -; bind -; learn no
",
            alice.uid, alice.gid
        )
    );
    // Where the policy lets grants go unenforced, it says so.
    let text = std::fs::read_to_string(&policy).unwrap();
    write_policy(&policy, &format!("require_enforcement = false\n{text}"));
    assert!(
        explain(BOB).contains(
            "\nenforcement: not required (require_enforcement = false): without the enforcer these grants are minted \
             unenforced\n"
        ),
        "{}",
        explain(BOB)
    );
    let _ = std::fs::remove_dir_all(dir);
}
