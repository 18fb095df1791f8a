//! One structured audit event per decision.
//!
//! Events go to the `bpftokend::audit` tracing target. Strings that a
//! client controls (its executable path) are logged through `Debug`, which
//! escapes newlines and control characters, so one decision is one line.

use bpftoken_proto::{Delegation, RefusalCode};

use crate::peer::PeerIdentity;

fn exe(peer: &PeerIdentity) -> String {
    format!("{:?}", peer.exe_display())
}

fn cgroup(peer: &PeerIdentity) -> String {
    format!("{:?}", peer.creds.cgroup.as_deref().unwrap_or("?"))
}

/// A token was handed out.
pub fn granted(peer: &PeerIdentity, rules: &[String], granted: &Delegation, cold: bool) {
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
        "granted token to uid {}", peer.creds.uid
    );
}

/// A request was refused.
pub fn refused(peer: &PeerIdentity, rules: &[String], code: RefusalCode, reason: &str) {
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
