//! survive-restart: leases stay enforced while no daemon runs, and the
//! next daemon carries them on (issue #9).
//!
//! A daemon pins its enforcer in a directory of its own; `bpftk-alice`
//! holds three leases: R (revoked before the crash), K (kept) and T (a
//! short ttl). The daemon is SIGKILLed: R's token is still refused, K's
//! works, and T expires while no daemon runs. A second daemon on the same
//! pin directory adopts the enforcer: `bpftoken leases` lists K as active,
//! `bpftoken revoke --lease K` (as root) stops its token at once, and a new
//! lease gets a higher id than any before. Once the tokens are closed, a
//! clean stop leaves no pins. A control run where the enforcer cannot be
//! pinned (`--pin-dir` on tmpfs) shows the old behaviour this catches:
//! after the SIGKILL the revoked token works again, and `bpftoken query`
//! said so.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    bpftoken, bpftoken_revoke, release, user, wait_deadline, Daemon, Holder, User, ALLOWED_USER, POLICY, STEP_TIMEOUT,
};
use crate::report::{Outcome, Report};

/// The pin directory of the scenario daemon tagged `tag`: each daemon has
/// its own, so what one leaves behind is never adopted by another.
pub fn pin_dir(tag: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/bpftoken-scenarios-{}{tag}", std::process::id()))
}

/// Remove a pin directory (what an administrator does to end enforcement
/// that outlived its daemon); nothing if there is none.
pub fn remove_pins(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// The short lease's ttl.
const TTL: Duration = Duration::from_secs(4);

/// A daemon with extra arguments; `Err` with its log if it does not listen.
fn spawn(bins: &Path, dir: &Path, tag: &str, pins: &Path) -> Result<Daemon, String> {
    let policy = dir.join(format!("policy{tag}.toml"));
    let socket = dir.join(format!("socket{tag}"));
    let log = dir.join(format!("daemon{tag}.log"));
    std::fs::write(&policy, POLICY)
        .and_then(|()| std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| format!("cannot write {}: {e}", policy.display()))?;
    let log_file = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut child = Command::new(bins.join("bpftokend"))
        .arg("--socket")
        .arg(&socket)
        .arg("--policy")
        .arg(&policy)
        .arg("--pin-dir")
        .arg(pins)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start bpftokend: {e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Daemon { child, socket });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("bpftokend{tag} exited with {status}: {}", read(&log)));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bpftokend{tag} did not listen within {} s", STEP_TIMEOUT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn signal(daemon: &mut Daemon, sig: rustix::process::Signal) -> bool {
    let pid = rustix::process::Pid::from_child(&daemon.child);
    let _ = rustix::process::kill_process(pid, sig);
    wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT).is_some()
}

/// What `bpftoken query` says after `enforcement: `.
fn enforcement(bins: &Path, socket: &Path, alice: &User) -> String {
    let o = bpftoken(bins, socket, alice, &["query"]);
    o.stdout.lines().find_map(|l| l.strip_prefix("enforcement: ")).unwrap_or("?").to_owned()
}

/// A holder of one lease whose shell tries `map:array` now and after each
/// of `gates` appears, printing `waiting` before each wait.
fn hold(bins: &Path, socket: &Path, alice: &User, ttl: Option<&str>, gates: &[&Path]) -> Result<Holder, String> {
    let probe = bins.join("bpftoken-probe");
    let probe = probe.display();
    let mut script = format!("echo lease $BPFTOKEN_LEASE; {probe} try map:array");
    for gate in gates {
        script.push_str(&format!("; echo waiting; {probe} wait {}; {probe} try map:array", gate.display()));
    }
    let mut args = vec!["run", "--fd-only"];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    args.extend(["--", "/bin/sh", "-c", &script]);
    Holder::start(bins, socket, alice, &args, "waiting")
}

/// Open the next gate of `holders` and read each one's next answer.
fn step(holders: &mut [&mut Holder], gate: &Path) -> Result<Vec<String>, String> {
    release(gate)?;
    let mut got = Vec::new();
    for h in holders.iter_mut() {
        let mut answer = String::from("?");
        loop {
            let mut line = String::new();
            match h.out.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = line.trim_end();
                    if line == "waiting" {
                        break;
                    }
                    answer = line.to_owned();
                }
            }
        }
        got.push(answer);
    }
    Ok(got)
}

