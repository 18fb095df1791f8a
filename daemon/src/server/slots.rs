//! Connection slots: who may hold a connection, and who makes room when
//! the daemon is full (docs/operation.md, "Connections").
//!
//! Admission happens right after accept, on `SO_PEERCRED` alone, before
//! any other work for the connection. Uids no allow rule names (by uid,
//! gid or group) are on a short leash: a few connections each, a small
//! share of all slots together, and a short idle timeout (that part is in
//! `connection.rs`). The rest of the slots are kept for uids the policy
//! may grant something. When every slot is taken, a newcomer the policy
//! names displaces the longest-waiting connection of the uid holding the
//! most (uids with no rule first), so no group of uids can lock the others
//! out by holding connections open.
//!
//! Invariants: `total` and each uid's `held` count every live slot
//! exactly once: a displaced connection's slot is released when it is
//! displaced (its task closes it at once), not again when it ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Most connections one uid no rule names may hold.
pub const NO_RULE_PER_UID: usize = 8;

/// The connection caps (Varlink's defaults for `global` and `per_uid`).
#[derive(Debug, Clone, Copy)]
pub struct SlotLimits {
    pub global: usize,
    pub per_uid: usize,
}

impl SlotLimits {
    /// All uids no rule names together hold at most this many (an eighth).
    pub fn no_rule_share(&self) -> usize {
        (self.global / 8).max(NO_RULE_PER_UID)
    }
}

/// Every connection's slot.
#[derive(Debug, Default)]
pub struct Slots {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    no_rule_total: usize,
    per_uid: HashMap<u32, Held>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Held {
    count: usize,
    /// Whether a rule names the uid (as of its latest admission).
    named: bool,
    /// Its connections waiting for a request, oldest first.
    waiting: BTreeMap<u64, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    signal: Arc<Signal>,
    no_rule: bool,
}

/// How a newcomer tells a waiting connection to go.
#[derive(Debug, Default)]
struct Signal {
    displace: Notify,
    /// The slot was released by the newcomer.
    released: AtomicBool,
    /// Why, for the connection's `busy` answer.
    reason: Mutex<String>,
}

/// A connection refused a slot, and why (the text of its `busy` refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSlot(pub String);

/// One connection's slot; released when dropped (unless displaced).
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
    id: u64,
    no_rule: bool,
    signal: Arc<Signal>,
}

impl Slots {
    /// A slot for a connection of `uid`; `named`: some allow rule names it.
    pub fn take(self: &Arc<Self>, limits: SlotLimits, uid: u32, named: bool) -> Result<Slot, NoSlot> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = s.per_uid.get(&uid).map_or(0, |h| h.count);
        if !named {
            if held >= NO_RULE_PER_UID {
                return Err(NoSlot(format!(
                    "uid {uid} already holds {held} connections, the most a uid no policy rule names may hold; close \
                     some first"
                )));
            }
            if s.no_rule_total >= limits.no_rule_share() {
                return Err(NoSlot(format!(
                    "uids no policy rule names hold {} connections together, all their share; retry later",
                    s.no_rule_total
                )));
            }
        }
        if held >= limits.per_uid {
            return Err(NoSlot(format!(
                "uid {uid} already holds {held} connections, the per-uid limit; close some first"
            )));
        }
        if s.total >= limits.global {
            let full = || NoSlot(format!("the daemon is at its limit of {} connections; retry later", limits.global));
            if !named {
                return Err(full());
            }
            let victim = s.pick_victim(uid, held).ok_or_else(full)?;
            s.displace(victim, limits.global);
        }
        s.total += 1;
        s.no_rule_total += usize::from(!named);
        s.next_id += 1;
        let id = s.next_id;
        let entry = s.per_uid.entry(uid).or_default();
        entry.count += 1;
        entry.named = named;
        Ok(Slot { slots: self.clone(), uid, id, no_rule: !named, signal: Arc::new(Signal::default()) })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl State {
    /// The uid whose waiting connection goes: one no rule names if any,
    /// else the one holding the most, if it holds more than the newcomer
    /// would (so two uids never take turns displacing each other).
    fn pick_victim(&self, newcomer: u32, newcomer_held: usize) -> Option<u32> {
        self.per_uid
            .iter()
            .filter(|(uid, h)| **uid != newcomer && !h.waiting.is_empty())
            .filter(|(_, h)| !h.named || h.count > newcomer_held + 1)
            .max_by_key(|(uid, h)| (!h.named, h.count, std::cmp::Reverse(**uid)))
            .map(|(uid, _)| *uid)
    }

    /// Release the longest-waiting connection of `uid` and tell it to go.
    fn displace(&mut self, uid: u32, global: usize) {
        let Some(held) = self.per_uid.get_mut(&uid) else { return };
        let Some((_, waiting)) = held.waiting.pop_first() else { return };
        let before = held.count;
        held.count -= 1;
        let whose = if held.named {
            format!("uid {uid} holds {before}, the most")
        } else {
            format!("uid {uid}, which no policy rule names, holds {before}")
        };
        if held.count == 0 {
            self.per_uid.remove(&uid);
        }
        self.total -= 1;
        self.no_rule_total -= usize::from(waiting.no_rule);
        let reason = format!(
            "this idle connection was closed to make room for another user's: the daemon is at its limit of {global} \
             connections and {whose}; connect again when needed"
        );
        tracing::info!(uid, held = before, "closing an idle connection to make room for another uid's");
        *waiting.signal.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        waiting.signal.released.store(true, Ordering::Release);
        // The permit stays until the connection looks (it may be between
        // two polls of its read).
        waiting.signal.displace.notify_one();
    }
}

impl Slot {
    /// The connection waits for a request now: it may be displaced.
    pub fn waiting(&self) {
        let mut s = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.was_displaced() {
            return;
        }
        if let Some(held) = s.per_uid.get_mut(&self.uid) {
            held.waiting.insert(self.id, Waiting { signal: self.signal.clone(), no_rule: self.no_rule });
        }
    }

