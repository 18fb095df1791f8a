//! The bpftokend policy: who may get which BPF powers.
//!
//! Pure code: [`load`] reads the root-owned policy file and its drop-ins
//! (`policy.d/*.toml`), [`Policy::parse_set`] turns their text into one set
//! of rules (a [`Draft`] with every error found), [`Policy::decide`] turns a
//! peer and a request into a grant or a refusal. Nothing here talks to
//! sockets or the kernel's BPF interface; the daemon does that.
#![forbid(unsafe_code)]

pub mod btf;
mod draft;
mod error;
mod file;
mod parse;
pub mod trace;

use std::path::{Path, PathBuf};

use bpftoken_proto::delegation::{self, Delegation};
use bpftoken_proto::{MintRequest, RefusalCode};

pub use draft::Draft;
pub use error::{Location, PolicyError, PolicyErrors};
pub use file::{dropin_dir, load, load_with, read, read_with, DROPIN_DIR, MAX_POLICY_BYTES};
pub use parse::{NameResolver, Source, SystemResolver};

/// Where the daemon looks for its policy unless told otherwise.
pub const DEFAULT_POLICY_PATH: &str = "/etc/bpftokend/policy.toml";

/// Ids the kernel uses for "not mapped" (overflow ids) and "no id" (-1).
/// A peer carrying one never matches a rule, and a policy cannot name one.
pub const SENTINEL_IDS: [u32; 2] = [OVERFLOW_ID, u32::MAX];

/// The kernel's overflow uid and gid (`/proc/sys/kernel/overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// Largest uid/gid a policy may name: ids at or above 2^31 are not used for
/// real accounts and are where sentinel and sign-confusion bugs live.
pub const MAX_POLICY_ID: u32 = i32::MAX as u32;

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The main file.
    path: PathBuf,
    /// The drop-in files merged after it, in merge order.
    dropins: Vec<PathBuf>,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    warnings: Vec<String>,
    /// `require_enforcement` (default true): a mint under a rule with
    /// `ttl` is refused where the daemon cannot enforce it; false mints it
    /// and marks it not enforced.
    require_enforcement: bool,
}

/// Longest `ttl` a rule may set: 7 days. A lease is meant to be short;
/// access that lasts longer is a new mint (which the policy decides again).
pub const MAX_TTL_SECS: u32 = 7 * 24 * 3600;

/// Whether a rule adds or removes powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// An inclusive id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    fn contains(&self, id: u32) -> bool {
        self.first <= id && id <= self.last
    }
}

/// Ids named one by one plus ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdSet {
    pub ids: Vec<u32>,
    pub ranges: Vec<IdRange>,
}

impl IdSet {
    fn contains(&self, id: u32) -> bool {
        self.ids.contains(&id) || self.ranges.iter().any(|r| r.contains(id))
    }
}

/// Who a rule applies to. Every condition that is given must hold; a
/// condition that is absent does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// `everyone = true`: no identity condition at all (must be explicit).
    pub everyone: bool,
    /// The uid is one of these (from `users` and `uids`) or in one of
    /// `uid_ranges`; `None` when the rule names no user.
    pub uids: Option<IdSet>,
    /// The primary or a supplementary gid is one of these (from `groups`
    /// and `gids`) or in one of `gid_ranges`.
    pub gids: Option<IdSet>,
    /// The peer's executable is one of these absolute paths.
    pub executables: Option<Vec<PathBuf>>,
    /// The peer's cgroup v2 path is one of these or below one of them.
    pub cgroups: Option<Vec<String>>,
    /// The peer lives in a user namespace (a rootless container) owned by
    /// one of these uids. A rule without it matches only peers in the
    /// daemon's own user namespace: container peers are opt-in.
    pub userns_owners: Option<IdSet>,
}

