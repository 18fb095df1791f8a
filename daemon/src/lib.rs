//! bpftokend: authenticate a local peer from the kernel, decide by policy,
//! mint a BPF token in a scope the daemon created, pass the fd back.
//!
//! Where things live: the peer is identified in [`peer`], the grant is
//! computed by `bpftoken_policy::Policy::decide` (called from [`server`]),
//! the token is created in [`minter`] (a separate single-threaded process),
//! decisions are logged in [`audit`], and every raw syscall is in [`sys`].

pub mod audit;
pub mod minter;
pub mod peer;
pub mod run;
pub mod server;
pub mod socket;
pub mod sys;
