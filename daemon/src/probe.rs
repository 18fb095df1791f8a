//! What the daemon checks about the kernel and itself before it starts.

/// Refuse to start, with one message saying what is missing and what to
/// do, unless this kernel delegates bpffs options (Linux 6.9+, which also
/// brought BPF_TOKEN_CREATE) and we hold the capabilities minting needs.
pub fn check() -> Result<(), String> {
    let caps = effective_caps()?;
    // The minimal set, found by dropping each in turn (README "Run under
    // systemd" lists the same).
    for (bit, name, why) in [
        (21, "CAP_SYS_ADMIN", "to set bpffs delegate_* options and write user namespace id maps"),
        (7, "CAP_SETUID", "to start the bpffs helper as the client's uid"),
        (6, "CAP_SETGID", "to start the bpffs helper with the client's gid"),
        (19, "CAP_SYS_PTRACE", "to read a client's executable, cgroup and user namespace through its pidfd"),
        (5, "CAP_KILL", "to stop a bpffs helper that no longer answers"),
    ] {
        if caps & (1u64 << bit) == 0 {
            return Err(format!(
                "bpftokend lacks {name} ({why}); run it as root without dropping that capability \
                 (check CapabilityBoundingSet= in its unit)"
            ));
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let fs = rustix::mount::fsopen("bpf", rustix::mount::FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
        format!("this kernel ({release}) cannot open a bpf filesystem context: fsopen(\"bpf\"): {e}; BPF tokens need Linux 6.9 or newer with CONFIG_BPF_SYSCALL")
    })?;
    match rustix::mount::fsconfig_set_string(&fs, "delegate_cmds", "any") {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => Err(format!(
            "this kernel ({release}) has no BPF token support: bpffs has no delegate_cmds option; \
             BPF tokens need Linux 6.9 or newer, upgrade the kernel"
        )),
        Err(e) => Err(format!("this kernel ({release}) refused bpffs delegation (fsconfig delegate_cmds): {e}")),
    }
}

fn effective_caps() -> Result<u64, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| "no CapEff in /proc/self/status".to_owned())
}
