//! Tracing targets a rule allows: `tracepoints`, `kprobes`, `uprobes`.
//!
//! A BPF token covers `bpf()` only; attaching a tracing program needs a
//! perf event (kprobe, uprobe or tracepoint PMU), which the kernel opens
//! only for CAP_PERFMON in the initial namespace. The daemon opens it for
//! a caller when a rule names the target (docs/tracing.md). This module
//! is the pure half: the patterns, their validation against what the
//! running kernel offers ([`TraceCatalog`], read by the daemon), and the
//! decision.
//!
//! Patterns are exact names with `*` matching any run of characters
//! (including none); nothing else is special.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Location, PolicyError};

/// One pattern as written, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub location: Location,
}

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.text, name)
    }
}

/// A rule's tracing keys (empty lists when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracePatterns {
    /// `category:name`.
    pub tracepoints: Vec<Pattern>,
    /// Kernel function symbols (kprobe and kretprobe).
    pub kprobes: Vec<Pattern>,
    /// Absolute paths of binaries (uprobe and uretprobe).
    pub uprobes: Vec<Pattern>,
}

impl TracePatterns {
    pub fn is_empty(&self) -> bool {
        self.tracepoints.is_empty() && self.kprobes.is_empty() && self.uprobes.is_empty()
    }

    /// The patterns of one kind.
    pub fn of(&self, kind: TraceKind) -> &[Pattern] {
        match kind {
            TraceKind::Tracepoint => &self.tracepoints,
            TraceKind::Kprobe => &self.kprobes,
            TraceKind::Uprobe => &self.uprobes,
        }
    }
}

/// One pattern a caller's matching rules name ([`crate::Policy::trace_targets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceAllowance {
    /// `tracepoints`, `kprobes` or `uprobes`.
    pub key: &'static str,
    pub pattern: String,
    pub rule: String,
    /// Named by a deny rule: refused whatever allows it.
    pub denied: bool,
}

/// Which key a target falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    Tracepoint,
    Kprobe,
    Uprobe,
}

impl TraceKind {
    pub const ALL: [TraceKind; 3] = [TraceKind::Tracepoint, TraceKind::Kprobe, TraceKind::Uprobe];

    /// The policy key.
    pub fn key(self) -> &'static str {
        match self {
            TraceKind::Tracepoint => "tracepoints",
            TraceKind::Kprobe => "kprobes",
            TraceKind::Uprobe => "uprobes",
        }
    }

    /// What one target is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            TraceKind::Tracepoint => "tracepoint",
            TraceKind::Kprobe => "kernel function",
            TraceKind::Uprobe => "binary",
        }
    }
}

/// What the running kernel offers, as the daemon read it. Each list is
/// `Err(why)` where it could not be read (tracefs not mounted, no
/// kallsyms): patterns of that kind then cannot be checked, and the
/// policy is refused with that reason.
#[derive(Debug, Clone)]
pub struct TraceCatalog {
    /// `category:name` of every tracepoint (tracefs `available_events`).
    pub tracepoints: Result<BTreeSet<String>, String>,
    /// Kernel text symbols (`/proc/kallsyms`, types t and T).
    pub symbols: Result<BTreeSet<String>, String>,
}

impl TraceCatalog {
    /// A catalog with nothing readable: every pattern fails to check with
    /// `why` (tests and hosts without tracefs).
    pub fn unavailable(why: &str) -> TraceCatalog {
        TraceCatalog { tracepoints: Err(why.to_owned()), symbols: Err(why.to_owned()) }
    }
}

/// `*` matches any run of characters; everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Classic iterative match with one backtrack point.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether `text` is a well-formed pattern of `kind`; else what is wrong.
pub(crate) fn check_syntax(kind: TraceKind, text: &str) -> Result<(), String> {
    let word = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'*');
    match kind {
        TraceKind::Tracepoint => match text.split_once(':') {
            Some((cat, name)) if word(cat) && word(name) => Ok(()),
            _ => Err(format!(
                "tracepoint \"{text}\" must be CATEGORY:NAME (letters, digits, _ and * only), e.g. \
                 \"syscalls:sys_enter_openat\""
            )),
        },
        TraceKind::Kprobe => {
            if !text.is_empty() && text.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.*".contains(&c)) {
                Ok(())
            } else {
                Err(format!("kernel function \"{text}\" must be a symbol name (letters, digits, _, . and * only)"))
            }
        }
        TraceKind::Uprobe => {
            let p = Path::new(text);
            let plain = p.is_absolute()
                && p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
                && !text.ends_with('/');
            if plain {
                Ok(())
            } else {
                Err(format!("uprobe binary \"{text}\" must be an absolute path without . or .."))
            }
        }
    }
}

