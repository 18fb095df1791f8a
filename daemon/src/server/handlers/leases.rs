//! Leases after the grant: `bpftoken leases` (list), `bpftoken revoke`,
//! and the end of a learning lease (`bpftoken learn` asking what its
//! command used).
//!
//! Invariants: a caller sees and revokes its own leases only (root: all);
//! every lease revoked gets its own audit event, written before the
//! answer that reports it. A listing's answer always fits in one frame:
//! a page is cut where the next lease would not fit ([`Budget`]), and the
//! old one-answer `Leases` request is refused `answer_too_large` rather
//! than answered with a frame its client cannot read, or with part of
//! the list that it could not tell from the whole.

use bpftoken_proto::codec;
use bpftoken_proto::{
    LeaseInfo, LeasePage, LeasesPageRequest, OtherBuild, RefusalCode, Response, RevokeTarget, MAX_FRAME,
    MAX_LEASES_PER_PAGE,
};

use crate::audit;
use crate::enforcer::Enforcer;
use crate::lease::LeaseTable;
use crate::peer::PeerIdentity;
use crate::server::reply::{Outcome, Refused, Reply};
use crate::server::Daemon;

/// The caller's leases (root: all of them) in one answer, for clients
/// older than paged listings; refused when they do not fit in a frame.
pub(in crate::server) fn handle_leases(daemon: &Daemon, peer: &PeerIdentity) -> Outcome<'static> {
    let uid = peer.creds.uid;
    let whose = (uid != 0).then_some(uid);
    let Some(leases) = one_answer(&daemon.leases, daemon.enforcer(), whose) else {
        let count = daemon.leases.count(whose);
        let msg = format!(
            "{count} leases do not fit in one answer, and this client asks for them in one (it is older than \
             paged listings): upgrade bpftoken, which lists them page by page"
        );
        return Err(Refused::new(RefusalCode::AnswerTooLarge, msg));
    };
    tracing::debug!(peer_uid = uid, leases = leases.len(), "listed leases");
    Ok(Reply::answer(Response::Leases(leases)))
}

/// One page of the caller's leases (root: everyone's), cut to fit in a
/// frame; the first page also carries the counts of forgotten leases.
pub(in crate::server) fn handle_leases_page(
    daemon: &Daemon,
    peer: &PeerIdentity,
    asked: LeasesPageRequest,
) -> Outcome<'static> {
    let uid = peer.creds.uid;
    let page = page(&daemon.leases, daemon.enforcer(), (uid != 0).then_some(uid), asked);
    tracing::debug!(peer_uid = uid, after = ?asked.after, leases = page.leases.len(), "listed a page of leases");
    Ok(Reply::answer(Response::LeasesPage(page)))
}

/// Every lease of `whose` (all with `None`) if their [`Response::Leases`]
/// fits in a frame.
fn one_answer(table: &LeaseTable, enforcer: Option<&Enforcer>, whose: Option<u32>) -> Option<Vec<LeaseInfo>> {
    let mut budget = Budget::after(&Response::Leases(Vec::new()));
    let page = table.page(enforcer, whose, None, usize::MAX, |l| budget.take(l));
    page.next.is_none().then_some(page.leases)
}

/// The page `asked` names of the leases of `whose` (all with `None`),
/// whose [`Response::LeasesPage`] fits in a frame.
fn page(table: &LeaseTable, enforcer: Option<&Enforcer>, whose: Option<u32>, asked: LeasesPageRequest) -> LeasePage {
    let limit = match asked.limit {
        0 => MAX_LEASES_PER_PAGE,
        n => n.min(MAX_LEASES_PER_PAGE),
    };
    let forgotten = if asked.after.is_none() { table.forgotten(whose) } else { Vec::new() };
    let empty = LeasePage { leases: Vec::new(), next: Some(u64::MAX), forgotten };
    let mut budget = Budget::after(&Response::LeasesPage(empty.clone()));
    let page = table.page(enforcer, whose, asked.after, limit as usize, |l| budget.take(l));
    LeasePage { leases: page.leases, next: page.next, ..empty }
}

/// Bytes left in a frame for the leases of an answer.
#[derive(Debug)]
struct Budget {
    left: usize,
}

/// The version in front of every payload (`codec`).
const VERSION_LEN: usize = 2;

/// How much a list's length prefix (a varint) can grow from the 1 byte of
/// an empty list: to 5 bytes, enough for any length a frame can hold.
const LENGTH_GROWTH: usize = 4;

