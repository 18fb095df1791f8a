//! The enforcer: a BPF LSM program (`daemon/bpf/enforcer.bpf.c`) on the
//! kernel's BPF token hooks, loaded at start when the kernel allows it.
//!
//! It gives every token a serial, counts live tokens per scope (user
//! namespace), records which serials each task created, and refuses every
//! use of a token whose serial or scope has a passed deadline in its
//! `deadlines` map. The daemon writes one entry there per lease
//! ([`crate::lease`]); the kernel side removes it when the token (or the
//! whole scope) is freed. Where it cannot be loaded the daemon runs on and
//! says so: at start, in systemd's STATUS= and in `bpftoken query`.
//!
//! Its links and maps are pinned in the host bpffs ([`crate::pins`]), so
//! enforcement outlives the daemon; a daemon of the same build that finds
//! them adopts them instead of loading again. Where pinning fails the
//! enforcer still runs, for the daemon's lifetime only, and says so.
//!
//! This module loads, adopts and pins the enforcer and is its API; the
//! byte layout of a lease entry is in `record`, the pin sets of other
//! builds in [`others`] (which builds on `record` only, never on this
//! module).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use bpftoken_proto::{Delegation, Enforcement, OtherBuild};

use crate::pins::{PinError, PinRoot};
use crate::sys::bpf::{self, Attached, LoadError, MapFd};

pub mod others;
mod record;

use others::{OtherSets, Whose};
use record::{entry_lease_id, record_samples};
pub use record::{Binding, CgroupId, ExeId, LeaseKey, LeaseRecord, NO_DEADLINE, REVOKED};

/// The enforcer object, built by `build.rs`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// libbpf's name for the object.
const OBJECT_NAME: &str = "bpftokend_enforcer";

/// The programs and maps are pinned as `link-NAME` and `map-NAME`.
const LINK_PREFIX: &str = "link-";
const MAP_PREFIX: &str = "map-";

/// `bpf_map_update_elem` flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Serials one task record holds (`TASK_SERIALS` in the C source).
const TASK_SERIALS: usize = 8;

/// Why the enforcer is not running: one line each, naming what is missing.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the BPF LSM is not active (active LSMs: {active}); boot with `bpf` in lsm=")]
    LsmInactive { active: String },
    #[error(
        "the BPF LSM program loaded, but whether the BPF LSM is active cannot be told: \
         /sys/kernel/security/lsm: {0} (is securityfs mounted?)"
    )]
    LsmList(std::io::Error),
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux), which BPF LSM programs need")]
    NoBtf,
    #[error(
        "the kernel refused to load BPF LSM programs (EPERM at BPF_PROG_LOAD, before the verifier; \
         lockdown or the platform forbids them)"
    )]
    Refused,
    #[error("the BPF LSM program did not load: {0}")]
    Load(LoadError),
}

/// The enforcer, attached while this value lives, and after that while
/// its pins do.
#[derive(Debug)]
pub struct Enforcer {
    links: Vec<(String, OwnedFd)>,
    scopes: MapFd,
    task_serials: MapFd,
    deadlines: MapFd,
    learning: MapFd,
    last_lease: MapFd,
    persistence: Persistence,
    /// Held (locked) while the daemon runs, when pinned.
    root: Option<PinRoot>,
    /// Pinned sets of other builds with leases, found at start.
    others: std::sync::Mutex<OtherSets>,
    /// The pin directory as found when pinned or adopted: (device, inode).
    pinned_as: Option<(u64, u64)>,
}

/// The (device, inode) of directory `dir`.
fn identity(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)?;
    Ok((m.dev(), m.ino()))
}

