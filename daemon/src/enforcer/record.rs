//! The layout of a lease entry in the enforcer's `deadlines` map, byte for
//! byte as `struct lease_entry` and `struct revoke_key` in
//! `daemon/bpf/enforcer.bpf.c` lay it out: [`LeaseKey`], [`LeaseRecord`]
//! and its [`Binding`] ([`ExeId`], [`CgroupId`]), the `BIND_*` flags, the
//! `ENTRY_*` sizes and offsets, the mode codes, and [`RECORD_FORMAT`] with
//! [`record_samples`], which name the encoding in the pin directory.
//!
//! Invariant: any change to how a record is encoded changes
//! [`record_samples`] (and should bump [`RECORD_FORMAT`]), so a daemon
//! never adopts entries written in another encoding. This module imports
//! nothing of the enforcer's: [`super`] and [`super::others`] both build
//! on it.
//!
//! `daemon/bpf/enforcer.bpf.c` says its layouts are "shared with
//! daemon/src/enforcer.rs": that is this file (`lease_entry`,
//! `revoke_key`) and `enforcer/mod.rs` (the task, scope and learning
//! records). The comment stays as it is: any edit of the C source changes
//! the object, hence the pin directory's name.

use bpftoken_proto::LeaseMode;

/// A `deadlines` value: a lease that neither expires nor is revoked (the
/// entry still says "this token or scope is alive and leased").
pub const NO_DEADLINE: u64 = u64::MAX;
/// A `deadlines` value: revoked now.
pub const REVOKED: u64 = 0;

/// What a lease entry in `deadlines` covers: one token, or every token of
/// a scope (serial 0), present and future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    pub scope: u32,
    /// 0: the whole scope.
    pub serial: u64,
}

impl LeaseKey {
    pub(super) fn bytes(&self) -> [u8; 16] {
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
    /// Only tasks running this file.
    pub exe: Option<ExeId>,
}

/// A file as the kernel identifies an executable: its superblock's device
/// in the kernel's `dev_t` encoding (`major << 20 | minor`, not the
/// `st_dev` encoding) and its inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeId {
    pub dev: u32,
    pub ino: u64,
}

impl ExeId {
    /// From `stat` fields: `st_dev` re-encoded the kernel's way.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> ExeId {
        let (major, minor) = (rustix::fs::major(st_dev), rustix::fs::minor(st_dev));
        ExeId { dev: (major << 20) | (minor & 0xf_ffff), ino: st_ino }
    }
}

/// A cgroup v2 directory as the kernel names it: its id (the inode number
/// of its directory) and its depth (the root is level 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CgroupId {
    pub id: u64,
    pub level: u32,
}

/// `lease_entry.bind` bits (`BIND_UID`, `BIND_CGROUP` in the C source).
pub(crate) const BIND_UID: u32 = 1;
pub(crate) const BIND_CGROUP: u32 = 2;
pub(crate) const BIND_EXE: u32 = 4;

/// Size of a `deadlines` value (`struct lease_entry`).
pub(crate) const ENTRY_SIZE: usize = 88;
/// Sizes of `deadlines` values whose first 72 bytes are laid out as ours
/// (deadline first, owner uid at [`ENTRY_OWNER_UID_AT`]): this build's and
/// the one before `bind_exe_*` was appended. Revoking an entry of either
/// (other builds' pinned sets) writes only its deadline.
pub(crate) const ENTRY_SIZES_KNOWN: [usize; 2] = [72, ENTRY_SIZE];
/// Size of a `deadlines` key (`struct revoke_key`).
pub(crate) const ENTRY_KEY_SIZE: usize = 16;
/// Where `lease_entry.owner_uid` is.
pub(crate) const ENTRY_OWNER_UID_AT: usize = 64;
/// Where `lease_entry.lease_id` is.
pub(crate) const ENTRY_LEASE_ID_AT: usize = 32;

