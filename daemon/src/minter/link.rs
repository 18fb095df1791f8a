//! The daemon's side of the minter: start it, send it requests, restart
//! it when it dies.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bpftoken_proto::codec::{decode_message, encode_message};
use bpftoken_proto::Delegation;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendFlags, SocketFlags, SocketType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Mutex;

use super::{MintError, MinterReply, MinterRequest, ScopeLimits};
use crate::sys;

/// Longest a mint may take inside the minter (a cold mint whose helper
/// stalls at every step still ends well before this).
const MINT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a successful mint returns to the daemon.
#[derive(Debug)]
pub struct MintedToken {
    pub token: OwnedFd,
    /// Whether a new scope was created for this mint.
    pub cold: bool,
    pub live_scopes: u32,
}

#[derive(Debug)]
struct Running {
    child: Child,
    /// Blocking fd until first use inside the runtime, then registered.
    sock: Option<OwnedFd>,
    async_sock: Option<AsyncFd<OwnedFd>>,
}

/// Handle on the minter process. Requests are serialised: the minter is a
/// single-threaded loop, so queueing here costs nothing it would not cost
/// there.
#[derive(Debug)]
pub struct MinterLink {
    exe: PathBuf,
    limits: ScopeLimits,
    state: Mutex<Option<Running>>,
}

impl MinterLink {
    /// Start the minter now (called before the async runtime exists, so
    /// the first minter is forked from a single-threaded process).
    pub fn start(exe: PathBuf, limits: ScopeLimits) -> std::io::Result<Self> {
        let running = spawn(&exe, limits)?;
        Ok(MinterLink { exe, limits, state: Mutex::new(Some(running)) })
    }

    /// Pid of the current minter, if it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.state.lock().await.as_ref().map(|r| r.child.id())
    }

    /// Ask the minter for a token. If the minter has died, the caller gets
    /// an error and the next call starts a new one.
    pub async fn mint(&self, owner_uid: u32, owner_gid: u32, delegation: Delegation) -> Result<MintedToken, MintError> {
        let mut state = self.state.lock().await;
        // A minter that died while idle is replaced before the request is
        // sent, so this request does not fail for it.
        if let Some(running) = state.as_mut() {
            if let Ok(Some(status)) = running.child.try_wait() {
                tracing::warn!(%status, "the minter exited while idle");
                stop(state.take());
            }
        }
        if state.is_none() {
            tracing::warn!("starting a new minter process");
            *state = Some(spawn(&self.exe, self.limits).map_err(|e| MintError::MinterUnavailable(format!("cannot start it: {e}")))?);
        }
        let Some(running) = state.as_mut() else {
            return Err(MintError::MinterUnavailable("not running".into()));
        };
        let request = MinterRequest::Mint { owner_uid, owner_gid, delegation };
        match tokio::time::timeout(MINT_TIMEOUT, exchange(running, &request)).await {
            Ok(Ok(result)) => result,
            Ok(Err(io)) => {
                let e = MintError::MinterUnavailable(format!("lost contact with it: {io}"));
                stop(state.take());
                Err(e)
            }
            Err(_) => {
                stop(state.take());
                Err(MintError::MinterUnavailable(format!("no answer within {} s; restarted", MINT_TIMEOUT.as_secs())))
            }
        }
    }

    /// Stop the minter (daemon shutdown).
    pub async fn shutdown(&self) {
        stop(self.state.lock().await.take());
    }
}

fn spawn(exe: &PathBuf, limits: ScopeLimits) -> std::io::Result<Running> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Only the minter's end survives the exec; the link holds the state
    // lock (or runs before the runtime), so no other spawn races for it.
    sys::clear_cloexec(theirs.as_fd())?;
    let child = Command::new(exe)
        .arg("minter")
        .arg("--fd")
        .arg(theirs.as_raw_fd().to_string())
        .arg("--scopes-per-uid")
        .arg(limits.per_uid.to_string())
        .arg("--scopes-max")
        .arg(limits.global.to_string())
        .arg("--scope-idle-secs")
        .arg(limits.idle.as_secs().to_string())
        .stdin(Stdio::null())
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

async fn exchange(running: &mut Running, request: &MinterRequest) -> std::io::Result<Result<MintedToken, MintError>> {
    if running.async_sock.is_none() {
        let fd = running.sock.take().ok_or_else(|| std::io::Error::other("minter socket missing"))?;
        rustix::io::ioctl_fionbio(&fd, true)?;
        running.async_sock = Some(sys::async_fd(fd)?);
    }
    let Some(sock) = running.async_sock.as_ref() else {
        return Err(std::io::Error::other("minter socket missing"));
    };
    let bytes = encode_message(request).map_err(std::io::Error::other)?;
    sock.async_io(Interest::WRITABLE, |fd| {
        let mut space: [MaybeUninit<u8>; 0] = [];
        let mut control = SendAncillaryBuffer::new(&mut space);
        rustix::net::sendmsg(fd, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
            .map_err(std::io::Error::from)
    })
    .await?;
    let mut buf = [0u8; 4096];
    let (len, flags, mut fds) = sock
        .async_io(Interest::READABLE, |fd| {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                fd,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            )
            .map_err(std::io::Error::from)?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = m {
                    fds.extend(rights);
                }
            }
            Ok((msg.bytes, msg.flags, fds))
        })
        .await?;
    if len == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the minter exited"));
    }
    if flags.contains(ReturnFlags::TRUNC) || flags.contains(ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("truncated reply from the minter"));
    }
    let reply: MinterReply = decode_message(&buf[..len]).map_err(std::io::Error::other)?;
    Ok(match reply {
        MinterReply::Minted { cold, live_scopes } => {
            if fds.len() != 1 {
                return Err(std::io::Error::other(format!("the minter sent {} fds with a token reply", fds.len())));
            }
            let token = fds.remove(0);
            Ok(MintedToken { token, cold, live_scopes })
        }
        MinterReply::Failed(e) => Err(e),
    })
}
