//! The JSON documents `bpftoken query|leases|inspect --json` print
//! (docs/json.md): their own structs, built from the wire types, so that
//! the wire format and these schemas evolve separately. Each document names
//! its schema in `schema`; that string changes only on incompatible changes.

use serde::Serialize;

use crate::inspect::Source;
use crate::{Delegation, Enforcement, Explanation, ForgottenLeases, Kind, LeaseInfo, OtherBuild};

/// `schema` of `bpftoken query --json`.
pub const QUERY_SCHEMA: &str = "bpftoken.query/1";
/// `schema` of `bpftoken leases --json`.
pub const LEASES_SCHEMA: &str = "bpftoken.leases/1";
/// `schema` of `bpftoken inspect --json`.
pub const INSPECT_SCHEMA: &str = "bpftoken.inspect/1";

/// The four delegation sets as lists of kernel names (`map_create`,
/// `array`, ...), in enum order; a set with every bit reads `["any"]`,
/// a bit without a known name `"#N"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskNames {
    pub cmds: Vec<String>,
    pub maps: Vec<String>,
    pub progs: Vec<String>,
    pub attachs: Vec<String>,
}

impl MaskNames {
    pub fn of(d: &Delegation) -> MaskNames {
        let names = |kind: Kind| crate::delegation::names(kind, d.get(kind));
        MaskNames {
            cmds: names(Kind::Cmd),
            maps: names(Kind::Map),
            progs: names(Kind::Prog),
            attachs: names(Kind::Attach),
        }
    }
}

/// `bpftoken query --json`: what the policy grants the caller now.
#[derive(Debug, Clone, Serialize)]
pub struct QueryDocument {
    pub schema: &'static str,
    /// The policy file in force.
    pub policy: String,
    /// The matching allow rules (empty: no rule matches the caller).
    pub allowed_by: Vec<String>,
    /// The matching deny rules.
    pub denied_by: Vec<String>,
    /// The allow rules' union minus the deny rules'.
    pub grant: MaskNames,
    /// `mints_per_minute` limits that apply.
    pub rate_limits: Vec<RateLimitJson>,
    /// The daemon's enforcer; `None` when the daemon is too old to say.
    pub enforcement: Option<EnforcementJson>,
    /// Pinned enforcers of other bpftokend builds.
    pub other_builds: Vec<OtherBuildJson>,
    /// The refusal any request would get now; `None` when one could be granted.
    pub refusal: Option<RefusalJson>,
    /// The tracing targets the caller's rules name (`None`: the daemon is
    /// too old to say).
    pub tracing: Option<Vec<TraceTargetJson>>,
}

/// A tracing target pattern a rule names for the caller.
#[derive(Debug, Clone, Serialize)]
pub struct TraceTargetJson {
    /// `tracepoints`, `kprobes` or `uprobes`.
    pub key: String,
    pub pattern: String,
    pub rule: String,
    /// Named by a deny rule: refused whatever allows it.
    pub denied: bool,
}

/// One rule's mints-per-minute limit.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitJson {
    pub rule: String,
    pub mints_per_minute: u32,
}

/// The enforcer's state: `enforcing`, `enforcing_until_stop` (no pins) or
/// `unavailable`, with the reason for the latter two.
#[derive(Debug, Clone, Serialize)]
pub struct EnforcementJson {
    pub state: &'static str,
    pub reason: Option<String>,
}

impl From<&Enforcement> for EnforcementJson {
    fn from(e: &Enforcement) -> Self {
        match e {
            Enforcement::Enforcing => EnforcementJson { state: "enforcing", reason: None },
            Enforcement::Unavailable(why) => EnforcementJson { state: "unavailable", reason: Some(why.clone()) },
            Enforcement::EnforcingUntilStop(why) => {
                EnforcementJson { state: "enforcing_until_stop", reason: Some(why.clone()) }
            }
        }
    }
}

/// Another build's pinned enforcer.
#[derive(Debug, Clone, Serialize)]
pub struct OtherBuildJson {
    /// Its pin directory.
    pub dir: String,
    /// Its lease entries; `None` where its layout is unknown to the daemon.
    pub leases: Option<OtherLeasesJson>,
}

