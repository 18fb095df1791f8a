//! Passing fds over Unix sockets (`SCM_RIGHTS`): every fd the daemon, the
//! minter, its helpers and the mint children send or receive goes through
//! this module, so the control-message layout lives in one place.
//!
//! Invariant: every fd received is wrapped in an `OwnedFd` exactly once,
//! close-on-exec (`MSG_CMSG_CLOEXEC`); fds beyond the room a caller gives
//! are closed by the kernel and reported as truncation, never leaked.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// `SCM_PIDFD`: the control message `SO_PASSPIDFD` adds.
const SCM_PIDFD: libc::c_int = 4;

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
