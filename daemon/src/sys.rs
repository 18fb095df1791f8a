//! Every `unsafe` block and raw syscall of the daemon, each behind a safe
//! wrapper. Calls rustix already wraps safely are used directly elsewhere.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PASSPIDFD` (Linux 6.5): every message received carries a pidfd of
/// the process that sent it (`SCM_PIDFD`); accepted sockets inherit it
/// from the listener, and the kernel attaches it even to messages sent
/// before the accept.
const SO_PASSPIDFD: libc::c_int = 76;
/// `SCM_PIDFD`: the control message `SO_PASSPIDFD` adds.
const SCM_PIDFD: libc::c_int = 4;
/// `SO_PEERGROUPS` (Linux 4.13): supplementary groups of the peer.
const SO_PEERGROUPS: libc::c_int = 59;
/// `NS_GET_OWNER_UID` = `_IO(0xb7, 0x4)`.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
/// `PIDFD_GET_USER_NAMESPACE` = `_IO(0xFF, 9)` (Linux 6.11).
const PIDFD_GET_USER_NAMESPACE: libc::c_ulong = 0xff09;
/// `BPF_TOKEN_CREATE` command number of `bpf(2)`.
const BPF_TOKEN_CREATE: libc::c_long = 36;

/// Turn a `-1` + errno return into an `io::Error`.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A pidfd for the process at the other end of a connected Unix socket,
/// taken from the kernel at connect time, so a recycled pid cannot stand
/// in for the peer.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    // size_of::<c_int>() is 4: the conversion cannot fail.
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `fd` and `len` are valid for writes of the sizes passed; the
    // kernel writes at most `len` bytes.
    let ret = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut fd).cast::<c_void>(), &mut len)
    };
    cvt(ret.into())?;
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: on success the kernel installed a new fd that nothing else
    // owns; it is ours to close.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Make every message received on sockets accepted from `listener` carry
/// a pidfd of its sender (`SO_PASSPIDFD`).
pub fn pass_sender_pidfds(listener: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `one` is valid for reads of `len` bytes.
    let ret = unsafe {
        libc::setsockopt(listener.as_raw_fd(), libc::SOL_SOCKET, SO_PASSPIDFD, (&raw const one).cast::<c_void>(), len)
    };
    cvt(ret.into()).map(drop)
}

/// What one [`recv_request_bytes`] brought.
#[derive(Debug)]
pub struct Received {
    pub bytes: usize,
    /// Fds sent with the bytes (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// More fds came than there was room for (the kernel closed the rest).
    pub truncated: bool,
    /// A pidfd of the process that sent these bytes (`SO_PASSPIDFD`; a
    /// stream read never joins bytes of two senders).
    pub sender: Option<OwnedFd>,
}

/// Most fds [`recv_request_bytes`] takes from one message.
pub const MAX_RECV_FDS: usize = 1;

/// One non-blocking `recvmsg` into `buf`, with room for
/// [`MAX_RECV_FDS`] fds and the sender's pidfd.
pub fn recv_request_bytes(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();
    const ALIGN: usize = std::mem::size_of::<usize>();
    const FD: usize = std::mem::size_of::<libc::c_int>();
    // Room for SCM_RIGHTS with a few more fds than a request may carry (so
    // a refusal can say how many came; the kernel closes any beyond) plus
    // SCM_PIDFD, which the kernel writes first.
    const RIGHTS_ROOM: usize = 4 * MAX_RECV_FDS;
    const SPACE: usize = HEADER + (FD * RIGHTS_ROOM).next_multiple_of(ALIGN) + HEADER + FD.next_multiple_of(ALIGN);
    // u64s: cmsghdr's alignment.
    let mut control = [0u64; SPACE.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast::<c_void>(), iov_len: buf.len() };
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, lengths 0).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = SPACE as _;
    // SAFETY: `msg` points at live buffers of the lengths given.
    let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    let bytes = usize::try_from(cvt(ret as libc::c_long)?).unwrap_or(0);
    let mut out = Received { bytes, fds: Vec::new(), truncated: msg.msg_flags & libc::MSG_CTRUNC != 0, sender: None };
    // Walk the control messages the kernel wrote (CMSG_FIRSTHDR/NXTHDR by
    // hand, on bytes): cmsg_len, cmsg_level, cmsg_type, data.
    let bytes_of: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let used = (msg.msg_controllen as usize).min(bytes_of.len());
    let level_at = std::mem::offset_of!(libc::cmsghdr, cmsg_level);
    let type_at = std::mem::offset_of!(libc::cmsghdr, cmsg_type);
    let word = |at: usize, n: usize| bytes_of.get(at..at + n);
    let mut at = 0;
    while at + HEADER <= used {
        let len = word(at, ALIGN).and_then(|b| b.try_into().ok()).map_or(0, usize::from_ne_bytes);
        let level = word(at + level_at, 4).and_then(|b| b.try_into().ok()).map_or(-1, i32::from_ne_bytes);
        let kind = word(at + type_at, 4).and_then(|b| b.try_into().ok()).map_or(-1, i32::from_ne_bytes);
        if len < HEADER || at + len > used {
            break;
        }
        let carries_fds = level == libc::SOL_SOCKET && (kind == libc::SCM_RIGHTS || kind == SCM_PIDFD);
        // Only these two carry fds; any other payload is not one.
        let payload = if carries_fds { &bytes_of[at + HEADER..at + len] } else { &[][..] };
        for fd in payload.chunks_exact(FD) {
            let fd = i32::from_ne_bytes(fd.try_into().unwrap_or([0xff; 4]));
            if fd < 0 {
                // SCM_PIDFD's "no pidfd could be made".
                continue;
            }
            // SAFETY: the kernel installed this fd for us with the message;
            // nothing else owns it, and it is wrapped exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if kind == SCM_PIDFD {
                out.sender = Some(owned);
            } else {
                out.fds.push(owned);
            }
        }
        at += len.next_multiple_of(ALIGN);
    }
    Ok(out)
}