    /// The connection works on a request: it is not displaced meanwhile.
    pub fn working(&self) {
        let mut s = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = s.per_uid.get_mut(&self.uid) {
            held.waiting.remove(&self.id);
        }
    }

    /// Resolves once a newcomer has displaced this connection, with the
    /// text of its `busy` answer.
    pub async fn displaced(&self) -> String {
        self.signal.displace.notified().await;
        self.displaced_because()
    }

    /// Why this connection was displaced (empty if it was not).
    pub fn displaced_because(&self) -> String {
        self.signal.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this connection was displaced.
    pub fn was_displaced(&self) -> bool {
        self.signal.released.load(Ordering::Acquire)
    }

    /// Whether this uid is on the short leash (no rule names it).
    pub fn no_rule(&self) -> bool {
        self.no_rule
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.was_displaced() {
            return;
        }
        s.total = s.total.saturating_sub(1);
        s.no_rule_total = s.no_rule_total.saturating_sub(usize::from(self.no_rule));
        if let Some(held) = s.per_uid.get_mut(&self.uid) {
            held.waiting.remove(&self.id);
            held.count = held.count.saturating_sub(1);
            if held.count == 0 {
                s.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlotLimits = SlotLimits { global: 64, per_uid: 32 };

    fn take(slots: &Arc<Slots>, uid: u32, named: bool, n: usize) -> Vec<Slot> {
        (0..n).map(|_| slots.take(LIMITS, uid, named).unwrap()).collect()
    }

    #[test]
    fn a_uid_no_rule_names_gets_a_few_connections_and_a_small_share() {
        let slots = Arc::new(Slots::default());
        let _mine = take(&slots, 1000, false, NO_RULE_PER_UID);
        assert_eq!(
            slots.take(LIMITS, 1000, false).unwrap_err().0,
            "uid 1000 already holds 8 connections, the most a uid no policy rule names may hold; close some first"
        );
        // The share (64 / 8 = 8) is taken: another such uid is refused, a
        // named one is not.
        assert_eq!(
            slots.take(LIMITS, 1001, false).unwrap_err().0,
            "uids no policy rule names hold 8 connections together, all their share; retry later"
        );
        assert!(slots.take(LIMITS, 2000, true).is_ok());
    }

    #[test]
    fn when_full_a_named_newcomer_displaces_the_longest_waiting_connection_of_the_biggest_holder() {
        let slots = Arc::new(Slots::default());
        let stranger = take(&slots, 1000, false, 8);
        let big = take(&slots, 2000, true, 32);
        let other = take(&slots, 3000, true, 24);
        assert_eq!(slots.total(), 64);
        // Nobody waits: nothing can be displaced.
        assert_eq!(
            slots.take(LIMITS, 4000, true).unwrap_err().0,
            "the daemon is at its limit of 64 connections; retry later"
        );
        for s in stranger.iter().chain(&big).chain(&other) {
            s.waiting();
        }
        // A uid no rule names never displaces anyone.
        assert!(slots.take(LIMITS, 5000, false).is_err());
        // The stranger's connections go first, oldest first.
        let newcomer = slots.take(LIMITS, 4000, true).unwrap();
        assert!(stranger[0].was_displaced() && !stranger[1].was_displaced());
        assert_eq!(
            stranger[0].displaced_because(),
            "this idle connection was closed to make room for another user's: the daemon is at its limit of 64 \
             connections and uid 1000, which no policy rule names, holds 8; connect again when needed"
        );
        assert_eq!(slots.total(), 64);
        let more: Vec<Slot> = (0..7).map(|_| slots.take(LIMITS, 4000, true).unwrap()).collect();
        assert!(stranger.iter().all(Slot::was_displaced));
        // Then the biggest holder's (32 against the newcomer's 8).
        let next = slots.take(LIMITS, 4000, true).unwrap();
        assert!(big[0].was_displaced() && !other.iter().any(Slot::was_displaced));
        assert!(big[0].displaced_because().contains("uid 2000 holds 32, the most"), "{}", big[0].displaced_because());
        // Dropping a displaced slot releases nothing twice.
        drop(stranger);
        drop(big);
        assert_eq!(slots.total(), 24 + 1 + 7 + 1);
        drop((newcomer, more, next, other));
        assert_eq!(slots.total(), 0);
    }

    #[test]
    fn a_connection_at_work_is_not_displaced_and_equals_do_not_take_turns() {
        let slots = Arc::new(Slots::default());
        let a = take(&slots, 2000, true, 32);
        let b = take(&slots, 3000, true, 32);
        for s in &a {
            s.waiting();
            s.working();
        }
        for s in &b {
            s.waiting();
        }
        // Another connection of uid 2000 (32 held) does not displace b's
        // (32 held, not more than 32 + 1).
        let roomy = SlotLimits { global: 64, per_uid: 64 };
        assert_eq!(
            slots.take(roomy, 2000, true).unwrap_err().0,
            "the daemon is at its limit of 64 connections; retry later"
        );
        // A fresh uid displaces b's (the only ones waiting), never a's.
        assert!(slots.take(LIMITS, 4000, true).is_ok());
        assert!(b[0].was_displaced() && !a.iter().any(Slot::was_displaced));
    }
}
