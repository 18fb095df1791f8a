//! Raw syscalls of the test crate (its only unsafe code): the `bpf(2)`
//! calls the probe makes with or without a token, `kill(-1, sig)`, and
//! `bpftoken_mint()` of `libbpftoken.so` loaded with `dlopen` (the bench).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_TOKEN_CREATE: libc::c_long = 36;
const BPF_F_TOKEN_FD: u32 = 1 << 16;

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised `union bpf_attr` of the length
    // passed, laid out for `cmd` by the callers below.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn put_u32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn token_raw(token: Option<BorrowedFd<'_>>) -> u32 {
    token.map_or(0, |t| u32::try_from(t.as_raw_fd()).unwrap_or(0))
}

/// Key size, value size and max entries that make a valid map of `map_type`.
fn map_shape(map_type: u32) -> (u32, u32, u32) {
    match map_type {
        27 | 31 => (0, 0, 4096), // ringbuf, user_ringbuf: page-sized
        22 | 23 => (0, 8, 1),    // queue, stack: no key
        30 => (0, 8, 1),         // bloom_filter
        _ => (4, 8, 1),
    }
}

/// BPF_MAP_CREATE of a small map of `map_type`.
pub fn map_create(map_type: u32, token: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    let mut a = [0u8; 128];
    let (key, value, max) = map_shape(map_type);
    put_u32(&mut a, 0, map_type);
    put_u32(&mut a, 4, key);
    put_u32(&mut a, 8, value);
    put_u32(&mut a, 12, max);
    if token.is_some() {
        put_u32(&mut a, 16, BPF_F_TOKEN_FD); // map_flags
        put_u32(&mut a, 76, token_raw(token)); // map_token_fd
    }
    bpf(BPF_MAP_CREATE, &mut a)
}

