//! Accepting clients and answering their requests.

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bpftoken_policy::{Binding, Decision, LiveLimit, Policy, RateLimit, Ttl};
use bpftoken_proto::codec::{self, CodecError};
use bpftoken_proto::message::{FdRole, RequestBody};
use bpftoken_proto::{
    Enforcement, Explanation, LeaseInfo, LeaseMode, LeaseRequest, MintMode, MintRequest, Minted, ProgramRequest,
    Refusal, RefusalCode, Response, RevokeTarget,
};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::audit;
use crate::cache::ScopeCache;
use crate::enforcer::{Enforcer, Persistence, Unavailable};
use crate::lease::{LeaseTable, NewBinding, NewLease};
use crate::live::{Admitted, LiveError, LiveTokens};
use crate::minter::pool::MinterPool;
use crate::minter::{MintError, Scope, ScopeKey, ScopeOwner};
use crate::peer::{self, Needs, PeerIdentity, PeerUserns};
use crate::sys::{MintedToken, TaskTracker};

mod frame;

use frame::{read_frame, Inbox, ReadError, MAX_REQUEST_FDS};

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
    pub minter: MinterPool,
    pub scopes: ScopeCache,
    rates: RateLimiter,
    pub stats: Stats,
    limits: ConnLimits,
    conns: Mutex<ConnCount>,
    last_reload: Mutex<String>,
    /// The BPF LSM enforcer, or why it does not run.
    enforcer: Result<Enforcer, Unavailable>,
    /// Every grant's lease.
    pub leases: LeaseTable,
    /// Live tokens per uid, for `max_live_tokens`.
    live: LiveTokens,
    /// Learning leases (`bpftoken learn`) not yet ended: lease id -> (owner
    /// uid, scope inode), whose `learning` entry the enforcer fills in.
    learning: Mutex<HashMap<u64, (u32, u32)>>,
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
    pub fn new(
        policy: Policy,
        minter: MinterPool,
        scopes: ScopeCache,
        limits: ConnLimits,
        enforcer: Result<Enforcer, Unavailable>,
    ) -> Self {
        let daemon = Daemon {
            policy: RwLock::new(Arc::new(policy)),
            minter,
            scopes,
            rates: RateLimiter::default(),
            stats: Stats::default(),
            limits,
            conns: Mutex::new(ConnCount::default()),
            last_reload: Mutex::new("none".to_owned()),
            enforcer,
            leases: LeaseTable::default(),
            live: LiveTokens::default(),
            learning: Mutex::new(HashMap::new()),
        };
        daemon.adopt_leases();
        daemon
    }

    /// Carry on with the leases of an enforcer an earlier daemon pinned:
    /// the lease table, the scopes counted for `max_live_tokens`, and the
    /// learning leases (whose `learning` entries are still being filled).
    fn adopt_leases(&self) {
        let Ok(enforcer) = &self.enforcer else { return };
        let found = self.leases.adopt(enforcer);
        for adopted in &found {
            let lease = &adopted.info;
            let Ok(scope) = u32::try_from(lease.scope) else { continue };
            // The scope's owner, as `remember_scope` counts it.
            self.live.remember(adopted.scope_uid, scope);
            let learning = lease.whole_scope && enforcer.learned(scope).is_ok_and(|l| l.is_some());
            if learning {
                self.learning.lock().unwrap_or_else(|p| p.into_inner()).insert(lease.id, (lease.uid, scope));
            }
        }
        if !found.is_empty() {
            let ids: Vec<String> = found.iter().map(|l| l.info.id.to_string()).collect();
            tracing::info!(leases = %ids.join(","), "adopted {} lease(s) from the pinned enforcer", found.len());
        }
    }

    /// Count `scope`'s tokens as its owner's from now on (for
    /// `max_live_tokens`; needs the enforcer, which names scopes).
    fn remember_scope(&self, scope: &Scope) {
        if self.enforcer.is_ok() {
            match scope.inum() {
                Ok(inum) => self.live.remember(scope.key.owner_uid(), inum),
                Err(e) => tracing::warn!(error = %e, "cannot name a new scope for live-token counts"),
            }
        }
    }

    /// The enforcer, if it runs.
    pub fn enforcer(&self) -> Option<&Enforcer> {
        self.enforcer.as_ref().ok()
    }

    fn tracker(&self) -> Option<&dyn TaskTracker> {
        self.enforcer().map(|e| e as &dyn TaskTracker)
    }

    /// Why the enforcer does not run (`None`: it runs).
    pub fn enforcement_unavailable(&self) -> Option<String> {
        self.enforcer.as_ref().err().map(ToString::to_string)
    }

    /// Enforced leases still alive (0 without the enforcer).
    pub fn enforced_leases(&self) -> usize {
        self.enforcer.as_ref().map_or(0, |e| self.leases.enforced(e))
    }

    /// Whether leases can be enforced here, as the wire reports it.
    pub fn enforcement(&self) -> Enforcement {
        crate::enforcer::state(&self.enforcer)
    }

    /// The enforcer state for STATUS=: with the live tokens it counts,
    /// and, where it is not pinned, that it ends with the daemon and why.
    fn enforcement_status(&self) -> String {
        match &self.enforcer {
            Ok(e) => {
                let live = match e.live_tokens() {
                    Ok(n) => format!("{n} live tokens"),
                    Err(err) => format!("cannot count live tokens: {err}"),
                };
                let state = match e.persistence() {
                    Persistence::Pinned { .. } => format!("enforcing ({live})"),
                    Persistence::UntilStop(why) => {
                        format!("enforcing ({live}), but enforcement ends when the daemon stops: {why}")
                    }
                };
                let others: Vec<String> = e.other_builds().iter().map(ToString::to_string).collect();
                if others.is_empty() {
                    state
                } else {
                    format!("{state}; {}", others.join("; "))
                }
            }
            Err(why) => format!("unavailable: {why}"),
        }
    }

    /// Whether enforcement outlives the daemon (its enforcer is pinned,
    /// and the pin directory is still the one pinned).
    pub fn enforcement_persists(&self) -> bool {
        self.enforcer().is_some_and(Enforcer::pins_intact)
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let policy = self.policy();
        format!(
            "{} rules; {} tokens minted, {} refused; {} scopes; last reload: {}; enforcement: {}",
            policy.rules().len() + policy.deny_rules().len(),
            self.stats.minted.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.scopes.len(),
            self.last_reload.lock().unwrap_or_else(|p| p.into_inner()),
            self.enforcement_status()
        )
    }

    pub fn set_last_reload(&self, outcome: String) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
    }

    /// Whether no client is connected.
    pub fn no_connections(&self) -> bool {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).total == 0
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
    /// else from a new scope the minter creates (cold; `target` is the
    /// namespace of a [`ScopeOwner::Userns`] key). Returns the token, its
    /// scope and whether it was cold. An `exclusive` scope is always new
    /// and never cached: a lease that covers a whole scope (libbpf mode)
    /// gets one of its own, so revoking it touches no other grant.
    pub async fn mint(
        &self,
        key: ScopeKey,
        target: Option<BorrowedFd<'_>>,
        exclusive: bool,
    ) -> Result<(MintedToken, Arc<Scope>, bool), MintError> {
        if !exclusive {
            if let Some(result) = self.scopes.mint_warm(&key, self.tracker()).await {
                return result.map(|(t, scope)| (t, scope, false));
            }
        }
        let scope = Arc::new(self.minter.create_scope(key, target).await?);
        self.remember_scope(&scope);
        let token = self.scopes.mint_first(&scope, self.tracker()).await?;
        if !exclusive {
            self.scopes.insert(scope.clone());
        }
        Ok((token, scope, true))
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
    // Per-request identity: each request's bytes carry a pidfd of the
    // process that sent them (peer.rs).
    if let Err(e) = crate::sys::pass_sender_pidfds(listener.as_fd()) {
        tracing::warn!(error = %e, "cannot ask for senders' pidfds (SO_PASSPIDFD): executables and cgroups of callers \
                                    will be unknown and match no rule");
    }
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
                // Still needed where the enforcer is not pinned (no bpffs,
                // or pinning failed): its programs then live as long as we
                // do, and exiting would let expired, revoked or bound
                // tokens work again. Pinned (and the pin directory still
                // the one pinned), they stay in the kernel and the next
                // start adopts them, so exiting is safe.
                let enforced = if daemon.enforcement_persists() { 0 } else { daemon.enforced_leases() };
                if enforced > 0 {
                    tracing::info!(enforced, "idle, but staying: enforced leases are alive");
                    idle_since = tokio::time::Instant::now();
                    continue;
                }
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

tokio::task_local! {
    /// Whether this connection's task sent an answer that carried fds and
    /// that its peer may not have read yet.
    static FDS_UNREAD: std::cell::Cell<bool>;
}

/// Send one response, with `fds` attached to its first byte.
async fn write_response(stream: &UnixStream, response: &Response, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if !fds.is_empty() {
        // (Outside a connection's task there is nothing to note.)
        let _ = FDS_UNREAD.try_with(|unread| unread.set(true));
    }
    let bytes = codec::encode_response(response).map_err(std::io::Error::other)?;
    let send = async {
        let mut sent = stream
            .async_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(std::io::Error::other("too many fds for one response"));
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

async fn handle_connection(daemon: Arc<Daemon>, stream: UnixStream, shutdown: watch::Receiver<bool>) {
    FDS_UNREAD.scope(std::cell::Cell::new(false), serve_connection(daemon, stream, shutdown)).await;
}

async fn serve_connection(daemon: Arc<Daemon>, stream: UnixStream, mut shutdown: watch::Receiver<bool>) {
    let connected = match peer::identify(stream.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify peer; closing connection");
            return;
        }
    };
    let _slot = match daemon.take_slot(connected.creds.uid) {
        Ok(slot) => slot,
        Err(message) => {
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(&connected, &[], RefusalCode::Busy, &message);
            let _ = write_response(&stream, &refusal(RefusalCode::Busy, message), &[]).await;
            return;
        }
    };
    let mut inbox = Inbox::default();
    loop {
        let read_timeout = daemon.limits.read_timeout;
        let frame = match read_frame(&stream, &mut inbox, read_timeout, &mut shutdown).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Timeout) => {
                let msg = format!("no complete request within {} ms", read_timeout.as_millis());
                reject(&daemon, &connected, &stream, RefusalCode::Timeout, msg).await;
                return;
            }
            Err(ReadError::Codec(e)) => {
                // The frame boundary is lost: answer, then close.
                let code = match e {
                    CodecError::TooLarge { .. } => RefusalCode::FrameTooLarge,
                    _ => RefusalCode::Malformed,
                };
                reject(&daemon, &connected, &stream, code, e.to_string()).await;
                return;
            }
        };
        // Who sent this request: pid-based facts are the sender's, read
        // only where a rule looks at them.
        let needs = {
            let policy = daemon.policy();
            Needs { exe: policy.reads_executable(), cgroup: policy.reads_cgroup() }
        };
        let mut peer = connected.for_request(frame.sender.as_ref(), needs);
        drop(frame.sender);
        let request = match codec::decode_request(&frame.payload) {
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
        let expected = request.body.fds_expected();
        if frame.fds_truncated || frame.fds.len() != expected {
            let got =
                if frame.fds_truncated { format!("more than {MAX_REQUEST_FDS}") } else { frame.fds.len().to_string() };
            let msg =
                format!("a {} request carries {expected} fd(s), this one carried {got}", request_name(&request.body));
            // The fds close here; the frame was whole, so go on.
            drop(frame.fds);
            if !reject(&daemon, &peer, &stream, RefusalCode::Malformed, msg).await {
                return;
            }
            continue;
        }
        let mut fds = frame.fds;
        // At most one answer that may carry fds unread per connection: a
        // client that asks for tokens without reading the answers would
        // pile them up in its socket, kernel memory nothing else bounds.
        // (Requests whose answers carry none may still come back to back.)
        if answer_may_carry_fds(&request.body) && FDS_UNREAD.with(std::cell::Cell::get) {
            if crate::sys::unread_by_peer(stream.as_fd()).map_or(true, |n| n > 0) {
                drop(fds);
                let msg = "the answer to an earlier request on this connection, which may carry fds, is still unread; \
                           read it before asking for more"
                    .to_owned();
                if !reject(&daemon, &peer, &stream, RefusalCode::Busy, msg).await {
                    return;
                }
                continue;
            }
            FDS_UNREAD.with(|unread| unread.set(false));
        }
        let plain = |request| Asked { request, ttl: None, leased: false, learn: false };
        let ok = match request.body {
            RequestBody::Mint(req) => handle_mint(&daemon, &peer, &stream, &plain(req), Mode::Token).await,
            RequestBody::MintScope(req) => handle_mint(&daemon, &peer, &stream, &plain(req), Mode::Scope).await,
            RequestBody::DelegateMount(req) => match fds.pop() {
                Some(ns) => handle_delegate(&daemon, &peer, &stream, &plain(req), ns).await,
                None => false,
            },
            RequestBody::MintLease(LeaseRequest { mode, request, ttl }) => {
                let asked = Asked { request, ttl, leased: true, learn: false };
                match (ttl, mode) {
                    (Some(t), _) if !(1..=bpftoken_policy::MAX_TTL_SECS).contains(&t) => {
                        let msg = format!(
                            "a lease of {t} s was asked for; a ttl is 1 to {} s",
                            bpftoken_policy::MAX_TTL_SECS
                        );
                        reject(&daemon, &peer, &stream, RefusalCode::Malformed, msg).await
                    }
                    (_, MintMode::Token) => handle_mint(&daemon, &peer, &stream, &asked, Mode::Token).await,
                    (_, MintMode::Scope) => handle_mint(&daemon, &peer, &stream, &asked, Mode::Scope).await,
                    (_, MintMode::DelegateMount) => match fds.pop() {
                        Some(ns) => handle_delegate(&daemon, &peer, &stream, &asked, ns).await,
                        None => false,
                    },
                }
            }
            RequestBody::Query => handle_query(&daemon, &peer, &stream, false).await,
            RequestBody::QueryEnforcement => handle_query(&daemon, &peer, &stream, true).await,
            RequestBody::Leases => handle_leases(&daemon, &peer, &stream).await,
            RequestBody::Revoke(target) => handle_revoke(&daemon, &peer, &stream, target).await,
            RequestBody::Learn(request) => {
                let asked = Asked { request, ttl: None, leased: true, learn: true };
                match learning_peer_refusal(&peer) {
                    Some(r) => reject(&daemon, &peer, &stream, r.code, r.message).await,
                    None => handle_mint(&daemon, &peer, &stream, &asked, Mode::Scope).await,
                }
            }
            RequestBody::Learned(id) => handle_learned(&daemon, &peer, &stream, id).await,
            RequestBody::MintForProgram(ProgramRequest { lease: LeaseRequest { mode, request, ttl }, program }) => {
                let asked = Asked { request, ttl, leased: true, learn: false };
                match for_program(&daemon, &mut peer, &program) {
                    Err(r) => reject(&daemon, &peer, &stream, r.code, r.message).await,
                    Ok(()) => match (ttl, mode) {
                        (Some(t), _) if !(1..=bpftoken_policy::MAX_TTL_SECS).contains(&t) => {
                            let msg = format!(
                                "a lease of {t} s was asked for; a ttl is 1 to {} s",
                                bpftoken_policy::MAX_TTL_SECS
                            );
                            reject(&daemon, &peer, &stream, RefusalCode::Malformed, msg).await
                        }
                        (_, MintMode::Token) => handle_mint(&daemon, &peer, &stream, &asked, Mode::Token).await,
                        (_, MintMode::Scope) => handle_mint(&daemon, &peer, &stream, &asked, Mode::Scope).await,
                        (_, MintMode::DelegateMount) => match fds.pop() {
                            Some(ns) => handle_delegate(&daemon, &peer, &stream, &asked, ns).await,
                            None => false,
                        },
                    },
                }
            }
        };
        if !ok {
            return;
        }
    }
}

/// Take the program a [`RequestBody::MintForProgram`] names as the
/// caller's executable, where the enforcer can bind the grant to it;
/// without the enforcer the caller's word is not taken and its own
/// executable stays what `executables` rules see. Refused: a path that is
/// not absolute, too long, or no file on the host.
fn for_program(daemon: &Daemon, peer: &mut PeerIdentity, program: &str) -> Result<(), Refusal> {
    if program.len() > bpftoken_proto::message::MAX_PROGRAM_PATH {
        return Err(Refusal::new(
            RefusalCode::Malformed,
            format!("a program path is at most {} bytes", bpftoken_proto::message::MAX_PROGRAM_PATH),
        ));
    }
    if daemon.enforcer().is_none() || !daemon.policy().reads_executable() {
        return Ok(());
    }
    peer.with_program(program).map_err(|e| Refusal::new(RefusalCode::BadProgram, e.to_string()))
}

/// Explain what the policy gives the caller; nothing is minted.
/// With `enforcement`, the answer also says whether leases are enforced.
async fn handle_query(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, enforcement: bool) -> bool {
    let policy = daemon.policy();
    let eff = policy.effective(&peer.creds);
    let refusal = match peer_refusal(peer) {
        Some(r) => Some(r),
        None => match policy.decide(&peer.creds, &MintRequest::default()) {
            Decision::Refuse { code, message, .. } => Some(Refusal::new(code, message)),
            Decision::Grant { ttl, bind, .. } => lease_refusal(daemon, &policy, ttl.as_ref(), None)
                .err()
                .or_else(|| binding(daemon, &policy, peer, &bind).err()),
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
    let other_builds = if enforcement { daemon.enforcer().map(Enforcer::other_builds) } else { None };
    let other_builds = other_builds.unwrap_or_default();
    let response = if enforcement && !other_builds.is_empty() {
        Response::ExplainedEnforcementWithOtherBuilds { explanation, enforcement: daemon.enforcement(), other_builds }
    } else if enforcement {
        Response::ExplainedEnforcement { explanation, enforcement: daemon.enforcement() }
    } else {
        Response::Explained(explanation)
    };
    write_response(stream, &response, &[]).await.is_ok()
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
        // Container mode: minted in the peer's own namespace, and only
        // rules with `userns_owners` match such a peer.
        PeerUserns::Nested { .. } => None,
    }
}

/// Why a caller may not learn whoever it is: learning is offered only to
/// callers in the daemon's own user namespace.
fn learning_peer_refusal(peer: &PeerIdentity) -> Option<Refusal> {
    match peer.userns {
        PeerUserns::Ours => None,
        PeerUserns::Unknown => peer_refusal(peer),
        PeerUserns::Nested { owner_uid, .. } => Some(Refusal::new(
            RefusalCode::UnsupportedPeer,
            format!(
                "learning is not offered to callers inside a user namespace: uid {} calls from one owned by uid \
                 {owner_uid}, such as a rootless container, whose tokens all share that namespace; a learning \
                 lease records what the tokens of a user namespace and bpffs made for it alone are used for, so \
                 run `bpftoken learn` outside the container (in the host's user namespace)",
                peer.creds.uid
            ),
        )),
    }
}

/// Refuse and audit; false if the client is gone.
async fn reject(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, code: RefusalCode, message: String) -> bool {
    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
    audit::refused(peer, &[], code, &message);
    write_response(stream, &refusal(code, message), &[]).await.is_ok()
}

/// Whether the answer to `body` may carry fds (tokens, scopes, mounts).
fn answer_may_carry_fds(body: &RequestBody) -> bool {
    match body {
        RequestBody::Mint(_)
        | RequestBody::MintScope(_)
        | RequestBody::DelegateMount(_)
        | RequestBody::MintLease(_)
        | RequestBody::Learn(_) => true,
        RequestBody::MintForProgram(_) => true,
        RequestBody::Query
        | RequestBody::QueryEnforcement
        | RequestBody::Leases
        | RequestBody::Revoke(_)
        | RequestBody::Learned(_) => false,
    }
}

fn request_name(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Mint(_) => "mint",
        RequestBody::MintScope(_) => "mint-scope",
        RequestBody::DelegateMount(_) => "delegate-mount",
        RequestBody::Query => "query",
        RequestBody::QueryEnforcement => "query-enforcement",
        RequestBody::MintLease(_) => "mint-lease",
        RequestBody::Leases => "leases",
        RequestBody::Revoke(_) => "revoke",
        RequestBody::Learn(_) => "learn",
        RequestBody::Learned(_) => "learned",
        RequestBody::MintForProgram(_) => "mint-for-program",
    }
}

/// A grant request as it arrived: the masks, the lease asked for, and
/// whether the answer names the lease ([`Response::Leased`]; the older
/// requests get [`Response::Minted`]).
struct Asked {
    request: MintRequest,
    ttl: Option<u32>,
    leased: bool,
    /// A learning lease (`bpftoken learn`): decided under the `learn =
    /// true` rules only, and needs the enforcer.
    learn: bool,
}

/// The caller's leases (root: all of them).
async fn handle_leases(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream) -> bool {
    let uid = peer.creds.uid;
    let leases = daemon.leases.list(daemon.enforcer(), (uid != 0).then_some(uid));
    tracing::debug!(peer_uid = uid, leases = leases.len(), "listed leases");
    write_response(stream, &Response::Leases(leases), &[]).await.is_ok()
}

/// Revoke leases: one event per lease revoked, a typed refusal otherwise.
async fn handle_revoke(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, target: RevokeTarget) -> bool {
    let enforcer = daemon.enforcer.as_ref().map_err(ToString::to_string);
    match daemon.leases.revoke(enforcer, peer.creds.uid, target) {
        Ok(revoked) => {
            for lease in &revoked {
                audit::revoked(peer, lease);
            }
            let other_builds = revoke_other_builds(daemon, peer, target);
            let response = if other_builds.is_empty() {
                Response::Revoked(revoked)
            } else {
                Response::RevokedWithOtherBuilds { revoked, other_builds }
            };
            write_response(stream, &response, &[]).await.is_ok()
        }
        Err(r) => reject(daemon, peer, stream, r.code, r.message).await,
    }
}

/// A uid's or every lease in the pinned enforcers of other builds (the
/// caller may revoke `target`: checked already).
fn revoke_other_builds(daemon: &Daemon, peer: &PeerIdentity, target: RevokeTarget) -> Vec<bpftoken_proto::OtherBuild> {
    let whose = match target {
        RevokeTarget::Uid(uid) => crate::others::Whose::Uid(uid),
        RevokeTarget::All => crate::others::Whose::All,
        RevokeTarget::Lease(_) => return Vec::new(),
    };
    let done = daemon.enforcer().map(|e| e.revoke_other_builds(whose)).unwrap_or_default();
    for set in &done {
        tracing::info!(target: "bpftokend::audit", decision = "revoked", peer_uid = peer.creds.uid, "{set}");
    }
    done
}

/// What a mint hands out besides the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The token alone.
    Token,
    /// libbpf mode: the token, its user namespace and its bpffs root.
    Scope,
}

