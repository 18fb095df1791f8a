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
