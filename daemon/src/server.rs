//! Accepting clients and answering their requests.

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bpftoken_policy::{Decision, Policy, RateLimit};
use bpftoken_proto::codec::{self, CodecError};
use bpftoken_proto::message::{FdRole, RequestBody};
use bpftoken_proto::{Explanation, MintRequest, Minted, Refusal, RefusalCode, Response, FRAME_HEADER_LEN};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::audit;
use crate::cache::ScopeCache;
use crate::minter::link::MinterLink;
use crate::minter::{MintError, ScopeKey};
use crate::peer::{self, PeerIdentity, PeerUserns};
use crate::sys::MintedToken;

/// Default for [`ConnLimits::read_timeout`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must be taken by the client within this time.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Per-connection bounds. Beyond the connection caps (Varlink's defaults)
/// a client gets a typed `busy` refusal.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub global: usize,
    pub per_uid: usize,
    /// A request must arrive completely within this time; it is also the
    /// longest a connection may sit idle between requests.
    pub read_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { global: 4096, per_uid: 1024, read_timeout: READ_TIMEOUT }
    }
}

/// Counters for status reports.
#[derive(Debug, Default)]
pub struct Stats {
    pub minted: AtomicU64,
    pub refused: AtomicU64,
}

/// Shared daemon state.
#[derive(Debug)]
pub struct Daemon {
    policy: RwLock<Arc<Policy>>,
    pub minter: MinterLink,
    pub scopes: ScopeCache,
    rates: RateLimiter,
    pub stats: Stats,
    limits: ConnLimits,
    conns: Mutex<ConnCount>,
    last_reload: Mutex<String>,
}

#[derive(Debug, Default)]
struct ConnCount {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// Per-rule, per-uid mint counts over the last minute.
#[derive(Debug, Default)]
struct RateLimiter {
    windows: Mutex<HashMap<(String, u32), std::collections::VecDeque<std::time::Instant>>>,
}

impl RateLimiter {
    const WINDOW: Duration = Duration::from_secs(60);

    /// Count a mint for `uid` under every limited rule, or say which limit
    /// it would exceed (and count nothing).
    fn admit(&self, uid: u32, limits: &[RateLimit]) -> Result<(), String> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Forget what has left the window (bounds memory by rules x uids).
        windows.retain(|_, w| {
            while w.front().is_some_and(|t| now.duration_since(*t) >= Self::WINDOW) {
                w.pop_front();
            }
            !w.is_empty()
        });
        for limit in limits {
            let used = windows.get(&(limit.rule.clone(), uid)).map_or(0, |w| w.len());
            if used >= limit.per_minute as usize {
                let oldest = windows.get(&(limit.rule.clone(), uid)).and_then(|w| w.front().copied()).unwrap_or(now);
                let wait = Self::WINDOW.saturating_sub(now.duration_since(oldest)).as_secs() + 1;
                return Err(format!(
                    "uid {uid} reached the limit of {} mints per minute of rule \"{}\"; retry in {wait} s",
                    limit.per_minute, limit.rule
                ));
            }
        }
        for limit in limits {
            windows.entry((limit.rule.clone(), uid)).or_default().push_back(now);
        }
        Ok(())
    }
}