/// The refusal for a policy decision, with a hint for container peers,
/// whom only `userns_owners` rules match.
fn policy_refusal(peer: &PeerIdentity, code: RefusalCode, message: String) -> (RefusalCode, String) {
    match (code, peer.userns) {
        (RefusalCode::NotInPolicy, PeerUserns::Nested { owner_uid, .. }) => (
            code,
            format!(
                "{message} (uid {} calls from a user namespace owned by uid {owner_uid}, such as a rootless \
                 container; only rules with `userns_owners` match there)",
                peer.creds.uid
            ),
        ),
        _ => (code, message),
    }
}

/// Decide for `req` and count it against the rate limits: the grant and
/// the rules behind it, or the refusal already sent (false if the client
/// is gone).
async fn decide<'a>(
    daemon: &'a Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    asked: &Asked,
) -> Result<Grant<'a>, bool> {
    let req = &asked.request;
    if let Some(r) = peer_refusal(peer) {
        daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
        audit::refused(peer, &[], r.code, &r.message);
        return Err(write_response(stream, &Response::Refused(r), &[]).await.is_ok());
    }
    let policy = daemon.policy();
    let decision = if asked.learn { policy.decide_learning(&peer.creds, req) } else { policy.decide(&peer.creds, req) };
    match decision {
        Decision::Refuse { code, message, rules } => {
            let (code, message) = policy_refusal(peer, code, message);
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(peer, &rules, code, &message);
            Err(write_response(stream, &refusal(code, message), &[]).await.is_ok())
        }
        Decision::Grant { delegation, rules, limits, ttl, live_limit, bind } => {
            if let (true, Err(why)) = (asked.learn, &daemon.enforcer) {
                // Whatever require_enforcement says: without the enforcer
                // nothing records what CMD uses.
                let message = format!(
                    "learning needs the enforcer, which records what the command uses: enforcement is \
                     unavailable: {why}"
                );
                daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                audit::refused(peer, &rules, RefusalCode::LearningUnavailable, &message);
                return Err(write_response(stream, &refusal(RefusalCode::LearningUnavailable, message), &[])
                    .await
                    .is_ok());
            }
            let enforced = match lease_refusal(daemon, &policy, ttl.as_ref(), asked.ttl) {
                Ok(enforced) => enforced,
                Err(r) => {
                    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                    audit::refused(peer, &rules, r.code, &r.message);
                    return Err(write_response(stream, &Response::Refused(r), &[]).await.is_ok());
                }
            };
            let (bind, bind_enforced, identity) = match binding(daemon, &policy, peer, &bind) {
                Ok(b) => b,
                Err(r) => {
                    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                    audit::refused(peer, &rules, r.code, &r.message);
                    return Err(write_response(stream, &Response::Refused(r), &[]).await.is_ok());
                }
            };
            let (admitted, live_enforced) = match live_admission(daemon, &policy, peer.creds.uid, live_limit.as_ref()) {
                Ok(a) => a,
                Err(r) => {
                    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                    audit::refused(peer, &rules, r.code, &r.message);
                    return Err(write_response(stream, &Response::Refused(r), &[]).await.is_ok());
                }
            };
            // Not enforced if any limit is not.
            let both = |x: Option<bool>, y: Option<bool>| match (x, y) {
                (None, e) | (e, None) => e,
                (Some(a), Some(b)) => Some(a && b),
            };
            let enforced = both(both(enforced, live_enforced), bind_enforced);
            if let Err(message) = daemon.rates.admit(peer.creds.uid, &limits) {
                daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
                audit::refused(peer, &rules, RefusalCode::RateLimited, &message);
                return Err(write_response(stream, &refusal(RefusalCode::RateLimited, message), &[]).await.is_ok());
            }
            // The shorter of the policy's ttl and the one asked for.
            let secs = match (ttl.map(|t| t.secs), asked.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let ttl = secs.map(|s| Duration::from_secs(u64::from(s)));
            Ok(Grant { delegation, rules, enforced, ttl, bind, identity, learn: asked.learn, _admitted: admitted })
        }
    }
}

