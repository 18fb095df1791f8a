//! Why a mint failed, precisely enough to act on.

use bpftoken_proto::delegation::Kind;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A step of minting that calls into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    SocketPair,
    Fork,
    /// Helper: drop to the client's uid/gid.
    SetIds,
    /// Helper: unshare(CLONE_NEWUSER).
    UnshareUser,
    /// Helper: setns() into the target user namespace (container mode).
    EnterUserNamespace,
    /// Helper: become the target namespace's root (setresuid(0) there).
    BecomeNamespaceRoot,
    /// Helper: unshare(CLONE_NEWNS).
    UnshareMount,
    /// Helper: fsopen("bpf").
    FsOpen,
    /// Root: open /proc/PID/ns/user of the helper.
    OpenUserNamespace,
    /// Root: NS_GET_OWNER_UID on it.
    CheckOwner,
    /// Root: write the helper's uid_map / setgroups / gid_map.
    WriteIdMaps,
    /// Root: fsconfig(delegate_*).
    Delegate(Kind),
    /// Root: fsconfig(FSCONFIG_CMD_CREATE).
    CreateSuperblock,
    FsMount,
    /// Root: fstatfs on the new mount.
    CheckMount,
    /// Root: open the bpffs root directory.
    OpenRoot,
    /// Mint child: clone().
    Clone,
    /// Mint child: blocking signals, closing fds, dropping groups.
    MintChildPrepare,
    /// Mint child: setns(userns).
    SetNs,
    /// Mint child: setresuid(0) there and PR_SET_DUMPABLE 0.
    MintChildBecomeRoot,
    /// Mint child: sending the tokens back.
    MintChildSend,
    /// Mint child: BPF_TOKEN_CREATE.
    TokenCreate,
    /// Mint child did not finish in time (stopped) and was killed.
    MintTimeout,
    /// Root: check the minted fd.
    CheckToken,
    /// Talking to the helper.
    HelperIo,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::SocketPair => f.write_str("socketpair()"),
            Step::Fork => f.write_str("fork() of the bpffs helper"),
            Step::SetIds => f.write_str("helper: setresuid/setresgid to the client"),
            Step::UnshareUser => f.write_str("helper: unshare(CLONE_NEWUSER)"),
            Step::EnterUserNamespace => f.write_str("helper: setns() into the target user namespace"),
            Step::BecomeNamespaceRoot => f.write_str("helper: setresuid(0)/setresgid(0) inside the target namespace"),
            Step::UnshareMount => f.write_str("helper: unshare(CLONE_NEWNS)"),
            Step::FsOpen => f.write_str("helper: fsopen(\"bpf\")"),
            Step::OpenUserNamespace => f.write_str("opening the helper's user namespace"),
            Step::CheckOwner => f.write_str("NS_GET_OWNER_UID"),
            Step::WriteIdMaps => f.write_str("writing the helper's uid_map/gid_map"),
            Step::Delegate(k) => write!(f, "fsconfig({})", k.mount_option()),
            Step::CreateSuperblock => f.write_str("fsconfig(FSCONFIG_CMD_CREATE)"),
            Step::FsMount => f.write_str("fsmount()"),
            Step::CheckMount => f.write_str("fstatfs() of the new bpffs"),
            Step::OpenRoot => f.write_str("opening the bpffs root"),
            Step::Clone => f.write_str("clone() of the mint child"),
            Step::MintChildPrepare => {
                f.write_str("mint child: blocking signals, closing fds and dropping supplementary groups")
            }
            Step::SetNs => f.write_str("setns() into the scope's user namespace"),
            Step::MintChildBecomeRoot => {
                f.write_str("mint child: setresuid(0)/setresgid(0) in the scope's user namespace and PR_SET_DUMPABLE")
            }
            Step::MintChildSend => f.write_str("mint child: sending the tokens back (SCM_RIGHTS)"),
            Step::TokenCreate => f.write_str("BPF_TOKEN_CREATE"),
            Step::MintTimeout => f.write_str("the mint child (killed or stopped by a signal)"),
            Step::CheckToken => f.write_str("checking the minted fd"),
            Step::HelperIo => f.write_str("talking to the bpffs helper"),
        }
    }
}

/// A failed mint. Serialisable: the minter process sends it to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MintError {
    #[error("{step} failed: {}{}", std::io::Error::from_raw_os_error(*errno), hint(*step, *errno))]
    Syscall { step: Step, errno: i32 },
    #[error("the bpffs helper for uid {uid} ended before it finished (it was killed or crashed)")]
    HelperLost { uid: u32 },
    #[error("the bpffs helper for uid {uid} did not answer within {millis} ms")]
    HelperTimeout { uid: u32, millis: u64 },
    #[error("the bpffs helper sent an unexpected message ({0})")]
    HelperProtocol(String),
    #[error("the bpffs helper sent {got:?} where a filesystem context was expected")]
    NotFsContext { got: String },
    #[error("the new filesystem is not a bpffs (magic {magic:#x})")]
    NotBpffs { magic: u64 },
    #[error("the helper's user namespace is owned by uid {got}, expected uid {want}")]
    WrongOwner { got: u32, want: u32 },
    #[error("the target user namespace is not usable: {0}")]
    BadTarget(String),
    #[error("the minted fd is {got}, not a BPF token")]
    NotToken { got: String },
    #[error("the first token of a new scope carries {kind}s {got}, expected {want:#x}")]
    WrongMasks { kind: Kind, got: String, want: u64 },
    #[error("the minter process is unavailable: {0}")]
    MinterUnavailable(String),
    #[error("the minter is busy creating scopes for other requests; retry in a moment")]
    MinterBusy,
    #[error(
        "{0}: a process the daemon starts in a client's user namespace could be ptraced by that client, so nothing \
         is minted; set fs.suid_dumpable to 0 or 2 (sysctl -w fs.suid_dumpable=2)"
    )]
    PtraceRisk(String),
}

fn hint(step: Step, errno: i32) -> &'static str {
    match (step, errno) {
        (Step::Delegate(_), libc::EINVAL) => {
            " (this kernel's bpffs has no delegate_* options: BPF tokens need Linux 6.9 or newer)"
        }
        (Step::TokenCreate, libc::EINVAL) => " (this kernel has no BPF_TOKEN_CREATE: Linux 6.9 or newer is needed)",
        (Step::UnshareUser, libc::ENOSPC) => " (the client's max_user_namespaces quota is used up)",
        (Step::BecomeNamespaceRoot, libc::EINVAL) => " (uid 0 or gid 0 is not mapped in that user namespace)",
        _ => "",
    }
}

impl MintError {
    pub fn syscall(step: Step, e: &std::io::Error) -> Self {
        MintError::Syscall { step, errno: e.raw_os_error().unwrap_or(libc::EIO) }
    }
}

impl From<(Step, rustix::io::Errno)> for MintError {
    fn from((step, e): (Step, rustix::io::Errno)) -> Self {
        MintError::Syscall { step, errno: e.raw_os_error() }
    }
}
