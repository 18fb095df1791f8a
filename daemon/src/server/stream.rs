//! One connection's socket, registered with the runtime's reactor only
//! the first time its connection has to wait.
//!
//! Reads and writes try the socket first and wait for readiness only on
//! `EAGAIN` (`frame.rs`, `reply.rs`); a new connection's request, and its
//! end right after the answer, are usually there already. A one-shot
//! connection (accept, request, answer, end) then costs no epoll
//! registration and no wait in epoll at all.
//!
//! Invariant: the registration holds the socket open until it is dropped,
//! so the reactor never deregisters an fd number that was closed and
//! reused.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::OnceCell;

/// A connected client socket (non-blocking).
pub(super) struct Stream {
    // Holds a reference to `socket` (see the invariant).
    reactor: OnceCell<AsyncFd<Arc<OwnedFd>>>,
    socket: Arc<OwnedFd>,
}

impl Stream {
    /// `socket` must be non-blocking (accepted with `SOCK_NONBLOCK`).
    pub(super) fn new(socket: std::os::unix::net::UnixStream) -> Self {
        Stream { reactor: OnceCell::new(), socket: Arc::new(OwnedFd::from(socket)) }
    }

    /// The socket's registration with the reactor, made on first use.
    async fn reactor(&self) -> io::Result<&AsyncFd<Arc<OwnedFd>>> {
        self.reactor.get_or_try_init(|| async { crate::sys::async_fd_shared(self.socket.clone()) }).await
    }

    /// Wait until the reactor says the socket is readable.
    pub(super) async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, Arc<OwnedFd>>> {
        self.reactor().await?.readable().await
    }

    /// Run `io` (a non-blocking call on the socket) until it does not
    /// fail with `EAGAIN`, waiting for `interest` in between.
    pub(super) async fn async_io<R>(&self, interest: Interest, mut io: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        self.reactor().await?.async_io(interest, |_| io()).await
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