/// Whether one more token fits under `limit` (`max_live_tokens`): the
/// admission to hold until the token is delivered, and whether the limit
/// is enforced (`None` without a limit), or the refusal.
fn live_admission<'a>(
    daemon: &'a Daemon,
    policy: &Policy,
    uid: u32,
    limit: Option<&LiveLimit>,
) -> Result<(Option<Admitted<'a>>, Option<bool>), Refusal> {
    let Some(limit) = limit else { return Ok((None, None)) };
    let why = match &daemon.enforcer {
        Ok(enforcer) => match daemon.live.admit(uid, limit.max, enforcer, &daemon.scopes) {
            Ok(admitted) => return Ok((Some(admitted), Some(true))),
            Err(LiveError::AtLimit { uid, live }) => {
                return Err(Refusal::new(
                    RefusalCode::TooManyTokens,
                    format!(
                        "uid {uid} holds {live} live tokens, and rule \"{}\" allows at most {} at once; close some \
                         first",
                        limit.rule, limit.max
                    ),
                ))
            }
            Err(e @ LiveError::Count(_)) => e.to_string(),
        },
        Err(why) => format!("enforcement is unavailable: {why}"),
    };
    if !policy.require_enforcement() {
        return Ok((None, Some(false)));
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!(
            "rule \"{}\" allows at most {} live tokens per uid, which this daemon cannot count: {why}; {} \
             requires enforcement (require_enforcement = true)",
            limit.rule,
            limit.max,
            policy.path().display()
        ),
    ))
}

