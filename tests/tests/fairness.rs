//! One user cannot slow, silence or starve another (issue #18): hostile
//! connection patterns against the real daemon, each checked by what the
//! other user sees (mints succeed, every connection accounted for, no
//! accept error), never by a timing. The timings are in `bpftoken-bench`
//! (docs/testing.md). The refusal flood against the audit log is in
//! `logs.rs`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bpftoken_tests::*;

/// alice and mallory by name, bob through his group; eve and uid
/// [`STRANGER`] are named by no rule.
const POLICY: &str = "[[allow]]\nusers = [\"bpftk-alice\", \"bpftk-mallory\"]\ncmds = [\"map_create\"]\nmaps = \
                      [\"array\"]\n\n[[allow]]\ngroups = [\"bpftk-dev\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";

/// A uid with no account and no rule.
const STRANGER: u32 = 54_321;

fn probe_as(env: &Env, who: &User, args: &[&str]) -> Command {
    let mut c = as_user(who, env.bin("bpftoken-probe"));
    c.args(args);
    c
}

fn probe_as_stranger(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([format!("--reuid={STRANGER}"), format!("--regid={STRANGER}"), "--clear-groups".to_owned()])
        .arg(env.bin("bpftoken-probe"))
        .args(args);
    c
}

/// Start a `hold-report` and wait until it holds its connections.
fn hold(mut c: Command) -> Child {
    let mut child = c.stdout(Stdio::piped()).spawn().expect("start a holding probe");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("holding line");
    assert!(line.starts_with("holding "), "{line}");
    child.stdout = Some(out.into_inner());
    child
}

/// What a `hold-report` saw: (refusal lines with their counts, open).
fn report(child: Child) -> (Vec<String>, usize) {
    let o = child.wait_with_output().expect("holding probe");
    let out = stdout(&o);
    let refused = out.lines().filter_map(|l| l.strip_prefix("refused ")).map(str::to_owned).collect();
    let open = out.lines().find_map(|l| l.strip_prefix("open ")).and_then(|n| n.parse().ok());
    (refused, open.unwrap_or_else(|| panic!("no open line: {out}{}", stderr(&o))))
}

fn assert_no_accept_error(d: &TestDaemon) {
    let log = d.log_text();
    assert!(!log.contains("accept failed"), "the daemon failed to accept:\n{log}");
}

/// Connect/close churn by a uid no rule names: another user's one-shot
/// mints all succeed, and the daemon's memory does not balloon.
#[test]
fn churn_by_a_uid_with_no_rule_costs_that_uid_not_others() {
    let Some(env) = setup("churn_by_a_uid_with_no_rule_costs_that_uid_not_others") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let (alice, eve) = (user(ALICE), user(EVE));
    let socket = d.socket.to_str().unwrap();
    let rss_before = rss_kib(d.pid());
    let churners: Vec<Child> = (0..4)
        .map(|_| probe_as(&env, &eve, &["churn", socket, "20000"]).stdout(Stdio::piped()).spawn().expect("churn"))
        .collect();
    let o = output(probe_as(&env, &alice, &["mint-loop", socket, "300", "--reconnect"]));
    let churned: Vec<String> =
        churners.into_iter().map(|c| stdout(&c.wait_with_output().expect("churner")).trim().to_owned()).collect();
    assert_eq!(stdout(&o), "minted 300\n", "alice's one-shot mints during the churn: {}", stderr(&o));
    for c in &churned {
        assert!(c.starts_with("connected "), "{c}");
    }
    assert_no_accept_error(&d);
    // Refused connections cost the churner: the daemon keeps no state for
    // them (RSS settles; the issue saw 7.7 MB grow to 111 MB).
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss_kib(d.pid());
    eprintln!("daemon RSS {rss_before} KiB before, {rss_after} KiB after 80,000 connections by eve ({churned:?})");
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
}