/// The pin sets (`enforcer-*`) under `pins`.
fn pin_sets(pins: &Path) -> Vec<String> {
    std::fs::read_dir(pins)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub fn survive_restart(bins: &Path, dir: &Path, report: &mut Report) {
    let (outcome, detail) = match run(bins, dir) {
        Ok(r) => r,
        Err(e) => (Outcome::Fail, e),
    };
    report.result("survive-restart", outcome, &detail);
}

fn run(bins: &Path, dir: &Path) -> Result<(Outcome, String), String> {
    let alice = user(ALLOWED_USER)?;
    let pins = pin_dir("-restart");
    let mut first = spawn(bins, dir, "-restart", &pins)?;
    let state = enforcement(bins, &first.socket, &alice);
    if state != "enforcing" {
        signal(&mut first, rustix::process::Signal::TERM);
        return Ok(if state.starts_with("unavailable: ") {
            (Outcome::Unsupported, format!("no enforcer: {state}"))
        } else {
            (Outcome::Fail, format!("bpftoken query: enforcement: {state}"))
        });
    }
    let gates: Vec<PathBuf> = (1..=3).map(|i| dir.join(format!("go-restart-{i}"))).collect();
    let gate_refs: Vec<&Path> = gates.iter().map(PathBuf::as_path).collect();
    let socket = first.socket.clone();
    let ttl = TTL.as_secs().to_string();
    let minted = Instant::now();
    let mut t = hold(bins, &socket, &alice, Some(&ttl), &gate_refs)?;
    let mut r = hold(bins, &socket, &alice, None, &gate_refs)?;
    let mut k = hold(bins, &socket, &alice, None, &gate_refs)?;
    let id = |h: &Holder| h.lease().unwrap_or("?").to_owned();
    let (r_id, k_id, t_id) = (id(&r), id(&k), id(&t));
    let first_try = |h: &Holder| h.before.iter().find(|l| l.starts_with("map:array")).cloned().unwrap_or_default();
    let before: Vec<String> = [&r, &k, &t].iter().map(|h| first_try(h)).collect();
    let revoked = bpftoken_revoke(bins, &socket, &["--lease", &r_id]);
    let killed = signal(&mut first, rustix::process::Signal::KILL);
    let left = pin_sets(&pins);

    // No daemon: R stays revoked, K works; T expires.
    let crashed = step(&mut [&mut r, &mut k, &mut t], &gates[0])?;
    std::thread::sleep((minted + TTL + Duration::from_secs(1)).saturating_duration_since(Instant::now()));
    let expired = step(&mut [&mut r, &mut k, &mut t], &gates[1])?;

    // A new daemon adopts the pins and carries the leases on.
    let mut second = spawn(bins, dir, "-restart", &pins)?;
    let second_state = enforcement(bins, &second.socket, &alice);
    let listed = bpftoken(bins, &second.socket, &alice, &["leases"]);
    let row = |lease: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(lease))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let k_row = row(&k_id);
    let k_revoked = bpftoken_revoke(bins, &second.socket, &["--lease", &k_id]);
    let after = step(&mut [&mut r, &mut k, &mut t], &gates[2])?;
    let next =
        bpftoken(bins, &second.socket, &alice, &["run", "--fd-only", "--", "/bin/sh", "-c", "echo $BPFTOKEN_LEASE"]);
    for h in [r, k, t] {
        let _ = h.finish();
    }
    // The kernel frees closed tokens shortly after (and their entries).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !bpftoken(bins, &second.socket, &alice, &["leases"]).stdout.trim().is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = signal(&mut second, rustix::process::Signal::TERM);
    let log = read(&dir.join("daemon-restart.log"));
    let adopted = log.contains("adopted the enforcer pinned in");
    let after_stop = pins.exists().then(|| pin_sets(&pins));
    remove_pins(&pins);

    let ids: Vec<u64> = [&r_id, &k_id, &t_id].iter().filter_map(|i| i.parse().ok()).collect();
    let next_id: Option<u64> = next.stdout.trim().parse().ok();
    let control = control(bins, dir, &alice);
    let upgrade = upgrade(bins, dir, &alice);
    let unbound = unbound(bins, dir);
    let ok = before.iter().all(|b| b == "map:array ok")
        && revoked.code() == Some(0)
        && killed
        && left.len() == 1
        && crashed[..2] == ["map:array EPERM", "map:array ok"]
        && expired == ["map:array EPERM", "map:array ok", "map:array EPERM"]
        && adopted
        && second_state == "enforcing"
        && k_row.as_ref().is_some_and(|r| r.contains(" owner ") && r.contains(" active "))
        && k_revoked.code() == Some(0)
        && k_revoked.stdout.starts_with(&format!("revoked lease {k_id} (uid {}, owner)", alice.uid))
        && after == ["map:array EPERM", "map:array EPERM", "map:array EPERM"]
        && ids.len() == 3
        && next_id.is_some_and(|n| ids.iter().all(|i| n > *i))
        && stopped
        && after_stop.is_none()
        && control.as_ref().is_ok_and(|c| c.0)
        && upgrade.as_ref().is_ok_and(|c| c.0)
        && unbound.as_ref().is_ok_and(|c| c.0);
    let detail = format!(
        "leases R {r_id} (revoked), K {k_id}, T {t_id} (ttl {ttl} s): {}; pinned {left:?}; SIGKILL; no daemon: R {}, K \
         {}, T {}; after the ttl: T {}; restarted daemon: {second_state}, adopted: {adopted}, lists K as {:?}; revoke --lease {k_id}: \
         {}{}; then R, K, T: {}; next lease id {:?}; clean stop with no lease: pins left {:?}; control without pins: {}; \
         upgrade: {}; a start that cannot bind its socket: {}",
        before.join(", "),
        crashed[0],
        crashed[1],
        crashed[2],
        expired[2],
        k_row,
        k_revoked.stdout.trim(),
        k_revoked.stderr.trim(),
        after.join(", "),
        next_id,
        after_stop,
        match &control {
            Ok((_, d)) => d.clone(),
            Err(e) => e.clone(),
        },
        match &upgrade {
            Ok((_, d)) => d.clone(),
            Err(e) => e.clone(),
        },
        match &unbound {
            Ok((_, d)) => d.clone(),
            Err(e) => e.clone(),
        }
    );
    Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
}

