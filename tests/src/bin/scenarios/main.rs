//! `bpftoken-scenarios`: the behaviours every kernel is measured on, in
//! one place. The host test (`tests/tests/scenarios.rs`) and the kernel
//! matrix (`tests/vm/run.sh`, inside each VM) both run this binary, so the
//! two cannot drift apart.
//!
//! ```text
//! bpftoken-scenarios [--bin-dir DIR] [--bpftool PATH --bpf-obj PATH]
//! ```
//!
//! Runs as root; DIR (default: its own) holds bpftokend, bpftoken and
//! bpftoken-probe. `--bpftool` is a token-aware bpftool (7.5, libbpf 1.5+)
//! and `--bpf-obj` the socket filter object built from
//! `tests/bpf/sockfilter.bpf.c`, for the libbpf-mode scenario.
//!
//! Prints `INFO kernel RELEASE`, then one line per capability:
//!
//! ```text
//! RESULT <capability> pass|fail|unsupported <detail>
//! ```
//!
//! `unsupported` means the kernel lacks the feature and the software said
//! so clearly (no hang, no crash); whether that is expected is for the
//! caller to decide. Exits 1 if any capability failed.
//!
//! Needs the users `bpftk-alice` (in the scenarios' policy) and
//! `bpftk-eve` (not in it).
//!
//! The basic capabilities (daemon-start, client-no-daemon, mint,
//! map-create, prog-load, refused, enforcer, inspect, token-info,
//! libbpf-mode, cost) are checked here, in [`scenarios`]; the others have
//! a file each: `leases`, `bind`, `learn`, `scope`, `identity` (bind-exe),
//! `trace` (trace-kprobe), `restart` (survive-restart). `harness` is what
//! they all run things with, `report` how they say what they found.

mod bind;
mod harness;
mod identity;
mod learn;
mod leases;
mod report;
mod restart;
mod scope;
mod trace;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::bind::bind_scenarios;
use crate::harness::{
    as_user, bpftoken, lines, release, run, start_daemon, user, wait_deadline, Holder, Start, ALLOWED_USER, OTHER_USER,
    STEP_TIMEOUT,
};
use crate::learn::learn;
use crate::leases::{lease_scenarios, live_limit};
use crate::report::{Outcome, Report};
use crate::scope::{scope_scenarios, SCOPE_CAPABILITIES};

/// The command line.
#[derive(Debug, Default)]
struct Args {
    bins: Option<PathBuf>,
    bpftool: Option<String>,
    bpf_obj: Option<String>,
}

