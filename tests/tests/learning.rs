//! `bpftoken learn`: only users with a `learn = true` rule may learn, and
//! learning needs the enforcer, whatever `require_enforcement` says. On
//! this project's hosts the kernel refuses BPF LSM programs, so the
//! learning itself is tested in the kernel matrix VM (capability `learn`).

use bpftoken_tests::*;

const LEARN_POLICY: &str = r#"
[[allow]]
name = "alice-learns"
users = ["bpftk-alice"]
cmds = ["any"]
maps = ["any"]
progs = ["any"]
attachs = ["any"]
learn = true

[[allow]]
name = "bob-plain"
users = ["bpftk-bob"]
cmds = ["map_create"]
maps = ["array"]
"#;

#[test]
fn a_user_without_a_learn_rule_is_refused() {
    let Some(env) = setup("a_user_without_a_learn_rule_is_refused") else { return };
    let d = TestDaemon::start(&env, LEARN_POLICY, &[]);
    let bob = user(BOB);
    let o = d.bpftoken(&env, &bob, &["learn", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: no rule in {} lets uid {} learn (matching rules: bob-plain); an allow rule needs \
             `learn = true` (learning_not_allowed)\n",
            d.policy.display(),
            bob.uid
        )
    );
    assert_eq!(stdout(&o), "");
    let log = d.wait_for_log("code=\"learning_not_allowed\"");
    assert_eq!(log.lines().filter(|l| l.contains("decision=")).count(), 1, "{log}");
    // Bob's ordinary grant is untouched.
    let o = d.bpftoken(&env, &bob, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn learning_is_refused_without_the_enforcer_whatever_require_enforcement_says() {
    let Some(env) = setup("learning_is_refused_without_the_enforcer_whatever_require_enforcement_says") else {
        return;
    };
    for policy in [LEARN_POLICY.to_owned(), format!("require_enforcement = false\n{LEARN_POLICY}")] {
        let d = TestDaemon::start(&env, &policy, &[]);
        let state = d.enforcement();
        let Some(reason) = state.strip_prefix("unavailable: ") else {
            eprintln!("enforcement runs here ({state}): the VM scenario learn covers it");
            return;
        };
        let alice = user(ALICE);
        let marker = d.dir.join("ran");
        let o = d.bpftoken(&env, &alice, &["learn", "--", "touch", marker.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_eq!(
            stderr(&o),
            format!(
                "bpftoken: refused: learning needs the enforcer, which records what the command uses: enforcement \
                 is unavailable: {reason} (learning_unavailable)\n"
            )
        );
        assert_eq!(stdout(&o), "");
        assert!(!marker.exists(), "the command must not run");
        let log = d.wait_for_log("code=\"learning_unavailable\"");
        assert_eq!(log.lines().filter(|l| l.contains("decision=")).count(), 1, "{log}");
    }
}

#[test]
fn learned_requests_are_refused_without_the_enforcer() {
    let Some(env) = setup("learned_requests_are_refused_without_the_enforcer") else { return };
    let d = TestDaemon::start(&env, LEARN_POLICY, &[]);
    let state = d.enforcement();
    let Some(reason) = state.strip_prefix("unavailable: ") else {
        eprintln!("enforcement runs here ({state}): the VM scenario learned-refusals covers the other refusals");
        return;
    };
    let (alice, bob) = (user(ALICE), user(BOB));
    // Lease 1: an ordinary grant of alice's (listed, not enforced here).
    let o = d.bpftoken(&env, &alice, &["run", "--fd-only", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let socket = d.socket.to_str().unwrap();
    // Whoever asks and whichever lease: without the enforcer nothing was
    // recorded, and the answer says why.
    for (who, id) in [(&alice, "1"), (&alice, "99999"), (&bob, "1")] {
        let mut c = as_user(who, env.bin("bpftoken-probe"));
        c.args(["learned", socket, id]);
        let o = output(c);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            stdout(&o),
            format!(
                "refused: learning needs the enforcer: enforcement is unavailable: {reason} (learning_unavailable)\n"
            ),
            "uid {} asking for lease {id}",
            who.uid
        );
    }
    // One audit event each (logged before the answer was sent).
    let log = d.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("code=\"learning_unavailable\"")).count(), 3, "{log}");
}

#[test]
fn learning_from_inside_a_user_namespace_is_refused_and_says_why() {
    let Some(env) = setup("learning_from_inside_a_user_namespace_is_refused_and_says_why") else { return };
    // Even a rule for alice's containers that sets `learn = true`: learning
    // needs a namespace and bpffs of its own, which container mode cannot
    // give.
    let policy = format!(
        "{LEARN_POLICY}\n[[allow]]\nname = \"alice-containers\"\nuserns_owners = [\"bpftk-alice\"]\ncmds = \
         [\"map_create\"]\nmaps = [\"array\"]\nlearn = true\n"
    );
    let d = TestDaemon::start(&env, &policy, &[]);
    let alice = user(ALICE);
    let marker = d.dir.join("ran");
    let mut c = as_user(&alice, "unshare");
    c.args(["--user", "--map-current-user", "--"])
        .arg(env.bin("bpftoken"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["learn", "--", "touch"])
        .arg(&marker);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: refused: learning is not offered to callers inside a user namespace: uid {0} calls from one \
             owned by uid {0}, such as a rootless container, whose tokens all share that namespace; a learning lease \
             records what the tokens of a user namespace and bpffs made for it alone are used for, so run `bpftoken \
             learn` outside the container (in the host's user namespace) (unsupported_peer)\n",
            alice.uid
        )
    );
    assert_eq!(stdout(&o), "");
    assert!(!marker.exists(), "the command must not run");
    let log = d.wait_for_log("code=\"unsupported_peer\"");
    assert_eq!(log.lines().filter(|l| l.contains("decision=")).count(), 1, "{log}");
}
