//! The `extern "C"` functions of `bpftoken.h`: the crate's only unsafe
//! code. Each reads or writes the caller's memory within the bounds the
//! header documents, hands the work to [`crate::mint`], and catches any
//! panic so that none unwinds into C.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr, OsStr};
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::mint::{self, ArgError, Request};

/// `struct bpftoken_request` of the header, this version.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct bpftoken_request {
    pub sz: usize,
    pub cmds: u64,
    pub maps: u64,
    pub progs: u64,
    pub attachs: u64,
    pub flags: u32,
    pub reserved: u32,
    pub socket_path: *const c_char,
}

/// `struct bpftoken_grant` of the header, this version.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct bpftoken_grant {
    pub sz: usize,
    pub cmds: u64,
    pub maps: u64,
    pub progs: u64,
    pub attachs: u64,
}

// No implicit padding: every byte a caller passes is a field.
const _: () = assert!(
    size_of::<bpftoken_request>() == 56
        && offset_of!(bpftoken_request, flags) == 40
        && offset_of!(bpftoken_request, socket_path) == 48
);
const _: () = assert!(size_of::<bpftoken_grant>() == 40);

const EMPTY_REQUEST: bpftoken_request = bpftoken_request {
    sz: 0,
    cmds: 0,
    maps: 0,
    progs: 0,
    attachs: 0,
    flags: 0,
    reserved: 0,
    socket_path: std::ptr::null(),
};

/// Copy the caller's request (`req->sz` bytes of it) into this version's
/// struct, zero beyond the caller's size.
///
/// # Safety
/// `req` points to at least `req->sz` readable bytes, and `socket_path`, if
/// not NULL, to a NUL-terminated string.
unsafe fn read_request(req: *const bpftoken_request) -> Result<Request, ArgError> {
    // SAFETY: the caller's struct starts with its size_t sz.
    let sz = unsafe { req.cast::<usize>().read_unaligned() };
    let known = size_of::<bpftoken_request>();
    if sz < size_of::<usize>() {
        return Err(ArgError::SizeTooSmall { what: "req", sz });
    }
    if sz > known {
        // SAFETY: the caller promises sz readable bytes.
        let tail = unsafe { std::slice::from_raw_parts(req.cast::<u8>().wrapping_add(known), sz - known) };
        if tail.iter().any(|&b| b != 0) {
            return Err(ArgError::UnknownFields { sz, known });
        }
    }
    let mut r = EMPTY_REQUEST;
    // SAFETY: min(sz, known) bytes are readable at `req` and writable at
    // `r`; every bit pattern is valid for these integer and pointer fields.
    unsafe {
        std::ptr::copy_nonoverlapping(req.cast::<u8>(), std::ptr::from_mut(&mut r).cast::<u8>(), sz.min(known));
    }
    let socket = if r.socket_path.is_null() {
        None
    } else {
        // SAFETY: a non-NULL socket_path is a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(r.socket_path) }.to_bytes();
        Some(PathBuf::from(OsStr::from_bytes(bytes)))
    };
    Ok(Request {
        cmds: r.cmds,
        maps: r.maps,
        progs: r.progs,
        attachs: r.attachs,
        flags: r.flags,
        reserved: r.reserved,
        socket,
    })
}

/// Write the grant into the caller's struct, at most `out->sz` bytes,
/// leaving `sz` as it is.
///
/// # Safety
/// `out` points to at least `out->sz` writable bytes.
unsafe fn write_grant(out: *mut bpftoken_grant, grant: &bpftoken_grant) {
    // SAFETY: the caller's struct starts with its size_t sz.
    let sz = unsafe { out.cast::<usize>().read_unaligned() };
    let start = size_of::<usize>();
    let end = sz.min(size_of::<bpftoken_grant>());
    if end > start {
        // SAFETY: bytes start..end are within both structs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::from_ref(grant).cast::<u8>().wrapping_add(start),
                out.cast::<u8>().wrapping_add(start),
                end - start,
            );
        }
    }
}

