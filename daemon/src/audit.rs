//! One structured audit event per decision.
//!
//! Events go to the `bpftokend::audit` tracing target. Strings that a
//! client controls (its executable path) are logged through `Debug`, which
//! escapes newlines and control characters, so one decision is one line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bpftoken_proto::{Delegation, LeaseInfo, RefusalCode};

use crate::peer::PeerIdentity;

/// Most audit lines per second; clients trigger them, so a flood must not
/// become a flood of logs. Every decision still counts in the status
/// counters, and suppressed lines are counted in a summary line.
const AUDIT_LINES_PER_SECOND: u32 = 200;

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

static WINDOW: Mutex<Option<Window>> = Mutex::new(None);

/// Whether this event may be logged now.
fn admit() -> bool {
    let mut guard = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let w = guard.get_or_insert(Window { start: now, logged: 0, suppressed: 0 });
    if now.duration_since(w.start) >= Duration::from_secs(1) {
        if w.suppressed > 0 {
            tracing::warn!(target: "bpftokend::audit", suppressed = w.suppressed, "audit lines suppressed by the rate limit in the last second; decisions are still counted");
        }
        *w = Window { start: now, logged: 0, suppressed: 0 };
    }
    if w.logged < AUDIT_LINES_PER_SECOND {
        w.logged += 1;
        true
    } else {
        w.suppressed += 1;
        false
    }
}

fn exe(peer: &PeerIdentity) -> String {
    format!("{:?}", peer.exe_display())
}

fn cgroup(peer: &PeerIdentity) -> String {
    format!("{:?}", peer.cgroup_display())
}

/// A token was handed out.
/// `mode` says what was handed out: `owner` (a token bound to the peer's
/// uid), `libbpf` (token plus its scope), `container` (a token in the
/// peer's own user namespace) or `delegated_mount` (a bpffs for a
/// namespace the peer owns).
/// `enforced` is `None` when no matching rule sets a `ttl`,
/// `max_live_tokens` or `bind`, else whether they are enforced
/// (`enforced=false`: minted anyway, because the policy says
/// `require_enforcement = false`). `bound_uid` and `bound_cgroup` name the
/// lease's binding (`-`: none). `identity` says how the executable and
/// cgroup that `executables`/`cgroups` rules matched on stand: `enforced`
/// (the tokens work in that program and cgroup only), `claimed` (read
/// from /proc, nothing enforces it: `enforce_identity = false`) or `-`;
/// `exe_source` whether `exe` is the program that asked (`running`) or
/// the one it named to run (`declared`, `bpftoken run`).
#[allow(clippy::too_many_arguments)]
pub fn granted(
    peer: &PeerIdentity,
    rules: &[String],
    granted: &Delegation,
    cold: bool,
    mode: &str,
    enforced: Option<bool>,
    identity: crate::server::Identity,
    lease: &LeaseInfo,
) {
    if !admit() {
        return;
    }
    tracing::info!(
        target: "bpftokend::audit",
        decision = "granted",
        peer_uid = peer.creds.uid,
        peer_gid = peer.creds.gid,
        peer_pid = peer.pid,
        exe = %exe(peer),
        cgroup = %cgroup(peer),
        rules = %rules.join(","),
        granted = %granted,
        scope = if cold { "new" } else { "cached" },
        mode,
        enforced = enforced.map_or("-", |e| if e { "true" } else { "false" }),
        identity = identity.as_str(),
        exe_source = if peer.exe_declared { "declared" } else { "running" },
        userns_owner = peer.creds.userns_owner.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        lease = lease.id,
        lease_scope = lease.scope,
        lease_serial = lease.serial.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        lease_expires = lease.expires.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        bound_uid = lease.bound_uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        bound_cgroup = %lease.bound_cgroup.as_ref().map_or_else(|| "-".to_owned(), |c| format!("{c:?}")),
        "granted {mode} to uid {} (lease {})", peer.creds.uid, lease.id
    );
}

/// A perf event (or a tracepoint's id file) was opened for the peer on
/// `target` under `rule`; `delivered` is false when the client was gone.
pub fn traced(peer: &PeerIdentity, target: &str, pid: Option<i32>, rule: &str, delivered: bool) {
    if !admit() {
        return;
    }
    tracing::info!(
        target: "bpftokend::audit",
        decision = "traced",
        peer_uid = peer.creds.uid,
        peer_gid = peer.creds.gid,
        peer_pid = peer.pid,
        exe = %exe(peer),
        rules = rule,
        trace_target = %format!("{target:?}"),
        trace_pid = pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        delivered,
        "opened {target} for uid {}", peer.creds.uid
    );
}

/// A lease was revoked: its tokens stop working now.
pub fn revoked(peer: &PeerIdentity, lease: &LeaseInfo) {
    if !admit() {
        return;
    }
    tracing::info!(
        target: "bpftokend::audit",
        decision = "revoked",
        peer_uid = peer.creds.uid,
        peer_pid = peer.pid,
        exe = %exe(peer),
        lease = lease.id,
        lease_uid = lease.uid,
        lease_mode = lease.mode.as_str(),
        lease_scope = lease.scope,
        lease_serial = lease.serial.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        whole_scope = lease.whole_scope,
        "revoked lease {} of uid {} (by uid {})", lease.id, lease.uid, peer.creds.uid
    );
}

/// A learning lease ended; `used` is what its tokens were used for.
pub fn learned(peer: &PeerIdentity, lease: &LeaseInfo, used: &Delegation) {
    if !admit() {
        return;
    }
    tracing::info!(
        target: "bpftokend::audit",
        decision = "learned",
        peer_uid = peer.creds.uid,
        peer_pid = peer.pid,
        exe = %exe(peer),
        lease = lease.id,
        lease_uid = lease.uid,
        lease_scope = lease.scope,
        used = %used,
        "learning lease {} of uid {} ended: used {used}", lease.id, lease.uid
    );
}

/// A request was refused.
pub fn refused(peer: &PeerIdentity, rules: &[String], code: RefusalCode, reason: &str) {
    if !admit() {
        return;
    }
    tracing::info!(
        target: "bpftokend::audit",
        decision = "refused",
        peer_uid = peer.creds.uid,
        peer_gid = peer.creds.gid,
        peer_pid = peer.pid,
        exe = %exe(peer),
        cgroup = %cgroup(peer),
        rules = %rules.join(","),
        code = code.as_str(),
        reason = %format!("{reason:?}"),
        "refused uid {}: {}", peer.creds.uid, code
    );
}
