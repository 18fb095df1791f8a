//! `bpftoken-scenarios`: the behaviours every kernel is measured on, in
//! one place. The host test (`tests/tests/scenarios.rs`) and the kernel
//! matrix (`tests/vm/run.sh`, inside each VM) both run this binary, so the
//! two cannot drift apart.
//!
//! ```text
//! bpftoken-scenarios [--bin-dir DIR] [--bpftool PATH --bpf-obj PATH]
//! ```
//!
//! Runs as root; DIR (default: its own) holds bpftokend, bpftoken and
//! bpftoken-probe. `--bpftool` is a token-aware bpftool (7.5, libbpf 1.5+)
//! and `--bpf-obj` the socket filter object built from
//! `tests/bpf/sockfilter.bpf.c`, for the libbpf-mode scenario.
//!
//! Prints `INFO kernel RELEASE`, then one line per capability:
//!
//! ```text
//! RESULT <capability> pass|fail|unsupported <detail>
//! ```
//!
//! `unsupported` means the kernel lacks the feature and the software said
//! so clearly (no hang, no crash); whether that is expected is for the
//! caller to decide. Exits 1 if any capability failed.
//!
//! Needs the users `bpftk-alice` (in the scenarios' policy) and
//! `bpftk-eve` (not in it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "scenarios/identity.rs"]
mod identity;
#[path = "scenarios/restart.rs"]
mod restart;
#[path = "scenarios/trace.rs"]
mod trace;

