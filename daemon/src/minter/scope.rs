//! A scope: one user namespace owned by a client uid and one bpffs
//! instance delegated with exact masks, created once by the minter (cold)
//! and then used by the daemon to mint any number of tokens (warm, see
//! [`crate::cache`]).
//!
//! Cold path, following docs/design.md, "Where a token can be created",
//! "fsmount returns an O_PATH fd" and "Id maps are written from outside":
//!
//! ```text
//! minter (root)                          helper (forked, becomes client uid)
//!                                        close every other fd, pdeathsig
//!                                        setgroups([]), setresgid, setresuid
//!                                        (now non-dumpable: client cannot ptrace)
//!                                        unshare(CLONE_NEWUSER)  -> 'u'
//! open /proc/PID/ns/user, owner == uid?
//! write uid_map, setgroups=deny, gid_map -> 'g'
//!                                        unshare(CLONE_NEWNS), fsopen("bpf")
//!                                        -> 'f' + SCM_RIGHTS(fs context), exit
//! check fd is a fscontext
//! fsconfig(delegate_*), CMD_CREATE, fsmount, fstatfs == BPF_FS_MAGIC
//! open mount root; reap helper
//! ```
//!
//! The helper never creates the token: the minter does that itself through
//! [`crate::sys::mint_tokens_in`], so nothing the client could influence
//! hands us a "token".

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bpftoken_proto::delegation::{Delegation, Kind};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};

use super::error::{MintError, Step};
use crate::sys::{self, fdpass, Forked};

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// How long a helper may take for each step before it is killed.
const HELPER_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a failed step waits for the helper's exit to tell whether it
/// was killed (the helper's socket closes a moment before it is a zombie).
const HELPER_EXIT_GRACE: Duration = Duration::from_millis(100);

/// Where a scope's bpffs belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ScopeOwner {
    /// Owner mode: a new user namespace owned by this uid, whose root is
    /// this uid and gid outside.
    Uid { uid: u32, gid: u32 },
    /// Container mode and delegated mounts: an existing user namespace,
    /// owned by `owner_uid`, named by its nsfs inode (unique while the
    /// daemon holds its fd, which the scope does).
    Userns { ino: u64, owner_uid: u32 },
}

/// Who a scope belongs to and exactly what it delegates. Two requests
/// share a scope only when all of this is equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    pub owner: ScopeOwner,
    pub delegation: Delegation,
}

impl ScopeKey {
    /// The uid whose scope this is (for per-uid caps and messages).
    pub fn owner_uid(&self) -> u32 {
        match self.owner {
            ScopeOwner::Uid { uid, .. } => uid,
            ScopeOwner::Userns { owner_uid, .. } => owner_uid,
        }
    }
}

/// A live scope: the fds that keep its user namespace and bpffs alive.
#[derive(Debug)]
pub struct Scope {
    pub key: ScopeKey,
    pub userns: OwnedFd,
    /// The bpffs root directory (tokens are created from it).
    pub bpffs_root: OwnedFd,
    /// The detached mount itself (`fsmount`'s O_PATH fd). Closing it would
    /// dissolve the mount, which can then no longer be attached anywhere:
    /// a delegated mount is handed out as this fd.
    pub mount: OwnedFd,
    /// The inode of `userns`, read once: it cannot change while the scope
    /// holds the namespace open.
    userns_ino: OnceLock<u64>,
}

impl Scope {
    /// A scope of these fds.
    pub fn new(key: ScopeKey, userns: OwnedFd, bpffs_root: OwnedFd, mount: OwnedFd) -> Scope {
        Scope { key, userns, bpffs_root, mount, userns_ino: OnceLock::new() }
    }

    /// The inode of the scope's user namespace (its nsfs inode; a lease's
    /// `scope`), from one `fstat` per scope.
    pub fn userns_ino(&self) -> std::io::Result<u64> {
        if let Some(ino) = self.userns_ino.get() {
            return Ok(*ino);
        }
        let ino = rustix::fs::fstat(&self.userns)?.st_ino;
        Ok(*self.userns_ino.get_or_init(|| ino))
    }

    /// The inode of the scope's user namespace: how the enforcer names
    /// the scope (`token->userns->ns.inum`).
    pub fn inum(&self) -> std::io::Result<u32> {
        u32::try_from(self.userns_ino()?).map_err(|_| std::io::Error::other("user namespace inode above 2^32"))
    }

