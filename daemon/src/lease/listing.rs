//! Listing leases a page at a time ([`LeaseTable::page`]), and what a
//! listing says of leases forgotten to keep the table bounded.
//!
//! Invariants: a page lists leases in id order from just above its
//! cursor; ids only grow, so a walk along the cursors lists every lease
//! that lasts throughout it exactly once, and one started during it if
//! its page comes later. Every lease a page shows fits in a frame on its
//! own (its cgroup path is cut to [`MAX_LISTED_CGROUP`]).

use std::ops::Bound;
use std::time::SystemTime;

use bpftoken_proto::{ForgottenLeases, LeaseInfo};

use super::{is_gone, Lease, LeaseTable};
use crate::enforcer::Enforcer;

/// Longest `bound_cgroup` a listing shows (bytes; a longer path is cut,
/// marked with a trailing `...`), so that any one lease fits in a page.
pub const MAX_LISTED_CGROUP: usize = 4096;

/// One page of a listing ([`LeaseTable::page`]).
#[derive(Debug)]
pub struct Page {
    /// Oldest first.
    pub leases: Vec<LeaseInfo>,
    /// The last id listed when more may follow; `None` on the last page.
    pub next: Option<u64>,
}

impl LeaseTable {
    /// One page of the leases of `uid` (all with `None`) whose id is above
    /// `after`, oldest first: at most `limit`, and no more once `fits`
    /// refuses the next one (it is asked about each lease in turn, and must
    /// accept any one lease alone: the first is listed whatever it says).
    /// Leases looked at whose tokens are gone are forgotten on the way, so
    /// a page costs lookups in proportion to what it shows, not to the
    /// whole table.
    pub fn page(
        &self,
        enforcer: Option<&Enforcer>,
        uid: Option<u32>,
        after: Option<u64>,
        limit: usize,
        mut fits: impl FnMut(&LeaseInfo) -> bool,
    ) -> Page {
        let mut table = self.lock();
        let (now, now_boot) = (SystemTime::now(), crate::sys::boottime_ns());
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let (mut leases, mut next, mut gone) = (Vec::<LeaseInfo>::new(), None, Vec::new());
        for l in table.leases.range((from, Bound::Unbounded)).map(|(_, l)| l) {
            if uid.is_some_and(|u| l.uid != u) {
                continue;
            }
            if is_gone(l, enforcer, now) {
                gone.push(l.id);
                continue;
            }
            if leases.len() >= limit.max(1) {
                next = leases.last().map(|l| l.id);
                break;
            }
            let info = listed(l, now_boot);
            if !fits(&info) && !leases.is_empty() {
                next = leases.last().map(|l| l.id);
                break;
            }
            leases.push(info);
        }
        for id in gone {
            table.remove(id);
        }
        Page { leases, next }
    }

    /// How many leases of `uid` (all with `None`) the table holds.
    pub fn count(&self, uid: Option<u32>) -> usize {
        self.lock().leases.values().filter(|l| uid.is_none_or(|u| l.uid == u)).count()
    }

    /// Counts of the unenforced leases forgotten so far that `uid` may see
    /// (its own; `None`: root, everyone's).
    pub fn forgotten(&self, uid: Option<u32>) -> Vec<ForgottenLeases> {
        self.lock().forgotten.listed(uid)
    }
}

/// `lease` as a listing shows it: its `bound_cgroup` cut to
/// [`MAX_LISTED_CGROUP`] bytes.
fn listed(lease: &Lease, now_boot: u64) -> LeaseInfo {
    let mut info = lease.info(now_boot);
    if let Some(path) = info.bound_cgroup.as_mut().filter(|p| p.len() > MAX_LISTED_CGROUP) {
        let mut cut = MAX_LISTED_CGROUP - 3;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path.truncate(cut);
        path.push_str("...");
    }
    info
}
