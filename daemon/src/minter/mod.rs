//! The minter: a single-threaded root process that creates scopes (the
//! cold path), the only namespace work that needs a fork (docs/design.md,
//! "Processes").
//!
//! The async daemon never forks: `fork()` from a threaded runtime is a
//! trap, and the helper must become the client's uid. The daemon starts
//! the minter by executing its own binary (`bpftokend minter --fd N`), and
//! again whenever it has died, and talks to it over a SOCK_SEQPACKET
//! socketpair, one request and one reply at a time. It runs a few minters
//! ([`pool`]), one owner uid's requests on at most one of them, so a
//! client that holds its own helper stopped delays only its own requests. A reply to
//! `CreateScope` carries three fds: the scope's user namespace, its bpffs
//! root and the detached mount. The minter keeps nothing and mints nothing: the daemon caches
//! scopes ([`crate::cache`]), mints tokens from them itself and checks the
//! first token of each new scope against the intended masks.

mod error;
pub mod link;
pub mod pool;
mod scope;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bpftoken_proto::codec::{decode_message, encode_message};
use bpftoken_proto::Delegation;
use serde::{Deserialize, Serialize};

pub use error::{MintError, Step};
pub use scope::{verify_token_masks, Scope, ScopeKey, ScopeOwner};

use crate::sys;
use crate::sys::fdpass;

/// A request from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MinterRequest {
    /// `id` is echoed in the reply, so a reply can never be taken for
    /// another request's. A [`ScopeOwner::Userns`] request carries that
    /// namespace's fd; an owner-mode request carries none.
    CreateScope { id: u64, owner: ScopeOwner, delegation: Delegation },
}

/// The minter's answer; `Created` carries the userns and bpffs root fds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MinterReply {
    Created { id: u64 },
    Failed { id: u64, error: MintError },
}

/// Largest request the minter accepts from the daemon.
const MAX_MINTER_MESSAGE: usize = 4096;

/// Entry point of the minter process. Returns when the daemon closes its
/// end of the socket.
pub fn run(sock: OwnedFd) -> std::io::Result<()> {
    let threads = sys::thread_count()?;
    if threads != 1 {
        return Err(std::io::Error::other(format!("the minter must be single-threaded, found {threads} threads")));
    }
    sys::make_non_dumpable()?;
    // Die with the daemon.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err(std::io::Error::other("the daemon exited before the minter started"));
    }
    let mut buf = vec![0u8; MAX_MINTER_MESSAGE];
    loop {
        let (request, mut fds) = match recv_request(sock.as_fd(), &mut buf)? {
            None => return Ok(()), // daemon gone
            Some(r) => r,
        };
        let (id, result) = match request {
            Ok(MinterRequest::CreateScope { id, owner, delegation }) if fds.len() <= 1 => {
                (id, Scope::create(ScopeKey { owner, delegation }, fds.pop()))
            }
            Ok(MinterRequest::CreateScope { id, .. }) => {
                (id, Err(MintError::MinterUnavailable(format!("{} fds came with one request", fds.len()))))
            }
            // Not a request we understand: say so under id 0, which the
            // daemon never uses, so it drops the link rather than guess.
            Err(msg) => (0, Err(MintError::MinterUnavailable(msg))),
        };
        match result {
            Ok(scope) => send_reply(
                sock.as_fd(),
                &MinterReply::Created { id },
                &[scope.userns.as_fd(), scope.bpffs_root.as_fd(), scope.mount.as_fd()],
            )?,
            Err(error) => send_reply(sock.as_fd(), &MinterReply::Failed { id, error }, &[])?,
        }
        // The scope drops here: the minter keeps no copy.
    }
}

/// A request, or why it is not one, and the fds that came with it.
type Received = (Result<MinterRequest, String>, Vec<OwnedFd>);

/// `Ok(None)` on EOF; `Ok(Some((Err, _)))` for a message that is not a request.
fn recv_request(sock: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<Option<Received>> {
    let msg = loop {
        match fdpass::recv_with_fds_blocking(sock, buf, 4) {
            Ok(m) => break m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    let fds = msg.fds;
    if msg.bytes == 0 {
        return Ok(None);
    }
    if msg.bytes_truncated || msg.fds_truncated {
        return Ok(Some((Err("malformed request to the minter".into()), Vec::new())));
    }
    Ok(Some((decode_message(&buf[..msg.bytes]).map_err(|e| e.to_string()), fds)))
}

fn send_reply(sock: BorrowedFd<'_>, reply: &MinterReply, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let bytes = encode_message(reply).map_err(std::io::Error::other)?;
    fdpass::send_with_fds_blocking(sock, &bytes, fds)?;
    Ok(())
}
