//! `bpftokend check-policy --explain USER [--json]`: what the policy gives
//! a caller and which rules produced it, as text or as the
//! `bpftokend.explain/1` JSON document (docs/json.md).

use std::fmt::Write;
use std::path::PathBuf;

use bpftoken_policy::{Peer, Policy, Rule};
use bpftoken_proto::delegation::{self, Delegation, Kind};
use serde::Serialize;

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
    Ok(explain_text(policy, &resolve_caller(user, groups, exe, cgroup, userns_owner)?))
}

/// The caller `check-policy --explain` describes: `user` (name or uid),
/// `groups` (names or gids; empty means the user's groups from the system
/// database), and the owner of its user namespace (name or uid), if any.
pub fn resolve_caller(
    user: &str,
    groups: &[String],
    exe: Option<PathBuf>,
    cgroup: Option<String>,
    userns_owner: Option<&str>,
) -> Result<Peer, String> {
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
    Ok(Peer { uid, gid, groups: supplementary, exe, cgroup, userns_owner })
}

/// The explanation of what `policy` gives `peer`, as printed lines.
fn explain_text(policy: &Policy, peer: &Peer) -> String {
    let Peer { uid, gid, groups: supplementary, exe, cgroup, userns_owner } = peer;
    let eff = policy.effective(peer);
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
        return out;
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
    for t in policy.trace_targets(peer) {
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
        // Rules of a drop-in say which file they are in.
        let place = if r.file == policy.path() {
            format!("line {}", r.line)
        } else {
            format!("line {} of {}", r.line, r.file.display())
        };
        let _ = writeln!(
            out,
            "  {} ({place}): ttl {ttl}; bind {bind}; learn {}",
            r.label,
            if r.learn { "yes" } else { "no" }
        );
    }
    out
}

/// `schema` of `bpftokend check-policy --explain USER --json`.
pub const EXPLAIN_SCHEMA: &str = "bpftokend.explain/1";

/// The policy file `check-policy` loaded, as the JSON document names it.
#[derive(Debug, Clone)]
pub struct CheckedPolicy {
    /// The file, as given.
    pub path: PathBuf,
    /// What its kernel names were checked against.
    pub names_source: String,
}

/// `bpftokend check-policy --explain USER --json`: the loaded policy and
/// what it gives one caller, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainDocument {
    pub schema: &'static str,
    /// The policy file.
    pub policy: String,
    /// What the policy's kernel names were checked against.
    pub names_source: String,
    /// How many allow and deny rules the policy has.
    pub allow_rules: usize,
    pub deny_rules: usize,
    /// The policy's load warnings.
    pub warnings: Vec<String>,
    /// `require_enforcement` of the policy.
    pub require_enforcement: bool,
    pub caller: CallerJson,
    /// The matching allow rules (empty: every request is refused,
    /// `not_in_policy`).
    pub allowed_by: Vec<String>,
    /// The matching deny rules.
    pub denied_by: Vec<String>,
    /// The allow rules' union minus what the deny rules remove.
    pub grant: MaskNames,
    /// What the deny rules removed from the allow rules' union.
    pub removed: MaskNames,
    pub limits: LimitsJson,
    pub bind: BindJson,
    /// The matching allow rules with `learn = true`.
    pub learn_rules: Vec<String>,
    /// The matching allow rules, in policy order.
    pub rules: Vec<RuleJson>,
}

/// The four delegation sets as lists of kernel names, in enum order; a
/// set with every bit reads `["any"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskNames {
    pub cmds: Vec<String>,
    pub maps: Vec<String>,
    pub progs: Vec<String>,
    pub attachs: Vec<String>,
}

impl MaskNames {
    pub fn of(d: &Delegation) -> MaskNames {
        let names = |kind: Kind| delegation::names(kind, d.get(kind));
        MaskNames {
            cmds: names(Kind::Cmd),
            maps: names(Kind::Map),
            progs: names(Kind::Prog),
            attachs: names(Kind::Attach),
        }
    }
}

/// Who the caller was taken to be.
#[derive(Debug, Clone, Serialize)]
pub struct CallerJson {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary gids.
    pub groups: Vec<u32>,
    /// `--exe`; `None`: any.
    pub exe: Option<String>,
    /// `--cgroup`; `None`: any.
    pub cgroup: Option<String>,
    /// `--userns-owner` as a uid; `None`: the caller is not in a user namespace.
    pub userns_owner: Option<u32>,
}

