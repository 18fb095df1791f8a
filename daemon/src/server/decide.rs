//! The decision for a grant request, and the checks around it.
//!
//! [`decide`] asks the policy (`Policy::decide`, or `decide_learning` for
//! `bpftoken learn`) and then checks what the grant needs: that its `ttl`
//! ([`lease_refusal`]), its binding ([`binding`]) and `max_live_tokens`
//! ([`live_admission`]) can be enforced, or that the policy lets them go
//! unenforced (`require_enforcement = false`), and the rule's
//! `mints_per_minute` ([`RateLimiter`]). It returns a [`Grant`] or the
//! [`Refused`] answer; it writes nothing and mints nothing.
//!
//! Invariants: the checks run in this order, so a request refused for two
//! reasons always gets the same one; a rate limit counts only requests
//! that passed every other check; a ttl the caller asked for is never
//! silently dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bpftoken_policy::{Binding, Decision, LiveLimit, Policy, RateLimit, Ttl};
use bpftoken_proto::{MintRequest, Refusal, RefusalCode};

use super::reply::Refused;
use super::Daemon;
use crate::lease::NewBinding;
use crate::live::{Admitted, LiveError};
use crate::peer::{PeerIdentity, PeerUserns};

/// A grant request as it arrived: the masks, the lease asked for, and
/// whether the answer names the lease ([`Response::Leased`](bpftoken_proto::Response::Leased); the older
/// requests get [`Response::Minted`](bpftoken_proto::Response::Minted)).
pub(super) struct Asked {
    pub(super) request: MintRequest,
    pub(super) ttl: Option<u32>,
    pub(super) leased: bool,
    /// A learning lease (`bpftoken learn`): decided under the `learn =
    /// true` rules only, and needs the enforcer.
    pub(super) learn: bool,
}

/// Decide for `asked` and count it against the rate limits: the grant
/// and the rules behind it, or the refusal (naming the rules that matched,
/// where the policy was asked).
pub(super) fn decide<'a>(daemon: &'a Daemon, peer: &PeerIdentity, asked: &Asked) -> Result<Grant<'a>, Refused> {
    let req = &asked.request;
    if let Some(r) = peer_refusal(peer) {
        return Err(r.into());
    }
    let policy = daemon.policy();
    let decision = if asked.learn { policy.decide_learning(&peer.creds, req) } else { policy.decide(&peer.creds, req) };
    match decision {
        Decision::Refuse { code, message, rules } => {
            let (code, message) = policy_refusal(peer, code, message);
            Err(Refused::by_rules(rules, Refusal::new(code, message)))
        }
        Decision::Grant { delegation, rules, limits, ttl, live_limit, bind } => {
            // A refusal from here on names the rules that granted.
            let refused = |refusal: Refusal| Refused::by_rules(rules.clone(), refusal);
            if let (true, Err(why)) = (asked.learn, &daemon.enforcer) {
                // Whatever require_enforcement says: without the enforcer
                // nothing records what CMD uses.
                let message = format!(
                    "learning needs the enforcer, which records what the command uses: enforcement is \
                     unavailable: {why}"
                );
                return Err(refused(Refusal::new(RefusalCode::LearningUnavailable, message)));
            }
            let enforced = lease_refusal(daemon, &policy, ttl.as_ref(), asked.ttl).map_err(refused)?;
            let (bind, bind_enforced, identity) = binding(daemon, &policy, peer, &bind).map_err(refused)?;
            let (admitted, live_enforced) =
                live_admission(daemon, &policy, peer.creds.uid, live_limit.as_ref()).map_err(refused)?;
            // Not enforced if any limit is not.
            let both = |x: Option<bool>, y: Option<bool>| match (x, y) {
                (None, e) | (e, None) => e,
                (Some(a), Some(b)) => Some(a && b),
            };
            let enforced = both(both(enforced, live_enforced), bind_enforced);
            if let Err(message) = daemon.rates.admit(peer.creds.uid, &limits) {
                return Err(refused(Refusal::new(RefusalCode::RateLimited, message)));
            }
            // The shorter of the policy's ttl and the one asked for.
            let secs = match (ttl.map(|t| t.secs), asked.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ttl = secs.map(|s| Duration::from_secs(u64::from(s)));
            Ok(Grant { delegation, rules, enforced, ttl, bind, identity, learn: asked.learn, _admitted: admitted })
        }
    }
}

