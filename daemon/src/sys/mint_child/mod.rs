//! The mint child: a short `clone(CLONE_VM|CLONE_PIDFD)` child of the
//! daemon that enters a scope's user namespace, creates tokens from its
//! bpffs and sends them back (through [`super::fdpass`]); the daemon stays
//! root in the init namespace. This is the parent's side: starting the
//! child on memory it owns, waiting for it without blocking the runtime
//! (killing it at [`MINT_CHILD_TIMEOUT`]), reaping it, collecting the
//! tokens and the enforcer's serials. What runs in the child is in
//! `child.rs`.
//!
//! Invariant: a child's memory (arguments and stack) is reused or freed
//! only after the child has been reaped.

mod child;

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use child::{mint_child_main, ChildArgs};

use super::fdpass;
use super::process::ptrace_safe;

/// Most tokens one mint child creates.
pub const MAX_MINT_BATCH: usize = 8;

/// Longest a mint child may take before it is killed: a client may
/// SIGSTOP a child once it is in the client's namespace.
pub const MINT_CHILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 16-byte words of a mint child's stack (64 KiB; the child needs a few
/// hundred bytes; u128 keeps the top 16-byte aligned as the ABI wants).
const STACK_WORDS: usize = 4096;

/// Everything a mint child touches in our memory. It runs while the
/// daemon does other work (CLONE_VM without CLONE_VFORK), so this lives on
/// the heap and is reused or freed only after the child has been reaped.
#[repr(C)]
struct ChildMem {
    args: ChildArgs,
    stack: [u128; STACK_WORDS],
}

/// Memory of reaped mint children, for the next ones (at most
/// [`POOL_MAX`] kept).
static POOL: std::sync::Mutex<Vec<Box<ChildMem>>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 16;

fn child_mem() -> Box<ChildMem> {
    if let Some(mem) = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop() {
        return mem;
    }
    let zeroed = Box::<ChildMem>::new_zeroed();
    // SAFETY: all-zero bytes are a valid ChildMem: integers, atomics and
    // an integer array.
    unsafe { zeroed.assume_init() }
}

/// Where [`mint_tokens_in`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintStep {
    /// fs.suid_dumpable allows the client to ptrace the child (or cannot
    /// be read); no child was started.
    SuidDumpable,
    Clone,
    /// The child's setup before entering the namespace: blocking signals,
    /// closing fds, dropping supplementary groups.
    Prepare,
    SetNs,
    /// The child becoming the namespace's root and non-dumpable.
    BecomeRoot,
    TokenCreate,
    /// The child sending the tokens back.
    SendBack,
    /// The child did not finish in time (stopped by a signal) and was killed.
    Timeout,
}

/// Learns which serials the enforcer gave the tokens a task created
/// ([`crate::enforcer::Enforcer`] implements it).
pub trait TaskTracker: Sync {
    /// The map the mint child clears its record in.
    fn task_map(&self) -> BorrowedFd<'_>;
    /// Take (read and delete) the record of task `tid`: the scope inode
    /// and the serials, in creation order.
    fn take_task(&self, tid: u32) -> io::Result<Option<(u32, Vec<u64>)>>;
}

/// Held from `socketpair` until the child's end is closed in our table:
/// so no mint child ever copies another one's end of its socket pair
/// (which would keep that pair open past the other child's exit).
static CLONE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running mint child (see [`mint_tokens_in`]). Dropping it kills and
/// reaps the child if it has not been reaped, so its memory is never
/// reused while it runs and no zombie is left.
#[derive(Debug)]
pub struct MintChild {
    pid: i32,
    pidfd: OwnedFd,
    /// Our end of the socket pair.
    sock: OwnedFd,
    /// The child's memory: owned here, but handed to the child as a raw
    /// pointer, so only read through shared references while it runs.
    mem: *mut ChildMem,
    started: std::time::Instant,
    reaped: std::sync::atomic::AtomicBool,
}

// SAFETY: `mem` is a heap allocation this value owns (the child only
// reads its arguments and writes atomics); nothing is tied to a thread.
unsafe impl Send for MintChild {}
// SAFETY: `&MintChild` gives only reads of atomics and fds, and reads of
// `mem` after the child has been reaped.
unsafe impl Sync for MintChild {}

