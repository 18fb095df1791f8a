//! Warm scopes: the daemon keeps the scopes the minter created and mints
//! tokens from them without another process hop.
//!
//! A warm mint is a `clone(CLONE_VM|CLONE_PIDFD)` child of the daemon that
//! `setns()`es into the scope's user namespace, calls `BPF_TOKEN_CREATE`
//! and sends the tokens back over a socket pair
//! ([`crate::sys::mint_tokens_in`]). The child is its own thread group (no
//! CLONE_THREAD) with its own fs_struct (no CLONE_FS), which is what
//! `setns(CLONE_NEWUSER)` requires, and its own fd table (no CLONE_FILES),
//! so a child killed half-way takes its tokens with it; it runs only raw
//! syscalls on a stack nobody else uses, so sharing the daemon's memory
//! while the daemon runs is safe. The daemon awaits the child without
//! blocking its thread: a child the client holds stopped delays only the
//! requests waiting for that scope's batch, until its deadline. Nothing is
//! left in the client's namespace.
//!
//! A warm mint that finds no spare token makes a batch of
//! 1 + [`ScopeLimits::spares`] in one child (one clone, one setns, then only
//! `BPF_TOKEN_CREATE`s), hands out one and keeps the rest for the scope's
//! next requests, which then cost no syscall beyond sending the fd. Spares
//! are exactly the scope's tokens (same owner, same masks), are never
//! handed to another key, and are closed with their scope.
//!
//! Scopes are keyed by exact owner and masks and never shared across
//! either. Each holds one user namespace against its owner's
//! `max_user_namespaces` quota, so the cache is bounded per uid and in
//! total, and idle scopes are dropped. Dropping a scope only closes the
//! daemon's fds; tokens handed out keep their namespace alive themselves.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::minter::{verify_token_masks, MintError, Scope, ScopeKey};
use crate::sys::{MintedToken, TaskTracker};

/// Bounds on the scope cache.
#[derive(Debug, Clone, Copy)]
pub struct ScopeLimits {
    pub per_uid: usize,
    pub global: usize,
    pub idle: Duration,
    /// Spare tokens a scope keeps, at most [`MAX_SPARES`].
    pub spares: usize,
}

/// Most spare tokens per scope (one mint child makes at most
/// [`crate::sys::MAX_MINT_BATCH`] tokens).
pub const MAX_SPARES: usize = crate::sys::MAX_MINT_BATCH - 1;

impl Default for ScopeLimits {
    fn default() -> Self {
        ScopeLimits { per_uid: 16, global: 1024, idle: Duration::from_secs(300), spares: MAX_SPARES }
    }
}

#[derive(Debug)]
struct Entry {
    // Arc: a mint in progress keeps the fds open even if the entry is
    // evicted meanwhile, so an fd number can never be reused under it.
    scope: Arc<Scope>,
    last_used: Instant,
    /// Tokens of this scope minted ahead, up to `ScopeLimits::spares`.
    spare: Vec<MintedToken>,
    /// Held while a batch is made for this scope: a request that finds no
    /// spare while another request's batch is being made waits for that
    /// batch and takes one of its spares, instead of making a batch of its
    /// own whose spares would not fit and be closed unused. Batches of
    /// different scopes run at once.
    refill: Arc<tokio::sync::Mutex<()>>,
}

/// The cache of warm scopes.
#[derive(Debug)]
pub struct ScopeCache {
    limits: ScopeLimits,
    map: Mutex<HashMap<ScopeKey, Entry>>,
}