/// What [`decide`] grants.
pub(super) struct Grant<'a> {
    pub(super) delegation: bpftoken_proto::Delegation,
    pub(super) rules: Vec<String>,
    /// For the audit event: `None` when no rule sets a `ttl` or
    /// `max_live_tokens`, else whether they are enforced.
    pub(super) enforced: Option<bool>,
    /// How long the lease lasts: the shortest matching `ttl`, or less if
    /// the request asked for less.
    pub(super) ttl: Option<Duration>,
    /// Who may use the tokens (policy `bind`, `executables`, `cgroups`).
    pub(super) bind: NewBinding,
    /// How the program and cgroup matched on stand (for the audit event).
    pub(super) identity: Identity,
    /// A learning lease.
    pub(super) learn: bool,
    /// Counted against `max_live_tokens` until dropped (after delivery).
    _admitted: Option<Admitted<'a>>,
}

/// The refusal for a policy decision, with a hint for container peers,
/// whom only `userns_owners` rules match.
fn policy_refusal(peer: &PeerIdentity, code: RefusalCode, message: String) -> (RefusalCode, String) {
    match (code, peer.userns) {
        (RefusalCode::NotInPolicy, PeerUserns::Nested { owner_uid, .. }) => (
            code,
            format!(
                "{message} (uid {} calls from a user namespace owned by uid {owner_uid}, such as a rootless \
                 container; only rules with `userns_owners` match there)",
                peer.creds.uid
            ),
        ),
        _ => (code, message),
    }
}

/// A refusal that follows from who the peer is, before any policy rule.
pub(super) fn peer_refusal(peer: &PeerIdentity) -> Option<Refusal> {
    match peer.userns {
        PeerUserns::Ours => None,
        PeerUserns::Unknown => Some(Refusal::new(
            RefusalCode::UnsupportedPeer,
            format!(
                "cannot tell which user namespace uid {} is calling from (did the process exit?); \
                 refusing rather than minting a token that may not work there",
                peer.creds.uid
            ),
        )),
        // Container mode: minted in the peer's own namespace, and only
        // rules with `userns_owners` match such a peer.
        PeerUserns::Nested { .. } => None,
    }
}

/// Why a caller may not learn whoever it is: learning is offered only to
/// callers in the daemon's own user namespace.
pub(super) fn learning_peer_refusal(peer: &PeerIdentity) -> Option<Refusal> {
    match peer.userns {
        PeerUserns::Ours => None,
        PeerUserns::Unknown => peer_refusal(peer),
        PeerUserns::Nested { owner_uid, .. } => Some(Refusal::new(
            RefusalCode::UnsupportedPeer,
            format!(
                "learning is not offered to callers inside a user namespace: uid {} calls from one owned by uid \
                 {owner_uid}, such as a rootless container, whose tokens all share that namespace; a learning \
                 lease records what the tokens of a user namespace and bpffs made for it alone are used for, so \
                 run `bpftoken learn` outside the container (in the host's user namespace)",
                peer.creds.uid
            ),
        )),
    }
}

