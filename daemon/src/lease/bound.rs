//! The bound on unenforced leases, and what the daemon says when it
//! forgets some.
//!
//! Without the enforcer nothing tells the daemon when a token is closed,
//! so an unenforced lease without an expiry would be listed forever. The
//! table keeps at most [`MAX_UNENFORCED_PER_UID`] unenforced leases per
//! owner uid (and [`super::MAX_LEASES`] in all); beyond that the oldest
//! are forgotten. Forgetting one changes nothing for its tokens (nothing
//! stopped them anyway, and nothing can revoke them without the
//! enforcer): it is only no longer listed (docs/enforcement.md,
//! "Unenforced leases are bounded").
//!
//! Invariants: [`Unenforced`] holds exactly the ids of the table's
//! unenforced leases, per owner; every forgotten lease is counted in
//! [`Forgotten`] (per uid for at most [`MAX_FORGOTTEN_UIDS`] uids, the
//! rest together), and each count reaches the audit log, in at most one
//! line per uid per [`LINE_INTERVAL`] as forgetting goes on (the rest at
//! the next sweep), so a uid minting in a loop cannot flood the log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bpftoken_proto::ForgottenLeases;

/// Most unenforced leases kept per owner uid; older ones are forgotten.
pub const MAX_UNENFORCED_PER_UID: usize = 10_000;

/// Most uids whose forgotten leases are counted one by one; the counts of
/// further uids are added up together (`uid: None`), so that the counts
/// stay bounded and fit in the first page of a listing.
pub const MAX_FORGOTTEN_UIDS: usize = 1024;

/// Least time between two audit lines about one uid's forgotten leases
/// while it goes on minting past its bound.
pub(super) const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Ids of the unenforced leases, per owner uid, oldest (lowest) first.
///
/// One contiguous queue per uid rather than a tree: new ids are the
/// highest (pushed at the back), the oldest go from the front, and a
/// burst of grants does not leave thousands of small long-lived nodes
/// scattered over the heap, which would keep its freed memory from going
/// back to the system (`tests/tests/scale.rs` measures the RSS kept).
#[derive(Debug, Default)]
pub(super) struct Unenforced {
    by_uid: HashMap<u32, VecDeque<u64>>,
}

impl Unenforced {
    pub(super) fn add(&mut self, uid: u32, id: u64) {
        let ids = self.by_uid.entry(uid).or_default();
        // Ids only grow, so this is the back but for adopted leases.
        let at = ids.partition_point(|i| *i < id);
        if ids.get(at) != Some(&id) {
            ids.insert(at, id);
        }
    }

    pub(super) fn remove(&mut self, uid: u32, id: u64) {
        if let Some(ids) = self.by_uid.get_mut(&uid) {
            if let Ok(at) = ids.binary_search(&id) {
                ids.remove(at);
            }
            if ids.is_empty() {
                self.by_uid.remove(&uid);
            }
        }
    }

    /// The oldest unenforced lease of `uid` when it already has
    /// [`MAX_UNENFORCED_PER_UID`] (a new one would exceed the bound).
    pub(super) fn oldest_if_full(&self, uid: u32) -> Option<u64> {
        let ids = self.by_uid.get(&uid)?;
        (ids.len() >= MAX_UNENFORCED_PER_UID).then(|| ids.front().copied()).flatten()
    }
}

/// One owner's forgotten leases.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    total: u64,
    /// Not yet in an audit line.
    unlogged: u64,
    last_line: Option<Instant>,
}

/// An audit line to write (outside the table's lock): `count` more
/// leases of `uid` forgotten, `total` since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ForgottenLine {
    pub(super) uid: Option<u32>,
    pub(super) count: u64,
    pub(super) total: u64,
}

/// Leases forgotten so far, per owner.
#[derive(Debug, Default)]
pub(super) struct Forgotten {
    per_uid: BTreeMap<u32, Count>,
    /// Owners beyond [`MAX_FORGOTTEN_UIDS`].
    others: Count,
}

impl Forgotten {
    /// One more lease of `uid` forgotten; the line to write now, if its
    /// last one is [`LINE_INTERVAL`] old (or there was none).
    pub(super) fn note(&mut self, uid: u32, now: Instant) -> Option<ForgottenLine> {
        let tracked = self.per_uid.len() < MAX_FORGOTTEN_UIDS || self.per_uid.contains_key(&uid);
        let (who, count) =
            if tracked { (Some(uid), self.per_uid.entry(uid).or_default()) } else { (None, &mut self.others) };
        count.total += 1;
        count.unlogged += 1;
        if count.last_line.is_some_and(|t| now.duration_since(t) < LINE_INTERVAL) {
            return None;
        }
        Some(line(who, count, now))
    }

