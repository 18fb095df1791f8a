//! Client of bpftokend, the daemon that hands local users BPF tokens
//! carrying exactly what a root-owned policy grants them: ask it for a
//! token over its Unix socket, get back the token's fd and its masks.
//!
//! A first program: a token narrowed to creating array maps, then used
//! with `bpf(BPF_MAP_CREATE)` (here through `libc`; with libbpf, pass the
//! fd as `token_fd` and `BPF_F_TOKEN_FD`).
//!
//! ```no_run
//! use std::os::fd::AsRawFd;
//!
//! use bpftoken::{Client, MintRequest};
//!
//! fn main() -> Result<(), bpftoken::Error> {
//!     // Names are the kernel's, as in the policy: BPF_MAP_CREATE is
//!     // "map_create", BPF_MAP_TYPE_ARRAY is "array". A set left out
//!     // means "everything my policy grants in it".
//!     let request = MintRequest::builder().cmds(["map_create"]).maps(["array"]).build()?;
//!     let mut client = Client::connect()?; // $BPFTOKEN_SOCKET or /run/bpftokend/socket
//!     let token = client.mint(&request)?; // refused (Error::Refused) beyond the grant
//!     println!("token fd {} carries {}", token.as_raw_fd(), token.granted());
//!     // cmds=[map_create] maps=[array] progs=[...] attachs=[...]
//!     Ok(())
//! }
//! ```
//!
//! What else a [`Client`] does: [`Client::mint_leased`] asks for a lease
//! shorter than the policy's (`ttl`), [`Client::mint_scope`] hands out the
//! token's user namespace and delegated bpffs as well (for libbpf's
//! `LIBBPF_BPF_TOKEN_PATH`), [`Client::query`] says what the policy would
//! grant and why, [`Client::leases`] and [`Client::revoke`] list and end
//! leases. Every error is an [`Error`]; a refusal carries the daemon's
//! stable [`RefusalCode`] and its sentence.
//!
//! Everything a program needs is re-exported here: there is no need to
//! depend on `bpftoken-proto`, the wire types' crate.

// Raw syscalls live in `sys` alone.
#![deny(unsafe_code)]

// The CLI's own machinery (`bpftoken run`, `--explain` and `unshare`),
// public for its binary and tests, not an API this crate keeps stable.
#[doc(hidden)]
pub mod bpfwatch;
mod error;
pub mod inspect;
pub mod json;
pub mod kernel;
mod learn;
mod leases;
#[doc(hidden)]
pub mod libbpf;
#[doc(hidden)]
pub mod namespaces;
#[doc(hidden)]
pub mod supervise;
mod sys;
mod token;
pub mod trace;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpftoken_proto::codec;
use bpftoken_proto::message::{FdRole, RequestBody};
use bpftoken_proto::{Request, Response, FRAME_HEADER_LEN};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

pub use bpftoken_proto::delegation::{self, Delegation, Kind, UnknownName};
pub use bpftoken_proto::{
    Enforcement, Explanation, ForgottenLeases, LeaseInfo, LeaseMode, LeaseState, MintMode, MintRequest,
    MintRequestBuilder, OtherBuild, OtherLeases, PerfEventOpened, Refusal, RefusalCode, RevokeTarget, TraceAllowance,
    TraceTarget, TracepointIdFile,
};
pub use error::Error;
pub use learn::{learned_rule, RuleUser};
pub use leases::LeaseListing;
pub use token::{DelegatedMount, ScopeGrant, Token};
pub use trace::{PerfEvent, TracepointId};

/// Where the daemon listens unless `BPFTOKEN_SOCKET` says otherwise
/// (see [`socket_path`]).
pub const DEFAULT_SOCKET_PATH: &str = "/run/bpftokend/socket";

/// How long the client waits for the daemon before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Most fds a response may carry.
const MAX_FDS: usize = 4;