    /// Mint one token from this scope (the warm path). The token comes
    /// from our own child and our own bpffs fd, so a cheap check suffices
    /// here; [`Scope::create`] checks the first token's masks in full.
    pub async fn mint(&self, tracker: Option<&dyn sys::TaskTracker>) -> Result<sys::MintedToken, MintError> {
        let mut tokens = self.mint_batch(1, tracker).await?;
        tokens.pop().ok_or(MintError::NotToken { got: "nothing".into() })
    }

    /// [`Scope::mint`], blocking the calling thread (for programs without
    /// a runtime).
    pub fn mint_blocking(&self, tracker: Option<&dyn sys::TaskTracker>) -> Result<sys::MintedToken, MintError> {
        let tokens = sys::mint_tokens_blocking(self.userns.as_fd(), self.bpffs_root.as_fd(), 1, tracker);
        let mut tokens = Self::checked(tokens)?;
        tokens.pop().ok_or(MintError::NotToken { got: "nothing".into() })
    }

    /// Up to `count` tokens from one mint child (at least one); with a
    /// `tracker`, each carries its enforcer serial. Waits for the child
    /// without blocking the thread.
    pub async fn mint_batch(
        &self,
        count: usize,
        tracker: Option<&dyn sys::TaskTracker>,
    ) -> Result<Vec<sys::MintedToken>, MintError> {
        Self::checked(sys::mint_tokens_in(self.userns.as_fd(), self.bpffs_root.as_fd(), count, tracker).await)
    }

    /// The tokens of a mint child, each checked to be a bpffs object.
    fn checked(
        tokens: Result<Vec<sys::MintedToken>, (sys::MintStep, std::io::Error)>,
    ) -> Result<Vec<sys::MintedToken>, MintError> {
        let tokens = tokens.map_err(|(step, e)| {
            let step = match step {
                sys::MintStep::SuidDumpable => return MintError::PtraceRisk(e.to_string()),
                sys::MintStep::Clone => Step::Clone,
                sys::MintStep::Prepare => Step::MintChildPrepare,
                sys::MintStep::SetNs => Step::SetNs,
                sys::MintStep::BecomeRoot => Step::MintChildBecomeRoot,
                sys::MintStep::TokenCreate => Step::TokenCreate,
                sys::MintStep::SendBack => Step::MintChildSend,
                sys::MintStep::Timeout => Step::MintTimeout,
            };
            MintError::syscall(step, &e)
        })?;
        for token in &tokens {
            let st = rustix::fs::fstatfs(token.as_fd()).map_err(|e| MintError::from((Step::CheckToken, e)))?;
            let magic = st.f_type.cast_unsigned();
            if magic != BPF_FS_MAGIC {
                return Err(MintError::NotToken { got: format!("a file on a filesystem with magic {magic:#x}") });
            }
        }
        Ok(tokens)
    }

    /// Create a scope for `key` (the cold path). Must be called from the
    /// single-threaded minter. `target` is the user namespace of a
    /// [`ScopeOwner::Userns`] key, checked here against it.
    pub fn create(key: ScopeKey, target: Option<OwnedFd>) -> Result<Scope, MintError> {
        let target = match (key.owner, target) {
            (ScopeOwner::Uid { .. }, None) => None,
            (ScopeOwner::Userns { ino, owner_uid }, Some(ns)) => Some(check_target(ns, ino, owner_uid)?),
            (ScopeOwner::Uid { .. }, Some(_)) => {
                return Err(MintError::BadTarget("a namespace came with an owner-mode request".into()))
            }
            (ScopeOwner::Userns { .. }, None) => {
                return Err(MintError::BadTarget("no namespace came with a container-mode request".into()))
            }
        };
        // The helper changes uid or enters a namespace the client owns.
        sys::ptrace_safe().map_err(|e| MintError::PtraceRisk(e.to_string()))?;
        let (ours, theirs) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|e| MintError::from((Step::SocketPair, e)))?;
        // The minter is single-threaded (checked at its start, and again
        // by the fork itself).
        match sys::fork_single_threaded().map_err(|e| MintError::syscall(Step::Fork, &e))? {
            Forked::Child => {
                drop(ours);
                helper_main(theirs.as_fd(), key.owner, target.as_ref().map(AsFd::as_fd))
            }
            Forked::Parent(pid) => {
                drop(theirs);
                let mut helper = HelperGuard { pid: Some(pid) };
                let scope = match target {
                    None => drive_helper(ours.as_fd(), pid, key),
                    Some(ns) => drive_helper_in(ours.as_fd(), key, ns),
                };
                // A helper killed from outside (its client may SIGKILL it)
                // shows up as whatever step noticed first (EPIPE,
                // ECONNRESET, ESRCH on its maps...): say what happened
                // instead. Its socket closes before it is a zombie, so
                // give its exit a moment to show.
                let killed = scope.is_err() && helper.killed_by_signal(HELPER_EXIT_GRACE);
                helper.reap();
                match scope {
                    Err(_) if killed => Err(MintError::HelperLost { uid: key.owner_uid() }),
                    other => other,
                }
            }
        }
    }
}