/// Supplementary groups of the peer, as the kernel recorded them at
/// connect time.
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow on ERANGE.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        // SAFETY: the buffer is valid for `len` bytes of writes and the
        // kernel writes at most `len` bytes, updating `len`.
        let ret = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<c_void>(),
                &mut len,
            )
        };
        let needed = len as usize / std::mem::size_of::<libc::gid_t>();
        match cvt(ret.into()) {
            Ok(_) => {
                groups.truncate(needed);
                return Ok(groups);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 => {
                groups.resize(needed, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// True while the process behind `pidfd` has not exited.
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 only checks for existence
    // and permission; a null siginfo is allowed.
    let ret = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    ret == 0
}

/// The user namespace of the process behind `pidfd` (Linux 6.11+).
pub fn pidfd_user_namespace(pidfd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: this ioctl takes no argument and returns a new fd.
    let ret = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_USER_NAMESPACE, 0) };
    let fd = cvt(ret.into())?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The uid owning the user namespace `ns`.
pub fn ns_owner_uid(ns: BorrowedFd<'_>) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t to the pointer given.
    let ret = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_OWNER_UID, &raw mut uid) };
    cvt(ret.into())?;
    Ok(uid)
}

/// `NS_GET_NSTYPE` from `include/uapi/linux/nsfs.h`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The `CLONE_NEW*` type of a namespace fd (ENOTTY if `ns` is not one).
pub fn ns_type(ns: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
    let ret = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) };
    cvt(ret.into())?;
    Ok(ret)
}

/// `BPF_TOKEN_CREATE` from a bpffs root fd, in the calling thread's own
/// user namespace.
pub fn bpf_token_create(bpffs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = [0u32; 2];
    attr[1] = u32::try_from(bpffs.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `attr` is a valid `union bpf_attr` prefix for BPF_TOKEN_CREATE
    // (flags, bpffs_fd) of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8) };
    let fd = RawFd::try_from(cvt(ret)?).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel knows the `BPF_TOKEN_CREATE` command (Linux 6.9+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSupport {
    Yes,
    No,
}

/// Asks the kernel for a token from fd -1: a kernel with tokens rejects
/// the fd (EBADF), an older one the command (EINVAL).
pub fn bpf_token_create_support() -> io::Result<TokenSupport> {
    let mut attr = [0u32, u32::MAX];
    // SAFETY: `attr` is a valid `union bpf_attr` prefix for BPF_TOKEN_CREATE
    // (flags 0, bpffs_fd -1) of the size passed; no fd is created.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8) };
    match cvt(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(TokenSupport::Yes),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(TokenSupport::No),
        Err(e) => Err(e),
        Ok(fd) => {
            // Not expected; do not leak whatever it is.
            if let Ok(fd) = RawFd::try_from(fd) {
                // SAFETY: the kernel returned a new fd that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            Ok(TokenSupport::Yes)
        }
    }
}

/// Most tokens one mint child creates.
pub const MAX_MINT_BATCH: usize = 8;

/// Longest a mint child may take before it is killed: a client may
/// SIGSTOP a child once it is in the client's namespace.
pub const MINT_CHILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `BPF_MAP_DELETE_ELEM` and `BPF_TOKEN_CREATE` as raw syscall arguments.
const BPF_MAP_DELETE_ELEM_ARG: usize = 3;
const BPF_TOKEN_CREATE_ARG: usize = 36;

/// Raw system calls for the mint child: it shares our memory and our
/// thread pointer while the thread that cloned it goes on running, so it
/// must not write errno (the cloning thread's TLS), allocate, lock or
/// unwind. Returns the kernel's value: negative errno on failure.
mod raw {
    /// # Safety
    /// The arguments must be valid for system call `nr`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 5]) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller passes valid arguments; `syscall` clobbers
        // rcx and r11 (declared) and touches no stack.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// # Safety
    /// The arguments must be valid for system call `nr`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 5]) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller passes valid arguments; `svc 0` returns in x0
        // and touches no stack.
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a[0] => ret, in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4],
                options(nostack),
            );
        }
        ret
    }
}