/// Lease entries of another build.
#[derive(Debug, Clone, Serialize)]
pub struct OtherLeasesJson {
    pub total: u64,
    pub revoked: u64,
}

impl From<&OtherBuild> for OtherBuildJson {
    fn from(o: &OtherBuild) -> Self {
        OtherBuildJson {
            dir: o.dir.clone(),
            leases: o.leases.map(|l| OtherLeasesJson { total: l.total, revoked: l.revoked }),
        }
    }
}

/// A refusal: its stable code (`not_in_policy`, ...) and message.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalJson {
    pub code: &'static str,
    pub message: String,
}

impl QueryDocument {
    pub fn new(
        e: &Explanation,
        enforcement: Option<&Enforcement>,
        other_builds: &[OtherBuild],
        tracing: Option<&[crate::TraceAllowance]>,
    ) -> QueryDocument {
        QueryDocument {
            schema: QUERY_SCHEMA,
            policy: e.policy.clone(),
            allowed_by: e.allowed_by.clone(),
            denied_by: e.denied_by.clone(),
            grant: MaskNames::of(&e.grant),
            rate_limits: e
                .limits
                .iter()
                .map(|(rule, n)| RateLimitJson { rule: rule.clone(), mints_per_minute: *n })
                .collect(),
            enforcement: enforcement.map(EnforcementJson::from),
            other_builds: other_builds.iter().map(OtherBuildJson::from).collect(),
            refusal: e.refusal.as_ref().map(|r| RefusalJson { code: r.code.as_str(), message: r.message.clone() }),
            tracing: tracing.map(|targets| {
                targets
                    .iter()
                    .map(|t| TraceTargetJson {
                        key: t.key.clone(),
                        pattern: t.pattern.clone(),
                        rule: t.rule.clone(),
                        denied: t.denied,
                    })
                    .collect()
            }),
        }
    }
}

/// `bpftoken leases --json`: the caller's leases (root: everyone's).
#[derive(Debug, Clone, Serialize)]
pub struct LeasesDocument {
    pub schema: &'static str,
    pub leases: Vec<LeaseJson>,
    /// Unenforced leases the daemon forgot, per owner (added in
    /// `bpftoken.leases/1`: a new field, not a new schema).
    pub forgotten: Vec<ForgottenJson>,
}

/// How many unenforced leases of one owner the daemon forgot: their
/// tokens still work, they are no longer listed.
#[derive(Debug, Clone, Serialize)]
pub struct ForgottenJson {
    /// Their owner; `None`: owners the daemon no longer counts one by one.
    pub uid: Option<u32>,
    pub count: u64,
}

/// One lease.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseJson {
    /// Unique while the daemon runs, never reused.
    pub id: u64,
    /// Its owner.
    pub uid: u32,
    /// Inode number of the token's user namespace.
    pub scope: u64,
    /// `owner`, `libbpf`, `container` or `delegated_mount`.
    pub mode: &'static str,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since the Unix epoch; `None`: never.
    pub expires: Option<u64>,
    /// The enforcer's serial of the token handed out, if known.
    pub serial: Option<u64>,
    /// The lease covers every token of its scope, not one serial.
    pub whole_scope: bool,
    /// `active`, `expired`, `revoked` or `not_enforced`.
    pub state: &'static str,
    /// Only tasks of this uid may use its tokens.
    pub bound_uid: Option<u32>,
    /// Only tasks in this cgroup subtree may use its tokens.
    pub bound_cgroup: Option<String>,
}

impl From<&LeaseInfo> for LeaseJson {
    fn from(l: &LeaseInfo) -> Self {
        LeaseJson {
            id: l.id,
            uid: l.uid,
            scope: l.scope,
            mode: l.mode.as_str(),
            created: l.created,
            expires: l.expires,
            serial: l.serial,
            whole_scope: l.whole_scope,
            state: l.state.as_str(),
            bound_uid: l.bound_uid,
            bound_cgroup: l.bound_cgroup.clone(),
        }
    }
}

impl LeasesDocument {
    pub fn new(leases: &[LeaseInfo], forgotten: &[ForgottenLeases]) -> LeasesDocument {
        LeasesDocument {
            schema: LEASES_SCHEMA,
            leases: leases.iter().map(LeaseJson::from).collect(),
            forgotten: forgotten.iter().map(|f| ForgottenJson { uid: f.uid, count: f.count }).collect(),
        }
    }
}

