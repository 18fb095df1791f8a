//! TOML text to rules: the main policy file and its drop-ins, merged. Every
//! error points at the offending spot, and checking goes on after one, so
//! a single run reports them all (docs/policy.md, "Drop-in files" and
//! "Names and checks").
//!
//! Rooms: [`doc`] reads a file's TOML key by key, [`rule`] checks one rule,
//! [`suggest`] finds the nearest valid name for an unknown one.

mod doc;
mod rule;
pub(crate) mod suggest;

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::btf::KernelNames;
use crate::draft::Draft;
use crate::error::{Location, PolicyError, PolicyErrors};
use crate::{Effect, IdRange, Policy, Rule, MAX_POLICY_ID, OVERFLOW_ID, SENTINEL_IDS};

/// Turns user and group names into ids when the policy loads, so the
/// request path never performs a name lookup.
pub trait NameResolver {
    fn uid_of(&self, user: &str) -> Option<u32>;
    fn gid_of(&self, group: &str) -> Option<u32>;
    /// Every user name the system knows, for "did you mean" after an
    /// unknown one (asked only then). None by default.
    fn user_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Every group name, as [`NameResolver::user_names`].
    fn group_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Resolves through the system's user database (NSS, via `uzers`). It
/// lists no names: listing the database is the caller's to do (the daemon
/// does, outside this crate).
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

/// One policy file's path and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A resolver whose name lists are asked for once, when first needed.
struct Accounts<'a> {
    resolver: &'a dyn NameResolver,
    users: OnceCell<Vec<String>>,
    groups: OnceCell<Vec<String>>,
}

impl Accounts<'_> {
    fn uid_of(&self, user: &str) -> Option<u32> {
        self.resolver.uid_of(user)
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        self.resolver.gid_of(group)
    }
    fn near_user(&self, name: &str) -> Option<&str> {
        suggest::closest(self.users.get_or_init(|| self.resolver.user_names()).iter().map(String::as_str), name)
    }
    fn near_group(&self, name: &str) -> Option<&str> {
        suggest::closest(self.groups.get_or_init(|| self.resolver.group_names()).iter().map(String::as_str), name)
    }
}

/// What checking one file needs, and where its errors and warnings go.
pub(crate) struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    names: &'a KernelNames,
    accounts: &'a Accounts<'a>,
    /// `acknowledge_broad_grants = true` in the main file: uid/gid 65534
    /// and `any` for `everyone` load, with a warning.
    acknowledged: bool,
    warnings: RefCell<Vec<String>>,
    errors: RefCell<Vec<PolicyError>>,
}

impl Ctx<'_> {
    fn location(&self, offset: usize) -> Location {
        Location::at(self.path.to_owned(), self.text, offset)
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid { location: self.location(span.start), message: message.into() }
    }

    fn report(&self, span: Range<usize>, message: impl Into<String>) {
        let e = self.err(span, message);
        self.errors.borrow_mut().push(e);
    }

    fn error_count(&self) -> usize {
        self.errors.borrow().len()
    }

    /// The value, or `None` with its error reported.
    fn ok<T>(&self, r: Result<T, PolicyError>) -> Option<T> {
        r.map_err(|e| self.errors.borrow_mut().push(e)).ok()
    }

    fn warn(&self, warning: String) {
        self.warnings.borrow_mut().push(warning);
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
        if id == OVERFLOW_ID && self.acknowledged {
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
        let line = self.location(span.start).line;
        self.warn(format!(
            "{}:{line}: {what} {OVERFLOW_ID}, the kernel's overflow id (acknowledged); peers that show as \
             {OVERFLOW_ID} are unmapped and are refused all the same",
            self.path.display()
        ));
    }

    fn range(&self, what: &str, item: &serde_spanned::Spanned<Vec<i64>>) -> Result<IdRange, PolicyError> {
        let [first, last] = item.get_ref().as_slice() else {
            return Err(self.err(item.span(), format!("a {what} range is [first, last], e.g. [1000, 1999]")));
        };
        let first = self.id_value(what, *first, item.span())?;
        let last = self.id_value(what, *last, item.span())?;
        if first > last {
            return Err(self.err(item.span(), format!("{what} range [{first}, {last}] is empty")));
        }
        if first <= OVERFLOW_ID && OVERFLOW_ID <= last && self.acknowledged {
            self.overflow_warning(&format!("{what} range [{first}, {last}] contains"), item.span());
        } else if first <= OVERFLOW_ID && OVERFLOW_ID <= last {
            return Err(self.err(
                item.span(),
                format!("{what} range [{first}, {last}] contains 65534, the kernel's overflow id; split it"),
            ));
        }
        Ok(IdRange { first, last })
    }
}

impl Policy {
    /// Parse policy text against the built-in kernel name tables. `path`
    /// is only used in messages. Every error is returned, in file order.
    pub fn parse(text: &str, path: &Path, resolver: &dyn NameResolver) -> Result<Policy, PolicyErrors> {
        Policy::parse_with(text, path, resolver, &KernelNames::builtin())
    }

    /// Parse policy text, validating names against `names` (normally the
    /// running kernel's, from its BTF).
    pub fn parse_with(
        text: &str,
        path: &Path,
        resolver: &dyn NameResolver,
        names: &KernelNames,
    ) -> Result<Policy, PolicyErrors> {
        let main = Source { path: path.to_owned(), text: text.to_owned() };
        Policy::parse_set(&main, &[], resolver, names).finish()
    }

    /// Parse a main policy file and its drop-ins into one policy, the
    /// drop-ins merged in the lexical order of their paths, collecting
    /// every error of every file.
    pub fn parse_set(main: &Source, dropins: &[Source], resolver: &dyn NameResolver, names: &KernelNames) -> Draft {
        parse_sources(&main.path, Some(&main.text), dropins, Vec::new(), resolver, names)
    }
}

