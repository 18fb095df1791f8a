//! TOML text to rules. Every error points at the offending spot.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use bpftoken_proto::delegation::{self, Delegation, Kind};
use serde::Deserialize;
use toml::Spanned;

use crate::btf::KernelNames;
use crate::error::{Location, PolicyError};
use crate::trace::{Pattern, TraceKind, TracePatterns};
use crate::{
    Bind, Effect, IdRange, IdSet, IdentityKeys, Matcher, Policy, Rule, MAX_LIVE_TOKENS, MAX_POLICY_ID, MAX_TTL_SECS,
    OVERFLOW_ID, SENTINEL_IDS,
};

/// Turns user and group names into ids when the policy loads, so the
/// request path never performs a name lookup.
pub trait NameResolver {
    fn uid_of(&self, user: &str) -> Option<u32>;
    fn gid_of(&self, group: &str) -> Option<u32>;
}

/// Resolves through the system's user database (NSS, via `uzers`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn uid_of(&self, user: &str) -> Option<u32> {
        uzers::get_user_by_name(user).map(|u| u.uid())
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        uzers::get_group_by_name(group).map(|g| g.gid())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// Required for rules that grant `any` of a set to `everyone`.
    #[serde(default)]
    acknowledge_broad_grants: bool,
    /// What a rule with `ttl` does where the daemon cannot enforce it.
    #[serde(default = "default_require_enforcement")]
    require_enforcement: bool,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    deny: Vec<Spanned<RawRule>>,
}

fn default_require_enforcement() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    everyone: Option<Spanned<bool>>,
    users: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<String>>>,
    // i64, so that -1 gets a located "not a valid uid" instead of a type error
    uids: Option<Vec<Spanned<i64>>>,
    gids: Option<Vec<Spanned<i64>>>,
    uid_ranges: Option<Vec<Spanned<Vec<i64>>>>,
    gid_ranges: Option<Vec<Spanned<Vec<i64>>>>,
    executables: Option<Vec<Spanned<String>>>,
    cgroups: Option<Vec<Spanned<String>>>,
    userns_owners: Option<Vec<Spanned<String>>>,
    mints_per_minute: Option<Spanned<i64>>,
    max_live_tokens: Option<Spanned<i64>>,
    ttl: Option<Spanned<i64>>,
    bind: Option<Spanned<Vec<Spanned<String>>>>,
    enforce_identity: Option<Spanned<bool>>,
    learn: Option<Spanned<bool>>,
    cmds: Option<Vec<Spanned<String>>>,
    maps: Option<Vec<Spanned<String>>>,
    progs: Option<Vec<Spanned<String>>>,
    attachs: Option<Vec<Spanned<String>>>,
    tracepoints: Option<Vec<Spanned<String>>>,
    kprobes: Option<Vec<Spanned<String>>>,
    uprobes: Option<Vec<Spanned<String>>>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    names: &'a KernelNames,
    resolver: &'a dyn NameResolver,
    /// `acknowledge_broad_grants = true`: uid/gid 65534 loads, with a warning.
    acknowledged: std::cell::Cell<bool>,
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            location: Location::at(self.path.to_owned(), self.text, span.start),
            message: message.into(),
        }
    }

    fn id(&self, what: &str, v: &Spanned<i64>) -> Result<u32, PolicyError> {
        self.id_value(what, *v.get_ref(), v.span())
    }

    fn id_value(&self, what: &str, n: i64, span: Range<usize>) -> Result<u32, PolicyError> {
        let id = u32::try_from(n)
            .ok()
            .filter(|id| *id <= MAX_POLICY_ID)
            .ok_or_else(|| self.err(span.clone(), format!("{what} {n} is not a valid id (0..={MAX_POLICY_ID})")))?;
        self.not_sentinel(what, id, span)?;
        Ok(id)
    }

    fn not_sentinel(&self, what: &str, id: u32, span: Range<usize>) -> Result<(), PolicyError> {
        if id == OVERFLOW_ID && self.acknowledged.get() {
            self.overflow_warning(what, span);
            return Ok(());
        }
        if SENTINEL_IDS.contains(&id) {
            return Err(self.err(
                span,
                format!(
                    "{what} {id}, the kernel's overflow id for unmapped users: a policy names it only \
                     with `acknowledge_broad_grants = true`, and even then no peer matches it (the daemon \
                     refuses unmapped peers)"
                ),
            ));
        }
        Ok(())
    }

    fn overflow_warning(&self, what: &str, span: Range<usize>) {
        let line = Location::at(self.path.to_owned(), self.text, span.start).line;
        self.warnings.borrow_mut().push(format!(
            "{}:{line}: {what} {OVERFLOW_ID}, the kernel's overflow id (acknowledged); peers that show as \
             {OVERFLOW_ID} are unmapped and are refused all the same",
            self.path.display()
        ));
    }

    fn ranges(&self, what: &str, items: &[Spanned<Vec<i64>>]) -> Result<Vec<IdRange>, PolicyError> {
        items
            .iter()
            .map(|item| {
                let [first, last] = item.get_ref().as_slice() else {
                    return Err(self.err(item.span(), format!("a {what} range is [first, last], e.g. [1000, 1999]")));
                };
                let first = self.id_value(what, *first, item.span())?;
                let last = self.id_value(what, *last, item.span())?;
                if first > last {
                    return Err(self.err(item.span(), format!("{what} range [{first}, {last}] is empty")));
                }
                if first <= OVERFLOW_ID && OVERFLOW_ID <= last && self.acknowledged.get() {
                    self.overflow_warning(&format!("{what} range [{first}, {last}] contains"), item.span());
                } else if first <= OVERFLOW_ID && OVERFLOW_ID <= last {
                    return Err(self.err(
                        item.span(),
                        format!("{what} range [{first}, {last}] contains 65534, the kernel's overflow id; split it"),
                    ));
                }
                Ok(IdRange { first, last })
            })
            .collect()
    }

    fn mask(&self, kind: Kind, items: &[Spanned<String>]) -> Result<u64, PolicyError> {
        let mut mask = 0u64;
        for item in items {
            let name = item.get_ref();
            if name == "any" {
                mask = delegation::ANY;
                continue;
            }
            match self.names.value_of(kind, name).and_then(|v| 1u64.checked_shl(v)) {
                Some(bit) => mask |= bit,
                None => {
                    let hint = suggest(self.names, kind, name)
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                    return Err(self.err(item.span(), format!("unknown {kind} \"{name}\"{hint}")));
                }
            }
        }
        Ok(mask)
    }
}

