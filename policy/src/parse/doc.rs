//! One policy file's TOML, key by key. Every unknown key (with the nearest
//! known one), wrongly typed value and misplaced setting is reported, not
//! just the first; what remains is handed on as [`RawRule`]s for the
//! semantic checks (`rule.rs`).
//!
//! Keys are read one at a time (each value deserialized on its own), so
//! one bad key never hides the next. A file with a TOML syntax error gives
//! that one error: past it the parser cannot tell what was meant.

use std::ops::Range;

use serde::de::IntoDeserializer;
use serde::Deserialize;
use serde_spanned::Spanned;
use toml_edit::{ImDocument, Item, Table, Value};

use super::suggest::closest;
use super::Ctx;

/// Declares [`RawRule`] (every key optional, typed as serde reads it) and
/// [`RULE_KEYS`] from one list, so the two cannot drift.
macro_rules! raw_rule {
    ($($(#[$doc:meta])* $key:ident: $ty:ty,)*) => {
        /// One `[[allow]]` or `[[deny]]` table as written.
        #[derive(Default)]
        pub(crate) struct RawRule {
            $($(#[$doc])* pub $key: Option<$ty>,)*
        }

        /// The keys a rule may have, in the order the docs list them.
        pub(crate) const RULE_KEYS: &[&str] = &[$(stringify!($key)),*];

        impl RawRule {
            /// Set `key` from `value`: `Ok(false)` for a key rules do not
            /// have, `Err` for a value of the wrong type.
            fn set(&mut self, key: &str, value: &Value) -> Result<bool, toml_edit::de::Error> {
                match key {
                    $(stringify!($key) => {
                        self.$key = Some(<$ty>::deserialize(value.clone().into_deserializer())?);
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }
        }
    };
}

raw_rule! {
    name: Spanned<String>,
    everyone: Spanned<bool>,
    users: Vec<Spanned<String>>,
    groups: Vec<Spanned<String>>,
    // i64, so that -1 gets a located "not a valid uid" instead of a type error
    uids: Vec<Spanned<i64>>,
    gids: Vec<Spanned<i64>>,
    uid_ranges: Vec<Spanned<Vec<i64>>>,
    gid_ranges: Vec<Spanned<Vec<i64>>>,
    executables: Vec<Spanned<String>>,
    cgroups: Vec<Spanned<String>>,
    userns_owners: Vec<Spanned<String>>,
    mints_per_minute: Spanned<i64>,
    max_live_tokens: Spanned<i64>,
    ttl: Spanned<i64>,
    bind: Spanned<Vec<Spanned<String>>>,
    enforce_identity: Spanned<bool>,
    learn: Spanned<bool>,
    cmds: Vec<Spanned<String>>,
    maps: Vec<Spanned<String>>,
    progs: Vec<Spanned<String>>,
    attachs: Vec<Spanned<String>>,
    tracepoints: Vec<Spanned<String>>,
    kprobes: Vec<Spanned<String>>,
    uprobes: Vec<Spanned<String>>,
}

/// The keys a file may have at its top level.
const TOP_KEYS: [&str; 4] = ["acknowledge_broad_grants", "require_enforcement", "allow", "deny"];

/// One rule table: where it is, what it says, and whether one of its keys
/// was unknown or mistyped (then checks that depend on which keys are
/// present, such as "matches nobody", would only repeat that error).
pub(crate) struct RawTable {
    pub span: Range<usize>,
    pub rule: RawRule,
    pub broken: bool,
}

/// A file as read: its settings (main file only) and its rules.
#[derive(Default)]
pub(crate) struct RawFile {
    pub acknowledge_broad_grants: Option<bool>,
    pub require_enforcement: Option<bool>,
    pub allow: Vec<RawTable>,
    pub deny: Vec<RawTable>,
}

/// Read the TOML of `ctx`'s file. `main`: whether it is the main file (the
/// only one that may hold settings; `main_path` names it in the error a
/// drop-in gets for one).
pub(crate) fn read(ctx: &Ctx<'_>, main: bool, main_path: &std::path::Path) -> RawFile {
    let doc = match ImDocument::parse(ctx.text) {
        Ok(doc) => doc,
        Err(e) => {
            ctx.report(e.span().unwrap_or(0..0), e.message().trim_end().replace('\n', ", "));
            return RawFile::default();
        }
    };
    let mut file = RawFile::default();
    let root = doc.as_table();
    for (key, item) in root.iter() {
        let key_span = key_span(root, key, item);
        match key {
            "acknowledge_broad_grants" | "require_enforcement" => {
                if !main {
                    ctx.report(
                        key_span,
                        format!(
                            "`{key}` is a setting of the whole policy: only the main file ({}) may set it; a drop-in \
                             holds only [[allow]] and [[deny]] rules",
                            main_path.display()
                        ),
                    );
                    continue;
                }
                let Some(value) = typed::<bool>(ctx, key_span, item) else { continue };
                if key == "acknowledge_broad_grants" {
                    file.acknowledge_broad_grants = Some(value);
                } else {
                    file.require_enforcement = Some(value);
                }
            }
            "allow" | "deny" => {
                let tables = rule_tables(ctx, key, key_span, item);
                if key == "allow" {
                    file.allow = tables;
                } else {
                    file.deny = tables;
                }
            }
            other if RULE_KEYS.contains(&other) => ctx.report(
                key_span,
                format!("`{other}` is a rule key: put it inside an [[allow]] or [[deny]] table, under its header"),
            ),
            other => ctx.report(key_span, unknown_key(other, &TOP_KEYS, "the top level")),
        }
    }
    file
}

/// "unknown key" with the nearest of `known`, or the list of them.
fn unknown_key(key: &str, known: &[&str], place: &str) -> String {
    match closest(known.iter().copied(), key) {
        Some(near) => format!("unknown key `{key}` (did you mean `{near}`?)"),
        None => format!(
            "unknown key `{key}`; {place} takes {}",
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn key_span(table: &Table, key: &str, item: &Item) -> Range<usize> {
    table.key(key).and_then(toml_edit::Key::span).or_else(|| item.span()).unwrap_or(0..0)
}

/// A top-level setting's value as `T`, or the error reported.
fn typed<T: serde::de::DeserializeOwned>(ctx: &Ctx<'_>, key_span: Range<usize>, item: &Item) -> Option<T> {
    let Some(value) = item.as_value() else {
        ctx.report(key_span, "expected a value here, not a table");
        return None;
    };
    T::deserialize(value.clone().into_deserializer()).map_err(|e| report_de(ctx, &e, value)).ok()
}

fn report_de(ctx: &Ctx<'_>, e: &toml_edit::de::Error, value: &Value) {
    let span = e.span().or_else(|| value.span()).unwrap_or(0..0);
    ctx.report(span, e.message().trim_end().replace('\n', ", "));
}

/// The rule tables under `allow` or `deny`: `[[allow]]` headers, or an
/// inline `allow = [{ ... }]`.
fn rule_tables(ctx: &Ctx<'_>, table: &str, key_span: Range<usize>, item: &Item) -> Vec<RawTable> {
    let not_rules = || format!("`{table}` holds rules: write each one as a table under its own [[{table}]] header");
    match item {
        Item::ArrayOfTables(tables) => tables
            .iter()
            .map(|t| {
                let entries = t.iter().map(|(k, item)| (k, key_span_of(t.key(k), item.span()), item.as_value()));
                rule_table(ctx, t.span().unwrap_or(key_span.clone()), entries)
            })
            .collect(),
        Item::Value(Value::Array(list)) => list
            .iter()
            .filter_map(|v| {
                let Some(t) = v.as_inline_table() else {
                    ctx.report(v.span().unwrap_or(key_span.clone()), not_rules());
                    return None;
                };
                let entries = t.iter().map(|(k, value)| (k, key_span_of(t.key(k), value.span()), Some(value)));
                Some(rule_table(ctx, t.span().unwrap_or(key_span.clone()), entries))
            })
            .collect(),
        _ => {
            ctx.report(key_span, not_rules());
            Vec::new()
        }
    }
}

fn key_span_of(key: Option<&toml_edit::Key>, fallback: Option<Range<usize>>) -> Range<usize> {
    key.and_then(toml_edit::Key::span).or(fallback).unwrap_or(0..0)
}

/// One rule: each key set on its own; unknown and mistyped keys reported.
fn rule_table<'a>(
    ctx: &Ctx<'_>,
    span: Range<usize>,
    entries: impl Iterator<Item = (&'a str, Range<usize>, Option<&'a Value>)>,
) -> RawTable {
    let mut rule = RawRule::default();
    let mut broken = false;
    for (key, key_span, value) in entries {
        if !RULE_KEYS.contains(&key) {
            ctx.report(key_span, unknown_key(key, RULE_KEYS, "a rule"));
            broken = true;
            continue;
        }
        let Some(value) = value else {
            ctx.report(
                key_span,
                format!("`{key}` takes a value (a list, a string, a number or true/false), not a table"),
            );
            broken = true;
            continue;
        };
        if let Err(e) = rule.set(key, value) {
            report_de(ctx, &e, value);
            broken = true;
        }
    }
    RawTable { span, rule, broken }
}
