//! systemd integration with the real tools: socket activation through
//! systemd-socket-activate, readiness and status over a NOTIFY_SOCKET,
//! --exit-idle with the listening socket kept by the "service manager".

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;

const POLICY: &str = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_activation_serves_a_mint_and_leaves_the_socket_alone() {
    let Some(env) = setup("socket_activation_serves_a_mint_and_leaves_the_socket_alone") else { return };
    let dir = scratch_dir("activate");
    let (socket, policy, log) = (dir.join("socket"), dir.join("policy.toml"), dir.join("daemon.log"));
    write_policy(&policy, POLICY);
    let activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(env.bin("bpftokend"))
        .arg("--socket")
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate");
    let activator = KillOnDrop(activator);
    wait_for("the activation socket", || socket.exists());
    // systemd-socket-activate creates the socket with the umask's mode;
    // the real unit says SocketMode=0666.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mut c = as_user(&user(ALICE), env.bin("bpftoken"));
    c.arg("--socket").arg(&socket).args(["run", "--", "true"]);
    let o = output(c);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "{}\n{text}", stderr(&o));
    assert!(text.contains("activated=true"), "{text}");
    drop(activator);
    assert!(socket.exists(), "the daemon must not remove a socket it did not create");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn notify_socket_sees_ready_status_reload_and_stopping() {
    let Some(env) = setup("notify_socket_sees_ready_status_reload_and_stopping") else { return };
    let dir = scratch_dir("notify");
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut d = TestDaemon::start_with_env(&env, POLICY, &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let recv = || {
        let mut buf = vec![0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=1 rules; 0 tokens minted, 0 refused; 0 scopes; last reload: none"),
        "{ready:?}"
    );
    // The enforcer's state ends the line; with it running the live count
    // includes the daemon's spare tokens, so only the unavailable form is
    // exact.
    let enforcement = d.enforcement();
    assert!(ready.contains(&format!("; last reload: none; enforcement: {enforcement}")), "{ready:?}");
    let o = d.bpftoken(&env, &user(ALICE), &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // STATUS= follows the counters (reported every 2 s).
    let status = recv();
    let head = "STATUS=1 rules; 1 tokens minted, 0 refused; 1 scopes; last reload: none; enforcement: ";
    if enforcement == "enforcing" {
        assert!(status.starts_with(&format!("{head}enforcing (")), "{status:?}");
    } else {
        assert_eq!(status, format!("{head}{enforcement}\n"));
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(d.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = recv();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    let ready = recv();
    assert!(
        ready.starts_with("READY=1\nSTATUS=1 rules; 1 tokens minted") && ready.contains("last reload: ok"),
        "{ready:?}"
    );
    let status = d.stop();
    assert!(status.success());
    let mut last = recv();
    while !last.starts_with("STOPPING=1") {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1\nSTATUS=stopping\n");
}

#[test]
fn exit_idle_exits_and_the_next_connection_is_served_by_the_next_start() {
    let Some(env) = setup("exit_idle_exits_and_the_next_connection_is_served_by_the_next_start") else { return };
    let dir = scratch_dir("idle");
    let (socket, policy) = (dir.join("socket"), dir.join("policy.toml"));
    write_policy(&policy, POLICY);
    // The test plays systemd: it owns the listening socket across daemon
    // starts, so connections made while no daemon runs wait in its backlog.
    let listener = UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let fd = listener.as_raw_fd();
    let start = || {
        rustix::io::fcntl_setfd(listener.as_fd(), rustix::io::FdFlags::empty()).unwrap();
        let script = format!(
            "exec 3<&{fd}; export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=bpftokend.socket; exec {} --socket {} --policy {} --exit-idle 1",
            env.bin("bpftokend").display(),
            socket.display(),
            policy.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start");
        rustix::io::fcntl_setfd(listener.as_fd(), rustix::io::FdFlags::CLOEXEC).unwrap();
        child
    };
    let mint = || {
        let mut c = as_user(&user(ALICE), env.bin("bpftoken"));
        c.arg("--socket").arg(&socket).args(["run", "--", "true"]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c.spawn().expect("client")
    };
    let first = start();
    let o = mint().wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let started = Instant::now();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "exited after {:?}", started.elapsed());
    assert!(stderr(&out).contains("idle for 1 s: exiting until the next connection"), "{}", stderr(&out));
    // A client connects while no daemon runs; the next start serves it.
    let waiting = mint();
    std::thread::sleep(Duration::from_millis(300));
    let second = KillOnDrop(start());
    let o = waiting.wait_with_output().unwrap();
    assert!(o.status.success(), "the queued connection was served: {}", stderr(&o));
    drop(second);
    assert!(socket.exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exit_idle_without_activation_is_refused() {
    let Some(env) = setup("exit_idle_without_activation_is_refused") else { return };
    let dir = scratch_dir("idle-refused");
    write_policy(&dir.join("policy.toml"), POLICY);
    let o = output({
        let mut c = Command::new(env.bin("bpftokend"));
        c.arg("--socket")
            .arg(dir.join("socket"))
            .arg("--policy")
            .arg(dir.join("policy.toml"))
            .args(["--exit-idle", "5"]);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "bpftokend: --exit-idle needs socket activation: the socket must outlive the daemon, or clients would find nobody listening\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn activation_with_the_wrong_fds_is_refused_with_a_reason() {
    let Some(env) = setup("activation_with_the_wrong_fds_is_refused_with_a_reason") else { return };
    let dir = scratch_dir("badactivate");
    let policy = dir.join("policy.toml");
    write_policy(&policy, POLICY);
    let run = |setup_fds: &str, count: u32| {
        let script = format!(
            "{setup_fds}; export LISTEN_PID=$$ LISTEN_FDS={count}; exec {} --socket {} --policy {}",
            env.bin("bpftokend").display(),
            dir.join("socket").display(),
            policy.display()
        );
        output({
            let mut c = Command::new("sh");
            c.args(["-c", &script]);
            c
        })
    };
    // A plain file where the listening socket should be.
    let o = run("exec 3</dev/null", 1);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("bpftokend: socket activation: socket \"unknown\" (fd 3) is not a socket ("), "{err}");
    // Two fds: the unit must listen on exactly one.
    let o = run("exec 3</dev/null 4</dev/null", 2);
    assert_eq!(
        stderr(&o),
        "bpftokend: socket activation: systemd passed 2 sockets; the unit must listen on exactly one\n"
    );
    // A connected Unix stream socket, not a listening one (Accept=yes).
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    rustix::io::fcntl_setfd(a.as_fd(), rustix::io::FdFlags::empty()).unwrap();
    let o = run(&format!("exec 3<&{}", a.as_raw_fd()), 1);
    assert_eq!(
        stderr(&o),
        "bpftokend: socket activation: socket \"unknown\" (fd 3) is not listening (Accept=yes is not supported: use Accept=no)\n"
    );
    assert!(!dir.join("socket").exists(), "no socket of its own is created on an activation error");
    let _ = std::fs::remove_dir_all(dir);
}
