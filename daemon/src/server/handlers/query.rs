//! `bpftoken query`: what the policy gives the caller, and why not where
//! it would refuse; nothing is minted and nothing is audited.

use bpftoken_policy::Decision;
use bpftoken_proto::{Explanation, MintRequest, Refusal, Response};

use crate::enforcer::Enforcer;
use crate::peer::PeerIdentity;
use crate::server::decide::{binding, lease_refusal, peer_refusal};
use crate::server::reply::{Outcome, Reply};
use crate::server::Daemon;

/// Explain what the policy gives the caller; nothing is minted.
/// With `enforcement`, the answer also says whether leases are enforced.
pub(in crate::server) fn handle_query(daemon: &Daemon, peer: &PeerIdentity, enforcement: bool) -> Outcome<'static> {
    let policy = daemon.policy();
    let eff = policy.effective(&peer.creds);
    let refusal = match peer_refusal(peer) {
        Some(r) => Some(r),
        None => match policy.decide(&peer.creds, &MintRequest::default()) {
            Decision::Refuse { code, message, .. } => Some(Refusal::new(code, message)),
            Decision::Grant { ttl, bind, .. } => lease_refusal(daemon, &policy, ttl.as_ref(), None)
                .err()
                .or_else(|| binding(daemon, &policy, peer, &bind).err()),
        },
    };
    let explanation = Explanation {
        policy: policy.path().display().to_string(),
        grant: eff.grant,
        allowed_by: eff.allowed_by,
        denied_by: eff.denied_by,
        limits: eff.limits.into_iter().map(|l| (l.rule, l.per_minute)).collect(),
        refusal,
    };
    tracing::debug!(peer_uid = peer.creds.uid, "answered a policy query");
    let other_builds = if enforcement { daemon.enforcer().map(Enforcer::other_builds) } else { None };
    let other_builds = other_builds.unwrap_or_default();
    let response = if enforcement && !other_builds.is_empty() {
        Response::ExplainedEnforcementWithOtherBuilds { explanation, enforcement: daemon.enforcement(), other_builds }
    } else if enforcement {
        Response::ExplainedEnforcement { explanation, enforcement: daemon.enforcement() }
    } else {
        Response::Explained(explanation)
    };
    Ok(Reply::answer(response))
}