/// Whether `dir` is still the directory found as `was`; else why not.
fn still_there(dir: &Path, was: Option<(u64, u64)>) -> Result<(), String> {
    match (identity(dir), was) {
        (Ok(now), Some(was)) if now == was => Ok(()),
        (Ok(_), _) => Err(format!("{} is another directory than the one pinned", dir.display())),
        (Err(e), _) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Whether enforcement outlives the daemon.
#[derive(Debug)]
pub enum Persistence {
    /// Pinned in `dir`; `adopted` when an earlier daemon pinned it.
    Pinned { dir: PathBuf, adopted: bool },
    /// Not pinned, for this reason: enforcement ends when the daemon stops.
    UntilStop(PinError),
}

/// What a clean stop did with the pins.
#[derive(Debug)]
pub enum Released {
    /// Nothing was pinned.
    NotPinned,
    /// No lease entry was left: the pins are gone, and with them (once the
    /// daemon exits) the enforcer.
    Removed(PathBuf),
    /// Lease entries are left: the pins stay, the kernel keeps enforcing.
    Kept { dir: PathBuf, leases: usize },
    /// Removing them (or counting what is left) failed; they stay.
    Failed { dir: PathBuf, error: io::Error },
}

/// The name of this build's pin directory.
pub fn version() -> String {
    crate::pins::version_of(&[OBJECT, &record_samples()])
}

/// The lease entries in the kernel, as [`Enforcer::leases`] read them.
#[derive(Debug, Default)]
pub struct LeaseEntries {
    pub entries: Vec<(LeaseKey, LeaseRecord)>,
    /// Entries this build cannot decode (skipped).
    pub undecodable: usize,
}

/// Tokens a scope has seen since the enforcer was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeCount {
    pub created: u64,
    pub freed: u64,
}

/// What must hold before loading: the BPF LSM active (without `bpf` in
/// the active list an LSM program loads and attaches but never runs) and
/// kernel BTF. Returns the active list as read: an unreadable one is
/// judged after the load, whose refusal says more.
fn preconditions() -> Result<io::Result<String>, Unavailable> {
    let active = std::fs::read_to_string("/sys/kernel/security/lsm");
    if let Ok(active) = &active {
        let active = active.trim();
        if !active.split(',').any(|l| l == "bpf") {
            return Err(Unavailable::LsmInactive { active: active.to_owned() });
        }
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(Unavailable::NoBtf);
    }
    Ok(active)
}

impl Enforcer {
    /// Adopt the enforcer an earlier daemon of this build pinned under
    /// `pinroot`, or load and attach it and pin it there; or say why it
    /// cannot run here. Pins of other builds are left alone (one warning
    /// each). Where pinning is impossible it runs unpinned and says why.
    pub fn load(pinroot: &Path) -> Result<Enforcer, Unavailable> {
        let active = preconditions()?;
        let version = version();
        let root = match PinRoot::open(pinroot) {
            Ok(root) => root,
            Err(why) => return attach(active, Persistence::UntilStop(why)),
        };
        root.remove_stale();
        let others = OtherSets::open(root.others(&version), &version);
        let dir = root.set_dir(&version);
        if dir.exists() {
            let mut e = match adopt(&dir) {
                Ok(mut e) => {
                    active.map_err(Unavailable::LsmList)?;
                    e.root = Some(root);
                    e.pinned_as = identity(&dir).ok();
                    e
                }
                Err(why) => attach(active, Persistence::UntilStop(why))?,
            };
            e.others = others.into();
            return Ok(e);
        }
        let mut e = match attach(active, Persistence::Pinned { dir: dir.clone(), adopted: false }) {
            Ok(e) => e,
            Err(why) => {
                // Leave no empty root behind where nothing can be pinned.
                let _ = std::fs::remove_dir(root.path());
                return Err(why);
            }
        };
        match publish(&root, &version, &e) {
            Ok(dir) => {
                e.pinned_as = identity(&dir).ok();
                e.root = Some(root);
            }
            Err(why) => e.persistence = Persistence::UntilStop(why),
        }
        e.others = others.into();
        Ok(e)
    }

    /// Whether the enforcer can run on this host, as [`Enforcer::load`]
    /// would find (`bpftokend check-policy`): the same checks and a load
    /// and attach that is undone at once; nothing is pinned or adopted.
    /// Needs root, as the daemon does.
    pub fn probe() -> Result<(), Unavailable> {
        let active = preconditions()?;
        let probe = PinError::Dir { path: PathBuf::new(), source: io::Error::other("a probe pins nothing") };
        attach(active, Persistence::UntilStop(probe)).map(drop)
    }

    fn others(&self) -> std::sync::MutexGuard<'_, OtherSets> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leases of other builds' pinned enforcers (none without such
    /// sets), after removing those with no entry left.
    pub fn other_builds(&self) -> Vec<OtherBuild> {
        let mut others = self.others();
        if others.is_empty() {
            return Vec::new();
        }
        others.prune();
        others.report()
    }

    /// Revoke the leases of other builds' pinned enforcers that `whose`
    /// names, where their layout is known; what was done in each set.
    pub fn revoke_other_builds(&self, whose: Whose) -> Vec<OtherBuild> {
        self.others().revoke(whose)
    }

    /// Whether enforcement outlives the daemon.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// Rename the pinned set `dir` to a `tmp-*` name in its root; the new
    /// path.
    fn unpublish(&self, dir: &Path) -> io::Result<PathBuf> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let gone = dir.with_file_name(format!("tmp-{name}-{}", std::process::id()));
        std::fs::rename(dir, &gone)?;
        Ok(gone)
    }

    /// Whether enforcement outlives the daemon now: pinned, and the pin
    /// directory is still the one pinned (nobody removed or replaced it;
    /// else its programs detach when the daemon exits). Logs why not.
    pub fn pins_intact(&self) -> bool {
        let Persistence::Pinned { dir, .. } = &self.persistence else { return false };
        match still_there(dir, self.pinned_as) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    pins = %dir.display(),
                    "the enforcer's pins are gone ({why}): enforcement now ends when this daemon stops"
                );
                false
            }
        }
    }

    /// At a clean stop: remove the pins if no lease entry is left (nothing
    /// to enforce), else keep them for the next daemon.
    pub fn release(&self) -> Released {
        let Persistence::Pinned { dir, .. } = &self.persistence else { return Released::NotPinned };
        // Removed or replaced meanwhile: what is there now is not ours.
        if let Err(why) = still_there(dir, self.pinned_as) {
            return Released::Failed { dir: dir.clone(), error: io::Error::other(why) };
        }
        match self.deadlines.keys() {
            Ok(keys) if !keys.is_empty() => Released::Kept { dir: dir.clone(), leases: keys.len() },
            // Out of the set's name in one step first: a stop cut short
            // leaves a `tmp-*` directory (removed at the next start), never
            // a part of a set that the next daemon would fail to adopt.
            Ok(_) => match self.unpublish(dir).and_then(std::fs::remove_dir_all) {
                Ok(()) => {
                    // The root too, when no other build's set is there.
                    if let Some(root) = &self.root {
                        let _ = std::fs::remove_dir(root.path());
                    }
                    Released::Removed(dir.clone())
                }
                Err(error) => Released::Failed { dir: dir.clone(), error },
            },
            Err(error) => Released::Failed { dir: dir.clone(), error },
        }
    }

    /// The last lease id handed out (0: none yet), kept in the kernel so
    /// that ids are never reused across restarts.
    pub fn last_lease_id(&self) -> io::Result<u64> {
        let v = self.last_lease.lookup(&0u32.to_ne_bytes())?;
        Ok(v.and_then(|v| v.get(..8).and_then(|b| b.try_into().ok())).map_or(0, u64::from_ne_bytes))
    }

    /// Record `id` as the last lease id handed out.
    pub fn set_last_lease_id(&self, id: u64) -> io::Result<()> {
        self.last_lease.update(&0u32.to_ne_bytes(), &id.to_ne_bytes(), BPF_ANY)
    }

    /// Every lease entry in the kernel (a snapshot), with its key; entries
    /// this build cannot read are skipped and counted.
    pub fn leases(&self) -> io::Result<LeaseEntries> {
        let mut out = LeaseEntries::default();
        for key in self.deadlines.keys()? {
            let Some(v) = self.deadlines.lookup(&key)? else { continue };
            let Some(record) = LeaseRecord::decode(&v) else {
                out.undecodable += 1;
                continue;
            };
            let scope = key.get(..4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
            let serial = key.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes);
            out.entries.push((LeaseKey { scope, serial }, record));
        }
        Ok(out)
    }

    /// Start a lease: its entry with the deadline (CLOCK_BOOTTIME ns, or
    /// [`NO_DEADLINE`]), binding, and what lists it. Called while the
    /// daemon holds the token or the scope, so the entry cannot name
    /// something already freed.
    pub fn start_lease(&self, key: LeaseKey, record: &LeaseRecord) -> io::Result<()> {
        self.deadlines.update(&key.bytes(), &record.bytes(), BPF_NOEXIST)
    }

    /// The entry of lease `id` at `key`, if it is still that lease's: once
    /// the kernel freed a lease's token or scope, a namespace made later
    /// may get the same inode number (the kernel hands out the lowest free
    /// one), and another lease then holds the same key.
    fn entry_of(&self, key: LeaseKey, id: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self.deadlines.lookup(&key.bytes())?.filter(|v| entry_lease_id(v) == Some(id)))
    }

    /// The lease id of the entry at `key`, if there is one.
    pub fn lease_id_at(&self, key: LeaseKey) -> io::Result<Option<u64>> {
        Ok(self.deadlines.lookup(&key.bytes())?.as_deref().and_then(entry_lease_id))
    }

    /// Set the deadline of lease `id`'s live entry (keeping the rest);
    /// `Ok(false)` when the entry is gone (its token or scope was freed)
    /// or is another lease's, which is never touched.
    pub fn set_deadline(&self, key: LeaseKey, id: u64, deadline: u64) -> io::Result<bool> {
        let Some(mut v) = self.entry_of(key, id)? else { return Ok(false) };
        let Some(head) = v.get_mut(..8) else { return Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        head.copy_from_slice(&deadline.to_ne_bytes());
        // The daemon holds its lease table's lock, and only the daemon
        // creates entries, so the entry cannot change owner before this
        // write; the kernel may only delete it (ENOENT).
        match self.deadlines.update(&key.bytes(), &v, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether lease `id`'s entry still exists (its token or scope is
    /// alive), with its deadline.
    pub fn deadline(&self, key: LeaseKey, id: u64) -> io::Result<Option<u64>> {
        Ok(self.entry_of(key, id)?.and_then(|v| v.get(..8)?.try_into().ok()).map(u64::from_ne_bytes))
    }

    /// Remove a lease's entry (a grant the client never took).
    pub fn end_lease(&self, key: LeaseKey) -> io::Result<()> {
        self.deadlines.delete(&key.bytes()).map(|_| ())
    }

    /// Start recording what the tokens of scope `inum` are used for
    /// (`bpftoken learn`): an empty `learning` entry, which the kernel side
    /// fills in. Called while the daemon holds the scope.
    pub fn start_learning(&self, inum: u32) -> io::Result<()> {
        self.learning.update(&inum.to_ne_bytes(), &[0u8; 32], BPF_NOEXIST)
    }

    /// What the tokens of scope `inum` were used for since
    /// [`Enforcer::start_learning`]: the commands, map types, program types
    /// and attach types, as token masks; `None` when nothing is being
    /// learned there (never started, ended, or the scope was freed).
    pub fn learned(&self, inum: u32) -> io::Result<Option<Delegation>> {
        Ok(self.learning.lookup(&inum.to_ne_bytes())?.map(|v| {
            let word = |i: usize| v.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes);
            Delegation { cmds: word(0), maps: word(8), progs: word(16), attachs: word(24) }
        }))
    }

    /// Stop recording for scope `inum`.
    pub fn end_learning(&self, inum: u32) -> io::Result<()> {
        self.learning.delete(&inum.to_ne_bytes()).map(|_| ())
    }

    /// The attached programs, by name.
    pub fn programs(&self) -> Vec<&str> {
        self.links.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Tokens created and freed in the scope whose user namespace has
    /// inode `inum`; `None` if it has seen none.
    pub fn scope_count(&self, inum: u32) -> std::io::Result<Option<ScopeCount>> {
        Ok(self.scopes.lookup(&inum.to_ne_bytes())?.map(|v| decode_count(&v)))
    }

    /// Live tokens in every scope the enforcer has seen.
    pub fn live_tokens(&self) -> std::io::Result<u64> {
        let mut live = 0u64;
        for key in self.scopes.keys()? {
            if let Some(v) = self.scopes.lookup(&key)? {
                let c = decode_count(&v);
                live += c.created.saturating_sub(c.freed);
            }
        }
        Ok(live)
    }
}

impl crate::sys::TaskTracker for Enforcer {
    fn task_map(&self) -> BorrowedFd<'_> {
        self.task_serials.as_fd()
    }

    fn take_task(&self, tid: u32) -> io::Result<Option<(u32, Vec<u64>)>> {
        let key = tid.to_ne_bytes();
        let Some(v) = self.task_serials.lookup(&key)? else { return Ok(None) };
        self.task_serials.delete(&key)?;
        let word4 = |i: usize| v.get(i..i + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
        let word8 = |i: usize| v.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes);
        let (scope, n) = (word4(0), word4(4) as usize);
        // More than the record holds: the serials beyond are unknown.
        if n > TASK_SERIALS {
            return Ok(Some((scope, Vec::new())));
        }
        Ok(Some((scope, (0..n).map(|i| word8(8 + 8 * i)).collect())))
    }
}

fn decode_count(v: &[u8]) -> ScopeCount {
    let word = |i: usize| v.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes);
    ScopeCount { created: word(0), freed: word(8) }
}