/// A namespace fd from the daemon must be the user namespace it names,
/// owned by the uid it names, and not ours (the init namespace would give
/// a token nobody may use, and a bpffs only root should have).
fn check_target(ns: OwnedFd, ino: u64, owner_uid: u32) -> Result<OwnedFd, MintError> {
    let ty = sys::ns_type(ns.as_fd()).map_err(|e| MintError::BadTarget(format!("not a namespace fd: {e}")))?;
    if ty != libc::CLONE_NEWUSER {
        return Err(MintError::BadTarget(format!("namespace type {ty:#x} is not a user namespace")));
    }
    let st = rustix::fs::fstat(&ns).map_err(|e| MintError::BadTarget(e.to_string()))?;
    let own = rustix::fs::stat("/proc/self/ns/user").map_err(|e| MintError::BadTarget(e.to_string()))?;
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) {
        return Err(MintError::BadTarget("it is the daemon's own user namespace".into()));
    }
    if st.st_ino != ino {
        return Err(MintError::BadTarget(format!("inode {} is not the requested {ino}", st.st_ino)));
    }
    let owner = sys::ns_owner_uid(ns.as_fd()).map_err(|e| MintError::syscall(Step::CheckOwner, &e))?;
    if owner != owner_uid {
        return Err(MintError::WrongOwner { got: owner, want: owner_uid });
    }
    Ok(ns)
}

/// Kills and reaps the helper whatever happens to the cold path.
struct HelperGuard {
    pid: Option<Pid>,
}

impl HelperGuard {
    fn reap(mut self) {
        self.kill_and_wait();
    }

    /// Whether the helper has already ended by a signal (we send none
    /// before [`HelperGuard::reap`]). Reaps it if so.
    /// Whether the helper has ended by a signal, waiting up to `grace`
    /// for it to end.
    fn killed_by_signal(&mut self, grace: Duration) -> bool {
        let Some(pid) = self.pid else { return false };
        let deadline = Instant::now() + grace;
        loop {
            match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => {
                    self.pid = None;
                    return status.signaled();
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                _ => return false,
            }
        }
    }

    fn kill_and_wait(&mut self) {
        if let Some(pid) = self.pid.take() {
            // It has usually exited already; the kill covers the rest.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
    }
}

impl Drop for HelperGuard {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

// ---- helper side (runs in the forked child) ----

const MSG_USERNS_READY: u8 = b'u';
const MSG_MAPS_WRITTEN: u8 = b'g';
const MSG_FS_CONTEXT: u8 = b'f';
const MSG_ERROR: u8 = b'e';

fn step_code(step: Step) -> u8 {
    match step {
        Step::SetIds => 1,
        Step::UnshareUser => 2,
        Step::UnshareMount => 3,
        Step::FsOpen => 4,
        Step::EnterUserNamespace => 5,
        Step::BecomeNamespaceRoot => 6,
        _ => 0,
    }
}

fn step_from_code(code: u8) -> Option<Step> {
    Some(match code {
        1 => Step::SetIds,
        2 => Step::UnshareUser,
        3 => Step::UnshareMount,
        4 => Step::FsOpen,
        5 => Step::EnterUserNamespace,
        6 => Step::BecomeNamespaceRoot,
        _ => return None,
    })
}

fn helper_main(sock: BorrowedFd<'_>, owner: ScopeOwner, target: Option<BorrowedFd<'_>>) -> ! {
    let result = match (owner, target) {
        (_, Some(ns)) => helper_steps_in(sock, ns),
        (ScopeOwner::Uid { uid, gid }, None) => helper_steps(sock, uid, gid),
        (ScopeOwner::Userns { .. }, None) => Err((Step::EnterUserNamespace, rustix::io::Errno::INVAL)),
    };
    let code = match result {
        Ok(()) => 0,
        Err((step, errno)) => {
            let mut msg = [0u8; 6];
            msg[0] = MSG_ERROR;
            msg[1] = step_code(step);
            msg[2..6].copy_from_slice(&errno.raw_os_error().to_le_bytes());
            let _ = rustix::net::send(sock, &msg, SendFlags::NOSIGNAL);
            1
        }
    };
    sys::exit_now(code)
}

/// After the helper's last credential change: non-dumpable (the change
/// reset dumpability to fs.suid_dumpable; non-dumpable, the client cannot
/// ptrace us or open our /proc files), and dying with the minter (the
/// change also cleared the parent-death signal), checked afterwards in
/// case the minter died already.
fn settle_after_credentials(step: Step) -> Result<(), (Step, rustix::io::Errno)> {
    use rustix::io::Errno;
    use rustix::process::DumpableBehavior;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| (step, e))?;
    if rustix::process::dumpable_behavior().map_err(|e| (step, e))? != DumpableBehavior::NotDumpable {
        return Err((step, Errno::PERM));
    }
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(|e| (step, e))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err((step, Errno::SRCH));
    }
    Ok(())
}