/// What [`decide`] grants.
struct Grant<'a> {
    delegation: bpftoken_proto::Delegation,
    rules: Vec<String>,
    /// For the audit event: `None` when no rule sets a `ttl` or
    /// `max_live_tokens`, else whether they are enforced.
    enforced: Option<bool>,
    /// How long the lease lasts: the shortest matching `ttl`, or less if
    /// the request asked for less.
    ttl: Option<Duration>,
    /// Who may use the tokens (policy `bind`, `executables`, `cgroups`).
    bind: NewBinding,
    /// How the program and cgroup matched on stand (for the audit event).
    identity: Identity,
    /// A learning lease.
    learn: bool,
    /// Counted against `max_live_tokens` until dropped (after delivery).
    _admitted: Option<Admitted<'a>>,
}

/// Whether a grant bounded by the policy's `ttl` or by the `asked` one may
/// be minted: `Ok(None)` without either, `Ok(Some(true))` where the
/// enforcer expires leases, `Ok(Some(false))` when it cannot but the
/// policy allows that, or the refusal. A ttl the caller asked for itself
/// is never silently dropped: without enforcement it is refused whatever
/// `require_enforcement` says.
fn lease_refusal(
    daemon: &Daemon,
    policy: &Policy,
    ttl: Option<&Ttl>,
    asked: Option<u32>,
) -> Result<Option<bool>, Refusal> {
    if ttl.is_none() && asked.is_none() {
        return Ok(None);
    }
    let why = match &daemon.enforcer {
        Ok(_) => return Ok(Some(true)),
        Err(why) => format!("enforcement is unavailable: {why}"),
    };
    if let Some(asked) = asked {
        return Err(Refusal::new(
            RefusalCode::NotEnforceable,
            format!("you asked for a lease of {asked} s, which this daemon cannot enforce: {why}"),
        ));
    }
    let Some(ttl) = ttl else { return Ok(None) };
    if !policy.require_enforcement() {
        return Ok(Some(false));
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!(
            "rule \"{}\" limits tokens to {} s (ttl), which this daemon cannot enforce: {why}; {} requires \
             enforcement (require_enforcement = true)",
            ttl.rule,
            ttl.secs,
            policy.path().display()
        ),
    ))
}

