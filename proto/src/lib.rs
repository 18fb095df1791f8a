//! Wire types of bpftokend and the single place that encodes and decodes
//! them. No I/O lives here: the daemon and the client own their sockets.
//!
//! A frame is a little-endian `u32` payload length followed by the payload.
//! A payload starts with a little-endian `u16` protocol version, followed by
//! the postcard encoding of the message body. Lengths above [`MAX_FRAME`]
//! are refused before anything is allocated.
#![forbid(unsafe_code)]

pub mod builder;
pub mod codec;
pub mod delegation;
mod kernel_names;
pub mod message;

pub mod trace;

pub use builder::MintRequestBuilder;
pub use codec::{CodecError, FRAME_HEADER_LEN, MAX_FRAME};
pub use delegation::{Delegation, Kind, UnknownName};
pub use message::{
    Enforcement, Explanation, ForgottenLeases, LeaseInfo, LeaseMode, LeasePage, LeaseRequest, LeaseState,
    LeasesPageRequest, MintMode, MintRequest, Minted, OtherBuild, OtherLeases, ProgramRequest, Refusal, RefusalCode,
    Request, Response, RevokeTarget, MAX_LEASES_PER_PAGE, PROTOCOL_VERSION,
};
pub use trace::{PerfEventOpened, PerfEventRequest, TraceAllowance, TraceTarget, TracepointIdFile};
