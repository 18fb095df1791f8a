//! Leases: every grant is one. A lease has an id (unique, never reused
//! while the enforcer's pins last; without them, while the daemon runs), an owner uid, a scope (the inode of the token's
//! user namespace), a mode, when it was created and when it expires.
//!
//! Where the enforcer runs, each lease has one entry in its `deadlines`
//! map, written before the grant leaves the daemon: the token's own serial
//! (owner and container mode), or the whole scope (serial 0: libbpf mode
//! and delegated mounts, whose clients create more tokens themselves).
//! The entry holds the expiry (CLOCK_BOOTTIME) or "none"; revoking sets it
//! to 0, and from then on the kernel refuses every use of those tokens.
//! The kernel side removes the entry when the token or the scope is freed;
//! the daemon then forgets the lease. Without the enforcer, leases are
//! listed as `not_enforced`: nothing stops their tokens.
//!
//! The entry also holds the lease's id, owner, mode, serial and times,
//! and the last id handed out is kept in the enforcer's `last_lease` map:
//! a daemon that adopts a pinned enforcer after a restart rebuilds this
//! table from them ([`LeaseTable::adopt`]) and never reuses an id.
//!
//! The table is bounded ([`MAX_LEASES`], the size of the enforcer's map),
//! and so is each uid's share of unenforced leases
//! ([`MAX_UNENFORCED_PER_UID`]): beyond either the oldest unenforced
//! leases are forgotten, counted and logged ([`bound`]).
//!
//! Listings are paged ([`LeaseTable::page`]): by id, which only grows,
//! so a walk along the cursor lists every lease that lasts throughout it
//! exactly once.

mod bound;
mod listing;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bpftoken_proto::{LeaseInfo, LeaseMode, LeaseState, Refusal, RefusalCode, RevokeTarget};

pub use bound::{MAX_FORGOTTEN_UIDS, MAX_UNENFORCED_PER_UID};
pub use listing::{Page, MAX_LISTED_CGROUP};

use crate::enforcer::{Binding, CgroupId, Enforcer, LeaseEntries, LeaseKey, LeaseRecord, NO_DEADLINE, REVOKED};

/// Most leases the daemon tracks (and entries in the enforcer's map).
pub const MAX_LEASES: usize = 65536;

/// One lease.
#[derive(Debug, Clone)]
struct Lease {
    id: u64,
    uid: u32,
    scope: u64,
    mode: LeaseMode,
    created: SystemTime,
    expires: Option<SystemTime>,
    /// CLOCK_BOOTTIME nanoseconds of the expiry, as the kernel compares.
    deadline: Option<u64>,
    serial: Option<u64>,
    whole_scope: bool,
    /// The enforcer entry; `None` when leases are not enforced here.
    key: Option<LeaseKey>,
    /// The lease id that entry carries: `id`, except for a lease renumbered
    /// at adoption (its id appeared twice).
    entry_id: u64,
    revoked: bool,
    bind: NewBinding,
}

/// What a new lease is for.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub uid: u32,
    /// The scope's owner, whose `max_live_tokens` its tokens count for
    /// (`ScopeKey::owner_uid`): recorded so that a daemon that adopts the
    /// lease counts them for the same uid.
    pub scope_uid: u32,
    pub scope: u64,
    pub mode: LeaseMode,
    /// The token's serial, if the enforcer told it.
    pub serial: Option<u64>,
    /// Covers every token of the scope rather than the one serial.
    pub whole_scope: bool,
    pub ttl: Option<Duration>,
    pub bind: NewBinding,
}

/// Who may use a lease's tokens: the kernel's [`Binding`] and, for
/// listings, the cgroup path it names.
#[derive(Debug, Clone, Default)]
pub struct NewBinding {
    pub kernel: Binding,
    pub cgroup_path: Option<String>,
}

/// Why a lease could not be started; the grant is then not handed out.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the enforcer did not record the new token's serial, so it could not revoke it; not handing it out")]
    NoSerial,
    #[error("scope {scope} (a user namespace) already has a lease covering all of its tokens (lease {other}); revoke it or let it end first")]
    ScopeLeased { scope: u64, other: u64 },
    #[error("the daemon already tracks {MAX_LEASES} live leases; revoke some or wait for tokens to be closed")]
    Full,
    #[error("cannot write the lease into the enforcer's map: {0}")]
    Map(std::io::Error),
    #[error("no lease id is known to be unused: {0}; enforced grants are refused until it can be read")]
    UnsafeIds(String),
}

