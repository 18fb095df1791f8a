//! The four delegation sets of a BPF token, as bitmasks over the kernel's
//! `bpf_cmd`, `bpf_map_type`, `bpf_prog_type` and `bpf_attach_type` enums.
//!
//! Bit `n` of a mask stands for the enum value `n`, exactly as the kernel
//! stores `delegate_*` masks in a bpffs superblock. `any` is every bit, as
//! the kernel's own `delegate_*=any` is.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::kernel_names;

/// Which of the four delegation sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Cmd,
    Map,
    Prog,
    Attach,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cmd, Kind::Map, Kind::Prog, Kind::Attach];

    /// The bpffs mount option that carries this set.
    pub fn mount_option(self) -> &'static str {
        match self {
            Kind::Cmd => "delegate_cmds",
            Kind::Map => "delegate_maps",
            Kind::Prog => "delegate_progs",
            Kind::Attach => "delegate_attachs",
        }
    }

    /// What one item of this set is called in messages ("map type").
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cmd => "command",
            Kind::Map => "map type",
            Kind::Prog => "program type",
            Kind::Attach => "attach type",
        }
    }

    /// The policy / CLI key of this set.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Cmd => "cmds",
            Kind::Map => "maps",
            Kind::Prog => "progs",
            Kind::Attach => "attachs",
        }
    }

    /// The kernel enum this set indexes.
    pub fn kernel_enum(self) -> &'static str {
        match self {
            Kind::Cmd => "bpf_cmd",
            Kind::Map => "bpf_map_type",
            Kind::Prog => "bpf_prog_type",
            Kind::Attach => "bpf_attach_type",
        }
    }

    /// Prefix the kernel strips from enumerator names for `delegate_*`.
    pub fn kernel_prefix(self) -> &'static str {
        match self {
            Kind::Cmd | Kind::Attach => "BPF_",
            Kind::Map => "BPF_MAP_TYPE_",
            Kind::Prog => "BPF_PROG_TYPE_",
        }
    }

    /// Built-in `(name, value)` table (Linux 6.18). Aliases follow the
    /// canonical name of the same value.
    pub fn builtin_names(self) -> &'static [(&'static str, u32)] {
        match self {
            Kind::Cmd => kernel_names::CMD_NAMES,
            Kind::Map => kernel_names::MAP_NAMES,
            Kind::Prog => kernel_names::PROG_NAMES,
            Kind::Attach => kernel_names::ATTACH_NAMES,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// A name that is not in the table of its set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} \"{name}\"")]
pub struct UnknownName {
    pub kind: Kind,
    pub name: String,
}

/// The mask that `any` stands for.
pub const ANY: u64 = u64::MAX;

/// Bit of a built-in name, `any` included.
pub fn parse_name(kind: Kind, name: &str) -> Result<u64, UnknownName> {
    if name == "any" {
        return Ok(ANY);
    }
    kind.builtin_names()
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|&(_, v)| 1u64.checked_shl(v))
        .ok_or_else(|| UnknownName { kind, name: name.to_owned() })
}

/// Mask of a comma-separated list of names, as the CLI takes them.
pub fn parse_list(kind: Kind, list: &str) -> Result<u64, UnknownName> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .try_fold(0u64, |acc, name| Ok(acc | parse_name(kind, name)?))
}

/// Canonical name of enum value `bit`, if the built-in table knows it.
pub fn name_of(kind: Kind, bit: u32) -> Option<&'static str> {
    kind.builtin_names().iter().find(|&&(_, v)| v == bit).map(|&(n, _)| n)
}

/// Names of the items in `mask`; bits without a name print as `#N`.
/// `any` prints as `any`.
pub fn names(kind: Kind, mask: u64) -> Vec<String> {
    if mask == ANY {
        return vec!["any".to_owned()];
    }
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| name_of(kind, b).map_or_else(|| format!("#{b}"), str::to_owned))
        .collect()
}

/// The four delegation masks of a token or a grant.
///
/// ```
/// # use bpftoken_proto as bpftoken;
/// use bpftoken::{Delegation, Kind};
///
/// let granted = Delegation { cmds: 1, maps: 1 << 2, ..Delegation::NONE };
/// assert_eq!(granted.to_string(), "cmds=[map_create] maps=[array] progs=[] attachs=[]");
/// assert_eq!(bpftoken::delegation::names(Kind::Map, granted.get(Kind::Map)), ["array"]);
/// assert!(granted.is_subset_of(&Delegation::ANY));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Delegation {
    pub cmds: u64,
    pub maps: u64,
    pub progs: u64,
    pub attachs: u64,
}

impl Delegation {
    pub const NONE: Delegation = Delegation { cmds: 0, maps: 0, progs: 0, attachs: 0 };
    pub const ANY: Delegation = Delegation { cmds: ANY, maps: ANY, progs: ANY, attachs: ANY };

