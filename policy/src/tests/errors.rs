//! One test per error kind, asserting the message and where it points.

use super::*;

#[test]
fn unknown_map_type_has_location_and_suggestion() {
    let text = "[[allow]]\nusers = [\"alice\"]\nmaps = [\"array\", \"ringbuff\"]\n";
    let e = parse(text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/bpftokend/policy.toml:3:18: unknown map type \"ringbuff\" (did you mean \"ringbuf\"?)"
    );
    assert_eq!(
        e.render(),
        "/etc/bpftokend/policy.toml:3:18: unknown map type \"ringbuff\" (did you mean \"ringbuf\"?)\n    \
         maps = [\"array\", \"ringbuff\"]\n                     ^"
    );
}

#[test]
fn unknown_names_in_each_set() {
    assert_eq!(
        err("[[allow]]\nuids = [1]\ncmds = [\"map_creat\"]\n"),
        "/etc/bpftokend/policy.toml:3:9: unknown command \"map_creat\" (did you mean \"map_create\"?)"
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nprogs = [\"wibble\"]\n"),
        "/etc/bpftokend/policy.toml:3:10: unknown program type \"wibble\""
    );
    assert_eq!(
        err("[[allow]]\nuids = [1]\nattachs = [\"xdpp\"]\n"),
        "/etc/bpftokend/policy.toml:3:12: unknown attach type \"xdpp\" (did you mean \"xdp\"?)"
    );
}