/// [`Policy::parse_set`] when the main file may not have been read
/// (`main_text` `None`: its error is among `read_errors`; the drop-ins are
/// still checked, under the default settings).
pub(crate) fn parse_sources(
    main_path: &Path,
    main_text: Option<&str>,
    dropins: &[Source],
    read_errors: Vec<PolicyError>,
    resolver: &dyn NameResolver,
    names: &KernelNames,
) -> Draft {
    let accounts = Accounts { resolver, users: OnceCell::new(), groups: OnceCell::new() };
    let mut errors = read_errors;
    let mut warnings = Vec::new();
    let mut dropins: Vec<&Source> = dropins.iter().collect();
    dropins.sort_by(|a, b| a.path.cmp(&b.path));
    let mut files: Vec<(&Path, &str, bool)> = Vec::new();
    if let Some(text) = main_text {
        files.push((main_path, text, true));
    }
    files.extend(dropins.iter().map(|s| (s.path.as_path(), s.text.as_str(), false)));

    let mut allow: Vec<Rule> = Vec::new();
    let mut deny: Vec<Rule> = Vec::new();
    // Each rule's `name` as written, for the uniqueness check.
    let mut written: Vec<Option<Location>> = Vec::new();
    let mut written_deny: Vec<Option<Location>> = Vec::new();
    let mut acknowledged = false;
    let mut require_enforcement = true;
    for (path, text, main) in files {
        let mut ctx = Ctx {
            path,
            text,
            names,
            accounts: &accounts,
            acknowledged,
            warnings: RefCell::new(Vec::new()),
            errors: RefCell::new(Vec::new()),
        };
        let raw = doc::read(&ctx, main, main_path);
        if main {
            acknowledged = raw.acknowledge_broad_grants.unwrap_or(false);
            require_enforcement = raw.require_enforcement.unwrap_or(true);
            ctx.acknowledged = acknowledged;
        }
        // Unnamed rules of a drop-in carry its file name, so the label
        // says where the rule is and does not change when files come and go.
        let prefix = if main { String::new() } else { format!("{}:", file_name(path)) };
        for (effect, tables, out, names_out) in [
            (Effect::Allow, &raw.allow, &mut allow, &mut written),
            (Effect::Deny, &raw.deny, &mut deny, &mut written_deny),
        ] {
            let table = if effect == Effect::Allow { "allow" } else { "deny" };
            for (index, t) in tables.iter().enumerate() {
                out.push(rule::rule(&ctx, effect, format!("{prefix}{table}[{index}]"), t));
                names_out.push(t.rule.name.as_ref().map(|n| ctx.location(n.span().start)));
            }
        }
        errors.extend(ctx.errors.take());
        warnings.extend(ctx.warnings.take());
    }
    let mut named: Vec<(&Rule, Option<&Location>)> =
        allow.iter().zip(&written).chain(deny.iter().zip(&written_deny)).map(|(r, n)| (r, n.as_ref())).collect();
    // In file order, so the later of two rules is the one pointed at.
    named.sort_by_key(|(r, _)| (r.file != main_path, r.file.clone(), r.line));
    errors.extend(unique_names(&named));
    let policy = Policy {
        path: main_path.to_owned(),
        dropins: dropins.iter().map(|s| s.path.clone()).collect(),
        allow,
        deny,
        warnings,
        require_enforcement,
    };
    Draft::new(policy, errors)
}

/// The last component of `path`, for labels.
fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Audit events and refusals name rules by their labels, so no two rules
/// (allow or deny, in any file) may share one, and a chosen name may not be
/// the label of an unnamed rule. Each error points at the later name and
/// says where the other rule is.
fn unique_names(rules: &[(&Rule, Option<&Location>)]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    // Label -> the first rule with it, and its name as written.
    let mut seen: HashMap<&str, (&Rule, Option<&Location>)> = HashMap::new();
    for &(rule, name) in rules {
        let Some((earlier, earlier_name)) = seen.insert(rule.label.as_str(), (rule, name)) else { continue };
        // Keep the first one as the one later rules collide with.
        seen.insert(rule.label.as_str(), (earlier, earlier_name));
        let label = &rule.label;
        let same_file = earlier.file == rule.file;
        let at =
            |r: &Rule| if same_file { format!("line {}", r.line) } else { format!("{}:{}", r.file.display(), r.line) };
        let (location, message) = match (earlier_name, name) {
            (Some(_), Some(n)) => (
                n,
                if same_file {
                    format!(
                        "rule name \"{label}\" is used twice, at lines {} and {}; audit events name rules by it, so \
                         each name must be unique",
                        earlier.line, rule.line
                    )
                } else {
                    format!(
                        "rule name \"{label}\" is used twice, at {} and {}; audit events name rules by it, so each \
                         name must be unique",
                        at(earlier),
                        at(rule)
                    )
                },
            ),
            (Some(n), None) => (
                n,
                format!(
                    "rule name \"{label}\" ({}) is the label of the unnamed rule at {}; audit events name rules by \
                     it, so choose another name",
                    at(earlier),
                    at(rule)
                ),
            ),
            (None, Some(n)) => (
                n,
                format!(
                    "rule name \"{label}\" ({}) is the label of the unnamed rule at {}; audit events name rules by \
                     it, so choose another name",
                    at(rule),
                    at(earlier)
                ),
            ),
            // Generated labels differ by file, table and index.
            (None, None) => continue,
        };
        errors.push(PolicyError::Invalid { location: location.clone(), message });
    }
    errors
}
