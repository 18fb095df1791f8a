//! What runs inside a mint child (see [`super`]): it shares the daemon's
//! memory and thread pointer (`clone(CLONE_VM)` without `CLONE_VFORK`)
//! while the thread that cloned it goes on running, so everything here is
//! async-signal-safe: raw system calls only ([`raw`]), no allocation, no
//! lock, no unwinding, no errno. It reads its [`ChildArgs`] through a
//! shared reference and reports through their atomics.

use std::ffi::c_void;
use std::os::fd::RawFd;

use super::MAX_MINT_BATCH;
use crate::sys::fdpass;

// Every token of a batch fits in the message fdpass builds on the stack.
const _: () = assert!(MAX_MINT_BATCH <= fdpass::MAX_STACK_FDS);

/// `BPF_MAP_DELETE_ELEM` and `BPF_TOKEN_CREATE` as raw syscall arguments.
const BPF_MAP_DELETE_ELEM_ARG: usize = 3;
const BPF_TOKEN_CREATE_ARG: usize = 36;

/// Raw system calls for the mint child: it shares our memory and our
/// thread pointer while the thread that cloned it goes on running, so it
/// must not write errno (the cloning thread's TLS), allocate, lock or
/// unwind. Returns the kernel's value: negative errno on failure.
mod raw {
    /// # Safety
    /// The arguments must be valid for system call `nr`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 5]) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller passes valid arguments; `syscall` clobbers
        // rcx and r11 (declared) and touches no stack.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// # Safety
    /// The arguments must be valid for system call `nr`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub unsafe fn syscall(nr: libc::c_long, a: [usize; 5]) -> libc::c_long {
        let ret: libc::c_long;
        // SAFETY: the caller passes valid arguments; `svc 0` returns in x0
        // and touches no stack.
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") nr,
                inlateout("x0") a[0] => ret, in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4],
                options(nostack),
            );
        }
        ret
    }
}

/// Inputs and error report of one mint child. The child reads it through
/// a shared reference while the daemon goes on; the daemon writes the
/// plain fields only before the child starts and reads the atomics.
#[derive(Debug)]
#[repr(C)]
pub(super) struct ChildArgs {
    pub(super) userns: RawFd,
    pub(super) bpffs: RawFd,
    /// The enforcer's per-task record map, or -1: the child clears its own
    /// record (left over by an earlier task with the same tid) before it
    /// creates tokens, so the record then holds exactly its serials.
    pub(super) task_map: RawFd,
    /// The child's end of the socket pair its tokens come back through.
    pub(super) sock: RawFd,
    /// How many tokens to create (1..=MAX_MINT_BATCH).
    pub(super) count: usize,
    /// A positive errno when a step failed.
    pub(super) error: std::sync::atomic::AtomicI32,
    /// Which step failed: 0 none, 1 setns, 2 BPF_TOKEN_CREATE,
    /// 3 sigprocmask, 4 close_range, 5 sendmsg, 6 setgroups,
    /// 7 setresgid/setresuid, 8 prctl(PR_SET_DUMPABLE).
    pub(super) failed_step: std::sync::atomic::AtomicI32,
}