    pub fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Cmd => self.cmds,
            Kind::Map => self.maps,
            Kind::Prog => self.progs,
            Kind::Attach => self.attachs,
        }
    }

    pub fn set(&mut self, kind: Kind, mask: u64) {
        match kind {
            Kind::Cmd => self.cmds = mask,
            Kind::Map => self.maps = mask,
            Kind::Prog => self.progs = mask,
            Kind::Attach => self.attachs = mask,
        }
    }

    fn zip(self, other: Delegation, f: impl Fn(u64, u64) -> u64) -> Delegation {
        let mut out = Delegation::NONE;
        for k in Kind::ALL {
            out.set(k, f(self.get(k), other.get(k)));
        }
        out
    }

    pub fn union(self, other: Delegation) -> Delegation {
        self.zip(other, |a, b| a | b)
    }

    pub fn intersect(self, other: Delegation) -> Delegation {
        self.zip(other, |a, b| a & b)
    }

    /// Items of `self` that are not in `other`.
    pub fn minus(self, other: Delegation) -> Delegation {
        self.zip(other, |a, b| a & !b)
    }

    pub fn is_empty(&self) -> bool {
        *self == Delegation::NONE
    }

    pub fn is_subset_of(&self, other: &Delegation) -> bool {
        self.minus(*other).is_empty()
    }

    /// The first item of `self` outside `other`, as (set, enum value).
    pub fn first_outside(&self, other: &Delegation) -> Option<(Kind, u32)> {
        let extra = self.minus(*other);
        Kind::ALL.into_iter().find_map(|k| {
            let m = extra.get(k);
            (m != 0).then(|| (k, m.trailing_zeros()))
        })
    }

    /// Value for the bpffs `delegate_*` option of `kind`. Always one
    /// number (or `any`): a number overwrites the names before it
    /// (docs/design.md, "delegate_* option values"), so option strings are
    /// generated from the mask only.
    pub fn mount_option_value(&self, kind: Kind) -> String {
        match self.get(kind) {
            ANY => "any".to_owned(),
            m => format!("{m:#x}"),
        }
    }
}

impl fmt::Display for Delegation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let n = names(k, self.get(k));
            write!(f, "{}=[{}]", k.key(), n.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_kernel_values() {
        assert_eq!(parse_name(Kind::Cmd, "map_create"), Ok(1));
        assert_eq!(parse_name(Kind::Cmd, "prog_load"), Ok(1 << 5));
        assert_eq!(parse_name(Kind::Cmd, "token_create"), Ok(1 << 36));
        assert_eq!(parse_name(Kind::Map, "hash"), Ok(1 << 1));
        assert_eq!(parse_name(Kind::Map, "ringbuf"), Ok(1 << 27));
        assert_eq!(parse_name(Kind::Prog, "socket_filter"), Ok(1 << 1));
        assert_eq!(parse_name(Kind::Prog, "kprobe"), Ok(1 << 2));
        assert_eq!(parse_name(Kind::Attach, "cgroup_inet_ingress"), Ok(1));
        assert_eq!(parse_name(Kind::Attach, "any"), Ok(ANY));
    }

    #[test]
    fn unknown_name_is_typed() {
        let e = parse_name(Kind::Map, "ringbuff").unwrap_err();
        assert_eq!(e.to_string(), "unknown map type \"ringbuff\"");
        // a map name is not a program name
        assert!(parse_name(Kind::Prog, "hash").is_err());
        // the kernel's UNSPEC entries are not delegable names
        assert!(parse_name(Kind::Map, "unspec").is_err());
    }

    #[test]
    fn aliases_print_canonically() {
        assert_eq!(parse_name(Kind::Cmd, "prog_run"), parse_name(Kind::Cmd, "prog_test_run"));
        assert_eq!(names(Kind::Map, 1 << 19), vec!["cgroup_storage"]);
        assert_eq!(names(Kind::Map, (1 << 1) | (1 << 63)), vec!["hash", "#63"]);
    }

    #[test]
    fn lists_and_set_algebra() {
        let want = Delegation {
            cmds: parse_list(Kind::Cmd, "map_create, prog_load").unwrap(),
            maps: parse_list(Kind::Map, "array,hash").unwrap(),
            progs: 0,
            attachs: 0,
        };
        let grant = Delegation { cmds: ANY, maps: 0b110, progs: 2, attachs: 1 };
        assert!(want.is_subset_of(&grant));
        let wider = Delegation { maps: 1 << 27, ..want };
        assert_eq!(wider.first_outside(&grant), Some((Kind::Map, 27)));
        assert_eq!(grant.intersect(wider).maps, 0);
        assert_eq!(grant.mount_option_value(Kind::Cmd), "any");
        assert_eq!(grant.mount_option_value(Kind::Map), "0x6");
        assert_eq!(Delegation::NONE.mount_option_value(Kind::Prog), "0x0");
        assert_eq!(want.to_string(), "cmds=[map_create,prog_load] maps=[hash,array] progs=[] attachs=[]");
    }
}
