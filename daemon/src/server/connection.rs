//! One client connection, from accept to close.
//!
//! [`serve_connection`] identifies the peer from the kernel
//! (`peer::identify`: `SO_PEERCRED`, `SO_PEERGROUPS`), takes a connection
//! slot (`slots.rs`; `busy` beyond the caps), then loops: read a frame
//! (`frame.rs`), identify the process that sent it
//! (`PeerIdentity::for_request`; with the first, the user namespace the
//! connection came from, `PeerIdentity::read_userns`), decode it, check the fds it carries,
//! hand it to its handler (`handlers/`), and send what the handler
//! returned through the one reply writer (`reply.rs`).
//!
//! Invariants: a connection ends after an answer it cannot send, and after
//! a bad frame header, a timeout or a read error (the frame boundary is
//! lost); a whole frame that is refused leaves it usable. A connection
//! waiting for a request may be displaced by a newcomer when the daemon is
//! full (`slots.rs`): it is told why (`busy`) and closed. A connection
//! holds at most one answer with fds its peer has not read: a client that
//! asks for tokens without reading the answers would pile them up in its
//! socket, kernel memory nothing else bounds.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use bpftoken_proto::codec::{self, CodecError};
use bpftoken_proto::message::RequestBody;
use bpftoken_proto::{LeaseRequest, MintMode, ProgramRequest, RefusalCode};
use tokio::sync::watch;

use super::decide::{learning_peer_refusal, Asked};
use super::frame::{read_frame, Frame, Inbox, ReadError, Timeouts, MAX_REQUEST_FDS};
use super::handlers::delegate::handle_delegate;
use super::handlers::leases::{handle_learned, handle_leases, handle_leases_page, handle_revoke};
use super::handlers::mint::{for_program, handle_mint, Mode};
use super::handlers::query::handle_query;
use super::handlers::trace;
use super::reply::{Outbox, Outcome, Refused};
use super::stream::Stream;
use super::Daemon;
use crate::peer::{self, Needs, PeerIdentity};

/// Serve one connection until the client closes it, it breaks, or the
/// daemon shuts down.
pub(super) async fn serve_connection(daemon: Arc<Daemon>, stream: Stream, mut shutdown: watch::Receiver<bool>) {
    let connected = match peer::identify(stream.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify peer; closing connection");
            return;
        }
    };
    let mut outbox = Outbox::new(&stream);
    let slot = match daemon.take_slot(&connected.creds) {
        Ok(slot) => slot,
        Err(message) => {
            let _ = outbox.refuse(&daemon, &connected, Refused::new(RefusalCode::Busy, message)).await;
            return;
        }
    };
    // Its user namespace is read with its first request.
    let mut connected = connected;
    let mut userns_read = false;
    // The short leash of uids no rule names: they wait idle briefly.
    let idle_timeout =
        if slot.no_rule() { daemon.limits.read_timeout.min(super::NO_RULE_IDLE) } else { daemon.limits.read_timeout };
    // The request, and after the answer the client's end (or its next
    // request), are read before waiting for epoll: a one-shot connection
    // then never waits in epoll (`stream.rs`).
    let mut inbox = Inbox::new(2);
    loop {
        let read_timeout = daemon.limits.read_timeout;
        slot.waiting();
        let read = read_frame(&stream, &mut inbox, Timeouts { idle: idle_timeout, frame: read_timeout }, &mut shutdown);
        let read = tokio::select! {
            r = read => r,
            reason = slot.displaced() => Err(ReadError::Displaced(reason)),
        };
        slot.working();
        let read = match read {
            // Displaced while the frame came in: it goes unanswered.
            Ok(Some(_)) if slot.was_displaced() => Err(ReadError::Displaced(slot.displaced_because())),
            other => other,
        };
        let mut frame = match read {
            Ok(Some(f)) => f,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Timeout { idle: true }) if slot.no_rule() => {
                let msg = format!(
                    "closed after {} ms idle: uid {} has no rule in the policy, so its connections may not wait for \
                     long",
                    idle_timeout.as_millis(),
                    connected.creds.uid
                );
                let _ = outbox.refuse(&daemon, &connected, Refused::new(RefusalCode::Timeout, msg)).await;
                return;
            }
            Err(ReadError::Timeout { .. }) => {
                let msg = format!("no complete request within {} ms", read_timeout.as_millis());
                let _ = outbox.refuse(&daemon, &connected, Refused::new(RefusalCode::Timeout, msg)).await;
                return;
            }
            Err(ReadError::Displaced(msg)) => {
                let _ = outbox.refuse(&daemon, &connected, Refused::new(RefusalCode::Busy, msg)).await;
                return;
            }
            Err(ReadError::Codec(e)) => {
                // The frame boundary is lost: answer, then close.
                let code = match e {
                    CodecError::TooLarge { .. } => RefusalCode::FrameTooLarge,
                    _ => RefusalCode::Malformed,
                };
                let _ = outbox.refuse(&daemon, &connected, Refused::new(code, e.to_string())).await;
                return;
            }
        };
        // Who sent this request: pid-based facts are the sender's, read
        // only where a rule looks at them.
        let needs = {
            let policy = daemon.policy();
            Needs { exe: policy.reads_executable(), cgroup: policy.reads_cgroup() }
        };
        let sender = frame.sender.take();
        let mut peer = connected.for_request(sender.as_ref(), needs);
        drop(sender);
        if !userns_read {
            // Later requests' identities are cloned from `connected`, so
            // they carry it already.
            connected.read_userns(stream.as_fd(), &peer);
            userns_read = true;
            peer = peer.with_userns_of(&connected);
        }
        let Some(outcome) = handle_frame(&daemon, &mut peer, &mut outbox, frame).await else { return };
        if outbox.reply(&daemon, &peer, outcome).await.is_err() {
            return;
        }
    }
}

