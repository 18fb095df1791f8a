//! What a grant hands out: a token fd and its masks, a libbpf-mode scope,
//! a delegated bpffs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

#[cfg(doc)]
use crate::Client;
use crate::{Delegation, LeaseInfo};

/// A BPF token received from the daemon: an fd (close-on-exec) and the
/// masks the kernel enforces. Dropping it closes the fd; the kernel frees
/// the token when nothing holds it.
///
/// Pass it to `bpf(2)` as `token_fd` (`map_token_fd`, `prog_token_fd`,
/// `btf_token_fd`) with `BPF_F_TOKEN_FD` in the command's flags:
///
/// ```no_run
/// use std::os::fd::AsRawFd;
///
/// let token = bpftoken::Client::connect()?.mint(&bpftoken::MintRequest::default())?;
/// let token_fd: i32 = token.as_raw_fd(); // for libbpf's opts.token_fd
/// println!("fd {token_fd}: {} (rules {:?})", token.granted(), token.rules());
/// if let Some(lease) = token.lease() {
///     println!("lease {} expires {:?}", lease.id, lease.expires);
/// }
/// # Ok::<(), bpftoken::Error>(())
/// ```
#[derive(Debug)]
pub struct Token {
    pub(crate) fd: OwnedFd,
    pub(crate) granted: Delegation,
    pub(crate) rules: Vec<String>,
    pub(crate) lease: Option<LeaseInfo>,
}

impl Token {
    /// The delegation masks the token carries.
    pub fn granted(&self) -> &Delegation {
        &self.granted
    }

    /// Policy rules that produced the grant.
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// The grant's lease (from the `*_leased` calls; `None` from a daemon
    /// too old to have leases, or from [`Client::mint`]).
    pub fn lease(&self) -> Option<&LeaseInfo> {
        self.lease.as_ref()
    }

    /// The token's fd, now the caller's to close.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Token {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Token {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What libbpf mode hands out: a token, the user namespace it belongs to
/// (owned by the caller) and the root of its delegated bpffs.
#[derive(Debug)]
pub struct ScopeGrant {
    pub token: Token,
    pub userns: OwnedFd,
    pub bpffs: OwnedFd,
}

/// A bpffs delegated to a user namespace the caller owns.
#[derive(Debug)]
pub struct DelegatedMount {
    /// The root of the detached mount.
    pub bpffs: OwnedFd,
    pub granted: Delegation,
    pub rules: Vec<String>,
    /// Its lease (from [`Client::delegate_mount_leased`]).
    pub lease: Option<LeaseInfo>,
}
