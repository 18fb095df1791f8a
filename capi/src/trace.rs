//! What the tracing calls of the C ABI do, in safe Rust: ask the daemon
//! for a tracepoint's id or a perf event on a target the policy names
//! (docs/tracing.md), and map the outcome to a number or a negative
//! errno, remembering why for `bpftoken_last_error()`.
#![forbid(unsafe_code)]

use std::os::fd::IntoRawFd;
use std::path::PathBuf;

use bpftoken_client::{Client, TraceTarget};

use crate::mint::{fail_client, set_last};

fn client(socket: Option<PathBuf>) -> Result<Client, i32> {
    let socket = socket.unwrap_or_else(bpftoken_client::socket_path);
    Client::connect_to(&socket).map_err(|e| fail_client(&e))
}

/// `bpftoken_tracepoint_id()`: the id, or a negative errno.
pub fn tracepoint_id(socket: Option<PathBuf>, category: &str, name: &str) -> i32 {
    match client(socket).and_then(|mut c| c.tracepoint_id(category, name).map_err(|e| fail_client(&e))) {
        Ok(found) => {
            set_last("", 0);
            i32::try_from(found.id).unwrap_or(-libc::EOVERFLOW)
        }
        Err(neg) => neg,
    }
}

/// `bpftoken_open_*()`: the perf event fd (now the caller's), or a
/// negative errno.
pub fn open_perf_event(socket: Option<PathBuf>, target: &TraceTarget, pid: Option<i32>) -> i32 {
    match client(socket).and_then(|mut c| c.open_perf_event(target, pid).map_err(|e| fail_client(&e))) {
        Ok(event) => {
            set_last("", 0);
            event.fd.into_raw_fd()
        }
        Err(neg) => neg,
    }
}
