//! The bpftokend policy: who may get which BPF powers.
//!
//! Pure code: [`load`] reads one root-owned file, [`Policy::parse`] turns
//! text into rules, [`Policy::decide`] turns a peer and a request into a
//! grant or a refusal. Nothing here talks to sockets or the kernel's BPF
//! interface; the daemon does that.
#![forbid(unsafe_code)]

pub mod btf;
mod error;
mod file;
mod parse;

use std::path::{Path, PathBuf};

use bpftoken_proto::delegation::{self, Delegation};
use bpftoken_proto::{MintRequest, RefusalCode};

pub use error::{Location, PolicyError};
pub use file::{load, load_with, MAX_POLICY_BYTES};
pub use parse::{NameResolver, SystemResolver};

/// Where the daemon looks for its policy unless told otherwise.
pub const DEFAULT_POLICY_PATH: &str = "/etc/bpftokend/policy.toml";

/// Ids the kernel uses for "not mapped" (overflow ids) and "no id" (-1).
/// A peer carrying one never matches a rule, and a policy cannot name one.
pub const SENTINEL_IDS: [u32; 2] = [65534, u32::MAX];

/// Largest uid/gid a policy may name: ids at or above 2^31 are not used for
/// real accounts and are where sentinel and sign-confusion bugs live.
pub const MAX_POLICY_ID: u32 = i32::MAX as u32;

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    path: PathBuf,
    rules: Vec<Rule>,
}

/// One `[[allow]]` rule after names have been resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// How the rule is named in audit events and messages: its `name`, or
    /// `allow[N]` (0-based position) when it has none.
    pub label: String,
    /// 1-based line of the rule's table header.
    pub line: usize,
    /// Peer uid must be one of these (from `users` and `uids`); `None` when
    /// the rule has no user condition.
    pub uids: Option<Vec<u32>>,
    /// Peer's primary or a supplementary gid must be one of these; `None`
    /// when the rule has no group condition.
    pub gids: Option<Vec<u32>>,
    /// What the rule grants.
    pub grant: Delegation,
}

/// What the kernel told the daemon about a peer. Never anything the peer
/// said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Grant {
        /// Exactly what the token may carry.
        delegation: Delegation,
        /// Labels of the rules whose union the request was checked against.
        rules: Vec<String>,
    },
    Refuse {
        code: RefusalCode,
        /// One sentence a person can act on.
        message: String,
        /// Rules that matched (empty when none did).
        rules: Vec<String>,
    },
}

impl Rule {
    fn matches(&self, peer: &Peer) -> bool {
        let uid_ok = self.uids.as_ref().is_none_or(|uids| uids.contains(&peer.uid));
        let gid_ok = self.gids.as_ref().is_none_or(|gids| {
            gids.contains(&peer.gid) || peer.groups.iter().any(|g| gids.contains(g))
        });
        uid_ok && gid_ok
    }
}

impl Policy {
    /// The file this policy was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decide a mint request. Default deny: the grant is the union of the
    /// matching rules, and the request may only narrow it.
    pub fn decide(&self, peer: &Peer, request: &MintRequest) -> Decision {
        let path = self.path.display();
        if SENTINEL_IDS.contains(&peer.uid) || SENTINEL_IDS.contains(&peer.gid) {
            return Decision::Refuse {
                code: RefusalCode::UnmappedPeer,
                message: format!(
                    "uid {} gid {} is an unmapped or invalid id (the caller's user namespace \
                     does not map it into the daemon's); such callers never match {path}",
                    peer.uid, peer.gid
                ),
                rules: Vec::new(),
            };
        }
        let matched: Vec<&Rule> = self.rules.iter().filter(|r| r.matches(peer)).collect();
        let labels: Vec<String> = matched.iter().map(|r| r.label.clone()).collect();
        if matched.is_empty() {
            return Decision::Refuse {
                code: RefusalCode::NotInPolicy,
                message: format!("no rule in {path} allows uid {} (gid {})", peer.uid, peer.gid),
                rules: labels,
            };
        }
        let grant = matched.iter().fold(Delegation::NONE, |acc, r| acc.union(r.grant));
        let wanted = request.resolve(&grant);
        if let Some((kind, bit)) = wanted.first_outside(&grant) {
            let item = delegation::name_of(kind, bit).map_or_else(|| format!("#{bit}"), str::to_owned);
            return Decision::Refuse {
                code: RefusalCode::NotGranted,
                message: format!(
                    "{} \"{item}\" is not granted to uid {} by {path} (granted {}s: {})",
                    kind.noun(),
                    peer.uid,
                    kind.noun(),
                    display_list(&delegation::names(kind, grant.get(kind)))
                ),
                rules: labels,
            };
        }
        if wanted.is_empty() {
            return Decision::Refuse {
                code: RefusalCode::EmptyGrant,
                message: format!(
                    "the request leaves nothing to delegate to uid {} (granted by {path}: {grant})",
                    peer.uid
                ),
                rules: labels,
            };
        }
        Decision::Grant { delegation: wanted, rules: labels }
    }
}

fn display_list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests;
