//! The client's only unsafe code: raw syscalls with no safe binding, each
//! behind a safe wrapper.
#![allow(unsafe_code)]

use std::io;

/// `BPF_OBJ_GET_INFO_BY_FD` from `include/uapi/linux/bpf.h`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `struct bpf_token_info` (Linux 6.17+).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct BpfTokenInfo {
    pub allowed_cmds: u64,
    pub allowed_maps: u64,
    pub allowed_progs: u64,
    pub allowed_attachs: u64,
}

const INFO_LEN: u32 = 32;
const _: () = assert!(std::mem::size_of::<BpfTokenInfo>() == INFO_LEN as usize);

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Default)]
struct ObjInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a token. Kernels before 6.17 answer
/// EINVAL for tokens. Takes an fd number: the call only reads the object
/// behind it, and a number that is not open gives EBADF.
pub fn token_info(fd: i32) -> io::Result<BpfTokenInfo> {
    let mut info = BpfTokenInfo::default();
    let mut attr =
        ObjInfoAttr { bpf_fd: fd.cast_unsigned(), info_len: INFO_LEN, info: std::ptr::addr_of_mut!(info) as u64 };
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size we
    // pass; the kernel writes at most info_len bytes to `info`, which lives
    // until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<ObjInfoAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `BPF_TOKEN_CREATE` from `include/uapi/linux/bpf.h`.
const BPF_TOKEN_CREATE: libc::c_long = 36;

/// `bpf(BPF_TOKEN_CREATE)` with bpffs fd -1: the errno it fails with, or
/// None if it did not fail (it cannot succeed; anything returned is closed).
pub fn token_create_from_bad_fd() -> Option<i32> {
    let mut attr = [0u32, u32::MAX];
    // SAFETY: attr is a valid bpf_attr prefix for BPF_TOKEN_CREATE (flags 0,
    // bpffs_fd -1) of the size passed; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8usize) };
    if r < 0 {
        return io::Error::last_os_error().raw_os_error();
    }
    if let Ok(fd) = i32::try_from(r) {
        // SAFETY: the kernel returned a new fd that nothing else owns.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    None
}

/// Take ownership of fd number `fd`, which our parent left open for us and
/// named on the command line, so that dropping it closes it. Refuses the
/// standard streams and a number that is not open. Call it once per fd,
/// before anything else could own that number.
pub fn adopt_inherited_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: borrowed only for this call, which checks that it is open.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the fd is open, was inherited for us to own, and nothing
    // else in this process owns that number (the caller's contract).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `unshare(CLONE_NEWUSER)` or `unshare(CLONE_NEWNS)`. Safe: neither flag
/// touches the fd table, which is what makes `unshare` unsafe in general.
pub fn unshare(ns: Namespace) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let flags = match ns {
        Namespace::User => UnshareFlags::NEWUSER,
        Namespace::Mount => UnshareFlags::NEWNS,
    };
    // SAFETY: no CLONE_FILES, so every fd stays valid for every thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

/// The namespaces [`unshare`] may create.
#[derive(Debug, Clone, Copy)]
pub enum Namespace {
    User,
    Mount,
}

// ---- seccomp user notification (client/src/supervise.rs) ----

/// `struct seccomp_data`: what a notification says about the call.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SeccompNotif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Debug, Default)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// `struct seccomp_notif_addfd`.
#[repr(C)]
#[derive(Debug, Default)]
struct SeccompNotifAddfd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_GET_NOTIF_SIZES: libc::c_ulong = 3;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
/// Linux 5.19: a signal does not interrupt a notification the supervisor
/// already received (so the call is not restarted behind its back).
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
const SECCOMP_ADDFD_FLAG_SEND: u32 = 1 << 1;
/// `SECCOMP_IOCTL_NOTIF_RECV` = `_IOWR('!', 0, struct seccomp_notif)`.
const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND` = `_IOWR('!', 1, struct seccomp_notif_resp)`.
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
/// `SECCOMP_IOCTL_NOTIF_ID_VALID` = `_IOW('!', 2, __u64)`.
const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
/// `SECCOMP_IOCTL_NOTIF_ADDFD` = `_IOW('!', 3, struct seccomp_notif_addfd)`.
const SECCOMP_IOCTL_NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;

const _: () = assert!(std::mem::size_of::<SeccompNotif>() == 80);
const _: () = assert!(std::mem::size_of::<SeccompNotifResp>() == 24);
const _: () = assert!(std::mem::size_of::<SeccompNotifAddfd>() == 24);

/// One instruction of a classic BPF program (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// Install `filter` on this thread (and what it execs) with a listener:
/// `PR_SET_NO_NEW_PRIVS`, then `seccomp(SET_MODE_FILTER, NEW_LISTENER)`.
pub fn install_notify_filter(filter: &[SockFilter]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let len = u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let prog = SockFprog { len, filter: filter.as_ptr() };
    let flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    // SAFETY: `prog` points at `filter`, `len` instructions long, both
    // live for the call; the kernel copies the program.
    let mut fd = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &raw const prog) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before Linux 5.19: no WAIT_KILLABLE_RECV.
        // SAFETY: as above.
        fd = unsafe {
            libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &raw const prog)
        };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel installed this listener fd for us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel's `struct seccomp_notif` is the size this build
/// knows (so `notif_recv` can neither over- nor under-read).
pub fn notif_sizes_match() -> bool {
    let mut sizes = [0u16; 3];
    // SAFETY: the kernel writes three u16 into `sizes`.
    let ret = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, sizes.as_mut_ptr()) };
    ret == 0 && usize::from(sizes[0]) == std::mem::size_of::<SeccompNotif>()
}

/// The next notification (blocks).
pub fn notif_recv(listener: std::os::fd::BorrowedFd<'_>) -> io::Result<SeccompNotif> {
    use std::os::fd::AsRawFd;
    let mut n = SeccompNotif::default();
    // SAFETY: `n` is a zeroed seccomp_notif of the size the kernel uses
    // (checked by notif_sizes_match before the loop).
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, &raw mut n) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// Whether notification `id` is still pending (its task did not die or
/// get interrupted): checked after reading the task's memory.
pub fn notif_id_valid(listener: std::os::fd::BorrowedFd<'_>, id: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: the ioctl reads one u64.
    unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_ID_VALID, &raw const id) == 0 }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` = `_IOW('!', 4, __u64)`.
const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
/// Linux 6.6: wake the supervisor and the trapped task synchronously (the
/// scheduler hands the CPU over instead of waking on another one).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// Ask for synchronous wake-ups between the trapped task and the
/// supervisor (a notification then costs a hand-over, not a cross-CPU
/// wake-up); kernels before 6.6 refuse it, which only costs speed.
pub fn notif_sync_wake_up(listener: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the ioctl takes its flags by value.
    let ret =
        unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Let the trapped call run as if nothing had looked at it.
pub fn notif_continue(listener: std::os::fd::BorrowedFd<'_>, id: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let resp = SeccompNotifResp { id, val: 0, error: 0, flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE };
    // SAFETY: `resp` is a valid seccomp_notif_resp.
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &raw const resp) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Put a copy of `fd` into the trapped task and make it the call's
/// result (`SECCOMP_ADDFD_FLAG_SEND`), close-on-exec if `cloexec`.
pub fn notif_reply_fd(
    listener: std::os::fd::BorrowedFd<'_>,
    id: u64,
    fd: std::os::fd::BorrowedFd<'_>,
    cloexec: bool,
) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let addfd = SeccompNotifAddfd {
        id,
        flags: SECCOMP_ADDFD_FLAG_SEND,
        srcfd: fd.as_raw_fd().cast_unsigned(),
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC.cast_unsigned() } else { 0 },
    };
    // SAFETY: `addfd` is a valid seccomp_notif_addfd naming an fd we hold.
    let ret = unsafe { libc::ioctl(listener.as_raw_fd(), SECCOMP_IOCTL_NOTIF_ADDFD, &raw const addfd) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Read `buf.len()` bytes of process `pid`'s memory at `addr` (a process
/// of our uid: `process_vm_readv`); fewer where a page is unmapped.
pub fn read_process_memory(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes `buf`, which the kernel writes at most
    // buf.len() bytes into; `remote` is only an address in the other
    // process, never dereferenced here.
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `fork()` of a single-threaded process. The child may allocate (no
/// other thread can hold the allocator's lock) and must exec or exit.
pub fn fork_single_threaded() -> io::Result<Option<i32>> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!("fork from a process with {threads} threads")));
    }
    // SAFETY: the process has one thread (checked above), so the child
    // inherits no lock another thread holds.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        child => Ok(Some(child)),
    }
}

