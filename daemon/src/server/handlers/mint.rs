//! Granting tokens: decide, find or create the scope, mint, start the
//! lease, and hand the grant to the reply writer.
//!
//! Serves `Mint`, `MintScope`, `MintLease` (token or libbpf mode),
//! `Learn` (a learning lease, libbpf mode) and `MintForProgram` (after
//! [`for_program`] took the program it names as the caller's).
//!
//! Counted here (`stats.metrics`): each token minted, warm or cold, and
//! how long it took from the handler's start (the decision included) to
//! the token in hand.
//!
//! Invariants: the lease is started (and, with the enforcer, written for
//! the kernel) before the grant leaves the daemon; a libbpf-mode lease
//! under the enforcer gets a scope of its own, so revoking it touches no
//! other grant; a refusal after the decision names the rules that granted.

use std::os::fd::AsFd;

use bpftoken_proto::message::MAX_PROGRAM_PATH;
use bpftoken_proto::{LeaseInfo, LeaseMode, Minted, Refusal, RefusalCode, Response};

use crate::lease::NewLease;
use crate::minter::{MintError, ScopeKey, ScopeOwner};
use crate::peer::{PeerIdentity, PeerUserns};
use crate::server::decide::{decide, Asked};
use crate::server::reply::{Handout, Outcome, Refused, Reply};
use crate::server::Daemon;

/// What a mint hands out besides the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) enum Mode {
    /// The token alone.
    Token,
    /// libbpf mode: the token, its user namespace and its bpffs root.
    Scope,
}

/// Take the program a [`RequestBody::MintForProgram`] names as the
/// caller's executable, where the enforcer can bind the grant to it;
/// without the enforcer the caller's word is not taken and its own
/// executable stays what `executables` rules see. Refused: a path that is
/// not absolute, too long, or no file on the host.
///
/// [`RequestBody::MintForProgram`]: bpftoken_proto::message::RequestBody::MintForProgram
pub(in crate::server) fn for_program(daemon: &Daemon, peer: &mut PeerIdentity, program: &str) -> Result<(), Refusal> {
    if program.len() > MAX_PROGRAM_PATH {
        return Err(Refusal::new(
            RefusalCode::Malformed,
            format!("a program path is at most {MAX_PROGRAM_PATH} bytes"),
        ));
    }
    if daemon.enforcer().is_none() || !daemon.policy().reads_executable() {
        return Ok(());
    }
    peer.with_program(program).map_err(|e| Refusal::new(RefusalCode::BadProgram, e.to_string()))
}

/// Decide, mint, start the lease; the grant to deliver, or the refusal.
pub(in crate::server) async fn handle_mint<'a>(
    daemon: &'a Daemon,
    peer: &PeerIdentity,
    asked: &Asked,
    mode: Mode,
) -> Outcome<'a> {
    let started = std::time::Instant::now();
    let grant = decide(daemon, peer, asked)?;
    let (delegation, rules) = (grant.delegation, grant.rules.clone());
    let (owner, target, lease_mode) = match (peer.userns, &peer.userns_fd) {
        (PeerUserns::Nested { owner_uid, ino }, Some(ns)) => {
            (ScopeOwner::Userns { ino, owner_uid }, Some(ns.as_fd()), LeaseMode::Container)
        }
        _ => (
            ScopeOwner::Uid { uid: peer.creds.uid, gid: peer.creds.gid },
            None,
            if mode == Mode::Scope { LeaseMode::Libbpf } else { LeaseMode::Owner },
        ),
    };
    let key = ScopeKey { owner, delegation };
    // libbpf mode hands out the scope itself; where leases are enforced it
    // gets a scope of its own (a container's is its namespace, shared).
    let exclusive = mode == Mode::Scope && daemon.enforcer().is_some() && lease_mode == LeaseMode::Libbpf;
    let (token, scope, cold) = daemon.mint(key, target, exclusive).await.map_err(|e| mint_failed(&rules, &e))?;
    daemon.stats.metrics.count_mint(cold, started.elapsed());
    let scope_ino = match owner {
        ScopeOwner::Userns { ino, .. } => ino,
        ScopeOwner::Uid { .. } => {
            scope.userns_ino().map_err(|e| mint_failed(&rules, &MintError::BadTarget(e.to_string())))?
        }
    };
    let new = NewLease {
        uid: peer.creds.uid,
        scope_uid: scope.key.owner_uid(),
        scope: scope_ino,
        mode: lease_mode,
        serial: token.serial(),
        whole_scope: mode == Mode::Scope,
        ttl: grant.ttl,
        bind: grant.bind.clone(),
    };
    let lease = start_lease(daemon, &rules, new)?;
    if grant.learn {
        if let Err(e) = daemon.start_learning(&lease) {
            daemon.leases.cancel(daemon.enforcer(), lease.id);
            return Err(Refused::new(RefusalCode::MintFailed, format!("minting failed: {e}")));
        }
    }
    let fds = match mode {
        Mode::Token => Handout::Token(token),
        Mode::Scope => Handout::TokenAndScope(token, scope),
    };
    let response = answer(asked, Minted { granted: delegation, rules, fds: fds.roles() }, &lease);
    Ok(Reply::grant(response, fds, grant, cold, lease))
}

/// The answer to a grant: with its lease for the requests that ask for
/// one ([`Response::Leased`]; the older requests get [`Response::Minted`]).
pub(super) fn answer(asked: &Asked, minted: Minted, lease: &LeaseInfo) -> Response {
    if asked.leased {
        Response::Leased { minted, lease: lease.clone() }
    } else {
        Response::Minted(minted)
    }
}

/// Start the lease of a grant about to be delivered, or refuse.
pub(super) fn start_lease(daemon: &Daemon, rules: &[String], new: NewLease) -> Result<LeaseInfo, Refused> {
    daemon.leases.start(daemon.enforcer(), new).map_err(|e| {
        Refused::by_rules(rules.to_vec(), Refusal::new(RefusalCode::MintFailed, format!("minting failed: {e}")))
    })
}

/// The refusal of a granted request whose mint failed.
pub(super) fn mint_failed(rules: &[String], e: &MintError) -> Refused {
    Refused::by_rules(rules.to_vec(), Refusal::new(RefusalCode::MintFailed, format!("minting failed: {e}")))
}