/// The policy the scenarios run under.
const POLICY: &str = r#"
[[allow]]
name = "scenario-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]
"#;
/// The policy of the live-limit scenario: at most two live tokens.
const LIVE_POLICY: &str = r#"
[[allow]]
name = "two-at-a-time"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
max_live_tokens = 2
"#;
/// The policy of the binding scenarios: alice's tokens are bound to her
/// uid when she mints from /bpftk-bind-uid, to the cgroup she mints from
/// below /bpftk-bind-cg, and not at all elsewhere.
const BIND_POLICY: &str = r#"
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
fn bind_policy_without_cgroups() -> String {
    BIND_POLICY.replace("cgroups = [\"/bpftk-bind-uid\"]\n", "").replace("cgroups = [\"/bpftk-bind-cg\"]\n", "")
}
/// The policy of the learn scenario: alice may learn under a full grant.
const LEARN_POLICY: &str = r#"
[[allow]]
name = "alice-learns"
users = ["bpftk-alice"]
cmds = ["any"]
maps = ["any"]
progs = ["any"]
attachs = ["any"]
learn = true
"#;
/// What `bpftoken learn` must print for `bpftool prog load` of the socket
/// filter object (one array map, one socket filter): the commands, map,
/// program and attach types bpftool and its libbpf used with the token,
/// nothing else. libbpf's feature probes count: one of them loads a
/// `kprobe` program with the token (measured: Debian 13's bpftool 7.5).
const LEARNED_RULE: &str = "[[allow]]
users = [\"bpftk-alice\"]
cmds = [\"map_create\", \"prog_load\", \"btf_load\"]
maps = [\"array\"]
progs = [\"socket_filter\", \"kprobe\"]
attachs = [\"cgroup_inet_ingress\"]
";
const ALLOWED_USER: &str = "bpftk-alice";
const OTHER_USER: &str = "bpftk-eve";

/// Generous: under TCG emulation everything is slower.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Unsupported,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn result(&mut self, capability: &str, outcome: Outcome, detail: &str) {
        self.failed |= outcome == Outcome::Fail;
        // One line each, whatever the detail holds.
        let detail = detail.trim().replace('\n', " | ");
        println!("RESULT {capability} {} {detail}", outcome.as_str());
    }
}

#[derive(Debug)]
struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    fn describe(&self) -> String {
        match self.status {
            None => format!("timed out after {} s", STEP_TIMEOUT.as_secs()),
            Some(s) => format!("{s}; stdout {:?}; stderr {:?}", self.stdout.trim(), self.stderr.trim()),
        }
    }
}

/// Run to completion, or kill after [`STEP_TIMEOUT`]: a hang is a result.
fn run(mut cmd: Command) -> Ran {
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

fn wait_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
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
struct User {
    uid: u32,
    gid: u32,
}

fn user(name: &str) -> Result<User, String> {
    let u = uzers::get_user_by_name(name)
        .ok_or_else(|| format!("no user {name} (see tests/vm or scripts/setup-test-users.sh)"))?;
    Ok(User { uid: u.uid(), gid: u.primary_group_id() })
}

/// `program` as `user`, with no supplementary groups (std drops them when
/// root sets a uid): the same on the host and in a busybox VM.
fn as_user(user: &User, program: &Path) -> Command {
    let mut c = Command::new(program);
    c.uid(user.uid).gid(user.gid);
    c
}

struct Daemon {
    child: Child,
    socket: PathBuf,
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
enum Start {
    Listening(Daemon),
    /// It exited by itself, with its stderr.
    Refused(String),
    Failed(String),
}

fn start_daemon(bins: &Path, dir: &Path) -> Start {
    start_daemon_with(bins, dir, "", POLICY)
}

/// A daemon with `policy`, its files named with `tag`.
fn start_daemon_with(bins: &Path, dir: &Path, tag: &str, policy_text: &str) -> Start {
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

/// `bpftoken --socket S ARGS...` as `user`.
fn bpftoken(bins: &Path, socket: &Path, user: &User, args: &[&str]) -> Ran {
    let mut c = as_user(user, &bins.join("bpftoken"));
    c.arg("--socket").arg(socket).args(args);
    run(c)
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

/// A command that holds a token, reports, and waits for a file before it
/// goes on (`bpftoken-probe wait-try`, `wait`, `time-map`).
struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
    /// What it printed up to the line it was waited for.
    before: Vec<String>,
}

impl Holder {
    /// Start `bpftoken --socket S ARGS...` as `user` and read its output up
    /// to a line starting with `until` (or the end).
    fn start(bins: &Path, socket: &Path, user: &User, args: &[&str], until: &str) -> Result<Holder, String> {
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
    fn lease(&self) -> Option<&str> {
        self.before.iter().find_map(|l| l.strip_prefix("lease ")).filter(|l| *l != "-")
    }

    /// The rest of its output and whether it exited 0.
    fn finish(mut self) -> (bool, Vec<String>) {
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

/// `bpftoken --socket S revoke ARGS...` as root.
fn bpftoken_revoke(bins: &Path, socket: &Path, args: &[&str]) -> Ran {
    let mut c = Command::new(bins.join("bpftoken"));
    c.arg("--socket").arg(socket).arg("revoke").args(args);
    run(c)
}

/// Create `file`, which the holders wait for.
fn release(file: &Path) -> Result<(), String> {
    std::fs::write(file, b"").map_err(|e| format!("cannot create {}: {e}", file.display()))
}

/// Leases: expiry, revocation by lease and by uid, and a libbpf-mode scope
/// revoked with the tokens its client created itself. Where the daemon
/// cannot enforce, each says so with its typed refusal (unsupported).
fn lease_scenarios(
    args: &Args,
    bins: &Path,
    dir: &Path,
    socket: &Path,
    enforcing: bool,
    report: &mut Report,
) -> Result<(), String> {
    let alice = user(ALLOWED_USER)?;
    let probe = bins.join("bpftoken-probe");
    let probe = probe.to_str().ok_or("non-UTF-8 binary path")?;
    if !enforcing {
        // A ttl asked for is refused, never silently dropped.
        let o = bpftoken(bins, socket, &alice, &["run", "--fd-only", "--ttl", "2", "--", "true"]);
        let ok = o.code() == Some(1) && o.stderr.trim_end().ends_with("(not_enforceable)");
        report.result("expiry", if ok { Outcome::Unsupported } else { Outcome::Fail }, o.stderr.trim());
        let o = bpftoken_revoke(bins, socket, &["--all"]);
        let ok = o.code() == Some(1) && o.stderr.trim_end().ends_with("(revocation_unavailable)");
        for capability in ["revoke-lease", "revoke-uid", "revoke-libbpf-scope"] {
            report.result(capability, if ok { Outcome::Unsupported } else { Outcome::Fail }, o.stderr.trim());
        }
        return Ok(());
    }

    // expiry: a 2 s lease works at once and is refused after 3 s.
    let script = format!("{probe} try map:array; sleep 3; {probe} try map:array");
    let o = bpftoken(bins, socket, &alice, &["run", "--fd-only", "--ttl", "2", "--", "/bin/sh", "-c", &script]);
    let ok = o.code() == Some(0) && lines(&o.stdout) == ["map:array ok", "map:array EPERM"];
    let detail = if ok { "ttl 2 s: map:array ok, after 3 s EPERM".to_owned() } else { o.describe() };
    report.result("expiry", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);

    // revoke-lease: two leases of one uid; revoking one stops it at once,
    // the other keeps working.
    let go = dir.join("go-lease");
    let go_s = go.to_str().ok_or("non-UTF-8 path")?;
    let hold = |go: &str| {
        Holder::start(bins, socket, &alice, &["run", "--fd-only", "--", probe, "wait-try", go, "map:array"], "waiting")
    };
    let (a, b) = (hold(go_s)?, hold(go_s)?);
    let revoked = a.lease().map(|id| bpftoken_revoke(bins, socket, &["--lease", id]));
    release(&go)?;
    let (a_lease, b_lease) = (a.lease().unwrap_or("?").to_owned(), b.lease().unwrap_or("?").to_owned());
    let (a_before, b_before) = (a.before.clone(), b.before.clone());
    let ((a_ok, a_after), (b_ok, b_after)) = (a.finish(), b.finish());
    // One audit event for the revocation, naming the lease.
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let events =
        log.lines().filter(|l| l.contains("decision=\"revoked\"") && l.contains(&format!(" lease={a_lease} "))).count();
    let ok = events == 1
        && a_before.contains(&"map:array ok".to_owned())
        && b_before.contains(&"map:array ok".to_owned())
        && revoked.as_ref().is_some_and(|r| {
            r.code() == Some(0) && r.stdout.starts_with(&format!("revoked lease {a_lease} (uid {}, owner)", alice.uid))
        })
        && a_ok
        && b_ok
        && a_after == ["map:array EPERM"]
        && b_after == ["map:array ok"];
    let detail = format!(
        "lease {a_lease}: {} / revoked ({events} audit event): {} / {}; sibling lease {b_lease}: {} / {}",
        a_before.join(", "),
        revoked.as_ref().map_or("-".to_owned(), |r| r.stdout.trim().to_owned() + &r.stderr),
        a_after.join(", "),
        b_before.join(", "),
        b_after.join(", ")
    );
    report.result("revoke-lease", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);

    // revoke-uid: every lease of the uid, at once.
    let go = dir.join("go-uid");
    let go_s = go.to_str().ok_or("non-UTF-8 path")?;
    let (a, b) = (hold(go_s)?, hold(go_s)?);
    let revoked = bpftoken_revoke(bins, socket, &["--uid", &alice.uid.to_string()]);
    release(&go)?;
    let (a_before, b_before) = (a.before.clone(), b.before.clone());
    let ((a_ok, a_after), (b_ok, b_after)) = (a.finish(), b.finish());
    let ok = a_before.contains(&"map:array ok".to_owned())
        && b_before.contains(&"map:array ok".to_owned())
        && revoked.code() == Some(0)
        && revoked.stdout.lines().count() == 2
        && a_ok
        && b_ok
        && a_after == ["map:array EPERM"]
        && b_after == ["map:array EPERM"];
    let detail = format!(
        "before: {} | {}; revoke --uid: {}{}; after: {} | {}",
        a_before.join(", "),
        b_before.join(", "),
        revoked.stdout.trim(),
        revoked.stderr.trim(),
        a_after.join(", "),
        b_after.join(", ")
    );
    report.result("revoke-uid", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);

    // revoke-libbpf-scope: libbpf mode; bpftool creates its own tokens
    // from the bpffs. After the lease is revoked those fail too.
    let (Some(bpftool), Some(obj)) = (&args.bpftool, &args.bpf_obj) else {
        report.result("revoke-libbpf-scope", Outcome::Fail, "no --bpftool and --bpf-obj given");
        return Ok(());
    };
    let go = dir.join("go-scope");
    let go_s = go.to_str().ok_or("non-UTF-8 path")?;
    // bpftool's prog load goes through libbpf's bpf_object, which creates
    // its own token from LIBBPF_BPF_TOKEN_PATH (`map create` would not).
    let create = |name: &str| {
        format!("{bpftool} prog load {obj} $BPFTOKEN_PIN_DIR/{name} && echo {name} ok || echo {name} failed")
    };
    let script = format!(
        "echo lease $BPFTOKEN_LEASE; {}; echo waiting; {probe} wait {go_s}; {} 2>/dev/null; {probe} try map:array",
        create("p1"),
        create("p2")
    );
    let h = Holder::start(bins, socket, &alice, &["run", "--", "/bin/sh", "-c", &script], "waiting")?;
    let lease = h.lease().unwrap_or("?").to_owned();
    let revoked = bpftoken_revoke(bins, socket, &["--lease", &lease]);
    release(&go)?;
    let before = h.before.clone();
    let (_, after) = h.finish();
    let ok = before.contains(&"p1 ok".to_owned())
        && revoked.code() == Some(0)
        && revoked.stdout.starts_with(&format!("revoked lease {lease} (uid {}, libbpf)", alice.uid))
        && after == ["p2 failed", "map:array EPERM"];
    let detail = format!(
        "lease {lease}: {} / {}{} / {}",
        before.join(", "),
        revoked.stdout.trim(),
        revoked.stderr.trim(),
        after.join(", ")
    );
    report.result("revoke-libbpf-scope", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);
    Ok(())
}

#[derive(Debug, Default)]
struct Args {
    bins: Option<PathBuf>,
    bpftool: Option<String>,
    bpf_obj: Option<String>,
}

fn scenarios(args: &Args, bins: &Path, dir: &Path, report: &mut Report) -> Result<(), String> {
    let alice = user(ALLOWED_USER)?;
    let eve = user(OTHER_USER)?;
    let probe = bins.join("bpftoken-probe");
    let probe = probe.to_str().ok_or("non-UTF-8 binary path")?;
    let bpftoken_bin = bins.join("bpftoken");
    let bpftoken_bin = bpftoken_bin.to_str().ok_or("non-UTF-8 binary path")?;

    // daemon-start: listening, or a one-line refusal that names what the
    // kernel lacks.
    let (daemon, no_daemon) = match start_daemon(bins, dir) {
        Start::Listening(d) => {
            report.result("daemon-start", Outcome::Pass, "listening");
            (Some(d), String::new())
        }
        Start::Refused(log) => {
            let line = log.trim();
            let clear = line.lines().count() == 1
                && line.contains("not supported by this kernel")
                && line.contains("needs Linux 6.9 or later");
            let outcome = if clear { Outcome::Unsupported } else { Outcome::Fail };
            report.result("daemon-start", outcome, line);
            (None, if clear { "no daemon: the kernel has no BPF tokens".to_owned() } else { String::new() })
        }
        Start::Failed(why) => {
            report.result("daemon-start", Outcome::Fail, &why);
            (None, String::new())
        }
    };

    // client-no-daemon: a client asking where nobody listens gets a clear
    // answer at once: exit 69, "cannot reach bpftokend", and on a kernel
    // without tokens (where the daemon refused above) a second line saying
    // that no daemon can run here.
    let nobody = daemon.as_ref().map_or_else(|| dir.join("socket"), |_| dir.join("nobody-listens"));
    let started = Instant::now();
    let o = bpftoken(bins, &nobody, &alice, &["run", "--", "true"]);
    let took = started.elapsed();
    let err = lines(&o.stderr);
    let kernel_line = |l: &&str| l.contains("not supported by this kernel") && l.contains("needs Linux 6.9 or later");
    let ok = o.code() == Some(69)
        && err.first().is_some_and(|l| l.contains("cannot reach bpftokend"))
        && took < Duration::from_secs(10)
        && if no_daemon.is_empty() { err.len() == 1 } else { err.len() == 2 && err.get(1).is_some_and(kernel_line) };
    report.result(
        "client-no-daemon",
        if ok { Outcome::Pass } else { Outcome::Fail },
        &format!("exit {:?} after {} ms: {}", o.code(), took.as_millis(), o.stderr.trim()),
    );

    let Some(mut daemon) = daemon else {
        let (outcome, why) = if no_daemon.is_empty() {
            (Outcome::Fail, "no daemon".to_owned())
        } else {
            (Outcome::Unsupported, no_daemon)
        };
        for capability in [
            "mint",
            "map-create",
            "prog-load",
            "refused",
            "enforcer",
            "live-limit",
            "inspect",
            "token-info",
            "libbpf-mode",
            "expiry",
            "revoke-lease",
            "revoke-uid",
            "revoke-libbpf-scope",
            "bind-uid",
            "bind-cgroup",
            "cost",
            "learn",
            "bind-exe",
            "trace-kprobe",
            "survive-restart",
        ]
        .into_iter()
        .chain(SCOPE_CAPABILITIES)
        {
            report.result(capability, outcome, &why);
        }
        return Ok(());
    };
    let socket = daemon.socket.clone();

    // mint: an ordinary user gets a token; map-create / prog-load: the
    // granted types work with it, others do not, and nothing works
    // without it (unprivileged BPF is off).
    let without = run({
        let mut c = as_user(&alice, Path::new(probe));
        c.args(["try", "--no-token", "map:array", "prog:socket_filter"]);
        c
    });
    let o = bpftoken(
        bins,
        &socket,
        &alice,
        &[
            "run",
            "--fd-only",
            "--maps",
            "array",
            "--",
            probe,
            "try",
            "map:array",
            "map:hash",
            "prog:socket_filter",
            "prog:kprobe",
        ],
    );
    let got = lines(&o.stdout);
    if o.code() == Some(0) && got.len() == 4 {
        report.result("mint", Outcome::Pass, "bpftoken run passed BPF_TOKEN_FD");
        let base = lines(&without.stdout);
        let check = |capability: &str, no_token: Option<&&str>, want: [&str; 2], got: &[&str]| {
            let pass = no_token.is_some_and(|l| l.ends_with(" EPERM")) && got == want;
            let detail = format!("without token: {}; with token: {}", no_token.unwrap_or(&"?"), got.join(", "));
            (capability.to_owned(), if pass { Outcome::Pass } else { Outcome::Fail }, detail)
        };
        for (capability, outcome, detail) in [
            check("map-create", base.first(), ["map:array ok", "map:hash EPERM"], &got[..2]),
            check("prog-load", base.get(1), ["prog:socket_filter ok", "prog:kprobe EPERM"], &got[2..]),
        ] {
            report.result(&capability, outcome, &detail);
        }
    } else {
        let why = o.describe();
        report.result("mint", Outcome::Fail, &why);
        report.result("map-create", Outcome::Fail, "no token");
        report.result("prog-load", Outcome::Fail, "no token");
    }

    // refused: a user outside the policy gets one line naming the reason.
    let o = bpftoken(bins, &socket, &eve, &["run", "--", "true"]);
    let ok = o.code() == Some(1)
        && o.stderr.lines().count() == 1
        && o.stderr.starts_with("bpftoken: refused: ")
        && o.stderr.contains("(not_in_policy)");
    report.result("refused", if ok { Outcome::Pass } else { Outcome::Fail }, o.stderr.trim());

    // enforcer: the daemon's BPF LSM enforcer runs (`bpftoken query` says
    // "enforcement: enforcing"), or it says in one line why not. Kernels
    // that refuse BPF LSM programs, or boot without `bpf` in lsm=, report
    // unsupported with that reason.
    let o = bpftoken(bins, &socket, &alice, &["query"]);
    let states: Vec<&str> = o.stdout.lines().filter_map(|l| l.strip_prefix("enforcement: ")).collect();
    let (outcome, detail) = match (o.code(), states.as_slice()) {
        (Some(0), ["enforcing"]) => (Outcome::Pass, "bpftoken query: enforcing".to_owned()),
        (Some(0), [state]) if state.starts_with("unavailable: ") => (Outcome::Unsupported, (*state).to_owned()),
        _ => (Outcome::Fail, format!("bpftoken query: {}", o.describe())),
    };
    report.result("enforcer", outcome, &detail);
    let enforcing = outcome == Outcome::Pass;

    // inspect: the token's masks as the kernel holds them; token-info:
    // whether the kernel told them through BPF_OBJ_GET_INFO_BY_FD (6.17+)
    // rather than fdinfo.
    let o = bpftoken(bins, &socket, &alice, &["run", "--fd-only", "--maps", "array", "--", bpftoken_bin, "inspect"]);
    let field = |name: &str| -> Option<Vec<String>> {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.split(',').map(|n| n.trim().to_owned()).collect())
    };
    let masks_ok = field("cmds") == Some(vec!["map_create".into(), "prog_load".into()])
        && field("maps") == Some(vec!["array".into()])
        && field("progs") == Some(vec!["socket_filter".into()])
        && field("attachs") == Some(vec!["cgroup_inet_ingress".into()]);
    let source = field("source").and_then(|s| s.first().cloned());
    if o.code() == Some(0) && masks_ok && source.is_some() {
        let source = source.unwrap_or_default();
        report.result("inspect", Outcome::Pass, &format!("masks as granted, source {source}"));
        match source.as_str() {
            "bpf_obj_get_info" => report.result("token-info", Outcome::Pass, "BPF_OBJ_GET_INFO_BY_FD on the token"),
            "fdinfo" => report.result(
                "token-info",
                Outcome::Unsupported,
                "BPF_OBJ_GET_INFO_BY_FD on tokens needs Linux 6.17; inspect fell back to fdinfo",
            ),
            other => report.result("token-info", Outcome::Fail, &format!("unknown source {other:?}")),
        }
    } else {
        let why = format!("bpftoken run -- bpftoken inspect: {}", o.describe());
        report.result("inspect", Outcome::Fail, &why);
        report.result("token-info", Outcome::Fail, "inspect failed");
    }

    // libbpf-mode: unmodified bpftool, in the token's user namespace with
    // LIBBPF_BPF_TOKEN_PATH, loads and pins a program with a map.
    match (&args.bpftool, &args.bpf_obj) {
        (Some(bpftool), Some(obj)) => {
            let script = format!(
                "{bpftool} prog load {obj} $BPFTOKEN_PIN_DIR/filter && {bpftool} prog show pinned $BPFTOKEN_PIN_DIR/filter"
            );
            let o = bpftoken(bins, &socket, &alice, &["run", "--", "/bin/sh", "-c", &script]);
            let ok = o.code() == Some(0) && o.stdout.contains(": socket_filter");
            let detail =
                if ok { "bpftool prog load + pin through LIBBPF_BPF_TOKEN_PATH".to_owned() } else { o.describe() };
            report.result("libbpf-mode", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);
        }
        _ => report.result("libbpf-mode", Outcome::Fail, "no --bpftool and --bpf-obj given"),
    }

    lease_scenarios(args, bins, dir, &socket, enforcing, report)?;
    let (outcome, detail) = learn(args, bins, dir, &alice);
    report.result("learn", outcome, &detail);
    bind_scenarios(bins, dir, &alice, enforcing, report);
    identity::bind_exe(bins, dir, &alice, enforcing, report);
    trace::kprobe(bins, dir, &alice, args.bpftool.as_deref().map(Path::new), report);
    scope_scenarios(args, bins, dir, &socket, &alice, enforcing, report);

    // cost: the median of a token-using bpf() call (an array map created
    // and closed) with the enforcer attached and, the same token, after
    // the daemon (and with it the enforcer) has stopped; and of a warm
    // mint. Only where the enforcer runs: elsewhere there is nothing to
    // compare.
    let timed = if enforcing {
        let mint = run({
            let mut c = as_user(&alice, Path::new(probe));
            c.arg("time-mint").arg(&socket).arg("200");
            c
        });
        let go = dir.join("go-cost");
        let go_s = go.to_str().ok_or("non-UTF-8 path")?;
        let h = Holder::start(
            bins,
            &socket,
            &alice,
            &["run", "--fd-only", "--maps", "array", "--", probe, "time-map", "2000", go_s],
            "median_ns",
        );
        Some((mint, h, go))
    } else {
        report.result("cost", Outcome::Unsupported, "needs the enforcer to compare with and without it");
        None
    };

    let pid = rustix::process::Pid::from_child(&daemon.child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    if wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT).is_none() {
        report.result("daemon-stop", Outcome::Fail, "bpftokend did not stop on SIGTERM");
    }
    // Its holder's lease keeps the enforcer pinned: removing the pins
    // detaches it, for the measurement without it.
    restart::remove_pins(&restart::pin_dir(""));
    if let Some((mint, h, go)) = timed {
        let h = h?;
        // Let the daemon's exit settle before measuring again.
        std::thread::sleep(Duration::from_secs(1));
        release(&go)?;
        let with = h.before.first().and_then(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        let (_, after) = h.finish();
        let without = after.first().and_then(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        let warm = mint.stdout.lines().find_map(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        match (with, without, warm) {
            (Some(with), Some(without), Some(warm)) => report.result(
                "cost",
                Outcome::Pass,
                &format!(
                    "BPF_MAP_CREATE(array)+close with a token, median of 2000: {with} ns with the enforcer, \
                     {without} ns without; warm mint, median of 200: {warm} ns"
                ),
            ),
            (with, without, warm) => report.result(
                "cost",
                Outcome::Fail,
                &format!("with {with:?}, without {without:?}, mint {warm:?}: {}", mint.describe()),
            ),
        }
    }

    // live-limit: with the enforcer counting, a user holding as many live
    // tokens as `max_live_tokens` is refused until one is closed.
    let (outcome, detail) = live_limit(bins, dir, &alice);
    report.result("live-limit", outcome, &detail);
    restart::survive_restart(bins, dir, report);
    Ok(())
}

/// Mount point of the cgroup2 file system (the VM's init mounts it at
/// /sys/fs/cgroup; hybrid hosts have it at /sys/fs/cgroup/unified).
fn cgroup2_mount() -> Option<PathBuf> {
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
struct Gated {
    holder: Holder,
    /// The shell, then bpftoken.
    pid: u32,
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
    fn start_command(user: &User, cgroup: &Path, command: &str) -> Result<Gated, String> {
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
        let raw = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        let fd = rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
            .map_err(|e| format!("pidfd_getfd({pid}, {n}): {e}"))?;
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
        Ok((fd, pid))
    }
}

/// `bpftoken-probe [try-as-euid UID] try map:array` as root with `token`
/// as its BPF_TOKEN_FD: its one output line.
fn root_try(bins: &Path, token: &std::os::fd::OwnedFd, euid: Option<u32>) -> String {
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

/// Binding (policy `bind`): a uid-bound token taken by root fails for a
/// root process that has no capabilities of its own (real uid 0, alice's
/// effective uid) while an unbound sibling works for it; a cgroup-bound
/// token fails for the owner's process once it is moved into a sibling
/// cgroup. Without the enforcer a bound mint is refused (unsupported).
fn bind_scenarios(bins: &Path, dir: &Path, alice: &User, enforcing: bool, report: &mut Report) {
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

fn live_limit(bins: &Path, dir: &Path, alice: &User) -> (Outcome, String) {
    let Start::Listening(mut daemon) = start_daemon_with(bins, dir, "-live", LIVE_POLICY) else {
        return (Outcome::Fail, "the daemon did not start".to_owned());
    };
    let socket = daemon.socket.clone();
    let result = (|| {
        let o = bpftoken(bins, &socket, alice, &["query"]);
        let state = o.stdout.lines().find_map(|l| l.strip_prefix("enforcement: ")).unwrap_or("?").to_owned();
        if state != "enforcing" {
            return if state.starts_with("unavailable: ") {
                (Outcome::Unsupported, format!("tokens cannot be counted: {state}"))
            } else {
                (Outcome::Fail, format!("bpftoken query: {}", o.describe()))
            };
        }
        // Two holders keep a token each (the shell inherits BPF_TOKEN_FD).
        let hold = || {
            let mut c = as_user(alice, &bins.join("bpftoken"));
            c.arg("--socket").arg(&socket).args(["run", "--fd-only", "--", "/bin/sh", "-c", "echo held; sleep 30"]);
            c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()
        };
        let mut holders = Vec::new();
        for _ in 0..2 {
            let Ok(mut child) = hold() else { return (Outcome::Fail, "cannot start a holder".to_owned()) };
            let mut held = [0u8; 5];
            let ok = child.stdout.as_mut().is_some_and(|out| out.read_exact(&mut held).is_ok());
            holders.push(child);
            if !ok {
                return (Outcome::Fail, "a holder got no token".to_owned());
            }
        }
        let third = bpftoken(bins, &socket, alice, &["run", "--fd-only", "--", "/bin/true"]);
        let refused = third.code() == Some(1)
            && third.stderr.contains("holds 2 live tokens, and rule \"two-at-a-time\" allows at most 2 at once")
            && third.stderr.trim_end().ends_with("(too_many_tokens)");
        // Closing one (its holder exits) makes room again; the kernel frees
        // a token shortly after its last fd closes.
        let mut first = holders.remove(0);
        let _ = first.kill();
        let _ = first.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut again = bpftoken(bins, &socket, alice, &["run", "--fd-only", "--", "/bin/true"]);
        while again.code() != Some(0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            again = bpftoken(bins, &socket, alice, &["run", "--fd-only", "--", "/bin/true"]);
        }
        for mut h in holders {
            let _ = h.kill();
            let _ = h.wait();
        }
        if refused && again.code() == Some(0) {
            (
                Outcome::Pass,
                "third token refused (too_many_tokens) while two live; minted again after one closed".into(),
            )
        } else {
            (Outcome::Fail, format!("third: {}; after closing one: {}", third.describe(), again.describe()))
        }
    })();
    let pid = rustix::process::Pid::from_child(&daemon.child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT);
    result
}

fn main() -> ExitCode {
    const USAGE: &str = "usage: bpftoken-scenarios [--bin-dir DIR] [--bpftool PATH --bpf-obj PATH]";
    let mut args = Args::default();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--bin-dir", Some(v)) => args.bins = Some(PathBuf::from(v)),
            ("--bpftool", Some(v)) => args.bpftool = Some(v),
            ("--bpf-obj", Some(v)) => args.bpf_obj = Some(v),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let bins =
        args.bins.clone().or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)));
    let Some(bins) = bins else {
        eprintln!("bpftoken-scenarios: cannot find its own directory; pass --bin-dir");
        return ExitCode::from(2);
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("INFO kernel {}", release.trim());
    let dir = std::env::temp_dir().join(format!("bpftoken-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) =
        std::fs::create_dir(&dir).and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
    {
        eprintln!("bpftoken-scenarios: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut report = Report::default();
    let result = scenarios(&args, &bins, &dir, &mut report);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        eprintln!("bpftoken-scenarios: {e}");
        return ExitCode::FAILURE;
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// learn: `bpftoken learn` of `bpftool prog load` prints exactly
/// [`LEARNED_RULE`]; a daemon whose whole policy is that rule lets the same
/// load succeed, and refuses a map type (hash) and program types
/// (tracepoint, xdp) it did not use.
/// Without the enforcer, learning is refused `learning_unavailable`.
fn learn(args: &Args, bins: &Path, dir: &Path, alice: &User) -> (Outcome, String) {
    let Start::Listening(mut daemon) = start_daemon_with(bins, dir, "-learn", LEARN_POLICY) else {
        return (Outcome::Fail, "the learning daemon did not start".to_owned());
    };
    let socket = daemon.socket.clone();
    let stop = |daemon: &mut Daemon| {
        let pid = rustix::process::Pid::from_child(&daemon.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT);
    };
    let (Some(bpftool), Some(obj)) = (&args.bpftool, &args.bpf_obj) else {
        // Without bpftool only the refusal can be checked.
        let o = bpftoken(bins, &socket, alice, &["learn", "--", "/bin/true"]);
        stop(&mut daemon);
        return if o.code() == Some(1) && o.stderr.trim_end().ends_with("(learning_unavailable)") {
            (Outcome::Unsupported, o.stderr.trim().to_owned())
        } else {
            (Outcome::Fail, format!("no --bpftool and --bpf-obj given; bpftoken learn: {}", o.describe()))
        };
    };
    let load = format!("{bpftool} prog load {obj} $BPFTOKEN_PIN_DIR/p");
    let learned = bpftoken(bins, &socket, alice, &["learn", "--", "/bin/sh", "-c", &load]);
    stop(&mut daemon);
    if learned.code() == Some(1) && learned.stderr.trim_end().ends_with("(learning_unavailable)") {
        return (Outcome::Unsupported, learned.stderr.trim().to_owned());
    }
    if learned.code() != Some(0) || learned.stdout != LEARNED_RULE {
        return (Outcome::Fail, format!("bpftoken learn: {}", learned.describe()));
    }
    // The same load under exactly the learned rule, and nothing more.
    let Start::Listening(mut daemon) = start_daemon_with(bins, dir, "-learned", &learned.stdout) else {
        return (Outcome::Fail, "a daemon with the learned rule as its policy did not start".to_owned());
    };
    let socket = daemon.socket.clone();
    let again = bpftoken(bins, &socket, alice, &["run", "--", "/bin/sh", "-c", &load]);
    let probe = bins.join("bpftoken-probe");
    let probe = probe.to_str().unwrap_or_default();
    let more = bpftoken(
        bins,
        &socket,
        alice,
        &[
            "run",
            "--fd-only",
            "--",
            probe,
            "try",
            "map:array",
            "map:hash",
            "prog:socket_filter",
            "prog:tracepoint",
            "prog:xdp",
        ],
    );
    stop(&mut daemon);
    let want = ["map:array ok", "map:hash EPERM", "prog:socket_filter ok", "prog:tracepoint EPERM", "prog:xdp EPERM"];
    if again.code() != Some(0) {
        return (Outcome::Fail, format!("bpftool under the learned rule: {}", again.describe()));
    }
    if more.code() != Some(0) || lines(&more.stdout) != want {
        return (Outcome::Fail, format!("under the learned rule: {}", more.describe()));
    }
    (
        Outcome::Pass,
        "learned the exact rule for bpftool prog load; under it alone the load succeeds; hash, tracepoint, xdp EPERM"
            .to_owned(),
    )
}

/// The capabilities of [`scope_scenarios`].
const SCOPE_CAPABILITIES: [&str; 5] =
    ["revoke-unshare-scope", "bind-libbpf", "bind-unshare", "learned-refusals", "learn-fds"];

/// Scopes whose tokens the client creates itself (libbpf mode and
/// `bpftoken unshare`'s delegated mounts): revocation and binding reach
/// every token of the scope, fresh ones included; and the refusals of the
/// `Learned` request, and the fds CMD of `bpftoken learn` sees. Where the
/// daemon cannot enforce, each says so with its typed refusal.
fn scope_scenarios(
    args: &Args,
    bins: &Path,
    dir: &Path,
    socket: &Path,
    alice: &User,
    enforcing: bool,
    report: &mut Report,
) {
    let (outcome, detail) = revoke_unshare_scope(args, bins, dir, socket, alice, enforcing);
    report.result("revoke-unshare-scope", outcome, &detail);
    for (name, unshare) in [("bind-libbpf", false), ("bind-unshare", true)] {
        let (outcome, detail) = bind_scope(bins, dir, alice, enforcing, unshare);
        report.result(name, outcome, &detail);
    }
    let (outcome, detail) = learned_refusals(bins, dir, alice, enforcing);
    report.result("learned-refusals", outcome, &detail);
    let (outcome, detail) = learn_fds(bins, dir, alice, enforcing);
    report.result("learn-fds", outcome, &detail);
}

/// A daemon with `policy`, stopped (SIGTERM) when dropped.
struct Stopping(Daemon);

impl Stopping {
    fn start(bins: &Path, dir: &Path, tag: &str, policy: &str) -> Result<Stopping, String> {
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

fn judged(result: Result<(Outcome, String), String>) -> (Outcome, String) {
    result.unwrap_or_else(|e| (Outcome::Fail, e))
}

/// A copy of fd `n` of process `pid` (pidfd_getfd), inheritable.
fn take_fd(pid: u32, n: i32) -> Result<std::os::fd::OwnedFd, String> {
    let raw = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({pid}): {e}"))?;
    let fd = rustix::process::pidfd_getfd(&pidfd, n, rustix::process::PidfdGetfdFlags::empty())
        .map_err(|e| format!("pidfd_getfd({pid}, {n}): {e}"))?;
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    Ok(fd)
}

/// The token fd number `bpftoken-probe bpffs-wait-try` printed.
fn token_number(before: &[String]) -> Result<i32, String> {
    before
        .iter()
        .find_map(|l| l.strip_prefix("token ")?.parse().ok())
        .ok_or_else(|| format!("the probe printed no token: {}", before.join(", ")))
}

/// The bpftoken arguments of a scope grant whose CMD is
/// `bpftoken-probe bpffs-wait-try DIR GO map:array`: libbpf mode (`run`,
/// the bpffs in BPFTOKEN_PIN_DIR) or a delegated mount (`unshare`, the
/// bpffs at /sys/fs/bpf).
fn scope_args(bins: &Path, go: &Path, unshare: bool) -> Vec<String> {
    let (mode, dir) = if unshare { ("unshare", "/sys/fs/bpf") } else { ("run", "-") };
    let probe = bins.join("bpftoken-probe").display().to_string();
    [mode, "--", &probe, "bpffs-wait-try", dir, &go.display().to_string(), "map:array"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect()
}

/// revoke-unshare-scope: `bpftoken unshare`; bpftool and the probe create
/// their own tokens from the delegated bpffs at /sys/fs/bpf. After the
/// owner's `bpftoken revoke ID` the token held fails, and so do tokens
/// created afresh from the same mount (the probe's and bpftool's).
fn revoke_unshare_scope(
    args: &Args,
    bins: &Path,
    dir: &Path,
    socket: &Path,
    alice: &User,
    enforcing: bool,
) -> (Outcome, String) {
    judged((|| {
        let (Some(bpftool), Some(obj)) = (&args.bpftool, &args.bpf_obj) else {
            return Err("no --bpftool and --bpf-obj given".to_owned());
        };
        let go = dir.join("go-unshare-scope");
        let probe = bins.join("bpftoken-probe");
        let load = |name: &str| {
            format!("{bpftool} prog load {obj} /sys/fs/bpf/{name} 2>/dev/null && echo {name} ok || echo {name} failed")
        };
        let script = format!(
            "{}; {} bpffs-wait-try /sys/fs/bpf {} map:array; {}",
            load("p1"),
            probe.display(),
            go.display(),
            load("p2")
        );
        let h = Holder::start(bins, socket, alice, &["unshare", "--", "/bin/sh", "-c", &script], "waiting")?;
        let lease = h.lease().unwrap_or("?").to_owned();
        let revoked = bpftoken(bins, socket, alice, &["revoke", &lease]);
        release(&go)?;
        let before = h.before.clone();
        let (exited, after) = h.finish();
        let detail = format!(
            "lease {lease}: {} / bpftoken revoke: {}{} / {}",
            before.join(", "),
            revoked.stdout.trim(),
            revoked.stderr.trim(),
            after.join(", ")
        );
        let held = before.contains(&"p1 ok".to_owned()) && before.ends_with(&["map:array ok".into(), "waiting".into()]);
        if !enforcing {
            // Nothing revoked: everything keeps working, and the owner is
            // told so.
            let ok = held
                && revoked.code() == Some(1)
                && revoked.stderr.trim_end().ends_with("(revocation_unavailable)")
                && after == ["map:array ok", "fresh map:array ok", "p2 ok"];
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, detail));
        }
        let ok = held
            && exited
            && revoked.code() == Some(0)
            && revoked.stdout
                == format!("revoked lease {lease} (uid {}, delegated_mount): its tokens no longer work\n", alice.uid)
            && after == ["map:array EPERM", "fresh map:array EPERM", "p2 failed"];
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}

/// bind-libbpf / bind-unshare: a daemon with [`BIND_POLICY`]. In libbpf
/// mode (`unshare` false) or on a delegated mount, alice's probe creates
/// a token from the scope's bpffs. From /bpftk-bind-uid the grant is
/// bound to her uid: root without capabilities of its own (real uid 0, her
/// effective uid) gets `EPERM` with that token while an unbound sibling's
/// works for it. From /bpftk-bind-cg/scope-a the grant is bound to that
/// cgroup: her probe moved to a sibling gets `EPERM` with its token and
/// with a fresh one from the same bpffs, one that stayed keeps working.
fn bind_scope(bins: &Path, dir: &Path, alice: &User, enforcing: bool, unshare: bool) -> (Outcome, String) {
    let mode = if unshare { "unshare" } else { "libbpf" };
    judged((|| {
        if !enforcing {
            let policy = bind_policy_without_cgroups();
            let d = Stopping::start(bins, dir, &format!("-bind-{mode}-unavailable"), &policy)?;
            let o = bpftoken(bins, &d.0.socket, alice, &[if unshare { "unshare" } else { "run" }, "--", "/bin/true"]);
            let ok = o.code() == Some(1)
                && o.stderr.contains(
                    "binding tokens to their owner uid (rule \"bound-uid\") and to the cgroup they are minted from \
                     (rule \"bound-cgroup\") (bind) cannot be enforced",
                )
                && o.stderr.trim_end().ends_with("(not_enforceable)");
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, o.stderr.trim().to_owned()));
        }
        let mnt = cgroup2_mount().ok_or("no cgroup2 mount")?;
        let d = Stopping::start(bins, dir, &format!("-bind-{mode}"), BIND_POLICY)?;
        let socket = d.0.socket.clone();
        let uid_cg = mnt.join("bpftk-bind-uid");
        let (a, b) = (mnt.join("bpftk-bind-cg/scope-a"), mnt.join("bpftk-bind-cg/scope-b"));
        for c in [&uid_cg, &a, &b] {
            std::fs::create_dir_all(c).map_err(|e| format!("mkdir {}: {e}", c.display()))?;
        }
        let go = dir.join(format!("go-bind-{mode}"));
        let command = format!(
            "{} --socket {} {}",
            bins.join("bpftoken").display(),
            socket.display(),
            scope_args(bins, &go, unshare).join(" ")
        );
        let bound = Gated::start_command(alice, &uid_cg, &command)?;
        let plain = Gated::start_command(alice, &mnt, &command)?;
        let moved = Gated::start_command(alice, &a, &command)?;
        let stays = Gated::start_command(alice, &a, &command)?;
        let bound_token = take_fd(bound.pid, token_number(&bound.holder.before)?)?;
        let plain_token = take_fd(plain.pid, token_number(&plain.holder.before)?)?;
        let root_bound = root_try(bins, &bound_token, Some(alice.uid));
        let root_plain = root_try(bins, &plain_token, Some(alice.uid));
        drop((bound_token, plain_token));
        // bpftoken exec'd the probe (after entering the namespaces).
        std::fs::write(b.join("cgroup.procs"), moved.pid.to_string())
            .map_err(|e| format!("move {}: {e}", moved.pid))?;
        let leases = bpftoken(bins, &socket, alice, &["leases"]);
        release(&go)?;
        let befores: Vec<Vec<String>> =
            [&bound, &plain, &moved, &stays].iter().map(|g| g.holder.before.clone()).collect();
        let afters: Vec<(bool, Vec<String>)> = [bound, plain, moved, stays].map(|g| g.holder.finish()).into();
        let lease_mode = if unshare { "delegated_mount" } else { "libbpf" };
        let rows = |end: &str| {
            // A rule matching on `cgroups` also binds to the cgroup (issue
            // #15), so a uid-bound lease may list one after the uid.
            leases.stdout.lines().filter(|l| l.contains(&format!(" {lease_mode} ")) && l.contains(end)).count()
        };
        let (uid_rows, cg_rows) = (rows(&format!("uid {}", alice.uid)), rows("cgroup /bpftk-bind-cg/scope-a"));
        let works = ["map:array ok", "fresh map:array ok"];
        let refused = ["map:array EPERM", "fresh map:array EPERM"];
        let ok = befores.iter().all(|b| b.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()]))
            && afters.iter().all(|(exited, _)| *exited)
            && root_bound == "map:array EPERM"
            && root_plain == "map:array ok"
            && afters[0].1 == works
            && afters[1].1 == works
            && afters[2].1 == refused
            && afters[3].1 == works
            && uid_rows == 1
            && cg_rows == 2;
        let detail = format!(
            "uid-bound: {} then {}; root without capabilities (euid {}): bound {root_bound}, unbound sibling \
             {root_plain}; cgroup-bound, moved to scope-b: {}; stayed: {}; {lease_mode} leases bound to the uid: \
             {uid_rows}, to the cgroup: {cg_rows}",
            befores[0].join(", "),
            afters[0].1.join(", "),
            alice.uid,
            afters[2].1.join(", "),
            afters[3].1.join(", ")
        );
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}

/// `bpftoken-probe learned SOCKET ID` as `user`: the answer, one line.
fn learned_as(bins: &Path, socket: &Path, user: &User, id: &str) -> String {
    let mut c = as_user(user, &bins.join("bpftoken-probe"));
    c.arg("learned").arg(socket).arg(id);
    let o = run(c);
    if o.code() == Some(0) {
        o.stdout.trim().to_owned()
    } else {
        o.describe()
    }
}

/// learned-refusals: every refusal of a `Learned` request (what `bpftoken
/// learn` sends when CMD has exited), with its exact text: another user's
/// learning lease, a lease that is not a learning lease, one that never
/// existed, and a learning lease that has already ended. Without the
/// enforcer every `Learned` is refused `learning_unavailable`.
fn learned_refusals(bins: &Path, dir: &Path, alice: &User, enforcing: bool) -> (Outcome, String) {
    judged((|| {
        let eve = user(OTHER_USER)?;
        let d = Stopping::start(bins, dir, "-learned", LEARN_POLICY)?;
        let socket = d.0.socket.clone();
        if !enforcing {
            let got = learned_as(bins, &socket, alice, "1");
            let ok = got.starts_with("refused: learning needs the enforcer: enforcement is unavailable: ")
                && got.ends_with(" (learning_unavailable)");
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, got));
        }
        let go = dir.join("go-learned");
        let probe = bins.join("bpftoken-probe");
        let probe = probe.to_str().ok_or("non-UTF-8 binary path")?;
        let wait = format!("echo lease $BPFTOKEN_LEASE; echo waiting; exec {probe} wait {}", go.display());
        let learning = Holder::start(bins, &socket, alice, &["learn", "--", "/bin/sh", "-c", &wait], "waiting")?;
        let plain = Holder::start(
            bins,
            &socket,
            alice,
            &["run", "--fd-only", "--", probe, "wait-try", go.to_str().ok_or("non-UTF-8 path")?, "map:array"],
            "waiting",
        )?;
        let (n, m) = (learning.lease().unwrap_or("?").to_owned(), plain.lease().unwrap_or("?").to_owned());
        let others = learned_as(bins, &socket, &eve, &n);
        let not_learning = learned_as(bins, &socket, alice, &m);
        let never = learned_as(bins, &socket, alice, "99999");
        release(&go)?;
        let (learn_ok, rule) = learning.finish();
        let _ = plain.finish();
        let ended = learned_as(bins, &socket, alice, &n);
        let unknown = |id: &str| {
            format!(
                "refused: no learning lease {id}: it never existed, has ended, or is not a learning lease \
                 (unknown_lease)"
            )
        };
        let ok = others
            == format!(
                "refused: learning lease {n} belongs to uid {}, not to you (uid {}); only root may end it \
                 (not_your_lease)",
                alice.uid, eve.uid
            )
            && not_learning == unknown(&m)
            && never == unknown("99999")
            && learn_ok
            && rule.first().map(String::as_str) == Some("[[allow]]")
            && ended == unknown(&n);
        let detail = format!(
            "another uid: {others} / not a learning lease: {not_learning} / never existed: {never} / after \
             bpftoken learn ended it: {ended}"
        );
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}

/// learn-fds: CMD of `bpftoken learn` holds exactly what CMD of `bpftoken
/// run` (libbpf mode) holds: the standard streams, the token and the
/// bpffs root; no user-namespace fd.
fn learn_fds(bins: &Path, dir: &Path, alice: &User, enforcing: bool) -> (Outcome, String) {
    judged((|| {
        let d = Stopping::start(bins, dir, "-learn-fds", LEARN_POLICY)?;
        let socket = d.0.socket.clone();
        let probe = bins.join("bpftoken-probe");
        let probe = probe.to_str().ok_or("non-UTF-8 binary path")?;
        let learned = bpftoken(bins, &socket, alice, &["learn", "--", probe, "fds"]);
        if !enforcing {
            let ok = learned.code() == Some(1) && learned.stderr.trim_end().ends_with("(learning_unavailable)");
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, learned.stderr.trim().to_owned()));
        }
        let ran = bpftoken(bins, &socket, alice, &["run", "--", probe, "fds"]);
        let kinds = |o: &Ran| {
            let mut k: Vec<String> = o
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix("fd ")?.split_once(' ').map(|(_, kind)| kind.to_owned()))
                .collect();
            k.sort();
            k
        };
        let want = ["bpffs", "other", "other", "other", "token"];
        let ok = learned.code() == Some(0) && ran.code() == Some(0) && kinds(&learned) == want && kinds(&ran) == want;
        let detail = format!(
            "bpftoken learn's CMD: {}; bpftoken run's CMD: {}",
            kinds(&learned).join(" "),
            kinds(&ran).join(" ")
        );
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}
