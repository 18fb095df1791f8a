//! Tracing without root: perf events and tracepoint ids the daemon opens
//! for targets the policy names (docs/tracing.md).
//!
//! With a token a program may load tracepoint, kprobe and uprobe programs,
//! but attaching them needs a perf event of the matching PMU, which only
//! CAP_PERFMON may open, and libbpf finds a tracepoint's id in tracefs,
//! which is root's. These calls ask the daemon for exactly those; attach
//! the program to the perf event with `BPF_LINK_CREATE` (attach type
//! `BPF_PERF_EVENT`, as libbpf does) and enable it with
//! `PERF_EVENT_IOC_ENABLE`.

use std::os::fd::OwnedFd;

use bpftoken_proto::message::RequestBody;
use bpftoken_proto::{PerfEventOpened, PerfEventRequest, Response, TraceAllowance, TraceTarget, TracepointIdFile};

use crate::{Client, Error};

/// A perf event the daemon opened: the fd and what it is.
#[derive(Debug)]
pub struct PerfEvent {
    pub fd: OwnedFd,
    pub opened: PerfEventOpened,
}

/// A tracepoint's id, with its tracefs `id` file open read-only.
#[derive(Debug)]
pub struct TracepointId {
    pub id: u32,
    pub file: OwnedFd,
    pub info: TracepointIdFile,
}

impl Client {
    /// Open a perf event on `target` (for a uprobe, on process `pid` if
    /// given: one of the caller's own; else on every process running the
    /// binary). Refused `target_not_allowed` unless a rule names the
    /// target, `trace_unavailable` where the kernel cannot (no kprobe PMU,
    /// no such tracepoint).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), bpftoken::Error> {
    /// use bpftoken::TraceTarget;
    /// let mut client = bpftoken::Client::connect()?;
    /// let target = TraceTarget::Tracepoint { category: "syscalls".into(), name: "sys_enter_getpid".into() };
    /// let event = client.open_perf_event(&target, None)?;
    /// // BPF_LINK_CREATE(prog_fd, event.fd, BPF_PERF_EVENT), then PERF_EVENT_IOC_ENABLE.
    /// # let _ = event; Ok(()) }
    /// ```
    pub fn open_perf_event(&mut self, target: &TraceTarget, pid: Option<i32>) -> Result<PerfEvent, Error> {
        self.send(RequestBody::OpenPerfEvent(PerfEventRequest { target: target.clone(), pid }), None)?;
        let (response, mut fds) = self.read_response()?;
        match (response, fds.len()) {
            (Response::Refused(r), _) => Err(Error::Refused(r)),
            (Response::PerfEventOpened(opened), 1) => Ok(PerfEvent { fd: fds.remove(0), opened }),
            (_, n) => {
                Err(Error::Protocol(format!("the daemon answered a perf event request with something else ({n} fds)")))
            }
        }
    }

    /// The tracing targets the caller's matching rules name (`None` from a
    /// daemon too old to say).
    pub fn trace_targets(&mut self) -> Result<Option<Vec<TraceAllowance>>, Error> {
        self.send(RequestBody::TraceTargets, None)?;
        match self.read_plain()? {
            Response::TraceTargets(t) => Ok(Some(t)),
            Response::Refused(r) if r.code == bpftoken_proto::RefusalCode::Malformed => Ok(None),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a trace targets request with something else".into())),
        }
    }

    /// A tracepoint's id and its tracefs `id` file (read-only), if a rule
    /// names the tracepoint.
    ///
    /// ```no_run
    /// let mut client = bpftoken::Client::connect()?;
    /// let tp = client.tracepoint_id("syscalls", "sys_enter_getpid")?;
    /// println!("tracepoint id {}", tp.id); // perf_event_attr.config for PERF_TYPE_TRACEPOINT
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn tracepoint_id(&mut self, category: &str, name: &str) -> Result<TracepointId, Error> {
        let body = RequestBody::TracepointId { category: category.to_owned(), name: name.to_owned() };
        self.send(body, None)?;
        let (response, mut fds) = self.read_response()?;
        match (response, fds.len()) {
            (Response::Refused(r), _) => Err(Error::Refused(r)),
            (Response::TracepointId(info), 1) => Ok(TracepointId { id: info.id, file: fds.remove(0), info }),
            (_, n) => Err(Error::Protocol(format!(
                "the daemon answered a tracepoint id request with something else ({n} fds)"
            ))),
        }
    }
}
