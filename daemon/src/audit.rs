//! One structured audit event per decision.
//!
//! Events go to the `bpftokend::audit` tracing target. Strings that a
//! client controls (its executable path) are logged through `Debug`, which
//! escapes newlines and control characters, so one decision is one line.
//!
//! Only `refused` lines are rate limited, per uid and then overall (a
//! client can ask for refusals as fast as the daemon answers). `granted`,
//! `traced`, `revoked`, `learned` and `forgotten` lines are never dropped:
//! each stands for work the daemon did, which per-uid connection caps and
//! `mints_per_minute` bound already (`forgotten`: one line per uid per 5 s
//! at most), so a flood of refusals cannot hide them. Every decision still counts in the status counters, and
//! suppressed lines are counted in summary lines that name their uid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bpftoken_proto::{Delegation, LeaseInfo, RefusalCode};

use crate::peer::PeerIdentity;

/// Most `refused` lines per second for one uid (the peer's). Refusals
/// cost a client nothing, so a uid with no rule can ask as fast as the
/// daemon answers; each uid has its own budget, so one uid's flood cannot
/// use up another's.
const REFUSED_LINES_PER_UID_PER_SECOND: u32 = 50;

/// Most `refused` and summary lines per second for all uids together: the
/// last resort against a flood from many uids at once, which the per-uid
/// budgets alone would let grow with the number of uids.
const REFUSED_LINES_PER_SECOND: u32 = 1000;

/// Most uids with a window at once, so the limiter's memory stays bounded
/// whatever number of uids floods it.
const MAX_TRACKED_UIDS: usize = 4096;

/// How long a budget lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// One uid's current second.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window { start, logged: 0, suppressed: 0 }
    }
}

/// A line saying what the limiter suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summary {
    /// `suppressed` refusal lines of `uid` in its last window.
    Uid { uid: u32, suppressed: u64 },
    /// Suppressed lines of `windows` uid windows that were evicted, or
    /// whose own summary did not fit in the overall budget (a uid may
    /// count more than once): at most one such line a second, so nothing is
    /// lost silently and reporting cannot itself flood.
    Untracked { windows: u64, suppressed: u64 },
}

/// Rate limits on `refused` lines: per uid, then overall.
#[derive(Debug)]
struct Limiter {
    per_uid: u32,
    overall: u32,
    max_uids: usize,
    uids: HashMap<u32, Window>,
    /// The overall second: `logged` counts refusal and summary lines.
    second: Window,
    untracked_windows: u64,
    untracked_suppressed: u64,
}

impl Limiter {
    fn new(now: Instant, per_uid: u32, overall: u32, max_uids: usize) -> Limiter {
        Limiter {
            per_uid,
            overall,
            max_uids,
            uids: HashMap::new(),
            second: Window::new(now),
            untracked_windows: 0,
            untracked_suppressed: 0,
        }
    }

    /// Whether a refusal of `uid` may be logged at `now`; `report` gets the
    /// summaries that are due (before the refusal's own line, which is
    /// how they were ordered in time).
    fn admit(&mut self, uid: u32, now: Instant, report: &mut impl FnMut(Summary)) -> bool {
        if now.duration_since(self.second.start) >= WINDOW {
            if self.untracked_suppressed > 0 {
                report(Summary::Untracked { windows: self.untracked_windows, suppressed: self.untracked_suppressed });
            }
            self.untracked_windows = 0;
            self.untracked_suppressed = 0;
            self.second = Window::new(now);
        }
        let due = match self.uids.get(&uid) {
            Some(w) if now.duration_since(w.start) >= WINDOW => Some(w.suppressed),
            Some(_) => None,
            None => {
                self.make_room(now, report);
                Some(0)
            }
        };
        if let Some(suppressed) = due {
            self.summarize(uid, suppressed, report);
            self.uids.remove(&uid);
        }
        let overall_full = self.second.logged >= self.overall;
        let w = self.uids.entry(uid).or_insert_with(|| Window::new(now));
        if w.logged >= self.per_uid || overall_full {
            w.suppressed += 1;
            return false;
        }
        w.logged += 1;
        self.second.logged += 1;
        true
    }

