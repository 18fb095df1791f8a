//! Rows of docs/threat-model.md that need their own end-to-end test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;

const POLICY: &str =
    "[[allow]]\nusers = [\"bpftk-alice\", \"bpftk-mallory\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";

/// Token fds a process holds (fdinfo shows `allowed_cmds:` for tokens).
fn settle(counts: impl Fn() -> (usize, usize, usize), want: (usize, usize, usize)) -> (usize, usize, usize) {
    let mut now = counts();
    for _ in 0..100 {
        if now == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        now = counts();
    }
    now
}

/// Row 5: a client gains exactly one fd per mint, a CLOEXEC token.
#[test]
fn a_client_gains_exactly_one_cloexec_token_fd_per_mint() {
    let Some(env) = setup("a_client_gains_exactly_one_cloexec_token_fd_per_mint") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let mut c = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    c.args(["fd-check", d.socket.to_str().unwrap()]);
    let o = output(c);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}{}", stderr(&o));
    assert_eq!(lines[0], "new fds 1");
    assert!(lines[1].ends_with(" token true cloexec true"), "{out}");
}

/// Row 2: a request cut at every byte offset, and answers never read,
/// leave no token, fd or process behind in the daemon.
#[test]
fn closing_at_every_byte_offset_leaves_nothing_behind() {
    let Some(env) = setup("closing_at_every_byte_offset_leaves_nothing_behind") else { return };
    // No spare tokens: every token in the daemon would be a leak.
    let d = TestDaemon::start(&env, POLICY, &["--spare-tokens", "0"]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = d.pid();
    let minters = children(pid);
    assert_eq!(minters.len(), 2, "the two minters: {minters:?}");
    let counts = || (fd_count(pid), token_fds(pid), minters.iter().map(|m| children(*m).len()).sum());
    std::thread::sleep(Duration::from_millis(200));
    let before = counts();
    assert_eq!(before.1, 0, "no token held while idle");

    let mut c = as_user(&alice, env.bin("bpftoken-probe"));
    c.args(["close-at", d.socket.to_str().unwrap()]);
    let o = output(c);
    assert!(stdout(&o).starts_with("cuts "), "{}{}", stdout(&o), stderr(&o));
    let after = settle(counts, before);
    assert_eq!(after, before, "(daemon fds, daemon token fds, minter children)");
    assert_eq!(children(pid), minters);
    // The daemon still serves.
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Spare tokens stay within their bound and go with their scope.
#[test]
fn spare_tokens_are_bounded_and_dropped_with_their_scope() {
    let Some(env) = setup("spare_tokens_are_bounded_and_dropped_with_their_scope") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--scope-idle-secs", "2"]);
    let alice = user(ALICE);
    let pid = d.pid();
    let mut most = 0;
    for n in 1..=20 {
        let mut c = as_user(&alice, env.bin("bpftoken-probe"));
        c.args(["mint-loop", d.socket.to_str().unwrap(), "1"]);
        let o = output(c);
        assert_eq!(stdout(&o), "minted 1\n", "{}", stderr(&o));
        // The first mint is cold (one token, checked, handed out); the
        // second makes 1 + 7; each later one takes a spare, or makes 8 more
        // when none is left. (The handed-out token closes in the daemon
        // just after the client has it: settle.)
        let want = if n == 1 { 0 } else { 7 - (n - 2) % 8 };
        let (held, _, _) = settle(|| (token_fds(pid), 0, 0), (want, 0, 0));
        assert_eq!(held, want, "token fds in the daemon after mint {n}");
        most = most.max(held);
    }
    assert_eq!(most, 7);
    // Idle eviction closes the scope and its spares.
    let after = settle(|| (token_fds(pid), 0, 0), (0, 0, 0));
    assert_eq!(after.0, 0, "spares outlived their scope");
}

/// Row 4: per-uid connection caps give a typed `busy`, spare other uids,
/// and 10,000 connection attempts from one uid do not starve another.
#[test]
fn connection_floods_meet_busy_and_spare_other_users() {
    let Some(env) = setup("connection_floods_meet_busy_and_spare_other_users") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--max-connections-per-uid", "16"]);
    let (alice, mallory) = (user(ALICE), user(MALLORY));
    let probe = env.bin("bpftoken-probe");
    let socket = d.socket.to_str().unwrap().to_owned();

    let mut hold = as_user(&mallory, &probe);
    hold.args(["hold", &socket, "16", "4"]).stdout(Stdio::piped());
    let mut hold = hold.spawn().expect("hold");
    let mut first = [0u8; 11];
    std::io::Read::read_exact(hold.stdout.as_mut().unwrap(), &mut first).expect("holding line");
    assert_eq!(&first, b"holding 16\n");
    std::thread::sleep(Duration::from_millis(200));
    let o = d.bpftoken(&env, &mallory, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: uid {} already holds 16 connections, the per-uid limit; close some first (busy)\n",
            mallory.uid
        )
    );
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "another uid is still served: {}", stderr(&o));
    let _ = hold.kill();
    let _ = hold.wait();

    // Baseline latency for alice, then the same during a connection storm.
    let mint = |n: &str| {
        let mut c = as_user(&alice, &probe);
        c.args(["mint-loop", &socket, n]);
        let started = Instant::now();
        let o = output(c);
        (started.elapsed(), stdout(&o))
    };
    let (quiet, out) = mint("200");
    assert_eq!(out, "minted 200\n");
    let mut churn = as_user(&mallory, &probe);
    churn.args(["churn", &socket, "10000"]).stdout(Stdio::piped());
    let churn = churn.spawn().expect("churn");
    let (busy, out) = mint("200");
    let churned = churn.wait_with_output().expect("churn output");
    eprintln!(
        "alice: 200 mints in {quiet:?} quiet, {busy:?} during mallory's 10,000 connections ({})",
        stdout(&churned).trim()
    );
    assert_eq!(out, "minted 200\n", "every one of alice's mints succeeded during the storm");
    assert!(busy < quiet * 10 + Duration::from_secs(2), "alice starved: {busy:?} vs {quiet:?}");
    assert!(stdout(&churned).starts_with("connected "), "{}", stdout(&churned));
}

