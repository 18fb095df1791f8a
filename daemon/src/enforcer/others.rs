//! Pin sets of other bpftokend builds (`enforcer-<hash>` directories of
//! another hash, see [`crate::pins`]), left by the daemon that ran before
//! an upgrade. Their programs stay attached and keep enforcing their
//! leases, but this daemon does not adopt them (their maps or records may
//! differ). At start, a set whose `deadlines` map holds no entry is
//! removed (its programs detach); a set with entries is kept and
//! revocation reaches it: `revoke --uid U` and `revoke --all` write
//! deadline 0 (revoked) into its matching entries too.
//!
//! Only two fields of another build's entries are read or written, and
//! only where its `deadlines` map has this build's key and value sizes:
//! the deadline (first 8 bytes, what the kernel side checks, 0: revoked)
//! and the owner uid. A set whose layout is unknown is never interpreted;
//! it is reported with the `rm -r` command that ends its leases.
//!
//! The entry layout comes from `record` alone: this module does
//! not use the enforcer's API (the enforcer uses it).

use std::io;
use std::path::{Path, PathBuf};

use bpftoken_proto::{OtherBuild, OtherLeases};

use super::record::{ENTRY_KEY_SIZE, ENTRY_OWNER_UID_AT, ENTRY_SIZES_KNOWN, REVOKED};
use crate::sys::bpf::MapFd;

/// `BPF_EXIST`: update an existing entry only.
const BPF_EXIST: u64 = 2;

/// The `deadlines` map of another build's set, as far as this daemon
/// uses it (a fake in tests).
pub trait EntryMap {
    fn keys(&self) -> io::Result<Vec<Vec<u8>>>;
    fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Replace an existing entry (`ENOENT` if it is gone).
    fn replace(&self, key: &[u8], value: &[u8]) -> io::Result<()>;
}

impl EntryMap for MapFd {
    fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        MapFd::keys(self)
    }

    fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        MapFd::lookup(self, key)
    }

    fn replace(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.update(key, value, BPF_EXIST)
    }
}

/// What revocation may reach in one set.
#[derive(Debug)]
enum Layout<M> {
    /// Its `deadlines` map, with this build's sizes.
    Known(M),
    /// Why it is not interpreted.
    Unknown(String),
}

/// One other build's set.
#[derive(Debug)]
struct OtherSet<M> {
    dir: PathBuf,
    layout: Layout<M>,
}

/// The sets of other builds this daemon found at start and kept.
#[derive(Debug)]
pub struct OtherSets<M = MapFd> {
    sets: Vec<OtherSet<M>>,
}

impl<M> Default for OtherSets<M> {
    fn default() -> Self {
        OtherSets { sets: Vec::new() }
    }
}

/// Which entries a revocation reaches.
#[derive(Debug, Clone, Copy)]
pub enum Whose {
    Uid(u32),
    All,
}

fn owner_of(value: &[u8]) -> Option<u32> {
    value.get(ENTRY_OWNER_UID_AT..ENTRY_OWNER_UID_AT + 4)?.try_into().ok().map(u32::from_ne_bytes)
}

fn deadline_of(value: &[u8]) -> Option<u64> {
    value.get(..8)?.try_into().ok().map(u64::from_ne_bytes)
}

impl OtherSets<MapFd> {
    /// Open the sets in `dirs` (other builds'), removing those that hold
    /// no lease entry; one log line each.
    pub fn open(dirs: Vec<PathBuf>, this: &str) -> OtherSets<MapFd> {
        OtherSets::open_with(dirs, this, |dir| {
            let map = MapFd::open_pinned(&dir.join("map-deadlines")).map_err(|e| format!("map-deadlines: {e}"))?;
            let (key, value) = map.sizes();
            if key != ENTRY_KEY_SIZE || !ENTRY_SIZES_KNOWN.contains(&value) {
                return Err(format!(
                    "its deadlines map has key and value sizes {:?}, this build knows ({ENTRY_KEY_SIZE}, any of \
                     {ENTRY_SIZES_KNOWN:?})",
                    map.sizes()
                ));
            }
            Ok(map)
        })
    }
}