/// The limits that apply, each with the rule that sets it.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsJson {
    pub mints_per_minute: Vec<RuleLimitJson>,
    /// The smallest `max_live_tokens`.
    pub max_live_tokens: Option<RuleLimitJson>,
    /// The shortest `ttl`, in seconds.
    pub ttl: Option<RuleLimitJson>,
}

/// One limit: its value and the rule that sets it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleLimitJson {
    pub rule: String,
    pub value: u32,
}

/// The bindings of the grant: each the (first) matching rule that asks
/// for it, or `None`.
#[derive(Debug, Clone, Serialize)]
pub struct BindJson {
    /// `bind = ["uid"]`: tokens work only for their owner uid.
    pub uid: Option<String>,
    /// `bind = ["cgroup"]`: only inside the cgroup they are minted from.
    pub cgroup: Option<String>,
    /// `executables`: only in the program they were matched on.
    pub exe: Option<String>,
    /// `cgroups`: only inside the cgroup they were matched in.
    pub identity_cgroup: Option<String>,
}

/// One matching allow rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleJson {
    /// Its `name`, or `allow[N]` (`FILE:allow[N]` in a drop-in).
    pub name: String,
    /// The file it is defined in: the main policy file (as given) or the
    /// drop-in (`policy.d/NAME.toml` beside it).
    pub file: String,
    /// 1-based line of its table header, in `file`.
    pub line: usize,
    pub grant: MaskNames,
    pub mints_per_minute: Option<u32>,
    pub max_live_tokens: Option<u32>,
    /// Seconds.
    pub ttl: Option<u32>,
    /// Its `bind`: `uid`, `cgroup`.
    pub bind: Vec<&'static str>,
    pub learn: bool,
}

impl RuleJson {
    fn of(r: &Rule) -> RuleJson {
        let mut bind = Vec::new();
        if r.bind.uid {
            bind.push("uid");
        }
        if r.bind.cgroup {
            bind.push("cgroup");
        }
        RuleJson {
            name: r.label.clone(),
            file: r.file.display().to_string(),
            line: r.line,
            grant: MaskNames::of(&r.grant),
            mints_per_minute: r.mints_per_minute,
            max_live_tokens: r.max_live_tokens,
            ttl: r.ttl,
            bind,
            learn: r.learn,
        }
    }
}

impl ExplainDocument {
    /// What `policy` (loaded from `checked`) gives `peer`.
    pub fn new(policy: &Policy, checked: &CheckedPolicy, peer: &Peer) -> ExplainDocument {
        let eff = policy.effective(peer);
        let rules: Vec<&Rule> = eff.allowed_rules.iter().filter_map(|&i| policy.rules().get(i)).collect();
        ExplainDocument {
            schema: EXPLAIN_SCHEMA,
            policy: checked.path.display().to_string(),
            names_source: checked.names_source.clone(),
            allow_rules: policy.rules().len(),
            deny_rules: policy.deny_rules().len(),
            warnings: policy.warnings().to_vec(),
            require_enforcement: policy.require_enforcement(),
            caller: CallerJson {
                uid: peer.uid,
                gid: peer.gid,
                groups: peer.groups.clone(),
                exe: peer.exe.as_ref().map(|e| e.display().to_string()),
                cgroup: peer.cgroup.clone(),
                userns_owner: peer.userns_owner,
            },
            allowed_by: eff.allowed_by.clone(),
            denied_by: eff.denied_by.clone(),
            grant: MaskNames::of(&eff.grant),
            removed: MaskNames::of(&eff.removed),
            limits: LimitsJson {
                mints_per_minute: eff
                    .limits
                    .iter()
                    .map(|l| RuleLimitJson { rule: l.rule.clone(), value: l.per_minute })
                    .collect(),
                max_live_tokens: eff.live_limit.as_ref().map(|l| RuleLimitJson { rule: l.rule.clone(), value: l.max }),
                ttl: eff.ttl.as_ref().map(|t| RuleLimitJson { rule: t.rule.clone(), value: t.secs }),
            },
            bind: BindJson {
                uid: eff.bind.uid.clone(),
                cgroup: eff.bind.cgroup.clone(),
                exe: eff.bind.exe.clone(),
                identity_cgroup: eff.bind.identity_cgroup.clone(),
            },
            learn_rules: rules.iter().filter(|r| r.learn).map(|r| r.label.clone()).collect(),
            rules: rules.into_iter().map(RuleJson::of).collect(),
        }
    }
}
