//! TOML text to rules. Every error points at the offending spot.

use std::ops::Range;
use std::path::Path;

use bpftoken_proto::delegation::{self, Delegation, Kind};
use serde::Deserialize;
use toml::Spanned;

use crate::error::{Location, PolicyError};
use crate::{Policy, Rule, MAX_POLICY_ID, SENTINEL_IDS};

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
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    users: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<String>>>,
    // i64, so that -1 gets a located "not a valid uid" instead of a type error
    uids: Option<Vec<Spanned<i64>>>,
    gids: Option<Vec<Spanned<i64>>>,
    cmds: Option<Vec<Spanned<String>>>,
    maps: Option<Vec<Spanned<String>>>,
    progs: Option<Vec<Spanned<String>>>,
    attachs: Option<Vec<Spanned<String>>>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            location: Location::at(self.path.to_owned(), self.text, span.start),
            message: message.into(),
        }
    }

    fn id(&self, what: &str, v: &Spanned<i64>) -> Result<u32, PolicyError> {
        let n = *v.get_ref();
        let id = u32::try_from(n)
            .ok()
            .filter(|id| *id <= MAX_POLICY_ID)
            .ok_or_else(|| {
                self.err(v.span(), format!("{what} {n} is not a valid id (0..={MAX_POLICY_ID})"))
            })?;
        self.not_sentinel(what, id, v.span())?;
        Ok(id)
    }

    fn not_sentinel(&self, what: &str, id: u32, span: Range<usize>) -> Result<(), PolicyError> {
        if SENTINEL_IDS.contains(&id) {
            return Err(self.err(
                span,
                format!(
                    "{what} {id} is the kernel's overflow id for unmapped users; \
                     a policy cannot grant to it"
                ),
            ));
        }
        Ok(())
    }

    fn mask(&self, kind: Kind, items: &[Spanned<String>]) -> Result<u64, PolicyError> {
        let mut mask = 0u64;
        for item in items {
            let name = item.get_ref();
            match delegation::parse_name(kind, name) {
                Ok(bits) => mask |= bits,
                Err(e) => {
                    let hint = suggest(kind, name)
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                    return Err(self.err(item.span(), format!("{e}{hint}")));
                }
            }
        }
        Ok(mask)
    }
}

/// The nearest known name, if it is close enough to be a typo.
fn suggest(kind: Kind, name: &str) -> Option<&'static str> {
    kind.builtin_names()
        .iter()
        .map(|&(n, _)| (edit_distance(n, name), n))
        .filter(|&(d, n)| d <= 2.max(n.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Policy {
    /// Parse policy text. `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, resolver: &dyn NameResolver) -> Result<Policy, PolicyError> {
        let ctx = Ctx { path, text };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ctx.err(span, e.message().trim_end().replace('\n', ", "))
        })?;
        let mut rules = Vec::with_capacity(raw.allow.len());
        for (index, spanned) in raw.allow.iter().enumerate() {
            let span = spanned.span();
            let r = spanned.get_ref();
            let line = Location::at(path.to_owned(), text, span.start).line;
            let label = match &r.name {
                Some(n) if n.get_ref().trim().is_empty() => {
                    return Err(ctx.err(n.span(), "a rule name cannot be empty"))
                }
                Some(n) => n.get_ref().clone(),
                None => format!("allow[{index}]"),
            };

            let mut uids: Option<Vec<u32>> = None;
            for user in r.users.iter().flatten() {
                let uid = resolver.uid_of(user.get_ref()).ok_or_else(|| {
                    ctx.err(user.span(), format!("unknown user \"{}\"", user.get_ref()))
                })?;
                ctx.not_sentinel(&format!("user \"{}\" has uid", user.get_ref()), uid, user.span())?;
                uids.get_or_insert_with(Vec::new).push(uid);
            }
            for uid in r.uids.iter().flatten() {
                let id = ctx.id("uid", uid)?;
                uids.get_or_insert_with(Vec::new).push(id);
            }
            let mut gids: Option<Vec<u32>> = None;
            for group in r.groups.iter().flatten() {
                let gid = resolver.gid_of(group.get_ref()).ok_or_else(|| {
                    ctx.err(group.span(), format!("unknown group \"{}\"", group.get_ref()))
                })?;
                ctx.not_sentinel(&format!("group \"{}\" has gid", group.get_ref()), gid, group.span())?;
                gids.get_or_insert_with(Vec::new).push(gid);
            }
            for gid in r.gids.iter().flatten() {
                let id = ctx.id("gid", gid)?;
                gids.get_or_insert_with(Vec::new).push(id);
            }
            let empty_condition = [(&r.users, "users"), (&r.groups, "groups")]
                .into_iter()
                .find(|(v, _)| v.as_ref().is_some_and(Vec::is_empty))
                .map(|(_, k)| k)
                .or_else(|| r.uids.as_ref().is_some_and(Vec::is_empty).then_some("uids"))
                .or_else(|| r.gids.as_ref().is_some_and(Vec::is_empty).then_some("gids"));
            if let Some(key) = empty_condition {
                return Err(ctx.err(
                    span.clone(),
                    format!("rule \"{label}\" has an empty `{key}` list, which would match nobody; remove it or name someone"),
                ));
            }
            if uids.is_none() && gids.is_none() {
                return Err(ctx.err(
                    span,
                    format!("rule \"{label}\" matches nobody: give `users`, `uids`, `groups` or `gids`"),
                ));
            }

            let mut grant = Delegation::NONE;
            for (kind, items) in [
                (Kind::Cmd, &r.cmds),
                (Kind::Map, &r.maps),
                (Kind::Prog, &r.progs),
                (Kind::Attach, &r.attachs),
            ] {
                grant.set(kind, ctx.mask(kind, items.as_deref().unwrap_or(&[]))?);
            }
            if grant.is_empty() {
                return Err(ctx.err(
                    span,
                    format!("rule \"{label}\" grants nothing: give `cmds`, `maps`, `progs` or `attachs`"),
                ));
            }
            rules.push(Rule { label, line, uids, gids, grant });
        }
        Ok(Policy { path: path.to_owned(), rules })
    }
}