/// Every capability, reported in this order; without a daemon, those that
/// need one say why not.
fn scenarios(args: &Args, bins: &Path, dir: &Path, report: &mut Report) -> Result<(), String> {
    let alice = user(ALLOWED_USER)?;
    let eve = user(OTHER_USER)?;
    let probe = bins.join("bpftoken-probe");
    let probe = probe.to_str().ok_or("non-UTF-8 binary path")?;
    let bpftoken_bin = bins.join("bpftoken");
    let bpftoken_bin = bpftoken_bin.to_str().ok_or("non-UTF-8 binary path")?;

    // daemon-start: listening, or a one-line refusal that names what the
    // kernel lacks.
    let (daemon, no_daemon) = match start_daemon(bins, dir) {
        Start::Listening(d) => {
            report.result("daemon-start", Outcome::Pass, "listening");
            (Some(d), String::new())
        }
        Start::Refused(log) => {
            let line = log.trim();
            let clear = line.lines().count() == 1
                && line.contains("not supported by this kernel")
                && line.contains("needs Linux 6.9 or later");
            let outcome = if clear { Outcome::Unsupported } else { Outcome::Fail };
            report.result("daemon-start", outcome, line);
            (None, if clear { "no daemon: the kernel has no BPF tokens".to_owned() } else { String::new() })
        }
        Start::Failed(why) => {
            report.result("daemon-start", Outcome::Fail, &why);
            (None, String::new())
        }
    };

    // client-no-daemon: a client asking where nobody listens gets a clear
    // answer at once: exit 69, "cannot reach bpftokend", and on a kernel
    // without tokens (where the daemon refused above) a second line saying
    // that no daemon can run here.
    let nobody = daemon.as_ref().map_or_else(|| dir.join("socket"), |_| dir.join("nobody-listens"));
    let started = Instant::now();
    let o = bpftoken(bins, &nobody, &alice, &["run", "--", "true"]);
    let took = started.elapsed();
    let err = lines(&o.stderr);
    let kernel_line = |l: &&str| l.contains("not supported by this kernel") && l.contains("needs Linux 6.9 or later");
    let ok = o.code() == Some(69)
        && err.first().is_some_and(|l| l.contains("cannot reach bpftokend"))
        && took < Duration::from_secs(10)
        && if no_daemon.is_empty() { err.len() == 1 } else { err.len() == 2 && err.get(1).is_some_and(kernel_line) };
    report.result(
        "client-no-daemon",
        if ok { Outcome::Pass } else { Outcome::Fail },
        &format!("exit {:?} after {} ms: {}", o.code(), took.as_millis(), o.stderr.trim()),
    );

    let Some(mut daemon) = daemon else {
        let (outcome, why) = if no_daemon.is_empty() {
            (Outcome::Fail, "no daemon".to_owned())
        } else {
            (Outcome::Unsupported, no_daemon)
        };
        for capability in [
            "mint",
            "map-create",
            "prog-load",
            "refused",
            "enforcer",
            "live-limit",
            "inspect",
            "token-info",
            "libbpf-mode",
            "expiry",
            "revoke-lease",
            "revoke-uid",
            "revoke-libbpf-scope",
            "bind-uid",
            "bind-cgroup",
            "cost",
            "learn",
            "bind-exe",
            "trace-kprobe",
            "survive-restart",
        ]
        .into_iter()
        .chain(SCOPE_CAPABILITIES)
        {
            report.result(capability, outcome, &why);
        }
        return Ok(());
    };
    let socket = daemon.socket.clone();

    // mint: an ordinary user gets a token; map-create / prog-load: the
    // granted types work with it, others do not, and nothing works
    // without it (unprivileged BPF is off).
    let without = run({
        let mut c = as_user(&alice, Path::new(probe));
        c.args(["try", "--no-token", "map:array", "prog:socket_filter"]);
        c
    });
    let o = bpftoken(
        bins,
        &socket,
        &alice,
        &[
            "run",
            "--fd-only",
            "--maps",
            "array",
            "--",
            probe,
            "try",
            "map:array",
            "map:hash",
            "prog:socket_filter",
            "prog:kprobe",
        ],
    );
    let got = lines(&o.stdout);
    if o.code() == Some(0) && got.len() == 4 {
        report.result("mint", Outcome::Pass, "bpftoken run passed BPF_TOKEN_FD");
        let base = lines(&without.stdout);
        let check = |capability: &str, no_token: Option<&&str>, want: [&str; 2], got: &[&str]| {
            let pass = no_token.is_some_and(|l| l.ends_with(" EPERM")) && got == want;
            let detail = format!("without token: {}; with token: {}", no_token.unwrap_or(&"?"), got.join(", "));
            (capability.to_owned(), if pass { Outcome::Pass } else { Outcome::Fail }, detail)
        };
        for (capability, outcome, detail) in [
            check("map-create", base.first(), ["map:array ok", "map:hash EPERM"], &got[..2]),
            check("prog-load", base.get(1), ["prog:socket_filter ok", "prog:kprobe EPERM"], &got[2..]),
        ] {
            report.result(&capability, outcome, &detail);
        }
    } else {
        let why = o.describe();
        report.result("mint", Outcome::Fail, &why);
        report.result("map-create", Outcome::Fail, "no token");
        report.result("prog-load", Outcome::Fail, "no token");
    }

    // refused: a user outside the policy gets one line naming the reason.
    let o = bpftoken(bins, &socket, &eve, &["run", "--", "true"]);
    let ok = o.code() == Some(1)
        && o.stderr.lines().count() == 1
        && o.stderr.starts_with("bpftoken: refused: ")
        && o.stderr.contains("(not_in_policy)");
    report.result("refused", if ok { Outcome::Pass } else { Outcome::Fail }, o.stderr.trim());

    // enforcer: the daemon's BPF LSM enforcer runs (`bpftoken query` says
    // "enforcement: enforcing"), or it says in one line why not. Kernels
    // that refuse BPF LSM programs, or boot without `bpf` in lsm=, report
    // unsupported with that reason.
    let o = bpftoken(bins, &socket, &alice, &["query"]);
    let states: Vec<&str> = o.stdout.lines().filter_map(|l| l.strip_prefix("enforcement: ")).collect();
    let (outcome, detail) = match (o.code(), states.as_slice()) {
        (Some(0), ["enforcing"]) => (Outcome::Pass, "bpftoken query: enforcing".to_owned()),
        (Some(0), [state]) if state.starts_with("unavailable: ") => (Outcome::Unsupported, (*state).to_owned()),
        _ => (Outcome::Fail, format!("bpftoken query: {}", o.describe())),
    };
    report.result("enforcer", outcome, &detail);
    let enforcing = outcome == Outcome::Pass;

    // inspect: the token's masks as the kernel holds them; token-info:
    // whether the kernel told them through BPF_OBJ_GET_INFO_BY_FD (6.17+)
    // rather than fdinfo.
    let o = bpftoken(bins, &socket, &alice, &["run", "--fd-only", "--maps", "array", "--", bpftoken_bin, "inspect"]);
    let field = |name: &str| -> Option<Vec<String>> {
        o.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.split(',').map(|n| n.trim().to_owned()).collect())
    };
    let masks_ok = field("cmds") == Some(vec!["map_create".into(), "prog_load".into()])
        && field("maps") == Some(vec!["array".into()])
        && field("progs") == Some(vec!["socket_filter".into()])
        && field("attachs") == Some(vec!["cgroup_inet_ingress".into()]);
    let source = field("source").and_then(|s| s.first().cloned());
    if o.code() == Some(0) && masks_ok && source.is_some() {
        let source = source.unwrap_or_default();
        report.result("inspect", Outcome::Pass, &format!("masks as granted, source {source}"));
        match source.as_str() {
            "bpf_obj_get_info" => report.result("token-info", Outcome::Pass, "BPF_OBJ_GET_INFO_BY_FD on the token"),
            "fdinfo" => report.result(
                "token-info",
                Outcome::Unsupported,
                "BPF_OBJ_GET_INFO_BY_FD on tokens needs Linux 6.17; inspect fell back to fdinfo",
            ),
            other => report.result("token-info", Outcome::Fail, &format!("unknown source {other:?}")),
        }
    } else {
        let why = format!("bpftoken run -- bpftoken inspect: {}", o.describe());
        report.result("inspect", Outcome::Fail, &why);
        report.result("token-info", Outcome::Fail, "inspect failed");
    }

    // libbpf-mode: unmodified bpftool, in the token's user namespace with
    // LIBBPF_BPF_TOKEN_PATH, loads and pins a program with a map.
    match (&args.bpftool, &args.bpf_obj) {
        (Some(bpftool), Some(obj)) => {
            let script = format!(
                "{bpftool} prog load {obj} $BPFTOKEN_PIN_DIR/filter && {bpftool} prog show pinned $BPFTOKEN_PIN_DIR/filter"
            );
            let o = bpftoken(bins, &socket, &alice, &["run", "--", "/bin/sh", "-c", &script]);
            let ok = o.code() == Some(0) && o.stdout.contains(": socket_filter");
            let detail =
                if ok { "bpftool prog load + pin through LIBBPF_BPF_TOKEN_PATH".to_owned() } else { o.describe() };
            report.result("libbpf-mode", if ok { Outcome::Pass } else { Outcome::Fail }, &detail);
        }
        _ => report.result("libbpf-mode", Outcome::Fail, "no --bpftool and --bpf-obj given"),
    }

    lease_scenarios(args, bins, dir, &socket, enforcing, report)?;
    let (outcome, detail) = learn(args, bins, dir, &alice);
    report.result("learn", outcome, &detail);
    bind_scenarios(bins, dir, &alice, enforcing, report);
    identity::bind_exe(bins, dir, &alice, enforcing, report);
    trace::kprobe(bins, dir, &alice, args.bpftool.as_deref().map(Path::new), report);
    scope_scenarios(args, bins, dir, &socket, &alice, enforcing, report);

    // cost: the median of a token-using bpf() call (an array map created
    // and closed) with the enforcer attached and, the same token, after
    // the daemon (and with it the enforcer) has stopped; and of a warm
    // mint. Only where the enforcer runs: elsewhere there is nothing to
    // compare.
    let timed = if enforcing {
        let mint = run({
            let mut c = as_user(&alice, Path::new(probe));
            c.arg("time-mint").arg(&socket).arg("200");
            c
        });
        let go = dir.join("go-cost");
        let go_s = go.to_str().ok_or("non-UTF-8 path")?;
        let h = Holder::start(
            bins,
            &socket,
            &alice,
            &["run", "--fd-only", "--maps", "array", "--", probe, "time-map", "2000", go_s],
            "median_ns",
        );
        Some((mint, h, go))
    } else {
        report.result("cost", Outcome::Unsupported, "needs the enforcer to compare with and without it");
        None
    };

    let pid = rustix::process::Pid::from_child(&daemon.child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    if wait_deadline(&mut daemon.child, Instant::now() + STEP_TIMEOUT).is_none() {
        report.result("daemon-stop", Outcome::Fail, "bpftokend did not stop on SIGTERM");
    }
    // Its holder's lease keeps the enforcer pinned: removing the pins
    // detaches it, for the measurement without it.
    restart::remove_pins(&restart::pin_dir(""));
    if let Some((mint, h, go)) = timed {
        let h = h?;
        // Let the daemon's exit settle before measuring again.
        std::thread::sleep(Duration::from_secs(1));
        release(&go)?;
        let with = h.before.first().and_then(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        let (_, after) = h.finish();
        let without = after.first().and_then(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        let warm = mint.stdout.lines().find_map(|l| l.strip_prefix("median_ns ")).map(str::to_owned);
        match (with, without, warm) {
            (Some(with), Some(without), Some(warm)) => report.result(
                "cost",
                Outcome::Pass,
                &format!(
                    "BPF_MAP_CREATE(array)+close with a token, median of 2000: {with} ns with the enforcer, \
                     {without} ns without; warm mint, median of 200: {warm} ns"
                ),
            ),
            (with, without, warm) => report.result(
                "cost",
                Outcome::Fail,
                &format!("with {with:?}, without {without:?}, mint {warm:?}: {}", mint.describe()),
            ),
        }
    }

    // live-limit: with the enforcer counting, a user holding as many live
    // tokens as `max_live_tokens` is refused until one is closed.
    let (outcome, detail) = live_limit(bins, dir, &alice);
    report.result("live-limit", outcome, &detail);
    restart::survive_restart(bins, dir, report);
    Ok(())
}

fn main() -> ExitCode {
    const USAGE: &str = "usage: bpftoken-scenarios [--bin-dir DIR] [--bpftool PATH --bpf-obj PATH]";
    let mut args = Args::default();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--bin-dir", Some(v)) => args.bins = Some(PathBuf::from(v)),
            ("--bpftool", Some(v)) => args.bpftool = Some(v),
            ("--bpf-obj", Some(v)) => args.bpf_obj = Some(v),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let bins =
        args.bins.clone().or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)));
    let Some(bins) = bins else {
        eprintln!("bpftoken-scenarios: cannot find its own directory; pass --bin-dir");
        return ExitCode::from(2);
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("INFO kernel {}", release.trim());
    let dir = std::env::temp_dir().join(format!("bpftoken-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) =
        std::fs::create_dir(&dir).and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
    {
        eprintln!("bpftoken-scenarios: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut report = Report::default();
    let result = scenarios(&args, &bins, &dir, &mut report);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        eprintln!("bpftoken-scenarios: {e}");
        return ExitCode::FAILURE;
    }
    if report.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
