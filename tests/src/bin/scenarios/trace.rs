//! trace-kprobe: tracing without root where the kernel has kprobes (issue
//! #17; the host's 6.18 has no kprobe PMU, Debian 13's 6.12 has).
//!
//! `bpftk-alice` may load kprobe programs with her token and has
//! `kprobes = ["do_sys_openat2"]`: under `bpftoken run --fd-only`, the
//! probe loads a kprobe program, asks the daemon for the kprobe perf event,
//! attaches it with BPF_LINK_CREATE and opens /dev/null 50 times: the
//! program's run count rises by at least 50. Another symbol is refused
//! `target_not_allowed`. Then an unmodified tool: `bpftool prog loadall
//! kprobe_openat.bpf.o DIR autoattach` under `bpftoken run` attaches its
//! kprobe (the supervisor gets the event from the daemon) and the
//! program's run count rises. Where the kernel has no kprobe PMU the
//! daemon says so (`trace_unavailable`, naming the PMU): unsupported.

use std::path::Path;

use crate::harness::{bpftoken, release, run, start_daemon_with, Holder, Start, User};
use crate::report::{Outcome, Report};

/// Where the matrix puts the kprobe object (scripts/setup-test-tools.sh).
const KPROBE_OBJ: &str = "/usr/local/libexec/bpftoken-test/obj/kprobe_openat.bpf.o";

pub fn kprobe(bins: &Path, dir: &Path, alice: &User, bpftool: Option<&Path>, report: &mut Report) {
    let (outcome, detail) = match scenario(bins, dir, alice) {
        Ok((Outcome::Pass, raw)) => match bpftool.map(|b| unmodified(bins, dir, alice, b)) {
            Some(Ok(tool)) => (Outcome::Pass, format!("{raw}; {tool}")),
            Some(Err(e)) => (Outcome::Fail, format!("{raw}; bpftool: {e}")),
            None => (Outcome::Fail, format!("{raw}; no --bpftool given")),
        },
        Ok(other) => other,
        Err(e) => (Outcome::Fail, e),
    };
    report.result("trace-kprobe", outcome, &detail);
}

/// bpftool 7.5, unmodified, attaches a kprobe under `bpftoken run`.
fn unmodified(bins: &Path, dir: &Path, alice: &User, bpftool: &Path) -> Result<String, String> {
    let policy = "[[allow]]\nname = \"kprober\"\nusers = [\"bpftk-alice\"]\ncmds = [\"map_create\", \"prog_load\", \
                  \"btf_load\", \"obj_pin\", \"obj_get\", \"link_create\"]\nmaps = [\"array\", \"hash\"]\nprogs = \
                  [\"kprobe\", \"tracepoint\", \"socket_filter\"]\nattachs = [\"cgroup_inet_ingress\"]\nkprobes = \
                  [\"do_sys_openat2\"]\n";
    // libbpf probes perf links by loading a tracepoint program: without
    // `tracepoint` in `progs` it fails before it attaches anything.
    let daemon = match start_daemon_with(bins, dir, "-kprobe-tool", policy) {
        Start::Listening(d) => d,
        Start::Refused(log) | Start::Failed(log) => return Err(format!("the daemon did not start: {log}")),
    };
    let bt = bpftool.display();
    // The links live in the scope's bpffs, which ends with the command
    // (where the enforcer runs, a libbpf-mode scope is the lease's own):
    // the command waits while root reads the program's run count.
    let go = dir.join("go-kprobe-tool");
    let script = format!(
        "{bt} prog loadall {KPROBE_OBJ} $BPFTOKEN_PIN_DIR/k autoattach && {{ {bt} link show pinned \
         $BPFTOKEN_PIN_DIR/k/on_open; for i in 1 2 3 4 5 6 7 8 9 10; do cat /dev/null; done; echo ready; while [ ! -e \
         {} ]; do sleep 0.1; done; }}",
        go.display()
    );
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").map_err(|e| format!("bpf_stats_enabled: {e}"))?;
    let holder = Holder::start(bins, &daemon.socket, alice, &["run", "--", "/bin/sh", "-c", &script], "ready")?;
    let out = holder.before.join("\n");
    let prog = out.split_whitespace().skip_while(|w| *w != "prog").nth(1).map(str::to_owned);
    let shown = prog.as_ref().map(|id| {
        let mut c = std::process::Command::new(bpftool);
        c.args(["prog", "show", "id", id]);
        run(c).stdout
    });
    release(&go)?;
    let (exited, _) = holder.finish();
    let _ =
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", if stats.trim().is_empty() { "0" } else { stats.trim() });
    let runs = shown
        .as_deref()
        .and_then(|s| s.split_whitespace().skip_while(|w| *w != "run_cnt").nth(1).and_then(|n| n.parse::<u64>().ok()));
    match runs {
        Some(n) if n >= 10 && exited => Ok(format!("bpftool loadall autoattach: kprobe ran {n} times for 10 cats")),
        _ => Err(format!("output {out:?}, exited {exited}; prog show: {shown:?}")),
    }
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