/// Decode a whole frame, check the fds it carries and hand its request to
/// the handler; `None`: close the connection without an answer. A refusal
/// here is of a whole frame, so the connection stays usable.
async fn handle_frame<'a>(
    daemon: &'a Daemon,
    peer: &mut PeerIdentity,
    outbox: &mut Outbox<'_>,
    frame: Frame,
) -> Option<Outcome<'a>> {
    let request = match codec::decode_request(&frame.payload) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                CodecError::UnsupportedVersion { .. } => RefusalCode::UnsupportedVersion,
                _ => RefusalCode::Malformed,
            };
            return Some(Err(Refused::new(code, e.to_string())));
        }
    };
    let expected = request.body.fds_expected();
    if frame.fds_truncated || frame.fds.len() != expected {
        let got =
            if frame.fds_truncated { format!("more than {MAX_REQUEST_FDS}") } else { frame.fds.len().to_string() };
        let msg = format!("a {} request carries {expected} fd(s), this one carried {got}", request_name(&request.body));
        // The fds close here.
        drop(frame.fds);
        return Some(Err(Refused::new(RefusalCode::Malformed, msg)));
    }
    // At most one answer that may carry fds unread per connection.
    // (Requests whose answers carry none may still come back to back.)
    if answer_may_carry_fds(&request.body) && outbox.earlier_fds_unread() {
        drop(frame.fds);
        let msg = "the answer to an earlier request on this connection, which may carry fds, is still unread; read \
                   it before asking for more";
        return Some(Err(Refused::new(RefusalCode::Busy, msg)));
    }
    dispatch(daemon, peer, request.body, frame.fds).await
}

