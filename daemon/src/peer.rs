//! Who is at the other end of a connection, as the kernel says. Never
//! anything the peer says about itself.
//!
//! At accept, only what the socket itself says: uid, gid and groups
//! (`SO_PEERCRED`, `SO_PEERGROUPS`), enough to admit the connection or
//! refuse it (`busy`) before any other work. At its first request: the
//! user namespace of the process that connected (through the request's
//! `SCM_PIDFD` when that process sent it, else its `SO_PEERPIDFD`; the
//! one it connected from decides, so a tool `bpftoken run` starts inside
//! the user namespace of its own scope still speaks as its uid).
//! Per request, from the process that *sent* it (the `SCM_PIDFD` of its
//! bytes, so a socket handed to another program speaks for that program):
//! its pid, and, only when the policy has a rule that looks at them, its
//! executable and cgroup. An executable is only ever named by a host
//! path that leads to the very file the process runs (device and inode);
//! the enforcer binds grants to that file (docs/enforcement.md).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use bpftoken_policy::Peer;

use crate::enforcer::ExeId;
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

/// A connected client's identity: taken at accept time, and completed per
/// request by [`PeerIdentity::for_request`].
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// uid, gid and supplementary groups, for the policy.
    pub creds: Peer,
    /// The pid SO_PEERCRED reported, or per request the sender's (for
    /// logs only: everything pid-based is read through a pidfd, which
    /// stays bound to its process even if the pid is recycled).
    pub pid: i32,
    pub userns: PeerUserns,
    /// The peer's user namespace, held from accept time, when it is not
    /// ours: container-mode tokens are minted in exactly this namespace.
    pub userns_fd: Option<Arc<OwnedFd>>,
    /// The file `creds.exe` names, as the kernel identifies it (what the
    /// enforcer binds an `executables` grant to).
    pub exe_id: Option<ExeId>,
    /// `creds.exe` is the program the client is about to run
    /// ([`PeerIdentity::with_program`]), not one it runs.
    pub exe_declared: bool,
    /// The pidfd of the process that sent the request and its pid, kept so
    /// that the audit event can name its executable and cgroup where no
    /// rule needed them read for the decision.
    pub sender: Option<(Arc<OwnedFd>, i32)>,
}

/// Which pid-based facts a request needs read (the policy's rules say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub exe: bool,
    pub cgroup: bool,
}

/// Why a program named in a request cannot be bound to.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("the program \"{0}\" is not an absolute path")]
    NotAbsolute(String),
    #[error("the program \"{path}\" cannot be opened on the host: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("the program \"{0}\" is not a regular file")]
    NotAFile(String),
}

impl PeerIdentity {
    /// The peer's executable path for logs (escaped by the caller): as
    /// matched, else read now from the sender (a log line only).
    pub fn exe_display(&self) -> String {
        let read = || {
            let (pidfd, pid) = self.sender.as_ref()?;
            through_pidfd(pidfd.as_fd(), *pid, |p| std::fs::read_link(format!("{p}/exe")))
        };
        self.creds.exe.clone().or_else(read).map_or_else(|| "?".to_owned(), |p| p.to_string_lossy().into_owned())
    }

    /// The peer's cgroup for logs, as read for the decision; `None` where
    /// no rule looks at cgroups (not read for the log alone: see
    /// docs/operation.md, "Audit events").
    pub fn cgroup_display(&self) -> Option<&str> {
        self.creds.cgroup.as_deref()
    }
}

/// Identify the peer of a connected Unix stream socket: what the socket
/// says at accept (two `getsockopt`s). Its user namespace comes with its
/// first request ([`PeerIdentity::read_userns`]); its pid and the rest
/// are the sender's, per request ([`PeerIdentity::for_request`]).
pub fn identify(sock: BorrowedFd<'_>) -> std::io::Result<PeerIdentity> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    let groups = sys::peer_groups(sock)?;
    Ok(PeerIdentity {
        creds: Peer {
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
            groups,
            exe: None,
            cgroup: None,
            userns_owner: None,
        },
        pid: cred.pid.as_raw_nonzero().get(),
        userns: PeerUserns::Unknown,
        userns_fd: None,
        exe_id: None,
        exe_declared: false,
        sender: None,
    })
}

impl PeerIdentity {
    /// Read the user namespace of the process that connected, once, at
    /// the connection's first request (`first`, from
    /// [`PeerIdentity::for_request`]): through that request's sender when
    /// it is the process that connected (the pid `SO_PEERCRED` gave),
    /// which saves asking the socket for a pidfd of its own; else through
    /// `SO_PEERPIDFD` on `sock`. Unknown if that process is gone.
    pub fn read_userns(&mut self, sock: BorrowedFd<'_>, first: &PeerIdentity) {
        let (userns, userns_fd) = match &first.sender {
            Some((pidfd, pid)) if *pid == self.pid => userns_of(pidfd.as_fd()),
            _ => sys::peer_pidfd(sock).ok().map_or((PeerUserns::Unknown, None), |fd| userns_of(fd.as_fd())),
        };
        self.userns = userns;
        self.userns_fd = userns_fd.map(Arc::new);
        self.creds.userns_owner = match userns {
            PeerUserns::Nested { owner_uid, .. } => Some(owner_uid),
            PeerUserns::Ours | PeerUserns::Unknown => None,
        };
    }

    /// Take the user namespace [`PeerIdentity::read_userns`] read for the
    /// connection `connected`.
    pub fn with_userns_of(mut self, connected: &PeerIdentity) -> PeerIdentity {
        self.userns = connected.userns;
        self.userns_fd.clone_from(&connected.userns_fd);
        self.creds.userns_owner = connected.creds.userns_owner;
        self
    }

