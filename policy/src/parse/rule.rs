//! One rule as written ([`RawRule`]) to a [`Rule`]: names resolved, values
//! checked. Every problem is reported to the [`Ctx`] and checking goes on,
//! so one run names them all; the rule returned is then only a best
//! effort, and the policy it belongs to never loads.

use std::ops::Range;
use std::path::{Component, PathBuf};

use bpftoken_proto::delegation::{self, Delegation, Kind};
use serde_spanned::Spanned;

use super::doc::{RawRule, RawTable};
use super::Ctx;
use crate::trace::{Pattern, TraceKind, TracePatterns};
use crate::{Bind, Effect, IdSet, IdentityKeys, Matcher, Rule, MAX_LIVE_TOKENS, MAX_TTL_SECS};

/// `label` names a rule that has no `name` (`allow[0]`, or
/// `50-ci.toml:allow[0]` in a drop-in).
pub(crate) fn rule(ctx: &Ctx<'_>, effect: Effect, label: String, table: &RawTable) -> Rule {
    let span = table.span.clone();
    let r = &table.rule;
    let line = ctx.location(span.start).line;
    let label = match &r.name {
        Some(n) if n.get_ref().trim().is_empty() => {
            ctx.report(n.span(), "a rule name cannot be empty");
            label
        }
        Some(n) => n.get_ref().clone(),
        None => label,
    };
    // An empty list would match nobody (or, read carelessly, everybody).
    let lists = [
        ("users", r.users.as_ref().map(Vec::len)),
        ("groups", r.groups.as_ref().map(Vec::len)),
        ("uids", r.uids.as_ref().map(Vec::len)),
        ("gids", r.gids.as_ref().map(Vec::len)),
        ("uid_ranges", r.uid_ranges.as_ref().map(Vec::len)),
        ("gid_ranges", r.gid_ranges.as_ref().map(Vec::len)),
        ("executables", r.executables.as_ref().map(Vec::len)),
        ("cgroups", r.cgroups.as_ref().map(Vec::len)),
        ("userns_owners", r.userns_owners.as_ref().map(Vec::len)),
        ("tracepoints", r.tracepoints.as_ref().map(Vec::len)),
        ("kprobes", r.kprobes.as_ref().map(Vec::len)),
        ("uprobes", r.uprobes.as_ref().map(Vec::len)),
    ];
    for (key, _) in lists.into_iter().filter(|(_, n)| *n == Some(0)) {
        ctx.report(
            span.clone(),
            format!("rule \"{label}\" has an empty `{key}` list, which would match nobody; remove it or name someone"),
        );
    }
    let uids = resolve_ids(ctx, "uid", &r.users, &r.uids, &r.uid_ranges, |n| ctx.accounts.uid_of(n));
    let gids = resolve_ids(ctx, "gid", &r.groups, &r.gids, &r.gid_ranges, |n| ctx.accounts.gid_of(n));
    let executables = r.executables.as_ref().map(|list| list.iter().filter_map(|e| executable(ctx, e)).collect());
    let cgroups = r.cgroups.as_ref().map(|list| list.iter().filter_map(|c| cgroup(ctx, c)).collect());
    let userns_owners = match &r.userns_owners {
        None => None,
        Some(_) => resolve_ids(ctx, "uid", &r.userns_owners, &None, &None, |n| ctx.accounts.uid_of(n)),
    };
    if let (Some(exes), Some(_)) = (&r.executables, &r.userns_owners) {
        let at = exes.first().map_or(span.clone(), Spanned::span);
        ctx.report(
            at,
            format!(
                "rule \"{label}\" combines `executables` with `userns_owners`: a caller in a user namespace resolves \
                 paths in its own mount namespace, where it can put any program at an allowed path; split the rule, \
                 or drop `executables` (containers are told apart by `userns_owners`)"
            ),
        );
    }
    let identity = identity_keys(ctx, effect, &label, r);
    let everyone = match &r.everyone {
        Some(e) if !*e.get_ref() => {
            ctx.report(e.span(), "`everyone = false` means nothing; remove it or name who the rule is for");
            false
        }
        Some(e) => {
            if uids.is_some() || gids.is_some() {
                ctx.report(e.span(), "`everyone = true` cannot be combined with users, groups or ids");
            }
            true
        }
        None => false,
    };
    // Whether the rule names anyone and grants anything depends on which
    // keys it has: an unknown or mistyped key already said what is wrong.
    let keys_sound = !table.broken;
    if keys_sound && !everyone && uids.is_none() && gids.is_none() && userns_owners.is_none() {
        ctx.report(
            span.clone(),
            format!(
                "rule \"{label}\" matches nobody: give `users`, `uids`, `uid_ranges`, `groups`, `gids`, \
                 `gid_ranges` or `userns_owners` (or `everyone = true`)"
            ),
        );
    }
    let errors_before_grant = ctx.error_count();
    let mut grant = Delegation::NONE;
    for (kind, items) in
        [(Kind::Cmd, &r.cmds), (Kind::Map, &r.maps), (Kind::Prog, &r.progs), (Kind::Attach, &r.attachs)]
    {
        grant.set(kind, mask(ctx, kind, items.as_deref().unwrap_or(&[])));
    }
    let trace = trace_patterns(ctx, r);
    // A misspelt name already said what the rule was meant to grant.
    if keys_sound && ctx.error_count() == errors_before_grant && grant.is_empty() && trace.is_empty() {
        let verb = if effect == Effect::Allow { "grants" } else { "removes" };
        ctx.report(
            span.clone(),
            format!(
                "rule \"{label}\" {verb} nothing: give `cmds`, `maps`, `progs`, `attachs`, `tracepoints`, `kprobes` \
                 or `uprobes`"
            ),
        );
    }
    let limits = Limits { ctx, effect, span: span.clone() };
    let mints_per_minute = limits.check(
        &r.mints_per_minute,
        "`mints_per_minute` limits an allow rule; a deny rule grants nothing to limit",
        1..=u32::MAX,
        &|n| format!("mints_per_minute must be at least 1, not {n}"),
    );
    let max_live_tokens = limits.check(
        &r.max_live_tokens,
        "`max_live_tokens` limits an allow rule; a deny rule grants nothing to limit",
        1..=MAX_LIVE_TOKENS,
        &|n| format!("max_live_tokens must be between 1 and {MAX_LIVE_TOKENS}, not {n}"),
    );
    let ttl = limits.check(
        &r.ttl,
        "`ttl` limits how long an allow rule's tokens work; a deny rule grants nothing",
        1..=MAX_TTL_SECS,
        &|n| format!("ttl must be between 1 and {MAX_TTL_SECS} seconds (7 days), not {n}; longer access is a new mint"),
    );
    let bind = bind(ctx, effect, span.clone(), r);
    let learn = match &r.learn {
        None => false,
        Some(_) if effect == Effect::Deny => {
            ctx.report(
                span.clone(),
                "`learn` lets users learn under an allow rule's grant; a deny rule grants nothing",
            );
            false
        }
        Some(b) => *b.get_ref(),
    };
    if everyone && effect == Effect::Allow {
        let broad: Vec<&str> =
            Kind::ALL.iter().filter(|k| grant.get(**k) == delegation::ANY).map(|k| k.key()).collect();
        if !broad.is_empty() {
            if !ctx.acknowledged {
                ctx.report(
                    span.clone(),
                    format!(
                        "rule \"{label}\" grants `any` {} to everyone; if that is really meant, set \
                         `acknowledge_broad_grants = true` at the top of the main policy file",
                        broad.join(", ")
                    ),
                );
            } else {
                ctx.warn(format!(
                    "{}:{line}: rule \"{label}\" grants `any` {} to everyone (acknowledged)",
                    ctx.path.display(),
                    broad.join(", ")
                ));
            }
        }
    }
    Rule {
        label,
        file: ctx.path.to_owned(),
        line,
        effect,
        matcher: Matcher { everyone, uids, gids, executables, cgroups, userns_owners },
        grant,
        mints_per_minute,
        max_live_tokens,
        ttl,
        bind,
        identity,
        learn,
        trace,
    }
}