/// `prctl(PR_SET_PDEATHSIG, sig)`: `sig` when the parent (the supervisor)
/// dies, so a tool never runs on half-supervised.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignore signal `sig` from now on (`SIG_IGN`; an exec resets it).
pub fn ignore_signal(sig: i32) -> io::Result<()> {
    // SAFETY: installing SIG_IGN runs no code of ours in a handler.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---- ptrace (client/src/bpfwatch.rs) ----

/// `PTRACE_O_TRACESYSGOOD | TRACEFORK | TRACEVFORK | TRACECLONE |
/// TRACEEXEC | TRACESECCOMP | EXITKILL`: syscall stops marked, every
/// descendant traced, seccomp `RET_TRACE` stops reported, and the tracees
/// killed if the tracer dies (a `RET_TRACE` filter without a tracer makes
/// every such call fail with ENOSYS).
const WATCH_OPTIONS: libc::c_int = libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACESECCOMP
    | libc::PTRACE_O_EXITKILL;

/// `PTRACE_SEIZE` process `pid` (a child of ours, not yet exec'd) with
/// the options of [`WATCH_OPTIONS`].
pub fn ptrace_seize(pid: i32) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes no pointer: addr is 0, data the options.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, libc::c_long::from(WATCH_OPTIONS)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a stopped tracee goes on.
#[derive(Debug, Clone, Copy)]
pub enum Resume {
    /// Run on; stop again only at events (`PTRACE_CONT`).
    Continue,
    /// Run on to the end of the current syscall (`PTRACE_SYSCALL`).
    ToSyscallExit,
    /// Stay in a group-stop, but report the next event (`PTRACE_LISTEN`).
    Listen,
}

/// Resume stopped tracee `tid`, delivering signal `sig` (0: none).
pub fn ptrace_resume(tid: i32, how: Resume, sig: i32) -> io::Result<()> {
    let request = match how {
        Resume::Continue => libc::PTRACE_CONT,
        Resume::ToSyscallExit => libc::PTRACE_SYSCALL,
        Resume::Listen => libc::PTRACE_LISTEN,
    };
    // SAFETY: these requests take no pointer: addr is 0, data a signal number.
    let r = unsafe { libc::ptrace(request, tid, 0usize, libc::c_long::from(sig)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What `PTRACE_GET_SYSCALL_INFO` says about a stopped tracee's syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallStop {
    /// A seccomp `RET_TRACE` stop before the call: its number and arguments.
    Seccomp { nr: u64, args: [u64; 6] },
    /// A syscall-exit stop: the return value, or the errno it failed with.
    Exit(Result<i64, i32>),
    /// Any other stop.
    Other,
}

/// `struct ptrace_syscall_info` (Linux 5.3+): op, arch, ip, sp, then the
/// entry/exit/seccomp union (at most 64 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct PtraceSyscallInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    data: [u64; 8],
}

const PTRACE_SYSCALL_INFO_EXIT: u8 = 2;
const PTRACE_SYSCALL_INFO_SECCOMP: u8 = 3;

/// The syscall stopped tracee `tid` is at.
pub fn ptrace_syscall_stop(tid: i32) -> io::Result<SyscallStop> {
    let mut info = PtraceSyscallInfo::default();
    let size = std::mem::size_of::<PtraceSyscallInfo>();
    // SAFETY: the kernel writes at most `size` bytes into `info`.
    let r = unsafe { libc::ptrace(libc::PTRACE_GET_SYSCALL_INFO, tid, size, &raw mut info) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let d = info.data;
    Ok(match info.op {
        PTRACE_SYSCALL_INFO_SECCOMP => SyscallStop::Seccomp { nr: d[0], args: [d[1], d[2], d[3], d[4], d[5], d[6]] },
        PTRACE_SYSCALL_INFO_EXIT => {
            let rval = d[0].cast_signed();
            // `is_error` is the byte after `rval`.
            SyscallStop::Exit(if d[1] & 0xff != 0 {
                Err(i32::try_from(-rval).unwrap_or(libc::EINVAL))
            } else {
                Ok(rval)
            })
        }
        _ => SyscallStop::Other,
    })
}

/// How a waited-for task changed state (`waitpid(-1, __WALL)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
    /// It stopped: the signal, and the ptrace event (`status >> 16`).
    Stopped { sig: i32, event: i32 },
}

/// The next state change of any child or tracee; None when there is none
/// left to wait for (ECHILD).
pub fn wait_any_task() -> io::Result<Option<(i32, TaskState)>> {
    let mut status = 0;
    loop {
        // SAFETY: the kernel writes one int into `status`.
        let tid = unsafe { libc::waitpid(-1, &raw mut status, libc::__WALL) };
        if tid < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(io::Error::last_os_error()),
            }
        }
        let state = if libc::WIFEXITED(status) {
            TaskState::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            TaskState::Killed(libc::WTERMSIG(status))
        } else if libc::WIFSTOPPED(status) {
            TaskState::Stopped { sig: libc::WSTOPSIG(status), event: status >> 16 }
        } else {
            continue;
        };
        return Ok(Some((tid, state)));
    }
}

/// Install `filter` on this thread (and what it execs) without a
/// listener: `PR_SET_NO_NEW_PRIVS`, then `seccomp(SET_MODE_FILTER)`.
pub fn install_filter(filter: &[SockFilter]) -> io::Result<()> {
    let len = u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let prog = SockFprog { len, filter: filter.as_ptr() };
    // SAFETY: `prog` points at `filter`, `len` instructions long, both
    // live for the call; the kernel copies the program.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &raw const prog) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