/// The enforcer if it runs (and whether only until the daemon stops),
/// else why not, as the wire reports it.
pub fn state(loaded: &Result<Enforcer, Unavailable>) -> Enforcement {
    match loaded {
        Ok(e) => match &e.persistence {
            Persistence::Pinned { .. } => Enforcement::Enforcing,
            Persistence::UntilStop(why) => Enforcement::EnforcingUntilStop(why.to_string()),
        },
        Err(why) => Enforcement::Unavailable(why.to_string()),
    }
}

/// Take the map `name` out of `maps`.
fn take(maps: &mut Vec<(String, MapFd)>, name: &'static str) -> Result<MapFd, LoadError> {
    let i = maps.iter().position(|(n, _)| n == name).ok_or(LoadError::NoMap(name))?;
    Ok(maps.swap_remove(i).1)
}

/// An enforcer from its links and maps; the maps it does not use stay
/// alive through the programs (and their pins).
fn assemble(
    links: Vec<(String, OwnedFd)>,
    mut maps: Vec<(String, MapFd)>,
    persistence: Persistence,
) -> Result<Enforcer, LoadError> {
    Ok(Enforcer {
        links,
        scopes: take(&mut maps, "scopes")?,
        task_serials: take(&mut maps, "task_serials")?,
        deadlines: take(&mut maps, "deadlines")?,
        learning: take(&mut maps, "learning")?,
        last_lease: take(&mut maps, "last_lease")?,
        persistence,
        root: None,
        others: Default::default(),
        pinned_as: None,
    })
}

