//! Starting, refusing to start, stopping, and surviving a dead minter.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
"#;

fn start_daemon_once(env: &Env, socket: &std::path::Path, policy: &std::path::Path) -> std::process::Output {
    output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("--socket").arg(socket).arg("--policy").arg(policy);
        c
    })
}

#[test]
fn socket_is_world_connectable_and_removed_on_sigterm() {
    let Some(env) = setup("socket_is_world_connectable_and_removed_on_sigterm") else { return };
    let mut d = TestDaemon::start(&env, POLICY, &[]);
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    // An idle connection does not hold up shutdown.
    let _idle = UnixStream::connect(&d.socket).unwrap();
    let started = Instant::now();
    let status = d.stop();
    assert!(status.success(), "{status}\n{}", d.log_text());
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert!(!d.socket.exists(), "socket left behind");
    assert!(d.log_text().contains("stopped"), "{}", d.log_text());
}

#[test]
fn second_daemon_refuses_while_the_first_answers() {
    let Some(env) = setup("second_daemon_refuses_while_the_first_answers") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let o = start_daemon_once(&env, &d.socket, &d.policy);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!("bpftokend: another bpftokend is already answering on {}; stop it first\n", d.socket.display())
    );
    // The first one is untouched.
    let o = d.bpftoken(&env, &user(ALICE), &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn stale_socket_is_replaced() {
    let Some(env) = setup("stale_socket_is_replaced") else { return };
    let dir = scratch_dir("stale");
    let socket = dir.join("socket");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut d = TestDaemon::start_on(&env, POLICY, Some(socket.clone()), &[]);
    assert!(d.log_text().contains("replacing stale socket"), "{}", d.log_text());
    let o = {
        let mut c = as_user(&user(ALICE), env.bin("bpftoken"));
        c.arg("--socket").arg(&socket).args(["run", "--", "true"]);
        output(c)
    };
    assert!(o.status.success(), "{}", stderr(&o));
    d.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unsafe_or_broken_policy_stops_the_start() {
    let Some(env) = setup("unsafe_or_broken_policy_stops_the_start") else { return };
    let dir = scratch_dir("badpolicy");
    let socket = dir.join("socket");
    let policy = dir.join("policy.toml");
    write_policy(&policy, POLICY);
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = start_daemon_once(&env, &socket, &policy);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftokend: refusing policy {0}: the file is writable by group or others (mode 0666; chmod go-w {0})\n",
            policy.display()
        )
    );
    write_policy(&policy, "[[allow]]\nusers = [\"bpftk-alice\"]\nmaps = [\"hashh\"]\n");
    let o = start_daemon_once(&env, &socket, &policy);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftokend: {}:3:9: unknown map type \"hashh\" (did you mean \"hash\"?)\n    maps = [\"hashh\"]\n            ^\n",
            policy.display()
        )
    );
    assert!(!socket.exists(), "no socket is created for a daemon that does not start");
    // check-policy says the same and exits 1
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("check-policy").arg("--policy").arg(&policy);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown map type \"hashh\""), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn killed_minter_is_replaced_and_minting_continues() {
    let Some(env) = setup("killed_minter_is_replaced_and_minting_continues") else { return };
    let policy = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\", \"hash\"]\n";
    let d = TestDaemon::start(&env, policy, &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let old = children(d.pid());
    assert_eq!(old.len(), 2, "the two minters: {old:?}");
    for pid in &old {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(i32::try_from(*pid).unwrap()).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // A cached scope does not need a minter at all.
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    // A new scope does: the dead minters are noticed before the request is
    // sent, both replaced, and the request succeeds.
    let o = d.bpftoken(&env, &alice, &["run", "--maps", "hash", "--", "true"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    let new = children(d.pid());
    assert_eq!(new.len(), 2, "two minters, no zombie: {new:?}");
    assert!(new.iter().all(|p| !old.contains(p)), "both replaced: {old:?} -> {new:?}");
    assert_eq!(d.log_text().matches("the minter exited while idle").count(), 2, "{}", d.log_text());
}

#[test]
fn a_missing_capability_stops_the_start_with_one_line() {
    let Some(env) = setup("a_missing_capability_stops_the_start_with_one_line") else { return };
    let dir = scratch_dir("nocap");
    let policy = dir.join("policy.toml");
    write_policy(&policy, POLICY);
    // As a unit with too small a CapabilityBoundingSet= would start it.
    let o = output({
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-sys_ptrace", "--inh-caps=-all", "--"])
            .arg(env.bin("bpftokend"))
            .arg("--socket")
            .arg(dir.join("socket"))
            .arg("--policy")
            .arg(&policy);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "bpftokend: bpftokend lacks CAP_SYS_PTRACE (to read a client's executable, cgroup and user namespace \
         through its pidfd); run it as root without dropping that capability (check CapabilityBoundingSet= in its unit)\n"
    );
    assert!(!dir.join("socket").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// Threat model row 7: SIGKILL of helpers, then of the minter itself, in
/// the middle of cold mints. The client gets a typed `mint_failed` naming
/// what died, the daemon replaces the minter, later mints succeed, and no
/// process is left behind.
#[test]
fn killing_helpers_and_the_minter_mid_mint_gives_typed_errors() {
    let Some(env) = setup("killing_helpers_and_the_minter_mid_mint_gives_typed_errors") else { return };
    let policy = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"any\"]\n";
    let d = TestDaemon::start(&env, policy, &[]);
    let alice = user(ALICE);
    let daemon = d.pid();
    let minters = children(daemon);
    assert_eq!(minters.len(), 2, "the two minters: {minters:?}");
    let kill = |pid: u32| {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
            rustix::process::Signal::KILL,
        );
    };
    // Every mint is cold (a new map mask each time), so each has a helper.
    let cold_mints = |count: &str| {
        let mut c = as_user(&alice, env.bin("bpftoken-probe"));
        c.args(["mint-masks", d.socket.to_str().unwrap(), count, "5000"]);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().expect("probe")
    };

    // Helpers: killed as soon as they are seen.
    let probe = cold_mints("300");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let minters = minters.clone();
        std::thread::spawn(move || {
            let mut killed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for helper in minters.iter().flat_map(|m| children(*m)) {
                    kill(helper);
                    killed += 1;
                }
            }
            killed
        })
    };
    let o = probe.wait_with_output().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.join().unwrap();
    let out = stdout(&o);
    let errors: usize = out.lines().find_map(|l| l.strip_prefix("errors ")).and_then(|n| n.parse().ok()).unwrap();
    eprintln!("SIGKILLs sent to helpers: {killed}; {}", out.replace('\n', "; "));
    assert!(killed > 0 && errors > 0, "no helper was killed mid-mint: {out}");
    for line in out.lines().filter(|l| l.starts_with("error ")) {
        assert!(
            line.contains("minting failed: the bpffs helper for uid")
                && line.contains("ended before it finished (it was killed or crashed) (mint_failed)"),
            "{line}"
        );
    }
    assert_eq!(children(daemon), minters, "the minters survive their helpers");

    // A minter: killed while it drives a helper.
    let probe = cold_mints("50");
    let mut minter_killed = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while minter_killed.is_none() && std::time::Instant::now() < deadline {
        if let Some(busy) = minters.iter().copied().find(|m| !children(*m).is_empty()) {
            kill(busy);
            minter_killed = Some(busy);
        }
    }
    let o = probe.wait_with_output().unwrap();
    let Some(killed) = minter_killed else { panic!("never saw a minter mid-mint") };
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("error ") && l.contains("the minter process is unavailable")), "{out}");
    // Later cold mints succeed, and nothing is left running.
    let o = d.bpftoken(&env, &alice, &["run", "--maps", "array", "--", "true"]);
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    let replaced = children(daemon);
    assert_eq!(replaced.len(), 2, "exactly two minters, no zombie: {replaced:?}");
    assert!(!replaced.contains(&killed), "the killed minter was replaced: {replaced:?}");
    assert!(minters.iter().any(|m| replaced.contains(m)), "the other minter runs on: {replaced:?}");
    std::thread::sleep(Duration::from_millis(200));
    let helpers: Vec<u32> = replaced.iter().flat_map(|m| children(*m)).collect();
    assert_eq!(helpers, Vec::<u32>::new(), "a helper outlived its mint");
}

/// Issue #18: an fd the daemon inherited without close-on-exec (here fd 9,
/// opened by the shell that starts it) never reaches the minters it execs.
#[test]
fn fds_the_daemon_inherited_do_not_reach_its_minters() {
    let Some(env) = setup("fds_the_daemon_inherited_do_not_reach_its_minters") else { return };
    let dir = scratch_dir("inherited-fd");
    let (socket, policy) = (dir.join("socket"), dir.join("policy.toml"));
    write_policy(&policy, POLICY);
    let marker = dir.join("inherited-marker");
    std::fs::write(&marker, b"").unwrap();
    let script = format!(
        "exec 9<{} && exec {} --socket {} --policy {}",
        marker.display(),
        env.bin("bpftokend").display(),
        socket.display(),
        policy.display()
    );
    let mut daemon = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon still holds it (close-on-exec now); its minters do not.
    let holds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker)))
            .unwrap_or(false)
    };
    let minters = children(daemon.id());
    let leaked: Vec<u32> = minters.iter().copied().filter(|m| holds(*m)).collect();
    let daemon_holds = holds(daemon.id());
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(daemon_holds, "the daemon should still hold what it inherited");
    assert!(!minters.is_empty(), "no minter found");
    assert!(leaked.is_empty(), "minters {leaked:?} inherited the daemon's fd 9");
}