    /// Lines for every count not yet logged (the periodic sweep).
    pub(super) fn flush(&mut self, now: Instant) -> Vec<ForgottenLine> {
        let mut out: Vec<ForgottenLine> =
            self.per_uid.iter_mut().filter(|(_, c)| c.unlogged > 0).map(|(uid, c)| line(Some(*uid), c, now)).collect();
        if self.others.unlogged > 0 {
            out.push(line(None, &mut self.others, now));
        }
        out
    }

    /// The counts `uid` may see (`None`: root, every owner's).
    pub(super) fn listed(&self, uid: Option<u32>) -> Vec<ForgottenLeases> {
        let mut out: Vec<ForgottenLeases> = self
            .per_uid
            .iter()
            .filter(|(owner, _)| uid.is_none_or(|u| u == **owner))
            .map(|(owner, c)| ForgottenLeases { uid: Some(*owner), count: c.total })
            .collect();
        if uid.is_none() && self.others.total > 0 {
            out.push(ForgottenLeases { uid: None, count: self.others.total });
        }
        out
    }
}

fn line(uid: Option<u32>, c: &mut Count, now: Instant) -> ForgottenLine {
    let out = ForgottenLine { uid, count: c.unlogged, total: c.total };
    c.unlogged = 0;
    c.last_line = Some(now);
    out
}

/// Write `lines` to the audit log.
pub(super) fn log(lines: &[ForgottenLine]) {
    for l in lines {
        crate::audit::forgotten_leases(l.uid, l.count, l.total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_ids_in_order_whatever_order_they_come_and_go_in() {
        let mut u = Unenforced::default();
        for id in [3, 1, 2, 2, 7] {
            u.add(1000, id);
        }
        assert_eq!(u.by_uid[&1000], [1, 2, 3, 7]);
        u.remove(1000, 2);
        u.remove(1000, 9);
        u.remove(1001, 1);
        assert_eq!(u.by_uid[&1000], [1, 3, 7]);
        for id in [1, 3, 7] {
            u.remove(1000, id);
        }
        assert!(u.by_uid.is_empty(), "an empty queue goes");
    }

    #[test]
    fn a_uid_past_its_bound_gets_one_line_per_interval_and_the_rest_at_the_sweep() {
        let mut f = Forgotten::default();
        let t0 = Instant::now();
        assert_eq!(f.note(1000, t0), Some(ForgottenLine { uid: Some(1000), count: 1, total: 1 }));
        for _ in 0..99 {
            assert_eq!(f.note(1000, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(f.note(1001, t0), Some(ForgottenLine { uid: Some(1001), count: 1, total: 1 }));
        let later = t0 + LINE_INTERVAL;
        assert_eq!(f.note(1000, later), Some(ForgottenLine { uid: Some(1000), count: 100, total: 101 }));
        assert_eq!(f.note(1000, later), None);
        assert_eq!(f.flush(later), [ForgottenLine { uid: Some(1000), count: 1, total: 102 }]);
        assert_eq!(f.flush(later), []);
        assert_eq!(f.listed(Some(1001)), [ForgottenLeases { uid: Some(1001), count: 1 }]);
        assert_eq!(f.listed(Some(7)), []);
        assert_eq!(f.listed(None).len(), 2);
    }

    #[test]
    fn owners_beyond_the_tracked_ones_are_counted_together_and_shown_to_root_only() {
        let mut f = Forgotten::default();
        let now = Instant::now();
        let tracked = u32::try_from(MAX_FORGOTTEN_UIDS).unwrap();
        for uid in 0..tracked + 3 {
            f.note(uid, now);
        }
        let root = f.listed(None);
        assert_eq!(root.len(), MAX_FORGOTTEN_UIDS + 1);
        assert_eq!(root.last(), Some(&ForgottenLeases { uid: None, count: 3 }));
        assert_eq!(f.listed(Some(tracked + 1)), []);
        // A tracked uid stays counted by itself.
        f.note(5, now);
        assert_eq!(f.listed(Some(5)), [ForgottenLeases { uid: Some(5), count: 2 }]);
    }
}