/// Inputs and error report of one mint child. The child reads it through
/// a shared reference while the daemon goes on; the daemon writes the
/// plain fields only before the child starts and reads the atomics.
#[derive(Debug)]
#[repr(C)]
struct ChildArgs {
    userns: RawFd,
    bpffs: RawFd,
    /// The enforcer's per-task record map, or -1: the child clears its own
    /// record (left over by an earlier task with the same tid) before it
    /// creates tokens, so the record then holds exactly its serials.
    task_map: RawFd,
    /// The child's end of the socket pair its tokens come back through.
    sock: RawFd,
    /// How many tokens to create (1..=MAX_MINT_BATCH).
    count: usize,
    /// A positive errno when a step failed.
    error: std::sync::atomic::AtomicI32,
    /// Which step failed: 0 none, 1 setns, 2 BPF_TOKEN_CREATE,
    /// 3 sigprocmask, 4 close_range, 5 sendmsg, 6 setgroups,
    /// 7 setresgid/setresuid, 8 prctl(PR_SET_DUMPABLE).
    failed_step: std::sync::atomic::AtomicI32,
}

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

/// Runs in the mint child. Only raw syscalls ([`raw`]): no allocation, no
/// locks, no unwinding, no errno, as it shares our memory with the
/// running daemon.
extern "C" fn mint_child_main(arg: *mut c_void) -> libc::c_int {
    use std::sync::atomic::Ordering::Release;
    // SAFETY: `arg` points at the `ChildArgs` that `MintChild` keeps
    // alive, and does not mutate, until this child has been reaped.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    let fail = |ret: libc::c_long, step: i32| {
        args.error.store(i32::try_from(-ret).unwrap_or(libc::EIO), Release);
        args.failed_step.store(step, Release);
        1
    };
    // Block every signal before entering the client's namespace: once in
    // it, the client may signal us (it holds CAP_KILL there), and our
    // handlers are copies of the daemon's (tokio's would report SIGTERM to
    // the daemon). SIGKILL and SIGSTOP cannot be blocked: the daemon waits
    // for us with a deadline and kills us at it.
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask with a valid 8-byte kernel sigset.
    let ret = unsafe {
        raw::syscall(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, (&raw const all) as usize, 0, 8, 0])
    };
    if ret != 0 {
        return fail(ret, 3);
    }
    // Our fd table is a copy of the daemon's: keep only what we need, so
    // that a client holding us stopped holds nothing of anybody else (no
    // connection, no token) and an fd the daemon closes really closes.
    let keep = [args.userns, args.bpffs, args.task_map, args.sock];
    let mut next: u32 = 0;
    loop {
        let lowest = keep.iter().filter_map(|&fd| u32::try_from(fd).ok()).filter(|&fd| fd >= next).min();
        let (last, done) = match lowest {
            Some(fd) => (fd.checked_sub(1), false),
            None => (Some(u32::MAX), true),
        };
        if let Some(last) = last.filter(|&last| last >= next) {
            // SAFETY: close_range(2) on our own (private) fd table.
            let ret = unsafe { raw::syscall(libc::SYS_close_range, [next as usize, last as usize, 0, 0, 0]) };
            if ret != 0 {
                return fail(ret, 4);
            }
        }
        match lowest {
            Some(fd) if !done && fd < u32::MAX => next = fd + 1,
            _ => break,
        }
    }
    if args.task_map >= 0 {
        // Still root in our own namespace here. ENOENT (no stale record)
        // is the usual answer; any other failure shows up as a record that
        // does not match the tokens made, which the parent refuses.
        // SAFETY: gettid(2) takes no arguments.
        let tid = u32::try_from(unsafe { raw::syscall(libc::SYS_gettid, [0; 5]) }).unwrap_or(0);
        // bpf_attr for map element commands: map_fd, pad, key pointer.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(args.task_map.cast_unsigned());
        attr[1] = (&raw const tid) as u64;
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_DELETE_ELEM
        // and `tid` (the key, 4 bytes) lives across the call.
        let _ = unsafe { raw::syscall(libc::SYS_bpf, [BPF_MAP_DELETE_ELEM_ARG, attr.as_mut_ptr() as usize, 32, 0, 0]) };
    }
    // No supplementary group of the daemon's comes along.
    // SAFETY: setgroups(2) with an empty list.
    let ret = unsafe { raw::syscall(libc::SYS_setgroups, [0; 5]) };
    if ret != 0 {
        return fail(ret, 6);
    }
    // SAFETY: setns(2) on an fd value; no memory is passed.
    let ret = unsafe {
        raw::syscall(libc::SYS_setns, [args.userns.cast_unsigned() as usize, libc::CLONE_NEWUSER as usize, 0, 0, 0])
    };
    if ret != 0 {
        return fail(ret, 1);
    }
    // Become the namespace's root, that is the uid that owns it in the
    // init namespace, keeping every capability inside it: the kernel
    // counts the fds we send back against the sender's uid, and once in
    // the namespace we lack CAP_SYS_RESOURCE, so as root we would be
    // refused (ETOOMANYREFS) whenever clients leave more fds from root
    // unread than our RLIMIT_NOFILE. As the owner, only the owner's own
    // fds in flight count. The scope's ids 0 are mapped (owner mode maps
    // them; container mode checks it when the scope is made).
    // SAFETY: setresgid(2)/setresuid(2) take plain ids.
    let ret = unsafe { raw::syscall(libc::SYS_setresgid, [0; 5]) };
    if ret != 0 {
        return fail(ret, 7);
    }
    // SAFETY: as above.
    let ret = unsafe { raw::syscall(libc::SYS_setresuid, [0; 5]) };
    if ret != 0 {
        return fail(ret, 7);
    }
    // setns and the uid change reset the dumpability of our (shared)
    // memory to fs.suid_dumpable; [`MintChild::start`] refuses the value
    // that would let the client attach (1), and this closes the window
    // for good.
    // SAFETY: prctl(2) with integer arguments.
    let ret = unsafe { raw::syscall(libc::SYS_prctl, [libc::PR_SET_DUMPABLE as usize, 0, 0, 0, 0]) };
    if ret != 0 {
        return fail(ret, 8);
    }
    // One setns for the whole batch: each further token costs only the
    // BPF_TOKEN_CREATE itself.
    #[repr(C)]
    struct Rights {
        header: libc::cmsghdr,
        fds: [libc::c_int; MAX_MINT_BATCH],
    }
    // SAFETY: all-zero bytes are a valid cmsghdr and fd array.
    let mut rights: Rights = unsafe { std::mem::zeroed() };
    let mut made = 0usize;
    let mut status = 0;
    for slot in rights.fds.iter_mut().take(args.count) {
        let mut attr = [0u32; 2];
        attr[1] = args.bpffs.cast_unsigned();
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_TOKEN_CREATE.
        let fd = unsafe { raw::syscall(libc::SYS_bpf, [BPF_TOKEN_CREATE_ARG, attr.as_mut_ptr() as usize, 8, 0, 0]) };
        match i32::try_from(fd) {
            Ok(fd) if fd >= 0 => {
                *slot = fd;
                made += 1;
            }
            _ => {
                status = fail(fd, 2);
                break;
            }
        }
    }
    if made == 0 {
        return status;
    }
    // The tokens go back in one SCM_RIGHTS message; they live in our own
    // fd table only, so if we are killed first they close with us.
    let data_len = made * std::mem::size_of::<libc::c_int>();
    let align = std::mem::size_of::<usize>();
    let header_len = std::mem::size_of::<libc::cmsghdr>();
    rights.header.cmsg_len = (header_len + data_len) as _;
    rights.header.cmsg_level = libc::SOL_SOCKET;
    rights.header.cmsg_type = libc::SCM_RIGHTS;
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&raw mut byte).cast::<c_void>(), iov_len: 1 };
    // SAFETY: all-zero bytes are a valid msghdr (null pointers, lengths 0).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&raw mut rights).cast::<c_void>();
    msg.msg_controllen = (header_len + data_len.div_ceil(align) * align) as _;
    // SAFETY: `msg` points at live buffers of the lengths given.
    let ret = unsafe {
        raw::syscall(
            libc::SYS_sendmsg,
            [args.sock.cast_unsigned() as usize, (&raw const msg) as usize, libc::MSG_NOSIGNAL as usize, 0, 0],
        )
    };
    if ret < 0 {
        return fail(ret, 5);
    }
    status
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
    /// The process must be non-dumpable ([`make_non_dumpable`]): the child
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
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
        use std::sync::atomic::Ordering::Acquire;
        let mut tokens: Vec<OwnedFd> = Vec::new();
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MINT_BATCH))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let received = rustix::net::recvmsg(
            &self.sock,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let truncated = match received {
            Ok(msg) => {
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = m {
                        tokens.extend(rights);
                    }
                }
                msg.flags.contains(ReturnFlags::CTRUNC) || tokens.len() > MAX_MINT_BATCH
            }
            // Nothing sent: the child failed (or was killed) first.
            Err(_) => false,
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

/// Whether a process we start in a client's user namespace stays out of
/// that client's reach: entering the namespace (setns) or changing uid
/// resets the process's dumpability to `fs.suid_dumpable`, and at 1 the
/// client, who holds CAP_SYS_PTRACE in its own namespace, may attach
/// before the process makes itself non-dumpable again (a mint child shares
/// the daemon's memory). 0 and 2 keep it out; anything else, or a value
/// that cannot be read, is refused with the reason.
pub fn ptrace_safe() -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PATH: &str = "/proc/sys/fs/suid_dumpable";
    // Opened once; each check is one pread.
    static FILE: std::sync::OnceLock<io::Result<std::fs::File>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| std::fs::File::open(PATH));
    let file = file.as_ref().map_err(|e| io::Error::new(e.kind(), format!("cannot read {PATH}: {e}")))?;
    let mut buf = [0u8; 8];
    let n = file.read_at(&mut buf, 0).map_err(|e| io::Error::new(e.kind(), format!("cannot read {PATH}: {e}")))?;
    let value = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).trim().to_owned();
    match value.as_str() {
        "0" | "2" => Ok(()),
        _ => Err(io::Error::other(format!("fs.suid_dumpable is {value}"))),
    }
}