/// The nearest known name, if it is close enough to be a typo.
fn suggest<'a>(names: &'a KernelNames, kind: Kind, name: &str) -> Option<&'a str> {
    names
        .names(kind)
        .iter()
        .map(|(n, _)| (edit_distance(n, name), n.as_str()))
        .filter(|&(d, n)| d <= 2.max(n.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to
/// `b`: a swapped pair is the commonest typo, so it counts as one.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i of the optimal-string-alignment table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

impl Policy {
    /// Parse policy text against the built-in kernel name tables. `path`
    /// is only used in messages.
    pub fn parse(text: &str, path: &Path, resolver: &dyn NameResolver) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, path, resolver, &KernelNames::builtin())
    }

    /// Parse policy text, validating names against `names` (normally the
    /// running kernel's, from its BTF).
    pub fn parse_with(
        text: &str,
        path: &Path,
        resolver: &dyn NameResolver,
        names: &KernelNames,
    ) -> Result<Policy, PolicyError> {
        let ctx = Ctx { path, text, names, resolver, acknowledged: false.into(), warnings: Vec::new().into() };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ctx.err(span, e.message().trim_end().replace('\n', ", "))
        })?;
        ctx.acknowledged.set(raw.acknowledge_broad_grants);
        let mut warnings = Vec::new();
        let mut allow = Vec::with_capacity(raw.allow.len());
        for (index, spanned) in raw.allow.iter().enumerate() {
            allow.push(rule(&ctx, Effect::Allow, index, spanned, raw.acknowledge_broad_grants, &mut warnings)?);
        }
        let mut deny = Vec::with_capacity(raw.deny.len());
        for (index, spanned) in raw.deny.iter().enumerate() {
            deny.push(rule(&ctx, Effect::Deny, index, spanned, raw.acknowledge_broad_grants, &mut warnings)?);
        }
        unique_names(&ctx, &raw, &allow, &deny)?;
        warnings.extend(ctx.warnings.take());
        Ok(Policy { path: path.to_owned(), allow, deny, warnings, require_enforcement: raw.require_enforcement })
    }
}

