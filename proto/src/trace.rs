//! Perf events for tracing programs: what a client asks the daemon to open
//! (a tracepoint, kprobe or uprobe the policy names) and what comes back.
//!
//! A BPF token covers `bpf()` only. Attaching a tracepoint, kprobe or
//! uprobe program needs a perf event of that PMU, which the kernel opens
//! only for CAP_PERFMON in the initial namespace, and libbpf reads a
//! tracepoint's id from tracefs, which is root's. The daemon opens exactly
//! the event asked for, with attributes it builds itself (never the
//! client's), and hands back the fd; the client attaches its program with
//! `BPF_LINK_CREATE` (attach type `BPF_PERF_EVENT`), which the kernel
//! allows it. Pure data: no I/O here.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name or path a [`TraceTarget`] may carry (`PATH_MAX`).
pub const MAX_TARGET_LEN: usize = 4096;

/// What to trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceTarget {
    /// `category:name` as tracefs lists it (`syscalls:sys_enter_getpid`).
    Tracepoint { category: String, name: String },
    /// A kernel function, at `offset` bytes into it; `retprobe` for its
    /// return (kretprobe).
    Kprobe { symbol: String, offset: u64, retprobe: bool },
    /// A binary at `offset` (a file offset, as libbpf computes it);
    /// `retprobe` for the function's return (uretprobe).
    Uprobe { path: String, offset: u64, retprobe: bool },
}

impl TraceTarget {
    /// The name the policy matches: `category:name`, the symbol, the path.
    pub fn policy_name(&self) -> String {
        match self {
            TraceTarget::Tracepoint { category, name } => format!("{category}:{name}"),
            TraceTarget::Kprobe { symbol, .. } => symbol.clone(),
            TraceTarget::Uprobe { path, .. } => path.clone(),
        }
    }

    /// Whether every string is within [`MAX_TARGET_LEN`].
    pub fn within_limits(&self) -> bool {
        match self {
            TraceTarget::Tracepoint { category, name } => category.len() + name.len() <= MAX_TARGET_LEN,
            TraceTarget::Kprobe { symbol, .. } => symbol.len() <= MAX_TARGET_LEN,
            TraceTarget::Uprobe { path, .. } => path.len() <= MAX_TARGET_LEN,
        }
    }
}

impl fmt::Display for TraceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceTarget::Tracepoint { category, name } => write!(f, "tracepoint {category}:{name}"),
            TraceTarget::Kprobe { symbol, offset, retprobe } => {
                let kind = if *retprobe { "kretprobe" } else { "kprobe" };
                if *offset == 0 {
                    write!(f, "{kind} {symbol}")
                } else {
                    write!(f, "{kind} {symbol}+{offset:#x}")
                }
            }
            TraceTarget::Uprobe { path, offset, retprobe } => {
                let kind = if *retprobe { "uretprobe" } else { "uprobe" };
                write!(f, "{kind} {path}:{offset:#x}")
            }
        }
    }
}

/// A [`crate::message::RequestBody::OpenPerfEvent`]: the target, and for
/// a uprobe the process to trace (`None`: every process running the
/// binary, which the policy must list). A pid must be one of the caller's
/// own processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfEventRequest {
    pub target: TraceTarget,
    pub pid: Option<i32>,
}

/// The answer to an `OpenPerfEvent` request: one fd (the perf event,
/// close-on-exec, disabled until a program is attached with
/// `BPF_LINK_CREATE`), and the rule that allowed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfEventOpened {
    pub target: TraceTarget,
    pub rule: String,
}

/// The answer to a `TracepointId` request: the tracepoint's id, and one fd
/// of its tracefs `id` file, opened read-only (what libbpf reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointIdFile {
    pub category: String,
    pub name: String,
    pub id: u32,
    pub rule: String,
}

/// One tracing pattern the caller's matching rules name (the answer to
/// a `TraceTargets` request, what `bpftoken query` lists).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceAllowance {
    /// `tracepoints`, `kprobes` or `uprobes`.
    pub key: String,
    pub pattern: String,
    pub rule: String,
    /// Named by a deny rule (refused whatever allows it).
    pub denied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_themselves_as_the_policy_and_people_do() {
        let tp = TraceTarget::Tracepoint { category: "syscalls".into(), name: "sys_enter_getpid".into() };
        assert_eq!(tp.policy_name(), "syscalls:sys_enter_getpid");
        assert_eq!(tp.to_string(), "tracepoint syscalls:sys_enter_getpid");
        let kp = TraceTarget::Kprobe { symbol: "do_sys_openat2".into(), offset: 0, retprobe: true };
        assert_eq!(kp.to_string(), "kretprobe do_sys_openat2");
        let up = TraceTarget::Uprobe { path: "/bin/sh".into(), offset: 0x1234, retprobe: false };
        assert_eq!((up.policy_name().as_str(), up.to_string().as_str()), ("/bin/sh", "uprobe /bin/sh:0x1234"));
        assert!(
            !TraceTarget::Kprobe { symbol: "x".repeat(MAX_TARGET_LEN + 1), offset: 0, retprobe: false }.within_limits()
        );
    }
}
