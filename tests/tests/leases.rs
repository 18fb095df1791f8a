//! Leases on the host: every grant is one, `bpftoken leases` lists them,
//! and every refusal of `bpftoken revoke` (by id, `--lease`, `--uid`,
//! `--all`) says exactly why. This project's hosts refuse BPF LSM programs
//! (docs/design.md, "BPF LSM on this project's hosts"), so leases here are
//! `not_enforced` and revocation answers with its typed refusal; expiry
//! and revocation that take effect run in the kernel matrix VM
//! (`tests/vm`: expiry, revoke-lease, revoke-uid, revoke-libbpf-scope).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "leases"
users = ["bpftk-alice", "bpftk-bob"]
cmds = ["map_create"]
maps = ["array"]
"#;

/// `bpftoken run --fd-only -- probe wait-try FILE map:array` as `user`,
/// read up to its "waiting" line: it holds its lease until FILE exists.
struct Holder {
    child: Child,
    /// Kept open: the probe writes again once released.
    out: BufReader<std::process::ChildStdout>,
    lines: Vec<String>,
}

impl Holder {
    fn start(env: &Env, d: &TestDaemon, user: &User, go: &std::path::Path) -> Holder {
        let mut c = as_user(user, env.bin("bpftoken"));
        c.arg("--socket").arg(&d.socket).args(["run", "--fd-only", "--"]).arg(env.bin("bpftoken-probe"));
        c.arg("wait-try").arg(go).arg("map:array").stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = c.spawn().expect("spawn bpftoken");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).expect("read") == 0 {
                break;
            }
            let line = line.trim_end().to_owned();
            let done = line == "waiting";
            lines.push(line);
            if done {
                break;
            }
        }
        assert_eq!(lines.last().map(String::as_str), Some("waiting"), "{lines:?}");
        Holder { child, out, lines }
    }

    fn lease(&self) -> String {
        self.lines.iter().find_map(|l| l.strip_prefix("lease ")).expect("lease line").to_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reason in "unavailable: REASON".
fn unavailable(d: &TestDaemon) -> Option<String> {
    d.enforcement().strip_prefix("unavailable: ").map(str::to_owned)
}

#[test]
fn every_grant_is_a_lease_its_owner_and_root_can_list() {
    let Some(env) = setup("every_grant_is_a_lease_its_owner_and_root_can_list") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let Some(_) = unavailable(&d) else { return };
    let (alice, bob, eve) = (user(ALICE), user(BOB), user(EVE));
    let go = d.dir.join("go");
    let a = Holder::start(&env, &d, &alice, &go);
    let b = Holder::start(&env, &d, &bob, &go);
    assert_eq!(a.lines, ["lease 1", "map:array ok", "waiting"]);
    assert_eq!(b.lines, ["lease 2", "map:array ok", "waiting"]);
    let header = " LEASE     UID  MODE                  SCOPE  COVERS          STATE         EXPIRES       BOUND TO";
    // Each user sees their own; the scope is the token's user namespace.
    let fields = |o: &std::process::Output| -> Vec<Vec<String>> {
        assert!(o.status.success(), "{}", stderr(o));
        let out = stdout(o);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(header), "{out}");
        lines.map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
    };
    let rows = fields(&d.bpftoken(&env, &alice, &["leases"]));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row: Vec<&str> = rows[0].iter().map(String::as_str).collect();
    let alice_uid = alice.uid.to_string();
    assert_eq!(
        [row[0], row[1], row[2], row[4], row[5], row[6], row[7]],
        ["1", &alice_uid, "owner", "token", "not_enforced", "never", "-"]
    );
    assert!(row[3].parse::<u64>().is_ok_and(|s| s > 0), "{row:?}");
    let rows = fields(&d.bpftoken(&env, &bob, &["leases"]));
    assert_eq!(rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["2"]);
    // Root sees everyone's.
    let root = User { name: "root".into(), uid: 0, gid: 0 };
    let rows = fields(&d.bpftoken(&env, &root, &["leases"]));
    assert_eq!(
        rows.iter().map(|r| (r[0].as_str(), r[1].clone())).collect::<Vec<_>>(),
        [("1", alice.uid.to_string()), ("2", bob.uid.to_string())]
    );
    // Outside the policy: none.
    let o = d.bpftoken(&env, &eve, &["leases"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "no leases\n");
    // Audit: the grant names its lease.
    let log = d.wait_for_log(" lease=2 ");
    assert!(log.lines().any(|l| l.contains("decision=\"granted\"") && l.contains(" lease=1 ")), "{log}");
    drop((a, b));
}

#[test]
fn revocation_refusals_say_exactly_why() {
    let Some(env) = setup("revocation_refusals_say_exactly_why") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let Some(reason) = unavailable(&d) else { return };
    let (alice, bob) = (user(ALICE), user(BOB));
    let a = Holder::start(&env, &d, &alice, &d.dir.join("go"));
    let id = a.lease();
    assert_eq!(id, "1");

    // Unknown lease.
    let o = d.bpftoken(&env, &alice, &["revoke", "999"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "bpftoken: refused: no lease 999: it never existed, or its tokens are gone and it was forgotten \
         (unknown_lease)\n"
    );
    // Someone else's lease, by id and by uid, and all of them.
    let o = d.bpftoken(&env, &bob, &["revoke", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: lease 1 belongs to uid {}, not to you (uid {}); only root may revoke it \
             (not_your_lease)\n",
            alice.uid, bob.uid
        )
    );
    let o = d.bpftoken(&env, &bob, &["revoke", "--uid", &alice.uid.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: uid {} may revoke only its own leases, not those of uid {} (not_your_lease)\n",
            bob.uid, alice.uid
        )
    );
    let o = d.bpftoken(&env, &bob, &["revoke", "--all"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: only root may revoke every lease; uid {} may revoke its own (not_your_lease)\n",
            bob.uid
        )
    );
    // Its owner and root may, but without the enforcer nothing can stop
    // the token: said, never pretended.
    let unavailable = format!(
        "refused: cannot revoke: enforcement is unavailable: {reason}; tokens already handed out keep working \
         (revocation_unavailable)\n"
    );
    let o = d.bpftoken(&env, &alice, &["revoke", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), format!("bpftoken: {unavailable}"));
    let root = User { name: "root".into(), uid: 0, gid: 0 };
    for args in [&["revoke", "--lease", "1"][..], &["revoke", "--uid", &alice.uid.to_string()], &["revoke", "--all"]] {
        let o = d.bpftoken(&env, &root, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&o), format!("bpftoken: {unavailable}"), "{args:?}");
    }
    // Each refusal is one audit event; the lease is still listed.
    let log = d.wait_for_log("code=\"revocation_unavailable\"");
    assert_eq!(log.matches("code=\"not_your_lease\"").count(), 3, "{log}");
    assert_eq!(log.matches("code=\"unknown_lease\"").count(), 1, "{log}");
    let o = d.bpftoken(&env, &alice, &["leases"]);
    assert!(stdout(&o).lines().nth(1).is_some_and(|l| l.trim_start().starts_with("1 ")), "{}", stdout(&o));
    // The token still works: nothing was revoked.
    std::fs::write(d.dir.join("go"), b"").unwrap();
    let mut a = a;
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a.out, &mut rest).unwrap();
    assert_eq!(rest, "map:array ok\n");
    assert!(a.child.wait().unwrap().success());
}