/// Where [`LeaseTable::adopt`] reads a pinned enforcer's leases: the
/// enforcer (a fake in tests).
pub trait LeaseStore {
    /// The last lease id handed out, as pinned.
    fn last_lease_id(&self) -> std::io::Result<u64>;
    /// Every lease entry.
    fn leases(&self) -> std::io::Result<LeaseEntries>;
}

impl LeaseStore for Enforcer {
    fn last_lease_id(&self) -> std::io::Result<u64> {
        Enforcer::last_lease_id(self)
    }

    fn leases(&self) -> std::io::Result<LeaseEntries> {
        Enforcer::leases(self)
    }
}

/// A lease a restarted daemon adopted.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub info: LeaseInfo,
    /// Whose `max_live_tokens` its scope's tokens count for.
    pub scope_uid: u32,
}

/// The daemon's lease table.
#[derive(Debug, Default)]
pub struct LeaseTable {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// The last id handed out (ids start at 1).
    last_id: u64,
    /// The id the enforcer's `last_lease` map holds: every id up to it is
    /// spent for later daemons. Ids are reserved [`LEASE_ID_BLOCK`] at a
    /// time, so a grant costs that map write once per block, not each time.
    reserved_to: u64,
    /// Set when the pinned last id could not be read at adoption: ids
    /// from `last_id` on may already have been handed out, so no enforced
    /// lease starts until it is read (why, for the refusal).
    ids_unknown: Option<String>,
    leases: BTreeMap<u64, Lease>,
    /// When a full table was last swept to make room: at most one such
    /// sweep (one map lookup per lease) per [`FULL_SWEEP_INTERVAL`], so a
    /// table that stays full costs a mint O(1), not 65,536 lookups.
    last_full_sweep: Option<Instant>,
    /// The ids in `leases` of unenforced leases, per owner.
    unenforced: bound::Unenforced,
    /// Unenforced leases forgotten to keep the table bounded.
    forgotten: bound::Forgotten,
}

impl Table {
    fn insert(&mut self, lease: Lease) {
        if lease.key.is_none() {
            self.unenforced.add(lease.uid, lease.id);
        }
        self.leases.insert(lease.id, lease);
    }

    fn remove(&mut self, id: u64) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        if lease.key.is_none() {
            self.unenforced.remove(lease.uid, id);
        }
        Some(lease)
    }

    /// Forget lease `id` to keep the table bounded: counted, and the
    /// audit line to write, if one is due, added to `lines`.
    fn forget(&mut self, id: u64, lines: &mut Vec<bound::ForgottenLine>) {
        if let Some(lease) = self.remove(id) {
            lines.extend(self.forgotten.note(lease.uid, Instant::now()));
        }
    }
}

/// See [`Table::reserved_to`]. A restart skips at most this many ids.
const LEASE_ID_BLOCK: u64 = 64;

/// See [`Table::last_full_sweep`].
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Lease {
    fn state(&self, now_boot: u64) -> LeaseState {
        if self.revoked {
            LeaseState::Revoked
        } else if self.key.is_none() {
            LeaseState::NotEnforced
        } else if self.deadline.is_some_and(|d| now_boot >= d) {
            LeaseState::Expired
        } else {
            LeaseState::Active
        }
    }

    fn info(&self, now_boot: u64) -> LeaseInfo {
        LeaseInfo {
            id: self.id,
            uid: self.uid,
            scope: self.scope,
            mode: self.mode,
            created: unix_secs(self.created),
            expires: self.expires.map(unix_secs),
            serial: self.serial,
            whole_scope: self.whole_scope,
            state: self.state(now_boot),
            bound_uid: self.bind.kernel.uid,
            bound_cgroup: self.bind.cgroup_path.clone(),
        }
    }
}

/// The enforcer entry a lease needs: its serial, or serial 0 for the scope.
fn key_of(new: &NewLease) -> Result<LeaseKey, LeaseError> {
    // Inode numbers of namespaces are 32-bit in the kernel (ns.inum).
    let scope =
        u32::try_from(new.scope).map_err(|_| LeaseError::Map(std::io::Error::from_raw_os_error(libc::ERANGE)))?;
    if new.whole_scope {
        return Ok(LeaseKey { scope, serial: 0 });
    }
    match new.serial {
        Some(serial) => Ok(LeaseKey { scope, serial }),
        None => Err(LeaseError::NoSerial),
    }
}

