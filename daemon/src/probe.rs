//! What the daemon checks about the kernel and itself before it starts.

use crate::sys::TokenSupport;

/// Why the daemon refuses to start: each a single line saying what is
/// missing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "bpftokend lacks {name} ({why}); run it as root without dropping that capability \
         (check CapabilityBoundingSet= in its unit)"
    )]
    MissingCapability { name: &'static str, why: &'static str },
    #[error("cannot read the daemon's capabilities from /proc/self/status: {0}")]
    Capabilities(String),
    /// The kernel predates BPF tokens (Linux 6.9).
    #[error("BPF tokens are not supported by this kernel ({release}): {feature} needs Linux 6.9 or later")]
    NoTokens { release: String, feature: &'static str },
    #[error(
        "this kernel ({release}) cannot open a bpf filesystem context: fsopen(\"bpf\"): {source}; \
         BPF tokens need Linux 6.9 or later with CONFIG_BPF_SYSCALL"
    )]
    NoBpffs { release: String, source: rustix::io::Errno },
    #[error("this kernel ({release}) refused bpffs delegation (fsconfig delegate_cmds): {source}")]
    Delegation { release: String, source: rustix::io::Errno },
    #[error("cannot tell whether this kernel ({release}) has BPF_TOKEN_CREATE: bpf(): {source}")]
    TokenProbe { release: String, source: std::io::Error },
}

/// Refuse to start, with one message saying what is missing and what to
/// do, unless this kernel has BPF tokens (Linux 6.9+: `BPF_TOKEN_CREATE`
/// and bpffs `delegate_*` options) and we hold the capabilities minting
/// needs.
pub fn check() -> Result<(), ProbeError> {
    let caps = effective_caps()?;
    // The minimal set, found by dropping each in turn
    // (docs/operation.md, "Under systemd" lists the same).
    for (bit, name, why) in [
        (21, "CAP_SYS_ADMIN", "to set bpffs delegate_* options and write user namespace id maps"),
        (7, "CAP_SETUID", "to start the bpffs helper as the client's uid"),
        (6, "CAP_SETGID", "to start the bpffs helper with the client's gid"),
        (19, "CAP_SYS_PTRACE", "to read a client's executable, cgroup and user namespace through its pidfd"),
        (5, "CAP_KILL", "to stop a bpffs helper that no longer answers"),
    ] {
        if caps & (1u64 << bit) == 0 {
            return Err(ProbeError::MissingCapability { name, why });
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    // The command first: kernels before 6.9 silently ignore unknown bpffs
    // options (so delegate_cmds "works" on 6.1), but not unknown commands.
    match crate::sys::bpf_token_create_support() {
        Ok(TokenSupport::Yes) => {}
        Ok(TokenSupport::No) => return Err(ProbeError::NoTokens { release, feature: "BPF_TOKEN_CREATE" }),
        Err(source) => return Err(ProbeError::TokenProbe { release, source }),
    }
    let fs = rustix::mount::fsopen("bpf", rustix::mount::FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|source| ProbeError::NoBpffs { release: release.clone(), source })?;
    match rustix::mount::fsconfig_set_string(&fs, "delegate_cmds", "any") {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => Err(ProbeError::NoTokens { release, feature: "bpffs delegate_cmds" }),
        Err(source) => Err(ProbeError::Delegation { release, source }),
    }
}

fn effective_caps() -> Result<u64, ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| ProbeError::Capabilities(e.to_string()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| ProbeError::Capabilities("no CapEff line".to_owned()))
}
