//! Use a BPF token with libbpf's low-level API, through `libbpf-sys` (which
//! builds a current libbpf, 1.7, from source).
//!
//! Mints a token from bpftokend (everything the policy grants; the socket
//! is `BPFTOKEN_SOCKET` or the default), then calls libbpf's
//! `bpf_map_create()` and `bpf_prog_load()` with `opts.token_fd` set and
//! `BPF_F_TOKEN_FD` in the flags (libbpf passes both through; it does not
//! set the flag for you at this level).
//!
//! The token needs cmds `map_create,prog_load`, maps `array`, progs
//! `socket_filter`, and attachs `cgroup_inet_ingress` (the load's expected
//! attach type is 0, which is `cgroup_inet_ingress`).
//!
//! ```sh
//! cargo build -p bpftoken --example libbpf_sys
//! target/debug/examples/libbpf_sys
//! ```
//!
//! Prints one line per step; on failure, the step and its errno on stderr,
//! and exits 1. (libbpf's object API, `bpf_object__open_file()`, cannot take
//! a token fd: it creates its own token from a delegated bpffs, see
//! `LIBBPF_BPF_TOKEN_PATH` and `bpftoken run`.)

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;

use bpftoken::{Client, MintRequest};

fn main() -> ExitCode {
    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail("connect", &e),
    };
    let token = match client.mint(&MintRequest::default()) {
        Ok(t) => t,
        Err(e) => return fail("mint", &e),
    };
    println!("minted token fd {} with {}", token.as_fd().as_raw_fd(), token.granted());

    // Kept open until the end, so the program's fd is a new number.
    let _map = match libbpf::map_create_array(token.as_fd()) {
        Ok(map) => {
            println!("bpf_map_create(BPF_MAP_TYPE_ARRAY) with opts.token_fd: map fd {}", map.as_raw_fd());
            map
        }
        Err(e) => return fail_errno("bpf_map_create(BPF_MAP_TYPE_ARRAY) with opts.token_fd", &e),
    };
    match libbpf::prog_load_socket_filter(token.as_fd()) {
        Ok(prog) => {
            println!("bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with opts.token_fd: prog fd {}", prog.as_raw_fd())
        }
        Err(e) => return fail_errno("bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER) with opts.token_fd", &e),
    }
    ExitCode::SUCCESS
}

fn fail(step: &str, e: &bpftoken::Error) -> ExitCode {
    eprintln!("libbpf_sys: {step}: {e}");
    ExitCode::FAILURE
}

fn fail_errno(step: &str, e: &io::Error) -> ExitCode {
    let n = e.raw_os_error().unwrap_or(0);
    let name = match n {
        libc::EPERM => "EPERM".to_owned(),
        libc::EACCES => "EACCES".to_owned(),
        libc::EINVAL => "EINVAL".to_owned(),
        libc::E2BIG => "E2BIG".to_owned(),
        n => format!("errno {n}"),
    };
    eprintln!("libbpf_sys: {step}: {name} ({e})");
    ExitCode::FAILURE
}

/// Safe wrappers over the two libbpf calls: the only unsafe code of the
/// example.
mod libbpf {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    use libbpf_sys as sys;

    /// libbpf returns a new fd, or -errno (and sets errno).
    fn fd_or_errno(ret: i32) -> io::Result<OwnedFd> {
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        // SAFETY: libbpf returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(ret) })
    }

    fn token_fd(token: BorrowedFd<'_>) -> u32 {
        u32::try_from(token.as_raw_fd()).expect("an open fd is not negative")
    }

    /// `bpf_map_create(BPF_MAP_TYPE_ARRAY, "bpftoken_ex", 4, 8, 1, &opts)`.
    pub fn map_create_array(token: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let opts = sys::bpf_map_create_opts {
            sz: std::mem::size_of::<sys::bpf_map_create_opts>() as sys::size_t,
            map_flags: sys::BPF_F_TOKEN_FD,
            token_fd: token_fd(token),
            ..Default::default()
        };
        // SAFETY: the name is NUL-terminated, `opts` is a fully initialised
        // bpf_map_create_opts whose `sz` is its size; libbpf reads both
        // only during the call.
        let ret = unsafe { sys::bpf_map_create(sys::BPF_MAP_TYPE_ARRAY, c"bpftoken_ex".as_ptr(), 4, 8, 1, &opts) };
        fd_or_errno(ret)
    }

    /// `bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, ...)` of `r0 = 0; exit`,
    /// expected attach type 0.
    pub fn prog_load_socket_filter(token: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let insn = |code: u8| sys::bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: sys::bpf_insn::new_bitfield_1(0, 0), // dst r0, src r0
            off: 0,
            imm: 0,
        };
        // BPF_ALU64|BPF_MOV|BPF_K r0, 0 ; BPF_JMP|BPF_EXIT
        let insns = [insn(0xb7), insn(0x95)];
        let mut opts = sys::bpf_prog_load_opts {
            sz: std::mem::size_of::<sys::bpf_prog_load_opts>() as sys::size_t,
            prog_flags: sys::BPF_F_TOKEN_FD,
            token_fd: token_fd(token),
            ..Default::default()
        };
        // SAFETY: name and license are NUL-terminated, `insns` holds the
        // count passed, `opts` is fully initialised with `sz` its size;
        // libbpf reads them only during the call (no log buffer is set).
        let ret = unsafe {
            sys::bpf_prog_load(
                sys::BPF_PROG_TYPE_SOCKET_FILTER,
                c"bpftoken_ex".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr(),
                insns.len() as sys::size_t,
                &mut opts,
            )
        };
        fd_or_errno(ret)
    }
}