/// How a grant under `executables`/`cgroups` rules stands to the
/// identity they matched on (for the audit event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// No matching rule looks at the caller's executable or cgroup.
    Unchecked,
    /// The enforcer binds the tokens to the program and cgroup matched.
    Enforced,
    /// Matched from /proc only (`enforce_identity = false`, no enforcer):
    /// any program of the uid could have asked.
    Claimed,
}

impl Identity {
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Unchecked => "-",
            Identity::Enforced => "enforced",
            Identity::Claimed => "claimed",
        }
    }
}

/// The binding a grant carries (policy `bind`, and the program and cgroup
/// `executables` and `cgroups` rules matched on), whether it is enforced
/// (`None` without one) and how the identity stands; or the refusal.
/// Where the enforcer cannot bind: `bind` follows `require_enforcement`,
/// as `ttl` does; `executables`/`cgroups` rules grant unbound only when
/// they say `enforce_identity = false` (the policy would not have loaded
/// otherwise), as claimed.
fn binding(
    daemon: &Daemon,
    policy: &Policy,
    peer: &PeerIdentity,
    bind: &Binding,
) -> Result<(NewBinding, Option<bool>, Identity), Refusal> {
    if bind.is_empty() {
        return Ok((NewBinding::default(), None, Identity::Unchecked));
    }
    let identity_rules = bind.exe.is_some() || bind.identity_cgroup.is_some();
    let mut out = NewBinding::default();
    if bind.uid.is_some() {
        out.kernel.uid = Some(peer.creds.uid);
    }
    if bind.binds_cgroup() {
        out.cgroup_path = peer.creds.cgroup.clone();
    }
    let why = match &daemon.enforcer {
        Err(why) => format!("enforcement is unavailable: {why}"),
        Ok(_) => {
            let exe = match (&bind.exe, peer.exe_id) {
                (None, _) => Ok(None),
                (Some(_), Some(id)) => Ok(Some(id)),
                // A rule matched on the path, so the file was known.
                (Some(_), None) => Err("the matched executable's file identity is unknown".to_owned()),
            };
            let cgroup = if bind.binds_cgroup() {
                crate::cgroup::id_of(peer.creds.cgroup.as_deref()).map(Some).map_err(|e| e.to_string())
            } else {
                Ok(None)
            };
            match (exe, cgroup) {
                (Ok(exe), Ok(cgroup)) => {
                    out.kernel.exe = exe;
                    out.kernel.cgroup = cgroup;
                    let identity = if identity_rules { Identity::Enforced } else { Identity::Unchecked };
                    return Ok((out, Some(true), identity));
                }
                (Err(e), _) | (_, Err(e)) => e,
            }
        }
    };
    let explicit = bind.uid.is_some() || bind.cgroup.is_some();
    let identity_ok = !identity_rules || (bind.identity_advisory && daemon.enforcer.is_err());
    if identity_ok && (!explicit || !policy.require_enforcement()) {
        let identity = if identity_rules { Identity::Claimed } else { Identity::Unchecked };
        // Not enforced: nothing is written for the kernel to check.
        return Ok((out, Some(false), identity));
    }
    let mut what = Vec::new();
    if let Some(rule) = &bind.uid {
        what.push(format!("to their owner uid (rule \"{rule}\")"));
    }
    if let Some(rule) = &bind.cgroup {
        what.push(format!("to the cgroup they are minted from (rule \"{rule}\")"));
    }
    if !identity_ok {
        if let Some(rule) = &bind.exe {
            what.push(format!("to the program they were matched on (rule \"{rule}\", executables)"));
        }
        if let Some(rule) = &bind.identity_cgroup {
            what.push(format!("to the cgroup they were matched in (rule \"{rule}\", cgroups)"));
        }
    }
    let needs = if explicit && identity_ok {
        format!("; {} requires enforcement (require_enforcement = true)", policy.path().display())
    } else {
        String::new()
    };
    if explicit {
        // Which of them the policy's `bind` asked for.
        let n = usize::from(bind.uid.is_some()) + usize::from(bind.cgroup.is_some());
        what[n - 1].push_str(" (bind)");
    }
    Err(Refusal::new(
        RefusalCode::NotEnforceable,
        format!("binding tokens {} cannot be enforced by this daemon: {why}{needs}", what.join(" and ")),
    ))
}

