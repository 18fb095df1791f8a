//! `bpftoken run --explain`: after CMD failed, say why in terms of its
//! token (docs/usage.md, "Why a command failed"). Prints what the token
//! carries, then for each `bpf()` call the kernel refused with EPERM or
//! EACCES (watched by `bpftoken::bpfwatch`) which of these it was:
//!
//! - the token allows the call, but CMD did not pass the token;
//! - the call needs a privilege no token gives (the kernel takes a token
//!   only for `map_create`, `prog_load`, `btf_load` and
//!   `btf_get_fd_by_id`; id walks need CAP_SYS_ADMIN in the initial user
//!   namespace);
//! - the token lacks a command or type, and whether the policy would give
//!   it;
//! - CMD passed a token that allows the call and was refused all the same
//!   (the token itself was refused: an ended lease, another program).
//!
//! Only the wording is here; which calls failed is `bpfwatch`'s.

use std::os::fd::AsFd;

use bpftoken::bpfwatch::{cmd, RefusedCall};
use bpftoken::{delegation, Delegation, Explanation, Kind};

use super::show::mask_lines;
use super::Error;

/// Refused calls shown at most (the last ones: the command failed after).
const MAX_SHOWN: usize = 8;

/// The commands the kernel (6.18) takes a token for.
fn takes_token(bpf_cmd: u32) -> bool {
    matches!(bpf_cmd, cmd::MAP_CREATE | cmd::PROG_LOAD | cmd::BTF_LOAD | cmd::BTF_GET_FD_BY_ID)
}

/// Why a command the kernel checks without a token needs more than a
/// token: the ones that need CAP_SYS_ADMIN in the initial user namespace.
fn init_ns_admin_only(bpf_cmd: u32) -> Option<&'static str> {
    match bpf_cmd {
        // *_GET_NEXT_ID and PROG/MAP/LINK_GET_FD_BY_ID.
        11 | 12 | 13 | 14 | 23 | 30 | 31 => Some("walking or opening BPF objects by id"),
        // TASK_FD_QUERY, ENABLE_STATS.
        20 | 32 => Some("this command"),
        _ => None,
    }
}

fn errno_name(errno: i32) -> Option<&'static str> {
    match errno {
        libc::EPERM => Some("EPERM"),
        libc::EACCES => Some("EACCES"),
        _ => None,
    }
}

/// `bpf(BPF_MAP_CREATE) of map type array`.
fn describe(r: &RefusedCall) -> String {
    let c = &r.call;
    let name = delegation::name_of(Kind::Cmd, c.cmd)
        .map_or_else(|| format!("command {}", c.cmd), |n| format!("BPF_{}", n.to_ascii_uppercase()));
    let type_name = |kind: Kind, v: u32| delegation::name_of(kind, v).map_or_else(|| format!("#{v}"), str::to_owned);
    let mut out = format!("bpf({name})");
    if let Some(m) = c.map_type {
        out += &format!(" of map type {}", type_name(Kind::Map, m));
    }
    if let Some(p) = c.prog_type {
        out += &format!(" of program type {}", type_name(Kind::Prog, p));
    }
    if let Some(a) = c.attach_type {
        out += &format!(" (attach type {})", type_name(Kind::Attach, a));
    }
    out
}

/// What a token must allow for the call to use it.
fn needs(r: &RefusedCall) -> Delegation {
    let bit = |v: Option<u32>| v.and_then(|v| 1u64.checked_shl(v)).unwrap_or(0);
    let c = &r.call;
    Delegation { cmds: bit(Some(c.cmd)), maps: bit(c.map_type), progs: bit(c.prog_type), attachs: bit(c.attach_type) }
}

