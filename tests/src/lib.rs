//! Harness for the end-to-end tests: real daemon, real kernel, real
//! unprivileged users (created by `scripts/setup-test-users.sh`).
//!
//! A test that needs root or the test users calls [`setup`] first. Outside
//! CI it skips with a visible reason; with `CI=true` it fails instead.

pub mod sys;
pub mod tools;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The users the tests run as.
pub const ALICE: &str = "bpftk-alice";
pub const BOB: &str = "bpftk-bob";
pub const EVE: &str = "bpftk-eve";
/// The attacker: only attack tests run as mallory (they signal every
/// process of their uid).
pub const MALLORY: &str = "bpftk-mallory";
/// A group only bob belongs to, as a supplementary group.
pub const DEV_GROUP: &str = "bpftk-dev";

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (outside CI) or fail (in CI) for a missing prerequisite.
fn missing(test: &str, what: &str) -> Option<Env> {
    if in_ci() {
        panic!("{test}: {what}, and CI=true: privileged tests must not skip in CI");
    }
    eprintln!("SKIPPED {test}: {what}");
    None
}

/// What a privileged end-to-end test needs.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin_dir: PathBuf,
}

impl Env {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// Check root, test users and built binaries.
pub fn setup(test: &str) -> Option<Env> {
    if rustix::process::geteuid().as_raw() != 0 {
        return missing(test, "needs root (run the suite as root: see README)");
    }
    for name in [ALICE, BOB, EVE, MALLORY] {
        if uzers::get_user_by_name(name).is_none() {
            return missing(test, &format!("test user {name} does not exist (run scripts/setup-test-users.sh)"));
        }
    }
    // Test binaries live in target/<profile>/deps, the others one up.
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let dir = p.parent()?;
            Some(if dir.ends_with("deps") { dir.parent()?.to_path_buf() } else { dir.to_path_buf() })
        })
        .expect("own executable path");
    for name in ["bpftokend", "bpftoken", "bpftoken-probe"] {
        if !bin_dir.join(name).exists() {
            return missing(
                test,
                &format!("{} is not built (run cargo build --workspace first)", bin_dir.join(name).display()),
            );
        }
    }
    Some(Env { bin_dir })
}

pub fn user(name: &str) -> User {
    let u = uzers::get_user_by_name(name).unwrap_or_else(|| panic!("no user {name}"));
    User { name: name.to_owned(), uid: u.uid(), gid: u.primary_group_id() }
}

/// A command that runs as `user` with exactly that user's groups.
pub fn as_user(user: &User, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &user.name, "--regid", &user.name, "--init-groups", "--"]).arg(program);
    c.stdin(Stdio::null());
    c
}

pub fn output(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A private directory (root-owned, 0755) for one daemon.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "bpftokend-e2e-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).expect("create scratch dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod scratch dir");
    d
}

/// Write a policy with safe permissions.
pub fn write_policy(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write policy");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod policy");
}

/// A running bpftokend with its own socket, policy and log.
#[derive(Debug)]
pub struct TestDaemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub policy: PathBuf,
    pub log: PathBuf,
}

impl TestDaemon {
    /// Start a daemon with `policy` and extra arguments; wait until it
    /// answers on its socket.
    pub fn start(env: &Env, policy: &str, extra_args: &[&str]) -> TestDaemon {
        TestDaemon::start_on(env, policy, None, extra_args)
    }

    /// A daemon not started yet: its scratch directory, policy file, log
    /// and socket path (`socket`, or one in the directory).
    fn prepared(policy: &str, socket: Option<PathBuf>) -> TestDaemon {
        let dir = scratch_dir("daemon");
        let policy_path = dir.join("policy.toml");
        write_policy(&policy_path, policy);
        TestDaemon {
            child: None,
            socket: socket.unwrap_or_else(|| dir.join("socket")),
            policy: policy_path,
            log: dir.join("daemon.log"),
            dir,
        }
    }

    /// [`TestDaemon::start`] on a given socket path.
    pub fn start_on(env: &Env, policy: &str, socket: Option<PathBuf>, extra_args: &[&str]) -> TestDaemon {
        let mut d = TestDaemon::prepared(policy, socket);
        d.spawn_with(env, extra_args, &[], &[]);
        d
    }

