//! Unit tests of the lease table, against a fake store (no kernel).

//! The table without the enforcer (the kernel side is tested in the
//! VM): ids, listing, and who may revoke what, in that order.
use super::*;
use bpftoken_proto::ForgottenLeases;

impl LeaseTable {
    /// Every lease of `uid` (all with `None`), walking pages of 100.
    fn list(&self, enforcer: Option<&Enforcer>, uid: Option<u32>) -> Vec<LeaseInfo> {
        let (mut all, mut after) = (Vec::new(), None);
        loop {
            let page = self.page(enforcer, uid, after, 100, |_| true);
            all.extend(page.leases);
            match page.next {
                Some(next) => after = Some(next),
                None => return all,
            }
        }
    }
}

fn new(uid: u32, ttl: Option<u64>) -> NewLease {
    NewLease {
        uid,
        scope_uid: uid,
        scope: 4026531837,
        mode: LeaseMode::Owner,
        serial: None,
        whole_scope: false,
        ttl: ttl.map(Duration::from_secs),
        bind: NewBinding::default(),
    }
}

#[test]
fn ids_are_unique_and_leases_are_listed_per_uid() {
    let t = LeaseTable::default();
    let a = t.start(None, new(1000, None)).unwrap();
    let b = t.start(None, new(1001, Some(60))).unwrap();
    let c = t.start(None, new(1000, None)).unwrap();
    assert_eq!((a.id, b.id, c.id), (1, 2, 3));
    assert_eq!(a.state, LeaseState::NotEnforced);
    assert_eq!(a.expires, None);
    assert_eq!(b.expires, Some(b.created + 60));
    let ids = |l: Vec<LeaseInfo>| l.into_iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(ids(t.list(None, Some(1000))), [1, 3]);
    assert_eq!(ids(t.list(None, None)), [1, 2, 3]);
    // A cancelled grant is gone, and its id is not reused.
    t.cancel(None, 3);
    assert_eq!(t.start(None, new(1000, None)).unwrap().id, 4);
    assert_eq!(ids(t.list(None, Some(1000))), [1, 4]);
}

#[test]
fn revocation_checks_the_lease_then_the_caller_then_the_enforcer() {
    let t = LeaseTable::default();
    t.start(None, new(1000, None)).unwrap();
    let why = || Err("no BPF LSM".to_owned());
    let refusal = |r: Result<Vec<LeaseInfo>, Refusal>| r.unwrap_err();
    let r = refusal(t.revoke(why(), 1000, RevokeTarget::Lease(7)));
    assert_eq!(r.code, RefusalCode::UnknownLease);
    assert_eq!(r.message, "no lease 7: it never existed, or its tokens are gone and it was forgotten");
    let r = refusal(t.revoke(why(), 1001, RevokeTarget::Lease(1)));
    assert_eq!(r.code, RefusalCode::NotYourLease);
    assert_eq!(r.message, "lease 1 belongs to uid 1000, not to you (uid 1001); only root may revoke it");
    let r = refusal(t.revoke(why(), 1001, RevokeTarget::Uid(1000)));
    assert_eq!(r.message, "uid 1001 may revoke only its own leases, not those of uid 1000");
    let r = refusal(t.revoke(why(), 1001, RevokeTarget::All));
    assert_eq!(r.message, "only root may revoke every lease; uid 1001 may revoke its own");
    for (who, target) in [(1000, RevokeTarget::Lease(1)), (0, RevokeTarget::Uid(1000)), (0, RevokeTarget::All)] {
        let r = refusal(t.revoke(why(), who, target));
        assert_eq!(r.code, RefusalCode::RevocationUnavailable);
        assert_eq!(
            r.message,
            "cannot revoke: enforcement is unavailable: no BPF LSM; tokens already handed out keep working"
        );
    }
    // Nothing was marked revoked.
    assert_eq!(t.list(None, None)[0].state, LeaseState::NotEnforced);
}

#[test]
fn unenforced_leases_are_forgotten_once_expired_and_the_oldest_makes_room() {
    let t = LeaseTable::default();
    t.start(None, new(1000, Some(0))).unwrap();
    t.start(None, new(1000, None)).unwrap();
    assert_eq!(t.sweep(None), 1);
    {
        let mut table = t.lock();
        for id in 100..100 + MAX_LEASES as u64 - 1 {
            let mut l = table.leases[&2].clone();
            // Spread over uids: none reaches its own bound.
            (l.id, l.uid) = (id, (id % 8) as u32);
            table.insert(l);
        }
        assert_eq!(table.leases.len(), MAX_LEASES);
        table.last_id = 100 + MAX_LEASES as u64 - 2;
    }
    let next = t.start(None, new(1000, None)).unwrap();
    let all = t.list(None, None);
    assert_eq!(all.len(), MAX_LEASES);
    assert_eq!(all[0].id, 100, "lease 2, the oldest, made room");
    assert_eq!(all.last().map(|l| l.id), Some(next.id));
    assert_eq!(t.forgotten(None), [ForgottenLeases { uid: Some(1000), count: 1 }], "and it was counted");
}

