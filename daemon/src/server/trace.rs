//! Requests for tracing without root (docs/tracing.md): a perf event on a
//! tracepoint, kprobe or uprobe, or a tracepoint's id file, for a target
//! a policy rule names. The policy decides (`Policy::decide_trace`), the
//! daemon opens (`crate::perf`), one audit event names the target.

use std::os::fd::AsFd;

use bpftoken_policy::trace::TraceKind;
use bpftoken_policy::TraceDecision;
use bpftoken_proto::{PerfEventOpened, PerfEventRequest, RefusalCode, Response, TraceTarget, TracepointIdFile};
use tokio::net::UnixStream;

use super::{peer_refusal, reject, write_response, Daemon};
use crate::audit;
use crate::peer::PeerIdentity;
use crate::perf::TraceError;

fn kind_of(target: &TraceTarget) -> TraceKind {
    match target {
        TraceTarget::Tracepoint { .. } => TraceKind::Tracepoint,
        TraceTarget::Kprobe { .. } => TraceKind::Kprobe,
        TraceTarget::Uprobe { .. } => TraceKind::Uprobe,
    }
}

/// The refusal for a target the kernel cannot trace.
fn unavailable(e: &TraceError) -> RefusalCode {
    match e {
        TraceError::NotYourProcess { .. } | TraceError::Exited { .. } => RefusalCode::TargetNotAllowed,
        _ => RefusalCode::TraceUnavailable,
    }
}

/// Whether the policy lets `peer` trace `name` of `kind`: the rule, or
/// the refusal already sent (false if the client is gone).
async fn allowed(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    kind: TraceKind,
    name: &str,
) -> Result<String, bool> {
    if let Some(r) = peer_refusal(peer) {
        return Err(reject(daemon, peer, stream, r.code, r.message).await);
    }
    match daemon.policy().decide_trace(&peer.creds, kind, name) {
        TraceDecision::Allow { rule } => Ok(rule),
        TraceDecision::Refuse { code, message } => Err(reject(daemon, peer, stream, code, message).await),
    }
}

/// Open the perf event asked for, if the policy names its target.
pub(super) async fn handle_open_perf_event(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    req: PerfEventRequest,
) -> bool {
    let target = req.target;
    if !target.within_limits() {
        let msg = format!("a tracing target is at most {} bytes", bpftoken_proto::trace::MAX_TARGET_LEN);
        return reject(daemon, peer, stream, RefusalCode::Malformed, msg).await;
    }
    if req.pid.is_some() && !matches!(target, TraceTarget::Uprobe { .. }) {
        let msg = format!("a pid narrows only a uprobe; the {target} event is opened for every process");
        return reject(daemon, peer, stream, RefusalCode::Malformed, msg).await;
    }
    let kind = kind_of(&target);
    let rule = match allowed(daemon, peer, stream, kind, &target.policy_name()).await {
        Ok(rule) => rule,
        Err(alive) => return alive,
    };
    // A uprobe binary: the file actually opened must be one the policy
    // names too (its path with symlinks resolved), not only the path asked.
    if let TraceTarget::Uprobe { path, .. } = &target {
        let real = crate::perf::open_binary(path).and_then(|fd| {
            crate::perf::real_path(&fd).map_err(|source| TraceError::Binary { path: path.clone(), source })
        });
        match real {
            Ok(real) if real.as_os_str() != path.as_str() => {
                let real = real.to_string_lossy().into_owned();
                if let Err(alive) = allowed(daemon, peer, stream, kind, &real).await {
                    return alive;
                }
            }
            Ok(_) => {}
            Err(e) => return reject(daemon, peer, stream, unavailable(&e), e.to_string()).await,
        }
    }
    let event = match crate::perf::open(&target, req.pid, peer.creds.uid) {
        Ok(fd) => fd,
        Err(e) => return reject(daemon, peer, stream, unavailable(&e), e.to_string()).await,
    };
    let response = Response::PerfEventOpened(PerfEventOpened { target: target.clone(), rule: rule.clone() });
    let sent = write_response(stream, &response, &[event.as_fd()]).await;
    audit::traced(peer, &target.to_string(), req.pid, &rule, sent.is_ok());
    sent.is_ok()
}

/// A tracepoint's id and id file, if the policy names the tracepoint.
pub(super) async fn handle_tracepoint_id(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    category: String,
    name: String,
) -> bool {
    let target = TraceTarget::Tracepoint { category, name };
    if !target.within_limits() {
        let msg = format!("a tracing target is at most {} bytes", bpftoken_proto::trace::MAX_TARGET_LEN);
        return reject(daemon, peer, stream, RefusalCode::Malformed, msg).await;
    }
    let rule = match allowed(daemon, peer, stream, TraceKind::Tracepoint, &target.policy_name()).await {
        Ok(rule) => rule,
        Err(alive) => return alive,
    };
    let TraceTarget::Tracepoint { category, name } = target else { return false };
    let (id, file) = match crate::perf::tracepoint_id(&category, &name) {
        Ok(found) => found,
        Err(e) => return reject(daemon, peer, stream, unavailable(&e), e.to_string()).await,
    };
    let what = format!("id of tracepoint {category}:{name}");
    let response = Response::TracepointId(TracepointIdFile { category, name, id, rule: rule.clone() });
    let sent = write_response(stream, &response, &[file.as_fd()]).await;
    audit::traced(peer, &what, None, &rule, sent.is_ok());
    sent.is_ok()
}