/// Four uids, two of them named by no rule, hold as many connections as
/// they may: a user with a rule still mints, the idle connection that made
/// room is told why, and the strangers got their short leash.
#[test]
fn four_uids_holding_connections_do_not_lock_out_a_user_with_a_rule() {
    let Some(env) = setup("four_uids_holding_connections_do_not_lock_out_a_user_with_a_rule") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--max-connections", "64", "--max-connections-per-uid", "32"]);
    let (alice, bob, eve, mallory) = (user(ALICE), user(BOB), user(EVE), user(MALLORY));
    let socket = d.socket.to_str().unwrap();
    // The strangers first: together they may hold 8 (64 / 8), each 8.
    let eve_hold = hold(probe_as(&env, &eve, &["hold-report", socket, "12", "4"]));
    let stranger_hold = hold(probe_as_stranger(&env, &["hold-report", socket, "12", "4"]));
    // Then the named uids, 32 each: the daemon is full.
    let bob_hold = hold(probe_as(&env, &bob, &["hold-report", socket, "40", "4"]));
    let mallory_hold = hold(probe_as(&env, &mallory, &["hold-report", socket, "40", "4"]));
    std::thread::sleep(Duration::from_millis(300));
    let o = d.bpftoken(&env, &alice, &["run", "--maps", "array", "--", "true"]);
    assert!(o.status.success(), "alice is locked out: {}", stderr(&o));
    let (eve_refused, eve_open) = report(eve_hold);
    let (stranger_refused, stranger_open) = report(stranger_hold);
    let (bob_refused, bob_open) = report(bob_hold);
    let (mallory_refused, mallory_open) = report(mallory_hold);
    eprintln!("eve {eve_refused:?} open {eve_open}\nstranger {stranger_refused:?} open {stranger_open}");
    eprintln!("bob {bob_refused:?} open {bob_open}\nmallory {mallory_refused:?} open {mallory_open}");
    // The strangers: nothing left open after the hold (idle leash, or
    // displaced by bob and mallory), and beyond their share, busy.
    assert_eq!((eve_open, stranger_open), (0, 0));
    let eve_uid = eve.uid;
    assert!(
        eve_refused.iter().any(|l| l.ends_with(&format!(
            "uid {eve_uid} already holds 8 connections, the most a uid no policy rule names may hold; close some \
             first (busy)"
        ))),
        "{eve_refused:?}"
    );
    assert!(
        eve_refused.iter().chain(&stranger_refused).any(|l| l
            .ends_with("uids no policy rule names hold 8 connections together, all their share; retry later (busy)")),
        "{eve_refused:?} {stranger_refused:?}"
    );
    // One idle connection of bob or mallory (32 each, the most) made room
    // for alice, and was told so.
    let displaced: Vec<&String> = bob_refused
        .iter()
        .chain(&mallory_refused)
        .filter(|l| l.contains("this idle connection was closed to make room for another user's"))
        .collect();
    assert_eq!(displaced.len(), 1, "{bob_refused:?} {mallory_refused:?}");
    let (b, m) = (bob.uid, mallory.uid);
    assert!(
        [b, m].iter().any(|uid| displaced[0].ends_with(&format!(
            "1 this idle connection was closed to make room for another user's: the daemon is at its limit of 64 \
             connections and uid {uid} holds 32, the most; connect again when needed (busy)"
        ))),
        "{displaced:?}"
    );
    assert_eq!(bob_open + mallory_open, 63, "bob and mallory keep the rest");
    assert_no_accept_error(&d);
}

/// A flood of connections from inside a user namespace (each such peer
/// once cost the daemon two fds) at a 1,440 fd limit: `busy`, never
/// EMFILE, and a user with a rule still mints.
#[test]
fn a_connection_flood_from_user_namespaces_never_runs_the_daemon_out_of_fds() {
    let Some(env) = setup("a_connection_flood_from_user_namespaces_never_runs_the_daemon_out_of_fds") else { return };
    let d = TestDaemon::start_with_fd_limit(&env, POLICY, 1440, &[]);
    let (alice, bob, mallory) = (user(ALICE), user(BOB), user(MALLORY));
    let socket = d.socket.to_str().unwrap();
    let in_userns = |who: &User, args: &[&str]| {
        let mut c = as_user(who, "unshare");
        c.args(["--user", "--map-root-user", "--"]).arg(env.bin("bpftoken-probe")).args(args);
        c
    };
    let flood = hold(in_userns(&mallory, &["hold-report", socket, "1024", "3"]));
    // Requests from a namespace too (bob's): each holds its namespace's fd
    // while it is answered (refused: no rule has `userns_owners`).
    let asking =
        in_userns(&bob, &["mint-loop", socket, "300", "--reconnect"]).stdout(Stdio::piped()).spawn().expect("ask");
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(fd_count(d.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = d.bpftoken(&env, &alice, &["run", "--maps", "array", "--", "true"]);
    assert!(o.status.success(), "alice during the flood: {}", stderr(&o));
    let asked = stdout(&asking.wait_with_output().expect("asking probe"));
    let (refused, open) = report(flood);
    eprintln!(
        "flood: open {open}, refused {refused:?}; daemon fds at most {most}; asked: {}",
        asked.lines().last().unwrap_or("")
    );
    assert!(most <= 1440, "the daemon held {most} fds");
    let count = |l: &String| l.split_once(' ').and_then(|(n, _)| n.parse::<usize>().ok()).unwrap_or(0);
    let busy: usize = refused.iter().filter(|l| l.ends_with("(busy)")).map(count).sum();
    let over_cap = refused.iter().find(|l| l.contains("connections, the per-uid limit; close some first (busy)"));
    assert!(open > 0 && over_cap.is_some(), "open {open}: {refused:?}");
    assert_eq!(open + busy, 1024, "every connection is open or was told busy: {refused:?}");
    assert!(asked.contains("only rules with `userns_owners` match there") && asked.ends_with("minted 0\n"), "{asked}");
    assert_no_accept_error(&d);
}