#[test]
fn a_full_table_is_swept_at_most_once_a_second() {
    let t = LeaseTable::default();
    t.start(None, new(1000, None)).unwrap();
    let past = SystemTime::now() - Duration::from_secs(1);
    {
        let mut table = t.lock();
        for id in 2..=MAX_LEASES as u64 {
            let mut l = table.leases[&1].clone();
            (l.id, l.uid) = (id, (id % 8) as u32);
            // Every other lease has expired: a sweep forgets it.
            if id % 2 == 0 {
                l.expires = Some(past);
            }
            table.insert(l);
        }
        table.last_id = MAX_LEASES as u64;
        table.last_full_sweep = Some(Instant::now());
    }
    // Swept a moment ago: the oldest makes room, nothing else goes.
    t.start(None, new(1000, None)).unwrap();
    assert_eq!(t.lock().leases.len(), MAX_LEASES);
    assert!(!t.lock().leases.contains_key(&1));
    // A second later the next start sweeps the expired half.
    t.lock().last_full_sweep = Some(Instant::now() - FULL_SWEEP_INTERVAL);
    t.start(None, new(1000, None)).unwrap();
    assert_eq!(t.lock().leases.len(), MAX_LEASES / 2 + 1);
}

#[test]
fn a_uid_keeps_its_bound_of_unenforced_leases_and_the_older_ones_are_counted() {
    let t = LeaseTable::default();
    let first = t.start(None, new(1000, None)).unwrap().id;
    for _ in 1..MAX_UNENFORCED_PER_UID {
        t.start(None, new(1000, None)).unwrap();
    }
    let other = t.start(None, new(1001, None)).unwrap().id;
    assert_eq!(t.list(None, Some(1000)).len(), MAX_UNENFORCED_PER_UID);
    assert!(t.forgotten(None).is_empty());
    // Past the bound, each new lease forgets the uid's oldest, and only its.
    for _ in 0..5 {
        t.start(None, new(1000, Some(3600))).unwrap();
    }
    let mine = t.list(None, Some(1000));
    assert_eq!(mine.len(), MAX_UNENFORCED_PER_UID);
    assert_eq!(mine[0].id, first + 5);
    assert_eq!(t.list(None, Some(1001)).iter().map(|l| l.id).collect::<Vec<_>>(), [other]);
    assert_eq!(t.forgotten(Some(1000)), [ForgottenLeases { uid: Some(1000), count: 5 }]);
    assert_eq!(t.forgotten(Some(1001)), []);
    assert_eq!(t.forgotten(None), [ForgottenLeases { uid: Some(1000), count: 5 }]);
    // A lease that ends makes room: the next one forgets nothing.
    t.cancel(None, first + 5);
    t.start(None, new(1000, None)).unwrap();
    assert_eq!(t.list(None, Some(1000))[0].id, first + 6);
    assert_eq!(t.forgotten(Some(1000))[0].count, 5);
    // So does one that expired (swept).
    {
        let mut table = t.lock();
        let past = SystemTime::now() - Duration::from_secs(1);
        let id = *table.leases.keys().rev().nth(1).unwrap();
        table.leases.get_mut(&id).unwrap().expires = Some(past);
    }
    assert_eq!(t.sweep(None), 1);
    t.start(None, new(1000, None)).unwrap();
    assert_eq!(t.forgotten(Some(1000))[0].count, 5);
    assert_eq!(t.list(None, Some(1000)).len(), MAX_UNENFORCED_PER_UID);
}