/// `bpftoken inspect --json`: a token's masks.
#[derive(Debug, Clone, Serialize)]
pub struct InspectDocument {
    pub schema: &'static str,
    /// The fd number inspected.
    pub fd: i32,
    pub masks: MaskNames,
    /// `bpf_obj_get_info` (exact) or `fdinfo` (a full set reads `any`).
    pub source: &'static str,
}

impl InspectDocument {
    pub fn new(fd: i32, masks: &Delegation, source: Source) -> InspectDocument {
        InspectDocument { schema: INSPECT_SCHEMA, fd, masks: MaskNames::of(masks), source: source.as_str() }
    }
}

/// `document` as pretty-printed JSON.
pub fn to_string<T: Serialize>(document: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaseMode, LeaseState, Refusal, RefusalCode};

    #[test]
    fn a_query_document_names_its_schema_masks_and_nulls() {
        let e = Explanation {
            policy: "/etc/bpftokend/policy.toml".into(),
            grant: Delegation { cmds: 1, maps: 1 << 2, progs: 0, attachs: 0 },
            allowed_by: vec!["devs".into()],
            denied_by: vec![],
            limits: vec![("devs".into(), 60)],
            refusal: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&to_string(&QueryDocument::new(&e, None, &[], None)).unwrap()).unwrap();
        assert_eq!(v["schema"], "bpftoken.query/1");
        assert_eq!(v["grant"]["cmds"], serde_json::json!(["map_create"]));
        assert_eq!(v["grant"]["maps"], serde_json::json!(["array"]));
        assert_eq!(v["grant"]["progs"], serde_json::json!([]));
        assert_eq!(v["rate_limits"], serde_json::json!([{"rule": "devs", "mints_per_minute": 60}]));
        assert!(v["enforcement"].is_null() && v["refusal"].is_null());
        let refused = Explanation { refusal: Some(Refusal::new(RefusalCode::NotInPolicy, "no")), ..e };
        let enforcing = Enforcement::Unavailable("why".into());
        let v = serde_json::to_value(QueryDocument::new(&refused, Some(&enforcing), &[], Some(&[]))).unwrap();
        assert_eq!(v["refusal"], serde_json::json!({"code": "not_in_policy", "message": "no"}));
        assert_eq!(v["enforcement"], serde_json::json!({"state": "unavailable", "reason": "why"}));
    }

    #[test]
    fn a_lease_keeps_ids_as_numbers_and_absent_values_as_null() {
        let l = LeaseInfo {
            id: 7,
            uid: 1000,
            scope: 4026531837,
            mode: LeaseMode::Libbpf,
            created: 1,
            expires: None,
            serial: Some(3),
            whole_scope: true,
            state: LeaseState::NotEnforced,
            bound_uid: None,
            bound_cgroup: Some("/user.slice".into()),
        };
        let forgotten = [ForgottenLeases { uid: Some(1000), count: 5 }, ForgottenLeases { uid: None, count: 2 }];
        let v = serde_json::to_value(LeasesDocument::new(&[l], &forgotten)).unwrap();
        assert_eq!(v["schema"], "bpftoken.leases/1");
        assert_eq!(v["forgotten"], serde_json::json!([{"uid": 1000, "count": 5}, {"uid": null, "count": 2}]));
        let lease = &v["leases"][0];
        assert_eq!(lease["id"], 7);
        assert_eq!(lease["mode"], "libbpf");
        assert_eq!(lease["state"], "not_enforced");
        assert!(lease["expires"].is_null() && lease["bound_uid"].is_null());
        assert_eq!(lease["bound_cgroup"], "/user.slice");
    }

    #[test]
    fn a_full_set_reads_any() {
        let v = serde_json::to_value(InspectDocument::new(3, &Delegation::ANY, Source::FdInfo)).unwrap();
        assert_eq!(v["masks"]["attachs"], serde_json::json!(["any"]));
        assert_eq!(v["source"], "fdinfo");
        assert_eq!(v["fd"], 3);
    }
}
