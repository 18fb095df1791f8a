//! `executables` and `cgroups` rules as a hostile user of the same uid
//! attacks them (threat model rows 1 and 16). Only the enforcer can tie a
//! token to a program; these host tests check what holds without it: such
//! a policy is refused (at `check-policy`, start and reload) unless a rule
//! says `enforce_identity = false`, and then every request is judged by
//! the process that sent it, with the grant audited as `claimed`. The
//! enforced side (a borrowed token is EPERM in any other program) runs in
//! the 6.12 VM: `tests/vm`, capability `bind-exe`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;

/// The one program the attacks' policies allow (a dynamic executable, so
/// LD_PRELOAD reaches it).
fn allowed() -> std::path::PathBuf {
    std::fs::canonicalize("/usr/bin/sleep").expect("/usr/bin/sleep")
}

fn identity_policy(extra: &str) -> String {
    format!(
        "[[allow]]\nname = \"sleep-only\"\nusers = [\"bpftk-alice\"]\nexecutables = [\"{}\"]\n{extra}cmds = \
         [\"map_create\"]\nmaps = [\"array\"]\n",
        allowed().display()
    )
}

/// `bpftokend check-policy --policy FILE ARGS...`: exit code and stderr.
fn check_policy(env: &Env, text: &str, args: &[&str]) -> (Option<i32>, String, std::path::PathBuf) {
    let dir = scratch_dir("identity-check");
    let path = dir.join("policy.toml");
    write_policy(&path, text);
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&path).args(args);
        c
    });
    (o.status.code(), stderr(&o), path)
}