/// The old behaviour, which this scenario must catch: an enforcer that is
/// not pinned (the pin directory is on tmpfs) says so, and after a SIGKILL
/// the revoked token works again. `Ok((as expected, detail))`.
fn control(bins: &Path, dir: &Path, alice: &User) -> Result<(bool, String), String> {
    let not_bpffs = dir.join("not-bpffs");
    std::fs::create_dir_all(&not_bpffs).map_err(|e| format!("mkdir {}: {e}", not_bpffs.display()))?;
    let pins = not_bpffs.join("pins");
    let mut daemon = spawn(bins, dir, "-unpinned", &pins)?;
    let state = enforcement(bins, &daemon.socket, alice);
    let gates = [dir.join("go-unpinned-1"), dir.join("go-unpinned-2")];
    let mut h = hold(bins, &daemon.socket, alice, None, &[&gates[0], &gates[1]])?;
    let lease = h.lease().unwrap_or("?").to_owned();
    let revoked = bpftoken_revoke(bins, &daemon.socket, &["--lease", &lease]);
    let refused = step(&mut [&mut h], &gates[0])?;
    signal(&mut daemon, rustix::process::Signal::KILL);
    let again = step(&mut [&mut h], &gates[1])?;
    let _ = h.finish();
    let want_state = format!(
        "enforcing, but enforcement ends when the daemon stops: cannot pin in {}: it is not on a BPF file system (is \
         bpffs mounted at its parent?)",
        pins.display()
    );
    let ok = state == want_state
        && revoked.code() == Some(0)
        && refused == ["map:array EPERM"]
        && again == ["map:array ok"]
        && !pins.exists();
    Ok((ok, format!("query: {state}; revoked: {}, after SIGKILL: {}", refused.join(""), again.join(""))))
}

