//! bind-uid and bind-cgroup: tokens the policy binds (`bind`) to their
//! owner's uid or to the cgroup they are minted from; and what the scope
//! scenarios share with them: the binding policy, the cgroup2 mount,
//! holders started inside a cgroup ([`Gated`]) and root trying a token
//! taken from one of them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::harness::{
    as_user, bpftoken, release, run, start_daemon_with, take_fd, wait_deadline, Holder, Start, User, STEP_TIMEOUT,
};
use crate::report::{Outcome, Report};

/// The policy of the binding scenarios: alice's tokens are bound to her
/// uid when she mints from /bpftk-bind-uid, to the cgroup she mints from
/// below /bpftk-bind-cg, and not at all elsewhere.
pub const BIND_POLICY: &str = r#"
[[allow]]
name = "plain"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]

[[allow]]
name = "bound-uid"
users = ["bpftk-alice"]
cgroups = ["/bpftk-bind-uid"]
cmds = ["map_create"]
bind = ["uid"]

[[allow]]
name = "bound-cgroup"
users = ["bpftk-alice"]
cgroups = ["/bpftk-bind-cg"]
cmds = ["map_create"]
bind = ["cgroup"]
"#;

/// [`BIND_POLICY`] without its `cgroups` conditions, for a daemon without
/// the enforcer (which refuses rules matching on cgroups).
pub fn bind_policy_without_cgroups() -> String {
    BIND_POLICY.replace("cgroups = [\"/bpftk-bind-uid\"]\n", "").replace("cgroups = [\"/bpftk-bind-cg\"]\n", "")
}

/// Binding (policy `bind`): a uid-bound token taken by root fails for a
/// root process that has no capabilities of its own (real uid 0, alice's
/// effective uid) while an unbound sibling works for it; a cgroup-bound
/// token fails for the owner's process once it is moved into a sibling
/// cgroup. Without the enforcer a bound mint is refused (unsupported).
pub fn bind_scenarios(bins: &Path, dir: &Path, alice: &User, enforcing: bool, report: &mut Report) {
    let names = ["bind-uid", "bind-cgroup"];
    // Without the enforcer a policy matching on `cgroups` does not load.
    let policy = if enforcing { BIND_POLICY.to_owned() } else { bind_policy_without_cgroups() };
    let Start::Listening(mut daemon) = start_daemon_with(bins, dir, "-bind", &policy) else {
        for n in names {
            report.result(n, Outcome::Fail, "the daemon did not start");
        }
        return;
    };
    let socket = daemon.socket.clone();
    let results: Vec<(Outcome, String)> = if !enforcing {
        // Anywhere: both bound rules without their cgroup conditions.
        drop(daemon);
        let Start::Listening(d) = start_daemon_with(bins, dir, "-bind-unavailable", &policy) else {
            for n in names {
                report.result(n, Outcome::Fail, "the daemon did not start");
            }
            return;
        };
        daemon = d;
        let o = bpftoken(bins, &daemon.socket, alice, &["run", "--fd-only", "--", "/bin/true"]);
        let ok = o.code() == Some(1)
            && o.stderr.contains(
                "binding tokens to their owner uid (rule \"bound-uid\") and to the cgroup they are minted from \
                 (rule \"bound-cgroup\") (bind) cannot be enforced",
            )
            && o.stderr.trim_end().ends_with("(not_enforceable)");
        let outcome = if ok { Outcome::Unsupported } else { Outcome::Fail };
        names.iter().map(|_| (outcome, o.stderr.trim().to_owned())).collect()
    } else {
        match cgroup2_mount() {
            None => names.iter().map(|_| (Outcome::Fail, "no cgroup2 mount".to_owned())).collect(),
            Some(mnt) => vec![bind_uid(bins, dir, &socket, alice, &mnt), bind_cgroup(bins, dir, &socket, alice, &mnt)],
        }
    };
    for (n, (outcome, detail)) in names.iter().zip(results) {
        report.result(n, outcome, &detail);
    }
    let pid = rustix::process::Pid::from_child(&daemon.child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT);
}