/// The numeric limits of allow rules: a deny rule grants nothing to limit.
struct Limits<'c, 'a> {
    ctx: &'c Ctx<'a>,
    effect: Effect,
    span: Range<usize>,
}

impl Limits<'_, '_> {
    fn check(
        &self,
        value: &Option<Spanned<i64>>,
        deny: &str,
        range: std::ops::RangeInclusive<u32>,
        out_of_range: &dyn Fn(i64) -> String,
    ) -> Option<u32> {
        let n = value.as_ref()?;
        if self.effect == Effect::Deny {
            self.ctx.report(self.span.clone(), deny);
            return None;
        }
        let valid = u32::try_from(*n.get_ref()).ok().filter(|v| range.contains(v));
        if valid.is_none() {
            self.ctx.report(n.span(), out_of_range(*n.get_ref()));
        }
        valid
    }
}

fn bind(ctx: &Ctx<'_>, effect: Effect, span: Range<usize>, r: &RawRule) -> Bind {
    let mut bind = Bind::default();
    match &r.bind {
        None => {}
        Some(_) if effect == Effect::Deny => {
            ctx.report(span, "`bind` restricts who may use an allow rule's tokens; a deny rule grants nothing")
        }
        Some(list) if list.get_ref().is_empty() => {
            ctx.report(list.span(), "an empty `bind` binds nothing; give \"uid\", \"cgroup\" or both, or remove it")
        }
        Some(list) => {
            for item in list.get_ref() {
                match item.get_ref().as_str() {
                    "uid" => bind.uid = true,
                    "cgroup" => bind.cgroup = true,
                    other => {
                        ctx.report(item.span(), format!("unknown binding \"{other}\" (valid: \"uid\", \"cgroup\")"))
                    }
                }
            }
        }
    }
    bind
}

