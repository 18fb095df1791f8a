//! One handler per kind of request. Each takes the daemon, the peer (as
//! identified for this request) and the request, does what it asks, and
//! returns an [`Outcome`](super::reply::Outcome): the answer to send or
//! the refusal. None of them writes to the socket; `reply.rs` does, and
//! counts and audits what it sends.
//!
//! - [`mint`]: tokens and scopes (`Mint`, `MintScope`, `MintLease`,
//!   `Learn`, `MintForProgram`): decide, mint, start the lease.
//! - [`delegate`]: a bpffs delegated to a user namespace the caller owns.
//! - [`query`]: what the policy would give the caller (nothing minted).
//! - [`leases`]: listing and revoking leases, and ending a learning lease.
//! - [`trace`]: perf events and tracepoint ids for tracing without root.

pub(super) mod delegate;
pub(super) mod leases;
pub(super) mod mint;
pub(super) mod query;
pub(super) mod trace;
