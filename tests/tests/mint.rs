//! Minting end to end: real daemon, real kernel, real unprivileged users.

use std::time::Duration;

use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "alice-loader"
users = ["bpftk-alice"]
cmds = ["map_create", "prog_load"]
maps = ["array", "hash"]
progs = ["socket_filter"]
attachs = ["cgroup_inet_ingress"]

[[allow]]
name = "dev-group"
groups = ["bpftk-dev"]
cmds = ["map_create"]
maps = ["queue"]
"#;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn allowed_user_gets_exactly_the_granted_powers() {
    let Some(env) = setup("allowed_user_gets_exactly_the_granted_powers") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);

    // Without a token the kernel refuses the user (unprivileged_bpf_disabled).
    let mut c = as_user(&alice, env.bin("bpftoken-probe"));
    c.args(["try", "--no-token", "map:array", "prog:socket_filter"]);
    let o = output(c);
    assert_eq!(lines(&stdout(&o)), ["map:array EPERM", "prog:socket_filter EPERM"], "{}", stderr(&o));

    // With one: granted types work, everything else is refused by the kernel.
    let o = d.bpftoken(
        &env,
        &alice,
        &[
            "run",
            "--cmds",
            "map_create,prog_load",
            "--maps",
            "array,hash",
            "--progs",
            "socket_filter",
            "--",
            env.bin("bpftoken-probe").to_str().unwrap(),
            "try",
            "map:array",
            "map:hash",
            "map:ringbuf",
            "map:queue",
            "prog:socket_filter",
            "prog:kprobe",
            "prog:xdp",
        ],
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    assert_eq!(
        lines(&stdout(&o)),
        [
            "map:array ok",
            "map:hash ok",
            "map:ringbuf EPERM",
            "map:queue EPERM",
            "prog:socket_filter ok",
            "prog:kprobe EPERM",
            "prog:xdp EPERM",
        ]
    );
    d.wait_for_log(&format!("decision=\"granted\" peer_uid={}", alice.uid));
}

#[test]
fn narrowed_request_is_enforced_by_the_kernel() {
    let Some(env) = setup("narrowed_request_is_enforced_by_the_kernel") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let probe = env.bin("bpftoken-probe");
    let o = d.bpftoken(
        &env,
        &user(ALICE),
        &[
            "run",
            "--maps",
            "array",
            "--",
            probe.to_str().unwrap(),
            "try",
            "map:array",
            "map:hash",
            "prog:socket_filter",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&stdout(&o)), ["map:array ok", "map:hash EPERM", "prog:socket_filter ok"]);

    // cmds narrowed to map_create: program loads are refused.
    let o = d.bpftoken(
        &env,
        &user(ALICE),
        &["run", "--cmds", "map_create", "--", probe.to_str().unwrap(), "try", "map:hash", "prog:socket_filter"],
    );
    assert_eq!(lines(&stdout(&o)), ["map:hash ok", "prog:socket_filter EPERM"]);
}

#[test]
fn user_outside_the_policy_gets_a_one_line_refusal() {
    let Some(env) = setup("user_outside_the_policy_gets_a_one_line_refusal") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let eve = user(EVE);
    let o = d.bpftoken(&env, &eve, &["run", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: no rule in {} allows uid {} (gid {}) (not_in_policy)\n",
            d.policy.display(),
            eve.uid,
            eve.gid
        )
    );
    assert!(stdout(&o).is_empty());
    let log = d.wait_for_log(&format!("decision=\"refused\" peer_uid={}", eve.uid));
    assert!(log.contains("code=\"not_in_policy\""), "{log}");
}

