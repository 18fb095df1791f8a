//! Requests a client sends and the answers the daemon gives.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::delegation::Delegation;

/// Version carried in front of every request and response payload.
pub const PROTOCOL_VERSION: u16 = 1;

/// One request. The version is not part of the postcard body: the codec
/// writes it as a fixed `u16` in front, so an unknown version is recognised
/// before the body is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub version: u16,
    pub body: RequestBody,
}

impl Request {
    pub fn new(body: RequestBody) -> Self {
        Request { version: PROTOCOL_VERSION, body }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Mint a token for the caller.
    Mint(MintRequest),
    /// Say what the policy would grant the caller now, and why; mint
    /// nothing.
    Query,
    /// Mint a token and also hand out its scope (libbpf mode): the answer
    /// carries [`FdRole::Token`], [`FdRole::UserNamespace`] and
    /// [`FdRole::Bpffs`], so the caller can `setns()` into the token's user
    /// namespace and let libbpf create tokens from the bpffs itself.
    MintScope(MintRequest),
    /// Delegate a bpffs to a user namespace the caller owns (a rootless
    /// container runtime): the request carries that namespace's fd as
    /// SCM_RIGHTS, the answer one [`FdRole::Bpffs`] of a detached mount
    /// the caller can attach inside it (`move_mount`).
    DelegateMount(MintRequest),
    /// Like [`RequestBody::Query`], and the answer
    /// ([`Response::ExplainedEnforcement`]) also says whether the daemon
    /// enforces leases on this kernel. A new variant rather than a new
    /// field, so clients and daemons of either age keep understanding each
    /// other: an older daemon refuses it as `malformed_request`.
    QueryEnforcement,
    /// A grant in any of the three modes, optionally asking for a shorter
    /// lease than the policy's `ttl`; answered with [`Response::Leased`]
    /// (the grant and its lease). New variants rather than new fields, so
    /// older daemons refuse it as `malformed_request` and older clients
    /// never see the new answer.
    MintLease(LeaseRequest),
    /// The caller's leases (root: everyone's); answered with
    /// [`Response::Leases`].
    Leases,
    /// End leases at once; answered with [`Response::Revoked`]. A caller
    /// may revoke its own leases, uid 0 anyone's.
    Revoke(RevokeTarget),
    /// A learning lease (`bpftoken learn`): a libbpf-mode grant in a scope
    /// of its own under the caller's `learn = true` rules, whose tokens'
    /// uses the enforcer records; answered with [`Response::Leased`].
    Learn(MintRequest),
    /// End a learning lease and say what its tokens were used for;
    /// answered with [`Response::Learned`].
    Learned(u64),
    /// A [`RequestBody::MintLease`] for the program the caller is about to
    /// run (`bpftoken run -- PROGRAM`): `executables` rules are matched
    /// against that file as the daemon finds it on the host, and where the
    /// enforcer runs the grant is bound to it, so its tokens work in that
    /// program only. Without the enforcer the daemon does not take the
    /// caller's word for it and matches the caller's own executable.
    /// Answered with [`Response::Leased`].
    MintForProgram(ProgramRequest),
    /// Open a perf event on a tracing target the policy names (tracing
    /// without root, docs/tracing.md); answered with
    /// [`Response::PerfEventOpened`] carrying [`FdRole::PerfEvent`].
    OpenPerfEvent(crate::trace::PerfEventRequest),
    /// A tracepoint's id and a read-only fd of its tracefs `id` file (the
    /// policy must name the tracepoint); answered with
    /// [`Response::TracepointId`] carrying [`FdRole::TracefsIdFile`].
    TracepointId { category: String, name: String },
    /// The tracing targets the caller's matching rules name; answered with
    /// [`Response::TraceTargets`].
    TraceTargets,
    /// One page of the caller's leases (root: everyone's), oldest first;
    /// answered with [`Response::LeasesPage`]. A listing of any length
    /// walks pages by their cursor, where one [`Response::Leases`] stops at
    /// what fits in a frame. Appended: an older daemon refuses it as
    /// `malformed_request`, and the client then asks with
    /// [`RequestBody::Leases`].
    LeasesPage(LeasesPageRequest),
}

/// Most leases one [`Response::LeasesPage`] carries, whatever a
/// [`LeasesPageRequest`] asks for; fewer when their encoding would not fit
/// in a frame.
pub const MAX_LEASES_PER_PAGE: u32 = 1024;

/// What a [`RequestBody::LeasesPage`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasesPageRequest {
    /// List leases whose id is above this one: `None` for the first page,
    /// then the previous page's [`LeasePage::next`].
    pub after: Option<u64>,
    /// At most this many (1 to [`MAX_LEASES_PER_PAGE`]; 0 and larger
    /// numbers mean that maximum).
    pub limit: u32,
}

