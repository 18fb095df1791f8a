//! Accepting clients and answering their requests.
//!
//! The module tree, in the order a request goes through it:
//!
//! - `mod.rs` (here): the [`Daemon`] state every connection shares (the
//!   policy in force, the minters, the scope cache, leases, counters, the
//!   enforcer), connection slots, and [`serve`], the accept loop, which
//!   starts one task per connection.
//! - `connection.rs`: one connection. The peer is identified there
//!   (`peer::identify`, then `PeerIdentity::for_request` per request),
//!   takes a slot, and each request is read, decoded, checked and handed
//!   to its handler.
//! - `stream.rs`: a connection's socket, registered with epoll only once
//!   the connection has to wait.
//! - `frame.rs`: reading a length-prefixed frame, with the fds and the
//!   sender's pidfd its bytes came with.
//! - `handlers/`: one file per kind of request (`mint.rs`, `delegate.rs`,
//!   `query.rs`, `leases.rs`); each returns its answer or refusal and
//!   writes nothing.
//! - `decide.rs`: the decision for a grant: the policy's masks
//!   (`Policy::decide`) and the checks around them (ttl, binding,
//!   `max_live_tokens`, rate limits).
//! - `reply.rs`: the one place an answer is written: fds sent as
//!   `SCM_RIGHTS`, refusals counted and audited, grants audited once
//!   delivered.
//!
//! The token itself is created by [`Daemon::mint`] (here), from the scope
//! cache (`cache.rs`) or a scope a minter creates (`minter/`).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bpftoken_policy::Policy;
use bpftoken_proto::{Enforcement, LeaseInfo};
use rustix::net::SocketFlags;
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cache::ScopeCache;
use crate::enforcer::{Enforcer, Persistence, Unavailable};
use crate::lease::LeaseTable;
use crate::live::LiveTokens;
use crate::minter::pool::MinterPool;
use crate::minter::{MintError, Scope, ScopeKey};
use crate::sys::{MintedToken, TaskTracker};

mod connection;
mod decide;
mod frame;
mod handlers;
mod reply;
mod slots;
mod stream;

pub use decide::Identity;
use decide::RateLimiter;
pub use slots::NO_RULE_PER_UID;

/// Default for [`ConnLimits::read_timeout`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A response must be taken by the client within this time.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight requests get this long to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A connection of a uid no policy rule names may sit idle this long.
pub const NO_RULE_IDLE: Duration = Duration::from_secs(1);

/// Per-connection bounds. Beyond the connection caps (Varlink's defaults)
/// a client gets a typed `busy` refusal (`slots.rs` says who gets which
/// slots).
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

impl ConnLimits {
    fn slots(&self) -> slots::SlotLimits {
        slots::SlotLimits { global: self.global, per_uid: self.per_uid }
    }
}

/// Counters for status reports.
#[derive(Debug, Default)]
pub struct Stats {
    pub minted: AtomicU64,
    pub refused: AtomicU64,
    /// The same decisions by mode and code, mints by path and latency,
    /// for the metrics file.
    pub metrics: crate::metrics::Counters,
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
    slots: Arc<slots::Slots>,
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
            slots: Arc::default(),
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

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.slots.total()
    }

    /// Whether no client is connected.
    pub fn no_connections(&self) -> bool {
        self.slots.total() == 0
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
    /// namespace of a [`ScopeOwner::Userns`](crate::minter::ScopeOwner::Userns) key). Returns the token, its
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
            self.scopes.insert(scope.clone()).close_in_background();
        }
        Ok((token, scope, true))
    }

    /// A connection slot for a peer (`busy` beyond the caps): uids no
    /// rule names are on a short leash; root, who lists and revokes
    /// everyone's leases, is not.
    fn take_slot(&self, peer: &bpftoken_policy::Peer) -> Result<slots::Slot, String> {
        let named = peer.uid == 0 || self.policy().names_ids(peer);
        self.slots.take(self.limits.slots(), peer.uid, named).map_err(|e| e.0)
    }

    /// Record what the tokens of a new learning lease's scope are used for.
    fn start_learning(&self, lease: &LeaseInfo) -> Result<(), String> {
        let enforcer = self.enforcer().ok_or("learning needs the enforcer")?;
        let scope =
            u32::try_from(lease.scope).map_err(|_| format!("scope {} is not a namespace inode", lease.scope))?;
        let mut learning = self.learning.lock().unwrap_or_else(|p| p.into_inner());
        // Forget learning leases whose scope was freed (the kernel side
        // removed their entry): their inode may be the one reused now.
        learning.retain(|_, (_, s)| matches!(enforcer.learned(*s), Ok(Some(_))));
        enforcer.start_learning(scope).map_err(|e| format!("cannot start learning in the enforcer's map: {e}"))?;
        learning.insert(lease.id, (lease.uid, scope));
        Ok(())
    }

    /// Stop recording for learning lease `id` (if it is one).
    fn end_learning(&self, id: u64) {
        let entry = self.learning.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let (Some((_, scope)), Some(enforcer)) = (entry, self.enforcer()) {
            if let Err(e) = enforcer.end_learning(scope) {
                tracing::warn!(lease = id, "cannot remove a learning entry: {e}");
            }
        }
    }
}

/// Accept connections until `shutdown` turns true, then let in-flight
/// requests finish (bounded by [`SHUTDOWN_GRACE`]).
pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
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
            accepted = listener.async_io(Interest::READABLE, |l| Ok(rustix::net::accept_with(l, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?)) => match accepted {
                Ok(fd) => {
                    // Not registered with epoll until it has to wait
                    // (stream.rs): a one-shot connection never does.
                    let stream = stream::Stream::new(std::os::unix::net::UnixStream::from(fd));
                    let daemon = daemon.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move { connection::serve_connection(daemon, stream, shutdown).await });
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
