//! Perf events for tracing without root (docs/tracing.md): the one place
//! the daemon opens a tracepoint, kprobe or uprobe event, or a
//! tracepoint's tracefs `id` file, for a caller the policy allows.
//!
//! Invariants: the attributes are built here from the target alone (a
//! PMU type, the tracepoint id or the symbol/path and offset, and nothing
//! else: no sampling, no inheritance, never a hardware, raw or software
//! counter); names are checked to be plain before they reach a tracefs
//! path; a uprobe binary is opened once, on the host, and the kernel is
//! handed that very file (`/proc/self/fd/N`), so the path the policy
//! matched and the file probed cannot differ; a uprobe on one process
//! only on a process of the caller's uid, checked through a pidfd that is
//! still alive after the event is opened.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use bpftoken_policy::trace::TraceCatalog;
use bpftoken_proto::TraceTarget;

use crate::sys;

/// Where tracefs is looked for, in order (libbpf's order too).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
/// Where the kernel lists its dynamic PMUs.
const PMUS: &str = "/sys/bus/event_source/devices";
/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;

/// Why a perf event or id file cannot be had: nothing a policy could change.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing); root can mount it: mount -t tracefs tracefs /sys/kernel/tracing")]
    NoTracefs,
    #[error("\"{0}\" is not a plain tracepoint category or name (letters, digits and _ only)")]
    BadName(String),
    #[error("this kernel has no tracepoint {category}:{name} ({path}: {source})")]
    NoSuchTracepoint { category: String, name: String, path: PathBuf, source: io::Error },
    #[error("this kernel has no {pmu} PMU ({PMUS}/{pmu}/type: {source}); it was built without {config}, so {what} cannot be attached here, whatever the policy says")]
    NoPmu { pmu: &'static str, config: &'static str, what: &'static str, source: io::Error },
    #[error("the uprobe binary {path} cannot be opened on the host: {source}")]
    Binary { path: String, source: io::Error },
    #[error("pid {pid} is not a process of uid {uid} (a uprobe on one process is only for the caller's own)")]
    NotYourProcess { pid: i32, uid: u32 },
    #[error("pid {pid} exited while its uprobe was being opened")]
    Exited { pid: i32 },
    #[error("the kernel refused to open the {target} event: {source}")]
    Open { target: String, source: io::Error },
}

/// The tracefs directory in use, if any.
fn tracefs() -> Option<&'static str> {
    TRACEFS.into_iter().find(|d| Path::new(d).join("events").is_dir())
}

/// What the running kernel offers, for checking a policy's patterns.
pub fn catalog() -> TraceCatalog {
    let tracepoints = match tracefs() {
        None => Err(TraceError::NoTracefs.to_string()),
        Some(dir) => std::fs::read_to_string(Path::new(dir).join("available_events"))
            .map(|text| text.lines().map(str::to_owned).collect::<BTreeSet<_>>())
            .map_err(|e| format!("{dir}/available_events: {e}")),
    };
    let symbols = std::fs::read_to_string("/proc/kallsyms")
        .map(|text| {
            text.lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (_addr, kind, name) = (f.next()?, f.next()?, f.next()?);
                    matches!(kind, "t" | "T").then(|| name.to_owned())
                })
                .collect::<BTreeSet<_>>()
        })
        .map_err(|e| format!("/proc/kallsyms: {e}"));
    TraceCatalog { tracepoints, symbols }
}

fn plain(s: &str) -> Result<&str, TraceError> {
    let ok = !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(s)
    } else {
        Err(TraceError::BadName(s.to_owned()))
    }
}

/// A tracepoint's id and its `id` file, open read-only.
pub fn tracepoint_id(category: &str, name: &str) -> Result<(u32, OwnedFd), TraceError> {
    let dir = tracefs().ok_or(TraceError::NoTracefs)?;
    let path = Path::new(dir).join("events").join(plain(category)?).join(plain(name)?).join("id");
    let missing = |source| TraceError::NoSuchTracepoint {
        category: category.to_owned(),
        name: name.to_owned(),
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(missing)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &file, &mut text).map_err(missing)?;
    let id = text.trim().parse().map_err(|_| missing(io::Error::other(format!("not a number: {text:?}"))))?;
    // Rewound, so the caller reads it as if it had opened it.
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0)).map_err(|e| missing(e.into()))?;
    Ok((id, file.into()))
}

