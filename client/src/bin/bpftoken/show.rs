//! What `bpftoken query`, `inspect`, `leases` and `revoke` print: the
//! human lines, or one JSON document with `--json` (docs/json.md).

use super::*;

/// The explanation as printed lines.
pub(super) fn explanation_lines(e: &bpftoken::Explanation) -> Vec<String> {
    let mut out = Vec::new();
    if e.allowed_by.is_empty() {
        out.push(format!("no rule of {} matches you", e.policy));
        return out;
    }
    out.push(format!("{} grants you (allowed by {}):", e.policy, e.allowed_by.join(", ")));
    if !e.denied_by.is_empty() {
        out.push(format!("  minus what {} deny", e.denied_by.join(", ")));
    }
    for kind in Kind::ALL {
        let names = delegation::names(kind, e.grant.get(kind));
        let list = if names.is_empty() { "(none)".to_owned() } else { names.join(", ") };
        out.push(format!("  {:<8} {list}", format!("{}:", kind.key())));
    }
    for (rule, n) in &e.limits {
        out.push(format!("  at most {n} mints per minute (rule {rule})"));
    }
    out
}

/// Print `document` as JSON on stdout.
pub(super) fn print_json<T: serde::Serialize>(document: &T) -> ExitCode {
    match bpftoken::json::to_string(document) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: cannot write JSON: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn query(socket: &Path, json: bool) -> ExitCode {
    let asked = Client::connect_to(socket).and_then(|mut c| Ok((c.query_enforcement_reporting()?, c.trace_targets()?)));
    match asked {
        Ok(((e, enforcement, other_builds), tracing)) if json => {
            print_json(&bpftoken::json::QueryDocument::new(&e, enforcement.as_ref(), &other_builds, tracing.as_deref()))
        }
        Ok(((e, enforcement, other_builds), tracing)) => {
            for line in explanation_lines(&e) {
                println!("{line}");
            }
            for line in trace_lines(tracing.as_deref()) {
                println!("{line}");
            }
            match enforcement {
                Some(state) => println!("enforcement: {state}"),
                None => println!("enforcement: unknown (the daemon is too old to say)"),
            }
            for other in &other_builds {
                println!("other build: {other}");
            }
            if let Some(r) = &e.refusal {
                println!("a request now would be refused: {r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            explain_unreachable(&e);
            ExitCode::from(match e {
                Error::Refused(_) => EXIT_REFUSED,
                Error::Unreachable { .. } => EXIT_UNAVAILABLE,
                Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
                Error::Request(_) => EXIT_USAGE,
            })
        }
    }
}

/// What `bpftoken query` says of tracing targets (docs/tracing.md): a
/// line per pattern the caller's rules name; nothing when they name none
/// (or the daemon is too old to say), as before tracing existed.
pub(super) fn trace_lines(targets: Option<&[bpftoken::TraceAllowance]>) -> Vec<String> {
    let targets = targets.unwrap_or_default();
    targets
        .iter()
        .map(|t| {
            let verb = if t.denied { "denied" } else { "allowed" };
            format!("tracing: {} {} {} (rule {})", t.key, t.pattern, verb, t.rule)
        })
        .collect()
}

/// Lines naming a token's masks, one per set.
pub(super) fn mask_lines(d: &bpftoken::Delegation) -> Vec<String> {
    Kind::ALL
        .iter()
        .map(|&kind| {
            let names = delegation::names(kind, d.get(kind));
            format!("{}: {}", kind.key(), if names.is_empty() { "(none)".to_owned() } else { names.join(",") })
        })
        .collect()
}

pub(super) fn inspect(fd: Option<i32>, json: bool) -> ExitCode {
    let fd = match fd.map(Ok).unwrap_or_else(|| {
        std::env::var("BPF_TOKEN_FD")
            .map_err(|_| "no --fd given and BPF_TOKEN_FD is not set".to_owned())
            .and_then(|v| v.parse::<i32>().map_err(|_| format!("BPF_TOKEN_FD={v:?} is not an fd number")))
    }) {
        Ok(fd) if fd >= 0 => fd,
        Ok(fd) => {
            eprintln!("bpftoken: {fd} is not an fd number");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match bpftoken::inspect::token_masks_of(fd) {
        Ok((masks, source)) if json => print_json(&bpftoken::json::InspectDocument::new(fd, &masks, source)),
        Ok((masks, source)) => {
            for line in mask_lines(&masks) {
                println!("{line}");
            }
            println!("source: {}", source.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Lines listing `leases`, a header first.
pub(super) fn lease_lines(leases: &[bpftoken::LeaseInfo]) -> Vec<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = vec![format!(
        "{:>6}  {:>6}  {:<15}  {:>10}  {:<14}  {:<12}  {:<12}  BOUND TO",
        "LEASE", "UID", "MODE", "SCOPE", "COVERS", "STATE", "EXPIRES"
    )];
    for l in leases {
        let covers = match (l.whole_scope, l.serial) {
            (true, _) => "whole scope".to_owned(),
            (false, Some(s)) => format!("token {s}"),
            (false, None) => "token".to_owned(),
        };
        let expires = match l.expires {
            None => "never".to_owned(),
            Some(t) if t > now => format!("in {} s", t - now),
            Some(t) => format!("{} s ago", now - t),
        };
        let mut bound = Vec::new();
        if let Some(uid) = l.bound_uid {
            bound.push(format!("uid {uid}"));
        }
        if let Some(cgroup) = &l.bound_cgroup {
            bound.push(format!("cgroup {cgroup}"));
        }
        let bound = if bound.is_empty() { "-".to_owned() } else { bound.join(", ") };
        out.push(format!(
            "{:>6}  {:>6}  {:<15}  {:>10}  {:<14}  {:<12}  {expires:<12}  {bound}",
            l.id,
            l.uid,
            l.mode.as_str(),
            l.scope,
            covers,
            l.state.as_str()
        ));
    }
    out
}

pub(super) fn leases(socket: &Path, json: bool) -> ExitCode {
    match Client::connect_to(socket).and_then(|mut c| c.lease_listing()) {
        Ok(l) if json => print_json(&bpftoken::json::LeasesDocument::new(&l.leases, &l.forgotten)),
        Ok(l) => {
            if l.leases.is_empty() {
                println!("no leases");
            } else {
                for line in lease_lines(&l.leases) {
                    println!("{line}");
                }
            }
            for line in forgotten_lines(&l.forgotten) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(socket, &e),
    }
}

/// A line per owner whose older unenforced leases the daemon forgot
/// (docs/enforcement.md, "Unenforced leases are bounded").
pub(super) fn forgotten_lines(forgotten: &[bpftoken::ForgottenLeases]) -> Vec<String> {
    forgotten
        .iter()
        .map(|f| {
            let whose = f.uid.map_or_else(|| "other uids".to_owned(), |u| format!("uid {u}"));
            format!(
                "forgotten: {} older unenforced lease(s) of {whose}, beyond what the daemon lists; their tokens \
                 still work",
                f.count
            )
        })
        .collect()
}

/// What `bpftoken revoke` ends, from its options (clap requires one).
pub(super) fn revoke_target(id: Option<u64>, lease: Option<u64>, uid: Option<u32>) -> bpftoken::RevokeTarget {
    match (id.or(lease), uid) {
        (Some(id), _) => bpftoken::RevokeTarget::Lease(id),
        (None, Some(uid)) => bpftoken::RevokeTarget::Uid(uid),
        (None, None) => bpftoken::RevokeTarget::All,
    }
}

pub(super) fn revoke(socket: &Path, target: bpftoken::RevokeTarget) -> ExitCode {
    match Client::connect_to(socket).and_then(|mut c| c.revoke_reporting(target)) {
        Ok((revoked, other_builds)) => {
            if revoked.is_empty() && other_builds.is_empty() {
                println!("no lease to revoke");
            }
            for l in &revoked {
                println!("revoked lease {} (uid {}, {}): its tokens no longer work", l.id, l.uid, l.mode.as_str());
            }
            // Pinned enforcers of other builds: revoked where the daemon
            // knows their layout; else how to end them.
            for other in &other_builds {
                println!("{other}");
            }
            let unrevoked = other_builds.iter().any(|o| o.leases.is_none_or(|l| l.revoked < l.total));
            if unrevoked {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => report(socket, &e),
    }
}
