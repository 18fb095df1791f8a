//! The minter: a single-threaded root process that owns every scope and
//! does all namespace work (DESIGN.md, "Processes and trust").
//!
//! The async daemon never forks or changes namespaces: `setns` into a user
//! namespace is refused in a multi-threaded process and `fork()` from a
//! threaded runtime is a trap. The daemon starts the minter by executing
//! its own binary (`bpftokend minter --fd N`) before the runtime starts,
//! and again whenever it has died, and talks to it over a SOCK_SEQPACKET
//! socketpair, one request and one reply (plus the token fd) at a time.

mod error;
pub mod link;
mod scope;

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use bpftoken_proto::codec::{decode_message, encode_message};
use bpftoken_proto::Delegation;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

pub use error::{MintError, Step};
pub use scope::{Scope, ScopeKey};

use crate::sys::{self, MintStack};

/// A request from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MinterRequest {
    Mint { owner_uid: u32, owner_gid: u32, delegation: Delegation },
}

/// The minter's answer; a `Minted` message carries the token as SCM_RIGHTS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MinterReply {
    Minted { cold: bool, live_scopes: u32 },
    Failed(MintError),
}

/// Bounds on the scope cache. Each scope holds one user namespace against
/// its owner's `max_user_namespaces` quota, so both caps matter.
#[derive(Debug, Clone, Copy)]
pub struct ScopeLimits {
    pub per_uid: usize,
    pub global: usize,
    pub idle: Duration,
}

impl Default for ScopeLimits {
    fn default() -> Self {
        ScopeLimits { per_uid: 16, global: 1024, idle: Duration::from_secs(300) }
    }
}

/// The scope cache: keyed by exact owner and masks, never shared across
/// either, bounded per uid and globally, evicted when idle. Evicting a
/// scope only drops the minter's fds; tokens already handed out keep
/// working (each pins its own user namespace).
#[derive(Debug)]
pub struct Scopes {
    map: HashMap<ScopeKey, Scope>,
    limits: ScopeLimits,
    stack: MintStack,
}

impl Scopes {
    pub fn new(limits: ScopeLimits) -> Self {
        Scopes { map: HashMap::new(), limits, stack: MintStack::default() }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Mint a token for `key`, creating the scope first if needed.
    /// Returns the token and whether the scope was created (cold).
    pub fn mint(&mut self, key: ScopeKey) -> Result<(OwnedFd, bool), MintError> {
        if let Some(scope) = self.map.get_mut(&key) {
            match scope.mint(&mut self.stack) {
                Ok(token) => return Ok((token, false)),
                Err(e) => {
                    // A scope that cannot mint is useless; forget it so the
                    // next request builds a fresh one.
                    self.map.remove(&key);
                    return Err(e);
                }
            }
        }
        self.make_room(key.owner_uid);
        let mut scope = Scope::create(key)?;
        let token = scope.mint(&mut self.stack)?;
        scope::verify_token_masks(token.as_fd(), &key.delegation)?;
        self.map.insert(key, scope);
        Ok((token, true))
    }

    fn evict_lru(&mut self, filter: impl Fn(&ScopeKey) -> bool) {
        let victim = self
            .map
            .iter()
            .filter(|(k, _)| filter(k))
            .min_by_key(|(_, s)| s.last_used)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.map.remove(&k);
        }
    }

    fn make_room(&mut self, uid: u32) {
        while self.map.keys().filter(|k| k.owner_uid == uid).count() >= self.limits.per_uid.max(1) {
            self.evict_lru(|k| k.owner_uid == uid);
        }
        while self.map.len() >= self.limits.global.max(1) {
            self.evict_lru(|_| true);
        }
    }

    /// Drop scopes unused for longer than the idle limit.
    pub fn evict_idle(&mut self, now: Instant) {
        let idle = self.limits.idle;
        self.map.retain(|_, s| now.duration_since(s.last_used) < idle);
    }

    /// When the next scope becomes idle, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.map.values().map(|s| s.last_used + self.limits.idle).min()
    }
}

/// Largest request the minter accepts from the daemon.
const MAX_MINTER_MESSAGE: usize = 4096;

/// Entry point of the minter process. Returns when the daemon closes its
/// end of the socket.
pub fn run(sock: OwnedFd, limits: ScopeLimits) -> std::io::Result<()> {
    let threads = sys::thread_count()?;
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "the minter must be single-threaded, found {threads} threads"
        )));
    }
    // Die with the daemon: a minter without a daemon only holds scopes.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err(std::io::Error::other("the daemon exited before the minter started"));
    }
    let mut scopes = Scopes::new(limits);
    let mut buf = vec![0u8; MAX_MINTER_MESSAGE];
    loop {
        let timeout = scopes.next_expiry().map(|t| t.saturating_duration_since(Instant::now()));
        let ts = timeout.map(scope::timespec);
        let mut fds = [PollFd::new(&sock, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        scopes.evict_idle(Instant::now());
        if fds[0].revents().is_empty() {
            continue;
        }
        let request = match recv_request(sock.as_fd(), &mut buf)? {
            None => return Ok(()), // daemon gone
            Some(r) => r,
        };
        let (reply, token) = match request {
            Ok(MinterRequest::Mint { owner_uid, owner_gid, delegation }) => {
                let key = ScopeKey { owner_uid, owner_gid, delegation };
                match scopes.mint(key) {
                    Ok((token, cold)) => (
                        MinterReply::Minted { cold, live_scopes: u32::try_from(scopes.len()).unwrap_or(u32::MAX) },
                        Some(token),
                    ),
                    Err(e) => (MinterReply::Failed(e), None),
                }
            }
            Err(msg) => (MinterReply::Failed(MintError::MinterUnavailable(msg)), None),
        };
        send_reply(sock.as_fd(), &reply, token.as_ref().map(AsFd::as_fd))?;
        // `token` drops here: the minter keeps no copy.
    }
}

/// `Ok(None)` on EOF; `Ok(Some(Err))` for a message that is not a request.
fn recv_request(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<Option<Result<MinterRequest, String>>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = match rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    ) {
        Ok(m) => m,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
            return Ok(Some(Err("spurious wakeup".into())))
        }
        Err(e) => return Err(e.into()),
    };
    // Any fds sent to us are closed here; none are expected.
    let unexpected_fds = control.drain().any(|m| matches!(m, RecvAncillaryMessage::ScmRights(_)));
    if msg.bytes == 0 {
        return Ok(None);
    }
    if unexpected_fds || msg.flags.contains(ReturnFlags::TRUNC) || msg.flags.contains(ReturnFlags::CTRUNC) {
        return Ok(Some(Err("malformed request to the minter".into())));
    }
    Ok(Some(decode_message(&buf[..msg.bytes]).map_err(|e| e.to_string())))
}

fn send_reply(sock: BorrowedFd<'_>, reply: &MinterReply, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = encode_message(reply).map_err(std::io::Error::other)?;
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(&bytes)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}
