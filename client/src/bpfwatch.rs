//! Watching a command's `bpf()` calls for `bpftoken run --explain`
//! (docs/usage.md, "Why a command failed"): which calls the kernel
//! refused, what each asked for, and whether it carried a token.
//!
//! CMD runs under a seccomp filter whose `SECCOMP_RET_TRACE` stops it at
//! every `bpf()` call and nowhere else (`supervise::filter`), and this
//! process ptraces CMD and every descendant (`PTRACE_SEIZE` before exec,
//! forks and clones followed). At each stop the call's command and the
//! part of its `union bpf_attr` that names its types and its token flag
//! are read (`process_vm_readv`); the call then runs to its end
//! (`PTRACE_SYSCALL`) and, if it failed, is recorded with its errno.
//! Nothing is changed: every call runs exactly as it would unwatched.
//! Signals are passed on, group-stops kept (`PTRACE_LISTEN`).

use std::collections::HashMap;
use std::io;

use crate::sys::{self, Resume, SyscallStop, TaskState};

/// `BPF_F_TOKEN_FD`: the call passes a token in its `*_token_fd` field.
pub const BPF_F_TOKEN_FD: u32 = 1 << 16;

/// The `bpf_cmd` values this module looks into.
pub mod cmd {
    pub const MAP_CREATE: u32 = 0;
    pub const PROG_LOAD: u32 = 5;
    pub const BTF_LOAD: u32 = 18;
    pub const BTF_GET_FD_BY_ID: u32 = 19;
}

/// The longest program among libbpf 1.5's feature probes
/// (`probe_kern_probe_read_kernel`).
const MAX_PROBE_INSNS: u32 = 6;
/// The names libbpf's feature probes give their programs and maps.
const PROBE_PROG_NAMES: [&[u8]; 3] = [b"", b"libbpf_nametest", b"det_arg_ctx"];
const PROBE_MAP_NAMES: [&[u8]; 3] = [b"libbpf_global", b"libbpf_mmap", b"libbpf_det_bind"];
/// Bytes of `union bpf_attr` read: up to `prog_token_fd` (offset 144).
const ATTR_READ: usize = 148;
/// `PTRACE_EVENT_STOP` (group-stops and first stops of `PTRACE_SEIZE`d
/// tasks; not in libc's glibc constants).
const PTRACE_EVENT_STOP: i32 = 128;
/// Refused calls kept (distinct ones; a tool retrying forever stays small).
const MAX_KEPT: usize = 64;

/// One `bpf()` call, as far as its token matters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BpfCall {
    /// The `bpf_cmd`.
    pub cmd: u32,
    /// `BPF_MAP_CREATE`: the map type.
    pub map_type: Option<u32>,
    /// `BPF_PROG_LOAD`: the program type and its expected attach type.
    pub prog_type: Option<u32>,
    pub attach_type: Option<u32>,
    /// The call set `BPF_F_TOKEN_FD` (only commands that take a token can).
    pub with_token: bool,
    /// The call has the shape of a libbpf (or bpftool) feature probe: a
    /// program load of at most 6 instructions with no `kern_version`,
    /// named nothing, `libbpf_nametest` or `det_arg_ctx`, or a map named
    /// `libbpf_global`, `libbpf_mmap` or `libbpf_det_bind` (libbpf's
    /// `src/features.c`). A refused probe only makes libbpf go on without
    /// that feature. An object's programs are never taken for probes:
    /// libbpf loads them with the running kernel's version (and without
    /// a name where its tokenless name probe failed).
    pub feature_probe: bool,
}

/// A call the kernel failed, and its errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCall {
    pub call: BpfCall,
    pub errno: i32,
}

