//! The policy's decisions and checks: matching, deny, limits, identity,
//! tracing targets, and properties over random rules. Error messages of
//! each kind are in `errors`, the file checks in `files`, tracing targets in
//! `tracing`.

use super::*;
use crate::btf::KernelNames;
use bpftoken_proto::delegation::{parse_list, Kind, ANY};
use proptest::prelude::*;

struct FakeNames;

impl NameResolver for FakeNames {
    fn uid_of(&self, user: &str) -> Option<u32> {
        match user {
            "alice" => Some(1000),
            "bob" => Some(1001),
            "nobody" => Some(65534),
            _ => None,
        }
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        match group {
            "bpf-dev" => Some(2000),
            "nogroup" => Some(65534),
            _ => None,
        }
    }
}

fn parse(text: &str) -> Result<Policy, PolicyErrors> {
    Policy::parse(text, Path::new("/etc/bpftokend/policy.toml"), &FakeNames)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer { uid, gid, groups: groups.to_vec(), ..Peer::default() }
}

const EXAMPLE: &str = r#"
[[allow]]
name = "alice-dev"
users = ["alice"]
cmds = ["map_create", "prog_load", "btf_load"]
maps = ["array", "hash", "ringbuf"]
progs = ["socket_filter", "kprobe"]
attachs = ["cgroup_inet_ingress"]

[[allow]]
groups = ["bpf-dev"]
cmds = ["map_create"]
maps = ["queue"]
"#;

fn m(kind: Kind, list: &str) -> u64 {
    parse_list(kind, list).unwrap()
}

#[test]
fn parses_the_documented_shape() {
    let p = parse(EXAMPLE).unwrap();
    assert_eq!(p.rules().len(), 2);
    let r = &p.rules()[0];
    assert_eq!(r.label, "alice-dev");
    assert_eq!(r.line, 2);
    assert_eq!(r.matcher.uids, Some(IdSet { ids: vec![1000], ranges: vec![] }));
    assert_eq!(r.matcher.gids, None);
    assert_eq!(r.grant.cmds, m(Kind::Cmd, "map_create,prog_load,btf_load"));
    assert_eq!(r.grant.attachs, 1);
    assert_eq!(p.rules()[1].label, "allow[1]");
    assert_eq!(p.rules()[1].matcher.gids, Some(IdSet { ids: vec![2000], ranges: vec![] }));
}

#[test]
fn default_deny_names_reason_and_file() {
    let p = parse(EXAMPLE).unwrap();
    let d = p.decide(&peer(1001, 1001, &[]), &MintRequest::default());
    assert_eq!(
        d,
        Decision::Refuse {
            code: RefusalCode::NotInPolicy,
            message: "no rule in /etc/bpftokend/policy.toml allows uid 1001 (gid 1001)".into(),
            rules: vec![],
        }
    );
}

#[test]
fn grant_is_union_of_matching_rules() {
    let p = parse(EXAMPLE).unwrap();
    // alice in bpf-dev (supplementary): both rules
    let Decision::Grant { delegation, rules, .. } = p.decide(&peer(1000, 1000, &[2000]), &MintRequest::default())
    else {
        panic!("expected a grant")
    };
    assert_eq!(rules, vec!["alice-dev", "allow[1]"]);
    assert_eq!(delegation.maps, m(Kind::Map, "array,hash,ringbuf,queue"));
    // bob via primary group
    let Decision::Grant { delegation, .. } = p.decide(&peer(1001, 2000, &[]), &MintRequest::default()) else {
        panic!("expected a grant")
    };
    assert_eq!(delegation, Delegation { cmds: 1, maps: m(Kind::Map, "queue"), progs: 0, attachs: 0 });
}

