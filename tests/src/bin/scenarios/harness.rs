//! What every scenario runs things with: the test users, commands run to
//! completion or killed after [`STEP_TIMEOUT`] (a hang is a result, never a
//! wait), daemons started with a policy and a tag of their own (policy,
//! socket, log and pin directory named after it), `bpftoken` as a user,
//! and holders: commands that keep a token until a file appears.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::restart;

pub const ALLOWED_USER: &str = "bpftk-alice";
pub const OTHER_USER: &str = "bpftk-eve";

/// Generous: under TCG emulation everything is slower.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Ran {
    status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn describe(&self) -> String {
        match self.status {
            None => format!("timed out after {} s", STEP_TIMEOUT.as_secs()),
            Some(s) => format!("{s}; stdout {:?}; stderr {:?}", self.stdout.trim(), self.stderr.trim()),
        }
    }
}

/// Run to completion, or kill after [`STEP_TIMEOUT`]: a hang is a result.
pub fn run(mut cmd: Command) -> Ran {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ran { status: Some(ExitStatus::default()), stdout: String::new(), stderr: format!("{e}") },
    };
    let status = wait_deadline(&mut child, Instant::now() + STEP_TIMEOUT);
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Ran { status, stdout, stderr }
}

pub fn wait_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub uid: u32,
    gid: u32,
}

pub fn user(name: &str) -> Result<User, String> {
    let u = uzers::get_user_by_name(name)
        .ok_or_else(|| format!("no user {name} (see tests/vm or scripts/setup-test-users.sh)"))?;
    Ok(User { uid: u.uid(), gid: u.primary_group_id() })
}

/// `program` as `user`, with no supplementary groups (std drops them when
/// root sets a uid): the same on the host and in a busybox VM.
pub fn as_user(user: &User, program: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(user.uid).gid(user.gid);
    c
}

/// The policy the scenarios run under.
pub const POLICY: &str = r#"
[[allow]]
name = "scenario-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]
"#;

pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How the daemon start went.
pub enum Start {
    Listening(Daemon),
    /// It exited by itself, with its stderr.
    Refused(String),
    Failed(String),
}

pub fn start_daemon(bins: &Path, dir: &Path) -> Start {
    start_daemon_with(bins, dir, "", POLICY)
}

/// A daemon with `policy`, its files named with `tag`.
pub fn start_daemon_with(bins: &Path, dir: &Path, tag: &str, policy_text: &str) -> Start {
    let policy = dir.join(format!("policy{tag}.toml"));
    let socket = dir.join(format!("socket{tag}"));
    let log = dir.join(format!("daemon{tag}.log"));
    if let Err(e) = std::fs::write(&policy, policy_text)
        .and_then(|()| std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)))
    {
        return Start::Failed(format!("cannot write {}: {e}", policy.display()));
    }
    let log_file = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => return Start::Failed(format!("cannot create {}: {e}", log.display())),
    };
    let spawned = Command::new(bins.join("bpftokend"))
        .arg("--socket")
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .arg("--pin-dir")
        .arg(restart::pin_dir(tag))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Start::Failed(format!("cannot start bpftokend: {e}")),
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Start::Listening(Daemon { child, socket });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return if status.code() == Some(1) {
                Start::Refused(read_log())
            } else {
                Start::Failed(format!("bpftokend exited with {status}: {}", read_log()))
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Start::Failed(format!("bpftokend neither listened nor exited within {} s", STEP_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon with `policy`, stopped (SIGTERM) when dropped.
pub struct Stopping(pub Daemon);

impl Stopping {
    pub fn start(bins: &Path, dir: &Path, tag: &str, policy: &str) -> Result<Stopping, String> {
        match start_daemon_with(bins, dir, tag, policy) {
            Start::Listening(d) => Ok(Stopping(d)),
            Start::Refused(log) | Start::Failed(log) => Err(format!("the daemon ({tag}) did not start: {log}")),
        }
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = wait_deadline(&mut self.0.child, Instant::now() + STEP_TIMEOUT);
    }
}

/// `bpftoken --socket S ARGS...` as `user`.
pub fn bpftoken(bins: &Path, socket: &Path, user: &User, args: &[&str]) -> Ran {
    let mut c = as_user(user, &bins.join("bpftoken"));
    c.arg("--socket").arg(socket).args(args);
    run(c)
}

/// `bpftoken --socket S revoke ARGS...` as root.
pub fn bpftoken_revoke(bins: &Path, socket: &Path, args: &[&str]) -> Ran {
    let mut c = Command::new(bins.join("bpftoken"));
    c.arg("--socket").arg(socket).arg("revoke").args(args);
    run(c)
}

pub fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// A command that holds a token, reports, and waits for a file before it
/// goes on (`bpftoken-probe wait-try`, `wait`, `time-map`).
pub struct Holder {
    pub child: Child,
    pub out: BufReader<ChildStdout>,
    /// What it printed up to the line it was waited for.
    pub before: Vec<String>,
}

impl Holder {
    /// Start `bpftoken --socket S ARGS...` as `user` and read its output up
    /// to a line starting with `until` (or the end).
    pub fn start(bins: &Path, socket: &Path, user: &User, args: &[&str], until: &str) -> Result<Holder, String> {
        let mut c = as_user(user, &bins.join("bpftoken"));
        c.arg("--socket").arg(socket).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| format!("cannot start bpftoken: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut h = Holder { child, out: BufReader::new(out), before: Vec::new() };
        loop {
            let mut line = String::new();
            match h.out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = line.trim_end().to_owned();
                    let done = line.starts_with(until);
                    h.before.push(line);
                    if done {
                        break;
                    }
                }
            }
        }
        Ok(h)
    }

    /// The lease id it printed (`lease N`).
    pub fn lease(&self) -> Option<&str> {
        self.before.iter().find_map(|l| l.strip_prefix("lease ")).filter(|l| *l != "-")
    }

    /// The rest of its output and whether it exited 0.
    pub fn finish(mut self) -> (bool, Vec<String>) {
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let ok = wait_deadline(&mut self.child, Instant::now() + STEP_TIMEOUT).is_some_and(|s| s.success());
        (ok, rest.lines().map(str::to_owned).collect())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Create `file`, which the holders wait for.
pub fn release(file: &Path) -> Result<(), String> {
    std::fs::write(file, b"").map_err(|e| format!("cannot create {}: {e}", file.display()))
}

/// A copy of fd `n` of process `pid` (pidfd_getfd), inheritable.
pub fn take_fd(pid: u32, n: i32) -> Result<std::os::fd::OwnedFd, String> {
    let raw = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({pid}): {e}"))?;
    let fd = rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| format!("pidfd_getfd({pid}, {n}): {e}"))?;
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    Ok(fd)
}