/// Whether a grant bounded by the policy's `ttl` or by the `asked` one may
/// be minted: `Ok(None)` without either, `Ok(Some(true))` where the
/// enforcer expires leases, `Ok(Some(false))` when it cannot but the
/// policy allows that, or the refusal. A ttl the caller asked for itself
/// is never silently dropped: without enforcement it is refused whatever
/// `require_enforcement` says.
pub(super) fn lease_refusal(
    daemon: &Daemon,
    policy: &Policy,
    ttl: Option<&Ttl>,
    asked: Option<u32>,
) -> Result<Option<bool>, Refusal> {
    if ttl.is_none() && asked.is_none() {
        return Ok(None);
    }
    let why = match &daemon.enforcer {
        Ok(_) => return Ok(Some(true)),
        Err(why) => format!("enforcement is unavailable: {why}"),
    };
    if let Some(asked) = asked {
        return Err(Refusal::new(
            RefusalCode::NotEnforceable,
            format!("you asked for a lease of {asked} s, which this daemon cannot enforce: {why}"),
        ));
    }
    let Some(ttl) = ttl else { return Ok(None) };
    if !policy.require_enforcement() {
        return Ok(Some(false));
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!(
            "rule \"{}\" limits tokens to {} s (ttl), which this daemon cannot enforce: {why}; {} requires \
             enforcement (require_enforcement = true)",
            ttl.rule,
            ttl.secs,
            policy.path().display()
        ),
    ))
}

/// The binding a grant carries (policy `bind`, and the program and cgroup
/// `executables` and `cgroups` rules matched on), whether it is enforced
/// (`None` without one) and how the identity stands; or the refusal.
/// Where the enforcer cannot bind: `bind` follows `require_enforcement`,
/// as `ttl` does; `executables`/`cgroups` rules grant unbound only when
/// they say `enforce_identity = false` (the policy would not have loaded
/// otherwise), as claimed.
pub(super) fn binding(
    daemon: &Daemon,
    policy: &Policy,
    peer: &PeerIdentity,
    bind: &Binding,
) -> Result<(NewBinding, Option<bool>, Identity), Refusal> {
    if bind.is_empty() {
        return Ok((NewBinding::default(), None, Identity::Unchecked));
    }
    let identity_rules = bind.exe.is_some() || bind.identity_cgroup.is_some();
    let mut out = NewBinding::default();
    if bind.uid.is_some() {
        out.kernel.uid = Some(peer.creds.uid);
    }
    if bind.binds_cgroup() {
        out.cgroup_path = peer.creds.cgroup.clone();
    }
    let why = match &daemon.enforcer {
        Err(why) => format!("enforcement is unavailable: {why}"),
        Ok(_) => {
            let exe = match (&bind.exe, peer.exe_id) {
                (None, _) => Ok(None),
                (Some(_), Some(id)) => Ok(Some(id)),
                // A rule matched on the path, so the file was known.
                (Some(_), None) => Err("the matched executable's file identity is unknown".to_owned()),
            };
            let cgroup = if bind.binds_cgroup() {
                crate::cgroup::id_of(peer.creds.cgroup.as_deref()).map(Some).map_err(|e| e.to_string())
            } else {
                Ok(None)
            };
            match (exe, cgroup) {
                (Ok(exe), Ok(cgroup)) => {
                    out.kernel.exe = exe;
                    out.kernel.cgroup = cgroup;
                    let identity = if identity_rules { Identity::Enforced } else { Identity::Unchecked };
                    return Ok((out, Some(true), identity));
                }
                (Err(e), _) | (_, Err(e)) => e,
            }
        }
    };
    let explicit = bind.uid.is_some() || bind.cgroup.is_some();
    let identity_ok = !identity_rules || (bind.identity_advisory && daemon.enforcer.is_err());
    if identity_ok && (!explicit || !policy.require_enforcement()) {
        let identity = if identity_rules { Identity::Claimed } else { Identity::Unchecked };
        // Not enforced: nothing is written for the kernel to check.
        return Ok((out, Some(false), identity));
    }
    let mut what = Vec::new();
    if let Some(rule) = &bind.uid {
        what.push(format!("to their owner uid (rule \"{rule}\")"));
    }
    if let Some(rule) = &bind.cgroup {
        what.push(format!("to the cgroup they are minted from (rule \"{rule}\")"));
    }
    if !identity_ok {
        if let Some(rule) = &bind.exe {
            what.push(format!("to the program they were matched on (rule \"{rule}\", executables)"));
        }
        if let Some(rule) = &bind.identity_cgroup {
            what.push(format!("to the cgroup they were matched in (rule \"{rule}\", cgroups)"));
        }
    }
    let needs = if explicit && identity_ok {
        format!("; {} requires enforcement (require_enforcement = true)", policy.path().display())
    } else {
        String::new()
    };
    if explicit {
        // Which of them the policy's `bind` asked for.
        let n = usize::from(bind.uid.is_some()) + usize::from(bind.cgroup.is_some());
        what[n - 1].push_str(" (bind)");
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!("binding tokens {} cannot be enforced by this daemon: {why}{needs}", what.join(" and ")),
    ))
}

