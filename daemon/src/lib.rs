//! bpftokend: authenticate a local peer from the kernel, decide by policy,
//! mint a BPF token in a scope the daemon created, pass the fd back.
//!
//! Where things live: the peer is identified in [`peer`], the policy and
//! its drop-ins are read in [`policy`], the grant is
//! computed by `bpftoken_policy::Policy::decide` (called from [`server`]),
//! scopes are created by the [`minter`] (a separate single-threaded
//! process) and tokens minted from them in [`cache`],
//! decisions are logged in [`audit`] and counted in [`metrics`], the BPF LSM program that watches
//! token use is loaded by [`enforcer`] (and pinned by [`pins`]), and every raw syscall is in [`sys`].

// Every `unsafe` of the daemon is under `sys/`, behind safe wrappers.
#![deny(unsafe_code)]

pub mod audit;
pub mod cache;
pub mod cgroup;
pub mod enforcer;
pub mod explain;
pub mod lease;
pub mod live;
pub mod metrics;
pub mod minter;
// `crate::others::X`: the other builds' pin sets, part of the enforcer.
pub use enforcer::others;
pub mod peer;
pub mod perf;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod run;
pub mod server;
pub mod socket;
#[allow(unsafe_code)]
pub mod sys;
pub mod systemd;
