//! Every `unsafe` block and raw syscall of the daemon, each behind a safe
//! wrapper. Calls rustix already wraps safely are used directly elsewhere.
//!
//! The rules, for everything under `sys/`:
//! - the daemon's crate denies `unsafe_code` everywhere else (`lib.rs`);
//!   only this module is allowed it, so an `unsafe` outside `sys/` does not
//!   compile;
//! - every `unsafe` block holds one unsafe operation and says why it is
//!   sound in a `// SAFETY:` comment (clippy's `undocumented_unsafe_blocks`
//!   and `multiple_unsafe_ops_per_block`);
//! - every public function is safe: whatever soundness depends on is
//!   checked inside the wrapper, not left to the caller;
//! - every fd the kernel installs for us is wrapped in an `OwnedFd` exactly
//!   once.
//!
//! One module per concern: [`accounts`] (listing the user and group
//! database), [`peer`] (who is at the other end of a socket),
//! [`fdpass`] (every `SCM_RIGHTS` send and receive), [`mint_child`] (the
//! `clone(CLONE_VM)` child that creates tokens in a scope), [`token`]
//! (`BPF_TOKEN_CREATE` and token masks), [`process`] (fork, exit, fd table,
//! dumpability, clocks), [`perf`] (`perf_event_open` for tracing) and
//! [`bpf`] (the enforcer's libbpf loader and maps). Their items are re-exported here, so callers name them
//! `crate::sys::X`.

pub mod accounts;
pub mod bpf;
pub mod fdpass;
pub mod mint_child;
pub mod peer;
pub mod perf;
pub mod process;
pub mod token;

use std::io;

pub use fdpass::{recv_request_bytes, Received, MAX_RECV_FDS};
pub use mint_child::{
    mint_tokens_blocking, mint_tokens_in, MintChild, MintStep, MintedToken, TaskTracker, MAX_MINT_BATCH,
    MINT_CHILD_TIMEOUT,
};
pub use peer::{
    ns_owner_uid, ns_type, pass_sender_pidfds, peer_groups, peer_pidfd, pidfd_alive, pidfd_info_pid,
    pidfd_user_namespace, unread_by_peer,
};
pub use perf::{perf_event_open, PerfAttr};
pub use process::{
    async_fd, async_fd_shared, boottime_ns, clear_cloexec, cloexec_from_3, close_all_fds_except, exit_now, fd_kind,
    fork_single_threaded, make_non_dumpable, ptrace_safe, take_inherited_fd, thread_count, trim_heap,
    unshare_namespaces, Forked,
};
pub use token::{bpf_token_create, bpf_token_create_support, token_masks, TokenMask, TokenMasks, TokenSupport};

/// Turn a `-1` + errno return into an `io::Error`.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
