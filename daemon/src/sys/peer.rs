//! Who is at the other end of a socket, from the kernel: the peer's pidfd
//! (`SO_PEERPIDFD`), its supplementary groups (`SO_PEERGROUPS`), whether a
//! pidfd's process still lives, its user namespace and that namespace's
//! owner and type (nsfs ioctls), and `SO_PASSPIDFD` on the listener so
//! every message carries its sender's pidfd (received in [`super::fdpass`]).
//!
//! Invariant: every fd these return was installed by the kernel for this
//! call and is wrapped in an `OwnedFd` exactly once.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PASSPIDFD` (Linux 6.5): every message received carries a pidfd of
/// the process that sent it (`SCM_PIDFD`); accepted sockets inherit it
/// from the listener, and the kernel attaches it even to messages sent
/// before the accept.
const SO_PASSPIDFD: libc::c_int = 76;
/// `SO_PEERGROUPS` (Linux 4.13): supplementary groups of the peer.
const SO_PEERGROUPS: libc::c_int = 59;
/// `NS_GET_OWNER_UID` = `_IO(0xb7, 0x4)`.
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
/// `PIDFD_GET_USER_NAMESPACE` = `_IO(0xFF, 9)` (Linux 6.11).
const PIDFD_GET_USER_NAMESPACE: libc::c_ulong = 0xff09;
/// `PIDFD_GET_INFO` = `_IOWR(0xFF, 11, struct pidfd_info)` with the size of
/// the struct's first version (64 bytes) encoded, as the kernel accepts.
const PIDFD_GET_INFO_VER0: libc::c_ulong = 0xc040_ff0b;
/// `PIDFD_INFO_PID`: ask for the pid fields.
const PIDFD_INFO_PID: u64 = 1;

/// The pid (in our pid namespace) of the process behind `pidfd`, by
/// `PIDFD_GET_INFO` (Linux 6.13): one ioctl, where reading its fdinfo
/// costs an open, reads and a close. Errors: ENOTTY or EINVAL on older
/// kernels, ESRCH once the process has been reaped.
pub fn pidfd_info_pid(pidfd: BorrowedFd<'_>) -> io::Result<i32> {
    // struct pidfd_info (version 0): mask, cgroupid, then pid, tgid, ...
    let mut info = [0u64; 8];
    info[0] = PIDFD_INFO_PID;
    // SAFETY: `info` is 64 zeroed bytes, the size encoded in the request;
    // the kernel writes at most that many.
    let ret = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO_VER0, info.as_mut_ptr()) };
    cvt(ret.into())?;
    // pid: the low 32 bits of the third word (little- or big-endian: its
    // first four bytes, as laid out in memory).
    let pid = info[2].to_ne_bytes();
    Ok(i32::from_ne_bytes([pid[0], pid[1], pid[2], pid[3]]))
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

/// Bytes we sent on a Unix stream socket that its peer has not read yet
/// (`SIOCOUTQ`).
pub fn unread_by_peer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which lives
    // across the call.
    cvt(i64::from(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) }))?;
    Ok(usize::try_from(queued).unwrap_or(0))
}
