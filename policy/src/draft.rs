//! A policy on its way to being loaded: the rules read from the main file
//! and its drop-ins, with every error found so far. The checks that need
//! the host (is the enforcer there, which tracepoints does this kernel
//! have) add theirs, and only [`Draft::finish`] turns the lot into a
//! [`Policy`], and only when there is no error at all: a policy with one
//! bad rule never decides anything.

use crate::error::{PolicyError, PolicyErrors};
use crate::{trace, Policy};

/// See the module documentation.
#[derive(Debug)]
pub struct Draft {
    policy: Policy,
    errors: Vec<PolicyError>,
}

impl Draft {
    pub(crate) fn new(policy: Policy, errors: Vec<PolicyError>) -> Draft {
        Draft { policy, errors }
    }

    /// The rules that were read (some may be incomplete where `errors`
    /// says so): for deciding which host checks apply.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    /// [`Policy::check_identity_enforcement`], its errors kept.
    pub fn check_identity_enforcement(&mut self, unavailable: Option<&str>) {
        if let Err(e) = self.policy.check_identity_enforcement(unavailable) {
            self.errors.extend(e);
        }
    }

    /// [`Policy::check_trace_targets`], its errors kept.
    pub fn check_trace_targets(&mut self, catalog: &trace::TraceCatalog) {
        if let Err(e) = self.policy.check_trace_targets(catalog) {
            self.errors.extend(e);
        }
    }

    /// The draft, or its errors if it already has some: for a caller that
    /// does more work (loading the enforcer) only for a policy that can
    /// still load.
    pub fn stop_on_errors(self) -> Result<Draft, PolicyErrors> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            Err(self.into_errors())
        }
    }

    /// The policy, or every error in file order (the main file, then the
    /// drop-ins in the order they were merged; by line and column within
    /// each).
    pub fn finish(self) -> Result<Policy, PolicyErrors> {
        if self.errors.is_empty() {
            Ok(self.policy)
        } else {
            Err(self.into_errors())
        }
    }

    fn into_errors(mut self) -> PolicyErrors {
        let main = self.policy.path().to_owned();
        // Drop-ins are merged in the lexical order of their paths (all in
        // one directory), so that order is file order; the directory's own
        // errors sort before its files'.
        let rank = |e: &PolicyError| {
            let (path, line, column) = match e {
                PolicyError::Invalid { location, .. } => (&location.path, location.line, location.column),
                PolicyError::Open { path, .. }
                | PolicyError::Unsafe { path, .. }
                | PolicyError::Read { path, .. }
                | PolicyError::TooLarge { path, .. } => (path, 0, 0),
            };
            (*path != main, path.clone(), line, column)
        };
        self.errors.sort_by_key(rank);
        PolicyErrors::from_vec(self.errors)
    }
}

impl Policy {
    /// Check every `tracepoints`, `kprobes` and `uprobes` pattern against
    /// what the running kernel offers (`catalog`): each one that names
    /// nothing there is an error, with a suggestion for a near miss. What
    /// could not be checked (tracefs not mounted) is added to the warnings.
    pub fn check_trace_targets(&mut self, catalog: &trace::TraceCatalog) -> Result<(), PolicyErrors> {
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for r in self.allow.iter().chain(&self.deny) {
            trace::check_against(&r.trace, catalog, &mut warnings, &mut errors);
        }
        warnings.dedup();
        self.warnings.extend(warnings);
        PolicyErrors::new(errors).map_or(Ok(()), Err)
    }

    /// Refuse a policy whose `executables`/`cgroups` conditions would act
    /// as a security boundary nothing enforces: `unavailable` says why the
    /// enforcer cannot run (`None`: it runs). Rules with
    /// `enforce_identity = false` pass (advisory). One error per such rule,
    /// pointing at its first condition.
    pub fn check_identity_enforcement(&self, unavailable: Option<&str>) -> Result<(), PolicyErrors> {
        let Some(why) = unavailable else { return Ok(()) };
        let errors = self
            .allow
            .iter()
            .filter_map(|r| r.identity.as_ref().filter(|i| !i.advisory).map(|i| (r, i)))
            .map(|(rule, identity)| {
                let keys = identity.keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and ");
                PolicyError::Invalid {
                    location: identity.location.clone(),
                    message: format!(
                        "rule \"{}\" matches on {keys}, which only the enforcer can make a security boundary (any \
                         program of the same uid could otherwise borrow the grant), and the enforcer cannot run \
                         here: {why}; enable the BPF LSM, or set `enforce_identity = false` in the rule to accept \
                         the match as advisory (audited as claimed)",
                        rule.label
                    ),
                }
            })
            .collect();
        PolicyErrors::new(errors).map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