/// How a grant under `executables`/`cgroups` rules stands to the
/// identity they matched on (for the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// No matching rule looks at the caller's executable or cgroup.
    Unchecked,
    /// The enforcer binds the tokens to the program and cgroup matched.
    Enforced,
    /// Matched from /proc only (`enforce_identity = false`, no enforcer):
    /// any program of the uid could have asked.
    Claimed,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Unchecked => "-",
            Identity::Enforced => "enforced",
            Identity::Claimed => "claimed",
        }
    }
}

/// Whether one more token fits under `limit` (`max_live_tokens`): the
/// admission to hold until the token is delivered, and whether the limit
/// is enforced (`None` without a limit), or the refusal.
fn live_admission<'a>(
    daemon: &'a Daemon,
    policy: &Policy,
    uid: u32,
    limit: Option<&LiveLimit>,
) -> Result<(Option<Admitted<'a>>, Option<bool>), Refusal> {
    let Some(limit) = limit else { return Ok((None, None)) };
    let why = match &daemon.enforcer {
        Ok(enforcer) => match daemon.live.admit(uid, limit.max, enforcer, &daemon.scopes) {
            Ok(admitted) => return Ok((Some(admitted), Some(true))),
            Err(LiveError::AtLimit { uid, live }) => {
                return Err(Refusal::new(
                    RefusalCode::TooManyTokens,
                    format!(
                        "uid {uid} holds {live} live tokens, and rule \"{}\" allows at most {} at once; close some \
                         first",
                        limit.rule, limit.max
                    ),
                ))
            }
            Err(e @ LiveError::Count(_)) => e.to_string(),
        },
        Err(why) => format!("enforcement is unavailable: {why}"),
    };
    if !policy.require_enforcement() {
        return Ok((None, Some(false)));
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!(
            "rule \"{}\" allows at most {} live tokens per uid, which this daemon cannot count: {why}; {} \
             requires enforcement (require_enforcement = true)",
            limit.rule,
            limit.max,
            policy.path().display()
        ),
    ))
}

/// Per-rule, per-uid mint counts over the last minute.
#[derive(Debug, Default)]
pub(super) struct RateLimiter {
    windows: Mutex<HashMap<(String, u32), VecDeque<Instant>>>,
}

impl RateLimiter {
    const WINDOW: Duration = Duration::from_secs(60);

    /// Count a mint for `uid` under every limited rule, or say which limit
    /// it would exceed (and count nothing).
    pub(super) fn admit(&self, uid: u32, limits: &[RateLimit]) -> Result<(), String> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what has left the window (bounds memory by rules x uids).
        windows.retain(|_, w| {
            while w.front().is_some_and(|t| now.duration_since(*t) >= Self::WINDOW) {
                w.pop_front();
            }
            !w.is_empty()
        });
        for limit in limits {
            let used = windows.get(&(limit.rule.clone(), uid)).map_or(0, |w| w.len());
            if used >= limit.per_minute as usize {
                let oldest = windows.get(&(limit.rule.clone(), uid)).and_then(|w| w.front().copied()).unwrap_or(now);
                let wait = Self::WINDOW.saturating_sub(now.duration_since(oldest)).as_secs() + 1;
                return Err(format!(
                    "uid {uid} reached the limit of {} mints per minute of rule \"{}\"; retry in {wait} s",
                    limit.per_minute, limit.rule
                ));
            }
        }
        for limit in limits {
            windows.entry((limit.rule.clone(), uid)).or_default().push_back(now);
        }
        Ok(())
    }
}