/// The first read of a response asks for this much: a grant fits.
const FIRST_READ: usize = 1024;

/// What a grant request returns: the grant, its lease, its fds.
type Minted = (bpftoken_proto::Minted, Option<LeaseInfo>, Vec<OwnedFd>);

/// A connection to bpftokend. One connection may carry several requests,
/// one at a time; each waits at most [`TIMEOUT`] for its answer.
///
/// ```no_run
/// use bpftoken::{Client, MintRequest};
///
/// let mut client = Client::connect()?;
/// println!("my policy grants {}", client.query()?.grant);
/// let token = client.mint(&MintRequest::builder().progs(["xdp"]).build()?)?;
/// # Ok::<(), bpftoken::Error>(())
/// ```
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

/// The socket path from `BPFTOKEN_SOCKET`, or the default
/// ([`DEFAULT_SOCKET_PATH`]).
///
/// ```
/// std::env::remove_var("BPFTOKEN_SOCKET");
/// assert_eq!(bpftoken::socket_path(), std::path::Path::new("/run/bpftokend/socket"));
/// ```
pub fn socket_path() -> PathBuf {
    std::env::var_os("BPFTOKEN_SOCKET").map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from)
}

impl Client {
    /// Connect to the daemon at [`socket_path`]: `BPFTOKEN_SOCKET`, else
    /// [`DEFAULT_SOCKET_PATH`]. [`Error::Unreachable`] says which path did
    /// not answer.
    pub fn connect() -> Result<Client, Error> {
        Client::connect_to(&socket_path())
    }

