//! The enforcer: a BPF LSM program (`daemon/bpf/enforcer.bpf.c`) on the
//! kernel's BPF token hooks, loaded at start when the kernel allows it.
//!
//! Today it gives every token a serial, counts live tokens per scope (user
//! namespace) and refuses every use of a token whose serial or scope is in
//! its `revoked` map. Leases (expiry, revocation) build on it; until then
//! nothing writes that map. Where it cannot be loaded the daemon runs on
//! and says so: at start, in systemd's STATUS= and in `bpftoken query`.

use std::os::fd::OwnedFd;

use bpftoken_proto::Enforcement;

use crate::sys::bpf::{self, LoadError, MapFd};

/// The enforcer object, built by `build.rs`.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

/// The maps the daemon reads, in this order.
const MAPS: [&str; 1] = ["scopes"];

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
        let scopes = maps.next().ok_or(Unavailable::Load(LoadError::NoMap("scopes")))?;
        Ok(Enforcer { links: attached.links, scopes })
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
