//! Running under systemd: socket activation, readiness and status
//! notifications, the watchdog. Outside systemd every call here is a no-op.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::socket::SocketError;

/// The listening socket systemd passed (`LISTEN_FDS`), if this process was
/// socket-activated. Exactly one fd is accepted, and it must be a Unix
/// stream socket in the listening state; anything else is an error rather
/// than a silent fallback to binding our own socket.
pub fn activated_listener() -> Result<Option<UnixListener>, SocketError> {
    let bad = |reason: String| SocketError::Activation { reason };
    let fds: Vec<_> =
        sd_notify::listen_fds_with_names().map_err(|e| bad(format!("invalid LISTEN_PID/LISTEN_FDS: {e}")))?.collect();
    // Children (the minter) must not think the sockets are theirs.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (fd, name) = match fds.as_slice() {
        [] => return Ok(None),
        [(fd, name)] => (*fd, name.clone()),
        more => return Err(bad(format!("systemd passed {} sockets; the unit must listen on exactly one", more.len()))),
    };
    let fd: OwnedFd = crate::sys::take_inherited_fd(fd).map_err(|e| bad(format!("fd {fd}: {e}")))?;
    check_listening_unix_stream(fd.as_fd()).map_err(|reason| bad(format!("socket {name:?} (fd 3) {reason}")))?;
    let listener = UnixListener::from(fd);
    Ok(Some(listener))
}

fn check_listening_unix_stream(fd: BorrowedFd<'_>) -> Result<(), String> {
    use rustix::net::sockopt;
    let domain = sockopt::socket_domain(fd).map_err(|e| format!("is not a socket ({e})"))?;
    if domain != rustix::net::AddressFamily::UNIX {
        return Err(format!("is not a Unix socket (family {domain:?}); use ListenStream=/path"));
    }
    let kind = sockopt::socket_type(fd).map_err(|e| format!("has no socket type ({e})"))?;
    if kind != rustix::net::SocketType::STREAM {
        return Err(format!("is not a stream socket ({kind:?}); use ListenStream="));
    }
    if !sockopt::socket_acceptconn(fd).map_err(|e| format!("cannot be checked ({e})"))? {
        return Err("is not listening (Accept=yes is not supported: use Accept=no)".to_owned());
    }
    Ok(())
}

/// Send one notification; failures are logged, never fatal.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic timestamp systemd's notify-reload wants.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Half the watchdog interval if systemd asked for a watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|usec| usec / 2)
}

pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}
