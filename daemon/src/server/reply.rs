//! The one place a reply is written.
//!
//! Handlers return an [`Outcome`]: a [`Reply`] to send or a [`Refused`]
//! answer. [`Outbox::reply`] sends it, with what goes with it:
//!
//! - a refusal is counted (`stats.refused`, and by code in
//!   `stats.metrics`), audited (`audit::refused`,
//!   naming the rules that matched, if the policy was asked), then sent;
//! - a grant is sent with its fds as `SCM_RIGHTS` on the answer's first
//!   byte, the daemon's copies of them close, and then it is counted
//!   (`stats.minted`, and by mode in `stats.metrics`) and audited
//!   (`audit::granted`); if it could not be
//!   sent, its lease is cancelled and it is audited as refused
//!   (`mint_failed`, the client went away before taking it);
//! - a perf event or tracepoint id file (tracing without root) is sent
//!   with its one fd, then audited (`audit::traced`, naming the target);
//! - any other answer is just sent (its handler logged what it did).
//!
//! Invariants: a refusal's audit event comes before its answer, a grant's
//! after it (it says the grant was delivered). [`Outbox`] remembers
//! whether its connection sent an answer with fds that the peer may not
//! have read yet, so that a connection holds at most one.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bpftoken_proto::codec;
use bpftoken_proto::message::FdRole;
use bpftoken_proto::{LeaseInfo, Refusal, RefusalCode, Response};
use tokio::io::Interest;

use super::decide::Grant;
use super::stream::Stream;
use super::{Daemon, WRITE_TIMEOUT};
use crate::audit;
use crate::minter::Scope;
use crate::peer::PeerIdentity;
use crate::sys::MintedToken;

/// What a handler answers: a reply to send, or a refusal.
pub(super) type Outcome<'a> = Result<Reply<'a>, Refused>;

/// A reply to send: the answer, and for a grant what goes with it.
pub(super) struct Reply<'a> {
    response: Response,
    /// A grant's fds and what its audit event needs; `None` for an
    /// answer that carries no fds.
    delivery: Option<Delivery<'a>>,
    /// A perf event or id file and what its audit event names.
    traced: Option<Traced>,
}

/// A tracing answer's fd and what its audit event names.
pub(super) struct Traced {
    pub(super) fd: OwnedFd,
    /// "tracepoint CAT:NAME", "id of tracepoint CAT:NAME", "kprobe SYM", ...
    pub(super) what: String,
    pub(super) pid: Option<i32>,
    pub(super) rule: String,
}

impl<'a> Reply<'a> {
    /// An answer that carries no fds (its handler logged what it did).
    pub(super) fn answer(response: Response) -> Self {
        Reply { response, delivery: None, traced: None }
    }

    /// A perf event or tracepoint id file: the answer, its one fd, and
    /// what its audit event names.
    pub(super) fn traced(response: Response, traced: Traced) -> Self {
        Reply { response, delivery: None, traced: Some(traced) }
    }

    /// A grant: its answer (`Minted` or `Leased`, which names the roles of
    /// `fds`), the fds it hands out, whether its scope was created for it
    /// (`cold`), and its lease, started already (cancelled if the answer
    /// cannot be sent).
    pub(super) fn grant(response: Response, fds: Handout, grant: Grant<'a>, cold: bool, lease: LeaseInfo) -> Self {
        Reply { response, delivery: Some(Delivery { fds, grant, cold, lease }), traced: None }
    }
}

/// A refusal, with the policy rules that matched (named in its audit
/// event; none where the policy was not asked).
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) refusal: Refusal,
    pub(super) rules: Vec<String>,
}

impl Refused {
    /// A refusal no policy rule is behind.
    pub(super) fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal::new(code, message).into()
    }

    /// A refusal of a request these policy rules matched.
    pub(super) fn by_rules(rules: Vec<String>, refusal: Refusal) -> Self {
        Refused { refusal, rules }
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused { refusal, rules: Vec::new() }
    }
}

/// What a grant's answer carries, and what its audit event needs.
struct Delivery<'a> {
    fds: Handout,
    grant: Grant<'a>,
    cold: bool,
    lease: LeaseInfo,
}

/// The fds a grant hands out, held until its answer is sent; the daemon's
/// copies close right after, whatever happened, so it keeps no token it
/// handed out.
pub(super) enum Handout {
    /// A token.
    Token(MintedToken),
    /// libbpf mode: the token, its scope's user namespace and bpffs root.
    TokenAndScope(MintedToken, Arc<Scope>),
    /// A delegated bpffs: the scope's detached mount.
    Mount(Scope),
}

impl Handout {
    /// What each fd is, in the order they are attached (the answer names
    /// them so).
    pub(super) fn roles(&self) -> Vec<FdRole> {
        match self {
            Handout::Token(_) => vec![FdRole::Token],
            Handout::TokenAndScope(..) => vec![FdRole::Token, FdRole::UserNamespace, FdRole::Bpffs],
            Handout::Mount(_) => vec![FdRole::Bpffs],
        }
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Handout::Token(token) => vec![token.as_fd()],
            Handout::TokenAndScope(token, scope) => {
                vec![token.as_fd(), scope.userns.as_fd(), scope.bpffs_root.as_fd()]
            }
            Handout::Mount(scope) => vec![scope.mount.as_fd()],
        }
    }
}