fn helper_steps(sock: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), (Step, rustix::io::Errno)> {
    use rustix::io::Errno;
    // Hold nothing of the minter's (other clients' scopes) once we are the client.
    sys::close_all_fds_except(&[sock]).map_err(|e| (Step::SetIds, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    let (uid, gid) = (rustix::process::Uid::from_raw(uid), rustix::process::Gid::from_raw(gid));
    // Single-threaded process: the thread-level calls are process-wide.
    rustix::thread::set_thread_groups(&[]).map_err(|e| (Step::SetIds, e))?;
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| (Step::SetIds, e))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| (Step::SetIds, e))?;
    settle_after_credentials(Step::SetIds)?;
    // (Creating a user namespace we own changes neither.)
    sys::unshare_namespaces(rustix::thread::UnshareFlags::NEWUSER).map_err(|e| (Step::UnshareUser, e))?;
    rustix::net::send(sock, &[MSG_USERNS_READY], SendFlags::NOSIGNAL).map_err(|e| (Step::UnshareUser, e))?;
    let mut reply = [0u8; 1];
    match rustix::net::recv(sock, &mut reply, RecvFlags::empty()) {
        Ok((1, _)) if reply[0] == MSG_MAPS_WRITTEN => {}
        Ok(_) => return Err((Step::UnshareUser, Errno::PROTO)),
        Err(e) => return Err((Step::UnshareUser, e)),
    }
    sys::unshare_namespaces(rustix::thread::UnshareFlags::NEWNS).map_err(|e| (Step::UnshareMount, e))?;
    let fs = rustix::mount::fsopen("bpf", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| (Step::FsOpen, e))?;
    send_fs_context(sock, fs.as_fd())
}

/// Container mode: enter the existing namespace `ns` and open a bpffs
/// there as its root, so the bpffs (and its root directory) belongs to it.
fn helper_steps_in(sock: BorrowedFd<'_>, ns: BorrowedFd<'_>) -> Result<(), (Step, rustix::io::Errno)> {
    use rustix::io::Errno;
    // Nothing of the minter's comes into the namespace: only `sock`, and
    // `ns` until we are in it.
    sys::close_all_fds_except(&[sock, ns])
        .map_err(|e| (Step::SetIds, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    rustix::thread::move_into_link_name_space(ns, Some(rustix::thread::LinkNameSpaceType::User))
        .map_err(|e| (Step::EnterUserNamespace, e))?;
    // Non-dumpable at once (setns reset it), before anything else.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| (Step::EnterUserNamespace, e))?;
    sys::close_all_fds_except(&[sock]).map_err(|e| (Step::SetIds, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    // The namespace's root, so the bpffs root directory is owned by a uid
    // mapped there. Its setgroups may be "deny"; supplementary groups play
    // no part in fsopen, so an EPERM there is fine.
    match rustix::thread::set_thread_groups(&[]) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(e) => return Err((Step::BecomeNamespaceRoot, e)),
    }
    let (uid, gid) = (rustix::process::Uid::ROOT, rustix::process::Gid::ROOT);
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(|e| (Step::BecomeNamespaceRoot, e))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(|e| (Step::BecomeNamespaceRoot, e))?;
    settle_after_credentials(Step::BecomeNamespaceRoot)?;
    sys::unshare_namespaces(rustix::thread::UnshareFlags::NEWNS).map_err(|e| (Step::UnshareMount, e))?;
    let fs = rustix::mount::fsopen("bpf", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| (Step::FsOpen, e))?;
    send_fs_context(sock, fs.as_fd())
}

fn send_fs_context(sock: BorrowedFd<'_>, fs: BorrowedFd<'_>) -> Result<(), (Step, rustix::io::Errno)> {
    fdpass::send_with_fds_blocking(sock, &[MSG_FS_CONTEXT], &[fs])
        .map_err(|e| (Step::FsOpen, rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)))?;
    Ok(())
}

// ---- root side ----

/// Wait until `sock` is readable or the helper step times out.
fn wait_readable(sock: BorrowedFd<'_>, uid: u32) -> Result<(), MintError> {
    let deadline = Instant::now() + HELPER_STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let millis = u64::try_from(HELPER_STEP_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
            return Err(MintError::HelperTimeout { uid, millis });
        }
        let ts = timespec(left);
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err((Step::HelperIo, e).into()),
        }
    }
}