#[test]
fn asking_for_more_than_granted_names_the_item() {
    let Some(env) = setup("asking_for_more_than_granted_names_the_item") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let o = d.bpftoken(&env, &alice, &["run", "--maps", "array,ringbuf", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: map type \"ringbuf\" is not granted to uid {} by {} \
             (granted map types: hash, array) (not_granted)\n\
             bpftoken: {} grants you (allowed by alice-loader):\n\
             bpftoken:   cmds:    map_create, prog_load\n\
             bpftoken:   maps:    hash, array\n\
             bpftoken:   progs:   socket_filter\n\
             bpftoken:   attachs: cgroup_inet_ingress\n",
            alice.uid,
            d.policy.display(),
            d.policy.display()
        )
    );
    // The same explanation on request, without minting.
    let o = d.bpftoken(&env, &alice, &["query"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!(
            "{} grants you (allowed by alice-loader):\n  cmds:    map_create, prog_load\n  maps:    hash, array\n  \
             progs:   socket_filter\n  attachs: cgroup_inet_ingress\nenforcement: {}\n",
            d.policy.display(),
            d.enforcement()
        )
    );
    let o = d.bpftoken(&env, &user(EVE), &["query"]);
    assert_eq!(
        stdout(&o),
        format!(
            "no rule of {0} matches you\nenforcement: {3}\na request now would be refused: no rule in {0} allows uid \
             {1} (gid {2}) (not_in_policy)\n",
            d.policy.display(),
            user(EVE).uid,
            user(EVE).gid,
            d.enforcement()
        )
    );
    // A name the CLI does not know never reaches the daemon.
    let o = d.bpftoken(&env, &alice, &["run", "--progs", "sockt_filter", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "bpftoken: --progs: unknown program type \"sockt_filter\"\n");
}

#[test]
fn supplementary_group_rule_grants() {
    let Some(env) = setup("supplementary_group_rule_grants") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let bob = user(BOB);
    let probe = env.bin("bpftoken-probe");
    let o = d.bpftoken(&env, &bob, &["run", "--", probe.to_str().unwrap(), "try", "map:queue", "map:array"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&stdout(&o)), ["map:queue ok", "map:array EPERM"]);
}

#[test]
fn token_of_one_user_is_useless_to_another() {
    let Some(env) = setup("token_of_one_user_is_useless_to_another") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let probe = env.bin("bpftoken-probe");
    let shared = d.dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let handoff = shared.join("handoff.sock");
    // bob waits for a token over a socket and tries it...
    let mut receiver = as_user(&user(BOB), &probe);
    receiver.args(["recv-token", handoff.to_str().unwrap(), "map:array", "prog:socket_filter"]);
    receiver.stdout(std::process::Stdio::piped());
    let receiver = receiver.spawn().expect("spawn receiver");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !handoff.exists() {
        assert!(std::time::Instant::now() < deadline, "receiver did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...that alice minted for herself.
    let o = d.bpftoken(
        &env,
        &user(ALICE),
        &["run", "--", probe.to_str().unwrap(), "send-token", handoff.to_str().unwrap()],
    );
    if !o.status.success() {
        let mut receiver = receiver;
        let _ = receiver.kill();
        panic!("sending the token failed: {}", stderr(&o));
    }
    let got = receiver.wait_with_output().expect("receiver output");
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(lines(&stdout(&got)), ["listening", "map:array EPERM", "prog:socket_filter EPERM"]);
}

#[test]
fn one_connection_carries_several_mints_and_counts_return_to_baseline() {
    let Some(env) = setup("one_connection_carries_several_mints_and_counts_return_to_baseline") else { return };
    // No spare tokens, so the daemon's fd count is exact (spares have their
    // own test in threats.rs).
    let d = TestDaemon::start(&env, POLICY, &["--spare-tokens", "0"]);
    let alice = user(ALICE);
    let probe = env.bin("bpftoken-probe");
    let socket = d.socket.to_str().unwrap().to_owned();
    let mint = |count: &str, reconnect: bool| {
        let mut c = as_user(&alice, &probe);
        c.args(["mint-loop", &socket, count]);
        if reconnect {
            c.arg("--reconnect");
        }
        output(c)
    };
    // Warm up: the first mint creates alice's scope in the minter.
    let o = mint("1", false);
    assert_eq!(stdout(&o), "minted 1\n", "{}", stderr(&o));
    let daemon_pid = d.pid();
    let minters = children(daemon_pid);
    assert_eq!(minters.len(), 2, "exactly two children (the minters): {minters:?}");
    let counts = || {
        let minter_fds: usize = minters.iter().map(|m| fd_count(*m)).sum();
        let helpers: usize = minters.iter().map(|m| children(*m).len()).sum();
        (fd_count(daemon_pid), minter_fds, helpers)
    };
    // The warm-up connection closes asynchronously: wait for a stable count.
    let mut before = counts();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = counts();
        if now == before {
            break;
        }
        before = now;
    }

    let o = mint("500", false);
    assert_eq!(stdout(&o), "minted 500\n", "{}", stderr(&o));
    let o = mint("500", true);
    assert_eq!(stdout(&o), "minted 500\n", "{}", stderr(&o));

    // Connections close asynchronously; give the daemon a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut after;
    loop {
        after = counts();
        if after == before || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(after, before, "(daemon fds, minters' fds, minters' children) before and after 1,000 mints");
    assert_eq!(children(daemon_pid), minters, "no minter was restarted");
}

#[test]
fn caller_inside_a_user_namespace_needs_a_userns_owners_rule() {
    let Some(env) = setup("caller_inside_a_user_namespace_needs_a_userns_owners_rule") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    let mut c = as_user(&alice, "unshare");
    c.args(["--user", "--map-current-user", "--"])
        .arg(env.bin("bpftoken"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["run", "--", "true"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // alice's host rule does not reach into her namespaces: only a rule
    // with `userns_owners` would (tests/tests/modes.rs).
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: no rule in {} allows uid {1} (gid {2}) (uid {1} calls from a user namespace owned \
             by uid {1}, such as a rootless container; only rules with `userns_owners` match there) \
             (not_in_policy)\n",
            d.policy.display(),
            alice.uid,
            alice.gid
        )
    );
}

#[test]
fn signals_from_the_client_cannot_stop_or_shut_down_the_daemon() {
    let Some(env) = setup("signals_from_the_client_cannot_stop_or_shut_down_the_daemon") else { return };
    let policy = "[[allow]]\nusers = [\"bpftk-mallory\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n";
    let d = TestDaemon::start(&env, policy, &[]);
    // mallory signals every process of her uid: no other test runs as her.
    let mallory = user(MALLORY);
    let probe = env.bin("bpftoken-probe");
    let socket = d.socket.to_str().unwrap().to_owned();
    // A mint child is root, but inside mallory's user namespace, where she
    // holds CAP_KILL: she may signal it. SIGTERM must not reach the
    // daemon's handler (the child blocks all signals), and SIGSTOP must not
    // hang the daemon (the watchdog kills a stopped child).
    for attack in [vec!["term-all", "3"], vec!["signal-root", "3"]] {
        let mut attacker = as_user(&mallory, &probe);
        attacker.args(&attack).stdout(std::process::Stdio::piped());
        let attacker = attacker.spawn().expect("spawn attacker");
        let mut minter = as_user(&mallory, &probe);
        minter.args(["mint-loop", &socket, "2000", "--ignore-term"]);
        let o = output(minter);
        let attack_out = attacker.wait_with_output().expect("attacker");
        let out = stdout(&o);
        eprintln!("{attack:?}: {} / {}", stdout(&attack_out).trim(), out.lines().last().unwrap_or(""));
        if let Some(e) = out.lines().find(|l| l.starts_with("error")) {
            eprintln!("first error: {e}");
        }
        // Every mint either worked or got a typed refusal; none hung.
        let minted: usize =
            out.lines().find_map(|l| l.strip_prefix("minted ")).and_then(|n| n.parse().ok()).expect("count");
        for line in out.lines().filter(|l| l.starts_with("error")) {
            assert!(line.contains("(mint_failed)"), "{line}");
        }
        assert!(minted > 0, "{out}");
        // The daemon is still serving and never heard a SIGTERM.
        let o = d.bpftoken(&env, &mallory, &["run", "--", "true"]);
        assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
        assert!(!d.log_text().contains("shutting down"), "{}", d.log_text());
    }
}