/// Audit events and refusals name rules by their labels, so no two rules
/// (allow or deny) may share one, and a chosen name may not be the label
/// of an unnamed rule (`allow[N]`, `deny[N]`). The error points at the
/// later name and gives both lines.
fn unique_names(ctx: &Ctx<'_>, raw: &RawPolicy, allow: &[Rule], deny: &[Rule]) -> Result<(), PolicyError> {
    let raws = raw.allow.iter().zip(allow).chain(raw.deny.iter().zip(deny));
    // Label -> (line, the name as written, if the rule has one).
    let mut seen: std::collections::HashMap<&str, (usize, Option<&Spanned<String>>)> = Default::default();
    for (spanned, rule) in raws {
        let name = spanned.get_ref().name.as_ref();
        let Some((line, earlier)) = seen.insert(rule.label.as_str(), (rule.line, name)) else { continue };
        let label = &rule.label;
        return Err(match (earlier, name) {
            (Some(_), Some(n)) => ctx.err(
                n.span(),
                format!(
                    "rule name \"{label}\" is used twice, at lines {line} and {}; audit events name rules by it, so \
                     each name must be unique",
                    rule.line
                ),
            ),
            (Some(n), None) => ctx.err(
                n.span(),
                format!(
                    "rule name \"{label}\" (line {line}) is the label of the unnamed rule at line {}; audit events \
                     name rules by it, so choose another name",
                    rule.line
                ),
            ),
            (None, Some(n)) => ctx.err(
                n.span(),
                format!(
                    "rule name \"{label}\" (line {}) is the label of the unnamed rule at line {line}; audit events \
                     name rules by it, so choose another name",
                    rule.line
                ),
            ),
            // Generated labels differ by table and index.
            (None, None) => continue,
        });
    }
    Ok(())
}

fn resolve_ids(
    ctx: &Ctx<'_>,
    what: &str,
    names: &Option<Vec<Spanned<String>>>,
    ids: &Option<Vec<Spanned<i64>>>,
    ranges: &Option<Vec<Spanned<Vec<i64>>>>,
    lookup: impl Fn(&str) -> Option<u32>,
) -> Result<Option<IdSet>, PolicyError> {
    if names.is_none() && ids.is_none() && ranges.is_none() {
        return Ok(None);
    }
    let (name_key, id_key) = if what == "uid" { ("user", "uid") } else { ("group", "gid") };
    let mut out = Vec::new();
    for n in names.iter().flatten() {
        let id =
            lookup(n.get_ref()).ok_or_else(|| ctx.err(n.span(), format!("unknown {name_key} \"{}\"", n.get_ref())))?;
        ctx.not_sentinel(&format!("{name_key} \"{}\" has {id_key}", n.get_ref()), id, n.span())?;
        out.push(id);
    }
    for v in ids.iter().flatten() {
        out.push(ctx.id(id_key, v)?);
    }
    let ranges = ctx.ranges(id_key, ranges.as_deref().unwrap_or(&[]))?;
    Ok(Some(IdSet { ids: out, ranges }))
}