/// Make this process non-dumpable: nobody without CAP_SYS_PTRACE in the
/// init user namespace may ptrace it or read its memory, including through
/// a mint child that has entered a client's user namespace.
pub fn make_non_dumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Result of [`fork`].
#[derive(Debug)]
pub enum Forked {
    Child,
    Parent(rustix::process::Pid),
}

/// fork(2).
///
/// # Safety
/// The caller must be single-threaded, so that the child does not inherit
/// locks held by other threads (the minter checks this at start).
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(
            rustix::process::Pid::from_raw(p).ok_or_else(|| io::Error::other("fork returned pid 0 in parent"))?,
        )),
    }
}

/// Close every fd except those in `keep` (in a helper child before it
/// drops to the client's uid or enters its namespace, so it holds nothing
/// of other clients).
pub fn close_all_fds_except(keep: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep.iter().map(|fd| fd.as_raw_fd().cast_unsigned()).collect();
    keep.sort_unstable();
    let mut next = 0u32;
    for fd in keep {
        if fd > next {
            // SAFETY: close_range only closes fds; the caller owns this process.
            cvt(unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0u32) })?;
        }
        next = fd.saturating_add(1);
    }
    // SAFETY: as above.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0u32) })?;
    Ok(())
}

/// Give the heap's free memory back to the kernel: glibc's malloc keeps
/// what a burst of connections freed, so the daemon's RSS would stay at
/// the burst's peak.
pub fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases the allocator's free
    // memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Leave the process at once, without running destructors or atexit