#[test]
fn narrowing_is_honoured_and_widening_refused() {
    let p = parse(EXAMPLE).unwrap();
    let alice = peer(1000, 1000, &[]);
    let narrow = MintRequest { maps: Some(m(Kind::Map, "array")), ..Default::default() };
    let Decision::Grant { delegation, .. } = p.decide(&alice, &narrow) else { panic!() };
    assert_eq!(delegation.maps, m(Kind::Map, "array"));
    assert_eq!(delegation.progs, m(Kind::Prog, "socket_filter,kprobe"));

    let wide = MintRequest { progs: Some(m(Kind::Prog, "xdp,kprobe")), ..Default::default() };
    let Decision::Refuse { code, message, .. } = p.decide(&alice, &wide) else { panic!() };
    assert_eq!(code, RefusalCode::NotGranted);
    assert_eq!(
        message,
        "program type \"xdp\" is not granted to uid 1000 by /etc/bpftokend/policy.toml \
         (granted program types: socket_filter, kprobe)"
    );
}

#[test]
fn asking_for_nothing_is_refused() {
    let p = parse(EXAMPLE).unwrap();
    let none = MintRequest { cmds: Some(0), maps: Some(0), progs: Some(0), attachs: Some(0) };
    let Decision::Refuse { code, .. } = p.decide(&peer(1000, 1000, &[]), &none) else { panic!() };
    assert_eq!(code, RefusalCode::EmptyGrant);
}

#[test]
fn sentinel_peers_never_match() {
    let p = parse("[[allow]]\ngids = [0]\ncmds = [\"any\"]\n").unwrap();
    for (uid, gid) in [(65534, 0), (u32::MAX, 0), (1000, 65534), (1000, u32::MAX)] {
        let Decision::Refuse { code, .. } = p.decide(&peer(uid, gid, &[0]), &MintRequest::default()) else {
            panic!("{uid}/{gid} matched")
        };
        assert_eq!(code, RefusalCode::UnmappedPeer);
    }
}

#[test]
fn all_given_conditions_must_hold() {
    let p = parse("[[allow]]\nusers = [\"alice\"]\ngroups = [\"bpf-dev\"]\ncmds = [\"any\"]\n").unwrap();
    assert!(matches!(p.decide(&peer(1000, 1000, &[]), &MintRequest::default()), Decision::Refuse { .. }));
    assert!(matches!(p.decide(&peer(1001, 2000, &[]), &MintRequest::default()), Decision::Refuse { .. }));
    assert!(matches!(p.decide(&peer(1000, 1000, &[2000]), &MintRequest::default()), Decision::Grant { .. }));
}

#[test]
fn any_grants_every_bit() {
    let p = parse("[[allow]]\nuids = [1000]\ncmds = [\"any\"]\n").unwrap();
    assert_eq!(p.rules()[0].grant.cmds, ANY);
}

mod errors;
mod files;
mod tracing;

// ---- deny rules, ranges, executables, cgroups, limits ----

const LAYERED: &str = r#"
[[allow]]
name = "devs"
uid_ranges = [[1000, 1999]]
cmds = ["map_create", "prog_load"]
maps = ["hash", "array", "ringbuf"]
progs = ["kprobe", "xdp"]

[[allow]]
name = "agent"
executables = ["/usr/sbin/agent"]
cgroups = ["/system.slice/agent.service"]
uids = [0]
cmds = ["map_create"]
maps = ["lru_hash"]
mints_per_minute = 30

[[deny]]
name = "no-xdp-for-bob"
users = ["bob"]
progs = ["xdp"]
"#;

