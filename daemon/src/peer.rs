//! Who is at the other end of a connection, as the kernel says. Never
//! anything the peer says about itself.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use bpftoken_policy::Peer;

use crate::sys;

/// A connected client's identity, taken once at accept time.
#[derive(Debug)]
pub struct PeerIdentity {
    /// uid, gid and supplementary groups, for the policy.
    pub creds: Peer,
    /// The pid SO_PEERCRED reported (for logs only; anything pid-based
    /// goes through `pidfd`).
    pub pid: i32,
    /// A pidfd for the connecting process (SO_PEERPIDFD): it stays bound
    /// to that process even if the pid is recycled.
    pub pidfd: Option<OwnedFd>,
    /// The peer's executable, read through the pidfd; `None` if it exited
    /// or is not visible from our pid namespace.
    pub exe: Option<String>,
}

/// Identify the peer of a connected Unix stream socket.
pub fn identify(sock: BorrowedFd<'_>) -> std::io::Result<PeerIdentity> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    let groups = sys::peer_groups(sock)?;
    let pidfd = sys::peer_pidfd(sock).ok();
    let exe = pidfd.as_ref().and_then(|fd| exe_of(fd.as_fd()));
    Ok(PeerIdentity {
        creds: Peer { uid: cred.uid.as_raw(), gid: cred.gid.as_raw(), groups },
        pid: cred.pid.as_raw_nonzero().get(),
        pidfd,
        exe,
    })
}

/// The pid a pidfd refers to, in our pid namespace (0 if not visible,
/// -1 once the process has exited).
fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse().ok())
}

/// Executable path of the process behind `pidfd`. The pid is read from
/// the pidfd, the link read, and then the pidfd checked again: if the
/// process is still alive the pid was not recycled in between.
fn exe_of(pidfd: BorrowedFd<'_>) -> Option<String> {
    let pid = pidfd_pid(pidfd).filter(|p| *p > 0)?;
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if !sys::pidfd_alive(pidfd) {
        return None;
    }
    Some(link.to_string_lossy().into_owned())
}
