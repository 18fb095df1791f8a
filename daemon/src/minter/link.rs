//! The daemon's side of the minter: start it, send it requests, restart
//! it when it dies.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bpftoken_proto::codec::{decode_message, encode_message};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Mutex;

use super::{MintError, MinterReply, MinterRequest, Scope, ScopeKey};
use crate::sys;
use crate::sys::fdpass;

/// Longest a scope creation may take inside the minter (a helper that
/// stalls at every step still ends well before this).
pub(super) const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Running {
    child: Child,
    /// Blocking fd until first use inside the runtime, then registered.
    sock: Option<OwnedFd>,
    async_sock: Option<AsyncFd<OwnedFd>>,
}

/// Handle on one minter process. Requests are serialised: the minter is a
/// single-threaded loop, so queueing here costs nothing it would not cost
/// there ([`super::pool::MinterPool`] runs several).
#[derive(Debug)]
pub struct MinterLink {
    exe: PathBuf,
    state: Mutex<Option<Running>>,
    /// Request ids start at 1; 0 is the minter's "not a request" answer.
    next_id: std::sync::atomic::AtomicU64,
    /// Set (under the state lock) at shutdown: no minter starts afterwards.
    closed: std::sync::atomic::AtomicBool,
}

impl MinterLink {
    /// Start the minter now (called before the async runtime exists, so
    /// the first minter is forked from a single-threaded process).
    pub fn start(exe: PathBuf) -> std::io::Result<Self> {
        let running = spawn(&exe)?;
        Ok(MinterLink {
            exe,
            state: Mutex::new(Some(running)),
            next_id: std::sync::atomic::AtomicU64::new(1),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stop the minter outside the runtime (a start that failed later).
    pub fn stop_now(self) {
        stop(self.state.into_inner());
    }

    /// Ask the minter for a new scope. If the minter dies during the
    /// request, the caller gets an error and the next call starts a new one.
    /// `target` is the user namespace of a [`super::ScopeOwner::Userns`] key;
    /// `deadline` bounds the wait for the minter and its answer.
    pub async fn create_scope(
        &self,
        key: ScopeKey,
        target: Option<BorrowedFd<'_>>,
        deadline: tokio::time::Instant,
    ) -> Result<Scope, MintError> {
        let mut state =
            tokio::time::timeout_at(deadline, self.state.lock()).await.map_err(|_| MintError::MinterBusy)?;
        // A minter that died while idle is replaced before the request is
        // sent, so this request does not fail for it.
        self.revive_locked(&mut state)?;
        let Some(running) = state.as_mut() else {
            return Err(MintError::MinterUnavailable("not running".into()));
        };
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = MinterRequest::CreateScope { id, owner: key.owner, delegation: key.delegation };
        match tokio::time::timeout_at(deadline, exchange(running, &request, id, key, target)).await {
            Ok(Ok(result)) => result,
            Ok(Err(io)) => {
                let e = MintError::MinterUnavailable(format!("lost contact with it: {io}"));
                stop(state.take());
                Err(e)
            }
            Err(_) => {
                stop(state.take());
                Err(MintError::MinterUnavailable(format!("no answer within {} s; restarted", CREATE_TIMEOUT.as_secs())))
            }
        }
    }

    /// If no request holds this minter: reap it if it has died, and start
    /// a new one in place of a dead or lost one, so a dead minter neither
    /// lingers as a zombie nor fails the next request.
    pub fn revive_if_idle(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            if let Err(e) = self.revive_locked(&mut state) {
                tracing::warn!("{e}");
            }
        }
    }

    fn revive_locked(&self, state: &mut Option<Running>) -> Result<(), MintError> {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(MintError::MinterUnavailable("the daemon is stopping".into()));
        }
        if let Some(running) = state.as_mut() {
            if let Ok(Some(status)) = running.child.try_wait() {
                tracing::warn!(%status, "the minter exited while idle");
                stop(state.take());
            }
        }
        if state.is_none() {
            tracing::warn!("starting a new minter process");
            *state = Some(spawn(&self.exe).map_err(|e| MintError::MinterUnavailable(format!("cannot start it: {e}")))?);
        }
        Ok(())
    }

    /// Stop the minter (daemon shutdown); it is not restarted afterwards.
    pub async fn shutdown(&self) {
        let mut state = self.state.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        stop(state.take());
    }
}

/// Held from clearing CLOEXEC on a minter's end until the spawn is done:
/// links have a lock each, so without this two minters started at once
/// (from different threads) could each inherit the other's end, and one's
/// death would then never close its socket.
static SPAWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn spawn(exe: &PathBuf) -> std::io::Result<Running> {
    let _spawning = SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let (ours, theirs) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    // Only the minter's end survives the exec.
    sys::clear_cloexec(theirs.as_fd())?;
    let child = Command::new(exe)
        .arg("minter")
        .arg("--fd")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        // systemd's variables are the daemon's, not the minter's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Own process group: a terminal's ^C reaches the daemon, which
        // then shuts the minter down in order.
        .process_group(0)
        .spawn()?;
    drop(theirs);
    Ok(Running { child, sock: Some(ours), async_sock: None })
}

fn stop(running: Option<Running>) {
    if let Some(mut r) = running {
        drop(r.async_sock.take());
        drop(r.sock.take());
        // Closing the socket makes the minter exit; make sure of it.
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

async fn exchange(
    running: &mut Running,
    request: &MinterRequest,
    id: u64,
    key: ScopeKey,
    target: Option<BorrowedFd<'_>>,
) -> std::io::Result<Result<Scope, MintError>> {
    if running.async_sock.is_none() {
        let fd = running.sock.take().ok_or_else(|| std::io::Error::other("minter socket missing"))?;
        rustix::io::ioctl_fionbio(&fd, true)?;
        running.async_sock = Some(sys::async_fd(fd)?);
    }
    let Some(sock) = running.async_sock.as_ref() else {
        return Err(std::io::Error::other("minter socket missing"));
    };
    let bytes = encode_message(request).map_err(std::io::Error::other)?;
    let fds: Vec<BorrowedFd<'_>> = target.into_iter().collect();
    sock.async_io(Interest::WRITABLE, |fd| fdpass::send_with_fds(fd.as_fd(), &bytes, &fds)).await?;
    let mut buf = [0u8; 4096];
    let reply = sock.async_io(Interest::READABLE, |fd| fdpass::recv_with_fds(fd.as_fd(), &mut buf, 3)).await?;
    let (len, mut fds) = (reply.bytes, reply.fds);
    if len == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the minter exited"));
    }
    if reply.bytes_truncated || reply.fds_truncated {
        return Err(std::io::Error::other("truncated reply from the minter"));
    }
    let reply: MinterReply = decode_message(&buf[..len]).map_err(std::io::Error::other)?;
    Ok(match reply {
        MinterReply::Created { id: got } | MinterReply::Failed { id: got, .. } if got != id => {
            return Err(std::io::Error::other(format!("the minter answered request {got}, expected {id}")));
        }
        MinterReply::Created { .. } => {
            if fds.len() != 3 {
                return Err(std::io::Error::other(format!(
                    "the minter sent {} fds with a new scope, not 3",
                    fds.len()
                )));
            }
            let mount = fds.remove(2);
            let bpffs_root = fds.remove(1);
            let userns = fds.remove(0);
            Ok(Scope::new(key, userns, bpffs_root, mount))
        }
        MinterReply::Failed { error, .. } => Err(error),
    })
}
