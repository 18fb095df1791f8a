//! Arbitrary UTF-8 against the policy parser (policy/src/parse.rs), with a
//! fixed in-memory name resolver so no NSS lookup ever happens.
//!
//! Errors are rendered (compiler-style, with a caret). Parsed policies
//! decide a few fixed requests for a few fixed peers, and the answers are
//! checked against each other (only through the public decide API, so the
//! target does not depend on how rules are represented): a request may
//! only narrow what the default request is granted, asking for exactly
//! that is granted, a refused default request refuses everything, and an
//! unmapped peer is always refused.
#![no_main]

use std::path::Path;

use bpftoken_policy::{Decision, NameResolver, Peer, Policy};
use bpftoken_proto::{Delegation, MintRequest, RefusalCode};
use libfuzzer_sys::fuzz_target;

struct FakeResolver;

impl NameResolver for FakeResolver {
    fn uid_of(&self, user: &str) -> Option<u32> {
        match user {
            "alice" => Some(1000),
            "bob" => Some(1001),
            "root" => Some(0),
            "nobody" => Some(65534),
            _ => None,
        }
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        match group {
            "dev" => Some(2000),
            "bpftoken" => Some(3000),
            "root" => Some(0),
            "nogroup" => Some(65534),
            _ => None,
        }
    }
}

fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
    Peer { uid, gid, groups: groups.to_vec(), ..Peer::default() }
}

fn peers() -> Vec<Peer> {
    vec![
        peer(1000, 1000, &[]),
        peer(1001, 1001, &[2000, 3000]),
        peer(0, 0, &[]),
        peer(4242, 3000, &[]),
        Peer {
            exe: Some("/usr/bin/bpftool".into()),
            cgroup: Some("/system.slice/agent.service".into()),
            ..peer(1000, 2000, &[3000])
        },
    ]
}

/// A peer the kernel could not map: always refused, whatever the policy.
fn unmapped() -> Peer {
    peer(65534, 65534, &[])
}

fn requests() -> [MintRequest; 4] {
    [
        MintRequest { cmds: Some(1), maps: Some(2), progs: Some(1 << 1), attachs: Some(1) },
        MintRequest { cmds: Some(0), maps: Some(0), progs: Some(0), attachs: Some(0) },
        MintRequest { cmds: Some(u64::MAX), maps: None, progs: None, attachs: Some(u64::MAX) },
        MintRequest { cmds: None, maps: Some(1 << 2), progs: None, attachs: None },
    ]
}

fn exactly(d: Delegation) -> MintRequest {
    MintRequest { cmds: Some(d.cmds), maps: Some(d.maps), progs: Some(d.progs), attachs: Some(d.attachs) }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/fuzz/policy.toml");
    let policy = match Policy::parse(text, path, &FakeResolver) {
        Ok(policy) => policy,
        Err(e) => {
            let rendered = e.render();
            assert!(rendered.starts_with("/fuzz/policy.toml:"), "{rendered}");
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(policy.path(), path);
    assert!(matches!(
        policy.decide(&unmapped(), &MintRequest::default()),
        Decision::Refuse { code: RefusalCode::UnmappedPeer, .. }
    ));
    for peer in peers() {
        // Asking for nothing in particular gets the whole effective grant;
        // every other request may only narrow it.
        match policy.decide(&peer, &MintRequest::default()) {
            Decision::Grant { delegation: full, rules, .. } => {
                assert!(!rules.is_empty(), "grant without a rule");
                assert!(!full.is_empty(), "empty grant");
                match policy.decide(&peer, &exactly(full)) {
                    Decision::Grant { delegation, .. } => assert_eq!(delegation, full),
                    Decision::Refuse { message, .. } => {
                        panic!("asking for exactly the grant {full} was refused: {message}")
                    }
                }
                for req in requests() {
                    match policy.decide(&peer, &req) {
                        Decision::Grant { delegation, rules, .. } => {
                            assert!(!rules.is_empty(), "grant without a rule");
                            assert!(!delegation.is_empty(), "empty grant");
                            assert_eq!(
                                delegation.first_outside(&full),
                                None,
                                "grant {delegation} for {req:?} exceeds the full grant {full}"
                            );
                            assert_eq!(delegation, req.resolve(&full), "grant is not the request");
                        }
                        Decision::Refuse { message, .. } => assert!(!message.is_empty()),
                    }
                }
            }
            Decision::Refuse { code, message, .. } => {
                assert!(!message.is_empty());
                // Nothing can be narrowed out of a refusal.
                for req in requests() {
                    if let Decision::Grant { delegation, .. } = policy.decide(&peer, &req) {
                        panic!("default request refused ({code}: {message}) but {req:?} got {delegation}");
                    }
                }
            }
        }
    }
});