impl Budget {
    /// What is left once `empty` is encoded: the answer with no lease
    /// and every other part at its largest (a cursor of `u64::MAX`).
    fn after(empty: &Response) -> Budget {
        let envelope = codec::encode_message(empty).map_or(MAX_FRAME, |b| b.len());
        Budget { left: MAX_FRAME.saturating_sub(VERSION_LEN + envelope + LENGTH_GROWTH) }
    }

    /// Whether `lease` fits in what is left; if so it is taken from it.
    fn take(&mut self, lease: &LeaseInfo) -> bool {
        let Ok(size) = codec::encode_message(lease).map(|b| b.len()) else { return false };
        match self.left.checked_sub(size) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bpftoken_proto::{ForgottenLeases, LeaseMode};

    use super::*;
    use crate::lease::{NewBinding, NewLease, MAX_FORGOTTEN_UIDS, MAX_LISTED_CGROUP};

    fn start(t: &LeaseTable, uid: u32, cgroup: Option<String>) -> u64 {
        let new = NewLease {
            uid,
            scope_uid: uid,
            scope: 4026531837,
            mode: LeaseMode::Libbpf,
            serial: Some(u64::MAX),
            whole_scope: false,
            ttl: Some(Duration::from_secs(3600)),
            bind: NewBinding { cgroup_path: cgroup, ..NewBinding::default() },
        };
        t.start(None, new).unwrap().id
    }

    /// The frame `page` would go out as, checked to decode.
    fn framed(page: &LeasePage) -> usize {
        let frame = codec::encode_response(&Response::LeasesPage(page.clone())).expect("fits in a frame");
        assert_eq!(codec::decode_response(&frame[4..]).unwrap(), Response::LeasesPage(page.clone()));
        frame.len() - 4
    }

    #[test]
    fn the_largest_pages_fit_in_a_frame_and_a_walk_lists_every_lease_once() {
        let t = LeaseTable::default();
        // Leases as large as a listing shows them: the longest cgroup
        // path (cut), every optional field set, large numbers.
        let long = format!("/{}", "c".repeat(MAX_LISTED_CGROUP * 2));
        let mut ids: Vec<u64> = (0..60).map(|i| start(&t, u32::MAX - i % 3, Some(long.clone()))).collect();
        ids.extend((0..3000).map(|i| start(&t, u32::MAX - i % 3, None)));
        // The most forgotten counts the first page can carry.
        let forgotten: Vec<ForgottenLeases> = (0..u32::try_from(MAX_FORGOTTEN_UIDS).unwrap())
            .map(|u| ForgottenLeases { uid: Some(u32::MAX - u), count: u64::MAX })
            .chain([ForgottenLeases { uid: None, count: u64::MAX }])
            .collect();
        let mut listed = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let mut p = page(&t, None, None, LeasesPageRequest { after, limit: 0 });
            assert!(p.leases.len() <= MAX_LEASES_PER_PAGE as usize);
            if after.is_none() {
                assert!(p.forgotten.is_empty(), "nothing was forgotten");
                p.forgotten = forgotten.clone();
                // Cut again with the forgotten counts in the envelope.
                let empty = LeasePage { leases: Vec::new(), next: Some(u64::MAX), forgotten: forgotten.clone() };
                let mut budget = Budget::after(&Response::LeasesPage(empty));
                let cut = t.page(None, None, None, MAX_LEASES_PER_PAGE as usize, |l| budget.take(l));
                p.leases = cut.leases;
                p.next = cut.next;
                assert!(p.leases.len() < 60, "a page of the longest leases is cut by size: {}", p.leases.len());
            }
            assert!(framed(&p) <= MAX_FRAME);
            assert!(p.leases.iter().all(|l| l.bound_cgroup.as_ref().is_none_or(|c| c.len() == MAX_LISTED_CGROUP)));
            listed.extend(p.leases.iter().map(|l| l.id));
            pages += 1;
            match p.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(listed, ids, "each lease once, in order");
        assert!(pages >= 4, "{pages} pages");
    }

    #[test]
    fn the_old_request_gets_every_lease_while_they_fit_and_nothing_once_they_do_not() {
        let t = LeaseTable::default();
        for _ in 0..1000 {
            start(&t, 1000, None);
        }
        start(&t, 1001, None);
        let all = one_answer(&t, None, None).expect("1001 leases fit");
        assert_eq!(all.len(), 1001);
        assert!(codec::encode_response(&Response::Leases(all)).is_ok());
        for _ in 0..5000 {
            start(&t, 1000, None);
        }
        assert_eq!(one_answer(&t, None, Some(1000)), None, "6000 leases do not fit");
        assert_eq!(one_answer(&t, None, Some(1001)).map(|l| l.len()), Some(1), "uid 1001's one lease does");
    }
}
