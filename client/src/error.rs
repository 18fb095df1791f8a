//! The one error type of the client library: what went wrong, said so that
//! a person can fix it and a program can match it.

use std::path::PathBuf;

use bpftoken_proto::codec::CodecError;

use crate::{Kind, Refusal, UnknownName};
#[cfg(doc)]
use crate::{MintRequestBuilder, RefusalCode};

/// Why a call failed. `Display` says it in words for people; match the
/// variants (and a refusal's [`RefusalCode`]) in programs.
///
/// ```
/// use std::path::Path;
///
/// use bpftoken::{Client, Error, MintRequest, RefusalCode};
///
/// let err = Client::connect_to(Path::new("/nonexistent/socket")).unwrap_err();
/// assert!(matches!(err, Error::Unreachable { .. }));
/// assert!(err.to_string().starts_with("cannot reach bpftokend at /nonexistent/socket: No such file or directory"));
///
/// let err = Error::from(MintRequest::builder().progs(["xpd"]).build().unwrap_err());
/// assert_eq!(
///     err.to_string(),
///     "cannot build the request: unknown program type \"xpd\" (names are the kernel's, lowercase, without \
///      their prefix: BPF_PROG_TYPE_XDP is \"xdp\")"
/// );
///
/// // What a program does with a refusal:
/// fn explain(err: &Error) -> &'static str {
///     match err {
///         Error::Refused(r) if r.code == RefusalCode::NotGranted => "ask for less, or ask root for a rule",
///         Error::Refused(_) => "the policy says no",
///         Error::Unreachable { .. } => "is bpftokend running?",
///         _ => "see the message",
///     }
/// }
/// assert_eq!(explain(&err), "see the message");
/// ```
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
    /// A [`MintRequestBuilder`] was given a name the kernel does not have
    /// (nothing was sent).
    #[error("cannot build the request: {0} ({hint})", hint = name_hint(.0.kind))]
    Request(#[from] UnknownName),
}

/// How names of `kind` are spelt, by one example.
fn name_hint(kind: Kind) -> &'static str {
    match kind {
        Kind::Cmd => "names are the kernel's, lowercase, without their prefix: BPF_MAP_CREATE is \"map_create\"",
        Kind::Map => "names are the kernel's, lowercase, without their prefix: BPF_MAP_TYPE_ARRAY is \"array\"",
        Kind::Prog => "names are the kernel's, lowercase, without their prefix: BPF_PROG_TYPE_XDP is \"xdp\"",
        Kind::Attach => {
            "names are the kernel's, lowercase, without their prefix: BPF_CGROUP_INET_INGRESS is \"cgroup_inet_ingress\""
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Protocol(e.to_string())
    }
}
