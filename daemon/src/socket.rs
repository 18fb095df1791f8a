//! The listening socket: created with its final mode, never stolen from a
//! running daemon, removed on exit only if it is still ours.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/bpftokend/socket";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("refusing socket directory {path}: {reason}")]
    UnsafeDir { path: PathBuf, reason: String },
    #[error("another bpftokend is already answering on {path}; stop it first")]
    AlreadyRunning { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("socket activation: {reason}")]
    Activation { reason: String },
}

/// A socket this daemon created (and will remove).
#[derive(Debug)]
pub struct OwnedSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    dev_ino: (u64, u64),
    /// flock on `<socket>.lock`, held for the daemon's life, so two
    /// daemons starting at once cannot both decide the socket is stale.
    _lock: OwnedFd,
}

impl OwnedSocket {
    /// The listener, once (the caller owns and closes it).
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the socket file if it is still the one we created.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Bind `path` with mode 0666 (authorisation is the policy's job, not the
/// socket's). The umask is per process: call this while no other thread
/// creates files.
pub fn bind(path: &Path) -> Result<OwnedSocket, SocketError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_dir(dir)?;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = rustix::fs::open(
        Path::new(&lock_path),
        rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::CLOEXEC
            | rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| SocketError::Bind { path: PathBuf::from(&lock_path), source: e.into() })?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Err(SocketError::AlreadyRunning { path: path.to_owned() });
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::AlreadyRunning { path: path.to_owned() }),
            Err(_) => {
                tracing::info!(socket = %path.display(), "replacing stale socket");
                std::fs::remove_file(path)
                    .map_err(|source| SocketError::RemoveStale { path: path.to_owned(), source })?;
            }
        },
        Ok(_) => return Err(SocketError::NotASocket { path: path.to_owned() }),
        Err(_) => {}
    }
    // Create the socket with its final mode: no window with another mode.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o111));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(|source| SocketError::Bind { path: path.to_owned(), source })?;
    let m = std::fs::symlink_metadata(path).map_err(|source| SocketError::Bind { path: path.to_owned(), source })?;
    Ok(OwnedSocket { listener: Some(listener), path: path.to_owned(), dev_ino: (m.dev(), m.ino()), _lock: lock })
}

fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| SocketError::CreateDir { path: dir.to_owned(), source })?;
    }
    let m = std::fs::metadata(dir).map_err(|source| SocketError::CreateDir { path: dir.to_owned(), source })?;
    let euid = rustix::process::geteuid().as_raw();
    let unsafe_dir = |reason: String| SocketError::UnsafeDir { path: dir.to_owned(), reason };
    if !m.is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    if m.uid() != euid {
        return Err(unsafe_dir(format!("owned by uid {}, not uid {euid}", m.uid())));
    }
    // A directory others can write lets them replace our socket. /tmp-like
    // sticky directories are fine: only the owner can remove its entries.
    if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
        return Err(unsafe_dir(format!("writable by group or others (mode {:04o})", m.mode() & 0o7777)));
    }
    Ok(())
}
