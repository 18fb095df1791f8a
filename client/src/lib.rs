//! Client of bpftokend: ask the daemon for a BPF token.
//!
//! ```no_run
//! use bpftoken::{Client, MintRequest};
//! let mut client = Client::connect()?;
//! let token = client.mint(&MintRequest::default())?; // everything my policy grants
//! println!("token fd with {}", token.granted());
//! # Ok::<(), bpftoken::Error>(())
//! ```
// Raw syscalls live in `sys` alone.
#![deny(unsafe_code)]

pub mod inspect;
pub mod json;
pub mod kernel;
mod leases;
pub mod namespaces;
pub mod supervise;
mod sys;
pub mod trace;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bpftoken_proto::codec::{self, CodecError};
use bpftoken_proto::message::{FdRole, RequestBody};
use bpftoken_proto::{Request, Response, FRAME_HEADER_LEN};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

pub use bpftoken_proto::delegation::{self, Delegation, Kind};
pub use bpftoken_proto::{
    Enforcement, Explanation, ForgottenLeases, LeaseInfo, LeaseMode, LeaseState, MintMode, MintRequest, OtherBuild,
    OtherLeases, PerfEventOpened, Refusal, RefusalCode, RevokeTarget, TraceAllowance, TraceTarget, TracepointIdFile,
};
pub use leases::LeaseListing;
pub use trace::{PerfEvent, TracepointId};

/// Who a learned rule names: a user by name, or a uid without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleUser {
    Name(String),
    Uid(u32),
}

/// The minimal `[[allow]]` rule for `user` that grants exactly `used`
/// (what a learning lease recorded): one line per non-empty set, kernel
/// names in enum order; TOML, ready for the daemon's policy.
pub fn learned_rule(user: &RuleUser, used: &Delegation) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::from("[[allow]]\n");
    match user {
        RuleUser::Name(name) => out.push_str(&format!("users = [{}]\n", quote(name))),
        RuleUser::Uid(uid) => out.push_str(&format!("uids = [{uid}]\n")),
    }
    for kind in Kind::ALL {
        let names = delegation::names(kind, used.get(kind));
        if !names.is_empty() {
            let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
            out.push_str(&format!("{} = [{}]\n", kind.key(), list.join(", ")));
        }
    }
    out
}

/// Where the daemon listens unless `BPFTOKEN_SOCKET` says otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/bpftokend/socket";

/// How long the client waits for the daemon before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Most fds a response may carry.
const MAX_FDS: usize = 4;

/// The first read of a response asks for this much: a grant fits.
const FIRST_READ: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon answers on the socket.
    #[error(
        "cannot reach bpftokend at {path}: {source} (is the daemon running? set BPFTOKEN_SOCKET to use another socket)"
    )]
    Unreachable { path: PathBuf, source: std::io::Error },
    /// The daemon answered with a refusal.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The daemon's answer did not follow the protocol.
    #[error("protocol error talking to bpftokend: {0}")]
    Protocol(String),
    /// The connection failed mid-exchange.
    #[error("connection to bpftokend failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Protocol(e.to_string())
    }
}

/// A BPF token received from the daemon. Closing it (drop) releases it.
#[derive(Debug)]
pub struct Token {
    fd: OwnedFd,
    granted: Delegation,
    rules: Vec<String>,
    lease: Option<LeaseInfo>,
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

    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Token {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

/// What a grant request returns: the grant, its lease, its fds.
type Minted = (bpftoken_proto::Minted, Option<LeaseInfo>, Vec<OwnedFd>);

/// A connection to bpftokend. One connection may carry several requests.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

/// The socket path from `BPFTOKEN_SOCKET`, or the default.
pub fn socket_path() -> PathBuf {
    std::env::var_os("BPFTOKEN_SOCKET").map_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH), PathBuf::from)
}

impl Client {
    /// Connect to the daemon at [`socket_path`].
    pub fn connect() -> Result<Client, Error> {
        Client::connect_to(&socket_path())
    }

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
    pub fn mint(&mut self, request: &MintRequest) -> Result<Token, Error> {
        let (m, lease, mut fds) = self.minted(RequestBody::Mint(*request), None, &[FdRole::Token])?;
        Ok(Token { fd: fds.remove(0), granted: m.granted, rules: m.rules, lease })
    }

    /// [`Client::mint`], and the answer names the grant's lease. `ttl`
    /// asks for a lease shorter than the policy's (seconds). From a daemon
    /// too old for leases: a plain mint without `ttl`, an error with one.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_rule_names_each_used_set_in_enum_order() {
        let used = Delegation { cmds: (1 << 18) | (1 << 5) | 1, maps: 1 << 2, progs: 1 << 1, attachs: 1 };
        assert_eq!(
            learned_rule(&RuleUser::Name("bpftk-alice".into()), &used),
            "[[allow]]\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\", \"prog_load\", \"btf_load\"]\n\
             maps = [\"array\"]\nprogs = [\"socket_filter\"]\nattachs = [\"cgroup_inet_ingress\"]\n"
        );
        let only_cmds = Delegation { cmds: 1 << 18, ..Delegation::NONE };
        assert_eq!(learned_rule(&RuleUser::Uid(1234), &only_cmds), "[[allow]]\nuids = [1234]\ncmds = [\"btf_load\"]\n");
        assert_eq!(
            learned_rule(&RuleUser::Name("a\"b".into()), &Delegation::NONE),
            "[[allow]]\nusers = [\"a\\\"b\"]\n"
        );
    }
}