fn rule(
    ctx: &Ctx<'_>,
    effect: Effect,
    index: usize,
    spanned: &Spanned<RawRule>,
    acknowledged: bool,
    warnings: &mut Vec<String>,
) -> Result<Rule, PolicyError> {
    let span = spanned.span();
    let r = spanned.get_ref();
    let line = Location::at(ctx.path.to_owned(), ctx.text, span.start).line;
    let table = if effect == Effect::Allow { "allow" } else { "deny" };
    let label = match &r.name {
        Some(n) if n.get_ref().trim().is_empty() => return Err(ctx.err(n.span(), "a rule name cannot be empty")),
        Some(n) => n.get_ref().clone(),
        None => format!("{table}[{index}]"),
    };
    // An empty list would match nobody (or, read carelessly, everybody).
    let empty = [
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
    ]
    .into_iter()
    .find(|(_, n)| *n == Some(0));
    if let Some((key, _)) = empty {
        return Err(ctx.err(
            span.clone(),
            format!("rule \"{label}\" has an empty `{key}` list, which would match nobody; remove it or name someone"),
        ));
    }
    let uids = resolve_ids(ctx, "uid", &r.users, &r.uids, &r.uid_ranges, |n| ctx.resolver.uid_of(n))?;
    let gids = resolve_ids(ctx, "gid", &r.groups, &r.gids, &r.gid_ranges, |n| ctx.resolver.gid_of(n))?;
    let executables = match &r.executables {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|e| {
                    let p = PathBuf::from(e.get_ref());
                    let plain = p.is_absolute()
                        && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
                        && !e.get_ref().ends_with('/');
                    if plain {
                        Ok(p)
                    } else {
                        Err(ctx.err(
                            e.span(),
                            format!("executable \"{}\" must be an absolute path without . or ..", e.get_ref()),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let cgroups = match &r.cgroups {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|c| {
                    let v = c.get_ref();
                    let plain = v.starts_with('/') && !v.split('/').any(|part| part == "." || part == "..");
                    if plain {
                        Ok(v.trim_end_matches('/').to_owned())
                    } else {
                        Err(ctx.err(
                            c.span(),
                            format!(
                                "cgroup \"{v}\" must be an absolute cgroup v2 path such as /system.slice/agent.service"
                            ),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let userns_owners = match &r.userns_owners {
        None => None,
        Some(_) => resolve_ids(ctx, "uid", &r.userns_owners, &None, &None, |n| ctx.resolver.uid_of(n))?,
    };
    if let (Some(exes), Some(_)) = (&r.executables, &userns_owners) {
        let at = exes.first().map_or(span.clone(), Spanned::span);
        return Err(ctx.err(
            at,
            format!(
                "rule \"{label}\" combines `executables` with `userns_owners`: a caller in a user namespace resolves \
                 paths in its own mount namespace, where it can put any program at an allowed path; split the rule, \
                 or drop `executables` (containers are told apart by `userns_owners`)"
            ),
        ));
    }
    let identity = identity_keys(ctx, effect, &label, r)?;
    let everyone = match &r.everyone {
        Some(e) if !*e.get_ref() => {
            return Err(ctx.err(e.span(), "`everyone = false` means nothing; remove it or name who the rule is for"))
        }
        Some(e) => {
            if uids.is_some() || gids.is_some() {
                return Err(ctx.err(e.span(), "`everyone = true` cannot be combined with users, groups or ids"));
            }
            true
        }
        None => false,
    };
    if !everyone && uids.is_none() && gids.is_none() && userns_owners.is_none() {
        return Err(ctx.err(
            span,
            format!(
                "rule \"{label}\" matches nobody: give `users`, `uids`, `uid_ranges`, `groups`, `gids`, \
                 `gid_ranges` or `userns_owners` (or `everyone = true`)"
            ),
        ));
    }
    let mut grant = Delegation::NONE;
    for (kind, items) in
        [(Kind::Cmd, &r.cmds), (Kind::Map, &r.maps), (Kind::Prog, &r.progs), (Kind::Attach, &r.attachs)]
    {
        grant.set(kind, ctx.mask(kind, items.as_deref().unwrap_or(&[]))?);
    }
    let trace = trace_patterns(ctx, r)?;
    if grant.is_empty() && trace.is_empty() {
        let verb = if effect == Effect::Allow { "grants" } else { "removes" };
        return Err(ctx.err(
            span,
            format!(
                "rule \"{label}\" {verb} nothing: give `cmds`, `maps`, `progs`, `attachs`, `tracepoints`, `kprobes` \
                 or `uprobes`"
            ),
        ));
    }
    // Numeric limits of allow rules: a deny rule grants nothing to limit.
    let limit = |value: &Option<Spanned<i64>>,
                 deny: &str,
                 range: std::ops::RangeInclusive<u32>,
                 out_of_range: &dyn Fn(i64) -> String| {
        match value {
            None => Ok(None),
            Some(_) if effect == Effect::Deny => Err(ctx.err(span.clone(), deny)),
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|v| range.contains(v))
                .map(Some)
                .ok_or_else(|| ctx.err(n.span(), out_of_range(*n.get_ref()))),
        }
    };
    let mints_per_minute = limit(
        &r.mints_per_minute,
        "`mints_per_minute` limits an allow rule; a deny rule grants nothing to limit",
        1..=u32::MAX,
        &|n| format!("mints_per_minute must be at least 1, not {n}"),
    )?;
    let max_live_tokens = limit(
        &r.max_live_tokens,
        "`max_live_tokens` limits an allow rule; a deny rule grants nothing to limit",
        1..=MAX_LIVE_TOKENS,
        &|n| format!("max_live_tokens must be between 1 and {MAX_LIVE_TOKENS}, not {n}"),
    )?;
    let ttl = limit(
        &r.ttl,
        "`ttl` limits how long an allow rule's tokens work; a deny rule grants nothing",
        1..=MAX_TTL_SECS,
        &|n| format!("ttl must be between 1 and {MAX_TTL_SECS} seconds (7 days), not {n}; longer access is a new mint"),
    )?;
    let bind = match &r.bind {
        None => Bind::default(),
        Some(_) if effect == Effect::Deny => {
            return Err(ctx.err(span, "`bind` restricts who may use an allow rule's tokens; a deny rule grants nothing"))
        }
        Some(list) if list.get_ref().is_empty() => {
            return Err(
                ctx.err(list.span(), "an empty `bind` binds nothing; give \"uid\", \"cgroup\" or both, or remove it")
            )
        }
        Some(list) => {
            let mut bind = Bind::default();
            for item in list.get_ref() {
                match item.get_ref().as_str() {
                    "uid" => bind.uid = true,
                    "cgroup" => bind.cgroup = true,
                    other => {
                        return Err(
                            ctx.err(item.span(), format!("unknown binding \"{other}\" (valid: \"uid\", \"cgroup\")"))
                        )
                    }
                }
            }
            bind
        }
    };
    let learn = match &r.learn {
        None => false,
        Some(_) if effect == Effect::Deny => {
            return Err(
                ctx.err(span, "`learn` lets users learn under an allow rule's grant; a deny rule grants nothing")
            )
        }
        Some(b) => *b.get_ref(),
    };
    if everyone && effect == Effect::Allow {
        let broad: Vec<&str> =
            Kind::ALL.iter().filter(|k| grant.get(**k) == delegation::ANY).map(|k| k.key()).collect();
        if !broad.is_empty() {
            if !acknowledged {
                return Err(ctx.err(
                    span,
                    format!(
                        "rule \"{label}\" grants `any` {} to everyone; if that is really meant, set \
                         `acknowledge_broad_grants = true` at the top of the policy",
                        broad.join(", ")
                    ),
                ));
            }
            warnings.push(format!(
                "{}:{line}: rule \"{label}\" grants `any` {} to everyone (acknowledged)",
                ctx.path.display(),
                broad.join(", ")
            ));
        }
    }
    Ok(Rule {
        label,
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
    })
}

/// A rule's `tracepoints`, `kprobes` and `uprobes`, each checked for its
/// shape (the kernel check comes later: [`crate::Policy::check_trace_targets`]).
fn trace_patterns(ctx: &Ctx<'_>, r: &RawRule) -> Result<TracePatterns, PolicyError> {
    let mut out = TracePatterns::default();
    for (kind, list) in
        [(TraceKind::Tracepoint, &r.tracepoints), (TraceKind::Kprobe, &r.kprobes), (TraceKind::Uprobe, &r.uprobes)]
    {
        let mut patterns = Vec::new();
        for item in list.iter().flatten() {
            crate::trace::check_syntax(kind, item.get_ref()).map_err(|m| ctx.err(item.span(), m))?;
            patterns.push(Pattern {
                text: item.get_ref().clone(),
                location: Location::at(ctx.path.to_owned(), ctx.text, item.span().start),
            });
        }
        match kind {
            TraceKind::Tracepoint => out.tracepoints = patterns,
            TraceKind::Kprobe => out.kprobes = patterns,
            TraceKind::Uprobe => out.uprobes = patterns,
        }
    }
    Ok(out)
}

/// The process-identity conditions of a rule (`executables`, `cgroups`):
/// where they are, and whether the rule accepts them unenforced
/// (`enforce_identity = false`). Only the enforcer can tie a token to a
/// program or cgroup; see docs/enforcement.md, "Process identity".
fn identity_keys(ctx: &Ctx<'_>, effect: Effect, label: &str, r: &RawRule) -> Result<Option<IdentityKeys>, PolicyError> {
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
        Some(_) if effect == Effect::Deny => {
            return Err(ctx.err(
                r.enforce_identity.as_ref().map_or(0..0, Spanned::span),
                "`enforce_identity` applies to an allow rule's `executables` and `cgroups`; a deny rule's conditions \
                 only remove powers, so it needs no enforcement",
            ))
        }
        Some(b) if keys.is_empty() => {
            return Err(ctx.err(
                b.span(),
                format!("rule \"{label}\" sets `enforce_identity` but has no `executables` or `cgroups` to enforce"),
            ))
        }
        Some(b) => !*b.get_ref(),
    };
    let (Some(at), Effect::Allow) = (first, effect) else { return Ok(None) };
    Ok(Some(IdentityKeys { keys, location: Location::at(ctx.path.to_owned(), ctx.text, at.start), advisory }))
}
