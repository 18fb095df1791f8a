//! Scopes whose tokens the client creates itself (libbpf mode and
//! `bpftoken unshare`'s delegated mounts): revoke-unshare-scope,
//! bind-libbpf and bind-unshare; [`scope_scenarios`] runs them with
//! learned-refusals and learn-fds (in `learn.rs`).

use std::path::Path;

use crate::bind::{bind_policy_without_cgroups, cgroup2_mount, root_try, Gated, BIND_POLICY};
use crate::harness::{bpftoken, release, take_fd, Holder, Stopping, User};
use crate::learn::{learn_fds, learned_refusals};
use crate::report::{judged, Outcome, Report};
use crate::Args;

/// The capabilities of [`scope_scenarios`].
pub const SCOPE_CAPABILITIES: [&str; 5] =
    ["revoke-unshare-scope", "bind-libbpf", "bind-unshare", "learned-refusals", "learn-fds"];

/// Scopes whose tokens the client creates itself (libbpf mode and
/// `bpftoken unshare`'s delegated mounts): revocation and binding reach
/// every token of the scope, fresh ones included; and the refusals of the
/// `Learned` request, and the fds CMD of `bpftoken learn` sees. Where the
/// daemon cannot enforce, each says so with its typed refusal.
pub fn scope_scenarios(
    args: &Args,
    bins: &Path,
    dir: &Path,
    socket: &Path,
    alice: &User,
    enforcing: bool,
    report: &mut Report,
) {
    let (outcome, detail) = revoke_unshare_scope(args, bins, dir, socket, alice, enforcing);
    report.result("revoke-unshare-scope", outcome, &detail);
    for (name, unshare) in [("bind-libbpf", false), ("bind-unshare", true)] {
        let (outcome, detail) = bind_scope(bins, dir, alice, enforcing, unshare);
        report.result(name, outcome, &detail);
    }
    let (outcome, detail) = learned_refusals(bins, dir, alice, enforcing);
    report.result("learned-refusals", outcome, &detail);
    let (outcome, detail) = learn_fds(bins, dir, alice, enforcing);
    report.result("learn-fds", outcome, &detail);
}

