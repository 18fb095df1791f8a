//! `perf_event_open`, for tracing without root (`crate::perf` decides what
//! to open; docs/tracing.md).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// The fields of a `perf_event_attr` the daemon sets; every other field is
/// zero: no sampling, no inheritance, enabled.
#[derive(Debug, Default)]
pub struct PerfAttr<'a> {
    /// `type`: the PMU.
    pub kind: u32,
    pub config: u64,
    /// `config1` as a pointer to this string (kprobe_func, uprobe_path).
    pub config1: Option<&'a std::ffi::CStr>,
    /// `config2` (probe_offset).
    pub config2: u64,
}

/// `sizeof(struct perf_event_attr)` as libbpf 1.5 passes it
/// (`PERF_ATTR_SIZE_VER8`); the kernel accepts a larger size than it knows
/// only when the extra bytes are zero, which they are.
const PERF_ATTR_SIZE: usize = 136;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `perf_event_open(attr, pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)`.
pub fn perf_event_open(attr: &PerfAttr<'_>, pid: i32, cpu: i32) -> io::Result<OwnedFd> {
    // The kernel layout: type u32 @0, size u32 @4, config u64 @8, ...,
    // config1 u64 @56, config2 u64 @64.
    let mut raw = [0u64; PERF_ATTR_SIZE / 8];
    raw[0] = u64::from(attr.kind) | ((PERF_ATTR_SIZE as u64) << 32);
    raw[1] = attr.config;
    raw[7] = attr.config1.map_or(0, |s| s.as_ptr() as u64);
    raw[8] = attr.config2;
    // SAFETY: `raw` is a zeroed perf_event_attr of the size given in it,
    // and the string `config1` points at outlives the call (the kernel
    // copies it during it).
    let fd = unsafe {
        libc::syscall(libc::SYS_perf_event_open, raw.as_ptr(), pid, cpu, -1 as libc::c_int, PERF_FLAG_FD_CLOEXEC)
    };
    let fd = RawFd::try_from(cvt(fd)?).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: on success the kernel installed a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
