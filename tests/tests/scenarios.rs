//! The kernel-matrix scenarios (`bpftoken-scenarios`) on this machine's
//! kernel: the same binary the VMs of `tests/vm/run.sh` run, judged by
//! what this kernel's version should support.

use std::collections::BTreeMap;
use std::process::Command;

use bpftoken_tests::tools::{bpf_object, bpftool};
use bpftoken_tests::*;

/// `6.18.44-foo` -> (6, 18).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// What each capability should report on a kernel of this version
/// (tests/vm/expected.txt holds the same for the matrix's kernels).
fn expected(version: (u32, u32)) -> BTreeMap<&'static str, &'static str> {
    let tokens = version >= (6, 9);
    let token_info = version >= (6, 17);
    let with_tokens = if tokens { "pass" } else { "unsupported" };
    BTreeMap::from([
        ("daemon-start", with_tokens),
        ("client-no-daemon", "pass"),
        ("mint", with_tokens),
        ("map-create", with_tokens),
        ("prog-load", with_tokens),
        ("refused", with_tokens),
        // This project's hosts refuse BPF LSM programs
        // (docs/design.md, "BPF LSM on this project's hosts"): the daemon
        // reports enforcement unavailable. The 6.12 VM of the kernel
        // matrix, booted with lsm=...,bpf, enforces.
        ("enforcer", "unsupported"),
        ("live-limit", "unsupported"),
        ("inspect", with_tokens),
        ("token-info", if token_info { "pass" } else { "unsupported" }),
        ("libbpf-mode", with_tokens),
        // Leases that take effect need the enforcer (the VM); here a ttl
        // asked for and a revocation are refused with their typed reasons.
        ("expiry", "unsupported"),
        ("revoke-lease", "unsupported"),
        ("revoke-uid", "unsupported"),
        ("revoke-libbpf-scope", "unsupported"),
        ("bind-uid", "unsupported"),
        ("bind-cgroup", "unsupported"),
        ("cost", "unsupported"),
        // Learning needs the enforcer: refused `learning_unavailable` here.
        ("learn", "unsupported"),
        // Scopes the client creates tokens from (delegated mounts, libbpf
        // mode): revocation refused `revocation_unavailable`, binding
        // refused `not_enforceable`; learning `learning_unavailable`.
        ("revoke-unshare-scope", "unsupported"),
        ("bind-libbpf", "unsupported"),
        ("bind-unshare", "unsupported"),
        ("learned-refusals", "unsupported"),
        ("learn-fds", "unsupported"),
        // An `executables` rule loads only where the enforcer binds grants.
        ("bind-exe", "unsupported"),
        // This kernel is built without kprobes (no kprobe PMU); the daemon says so.
        (
            "trace-kprobe",
            if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() { "pass" } else { "unsupported" },
        ),
        // Pins outliving the daemon need the enforcer too.
        ("survive-restart", "unsupported"),
    ])
}

#[test]
fn kernel_matrix_scenarios_behave_as_this_kernel_version_predicts() {
    let Some(env) = setup("kernel_matrix_scenarios_behave_as_this_kernel_version_predicts") else { return };
    assert!(
        env.bin("bpftoken-scenarios").exists(),
        "{} is not built (run cargo build --workspace first)",
        env.bin("bpftoken-scenarios").display()
    );
    let (Some(bpftool), Some(obj)) = (bpftool(), bpf_object("sockfilter")) else { return };
    let mut c = Command::new(env.bin("bpftoken-scenarios"));
    c.arg("--bin-dir").arg(&env.bin_dir).arg("--bpftool").arg(bpftool).arg("--bpf-obj").arg(obj);
    let o = output(c);
    let out = stdout(&o);
    let release = out.lines().find_map(|l| l.strip_prefix("INFO kernel ")).expect("kernel line").to_owned();
    let got: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            Some((f.next()?, f.next()?))
        })
        .collect();
    let want = expected(kernel_version(&release));
    assert_eq!(got, want, "kernel {release}:\n{out}\n{}", stderr(&o));
    // The binary's exit status says whether anything failed.
    assert_eq!(o.status.success(), !got.values().any(|v| *v == "fail"), "{out}");
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v782"), (6, 18));
    assert_eq!(kernel_version("6.1.0-50-amd64"), (6, 1));
    assert_eq!(kernel_version("6.12.107+deb13-amd64"), (6, 12));
    assert_eq!(expected((6, 1))["daemon-start"], "unsupported");
    assert_eq!(expected((6, 12))["token-info"], "unsupported");
    assert_eq!(expected((6, 17))["token-info"], "pass");
}