    /// This connection's identity for one request sent by `sender` (a
    /// pidfd from `SCM_PIDFD`): its pid, and what `needs` asks for read
    /// from that process. Without a sender (a request whose bytes came
    /// from two processes) they stay unknown and match no rule.
    pub fn for_request(&self, sender: Option<&Arc<OwnedFd>>, needs: Needs) -> PeerIdentity {
        let mut peer = self.clone();
        // A sender that has exited (pid -1 or 0) is known by nothing else.
        let sender = sender.and_then(|s| Some((s, pidfd_pid(s.as_fd()).filter(|p| *p > 0)?)));
        let Some((sender, pid)) = sender else { return peer };
        peer.sender = Some((sender.clone(), pid));
        peer.pid = pid;
        if needs.exe {
            if let Some((path, id)) = exe_of(sender.as_fd(), pid) {
                peer.creds.exe = Some(path);
                peer.exe_id = Some(id);
            }
        }
        if needs.cgroup {
            peer.creds.cgroup = cgroup_of(sender.as_fd(), pid);
        }
        peer
    }

    /// Match the request against `executables` rules as the program at
    /// `path` (an absolute path, resolved on the host, in the daemon's
    /// mount namespace, never the caller's): what `bpftoken run` asks
    /// for before it execs it. Only an enforced binding to that file makes
    /// this safe, so the caller only offers it where the enforcer runs.
    pub fn with_program(&mut self, path: &str) -> Result<(), ProgramError> {
        if !Path::new(path).is_absolute() {
            return Err(ProgramError::NotAbsolute(path.to_owned()));
        }
        let open = |e: rustix::io::Errno| ProgramError::Open { path: path.to_owned(), source: e.into() };
        let fd =
            rustix::fs::open(path, rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
                .map_err(open)?;
        let st = rustix::fs::fstat(&fd).map_err(open)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(ProgramError::NotAFile(path.to_owned()));
        }
        // The path with every symlink resolved, as /proc/PID/exe shows it.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| ProgramError::Open { path: path.to_owned(), source: e })?;
        self.creds.exe = Some(real);
        self.exe_id = Some(ExeId::from_stat(st.st_dev, st.st_ino));
        self.exe_declared = true;
        Ok(())
    }
}

/// The pid a pidfd refers to, in our pid namespace (0 if not visible,
/// -1 once the process has exited): one `PIDFD_GET_INFO` ioctl, or its
/// fdinfo before Linux 6.13.
fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<i32> {
    match sys::pidfd_info_pid(pidfd) {
        Ok(pid) => Some(pid),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Some(-1),
        Err(_) => {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
            info.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|p| p.trim().parse().ok())
        }
    }
}

/// Read `/proc/PID/<what>` for the process behind `pidfd`, whose pid is
/// `pid` (read from the pidfd), and check the pidfd again after: if the
/// process is still alive, the pid was not recycled in between.
fn through_pidfd<T>(pidfd: BorrowedFd<'_>, pid: i32, read: impl FnOnce(&str) -> std::io::Result<T>) -> Option<T> {
    let value = read(&format!("/proc/{pid}")).ok()?;
    sys::pidfd_alive(pidfd).then_some(value)
}

/// [`through_pidfd`] reading the pid from the pidfd first.
fn through_own_pidfd<T>(pidfd: BorrowedFd<'_>, read: impl FnOnce(&str) -> std::io::Result<T>) -> Option<T> {
    let pid = pidfd_pid(pidfd).filter(|p| *p > 0)?;
    through_pidfd(pidfd, pid, read)
}

/// The executable of the process behind `pidfd`: a host path and the
/// file's identity, only when that path leads to the very file the
/// process runs. A deleted or replaced binary ("PATH (deleted)"), or one
/// reached through another mount namespace where the host has something
/// else at that path, gives `None` and so matches no rule.
fn exe_of(pidfd: BorrowedFd<'_>, pid: i32) -> Option<(PathBuf, ExeId)> {
    let (path, running) = through_pidfd(pidfd, pid, |proc| {
        let link = format!("{proc}/exe");
        Ok((std::fs::read_link(&link)?, std::fs::metadata(&link)?))
    })?;
    let on_host = std::fs::metadata(&path).ok()?;
    let same = (on_host.dev(), on_host.ino()) == (running.dev(), running.ino());
    same.then(|| (path, ExeId::from_stat(running.dev(), running.ino())))
}

/// cgroup v2 path of the process behind `pidfd` (the `0::` line), read
/// with one `read` (the file is a few lines; a cgroup path is at most a
/// page).
fn cgroup_of(pidfd: BorrowedFd<'_>, pid: i32) -> Option<String> {
    let text = through_pidfd(pidfd, pid, |proc| {
        let mut buf = vec![0u8; 4096];
        let n = std::io::Read::read(&mut std::fs::File::open(format!("{proc}/cgroup"))?, &mut buf)?;
        buf.truncate(n);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

fn own_userns() -> Option<(u64, u64)> {
    static OWN: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    *OWN.get_or_init(|| std::fs::metadata("/proc/self/ns/user").ok().map(|m| (m.dev(), m.ino())))
}

fn userns_of(pidfd: BorrowedFd<'_>) -> (PeerUserns, Option<std::os::fd::OwnedFd>) {
    // PIDFD_GET_USER_NAMESPACE (6.11+); before that, /proc through the pidfd.
    let ns = sys::pidfd_user_namespace(pidfd).ok().or_else(|| {
        through_own_pidfd(pidfd, |proc| {
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