#[test]
fn deny_beats_allow_and_says_so() {
    let p = parse(LAYERED).unwrap();
    let bob = peer(1001, 1001, &[]);
    let eff = p.effective(&bob);
    assert_eq!(eff.allowed_by, vec!["devs"]);
    assert_eq!(eff.denied_by, vec!["no-xdp-for-bob"]);
    assert_eq!(eff.grant.progs, m(Kind::Prog, "kprobe"));
    let want_xdp = MintRequest { progs: Some(m(Kind::Prog, "xdp")), ..Default::default() };
    let Decision::Refuse { code, message, rules } = p.decide(&bob, &want_xdp) else { panic!() };
    assert_eq!(code, RefusalCode::NotGranted);
    assert_eq!(
        message,
        "program type \"xdp\" is denied to uid 1001 by /etc/bpftokend/policy.toml (rule no-xdp-for-bob)"
    );
    assert_eq!(rules, vec!["devs", "no-xdp-for-bob"]);
    // alice (also in the range) keeps xdp
    let Decision::Grant { delegation, .. } = p.decide(&peer(1000, 1000, &[]), &want_xdp) else { panic!() };
    assert_eq!(delegation.progs, m(Kind::Prog, "xdp"));
}

#[test]
fn ranges_bound_both_ends() {
    let p = parse(LAYERED).unwrap();
    assert!(matches!(p.decide(&peer(1999, 1, &[]), &MintRequest::default()), Decision::Grant { .. }));
    assert!(matches!(p.decide(&peer(2000, 1, &[]), &MintRequest::default()), Decision::Refuse { .. }));
    assert!(matches!(p.decide(&peer(999, 1, &[]), &MintRequest::default()), Decision::Refuse { .. }));
}

#[test]
fn executable_and_cgroup_must_both_hold() {
    let p = parse(LAYERED).unwrap();
    let agent = |exe: &str, cgroup: &str| Peer {
        exe: Some(PathBuf::from(exe)),
        cgroup: Some(cgroup.to_owned()),
        ..peer(0, 0, &[])
    };
    let Decision::Grant { limits, .. } =
        p.decide(&agent("/usr/sbin/agent", "/system.slice/agent.service"), &MintRequest::default())
    else {
        panic!()
    };
    assert_eq!(limits, vec![RateLimit { rule: "agent".into(), per_minute: 30 }]);
    // below the cgroup: fine; a sibling whose name merely starts the same: no
    assert!(matches!(
        p.decide(&agent("/usr/sbin/agent", "/system.slice/agent.service/sub"), &MintRequest::default()),
        Decision::Grant { .. }
    ));
    for (exe, cg) in [
        ("/usr/sbin/agent", "/system.slice/agent.service2"),
        ("/tmp/agent", "/system.slice/agent.service"),
        ("/usr/sbin/agent (deleted)", "/system.slice/agent.service"),
    ] {
        assert!(matches!(p.decide(&agent(exe, cg), &MintRequest::default()), Decision::Refuse { .. }), "{exe} {cg}");
    }
    // unknown exe never matches an executable rule
    let unknown = Peer { cgroup: Some("/system.slice/agent.service".into()), ..peer(0, 0, &[]) };
    assert!(matches!(p.decide(&unknown, &MintRequest::default()), Decision::Refuse { .. }));
}

#[test]
fn everyone_with_any_needs_acknowledgement() {
    let text = "[[allow]]\neveryone = true\ncmds = [\"any\"]\n";
    assert_eq!(
        err(text),
        "/etc/bpftokend/policy.toml:1:1: rule \"allow[0]\" grants `any` cmds to everyone; if that is really \
         meant, set `acknowledge_broad_grants = true` at the top of the main policy file"
    );
    let p = parse(&format!("acknowledge_broad_grants = true\n{text}")).unwrap();
    assert_eq!(
        p.warnings(),
        ["/etc/bpftokend/policy.toml:2: rule \"allow[0]\" grants `any` cmds to everyone (acknowledged)"]
    );
    assert!(matches!(p.decide(&peer(4242, 4242, &[]), &MintRequest::default()), Decision::Grant { .. }));
    // narrower grants to everyone need no acknowledgement
    assert!(parse("[[allow]]\neveryone = true\ncmds = [\"map_create\"]\n").unwrap().warnings().is_empty());
}

