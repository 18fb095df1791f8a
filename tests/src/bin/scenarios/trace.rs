//! trace-kprobe: tracing without root where the kernel has kprobes (issue
//! #17; the host's 6.18 has no kprobe PMU, Debian 13's 6.12 has).
//!
//! `bpftk-alice` may load kprobe programs with her token and has
//! `kprobes = ["do_sys_openat2"]`: under `bpftoken run --fd-only`, the
//! probe loads a kprobe program, asks the daemon for the kprobe perf event,
//! attaches it with BPF_LINK_CREATE and opens /dev/null 50 times: the
//! program's run count rises by at least 50. Another symbol is refused
//! `target_not_allowed`. Where the kernel has no kprobe PMU the daemon
//! says so (`trace_unavailable`, naming the PMU): unsupported.

use std::path::Path;

use super::{bpftoken, start_daemon_with, Outcome, Report, Start, User};

pub fn kprobe(bins: &Path, dir: &Path, alice: &User, report: &mut Report) {
    let (outcome, detail) = scenario(bins, dir, alice).unwrap_or_else(|e| (Outcome::Fail, e));
    report.result("trace-kprobe", outcome, &detail);
}

fn scenario(bins: &Path, dir: &Path, alice: &User) -> Result<(Outcome, String), String> {
    let policy = "[[allow]]\nname = \"kprober\"\nusers = [\"bpftk-alice\"]\ncmds = [\"prog_load\"]\nprogs = \
                  [\"kprobe\"]\nattachs = [\"cgroup_inet_ingress\"]\nkprobes = [\"do_sys_openat2\"]\n";
    let daemon = match start_daemon_with(bins, dir, "-kprobe", policy) {
        Start::Listening(d) => d,
        Start::Refused(log) | Start::Failed(log) => return Err(format!("the daemon did not start: {log}")),
    };
    // run_cnt counts only while BPF statistics are on.
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").map_err(|e| format!("bpf_stats_enabled: {e}"))?;
    let probe = bins.join("bpftoken-probe");
    let (probe, socket) = (probe.to_str().ok_or("probe path")?, daemon.socket.to_str().ok_or("socket")?);
    let o = bpftoken(
        bins,
        &daemon.socket,
        alice,
        &["run", "--fd-only", "--", probe, "attach-kprobe", socket, "do_sys_openat2", "50"],
    );
    let other = bpftoken(
        bins,
        &daemon.socket,
        alice,
        &["run", "--fd-only", "--", probe, "open-perf", socket, "kprobe", "vfs_read"],
    );
    let _ =
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if stats.trim().is_empty() { "0" } else { stats.trim() });
    let out = o.stdout.trim();
    if out.contains("this kernel has no kprobe PMU") && out.contains("(trace_unavailable)") {
        return Ok((Outcome::Unsupported, out.replace('\n', " ")));
    }
    let lines: Vec<&str> = out.lines().collect();
    let runs = lines.get(1).and_then(|l| l.strip_prefix("run_cnt ")).and_then(|n| n.parse::<u64>().ok());
    let refused = other.stdout.contains("kernel function \"vfs_read\" is not allowed")
        && other.stdout.contains("(target_not_allowed)");
    Ok(match (lines.first(), runs) {
        (Some(&"attached"), Some(n)) if n >= 50 && refused => (
            Outcome::Pass,
            format!("kprobe do_sys_openat2 attached without root, ran {n} times for 50 opens; vfs_read refused"),
        ),
        _ => (Outcome::Fail, format!("{}; another symbol: {}", o.describe(), other.describe())),
    })
}