/// handlers (forked helpers must not flush the parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Number of threads of this process.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Bytes we sent on a Unix stream socket that its peer has not read yet
/// (`SIOCOUTQ`).
pub fn unread_by_peer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which lives
    // across the call.
    cvt(i64::from(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) }))?;
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Clear FD_CLOEXEC so the fd survives an exec (for handing the minter
/// its socket).
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    Ok(())
}

/// Take ownership of an inherited fd number (the minter's socket).
///
/// Checks that the number is open and not one of stdio.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl(F_GETFD) only reads flags of the fd number.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }.into())?;
    // SAFETY: the fd is open and was handed to this process for it to own
    // (the daemon passes it to the minter and nothing else uses it).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One delegation mask as a token's fdinfo shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMask {
    /// Every bit the kernel knows.
    Any,
    Bits(u64),
}

/// The four masks of a token, from `/proc/self/fdinfo/N`
/// (`allowed_cmds:` etc., Linux 6.9+). Fails if `fd` is not a token.
pub fn token_masks(fd: BorrowedFd<'_>) -> io::Result<TokenMasks> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |name: &str| -> io::Result<TokenMask> {
        let v = info
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| io::Error::other(format!("fd has no {name} in its fdinfo: not a BPF token")))?;
        if v == "any" {
            return Ok(TokenMask::Any);
        }
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .map(TokenMask::Bits)
            .map_err(|_| io::Error::other(format!("unparsable {name} {v:?}")))
    };
    Ok(TokenMasks {
        cmds: field("allowed_cmds")?,
        maps: field("allowed_maps")?,
        progs: field("allowed_progs")?,
        attachs: field("allowed_attachs")?,
    })
}

/// The four masks of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMasks {
    pub cmds: TokenMask,
    pub maps: TokenMask,
    pub progs: TokenMask,
    pub attachs: TokenMask,
}

impl TokenMasks {
    pub fn get(&self, kind: bpftoken_proto::Kind) -> TokenMask {
        use bpftoken_proto::Kind;
        match kind {
            Kind::Cmd => self.cmds,
            Kind::Map => self.maps,
            Kind::Prog => self.progs,
            Kind::Attach => self.attachs,
        }
    }
}

/// `readlink /proc/self/fd/N`: what the fd is (e.g. `anon_inode:[fscontext]`).
pub fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<String> {
    let link = rustix::fs::readlink(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()), Vec::new())?;
    Ok(link.to_string_lossy().into_owned())
}

/// unshare(2) for the forked helper.
///
/// Only namespace flags are accepted; `CLONE_FILES` (the reason rustix marks
/// unshare unsafe) would split the fd table under other threads.
pub fn unshare_namespaces(flags: rustix::thread::UnshareFlags) -> rustix::io::Result<()> {
    use rustix::thread::UnshareFlags as F;
    if flags.intersects(F::FILES | F::FS | F::SYSVSEM) {
        return Err(rustix::io::Errno::INVAL);
    }
    // SAFETY: without CLONE_FILES no thread can lose access to fds it
    // holds; the helper is single-threaded anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// Register an owned socket with the tokio reactor.
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    use tokio::io::Interest;
    // SAFETY: `OwnedFd` is open for as long as the AsyncFd owns it and
    // always returns the same fd number from `as_raw_fd`.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
        .map_err(io::Error::from)
}

