//! Passing fds over Unix sockets (`SCM_RIGHTS`): every fd the daemon, the
//! minter, its helpers and the mint children send or receive goes through
//! this module, so the control-message layout lives in one place:
//! [`recv_request_bytes`] (a client's request, with its sender's pidfd,
//! `SCM_PIDFD`), [`send_with_fds`] / [`send_with_fds_blocking`] and
//! [`recv_with_fds`] / [`recv_with_fds_blocking`] (responses, the minter
//! link, the minter's helpers, a mint child's tokens coming back), and
//! [`with_rights_message`], which builds a message on the stack for the
//! mint child's raw `sendmsg`.
//!
//! Invariant: every fd received is wrapped in an `OwnedFd` exactly once,
//! close-on-exec (`MSG_CMSG_CLOEXEC`); fds beyond the room a caller gives
//! are closed by the kernel and reported as truncation, never leaked.

use std::ffi::c_void;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

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

/// Most fds one [`send_with_fds`] or [`send_with_fds_blocking`] attaches
/// (a response or a minter reply carries three: a scope's user namespace,
/// bpffs root and mount).
pub const MAX_SEND_FDS: usize = 3;

/// Send `bytes` with `fds` attached to their first byte, without blocking
/// (`MSG_DONTWAIT`) and without SIGPIPE (`MSG_NOSIGNAL`). Returns how many
/// bytes went (the fds go with the first one): every answer the daemon
/// writes (`server/reply.rs`). The control buffer is
/// `cmsg_space!(ScmRights(MAX_SEND_FDS))` (rustix's alignment slack lets a
/// few more fit); more fds than fit is an error and sends nothing.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send(sock, bytes, fds, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
}

/// [`send_with_fds`] on a blocking socket (the minter and its helpers).
pub fn send_with_fds_blocking(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send(sock, bytes, fds, SendFlags::NOSIGNAL)
}

fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>], flags: SendFlags) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SEND_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many fds for one message"));
    }
    Ok(rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, flags)?)
}

/// Most fds a [`recv_with_fds`] caller may make room for (a mint child's
/// batch).
pub const MAX_RECV_ROOM: usize = 8;

/// What one [`recv_with_fds`] brought.
#[derive(Debug)]
pub struct WithFds {
    pub bytes: usize,
    /// Fds sent with the bytes (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer (`MSG_TRUNC`).
    pub bytes_truncated: bool,
    /// More fds came than there was room for (`MSG_CTRUNC`; the kernel
    /// closed the rest).
    pub fds_truncated: bool,
}

/// One non-blocking `recvmsg` into `buf`, with room for `room` fds (at
/// most [`MAX_RECV_ROOM`]), which come close-on-exec. 0 bytes: end of
/// file.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> io::Result<WithFds> {
    recv(sock, buf, room, RecvFlags::DONTWAIT)
}

/// [`recv_with_fds`] on a blocking socket (the minter waiting for the
/// daemon); `EINTR` is returned, not retried.
pub fn recv_with_fds_blocking(sock: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> io::Result<WithFds> {
    recv(sock, buf, room, RecvFlags::empty())
}

fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], room: usize, flags: RecvFlags) -> io::Result<WithFds> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECV_ROOM))];
    // Exactly the control space `room` fds take, as `cmsg_space!` sizes it.
    let len = rustix::cmsg_space!(ScmRights(room.min(MAX_RECV_ROOM)));
    let mut control = RecvAncillaryBuffer::new(space.get_mut(..len).unwrap_or_default());
    let msg = rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags | RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(WithFds {
        bytes: msg.bytes,
        fds,
        bytes_truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// Most fds [`with_rights_message`] carries.
pub const MAX_STACK_FDS: usize = 8;

/// An `SCM_RIGHTS` control message with room for [`MAX_STACK_FDS`] fds.
#[repr(C)]
struct StackRights {
    header: libc::cmsghdr,
    fds: [libc::c_int; MAX_STACK_FDS],
}

/// Build, on the stack, a one-byte message carrying `fds` in one
/// `SCM_RIGHTS` control message and hand it to `send`, which makes the
/// `sendmsg(2)` call itself (on the socket it chooses) and returns what
/// it returns. At most [`MAX_STACK_FDS`] fds go; any beyond are left out.
///
/// For a sender that may not allocate, lock, unwind or touch errno (the
/// mint child, which calls `sendmsg` as a raw syscall): this allocates
/// nothing, takes no lock, cannot panic and makes no call but `send`.
/// The message points into this function's stack frame, so it is valid
/// only during `send`.
pub fn with_rights_message<R>(fds: &[libc::c_int], send: impl FnOnce(&libc::msghdr) -> R) -> R {
    // SAFETY: all-zero bytes are a valid cmsghdr and fd array.
    let mut rights: StackRights = unsafe { std::mem::zeroed() };
    let mut count = 0usize;
    for (slot, fd) in rights.fds.iter_mut().zip(fds) {
        *slot = *fd;
        count += 1;
    }
    let data_len = count * std::mem::size_of::<libc::c_int>();
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
    send(&msg)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap()
    }

    #[test]
    fn fds_sent_come_back_and_fds_beyond_the_room_are_reported() {
        let (a, b) = pair();
        let (x, y) = pair();
        assert_eq!(send_with_fds(a.as_fd(), b"hello", &[x.as_fd(), y.as_fd()]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!((got.bytes, got.fds.len(), got.bytes_truncated, got.fds_truncated), (5, 2, false, false));
        assert_eq!(&buf[..5], b"hello");
        // Three fds where there is room for one: the caller sees truncation
        // (or, within rustix's alignment slack, more fds than it asked for).
        send_with_fds_blocking(a.as_fd(), b"x", &[x.as_fd(), y.as_fd(), a.as_fd()]).unwrap();
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert!(got.fds_truncated || got.fds.len() > 1, "{got:?}");
        // More than the control buffer holds: nothing is sent.
        let many = [x.as_fd(); 4 * MAX_SEND_FDS];
        assert!(send_with_fds(a.as_fd(), b"x", &many).is_err());
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, 1).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_message_built_on_the_stack_carries_its_fds() {
        let (a, b) = pair();
        let (x, _y) = pair();
        let fds = [x.as_raw_fd(), x.as_raw_fd()];
        let sent = with_rights_message(&fds, |msg| {
            // SAFETY: `msg` and the buffers it points at live for this call.
            unsafe { libc::sendmsg(a.as_raw_fd(), msg, libc::MSG_NOSIGNAL) }
        });
        assert_eq!(sent, 1);
        let mut buf = [0u8; 4];
        let got = recv_with_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!((got.bytes, got.fds.len(), got.fds_truncated), (1, 2, false));
    }
}
