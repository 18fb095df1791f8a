//! C ABI of the bpftokend client (`include/bpftoken.h`): `libbpftoken.so`.
//!
//! [`mint`] holds the logic in safe Rust; `ffi` is the only module with
//! unsafe code (the `extern "C"` functions, reading and writing the caller's
//! structs), and it never lets a panic cross into C.
#![deny(unsafe_code)]

mod ffi;
pub mod mint;
pub mod trace;
