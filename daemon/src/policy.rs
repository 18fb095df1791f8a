//! The policy as the daemon reads it, at start, at reload and for
//! `bpftokend check-policy`: the main file and its drop-ins
//! (`policy.d/*.toml`), names resolved through the system's user database
//! (which is also listed, for suggestions after an unknown name), and the
//! tracing targets checked against this kernel. Every error of every file
//! is kept, so one run names them all (docs/policy.md, "Names and checks").

use std::path::Path;

use bpftoken_policy::btf::KernelNames;
use bpftoken_policy::{Draft, NameResolver, SystemResolver};

/// The system's user and group database: lookups by name, and the lists
/// of names for "did you mean".
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAccounts;

impl NameResolver for SystemAccounts {
    fn uid_of(&self, user: &str) -> Option<u32> {
        SystemResolver.uid_of(user)
    }
    fn gid_of(&self, group: &str) -> Option<u32> {
        SystemResolver.gid_of(group)
    }
    fn user_names(&self) -> Vec<String> {
        crate::sys::accounts::user_names()
    }
    fn group_names(&self) -> Vec<String> {
        crate::sys::accounts::group_names()
    }
}

/// Read the policy at `path` and its drop-ins (root-owned, checked), with
/// the tracing targets of the rules that parsed checked against this
/// kernel. The identity check needs to know about the enforcer, so it is
/// the caller's ([`Draft::check_identity_enforcement`]).
pub fn read(path: &Path, names: &KernelNames) -> Draft {
    let mut draft = bpftoken_policy::read(path, &SystemAccounts, names);
    // The catalog is read only when some rule names a target.
    if draft.policy().has_trace_targets() {
        draft.check_trace_targets(&crate::perf::catalog());
    }
    draft
}

/// Whether some allow rule's `executables`/`cgroups` would need the
/// enforcer (then `check-policy` probes for it).
pub fn needs_enforcer(draft: &Draft) -> bool {
    draft.policy().rules().iter().any(|r| r.identity.as_ref().is_some_and(|i| !i.advisory))
}

/// How the files read are named in the lines that report a load: the
/// drop-ins by file name, `""` when there are none.
pub fn dropins_note(policy: &bpftoken_policy::Policy) -> String {
    let names: Vec<String> = policy
        .dropins()
        .iter()
        .map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()))
        .collect();
    match names.len() {
        0 => String::new(),
        1 => format!(" (with the drop-in {})", names[0]),
        n => format!(" (with {n} drop-ins: {})", names.join(", ")),
    }
}