    /// Report an ended window's suppressed lines, within the overall
    /// budget; beyond it they join the untracked count.
    fn summarize(&mut self, uid: u32, suppressed: u64, report: &mut impl FnMut(Summary)) {
        if suppressed == 0 {
            return;
        }
        if self.second.logged < self.overall {
            self.second.logged += 1;
            report(Summary::Uid { uid, suppressed });
        } else {
            self.untracked_windows += 1;
            self.untracked_suppressed += suppressed;
        }
    }

    /// Free a slot for a new uid: drop ended windows (reporting them) and,
    /// if every tracked uid is in its current second, the oldest window.
    fn make_room(&mut self, now: Instant, report: &mut impl FnMut(Summary)) {
        if self.uids.len() < self.max_uids {
            return;
        }
        let ended: Vec<(u32, u64)> = self
            .uids
            .iter()
            .filter(|(_, w)| now.duration_since(w.start) >= WINDOW)
            .map(|(&uid, w)| (uid, w.suppressed))
            .collect();
        for (uid, suppressed) in ended {
            self.uids.remove(&uid);
            self.summarize(uid, suppressed, report);
        }
        if self.uids.len() < self.max_uids {
            return;
        }
        // Only a flood from more than `max_uids` uids within one second
        // gets here; the scan is bounded by `max_uids`.
        if let Some((&uid, w)) = self.uids.iter().min_by_key(|(_, w)| w.start) {
            if w.suppressed > 0 {
                self.untracked_windows += 1;
                self.untracked_suppressed += w.suppressed;
            }
            self.uids.remove(&uid);
        }
    }
}

static LIMITER: Mutex<Option<Limiter>> = Mutex::new(None);

/// Whether a refusal of `uid` may be logged now; writes the summary lines
/// that are due.
fn admit_refusal(uid: u32) -> bool {
    let mut guard = LIMITER.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let limiter = guard.get_or_insert_with(|| {
        Limiter::new(now, REFUSED_LINES_PER_UID_PER_SECOND, REFUSED_LINES_PER_SECOND, MAX_TRACKED_UIDS)
    });
    limiter.admit(uid, now, &mut |s| match s {
        Summary::Uid { uid, suppressed } => tracing::warn!(
            target: "bpftokend::audit",
            peer_uid = uid,
            suppressed,
            "audit lines suppressed by the rate limit in the last second; decisions are still counted"
        ),
        Summary::Untracked { windows, suppressed } => tracing::warn!(
            target: "bpftokend::audit",
            windows,
            suppressed,
            "audit lines suppressed by the rate limit for uids no longer tracked; decisions are still counted"
        ),
    })
}

fn exe(peer: &PeerIdentity) -> String {
    format!("{:?}", peer.exe_display())
}