/// Decide, mint, deliver. False if the client is gone.
async fn handle_mint(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, asked: &Asked, mode: Mode) -> bool {
    let grant = match decide(daemon, peer, stream, asked).await {
        Ok(grant) => grant,
        Err(alive) => return alive,
    };
    let (delegation, rules) = (grant.delegation, grant.rules.clone());
    let (owner, target, lease_mode) = match (peer.userns, &peer.userns_fd) {
        (PeerUserns::Nested { owner_uid, ino }, Some(ns)) => {
            (ScopeOwner::Userns { ino, owner_uid }, Some(ns.as_fd()), LeaseMode::Container)
        }
        _ => (
            ScopeOwner::Uid { uid: peer.creds.uid, gid: peer.creds.gid },
            None,
            if mode == Mode::Scope { LeaseMode::Libbpf } else { LeaseMode::Owner },
        ),
    };
    let key = ScopeKey { owner, delegation };
    // libbpf mode hands out the scope itself; where leases are enforced it
    // gets a scope of its own (a container's is its namespace, shared).
    let exclusive = mode == Mode::Scope && daemon.enforcer().is_some() && lease_mode == LeaseMode::Libbpf;
    let (token, scope, cold) = match daemon.mint(key, target, exclusive).await {
        Ok(m) => m,
        Err(e) => return mint_failed(daemon, peer, stream, &rules, &e).await,
    };
    let scope_ino = match owner {
        ScopeOwner::Userns { ino, .. } => ino,
        ScopeOwner::Uid { .. } => match scope.userns_ino() {
            Ok(ino) => ino,
            Err(e) => return mint_failed(daemon, peer, stream, &rules, &MintError::BadTarget(e.to_string())).await,
        },
    };
    let new = NewLease {
        uid: peer.creds.uid,
        scope_uid: scope.key.owner_uid(),
        scope: scope_ino,
        mode: lease_mode,
        serial: token.serial(),
        whole_scope: mode == Mode::Scope,
        ttl: grant.ttl,
        bind: grant.bind.clone(),
    };
    let lease = match start_lease(daemon, peer, stream, &rules, new).await {
        Ok(lease) => lease,
        Err(alive) => return alive,
    };
    if grant.learn {
        if let Err(e) = start_learning(daemon, &lease) {
            daemon.leases.cancel(daemon.enforcer(), lease.id);
            return reject(daemon, peer, stream, RefusalCode::MintFailed, format!("minting failed: {e}")).await;
        }
    }
    let (roles, fds) = match mode {
        Mode::Token => (vec![FdRole::Token], vec![token.as_fd()]),
        Mode::Scope => (
            vec![FdRole::Token, FdRole::UserNamespace, FdRole::Bpffs],
            vec![token.as_fd(), scope.userns.as_fd(), scope.bpffs_root.as_fd()],
        ),
    };
    let response = answer(asked, Minted { granted: delegation, rules, fds: roles }, &lease);
    let delivered = write_response(stream, &response, &fds).await;
    drop(fds);
    // Our copy of the token closes here whatever happened.
    drop(token);
    delivered_or_audit(daemon, peer, &grant, cold, &lease, delivered)
}

