//! `bpftokend check-policy --explain USER`: what the policy gives a
//! caller and which rules produced it.

use std::fmt::Write;
use std::path::PathBuf;

use bpftoken_policy::{Peer, Policy, Rule};
use bpftoken_proto::delegation::{self, Kind};

/// Resolve `user` (name or uid) and `groups` (names or gids; empty means
/// the user's groups from the system database) and describe the grant.
pub fn explain(
    policy: &Policy,
    user: &str,
    groups: &[String],
    exe: Option<PathBuf>,
    cgroup: Option<String>,
    userns_owner: Option<&str>,
) -> Result<String, String> {
    let userns_owner = match userns_owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(uid) => uid,
            Err(_) => uzers::get_user_by_name(o).ok_or_else(|| format!("unknown user \"{o}\""))?.uid(),
        }),
    };
    let (uid, gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, uzers::get_user_by_uid(uid).map_or(uid, |u| u.primary_group_id())),
        Err(_) => {
            let u = uzers::get_user_by_name(user).ok_or_else(|| format!("unknown user \"{user}\""))?;
            (u.uid(), u.primary_group_id())
        }
    };
    let supplementary: Vec<u32> = if groups.is_empty() {
        uzers::get_user_by_uid(uid)
            .and_then(|u| uzers::get_user_groups(u.name(), gid))
            .map(|gs| gs.iter().map(uzers::Group::gid).collect())
            .unwrap_or_default()
    } else {
        groups
            .iter()
            .map(|g| {
                g.parse::<u32>()
                    .ok()
                    .or_else(|| uzers::get_group_by_name(g).map(|g| g.gid()))
                    .ok_or_else(|| format!("unknown group \"{g}\""))
            })
            .collect::<Result<_, _>>()?
    };
    let peer = Peer { uid, gid, groups: supplementary.clone(), exe: exe.clone(), cgroup: cgroup.clone(), userns_owner };
    let eff = policy.effective(&peer);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "uid {uid} gid {gid} groups {:?} exe {} cgroup {}{}",
        supplementary,
        exe.as_ref().map_or_else(|| "(any)".to_owned(), |e| e.display().to_string()),
        cgroup.as_deref().unwrap_or("(any)"),
        userns_owner.map_or_else(String::new, |o| format!(" in a user namespace owned by uid {o}"))
    );
    if eff.allowed_by.is_empty() {
        let _ = writeln!(out, "no allow rule matches: every request is refused (not_in_policy)");
        return Ok(out);
    }
    let _ = writeln!(out, "allowed by: {}", eff.allowed_by.join(", "));
    if !eff.denied_by.is_empty() {
        let _ = writeln!(out, "denied by:  {} (removes {})", eff.denied_by.join(", "), eff.removed);
    }
    for limit in &eff.limits {
        let _ = writeln!(out, "limit:      {} mints per minute (rule {})", limit.per_minute, limit.rule);
    }
    if let Some(live) = &eff.live_limit {
        let _ = writeln!(out, "limit:      {} live tokens at once (rule {})", live.max, live.rule);
    }
    if let Some(ttl) = &eff.ttl {
        let _ = writeln!(out, "limit:      tokens work {} s (ttl, rule {})", ttl.secs, ttl.rule);
    }
    let mut bound = Vec::new();
    if let Some(rule) = &eff.bind.uid {
        bound.push(format!("only for their owner uid (rule {rule})"));
    }
    if let Some(rule) = &eff.bind.cgroup {
        bound.push(format!("only inside the cgroup they are minted from (rule {rule})"));
    }
    if bound.is_empty() {
        let _ = writeln!(out, "bind:       none");
    } else {
        let _ = writeln!(out, "bind:       tokens work {}", bound.join(" and "));
    }
    // The matching allow rules, in policy order, by index.
    let rules: Vec<&Rule> = eff.allowed_rules.iter().filter_map(|&i| policy.rules().get(i)).collect();
    let learners: Vec<&str> = rules.iter().filter(|r| r.learn).map(|r| r.label.as_str()).collect();
    if learners.is_empty() {
        let _ = writeln!(out, "learn:      no (no matching allow rule sets learn = true)");
    } else {
        let _ = writeln!(
            out,
            "learn:      yes: `bpftoken learn` gets the grant of {} only",
            learners.iter().map(|l| format!("rule {l}")).collect::<Vec<_>>().join(", ")
        );
    }
    if eff.ttl.is_some() || eff.live_limit.is_some() || !bound.is_empty() {
        let _ = writeln!(
            out,
            "enforcement: {}",
            if policy.require_enforcement() {
                "required (require_enforcement = true): without the enforcer these grants are refused \
                 (not_enforceable)"
            } else {
                "not required (require_enforcement = false): without the enforcer these grants are minted \
                 unenforced"
            }
        );
    }
    for kind in Kind::ALL {
        let names = delegation::names(kind, eff.grant.get(kind));
        let _ = writeln!(
            out,
            "{:<8} {}",
            format!("{}:", kind.key()),
            if names.is_empty() { "(none)".to_owned() } else { names.join(", ") }
        );
    }
    for t in policy.trace_targets(&peer) {
        let verb = if t.denied { "denied" } else { "allowed" };
        let _ = writeln!(out, "tracing:  {} {} {verb} (rule {})", t.key, t.pattern, t.rule);
    }
    let _ = writeln!(out, "rules:");
    for r in rules {
        let ttl = r.ttl.map_or_else(|| "-".to_owned(), |s| format!("{s} s"));
        let mut bind = Vec::new();
        if r.bind.uid {
            bind.push("uid");
        }
        if r.bind.cgroup {
            bind.push("cgroup");
        }
        let bind = if bind.is_empty() { "-".to_owned() } else { bind.join("+") };
        let _ = writeln!(
            out,
            "  {} (line {}): ttl {ttl}; bind {bind}; learn {}",
            r.label,
            r.line,
            if r.learn { "yes" } else { "no" }
        );
    }
    Ok(out)
}