#[test]
fn a_walk_lists_each_lease_once_while_leases_start_and_end_between_pages() {
    let t = LeaseTable::default();
    for uid in [1000, 1001] {
        for _ in 0..40 {
            t.start(None, new(uid, None)).unwrap();
        }
    }
    let owners = |t: &LeaseTable| t.lock().leases.values().map(|l| (l.id, l.uid)).collect::<Vec<_>>();
    for whose in [None, Some(1000)] {
        let mut existed = owners(&t);
        let (mut seen, mut after, mut ended) = (Vec::new(), None, Vec::new());
        let mut round = 0u64;
        loop {
            let page = t.page(None, whose, after, 7, |_| true);
            assert!(page.leases.len() <= 7);
            seen.extend(page.leases.iter().map(|l| l.id));
            let Some(next) = page.next else { break };
            after = Some(next);
            // Between pages: a lease ends behind the cursor and one ahead
            // of it; two start.
            round += 1;
            for id in [next.saturating_sub(round % 5), next + 1 + round % 3] {
                if t.lock().leases.contains_key(&id) {
                    t.cancel(None, id);
                    ended.push((id, next));
                }
            }
            for uid in [1000, 1001] {
                existed.push((t.start(None, new(uid, None)).unwrap().id, uid));
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, seen, "in id order, none twice");
        // Exactly the caller's leases that lasted the whole walk, those
        // that started during it (ids only grow: their page came later),
        // and those that ended behind the cursor (listed before).
        let mine = |uid: u32| whose.is_none_or(|u| u == uid);
        for (id, uid) in &existed {
            let cursor_when_ended = ended.iter().find(|(e, _)| e == id).map(|(_, c)| *c);
            let listed_before_it_ended = cursor_when_ended.is_none_or(|c| *id <= c);
            assert_eq!(
                seen.contains(id),
                mine(*uid) && listed_before_it_ended,
                "lease {id} of uid {uid} ({whose:?}, ended with the cursor at {cursor_when_ended:?})"
            );
        }
        assert!(seen.iter().all(|id| existed.iter().any(|(e, _)| e == id)), "nothing invented");
        assert!(!ended.is_empty() && existed.len() > 80);
    }
}

#[test]
fn a_page_ends_where_the_next_lease_does_not_fit_and_always_holds_one() {
    let t = LeaseTable::default();
    for _ in 0..5 {
        t.start(None, new(1000, None)).unwrap();
    }
    let mut room = 2;
    let page = t.page(None, None, None, 100, |_| {
        room -= 1;
        room >= 0
    });
    assert_eq!((page.leases.len(), page.next), (2, Some(2)));
    let page = t.page(None, None, Some(2), 100, |_| false);
    assert_eq!((page.leases.len(), page.next), (1, Some(3)), "a lease alone always fits");
    let page = t.page(None, None, Some(3), 100, |_| true);
    assert_eq!((page.leases.iter().map(|l| l.id).collect::<Vec<_>>(), page.next), (vec![4, 5], None));
    let page = t.page(None, None, Some(3), 1, |_| true);
    assert_eq!((page.leases.len(), page.next), (1, Some(4)));
}

/// A pinned enforcer's maps, as adoption reads them.
struct FakeStore {
    last: std::cell::Cell<Option<u64>>,
    entries: Option<Vec<(LeaseKey, LeaseRecord)>>,
}

impl LeaseStore for FakeStore {
    fn last_lease_id(&self) -> std::io::Result<u64> {
        self.last.get().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))
    }

    fn leases(&self) -> std::io::Result<LeaseEntries> {
        match &self.entries {
            Some(e) => Ok(LeaseEntries { entries: e.clone(), undecodable: 1 }),
            None => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

fn record(id: u64, uid: u32, scope_uid: u32) -> LeaseRecord {
    LeaseRecord {
        deadline: NO_DEADLINE,
        bind: Binding::default(),
        id,
        uid,
        scope_uid,
        mode: LeaseMode::Container,
        serial: Some(id),
        created: 1,
        expires: None,
    }
}

fn key(serial: u64) -> LeaseKey {
    LeaseKey { scope: 4026532000, serial }
}

#[test]
fn adoption_applies_the_pinned_last_id_even_when_the_entries_cannot_be_read() {
    let t = LeaseTable::default();
    let store = FakeStore { last: Some(10).into(), entries: None };
    assert!(t.adopt(&store).is_empty());
    let mut table = t.lock();
    assert_eq!(table.last_id, 10, "the next id is above every id handed out before");
    assert!(ids_known_locked(&mut table, &store).is_ok());
}

#[test]
fn without_the_pinned_last_id_no_enforced_lease_starts_until_it_is_read() {
    let t = LeaseTable::default();
    let store = FakeStore { last: None.into(), entries: Some(vec![(key(1), record(3, 1000, 1000))]) };
    assert_eq!(t.adopt(&store).len(), 1, "the entries are adopted all the same");
    let mut table = t.lock();
    let err = ids_known_locked(&mut table, &store).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no lease id is known to be unused: cannot read the last lease id of the pinned enforcer: Input/output \
         error (os error 5); enforced grants are refused until it can be read"
    );
    // Readable again: ids carry on above it, never below.
    store.last.set(Some(7));
    assert!(ids_known_locked(&mut table, &store).is_ok());
    assert_eq!(table.last_id, 7);
    assert!(table.ids_unknown.is_none());
}

#[test]
fn adopted_leases_keep_their_scope_owner_and_an_id_seen_twice_gets_a_new_one() {
    let t = LeaseTable::default();
    let entries = vec![(key(1), record(4, 100_000, 1000)), (key(2), record(4, 100_000, 1000))];
    let store = FakeStore { last: Some(5).into(), entries: Some(entries) };
    let adopted = t.adopt(&store);
    let ids: Vec<(u64, u32, u32)> = adopted.iter().map(|a| (a.info.id, a.info.uid, a.scope_uid)).collect();
    // The caller (a container's uid) owns the lease; the namespace's
    // owner counts its tokens, as before the restart.
    assert_eq!(ids, [(4, 100_000, 1000), (6, 100_000, 1000)]);
    assert_eq!(t.list(None, None).len(), 2, "both can be listed and revoked");
    assert_eq!(t.lock().last_id, 6);
}