/// A poll timeout from a duration (saturating).
pub(crate) fn timespec(d: Duration) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Receive one helper message (up to 6 bytes) and at most one fd.
fn recv_from_helper(sock: BorrowedFd<'_>, uid: u32) -> Result<(Vec<u8>, Option<OwnedFd>), MintError> {
    wait_readable(sock, uid)?;
    let mut buf = [0u8; 16];
    let msg = fdpass::recv_with_fds(sock, &mut buf, 1).map_err(|e| MintError::syscall(Step::HelperIo, &e))?;
    let mut fds = msg.fds;
    if msg.bytes == 0 {
        return Err(MintError::HelperLost { uid });
    }
    if msg.fds_truncated || msg.bytes_truncated || fds.len() > 1 {
        return Err(MintError::HelperProtocol("truncated message or too many fds".into()));
    }
    let data = buf[..msg.bytes].to_vec();
    if data[0] == MSG_ERROR && data.len() == 6 {
        let step = step_from_code(data[1]).unwrap_or(Step::HelperIo);
        let errno = i32::from_le_bytes([data[2], data[3], data[4], data[5]]);
        return Err(MintError::Syscall { step, errno });
    }
    Ok((data, fds.pop()))
}

fn drive_helper(sock: BorrowedFd<'_>, pid: Pid, key: ScopeKey) -> Result<Scope, MintError> {
    let ScopeOwner::Uid { uid, gid } = key.owner else {
        return Err(MintError::BadTarget("owner-mode helper for a namespace key".into()));
    };
    let (msg, fd) = recv_from_helper(sock, uid)?;
    if msg != [MSG_USERNS_READY] || fd.is_some() {
        return Err(MintError::HelperProtocol(format!("expected 'u', got {msg:?}")));
    }
    // Our own unreaped child: its pid cannot be recycled under us.
    let proc_dir = format!("/proc/{}", pid.as_raw_nonzero());
    let userns = rustix::fs::open(format!("{proc_dir}/ns/user"), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MintError::from((Step::OpenUserNamespace, e)))?;
    let owner = sys::ns_owner_uid(userns.as_fd()).map_err(|e| MintError::syscall(Step::CheckOwner, &e))?;
    if owner != uid {
        return Err(MintError::WrongOwner { got: owner, want: uid });
    }
    // Root writes the maps from outside: the helper is non-dumpable and
    // cannot (docs/design.md, "Id maps are written from outside"). Root in
    // the namespace = the client outside.
    let write = |file: &str, text: String| {
        std::fs::write(format!("{proc_dir}/{file}"), text).map_err(|e| MintError::syscall(Step::WriteIdMaps, &e))
    };
    write("uid_map", format!("0 {uid} 1"))?;
    write("setgroups", "deny".to_owned())?;
    write("gid_map", format!("0 {gid} 1"))?;
    rustix::net::send(sock, &[MSG_MAPS_WRITTEN], SendFlags::NOSIGNAL)
        .map_err(|e| MintError::from((Step::HelperIo, e)))?;

    let fs = recv_fs_context(sock, uid)?;
    let (bpffs_root, mount) = configure_bpffs(fs.as_fd(), &key.delegation)?;
    Ok(Scope::new(key, userns, bpffs_root, mount))
}

/// Container mode: the helper enters `ns` itself and sends the context.
fn drive_helper_in(sock: BorrowedFd<'_>, key: ScopeKey, ns: OwnedFd) -> Result<Scope, MintError> {
    let fs = recv_fs_context(sock, key.owner_uid())?;
    let (bpffs_root, mount) = configure_bpffs(fs.as_fd(), &key.delegation)?;
    Ok(Scope::new(key, ns, bpffs_root, mount))
}