/// The lease id of a `deadlines` value.
pub(super) fn entry_lease_id(v: &[u8]) -> Option<u64> {
    v.get(ENTRY_LEASE_ID_AT..ENTRY_LEASE_ID_AT + 8)?.try_into().ok().map(u64::from_ne_bytes)
}

/// One `deadlines` value (`struct lease_entry`): what the kernel checks
/// (deadline, binding) and what a daemon needs to list and revoke the
/// lease after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    /// CLOCK_BOOTTIME ns, [`NO_DEADLINE`] or [`REVOKED`].
    pub deadline: u64,
    pub bind: Binding,
    pub id: u64,
    pub uid: u32,
    /// The uid whose `max_live_tokens` the scope's tokens count against:
    /// the scope's owner (for a rootless container's caller, the
    /// namespace's owner, not the caller).
    pub scope_uid: u32,
    pub mode: LeaseMode,
    /// The token handed out, if known.
    pub serial: Option<u64>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: Option<u64>,
}

/// `lease_entry.mode`: the daemon's own numbering of [`LeaseMode`].
fn mode_code(mode: LeaseMode) -> u32 {
    match mode {
        LeaseMode::Owner => 0,
        LeaseMode::Libbpf => 1,
        LeaseMode::Container => 2,
        LeaseMode::DelegatedMount => 3,
    }
}

fn mode_of(code: u32) -> Option<LeaseMode> {
    Some(match code {
        0 => LeaseMode::Owner,
        1 => LeaseMode::Libbpf,
        2 => LeaseMode::Container,
        3 => LeaseMode::DelegatedMount,
        _ => return None,
    })
}

impl LeaseRecord {
    pub(super) fn bytes(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[..8].copy_from_slice(&self.deadline.to_ne_bytes());
        let mut flags = 0;
        if let Some(uid) = self.bind.uid {
            flags |= BIND_UID;
            b[16..20].copy_from_slice(&uid.to_ne_bytes());
        }
        if let Some(cg) = self.bind.cgroup {
            flags |= BIND_CGROUP;
            b[8..16].copy_from_slice(&cg.id.to_ne_bytes());
            b[20..24].copy_from_slice(&cg.level.to_ne_bytes());
        }
        b[24..28].copy_from_slice(&flags.to_ne_bytes());
        b[28..32].copy_from_slice(&self.scope_uid.to_ne_bytes());
        b[ENTRY_LEASE_ID_AT..ENTRY_LEASE_ID_AT + 8].copy_from_slice(&self.id.to_ne_bytes());
        b[40..48].copy_from_slice(&self.serial.unwrap_or(0).to_ne_bytes());
        b[48..56].copy_from_slice(&self.created.to_ne_bytes());
        b[56..64].copy_from_slice(&self.expires.unwrap_or(0).to_ne_bytes());
        b[ENTRY_OWNER_UID_AT..ENTRY_OWNER_UID_AT + 4].copy_from_slice(&self.uid.to_ne_bytes());
        b[68..72].copy_from_slice(&mode_code(self.mode).to_ne_bytes());
        if let Some(exe) = self.bind.exe {
            flags |= BIND_EXE;
            b[24..28].copy_from_slice(&flags.to_ne_bytes());
            b[72..80].copy_from_slice(&exe.ino.to_ne_bytes());
            b[80..84].copy_from_slice(&exe.dev.to_ne_bytes());
        }
        b
    }