fn u32_at(attr: &[u8], at: usize) -> Option<u32> {
    attr.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// What a `bpf(cmd, attr)` call asks for: `attr` is the first bytes of its
/// `union bpf_attr` (as many as the caller passed).
pub fn decode(bpf_cmd: u32, attr: &[u8]) -> BpfCall {
    // Where each token-taking command keeps its flags (offsets in
    // include/uapi/linux/bpf.h: map_flags, prog_flags, btf_flags,
    // open_flags).
    let flags_at = match bpf_cmd {
        cmd::MAP_CREATE => Some(16),
        cmd::PROG_LOAD => Some(44),
        cmd::BTF_LOAD => Some(32),
        cmd::BTF_GET_FD_BY_ID => Some(8),
        _ => None,
    };
    let with_token = flags_at.and_then(|at| u32_at(attr, at)).is_some_and(|f| f & BPF_F_TOKEN_FD != 0);
    let map_type = (bpf_cmd == cmd::MAP_CREATE).then(|| u32_at(attr, 0)).flatten();
    let (prog_type, attach_type) = if bpf_cmd == cmd::PROG_LOAD {
        // A caller passing a shorter attr leaves expected_attach_type 0.
        (u32_at(attr, 0), Some(u32_at(attr, 68).unwrap_or(0)))
    } else {
        (None, None)
    };
    // insn_cnt is at offset 4, kern_version at 40, prog_name at 48,
    // map_name at 28.
    let name = |at: usize| attr.get(at..at + 16).map(|n| n.split(|b| *b == 0).next().unwrap_or_default());
    let feature_probe = match bpf_cmd {
        cmd::PROG_LOAD => {
            u32_at(attr, 4).is_some_and(|n| (1..=MAX_PROBE_INSNS).contains(&n))
                && u32_at(attr, 40).unwrap_or(0) == 0
                && name(48).is_none_or(|n| PROBE_PROG_NAMES.contains(&n))
        }
        cmd::MAP_CREATE => name(28).is_some_and(|n| PROBE_MAP_NAMES.contains(&n)),
        _ => false,
    };
    BpfCall { cmd: bpf_cmd, map_type, prog_type, attach_type, with_token, feature_probe }
}

/// Read a stopped tracee's `bpf(cmd, attr, size)` call.
fn read_call(tid: i32, args: &[u64; 6]) -> BpfCall {
    let bpf_cmd = u32::try_from(args[0] & 0xffff_ffff).unwrap_or(u32::MAX);
    let size = usize::try_from(args[2] & 0xffff_ffff).unwrap_or(0).min(ATTR_READ);
    let mut attr = vec![0u8; size];
    let n = sys::read_process_memory(tid, args[1], &mut attr).unwrap_or(0);
    attr.truncate(n);
    decode(bpf_cmd, &attr)
}

/// What [`watch`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// CMD's wait status: its exit code, or 128 + the signal that killed it.
    pub status: i32,
    /// The distinct `bpf()` calls that failed, in the order they first did.
    pub refused: Vec<RefusedCall>,
}