impl LeaseTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a lease for a grant about to be handed out. With the
    /// enforcer, its entry goes into the kernel now, with the expiry.
    /// Unenforced leases beyond the bounds forget the oldest, and say so.
    pub fn start(&self, enforcer: Option<&Enforcer>, new: NewLease) -> Result<LeaseInfo, LeaseError> {
        let mut lines = Vec::new();
        let started = start_locked(&mut self.lock(), enforcer, new, &mut lines);
        bound::log(&lines);
        started
    }

    /// Rebuild the table from the lease entries of an enforcer an earlier
    /// daemon pinned (none for a fresh one), and go on numbering after the
    /// last id it handed out. Returns the leases found; what could not be
    /// read is logged.
    ///
    /// The pinned last id is applied first, so that whatever fails later
    /// no id handed out from now on collides with one handed out before
    /// (every entry's id is at most that value: [`LeaseTable::start`]
    /// writes it first). If it cannot be read, enforced leases are refused
    /// until it can ([`LeaseError::UnsafeIds`]), and it is never lowered.
    pub fn adopt(&self, store: &dyn LeaseStore) -> Vec<Adopted> {
        let mut table = self.lock();
        match store.last_lease_id() {
            Ok(last) => {
                table.last_id = table.last_id.max(last);
                table.reserved_to = table.reserved_to.max(last);
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read the last lease id of the pinned enforcer: {e}; enforced grants are refused until \
                     it can be read"
                );
                table.ids_unknown = Some(format!("cannot read the last lease id of the pinned enforcer: {e}"));
            }
        }
        let entries = match store.leases() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(
                    "cannot read the lease entries of the pinned enforcer: {e}; they stay enforced in the kernel, \
                     but this daemon cannot list or revoke them"
                );
                return Vec::new();
            }
        };
        if entries.undecodable > 0 {
            tracing::warn!(
                skipped = entries.undecodable,
                "{} lease entr{} of the pinned enforcer cannot be decoded: they stay enforced in the kernel, but this \
                 daemon cannot list or revoke them",
                entries.undecodable,
                if entries.undecodable == 1 { "y" } else { "ies" }
            );
        }
        let now_boot = crate::sys::boottime_ns();
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        // Walking the cgroup tree is slow: once per cgroup, not per lease.
        let mut cgroups: std::collections::HashMap<CgroupId, Option<String>> = Default::default();
        let mut adopted = Vec::new();
        let mut twice = Vec::new();
        for (key, r) in entries.entries {
            let cgroup_path =
                r.bind.cgroup.and_then(|cg| cgroups.entry(cg).or_insert_with(|| crate::cgroup::path_of(cg)).clone());
            let lease = Lease {
                id: r.id,
                uid: r.uid,
                scope: u64::from(key.scope),
                mode: r.mode,
                created: at(r.created),
                expires: r.expires.map(at),
                // Revoked (0) and "none" are not expiries.
                deadline: Some(r.deadline).filter(|d| *d != NO_DEADLINE && *d != REVOKED),
                serial: r.serial.or((key.serial != 0).then_some(key.serial)),
                whole_scope: key.serial == 0,
                key: Some(key),
                entry_id: r.id,
                revoked: r.deadline == REVOKED,
                bind: NewBinding { kernel: r.bind, cgroup_path },
            };
            table.last_id = table.last_id.max(lease.id);
            if table.leases.contains_key(&lease.id) {
                twice.push((lease, r.scope_uid));
                continue;
            }
            adopted.push(Adopted { info: lease.info(now_boot), scope_uid: r.scope_uid });
            table.insert(lease);
        }
        // Kept under a new id (here only), so that each can be revoked.
        for (mut lease, scope_uid) in twice {
            let old = lease.id;
            table.last_id += 1;
            lease.id = table.last_id;
            tracing::warn!(
                lease = old,
                "lease id {old} appears twice in the pinned enforcer (scope {}, serial {}): listed as lease {}",
                lease.scope,
                lease.key.map_or(0, |k| k.serial),
                lease.id
            );
            adopted.push(Adopted { info: lease.info(now_boot), scope_uid });
            table.insert(lease);
        }
        adopted
    }

    /// Undo [`LeaseTable::start`] for a grant the client never took.
    pub fn cancel(&self, enforcer: Option<&Enforcer>, id: u64) {
        let mut table = self.lock();
        if let Some(lease) = table.remove(id) {
            if let (Some(e), Some(key)) = (enforcer, lease.key) {
                if let Err(err) = e.end_lease(key) {
                    tracing::warn!(lease = id, "cannot remove the entry of a lease never handed out: {err}");
                }
            }
        }
    }

    /// Forget leases whose tokens (or scope) the kernel has freed, and
    /// write the audit lines about forgotten unenforced leases that are
    /// still due (the daemon sweeps every 5 s).
    pub fn sweep(&self, enforcer: Option<&Enforcer>) -> usize {
        let (swept, lines) = {
            let mut table = self.lock();
            let swept = sweep_locked(&mut table, enforcer, |_| true);
            (swept, table.forgotten.flush(Instant::now()))
        };
        bound::log(&lines);
        swept
    }

    /// Leases the kernel enforces (an entry in the enforcer's map) whose
    /// tokens or scope are still alive.
    pub fn enforced(&self, enforcer: &Enforcer) -> usize {
        let mut table = self.lock();
        sweep_locked(&mut table, Some(enforcer), |_| true);
        table.leases.values().filter(|l| l.key.is_some()).count()
    }

    /// Leases held, with an entry in the enforcer's map and without, as
    /// of the last sweep (no lookup here: for the metrics, every tick).
    pub fn counts(&self) -> (usize, usize) {
        let table = self.lock();
        let enforced = table.leases.values().filter(|l| l.key.is_some()).count();
        (enforced, table.leases.len() - enforced)
    }

    /// Revoke what `target` names on behalf of `requester` (a uid; 0 may
    /// revoke anyone's). The kernel refuses the tokens from now on.
    pub fn revoke(
        &self,
        enforcer: Result<&Enforcer, String>,
        requester: u32,
        target: RevokeTarget,
    ) -> Result<Vec<LeaseInfo>, Refusal> {
        let mut table = self.lock();
        // A lease whose tokens are gone is not there to revoke. Only the
        // targeted leases are checked.
        let targeted = |l: &Lease| match target {
            RevokeTarget::Lease(id) => l.id == id,
            RevokeTarget::Uid(uid) => l.uid == uid,
            RevokeTarget::All => true,
        };
        sweep_locked(&mut table, enforcer.as_ref().ok().copied(), targeted);
        let ids: Vec<u64> = match target {
            RevokeTarget::Lease(id) => {
                let Some(lease) = table.leases.get(&id) else {
                    return Err(Refusal::new(
                        RefusalCode::UnknownLease,
                        format!("no lease {id}: it never existed, or its tokens are gone and it was forgotten"),
                    ));
                };
                if requester != 0 && lease.uid != requester {
                    return Err(Refusal::new(
                        RefusalCode::NotYourLease,
                        format!(
                            "lease {id} belongs to uid {}, not to you (uid {requester}); only root may revoke it",
                            lease.uid
                        ),
                    ));
                }
                vec![id]
            }
            RevokeTarget::Uid(uid) => {
                if requester != 0 && uid != requester {
                    return Err(Refusal::new(
                        RefusalCode::NotYourLease,
                        format!("uid {requester} may revoke only its own leases, not those of uid {uid}"),
                    ));
                }
                table.leases.values().filter(|l| l.uid == uid).map(|l| l.id).collect()
            }
            RevokeTarget::All => {
                if requester != 0 {
                    return Err(Refusal::new(
                        RefusalCode::NotYourLease,
                        format!("only root may revoke every lease; uid {requester} may revoke its own"),
                    ));
                }
                table.leases.keys().copied().collect()
            }
        };
        let enforcer = enforcer.map_err(|why| {
            Refusal::new(
                RefusalCode::RevocationUnavailable,
                format!("cannot revoke: enforcement is unavailable: {why}; tokens already handed out keep working"),
            )
        })?;
        let now = crate::sys::boottime_ns();
        let mut revoked = Vec::new();
        for id in ids {
            let Some(lease) = table.leases.get_mut(&id) else { continue };
            if let Some(key) = lease.key {
                match enforcer.set_deadline(key, lease.entry_id, REVOKED) {
                    // Its token or scope was already freed: nothing is left
                    // to use, and the entry is not recreated.
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Refusal::new(
                            RefusalCode::RevocationUnavailable,
                            format!("cannot revoke lease {id}: writing the enforcer's map failed: {e}"),
                        ))
                    }
                }
            }
            // A lease minted before the enforcer ran has no entry; there is
            // none today (the enforcer is loaded at start or never).
            lease.revoked = true;
            revoked.push(lease.info(now));
        }
        Ok(revoked)
    }
}

