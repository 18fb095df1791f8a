//! What a token fd delegates, as the kernel reports it.

use std::os::fd::{AsRawFd, BorrowedFd};

use bpftoken_proto::delegation::{Delegation, Kind, ANY};

use crate::sys;

/// Where the masks were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `BPF_OBJ_GET_INFO_BY_FD` (Linux 6.17+): the exact masks.
    ObjInfo,
    /// `/proc/self/fdinfo` (older kernels): a set with every bit the
    /// kernel knows reads as `any`.
    FdInfo,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::ObjInfo => "bpf_obj_get_info",
            Source::FdInfo => "fdinfo",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("fd {fd} is not open")]
    NotOpen { fd: i32 },
    #[error("fd {fd} is not a BPF token ({what})")]
    NotToken { fd: i32, what: String },
    #[error("cannot read fd {fd}'s token masks: {source}")]
    Io { fd: i32, source: std::io::Error },
}

/// The four masks of the token behind `fd`, as the kernel reports them
/// (what [`Token::granted`](crate::Token::granted) says, checked).
///
/// ```
/// use std::os::fd::AsFd;
///
/// use bpftoken::inspect::{token_masks, InspectError};
///
/// let not_a_token = std::fs::File::open("/dev/null")?;
/// assert!(matches!(token_masks(not_a_token.as_fd()), Err(InspectError::NotToken { .. })));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn token_masks(fd: BorrowedFd<'_>) -> Result<(Delegation, Source), InspectError> {
    token_masks_of(fd.as_raw_fd())
}

/// [`token_masks`] for an fd number this process holds (e.g. from
/// `BPF_TOKEN_FD`); a number that is not open gives [`InspectError::NotOpen`].
pub fn token_masks_of(raw: i32) -> Result<(Delegation, Source), InspectError> {
    // fdinfo first: only a token has allowed_* lines, and every kernel with
    // tokens prints them (BPF_OBJ_GET_INFO_BY_FD would also answer for a
    // map or a program fd).
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InspectError::NotOpen { fd: raw }
        } else {
            InspectError::Io { fd: raw, source: e }
        }
    })?;
    let mut d = Delegation::NONE;
    for kind in Kind::ALL {
        let name = format!("allowed_{}", kind.key());
        let value = info
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| InspectError::NotToken { fd: raw, what: kind_of(raw) })?;
        let mask = if value == "any" {
            ANY
        } else {
            u64::from_str_radix(value.trim_start_matches("0x"), 16)
                .map_err(|_| InspectError::NotToken { fd: raw, what: format!("unreadable {name} {value:?}") })?
        };
        d.set(kind, mask);
    }
    // Exact masks where the kernel has them (6.17+; EINVAL before).
    match sys::token_info(raw) {
        Ok(i) => Ok((
            Delegation {
                cmds: i.allowed_cmds,
                maps: i.allowed_maps,
                progs: i.allowed_progs,
                attachs: i.allowed_attachs,
            },
            Source::ObjInfo,
        )),
        Err(_) => Ok((d, Source::FdInfo)),
    }
}

/// What an fd is, for messages ("socket:[123]", "/dev/null").
fn kind_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map_or_else(|e| e.to_string(), |p| p.display().to_string())
}