/// The client went away, or did not take its answer in time: the
/// connection ends.
#[derive(Debug, thiserror::Error)]
#[error("the client went away before taking its answer")]
pub(super) struct ClientGone;

/// The writing side of one connection.
pub(super) struct Outbox<'s> {
    stream: &'s Stream,
    /// This connection sent an answer that carried fds and that its peer
    /// may not have read yet.
    fds_unread: bool,
}

impl<'s> Outbox<'s> {
    pub(super) fn new(stream: &'s Stream) -> Self {
        Outbox { stream, fds_unread: false }
    }

    /// Send what a handler answered to `peer`'s request, with its count and
    /// audit event.
    pub(super) async fn reply(
        &mut self,
        daemon: &Daemon,
        peer: &PeerIdentity,
        outcome: Outcome<'_>,
    ) -> Result<(), ClientGone> {
        match outcome {
            Err(refused) => self.refuse(daemon, peer, refused).await,
            Ok(Reply { response, delivery: Some(delivery), .. }) => {
                self.deliver(daemon, peer, &response, delivery).await
            }
            Ok(Reply { response, traced: Some(t), .. }) => {
                let sent = self.send(&response, &[t.fd.as_fd()]).await;
                drop(t.fd);
                audit::traced(peer, &t.what, t.pid, &t.rule, sent.is_ok());
                sent.map_err(|_| ClientGone)
            }
            Ok(Reply { response, .. }) => self.send(&response, &[]).await.map_err(|_| ClientGone),
        }
    }

    /// Count, audit and send a refusal.
    pub(super) async fn refuse(
        &mut self,
        daemon: &Daemon,
        peer: &PeerIdentity,
        refused: Refused,
    ) -> Result<(), ClientGone> {
        let Refused { refusal, rules } = refused;
        daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
        daemon.stats.metrics.count_refusal(refusal.code);
        audit::refused(peer, &rules, refusal.code, &refusal.message);
        self.send(&Response::Refused(refusal), &[]).await.map_err(|_| ClientGone)
    }

    /// Send a grant with its fds, then count and audit it; one the client
    /// did not take is cancelled and audited as refused.
    async fn deliver(
        &mut self,
        daemon: &Daemon,
        peer: &PeerIdentity,
        response: &Response,
        delivery: Delivery<'_>,
    ) -> Result<(), ClientGone> {
        let Delivery { fds, grant, cold, lease } = delivery;
        let delivered = self.send(response, &fds.fds()).await;
        // Our copies (the token above all) close here whatever happened.
        drop(fds);
        match delivered {
            Ok(()) => {
                daemon.stats.minted.fetch_add(1, Ordering::Relaxed);
                daemon.stats.metrics.count_grant(grant.learn, lease.mode);
                let mode = if grant.learn { "learn" } else { lease.mode.as_str() };
                audit::granted(
                    peer,
                    &grant.rules,
                    &grant.delegation,
                    cold,
                    mode,
                    grant.enforced,
                    grant.identity,
                    &lease,
                );
                Ok(())
            }
            Err(e) => {
                if grant.learn {
                    daemon.end_learning(lease.id);
                }
                daemon.leases.cancel(daemon.enforcer(), lease.id);
                daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                daemon.stats.metrics.count_refusal(RefusalCode::MintFailed);
                audit::refused(
                    peer,
                    &grant.rules,
                    RefusalCode::MintFailed,
                    &format!("client went away before taking its grant: {e}"),
                );
                Err(ClientGone)
            }
        }
    }

    /// Whether an answer this connection sent with fds may still be unread
    /// by its peer (once it is read, that is forgotten).
    pub(super) fn earlier_fds_unread(&mut self) -> bool {
        if !self.fds_unread {
            return false;
        }
        if crate::sys::unread_by_peer(self.stream.as_fd()).map_or(true, |n| n > 0) {
            return true;
        }
        self.fds_unread = false;
        false
    }

    /// Send one response, with `fds` attached to its first byte.
    async fn send(&mut self, response: &Response, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if !fds.is_empty() {
            self.fds_unread = true;
        }
        let stream = self.stream;
        let bytes = codec::encode_response(response).map_err(std::io::Error::other)?;
        let send = async {
            // The fds go with the first byte (sys/fdpass.rs, as every fd
            // the daemon passes). Tried before waiting for epoll: an answer
            // nearly always fits in the socket at once, and a connection
            // served inline is not registered with epoll (`stream.rs`).
            let mut sent = match crate::sys::fdpass::send_with_fds(stream.as_fd(), &bytes, fds) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    stream
                        .async_io(Interest::WRITABLE, || crate::sys::fdpass::send_with_fds(stream.as_fd(), &bytes, fds))
                        .await?
                }
                done => done?,
            };
            while sent < bytes.len() {
                sent += stream
                    .async_io(Interest::WRITABLE, || {
                        crate::sys::fdpass::send_with_fds(stream.as_fd(), &bytes[sent..], &[])
                    })
                    .await?;
            }
            Ok(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, send).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read its response"))
        })
    }
}