impl std::fmt::Debug for ChildMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildMem").field("args", &self.args).finish_non_exhaustive()
    }
}

/// How a mint child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl MintChild {
    /// Start a mint child: a `clone(CLONE_VM|CLONE_PIDFD)` child with its
    /// own fd table (a copy of ours, which it trims at once), its own
    /// thread group (no CLONE_THREAD) and fs_struct (no CLONE_FS), as
    /// `setns(CLONE_NEWUSER)` requires. It enters `userns`, makes `count`
    /// tokens from `bpffs` and sends them back over a socket pair.
    ///
    /// The process must be non-dumpable ([`super::make_non_dumpable`]): the child
    /// shares our memory, and the client holds CAP_SYS_PTRACE in the
    /// namespace the child enters.
    pub fn start(
        userns: BorrowedFd<'_>,
        bpffs: BorrowedFd<'_>,
        count: usize,
        tracker: Option<&dyn TaskTracker>,
    ) -> Result<MintChild, (MintStep, io::Error)> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let clone_err = |e: rustix::io::Errno| (MintStep::Clone, io::Error::from(e));
        ptrace_safe().map_err(|e| (MintStep::SuidDumpable, e))?;
        let mem = Box::into_raw(child_mem());
        // SAFETY: `mem` is ours alone (no child runs on it yet).
        let m = unsafe { &mut *mem };
        let _clone = CLONE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let pair = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None);
        let (ours, theirs) = match pair {
            Ok(pair) => pair,
            Err(e) => {
                release_mem(mem);
                return Err(clone_err(e));
            }
        };
        m.args = ChildArgs {
            userns: userns.as_raw_fd(),
            bpffs: bpffs.as_raw_fd(),
            task_map: tracker.map_or(-1, |t| t.task_map().as_raw_fd()),
            sock: theirs.as_raw_fd(),
            count: count.clamp(1, MAX_MINT_BATCH),
            error: std::sync::atomic::AtomicI32::new(0),
            failed_step: std::sync::atomic::AtomicI32::new(0),
        };
        let stack_top = m.stack.as_mut_ptr_range().end.cast::<c_void>();
        let arg = (&raw mut m.args).cast::<c_void>();
        let mut pidfd: libc::c_int = -1;
        let flags = libc::CLONE_VM | libc::CLONE_PIDFD | libc::SIGCHLD;
        // SAFETY: the child runs `mint_child_main` on the stack in `mem`
        // with a pointer to the arguments in `mem`; the returned MintChild
        // owns `mem` and frees or reuses it only after reaping the child.
        // The kernel writes the pidfd into `pidfd` (CLONE_PIDFD).
        let pid = unsafe { libc::clone(mint_child_main, stack_top, flags, arg, &raw mut pidfd) };
        let clone_error = io::Error::last_os_error();
        // Our copy of the child's end goes at once (see CLONE_LOCK): the
        // child holds the only one.
        drop(theirs);
        drop(_clone);
        if pid < 0 {
            // No child was created.
            release_mem(mem);
            return Err((MintStep::Clone, clone_error));
        }
        if pidfd < 0 {
            // Cannot happen (CLONE_PIDFD succeeds or clone fails). Kill and
            // reap the child by pid (unreaped, so still ours), and never
            // reuse its memory.
            let pid = rustix::process::Pid::from_raw(pid);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
            return Err((MintStep::Clone, io::Error::other("clone returned no pidfd")));
        }
        // SAFETY: CLONE_PIDFD installed a new fd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(MintChild { pid, pidfd, sock: ours, mem, started: std::time::Instant::now(), reaped: false.into() })
    }

    /// Reap the child if it has exited.
    fn try_reap(&self) -> io::Result<Option<ChildExit>> {
        use rustix::process::{WaitId, WaitIdOptions};
        let status =
            rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG)?;
        Ok(status.map(|s| {
            self.reaped.store(true, std::sync::atomic::Ordering::Relaxed);
            match (s.exit_status(), s.terminating_signal()) {
                (Some(code), _) => ChildExit::Code(code),
                (None, Some(sig)) => ChildExit::Signal(sig),
                (None, None) => ChildExit::Signal(0),
            }
        }))
    }

    fn kill(&self) {
        // Unreaped, so the pidfd still names our child.
        if let Err(e) = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL) {
            tracing::warn!("cannot kill a mint child: {e}");
        }
    }

    /// Wait (without blocking the thread) until the child has exited and
    /// reap it; at the deadline, kill it first.
    async fn wait(&self) -> io::Result<ChildExit> {
        let deadline = tokio::time::Instant::from_std(self.started + MINT_CHILD_TIMEOUT);
        // SAFETY: the borrowed pidfd stays open, the same fd, for as long as
        // this AsyncFd lives (it borrows `self.pidfd`).
        let readable = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self.pidfd.as_fd(), tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        let mut killed = false;
        loop {
            if let Some(exit) = self.try_reap()? {
                return Ok(exit);
            }
            let ready = if killed {
                Ok(readable.readable().await)
            } else {
                tokio::time::timeout_at(deadline, readable.readable()).await
            };
            match ready {
                Ok(guard) => guard?.clear_ready(),
                Err(_elapsed) => {
                    tracing::debug!(pid = self.pid, "a mint child missed its deadline; killing it");
                    self.kill();
                    killed = true;
                }
            }
        }
    }

    /// [`MintChild::wait`] blocking the calling thread (for programs
    /// without a runtime, such as the benchmark).
    fn wait_blocking(&self) -> io::Result<ChildExit> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut killed = false;
        loop {
            if let Some(exit) = self.try_reap()? {
                return Ok(exit);
            }
            let left = (self.started + MINT_CHILD_TIMEOUT).saturating_duration_since(std::time::Instant::now());
            if left.is_zero() && !killed {
                self.kill();
                killed = true;
            }
            let timeout = Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            match poll(&mut fds, (!killed).then_some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After the child was reaped: the tokens it sent, with their serials.
    fn collect(
        &self,
        exit: ChildExit,
        userns: BorrowedFd<'_>,
        tracker: Option<&dyn TaskTracker>,
    ) -> Result<Vec<MintedToken>, (MintStep, io::Error)> {
        use std::sync::atomic::Ordering::Acquire;
        let mut byte = [0u8; 1];
        let received = fdpass::recv_with_fds(self.sock.as_fd(), &mut byte, MAX_MINT_BATCH);
        let (tokens, truncated) = match received {
            Ok(msg) => {
                let truncated = msg.fds_truncated || msg.fds.len() > MAX_MINT_BATCH;
                (msg.fds, truncated)
            }
            // Nothing sent: the child failed (or was killed) first.
            Err(_) => (Vec::new(), false),
        };
        // The child is reaped: its tid is free again, so its record goes now.
        let serials = tracker.and_then(|t| match t.take_task(self.pid.cast_unsigned()) {
            Ok(Some((scope, serials))) => {
                let ino = rustix::fs::fstat(userns).map(|st| st.st_ino).ok();
                (serials.len() == tokens.len() && ino == Some(u64::from(scope))).then_some(serials)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("cannot read the enforcer's record of a mint child: {e}");
                None
            }
        });
        // SAFETY: the child has been reaped; nothing writes `mem` any more.
        let args = unsafe { &(*self.mem).args };
        let (error, step) = (args.error.load(Acquire), args.failed_step.load(Acquire));
        match exit {
            // Killed at its deadline (or by the client, who may signal it
            // inside its own namespace): whatever it sent closes here.
            ChildExit::Signal(_) => return Err((MintStep::Timeout, io::Error::from_raw_os_error(libc::EINTR))),
            _ if truncated => {
                return Err((MintStep::TokenCreate, io::Error::other("the mint child sent a truncated message")))
            }
            ChildExit::Code(code) if tokens.is_empty() => {
                return Err(match step {
                    1 => (MintStep::SetNs, io::Error::from_raw_os_error(error)),
                    2 => (MintStep::TokenCreate, io::Error::from_raw_os_error(error)),
                    3 | 4 | 6 => (MintStep::Prepare, io::Error::from_raw_os_error(error)),
                    5 => (MintStep::SendBack, io::Error::from_raw_os_error(error)),
                    7 | 8 => (MintStep::BecomeRoot, io::Error::from_raw_os_error(error)),
                    _ => (MintStep::Clone, io::Error::other(format!("mint child exited with status {code}"))),
                })
            }
            ChildExit::Code(_) => {}
        }
        Ok(tokens
            .into_iter()
            .enumerate()
            .map(|(i, fd)| MintedToken { fd, serial: serials.as_ref().and_then(|s| s.get(i).copied()) })
            .collect())
    }
}

impl Drop for MintChild {
    fn drop(&mut self) {
        if !self.reaped.load(std::sync::atomic::Ordering::Relaxed) {
            // Dropped before it was reaped (the request went away, or the
            // wait failed): kill it and wait for it here, briefly (a killed
            // child exits at once, stopped or not).
            self.kill();
            loop {
                use rustix::process::{WaitId, WaitIdOptions};
                match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
                    Ok(_) => break,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        // Its memory may still be in use: never reuse it.
                        tracing::error!("cannot reap a mint child: {e}; leaking its stack");
                        return;
                    }
                }
            }
        }
        release_mem(self.mem);
    }
}

