//! The running kernel's names for the four delegation sets, read from its
//! BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel resolves `delegate_*` names against the `bpf_cmd`,
//! `bpf_map_type`, `bpf_prog_type` and `bpf_attach_type` enums of its own
//! BTF, so this is the authoritative list for the kernel we run on; the
//! built-in tables ([`Kind::builtin_names`]) are the fallback when the
//! kernel has no BTF.
//!
//! The parser is pure and safe: every offset and length in the blob is
//! checked before use, nothing is allocated from an unchecked length, and
//! malformed input is an error, never a panic. Only what is needed to walk
//! the type section is understood (the layout of each kind's trailing
//! data, see the kernel's `include/uapi/linux/btf.h`); everything but
//! enums is skipped.
//!
//! Not a BTF crate: btf-rs 2.0 is LGPL-2.1-or-later (static linking would
//! put its terms on every binary) and builds all of vmlinux into owned
//! types (~150 ms and ~40 MB more than this reader's ~2 ms); btfparse 1.3
//! needs Rust 1.85 and accepts a string section past the blob's end
//! (docs/design.md, "Why a BTF reader of our own").

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bpftoken_proto::delegation::Kind;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Largest BTF blob accepted. vmlinux BTF is a few MiB; this only stops a
/// runaway read or a silly input.
pub const MAX_BTF_BYTES: usize = 64 * 1024 * 1024;

/// `BTF_MAGIC` as it appears in a little-endian blob.
const MAGIC_LE: [u8; 2] = [0x9f, 0xeb];
/// The only BTF version there is.
const BTF_VERSION: u8 = 1;
/// `sizeof(struct btf_header)`: magic, version, flags, hdr_len, type_off,
/// type_len, str_off, str_len.
const HEADER_LEN: usize = 24;
/// `sizeof(struct btf_type)`: name_off, info, size_or_type.
const TYPE_LEN: usize = 12;

const KIND_ENUM: u8 = 6;

/// Why a BTF blob could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The kernel has no BTF file (no `CONFIG_DEBUG_INFO_BTF`): callers
    /// fall back to the built-in tables.
    #[error("{} does not exist (kernel built without BTF?)", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("BTF is larger than the {max}-byte limit")]
    TooLarge { max: usize },
    #[error("BTF truncated: {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TruncatedHeader { len: usize },
    #[error("not BTF: magic is {magic:#06x}, expected 0xeb9f")]
    BadMagic { magic: u16 },
    #[error("BTF is big-endian (byte-swapped magic); only little-endian BTF is supported")]
    ForeignEndian,
    #[error("unsupported BTF version {version} (only version {BTF_VERSION} is known)")]
    UnsupportedVersion { version: u8 },
    #[error("BTF header length {hdr_len} is invalid for a {len}-byte blob")]
    BadHeaderLen { hdr_len: u32, len: usize },
    #[error(
        "BTF {section} section (offset {off}, length {size} after the header) \
         does not fit in the {len}-byte blob"
    )]
    SectionOutOfBounds { section: &'static str, off: u32, size: u32, len: usize },
    #[error("BTF type {type_id} at byte {offset} runs past the end of the type section")]
    TypeTruncated { type_id: u32, offset: usize },
    #[error("BTF type {type_id} at byte {offset} has unknown kind {kind}")]
    UnknownKind { type_id: u32, offset: usize, kind: u8 },
    #[error("BTF type {type_id} names string offset {name_off}, outside the {str_len}-byte string section")]
    StringOutOfBounds { type_id: u32, name_off: u32, str_len: usize },
    #[error("BTF string at offset {name_off} (type {type_id}) is not NUL-terminated")]
    UnterminatedString { type_id: u32, name_off: u32 },
    #[error("BTF enumerator name at string offset {name_off} (type {type_id}) is not a C identifier")]
    InvalidName { type_id: u32, name_off: u32 },
    #[error("BTF has no enum {name}")]
    MissingEnum { name: &'static str },
}

/// Name tables of the four delegation sets, in the form of the built-in
/// tables: lowercase names without the kernel prefix, `*_UNSPEC` and
/// `__MAX_*` left out, aliases kept. Each table is sorted by value; among
/// the names of one value the kernel's declaration order is kept, except
/// that `*_deprecated` names come last (so the first name of a value is the
/// canonical one, as in the built-in tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNames {
    tables: [Vec<(String, u32)>; 4],
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Cmd => 0,
        Kind::Map => 1,
        Kind::Prog => 2,
        Kind::Attach => 3,
    }
}

impl KernelNames {
    /// The built-in tables, for when the running kernel has no BTF.
    /// The running kernel's names, or the built-in tables when its BTF
    /// cannot be read; the string says which, for logs.
    pub fn running_or_builtin() -> (KernelNames, String) {
        match read_running_kernel() {
            Ok(names) => (names, format!("the running kernel ({VMLINUX_BTF_PATH})")),
            Err(e) => (KernelNames::builtin(), format!("the built-in Linux 6.18 tables ({e})")),
        }
    }

    pub fn builtin() -> KernelNames {
        KernelNames { tables: Kind::ALL.map(|k| k.builtin_names().iter().map(|&(n, v)| (n.to_owned(), v)).collect()) }
    }