#[test]
fn a_ttl_asked_for_is_refused_where_it_cannot_be_enforced() {
    let Some(env) = setup("a_ttl_asked_for_is_refused_where_it_cannot_be_enforced") else { return };
    // Even where the policy would mint unenforced ttls: the caller asked.
    let d = TestDaemon::start(&env, &format!("require_enforcement = false\n{POLICY}"), &[]);
    let Some(reason) = unavailable(&d) else { return };
    let alice = user(ALICE);
    for args in [&["run", "--ttl", "60", "--", "true"][..], &["run", "--fd-only", "--ttl", "60", "--", "true"]] {
        let o = d.bpftoken(&env, &alice, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&o),
            format!(
                "bpftoken: refused: you asked for a lease of 60 s, which this daemon cannot enforce: enforcement \
                 is unavailable: {reason} (not_enforceable)\n"
            )
        );
    }
    // Out of range: a usage error before anything is sent.
    let o = d.bpftoken(&env, &alice, &["run", "--ttl", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid value '0' for '--ttl <SECONDS>': 0 is not in 1..=604800"), "{}", stderr(&o));
    let o = d.bpftoken(&env, &alice, &["leases"]);
    assert_eq!(stdout(&o), "no leases\n");
}

/// `bpftoken-probe storm` as `user`: `connections` connections, each
/// minting `mints` times in a loop on its own thread; each grant is a lease.
fn storm(env: &Env, d: &TestDaemon, user: &User, connections: usize, mints: usize) {
    let mut c = as_user(user, env.bin("bpftoken-probe"));
    c.args(["storm", d.socket.to_str().unwrap(), &connections.to_string(), &mints.to_string()]);
    let o = output(c);
    let out = stdout(&o);
    assert!(out.contains("\nerrors 0\n"), "{out}{}", stderr(&o));
    assert!(out.ends_with(&format!("\nminted {}\n", connections * mints)), "{out}{}", stderr(&o));
}

/// `bpftoken leases` as `user`: the rows' (id, uid), and the lines after
/// the table.
fn listed(env: &Env, d: &TestDaemon, user: &User) -> (Vec<(u64, u32)>, Vec<String>) {
    let o = d.bpftoken(env, user, &["leases"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert!(lines.next().is_some_and(|h| h.trim_start().starts_with("LEASE ")), "{out}");
    let (mut rows, mut rest) = (Vec::new(), Vec::new());
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match (fields.first().and_then(|f| f.parse().ok()), fields.get(1).and_then(|f| f.parse().ok())) {
            (Some(id), Some(uid)) if rest.is_empty() => rows.push((id, uid)),
            _ => rest.push(line.to_owned()),
        }
    }
    (rows, rest)
}

/// `bpftoken leases --json` as `user`, parsed.
fn listed_json(env: &Env, d: &TestDaemon, user: &User) -> serde_json::Value {
    let o = d.bpftoken(env, user, &["leases", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
    assert_eq!(v["schema"], "bpftoken.leases/1");
    v
}

fn json_ids(v: &serde_json::Value, uid: u32) -> Vec<u64> {
    let leases = v["leases"].as_array().expect("leases");
    assert!(leases.iter().all(|l| l["uid"] == uid && l["state"] == "not_enforced"), "{:?}", leases.first());
    leases.iter().map(|l| l["id"].as_u64().expect("id")).collect()
}

#[test]
fn ten_thousand_unenforced_leases_are_listed_whole_and_beyond_that_the_oldest_are_forgotten() {
    let test = "ten_thousand_unenforced_leases_are_listed_whole_and_beyond_that_the_oldest_are_forgotten";
    let Some(env) = setup(test) else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    if unavailable(&d).is_none() {
        // Enforced leases end with their tokens: nothing to bound.
        eprintln!("SKIPPED {test}: the enforcer runs here, so leases are not kept past their tokens");
        return;
    }
    let (alice, bob) = (user(ALICE), user(BOB));
    let root = User { name: "root".into(), uid: 0, gid: 0 };
    let started = std::time::Instant::now();
    storm(&env, &d, &alice, 4, 2500);
    eprintln!("10,000 leases in {:?}", started.elapsed());

    // Root lists all 10,000 (one answer holds about 3,000), text and JSON.
    let (rows, rest) = listed(&env, &d, &root);
    assert_eq!(rows, (1..=10_000).map(|id| (id, alice.uid)).collect::<Vec<_>>());
    assert_eq!(rest, Vec::<String>::new());
    let v = listed_json(&env, &d, &root);
    assert_eq!(json_ids(&v, alice.uid), (1..=10_000).collect::<Vec<_>>());
    assert_eq!(v["forgotten"], serde_json::json!([]));
    // A client older than paged listings is told why it gets none.
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    let request = bpftoken_proto::Request::new(bpftoken_proto::message::RequestBody::Leases);
    std::io::Write::write_all(&mut s, &bpftoken_proto::codec::encode_request(&request).unwrap()).unwrap();
    let mut header = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut header).unwrap();
    let mut payload = vec![0u8; bpftoken_proto::codec::payload_len(header).unwrap()];
    std::io::Read::read_exact(&mut s, &mut payload).unwrap();
    let refusal = bpftoken_proto::Refusal::new(
        bpftoken_proto::RefusalCode::AnswerTooLarge,
        "10000 leases do not fit in one answer, and this client asks for them in one (it is older than paged \
         listings): upgrade bpftoken, which lists them page by page",
    );
    assert_eq!(bpftoken_proto::codec::decode_response(&payload), Ok(bpftoken_proto::Response::Refused(refusal)));

    // Each user sees their own only.
    storm(&env, &d, &bob, 1, 3);
    let (rows, rest) = listed(&env, &d, &bob);
    assert_eq!((rows, rest), ((10_001..=10_003).map(|id| (id, bob.uid)).collect(), vec![]));
    assert_eq!(json_ids(&listed_json(&env, &d, &alice), alice.uid).len(), 10_000);

    // Past alice's bound her oldest are forgotten, and said to be.
    storm(&env, &d, &alice, 1, 5);
    let (rows, rest) = listed(&env, &d, &alice);
    let ids: Vec<u64> = (6..=10_000).chain(10_004..=10_008).collect();
    assert_eq!(rows, ids.iter().map(|id| (*id, alice.uid)).collect::<Vec<_>>());
    let forgotten = format!(
        "forgotten: 5 older unenforced lease(s) of uid {}, beyond what the daemon lists; their tokens still work",
        alice.uid
    );
    assert_eq!(rest, std::slice::from_ref(&forgotten));
    let v = listed_json(&env, &d, &root);
    assert_eq!(v["leases"].as_array().map(Vec::len), Some(10_003));
    assert_eq!(v["forgotten"], serde_json::json!([{"uid": alice.uid, "count": 5}]));
    assert_eq!(listed(&env, &d, &bob).1, Vec::<String>::new(), "bob lost nothing");
    let (_, rest) = listed(&env, &d, &root);
    assert_eq!(rest, [forgotten]);
    // Audited: the first at once, the rest within a sweep (5 s).
    let line = |count: u64, total: u64| {
        format!(
            "forgot {count} older unenforced lease(s) of uid {} ({total} in all): the daemon lists at most 10000 \
             unenforced leases per uid and 65536 in all; their tokens still work, but they are no longer listed",
            alice.uid
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    let log = loop {
        let log = d.log_text();
        if log.contains(&line(4, 5)) || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("decision=\"forgotten\"")).collect();
    assert_eq!(audit.len(), 2, "{log}");
    assert!(audit[0].contains(&line(1, 1)) && audit[1].contains(&line(4, 5)), "{audit:#?}");
    assert!(audit.iter().all(|l| l.contains("bpftokend::audit")), "{audit:#?}");
}
