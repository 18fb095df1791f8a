//! Reading request frames off a connection.
//!
//! A frame is a 4-byte little-endian length and that many payload bytes
//! (the codec in `bpftoken_proto::codec` decodes the payload). [`Inbox`]
//! holds a connection's bytes until they make whole frames, and keeps
//! with each frame the fds and the sender (a pidfd) its bytes came with;
//! [`read_frame`] fills it from the socket within the read timeout.
//!
//! Invariants: a length beyond the cap is refused before any room for the
//! payload is allocated; only a frame's first read can take bytes of the
//! next frame (later reads ask for exactly the missing bytes); a frame
//! keeps the fds of the reads that began in its header, and a sender only
//! when every read of it came from one process. The buffer logic takes
//! plain byte counts and fds ([`Inbox::room`], [`Inbox::received`]), so
//! the unit tests below drive it without a socket.

use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bpftoken_proto::codec::{self, CodecError};
use bpftoken_proto::FRAME_HEADER_LEN;
use tokio::sync::watch;

use super::stream::Stream;
use crate::sys::Received;

/// Why no frame could be read.
pub(super) enum ReadError {
    Codec(CodecError),
    /// `idle`: no byte of a next request came; else a frame started but
    /// did not complete in time.
    Timeout {
        idle: bool,
    },
    Io,
    /// A newcomer took this connection's slot (`slots.rs`); the text of
    /// its `busy` answer.
    Displaced(String),
}

/// How long [`read_frame`] waits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// For the first byte of a request (idle between requests).
    pub(super) idle: Duration,
    /// For a whole frame, from its first byte.
    pub(super) frame: Duration,
}

/// Most fds a request may carry ([`RequestBody::DelegateMount`](bpftoken_proto::message::RequestBody::DelegateMount) has one).
pub(super) const MAX_REQUEST_FDS: usize = crate::sys::MAX_RECV_FDS;

/// One request frame and the fds that came with it.
pub(super) struct Frame {
    pub(super) payload: Vec<u8>,
    pub(super) fds: Vec<OwnedFd>,
    /// More fds came than a request may carry (the kernel closed the rest).
    pub(super) fds_truncated: bool,
    /// Who sent the frame (a pidfd), when every read of it came from the
    /// same process; `None` when unknown or mixed.
    pub(super) sender: Option<Arc<OwnedFd>>,
}

/// The first read of a frame asks for this much: any request but a huge
/// one fits, so a frame usually takes one `recvmsg`.
const FIRST_READ: usize = 256;