/// One `[[allow]]` or `[[deny]]` rule after names have been resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// How the rule is named in audit events and messages: its `name`, or
    /// `allow[N]` / `deny[N]` (0-based position) when it has none.
    pub label: String,
    /// The file the rule is in: the main file or a drop-in.
    pub file: PathBuf,
    /// 1-based line of the rule's table header.
    pub line: usize,
    pub effect: Effect,
    pub matcher: Matcher,
    /// What the rule grants (allow) or removes (deny).
    pub grant: Delegation,
    /// At most this many mints per minute per uid under this rule.
    pub mints_per_minute: Option<u32>,
    /// At most this many live tokens per uid (tokens not yet closed, in
    /// every scope of the uid); counted by the daemon's enforcer.
    pub max_live_tokens: Option<u32>,
    /// Tokens minted under this rule stop working after this many seconds
    /// (at most [`MAX_TTL_SECS`]); needs the daemon's enforcer.
    pub ttl: Option<u32>,
    /// `bind`: who may use tokens minted under this rule.
    pub bind: Bind,
    /// The rule's process-identity conditions (`executables`, `cgroups`)
    /// of an allow rule, which only the enforcer makes a security boundary.
    pub identity: Option<IdentityKeys>,
    /// `learn = true`: matching users may run `bpftoken learn` under this
    /// rule's grant (needs the daemon's enforcer).
    pub learn: bool,
    /// `tracepoints`, `kprobes`, `uprobes`: perf events the daemon opens
    /// for matching users (allow), or refuses (deny).
    pub trace: trace::TracePatterns,
}

/// A rule's `bind`: tokens work only for their owner uid, and/or only
/// inside the cgroup v2 subtree the caller minted from. Needs the
/// daemon's enforcer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bind {
    pub uid: bool,
    pub cgroup: bool,
}

/// An allow rule's `executables`/`cgroups` conditions. A process of the
/// same uid can run code in any other (LD_PRELOAD, ptrace, a shared
/// socket), so matching them from `/proc` proves nothing: where the
/// enforcer runs, a grant under such a rule is bound in the kernel to the
/// program (file identity) and cgroup it was matched on; where it does
/// not, the policy is refused ([`Policy::check_identity_enforcement`])
/// unless the rule says `enforce_identity = false` (`advisory`), and then
/// the audit event says the identity was claimed, not proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityKeys {
    /// "executables", "cgroups" or both, as the rule gives them.
    pub keys: Vec<&'static str>,
    /// Where the first of them is.
    pub location: Location,
    /// `enforce_identity = false`.
    pub advisory: bool,
}

/// The bindings that apply to a grant, each with the (first) matching
/// allow rule that asks for it: one token carries every rule's powers,
/// so every rule's binding holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub uid: Option<String>,
    /// From `bind = ["cgroup"]`.
    pub cgroup: Option<String>,
    /// From a matching rule's `executables`: the tokens work only in the
    /// program they were matched on.
    pub exe: Option<String>,
    /// From a matching rule's `cgroups`: the tokens work only inside the
    /// cgroup they were matched in.
    pub identity_cgroup: Option<String>,
    /// Every matching rule with `executables`/`cgroups` says
    /// `enforce_identity = false`: without the enforcer, grant unbound and
    /// audit the identity as claimed.
    pub identity_advisory: bool,
}

impl Binding {
    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.cgroup.is_none() && self.exe.is_none() && self.identity_cgroup.is_none()
    }

    /// Whether the grant binds to a cgroup, by `bind` or by `cgroups`.
    pub fn binds_cgroup(&self) -> bool {
        self.cgroup.is_some() || self.identity_cgroup.is_some()
    }
}

/// The lease length that applies to a grant: the shortest `ttl` of the
/// matching allow rules (one token carries every rule's powers, so the
/// strictest rule bounds it), and the rule that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttl {
    pub rule: String,
    pub secs: u32,
}

/// What the kernel told the daemon about a peer. Never anything the peer
/// said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
    /// Executable, read through a pidfd; `None` if unknown.
    pub exe: Option<PathBuf>,
    /// cgroup v2 path (`/system.slice/x.service`), read through a pidfd.
    pub cgroup: Option<String>,
    /// Owner uid of the peer's user namespace when that is not the
    /// daemon's own (container mode); `None` for ordinary peers.
    pub userns_owner: Option<u32>,
}

/// A rate limit that applies to a grant: the uid may mint at most
/// `per_minute` tokens a minute under the rule `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub rule: String,
    pub per_minute: u32,
}

/// Largest `max_live_tokens` a rule may set (the enforcer tracks 262144
/// tokens in all).
pub const MAX_LIVE_TOKENS: u32 = 100_000;