/// Hand a request to its handler; `None`: close without an answer.
async fn dispatch<'a>(
    daemon: &'a Daemon,
    peer: &mut PeerIdentity,
    body: RequestBody,
    mut fds: Vec<OwnedFd>,
) -> Option<Outcome<'a>> {
    let plain = |request| Asked { request, ttl: None, leased: false, learn: false };
    let outcome = match body {
        RequestBody::Mint(req) => handle_mint(daemon, peer, &plain(req), Mode::Token).await,
        RequestBody::MintScope(req) => handle_mint(daemon, peer, &plain(req), Mode::Scope).await,
        RequestBody::DelegateMount(req) => handle_delegate(daemon, peer, &plain(req), fds.pop()?).await,
        RequestBody::MintLease(LeaseRequest { mode, request, ttl }) => {
            let asked = Asked { request, ttl, leased: true, learn: false };
            return lease(daemon, peer, &asked, mode, fds).await;
        }
        RequestBody::Query => handle_query(daemon, peer, false),
        RequestBody::QueryEnforcement => handle_query(daemon, peer, true),
        RequestBody::Leases => handle_leases(daemon, peer),
        RequestBody::LeasesPage(asked) => handle_leases_page(daemon, peer, asked),
        RequestBody::Revoke(target) => handle_revoke(daemon, peer, target),
        RequestBody::Learn(request) => {
            let asked = Asked { request, ttl: None, leased: true, learn: true };
            match learning_peer_refusal(peer) {
                Some(r) => Err(r.into()),
                None => handle_mint(daemon, peer, &asked, Mode::Scope).await,
            }
        }
        RequestBody::Learned(id) => handle_learned(daemon, peer, id),
        RequestBody::OpenPerfEvent(req) => trace::handle_open_perf_event(daemon, peer, req),
        RequestBody::TracepointId { category, name } => trace::handle_tracepoint_id(daemon, peer, category, name),
        RequestBody::TraceTargets => trace::handle_trace_targets(daemon, peer),
        RequestBody::MintForProgram(ProgramRequest { lease: LeaseRequest { mode, request, ttl }, program }) => {
            let asked = Asked { request, ttl, leased: true, learn: false };
            if let Err(r) = for_program(daemon, peer, &program) {
                return Some(Err(r.into()));
            }
            return lease(daemon, peer, &asked, mode, fds).await;
        }
    };
    Some(outcome)
}

/// A request for a lease (`MintLease`, `MintForProgram`): the ttl asked
/// for is checked, then the grant made in the mode asked for.
async fn lease<'a>(
    daemon: &'a Daemon,
    peer: &PeerIdentity,
    asked: &Asked,
    mode: MintMode,
    mut fds: Vec<OwnedFd>,
) -> Option<Outcome<'a>> {
    let outcome = match (asked.ttl, mode) {
        (Some(t), _) if !(1..=bpftoken_policy::MAX_TTL_SECS).contains(&t) => {
            let msg = format!("a lease of {t} s was asked for; a ttl is 1 to {} s", bpftoken_policy::MAX_TTL_SECS);
            Err(Refused::new(RefusalCode::Malformed, msg))
        }
        (_, MintMode::Token) => handle_mint(daemon, peer, asked, Mode::Token).await,
        (_, MintMode::Scope) => handle_mint(daemon, peer, asked, Mode::Scope).await,
        (_, MintMode::DelegateMount) => handle_delegate(daemon, peer, asked, fds.pop()?).await,
    };
    Some(outcome)
}

/// Whether the answer to `body` may carry fds (tokens, scopes, mounts).
fn answer_may_carry_fds(body: &RequestBody) -> bool {
    match body {
        RequestBody::Mint(_)
        | RequestBody::MintScope(_)
        | RequestBody::DelegateMount(_)
        | RequestBody::MintLease(_)
        | RequestBody::Learn(_) => true,
        RequestBody::MintForProgram(_) | RequestBody::OpenPerfEvent(_) | RequestBody::TracepointId { .. } => true,
        RequestBody::Query
        | RequestBody::QueryEnforcement
        | RequestBody::Leases
        | RequestBody::LeasesPage(_)
        | RequestBody::Revoke(_)
        | RequestBody::Learned(_)
        | RequestBody::TraceTargets => false,
    }
}

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Mint(_) => "mint",
        RequestBody::MintScope(_) => "mint-scope",
        RequestBody::DelegateMount(_) => "delegate-mount",
        RequestBody::Query => "query",
        RequestBody::QueryEnforcement => "query-enforcement",
        RequestBody::MintLease(_) => "mint-lease",
        RequestBody::Leases => "leases",
        RequestBody::LeasesPage(_) => "leases-page",
        RequestBody::Revoke(_) => "revoke",
        RequestBody::Learn(_) => "learn",
        RequestBody::Learned(_) => "learned",
        RequestBody::MintForProgram(_) => "mint-for-program",
        RequestBody::OpenPerfEvent(_) => "open-perf-event",
        RequestBody::TracepointId { .. } => "tracepoint-id",
        RequestBody::TraceTargets => "trace-targets",
    }
}