/// Ptrace `main` (already seized with `sys::ptrace_seize`, running under
/// a `RET_TRACE` filter for `bpf()`) and its descendants until none is
/// left; record the `bpf()` calls that fail.
pub fn watch(main: i32) -> io::Result<Watched> {
    let mut status = 1;
    let mut refused: Vec<RefusedCall> = Vec::new();
    // Calls between their seccomp stop and their exit stop, per thread.
    let mut pending: HashMap<i32, BpfCall> = HashMap::new();
    while let Some((tid, state)) = sys::wait_any_task()? {
        let (sig, event) = match state {
            TaskState::Exited(code) | TaskState::Killed(code) => {
                pending.remove(&tid);
                if tid == main {
                    status = if matches!(state, TaskState::Exited(_)) { code } else { 128 + code };
                }
                continue;
            }
            TaskState::Stopped { sig, event } => (sig, event),
        };
        let (how, deliver) = if sig == libc::SIGTRAP | 0x80 {
            // The exit stop of a call stopped at its seccomp stop.
            if let (Some(call), Ok(SyscallStop::Exit(Err(errno)))) =
                (pending.remove(&tid), sys::ptrace_syscall_stop(tid))
            {
                let seen = RefusedCall { call, errno };
                if refused.len() < MAX_KEPT && !refused.contains(&seen) {
                    refused.push(seen);
                }
            }
            (Resume::Continue, 0)
        } else if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_SECCOMP {
            match sys::ptrace_syscall_stop(tid) {
                Ok(SyscallStop::Seccomp { nr, args }) if i64::try_from(nr).ok() == Some(libc::SYS_bpf) => {
                    pending.insert(tid, read_call(tid, &args));
                    (Resume::ToSyscallExit, 0)
                }
                _ => (Resume::Continue, 0),
            }
        } else if event == PTRACE_EVENT_STOP {
            // A group-stop stays one; the first stop of a new tracee goes on.
            let group_stop = matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
            (if group_stop { Resume::Listen } else { Resume::Continue }, 0)
        } else if sig == libc::SIGTRAP && event != 0 {
            // fork, vfork, clone, exec: the new tasks are traced already.
            (Resume::Continue, 0)
        } else {
            // A signal on its way to the tracee: deliver it.
            (Resume::Continue, sig)
        };
        // ESRCH: the tracee died meanwhile; its exit is still to come.
        if let Err(e) = sys::ptrace_resume(tid, how, deliver) {
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(Watched { status, refused })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(fields: &[(usize, u32)]) -> Vec<u8> {
        let mut a = vec![0u8; ATTR_READ];
        for &(at, v) in fields {
            a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        a
    }

    #[test]
    fn map_creates_and_program_loads_are_decoded_with_their_token_flag() {
        let c = decode(cmd::MAP_CREATE, &attr(&[(0, 2), (16, BPF_F_TOKEN_FD)]));
        assert_eq!((c.map_type, c.prog_type, c.with_token), (Some(2), None, true));
        let c = decode(cmd::MAP_CREATE, &attr(&[(0, 27)]));
        assert_eq!((c.map_type, c.with_token), (Some(27), false));
        let c = decode(cmd::PROG_LOAD, &attr(&[(0, 6), (44, BPF_F_TOKEN_FD), (68, 37)]));
        assert_eq!((c.prog_type, c.attach_type, c.with_token), (Some(6), Some(37), true));
        // A short attr: no token flag, attach type 0.
        let c = decode(cmd::PROG_LOAD, &attr(&[(0, 5)])[..48]);
        assert_eq!((c.prog_type, c.attach_type, c.with_token), (Some(5), Some(0), false));
        let c = decode(cmd::BTF_LOAD, &attr(&[(32, BPF_F_TOKEN_FD)]));
        assert!(c.with_token);
        let c = decode(cmd::BTF_GET_FD_BY_ID, &attr(&[(8, BPF_F_TOKEN_FD)]));
        assert!(c.with_token);
        // Commands that take no token never count as passing one.
        let c = decode(11, &attr(&[(8, BPF_F_TOKEN_FD), (16, BPF_F_TOKEN_FD)]));
        assert_eq!((c.cmd, c.with_token, c.map_type, c.prog_type), (11, false, None, None));
    }

    fn named(mut a: Vec<u8>, at: usize, name: &str) -> Vec<u8> {
        a[at..at + name.len()].copy_from_slice(name.as_bytes());
        a
    }

    #[test]
    fn libbpfs_feature_probes_are_told_from_an_objects_programs_and_maps() {
        // Unnamed or probe-named tiny programs, with or without a token.
        assert!(decode(cmd::PROG_LOAD, &attr(&[(0, 1), (4, 2)])).feature_probe);
        assert!(decode(cmd::PROG_LOAD, &attr(&[(0, 5), (4, 6), (44, BPF_F_TOKEN_FD)])).feature_probe);
        assert!(decode(cmd::PROG_LOAD, &named(attr(&[(0, 1), (4, 2)]), 48, "libbpf_nametest")).feature_probe);
        assert!(decode(cmd::MAP_CREATE, &named(attr(&[(0, 2)]), 28, "libbpf_global")).feature_probe);
        // An object's program (named, or with the kernel's version), a
        // longer one, a named map: not probes.
        assert!(!decode(cmd::PROG_LOAD, &named(attr(&[(0, 6), (4, 2)]), 48, "pass")).feature_probe);
        assert!(!decode(cmd::PROG_LOAD, &attr(&[(0, 6), (4, 2), (40, 0x0006_122c)])).feature_probe);
        assert!(!decode(cmd::PROG_LOAD, &attr(&[(0, 1), (4, 7)])).feature_probe);
        assert!(!decode(cmd::PROG_LOAD, &attr(&[(0, 1), (4, 0)])).feature_probe);
        assert!(!decode(cmd::MAP_CREATE, &named(attr(&[(0, 2)]), 28, "x")).feature_probe);
        assert!(!decode(cmd::MAP_CREATE, &attr(&[(0, 2)])).feature_probe);
    }
}