/// `program type xdp, attach type tcx_ingress`.
fn items(d: &Delegation) -> String {
    Kind::ALL
        .iter()
        .flat_map(|&kind| delegation::names(kind, d.get(kind)).into_iter().map(move |n| format!("{} {n}", kind.noun())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the policy says about `missing`: which of it you may ask for.
fn policy_lines(missing: &Delegation, policy: Option<&Delegation>) -> Vec<String> {
    let Some(policy) = policy else {
        return vec![
            "  (the daemon did not say what the policy grants, so whether you may ask for it is unknown)".into()
        ];
    };
    let grantable = missing.intersect(*policy);
    let never = missing.minus(*policy);
    let mut out = Vec::new();
    if !grantable.is_empty() {
        let flags: Vec<String> = Kind::ALL
            .iter()
            .filter(|&&k| grantable.get(k) != 0)
            .map(|&k| format!("--{} {}", k.key(), delegation::names(k, grantable.get(k)).join(",")))
            .collect();
        out.push(format!(
            "  the policy grants you {}: ask for it too (add it to {})",
            items(&grantable),
            flags.join(" and ")
        ));
    }
    if !never.is_empty() {
        out.push(format!("  no rule of the policy gives you {}", items(&never)));
    }
    out
}

/// How to make a call pass the token, per command.
fn pass_the_token(bpf_cmd: u32) -> &'static str {
    match bpf_cmd {
        cmd::MAP_CREATE => {
            "  declare the map in a BPF object and let libbpf load it (bpftool: prog load OBJ PATH pinmaps DIR), or \
             have the program pass the token"
        }
        cmd::PROG_LOAD => {
            "  load the program from a BPF object with libbpf (bpftool prog load), or have the program pass the token"
        }
        _ => "  have the program pass the token (BPF_TOKEN_FD names it)",
    }
}

/// The lines for one refused call.
fn refusal_lines(r: &RefusedCall, token: &Delegation, policy: Option<&Delegation>) -> Vec<String> {
    let errno = errno_name(r.errno).unwrap_or("an error");
    let what = describe(r);
    let missing = needs(r).minus(*token);
    if !takes_token(r.call.cmd) {
        let why = match init_ns_admin_only(r.call.cmd) {
            Some(what) => format!("{what} needs CAP_SYS_ADMIN in the initial user namespace, which no token gives"),
            None => "the kernel takes no token for this command: it checks the caller's own privileges (a \
                     capability in the initial user namespace, or permission on the object or file), which no \
                     token gives"
                .to_owned(),
        };
        let mut out = vec![format!("{what} was refused ({errno}): {why}")];
        if init_ns_admin_only(r.call.cmd).is_some_and(|w| w.starts_with("walking")) {
            out.push(
                "  work on objects you hold instead: pinned ones (bpftool prog show pinned PATH) or the fds the \
                 program keeps"
                    .to_owned(),
            );
        }
        return out;
    }
    if !r.call.with_token {
        let mut out = if missing.is_empty() {
            vec![format!("{what} was refused ({errno}): the token allows it, but the command did not pass the token")]
        } else {
            vec![format!(
                "{what} was refused ({errno}): the command did not pass the token, and the token lacks {} too",
                items(&missing)
            )]
        };
        out.push(
            "  a call uses a token only if the program passes it (BPF_F_TOKEN_FD and the token's fd); libbpf does \
             when it loads a BPF object, not in bpf_map_create() and the like unless the program sets token_fd"
                .to_owned(),
        );
        out.push(pass_the_token(r.call.cmd).to_owned());
        if !missing.is_empty() {
            out.extend(policy_lines(&missing, policy));
        }
        return out;
    }
    if missing.is_empty() {
        return vec![format!(
            "{what} was refused ({errno}) although the command passed a token that allows it: the token itself \
             was refused (its lease ended or was revoked, or the grant is bound to another program: bpftoken \
             leases), or the caller has no capability in the token's user namespace"
        )];
    }
    let mut out = vec![format!("{what} was refused ({errno}): the token lacks {}", items(&missing))];
    if r.call.cmd == cmd::BTF_LOAD {
        out.push("  libbpf then loads an object without its BTF, unless a program needs BTF".to_owned());
    }
    out.extend(policy_lines(&missing, policy));
    out
}

/// Everything `--explain` says after CMD exited with `code` (without the
/// `bpftoken: ` prefix): the token's masks, the refused calls (`watched`:
/// None if not watched, Err if watching failed), what else the policy
/// would grant.
pub(super) fn explanation(
    code: i32,
    token: &Delegation,
    policy: Option<&Delegation>,
    watched: Option<&Result<Vec<RefusedCall>, std::io::Error>>,
) -> Vec<String> {
    let mut out = vec![format!("the command exited with status {code}; its token carries:")];
    out.extend(mask_lines(token).into_iter().map(|l| format!("  {l}")));
    let refused: Vec<&RefusedCall> = match watched {
        Some(Ok(calls)) => calls.iter().filter(|r| errno_name(r.errno).is_some()).collect(),
        _ => Vec::new(),
    };
    // Feature probes made without a token (libbpf's and bpftool's outside
    // any object) are refused in every such process and only switch a
    // feature off: not worth a word. Those made with the token are, when
    // the token lacks what they load.
    let (probes, calls): (Vec<&RefusedCall>, Vec<&RefusedCall>) =
        refused.into_iter().filter(|r| r.call.with_token || !r.call.feature_probe).partition(|r| r.call.feature_probe);
    let probes_missing = probes.iter().fold(Delegation::NONE, |acc, r| acc.union(needs(r).minus(*token)));
    match watched {
        Some(Err(e)) => out
            .push(format!("cannot watch the command's bpf() calls ({e}), so which ones the kernel refused is unknown")),
        Some(Ok(_)) if calls.is_empty() && probes_missing.is_empty() => out.push(
            "no bpf() call of the command was refused for lack of privilege (EPERM or EACCES): the failure is not \
             the token's"
                .to_owned(),
        ),
        Some(Ok(_)) if calls.len() > 1 => out.push(format!(
            "the kernel refused {} bpf() calls of the command (the last one usually made it fail):",
            calls.len()
        )),
        _ => {}
    }
    let skipped = calls.len().saturating_sub(MAX_SHOWN);
    if skipped > 0 {
        out.push(format!("  ({skipped} earlier ones not shown)"));
    }
    for r in &calls[skipped..] {
        out.extend(refusal_lines(r, token, policy));
    }
    if !probes_missing.is_empty() {
        out.push(format!(
            "libbpf's feature probes were refused: the token lacks {}; libbpf takes that for missing kernel \
             features and goes on without them",
            items(&probes_missing)
        ));
        if !probes_missing.intersect(bpftoken::libbpf::PROBE_NEEDS).is_empty() {
            out.push(
                "  without the global-variable feature, objects with .data, .rodata or .bss fail to load later, \
                 in the verifier (\"fd N is not pointing to valid bpf_map\")"
                    .to_owned(),
            );
        }
        out.extend(policy_lines(&probes_missing, policy));
    }
    if let Some(policy) = policy {
        let more = policy.minus(*token);
        if more.is_empty() {
            if !matches!(watched, Some(Ok(_))) {
                out.push(
                    "the policy grants you nothing beyond that: if the command failed with EPERM, it needs \
                     something no rule gives you; otherwise it is not a token problem"
                        .to_owned(),
                );
            }
        } else {
            out.push("the policy would also grant (ask with --cmds/--maps/--progs/--attachs):".to_owned());
            out.extend(mask_lines(&more).into_iter().filter(|l| !l.ends_with("(none)")).map(|l| format!("  {l}")));
        }
    }
    out
}

/// After CMD failed: print [`explanation`].
pub(super) fn explain_failure(
    policy: Result<Explanation, Error>,
    token: &bpftoken::Token,
    code: i32,
    watched: Option<&Result<Vec<RefusedCall>, std::io::Error>>,
) {
    let masks = match bpftoken::inspect::token_masks(token.as_fd()) {
        Ok((masks, _)) => masks,
        Err(e) => {
            eprintln!("bpftoken: the command exited with status {code}; cannot read its token's masks: {e}");
            return;
        }
    };
    let grant = match &policy {
        Ok(e) => Some(e.grant),
        Err(_) => None,
    };
    for line in explanation(code, &masks, grant.as_ref(), watched) {
        eprintln!("bpftoken: {line}");
    }
    if let Err(e) = policy {
        eprintln!("bpftoken: cannot ask the daemon what else the policy grants: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpftoken::bpfwatch::BpfCall;

    fn refused(bpf_cmd: u32, map: Option<u32>, prog: Option<(u32, u32)>, with_token: bool) -> RefusedCall {
        let call = BpfCall {
            cmd: bpf_cmd,
            map_type: map,
            prog_type: prog.map(|p| p.0),
            attach_type: prog.map(|p| p.1),
            with_token,
            feature_probe: false,
        };
        RefusedCall { call, errno: libc::EPERM }
    }

    fn token() -> Delegation {
        // map_create, prog_load; array; socket_filter; cgroup_inet_ingress.
        Delegation { cmds: 1 | 1 << 5, maps: 1 << 2, progs: 1 << 1, attachs: 1 }
    }

    #[test]
    fn a_command_without_a_token_is_the_callers_own_privilege() {
        let lines = refusal_lines(&refused(8, None, None, false), &token(), None);
        assert_eq!(
            lines,
            ["bpf(BPF_PROG_ATTACH) was refused (EPERM): the kernel takes no token for this command: it checks the \
              caller's own privileges (a capability in the initial user namespace, or permission on the object or \
              file), which no token gives"]
        );
    }

    #[test]
    fn a_call_without_the_token_that_the_token_would_not_allow_either_says_both() {
        let policy = Delegation { maps: 1 << 2 | 1 << 1, ..token() };
        let lines = refusal_lines(&refused(cmd::MAP_CREATE, Some(1), None, false), &token(), Some(&policy));
        assert_eq!(lines[0], "bpf(BPF_MAP_CREATE) of map type hash was refused (EPERM): the command did not pass the token, and the token lacks map type hash too");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("  the policy grants you map type hash: ask for it too (add it to --maps hash)")
        );
    }

    #[test]
    fn a_passed_token_that_allows_the_call_was_itself_refused() {
        let lines = refusal_lines(&refused(cmd::PROG_LOAD, None, Some((1, 0)), true), &token(), None);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("bpf(BPF_PROG_LOAD) of program type socket_filter (attach type cgroup_inet_ingress) was refused (EPERM) although the command passed a token that allows it: the token itself was refused"), "{lines:?}");
    }

    #[test]
    fn without_watching_the_old_policy_summary_stays() {
        let err = std::io::Error::from_raw_os_error(libc::EPERM);
        let lines = explanation(1, &token(), Some(&token()), Some(&Err(err)));
        assert!(lines[5].starts_with("cannot watch the command's bpf() calls (Operation not permitted"), "{lines:?}");
        assert!(lines[6].starts_with("the policy grants you nothing beyond that"), "{lines:?}");
    }
}