/// [`LeaseTable::start`] under the lock; `lines`: the audit lines about
/// forgotten leases to write once it is released.
fn start_locked(
    table: &mut Table,
    enforcer: Option<&Enforcer>,
    new: NewLease,
    lines: &mut Vec<bound::ForgottenLine>,
) -> Result<LeaseInfo, LeaseError> {
    let bind = new.bind.clone();
    let now_boot = crate::sys::boottime_ns();
    let created = SystemTime::now();
    let deadline = new.ttl.map(|t| now_boot.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)));
    if enforcer.is_none() {
        // Nothing tells when an unenforced lease's tokens are closed: past
        // its uid's bound, its oldest makes room.
        if let Some(oldest) = table.unenforced.oldest_if_full(new.uid) {
            table.forget(oldest, lines);
        }
    }
    if table.leases.len() >= MAX_LEASES && table.last_full_sweep.is_none_or(|t| t.elapsed() >= FULL_SWEEP_INTERVAL) {
        sweep_locked(table, enforcer, |_| true);
        table.last_full_sweep = Some(Instant::now());
    }
    if table.leases.len() >= MAX_LEASES {
        // Unenforced leases are informational only: the oldest makes room.
        match table.leases.values().find(|l| l.key.is_none()).map(|l| l.id) {
            Some(id) => table.forget(id, lines),
            None => return Err(LeaseError::Full),
        }
    }
    if let Some(e) = enforcer {
        ids_known_locked(table, e)?;
    }
    let id = table.last_id + 1;
    let expires = new.ttl.map(|t| created + t);
    let key = match enforcer {
        None => None,
        Some(e) => {
            let key = key_of(&new)?;
            // The id is spent first: a later daemon never reuses it.
            if id > table.reserved_to {
                let upto = id + LEASE_ID_BLOCK - 1;
                e.set_last_lease_id(upto).map_err(LeaseError::Map)?;
                table.reserved_to = upto;
            }
            table.last_id = id;
            let record = LeaseRecord {
                deadline: deadline.unwrap_or(NO_DEADLINE),
                bind: bind.kernel,
                id,
                uid: new.uid,
                scope_uid: new.scope_uid,
                mode: new.mode,
                serial: new.serial,
                created: unix_secs(created),
                expires: expires.map(unix_secs),
            };
            match e.start_lease(key, &record) {
                Ok(()) => Some(key),
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    // The lease whose entry it is (a lease of an earlier
                    // namespace with this inode number may still be listed).
                    let holder = e.lease_id_at(key).ok().flatten();
                    let other = table
                        .leases
                        .values()
                        .find(|l| l.key == Some(key) && Some(l.entry_id) == holder)
                        .map_or(0, |l| l.id);
                    return Err(LeaseError::ScopeLeased { scope: new.scope, other });
                }
                Err(err) if err.raw_os_error() == Some(libc::E2BIG) => return Err(LeaseError::Full),
                Err(err) => return Err(LeaseError::Map(err)),
            }
        }
    };
    table.last_id = id;
    let lease = Lease {
        id,
        uid: new.uid,
        scope: new.scope,
        mode: new.mode,
        created,
        expires,
        deadline,
        serial: new.serial,
        whole_scope: new.whole_scope,
        key,
        entry_id: id,
        revoked: false,
        bind,
    };
    let info = lease.info(now_boot);
    table.insert(lease);
    Ok(info)
}