/// Releases a connection slot when the connection ends.
struct ConnSlot {
    daemon: Arc<Daemon>,
    uid: u32,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.daemon.conns.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

impl Daemon {
    pub fn new(policy: Policy, minter: MinterLink, scopes: ScopeCache, limits: ConnLimits) -> Self {
        Daemon {
            policy: RwLock::new(Arc::new(policy)),
            minter,
            scopes,
            rates: RateLimiter::default(),
            stats: Stats::default(),
            limits,
            conns: Mutex::new(ConnCount::default()),
            last_reload: Mutex::new("none".to_owned()),
        }
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let policy = self.policy();
        format!(
            "{} rules; {} tokens minted, {} refused; {} scopes; last reload: {}",
            policy.rules().len() + policy.deny_rules().len(),
            self.stats.minted.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.scopes.len(),
            self.last_reload.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    pub fn set_last_reload(&self, outcome: String) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
    }

    /// The policy in force now. A request keeps the snapshot it started
    /// with, so a reload never changes a decision half-way.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put a new policy in force for requests that start from now on.
    pub fn replace_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// A token for `key`: from the cached scope if there is one (warm),
    /// else from a new scope the minter creates (cold). Returns the token
    /// and whether it was cold.
    pub async fn mint(&self, key: ScopeKey) -> Result<(MintedToken, bool), MintError> {
        if let Some(result) = self.scopes.mint_warm(&key) {
            return result.map(|t| (t, false));
        }
        let scope = self.minter.create_scope(key).await?;
        let token = self.scopes.mint_first(&scope)?;
        self.scopes.insert(scope);
        Ok((token, true))
    }

    fn take_slot(self: &Arc<Self>, uid: u32) -> Result<ConnSlot, String> {
        let mut c = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.global {
            return Err(format!("the daemon is at its limit of {} connections; retry later", self.limits.global));
        }
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.limits.per_uid {
            return Err(format!("uid {uid} already holds {mine} connections, the per-uid limit; close some first"));
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_insert(0) += 1;
        Ok(ConnSlot { daemon: self.clone(), uid })
    }
}

/// Accept connections until `shutdown` turns true, then let in-flight
/// requests finish (bounded by [`SHUTDOWN_GRACE`]).
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::UnixListener,
    mut shutdown: watch::Receiver<bool>,
    exit_idle: Option<Duration>,
) {
    let mut tasks = JoinSet::new();
    let mut idle_since = tokio::time::Instant::now();
    loop {
        if !tasks.is_empty() {
            idle_since = tokio::time::Instant::now();
        }
        let idle_deadline = exit_idle.map(|d| idle_since + d);
        tokio::select! {
            // Socket activation: exit when idle; systemd keeps the socket
            // and starts us again on the next connection.
            _ = async { tokio::time::sleep_until(idle_deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if idle_deadline.is_some() && tasks.is_empty() => {
                tracing::info!("idle for {} s: exiting until the next connection", exit_idle.unwrap_or_default().as_secs());
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move { handle_connection(daemon, stream, shutdown).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("in-flight requests did not finish within {} s", SHUTDOWN_GRACE.as_secs());
    }
}

enum ReadError {
    Codec(CodecError),
    Timeout,
    Io,
}

/// Read one frame's payload; `Ok(None)` at a clean end (EOF between
/// frames, or shutdown while idle).
async fn read_frame(
    stream: &mut UnixStream,
    read_timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = tokio::select! {
        r = tokio::time::timeout(read_timeout, stream.read(&mut header)) => r,
        _ = shutdown.changed() => return Ok(None),
    };
    let got = match first {
        Err(_) => return Err(ReadError::Timeout),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(n)) => n,
        Ok(Err(_)) => return Err(ReadError::Io),
    };
    let deadline = tokio::time::Instant::now() + read_timeout;
    let rest = async {
        stream.read_exact(&mut header[got..]).await?;
        let len = match codec::payload_len(header) {
            Ok(len) => len,
            Err(e) => return Ok(Err(e)),
        };
        // Allocated only after the length passed the cap.
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(Ok(payload))
    };
    match tokio::time::timeout_at(deadline, rest).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(Err(_)) => Err(ReadError::Io),
        Ok(Ok(Err(e))) => Err(ReadError::Codec(e)),
        Ok(Ok(Ok(p))) => Ok(Some(p)),
    }
}

/// Send one response, with `fd` attached to its first byte.
async fn write_response(stream: &UnixStream, response: &Response, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = codec::encode_response(response).map_err(std::io::Error::other)?;
    let send = async {
        let mut sent = stream
            .async_io(Interest::WRITABLE, || {
                let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() {
                    control.push(SendAncillaryMessage::ScmRights(&fds));
                }
                rustix::net::sendmsg(
                    stream,
                    &[IoSlice::new(&bytes)],
                    &mut control,
                    SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
                )
                .map_err(std::io::Error::from)
            })
            .await?;
        while sent < bytes.len() {
            sent += stream
                .async_io(Interest::WRITABLE, || {
                    rustix::net::send(stream, &bytes[sent..], SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
                        .map_err(std::io::Error::from)
                })
                .await?;
        }
        Ok(())
    };
    tokio::time::timeout(WRITE_TIMEOUT, send)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client did not read its response")))
}

fn refusal(code: RefusalCode, message: impl Into<String>) -> Response {
    Response::Refused(Refusal::new(code, message))
}

async fn handle_connection(daemon: Arc<Daemon>, mut stream: UnixStream, mut shutdown: watch::Receiver<bool>) {
    let peer = match peer::identify(stream.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify peer; closing connection");
            return;
        }
    };
    let _slot = match daemon.take_slot(peer.creds.uid) {
        Ok(slot) => slot,
        Err(message) => {
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(&peer, &[], RefusalCode::Busy, &message);
            let _ = write_response(&stream, &refusal(RefusalCode::Busy, message), None).await;
            return;
        }
    };
    loop {
        let read_timeout = daemon.limits.read_timeout;
        let payload = match read_frame(&mut stream, read_timeout, &mut shutdown).await {
            Ok(Some(p)) => p,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Timeout) => {
                let msg = format!("no complete request within {} ms", read_timeout.as_millis());
                reject(&daemon, &peer, &stream, RefusalCode::Timeout, msg).await;
                return;
            }
            Err(ReadError::Codec(e)) => {
                // The frame boundary is lost: answer, then close.
                let code = match e {
                    CodecError::TooLarge { .. } => RefusalCode::FrameTooLarge,
                    _ => RefusalCode::Malformed,
                };
                reject(&daemon, &peer, &stream, code, e.to_string()).await;
                return;
            }
        };
        let request = match codec::decode_request(&payload) {
            Ok(r) => r,
            Err(e) => {
                let code = match e {
                    CodecError::UnsupportedVersion { .. } => RefusalCode::UnsupportedVersion,
                    _ => RefusalCode::Malformed,
                };
                // The frame was whole, so the connection stays usable.
                if !reject(&daemon, &peer, &stream, code, e.to_string()).await {
                    return;
                }
                continue;
            }
        };
        let ok = match request.body {
            RequestBody::Mint(req) => handle_mint(&daemon, &peer, &stream, &req).await,
            RequestBody::Query => handle_query(&daemon, &peer, &stream).await,
        };
        if !ok {
            return;
        }
    }
}

/// Explain what the policy gives the caller; nothing is minted.
async fn handle_query(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream) -> bool {
    let policy = daemon.policy();
    let eff = policy.effective(&peer.creds);
    let refusal = match peer_refusal(peer) {
        Some(r) => Some(r),
        None => match policy.decide(&peer.creds, &MintRequest::default()) {
            Decision::Refuse { code, message, .. } => Some(Refusal::new(code, message)),
            Decision::Grant { .. } => None,
        },
    };
    let explanation = Explanation {
        policy: policy.path().display().to_string(),
        grant: eff.grant,
        allowed_by: eff.allowed_by,
        denied_by: eff.denied_by,
        limits: eff.limits.into_iter().map(|l| (l.rule, l.per_minute)).collect(),
        refusal,
    };
    tracing::debug!(peer_uid = peer.creds.uid, "answered a policy query");
    write_response(stream, &Response::Explained(explanation), None).await.is_ok()
}

/// A refusal that follows from who the peer is, before any policy rule.
fn peer_refusal(peer: &PeerIdentity) -> Option<Refusal> {
    match peer.userns {
        PeerUserns::Ours => None,
        PeerUserns::Unknown => Some(Refusal::new(
            RefusalCode::UnsupportedPeer,
            format!(
                "cannot tell which user namespace uid {} is calling from (did the process exit?); \
                 refusing rather than minting a token that may not work there",
                peer.creds.uid
            ),
        )),
        PeerUserns::Nested { owner_uid } => Some(Refusal::new(
            RefusalCode::UnsupportedPeer,
            format!(
                "uid {} is calling from inside a user namespace owned by uid {owner_uid} (a rootless \
                 container or `unshare -U`); a token bound to uid {} would not work there, and \
                 container mode is not supported yet",
                peer.creds.uid, peer.creds.uid
            ),
        )),
    }
}

/// Refuse and audit; false if the client is gone.
async fn reject(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, code: RefusalCode, message: String) -> bool {
    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
    audit::refused(peer, &[], code, &message);
    write_response(stream, &refusal(code, message), None).await.is_ok()
}

/// Decide, mint, deliver. False if the client is gone.
async fn handle_mint(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, req: &MintRequest) -> bool {
    if let Some(r) = peer_refusal(peer) {
        daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
        audit::refused(peer, &[], r.code, &r.message);
        return write_response(stream, &Response::Refused(r), None).await.is_ok();
    }
    let policy = daemon.policy();
    let (delegation, rules) = match policy.decide(&peer.creds, req) {
        Decision::Refuse { code, message, rules } => {
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(peer, &rules, code, &message);
            return write_response(stream, &refusal(code, message), None).await.is_ok();
        }
        Decision::Grant { delegation, rules, limits } => {
            if let Err(message) = daemon.rates.admit(peer.creds.uid, &limits) {
                daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                audit::refused(peer, &rules, RefusalCode::RateLimited, &message);
                return write_response(stream, &refusal(RefusalCode::RateLimited, message), None).await.is_ok();
            }
            (delegation, rules)
        }
    };
    let key = ScopeKey { owner_uid: peer.creds.uid, owner_gid: peer.creds.gid, delegation };
    let (token, cold) = match daemon.mint(key).await {
        Ok(m) => m,
        Err(e) => {
            let message = format!("minting failed: {e}");
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(peer, &rules, RefusalCode::MintFailed, &message);
            return write_response(stream, &refusal(RefusalCode::MintFailed, message), None).await.is_ok();
        }
    };
    let response = Response::Minted(Minted { granted: delegation, rules: rules.clone(), fds: vec![FdRole::Token] });
    let delivered = write_response(stream, &response, Some(token.as_fd())).await;
    // Our copy of the token closes here whatever happened.
    drop(token);
    match delivered {
        Ok(()) => {
            daemon.stats.minted.fetch_add(1, Ordering::Relaxed);
            audit::granted(peer, &rules, &delegation, cold);
            true
        }
        Err(e) => {
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(
                peer,
                &rules,
                RefusalCode::MintFailed,
                &format!("client went away before taking its token: {e}"),
            );
            false
        }
    }
}