/// Row 11: the request path performs no user or group database lookups.
#[test]
fn the_request_path_does_no_name_lookups() {
    let Some(env) = setup("the_request_path_does_no_name_lookups") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let trace = d.dir.join("strace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2,connect", "-o"])
        .arg(&trace)
        .arg("-p")
        .arg(d.pid().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    std::thread::sleep(Duration::from_millis(500));
    let (alice, eve) = (user(ALICE), user(EVE));
    for _ in 0..5 {
        let o = d.bpftoken(&env, &alice, &["run", "--maps", "array", "--", "true"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = d.bpftoken(&env, &eve, &["run", "--", "true"]);
        assert_eq!(o.status.code(), Some(1));
        let o = d.bpftoken(&env, &alice, &["query"]);
        assert!(o.status.success());
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = rustix::process::Pid::from_raw(i32::try_from(strace.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let _ = strace.wait();
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    // The trace saw the requests (peer identification opens /proc files)...
    assert!(text.contains("/fdinfo/"), "strace saw nothing:\n{text}");
    // ...and no name service at all.
    for needle in ["/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "nscd", "/run/systemd/userdb", "sss"] {
        assert!(!text.contains(needle), "the request path touched {needle}:\n{text}");
    }
}

/// Row 6: the client owns the helper's user namespace, but cannot seize
/// it, read its memory or enter its namespaces, while cold mints run.
#[test]
fn the_bpffs_helper_cannot_be_hijacked_by_its_client() {
    let Some(env) = setup("the_bpffs_helper_cannot_be_hijacked_by_its_client") else { return };
    let policy = "[[allow]]\nusers = [\"bpftk-mallory\"]\ncmds = [\"map_create\"]\nmaps = [\"any\"]\n";
    // One scope per uid: every mint with a new mask is a cold mint (a helper).
    let d = TestDaemon::start(&env, policy, &["--scopes-per-uid", "1"]);
    let mallory = user(MALLORY);
    let probe = env.bin("bpftoken-probe");
    let mut attacker = as_user(&mallory, &probe);
    attacker.args(["hijack", "3"]).stdout(Stdio::piped());
    let attacker = attacker.spawn().expect("attacker");
    let mut mints = as_user(&mallory, &probe);
    mints.args(["mint-masks", d.socket.to_str().unwrap(), "1500", "1000"]);
    let o = output(mints);
    let attack = attacker.wait_with_output().expect("attacker output");
    let report = stdout(&attack);
    eprintln!("{}", report.trim());
    assert!(!report.contains("gained"), "{report}");
    assert!(report.starts_with("tried "), "{report}");
    let out = stdout(&o);
    let minted: usize =
        out.lines().find_map(|l| l.strip_prefix("minted ")).and_then(|n| n.parse().ok()).expect("count");
    assert!(minted > 0, "{out}");
}

/// Row 1, the exit-and-recycle race made deterministic: alice sends a mint
/// and exits while the daemon is stopped; a process running the one
/// executable a rule allows for alice takes her pid (forced through
/// `ns_last_pid`); then the daemon runs on. Whatever it learns must be
/// about the exited client: a lookup of `/proc/PID` by number would see the
/// impostor's executable, match the rule and grant.
#[test]
fn a_recycled_pid_does_not_stand_in_for_an_exited_client() {
    let Some(env) = setup("a_recycled_pid_does_not_stand_in_for_an_exited_client") else { return };
    let alice = user(ALICE);
    let impostor_exe = std::fs::canonicalize("/usr/bin/sleep").expect("sleep");
    let policy = format!(
        "[[allow]]\nname = \"sleep-only\"\nusers = [\"bpftk-alice\"]\nexecutables = [\"{}\"]\n\
         enforce_identity = false\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n",
        impostor_exe.display()
    );
    let d = TestDaemon::start(&env, &policy, &[]);
    let daemon = rustix::process::Pid::from_raw(d.pid() as i32).unwrap();
    let mut raced = None;
    for _attempt in 0..20 {
        rustix::process::kill_process(daemon, rustix::process::Signal::STOP).unwrap();
        let mut client = as_user(&alice, env.bin("bpftoken-probe"));
        client.args(["send-and-exit", d.socket.to_str().unwrap()]);
        let o = output(client);
        assert!(o.status.success(), "{}", stderr(&o));
        let pid: u32 = stdout(&o).trim().parse().expect("client pid");
        // The next fork gets `pid`, unless something else forks first.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("ns_last_pid");
        let mut impostor = as_user(&alice, &impostor_exe);
        impostor.arg("30");
        let mut impostor = impostor.spawn().expect("impostor");
        if impostor.id() == pid {
            std::thread::sleep(Duration::from_millis(100)); // let setpriv exec sleep
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe, impostor_exe);
            rustix::process::kill_process(daemon, rustix::process::Signal::CONT).unwrap();
            raced = Some((pid, impostor));
            break;
        }
        let _ = impostor.kill();
        let _ = impostor.wait();
        rustix::process::kill_process(daemon, rustix::process::Signal::CONT).unwrap();
    }
    let (pid, mut impostor) = raced.expect("no attempt in 20 gave the impostor the client's pid");
    let line = d.wait_for_log(&format!("peer_pid={pid} "));
    let _ = impostor.kill();
    let _ = impostor.wait();
    eprintln!("{line}");
    assert!(line.contains("decision=\"refused\""), "{line}");
    assert!(line.contains(&format!("peer_uid={}", alice.uid)), "{line}");
    assert!(!line.contains("/usr/bin/sleep"), "the impostor's executable reached the decision: {line}");
    assert!(!d.log_text().contains("decision=\"granted\""), "{}", d.log_text());
}

/// Row 6: a mint child the client holds stopped delays only that client's
/// own request. While mallory keeps her mint child SIGSTOPped, alice mints
/// and queries at normal speed; the stopped child is then killed at its
/// deadline, mallory's request fails with the timeout refusal, and nothing
/// is left behind.
#[test]
fn a_stopped_mint_child_delays_only_its_own_client() {
    let Some(env) = setup("a_stopped_mint_child_delays_only_its_own_client") else { return };
    // No spares: every warm mint makes a mint child.
    let d = TestDaemon::start(&env, POLICY, &["--spare-tokens", "0"]);
    let (alice, mallory) = (user(ALICE), user(MALLORY));
    let socket = d.socket.to_str().unwrap().to_owned();
    let probe = env.bin("bpftoken-probe");
    // Both scopes warm, so only mint children run in the namespaces. (The
    // probe as mallory: the hijack test, which may run meanwhile, leaves
    // processes named bpftoken* alone.)
    let mint_once = |u: &User| {
        let mut c = as_user(u, &probe);
        c.args(["mint-loop", &socket, "1"]);
        let o = output(c);
        assert!(stdout(&o).lines().any(|l| l == "minted 1"), "{}{}", stdout(&o), stderr(&o));
    };
    mint_once(&alice);
    mint_once(&mallory);
    let pid = d.pid();
    let minters = children(pid);
    assert_eq!(minters.len(), 2, "the two minters: {minters:?}");
    let counts = || (fd_count(pid), token_fds(pid));
    // Baseline once the leases of those runs are swept (every 5 s).
    let mut before = counts();
    let settled = Instant::now();
    let mut stable = Instant::now();
    while stable.elapsed() < Duration::from_millis(5500) && settled.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let now = counts();
        if now != before {
            (before, stable) = (now, Instant::now());
        }
    }
    assert_eq!(before.1, 0, "no token held while idle");

    // mallory mints until a mint fails, while her stopper catches one of
    // her mint children and leaves it stopped.
    let mut stopper = as_user(&mallory, &probe);
    stopper.args(["stop-mint-child", &pid.to_string(), "60"]).stdout(Stdio::piped());
    let stopper = stopper.spawn().expect("spawn stopper");
    let mut client = as_user(&mallory, &probe);
    client.args(["mint-loop", &socket, "10000000", "--until-error"]).stdout(Stdio::piped());
    let client = client.spawn().expect("spawn mallory's client");
    let mut client = client;
    let o = stopper.wait_with_output().expect("stopper");
    let out = stdout(&o);
    let Some(stopped) = out.lines().find_map(|l| l.strip_prefix("stopped ")).and_then(|p| p.parse::<u32>().ok()) else {
        let _ = client.kill();
        let c = client.wait_with_output().expect("mallory's client");
        panic!("no mint child stopped: {out}{}\nclient: {}{}", stderr(&o), stdout(&c), stderr(&c));
    };
    let caught = Instant::now();
    let state = |p: u32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        (field("State:").unwrap_or_default(), field("PPid:").unwrap_or_default())
    };
    let (st, ppid) = state(stopped);
    assert!(st.starts_with('T'), "the caught child is stopped: {st}");
    assert_eq!(ppid, pid.to_string(), "the caught process is a child of the daemon");

    // alice: many mints and a query, all while that child stays stopped.
    let mut c = as_user(&alice, &probe);
    c.args(["mint-loop", &socket, "50"]);
    let o = output(c);
    let out = stdout(&o);
    assert!(out.lines().any(|l| l == "minted 50"), "{out}{}", stderr(&o));
    let o = d.bpftoken(&env, &alice, &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let served = caught.elapsed();
    let (st, ppid) = state(stopped);
    assert!(
        st.starts_with('T') && ppid == pid.to_string(),
        "alice was served only after mallory's child was gone ({served:?}; state {st:?})"
    );
    assert!(served < Duration::from_millis(1500), "alice took {served:?}");

    // mallory's own request: the timeout refusal, after the deadline.
    let o = client.wait_with_output().expect("mallory's client");
    let out = stdout(&o);
    let error = out.lines().find(|l| l.starts_with("error")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        error,
        "error refused: minting failed: the mint child (killed or stopped by a signal) failed: \
         Interrupted system call (os error 4) (mint_failed)",
        "{out}"
    );
    assert!(caught.elapsed() >= Duration::from_millis(1500), "mallory's request ended early");
    // Nothing left: no mint child, no fd, no token.
    let mut after = counts();
    for _ in 0..200 {
        if after == (before.0 - 3, 0) && children(pid) == minters {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        after = counts();
    }
    // Less mallory's scope, dropped with its failed mint (3 fds: user
    // namespace, bpffs root, mount).
    assert_eq!(after, (before.0 - 3, 0), "(daemon fds, daemon token fds)");
    assert_eq!(children(pid), minters, "a mint child was left behind");
    assert!(!std::path::Path::new(&format!("/proc/{stopped}")).exists() || state(stopped).1 != pid.to_string());
    // Both still mint.
    mint_once(&alice);
    mint_once(&mallory);
}

/// Row 6: a bpffs helper its client holds stopped delays only that
/// client's cold mints. mallory mints new scopes while her stopper catches
/// one of her helpers (a child of a minter, running as her) and leaves it
/// stopped; meanwhile alice's cold mints (new scopes, so a minter) are
/// served at once; mallory's request then gets the helper timeout refusal
/// and nothing is left behind. With one minter driving one helper at a
/// time, alice waited for that 2 s timeout and this test fails.
#[test]
fn a_stopped_helper_delays_only_its_own_client() {
    let Some(env) = setup("a_stopped_helper_delays_only_its_own_client") else { return };
    let policy = "[[allow]]\nusers = [\"bpftk-alice\", \"bpftk-mallory\"]\ncmds = [\"map_create\"]\nmaps = [\"any\"]\n";
    // No spares, and idle scopes dropped soon: the daemon's fds return to
    // what it started with.
    let d = TestDaemon::start(&env, policy, &["--spare-tokens", "0", "--scope-idle-secs", "1"]);
    let (alice, mallory) = (user(ALICE), user(MALLORY));
    let socket = d.socket.to_str().unwrap().to_owned();
    let probe = env.bin("bpftoken-probe");
    let pid = d.pid();
    let minters = children(pid);
    assert_eq!(minters.len(), 2, "the two minters: {minters:?}");
    // One cold mint each first; the baseline once their scopes and leases
    // are dropped.
    for u in [&alice, &mallory] {
        let mut c = as_user(u, &probe);
        c.args(["mint-masks", &socket, "1", "1"]);
        let o = output(c);
        assert!(stdout(&o).lines().any(|l| l == "minted 1"), "{}{}", stdout(&o), stderr(&o));
    }
    let mut before = fd_count(pid);
    let (settled, mut stable) = (Instant::now(), Instant::now());
    while stable.elapsed() < Duration::from_millis(5500) && settled.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        if now != before {
            (before, stable) = (now, Instant::now());
        }
    }

    // mallory: a new scope per mint, until one fails; her stopper catches
    // one of her helpers and leaves it stopped.
    let mut stopper = as_user(&mallory, &probe);
    stopper.args(["stop-helper", &pid.to_string(), "60"]).stdout(Stdio::piped());
    let stopper = stopper.spawn().expect("spawn stopper");
    let mut client = as_user(&mallory, &probe);
    client.args(["mint-masks", &socket, "100000", "1000", "--until-error"]).stdout(Stdio::piped());
    let mut client = client.spawn().expect("spawn mallory's client");
    let o = stopper.wait_with_output().expect("stopper");
    let out = stdout(&o);
    let caught = out.lines().find_map(|l| l.strip_prefix("stopped ")).and_then(|l| {
        let (helper, minter) = l.split_once(" minter ")?;
        Some((helper.parse::<u32>().ok()?, minter.parse::<u32>().ok()?))
    });
    let Some((helper, minter)) = caught else {
        let _ = client.kill();
        let c = client.wait_with_output().expect("mallory's client");
        panic!("no helper stopped: {out}{}\nclient: {}{}", stderr(&o), stdout(&c), stderr(&c));
    };
    let caught = Instant::now();
    let state = |p: u32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
        (field("State:").unwrap_or_default(), field("PPid:").unwrap_or_default(), field("Uid:").unwrap_or_default())
    };
    let (st, ppid, uid) = state(helper);
    assert!(st.starts_with('T'), "the caught helper is stopped: {st}");
    assert_eq!(ppid, minter.to_string(), "the caught process is a child of the minter");
    assert!(minters.contains(&minter), "{minter} is one of the daemon's minters {minters:?}");
    assert!(uid.starts_with(&format!("{}\t", mallory.uid)), "the helper runs as mallory: {uid}");

    // alice: three new scopes (cold mints), while that helper stays stopped.
    let mut c = as_user(&alice, &probe);
    c.args(["mint-masks", &socket, "3", "3"]);
    let o = output(c);
    let out = stdout(&o);
    assert!(out.lines().any(|l| l == "minted 3"), "{out}{}", stderr(&o));
    let served = caught.elapsed();
    let (st, ppid, _) = state(helper);
    assert!(
        st.starts_with('T') && ppid == minter.to_string(),
        "alice was served only after mallory's helper was gone ({served:?}; state {st:?})"
    );
    assert!(served < Duration::from_millis(1500), "alice took {served:?}");

    // mallory's own request: the helper timeout refusal.
    let o = client.wait_with_output().expect("mallory's client");
    let out = stdout(&o);
    let error = out.lines().find(|l| l.starts_with("error ")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        error,
        format!(
            "error refused: minting failed: the bpffs helper for uid {} did not answer within 2000 ms (mint_failed)",
            mallory.uid
        ),
        "{out}"
    );
    assert!(caught.elapsed() >= Duration::from_millis(1500), "mallory's request ended early");

    // Nothing left: no helper, no minter more or less, no fd, no token.
    let left = || {
        let helpers: Vec<u32> = minters.iter().flat_map(|m| children(*m)).collect();
        (fd_count(pid), token_fds(pid), children(pid), helpers)
    };
    let want = (before, 0, minters.clone(), Vec::new());
    let mut now = left();
    for _ in 0..300 {
        if now == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        now = left();
    }
    assert_eq!(now, want, "(daemon fds, daemon token fds, daemon children, minter children)");
    assert!(!std::path::Path::new(&format!("/proc/{helper}")).exists() || state(helper).1 != minter.to_string());
}