/// CLOCK_BOOTTIME now, in nanoseconds (what `bpf_ktime_get_boot_ns()`
/// reads in the enforcer: it counts suspend, unlike CLOCK_MONOTONIC).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the kernel to write.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    if ret != 0 {
        // CLOCK_BOOTTIME exists on every kernel with BPF tokens.
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec.unsigned_abs())
}

/// The enforcer's BPF object (libbpf), loaded and attached: what stays of
/// it is fds only (links and maps), so nothing here outlives a raw
/// pointer.
pub mod bpf {
    use std::ffi::{c_void, CStr, CString};
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    /// Why an object did not load or attach: the libbpf step and the errno.
    #[derive(Debug, thiserror::Error)]
    pub enum LoadError {
        #[error("libbpf cannot open the object: {0}")]
        Open(io::Error),
        #[error("BPF_PROG_LOAD/BPF_MAP_CREATE: {0}")]
        Load(io::Error),
        #[error("cannot attach program {program}: {source}")]
        Attach { program: String, source: io::Error },
        #[error("the object has no map {0}")]
        NoMap(&'static str),
        #[error("cannot duplicate a BPF fd: {0}")]
        Dup(io::Error),
    }

    impl LoadError {
        /// The errno behind the failure, if there is one.
        pub fn errno(&self) -> Option<i32> {
            match self {
                LoadError::Open(e) | LoadError::Load(e) | LoadError::Dup(e) => e.raw_os_error(),
                LoadError::Attach { source, .. } => source.raw_os_error(),
                LoadError::NoMap(_) => None,
            }
        }
    }

    /// A map fd with the key and value sizes the kernel checks against.
    #[derive(Debug)]
    pub struct MapFd {
        fd: OwnedFd,
        key_size: usize,
        value_size: usize,
    }

    /// What a loaded, attached object leaves: its links (the programs stay
    /// attached while these fds are open, or while they are pinned) and
    /// every map of the object, by name.
    #[derive(Debug)]
    pub struct Attached {
        pub links: Vec<(String, OwnedFd)>,
        pub maps: Vec<(String, MapFd)>,
    }

    /// What an object holds, read from its ELF without loading anything:
    /// its program names and its maps with their key and value sizes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Layout {
        pub programs: Vec<String>,
        /// (name, key size, value size)
        pub maps: Vec<(String, usize, usize)>,
    }

    /// Closes the object on every path.
    struct Object(*mut libbpf_sys::bpf_object);

    impl Drop for Object {
        fn drop(&mut self) {
            // SAFETY: the pointer came from bpf_object__open_mem, is not
            // null, and is closed exactly once, here.
            unsafe { libbpf_sys::bpf_object__close(self.0) }
        }
    }

    fn dup(fd: libc::c_int) -> Result<OwnedFd, LoadError> {
        // SAFETY: libbpf owns `fd` and keeps it open for the duration of
        // this borrow (the object or link it belongs to is alive).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        borrowed.try_clone_to_owned().map_err(LoadError::Dup)
    }

    /// libbpf writes its warnings and the verifier log to stderr unless
    /// told otherwise; the daemon reports failures itself, in one line.
    fn quiet_libbpf() {
        // SAFETY: passing None (no callback) is allowed and affects only
        // libbpf's logging.
        unsafe {
            libbpf_sys::libbpf_set_print(None);
        }
    }