/// The answer to a grant: with its lease for a [`RequestBody::MintLease`].
fn answer(asked: &Asked, minted: Minted, lease: &LeaseInfo) -> Response {
    if asked.leased {
        Response::Leased { minted, lease: lease.clone() }
    } else {
        Response::Minted(minted)
    }
}

/// Start the lease of a grant about to be delivered, or refuse (false if
/// the client is gone).
async fn start_lease(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    rules: &[String],
    new: NewLease,
) -> Result<LeaseInfo, bool> {
    match daemon.leases.start(daemon.enforcer(), new) {
        Ok(lease) => Ok(lease),
        Err(e) => {
            let message = format!("minting failed: {e}");
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(peer, rules, RefusalCode::MintFailed, &message);
            Err(write_response(stream, &refusal(RefusalCode::MintFailed, message), &[]).await.is_ok())
        }
    }
}

/// Delegate a bpffs to the user namespace `ns`, which the peer must own.
/// Each request gets a bpffs of its own (the caller attaches it), so
/// nothing is cached.
async fn handle_delegate(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    asked: &Asked,
    ns: OwnedFd,
) -> bool {
    if peer.userns != PeerUserns::Ours {
        let message = "ask for a delegated bpffs from outside the namespace (the runtime's own user namespace), \
                       not from inside a container"
            .to_owned();
        return reject(daemon, peer, stream, RefusalCode::UnsupportedPeer, message).await;
    }
    let grant = match decide(daemon, peer, stream, asked).await {
        Ok(grant) => grant,
        Err(alive) => return alive,
    };
    let (delegation, rules) = (grant.delegation, grant.rules.clone());
    let ino = match check_delegation_target(ns.as_fd(), peer.creds.uid) {
        Ok(ino) => ino,
        Err(message) => return reject(daemon, peer, stream, RefusalCode::BadNamespace, message).await,
    };
    let key = ScopeKey { owner: ScopeOwner::Userns { ino, owner_uid: peer.creds.uid }, delegation };
    let scope = match daemon.minter.create_scope(key, Some(ns.as_fd())).await {
        Ok(scope) => scope,
        Err(e) => return mint_failed(daemon, peer, stream, &rules, &e).await,
    };
    // Tokens the namespace's processes create from this bpffs are the uid's.
    daemon.remember_scope(&scope);
    // One token, checked and dropped: the bpffs delegates exactly the grant.
    if let Err(e) = daemon.scopes.mint_first(&scope, daemon.tracker()).await {
        return mint_failed(daemon, peer, stream, &rules, &e).await;
    }
    // The lease covers every token of the namespace: the runtime's
    // processes create them from the bpffs themselves.
    let new = NewLease {
        uid: peer.creds.uid,
        scope_uid: scope.key.owner_uid(),
        scope: ino,
        mode: LeaseMode::DelegatedMount,
        serial: None,
        whole_scope: true,
        ttl: grant.ttl,
        bind: grant.bind.clone(),
    };
    let lease = match start_lease(daemon, peer, stream, &rules, new).await {
        Ok(lease) => lease,
        Err(alive) => return alive,
    };
    let response = answer(asked, Minted { granted: delegation, rules, fds: vec![FdRole::Bpffs] }, &lease);
    let delivered = write_response(stream, &response, &[scope.mount.as_fd()]).await;
    delivered_or_audit(daemon, peer, &grant, true, &lease, delivered)
}