/// `int bpftoken_mint(const struct bpftoken_request *req, struct bpftoken_grant *out)`
///
/// # Safety
/// As documented in `bpftoken.h`: `req` NULL or valid for `req->sz` bytes,
/// `out` NULL or valid for `out->sz` bytes.
#[no_mangle]
pub unsafe extern "C" fn bpftoken_mint(req: *const bpftoken_request, out: *mut bpftoken_grant) -> c_int {
    let run = AssertUnwindSafe(|| {
        if !out.is_null() {
            // SAFETY: a non-NULL out starts with its size_t sz.
            let sz = unsafe { out.cast::<usize>().read_unaligned() };
            if sz < size_of::<usize>() {
                return mint::fail_arg(&ArgError::SizeTooSmall { what: "out", sz });
            }
        }
        let request = if req.is_null() {
            None
        } else {
            // SAFETY: the header's contract for a non-NULL req.
            match unsafe { read_request(req) } {
                Ok(r) => Some(r),
                Err(e) => return mint::fail_arg(&e),
            }
        };
        match mint::mint(request.as_ref()) {
            Ok((fd, d)) => {
                if !out.is_null() {
                    let grant =
                        bpftoken_grant { sz: 0, cmds: d.cmds, maps: d.maps, progs: d.progs, attachs: d.attachs };
                    // SAFETY: the header's contract for a non-NULL out.
                    unsafe { write_grant(out, &grant) };
                }
                fd
            }
            Err(neg_errno) => neg_errno,
        }
    });
    catch_unwind(run).unwrap_or_else(|_| {
        mint::set_last("bpftoken: internal error (a panic was caught at the C boundary)", 0);
        -libc::EIO
    })
}

/// A C string argument: `None` for NULL, else its text (must be UTF-8).
///
/// # Safety
/// `s` is NULL or a valid NUL-terminated string.
unsafe fn text(s: *const c_char, what: &str) -> Result<Option<String>, i32> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract for a non-NULL string.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map(|t| Some(t.to_owned())).map_err(|_| {
        mint::set_last(&format!("{what} is not valid UTF-8"), 0);
        -libc::EINVAL
    })
}

/// A required C string argument.
///
/// # Safety
/// As [`text`].
unsafe fn required(s: *const c_char, what: &str) -> Result<String, i32> {
    // SAFETY: passed on.
    unsafe { text(s, what) }?.ok_or_else(|| {
        mint::set_last(&format!("{what} is NULL"), 0);
        -libc::EINVAL
    })
}

/// Run `f` without letting a panic cross into C.
fn guarded(f: impl FnOnce() -> Result<c_int, c_int>) -> c_int {
    catch_unwind(AssertUnwindSafe(|| f().unwrap_or_else(|neg| neg))).unwrap_or_else(|_| {
        mint::set_last("bpftoken: internal error (a panic was caught at the C boundary)", 0);
        -libc::EIO
    })
}

/// `int bpftoken_tracepoint_id(const char *socket_path, const char *category, const char *name)`
///
/// # Safety
/// Each argument NULL (socket_path only) or a valid NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bpftoken_tracepoint_id(
    socket_path: *const c_char,
    category: *const c_char,
    name: *const c_char,
) -> c_int {
    guarded(|| {
        // SAFETY: the header's contract for each string.
        let socket = unsafe { text(socket_path, "socket_path") }?.map(PathBuf::from);
        // SAFETY: as above.
        let category = unsafe { required(category, "category") }?;
        // SAFETY: as above.
        let name = unsafe { required(name, "name") }?;
        Ok(crate::trace::tracepoint_id(socket, &category, &name))
    })
}

/// `int bpftoken_open_tracepoint(const char *socket_path, const char *category, const char *name)`
///
/// # Safety
/// As [`bpftoken_tracepoint_id`].
#[no_mangle]
pub unsafe extern "C" fn bpftoken_open_tracepoint(
    socket_path: *const c_char,
    category: *const c_char,
    name: *const c_char,
) -> c_int {
    guarded(|| {
        // SAFETY: the header's contract for each string.
        let socket = unsafe { text(socket_path, "socket_path") }?.map(PathBuf::from);
        // SAFETY: as above.
        let category = unsafe { required(category, "category") }?;
        // SAFETY: as above.
        let name = unsafe { required(name, "name") }?;
        let target = bpftoken_client::TraceTarget::Tracepoint { category, name };
        Ok(crate::trace::open_perf_event(socket, &target, None))
    })
}

/// `int bpftoken_open_kprobe(const char *socket_path, const char *symbol, unsigned long long offset, int retprobe)`
///
/// # Safety
/// `socket_path` NULL or a valid string, `symbol` a valid string.
#[no_mangle]
pub unsafe extern "C" fn bpftoken_open_kprobe(
    socket_path: *const c_char,
    symbol: *const c_char,
    offset: u64,
    retprobe: c_int,
) -> c_int {
    guarded(|| {
        // SAFETY: the header's contract for each string.
        let socket = unsafe { text(socket_path, "socket_path") }?.map(PathBuf::from);
        // SAFETY: as above.
        let symbol = unsafe { required(symbol, "symbol") }?;
        let target = bpftoken_client::TraceTarget::Kprobe { symbol, offset, retprobe: retprobe != 0 };
        Ok(crate::trace::open_perf_event(socket, &target, None))
    })
}

