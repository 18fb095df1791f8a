//! Entering the namespaces a grant comes with: libbpf mode (`setns` into
//! the token's user namespace) and `bpftoken unshare` (a user + mount
//! namespace of our own with a delegated bpffs at `/sys/fs/bpf`).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountPropagationFlags, MoveMountFlags};
use rustix::thread::LinkNameSpaceType;

use crate::sys::{self, Namespace};

/// Where libbpf looks for a delegated bpffs when told nothing else.
pub const BPFFS_PATH: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot enter the token's user namespace: {0}")]
    Enter(std::io::Error),
    #[error("cannot take the scope's user namespace (fd {fd}): {source}")]
    Inherited { fd: i32, source: std::io::Error },
    #[error("cannot create a user namespace: {0} (is kernel.unprivileged_userns_clone or a user-namespace quota in the way?)")]
    CreateUser(std::io::Error),
    #[error("cannot create a mount namespace: {0}")]
    CreateMount(std::io::Error),
    #[error("cannot make the mounts private in the new mount namespace: {0}")]
    Private(std::io::Error),
    #[error("cannot attach the delegated bpffs at {path}: {source}")]
    Attach { path: String, source: std::io::Error },
}

/// Whether `ns` is the user namespace we already live in (container mode:
/// the token was minted in our own namespace).
pub fn is_current_userns(ns: BorrowedFd<'_>) -> std::io::Result<bool> {
    let theirs = rustix::fs::fstat(ns)?;
    let ours = rustix::fs::stat("/proc/self/ns/user")?;
    Ok((theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino))
}

/// `setns()` into a user namespace this uid owns: we become its root,
/// mapped to ourselves outside. The process must be single-threaded.
pub fn enter_userns(ns: BorrowedFd<'_>) -> Result<(), NamespaceError> {
    rustix::thread::move_into_link_name_space(ns, Some(LinkNameSpaceType::User))
        .map_err(|e| NamespaceError::Enter(e.into()))
}

/// Enter the user namespace open as fd number `fd`, inherited from our
/// parent (`bpftoken learn`), and close that fd: the command we become
/// inherits the token and the bpffs, not the namespace.
pub fn enter_inherited_userns(fd: i32) -> Result<(), NamespaceError> {
    let ns = sys::adopt_inherited_fd(fd).map_err(|source| NamespaceError::Inherited { fd, source })?;
    enter_userns(ns.as_fd())
}

/// A user namespace owned by this uid, created by a child process so that
/// we stay outside it until the daemon has delegated a bpffs to it (the
/// daemon must see us in our own namespace). Dropping it ends the child;
/// the namespace lives on through [`UsernsHolder::userns`].
#[derive(Debug)]
pub struct UsernsHolder {
    child: Child,
    userns: OwnedFd,
}

impl UsernsHolder {
    /// Start `exe holder_arg` (a program that calls [`hold_userns`]).
    pub fn spawn(exe: &std::path::Path, holder_arg: &str) -> Result<UsernsHolder, NamespaceError> {
        let mut child = Command::new(exe)
            .arg(holder_arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(NamespaceError::CreateUser)?;
        let mut line = String::new();
        let ready = child.stdout.take().map(|out| BufReader::new(out).read_line(&mut line));
        if !matches!(ready, Some(Ok(_))) || line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            let why = line.trim().strip_prefix("error: ").unwrap_or("the helper ended early").to_owned();
            return Err(NamespaceError::CreateUser(std::io::Error::other(why)));
        }
        // Our own unreaped child: its pid cannot be recycled under us.
        let userns =
            rustix::fs::open(format!("/proc/{}/ns/user", child.id()), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| NamespaceError::CreateUser(e.into()));
        let userns = match userns {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(UsernsHolder { child, userns })
    }

    pub fn userns(&self) -> BorrowedFd<'_> {
        self.userns.as_fd()
    }

    /// End the child; the namespace fd stays with the caller.
    pub fn finish(mut self) -> OwnedFd {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        self.userns
    }
}

/// The holder child's side: create a user namespace mapping only our own
/// uid and gid (to root inside), say "ready", and wait for stdin to close.
pub fn hold_userns() -> std::io::Result<()> {
    let (uid, gid) = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    let result = (|| {
        sys::unshare(Namespace::User)?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
    })();
    match result {
        Ok(()) => println!("ready"),
        Err(e) => {
            println!("error: {e}");
            return Err(e);
        }
    }
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    Ok(())
}

/// Enter `userns` (ours), give ourselves a private mount namespace and
/// attach the delegated bpffs `mount` at [`BPFFS_PATH`].
pub fn enter_with_bpffs(userns: BorrowedFd<'_>, mount: BorrowedFd<'_>) -> Result<(), NamespaceError> {
    enter_userns(userns)?;
    sys::unshare(Namespace::Mount).map_err(NamespaceError::CreateMount)?;
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
        .map_err(|e| NamespaceError::Private(e.into()))?;
    rustix::mount::move_mount(mount, "", rustix::fs::CWD, BPFFS_PATH, MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)
        .map_err(|e| NamespaceError::Attach { path: BPFFS_PATH.to_owned(), source: e.into() })
}