/// Longest program path a [`ProgramRequest`] may name (`PATH_MAX`).
pub const MAX_PROGRAM_PATH: usize = 4096;

/// What a [`RequestBody::MintForProgram`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRequest {
    pub lease: LeaseRequest,
    /// Absolute path of the program, at most [`MAX_PROGRAM_PATH`] bytes.
    pub program: String,
}

impl RequestBody {
    /// How many fds this request must carry.
    pub fn fds_expected(&self) -> usize {
        match self {
            RequestBody::DelegateMount(_) => 1,
            RequestBody::MintLease(LeaseRequest { mode: MintMode::DelegateMount, .. }) => 1,
            RequestBody::MintForProgram(ProgramRequest {
                lease: LeaseRequest { mode: MintMode::DelegateMount, .. },
                ..
            }) => 1,
            _ => 0,
        }
    }
}

/// What a [`RequestBody::MintLease`] hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MintMode {
    /// As [`RequestBody::Mint`].
    Token,
    /// As [`RequestBody::MintScope`] (libbpf mode).
    Scope,
    /// As [`RequestBody::DelegateMount`] (carries the namespace fd).
    DelegateMount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub mode: MintMode,
    pub request: MintRequest,
    /// Seconds the lease should last at most; the policy's `ttl` still
    /// bounds it (the shorter wins). `None`: what the policy says.
    pub ttl: Option<u32>,
}

/// Which leases a [`RequestBody::Revoke`] ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    Lease(u64),
    /// Every lease of this uid.
    Uid(u32),
    /// Every lease (root only).
    All,
}

/// How a lease was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseMode {
    /// A token bound to the caller's uid.
    Owner,
    /// libbpf mode: a token plus its scope, from which the caller creates
    /// more tokens itself; the lease covers the whole scope.
    Libbpf,
    /// A token in the caller's own user namespace (rootless container).
    Container,
    /// A bpffs delegated to a user namespace the caller owns; the lease
    /// covers every token of that namespace.
    DelegatedMount,
}

impl LeaseMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseMode::Owner => "owner",
            LeaseMode::Libbpf => "libbpf",
            LeaseMode::Container => "container",
            LeaseMode::DelegatedMount => "delegated_mount",
        }
    }
}

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// Its tokens work (until `expires`, if set).
    Active,
    /// Past its expiry: the kernel refuses its tokens.
    Expired,
    /// Revoked: the kernel refuses its tokens.
    Revoked,
    /// The daemon cannot enforce leases here (no enforcer): nothing stops
    /// its tokens, whatever `expires` says.
    NotEnforced,
}

impl LeaseState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Expired => "expired",
            LeaseState::Revoked => "revoked",
            LeaseState::NotEnforced => "not_enforced",
        }
    }
}

/// One lease, as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// Unique while the daemon runs, never reused.
    pub id: u64,
    pub uid: u32,
    /// The scope: inode number of the token's user namespace.
    pub scope: u64,
    pub mode: LeaseMode,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since the Unix epoch; `None`: no expiry.
    pub expires: Option<u64>,
    /// The enforcer's serial of the token handed out, if known.
    pub serial: Option<u64>,
    /// The lease covers every token of its scope (libbpf mode, delegated
    /// mounts), not one serial.
    pub whole_scope: bool,
    pub state: LeaseState,
    /// Only tasks with this (real, initial-namespace) uid may use the
    /// lease's tokens (policy `bind = ["uid"]`).
    pub bound_uid: Option<u32>,
    /// Only tasks in this cgroup v2 subtree may use them (`bind =
    /// ["cgroup"]`): the caller's cgroup when it minted.
    pub bound_cgroup: Option<String>,
}