impl<M: EntryMap> OtherSets<M> {
    fn open_with(mut dirs: Vec<PathBuf>, this: &str, open: impl Fn(&Path) -> Result<M, String>) -> OtherSets<M> {
        // Reported in a stable order.
        dirs.sort();
        let mut sets = Vec::new();
        for dir in dirs {
            let d = dir.display();
            let layout = match open(&dir) {
                Ok(map) => match map.keys() {
                    Ok(keys) if keys.is_empty() => match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {
                            tracing::info!(pins = %d, "removed the pinned enforcer of another bpftokend build: it held no lease");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(pins = %d, "cannot remove the empty pinned enforcer of another build: {e}");
                            continue;
                        }
                    },
                    Ok(keys) => {
                        tracing::warn!(
                            pins = %d,
                            "{d} holds the pinned enforcer of another bpftokend build (this one is {this}) with {} \
                             lease(s): they stay enforced; `bpftoken revoke --uid U` and `--all` (as root) revoke them too; \
                             `rm -r {d}` ends them at once",
                            keys.len()
                        );
                        Layout::Known(map)
                    }
                    Err(e) => Layout::Unknown(format!("cannot read its deadlines map: {e}")),
                },
                Err(why) => Layout::Unknown(why),
            };
            if let Layout::Unknown(why) = &layout {
                tracing::warn!(
                    pins = %d,
                    "{d} holds the pinned enforcer of another bpftokend build (this one is {this}) whose layout this \
                     daemon does not know ({why}): its leases stay enforced until their deadlines or until their \
                     tokens are closed, and this daemon cannot revoke them; `rm -r {d}` ends them at once"
                );
            }
            sets.push(OtherSet { dir, layout });
        }
        OtherSets { sets }
    }

    /// Each set kept: its lease entries and how many are revoked.
    pub fn report(&self) -> Vec<OtherBuild> {
        self.visit(None)
    }

    /// Revoke the entries `whose` names in every set whose layout is
    /// known; the answer counts, per set, the entries matched and those
    /// now revoked.
    pub fn revoke(&self, whose: Whose) -> Vec<OtherBuild> {
        self.visit(Some(whose))
    }

    /// Forget sets whose directory is gone, and remove those left with no
    /// entry (their tokens were all closed).
    pub fn prune(&mut self) {
        self.sets.retain(|set| {
            if !set.dir.exists() {
                return false;
            }
            let Layout::Known(map) = &set.layout else { return true };
            if !map.keys().is_ok_and(|k| k.is_empty()) {
                return true;
            }
            match std::fs::remove_dir_all(&set.dir) {
                Ok(()) => {
                    tracing::info!(pins = %set.dir.display(), "removed the pinned enforcer of another bpftokend build: no lease is left");
                    false
                }
                Err(_) => true,
            }
        });
    }

    /// Whether any set is kept.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    fn visit(&self, revoke: Option<Whose>) -> Vec<OtherBuild> {
        self.sets
            .iter()
            .map(|set| {
                let leases = match &set.layout {
                    Layout::Unknown(_) => None,
                    Layout::Known(map) => count(map, revoke, &set.dir),
                };
                OtherBuild { dir: set.dir.display().to_string(), leases }
            })
            .collect()
    }
}