/// BPF_PROG_LOAD of `r0 = 0; exit` as `prog_type`, expected attach type 0.
pub fn prog_load(prog_type: u32, token: Option<BorrowedFd<'_>>) -> io::Result<OwnedFd> {
    static INSNS: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    static LICENSE: &[u8] = b"GPL\0";
    let mut a = [0u8; 160];
    put_u32(&mut a, 0, prog_type);
    put_u32(&mut a, 4, 2);
    put_u64(&mut a, 8, INSNS.as_ptr() as u64);
    put_u64(&mut a, 16, LICENSE.as_ptr() as u64);
    if token.is_some() {
        put_u32(&mut a, 44, BPF_F_TOKEN_FD); // prog_flags
        put_u32(&mut a, 144, token_raw(token)); // prog_token_fd
    }
    bpf(BPF_PROG_LOAD, &mut a)
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PERF_EVENT` attach type.
const BPF_PERF_EVENT: u32 = 41;
/// `PERF_EVENT_IOC_ENABLE` = `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

/// BPF_LINK_CREATE of `prog` on the perf event `event` (attach type
/// BPF_PERF_EVENT, as libbpf attaches tracepoint, kprobe and uprobe
/// programs), then PERF_EVENT_IOC_ENABLE; the link, which holds the
/// attachment.
pub fn attach_perf_event(prog: BorrowedFd<'_>, event: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut a = [0u8; 64];
    put_u32(&mut a, 0, u32::try_from(prog.as_raw_fd()).unwrap_or(0)); // prog_fd
    put_u32(&mut a, 4, u32::try_from(event.as_raw_fd()).unwrap_or(0)); // target_fd
    put_u32(&mut a, 8, BPF_PERF_EVENT); // attach_type
    let link = bpf(BPF_LINK_CREATE, &mut a)?;
    // SAFETY: an ioctl without argument on an fd we hold.
    let ret = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(link)
}

/// The program's `run_cnt` (counted while kernel.bpf_stats_enabled is 1).
pub fn prog_run_count(prog: BorrowedFd<'_>) -> io::Result<u64> {
    let mut info = [0u8; 208];
    let mut a = [0u8; 16];
    put_u32(&mut a, 0, u32::try_from(prog.as_raw_fd()).unwrap_or(0)); // bpf_fd
    put_u32(&mut a, 4, 208); // info_len
    put_u64(&mut a, 8, info.as_mut_ptr() as u64); // info
                                                  // SAFETY: `a` points at `info`, valid for writes of the 208 bytes given.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, a.as_mut_ptr(), a.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(info[200..208].try_into().unwrap_or_default()))
}

/// BPF_TOKEN_CREATE from the bpffs open as `bpffs` (a directory fd of
/// its root): a token of that bpffs's user namespace, which the caller
/// must be in.
pub fn token_create(bpffs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut a = [0u8; 8];
    put_u32(&mut a, 0, 0); // flags
    put_u32(&mut a, 4, u32::try_from(bpffs.as_raw_fd()).unwrap_or(u32::MAX)); // bpffs_fd
    bpf(BPF_TOKEN_CREATE, &mut a)
}

/// Adopt an fd number inherited from the parent (BPF_TOKEN_FD).
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    rustix::io::fcntl_getfd(
        // SAFETY: only used for the duration of this call to check the fd is open.
        unsafe { BorrowedFd::borrow_raw(fd) },
    )?;
    // SAFETY: the fd is open and was handed to this process to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `kill(-1, sig)`: signal every process the caller may signal.
pub fn kill_all(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes no memory.
    if unsafe { libc::kill(-1, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignore `sig` in this process.
pub fn ignore_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_IGN is a valid disposition; no handler code is installed.
    if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `NS_GET_OWNER_UID` on a user-namespace fd.
pub fn ns_owner_uid(ns: &impl AsRawFd) -> io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID (_IO(0xb7, 4)) writes one uid_t.
    if unsafe { libc::ioctl(ns.as_raw_fd(), 0xb704, &raw mut uid) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(uid)
}

/// What an attacker tries on a process of its own uid: PTRACE_SEIZE (then
/// detach) and process_vm_readv of one byte. Returns which succeeded.
pub fn try_hijack(pid: i32) -> (bool, bool) {
    // SAFETY: ptrace(PTRACE_SEIZE) with null addr/data; no memory is passed.
    let seized = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    } == 0;
    if seized {
        // SAFETY: as above, undoing the seize.
        unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
    }
    let mut byte = [0u8; 1];
    let local = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // The address is irrelevant: permission is checked before any read.
    let remote = libc::iovec { iov_base: 0x400000 as *mut libc::c_void, iov_len: 1 };
    // SAFETY: one local iovec of 1 valid byte; the remote side is only
    // read by the kernel if permitted, and then into `byte`.
    let read = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    let denied = read < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    (seized, !denied && read >= 0)
}

/// `struct bpftoken_request` of `bpftoken.h`, as a C caller lays it out.
#[repr(C)]
struct CapiRequest {
    sz: usize,
    cmds: u64,
    maps: u64,
    progs: u64,
    attachs: u64,
    flags: u32,
    reserved: u32,
    socket_path: *const libc::c_char,
}

type CapiMint = unsafe extern "C" fn(*const CapiRequest, *mut libc::c_void) -> libc::c_int;

/// `bpftoken_mint()` of `libbpftoken.so`, loaded with `dlopen` as a C
/// program links it.
#[derive(Debug, Clone, Copy)]
pub struct Capi {
    mint: CapiMint,
}

impl Capi {
    /// Load `library` (a path to `libbpftoken.so`); it stays loaded.
    pub fn load(library: &std::path::Path) -> Result<Capi, String> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(library.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path; the handle is never closed, so
        // the symbol stays valid.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        if handle.is_null() {
            return Err(format!("cannot load {}", library.display()));
        }
        // SAFETY: a valid handle and a NUL-terminated name.
        let sym = unsafe { libc::dlsym(handle, c"bpftoken_mint".as_ptr()) };
        if sym.is_null() {
            return Err(format!("{} has no bpftoken_mint", library.display()));
        }
        // SAFETY: bpftoken.h declares bpftoken_mint with this signature.
        let mint = unsafe { std::mem::transmute::<*mut libc::c_void, CapiMint>(sym) };
        Ok(Capi { mint })
    }

    /// `bpftoken_mint()` with the default request for the daemon at
    /// `socket`: the token, or the negative errno it returned.
    pub fn mint(&self, socket: &std::ffi::CStr) -> Result<OwnedFd, i32> {
        let req = CapiRequest {
            sz: std::mem::size_of::<CapiRequest>(),
            cmds: 0,
            maps: 0,
            progs: 0,
            attachs: 0,
            flags: 0,
            reserved: 0,
            socket_path: socket.as_ptr(),
        };
        // SAFETY: `req` is a whole request valid for the call; `out` may be
        // NULL (bpftoken.h).
        let fd = unsafe { (self.mint)(&raw const req, std::ptr::null_mut()) };
        if fd < 0 {
            return Err(fd);
        }
        // SAFETY: a non-negative return is a new fd the caller owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