/// Load and attach a new enforcer.
fn attach(active: io::Result<String>, persistence: Persistence) -> Result<Enforcer, Unavailable> {
    let attached = match bpf::load_and_attach(OBJECT, OBJECT_NAME) {
        Ok(a) => a,
        Err(e @ LoadError::Load(_)) if e.errno() == Some(libc::EPERM) => return Err(Unavailable::Refused),
        Err(e) => return Err(Unavailable::Load(e)),
    };
    // Dropping `attached` detaches the programs again.
    active.map_err(Unavailable::LsmList)?;
    let Attached { links, maps } = attached;
    assemble(links, maps, persistence).map_err(Unavailable::Load)
}

/// Pin a freshly attached enforcer's links and the maps it uses (the
/// others live as long as the programs) as `version`'s set.
fn publish(root: &PinRoot, version: &str, e: &Enforcer) -> Result<PathBuf, PinError> {
    let maps = [&e.scopes, &e.task_serials, &e.deadlines, &e.learning, &e.last_lease];
    let mut pins: Vec<(String, String, BorrowedFd<'_>)> = Vec::new();
    for (name, fd) in &e.links {
        pins.push((format!("{LINK_PREFIX}{name}"), format!("link {name}"), fd.as_fd()));
    }
    for (name, map) in PINNED_MAPS.iter().zip(maps) {
        pins.push((format!("{MAP_PREFIX}{name}"), format!("map {name}"), map.as_fd()));
    }
    root.publish(version, &pins)
}

/// Open the complete pin set in `dir`: every program's link and the maps
/// the daemon uses, each map checked against this build's layout.
fn adopt(dir: &Path) -> Result<Enforcer, PinError> {
    let fail = |what: String, source: io::Error| PinError::Adopt { dir: dir.to_owned(), what, source };
    let layout = bpf::layout(OBJECT, OBJECT_NAME)
        .map_err(|e| fail("reading this build's object".to_owned(), io::Error::other(e.to_string())))?;
    let mut links = Vec::new();
    for name in &layout.programs {
        let path = dir.join(format!("{LINK_PREFIX}{name}"));
        let fd = bpf::open_pinned(&path, &["bpf-link", "bpf_link"]).map_err(|e| fail(format!("link {name}"), e))?;
        links.push((name.clone(), fd));
    }
    let mut maps = Vec::new();
    for name in PINNED_MAPS {
        let path = dir.join(format!("{MAP_PREFIX}{name}"));
        let map = MapFd::open_pinned(&path).map_err(|e| fail(format!("map {name}"), e))?;
        let want = layout.maps.iter().find(|(n, _, _)| n == name).map(|(_, k, v)| (*k, *v));
        if want != Some(map.sizes()) {
            let e = io::Error::from_raw_os_error(libc::EINVAL);
            return Err(fail(format!("map {name} has key and value sizes {:?}, this build {want:?}", map.sizes()), e));
        }
        maps.push((name.to_owned(), map));
    }
    let persistence = Persistence::Pinned { dir: dir.to_owned(), adopted: true };
    assemble(links, maps, persistence).map_err(|e| fail("the pinned set".to_owned(), io::Error::other(e.to_string())))
}

/// The maps pinned with the links (the ones the daemon reads or writes),
/// in the order [`publish`] lists them.
const PINNED_MAPS: [&str; 5] = ["scopes", "task_serials", "deadlines", "learning", "last_lease"];

#[cfg(test)]
mod tests {
    use bpftoken_proto::LeaseMode;

    use super::record::ENTRY_SIZE;
    use super::*;

    #[test]
    fn the_pin_directory_name_covers_the_record_encoding() {
        // Every mode, binding and field of the encoding shows in the samples.
        let samples = record_samples();
        assert_eq!(samples.len(), 4 + 16 * ENTRY_SIZE);
        let records: Vec<LeaseRecord> =
            samples[4..].chunks(ENTRY_SIZE).map(|c| LeaseRecord::decode(c).expect("decodable")).collect();
        for mode in [LeaseMode::Owner, LeaseMode::Libbpf, LeaseMode::Container, LeaseMode::DelegatedMount] {
            assert!(records.iter().any(|r| r.mode == mode && r.bind.uid.is_some()));
            assert!(records.iter().any(|r| r.mode == mode && r.bind.cgroup.is_some()));
            assert!(records.iter().any(|r| r.mode == mode && r.bind.exe.is_some()));
        }
        // Another encoding (here: another format number) is another set.
        let object = b"object";
        let mut other = samples.clone();
        other[0] ^= 1;
        assert_ne!(crate::pins::version_of(&[object, &samples]), crate::pins::version_of(&[object, &other]));
        assert_ne!(version(), crate::pins::version_of(&[OBJECT]), "not the object alone");
    }

    #[test]
    fn a_pin_directory_removed_or_replaced_is_noticed() {
        let base = std::env::temp_dir().join(format!("bpftokend-still-{}", std::process::id()));
        let dir = base.join("enforcer-1");
        std::fs::create_dir_all(&dir).unwrap();
        let was = identity(&dir).ok();
        assert_eq!(still_there(&dir, was), Ok(()));
        // Replaced: the old directory still exists elsewhere, so its inode
        // cannot be the new one's.
        std::fs::rename(&dir, base.join("old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(still_there(&dir, was), Err(format!("{} is another directory than the one pinned", dir.display())));
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(still_there(&dir, was), Err(format!("{}: No such file or directory (os error 2)", dir.display())));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