fn bind_uid(bins: &Path, dir: &Path, socket: &Path, alice: &User, mnt: &Path) -> (Outcome, String) {
    let result = (|| -> Result<(bool, String), String> {
        let bound_cg = mnt.join("bpftk-bind-uid");
        std::fs::create_dir_all(&bound_cg).map_err(|e| format!("mkdir {}: {e}", bound_cg.display()))?;
        let go = dir.join("go-bind-uid");
        let bound = Gated::start(bins, socket, alice, &bound_cg, &go)?;
        let plain = Gated::start(bins, socket, alice, mnt, &go)?;
        let (bound_token, _) = bound.take_token()?;
        let (plain_token, _) = plain.take_token()?;
        let root_bound = root_try(bins, &bound_token, Some(alice.uid));
        let root_plain = root_try(bins, &plain_token, Some(alice.uid));
        // Root with its capabilities does not need a token at all: the
        // kernel ignores a token its LSM refuses and checks root's own.
        let full_root = root_try(bins, &bound_token, None);
        let leases = bpftoken(bins, socket, alice, &["leases"]);
        drop((bound_token, plain_token));
        release(&go)?;
        let (b_before, p_before) = (bound.holder.before.clone(), plain.holder.before.clone());
        let ((b_ok, b_after), (p_ok, p_after)) = (bound.holder.finish(), plain.holder.finish());
        // `cgroups` binds to the cgroup matched in too (issue #15).
        let bound_row = format!("uid {}, cgroup /bpftk-bind-uid", alice.uid);
        let ok = b_before.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()])
            && p_before.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()])
            && root_bound == "map:array EPERM"
            && root_plain == "map:array ok"
            && b_ok
            && p_ok
            && b_after == ["map:array ok"]
            && p_after == ["map:array ok"]
            && leases.stdout.lines().filter(|l| l.ends_with(&bound_row)).count() == 1;
        let detail = format!(
            "owner: {} then {}; root without capabilities (euid {}): bound token {root_bound}, unbound sibling \
             {root_plain}; root with capabilities, bound token: {full_root} (its own CAP_BPF); leases bound: {}",
            b_before.join(", "),
            b_after.join(", "),
            alice.uid,
            leases.stdout.lines().filter(|l| l.ends_with(&bound_row)).count()
        );
        Ok((ok, detail))
    })();
    match result {
        Ok((ok, detail)) => (if ok { Outcome::Pass } else { Outcome::Fail }, detail),
        Err(e) => (Outcome::Fail, e),
    }
}

fn bind_cgroup(bins: &Path, dir: &Path, socket: &Path, alice: &User, mnt: &Path) -> (Outcome, String) {
    let result = (|| -> Result<(bool, String), String> {
        let (a, b) = (mnt.join("bpftk-bind-cg/a"), mnt.join("bpftk-bind-cg/b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let go = dir.join("go-bind-cgroup");
        let moved = Gated::start(bins, socket, alice, &a, &go)?;
        let stays = Gated::start(bins, socket, alice, &a, &go)?;
        // Move the first holder (the probe bpftoken exec'd, and any
        // process of its own) into the sibling.
        let probe = moved.probe_pid().ok_or("the probe is not running")?;
        let mut pids = vec![moved.pid, probe];
        pids.dedup();
        for pid in pids {
            std::fs::write(b.join("cgroup.procs"), pid.to_string()).map_err(|e| format!("move {pid}: {e}"))?;
        }
        let leases = bpftoken(bins, socket, alice, &["leases"]);
        release(&go)?;
        let (m_before, s_before) = (moved.holder.before.clone(), stays.holder.before.clone());
        let ((m_ok, m_after), (s_ok, s_after)) = (moved.holder.finish(), stays.holder.finish());
        let bound = leases.stdout.lines().filter(|l| l.ends_with("cgroup /bpftk-bind-cg/a")).count();
        let ok = m_before.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()])
            && s_before.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()])
            && m_ok
            && s_ok
            && m_after == ["map:array EPERM"]
            && s_after == ["map:array ok"]
            && bound == 2;
        let detail = format!(
            "in /bpftk-bind-cg/a: {}; moved to /bpftk-bind-cg/b: {}; stayed: {}; leases bound to the cgroup: {bound}",
            m_before.join(", "),
            m_after.join(", "),
            s_after.join(", ")
        );
        Ok((ok, detail))
    })();
    match result {
        Ok((ok, detail)) => (if ok { Outcome::Pass } else { Outcome::Fail }, detail),
        Err(e) => (Outcome::Fail, e),
    }
}