/// After an upgrade: the pinned set of another build (this build's, renamed
/// after a SIGKILL) holding a live lease, and a set of an unknown layout.
/// The new daemon reports both in `bpftoken query`; `bpftoken revoke
/// --uid` (as root) revokes the lease in the other build's set (its token `EPERM`)
/// and says the unknown one cannot be revoked, with its `rm -r` (exit 1);
/// once the token is closed the other build's empty set is removed; the
/// unknown one is left alone. `Ok((as expected, detail))`.
fn upgrade(bins: &Path, dir: &Path, alice: &User) -> Result<(bool, String), String> {
    let pins = pin_dir("-upgrade");
    let mut first = spawn(bins, dir, "-upgrade1", &pins)?;
    let gate = dir.join("go-upgrade");
    let mut h = hold(bins, &first.socket, alice, None, &[&gate])?;
    let held = h.before.iter().any(|l| l == "map:array ok");
    let killed = signal(&mut first, rustix::process::Signal::KILL);
    let sets = pin_sets(&pins);
    let (old, unknown) = (pins.join("enforcer-0000000000000001"), pins.join("enforcer-0000000000000002"));
    let set = sets.first().ok_or("the first daemon pinned nothing")?;
    std::fs::rename(pins.join(set), &old).map_err(|e| format!("cannot rename the pin set: {e}"))?;
    std::fs::create_dir(&unknown).map_err(|e| format!("mkdir {}: {e}", unknown.display()))?;
    let mut second = spawn(bins, dir, "-upgrade2", &pins)?;
    let query = bpftoken(bins, &second.socket, alice, &["query"]);
    let others: Vec<String> =
        query.stdout.lines().filter_map(|l| l.strip_prefix("other build: ")).map(str::to_owned).collect();
    let revoked = bpftoken_revoke(bins, &second.socket, &["--uid", &alice.uid.to_string()]);
    let after = step(&mut [&mut h], &gate)?;
    let _ = h.finish();
    // The old enforcer removes the entry once the token is freed; the
    // daemon then removes the set.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && old.exists() {
        let _ = bpftoken(bins, &second.socket, alice, &["query"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = signal(&mut second, rustix::process::Signal::TERM);
    let left = pin_sets(&pins);
    remove_pins(&pins);
    let (o, u) = (old.display(), unknown.display());
    let want_others = [
        format!("1 lease(s) of another bpftokend build pinned in {o}, 0 revoked; `rm -r {o}` ends them all at once"),
        format!(
            "leases of another bpftokend build pinned in {u}, whose layout this daemon does not know: they cannot be \
             revoked by it; `rm -r {u}` ends them at once"
        ),
    ];
    let want_revoked =
        format!("1 lease(s) of another bpftokend build pinned in {o}, all revoked\n{}\n", want_others[1]);
    let ok = held
        && killed
        && others == want_others
        && revoked.code() == Some(1)
        && revoked.stdout == want_revoked
        && after == ["map:array EPERM"]
        && stopped
        && left == ["enforcer-0000000000000002"];
    Ok((
        ok,
        format!(
            "query: {others:?}; revoke --uid: {:?} (exit {:?}); the old build's token then: {}; pins left after a \
             clean stop: {left:?}",
            revoked.stdout,
            revoked.code(),
            after.join("")
        ),
    ))
}

/// A daemon that pins a fresh enforcer and then cannot bind its socket
/// exits 1 and leaves no pin set behind. `Ok((as expected, detail))`.
fn unbound(bins: &Path, dir: &Path) -> Result<(bool, String), String> {
    let pins = pin_dir("-unbound");
    let policy = dir.join("policy-unbound.toml");
    std::fs::write(&policy, POLICY)
        .and_then(|()| std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)))
        .map_err(|e| format!("cannot write {}: {e}", policy.display()))?;
    let out = Command::new(bins.join("bpftokend"))
        .args(["--socket", "/proc/version/socket", "--policy"])
        .arg(&policy)
        .arg("--pin-dir")
        .arg(&pins)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start bpftokend: {e}"))?;
    let left = pin_sets(&pins);
    remove_pins(&pins);
    let said_pinned = String::from_utf8_lossy(&out.stderr).contains("removed the enforcer's pins");
    let ok = out.status.code() == Some(1) && left.is_empty() && said_pinned;
    Ok((ok, format!("exit {:?}, pins left {left:?}, released: {said_pinned}", out.status.code())))
}