/// Return a reaped child's memory to the pool (or free it).
fn release_mem(mem: *mut ChildMem) {
    // SAFETY: `mem` came from Box::into_raw in MintChild::start and no
    // child runs on it any more (never started, or reaped).
    let mem = unsafe { Box::from_raw(mem) };
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(mem);
    }
}

/// Mint up to `count` (1..=[`MAX_MINT_BATCH`]) tokens from `bpffs` inside
/// the user namespace `userns` without a helper process: a short clone
/// child of ours ([`MintChild::start`]) `setns()`es into the namespace,
/// calls `BPF_TOKEN_CREATE` and sends the tokens back. We (root in the
/// init namespace) stay where we are, and nothing runs in the client's
/// namespace after this returns.
///
/// Only this future waits for the child: the thread serves other requests
/// meanwhile. The child blocks all signals before entering the namespace;
/// one stopped there (SIGSTOP cannot be blocked) is killed after
/// [`MINT_CHILD_TIMEOUT`], failing only this call. A killed child's tokens
/// were in its own fd table, so they close with it.
///
/// Returns at least one token; fewer than `count` if the kernel refused a
/// later one. With a `tracker`, each token carries the serial the
/// enforcer gave it, when the child's record holds exactly its tokens in
/// `userns`.
pub async fn mint_tokens_in(
    userns: BorrowedFd<'_>,
    bpffs: BorrowedFd<'_>,
    count: usize,
    tracker: Option<&dyn TaskTracker>,
) -> Result<Vec<MintedToken>, (MintStep, io::Error)> {
    let child = MintChild::start(userns, bpffs, count, tracker)?;
    let exit = child.wait().await.map_err(|e| (MintStep::Clone, e))?;
    child.collect(exit, userns, tracker)
}

/// [`mint_tokens_in`], blocking the calling thread until the child is done.
pub fn mint_tokens_blocking(
    userns: BorrowedFd<'_>,
    bpffs: BorrowedFd<'_>,
    count: usize,
    tracker: Option<&dyn TaskTracker>,
) -> Result<Vec<MintedToken>, (MintStep, io::Error)> {
    let child = MintChild::start(userns, bpffs, count, tracker)?;
    let exit = child.wait_blocking().map_err(|e| (MintStep::Clone, e))?;
    child.collect(exit, userns, tracker)
}

/// A token minted by [`mint_tokens_in`]; it closes when dropped.
#[derive(Debug)]
pub struct MintedToken {
    fd: OwnedFd,
    /// The enforcer's serial of this token, when it runs and told us.
    serial: Option<u64>,
}

impl MintedToken {
    /// The serial the enforcer gave this token (see [`TaskTracker`]).
    pub fn serial(&self) -> Option<u64> {
        self.serial
    }
}

impl AsFd for MintedToken {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