/// The namespace a peer sent must be a user namespace it owns, and not
/// ours. Returns its inode.
fn check_delegation_target(ns: BorrowedFd<'_>, uid: u32) -> Result<u64, String> {
    match crate::sys::ns_type(ns) {
        Ok(t) if t == libc::CLONE_NEWUSER => {}
        Ok(t) => return Err(format!("the fd sent is a namespace of type {t:#x}, not a user namespace")),
        Err(_) => return Err("the fd sent is not a namespace (send an fd of /proc/PID/ns/user)".to_owned()),
    }
    let st = rustix::fs::fstat(ns).map_err(|e| format!("cannot stat the namespace: {e}"))?;
    let own = rustix::fs::stat("/proc/self/ns/user").map_err(|e| format!("cannot stat our namespace: {e}"))?;
    if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino) {
        return Err("the fd sent is the initial user namespace; send one your uid created".to_owned());
    }
    let owner = crate::sys::ns_owner_uid(ns).map_err(|e| format!("cannot read the namespace's owner: {e}"))?;
    if owner != uid {
        return Err(format!("the user namespace sent is owned by uid {owner}, not by you (uid {uid})"));
    }
    Ok(st.st_ino)
}

async fn mint_failed(
    daemon: &Daemon,
    peer: &PeerIdentity,
    stream: &UnixStream,
    rules: &[String],
    e: &MintError,
) -> bool {
    let message = format!("minting failed: {e}");
    daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
    audit::refused(peer, rules, RefusalCode::MintFailed, &message);
    write_response(stream, &refusal(RefusalCode::MintFailed, message), &[]).await.is_ok()
}

fn delivered_or_audit(
    daemon: &Daemon,
    peer: &PeerIdentity,
    grant: &Grant,
    cold: bool,
    lease: &LeaseInfo,
    delivered: std::io::Result<()>,
) -> bool {
    match delivered {
        Ok(()) => {
            daemon.stats.minted.fetch_add(1, Ordering::Relaxed);
            let mode = if grant.learn { "learn" } else { lease.mode.as_str() };
            audit::granted(peer, &grant.rules, &grant.delegation, cold, mode, grant.enforced, grant.identity, lease);
            true
        }
        Err(e) => {
            if grant.learn {
                end_learning(daemon, lease.id);
            }
            daemon.leases.cancel(daemon.enforcer(), lease.id);
            daemon.stats.refused.fetch_add(1, Ordering::Relaxed);
            audit::refused(
                peer,
                &grant.rules,
                RefusalCode::MintFailed,
                &format!("client went away before taking its grant: {e}"),
            );
            false
        }
    }
}

/// Record what the tokens of a new learning lease's scope are used for.
fn start_learning(daemon: &Daemon, lease: &LeaseInfo) -> Result<(), String> {
    let enforcer = daemon.enforcer().ok_or("learning needs the enforcer")?;
    let scope = u32::try_from(lease.scope).map_err(|_| format!("scope {} is not a namespace inode", lease.scope))?;
    let mut learning = daemon.learning.lock().unwrap_or_else(|p| p.into_inner());
    // Forget learning leases whose scope was freed (the kernel side
    // removed their entry): their inode may be the one reused now.
    learning.retain(|_, (_, s)| matches!(enforcer.learned(*s), Ok(Some(_))));
    enforcer.start_learning(scope).map_err(|e| format!("cannot start learning in the enforcer's map: {e}"))?;
    learning.insert(lease.id, (lease.uid, scope));
    Ok(())
}

/// Stop recording for learning lease `id` (if it is one).
fn end_learning(daemon: &Daemon, id: u64) {
    let entry = daemon.learning.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    if let (Some((_, scope)), Some(enforcer)) = (entry, daemon.enforcer()) {
        if let Err(e) = enforcer.end_learning(scope) {
            tracing::warn!(lease = id, "cannot remove a learning entry: {e}");
        }
    }
}

/// End learning lease `id` (revoke it) and answer what its tokens were
/// used for; one audit event, `learned` or `refused`.
async fn handle_learned(daemon: &Daemon, peer: &PeerIdentity, stream: &UnixStream, id: u64) -> bool {
    let me = peer.creds.uid;
    let enforcer = match &daemon.enforcer {
        Ok(e) => e,
        Err(why) => {
            let msg = format!("learning needs the enforcer: enforcement is unavailable: {why}");
            return reject(daemon, peer, stream, RefusalCode::LearningUnavailable, msg).await;
        }
    };
    let entry = daemon.learning.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
    let scope = match entry {
        None => {
            let msg = format!("no learning lease {id}: it never existed, has ended, or is not a learning lease");
            return reject(daemon, peer, stream, RefusalCode::UnknownLease, msg).await;
        }
        Some((owner, _)) if me != 0 && owner != me => {
            let msg =
                format!("learning lease {id} belongs to uid {owner}, not to you (uid {me}); only root may end it");
            return reject(daemon, peer, stream, RefusalCode::NotYourLease, msg).await;
        }
        Some((_, scope)) => scope,
    };
    // Revoke first: nothing more is recorded once its tokens are refused.
    let lease = match daemon.leases.revoke(Ok(enforcer), me, RevokeTarget::Lease(id)) {
        Ok(mut revoked) if revoked.len() == 1 => revoked.remove(0),
        Ok(_) => {
            end_learning(daemon, id);
            let msg = format!("learning lease {id} is gone (its scope was freed)");
            return reject(daemon, peer, stream, RefusalCode::UnknownLease, msg).await;
        }
        Err(r) => {
            end_learning(daemon, id);
            return reject(daemon, peer, stream, r.code, r.message).await;
        }
    };
    let used = enforcer.learned(scope);
    end_learning(daemon, id);
    let used = match used {
        Ok(Some(used)) => used,
        Ok(None) => {
            let msg = format!("learning lease {id} recorded nothing: its scope was freed before it ended");
            return reject(daemon, peer, stream, RefusalCode::UnknownLease, msg).await;
        }
        Err(e) => {
            let msg = format!("cannot read what learning lease {id} recorded: {e}");
            return reject(daemon, peer, stream, RefusalCode::MintFailed, msg).await;
        }
    };
    audit::learned(peer, &lease, &used);
    write_response(stream, &Response::Learned { lease, used }, &[]).await.is_ok()
}