#[test]
fn identity_rules_without_the_enforcer_are_refused_with_the_reason() {
    let Some(env) = setup("identity_rules_without_the_enforcer_are_refused_with_the_reason") else { return };
    let exe = allowed().display().to_string();
    let (code, err, path) = check_policy(&env, &identity_policy(""), &["--enforcer", "unavailable"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "{}:4:16: rule \"sleep-only\" matches on `executables`, which only the enforcer can make a security \
             boundary (any program of the same uid could otherwise borrow the grant), and the enforcer cannot run \
             here: `--enforcer unavailable` was given; enable the BPF LSM, or set `enforce_identity = false` in the \
             rule to accept the match as advisory (audited as claimed)\n    executables = [\"{exe}\"]\n    {}^\n",
            path.display(),
            " ".repeat(15)
        )
    );
    // The same for `cgroups`.
    let cg = "[[allow]]\nname = \"svc\"\nusers = [\"bpftk-alice\"]\ncgroups = [\"/system.slice/a.service\"]\ncmds = \
              [\"map_create\"]\n";
    let (code, err, path) = check_policy(&env, cg, &["--enforcer", "unavailable"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.lines().next().unwrap_or_default(),
        format!(
            "{}:4:12: rule \"svc\" matches on `cgroups`, which only the enforcer can make a security boundary (any \
             program of the same uid could otherwise borrow the grant), and the enforcer cannot run here: \
             `--enforcer unavailable` was given; enable the BPF LSM, or set `enforce_identity = false` in the rule \
             to accept the match as advisory (audited as claimed)",
            path.display()
        )
    );
    // Containers: refused wherever it is checked.
    let container = format!(
        "[[allow]]\nname = \"c\"\nuserns_owners = [\"bpftk-alice\"]\nexecutables = [\"{exe}\"]\ncmds = \
         [\"map_create\"]\n"
    );
    let (code, err, path) = check_policy(&env, &container, &["--enforcer", "available"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.lines().next().unwrap_or_default(),
        format!(
            "{}:4:16: rule \"c\" combines `executables` with `userns_owners`: a caller in a user namespace resolves \
             paths in its own mount namespace, where it can put any program at an allowed path; split the rule, or \
             drop `executables` (containers are told apart by `userns_owners`)",
            path.display()
        )
    );
    // Advisory, or checked for a host with the enforcer: loads.
    let (code, err, _) =
        check_policy(&env, &identity_policy("enforce_identity = false\n"), &["--enforcer", "unavailable"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, _) = check_policy(&env, &identity_policy(""), &["--enforcer", "available"]);
    assert_eq!(code, Some(0), "{err}");
}

/// The daemon itself: a start with such a policy fails with the line
/// `check-policy` prints (where the enforcer cannot run), and a reload to
/// one keeps the old policy.
#[test]
fn a_daemon_without_the_enforcer_will_not_start_or_reload_into_an_identity_rule() {
    let Some(env) = setup("a_daemon_without_the_enforcer_will_not_start_or_reload_into_an_identity_rule") else {
        return;
    };
    let dir = scratch_dir("identity-start");
    let policy = dir.join("policy.toml");
    write_policy(&policy, &identity_policy(""));
    let mut child = Command::new(env.bin("bpftokend"))
        .arg("--socket")
        .arg(dir.join("socket"))
        .arg("--policy")
        .arg(&policy)
        .arg("--pin-dir")
        .arg(dir.join("pins"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bpftokend");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        // Only a daemon with its enforcer may start: the VM's case.
        let _ = child.kill();
        let _ = child.wait();
        let probe = output({
            let mut c = Command::new(env.bin("bpftokend"));
            c.args(["check-policy", "--policy"]).arg(&policy);
            c
        });
        assert!(probe.status.success(), "the daemon started although check-policy refuses: {}", stderr(&probe));
        return;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("read stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "bpftokend: {}:4:16: rule \"sleep-only\" matches on `executables`, which only the enforcer can make a \
             security boundary (any program of the same uid could otherwise borrow the grant), and the enforcer \
             cannot run here: ",
            policy.display()
        )),
        "{err}"
    );

    // Reload: a daemon with an ordinary policy keeps it.
    let plain = "[[allow]]\nname = \"plain\"\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
    let d = TestDaemon::start(&env, plain, &[]);
    if d.enforcement() == "enforcing" {
        return;
    }
    write_policy(&d.policy, &identity_policy(""));
    let pid = rustix::process::Pid::from_raw(i32::try_from(d.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let line = d.wait_for_log("reload rejected");
    assert!(line.contains("matches on `executables`, which only the enforcer can make a security boundary"), "{line}");
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--fd-only", "--", "true"]);
    assert!(o.status.success(), "the old policy stays: {}", stderr(&o));
}

/// Attack 1, exec after connect: a process connects, at once execs the
/// allowed program, and its child (another program) sends the mint on the
/// shared connection. The daemon judges the sender: refused, and the
/// audit line names the child's executable, never the allowed one.
#[test]
fn exec_after_connect_is_judged_by_the_sender() {
    let Some(env) = setup("exec_after_connect_is_judged_by_the_sender") else { return };
    let d = TestDaemon::start(&env, &identity_policy("enforce_identity = false\n"), &[]);
    let alice = user(ALICE);
    let probe = env.bin("bpftoken-probe").display().to_string();
    for attempt in 0..20 {
        let mut c = as_user(&alice, env.bin("bpftoken-probe"));
        c.args(["exec-after-connect", d.socket.to_str().unwrap()]).arg(allowed()).arg("2");
        let o = output(c);
        let out = stdout(&o);
        assert!(
            out.contains(&format!(
                "mint: refused: no rule in {} allows uid {} (gid {}) (not_in_policy)",
                d.policy.display(),
                alice.uid,
                alice.gid
            )),
            "attempt {attempt}: {out}{}\n{}",
            stderr(&o),
            d.log_text()
        );
    }
    let log = d.log_text();
    assert!(!log.contains("decision=\"granted\""), "{log}");
    assert!(log.contains(&format!("exe={probe:?}")), "the refusal names the sender: {log}");
}

/// Attack 2, code inside the allowed program (LD_PRELOAD). Its
/// constructor, running in the allowed program, mints and execs another
/// program with the token. Without the enforcer nothing can tell that
/// code from the program's own, so an advisory rule grants, and says so:
/// `identity="claimed"`. (In the VM the token is bound to the allowed
/// file and the other program gets EPERM.) Handing the connection to the
/// other program instead is refused, as in attack 1.
#[test]
fn code_injected_into_the_allowed_program_is_granted_only_as_claimed() {
    let Some(env) = setup("code_injected_into_the_allowed_program_is_granted_only_as_claimed") else { return };
    let so = std::path::Path::new("/usr/local/libexec/bpftoken-test/preload_mint.so");
    if !so.exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing (scripts/setup-test-tools.sh builds it), and CI=true", so.display());
        }
        eprintln!("SKIPPED: {} is missing (run scripts/setup-test-tools.sh)", so.display());
        return;
    }
    // The constructor's hard-coded request is the codec's.
    let frame = bpftoken_proto::codec::encode_request(&bpftoken_proto::Request::new(
        bpftoken_proto::message::RequestBody::Mint(bpftoken_proto::MintRequest::default()),
    ))
    .unwrap();
    assert_eq!(frame, [7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], "update MINT_FRAME in tests/c/preload_mint.c");
    assert!(std::fs::metadata(so).unwrap().permissions().mode() & 0o005 == 0o005, "world-readable .so");

    let d = TestDaemon::start(&env, &identity_policy("enforce_identity = false\n"), &[]);
    let alice = user(ALICE);
    let mut c = as_user(&alice, allowed());
    c.arg("5")
        .env("LD_PRELOAD", so)
        .env("PRELOAD_SOCKET", &d.socket)
        .env("PRELOAD_EXEC", env.bin("bpftoken-probe"))
        .env("PRELOAD_TARGET", allowed());
    let o = output(c);
    assert!(o.status.success(), "{}{}\n{}", stdout(&o), stderr(&o), d.log_text());
    assert_eq!(stdout(&o).trim(), "map:array ok", "{}", stderr(&o));
    let line = d.wait_for_log("decision=\"granted\"");
    assert!(line.contains("identity=\"claimed\""), "{line}");
    assert!(line.contains(&format!("exe={:?}", allowed().display().to_string())), "{line}");
}

/// Attack 3, a bind mount in a user namespace: inside `unshare -Urm` the
/// caller puts another program (here the bpftoken CLI) over the allowed
/// path and runs it from there. The daemon never resolves a path in the
/// caller's mount namespace: the host's file at that path is not the one
/// running, and rules without `userns_owners` do not match callers in a
/// user namespace anyway (and `executables` with `userns_owners` does not
/// load: see above). Refused.
#[test]
fn a_program_bind_mounted_over_the_allowed_path_is_refused() {
    let Some(env) = setup("a_program_bind_mounted_over_the_allowed_path_is_refused") else { return };
    let d = TestDaemon::start(&env, &identity_policy("enforce_identity = false\n"), &[]);
    let alice = user(ALICE);
    let script = format!(
        "mount --bind {cli} {allowed} && exec {allowed} --socket {socket} run --fd-only -- /bin/true",
        cli = env.bin("bpftoken").display(),
        allowed = allowed().display(),
        socket = d.socket.display()
    );
    let mut c = as_user(&alice, "unshare");
    c.args(["-Urm", "sh", "-c", &script]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).ends_with("(not_in_policy)\n"), "{}", stderr(&o));
    let log = d.wait_for_log("decision=\"refused\"");
    assert!(!log.contains("decision=\"granted\""), "{log}");
}
