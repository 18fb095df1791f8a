//! Who is at the other end of a connection, as the kernel says. Never
//! anything the peer says about itself.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use bpftoken_policy::Peer;

use crate::sys;

/// Which user namespace the peer lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUserns {
    /// The daemon's own (normally the init user namespace).
    Ours,
    /// Another one (a rootless container, `unshare -U`), owned by this uid
    /// as seen from ours, with its nsfs inode.
    Nested { owner_uid: u32, ino: u64 },
    /// Could not be determined (the peer exited, or no pidfd).
    Unknown,
}

/// A connected client's identity, taken once at accept time.
#[derive(Debug)]
pub struct PeerIdentity {
    /// uid, gid and supplementary groups, for the policy.
    pub creds: Peer,
    /// The pid SO_PEERCRED reported (for logs only: everything pid-based
    /// was read through a pidfd from SO_PEERPIDFD, which stays bound to the
    /// connecting process even if the pid is recycled, and closed after).
    pub pid: i32,
    pub userns: PeerUserns,
    /// The peer's user namespace, held from accept time, when it is not
    /// ours: container-mode tokens are minted in exactly this namespace.
    pub userns_fd: Option<std::os::fd::OwnedFd>,
}

impl PeerIdentity {
    /// The peer's executable path for logs (escaped by the caller).
    pub fn exe_display(&self) -> String {
        self.creds.exe.as_ref().map_or_else(|| "?".to_owned(), |p| p.to_string_lossy().into_owned())
    }
}

/// Identify the peer of a connected Unix stream socket.
pub fn identify(sock: BorrowedFd<'_>) -> std::io::Result<PeerIdentity> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    let groups = sys::peer_groups(sock)?;
    let pidfd = sys::peer_pidfd(sock).ok();
    let exe = pidfd.as_ref().and_then(|fd| exe_of(fd.as_fd()));
    let cgroup = pidfd.as_ref().and_then(|fd| cgroup_of(fd.as_fd()));
    let (userns, userns_fd) = pidfd.as_ref().map_or((PeerUserns::Unknown, None), |fd| userns_of(fd.as_fd()));
    let userns_owner = match userns {
        PeerUserns::Nested { owner_uid, .. } => Some(owner_uid),
        PeerUserns::Ours | PeerUserns::Unknown => None,
    };
    Ok(PeerIdentity {
        creds: Peer { uid: cred.uid.as_raw(), gid: cred.gid.as_raw(), groups, exe, cgroup, userns_owner },
        pid: cred.pid.as_raw_nonzero().get(),
        userns,
        userns_fd,
    })
}

/// The pid a pidfd refers to, in our pid namespace (0 if not visible,
/// -1 once the process has exited).
fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse().ok())
}

/// Read `/proc/PID/<what>` for the process behind `pidfd`: the pid is read
/// from the pidfd, the file read, and the pidfd checked again; if the
/// process is still alive, the pid was not recycled in between.
fn through_pidfd<T>(pidfd: BorrowedFd<'_>, read: impl FnOnce(&str) -> std::io::Result<T>) -> Option<T> {
    let pid = pidfd_pid(pidfd).filter(|p| *p > 0)?;
    let value = read(&format!("/proc/{pid}")).ok()?;
    sys::pidfd_alive(pidfd).then_some(value)
}

/// Executable path of the process behind `pidfd` (a deleted or replaced
/// binary reads as "PATH (deleted)" and so matches no rule).
fn exe_of(pidfd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    through_pidfd(pidfd, |proc| std::fs::read_link(format!("{proc}/exe")))
}

/// cgroup v2 path of the process behind `pidfd` (the `0::` line).
fn cgroup_of(pidfd: BorrowedFd<'_>) -> Option<String> {
    let text = through_pidfd(pidfd, |proc| std::fs::read_to_string(format!("{proc}/cgroup")))?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

fn own_userns() -> Option<(u64, u64)> {
    static OWN: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *OWN.get_or_init(|| std::fs::metadata("/proc/self/ns/user").ok().map(|m| (m.dev(), m.ino())))
}

fn userns_of(pidfd: BorrowedFd<'_>) -> (PeerUserns, Option<std::os::fd::OwnedFd>) {
    // PIDFD_GET_USER_NAMESPACE (6.11+); before that, /proc through the pidfd.
    let ns = sys::pidfd_user_namespace(pidfd).ok().or_else(|| {
        through_pidfd(pidfd, |proc| {
            rustix::fs::open(
                format!("{proc}/ns/user"),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(std::io::Error::from)
        })
    });
    let Some(ns) = ns else { return (PeerUserns::Unknown, None) };
    let Ok(st) = rustix::fs::fstat(&ns) else { return (PeerUserns::Unknown, None) };
    if Some((st.st_dev, st.st_ino)) == own_userns() {
        return (PeerUserns::Ours, None);
    }
    match sys::ns_owner_uid(ns.as_fd()) {
        Ok(owner_uid) => (PeerUserns::Nested { owner_uid, ino: st.st_ino }, Some(ns)),
        Err(_) => (PeerUserns::Unknown, None),
    }
}