    /// Connect to the daemon at `path`.
    ///
    /// ```
    /// let err = bpftoken::Client::connect_to("/nonexistent/socket".as_ref()).unwrap_err();
    /// assert!(matches!(err, bpftoken::Error::Unreachable { .. }), "{err}");
    /// ```
    pub fn connect_to(path: &Path) -> Result<Client, Error> {
        let stream =
            UnixStream::connect(path).map_err(|source| Error::Unreachable { path: path.to_owned(), source })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Client { stream })
    }

    /// Use a connection made elsewhere (a socket inherited or passed over
    /// SCM_RIGHTS). The daemon judges every request by the process that
    /// sends it, whoever connected.
    ///
    /// ```no_run
    /// use std::os::unix::net::UnixStream;
    ///
    /// let stream = UnixStream::connect("/run/bpftokend/socket")?;
    /// let mut client = bpftoken::Client::from_stream(stream)?;
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn from_stream(stream: UnixStream) -> Result<Client, Error> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Client { stream })
    }

    /// Ask for a token. Sets left `None` in `request` mean "all my policy
    /// grants"; anything outside the grant is refused, not cut down.
    ///
    /// Called from inside a rootless container (a user namespace the
    /// policy's `userns_owners` allows), the token is minted in that
    /// namespace and works for the container's root.
    ///
    /// ```no_run
    /// use bpftoken::{Client, Error, MintRequest, RefusalCode};
    ///
    /// let request = MintRequest::builder().cmds(["prog_load"]).progs(["xdp"]).build()?;
    /// match Client::connect()?.mint(&request) {
    ///     Ok(token) => println!("got {}", token.granted()),
    ///     Err(Error::Refused(r)) if r.code == RefusalCode::NotGranted => eprintln!("too much: {}", r.message),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn mint(&mut self, request: &MintRequest) -> Result<Token, Error> {
        let (m, lease, mut fds) = self.minted(RequestBody::Mint(*request), None, &[FdRole::Token])?;
        Ok(Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease })
    }

    /// [`Client::mint`], and the answer names the grant's lease. `ttl`
    /// asks for a lease shorter than the policy's (seconds). From a daemon
    /// too old for leases: a plain mint without `ttl`, an error with one.
    ///
    /// ```no_run
    /// let mut client = bpftoken::Client::connect()?;
    /// let token = client.mint_leased(&bpftoken::MintRequest::default(), Some(60))?; // one minute at most
    /// let lease = token.lease().expect("a daemon with leases");
    /// println!("lease {} ends at {:?} ({})", lease.id, lease.expires, lease.state.as_str());
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn mint_leased(&mut self, request: &MintRequest, ttl: Option<u32>) -> Result<Token, Error> {
        self.mint_leased_for_program(request, ttl, None)
    }

    /// [`Client::mint_leased`] for the program at `program` (an absolute
    /// path), which the caller is about to run: the daemon matches
    /// `executables` rules against that file on the host and, where its
    /// enforcer runs, binds the token to it (it works in that program
    /// only). Without the enforcer the daemon matches the caller's own
    /// executable instead.
    pub fn mint_leased_for_program(
        &mut self,
        request: &MintRequest,
        ttl: Option<u32>,
        program: Option<&str>,
    ) -> Result<Token, Error> {
        let roles = [FdRole::Token];
        let (m, lease, mut fds) = self.minted_leased(MintMode::Token, request, ttl, None, &roles, program)?;
        Ok(Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease })
    }

    /// [`Client::mint_scope`] with its lease (see [`Client::mint_leased`]).
    pub fn mint_scope_leased(&mut self, request: &MintRequest, ttl: Option<u32>) -> Result<ScopeGrant, Error> {
        self.mint_scope_leased_for_program(request, ttl, None)
    }

    /// [`Client::mint_scope_leased`] for a program (see
    /// [`Client::mint_leased_for_program`]).
    pub fn mint_scope_leased_for_program(
        &mut self,
        request: &MintRequest,
        ttl: Option<u32>,
        program: Option<&str>,
    ) -> Result<ScopeGrant, Error> {
        let roles = [FdRole::Token, FdRole::UserNamespace, FdRole::Bpffs];
        let (m, lease, mut fds) = self.minted_leased(MintMode::Scope, request, ttl, None, &roles, program)?;
        let bpffs = fds.remove(2);
        let userns = fds.remove(1);
        Ok(ScopeGrant { token: Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease }, userns, bpffs })
    }

    /// [`Client::delegate_mount`] with its lease (see [`Client::mint_leased`]).
    pub fn delegate_mount_leased(
        &mut self,
        request: &MintRequest,
        ttl: Option<u32>,
        userns: BorrowedFd<'_>,
    ) -> Result<DelegatedMount, Error> {
        let roles = [FdRole::Bpffs];
        let (m, lease, mut fds) =
            self.minted_leased(MintMode::DelegateMount, request, ttl, Some(userns), &roles, None)?;
        Ok(DelegatedMount { bpffs: fds.remove(0), granted: m.granted, rules: m.rules, lease })
    }

    /// Send a [`RequestBody::MintLease`] (a [`RequestBody::MintForProgram`]
    /// with `program`); an older daemon refuses it as malformed (the
    /// connection stays usable): ask again the way it knows (it would not
    /// have bound the grant to the program either).
    fn minted_leased(
        &mut self,
        mode: MintMode,
        request: &MintRequest,
        ttl: Option<u32>,
        fd: Option<BorrowedFd<'_>>,
        roles: &[FdRole],
        program: Option<&str>,
    ) -> Result<Minted, Error> {
        let lease = bpftoken_proto::LeaseRequest { mode, request: *request, ttl };
        if let Some(program) = program {
            let body =
                RequestBody::MintForProgram(bpftoken_proto::ProgramRequest { lease, program: program.to_owned() });
            match self.minted(body, fd, roles) {
                Err(Error::Refused(r)) if r.code == RefusalCode::Malformed && r.message.starts_with("undecodable") => {}
                other => return other,
            }
        }
        let body = RequestBody::MintLease(lease);
        match self.minted(body, fd, roles) {
            Err(Error::Refused(r)) if r.code == RefusalCode::Malformed && r.message.starts_with("undecodable") => {
                if ttl.is_some() {
                    return Err(Error::Refused(r));
                }
                let old = match mode {
                    MintMode::Token => RequestBody::Mint(*request),
                    MintMode::Scope => RequestBody::MintScope(*request),
                    MintMode::DelegateMount => RequestBody::DelegateMount(*request),
                };
                self.minted(old, fd, roles)
            }
            other => other,
        }
    }

    /// Revoke leases (the caller's own; uid 0: anyone's). Their tokens
    /// stop working at once; returns the leases revoked.
    ///
    /// ```no_run
    /// use bpftoken::{Client, RevokeTarget};
    ///
    /// let mut client = Client::connect()?;
    /// let token = client.mint_leased(&bpftoken::MintRequest::default(), None)?;
    /// if let Some(lease) = token.lease() {
    ///     client.revoke(RevokeTarget::Lease(lease.id))?; // the token stops working now
    /// }
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn revoke(&mut self, target: RevokeTarget) -> Result<Vec<LeaseInfo>, Error> {
        self.revoke_reporting(target).map(|(revoked, _)| revoked)
    }

    /// [`Client::revoke`], and what the revocation did in the pinned
    /// enforcers of other bpftokend builds (left by an upgrade), which a
    /// uid's or every lease reaches.
    pub fn revoke_reporting(&mut self, target: RevokeTarget) -> Result<(Vec<LeaseInfo>, Vec<OtherBuild>), Error> {
        self.send(RequestBody::Revoke(target), None)?;
        match self.read_plain()? {
            Response::Revoked(l) => Ok((l, Vec::new())),
            Response::RevokedWithOtherBuilds { revoked, other_builds } => Ok((revoked, other_builds)),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a revocation with something else".into())),
        }
    }

    /// A learning lease (`bpftoken learn`): a libbpf-mode grant, in a scope
    /// of its own, under the caller's `learn = true` rules; the daemon's
    /// enforcer records what its tokens are used for until
    /// [`Client::learned`].
    pub fn learn(&mut self, request: &MintRequest) -> Result<ScopeGrant, Error> {
        let roles = [FdRole::Token, FdRole::UserNamespace, FdRole::Bpffs];
        let (m, lease, mut fds) = self.minted(RequestBody::Learn(*request), None, &roles)?;
        if lease.is_none() {
            return Err(Error::Protocol("the daemon answered a learning request without its lease".into()));
        }
        let bpffs = fds.remove(2);
        let userns = fds.remove(1);
        Ok(ScopeGrant { token: Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease }, userns, bpffs })
    }

    /// End learning lease `id`: its tokens stop working, and the answer
    /// says what they were used for (commands, map, program and attach
    /// types, as token masks).
    pub fn learned(&mut self, id: u64) -> Result<(LeaseInfo, Delegation), Error> {
        self.send(RequestBody::Learned(id), None)?;
        match self.read_plain()? {
            Response::Learned { lease, used } => Ok((lease, used)),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a learning result with something else".into())),
        }
    }

    /// A response that must carry no fds.
    fn read_plain(&mut self) -> Result<Response, Error> {
        let (response, fds) = self.read_response()?;
        if !fds.is_empty() {
            return Err(Error::Protocol(format!("the daemon sent {} unexpected fds", fds.len())));
        }
        Ok(response)
    }

    /// libbpf mode: a token plus its user namespace and delegated bpffs
    /// root. The caller owns the namespace and may `setns()` into it; from
    /// inside, libbpf creates tokens itself from the bpffs
    /// (`LIBBPF_BPF_TOKEN_PATH=/proc/self/fd/N`).
    ///
    /// ```no_run
    /// use std::os::fd::AsRawFd;
    ///
    /// let scope = bpftoken::Client::connect()?.mint_scope(&bpftoken::MintRequest::default())?;
    /// // setns(scope.userns, CLONE_NEWUSER) in the process that runs libbpf, then:
    /// std::env::set_var("LIBBPF_BPF_TOKEN_PATH", format!("/proc/self/fd/{}", scope.bpffs.as_raw_fd()));
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn mint_scope(&mut self, request: &MintRequest) -> Result<ScopeGrant, Error> {
        let roles = [FdRole::Token, FdRole::UserNamespace, FdRole::Bpffs];
        let (m, lease, mut fds) = self.minted(RequestBody::MintScope(*request), None, &roles)?;
        let bpffs = fds.remove(2);
        let userns = fds.remove(1);
        Ok(ScopeGrant { token: Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease }, userns, bpffs })
    }

    /// For rootless runtimes: a bpffs delegated to `userns`, a user
    /// namespace this uid owns, as a detached mount to attach inside it
    /// (`move_mount` onto its `/sys/fs/bpf`, where libbpf finds it).
    pub fn delegate_mount(&mut self, request: &MintRequest, userns: BorrowedFd<'_>) -> Result<DelegatedMount, Error> {
        let (m, lease, mut fds) = self.minted(RequestBody::DelegateMount(*request), Some(userns), &[FdRole::Bpffs])?;
        Ok(DelegatedMount { bpffs: fds.remove(0), granted: m.granted, rules: m.rules, lease })
    }

    /// Send `body` (with `fd` attached), expect a grant carrying fds of
    /// exactly `roles` (and its lease, if the request asked for one).
    fn minted(&mut self, body: RequestBody, fd: Option<BorrowedFd<'_>>, roles: &[FdRole]) -> Result<Minted, Error> {
        self.send(body, fd)?;
        let (response, fds) = self.read_response()?;
        let (m, lease) = match response {
            Response::Refused(r) => return Err(Error::Refused(r)),
            Response::Minted(m) => (m, None),
            Response::Leased { minted, lease } => (minted, Some(lease)),
            _ => return Err(Error::Protocol("the daemon answered a mint with something else".into())),
        };
        if m.fds != roles || fds.len() != roles.len() {
            return Err(Error::Protocol(format!(
                "expected fds {roles:?}, got roles {:?} and {} fds",
                m.fds,
                fds.len()
            )));
        }
        Ok((m, lease, fds))
    }

    /// Ask what the policy would grant this caller now, and why. Nothing
    /// is minted.
    ///
    /// ```no_run
    /// let why = bpftoken::Client::connect()?.query()?;
    /// match why.refusal {
    ///     Some(refusal) => println!("a mint would be refused: {refusal}"),
    ///     None => println!("{} grants {} (rules {:?})", why.policy, why.grant, why.allowed_by),
    /// }
    /// # Ok::<(), bpftoken::Error>(())
    /// ```
    pub fn query(&mut self) -> Result<Explanation, Error> {
        self.send(RequestBody::Query, None)?;
        let (response, fds) = self.read_response()?;
        if !fds.is_empty() {
            return Err(Error::Protocol(format!("the daemon sent {} fds with an explanation", fds.len())));
        }
        match response {
            Response::Explained(e) => Ok(e),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a query with something else".into())),
        }
    }

    /// [`Client::query`], and whether the daemon enforces leases (`ttl`)
    /// on this kernel: `None` from a daemon too old to say.
    pub fn query_enforcement(&mut self) -> Result<(Explanation, Option<Enforcement>), Error> {
        self.query_enforcement_reporting().map(|(e, enforcement, _)| (e, enforcement))
    }

    /// [`Client::query_enforcement`], and the leases of the pinned
    /// enforcers of other bpftokend builds (left by an upgrade).
    #[allow(clippy::type_complexity)]
    pub fn query_enforcement_reporting(
        &mut self,
    ) -> Result<(Explanation, Option<Enforcement>, Vec<OtherBuild>), Error> {
        self.send(RequestBody::QueryEnforcement, None)?;
        let (response, fds) = self.read_response()?;
        if !fds.is_empty() {
            return Err(Error::Protocol(format!("the daemon sent {} fds with an explanation", fds.len())));
        }
        match response {
            Response::ExplainedEnforcement { explanation, enforcement } => {
                Ok((explanation, Some(enforcement), Vec::new()))
            }
            Response::ExplainedEnforcementWithOtherBuilds { explanation, enforcement, other_builds } => {
                Ok((explanation, Some(enforcement), other_builds))
            }
            // An older daemon does not know the request; the connection
            // stays usable, so ask the old way.
            Response::Refused(r) if r.code == RefusalCode::Malformed => Ok((self.query()?, None, Vec::new())),
            Response::Refused(r) => Err(Error::Refused(r)),
            _ => Err(Error::Protocol("the daemon answered a query with something else".into())),
        }
    }

    /// Send one request (with `fd` attached). If the daemon has closed
    /// the connection, it may have said why first (a `busy` refusal at
    /// accept): that answer is returned as the error.
    fn send(&mut self, body: RequestBody, fd: Option<BorrowedFd<'_>>) -> Result<(), Error> {
        let frame = codec::encode_request(&Request::new(body))?;
        let sent = match fd {
            None => self.stream.write_all(&frame),
            Some(fd) => {
                let fds = [fd];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                rustix::net::sendmsg(&self.stream, &[IoSlice::new(&frame)], &mut control, SendFlags::NOSIGNAL)
                    .map_err(std::io::Error::from)
                    .and_then(|n| self.stream.write_all(&frame[n..]))
            }
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => match self.read_response() {
                Ok((Response::Refused(r), _)) => Err(Error::Refused(r)),
                _ => Err(Error::Io(e)),
            },
        }
    }

    fn read_response(&mut self) -> Result<(Response, Vec<OwnedFd>), Error> {
        // The fds ride on the first bytes of the frame, which the daemon
        // sends with one sendmsg: one recvmsg usually takes the whole frame
        // and its fds; the rest, if any, comes with plain reads.
        // Wait in poll(POLLIN), not in recvmsg: a reader blocked in
        // recvmsg is woken (for nothing) when the daemon reads our
        // request and frees its buffer, a poller only when the answer
        // is in.
        let timeout = rustix::event::Timespec::try_from(TIMEOUT).ok();
        let mut ready = [rustix::event::PollFd::new(&self.stream, rustix::event::PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut ready, timeout.as_ref()) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        }
        let mut first = [0u8; FIRST_READ];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut first)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return Err(Error::Protocol("the daemon sent more fds than a response may carry".into()));
        }
        if msg.bytes == 0 {
            return Err(Error::Protocol("the daemon closed the connection without answering".into()));
        }
        let mut got = msg.bytes;
        if got < FRAME_HEADER_LEN {
            self.stream.read_exact(&mut first[got..FRAME_HEADER_LEN])?;
            got = FRAME_HEADER_LEN;
        }
        let (header, rest) = first.split_at_mut(FRAME_HEADER_LEN);
        let mut prefix = [0u8; FRAME_HEADER_LEN];
        prefix.copy_from_slice(header);
        let len = codec::payload_len(prefix)?;
        let got = got - FRAME_HEADER_LEN;
        if got > len {
            // One request is answered at a time, with one frame.
            return Err(Error::Protocol(format!("the daemon sent {} bytes beyond its answer", got - len)));
        }
        let response = match rest.get_mut(..len) {
            Some(payload) => {
                self.stream.read_exact(&mut payload[got..])?;
                codec::decode_response(payload)?
            }
            None => {
                let mut payload = vec![0u8; len];
                payload[..got].copy_from_slice(&rest[..got]);
                self.stream.read_exact(&mut payload[got..])?;
                codec::decode_response(&payload)?
            }
        };
        Ok((response, fds))
    }
}

/// The README's example, compiled with the doc tests so it cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