/// What the caller asks for. `None` for a set means "everything my policy
/// grants in that set"; `Some(mask)` narrows it. A mask that reaches outside
/// the grant is refused, never silently cut down.
///
/// Build one from names with [`MintRequest::builder`]:
///
/// ```
/// # use bpftoken_proto as bpftoken;
/// use bpftoken::MintRequest;
///
/// let everything = MintRequest::default();
/// let arrays_only = MintRequest::builder().cmds(["map_create"]).maps(["array"]).build()?;
/// assert_eq!(arrays_only, MintRequest { cmds: Some(1), maps: Some(1 << 2), ..everything });
/// # Ok::<(), bpftoken::UnknownName>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintRequest {
    pub cmds: Option<u64>,
    pub maps: Option<u64>,
    pub progs: Option<u64>,
    pub attachs: Option<u64>,
}

impl MintRequest {
    /// The request applied to `grant`: each set is either the grant's set
    /// (not asked) or what was asked.
    pub fn resolve(&self, grant: &Delegation) -> Delegation {
        Delegation {
            cmds: self.cmds.unwrap_or(grant.cmds),
            maps: self.maps.unwrap_or(grant.maps),
            progs: self.progs.unwrap_or(grant.progs),
            attachs: self.attachs.unwrap_or(grant.attachs),
        }
    }
}

/// One answer. A response to a mint that succeeded carries the fds named in
/// [`Minted::fds`] as SCM_RIGHTS on the same message, in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Minted(Minted),
    Refused(Refusal),
    Explained(Explanation),
    /// The answer to [`RequestBody::QueryEnforcement`].
    ExplainedEnforcement {
        explanation: Explanation,
        enforcement: Enforcement,
    },
    /// The answer to [`RequestBody::MintLease`]: the grant (fds as for
    /// [`Response::Minted`]) and its lease.
    Leased {
        minted: Minted,
        lease: LeaseInfo,
    },
    /// The answer to [`RequestBody::Leases`].
    Leases(Vec<LeaseInfo>),
    /// The answer to [`RequestBody::Revoke`]: the leases now revoked.
    Revoked(Vec<LeaseInfo>),
    /// The answer to [`RequestBody::Learned`]: the lease (now ended) and
    /// the commands, map, program and attach types its tokens were used
    /// for, as token masks.
    Learned {
        lease: LeaseInfo,
        used: Delegation,
    },
    /// The answer to [`RequestBody::Revoke`] of a uid's or every lease
    /// when pinned enforcers of other bpftokend builds are left (after an
    /// upgrade): the leases now revoked, and what the revocation did in
    /// each of those sets ([`OtherLeases`] counts the entries it matched).
    /// Appended; sent only when such sets exist.
    RevokedWithOtherBuilds {
        revoked: Vec<LeaseInfo>,
        other_builds: Vec<OtherBuild>,
    },
    /// The answer to [`RequestBody::QueryEnforcement`] when pinned
    /// enforcers of other bpftokend builds are left: their leases.
    /// Appended; sent only when such sets exist.
    ExplainedEnforcementWithOtherBuilds {
        explanation: Explanation,
        enforcement: Enforcement,
        other_builds: Vec<OtherBuild>,
    },
    /// The answer to [`RequestBody::OpenPerfEvent`], with one fd.
    PerfEventOpened(crate::trace::PerfEventOpened),
    /// The answer to [`RequestBody::TracepointId`], with one fd.
    TracepointId(crate::trace::TracepointIdFile),
    /// The answer to [`RequestBody::TraceTargets`].
    TraceTargets(Vec<crate::trace::TraceAllowance>),
    /// The answer to [`RequestBody::LeasesPage`].
    LeasesPage(LeasePage),
}

/// One page of a lease listing.
///
/// Ids only grow, so a walk from `after = None` along `next` lists every
/// lease that exists throughout it exactly once, in id order; a lease
/// started during the walk is listed if its page comes later, one that
/// ends during it may or may not be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasePage {
    /// Oldest first.
    pub leases: Vec<LeaseInfo>,
    /// `Some(id)`: more may follow; ask again with `after = Some(id)`.
    /// `None`: this is the last page.
    pub next: Option<u64>,
    /// Unenforced leases the daemon forgot to keep its table bounded,
    /// counted per owner (the caller's own; root: everyone's); on the
    /// first page (`after = None`) only, empty on later ones.
    pub forgotten: Vec<ForgottenLeases>,
}