/// Mount point of the cgroup2 file system (the VM's init mounts it at
/// /sys/fs/cgroup; hybrid hosts have it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// A `bpftoken run --fd-only -- bpftoken-probe wait-try GO map:array`
/// of `user`, started inside the cgroup directory `cgroup`: a shell of
/// the user waits on its stdin until root has moved it there, then execs
/// bpftoken (so the daemon sees the caller in that cgroup).
pub struct Gated {
    pub holder: Holder,
    /// The shell, then bpftoken.
    pub pid: u32,
}

impl Gated {
    fn start(bins: &Path, socket: &Path, user: &User, cgroup: &Path, go: &Path) -> Result<Gated, String> {
        let command = format!(
            "{} --socket {} run --fd-only -- {} wait-try {} map:array",
            bins.join("bpftoken").display(),
            socket.display(),
            bins.join("bpftoken-probe").display(),
            go.display()
        );
        Gated::start_command(user, cgroup, &command)
    }

    /// `command` (a shell command line that prints `waiting` once it holds
    /// what it needs) as `user`, exec'd from a shell root has moved into
    /// `cgroup`.
    pub fn start_command(user: &User, cgroup: &Path, command: &str) -> Result<Gated, String> {
        let script = format!("read go; exec {command}");
        let mut c = as_user(user, Path::new("/bin/sh"));
        c.args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().map_err(|e| format!("cannot start sh: {e}"))?;
        let pid = child.id();
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move {pid} into {}: {e}", cgroup.display()))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin.write_all(b"go\n").map_err(|e| format!("cannot release sh: {e}"))?;
        drop(stdin);
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut holder = Holder { child, out: BufReader::new(out), before: Vec::new() };
        loop {
            let mut line = String::new();
            match holder.out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = line.trim_end().to_owned();
                    let done = line == "waiting";
                    holder.before.push(line);
                    if done {
                        break;
                    }
                }
            }
        }
        Ok(Gated { holder, pid })
    }

    /// The pid of the probe, which holds the token: bpftoken execs it, so
    /// it is the shell's pid (or, should bpftoken ever fork, its child).
    fn probe_pid(&self) -> Option<u32> {
        let has_token = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.starts_with(b"BPF_TOKEN_FD=")))
        };
        if has_token(self.pid) {
            return Some(self.pid);
        }
        let parent = format!(" {} ", self.pid);
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid ...: the ppid follows the state.
            let after = stat.rsplit_once(')')?.1;
            (after.trim_start().get(1..)?.starts_with(&parent) && has_token(pid)).then_some(pid)
        })
    }

    /// A copy of the probe's token (pidfd_getfd), inheritable.
    fn take_token(&self) -> Result<(std::os::fd::OwnedFd, u32), String> {
        let pid = self.probe_pid().ok_or("the probe is not running")?;
        let env = std::fs::read(format!("/proc/{pid}/environ")).map_err(|e| format!("environ of {pid}: {e}"))?;
        let n: i32 = env
            .split(|b| *b == 0)
            .find_map(|v| std::str::from_utf8(v.strip_prefix(b"BPF_TOKEN_FD=")?).ok()?.parse().ok())
            .ok_or("the probe has no BPF_TOKEN_FD")?;
        Ok((take_fd(pid, n)?, pid))
    }
}

/// `bpftoken-probe [try-as-euid UID] try map:array` as root with `token`
/// as its BPF_TOKEN_FD: its one output line.
pub fn root_try(bins: &Path, token: &std::os::fd::OwnedFd, euid: Option<u32>) -> String {
    use std::os::fd::AsRawFd;
    let mut c = Command::new(bins.join("bpftoken-probe"));
    match euid {
        Some(uid) => c.args(["try-as-euid", &uid.to_string(), "map:array"]),
        None => c.args(["try", "map:array"]),
    };
    c.env("BPF_TOKEN_FD", token.as_raw_fd().to_string());
    let o = run(c);
    if o.code() == Some(0) {
        o.stdout.trim().to_owned()
    } else {
        o.describe()
    }
}
