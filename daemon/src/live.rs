//! Live tokens per uid, for the policy's `max_live_tokens`.
//!
//! Only the kernel knows when a token is closed for the last time: the
//! enforcer ([`crate::enforcer`]) counts tokens created and freed per scope
//! (user namespace). A uid's live tokens are the sum over every scope the
//! daemon made for it (cached or not: tokens outlive their scope's cache
//! entry), including tokens the uid created itself from a bpffs it was
//! handed (libbpf mode, delegated mounts), minus the spare tokens the
//! daemon holds, plus mints admitted but not yet delivered, so that
//! concurrent requests cannot together exceed the limit.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::cache::ScopeCache;
use crate::enforcer::Enforcer;

#[derive(Debug, Default)]
pub struct LiveTokens {
    /// Scopes (enforcer names) made for each uid, until they hold no token.
    scopes: Mutex<HashMap<u32, HashSet<u32>>>,
    /// Mints admitted under a limit and not yet delivered, per uid.
    in_flight: Mutex<HashMap<u32, u64>>,
}

/// Why a mint under a live-token limit was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("uid {uid} holds {live} live tokens")]
    AtLimit { uid: u32, live: u64 },
    #[error("cannot read the enforcer's token counts: {0}")]
    Count(std::io::Error),
}

/// A mint counted against its uid's limit until it is delivered (or not).
#[derive(Debug)]
pub struct Admitted<'a> {
    live: &'a LiveTokens,
    uid: u32,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.live.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.uid);
            }
        }
    }
}

impl LiveTokens {
    /// A scope was made for `uid`: its tokens count as the uid's.
    pub fn remember(&self, uid: u32, inum: u32) {
        self.scopes.lock().unwrap_or_else(|p| p.into_inner()).entry(uid).or_default().insert(inum);
    }

    /// Admit one more token for `uid` if it holds fewer than `max`.
    pub fn admit<'a>(
        &'a self,
        uid: u32,
        max: u32,
        enforcer: &Enforcer,
        cache: &ScopeCache,
    ) -> Result<Admitted<'a>, LiveError> {
        // Held while counting: admissions for one limit are serialised.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let (spares, cached) = cache.held_for(uid);
        let mut total = 0u64;
        {
            let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
            let known = scopes.entry(uid).or_default();
            known.extend(cached.iter().copied());
            let mut empty = Vec::new();
            for &inum in known.iter() {
                let count = enforcer.scope_count(inum).map_err(LiveError::Count)?.unwrap_or_default();
                let live = count.created.saturating_sub(count.freed);
                if live == 0 && !cached.contains(&inum) {
                    empty.push(inum);
                }
                total += live;
            }
            // A scope gone from the cache with no token left is done with.
            for inum in empty {
                known.remove(&inum);
            }
            if known.is_empty() {
                scopes.remove(&uid);
            }
        }
        let pending = in_flight.get(&uid).copied().unwrap_or(0);
        let live = total.saturating_sub(spares) + pending;
        if live >= u64::from(max) {
            return Err(LiveError::AtLimit { uid, live });
        }
        *in_flight.entry(uid).or_insert(0) += 1;
        Ok(Admitted { live: self, uid })
    }
}
