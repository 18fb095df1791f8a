//! The client's only unsafe code: raw syscalls with no safe binding, each
//! behind a safe wrapper.
#![allow(unsafe_code)]

use std::io;

/// `BPF_OBJ_GET_INFO_BY_FD` from `include/uapi/linux/bpf.h`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `struct bpf_token_info` (Linux 6.17+).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct BpfTokenInfo {
    pub allowed_cmds: u64,
    pub allowed_maps: u64,
    pub allowed_progs: u64,
    pub allowed_attachs: u64,
}

const INFO_LEN: u32 = 32;
const _: () = assert!(std::mem::size_of::<BpfTokenInfo>() == INFO_LEN as usize);

/// The `info` member of `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Default)]
struct ObjInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a token. Kernels before 6.17 answer
/// EINVAL for tokens. Takes an fd number: the call only reads the object
/// behind it, and a number that is not open gives EBADF.
pub fn token_info(fd: i32) -> io::Result<BpfTokenInfo> {
    let mut info = BpfTokenInfo::default();
    let mut attr =
        ObjInfoAttr { bpf_fd: fd.cast_unsigned(), info_len: INFO_LEN, info: std::ptr::addr_of_mut!(info) as u64 };
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size we
    // pass; the kernel writes at most info_len bytes to `info`, which lives
    // until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<ObjInfoAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// `BPF_TOKEN_CREATE` from `include/uapi/linux/bpf.h`.
const BPF_TOKEN_CREATE: libc::c_long = 36;

/// `bpf(BPF_TOKEN_CREATE)` with bpffs fd -1: the errno it fails with, or
/// None if it did not fail (it cannot succeed; anything returned is closed).
pub fn token_create_from_bad_fd() -> Option<i32> {
    let mut attr = [0u32, u32::MAX];
    // SAFETY: attr is a valid bpf_attr prefix for BPF_TOKEN_CREATE (flags 0,
    // bpffs_fd -1) of the size passed; the kernel only reads it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_TOKEN_CREATE, attr.as_mut_ptr(), 8usize) };
    if r < 0 {
        return io::Error::last_os_error().raw_os_error();
    }
    if let Ok(fd) = i32::try_from(r) {
        // SAFETY: the kernel returned a new fd that nothing else owns.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    None
}

/// Take ownership of fd number `fd`, which our parent left open for us and
/// named on the command line, so that dropping it closes it. Refuses the
/// standard streams and a number that is not open. Call it once per fd,
/// before anything else could own that number.
pub fn adopt_inherited_fd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: borrowed only for this call, which checks that it is open.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the fd is open, was inherited for us to own, and nothing
    // else in this process owns that number (the caller's contract).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `unshare(CLONE_NEWUSER)` or `unshare(CLONE_NEWNS)`. Safe: neither flag
/// touches the fd table, which is what makes `unshare` unsafe in general.
pub fn unshare(ns: Namespace) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let flags = match ns {
        Namespace::User => UnshareFlags::NEWUSER,
        Namespace::Mount => UnshareFlags::NEWNS,
    };
    // SAFETY: no CLONE_FILES, so every fd stays valid for every thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }?;
    Ok(())
}

/// The namespaces [`unshare`] may create.
#[derive(Debug, Clone, Copy)]
pub enum Namespace {
    User,
    Mount,
}
