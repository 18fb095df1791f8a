//! This process and the ones it forks: fork for the minter's helpers,
//! `_exit`, the thread count, dumpability and the `fs.suid_dumpable`
//! check, closing the fd table down to a few fds, unshare, heap trimming,
//! fds inherited across exec, tokio registration and CLOCK_BOOTTIME.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

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

/// Result of [`fork_single_threaded`].
#[derive(Debug)]
pub enum Forked {
    Child,
    Parent(rustix::process::Pid),
}

/// fork(2), in a process that has exactly one thread (the minter, which
/// forks its helpers); anywhere else it fails and forks nothing.
///
/// Why one thread makes it sound: the child is a copy of the calling
/// thread alone, so any lock another thread held at the fork (the
/// allocator's, stdio's, a `Mutex`) would stay held in the child forever,
/// and the child could then only make async-signal-safe calls. With no
/// other thread there is no such lock, and the child may run ordinary
/// code (the helper allocates, formats and uses rustix). The check is
/// made here, not left to the caller: `/proc/self/status` counts this
/// thread, which is inside this call, and only a thread of this process
/// could start another one, so a count of 1 still holds at the fork.
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!("fork needs a single-threaded process, found {threads} threads")));
    }
    // SAFETY: this process has one thread (checked just above; no other
    // thread can have started since), so the child inherits no lock held
    // by another thread.
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

/// Mark every fd from 3 up close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11): whatever the daemon inherited from
/// whoever started it is never handed on to the minters it execs (each
/// minter's own socket is made inheritable explicitly).
pub fn cloexec_from_3() -> io::Result<()> {
    /// `CLOSE_RANGE_CLOEXEC`.
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range with CLOEXEC only sets a flag on fds; nothing is
    // closed.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) })?;
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

/// Register an fd shared with its other users with the current tokio
/// runtime's reactor (what [`async_fd`] does for an fd it owns alone).
pub fn async_fd_shared(fd: std::sync::Arc<OwnedFd>) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    use tokio::io::Interest;
    // SAFETY: the AsyncFd holds a reference to the `OwnedFd`, which so
    // stays open for as long as the AsyncFd lives and always returns the
    // same fd number from `as_raw_fd`.
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