/// `int bpftoken_open_uprobe(const char *socket_path, const char *binary, unsigned long long offset, int retprobe, int pid)`
///
/// # Safety
/// `socket_path` NULL or a valid string, `binary` a valid string.
#[no_mangle]
pub unsafe extern "C" fn bpftoken_open_uprobe(
    socket_path: *const c_char,
    binary: *const c_char,
    offset: u64,
    retprobe: c_int,
    pid: c_int,
) -> c_int {
    guarded(|| {
        // SAFETY: the header's contract for each string.
        let socket = unsafe { text(socket_path, "socket_path") }?.map(PathBuf::from);
        // SAFETY: as above.
        let path = unsafe { required(binary, "binary") }?;
        let target = bpftoken_client::TraceTarget::Uprobe { path, offset, retprobe: retprobe != 0 };
        Ok(crate::trace::open_perf_event(socket, &target, (pid >= 0).then_some(pid)))
    })
}

/// `const char *bpftoken_last_error(void)`
#[no_mangle]
pub extern "C" fn bpftoken_last_error() -> *const c_char {
    catch_unwind(mint::last_error).unwrap_or(c"".as_ptr())
}

/// `int bpftoken_last_refusal(void)`
#[no_mangle]
pub extern "C" fn bpftoken_last_refusal() -> c_int {
    catch_unwind(mint::last_refusal).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: bpftoken_last_error never returns NULL and the string
        // lives until this thread's next bpftoken_mint.
        unsafe { CStr::from_ptr(bpftoken_last_error()) }.to_string_lossy().into_owned()
    }

    fn request(socket: &CStr) -> bpftoken_request {
        bpftoken_request { sz: size_of::<bpftoken_request>(), socket_path: socket.as_ptr(), ..EMPTY_REQUEST }
    }

    #[test]
    fn a_request_without_its_size_is_einval() {
        let req = bpftoken_request { sz: 4, ..request(c"/nonexistent") };
        // SAFETY: req is a valid request of this version.
        assert_eq!(unsafe { bpftoken_mint(&req, std::ptr::null_mut()) }, -libc::EINVAL);
        assert_eq!(last_error(), "req->sz is 4, smaller than the sz field itself");
        let mut out = bpftoken_grant { sz: 0, cmds: 0, maps: 0, progs: 0, attachs: 0 };
        // SAFETY: out is a valid grant struct.
        assert_eq!(unsafe { bpftoken_mint(std::ptr::null(), &mut out) }, -libc::EINVAL);
        assert_eq!(last_error(), "out->sz is 0, smaller than the sz field itself");
    }

    #[test]
    fn a_newer_callers_extra_fields_must_be_zero() {
        #[repr(C)]
        struct Newer {
            base: bpftoken_request,
            future: u64,
        }
        let mut newer = Newer { base: request(c"/nonexistent/socket"), future: 0 };
        newer.base.sz = size_of::<Newer>();
        // SAFETY: newer.base.sz bytes are readable at &newer.
        let ret = unsafe { bpftoken_mint(std::ptr::from_ref(&newer).cast(), std::ptr::null_mut()) };
        assert_eq!(ret, -libc::ENOENT, "{}", last_error());
        newer.future = 1;
        // SAFETY: as above.
        let ret = unsafe { bpftoken_mint(std::ptr::from_ref(&newer).cast(), std::ptr::null_mut()) };
        assert_eq!(ret, -libc::E2BIG);
        assert_eq!(last_error(), "req->sz is 64, larger than this library's 56, and the bytes beyond are not zero");
    }

    #[test]
    fn unknown_flags_are_einval_and_reserved_must_be_zero() {
        let req = bpftoken_request { flags: 1 << 4, ..request(c"/nonexistent") };
        // SAFETY: req is a valid request of this version.
        assert_eq!(unsafe { bpftoken_mint(&req, std::ptr::null_mut()) }, -libc::EINVAL);
        assert_eq!(last_error(), "req->flags has unknown bits 0x10");
        let req = bpftoken_request { reserved: 1, ..request(c"/nonexistent") };
        // SAFETY: as above.
        assert_eq!(unsafe { bpftoken_mint(&req, std::ptr::null_mut()) }, -libc::EINVAL);
        assert_eq!(last_error(), "req->reserved must be zero");
        assert_eq!(bpftoken_last_refusal(), 0);
    }

    #[test]
    fn an_older_callers_request_leaves_the_socket_path_unset() {
        // A caller compiled before socket_path existed: the library must not
        // read it (here it would point nowhere valid).
        let mut req = request(c"/nonexistent");
        req.socket_path = std::ptr::dangling::<c_char>();
        req.sz = offset_of!(bpftoken_request, socket_path);
        // SAFETY: req.sz bytes are readable; the library reads no further.
        let r = unsafe { read_request(&req) }.expect("valid");
        assert_eq!(r.socket, None);
    }
}