/// A limit on live tokens that applies to a grant: the uid may hold at
/// most `max` tokens at once, by the rule `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLimit {
    pub rule: String,
    pub max: u32,
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Grant {
        /// Exactly what the token may carry.
        delegation: Delegation,
        /// Labels of the rules that matched (allow, then deny).
        rules: Vec<String>,
        /// Limits the daemon must check before minting.
        limits: Vec<RateLimit>,
        /// How long the token may work, if a matching rule bounds it.
        ttl: Option<Ttl>,
        /// The strictest `max_live_tokens` of the matching rules.
        live_limit: Option<LiveLimit>,
        /// Every binding a matching allow rule asks for.
        bind: Binding,
    },
    Refuse {
        code: RefusalCode,
        /// One sentence a person can act on.
        message: String,
        /// Rules that matched (empty when none did).
        rules: Vec<String>,
    },
}

/// The outcome of [`Policy::decide_trace`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceDecision {
    /// Allowed by this rule.
    Allow {
        rule: String,
    },
    Refuse {
        code: RefusalCode,
        message: String,
    },
}

/// What the policy gives a peer before any request narrows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Effective {
    /// Union of matching allow rules minus union of matching deny rules.
    pub grant: Delegation,
    /// Items matching deny rules removed from the allow union.
    pub removed: Delegation,
    pub allowed_by: Vec<String>,
    /// The matching allow rules, as indexes into [`Policy::rules`], in the
    /// order of `allowed_by`.
    pub allowed_rules: Vec<usize>,
    pub denied_by: Vec<String>,
    pub limits: Vec<RateLimit>,
    /// The shortest `ttl` of the matching allow rules.
    pub ttl: Option<Ttl>,
    /// The smallest `max_live_tokens` of the matching allow rules.
    pub live_limit: Option<LiveLimit>,
    /// The bindings of the matching allow rules.
    pub bind: Binding,
}