#[test]
fn errors_of_the_new_keys() {
    assert_eq!(
        err("[[allow]]\nuid_ranges = [[1000]]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:15: a uid range is [first, last], e.g. [1000, 1999]"
    );
    assert_eq!(
        err("[[allow]]\nuid_ranges = [[2000, 1000]]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:15: uid range [2000, 1000] is empty"
    );
    assert_eq!(
        err("[[allow]]\ngid_ranges = [[1, 70000]]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:15: gid range [1, 70000] contains 65534, the kernel's overflow id; split it"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nexecutables = [\"bin/agent\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:16: executable \"bin/agent\" must be an absolute path without . or .."
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\ncgroups = [\"system.slice\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:12: cgroup \"system.slice\" must be an absolute cgroup v2 path such as \
         /system.slice/agent.service"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nmints_per_minute = 0\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:20: mints_per_minute must be at least 1, not 0"
    );
    assert_eq!(
        err("[[deny]]\nuids = [1]\nmints_per_minute = 5\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `mints_per_minute` limits an allow rule; a deny rule grants nothing to limit"
    );
    assert_eq!(
        err("[[allow]]\neveryone = true\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n"),
        "/etc/bpftokend/policy.toml:2:12: `everyone = true` cannot be combined with users, groups or ids"
    );
    assert_eq!(
        err("[[deny]]\nusers = [\"alice\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: rule \"deny[0]\" removes nothing: give `cmds`, `maps`, `progs`, `attachs`, `tracepoints`, `kprobes` or `uprobes`"
    );
}

#[test]
fn names_come_from_the_given_kernel_tables() {
    // A kernel that knows a map type the built-in tables do not.
    let text = "[[allow]]\nuids = [1]\nmaps = [\"hash\"]\n";
    let names = KernelNames::builtin();
    assert!(Policy::parse_with(text, Path::new("/p"), &FakeNames, &names).is_ok());
    assert_eq!(
        Policy::parse_with("[[allow]]\nuids = [1]\nmaps = [\"hashh\"]\n", Path::new("/p"), &FakeNames, &names)
            .unwrap_err()
            .to_string(),
        "/p:3:9: unknown map type \"hashh\" (did you mean \"hash\"?)"
    );
}

// ---- properties ----

fn arb_delegation() -> impl Strategy<Value = Delegation> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(cmds, maps, progs, attachs)| Delegation {
        cmds,
        maps,
        progs,
        attachs,
    })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::of(proptest::collection::vec(0u32..4, 1..3)),
        proptest::option::of(proptest::collection::vec(10u32..14, 1..3)),
        arb_delegation(),
    )
        .prop_filter("a rule matches someone", |(u, g, _)| u.is_some() || g.is_some())
        .prop_map(|(uids, gids, grant)| Rule {
            label: "r".into(),
            file: "/p".into(),
            line: 1,
            effect: Effect::Allow,
            matcher: Matcher {
                uids: uids.map(|ids| IdSet { ids, ranges: vec![] }),
                gids: gids.map(|ids| IdSet { ids, ranges: vec![] }),
                ..Matcher::default()
            },
            grant,
            mints_per_minute: None,
            max_live_tokens: None,
            ttl: None,
            identity: None,
            trace: trace::TracePatterns::default(),
            bind: Bind::default(),
            learn: false,
        })
}

fn arb_request() -> impl Strategy<Value = MintRequest> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(cmds, maps, progs, attachs)| MintRequest { cmds, maps, progs, attachs })
}

fn deny_of(rule: Rule) -> Rule {
    Rule { effect: Effect::Deny, ..rule }
}

proptest! {
    #[test]
    fn never_grants_outside_allows_minus_denies(
        rules in proptest::collection::vec(arb_rule(), 0..5),
        denies in proptest::collection::vec(arb_rule(), 0..3),
        uid in 0u32..4, gid in 10u32..14, extra in proptest::collection::vec(10u32..14, 0..2),
        req in arb_request(),
    ) {
        let policy = Policy { path: "/p".into(), dropins: vec![], allow: rules, deny: denies.into_iter().map(deny_of).collect(), warnings: vec![], require_enforcement: true };
        let peer = Peer { uid, gid, groups: extra, ..Peer::default() };
        let union = policy.allow.iter().filter(|r| r.matcher.matches(&peer))
            .fold(Delegation::NONE, |a, r| a.union(r.grant));
        let denied = policy.deny.iter().filter(|r| r.matcher.matches(&peer))
            .fold(Delegation::NONE, |a, r| a.union(r.grant));
        let allowed = union.minus(denied);
        if let Decision::Grant { delegation, .. } = policy.decide(&peer, &req) {
            prop_assert!(delegation.is_subset_of(&allowed));
            prop_assert!(delegation.intersect(denied).is_empty());
            // what was asked for is exactly what is granted
            prop_assert_eq!(delegation, req.resolve(&allowed));
        }
    }

    #[test]
    fn narrowing_never_widens(
        rules in proptest::collection::vec(arb_rule(), 1..5),
        uid in 0u32..4, gid in 10u32..14,
        req in arb_request(), cut in arb_delegation(),
    ) {
        let policy = Policy { path: "/p".into(), dropins: vec![], allow: rules, deny: vec![], warnings: vec![], require_enforcement: true };
        let peer = Peer { uid, gid, ..Peer::default() };
        if let Decision::Grant { delegation: wide, .. } = policy.decide(&peer, &req) {
            let narrower = wide.intersect(cut);
            let req2 = MintRequest {
                cmds: Some(narrower.cmds), maps: Some(narrower.maps),
                progs: Some(narrower.progs), attachs: Some(narrower.attachs),
            };
            match policy.decide(&peer, &req2) {
                Decision::Grant { delegation, .. } => prop_assert!(delegation.is_subset_of(&wide)),
                Decision::Refuse { code, .. } => prop_assert_eq!(code, RefusalCode::EmptyGrant),
            }
        }
    }
}

#[test]
fn ttl_and_require_enforcement() {
    // Defaults: no ttl, enforcement required.
    let p = parse("[[allow]]\nuids = [1000]\ncmds = [\"map_create\"]\n").unwrap();
    assert!(p.require_enforcement());
    assert_eq!(p.rules()[0].ttl, None);
    let p = parse("require_enforcement = false\n[[allow]]\nuids = [1000]\nttl = 604800\ncmds = [\"map_create\"]\n")
        .unwrap();
    assert!(!p.require_enforcement());
    assert_eq!(p.rules()[0].ttl, Some(MAX_TTL_SECS));
    // The shortest ttl of the matching allow rules bounds the grant.
    let p = parse(
        "[[allow]]\nname = \"long\"\nuids = [1000]\nttl = 3600\ncmds = [\"map_create\"]\n\
         [[allow]]\nname = \"short\"\nuids = [1000]\nttl = 60\nmaps = [\"array\"]\n\
         [[allow]]\nname = \"none\"\nuids = [1000]\nprogs = [\"xdp\"]\n",
    )
    .unwrap();
    let alice = peer(1000, 1000, &[]);
    let want = Some(Ttl { rule: "short".to_owned(), secs: 60 });
    assert_eq!(p.effective(&alice).ttl, want);
    match p.decide(&alice, &MintRequest::default()) {
        Decision::Grant { ttl, .. } => assert_eq!(ttl, want),
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_live_tokens_takes_the_strictest_rule_and_errors_are_located() {
    let p = parse(
        "[[allow]]\nname = \"wide\"\nuids = [1000]\nmax_live_tokens = 100\ncmds = [\"map_create\"]\n\
         [[allow]]\nname = \"tight\"\nuids = [1000]\nmax_live_tokens = 2\nmaps = [\"array\"]\n",
    )
    .unwrap();
    let want = Some(LiveLimit { rule: "tight".to_owned(), max: 2 });
    assert_eq!(p.effective(&peer(1000, 1000, &[])).live_limit, want);
    match p.decide(&peer(1000, 1000, &[]), &MintRequest::default()) {
        Decision::Grant { live_limit, .. } => assert_eq!(live_limit, want),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err("[[allow]]\nuids = [1]\nmax_live_tokens = 0\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:19: max_live_tokens must be between 1 and 100000, not 0"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nmax_live_tokens = 100001\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:19: max_live_tokens must be between 1 and 100000, not 100001"
    );
    assert_eq!(
        err("[[deny]]\nuids = [1]\nmax_live_tokens = 5\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `max_live_tokens` limits an allow rule; a deny rule grants nothing to limit"
    );
}

#[test]
fn ttl_errors_are_located() {
    assert_eq!(
        err("[[allow]]\nuids = [1]\nttl = 0\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:7: ttl must be between 1 and 604800 seconds (7 days), not 0; \
         longer access is a new mint"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nttl = 604801\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:7: ttl must be between 1 and 604800 seconds (7 days), not 604801; \
         longer access is a new mint"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nttl = -5\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:7: ttl must be between 1 and 604800 seconds (7 days), not -5; \
         longer access is a new mint"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nttl = \"1h\"\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:7: invalid type: string \"1h\", expected i64"
    );
    assert_eq!(
        err("[[deny]]\nuids = [1]\nttl = 60\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `ttl` limits how long an allow rule's tokens work; a deny rule grants nothing"
    );
    assert_eq!(
        err("require_enforcement = \"yes\"\n[[allow]]\nuids = [1]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:23: invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn bind_takes_uid_and_cgroup_and_every_matching_rule_binds() {
    let p = parse("[[allow]]\nuids = [1000]\ncmds = [\"map_create\"]\n").unwrap();
    assert_eq!(p.rules()[0].bind, Bind::default());
    let p = parse(
        "[[allow]]\nname = \"u\"\nuids = [1000]\nbind = [\"uid\"]\ncmds = [\"map_create\"]\n\
         [[allow]]\nname = \"both\"\nuids = [1000]\nbind = [\"cgroup\", \"uid\"]\nmaps = [\"array\"]\n\
         [[allow]]\nname = \"other\"\nuids = [1001]\nbind = [\"cgroup\"]\nmaps = [\"array\"]\n",
    )
    .unwrap();
    assert_eq!(p.rules()[0].bind, Bind { uid: true, cgroup: false });
    assert_eq!(p.rules()[1].bind, Bind { uid: true, cgroup: true });
    let alice = Peer { uid: 1000, gid: 1000, ..Peer::default() };
    let want = Binding { uid: Some("u".into()), cgroup: Some("both".into()), ..Binding::default() };
    assert_eq!(p.effective(&alice).bind, want);
    match p.decide(&alice, &MintRequest::default()) {
        Decision::Grant { bind, .. } => assert_eq!(bind, want),
        other => panic!("{other:?}"),
    }
    let bob = Peer { uid: 1001, gid: 1001, ..Peer::default() };
    assert_eq!(p.effective(&bob).bind, Binding { uid: None, cgroup: Some("other".into()), ..Binding::default() });
}

#[test]
fn bind_errors_are_located() {
    assert_eq!(
        err("[[allow]]\nuids = [1]\nbind = [\"uid\", \"cgrup\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:16: unknown binding \"cgrup\" (valid: \"uid\", \"cgroup\")"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nbind = []\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:8: an empty `bind` binds nothing; give \"uid\", \"cgroup\" or both, or remove it"
    );
    assert_eq!(
        err("[[deny]]\nuids = [1]\nbind = [\"uid\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `bind` restricts who may use an allow rule's tokens; a deny rule grants nothing"
    );
    assert!(err("[[allow]]\nuids = [1]\nbind = \"uid\"\ncmds = [\"any\"]\n")
        .starts_with("/etc/bpftokend/policy.toml:3:8: invalid type: string \"uid\", expected a sequence"));
}

#[test]
fn learn_is_per_allow_rule_and_only_learn_rules_grant_a_learning_lease() {
    let p = parse(
        "[[allow]]\nname = \"plain\"\nuids = [1000, 1001]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n\
         [[allow]]\nname = \"learner\"\nuids = [1000]\nlearn = true\ncmds = [\"any\"]\nmaps = [\"any\"]\n",
    )
    .unwrap();
    assert!(!p.rules()[0].learn);
    assert!(p.rules()[1].learn);
    let alice = Peer { uid: 1000, gid: 1000, ..Peer::default() };
    match p.decide_learning(&alice, &MintRequest::default()) {
        Decision::Grant { delegation, rules, .. } => {
            assert_eq!(rules, vec!["learner".to_owned()]);
            assert_eq!(delegation.maps, delegation::ANY);
        }
        other => panic!("{other:?}"),
    }
    let bob = Peer { uid: 1001, gid: 1001, ..Peer::default() };
    assert_eq!(
        p.decide_learning(&bob, &MintRequest::default()),
        Decision::Refuse {
            code: RefusalCode::LearningNotAllowed,
            message: "no rule in /etc/bpftokend/policy.toml lets uid 1001 learn (matching rules: plain); \
                      an allow rule needs `learn = true`"
                .into(),
            rules: vec!["plain".into()],
        }
    );
    let eve = Peer { uid: 1002, gid: 1002, ..Peer::default() };
    match p.decide_learning(&eve, &MintRequest::default()) {
        Decision::Refuse { code, .. } => assert_eq!(code, RefusalCode::NotInPolicy),
        other => panic!("{other:?}"),
    }
}

#[test]
fn learn_errors_are_located() {
    assert_eq!(
        err("[[deny]]\nuids = [1]\nlearn = true\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `learn` lets users learn under an allow rule's grant; a deny rule grants nothing"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nlearn = \"yes\"\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:9: invalid type: string \"yes\", expected a boolean"
    );
}

#[test]
fn duplicate_rule_names_are_refused_with_both_lines() {
    let rule = |name: &str| format!("[[allow]]\nname = \"{name}\"\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n");
    let text = format!("{}\n{}", rule("devs"), rule("devs"));
    let e = parse(&text).unwrap_err();
    assert_eq!(
        e.render(),
        "/etc/bpftokend/policy.toml:7:8: rule name \"devs\" is used twice, at lines 1 and 6; audit events name \
         rules by it, so each name must be unique\n    name = \"devs\"\n           ^"
    );
    // Across allow and deny too: both name rules in audit events.
    let text = format!("{}\n[[deny]]\nname = \"devs\"\nusers = [\"alice\"]\nmaps = [\"hash\"]\n", rule("devs"));
    assert_eq!(
        err(&text),
        "/etc/bpftokend/policy.toml:7:8: rule name \"devs\" is used twice, at lines 1 and 6; audit events name \
         rules by it, so each name must be unique"
    );
    // A chosen name equal to an unnamed rule's label, before or after it.
    let unnamed = "[[allow]]\nusers = [\"alice\"]\ncmds = [\"map_create\"]\n";
    assert_eq!(
        err(&format!("{}\n{unnamed}", rule("allow[1]"))),
        "/etc/bpftokend/policy.toml:2:8: rule name \"allow[1]\" (line 1) is the label of the unnamed rule at line 6; \
         audit events name rules by it, so choose another name"
    );
    assert_eq!(
        err(&format!("{unnamed}\n{}", rule("allow[0]"))),
        "/etc/bpftokend/policy.toml:6:8: rule name \"allow[0]\" (line 5) is the label of the unnamed rule at line 1; \
         audit events name rules by it, so choose another name"
    );
    // Unnamed rules never collide, and distinct names are fine.
    assert!(parse(&format!("{unnamed}\n{unnamed}\n{}\n{}", rule("a"), rule("b"))).is_ok());
}

// ---- process identity (`executables`, `cgroups`) needs the enforcer ----

#[test]
fn identity_rules_are_refused_where_the_enforcer_cannot_run() {
    let p = parse(LAYERED).unwrap();
    // With the enforcer: loads.
    p.check_identity_enforcement(None).unwrap();
    let e = p.check_identity_enforcement(Some("the BPF LSM is not active (active LSMs: capability)")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/bpftokend/policy.toml:11:16: rule \"agent\" matches on `executables` and `cgroups`, which only the \
         enforcer can make a security boundary (any program of the same uid could otherwise borrow the grant), and \
         the enforcer cannot run here: the BPF LSM is not active (active LSMs: capability); enable the BPF LSM, or set \
         `enforce_identity = false` in the rule to accept the match as advisory (audited as claimed)"
    );
    // cgroups alone, pointed at.
    let text = "[[allow]]\nname = \"svc\"\nuids = [1]\ncgroups = [\"/system.slice/a.service\"]\ncmds = [\"any\"]\n";
    let e = parse(text).unwrap().check_identity_enforcement(Some("no BTF")).unwrap_err();
    assert!(e.to_string().starts_with("/etc/bpftokend/policy.toml:4:12: rule \"svc\" matches on `cgroups`, "), "{e}");
    // Advisory: loads without the enforcer.
    let advisory = LAYERED.replace("mints_per_minute = 30", "mints_per_minute = 30\nenforce_identity = false");
    parse(&advisory).unwrap().check_identity_enforcement(Some("no BTF")).unwrap();
    // Rules without identity conditions never need it.
    parse(EXAMPLE).unwrap().check_identity_enforcement(Some("no BTF")).unwrap();
}

#[test]
fn identity_conditions_bind_the_grant() {
    let p = parse(LAYERED).unwrap();
    let agent = Peer {
        exe: Some(PathBuf::from("/usr/sbin/agent")),
        cgroup: Some("/system.slice/agent.service".into()),
        ..peer(0, 0, &[])
    };
    let Decision::Grant { bind, .. } = p.decide(&agent, &MintRequest::default()) else { panic!() };
    assert_eq!(bind.exe.as_deref(), Some("agent"));
    assert_eq!(bind.identity_cgroup.as_deref(), Some("agent"));
    assert!(bind.binds_cgroup() && !bind.identity_advisory && bind.cgroup.is_none());
    // A grant from a rule without identity conditions is not bound.
    let Decision::Grant { bind, .. } = p.decide(&peer(1000, 1000, &[]), &MintRequest::default()) else { panic!() };
    assert!(bind.is_empty());
    let advisory = LAYERED.replace("mints_per_minute = 30", "mints_per_minute = 30\nenforce_identity = false");
    let Decision::Grant { bind, .. } = parse(&advisory).unwrap().decide(&agent, &MintRequest::default()) else {
        panic!()
    };
    assert!(bind.identity_advisory && bind.exe.is_some());
}

#[test]
fn identity_errors_are_located_and_exact() {
    assert_eq!(
        err("[[allow]]\nname = \"c\"\nuserns_owners = [\"alice\"]\nexecutables = [\"/usr/bin/agent\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:4:16: rule \"c\" combines `executables` with `userns_owners`: a caller in a user \
         namespace resolves paths in its own mount namespace, where it can put any program at an allowed path; split \
         the rule, or drop `executables` (containers are told apart by `userns_owners`)"
    );
    assert_eq!(
        err("[[allow]]\nname = \"x\"\nuids = [1]\nenforce_identity = false\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:4:20: rule \"x\" sets `enforce_identity` but has no `executables` or `cgroups` to \
         enforce"
    );
    assert_eq!(
        err("[[deny]]\nuids = [1]\nexecutables = [\"/a\"]\nenforce_identity = false\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:4:20: `enforce_identity` applies to an allow rule's `executables` and `cgroups`; a \
         deny rule's conditions only remove powers, so it needs no enforcement"
    );
}
