//! bind-exe: an `executables` rule whose grants the kernel binds to the
//! allowed program's file (issue #15; threat model rows 16 to 18).
//!
//! The policy lets `bpftk-alice` mint only as bpftoken-probe. Where the
//! enforcer runs:
//! - `bpftoken run --fd-only -- PROBE` matches the rule for PROBE (the
//!   program it is about to run, found on the host) and the token works
//!   there; the audit event names PROBE, `exe_source="declared"`,
//!   `identity="enforced"`;
//! - the same token, inherited by a byte-identical copy of PROBE at another
//!   path (another file), is EPERM: borrowed tokens are useless;
//! - exec after connect: a copy connects, execs PROBE at once, and its
//!   child (the copy) mints on the shared connection: refused, the daemon
//!   judges the sender;
//! - LD_PRELOAD: code injected into PROBE mints (as PROBE: granted) and
//!   execs the copy with the token: EPERM.
//!
//! Without the enforcer the policy does not load (unsupported), and the
//! daemon says why in one line.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::harness::{as_user, bpftoken, run, start_daemon_with, Start, User};
use crate::report::{Outcome, Report};

/// Where scripts/setup-test-tools.sh (and tests/vm/run.sh) put the
/// LD_PRELOAD attack.
const PRELOAD: &str = "/usr/local/libexec/bpftoken-test/preload_mint.so";

pub fn bind_exe(bins: &Path, dir: &Path, alice: &User, enforcing: bool, report: &mut Report) {
    let (outcome, detail) = match scenario(bins, dir, alice, enforcing) {
        Ok(r) => r,
        Err(e) => (Outcome::Fail, e),
    };
    report.result("bind-exe", outcome, &detail);
}

fn scenario(bins: &Path, dir: &Path, alice: &User, enforcing: bool) -> Result<(Outcome, String), String> {
    let probe = bins.join("bpftoken-probe");
    let policy = format!(
        "[[allow]]\nname = \"probe-only\"\nusers = [\"bpftk-alice\"]\nexecutables = [\"{}\"]\ncmds = \
         [\"map_create\"]\nmaps = [\"array\"]\n",
        probe.display()
    );
    let daemon = match start_daemon_with(bins, dir, "-bind-exe", &policy) {
        Start::Listening(d) => d,
        Start::Refused(log) if !enforcing => {
            let line = log.lines().find(|l| l.contains("matches on `executables`")).unwrap_or_default();
            return Ok(if line.contains("only the enforcer can make a security boundary") {
                (Outcome::Unsupported, line.to_owned())
            } else {
                (Outcome::Fail, format!("refused for another reason: {log}"))
            });
        }
        Start::Refused(log) | Start::Failed(log) => return Err(format!("the daemon did not start: {log}")),
    };
    if !enforcing {
        return Ok((Outcome::Fail, "a policy with `executables` loaded without the enforcer".to_owned()));
    }
    // Another file with the same bytes, which alice may run.
    let copy = dir.join("probe-copy");
    std::fs::copy(&probe, &copy).map_err(|e| format!("copy the probe: {e}"))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let probe_s = probe.to_str().ok_or("probe path")?;
    let copy_s = copy.to_str().ok_or("copy path")?;
    let socket = daemon.socket.clone();
    let mut problems = Vec::new();

    // The allowed program, through the wrapper, then a borrower.
    let o = bpftoken(
        bins,
        &socket,
        alice,
        &["run", "--fd-only", "--", probe_s, "try-then-exec", "map:array", copy_s, "try", "map:array"],
    );
    if o.code() != Some(0) || o.stdout.lines().collect::<Vec<_>>() != ["map:array ok", "map:array EPERM"] {
        problems.push(format!("run -- PROBE, then a copy with its token: {}", o.describe()));
    }
    // A grant's audit event follows its answer: wait for it a little.
    let mut granted = String::new();
    for _ in 0..100 {
        let log = std::fs::read_to_string(dir.join("daemon-bind-exe.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("decision=\"granted\"")) {
            granted = line.to_owned();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let named = format!("exe={probe_s:?}");
    if !(granted.contains(&named)
        && granted.contains("exe_source=\"declared\"")
        && granted.contains("identity=\"enforced\""))
    {
        problems.push(format!("the grant's audit event: {granted:?}"));
    }

    // Exec after connect: the sender is the copy.
    let mut c = as_user(alice, &copy);
    c.args(["exec-after-connect"]).arg(&socket).args([probe_s, "fds"]);
    let o = run(c);
    if !o.stdout.contains("mint: refused: no rule in") || o.stdout.contains("map:array ok") {
        problems.push(format!("exec after connect: {}", o.describe()));
    }

    // LD_PRELOAD into the allowed program: granted to it, useless elsewhere.
    if Path::new(PRELOAD).exists() {
        let mut c = as_user(alice, &probe);
        c.arg("fds")
            .env("LD_PRELOAD", PRELOAD)
            .env("PRELOAD_SOCKET", &socket)
            .env("PRELOAD_EXEC", &copy)
            .env("PRELOAD_TARGET", &probe);
        let o = run(c);
        if o.stdout.trim() != "map:array EPERM" {
            problems.push(format!("LD_PRELOAD into PROBE, token used by a copy: {}", o.describe()));
        }
    } else {
        problems.push(format!("{PRELOAD} is missing"));
    }
    // A program the daemon cannot bind to: each refusal's exact text.
    let long = format!("/{}", "a".repeat(4096));
    for (program, want) in [
        ("bpftoken-probe", "refused: the program \"bpftoken-probe\" is not an absolute path (bad_program)".to_owned()),
        (
            "/nonexistent/program",
            "refused: the program \"/nonexistent/program\" cannot be opened on the host: No such file or directory \
             (os error 2) (bad_program)"
                .to_owned(),
        ),
        ("/tmp", "refused: the program \"/tmp\" is not a regular file (bad_program)".to_owned()),
        (long.as_str(), "refused: a program path is at most 4096 bytes (malformed_request)".to_owned()),
    ] {
        let mut c = as_user(alice, &probe);
        c.arg("mint-for").arg(&socket).arg(program);
        let o = run(c);
        if o.stdout.trim() != want {
            problems.push(format!("mint-for {:.40}: {}", program, o.describe()));
        }
    }
    drop(daemon);
    let _ = Command::new("rm").arg("-f").arg(&copy).status();
    Ok(if problems.is_empty() {
        (
            Outcome::Pass,
            "bound to PROBE: works there, EPERM in a copy; exec-after-connect refused; LD_PRELOAD's token EPERM \
             outside PROBE"
                .to_owned(),
        )
    } else {
        (Outcome::Fail, problems.join("; "))
    })
}