    /// `(name, value)` pairs of one set.
    pub fn names(&self, kind: Kind) -> &[(String, u32)] {
        &self.tables[slot(kind)]
    }

    /// Value of `name` (lowercase, no prefix) in one set.
    pub fn value_of(&self, kind: Kind, name: &str) -> Option<u32> {
        self.names(kind).iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// Canonical name of `value` in one set.
    pub fn name_of(&self, kind: Kind, value: u32) -> Option<&str> {
        self.names(kind).iter().find(|&&(_, v)| v == value).map(|(n, _)| n.as_str())
    }
}

/// Read and parse the running kernel's BTF ([`VMLINUX_BTF_PATH`]).
/// [`BtfError::NotFound`] when the kernel has none.
pub fn read_running_kernel() -> Result<KernelNames, BtfError> {
    read_btf_file(Path::new(VMLINUX_BTF_PATH))
}

/// Read and parse a BTF file of at most [`MAX_BTF_BYTES`].
/// [`BtfError::NotFound`] when it does not exist.
pub fn read_btf_file(path: &Path) -> Result<KernelNames, BtfError> {
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            BtfError::NotFound { path: path.to_owned() }
        } else {
            BtfError::Io { path: path.to_owned(), source }
        }
    };
    let file = File::open(path).map_err(io_err)?;
    let limit = u64::try_from(MAX_BTF_BYTES).unwrap_or(u64::MAX).saturating_add(1);
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).map_err(io_err)?;
    parse_enums(&buf)
}

/// Extract the four delegation enums from a BTF blob.
pub fn parse_enums(btf: &[u8]) -> Result<KernelNames, BtfError> {
    let mut found = scan(btf, &Kind::ALL)?;
    let mut take = |kind: Kind| found[slot(kind)].take().ok_or(BtfError::MissingEnum { name: kind.kernel_enum() });
    Ok(KernelNames { tables: [take(Kind::Cmd)?, take(Kind::Map)?, take(Kind::Prog)?, take(Kind::Attach)?] })
}

/// Extract one delegation enum from a BTF blob (the whole blob is still
/// checked).
pub fn parse_enum(btf: &[u8], kind: Kind) -> Result<Vec<(String, u32)>, BtfError> {
    scan(btf, &[kind])?[slot(kind)].take().ok_or(BtfError::MissingEnum { name: kind.kernel_enum() })
}

/// The checked layout of a blob: its type and string sections.
struct Sections<'a> {
    /// Offset of the type section in the blob, for messages.
    type_start: usize,
    types: &'a [u8],
    strings: &'a [u8],
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Header fields as `u32`, read from a slice known to hold the header.
fn header_field(btf: &[u8], off: usize, len: usize) -> Result<u32, BtfError> {
    u32_at(btf, off).ok_or(BtfError::TruncatedHeader { len })
}

fn section<'a>(
    btf: &'a [u8],
    hdr_len: usize,
    name: &'static str,
    off: u32,
    size: u32,
) -> Result<(usize, &'a [u8]), BtfError> {
    let oob = BtfError::SectionOutOfBounds { section: name, off, size, len: btf.len() };
    let start = usize::try_from(off).ok().and_then(|o| hdr_len.checked_add(o));
    let end = start.and_then(|s| s.checked_add(usize::try_from(size).ok()?));
    match (start, end) {
        (Some(start), Some(end)) => btf.get(start..end).map(|s| (start, s)).ok_or(oob),
        _ => Err(oob),
    }
}

fn sections(btf: &[u8]) -> Result<Sections<'_>, BtfError> {
    let len = btf.len();
    if len > MAX_BTF_BYTES {
        return Err(BtfError::TooLarge { max: MAX_BTF_BYTES });
    }
    if len < HEADER_LEN {
        return Err(BtfError::TruncatedHeader { len });
    }
    let magic = u16_at(btf, 0).ok_or(BtfError::TruncatedHeader { len })?;
    match magic.to_le_bytes() {
        MAGIC_LE => {}
        [a, b] if [b, a] == MAGIC_LE => return Err(BtfError::ForeignEndian),
        _ => return Err(BtfError::BadMagic { magic }),
    }
    let version = btf.get(2).copied().ok_or(BtfError::TruncatedHeader { len })?;
    if version != BTF_VERSION {
        return Err(BtfError::UnsupportedVersion { version });
    }
    let hdr_len_raw = header_field(btf, 4, len)?;
    let hdr_len = usize::try_from(hdr_len_raw)
        .ok()
        .filter(|&h| (HEADER_LEN..=len).contains(&h))
        .ok_or(BtfError::BadHeaderLen { hdr_len: hdr_len_raw, len })?;
    let type_off = header_field(btf, 8, len)?;
    let type_len = header_field(btf, 12, len)?;
    let str_off = header_field(btf, 16, len)?;
    let str_len = header_field(btf, 20, len)?;
    let (type_start, types) = section(btf, hdr_len, "type", type_off, type_len)?;
    let (_, strings) = section(btf, hdr_len, "string", str_off, str_len)?;
    Ok(Sections { type_start, types, strings })
}

