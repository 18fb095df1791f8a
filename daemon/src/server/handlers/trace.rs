//! Tracing without root (docs/tracing.md): a perf event on a tracepoint,
//! kprobe or uprobe, or a tracepoint's id file, for a target a policy rule
//! names. The policy decides (`Policy::decide_trace`), `crate::perf`
//! opens, and the reply's audit event names the target.

use bpftoken_policy::trace::TraceKind;
use bpftoken_policy::TraceDecision;
use bpftoken_proto::{
    PerfEventOpened, PerfEventRequest, RefusalCode, Response, TraceAllowance, TraceTarget, TracepointIdFile,
};

use crate::peer::PeerIdentity;
use crate::perf::TraceError;
use crate::server::decide::peer_refusal;
use crate::server::reply::{Outcome, Refused, Reply, Traced};
use crate::server::Daemon;

fn kind_of(target: &TraceTarget) -> TraceKind {
    match target {
        TraceTarget::Tracepoint { .. } => TraceKind::Tracepoint,
        TraceTarget::Kprobe { .. } => TraceKind::Kprobe,
        TraceTarget::Uprobe { .. } => TraceKind::Uprobe,
    }
}

/// A target the kernel cannot trace (or a process that is not the
/// caller's) as a refusal.
fn unavailable(e: &TraceError) -> Refused {
    let code = match e {
        TraceError::NotYourProcess { .. } | TraceError::Exited { .. } => RefusalCode::TargetNotAllowed,
        _ => RefusalCode::TraceUnavailable,
    };
    Refused::new(code, e.to_string())
}

fn too_long() -> Refused {
    Refused::new(
        RefusalCode::Malformed,
        format!("a tracing target is at most {} bytes", bpftoken_proto::trace::MAX_TARGET_LEN),
    )
}

/// The rule that lets `peer` trace `name` of `kind`, or the refusal.
fn allowed(daemon: &Daemon, peer: &PeerIdentity, kind: TraceKind, name: &str) -> Result<String, Refused> {
    if let Some(r) = peer_refusal(peer) {
        return Err(r.into());
    }
    match daemon.policy().decide_trace(&peer.creds, kind, name) {
        TraceDecision::Allow { rule } => Ok(rule),
        TraceDecision::Refuse { code, message } => Err(Refused::new(code, message)),
    }
}

/// Open the perf event asked for, if the policy names its target.
pub(in crate::server) fn handle_open_perf_event(
    daemon: &Daemon,
    peer: &PeerIdentity,
    req: PerfEventRequest,
) -> Outcome<'static> {
    let target = req.target;
    if !target.within_limits() {
        return Err(too_long());
    }
    if req.pid.is_some() && !matches!(target, TraceTarget::Uprobe { .. }) {
        let msg = format!("a pid narrows only a uprobe; the {target} event is opened for every process");
        return Err(Refused::new(RefusalCode::Malformed, msg));
    }
    let kind = kind_of(&target);
    let rule = allowed(daemon, peer, kind, &target.policy_name())?;
    // A uprobe binary: the file actually opened must be one the policy
    // names too (its path with symlinks resolved), not only the path asked.
    if let TraceTarget::Uprobe { path, .. } = &target {
        let real = crate::perf::open_binary(path).and_then(|fd| {
            crate::perf::real_path(&fd).map_err(|source| TraceError::Binary { path: path.clone(), source })
        });
        match real {
            Ok(real) if real.as_os_str() != path.as_str() => {
                allowed(daemon, peer, kind, &real.to_string_lossy())?;
            }
            Ok(_) => {}
            Err(e) => return Err(unavailable(&e)),
        }
    }
    let fd = crate::perf::open(&target, req.pid, peer.creds.uid).map_err(|e| unavailable(&e))?;
    let what = target.to_string();
    let response = Response::PerfEventOpened(PerfEventOpened { target, rule: rule.clone() });
    Ok(Reply::traced(response, Traced { fd, what, pid: req.pid, rule }))
}

/// The tracing targets the caller's matching rules name (`bpftoken query`).
pub(in crate::server) fn handle_trace_targets(daemon: &Daemon, peer: &PeerIdentity) -> Outcome<'static> {
    let targets = daemon
        .policy()
        .trace_targets(&peer.creds)
        .into_iter()
        .map(|t| TraceAllowance { key: t.key.to_owned(), pattern: t.pattern, rule: t.rule, denied: t.denied })
        .collect();
    Ok(Reply::answer(Response::TraceTargets(targets)))
}

/// A tracepoint's id and id file, if the policy names the tracepoint.
pub(in crate::server) fn handle_tracepoint_id(
    daemon: &Daemon,
    peer: &PeerIdentity,
    category: String,
    name: String,
) -> Outcome<'static> {
    let target = TraceTarget::Tracepoint { category, name };
    if !target.within_limits() {
        return Err(too_long());
    }
    let rule = allowed(daemon, peer, TraceKind::Tracepoint, &target.policy_name())?;
    let TraceTarget::Tracepoint { category, name } = target else { unreachable!("built as a tracepoint above") };
    let (id, fd) = crate::perf::tracepoint_id(&category, &name).map_err(|e| unavailable(&e))?;
    let what = format!("id of tracepoint {category}:{name}");
    let response = Response::TracepointId(TracepointIdFile { category, name, id, rule: rule.clone() });
    Ok(Reply::traced(response, Traced { fd, what, pid: None, rule }))
}
