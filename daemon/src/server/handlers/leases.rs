//! Leases after the grant: `bpftoken leases` (list), `bpftoken revoke`,
//! and the end of a learning lease (`bpftoken learn` asking what its
//! command used).
//!
//! Invariants: a caller sees and revokes its own leases only (root: all);
//! every lease revoked gets its own audit event, written before the
//! answer that reports it.

use bpftoken_proto::{OtherBuild, RefusalCode, Response, RevokeTarget};

use crate::audit;
use crate::peer::PeerIdentity;
use crate::server::reply::{Outcome, Refused, Reply};
use crate::server::Daemon;

/// The caller's leases (root: all of them).
pub(in crate::server) fn handle_leases(daemon: &Daemon, peer: &PeerIdentity) -> Outcome<'static> {
    let uid = peer.creds.uid;
    let leases = daemon.leases.list(daemon.enforcer(), (uid != 0).then_some(uid));
    tracing::debug!(peer_uid = uid, leases = leases.len(), "listed leases");
    Ok(Reply::answer(Response::Leases(leases)))
}

/// Revoke leases: one event per lease revoked, a typed refusal otherwise.
pub(in crate::server) fn handle_revoke(daemon: &Daemon, peer: &PeerIdentity, target: RevokeTarget) -> Outcome<'static> {
    let enforcer = daemon.enforcer.as_ref().map_err(ToString::to_string);
    let revoked = daemon.leases.revoke(enforcer, peer.creds.uid, target)?;
    for lease in &revoked {
        audit::revoked(peer, lease);
    }
    let other_builds = revoke_other_builds(daemon, peer, target);
    let response = if other_builds.is_empty() {
        Response::Revoked(revoked)
    } else {
        Response::RevokedWithOtherBuilds { revoked, other_builds }
    };
    Ok(Reply::answer(response))
}

/// A uid's or every lease in the pinned enforcers of other builds (the
/// caller may revoke `target`: checked already).
fn revoke_other_builds(daemon: &Daemon, peer: &PeerIdentity, target: RevokeTarget) -> Vec<OtherBuild> {
    let whose = match target {
        RevokeTarget::Uid(uid) => crate::others::Whose::Uid(uid),
        RevokeTarget::All => crate::others::Whose::All,
        RevokeTarget::Lease(_) => return Vec::new(),
    };
    let done = daemon.enforcer().map(|e| e.revoke_other_builds(whose)).unwrap_or_default();
    for set in &done {
        tracing::info!(target: "bpftokend::audit", decision = "revoked", peer_uid = peer.creds.uid, "{set}");
    }
    done
}

/// End learning lease `id` (revoke it) and answer what its tokens were
/// used for; one audit event, `learned` or `refused`.
pub(in crate::server) fn handle_learned(daemon: &Daemon, peer: &PeerIdentity, id: u64) -> Outcome<'static> {
    let me = peer.creds.uid;
    let enforcer = match &daemon.enforcer {
        Ok(e) => e,
        Err(why) => {
            let msg = format!("learning needs the enforcer: enforcement is unavailable: {why}");
            return Err(Refused::new(RefusalCode::LearningUnavailable, msg));
        }
    };
    let entry = daemon.learning.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
    let scope = match entry {
        None => {
            let msg = format!("no learning lease {id}: it never existed, has ended, or is not a learning lease");
            return Err(Refused::new(RefusalCode::UnknownLease, msg));
        }
        Some((owner, _)) if me != 0 && owner != me => {
            let msg =
                format!("learning lease {id} belongs to uid {owner}, not to you (uid {me}); only root may end it");
            return Err(Refused::new(RefusalCode::NotYourLease, msg));
        }
        Some((_, scope)) => scope,
    };
    // Revoke first: nothing more is recorded once its tokens are refused.
    let lease = match daemon.leases.revoke(Ok(enforcer), me, RevokeTarget::Lease(id)) {
        Ok(mut revoked) if revoked.len() == 1 => revoked.remove(0),
        Ok(_) => {
            daemon.end_learning(id);
            let msg = format!("learning lease {id} is gone (its scope was freed)");
            return Err(Refused::new(RefusalCode::UnknownLease, msg));
        }
        Err(r) => {
            daemon.end_learning(id);
            return Err(r.into());
        }
    };
    let used = enforcer.learned(scope);
    daemon.end_learning(id);
    let used = match used {
        Ok(Some(used)) => used,
        Ok(None) => {
            let msg = format!("learning lease {id} recorded nothing: its scope was freed before it ended");
            return Err(Refused::new(RefusalCode::UnknownLease, msg));
        }
        Err(e) => {
            let msg = format!("cannot read what learning lease {id} recorded: {e}");
            return Err(Refused::new(RefusalCode::MintFailed, msg));
        }
    };
    audit::learned(peer, &lease, &used);
    Ok(Reply::answer(Response::Learned { lease, used }))
}
