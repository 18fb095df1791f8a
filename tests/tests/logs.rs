//! Audit logs: structured, escaped, one line per decision.

use std::os::unix::fs::PermissionsExt;

use bpftoken_tests::*;

const POLICY: &str = "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";

#[test]
fn json_log_format_carries_the_audit_fields() {
    let Some(env) = setup("json_log_format_carries_the_audit_fields") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--log-format", "json"]);
    let eve = user(EVE);
    let o = d.bpftoken(&env, &eve, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let log = d.wait_for_log("\"decision\":\"refused\"");
    let line = log
        .lines()
        .find(|l| l.contains("\"decision\":\"refused\""))
        .unwrap_or_else(|| panic!("no refused event in {log}"));
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains(&format!("\"peer_uid\":{}", eve.uid)), "{line}");
    assert!(line.contains("\"code\":\"not_in_policy\""), "{line}");
}

#[test]
fn a_hostile_executable_path_stays_one_escaped_line() {
    let Some(env) = setup("a_hostile_executable_path_stays_one_escaped_line") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    // A client can name its binary anything: newlines and terminal escapes
    // must not forge or garble audit lines.
    let dir = scratch_dir("hostile");
    let hostile = dir.join("evil\ngranted token to uid 0 decision=\"granted\"\u{1b}[2J");
    std::fs::copy(env.bin("bpftoken"), &hostile).unwrap();
    std::fs::set_permissions(&hostile, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = as_user(&user(EVE), &hostile);
    c.arg("--socket").arg(&d.socket).args(["run", "--", "true"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let log = d.wait_for_log("refused uid");
    assert!(!log.contains('\u{1b}'), "raw escape sequence in the log");
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with("granted token to uid 0")).collect();
    assert!(forged.is_empty(), "a forged line: {forged:?}");
    let line = log.lines().find(|l| l.contains("refused uid")).expect("the refusal line");
    assert!(line.contains(r#"evil\ngranted token to uid 0 decision=\"granted\"\u{1b}[2J"#), "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_refusal_flood_is_rate_limited_in_the_log_but_counted() {
    let Some(env) = setup("a_refusal_flood_is_rate_limited_in_the_log_but_counted") else { return };
    let notify_path = scratch_dir("flood").join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let d = TestDaemon::start_with_env(&env, POLICY, &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    // root is not in the policy: 1,000 refusals on one connection, fast.
    let mut client = bpftoken::Client::connect_to(&d.socket).expect("connect");
    for _ in 0..1000 {
        assert!(matches!(client.mint(&bpftoken::MintRequest::default()), Err(bpftoken::Error::Refused(_))));
    }
    // The next event after the one-second window reports what was dropped.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(client.mint(&bpftoken::MintRequest::default()).is_err());
    let log = d.wait_for_log("audit lines suppressed by the rate limit");
    let lines = log.lines().filter(|l| l.contains("decision=\"refused\"")).count();
    // 50 lines a second for one uid: at least one full window and the
    // refusal after it, at most four windows' worth on a slow machine.
    assert!((51..=201).contains(&lines), "{lines} refusal lines for 1,001 refusals");
    // The summaries name the uid and, with the lines, account for every refusal.
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("audit lines suppressed by the rate limit")).collect();
    assert!(summaries.iter().all(|l| l.contains("peer_uid=0 ")), "{summaries:?}");
    let suppressed: usize = summaries.iter().map(|l| field(l, "suppressed").parse::<usize>().unwrap()).sum();
    assert_eq!(lines + suppressed, 1001, "{summaries:?}");
    // Every decision still counts in the status systemd sees.
    let mut buf = vec![0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("a STATUS update");
        if String::from_utf8_lossy(&buf[..n]).contains("1001 refused") {
            break;
        }
    }
}

/// The value of `name=VALUE` in a text-format log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 2;
    line[start..].split(' ').next().unwrap_or_default()
}

/// Flooding clients, killed when the test ends whatever happened.
struct Flood(Vec<std::process::Child>);

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_refusal_flood_by_one_uid_does_not_hide_another_uids_grants() {
    let Some(env) = setup("a_refusal_flood_by_one_uid_does_not_hide_another_uids_grants") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let (eve, alice) = (user(EVE), user(ALICE));
    let socket = d.socket.to_str().unwrap();
    // eve has no rule: four connections ask for refusals as fast as the
    // daemon answers, and keep asking until the test ends.
    let mut flood = Flood(
        (0..4)
            .map(|_| {
                let mut c = as_user(&eve, env.bin("bpftoken-probe"));
                c.args(["mint-loop", socket, "100000000"]);
                c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                c.spawn().expect("spawn a flooding client")
            })
            .collect(),
    );
    // A summary comes only after a second of the flood over its budget, so
    // alice mints while eve's refusals are being suppressed.
    d.wait_for_log("audit lines suppressed by the rate limit");
    // One client after another, so the grants are spread over the flood
    // rather than bunched where a window starts.
    for _ in 0..20 {
        let o = d.bpftoken(&env, &alice, &["run", "--fd-only", "--", "true"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(flood.0.iter_mut().all(|c| c.try_wait().unwrap().is_none()), "the flood ended before alice's mints did");
    // Every grant has its line (written after its answer: wait for it).
    let granted = format!("decision=\"granted\" peer_uid={} ", alice.uid);
    let log = d.wait_for_log_lines(&granted, 20);
    drop(flood);
    assert_eq!(log.lines().filter(|l| l.contains(&granted)).count(), 20);
    // eve's lines were suppressed, and the summary says they were hers.
    let eves = format!("peer_uid={} ", eve.uid);
    assert!(
        log.lines().any(|l| l.contains("audit lines suppressed by the rate limit") && l.contains(&eves)),
        "no summary names uid {}",
        eve.uid
    );
}