/// One `recvmsg` into `buf` (fds closed on exec, at most
/// [`MAX_REQUEST_FDS`]; the kernel closes any beyond; the sender's pidfd).
/// When it drains the socket (a short read that carried no fds: the
/// kernel stops early only after a message with fds, or at a change of
/// sender), tokio's readiness is cleared as by EAGAIN, from the state seen
/// before the read, so the next read waits for epoll instead of failing
/// with EAGAIN first; data that came after the read sets readiness again.
///
/// `eager`: try the socket first, before waiting for epoll's word (a new
/// connection's request is usually in already; `stream.rs`).
async fn recv_some(stream: &Stream, buf: &mut [u8], eager: bool) -> std::io::Result<Received> {
    if eager {
        match crate::sys::recv_request_bytes(stream.as_fd(), buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
    loop {
        let mut ready = stream.readable().await?;
        let mut got = None;
        let tried = ready.try_io(|_| {
            let received = crate::sys::recv_request_bytes(stream.as_fd(), buf)?;
            let drained = received.bytes > 0 && received.bytes < buf.len() && received.fds.is_empty();
            got = Some(received);
            if drained {
                Err(std::io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        match (tried, got) {
            (_, Some(got)) => return Ok(got),
            // EAGAIN: readiness cleared; wait again.
            (Err(_), None) => {}
            (Ok(Err(e)), None) => return Err(e),
            (Ok(Ok(())), None) => unreachable!("a successful read sets its result"),
        }
    }
}

/// Whether two pidfds refer to the same process (pidfs gives every pidfd
/// of one process the same inode).
fn same_process(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(x), Ok(y)) => (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino),
        _ => false,
    }
}

/// The sender of a frame's bytes so far.
#[derive(Default)]
enum Sender {
    #[default]
    None,
    One(Arc<OwnedFd>),
    /// Bytes of two processes, or of one that came without a pidfd.
    Mixed,
}

impl Sender {
    /// Note the sender of one more read of the same frame.
    fn and(self, next: Option<&Arc<OwnedFd>>) -> Sender {
        match (self, next) {
            (Sender::One(a), Some(b)) if same_process(&a, b) => Sender::One(a),
            _ => Sender::Mixed,
        }
    }

    fn pidfd(self) -> Option<Arc<OwnedFd>> {
        match self {
            Sender::One(fd) => Some(fd),
            Sender::None | Sender::Mixed => None,
        }
    }
}

/// A connection's bytes read but not yet handed out as frames. Fds ride
/// on a frame's first bytes: those of a frame's first read are kept (for
/// the frame that read ended in: the kernel ends a read with the message
/// that carried fds), those of its later reads are closed. A frame's
/// later reads ask for exactly its missing bytes, so only a first read can
/// take bytes of the next frame (a client that sends several requests
/// before reading the answers).
#[derive(Default)]
pub(super) struct Inbox {
    buf: Vec<u8>,
    /// Bytes of `buf` read and not yet handed out.
    len: usize,
    /// Fds of a first read that ended beyond the frame it began: they
    /// belong to the frame that holds byte `.0 - 1`.
    later: Option<(usize, Vec<OwnedFd>, bool)>,
    /// Who sent the bytes of the frame at the front, so far.
    sender: Sender,
    /// Who sent the last read (its bytes beyond a frame begin the next).
    last_sender: Option<Arc<OwnedFd>>,
    /// Fds that came so far for the frame at the front.
    fds: Vec<OwnedFd>,
    /// More fds came for the frame at the front than a read takes.
    fds_truncated: bool,
    /// Reads left that try the socket before waiting (`recv_some`).
    eager_reads: u8,
}

/// What the inbox holds at its front.
enum Next {
    /// A whole frame, taken out of the inbox.
    Frame(Frame),
    /// Not a whole frame yet: the next read goes into these bytes of the
    /// buffer (from the end of what is in).
    Read(Range<usize>),
}

impl Inbox {
    /// The inbox of a new connection: its first `eager_reads` reads try
    /// the socket before they wait (its first request, and its end or next
    /// request right after the first answer, are usually there already).
    pub(super) fn new(eager_reads: u8) -> Self {
        Inbox { eager_reads, ..Inbox::default() }
    }

    /// Whether the next read tries the socket before it waits.
    fn take_eager(&mut self) -> bool {
        let eager = self.eager_reads > 0;
        self.eager_reads = self.eager_reads.saturating_sub(1);
        eager
    }

    /// The whole frame at the front, or where the next read goes; a
    /// length beyond the cap is refused here, before any room for the
    /// payload is allocated.
    fn next(&mut self) -> Result<Next, CodecError> {
        if self.buf.len() < FIRST_READ {
            self.buf.resize(FIRST_READ, 0);
        }
        let total = match self.frame_len() {
            Some(Err(e)) => return Err(e),
            Some(Ok(total)) if self.len >= total => {
                self.add_later_fds(Some(total));
                return Ok(Next::Frame(self.take(total)));
            }
            Some(Ok(total)) => Some(total),
            None => None,
        };
        // Fds an earlier read brought for this frame.
        self.add_later_fds(total);
        let end = match total {
            // Exactly the missing bytes (allocated only once the length
            // passed the cap).
            Some(total) => {
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
                total
            }
            None => self.buf.len(),
        };
        Ok(Next::Read(self.len..end))
    }

    /// The buffer bytes `room` (from [`Inbox::next`]) to read into.
    fn room(&mut self, room: Range<usize>) -> &mut [u8] {
        &mut self.buf[room]
    }

    /// Take in a read of `got.bytes` (> 0) into the room [`Inbox::next`]
    /// gave, with the fds and sender it came with.
    fn received(&mut self, got: Received) {
        let start = self.len;
        self.note_sender(start, got.sender);
        self.len += got.bytes;
        if start < FRAME_HEADER_LEN && (!got.fds.is_empty() || got.truncated) {
            // A read that began in the header: its fds are this frame's,
            // unless the read went on into a later frame.
            match self.frame_len() {
                Some(Ok(total)) if self.len > total => self.later = Some((self.len, got.fds, got.truncated)),
                _ => {
                    self.fds.extend(got.fds);
                    self.fds_truncated |= got.truncated;
                }
            }
        }
        // Fds of a later read close here, as the kernel closed them when
        // the rest of a frame was read with plain reads. So a frame keeps
        // the fds of at most its header's reads (four, each with what one
        // control buffer holds) and one earlier read's.
    }

    /// Add to the frame at the front the fds an earlier read brought for
    /// it (of `total` bytes if its header is in).
    fn add_later_fds(&mut self, total: Option<usize>) {
        if let Some((more, truncated)) = self.later_fds(total) {
            self.fds.extend(more);
            self.fds_truncated |= truncated;
        }
    }

    /// Bytes of the frame at the front, once its header is in (checked
    /// against the cap before any payload room is allocated).
    fn frame_len(&self) -> Option<Result<usize, CodecError>> {
        let header = self.buf.get(..FRAME_HEADER_LEN.min(self.len))?.first_chunk::<FRAME_HEADER_LEN>()?;
        Some(codec::payload_len(*header).map(|len| FRAME_HEADER_LEN + len))
    }

    /// The fds of an earlier read that belong to the frame at the front,
    /// of `total` bytes if its header is in.
    fn later_fds(&mut self, total: Option<usize>) -> Option<(Vec<OwnedFd>, bool)> {
        match (&self.later, total) {
            (Some((end, _, _)), Some(total)) if *end > total => None,
            _ => self.later.take().map(|(_, fds, truncated)| (fds, truncated)),
        }
    }

    /// Note who sent a read that began at byte `start` of the buffer.
    fn note_sender(&mut self, start: usize, sender: Option<OwnedFd>) {
        let sender = sender.map(Arc::new);
        self.sender = if start == 0 {
            sender.clone().map_or(Sender::Mixed, Sender::One)
        } else {
            std::mem::take(&mut self.sender).and(sender.as_ref())
        };
        self.last_sender = sender;
    }

    /// Take the frame at the front (`total` bytes, all in) with its fds.
    fn take(&mut self, total: usize) -> Frame {
        let fds = std::mem::take(&mut self.fds);
        let truncated = std::mem::take(&mut self.fds_truncated);
        let payload = self.buf[FRAME_HEADER_LEN..total].to_vec();
        let sender = std::mem::take(&mut self.sender).pidfd();
        // What is left came with the last read, from its sender.
        if self.len > total {
            self.sender = self.last_sender.clone().map_or(Sender::Mixed, Sender::One);
        } else {
            self.last_sender = None;
        }
        self.buf.copy_within(total..self.len, 0);
        self.len -= total;
        // Fds that belong to a later frame (`later_fds` took this one's).
        self.later = self.later.take().map(|(end, f, t)| (end - total, f, t));
        if self.buf.len() > FIRST_READ && self.len <= FIRST_READ {
            // A big frame's room goes with it.
            self.buf.truncate(FIRST_READ);
            self.buf.shrink_to_fit();
        }
        Frame { payload, fds, fds_truncated: truncated, sender }
    }
}

/// Read one frame; `Ok(None)` at a clean end (EOF between frames, or
/// shutdown while idle).
pub(super) async fn read_frame(
    stream: &Stream,
    inbox: &mut Inbox,
    timeouts: Timeouts,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Frame>, ReadError> {
    let mut deadline = None;
    loop {
        let room = match inbox.next().map_err(ReadError::Codec)? {
            Next::Frame(frame) => return Ok(Some(frame)),
            Next::Read(room) => room,
        };
        // A frame's first read: nothing of it is in yet.
        let first = room.start == 0;
        let eager = inbox.take_eager();
        let read = recv_some(stream, inbox.room(room), eager);
        let idle = first && deadline.is_none();
        let got = if idle {
            // Idle between requests: a shutdown ends the connection.
            tokio::select! {
                r = tokio::time::timeout(timeouts.idle, read) => r,
                _ = shutdown.changed() => return Ok(None),
            }
        } else {
            let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.frame);
            tokio::time::timeout_at(at, read).await
        };
        let got = match got {
            Err(_) => return Err(ReadError::Timeout { idle }),
            Ok(Err(_)) => return Err(ReadError::Io),
            Ok(Ok(got)) => got,
        };
        if got.bytes == 0 {
            // EOF: clean between frames only.
            return if first { Ok(None) } else { Err(ReadError::Io) };
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.frame);
        inbox.received(got);
    }
}

#[cfg(test)]
mod tests {
    //! The frame buffer fed byte chunks as reads would bring them. Files
    //! stand in for fds and for senders' pidfds: [`same_process`] compares
    //! (device, inode), which two opens of one file share, as pidfds of
    //! one process do.

    use std::fs::File;
    use std::os::fd::OwnedFd;

    use super::*;

    fn fd(path: &str) -> OwnedFd {
        File::open(path).unwrap().into()
    }

    /// (device, inode) of an fd, to tell which one a frame got.
    fn id(fd: &OwnedFd) -> (u64, u64) {
        let st = rustix::fs::fstat(fd).unwrap();
        (st.st_dev, st.st_ino)
    }

    fn frame_bytes(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Feed one read of `chunk` (with `fds`, from `sender`) into the room
    /// the inbox offers, which must hold it, as a socket read would.
    fn feed(inbox: &mut Inbox, chunk: &[u8], fds: Vec<OwnedFd>, sender: Option<OwnedFd>) {
        let room = match inbox.next().unwrap() {
            Next::Read(room) => room,
            Next::Frame(_) => panic!("a whole frame was waiting"),
        };
        assert!(chunk.len() <= room.len(), "a read takes at most {} bytes here", room.len());
        inbox.room(room)[..chunk.len()].copy_from_slice(chunk);
        inbox.received(Received { bytes: chunk.len(), fds, truncated: false, sender });
    }

    fn frame(inbox: &mut Inbox) -> Option<Frame> {
        match inbox.next().unwrap() {
            Next::Frame(frame) => Some(frame),
            Next::Read(_) => None,
        }
    }

    #[test]
    fn a_frame_split_across_reads_comes_out_whole() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..2], vec![], None);
        assert!(frame(&mut inbox).is_none());
        feed(&mut inbox, &bytes[2..6], vec![], None);
        assert!(frame(&mut inbox).is_none());
        feed(&mut inbox, &bytes[6..], vec![], None);
        let got = frame(&mut inbox).unwrap();
        assert_eq!(got.payload, b"\x01\x00hello");
        assert!(frame(&mut inbox).is_none());
        assert_eq!(inbox.len, 0);
    }

    #[test]
    fn a_read_after_the_header_asks_for_exactly_the_missing_bytes() {
        let bytes = frame_bytes(&[7; 1000]);
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..FIRST_READ], vec![], None);
        match inbox.next().unwrap() {
            Next::Read(room) => assert_eq!(room, FIRST_READ..bytes.len()),
            Next::Frame(_) => panic!("the frame is not all in"),
        }
        feed(&mut inbox, &bytes[FIRST_READ..], vec![], None);
        assert_eq!(frame(&mut inbox).unwrap().payload.len(), 1000);
        // A big frame's room goes with it.
        assert!(frame(&mut inbox).is_none());
        assert_eq!(inbox.buf.len(), FIRST_READ);
    }

    #[test]
    fn several_frames_in_one_read_come_out_one_by_one() {
        let mut bytes = frame_bytes(b"\x01\x00one");
        bytes.extend(frame_bytes(b"\x01\x00two"));
        bytes.extend(&frame_bytes(b"\x01\x00three")[..5]);
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes, vec![], None);
        assert_eq!(frame(&mut inbox).unwrap().payload, b"\x01\x00one");
        assert_eq!(frame(&mut inbox).unwrap().payload, b"\x01\x00two");
        assert!(frame(&mut inbox).is_none());
        feed(&mut inbox, b"\x00three", vec![], None);
        assert_eq!(frame(&mut inbox).unwrap().payload, b"\x01\x00three");
    }

    #[test]
    fn fds_go_with_the_frame_their_read_ended_in() {
        // The kernel ends a read with the message that carried fds, so a
        // read with fds that goes past its first frame brought them for
        // the frame it ended in.
        let mut bytes = frame_bytes(b"\x01\x00one");
        let second = frame_bytes(b"\x01\x00two");
        bytes.extend(&second[..3]);
        let mut inbox = Inbox::default();
        let null = fd("/dev/null");
        let null_id = id(&null);
        feed(&mut inbox, &bytes, vec![null], None);
        let one = frame(&mut inbox).unwrap();
        assert!(one.fds.is_empty());
        assert!(frame(&mut inbox).is_none());
        feed(&mut inbox, &second[3..], vec![], None);
        let two = frame(&mut inbox).unwrap();
        assert_eq!(two.fds.iter().map(id).collect::<Vec<_>>(), vec![null_id]);
    }

    #[test]
    fn fds_of_a_read_that_ends_in_its_frame_are_that_frames() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        let null = fd("/dev/null");
        let null_id = id(&null);
        feed(&mut inbox, &bytes[..3], vec![null], None);
        // Fds of a read that began after the header close.
        feed(&mut inbox, &bytes[3..6], vec![], None);
        feed(&mut inbox, &bytes[6..], vec![fd("/dev/zero")], None);
        let got = frame(&mut inbox).unwrap();
        assert_eq!(got.fds.iter().map(id).collect::<Vec<_>>(), vec![null_id]);
        assert!(!got.fds_truncated);
        // The next frame starts with none.
        feed(&mut inbox, &bytes, vec![], None);
        assert!(frame(&mut inbox).unwrap().fds.is_empty());
    }

    #[test]
    fn truncated_fds_are_noted_on_their_frame() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        let room = match inbox.next().unwrap() {
            Next::Read(room) => room,
            Next::Frame(_) => unreachable!(),
        };
        inbox.room(room)[..bytes.len()].copy_from_slice(&bytes);
        inbox.received(Received { bytes: bytes.len(), fds: vec![], truncated: true, sender: None });
        assert!(frame(&mut inbox).unwrap().fds_truncated);
    }

    #[test]
    fn a_frame_from_one_process_keeps_its_sender() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..3], vec![], Some(fd("/dev/null")));
        feed(&mut inbox, &bytes[3..], vec![], Some(fd("/dev/null")));
        let sender = frame(&mut inbox).unwrap().sender.expect("one sender");
        assert_eq!(id(&sender), id(&fd("/dev/null")));
    }

    #[test]
    fn a_frame_from_two_processes_has_no_sender() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..3], vec![], Some(fd("/dev/null")));
        feed(&mut inbox, &bytes[3..], vec![], Some(fd("/dev/zero")));
        assert!(frame(&mut inbox).unwrap().sender.is_none());
    }

    #[test]
    fn a_read_without_a_sender_leaves_the_frame_without_one() {
        let bytes = frame_bytes(b"\x01\x00hello");
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..3], vec![], None);
        feed(&mut inbox, &bytes[3..], vec![], Some(fd("/dev/null")));
        assert!(frame(&mut inbox).unwrap().sender.is_none());
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..3], vec![], Some(fd("/dev/null")));
        feed(&mut inbox, &bytes[3..], vec![], None);
        assert!(frame(&mut inbox).unwrap().sender.is_none());
    }

    #[test]
    fn leftover_bytes_keep_the_sender_of_the_read_that_brought_them() {
        let mut bytes = frame_bytes(b"\x01\x00one");
        let second = frame_bytes(b"\x01\x00two");
        bytes.extend(&second[..3]);
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes[..3], vec![], Some(fd("/dev/zero")));
        // This read ends the first frame and begins the second.
        feed(&mut inbox, &bytes[3..], vec![], Some(fd("/dev/null")));
        // The first frame's reads came from two processes.
        assert!(frame(&mut inbox).unwrap().sender.is_none());
        // The rest of the second comes from the same process as its start.
        feed(&mut inbox, &second[3..], vec![], Some(fd("/dev/null")));
        let sender = frame(&mut inbox).unwrap().sender.expect("one sender");
        assert_eq!(id(&sender), id(&fd("/dev/null")));
    }

    #[test]
    fn leftover_bytes_then_another_process_leave_no_sender() {
        let mut bytes = frame_bytes(b"\x01\x00one");
        let second = frame_bytes(b"\x01\x00two");
        bytes.extend(&second[..3]);
        let mut inbox = Inbox::default();
        feed(&mut inbox, &bytes, vec![], Some(fd("/dev/null")));
        assert!(frame(&mut inbox).unwrap().sender.is_some());
        feed(&mut inbox, &second[3..], vec![], Some(fd("/dev/zero")));
        assert!(frame(&mut inbox).unwrap().sender.is_none());
    }

    #[test]
    fn an_oversized_length_is_refused_before_any_room_is_allocated() {
        let too_big = u32::try_from(codec::MAX_FRAME + 1).unwrap();
        let mut inbox = Inbox::default();
        feed(&mut inbox, &too_big.to_le_bytes(), vec![], None);
        assert!(matches!(inbox.next(), Err(CodecError::TooLarge { .. })));
        assert_eq!(inbox.buf.len(), FIRST_READ);
    }

    #[test]
    fn a_length_shorter_than_a_version_is_refused() {
        let mut inbox = Inbox::default();
        feed(&mut inbox, &1u32.to_le_bytes(), vec![], None);
        assert!(matches!(inbox.next(), Err(CodecError::TooShort { .. })));
    }
}
