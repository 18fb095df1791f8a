//! `bpftoken learn`: learn (it prints exactly the rule bpftool's load
//! needs, and that rule alone lets the load succeed), learned-refusals
//! (every refusal of a `Learned` request, word for word) and learn-fds
//! (what CMD holds). Without the enforcer, learning is refused
//! `learning_unavailable` (unsupported).

use std::path::Path;
use std::time::Instant;

use crate::harness::{
    as_user, bpftoken, lines, release, run, start_daemon_with, user, wait_deadline, Daemon, Holder, Ran, Start,
    Stopping, User, OTHER_USER, STEP_TIMEOUT,
};
use crate::report::{judged, Outcome};
use crate::Args;

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

/// learn: `bpftoken learn` of `bpftool prog load` prints exactly
/// [`LEARNED_RULE`]; a daemon whose whole policy is that rule lets the same
/// load succeed, and refuses a map type (hash) and program types
/// (tracepoint, xdp) it did not use.
/// Without the enforcer, learning is refused `learning_unavailable`.
pub fn learn(args: &Args, bins: &Path, dir: &Path, alice: &User) -> (Outcome, String) {
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
pub fn learned_refusals(bins: &Path, dir: &Path, alice: &User, enforcing: bool) -> (Outcome, String) {
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
pub fn learn_fds(bins: &Path, dir: &Path, alice: &User, enforcing: bool) -> (Outcome, String) {
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