#[test]
fn unknown_key_is_refused() {
    assert_eq!(
        err("[[allow]]\nusers = [\"alice\"]\nmap = [\"hash\"]\n"),
        "/etc/bpftokend/policy.toml:3:1: unknown key `map` (did you mean `maps`?)"
    );
    assert_eq!(
        err("[[allow]]\nusers = [\"alice\"]\nwibble = [\"hash\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:1: unknown key `wibble`; a rule takes `name`, `everyone`, `users`, `groups`, \
         `uids`, `gids`, `uid_ranges`, `gid_ranges`, `executables`, `cgroups`, `userns_owners`, `mints_per_minute`, \
         `max_live_tokens`, `ttl`, `bind`, `enforce_identity`, `learn`, `cmds`, `maps`, `progs`, `attachs`, \
         `tracepoints`, `kprobes`, `uprobes`"
    );
    assert_eq!(
        err("[[alow]]\nuids = [1]\n"),
        "/etc/bpftokend/policy.toml:1:3: unknown key `alow` (did you mean `allow`?)"
    );
    assert_eq!(
        err("users = [\"alice\"]\n[[allow]]\nuids = [1]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: `users` is a rule key: put it inside an [[allow]] or [[deny]] table, under \
         its header"
    );
    assert_eq!(
        err("[allow]\nuids = [1]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:2: `allow` holds rules: write each one as a table under its own [[allow]] \
         header"
    );
}

#[test]
fn syntax_error_has_location() {
    assert_eq!(err("[[allow]]\nusers = [\"alice\"\n"), "/etc/bpftokend/policy.toml:3:1: invalid array, expected `]`");
}

#[test]
fn unknown_user_and_group() {
    assert_eq!(
        err("[[allow]]\nusers = [\"mallory\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:10: unknown user \"mallory\""
    );
    assert_eq!(
        err("[[allow]]\ngroups = [\"wheel\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:11: unknown group \"wheel\""
    );
}

#[test]
fn sentinel_and_invalid_ids_are_refused() {
    assert_eq!(
        err("[[allow]]\nuids = [-1]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:9: uid -1 is not a valid id (0..=2147483647)"
    );
    assert_eq!(
        err("[[allow]]\nuids = [4294967295]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:9: uid 4294967295 is not a valid id (0..=2147483647)"
    );
    assert_eq!(
        err("[[allow]]\ngids = [2147483649]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:9: gid 2147483649 is not a valid id (0..=2147483647)"
    );
    assert_eq!(
        err("[[allow]]\nuids = [65534]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:9: uid 65534, the kernel's overflow id for unmapped users: a policy \
         names it only with `acknowledge_broad_grants = true`, and even then no peer matches it (the daemon \
         refuses unmapped peers)"
    );
    assert_eq!(
        err("[[allow]]\nusers = [\"nobody\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:10: user \"nobody\" has uid 65534, the kernel's overflow id for \
         unmapped users: a policy names it only with `acknowledge_broad_grants = true`, and even then no peer \
         matches it (the daemon refuses unmapped peers)"
    );
}

#[test]
fn overflow_id_loads_only_when_acknowledged_and_never_matches() {
    let p = parse(
        "acknowledge_broad_grants = true\n[[allow]]\nusers = [\"nobody\"]\ncmds = [\"map_create\"]\n\
         [[allow]]\ngid_ranges = [[60000, 70000]]\ncmds = [\"map_create\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.warnings(),
        [
            "/etc/bpftokend/policy.toml:3: user \"nobody\" has uid 65534, the kernel's overflow id (acknowledged); \
             peers that show as 65534 are unmapped and are refused all the same",
            "/etc/bpftokend/policy.toml:6: gid range [60000, 70000] contains 65534, the kernel's overflow id \
             (acknowledged); peers that show as 65534 are unmapped and are refused all the same",
        ]
    );
    for (uid, gid) in [(65534, 1000), (1000, 65534)] {
        let Decision::Refuse { code, .. } = p.decide(&peer(uid, gid, &[]), &MintRequest::default()) else {
            panic!("uid {uid} gid {gid} must be refused");
        };
        assert_eq!(code, RefusalCode::UnmappedPeer);
    }
    // -1 stays out whatever is acknowledged.
    assert_eq!(
        err("acknowledge_broad_grants = true\n[[allow]]\nuids = [4294967295]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:3:9: uid 4294967295 is not a valid id (0..=2147483647)"
    );
}

#[test]
fn userns_owner_rules_match_only_container_peers() {
    let p = parse(
        "[[allow]]\nname = \"host\"\nusers = [\"alice\"]\ncmds = [\"map_create\"]\nmaps = [\"hash\"]\n\
         [[allow]]\nname = \"containers\"\nuserns_owners = [\"alice\"]\ncmds = [\"map_create\"]\nmaps = [\"array\"]\n",
    )
    .unwrap();
    let host = peer(1000, 1000, &[]);
    let in_container = Peer { userns_owner: Some(1000), ..peer(1000, 1000, &[]) };
    let in_bobs = Peer { userns_owner: Some(1001), ..peer(1000, 1000, &[]) };
    let grant = |peer: &Peer| p.effective(peer);
    assert_eq!(grant(&host).allowed_by, ["host"]);
    assert_eq!(grant(&host).grant.maps, parse_list(Kind::Map, "hash").unwrap());
    assert_eq!(grant(&in_container).allowed_by, ["containers"]);
    assert_eq!(grant(&in_container).grant.maps, parse_list(Kind::Map, "array").unwrap());
    let Decision::Refuse { code, .. } = p.decide(&in_bobs, &MintRequest::default()) else {
        panic!("a namespace owned by another uid must not match");
    };
    assert_eq!(code, RefusalCode::NotInPolicy);
    assert_eq!(
        err("[[allow]]\nuserns_owners = [\"mallory\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:18: unknown user \"mallory\""
    );
    assert_eq!(
        err("[[allow]]\nuserns_owners = []\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: rule \"allow[0]\" has an empty `userns_owners` list, which would match \
         nobody; remove it or name someone"
    );
}

#[test]
fn rules_that_match_or_grant_nothing_are_refused() {
    assert_eq!(
        err("[[allow]]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: rule \"allow[0]\" matches nobody: give `users`, `uids`, `uid_ranges`, \
         `groups`, `gids`, `gid_ranges` or `userns_owners` (or `everyone = true`)"
    );
    assert_eq!(
        err("[[allow]]\nname = \"x\"\nusers = []\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:1:1: rule \"x\" has an empty `users` list, which would match nobody; \
         remove it or name someone"
    );
    assert_eq!(
        err("[[allow]]\nusers = [\"alice\"]\ncmds = []\n"),
        "/etc/bpftokend/policy.toml:1:1: rule \"allow[0]\" grants nothing: give `cmds`, `maps`, `progs`, `attachs`, `tracepoints`, `kprobes` or `uprobes`"
    );
    assert_eq!(
        err("[[allow]]\nname = \" \"\nusers = [\"alice\"]\ncmds = [\"any\"]\n"),
        "/etc/bpftokend/policy.toml:2:8: a rule name cannot be empty"
    );
}

#[test]
fn empty_policy_denies_everyone() {
    let p = parse("").unwrap();
    assert!(matches!(
        p.decide(&peer(0, 0, &[]), &MintRequest::default()),
        Decision::Refuse { code: RefusalCode::NotInPolicy, .. }
    ));
}