/// Count (and with `revoke`, revoke) the entries of one known map.
fn count<M: EntryMap>(map: &M, revoke: Option<Whose>, dir: &Path) -> Option<OtherLeases> {
    let keys = match map.keys() {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(pins = %dir.display(), "cannot read the deadlines map of another build: {e}");
            return None;
        }
    };
    let mut out = OtherLeases { total: 0, revoked: 0 };
    for key in keys {
        // Gone meanwhile: its token or scope was freed.
        let Ok(Some(mut value)) = map.lookup(&key) else { continue };
        let matches = match revoke {
            None | Some(Whose::All) => true,
            Some(Whose::Uid(uid)) => owner_of(&value) == Some(uid),
        };
        if !matches {
            continue;
        }
        out.total += 1;
        if deadline_of(&value) == Some(REVOKED) {
            out.revoked += 1;
            continue;
        }
        if revoke.is_none() {
            continue;
        }
        value[..8].copy_from_slice(&REVOKED.to_ne_bytes());
        match map.replace(&key, &value) {
            Ok(()) => out.revoked += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => out.total -= 1,
            Err(e) => tracing::warn!(pins = %dir.display(), "cannot revoke a lease of another build: {e}"),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::record::ENTRY_SIZE;
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Fake(RefCell<BTreeMap<Vec<u8>, Vec<u8>>>);

    impl EntryMap for Fake {
        fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
            Ok(self.0.borrow().keys().cloned().collect())
        }

        fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().get(key).cloned())
        }

        fn replace(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
            match self.0.borrow_mut().get_mut(key) {
                Some(v) => {
                    v.copy_from_slice(value);
                    Ok(())
                }
                None => Err(io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }
    }

    fn entry(serial: u64, uid: u32, deadline: u64) -> (Vec<u8>, Vec<u8>) {
        let mut key = vec![0u8; ENTRY_KEY_SIZE];
        key[8..].copy_from_slice(&serial.to_ne_bytes());
        let mut value = vec![0u8; ENTRY_SIZE];
        value[..8].copy_from_slice(&deadline.to_ne_bytes());
        value[ENTRY_OWNER_UID_AT..ENTRY_OWNER_UID_AT + 4].copy_from_slice(&uid.to_ne_bytes());
        (key, value)
    }

    #[test]
    fn revocation_reaches_other_builds_where_their_layout_is_known() {
        let dir = std::env::temp_dir().join(format!("bpftokend-others-{}", std::process::id()));
        let (known, unknown, empty) = (dir.join("enforcer-1"), dir.join("enforcer-2"), dir.join("enforcer-3"));
        for d in [&known, &unknown, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        let sets = OtherSets::open_with(vec![known.clone(), unknown.clone(), empty.clone()], "enforcer-0", |d| {
            let fake = Fake::default();
            if d.ends_with("enforcer-1") {
                fake.0.borrow_mut().extend([
                    entry(1, 1000, u64::MAX),
                    entry(2, 1000, 5),
                    entry(3, 1001, u64::MAX),
                    entry(4, 1001, REVOKED),
                ]);
            } else if d.ends_with("enforcer-2") {
                return Err("its deadlines map has key and value sizes (16, 32)".to_owned());
            }
            Ok(fake)
        });
        assert!(!empty.exists(), "a set with no lease is removed");
        let dirs = |d: &Path| d.display().to_string();
        let of = |total, revoked| Some(OtherLeases { total, revoked });
        assert_eq!(
            sets.report(),
            [OtherBuild { dir: dirs(&known), leases: of(4, 1) }, OtherBuild { dir: dirs(&unknown), leases: None }]
        );
        assert_eq!(sets.revoke(Whose::Uid(1000))[0].leases, of(2, 2));
        assert_eq!(sets.report()[0].leases, of(4, 3), "uid 1001's first lease is untouched");
        assert_eq!(sets.revoke(Whose::Uid(7))[0].leases, of(0, 0));
        let all = sets.revoke(Whose::All);
        assert_eq!(all[0].leases, of(4, 4));
        assert_eq!(all[1].leases, None, "an unknown layout is never written");
        let Layout::Known(map) = &sets.sets[0].layout else { panic!("known") };
        let values = map.0.borrow();
        assert!(values
            .values()
            .all(|v| deadline_of(v) == Some(REVOKED) && v[8..ENTRY_OWNER_UID_AT].iter().all(|b| *b == 0)));
        drop(values);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