/// `-` where no rule looks at cgroups (not read for the log alone).
fn cgroup(peer: &PeerIdentity) -> String {
    peer.cgroup_display().map_or_else(|| "-".to_owned(), |c| format!("{c:?}"))
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

/// `count` more unenforced leases of `uid` (`None`: of uids beyond those
/// counted one by one) were forgotten to keep the lease table bounded,
/// `total` since the daemon started. Their tokens keep working; they are
/// no longer listed. Never dropped: the lease table writes at most one
/// such line per uid per 5 s (`lease::bound`).
pub fn forgotten_leases(uid: Option<u32>, count: u64, total: u64) {
    let whose = uid.map_or_else(|| "of other uids".to_owned(), |u| format!("of uid {u}"));
    tracing::info!(
        target: "bpftokend::audit",
        decision = "forgotten",
        lease_uid = uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        count,
        total,
        "forgot {count} older unenforced lease(s) {whose} ({total} in all): the daemon lists at most {} unenforced \
         leases per uid and {} in all; their tokens still work, but they are no longer listed",
        crate::lease::MAX_UNENFORCED_PER_UID,
        crate::lease::MAX_LEASES
    );
}

/// A request was refused.
pub fn refused(peer: &PeerIdentity, rules: &[String], code: RefusalCode, reason: &str) {
    if !admit_refusal(peer.creds.uid) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `n` refusals of `uid` at `now`; how many were admitted.
    fn flood(l: &mut Limiter, uid: u32, n: u32, now: Instant, out: &mut Vec<Summary>) -> u32 {
        (0..n).filter(|_| l.admit(uid, now, &mut |s| out.push(s))).count().try_into().unwrap()
    }

    #[test]
    fn one_uids_flood_does_not_use_another_uids_budget() {
        let t = Instant::now();
        let mut l = Limiter::new(t, 50, 1000, 4096);
        let mut out = Vec::new();
        assert_eq!(flood(&mut l, 1, 10_000, t, &mut out), 50);
        assert_eq!(flood(&mut l, 2, 50, t, &mut out), 50);
        assert!(out.is_empty());
    }

    #[test]
    fn the_next_window_reports_what_was_suppressed_by_uid() {
        let t = Instant::now();
        let mut l = Limiter::new(t, 50, 1000, 4096);
        let mut out = Vec::new();
        flood(&mut l, 1, 120, t, &mut out);
        flood(&mut l, 2, 10, t, &mut out);
        let later = t + WINDOW;
        assert!(l.admit(1, later, &mut |s| out.push(s)));
        assert!(l.admit(2, later, &mut |s| out.push(s)));
        // uid 2 suppressed nothing: no line for it.
        assert_eq!(out, [Summary::Uid { uid: 1, suppressed: 70 }]);
    }

    #[test]
    fn the_overall_cap_is_a_last_resort_and_still_counts() {
        let t = Instant::now();
        let mut l = Limiter::new(t, 50, 100, 4096);
        let mut out = Vec::new();
        let admitted: u32 = (1..=3).map(|uid| flood(&mut l, uid, 60, t, &mut out)).sum();
        assert_eq!(admitted, 100);
        let later = t + WINDOW;
        for uid in 1..=3 {
            l.admit(uid, later, &mut |s| out.push(s));
        }
        assert_eq!(
            out,
            [
                Summary::Uid { uid: 1, suppressed: 10 },
                Summary::Uid { uid: 2, suppressed: 10 },
                Summary::Uid { uid: 3, suppressed: 60 },
            ]
        );
    }

    #[test]
    fn many_uids_keep_the_map_bounded_and_evictions_are_still_reported() {
        let t = Instant::now();
        let mut l = Limiter::new(t, 5, 1000, 4);
        let mut out = Vec::new();
        let mut admitted = 0;
        for uid in 0..100 {
            admitted += flood(&mut l, uid, 8, t, &mut out);
            assert!(l.uids.len() <= 4);
        }
        // Evicted windows start afresh, so more than 4 uids log; every
        // suppressed line is reported, once, after the second.
        assert_eq!(admitted, 500);
        assert!(out.is_empty());
        let later = t + WINDOW;
        l.admit(1000, later, &mut |s| out.push(s));
        let reported: u64 = out
            .iter()
            .map(|s| match *s {
                Summary::Uid { suppressed, .. } | Summary::Untracked { suppressed, .. } => suppressed,
            })
            .sum();
        assert_eq!(reported, 300);
        assert!(out.iter().any(|s| matches!(s, Summary::Untracked { windows: 96, suppressed: 288 })), "{out:?}");
    }

    #[test]
    fn ended_windows_make_room_before_live_ones_are_evicted() {
        let t = Instant::now();
        let mut l = Limiter::new(t, 5, 1000, 2);
        let mut out = Vec::new();
        flood(&mut l, 1, 7, t, &mut out);
        let later = t + WINDOW;
        flood(&mut l, 2, 7, later, &mut out);
        // uid 1's window ended: it is dropped and reported, uid 2's stays.
        flood(&mut l, 3, 1, later, &mut out);
        assert_eq!(out, [Summary::Uid { uid: 1, suppressed: 2 }]);
        assert!(l.uids.contains_key(&2) && l.uids.contains_key(&3));
    }
}