/// Check every pattern against the running kernel: each must match at
/// least one tracepoint or symbol (a near miss gets a suggestion); a
/// uprobe binary without `*` must exist as a file. Each failure, with its
/// location, goes to `errors`. Where a list cannot be read (tracefs not
/// mounted), its patterns are not checked and `warnings` says so, once per
/// kind.
pub(crate) fn check_against(
    patterns: &TracePatterns,
    catalog: &TraceCatalog,
    warnings: &mut Vec<String>,
    errors: &mut Vec<PolicyError>,
) {
    for (kind, list, known, source) in [
        (TraceKind::Tracepoint, &patterns.tracepoints, &catalog.tracepoints, "tracefs"),
        (TraceKind::Kprobe, &patterns.kprobes, &catalog.symbols, "/proc/kallsyms"),
    ] {
        let Ok(known) = known else {
            if let (Some(p), Err(why)) = (list.first(), known) {
                let line = p.location.line;
                warnings.push(format!(
                    "{}:{line}: {} cannot be checked against this kernel ({why}); a request for one is checked \
                     when it is made",
                    p.location.path.display(),
                    kind.key()
                ));
            }
            continue;
        };
        errors.extend(list.iter().filter_map(|p| against(p, kind, known, source).err()));
    }
    for p in &patterns.uprobes {
        if !p.text.contains('*') && !std::fs::metadata(&p.text).is_ok_and(|m| m.is_file()) {
            errors.push(PolicyError::Invalid {
                location: p.location.clone(),
                message: format!("uprobe binary \"{}\" is not a file on this host", p.text),
            });
        }
    }
}

fn against(p: &Pattern, kind: TraceKind, known: &BTreeSet<String>, source: &str) -> Result<(), PolicyError> {
    let err = |message: String| PolicyError::Invalid { location: p.location.clone(), message };
    if p.text.contains('*') {
        if known.iter().any(|n| p.matches(n)) {
            return Ok(());
        }
        return Err(err(format!("{} pattern \"{}\" matches nothing in {source}", kind.noun(), p.text)));
    }
    if known.contains(&p.text) {
        return Ok(());
    }
    let hint = nearest(known, &p.text).map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default();
    Err(err(format!("{} \"{}\" does not exist in this kernel ({source}){hint}", kind.noun(), p.text)))
}

/// The closest known name, if close enough to be a typo.
fn nearest<'a>(known: &'a BTreeSet<String>, name: &str) -> Option<&'a str> {
    // Only names of similar length can be within the distance.
    known
        .iter()
        .filter(|n| n.len().abs_diff(name.len()) <= 3)
        .map(|n| (crate::parse::suggest::edit_distance(n, name), n.as_str()))
        .filter(|&(d, n)| d <= 2.max(n.len() / 5))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_and_nothing_else() {
        assert!(glob_match("syscalls:sys_enter_*", "syscalls:sys_enter_getpid"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("tcp_*_send*", "tcp_v4_sendmsg"));
        assert!(!glob_match("tcp_*", "udp_sendmsg"));
        assert!(!glob_match("sys_enter_getpid", "sys_enter_getpidx"));
        assert!(!glob_match("a?c", "abc"), "? is not special");
        assert!(glob_match("a?c", "a?c"));
    }

    #[test]
    fn syntax_is_checked_per_kind() {
        assert!(check_syntax(TraceKind::Tracepoint, "syscalls:sys_enter_getpid").is_ok());
        assert!(check_syntax(TraceKind::Tracepoint, "sched:*").is_ok());
        assert!(check_syntax(TraceKind::Tracepoint, "sys_enter_getpid").is_err());
        assert!(check_syntax(TraceKind::Tracepoint, "a:b/c").is_err());
        assert!(check_syntax(TraceKind::Kprobe, "do_sys_openat2").is_ok());
        assert!(check_syntax(TraceKind::Kprobe, "foo.isra.0").is_ok());
        assert!(check_syntax(TraceKind::Kprobe, "foo bar").is_err());
        assert!(check_syntax(TraceKind::Uprobe, "/usr/bin/*").is_ok());
        assert!(check_syntax(TraceKind::Uprobe, "bin/app").is_err());
        assert!(check_syntax(TraceKind::Uprobe, "/usr/../bin/app").is_err());
    }
}