impl ScopeCache {
    pub fn new(limits: ScopeLimits) -> Self {
        ScopeCache { limits, map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ScopeKey, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of cached scopes.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mint from the cached scope for `key`, if there is one. A scope that
    /// fails to mint is dropped, so the next request builds a fresh one.
    /// With a `tracker` (the enforcer), every token of a batch carries its
    /// own serial, spares included: a spare handed out later is still the
    /// token of that serial.
    pub async fn mint_warm(
        &self,
        key: &ScopeKey,
        tracker: Option<&dyn TaskTracker>,
    ) -> Option<Result<(MintedToken, Arc<Scope>), MintError>> {
        let take = || {
            let mut map = self.lock();
            let entry = map.get_mut(key)?;
            entry.last_used = Instant::now();
            Some(
                entry
                    .spare
                    .pop()
                    .map(|token| (token, entry.scope.clone()))
                    .ok_or_else(|| (entry.scope.clone(), entry.refill.clone())),
            )
        };
        let refill = match take()? {
            Ok(spare) => return Some(Ok(spare)),
            Err((_, refill)) => refill,
        };
        let _refill = refill.lock().await;
        // Another request's batch may have made spares while we waited.
        let scope = match take()? {
            Ok(spare) => return Some(Ok(spare)),
            Err((scope, _)) => scope,
        };
        let batch = 1 + self.limits.spares.min(MAX_SPARES);
        let result = scope.mint_batch(batch, tracker).await;
        let mut map = self.lock();
        let ours = map.get_mut(key).filter(|e| Arc::ptr_eq(&e.scope, &scope));
        match result {
            Ok(mut tokens) => {
                let first = tokens.pop()?;
                // Evicted meanwhile: the spares close with `tokens`. Two
                // batches made at once for one scope keep at most the
                // limit between them; the rest close here.
                if let Some(entry) = ours {
                    let room = self.limits.spares.min(MAX_SPARES).saturating_sub(entry.spare.len());
                    entry.spare.extend(tokens.into_iter().take(room));
                }
                Some(Ok((first, scope)))
            }
            Err(e) => {
                if ours.is_some() {
                    map.remove(key);
                }
                Some(Err(e))
            }
        }
    }

    /// Mint the first token of a scope the minter just created and check
    /// its masks in full against the scope's key.
    pub async fn mint_first(&self, scope: &Scope, tracker: Option<&dyn TaskTracker>) -> Result<MintedToken, MintError> {
        let token = scope.mint(tracker).await?;
        verify_token_masks(token.as_fd(), &scope.key.delegation)?;
        Ok(token)
    }

    /// Keep a scope the minter created, evicting the least recently used
    /// ones beyond the per-uid and global caps. If another request cached
    /// the same key meanwhile, that one stays and this one is dropped.
    ///
    /// Returns what was evicted, for the caller to drop once its answer is
    /// sent: closing a scope unmounts its bpffs and frees its user
    /// namespace, which takes as long as a warm mint several times over.
    #[must_use = "the evicted scopes close when dropped"]
    pub fn insert(&self, scope: Arc<Scope>) -> Evicted {
        let key = scope.key;
        let mut evicted = Evicted(Vec::new());
        let mut map = self.lock();
        if map.contains_key(&key) {
            return evicted;
        }
        let per_uid = self.limits.per_uid.max(1);
        let uid = key.owner_uid();
        while map.keys().filter(|k| k.owner_uid() == uid).count() >= per_uid {
            evicted.0.extend(evict_lru(&mut map, |k| k.owner_uid() == uid));
        }
        while map.len() >= self.limits.global.max(1) {
            evicted.0.extend(evict_lru(&mut map, |_| true));
        }
        map.insert(key, Entry { scope, last_used: Instant::now(), spare: Vec::new(), refill: Arc::default() });
        evicted
    }

    /// For live-token counts: the spare tokens held for `uid`'s scopes
    /// (created, so counted by the kernel, but not handed out) and the
    /// enforcer names of those scopes.
    pub fn held_for(&self, uid: u32) -> (u64, Vec<u32>) {
        let map = self.lock();
        let mut spares = 0u64;
        let mut inums = Vec::new();
        for entry in map.values().filter(|e| e.scope.key.owner_uid() == uid) {
            spares += entry.spare.len() as u64;
            if let Ok(inum) = entry.scope.inum() {
                inums.push(inum);
            }
        }
        (spares, inums)
    }

    /// Take out the scopes unused for longer than the idle limit.
    #[must_use = "the evicted scopes close when dropped"]
    pub fn evict_idle(&self) -> Evicted {
        let idle = self.limits.idle;
        let now = Instant::now();
        let mut map = self.lock();
        let stale: Vec<ScopeKey> =
            map.iter().filter(|(_, e)| now.duration_since(e.last_used) >= idle).map(|(k, _)| *k).collect();
        Evicted(stale.iter().filter_map(|k| map.remove(k)).collect())
    }

    /// How often [`ScopeCache::evict_idle`] should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.limits.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// Scopes (and their spare tokens) taken out of the cache, closed when
/// this is dropped.
#[derive(Debug, Default)]
pub struct Evicted(Vec<Entry>);

impl Evicted {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Close them on a blocking thread: unmounting a scope's bpffs waits
    /// for an RCU grace period, which must not stall the thread that
    /// serves every connection. Outside a runtime they close here.
    pub fn close_in_background(self) {
        if self.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(self))),
            Err(_) => drop(self),
        }
    }
}

fn evict_lru(map: &mut HashMap<ScopeKey, Entry>, filter: impl Fn(&ScopeKey) -> bool) -> Option<Entry> {
    let victim = map.iter().filter(|(k, _)| filter(k)).min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k);
    victim.and_then(|k| map.remove(&k))
}
