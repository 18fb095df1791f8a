//! Host settings that decide whether minting is safe, or possible: each
//! test changes something system-wide (a sysctl, root's fds in flight),
//! so they run one at a time, in a test binary of their own (cargo runs
//! test binaries one after another).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "alice"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array", "hash"]
"#;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A sysctl set for the length of a test, put back when dropped.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// One warm mint (the scope is cached after the first) by alice through
/// the probe: what it printed.
fn mint_once(env: &Env, d: &TestDaemon) -> String {
    let mut c = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    c.args(["mint-loop", d.socket.to_str().unwrap(), "1"]);
    let o = output(c);
    stdout(&o) + &stderr(&o)
}

/// A cold mint: `bpftoken run` in libbpf mode gets a scope of its own.
fn run_cold(env: &Env, d: &TestDaemon) -> std::process::Output {
    d.bpftoken(env, &user(ALICE), &["run", "--cmds", "map_create", "--maps", "array", "--", "/bin/true"])
}

#[test]
fn nothing_is_minted_while_fs_suid_dumpable_would_let_clients_ptrace_what_enters_their_namespace() {
    let Some(env) = setup("nothing_is_minted_while_fs_suid_dumpable_would_let_clients_ptrace") else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // No spares: every warm mint starts a mint child.
    let d = TestDaemon::start(&env, POLICY, &["--spare-tokens", "0"]);
    assert_eq!(mint_once(&env, &d), "minted 1\n");

    let why = "fs.suid_dumpable is 1: a process the daemon starts in a client's user namespace could be ptraced by \
               that client, so nothing is minted; set fs.suid_dumpable to 0 or 2 (sysctl -w fs.suid_dumpable=2)";
    {
        let _debug = Sysctl::set("/proc/sys/fs/suid_dumpable", "1");
        // Warm: no mint child is started.
        assert_eq!(mint_once(&env, &d), format!("error refused: minting failed: {why} (mint_failed)\nminted 0\n"));
        // Cold: no helper is started.
        let o = run_cold(&env, &d);
        assert!(!o.status.success());
        assert_eq!(stderr(&o), format!("bpftoken: refused: minting failed: {why} (mint_failed)\n"));
    }
    // 2 ("suidsafe", systemd's choice) keeps the client out as 0 does.
    {
        let _suidsafe = Sysctl::set("/proc/sys/fs/suid_dumpable", "2");
        assert_eq!(mint_once(&env, &d), "minted 1\n");
        let o = run_cold(&env, &d);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(mint_once(&env, &d), "minted 1\n");
}

/// The kernel refuses an SCM_RIGHTS send from a task without
/// CAP_SYS_RESOURCE once its uid has more fds in flight than the task's
/// RLIMIT_NOFILE. A mint child has no capability outside the client's
/// namespace; as root it would be refused whenever root's fds sit unread
/// (tokens clients never read are root's fds in flight), for everybody.
/// It sends as the namespace's owner instead.
#[test]
fn root_fds_left_in_flight_do_not_stop_mints() {
    let Some(env) = setup("root_fds_left_in_flight_do_not_stop_mints") else { return };
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let d = TestDaemon::start(&env, POLICY, &["--spare-tokens", "0"]);
    assert_eq!(mint_once(&env, &d), "minted 1\n");
    // The mint children inherit the daemon's limit.
    let daemon = rustix::process::Pid::from_raw(i32::try_from(d.pid()).unwrap()).unwrap();
    let limit = rustix::process::Rlimit { current: Some(64), maximum: Some(64) };
    rustix::process::prlimit(Some(daemon), rustix::process::Resource::Nofile, limit).expect("prlimit");
    // 100 fds of root's in flight, never read.
    let (sender, _receiver) = UnixStream::pair().expect("socketpair");
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    for _ in 0..100 {
        let fds = [null.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(&sender, &[IoSlice::new(b"x")], &mut control, rustix::net::SendFlags::empty())
            .expect("send an fd");
    }
    assert_eq!(mint_once(&env, &d), "minted 1\n");
    let o = run_cold(&env, &d);
    assert!(o.status.success(), "{}", stderr(&o));
}