/// How many unenforced leases of one uid the daemon forgot (their tokens
/// still work; they are no longer listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenLeases {
    /// Their owner; `None`: owners the daemon no longer tracks one by one
    /// (it counts that many uids at most).
    pub uid: Option<u32>,
    pub count: u64,
}

/// The pinned enforcer of another bpftokend build (left by the daemon
/// that ran before an upgrade), whose leases stay enforced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherBuild {
    /// Its pin directory; removing it (`rm -r`) ends its leases at once.
    pub dir: String,
    /// Its lease entries; `None` where its layout is unknown to this
    /// daemon, which then neither reads nor revokes them.
    pub leases: Option<OtherLeases>,
}

/// Lease entries of another build's enforcer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherLeases {
    /// Entries (in a revocation's answer: those it matched).
    pub total: u64,
    /// Of those, revoked (deadline 0): the kernel refuses their tokens.
    pub revoked: u64,
}

impl fmt::Display for OtherBuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = &self.dir;
        match self.leases {
            Some(OtherLeases { total: 0, .. }) => write!(f, "no lease of another bpftokend build pinned in {dir}"),
            Some(OtherLeases { total, revoked }) if revoked == total => {
                write!(f, "{total} lease(s) of another bpftokend build pinned in {dir}, all revoked")
            }
            Some(OtherLeases { total, revoked }) => write!(
                f,
                "{total} lease(s) of another bpftokend build pinned in {dir}, {revoked} revoked; `rm -r {dir}` ends \
                 them all at once"
            ),
            None => write!(
                f,
                "leases of another bpftokend build pinned in {dir}, whose layout this daemon does not know: they \
                 cannot be revoked by it; `rm -r {dir}` ends them at once"
            ),
        }
    }
}

/// Whether the daemon's BPF LSM enforcer runs, which leases (`ttl`) need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// Loaded and attached to the kernel's BPF token hooks.
    Enforcing,
    /// Not running here, with the reason in one sentence.
    Unavailable(String),
    /// Loaded and attached, but only for the daemon's lifetime: its
    /// programs and maps could not be pinned in the host bpffs (the reason
    /// in one sentence), so when the daemon stops expired and revoked
    /// tokens work again. Appended (protocol version 1 still): a client
    /// older than this variant cannot decode it and reports a malformed
    /// answer, which it only meets where pinning failed.
    EnforcingUntilStop(String),
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Enforcing => f.write_str("enforcing"),
            Enforcement::Unavailable(why) => write!(f, "unavailable: {why}"),
            Enforcement::EnforcingUntilStop(why) => {
                write!(f, "enforcing, but enforcement ends when the daemon stops: {why}")
            }
        }
    }
}

/// The answer to a query: what the caller would get, and from which rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The policy file in force.
    pub policy: String,
    /// Union of matching allow rules minus matching deny rules.
    pub grant: Delegation,
    pub allowed_by: Vec<String>,
    pub denied_by: Vec<String>,
    /// (rule, mints per minute) limits that apply.
    pub limits: Vec<(String, u32)>,
    /// Set when the caller would be refused whatever it asked, with the
    /// refusal it would get.
    pub refusal: Option<Refusal>,
}

/// The role of one fd attached to a [`Response::Minted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdRole {
    /// A BPF token (`anon_inode:bpf-token`).
    Token,
    /// The user namespace the token (or bpffs) belongs to.
    UserNamespace,
    /// The root of a delegated bpffs mount (detached: attach it with
    /// `move_mount`, or use it as `LIBBPF_BPF_TOKEN_PATH=/proc/self/fd/N`).
    Bpffs,
    /// A perf event (tracepoint, kprobe or uprobe PMU).
    PerfEvent,
    /// A tracepoint's tracefs `id` file, open read-only.
    TracefsIdFile,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minted {
    /// The masks the token carries.
    pub granted: Delegation,
    /// Policy rules that produced the grant, for the caller's information.
    pub rules: Vec<String>,
    /// The fds attached to this message, in order.
    pub fds: Vec<FdRole>,
}

/// A typed refusal: a stable code for programs, a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

