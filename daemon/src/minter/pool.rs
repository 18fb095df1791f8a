//! Several minters, so a helper its client holds stopped delays only that
//! client's cold mints.
//!
//! Each minter drives one helper at a time, and a helper runs as its
//! client, who may SIGSTOP it (each helper step then waits out its 2 s
//! timeout). The pool runs requests of one owner uid one at a time, each
//! on an idle minter: a uid occupies at most one minter, so the others
//! stay free for everybody else.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedMutexGuard, Semaphore, SemaphorePermit};

use super::link::{MinterLink, CREATE_TIMEOUT};
use super::{MintError, Scope, ScopeKey};

/// Fewest minters: with one uid holding a minter, the others keep one.
pub const MIN_MINTERS: usize = 2;
/// Most minters (each is a process waiting on a socket).
pub const MAX_MINTERS: usize = 4;

/// The minters and who may use them.
#[derive(Debug)]
pub struct MinterPool {
    links: Vec<MinterLink>,
    /// Indexes into `links` of the minters no request holds.
    idle: Mutex<Vec<usize>>,
    /// One permit per idle minter.
    permits: Semaphore,
    /// Per owner uid, the turn its cold requests take one at a time. An
    /// entry lives while a request of that uid runs or waits.
    turns: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
}

impl MinterPool {
    /// Start `count` minters now (before the async runtime exists, so they
    /// are forked from a single-threaded process). `count` is clamped to
    /// [`MIN_MINTERS`]..=[`MAX_MINTERS`].
    pub fn start(exe: PathBuf, count: usize) -> std::io::Result<Self> {
        let count = count.clamp(MIN_MINTERS, MAX_MINTERS);
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            match MinterLink::start(exe.clone()) {
                Ok(link) => links.push(link),
                Err(e) => {
                    for link in links {
                        link.stop_now();
                    }
                    return Err(e);
                }
            }
        }
        Ok(MinterPool {
            idle: Mutex::new((0..count).rev().collect()),
            permits: Semaphore::new(count),
            links,
            turns: Mutex::new(HashMap::new()),
        })
    }

    /// Ask a minter for a new scope: after any earlier request of the same
    /// owner uid, on a minter no other request holds. The waits count
    /// against the request's deadline ([`MintError::MinterBusy`] past it).
    pub async fn create_scope(&self, key: ScopeKey, target: Option<BorrowedFd<'_>>) -> Result<Scope, MintError> {
        let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
        let uid = key.owner_uid();
        let _turn = tokio::time::timeout_at(deadline, self.turn(uid)).await.map_err(|_| MintError::MinterBusy)?;
        let permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| MintError::MinterBusy)?
            .map_err(|_| MintError::MinterUnavailable("the daemon is stopping".into()))?;
        let slot = self.take_idle(permit)?;
        // Dead minters are replaced now, not only when a request lands on
        // them (each link's check is a waitpid(WNOHANG)).
        for link in &self.links {
            link.revive_if_idle();
        }
        tracing::debug!(uid, minter = slot.index, "cold request dispatched");
        self.links[slot.index].create_scope(key, target, deadline).await
    }

    /// Stop every minter (daemon shutdown); no request starts afterwards.
    pub async fn shutdown(&self) {
        self.permits.close();
        for link in &self.links {
            link.shutdown().await;
        }
    }

    async fn turn(&self, uid: u32) -> Turn<'_> {
        let lock = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            // Entries only the map holds are left by waits that were
            // cancelled (their client went away): no request uses them.
            turns.retain(|_, lock| Arc::strong_count(lock) > 1);
            turns.entry(uid).or_default().clone()
        };
        Turn { pool: self, uid, guard: Some(lock.lock_owned().await) }
    }

    fn take_idle<'a>(&'a self, permit: SemaphorePermit<'a>) -> Result<Slot<'a>, MintError> {
        let index = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A permit is only held with a minter popped: one is always idle.
        let index = index.ok_or_else(|| MintError::MinterUnavailable("no idle minter".into()))?;
        Ok(Slot { pool: self, index, _permit: permit })
    }
}

/// A request's turn among its uid's cold requests.
struct Turn<'a> {
    pool: &'a MinterPool,
    uid: u32,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = self.pool.turns.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: no request of this uid runs or waits.
        if turns.get(&self.uid).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            turns.remove(&self.uid);
        }
    }
}

/// A minter held by one request; back to idle (then the permit) on drop.
struct Slot<'a> {
    pool: &'a MinterPool,
    index: usize,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(self.index);
    }
}
