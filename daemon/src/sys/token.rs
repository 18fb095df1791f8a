//! BPF tokens themselves: `BPF_TOKEN_CREATE` in the calling thread's own
//! user namespace (the mint child has its own raw copy, see
//! [`super::mint_child`]), whether the kernel knows the command, and the
//! delegation masks a token's fdinfo shows.
//!
//! Invariant: a token fd the kernel returns is wrapped in an `OwnedFd`
//! exactly once, and never leaked when it was not expected.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// `BPF_TOKEN_CREATE` command number of `bpf(2)`.
const BPF_TOKEN_CREATE: libc::c_long = 36;

/// `BPF_TOKEN_CREATE` from a bpffs root fd, in the calling thread's own
/// user namespace.
pub fn bpf_token_create(bpffs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = [0u32; 2];
    attr[1] = u32::try_from(bpffs.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `attr` is a valid `union bpf_attr` prefix for BPF_TOKEN_CREATE
    // (flags, bpffs_fd) of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8) };
    let fd = RawFd::try_from(cvt(ret)?).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the kernel knows the `BPF_TOKEN_CREATE` command (Linux 6.9+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSupport {
    Yes,
    No,
}

/// Asks the kernel for a token from fd -1: a kernel with tokens rejects
/// the fd (EBADF), an older one the command (EINVAL).
pub fn bpf_token_create_support() -> io::Result<TokenSupport> {
    let mut attr = [0u32, u32::MAX];
    // SAFETY: `attr` is a valid `union bpf_attr` prefix for BPF_TOKEN_CREATE
    // (flags 0, bpffs_fd -1) of the size passed; no fd is created.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8) };
    match cvt(ret) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(TokenSupport::Yes),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(TokenSupport::No),
        Err(e) => Err(e),
        Ok(fd) => {
            // Not expected; do not leak whatever it is.
            if let Ok(fd) = RawFd::try_from(fd) {
                // SAFETY: the kernel returned a new fd that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            Ok(TokenSupport::Yes)
        }
    }
}

/// One delegation mask as a token's fdinfo shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMask {
    /// Every bit the kernel knows.
    Any,
    Bits(u64),
}

/// The four masks of a token, from `/proc/self/fdinfo/N`
/// (`allowed_cmds:` etc., Linux 6.9+). Fails if `fd` is not a token.
pub fn token_masks(fd: BorrowedFd<'_>) -> io::Result<TokenMasks> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let field = |name: &str| -> io::Result<TokenMask> {
        let v = info
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| io::Error::other(format!("fd has no {name} in its fdinfo: not a BPF token")))?;
        if v == "any" {
            return Ok(TokenMask::Any);
        }
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .map(TokenMask::Bits)
            .map_err(|_| io::Error::other(format!("unparsable {name} {v:?}")))
    };
    Ok(TokenMasks {
        cmds: field("allowed_cmds")?,
        maps: field("allowed_maps")?,
        progs: field("allowed_progs")?,
        attachs: field("allowed_attachs")?,
    })
}

/// The four masks of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenMasks {
    pub cmds: TokenMask,
    pub maps: TokenMask,
    pub progs: TokenMask,
    pub attachs: TokenMask,
}

impl TokenMasks {
    pub fn get(&self, kind: bpftoken_proto::Kind) -> TokenMask {
        use bpftoken_proto::Kind;
        match kind {
            Kind::Cmd => self.cmds,
            Kind::Map => self.maps,
            Kind::Prog => self.progs,
            Kind::Attach => self.attachs,
        }
    }
}
