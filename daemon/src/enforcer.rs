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

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bpftoken_proto::{Delegation, Enforcement};

use crate::sys::bpf::{self, LoadError, MapFd};

/// The enforcer object, built by `build.rs`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// The maps the daemon uses, in this order.
const MAPS: [&str; 4] = ["scopes", "task_serials", "deadlines", "learning"];

/// A `deadlines` value: a lease that neither expires nor is revoked (the
/// entry still says "this token or scope is alive and leased").
pub const NO_DEADLINE: u64 = u64::MAX;
/// A `deadlines` value: revoked now.
pub const REVOKED: u64 = 0;

/// `bpf_map_update_elem` flags.
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

/// The enforcer, attached while this value lives.
#[derive(Debug)]
pub struct Enforcer {
    links: Vec<(String, OwnedFd)>,
    scopes: MapFd,
    task_serials: MapFd,
    deadlines: MapFd,
    learning: MapFd,
}

/// What a lease entry in `deadlines` covers: one token, or every token of
/// a scope (serial 0), present and future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub scope: u32,
    /// 0: the whole scope.
    pub serial: u64,
}

impl LeaseKey {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.scope.to_ne_bytes());
        b[8..].copy_from_slice(&self.serial.to_ne_bytes());
        b
    }
}

/// Who may use a lease's tokens, besides "until the deadline".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Binding {
    /// Only tasks whose real uid (in the initial user namespace) is this.
    pub uid: Option<u32>,
    /// Only tasks inside this cgroup v2 subtree.
    pub cgroup: Option<CgroupId>,
}

/// A cgroup v2 directory as the kernel names it: its id (the inode number
/// of its directory) and its depth (the root is level 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupId {
    pub id: u64,
    pub level: u32,
}

/// `lease_entry.bind` bits (`BIND_UID`, `BIND_CGROUP` in the C source).
const BIND_UID: u32 = 1;
const BIND_CGROUP: u32 = 2;

/// One `deadlines` value (`struct lease_entry`): the deadline and binding.
fn entry_bytes(deadline: u64, bind: Binding) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&deadline.to_ne_bytes());
    let mut flags = 0;
    if let Some(uid) = bind.uid {
        flags |= BIND_UID;
        b[16..20].copy_from_slice(&uid.to_ne_bytes());
    }
    if let Some(cg) = bind.cgroup {
        flags |= BIND_CGROUP;
        b[8..16].copy_from_slice(&cg.id.to_ne_bytes());
        b[20..24].copy_from_slice(&cg.level.to_ne_bytes());
    }
    b[24..28].copy_from_slice(&flags.to_ne_bytes());
    b
}

/// Tokens a scope has seen since the enforcer was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScopeCount {
    pub created: u64,
    pub freed: u64,
}

impl Enforcer {
    /// Load and attach the enforcer, or say why it cannot run here.
    pub fn load() -> Result<Enforcer, Unavailable> {
        // Without `bpf` in the active list an LSM program loads and
        // attaches but never runs: check first. An unreadable list is
        // judged after the load, whose refusal says more.
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
        let attached = match bpf::load_and_attach(OBJECT, "bpftokend_enforcer", &MAPS) {
            Ok(a) => a,
            Err(e @ LoadError::Load(_)) if e.errno() == Some(libc::EPERM) => return Err(Unavailable::Refused),
            Err(e) => return Err(Unavailable::Load(e)),
        };
        // Dropping `attached` detaches the programs again.
        active.map_err(Unavailable::LsmList)?;
        let mut maps = attached.maps.into_iter();
        let mut next = |name| maps.next().ok_or(Unavailable::Load(LoadError::NoMap(name)));
        let scopes = next("scopes")?;
        let task_serials = next("task_serials")?;
        let deadlines = next("deadlines")?;
        let learning = next("learning")?;
        Ok(Enforcer { links: attached.links, scopes, task_serials, deadlines, learning })
    }

    /// Start a lease: its entry with `deadline` (CLOCK_BOOTTIME ns, or
    /// [`NO_DEADLINE`]) and binding. Called while the daemon holds the
    /// token or the scope, so the entry cannot name something already freed.
    pub fn start_lease(&self, key: LeaseKey, deadline: u64, bind: Binding) -> io::Result<()> {
        self.deadlines.update(&key.bytes(), &entry_bytes(deadline, bind), BPF_NOEXIST)
    }

    /// Set the deadline of a live lease entry (keeping its binding);
    /// `Ok(false)` when the entry is gone (its token or scope was freed),
    /// which is never recreated: the scope's inode may already belong to
    /// another namespace.
    pub fn set_deadline(&self, key: LeaseKey, deadline: u64, bind: Binding) -> io::Result<bool> {
        match self.deadlines.update(&key.bytes(), &entry_bytes(deadline, bind), BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the entry of a lease still exists (its token or scope is
    /// alive), with its deadline.
    pub fn deadline(&self, key: LeaseKey) -> io::Result<Option<u64>> {
        Ok(self.deadlines.lookup(&key.bytes())?.and_then(|v| v.get(..8)?.try_into().ok()).map(u64::from_ne_bytes))
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

/// The enforcer if it runs, else why not, as the wire reports it.
pub fn state(loaded: &Result<Enforcer, Unavailable>) -> Enforcement {
    match loaded {
        Ok(_) => Enforcement::Enforcing,
        Err(why) => Enforcement::Unavailable(why.to_string()),
    }
}