/// The bits of the names in `items`; each unknown name is reported with
/// the nearest known one, or the policy's spelling of a kernel name.
fn mask(ctx: &Ctx<'_>, kind: Kind, items: &[Spanned<String>]) -> u64 {
    let mut mask = 0u64;
    for item in items {
        let name = item.get_ref();
        if name == "any" {
            mask = delegation::ANY;
            continue;
        }
        match ctx.names.value_of(kind, name).and_then(|v| 1u64.checked_shl(v)) {
            Some(bit) => mask |= bit,
            None => {
                let hint = super::suggest::kernel_name_hint(ctx.names, kind, name).unwrap_or_default();
                ctx.report(item.span(), format!("unknown {kind} \"{name}\"{hint}"));
            }
        }
    }
    mask
}

fn executable(ctx: &Ctx<'_>, e: &Spanned<String>) -> Option<PathBuf> {
    let p = PathBuf::from(e.get_ref());
    let plain = p.is_absolute()
        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !e.get_ref().ends_with('/');
    if !plain {
        ctx.report(e.span(), format!("executable \"{}\" must be an absolute path without . or ..", e.get_ref()));
        return None;
    }
    Some(p)
}

fn cgroup(ctx: &Ctx<'_>, c: &Spanned<String>) -> Option<String> {
    let v = c.get_ref();
    let plain = v.starts_with('/') && !v.split('/').any(|part| part == "." || part == "..");
    if !plain {
        ctx.report(
            c.span(),
            format!("cgroup \"{v}\" must be an absolute cgroup v2 path such as /system.slice/agent.service"),
        );
        return None;
    }
    Some(v.trim_end_matches('/').to_owned())
}