impl Sections<'_> {
    /// The NUL-terminated string at `name_off`, without its NUL.
    fn string(&self, type_id: u32, name_off: u32) -> Result<&[u8], BtfError> {
        let rest = usize::try_from(name_off)
            .ok()
            .and_then(|o| self.strings.get(o..))
            .filter(|r| !r.is_empty())
            .ok_or(BtfError::StringOutOfBounds { type_id, name_off, str_len: self.strings.len() })?;
        let end = rest.iter().position(|&c| c == 0).ok_or(BtfError::UnterminatedString { type_id, name_off })?;
        Ok(&rest[..end])
    }
}

/// Bytes of trailing data after a `struct btf_type` of `kind` with `vlen`
/// members, or `None` for an unknown kind.
fn trailing_len(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7..=12 | 16 | 18 => 0,
        // INT, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

/// Tables of the enums found so far, by [`slot`].
type Found = [Option<Vec<(String, u32)>>; 4];

/// Walk the whole type section; return the enumerators of the enums of
/// `wanted`. As in the kernel's own lookup for bpffs
/// (`find_bpffs_btf_enums`), only `BTF_KIND_ENUM` types count (an ENUM64
/// of the same name is skipped) and the first one of a name wins.
fn scan(btf: &[u8], wanted: &[Kind]) -> Result<Found, BtfError> {
    let sec = sections(btf)?;
    let mut found = Found::default();
    let mut pos = 0usize;
    let mut type_id = 0u32;
    while pos < sec.types.len() {
        type_id = type_id.saturating_add(1);
        let offset = sec.type_start.saturating_add(pos);
        let truncated = || BtfError::TypeTruncated { type_id, offset };
        let head = sec.types.get(pos..).and_then(|t| t.get(..TYPE_LEN)).ok_or_else(truncated)?;
        let name_off = u32_at(head, 0).ok_or_else(truncated)?;
        let info = u32_at(head, 4).ok_or_else(truncated)?;
        let body_start = pos + TYPE_LEN;
        let [vlen_lo, vlen_hi, _, kind_byte] = info.to_le_bytes();
        let kind = kind_byte & 0x1f;
        // An enum's kind_flag marks signed values (libbpf's btf_dump reads
        // it as is_signed).
        let signed = kind_byte & 0x80 != 0;
        let vlen = usize::from(u16::from_le_bytes([vlen_lo, vlen_hi]));
        let extra = trailing_len(kind, vlen).ok_or(BtfError::UnknownKind { type_id, offset, kind })?;
        let end = body_start.checked_add(extra).ok_or_else(truncated)?;
        let body = sec.types.get(body_start..end).ok_or_else(truncated)?;
        if usize::try_from(name_off).map_or(true, |o| o >= sec.strings.len()) {
            return Err(BtfError::StringOutOfBounds { type_id, name_off, str_len: sec.strings.len() });
        }
        if kind == KIND_ENUM {
            let name = sec.string(type_id, name_off)?;
            let want = wanted.iter().find(|k| k.kernel_enum().as_bytes() == name);
            if let Some(&k) = want.filter(|&&k| found[slot(k)].is_none()) {
                found[slot(k)] = Some(enumerators(&sec, type_id, k, signed, body)?);
            }
        }
        pos = end;
    }
    Ok(found)
}

/// The `(name, value)` table of one `BTF_KIND_ENUM` body (`struct
/// btf_enum { u32 name_off; s32 val; }` each; `signed` is the type's
/// kind_flag: set, the values are `s32`, clear, `u32`).
fn enumerators(
    sec: &Sections<'_>,
    type_id: u32,
    k: Kind,
    signed: bool,
    body: &[u8],
) -> Result<Vec<(String, u32)>, BtfError> {
    let prefix = k.kernel_prefix().as_bytes();
    let mut out = Vec::new();
    for e in body.chunks_exact(8) {
        let name_off = u32_at(e, 0).unwrap_or(0);
        let val = u32_at(e, 4).unwrap_or(0);
        let raw = if signed { i64::from(i32::from_le_bytes(val.to_le_bytes())) } else { i64::from(val) };
        let name = sec.string(type_id, name_off)?;
        if name.is_empty() || name[0].is_ascii_digit() || !name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return Err(BtfError::InvalidName { type_id, name_off });
        }
        // Names without the prefix (`__MAX_BPF_CMD`, ...) cannot be
        // delegated; the kernel matches the prefix case-insensitively.
        let Some(rest) =
            name.get(..prefix.len()).filter(|p| p.eq_ignore_ascii_case(prefix)).and_then(|_| name.get(prefix.len()..))
        else {
            continue;
        };
        if rest.is_empty() || name.starts_with(b"__") || ends_with_ignore_case(name, b"_UNSPEC") {
            continue;
        }
        // Values a mask cannot hold are not names of this set.
        let Ok(value) = u32::try_from(raw) else { continue };
        let rest = String::from_utf8_lossy(rest).to_ascii_lowercase();
        out.push((rest, value));
    }
    out.sort_by_key(|(n, v)| (*v, n.ends_with("_deprecated")));
    Ok(out)
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests;
