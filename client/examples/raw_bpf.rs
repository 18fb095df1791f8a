//! Use a BPF token with raw `bpf(2)` calls: no libbpf.
//!
//! Mints a token from bpftokend (everything the policy grants; the socket
//! is `BPFTOKEN_SOCKET` or the default), then creates an array map with
//! `map_token_fd` and loads a two-instruction socket filter with
//! `prog_token_fd`, setting `BPF_F_TOKEN_FD` in the flags of each.
//!
//! The token needs cmds `map_create,prog_load`, maps `array`, progs
//! `socket_filter`, and attachs `cgroup_inet_ingress`: the load's expected
//! attach type is 0, which is `cgroup_inet_ingress`.
//!
//! ```sh
//! cargo build -p bpftoken --example raw_bpf
//! target/debug/examples/raw_bpf
//! ```
//!
//! Prints one line per step; on failure, the step and its errno on stderr,
//! and exits 1.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::process::ExitCode;

use bpftoken::{Client, MintRequest};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

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
    let _map = match bpf::map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, token.as_fd()) {
        Ok(map) => {
            println!("BPF_MAP_CREATE array with the token: map fd {}", map.as_raw_fd());
            map
        }
        Err(e) => return fail_errno("BPF_MAP_CREATE array with the token", &e),
    };
    match bpf::prog_load(BPF_PROG_TYPE_SOCKET_FILTER, token.as_fd()) {
        Ok(prog) => println!("BPF_PROG_LOAD socket_filter with the token: prog fd {}", prog.as_raw_fd()),
        Err(e) => return fail_errno("BPF_PROG_LOAD socket_filter with the token", &e),
    }
    ExitCode::SUCCESS
}

fn fail(step: &str, e: &bpftoken::Error) -> ExitCode {
    eprintln!("raw_bpf: {step}: {e}");
    ExitCode::FAILURE
}

fn fail_errno(step: &str, e: &io::Error) -> ExitCode {
    let n = e.raw_os_error().unwrap_or(0);
    eprintln!("raw_bpf: {step}: {} ({e})", errno_name(n));
    ExitCode::FAILURE
}

fn errno_name(n: i32) -> String {
    match n {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::EBADF => "EBADF".into(),
        libc::ENOMEM => "ENOMEM".into(),
        n => format!("errno {n}"),
    }
}

/// The `bpf(2)` calls, with `union bpf_attr` spelled out as the two
/// structs these commands use. The only unsafe code of the example.
mod bpf {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_PROG_LOAD: libc::c_long = 5;
    /// `map_flags`/`prog_flags`: the `*_token_fd` field holds a token.
    const BPF_F_TOKEN_FD: u32 = 1 << 16;

    /// `union bpf_attr` for BPF_MAP_CREATE, up to `map_token_fd` (6.9).
    /// Every byte is a field: no padding the kernel could read as garbage.
    #[repr(C)]
    #[derive(Default)]
    #[allow(dead_code)] // the kernel reads the fields
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        map_ifindex: u32,
        btf_fd: u32,
        btf_key_type_id: u32,
        btf_value_type_id: u32,
        btf_vmlinux_value_type_id: u32,
        map_extra: u64,
        value_type_btf_obj_fd: i32,
        map_token_fd: i32,
    }

    /// `union bpf_attr` for BPF_PROG_LOAD, up to `prog_token_fd` (6.9) and
    /// `fd_array_cnt` (6.14; zero is what older kernels expect there).
    #[repr(C)]
    #[derive(Default)]
    #[allow(dead_code)] // the kernel reads the fields
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
        prog_btf_fd: u32,
        func_info_rec_size: u32,
        func_info: u64,
        func_info_cnt: u32,
        line_info_rec_size: u32,
        line_info: u64,
        line_info_cnt: u32,
        attach_btf_id: u32,
        attach_prog_fd: u32,
        core_relo_cnt: u32,
        fd_array: u64,
        core_relos: u64,
        core_relo_rec_size: u32,
        log_true_size: u32,
        prog_token_fd: i32,
        fd_array_cnt: u32,
    }

    const _: () = assert!(std::mem::size_of::<MapCreateAttr>() == 80);
    const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 152);

    fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
        let size = std::mem::size_of::<T>();
        // SAFETY: `attr` is one of the repr(C) attr structs above, fully
        // initialised, and `size` is its size; every pointer in it points
        // to data that outlives the call.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// BPF_MAP_CREATE of a map named "bpftoken_ex" with the token.
    pub fn map_create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        token: BorrowedFd<'_>,
    ) -> io::Result<OwnedFd> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_flags: BPF_F_TOKEN_FD,
            map_token_fd: token.as_raw_fd(),
            ..MapCreateAttr::default()
        };
        attr.map_name[..11].copy_from_slice(b"bpftoken_ex");
        sys_bpf(BPF_MAP_CREATE, &mut attr)
    }

    /// BPF_PROG_LOAD of `r0 = 0; exit` (a socket filter that drops every
    /// packet) with the token; expected attach type 0.
    pub fn prog_load(prog_type: u32, token: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        // BPF_ALU64|BPF_MOV|BPF_K r0, 0 ; BPF_JMP|BPF_EXIT
        static INSNS: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        static LICENSE: &[u8] = b"GPL\0";
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: 2,
            insns: INSNS.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_flags: BPF_F_TOKEN_FD,
            prog_token_fd: token.as_raw_fd(),
            ..ProgLoadAttr::default()
        };
        attr.prog_name[..11].copy_from_slice(b"bpftoken_ex");
        sys_bpf(BPF_PROG_LOAD, &mut attr)
    }
}