/// Whether ids from `table.last_id` on are known to be unused; if the
/// pinned last id could not be read at adoption, read it now.
fn ids_known_locked(table: &mut Table, store: &dyn LeaseStore) -> Result<(), LeaseError> {
    let Some(why) = &table.ids_unknown else { return Ok(()) };
    match store.last_lease_id() {
        Ok(last) => {
            table.last_id = table.last_id.max(last);
            table.reserved_to = table.reserved_to.max(last);
            table.ids_unknown = None;
            tracing::info!(last, "read the last lease id of the pinned enforcer: enforced grants resume");
            Ok(())
        }
        Err(_) => Err(LeaseError::UnsafeIds(why.clone())),
    }
}

/// Forget the leases `which` selects whose tokens are gone; the others
/// are kept unchecked.
fn sweep_locked(table: &mut Table, enforcer: Option<&Enforcer>, which: impl Fn(&Lease) -> bool) -> usize {
    let now = SystemTime::now();
    let gone: Vec<u64> =
        table.leases.values().filter(|l| which(l) && is_gone(l, enforcer, now)).map(|l| l.id).collect();
    for id in &gone {
        table.remove(*id);
    }
    gone.len()
}

/// Whether `lease` is done with: with the enforcer, its entry is gone
/// from the map (the kernel freed its token or scope) or the key is a
/// later lease's now. Nothing tells when an unenforced lease's token is
/// closed; it is done with once it has expired (listing it longer says
/// nothing).
fn is_gone(lease: &Lease, enforcer: Option<&Enforcer>, now: SystemTime) -> bool {
    match (enforcer, lease.key) {
        (Some(e), Some(key)) => matches!(e.deadline(key, lease.entry_id), Ok(None)),
        (Some(_), None) => false,
        (None, _) => lease.expires.is_some_and(|t| t <= now),
    }
}

#[cfg(test)]
mod tests;