    /// Open `elf` (named `name` in libbpf's messages) without loading it.
    fn open(elf: &[u8], name: &str) -> Result<Object, LoadError> {
        quiet_libbpf();
        let cname = CString::new(name).map_err(|_| LoadError::Open(io::Error::from_raw_os_error(libc::EINVAL)))?;
        let opts = libbpf_sys::bpf_object_open_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_object_open_opts>() as libbpf_sys::size_t,
            object_name: cname.as_ptr(),
            ..Default::default()
        };
        // SAFETY: `elf` and `opts` (and the name it points to) are valid
        // for the call; libbpf copies what it keeps.
        let raw = unsafe {
            libbpf_sys::bpf_object__open_mem(elf.as_ptr().cast::<c_void>(), elf.len() as libbpf_sys::size_t, &opts)
        };
        if raw.is_null() {
            return Err(LoadError::Open(io::Error::last_os_error()));
        }
        Ok(Object(raw))
    }

    /// The programs of an open object, with their names.
    fn programs(obj: &Object) -> Vec<(*mut libbpf_sys::bpf_program, String)> {
        let mut out = Vec::new();
        let mut prog: *mut libbpf_sys::bpf_program = std::ptr::null_mut();
        loop {
            // SAFETY: `obj.0` is live; `prog` is null or a program of it.
            prog = unsafe { libbpf_sys::bpf_object__next_program(obj.0, prog) };
            if prog.is_null() {
                return out;
            }
            // SAFETY: `prog` is a program of the live object.
            let name_ptr = unsafe { libbpf_sys::bpf_program__name(prog) };
            // SAFETY: libbpf returns a NUL-terminated name it owns, alive
            // as long as the object.
            out.push((prog, unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned()));
        }
    }

    /// The maps of an open object: pointer, name, key and value size.
    fn maps(obj: &Object) -> Vec<(*mut libbpf_sys::bpf_map, String, usize, usize)> {
        let mut out = Vec::new();
        let mut map: *mut libbpf_sys::bpf_map = std::ptr::null_mut();
        loop {
            // SAFETY: `obj.0` is live; `map` is null or a map of it.
            map = unsafe { libbpf_sys::bpf_object__next_map(obj.0, map) };
            if map.is_null() {
                return out;
            }
            // SAFETY: `map` is a map of the live object.
            let name_ptr = unsafe { libbpf_sys::bpf_map__name(map) };
            // SAFETY: libbpf returns a NUL-terminated name it owns, alive
            // as long as the object.
            let name = unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned();
            // SAFETY: as above.
            let key_size = unsafe { libbpf_sys::bpf_map__key_size(map) };
            // SAFETY: as above.
            let value_size = unsafe { libbpf_sys::bpf_map__value_size(map) };
            out.push((map, name, key_size as usize, value_size as usize));
        }
    }

    /// The programs and maps `elf` declares (nothing is loaded).
    pub fn layout(elf: &[u8], name: &str) -> Result<Layout, LoadError> {
        let obj = open(elf, name)?;
        Ok(Layout {
            programs: programs(&obj).into_iter().map(|(_, n)| n).collect(),
            maps: maps(&obj).into_iter().map(|(_, n, k, v)| (n, k, v)).collect(),
        })
    }

    /// Open `elf` (named `name` in libbpf's messages), load every program
    /// and map into the kernel, attach every program (its section says
    /// where), and keep the links and the maps.
    pub fn load_and_attach(elf: &[u8], name: &str) -> Result<Attached, LoadError> {
        let obj = open(elf, name)?;
        // SAFETY: `obj.0` is a live object.
        let ret = unsafe { libbpf_sys::bpf_object__load(obj.0) };
        if ret < 0 {
            return Err(LoadError::Load(io::Error::from_raw_os_error(-ret)));
        }
        let mut links = Vec::new();
        for (prog, pname) in programs(&obj) {
            // SAFETY: `prog` is a loaded program of the live object.
            let link = unsafe { libbpf_sys::bpf_program__attach(prog) };
            if link.is_null() {
                return Err(LoadError::Attach { program: pname, source: io::Error::last_os_error() });
            }
            // SAFETY: `link` is a live link; its fd is open until destroyed.
            let fd = dup(unsafe { libbpf_sys::bpf_link__fd(link) });
            // Our duplicate keeps the link (and the attachment) alive; if
            // the dup failed, destroying it detaches the program again.
            // SAFETY: `link` came from bpf_program__attach and is destroyed
            // exactly once.
            unsafe { libbpf_sys::bpf_link__destroy(link) };
            links.push((pname, fd?));
        }
        let mut out = Vec::new();
        for (map, name, key_size, value_size) in maps(&obj) {
            // SAFETY: `map` is a map of the live, loaded object.
            let fd = unsafe { libbpf_sys::bpf_map__fd(map) };
            out.push((name, MapFd { fd: dup(fd)?, key_size, value_size }));
        }
        Ok(Attached { links, maps: out })
    }

    fn path_cstr(path: &std::path::Path) -> io::Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Pin a BPF object (map, program or link) at `path` in a bpffs
    /// (`BPF_OBJ_PIN`): it then lives until the pin is removed.
    pub fn pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
        let cpath = path_cstr(path)?;
        // SAFETY: `fd` is open and `cpath` NUL-terminated for the call.
        let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), cpath.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }

    /// Open the BPF object pinned at `path` (`BPF_OBJ_GET`), checking that
    /// it is one of `kinds` (as `/proc/self/fd` names it: `bpf-map`; a link
    /// is `bpf_link` when created but `bpf-link` when opened from a pin).
    pub fn open_pinned(path: &std::path::Path, kinds: &[&str]) -> io::Result<OwnedFd> {
        let cpath = path_cstr(path)?;
        // SAFETY: `cpath` is NUL-terminated for the call.
        let ret = unsafe { libbpf_sys::bpf_obj_get(cpath.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        // SAFETY: the kernel installed a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(ret) };
        let kind = super::fd_kind(fd.as_fd())?;
        if !kinds.iter().any(|k| kind.strip_prefix("anon_inode:") == Some(k)) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(fd)
    }

    impl MapFd {
        /// The map pinned at `path`, with the sizes the kernel reports.
        pub fn open_pinned(path: &std::path::Path) -> io::Result<MapFd> {
            let fd = open_pinned(path, &["bpf-map"])?;
            let mut info = libbpf_sys::bpf_map_info::default();
            let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_map_info>()).unwrap_or(0);
            // SAFETY: `info` is valid for writes of `len` bytes, which the
            // kernel does not exceed (it updates `len`).
            let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
            if ret < 0 {
                return Err(io::Error::from_raw_os_error(-ret));
            }
            Ok(MapFd { fd, key_size: info.key_size as usize, value_size: info.value_size as usize })
        }

        /// The key and value sizes.
        pub fn sizes(&self) -> (usize, usize) {
            (self.key_size, self.value_size)
        }

        fn check(&self, key: &[u8], value: usize) -> io::Result<()> {
            if key.len() != self.key_size || value != self.value_size {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            Ok(())
        }

        /// The value under `key`, or `None` if there is none.
        pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            let mut value = vec![0u8; self.value_size];
            self.check(key, value.len())?;
            // SAFETY: the kernel reads key_size bytes from `key` and writes
            // value_size bytes to `value`; both lengths were checked.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_elem(
                    self.fd.as_raw_fd(),
                    key.as_ptr().cast::<c_void>(),
                    value.as_mut_ptr().cast::<c_void>(),
                )
            };
            match ret {
                0 => Ok(Some(value)),
                e if -e == libc::ENOENT => Ok(None),
                e => Err(io::Error::from_raw_os_error(-e)),
            }
        }

        /// Set `key` to `value`; `flags` is BPF_ANY, BPF_NOEXIST or
        /// BPF_EXIST (ENOENT when BPF_EXIST finds no entry).
        pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
            self.check(key, value.len())?;
            // SAFETY: the kernel reads key_size and value_size bytes, the
            // lengths checked above.
            let ret = unsafe {
                libbpf_sys::bpf_map_update_elem(
                    self.fd.as_raw_fd(),
                    key.as_ptr().cast::<c_void>(),
                    value.as_ptr().cast::<c_void>(),
                    flags,
                )
            };
            if ret == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-ret))
            }
        }

        /// Remove `key`; false if there was no such entry.
        pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
            self.check(key, self.value_size)?;
            // SAFETY: the kernel reads key_size bytes from `key` (checked).
            let ret = unsafe { libbpf_sys::bpf_map_delete_elem(self.fd.as_raw_fd(), key.as_ptr().cast::<c_void>()) };
            match ret {
                0 => Ok(true),
                e if -e == libc::ENOENT => Ok(false),
                e => Err(io::Error::from_raw_os_error(-e)),
            }
        }

        /// Every key in the map, once each (a snapshot while it may
        /// change: when the key a walk stands on is deleted, the kernel
        /// starts the walk again from the first key).
        pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
            let mut keys: Vec<Vec<u8>> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut prev: Option<Vec<u8>> = None;
            loop {
                let mut next = vec![0u8; self.key_size];
                let prev_ptr = prev.as_ref().map_or(std::ptr::null(), |k| k.as_ptr().cast::<c_void>());
                // SAFETY: `prev_ptr` is null (first key) or key_size bytes;
                // `next` has room for key_size bytes.
                let ret = unsafe {
                    libbpf_sys::bpf_map_get_next_key(self.fd.as_raw_fd(), prev_ptr, next.as_mut_ptr().cast::<c_void>())
                };
                match ret {
                    0 => {
                        if seen.insert(next.clone()) {
                            keys.push(next.clone());
                        }
                        prev = Some(next);
                    }
                    e if -e == libc::ENOENT => return Ok(keys),
                    e => return Err(io::Error::from_raw_os_error(-e)),
                }
            }
        }
    }

    impl AsFd for MapFd {
        fn as_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }
}