/// The ids of `names` (looked up), `ids` and `ranges`; `None` when the
/// rule gives none of the three. Bad entries are reported and left out.
fn resolve_ids(
    ctx: &Ctx<'_>,
    what: &str,
    names: &Option<Vec<Spanned<String>>>,
    ids: &Option<Vec<Spanned<i64>>>,
    ranges: &Option<Vec<Spanned<Vec<i64>>>>,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Option<IdSet> {
    if names.is_none() && ids.is_none() && ranges.is_none() {
        return None;
    }
    let (name_key, id_key) = if what == "uid" { ("user", "uid") } else { ("group", "gid") };
    let mut out = Vec::new();
    for n in names.iter().flatten() {
        let Some(id) = lookup(n.get_ref()) else {
            let near = if name_key == "user" {
                ctx.accounts.near_user(n.get_ref())
            } else {
                ctx.accounts.near_group(n.get_ref())
            };
            let hint = near.map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default();
            ctx.report(n.span(), format!("unknown {name_key} \"{}\"{hint}", n.get_ref()));
            continue;
        };
        if ctx.ok(ctx.not_sentinel(&format!("{name_key} \"{}\" has {id_key}", n.get_ref()), id, n.span())).is_some() {
            out.push(id);
        }
    }
    for v in ids.iter().flatten() {
        if let Some(id) = ctx.ok(ctx.id_value(id_key, *v.get_ref(), v.span())) {
            out.push(id);
        }
    }
    let ranges = ranges.iter().flatten().filter_map(|r| ctx.ok(ctx.range(id_key, r))).collect();
    Some(IdSet { ids: out, ranges })
}

/// A rule's `tracepoints`, `kprobes` and `uprobes`, each checked for its
/// shape (the kernel check comes later: [`crate::Policy::check_trace_targets`]).
fn trace_patterns(ctx: &Ctx<'_>, r: &RawRule) -> TracePatterns {
    let mut out = TracePatterns::default();
    for (kind, list) in
        [(TraceKind::Tracepoint, &r.tracepoints), (TraceKind::Kprobe, &r.kprobes), (TraceKind::Uprobe, &r.uprobes)]
    {
        let mut patterns = Vec::new();
        for item in list.iter().flatten() {
            if let Err(m) = crate::trace::check_syntax(kind, item.get_ref()) {
                ctx.report(item.span(), m);
                continue;
            }
            patterns.push(Pattern { text: item.get_ref().clone(), location: ctx.location(item.span().start) });
        }
        match kind {
            TraceKind::Tracepoint => out.tracepoints = patterns,
            TraceKind::Kprobe => out.kprobes = patterns,
            TraceKind::Uprobe => out.uprobes = patterns,
        }
    }
    out
}

/// The process-identity conditions of a rule (`executables`, `cgroups`):
/// where they are, and whether the rule accepts them unenforced
/// (`enforce_identity = false`). Only the enforcer can tie a token to a
/// program or cgroup; see docs/enforcement.md, "Process identity".
fn identity_keys(ctx: &Ctx<'_>, effect: Effect, label: &str, r: &RawRule) -> Option<IdentityKeys> {
    let mut keys = Vec::new();
    let mut first = None;
    for (key, list) in [("executables", &r.executables), ("cgroups", &r.cgroups)] {
        if let Some(item) = list.as_ref().and_then(|l| l.first()) {
            keys.push(key);
            first.get_or_insert(item.span());
        }
    }
    let advisory = match &r.enforce_identity {
        None => false,
        Some(b) if effect == Effect::Deny => {
            ctx.report(
                b.span(),
                "`enforce_identity` applies to an allow rule's `executables` and `cgroups`; a deny rule's conditions \
                 only remove powers, so it needs no enforcement",
            );
            false
        }
        Some(b) if keys.is_empty() => {
            ctx.report(
                b.span(),
                format!("rule \"{label}\" sets `enforce_identity` but has no `executables` or `cgroups` to enforce"),
            );
            false
        }
        Some(b) => !*b.get_ref(),
    };
    let (Some(at), Effect::Allow) = (first, effect) else { return None };
    Some(IdentityKeys { keys, location: ctx.location(at.start), advisory })
}
