//! Leases: expiry, revoke-lease, revoke-uid and revoke-libbpf-scope (the
//! tokens a libbpf-mode client created itself go with its lease); and
//! live-limit: `max_live_tokens`, counted by the enforcer. Where the daemon
//! cannot enforce, each says so with its typed refusal (unsupported).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{
    as_user, bpftoken, bpftoken_revoke, lines, release, start_daemon_with, user, wait_deadline, Holder, Start, User,
    ALLOWED_USER, STEP_TIMEOUT,
};
use crate::report::{Outcome, Report};
use crate::Args;

/// Leases: expiry, revocation by lease and by uid, and a libbpf-mode scope
/// revoked with the tokens its client created itself. Where the daemon
/// cannot enforce, each says so with its typed refusal (unsupported).
pub fn lease_scenarios(
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

/// The policy of the live-limit scenario: at most two live tokens.
const LIVE_POLICY: &str = r#"
[[allow]]
name = "two-at-a-time"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
max_live_tokens = 2
"#;

pub fn live_limit(bins: &Path, dir: &Path, alice: &User) -> (Outcome, String) {
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