/// The fields of a `perf_event_attr` the daemon sets (docs/tracing.md);
/// every other field is zero: no sampling, no inheritance, enabled.
#[derive(Debug, Default)]
pub struct PerfAttr<'a> {
    /// `type`: the PMU.
    pub kind: u32,
    pub config: u64,
    /// `config1` as a pointer to this string (kprobe_func, uprobe_path).
    pub config1: Option<&'a std::ffi::CStr>,
    /// `config2` (probe_offset).
    pub config2: u64,
}

/// `sizeof(struct perf_event_attr)` as libbpf 1.5 passes it
/// (`PERF_ATTR_SIZE_VER8`); the kernel accepts a larger size than it knows
/// only when the extra bytes are zero, which they are.
const PERF_ATTR_SIZE: usize = 136;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`.
pub fn perf_event_open(attr: &PerfAttr<'_>, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // The kernel layout: type u32 @0, size u32 @4, config u64 @8, ...,
    // config1 u64 @56, config2 u64 @64.
    let mut raw = [0u64; PERF_ATTR_SIZE / 8];
    raw[0] = u64::from(attr.kind) | ((PERF_ATTR_SIZE as u64) << 32);
    raw[1] = attr.config;
    raw[7] = attr.config1.map_or(0, |s| s.as_ptr() as u64);
    raw[8] = attr.config2;
    // SAFETY: `raw` is a zeroed perf_event_attr of the size given in it,
    // and the string `config1` points at outlives the call (the kernel
    // copies it during it).
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, raw.as_ptr(), pid, cpu, -1 as libc::c_int, PERF_FLAG_FD_CLOEXEC)
    };
    let fd = RawFd::try_from(cvt(fd)?).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