/// A dynamic PMU's type number and the `config` bit of its `retprobe`.
fn pmu(pmu: &'static str, config: &'static str, what: &'static str) -> Result<(u32, u32), TraceError> {
    let no = |source| TraceError::NoPmu { pmu, config, what, source };
    let read = |file: &str| std::fs::read_to_string(Path::new(PMUS).join(pmu).join(file));
    let kind = read("type").map_err(no)?.trim().parse().map_err(|_| no(io::Error::other("not a number")))?;
    // "config:0" in format/retprobe.
    let bit = read("format/retprobe")
        .ok()
        .and_then(|f| f.trim().strip_prefix("config:").and_then(|b| b.parse().ok()))
        .unwrap_or(0);
    Ok((kind, bit))
}

/// Whether the process behind `pidfd` (pid `pid`) runs as `uid` (real,
/// effective, saved and filesystem uid alike).
fn owned_by(pid: i32, uid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().all(|id| id.parse() == Ok(uid)))
}

/// Open the perf event for `target` on behalf of `uid` (for a uprobe,
/// on process `pid` if given, else on every process).
pub fn open(target: &TraceTarget, pid: Option<i32>, uid: u32) -> Result<OwnedFd, TraceError> {
    let failed = |source| TraceError::Open { target: target.to_string(), source };
    match target {
        TraceTarget::Tracepoint { category, name } => {
            let (id, _file) = tracepoint_id(category, name)?;
            let attr = sys::PerfAttr { kind: PERF_TYPE_TRACEPOINT, config: u64::from(id), ..sys::PerfAttr::default() };
            sys::perf_event_open(&attr, -1, 0).map_err(failed)
        }
        TraceTarget::Kprobe { symbol, offset, retprobe } => {
            let (kind, bit) = pmu("kprobe", "CONFIG_KPROBE_EVENTS", "kprobes")?;
            let symbol = CString::new(symbol.as_str()).map_err(|e| failed(io::Error::other(e)))?;
            let attr = sys::PerfAttr {
                kind,
                config: if *retprobe { 1 << bit } else { 0 },
                config1: Some(&symbol),
                config2: *offset,
            };
            sys::perf_event_open(&attr, -1, 0).map_err(failed)
        }
        TraceTarget::Uprobe { path, offset, retprobe } => {
            let (kind, bit) = pmu("uprobe", "CONFIG_UPROBE_EVENTS", "uprobes")?;
            let binary = open_binary(path)?;
            // The kernel resolves this magic link to exactly the file opened.
            let via = CString::new(format!("/proc/self/fd/{}", binary.as_raw_fd()))
                .map_err(|e| failed(io::Error::other(e)))?;
            let attr = sys::PerfAttr {
                kind,
                config: if *retprobe { 1 << bit } else { 0 },
                config1: Some(&via),
                config2: *offset,
            };
            match pid {
                None => sys::perf_event_open(&attr, -1, 0).map_err(failed),
                Some(pid) => {
                    let pidfd = rustix::process::pidfd_open(
                        rustix::process::Pid::from_raw(pid).ok_or(TraceError::NotYourProcess { pid, uid })?,
                        rustix::process::PidfdFlags::empty(),
                    )
                    .map_err(|_| TraceError::NotYourProcess { pid, uid })?;
                    if !owned_by(pid, uid) {
                        return Err(TraceError::NotYourProcess { pid, uid });
                    }
                    let event = sys::perf_event_open(&attr, pid, -1).map_err(failed)?;
                    // Alive still: the pid was the checked process throughout.
                    if !sys::pidfd_alive(pidfd.as_fd()) {
                        return Err(TraceError::Exited { pid });
                    }
                    Ok(event)
                }
            }
        }
    }
}

/// The binary a uprobe names, opened on the host (`O_PATH`), and its path
/// with every symlink resolved.
pub fn open_binary(path: &str) -> Result<OwnedFd, TraceError> {
    let fail = |source: io::Error| TraceError::Binary { path: path.to_owned(), source };
    if !Path::new(path).is_absolute() {
        return Err(fail(io::Error::other("not an absolute path")));
    }
    let fd = rustix::fs::open(path, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
        .map_err(|e| fail(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| fail(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(fail(io::Error::other("not a regular file")));
    }
    Ok(fd)
}

/// The host path of an opened binary, symlinks resolved (what the policy
/// matches `uprobes` against).
pub fn real_path(binary: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", binary.as_raw_fd()))
}