/// revoke-unshare-scope: `bpftoken unshare`; bpftool and the probe create
/// their own tokens from the delegated bpffs at /sys/fs/bpf. After the
/// owner's `bpftoken revoke ID` the token held fails, and so do tokens
/// created afresh from the same mount (the probe's and bpftool's).
fn revoke_unshare_scope(
    args: &Args,
    bins: &Path,
    dir: &Path,
    socket: &Path,
    alice: &User,
    enforcing: bool,
) -> (Outcome, String) {
    judged((|| {
        let (Some(bpftool), Some(obj)) = (&args.bpftool, &args.bpf_obj) else {
            return Err("no --bpftool and --bpf-obj given".to_owned());
        };
        let go = dir.join("go-unshare-scope");
        let probe = bins.join("bpftoken-probe");
        let load = |name: &str| {
            format!("{bpftool} prog load {obj} /sys/fs/bpf/{name} 2>/dev/null && echo {name} ok || echo {name} failed")
        };
        let script = format!(
            "{}; {} bpffs-wait-try /sys/fs/bpf {} map:array; {}",
            load("p1"),
            probe.display(),
            go.display(),
            load("p2")
        );
        let h = Holder::start(bins, socket, alice, &["unshare", "--", "/bin/sh", "-c", &script], "waiting")?;
        let lease = h.lease().unwrap_or("?").to_owned();
        let revoked = bpftoken(bins, socket, alice, &["revoke", &lease]);
        release(&go)?;
        let before = h.before.clone();
        let (exited, after) = h.finish();
        let detail = format!(
            "lease {lease}: {} / bpftoken revoke: {}{} / {}",
            before.join(", "),
            revoked.stdout.trim(),
            revoked.stderr.trim(),
            after.join(", ")
        );
        let held = before.contains(&"p1 ok".to_owned()) && before.ends_with(&["map:array ok".into(), "waiting".into()]);
        if !enforcing {
            // Nothing revoked: everything keeps working, and the owner is
            // told so.
            let ok = held
                && revoked.code() == Some(1)
                && revoked.stderr.trim_end().ends_with("(revocation_unavailable)")
                && after == ["map:array ok", "fresh map:array ok", "p2 ok"];
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, detail));
        }
        let ok = held
            && exited
            && revoked.code() == Some(0)
            && revoked.stdout
                == format!("revoked lease {lease} (uid {}, delegated_mount): its tokens no longer work\n", alice.uid)
            && after == ["map:array EPERM", "fresh map:array EPERM", "p2 failed"];
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}

/// bind-libbpf / bind-unshare: a daemon with [`BIND_POLICY`]. In libbpf
/// mode (`unshare` false) or on a delegated mount, alice's probe creates
/// a token from the scope's bpffs. From /bpftk-bind-uid the grant is
/// bound to her uid: root without capabilities of its own (real uid 0, her
/// effective uid) gets `EPERM` with that token while an unbound sibling's
/// works for it. From /bpftk-bind-cg/scope-a the grant is bound to that
/// cgroup: her probe moved to a sibling gets `EPERM` with its token and
/// with a fresh one from the same bpffs, one that stayed keeps working.
fn bind_scope(bins: &Path, dir: &Path, alice: &User, enforcing: bool, unshare: bool) -> (Outcome, String) {
    let mode = if unshare { "unshare" } else { "libbpf" };
    judged((|| {
        if !enforcing {
            let policy = bind_policy_without_cgroups();
            let d = Stopping::start(bins, dir, &format!("-bind-{mode}-unavailable"), &policy)?;
            let o = bpftoken(bins, &d.0.socket, alice, &[if unshare { "unshare" } else { "run" }, "--", "/bin/true"]);
            let ok = o.code() == Some(1)
                && o.stderr.contains(
                    "binding tokens to their owner uid (rule \"bound-uid\") and to the cgroup they are minted from \
                     (rule \"bound-cgroup\") (bind) cannot be enforced",
                )
                && o.stderr.trim_end().ends_with("(not_enforceable)");
            return Ok((if ok { Outcome::Unsupported } else { Outcome::Fail }, o.stderr.trim().to_owned()));
        }
        let mnt = cgroup2_mount().ok_or("no cgroup2 mount")?;
        let d = Stopping::start(bins, dir, &format!("-bind-{mode}"), BIND_POLICY)?;
        let socket = d.0.socket.clone();
        let uid_cg = mnt.join("bpftk-bind-uid");
        let (a, b) = (mnt.join("bpftk-bind-cg/scope-a"), mnt.join("bpftk-bind-cg/scope-b"));
        for c in [&uid_cg, &a, &b] {
            std::fs::create_dir_all(c).map_err(|e| format!("mkdir {}: {e}", c.display()))?;
        }
        let go = dir.join(format!("go-bind-{mode}"));
        let command = format!(
            "{} --socket {} {}",
            bins.join("bpftoken").display(),
            socket.display(),
            scope_args(bins, &go, unshare).join(" ")
        );
        let bound = Gated::start_command(alice, &uid_cg, &command)?;
        let plain = Gated::start_command(alice, &mnt, &command)?;
        let moved = Gated::start_command(alice, &a, &command)?;
        let stays = Gated::start_command(alice, &a, &command)?;
        let bound_token = take_fd(bound.pid, token_number(&bound.holder.before)?)?;
        let plain_token = take_fd(plain.pid, token_number(&plain.holder.before)?)?;
        let root_bound = root_try(bins, &bound_token, Some(alice.uid));
        let root_plain = root_try(bins, &plain_token, Some(alice.uid));
        drop((bound_token, plain_token));
        // bpftoken exec'd the probe (after entering the namespaces).
        std::fs::write(b.join("cgroup.procs"), moved.pid.to_string())
            .map_err(|e| format!("move {}: {e}", moved.pid))?;
        let leases = bpftoken(bins, &socket, alice, &["leases"]);
        release(&go)?;
        let befores: Vec<Vec<String>> =
            [&bound, &plain, &moved, &stays].iter().map(|g| g.holder.before.clone()).collect();
        let afters: Vec<(bool, Vec<String>)> = [bound, plain, moved, stays].map(|g| g.holder.finish()).into();
        let lease_mode = if unshare { "delegated_mount" } else { "libbpf" };
        let rows = |end: &str| {
            // A rule matching on `cgroups` also binds to the cgroup (issue
            // #15), so a uid-bound lease may list one after the uid.
            leases.stdout.lines().filter(|l| l.contains(&format!(" {lease_mode} ")) && l.contains(end)).count()
        };
        let (uid_rows, cg_rows) = (rows(&format!("uid {}", alice.uid)), rows("cgroup /bpftk-bind-cg/scope-a"));
        let works = ["map:array ok", "fresh map:array ok"];
        let refused = ["map:array EPERM", "fresh map:array EPERM"];
        let ok = befores.iter().all(|b| b.ends_with(&["map:array ok".to_owned(), "waiting".to_owned()]))
            && afters.iter().all(|(exited, _)| *exited)
            && root_bound == "map:array EPERM"
            && root_plain == "map:array ok"
            && afters[0].1 == works
            && afters[1].1 == works
            && afters[2].1 == refused
            && afters[3].1 == works
            && uid_rows == 1
            && cg_rows == 2;
        let detail = format!(
            "uid-bound: {} then {}; root without capabilities (euid {}): bound {root_bound}, unbound sibling \
             {root_plain}; cgroup-bound, moved to scope-b: {}; stayed: {}; {lease_mode} leases bound to the uid: \
             {uid_rows}, to the cgroup: {cg_rows}",
            befores[0].join(", "),
            afters[0].1.join(", "),
            alice.uid,
            afters[2].1.join(", "),
            afters[3].1.join(", ")
        );
        Ok((if ok { Outcome::Pass } else { Outcome::Fail }, detail))
    })())
}

/// The token fd number `bpftoken-probe bpffs-wait-try` printed.
fn token_number(before: &[String]) -> Result<i32, String> {
    before
        .iter()
        .find_map(|l| l.strip_prefix("token ")?.parse().ok())
        .ok_or_else(|| format!("the probe printed no token: {}", before.join(", ")))
}

/// The bpftoken arguments of a scope grant whose CMD is
/// `bpftoken-probe bpffs-wait-try DIR GO map:array`: libbpf mode (`run`,
/// the bpffs in BPFTOKEN_PIN_DIR) or a delegated mount (`unshare`, the
/// bpffs at /sys/fs/bpf).
fn scope_args(bins: &Path, go: &Path, unshare: bool) -> Vec<String> {
    let (mode, dir) = if unshare { ("unshare", "/sys/fs/bpf") } else { ("run", "-") };
    let probe = bins.join("bpftoken-probe").display().to_string();
    [mode, "--", &probe, "bpffs-wait-try", dir, &go.display().to_string(), "map:array"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect()
}