    /// [`TestDaemon::start`] with extra environment variables.
    pub fn start_with_env(env: &Env, policy: &str, vars: &[(&str, &str)]) -> TestDaemon {
        let mut d = TestDaemon::prepared(policy, None);
        d.spawn_with(env, &[], &[], vars);
        d
    }

    /// A daemon started through `wrapper`, a program that execs the rest
    /// of its arguments (e.g. `sh -c 'umask 077 && exec "$@"' sh`).
    pub fn start_wrapped(env: &Env, policy: &str, wrapper: &[&str], extra_args: &[&str]) -> TestDaemon {
        let mut d = TestDaemon::prepared(policy, None);
        d.spawn_with(env, extra_args, wrapper, &[]);
        d
    }

    /// A daemon for benchmarks: logging as in production (`info`: the
    /// audit events, not the debug lines tests read), pinned with its
    /// minters to CPU 0 if `pinned`.
    pub fn start_for_bench(env: &Env, policy: &str, pinned: bool) -> TestDaemon {
        let mut d = TestDaemon::prepared(policy, None);
        let wrapper: &[&str] = if pinned { &["taskset", "-c", "0"] } else { &[] };
        d.spawn_with(env, &[], wrapper, &[("BPFTOKEND_LOG", "info")]);
        d
    }

    /// A daemon started with `limit` as its soft and hard fd limit
    /// (`prlimit`, util-linux).
    pub fn start_with_fd_limit(env: &Env, policy: &str, limit: u32, extra_args: &[&str]) -> TestDaemon {
        let mut d = TestDaemon::prepared(policy, None);
        let nofile = format!("--nofile={limit}:{limit}");
        d.spawn_with(env, extra_args, &["prlimit", &nofile, "--"], &[]);
        d
    }

    /// Start the daemon, through `wrapper` (a program that execs the rest
    /// of its arguments) if it is not empty.
    fn spawn_with(&mut self, env: &Env, extra_args: &[&str], wrapper: &[&str], vars: &[(&str, &str)]) {
        let log = std::fs::File::create(&self.log).expect("create log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env.bin("bpftokend"));
                c
            }
            None => Command::new(env.bin("bpftokend")),
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("--policy")
            .arg(&self.policy)
            .args(extra_args)
            .env("BPFTOKEND_LOG", "debug")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bpftokend");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("bpftokend exited with {status} before listening:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "bpftokend did not listen within 10 s:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once it contains `needle` (audit lines are written after
    /// the client got its answer, so a test may look too early).
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..200 {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("daemon log never said {needle:?}:\n{}", self.log_text());
    }

    /// Wait until the daemon's log holds `n` lines containing `needle`
    /// (a grant's audit event is written after its answer is sent, so a
    /// client may exit before its line exists).
    pub fn wait_for_log_lines(&self, needle: &str, n: usize) -> String {
        for _ in 0..200 {
            let log = self.log_text();
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("daemon log never had {n} lines saying {needle:?}:\n{}", self.log_text());
    }

    /// What the daemon's start line says about its BPF LSM enforcer:
    /// `enforcing` or `unavailable: REASON` (as `bpftoken query` and
    /// STATUS= report it).
    pub fn enforcement(&self) -> String {
        let log = self.wait_for_log("enforcement: ");
        let line = log.lines().find(|l| l.contains("enforcement: ")).unwrap_or_default();
        let state = line.split_once("enforcement: ").map_or("", |(_, s)| s);
        if state.starts_with("enforcing") {
            "enforcing".to_owned()
        } else {
            state.to_owned()
        }
    }

    /// Send SIGTERM and wait for the daemon to exit; returns its status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait daemon") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("bpftokend did not stop within 15 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `bpftoken --socket S ARGS...` as `user`.
    pub fn bpftoken(&self, env: &Env, user: &User, args: &[&str]) -> Output {
        let mut c = as_user(user, env.bin("bpftoken"));
        c.arg("--socket").arg(&self.socket).args(args);
        output(c)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Number of BPF token fds a process holds (a warm daemon keeps up to 7
/// spare tokens per scope).
pub fn token_fds(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
                .is_ok_and(|i| i.lines().any(|l| l.starts_with("allowed_cmds:")))
        })
        .count()
}

/// Number of open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Direct children of a process (all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