/// The helper's last message: a bpf filesystem context, checked.
fn recv_fs_context(sock: BorrowedFd<'_>, uid: u32) -> Result<OwnedFd, MintError> {
    let (msg, fd) = recv_from_helper(sock, uid)?;
    let fs = match (msg.as_slice(), fd) {
        ([MSG_FS_CONTEXT], Some(fd)) => fd,
        (m, _) => return Err(MintError::HelperProtocol(format!("expected 'f' with an fd, got {m:?}"))),
    };
    let kind = sys::fd_kind(fs.as_fd()).map_err(|e| MintError::syscall(Step::HelperIo, &e))?;
    if kind != "anon_inode:[fscontext]" {
        return Err(MintError::NotFsContext { got: kind });
    }
    Ok(fs)
}

/// Check a token's masks, as the kernel reports them in fdinfo, against
/// what the scope was meant to delegate.
pub fn verify_token_masks(token: BorrowedFd<'_>, want: &Delegation) -> Result<(), MintError> {
    let got = sys::token_masks(token).map_err(|e| MintError::syscall(Step::CheckToken, &e))?;
    for kind in Kind::ALL {
        let ok = match got.get(kind) {
            // The kernel prints "any" when every bit it knows is set.
            sys::TokenMask::Any => {
                let want = want.get(kind);
                want == u64::MAX || kind.builtin_names().iter().all(|&(_, v)| want & (1u64 << v) != 0)
            }
            sys::TokenMask::Bits(bits) => bits == want.get(kind),
        };
        if !ok {
            return Err(MintError::WrongMasks { kind, got: format!("{:?}", got.get(kind)), want: want.get(kind) });
        }
    }
    Ok(())
}

/// Root's part: set exactly the granted delegation, create and mount.
/// Returns the root directory and the detached mount.
fn configure_bpffs(fs: BorrowedFd<'_>, delegation: &Delegation) -> Result<(OwnedFd, OwnedFd), MintError> {
    for kind in Kind::ALL {
        // Each delegate_* option costs a scan of the kernel's BTF (tens of
        // microseconds); an empty set is the default and needs none.
        if delegation.get(kind) == 0 {
            continue;
        }
        rustix::mount::fsconfig_set_string(fs, kind.mount_option(), delegation.mount_option_value(kind))
            .map_err(|e| MintError::from((Step::Delegate(kind), e)))?;
    }
    rustix::mount::fsconfig_create(fs).map_err(|e| MintError::from((Step::CreateSuperblock, e)))?;
    let mnt = rustix::mount::fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| MintError::from((Step::FsMount, e)))?;
    let st = rustix::fs::fstatfs(&mnt).map_err(|e| MintError::from((Step::CheckMount, e)))?;
    let magic = st.f_type.cast_unsigned();
    if magic != BPF_FS_MAGIC {
        return Err(MintError::NotBpffs { magic });
    }
    // fsmount() gives an O_PATH fd, which BPF_TOKEN_CREATE rejects (fact 3).
    let root = rustix::fs::openat(&mnt, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| MintError::from((Step::OpenRoot, e)))?;
    Ok((root, mnt))
}

#[cfg(test)]
mod tests {
    //! The minter treats what the helper sends as untrusted: a context of
    //! another filesystem and a fd that is not a token are refused.
    use super::*;

    fn root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("CI").as_deref() != Ok("true"), "these tests need root, and CI=true");
        eprintln!("SKIPPED: needs root");
        false
    }

    #[test]
    fn a_tmpfs_context_is_refused() {
        if !root() {
            return;
        }
        let fs = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).unwrap();
        let err = configure_bpffs(fs.as_fd(), &Delegation::ANY).unwrap_err();
        // tmpfs has no delegate_* option: the very first fsconfig fails.
        assert_eq!(err, MintError::Syscall { step: Step::Delegate(Kind::Cmd), errno: libc::EINVAL });
    }

    #[test]
    fn a_fd_that_is_not_a_token_is_refused() {
        if !root() {
            return;
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = verify_token_masks(file.as_fd(), &Delegation::ANY).unwrap_err();
        assert!(matches!(err, MintError::Syscall { step: Step::CheckToken, .. }), "{err:?}");
        assert!(err.to_string().starts_with("checking the minted fd failed"), "{err}");
    }
}
