//! Policy drop-ins (`policy.d/*.toml` next to the policy) and `check-policy`
//! diagnostics end to end: every mistake of a file in one run with its
//! suggestion, a rule only in a drop-in grants, an error in a drop-in names
//! that file, and a reload picks up drop-ins added and removed (a bad one
//! keeps the old policy). See docs/policy.md, "Drop-in files".

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpftoken_tests::*;

/// `bpftokend check-policy --policy PATH`.
fn check_policy(env: &Env, path: &Path) -> Output {
    let mut c = Command::new(env.bin("bpftokend"));
    c.arg("check-policy").arg("--policy").arg(path);
    output(c)
}

/// The drop-in directory of a policy, created root-owned 0755.
fn dropin_dir(policy: &Path) -> PathBuf {
    let dir = policy.parent().expect("policy has a directory").join("policy.d");
    std::fs::create_dir_all(&dir).expect("create policy.d");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod policy.d");
    dir
}

fn sighup(d: &TestDaemon) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(d.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

const ALICE_ONLY: &str = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
const BOB_QUEUE: &str = "[[allow]]\nusers = [\"bpftk-bob\"]\ncmds = [\"map_create\"]\nmaps = [\"queue\"]\n";

#[test]
fn check_policy_reports_five_mistakes_in_one_run_with_suggestions() {
    let Some(env) = setup("check_policy_reports_five_mistakes_in_one_run_with_suggestions") else { return };
    let dir = scratch_dir("five-mistakes");
    let policy = dir.join("policy.toml");
    write_policy(
        &policy,
        "[[allow]]\n\
         name = \"devs\"\n\
         user = [\"bpftk-alice\"]\n\
         groups = [\"bpftk-devv\"]\n\
         cmds = [\"BPF_MAP_CREATE\", \"prog_load\"]\n\
         progs = [\"BPF_PROG_TYPE_XDP\"]\n\
         \n\
         [[allow]]\n\
         name = \"ops\"\n\
         users = [\"bpftk-alicee\"]\n\
         maps = [\"array\"]\n",
    );
    let o = check_policy(&env, &policy);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let p = policy.display();
    assert_eq!(
        stderr(&o),
        format!(
            "{p}:3:1: unknown key `user` (did you mean `users`?)
    user = [\"bpftk-alice\"]
    ^
{p}:4:11: unknown group \"bpftk-devv\" (did you mean \"bpftk-dev\"?)
    groups = [\"bpftk-devv\"]
              ^
{p}:5:9: unknown command \"BPF_MAP_CREATE\" (did you mean \"map_create\"? the policy spells kernel names in \
             lowercase without `BPF_`)
    cmds = [\"BPF_MAP_CREATE\", \"prog_load\"]
            ^
{p}:6:10: unknown program type \"BPF_PROG_TYPE_XDP\" (did you mean \"xdp\"? the policy spells kernel names in \
             lowercase without `BPF_PROG_TYPE_`)
    progs = [\"BPF_PROG_TYPE_XDP\"]
             ^
{p}:10:10: unknown user \"bpftk-alicee\" (did you mean \"bpftk-alice\"?)
    users = [\"bpftk-alicee\"]
             ^
5 errors: {p} does not load
"
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_policy_merges_dropins_ignores_other_files_and_names_a_bad_one() {
    let Some(env) = setup("check_policy_merges_dropins_ignores_other_files_and_names_a_bad_one") else { return };
    let dir = scratch_dir("dropins-check");
    let policy = dir.join("policy.toml");
    write_policy(&policy, ALICE_ONLY);
    let dropins = dropin_dir(&policy);
    write_policy(&dropins.join("50-bob.toml"), BOB_QUEUE);
    // Backups and package leftovers are not drop-ins, whatever they hold.
    for ignored in ["50-bob.toml~", "50-bob.toml.dpkg-old", ".50-bob.toml.swp", "README"] {
        write_policy(&dropins.join(ignored), "not [[[ toml");
    }
    let o = check_policy(&env, &policy);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "{}: ok, 2 allow and 0 deny rule(s) (with the drop-in 50-bob.toml); names checked against ",
            policy.display()
        )) && out.lines().count() == 1,
        "{out}"
    );
    // `--explain` says which file a rule is in.
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy).args(["--explain", BOB]);
        c
    });
    let out = stdout(&o);
    assert!(
        out.ends_with(&format!(
            "rules:\n  50-bob.toml:allow[0] (line 1 of {}): ttl -; bind -; learn no\n",
            dropins.join("50-bob.toml").display()
        )),
        "{out}"
    );
    // An error in a drop-in names that file; settings stay in the main file.
    let bad = dropins.join("60-bad.toml");
    write_policy(&bad, "require_enforcement = false\n\n[[deny]]\nusers = [\"bpftk-bob\"]\nmaps = [\"queu\"]\n");
    let o = check_policy(&env, &policy);
    assert_eq!(o.status.code(), Some(1));
    // The messages, without the quoted lines and carets under them.
    let lines: Vec<String> = stderr(&o).lines().filter(|l| !l.starts_with("    ")).map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{}:1:1: `require_enforcement` is a setting of the whole policy: only the main file ({}) may set \
                 it; a drop-in holds only [[allow]] and [[deny]] rules",
                bad.display(),
                policy.display()
            ),
            format!("{}:5:9: unknown map type \"queu\" (did you mean \"queue\"?)", bad.display()),
            format!("2 errors: {} does not load", policy.display()),
        ]
    );
    // An unsafe drop-in is refused by name.
    write_policy(&bad, BOB_QUEUE.replace("bpftk-bob", "bpftk-eve").as_str());
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o664)).unwrap();
    let o = check_policy(&env, &policy);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "refusing policy {0}: the file is writable by group or others (mode 0664; chmod go-w {0})\n",
            bad.display()
        )
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn reload_picks_up_added_and_removed_dropins_and_a_bad_one_keeps_the_old_policy() {
    let Some(env) = setup("reload_picks_up_added_and_removed_dropins_and_a_bad_one_keeps_the_old_policy") else {
        return;
    };
    let d = TestDaemon::start(&env, ALICE_ONLY, &[]);
    let bob = user(BOB);
    let probe = env.bin("bpftoken-probe");
    let probe = probe.to_str().unwrap();
    let refused = format!(
        "bpftoken: refused: no rule in {} allows uid {} (gid {}) (not_in_policy)\n",
        d.policy.display(),
        bob.uid,
        bob.gid
    );
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert_eq!((o.status.code(), stderr(&o)), (Some(1), refused.clone()), "bob is in no rule yet");

    // Added: a rule only in the drop-in grants.
    let dropins = dropin_dir(&d.policy);
    let bob_file = dropins.join("50-bob.toml");
    write_policy(&bob_file, BOB_QUEUE);
    sighup(&d);
    d.wait_for_log("policy reloaded (with the drop-in 50-bob.toml)");
    let o = d.bpftoken(&env, &bob, &["run", "--", probe, "try", "map:queue"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    assert_eq!(stdout(&o), "map:queue ok\n");
    d.wait_for_log("rules=50-bob.toml:allow[0]");

    // A bad drop-in: the reload is refused naming its file, the old policy
    // (with 50-bob.toml) stays in force.
    let bad = dropins.join("60-bad.toml");
    write_policy(&bad, "[[deny]]\nusers = [\"bpftk-bob\"]\nmaps = [\"queu\"]\n");
    sighup(&d);
    let log = d.wait_for_log("reload rejected");
    assert!(
        log.contains(&format!("{}:3:9: unknown map type \"queu\" (did you mean \"queue\"?)", bad.display())),
        "{log}"
    );
    let o = d.bpftoken(&env, &bob, &["run", "--", probe, "try", "map:queue"]);
    assert!(o.status.success(), "the old policy still serves: {}", stderr(&o));
    std::fs::remove_file(&bad).unwrap();

    // Removed: bob is out again.
    std::fs::remove_file(&bob_file).unwrap();
    sighup(&d);
    d.wait_for_log_lines("policy reloaded", 2);
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert_eq!((o.status.code(), stderr(&o)), (Some(1), refused), "{}", d.log_text());
}

#[test]
fn a_start_with_errors_in_several_files_prints_them_all() {
    let Some(env) = setup("a_start_with_errors_in_several_files_prints_them_all") else { return };
    let dir = scratch_dir("dropins-start");
    let policy = dir.join("policy.toml");
    write_policy(&policy, "[[allow]]\nusers = [\"bpftk-alice\"]\nmaps = [\"hashh\"]\n");
    let dropin = dropin_dir(&policy).join("10-ci.toml");
    write_policy(&dropin, "[[allow]]\nuser = [\"bpftk-bob\"]\nmaps = [\"array\"]\n");
    let socket = dir.join("socket");
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("--socket").arg(&socket).arg("--policy").arg(&policy);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftokend: {}:3:9: unknown map type \"hashh\" (did you mean \"hash\"?)\n    maps = [\"hashh\"]\n            ^\n\
             {}:2:1: unknown key `user` (did you mean `users`?)\n    user = [\"bpftk-bob\"]\n    ^\n\
             2 errors: the policy does not load\n",
            policy.display(),
            dropin.display()
        )
    );
    assert!(!socket.exists(), "no socket for a daemon that does not start");
    let _ = std::fs::remove_dir_all(dir);
}
