//! A bpffs delegated to a user namespace the caller owns
//! (`DelegateMount`, or `MintLease` in delegate-mount mode), for
//! container runtimes: the runtime's processes create tokens from it.
//!
//! Invariants: asked from outside the namespace only; the namespace sent
//! must be a user namespace owned by the caller's uid and not the
//! daemon's; each request gets a bpffs of its own (nothing is cached); the
//! lease covers every token of the namespace.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bpftoken_proto::{LeaseMode, Minted, RefusalCode};

use super::mint::{answer, mint_failed, start_lease};
use crate::lease::NewLease;
use crate::minter::{ScopeKey, ScopeOwner};
use crate::peer::{PeerIdentity, PeerUserns};
use crate::server::decide::{decide, Asked};
use crate::server::reply::{Handout, Outcome, Refused, Reply};
use crate::server::Daemon;

/// Delegate a bpffs to the user namespace `ns`, which the peer must own.
/// Each request gets a bpffs of its own (the caller attaches it), so
/// nothing is cached.
pub(in crate::server) async fn handle_delegate<'a>(
    daemon: &'a Daemon,
    peer: &PeerIdentity,
    asked: &Asked,
    ns: OwnedFd,
) -> Outcome<'a> {
    if peer.userns != PeerUserns::Ours {
        let message = "ask for a delegated bpffs from outside the namespace (the runtime's own user namespace), \
                       not from inside a container";
        return Err(Refused::new(RefusalCode::UnsupportedPeer, message));
    }
    let grant = decide(daemon, peer, asked)?;
    let (delegation, rules) = (grant.delegation, grant.rules.clone());
    let ino =
        check_delegation_target(ns.as_fd(), peer.creds.uid).map_err(|m| Refused::new(RefusalCode::BadNamespace, m))?;
    let key = ScopeKey { owner: ScopeOwner::Userns { ino, owner_uid: peer.creds.uid }, delegation };
    let scope = daemon.minter.create_scope(key, Some(ns.as_fd())).await.map_err(|e| mint_failed(&rules, &e))?;
    // Tokens the namespace's processes create from this bpffs are the uid's.
    daemon.remember_scope(&scope);
    // One token, checked and dropped: the bpffs delegates exactly the grant.
    if let Err(e) = daemon.scopes.mint_first(&scope, daemon.tracker()).await {
        return Err(mint_failed(&rules, &e));
    }
    // The lease covers every token of the namespace: the runtime's
    // processes create them from the bpffs themselves.
    let new = NewLease {
        uid: peer.creds.uid,
        scope_uid: scope.key.owner_uid(),
        scope: ino,
        mode: LeaseMode::DelegatedMount,
        serial: None,
        whole_scope: true,
        ttl: grant.ttl,
        bind: grant.bind.clone(),
    };
    let lease = start_lease(daemon, &rules, new)?;
    let fds = Handout::Mount(scope);
    let response = answer(asked, Minted { granted: delegation, rules, fds: fds.roles() }, &lease);
    Ok(Reply::grant(response, fds, grant, true, lease))
}

/// The namespace a peer sent must be a user namespace it owns, and not
/// ours. Returns its inode.
fn check_delegation_target(ns: BorrowedFd<'_>, uid: u32) -> Result<u64, String> {
    match crate::sys::ns_type(ns) {
        Ok(t) if t == libc::CLONE_NEWUSER => {}
        Ok(t) => return Err(format!("the fd sent is a namespace of type {t:#x}, not a user namespace")),
        Err(_) => return Err("the fd sent is not a namespace (send an fd of /proc/PID/ns/user)".to_owned()),
    }
    let st = rustix::fs::fstat(ns).map_err(|e| format!("cannot stat the namespace: {e}"))?;
    let own = rustix::fs::stat("/proc/self/ns/user").map_err(|e| format!("cannot stat our namespace: {e}"))?;
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) {
        return Err("the fd sent is the initial user namespace; send one your uid created".to_owned());
    }
    let owner = crate::sys::ns_owner_uid(ns).map_err(|e| format!("cannot read the namespace's owner: {e}"))?;
    if owner != uid {
        return Err(format!("the user namespace sent is owned by uid {owner}, not by you (uid {uid})"));
    }
    Ok(st.st_ino)
}