macro_rules! refusal_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $text:literal; )*) => {
        /// Stable refusal codes. The numbers travel on the wire and the
        /// strings appear in messages and logs; neither ever changes
        /// meaning. A code this build does not know decodes as `Unknown`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u16", into = "u16")]
        pub enum RefusalCode {
            $( $(#[$doc])* $name, )*
            Unknown(u16),
        }

        impl From<u16> for RefusalCode {
            fn from(n: u16) -> Self {
                match n { $( $num => RefusalCode::$name, )* other => RefusalCode::Unknown(other) }
            }
        }

        impl From<RefusalCode> for u16 {
            fn from(c: RefusalCode) -> u16 {
                match c { $( RefusalCode::$name => $num, )* RefusalCode::Unknown(n) => n }
            }
        }

        impl RefusalCode {
            /// Every code this build knows, in wire order (`Unknown` aside).
            pub const ALL: &'static [RefusalCode] = &[ $( RefusalCode::$name, )* ];

            /// The stable string form, e.g. `not_in_policy`.
            pub fn as_str(&self) -> &'static str {
                match self { $( RefusalCode::$name => $text, )* RefusalCode::Unknown(_) => "unknown" }
            }
        }
    };
}

refusal_codes! {
    /// No policy rule matches the caller.
    NotInPolicy = 1, "not_in_policy";
    /// The request reaches outside what the policy grants the caller.
    NotGranted = 2, "not_granted";
    /// The request (or the grant) leaves nothing to delegate.
    EmptyGrant = 3, "empty_grant";
    /// The caller's uid or gid is unmapped (overflow id) or -1.
    UnmappedPeer = 4, "unmapped_peer";
    /// The caller lives in a mode the daemon does not serve yet.
    UnsupportedPeer = 5, "unsupported_peer";
    /// The caller reached a rule's mints-per-minute limit.
    RateLimited = 6, "rate_limited";
    /// The user namespace fd sent with the request is not one the caller
    /// may have a bpffs delegated to.
    BadNamespace = 7, "bad_namespace";
    /// A matching rule sets `ttl` or `max_live_tokens`, the daemon cannot
    /// enforce it, and the policy says `require_enforcement = true`.
    NotEnforceable = 8, "not_enforceable";
    /// The caller holds as many live tokens as a rule's `max_live_tokens`.
    TooManyTokens = 9, "too_many_tokens";
    /// The request carried a protocol version this daemon does not speak.
    UnsupportedVersion = 10, "unsupported_version";
    /// The request could not be decoded.
    Malformed = 11, "malformed_request";
    /// The frame length exceeds the protocol's cap.
    FrameTooLarge = 12, "frame_too_large";
    /// The request did not arrive within the read timeout.
    Timeout = 13, "timeout";
    /// The daemon is at its connection limit.
    Busy = 14, "busy";
    /// No lease has that id (never was, or ended and was forgotten).
    UnknownLease = 15, "unknown_lease";
    /// The lease belongs to another uid (only uid 0 may revoke those).
    NotYourLease = 16, "not_your_lease";
    /// Revocation needs the enforcer, which does not run here.
    RevocationUnavailable = 17, "revocation_unavailable";
    /// No matching allow rule sets `learn = true` for the caller.
    LearningNotAllowed = 18, "learning_not_allowed";
    /// Learning needs the enforcer, which does not run here.
    LearningUnavailable = 19, "learning_unavailable";
    /// Minting failed inside the daemon or the kernel.
    MintFailed = 20, "mint_failed";
    /// The program a request names (to bind the grant to) is not an
    /// absolute path of a file on the host.
    BadProgram = 21, "bad_program";
    /// No rule allows the tracing target (tracepoint, kernel function,
    /// binary) a perf event was asked for, or a deny rule names it.
    TargetNotAllowed = 22, "target_not_allowed";
    /// The kernel cannot open the perf event asked for (no such PMU, no
    /// such tracepoint or symbol, bad attributes): nothing the policy could
    /// change.
    TraceUnavailable = 23, "trace_unavailable";
    /// The answer does not fit in one frame (a [`RequestBody::Leases`]
    /// listing too many leases): ask with the paged request
    /// ([`RequestBody::LeasesPage`]), which a newer client does.
    AnswerTooLarge = 24, "answer_too_large";
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalCode::Unknown(n) => write!(f, "unknown code {n}"),
            other => f.write_str(other.as_str()),
        }
    }
}