/// Runs in the mint child. Only raw syscalls ([`raw`]): no allocation, no
/// locks, no unwinding, no errno, as it shares our memory with the
/// running daemon.
pub(super) extern "C" fn mint_child_main(arg: *mut c_void) -> libc::c_int {
    use std::sync::atomic::Ordering::Release;
    // SAFETY: `arg` points at the `ChildArgs` that `MintChild` keeps
    // alive, and does not mutate, until this child has been reaped.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    let fail = |ret: libc::c_long, step: i32| {
        args.error.store(i32::try_from(-ret).unwrap_or(libc::EIO), Release);
        args.failed_step.store(step, Release);
        1
    };
    // Block every signal before entering the client's namespace: once in
    // it, the client may signal us (it holds CAP_KILL there), and our
    // handlers are copies of the daemon's (tokio's would report SIGTERM to
    // the daemon). SIGKILL and SIGSTOP cannot be blocked: the daemon waits
    // for us with a deadline and kills us at it.
    let all: u64 = !0;
    // SAFETY: rt_sigprocmask with a valid 8-byte kernel sigset.
    let ret = unsafe {
        raw::syscall(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, (&raw const all) as usize, 0, 8, 0])
    };
    if ret != 0 {
        return fail(ret, 3);
    }
    // Our fd table is a copy of the daemon's: keep only what we need, so
    // that a client holding us stopped holds nothing of anybody else (no
    // connection, no token) and an fd the daemon closes really closes.
    let keep = [args.userns, args.bpffs, args.task_map, args.sock];
    let mut next: u32 = 0;
    loop {
        let lowest = keep.iter().filter_map(|&fd| u32::try_from(fd).ok()).filter(|&fd| fd >= next).min();
        let (last, done) = match lowest {
            Some(fd) => (fd.checked_sub(1), false),
            None => (Some(u32::MAX), true),
        };
        if let Some(last) = last.filter(|&last| last >= next) {
            // SAFETY: close_range(2) on our own (private) fd table.
            let ret = unsafe { raw::syscall(libc::SYS_close_range, [next as usize, last as usize, 0, 0, 0]) };
            if ret != 0 {
                return fail(ret, 4);
            }
        }
        match lowest {
            Some(fd) if !done && fd < u32::MAX => next = fd + 1,
            _ => break,
        }
    }
    if args.task_map >= 0 {
        // Still root in our own namespace here. ENOENT (no stale record)
        // is the usual answer; any other failure shows up as a record that
        // does not match the tokens made, which the parent refuses.
        // SAFETY: gettid(2) takes no arguments.
        let tid = u32::try_from(unsafe { raw::syscall(libc::SYS_gettid, [0; 5]) }).unwrap_or(0);
        // bpf_attr for map element commands: map_fd, pad, key pointer.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(args.task_map.cast_unsigned());
        attr[1] = (&raw const tid) as u64;
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_DELETE_ELEM
        // and `tid` (the key, 4 bytes) lives across the call.
        let _ = unsafe { raw::syscall(libc::SYS_bpf, [BPF_MAP_DELETE_ELEM_ARG, attr.as_mut_ptr() as usize, 32, 0, 0]) };
    }
    // No supplementary group of the daemon's comes along.
    // SAFETY: setgroups(2) with an empty list.
    let ret = unsafe { raw::syscall(libc::SYS_setgroups, [0; 5]) };
    if ret != 0 {
        return fail(ret, 6);
    }
    // SAFETY: setns(2) on an fd value; no memory is passed.
    let ret = unsafe {
        raw::syscall(libc::SYS_setns, [args.userns.cast_unsigned() as usize, libc::CLONE_NEWUSER as usize, 0, 0, 0])
    };
    if ret != 0 {
        return fail(ret, 1);
    }
    // Become the namespace's root, that is the uid that owns it in the
    // init namespace, keeping every capability inside it: the kernel
    // counts the fds we send back against the sender's uid, and once in
    // the namespace we lack CAP_SYS_RESOURCE, so as root we would be
    // refused (ETOOMANYREFS) whenever clients leave more fds from root
    // unread than our RLIMIT_NOFILE. As the owner, only the owner's own
    // fds in flight count. The scope's ids 0 are mapped (owner mode maps
    // them; container mode checks it when the scope is made).
    // SAFETY: setresgid(2)/setresuid(2) take plain ids.
    let ret = unsafe { raw::syscall(libc::SYS_setresgid, [0; 5]) };
    if ret != 0 {
        return fail(ret, 7);
    }
    // SAFETY: as above.
    let ret = unsafe { raw::syscall(libc::SYS_setresuid, [0; 5]) };
    if ret != 0 {
        return fail(ret, 7);
    }
    // setns and the uid change reset the dumpability of our (shared)
    // memory to fs.suid_dumpable; [`MintChild::start`] refuses the value
    // that would let the client attach (1), and this closes the window
    // for good.
    // SAFETY: prctl(2) with integer arguments.
    let ret = unsafe { raw::syscall(libc::SYS_prctl, [libc::PR_SET_DUMPABLE as usize, 0, 0, 0, 0]) };
    if ret != 0 {
        return fail(ret, 8);
    }
    // One setns for the whole batch: each further token costs only the
    // BPF_TOKEN_CREATE itself.
    let mut tokens: [libc::c_int; MAX_MINT_BATCH] = [-1; MAX_MINT_BATCH];
    let mut made = 0usize;
    let mut status = 0;
    for slot in tokens.iter_mut().take(args.count) {
        let mut attr = [0u32; 2];
        attr[1] = args.bpffs.cast_unsigned();
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_TOKEN_CREATE.
        let fd = unsafe { raw::syscall(libc::SYS_bpf, [BPF_TOKEN_CREATE_ARG, attr.as_mut_ptr() as usize, 8, 0, 0]) };
        match i32::try_from(fd) {
            Ok(fd) if fd >= 0 => {
                *slot = fd;
                made += 1;
            }
            _ => {
                status = fail(fd, 2);
                break;
            }
        }
    }
    if made == 0 {
        return status;
    }
    // The tokens go back in one SCM_RIGHTS message, built on our stack by
    // fdpass (no allocation); they live in our own fd table only, so if we
    // are killed first they close with us.
    let made_tokens = tokens.get(..made).unwrap_or_default();
    let ret = fdpass::with_rights_message(made_tokens, |msg| {
        // SAFETY: `msg` points at a message and buffers that live on the
        // stack for the whole call (with_rights_message's frame), of the
        // lengths it gives; `args.sock` is our end of the socket pair.
        unsafe {
            raw::syscall(
                libc::SYS_sendmsg,
                [args.sock.cast_unsigned() as usize, (&raw const *msg) as usize, libc::MSG_NOSIGNAL as usize, 0, 0],
            )
        }
    });
    if ret < 0 {
        return fail(ret, 5);
    }
    status
}