/// `cgroup` is `prefix` or below it, comparing whole path components.
fn cgroup_below(cgroup: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || cgroup == prefix || cgroup.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

impl Matcher {
    /// The uid and gid conditions alone.
    fn matches_ids(&self, peer: &Peer) -> bool {
        let uid_ok = self.uids.as_ref().is_none_or(|u| u.contains(peer.uid));
        let gid_ok =
            self.gids.as_ref().is_none_or(|g| g.contains(peer.gid) || peer.groups.iter().any(|x| g.contains(*x)));
        uid_ok && gid_ok
    }

    fn matches(&self, peer: &Peer) -> bool {
        let ids_ok = self.matches_ids(peer);
        let exe_ok = self.executables.as_ref().is_none_or(|exes| peer.exe.as_ref().is_some_and(|e| exes.contains(e)));
        let cgroup_ok = self
            .cgroups
            .as_ref()
            .is_none_or(|cgs| peer.cgroup.as_ref().is_some_and(|c| cgs.iter().any(|p| cgroup_below(c, p))));
        let userns_ok = match (&self.userns_owners, peer.userns_owner) {
            (None, None) => true,
            (Some(owners), Some(owner)) => owners.contains(owner),
            _ => false,
        };
        ids_ok && exe_ok && cgroup_ok && userns_ok
    }
}

impl Policy {
    /// The main file this policy was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The drop-in files merged after the main file, in merge order.
    pub fn dropins(&self) -> &[PathBuf] {
        &self.dropins
    }

    /// The main file, then the drop-ins.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.path.as_path()).chain(self.dropins.iter().map(PathBuf::as_path))
    }

    /// Allow rules: the main file's, then each drop-in's, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.allow
    }

    pub fn deny_rules(&self) -> &[Rule] {
        &self.deny
    }

    /// Things an administrator acknowledged but should hear about at every
    /// start (e.g. broad grants).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether some rule looks at the caller's executable: only then does
    /// the daemon read it.
    pub fn reads_executable(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(|r| r.matcher.executables.is_some())
    }

    /// Whether some allow rule could match `peer` by its uid, gid and
    /// groups alone (whatever its executable, cgroup and user namespace):
    /// the daemon admits connections of uids no rule names on a short
    /// leash (docs/operation.md, "Connections").
    pub fn names_ids(&self, peer: &Peer) -> bool {
        self.allow.iter().any(|r| r.matcher.matches_ids(peer))
    }

    /// Whether some rule looks at the caller's cgroup (`cgroups`, or
    /// `bind = ["cgroup"]`, which binds to it).
    pub fn reads_cgroup(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(|r| r.matcher.cgroups.is_some() || r.bind.cgroup)
    }

    /// The tracing targets `peer` may have perf events for: each pattern
    /// of a matching allow rule, with its key and rule (a matching deny
    /// rule's pattern still refuses what it names; `decide_trace` says so).
    pub fn trace_targets(&self, peer: &Peer) -> Vec<trace::TraceAllowance> {
        let allowed = self.allow.iter().filter(|r| r.matcher.matches(peer)).map(|r| (r, false));
        let denied = self.deny.iter().filter(|r| r.matcher.matches(peer)).map(|r| (r, true));
        allowed
            .chain(denied)
            .flat_map(|(r, deny)| {
                trace::TraceKind::ALL.into_iter().flat_map(move |kind| {
                    r.trace.of(kind).iter().map(move |p| trace::TraceAllowance {
                        key: kind.key(),
                        pattern: p.text.clone(),
                        rule: r.label.clone(),
                        denied: deny,
                    })
                })
            })
            .collect()
    }

    /// Whether some rule names tracing targets.
    pub fn has_trace_targets(&self) -> bool {
        self.allow.iter().chain(&self.deny).any(|r| !r.trace.is_empty())
    }

    /// Decide whether `peer` may have a perf event opened on the target
    /// `name` of `kind` (`category:name`, a symbol, a binary's path): the
    /// first matching allow rule that names it, unless a matching deny
    /// rule names it too. The refusal says which key would allow it.
    pub fn decide_trace(&self, peer: &Peer, kind: trace::TraceKind, name: &str) -> TraceDecision {
        let path = self.path.display();
        if SENTINEL_IDS.contains(&peer.uid) || SENTINEL_IDS.contains(&peer.gid) {
            return TraceDecision::Refuse {
                code: RefusalCode::UnmappedPeer,
                message: format!(
                    "uid {} gid {} is an unmapped or invalid id; such callers never match {path}",
                    peer.uid, peer.gid
                ),
            };
        }
        let noun = kind.noun();
        if let Some(r) =
            self.deny.iter().find(|r| r.matcher.matches(peer) && r.trace.of(kind).iter().any(|p| p.matches(name)))
        {
            return TraceDecision::Refuse {
                code: RefusalCode::TargetNotAllowed,
                message: format!("{noun} \"{name}\" is denied to uid {} by {path} (rule {})", peer.uid, r.label),
            };
        }
        let matching: Vec<&Rule> = self.allow.iter().filter(|r| r.matcher.matches(peer)).collect();
        if let Some(r) = matching.iter().find(|r| r.trace.of(kind).iter().any(|p| p.matches(name))) {
            return TraceDecision::Allow { rule: r.label.clone() };
        }
        let granted: Vec<&str> = matching.iter().flat_map(|r| r.trace.of(kind)).map(|p| p.text.as_str()).collect();
        let message = if matching.is_empty() {
            format!(
                "{noun} \"{name}\" is not allowed to uid {}: no rule in {path} allows uid {} (gid {}); a rule for \
                 you with `{} = [\"{name}\"]` would",
                peer.uid,
                peer.uid,
                peer.gid,
                kind.key()
            )
        } else {
            format!(
                "{noun} \"{name}\" is not allowed to uid {} by {path}: add it to `{}` in a rule for you (allowed {}: \
                 {})",
                peer.uid,
                kind.key(),
                kind.key(),
                display_list(&granted.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            )
        };
        TraceDecision::Refuse { code: RefusalCode::TargetNotAllowed, message }
    }

    /// `require_enforcement`: whether a mint under a rule with `ttl` must
    /// be refused where the daemon cannot enforce it (default true).
    pub fn require_enforcement(&self) -> bool {
        self.require_enforcement
    }

    /// What the policy gives `peer`: the union of matching allow rules
    /// minus the union of matching deny rules (deny always wins).
    pub fn effective(&self, peer: &Peer) -> Effective {
        let mut eff = Effective::default();
        let mut allowed = Delegation::NONE;
        // All matching identity rules advisory (None: no such rule).
        let mut identity_advisory: Option<bool> = None;
        for (i, r) in self.allow.iter().enumerate().filter(|(_, r)| r.matcher.matches(peer)) {
            allowed = allowed.union(r.grant);
            eff.allowed_by.push(r.label.clone());
            eff.allowed_rules.push(i);
            if let Some(n) = r.mints_per_minute {
                eff.limits.push(RateLimit { rule: r.label.clone(), per_minute: n });
            }
            if let Some(secs) = r.ttl {
                if eff.ttl.as_ref().is_none_or(|t| secs < t.secs) {
                    eff.ttl = Some(Ttl { rule: r.label.clone(), secs });
                }
            }
            // One token carries every rule's powers: the strictest holds.
            if let Some(max) = r.max_live_tokens {
                if eff.live_limit.as_ref().is_none_or(|l| max < l.max) {
                    eff.live_limit = Some(LiveLimit { rule: r.label.clone(), max });
                }
            }
            if r.bind.uid && eff.bind.uid.is_none() {
                eff.bind.uid = Some(r.label.clone());
            }
            if r.bind.cgroup && eff.bind.cgroup.is_none() {
                eff.bind.cgroup = Some(r.label.clone());
            }
            if let Some(identity) = &r.identity {
                if r.matcher.executables.is_some() && eff.bind.exe.is_none() {
                    eff.bind.exe = Some(r.label.clone());
                }
                if r.matcher.cgroups.is_some() && eff.bind.identity_cgroup.is_none() {
                    eff.bind.identity_cgroup = Some(r.label.clone());
                }
                identity_advisory = Some(identity_advisory.unwrap_or(true) && identity.advisory);
            }
        }
        eff.bind.identity_advisory = identity_advisory.unwrap_or(false);
        let mut denied = Delegation::NONE;
        for r in self.deny.iter().filter(|r| r.matcher.matches(peer)) {
            denied = denied.union(r.grant);
            eff.denied_by.push(r.label.clone());
        }
        eff.removed = allowed.intersect(denied);
        eff.grant = allowed.minus(denied);
        eff
    }

    /// Decide a mint request. Default deny: the grant is the union of the
    /// matching allow rules minus the matching deny rules, and the request
    /// may only narrow it.
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
        let eff = self.effective(peer);
        let labels: Vec<String> = eff.allowed_by.iter().chain(&eff.denied_by).cloned().collect();
        if eff.allowed_by.is_empty() {
            return Decision::Refuse {
                code: RefusalCode::NotInPolicy,
                message: format!("no rule in {path} allows uid {} (gid {})", peer.uid, peer.gid),
                rules: labels,
            };
        }
        let wanted = request.resolve(&eff.grant);
        if let Some((kind, bit)) = wanted.first_outside(&eff.grant) {
            let item = delegation::name_of(kind, bit).map_or_else(|| format!("#{bit}"), str::to_owned);
            let message = if eff.removed.get(kind) & (1u64 << bit) != 0 {
                format!(
                    "{} \"{item}\" is denied to uid {} by {path} (rule {})",
                    kind.noun(),
                    peer.uid,
                    eff.denied_by.join(", ")
                )
            } else {
                format!(
                    "{} \"{item}\" is not granted to uid {} by {path} (granted {}s: {})",
                    kind.noun(),
                    peer.uid,
                    kind.noun(),
                    display_list(&delegation::names(kind, eff.grant.get(kind)))
                )
            };
            return Decision::Refuse { code: RefusalCode::NotGranted, message, rules: labels };
        }
        if wanted.is_empty() {
            return Decision::Refuse {
                code: RefusalCode::EmptyGrant,
                message: format!(
                    "the request leaves nothing to delegate to uid {} (granted by {path}: {})",
                    peer.uid, eff.grant
                ),
                rules: labels,
            };
        }
        Decision::Grant {
            delegation: wanted,
            rules: labels,
            limits: eff.limits,
            ttl: eff.ttl,
            live_limit: eff.live_limit,
            bind: eff.bind,
        }
    }
}

impl Policy {
    /// Decide a learning request (`bpftoken learn`): as [`Policy::decide`],
    /// but only the matching allow rules with `learn = true` grant (deny
    /// rules still remove). A caller some rule allows, but none lets learn,
    /// is refused `learning_not_allowed`.
    pub fn decide_learning(&self, peer: &Peer, request: &MintRequest) -> Decision {
        let learning = Policy { allow: self.allow.iter().filter(|r| r.learn).cloned().collect(), ..self.clone() };
        let eff = self.effective(peer);
        if !eff.allowed_by.is_empty() && learning.effective(peer).allowed_by.is_empty() {
            return Decision::Refuse {
                code: RefusalCode::LearningNotAllowed,
                message: format!(
                    "no rule in {} lets uid {} learn (matching rules: {}); an allow rule needs `learn = true`",
                    self.path.display(),
                    peer.uid,
                    eff.allowed_by.join(", ")
                ),
                rules: eff.allowed_by.iter().chain(&eff.denied_by).cloned().collect(),
            };
        }
        learning.decide(peer, request)
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