    /// `None` for a value of another size or an unknown mode.
    pub(super) fn decode(v: &[u8]) -> Option<LeaseRecord> {
        if v.len() != ENTRY_SIZE {
            return None;
        }
        let w8 = |i: usize| v.get(i..i + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes);
        let w4 = |i: usize| v.get(i..i + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
        let flags = w4(24);
        let bind = Binding {
            uid: (flags & BIND_UID != 0).then(|| w4(16)),
            cgroup: (flags & BIND_CGROUP != 0).then(|| CgroupId { id: w8(8), level: w4(20) }),
            exe: (flags & BIND_EXE != 0).then(|| ExeId { ino: w8(72), dev: w4(80) }),
        };
        Some(LeaseRecord {
            deadline: w8(0),
            bind,
            id: w8(ENTRY_LEASE_ID_AT),
            serial: Some(w8(40)).filter(|s| *s != 0),
            created: w8(48),
            expires: Some(w8(56)).filter(|e| *e != 0),
            uid: w4(ENTRY_OWNER_UID_AT),
            scope_uid: w4(28),
            mode: mode_of(w4(68))?,
        })
    }
}

/// The daemon's encoding of `lease_entry` (mode codes, bind flags, where
/// each field goes). Bump it with any change to [`LeaseRecord::bytes`]
/// that keeps the object the same; the pin directory's name covers it
/// (with [`record_samples`]), so a daemon never adopts entries written in
/// another encoding.
pub(crate) const RECORD_FORMAT: u32 = 3;

/// [`RECORD_FORMAT`] and sample records of every mode and binding as
/// [`LeaseRecord::bytes`] encodes them: hashed into the pin directory's
/// name, so that even a change nobody bumped [`RECORD_FORMAT`] for moves
/// the set.
pub(super) fn record_samples() -> Vec<u8> {
    let mut out = RECORD_FORMAT.to_ne_bytes().to_vec();
    let modes = [LeaseMode::Owner, LeaseMode::Libbpf, LeaseMode::Container, LeaseMode::DelegatedMount];
    let binds = [
        Binding::default(),
        Binding { uid: Some(1), ..Binding::default() },
        Binding { cgroup: Some(CgroupId { id: 2, level: 3 }), ..Binding::default() },
        Binding { exe: Some(ExeId { dev: 11, ino: 12 }), ..Binding::default() },
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        for bind in binds {
            let r = LeaseRecord {
                deadline: 4,
                bind,
                id: 5,
                uid: 6,
                scope_uid: 7,
                mode,
                serial: Some(8),
                created: 9,
                expires: Some(10 + i as u64),
            };
            out.extend_from_slice(&r.bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_record_survives_the_map_and_keeps_the_kernel_layout() {
        let r = LeaseRecord {
            deadline: 123,
            bind: Binding {
                uid: Some(1001),
                cgroup: Some(CgroupId { id: 77, level: 2 }),
                exe: Some(ExeId { dev: (8 << 20) | 3, ino: 4242 }),
            },
            id: 9,
            uid: 1001,
            scope_uid: 1002,
            mode: LeaseMode::Libbpf,
            serial: Some(41),
            created: 1_700_000_000,
            expires: Some(1_700_000_600),
        };
        let b = r.bytes();
        assert_eq!(LeaseRecord::decode(&b), Some(r));
        // What the kernel side reads (struct lease_entry's first 32 bytes).
        assert_eq!(b[..8], 123u64.to_ne_bytes());
        assert_eq!(b[8..16], 77u64.to_ne_bytes());
        assert_eq!(b[16..20], 1001u32.to_ne_bytes());
        assert_eq!(b[20..24], 2u32.to_ne_bytes());
        assert_eq!(b[24..28], (BIND_UID | BIND_CGROUP | BIND_EXE).to_ne_bytes());
        assert_eq!(b[28..32], 1002u32.to_ne_bytes(), "the scope's owner, in what was padding");
        // bind_exe_ino, bind_exe_dev: appended after `mode`.
        assert_eq!(b[72..80], 4242u64.to_ne_bytes());
        assert_eq!(b[80..84], ((8u32 << 20) | 3).to_ne_bytes());
        let plain = LeaseRecord { bind: Binding::default(), serial: None, expires: None, ..r };
        assert_eq!(LeaseRecord::decode(&plain.bytes()), Some(plain));
        assert_eq!(LeaseRecord::decode(&b[..32]), None, "an entry of the older layout");
    }
}
