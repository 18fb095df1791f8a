//! `bpftoken run` as a supervisor, so unmodified tracing tools attach
//! without root (docs/tracing.md, "Unmodified tools").
//!
//! libbpf attaches a tracepoint, kprobe or uprobe program by reading the
//! tracepoint's id from tracefs and opening a perf event; both need root.
//! CMD runs under a seccomp user-notification filter that traps exactly
//! `perf_event_open` and `openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)` (the
//! shape of libbpf's `fopen("re")`; seccomp cannot look at the path). This
//! process, the supervisor, same uid as CMD, reads the trapped call's
//! arguments (`process_vm_readv`), asks the daemon for the id file or the
//! perf event of that target, and injects the daemon's fd as the call's
//! result (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SEND`).
//! Everything else, and every refused target, continues untouched
//! (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`): the kernel then answers as it
//! would without us (EACCES), and one line on stderr names the target and
//! the policy key that would allow it.
//!
//! With `--explain` the same filter also stops every `bpf()` call for
//! `bpfwatch`, which ptraces CMD from this process (the supervisor
//! serves notifications from a thread then).
//!
//! The supervisor is no security boundary and needs none: it only asks the
//! daemon what CMD itself could ask; the daemon decides. A task may change
//! its memory after we read it: harmless, since a continued call is the
//! caller's own and an injected fd is for the target the daemon approved.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;

use bpftoken_proto::TraceTarget;

use crate::sys::{self, SeccompNotif, SockFilter};
use crate::{bpfwatch, Client, Error};

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
/// `offsetof(struct seccomp_data, ...)`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const fn data_arg(i: u32) -> u32 {
    16 + 8 * i
}
/// `BPF_LD | BPF_W | BPF_ABS`, `BPF_JMP | BPF_JEQ | BPF_K`, `BPF_RET | BPF_K`.
const LD: u16 = 0x20;
const JEQ: u16 = 0x15;
const RET: u16 = 0x06;
/// `AT_FDCWD` as the low 32 bits of a syscall argument.
const AT_FDCWD: u32 = 0xffff_ff9c;
/// `O_RDONLY | O_CLOEXEC`.
const RDONLY_CLOEXEC: u32 = 0o2_000_000;
/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: u64 = 8;
/// Bytes of `perf_event_attr` this supervisor understands (VER8).
const ATTR_SIZE: usize = 136;

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter { code, jt: 0, jf: 0, k }
}

fn jump(k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code: JEQ, jt, jf, k }
}

/// The filter. With `broker`: notify for `perf_event_open` and for
/// `openat(AT_FDCWD, _, O_RDONLY|O_CLOEXEC)`. With `watch_bpf`: stop
/// every `bpf()` call for the tracer (`SECCOMP_RET_TRACE`; only where a
/// tracer is attached: without one the call fails with ENOSYS). Allow
/// everything else.
pub fn filter(broker: bool, watch_bpf: bool) -> Vec<SockFilter> {
    let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(u32::MAX);
    let mut f =
        vec![stmt(LD, DATA_ARCH), jump(AUDIT_ARCH_X86_64, 1, 0), stmt(RET, SECCOMP_RET_ALLOW), stmt(LD, DATA_NR)];
    if watch_bpf {
        f.extend([jump(nr(libc::SYS_bpf), 0, 1), stmt(RET, SECCOMP_RET_TRACE)]);
    }
    if broker {
        f.extend([
            jump(nr(libc::SYS_perf_event_open), 7, 0),
            jump(nr(libc::SYS_openat), 1, 0),
            stmt(RET, SECCOMP_RET_ALLOW),
            stmt(LD, data_arg(0)),
            jump(AT_FDCWD, 0, 2),
            stmt(LD, data_arg(2)),
            jump(RDONLY_CLOEXEC, 1, 0),
            stmt(RET, SECCOMP_RET_ALLOW),
            stmt(RET, SECCOMP_RET_USER_NOTIF),
        ]);
    } else {
        f.push(stmt(RET, SECCOMP_RET_ALLOW));
    }
    f
}

/// An `int` syscall argument: the low 32 bits of its register.
fn int_arg(raw: u64) -> i32 {
    // The kernel reads an int argument as the register's low 32 bits.
    u32::try_from(raw & 0xffff_ffff).unwrap_or(0).cast_signed()
}

/// A dynamic PMU (kprobe, uprobe): its type and `retprobe` bit.
fn pmu(name: &str) -> Option<(u32, u32)> {
    let dir = std::path::Path::new("/sys/bus/event_source/devices").join(name);
    let kind = std::fs::read_to_string(dir.join("type")).ok()?.trim().parse().ok()?;
    let bit = std::fs::read_to_string(dir.join("format/retprobe"))
        .ok()
        .and_then(|f| f.trim().strip_prefix("config:").and_then(|b| b.parse().ok()))
        .unwrap_or(0);
    Some((kind, bit))
}

/// Which tracepoint a tracefs path names (`.../events/CAT/NAME/id`).
pub fn tracefs_id_path(path: &str) -> Option<(&str, &str)> {
    let rest = ["/sys/kernel/tracing/events/", "/sys/kernel/debug/tracing/events/"]
        .iter()
        .find_map(|p| path.strip_prefix(p))?;
    let mut parts = rest.split('/');
    let (cat, name, file) = (parts.next()?, parts.next()?, parts.next()?);
    (file == "id" && parts.next().is_none() && !cat.is_empty() && !name.is_empty()).then_some((cat, name))
}

/// A NUL-terminated string in the trapped task's memory (at most 4 KiB).
fn read_string(pid: i32, addr: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < 4096 {
        // Never across a page boundary in one read: the next may be unmapped.
        let chunk = 4096 - usize::try_from(at % 4096).unwrap_or(0);
        let mut buf = vec![0u8; chunk.min(4096 - out.len())];
        let n = sys::read_process_memory(pid, at, &mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&buf[..end]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
    }
    None
}

/// The supervisor's state.
struct Supervisor {
    client: Client,
    listener: OwnedFd,
    /// Tracepoint ids the daemon gave out, to name the tracepoint of a
    /// later `perf_event_open(PERF_TYPE_TRACEPOINT, config = id)`.
    tracepoints: HashMap<u64, (String, String)>,
    kprobe: Option<(u32, u32)>,
    uprobe: Option<(u32, u32)>,
}

/// What to answer a trapped call.
enum Answer {
    Continue,
    Fd(OwnedFd, bool),
}

impl Supervisor {
    fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    fn refused(target: &str, e: &Error) {
        eprintln!("bpftoken: {target}: {e}");
    }

    fn on_openat(&mut self, n: &SeccompNotif) -> Answer {
        let pid = i32::try_from(n.pid).unwrap_or(-1);
        let Some(path) = read_string(pid, n.data.args[1]) else { return Answer::Continue };
        if !sys::notif_id_valid(self.listener(), n.id) {
            return Answer::Continue;
        }
        let Some((cat, name)) = tracefs_id_path(&path) else { return Answer::Continue };
        match self.client.tracepoint_id(cat, name) {
            Ok(found) => {
                self.tracepoints.insert(u64::from(found.id), (cat.to_owned(), name.to_owned()));
                Answer::Fd(found.file, true)
            }
            Err(e) => {
                Self::refused(&format!("tracepoint {cat}:{name}"), &e);
                Answer::Continue
            }
        }
    }

    fn on_perf_event_open(&mut self, n: &SeccompNotif) -> Answer {
        let pid = i32::try_from(n.pid).unwrap_or(-1);
        let [attr_at, target_pid, cpu, group, flags, _] = n.data.args;
        let mut attr = [0u8; ATTR_SIZE];
        if sys::read_process_memory(pid, attr_at, &mut attr[..8]).ok() != Some(8) {
            return Answer::Continue;
        }
        let kind = u32::from_ne_bytes(attr[0..4].try_into().unwrap_or_default());
        let size = usize::try_from(u32::from_ne_bytes(attr[4..8].try_into().unwrap_or_default())).unwrap_or(0);
        // Only the shape libbpf uses: a known size, no group, no flags but
        // close-on-exec, and nothing set but type, size, config, config1,
        // config2. Anything else is the kernel's to judge.
        let plain_call = (64..=ATTR_SIZE).contains(&size) && int_arg(group) == -1 && flags & !PERF_FLAG_FD_CLOEXEC == 0;
        if !plain_call || sys::read_process_memory(pid, attr_at, &mut attr[..size]).ok() != Some(size) {
            return Answer::Continue;
        }
        let others_zero = attr[16..56].iter().chain(&attr[72..size]).all(|b| *b == 0);
        if !others_zero {
            return Answer::Continue;
        }
        let word = |i: usize| u64::from_ne_bytes(attr[i..i + 8].try_into().unwrap_or_default());
        let (config, config1, config2) = (word(8), word(56), word(64));
        let cloexec = flags & PERF_FLAG_FD_CLOEXEC != 0;
        let (target_pid, cpu) = (int_arg(target_pid), int_arg(cpu));
        let (target, pid_arg) = if kind == PERF_TYPE_TRACEPOINT {
            let Some((category, name)) = self.tracepoints.get(&config).cloned() else { return Answer::Continue };
            (TraceTarget::Tracepoint { category, name }, None)
        } else if let Some((_, bit)) = self.kprobe.filter(|(k, _)| *k == kind) {
            let Some(symbol) = read_string(pid, config1) else { return Answer::Continue };
            (TraceTarget::Kprobe { symbol, offset: config2, retprobe: config & (1 << bit) != 0 }, None)
        } else if let Some((_, bit)) = self.uprobe.filter(|(k, _)| *k == kind) {
            // USDT semaphores (ref_ctr_offset, config >> 32) are not brokered.
            if config >> 32 != 0 {
                return Answer::Continue;
            }
            let Some(path) = read_string(pid, config1) else { return Answer::Continue };
            let one = (target_pid >= 0).then_some(target_pid);
            (TraceTarget::Uprobe { path, offset: config2, retprobe: config & (1 << bit) != 0 }, one)
        } else {
            return Answer::Continue;
        };
        // libbpf's shapes: every process on CPU 0, or one process on any CPU.
        let shape_ok = matches!((target_pid, cpu), (-1, 0)) || (pid_arg.is_some() && cpu == -1);
        if !shape_ok || !sys::notif_id_valid(self.listener(), n.id) {
            return Answer::Continue;
        }
        match self.client.open_perf_event(&target, pid_arg) {
            Ok(event) => Answer::Fd(event.fd, cloexec),
            Err(e) => {
                Self::refused(&target.to_string(), &e);
                Answer::Continue
            }
        }
    }

    /// Serve notifications until no task uses the filter any more.
    fn serve(&mut self) -> io::Result<()> {
        loop {
            let mut fds = [rustix::event::PollFd::new(&self.listener, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = fds[0].revents();
            if ready.contains(rustix::event::PollFlags::IN) {
                let n = match sys::notif_recv(self.listener()) {
                    Ok(n) => n,
                    // The task was interrupted or died meanwhile.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => continue,
                    Err(e) => return Err(e),
                };
                let answer = if i64::from(n.data.nr) == libc::SYS_perf_event_open {
                    self.on_perf_event_open(&n)
                } else if i64::from(n.data.nr) == libc::SYS_openat {
                    self.on_openat(&n)
                } else {
                    Answer::Continue
                };
                let sent = match answer {
                    Answer::Continue => sys::notif_continue(self.listener(), n.id).map(drop),
                    Answer::Fd(fd, cloexec) => {
                        sys::notif_reply_fd(self.listener(), n.id, fd.as_fd(), cloexec).map(drop)
                    }
                };
                // ENOENT: the task is gone; nothing to answer.
                if let Err(e) = sent {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        return Err(e);
                    }
                }
            } else if ready.intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR) {
                return Ok(());
            }
        }
    }
}

/// Why a command cannot be run under supervision.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("this architecture is not supported by the tracing supervisor (x86_64 only)")]
    Arch,
    #[error("the kernel's seccomp notifications have another layout than this build knows")]
    Layout,
    #[error("cannot start the supervised command: {0}")]
    Start(io::Error),
    #[error("supervising the command failed: {0}")]
    Serve(io::Error),
}

/// How CMD ran under [`run`].
#[derive(Debug)]
pub struct Outcome {
    /// CMD's wait status: its exit code, or 128 + the signal that killed it.
    pub status: i32,
    /// With `watch_bpf`: the `bpf()` calls the kernel refused, or why they
    /// could not be watched (ptrace refused).
    pub watched: Option<Result<Vec<bpfwatch::RefusedCall>, io::Error>>,
}

/// Run `cmd` as a child under a seccomp filter: with `broker`, its
/// tracing calls are answered from that client's daemon (the supervisor
/// above); with `watch_bpf`, its `bpf()` calls are watched
/// (`bpfwatch`). `program` names CMD in messages.
pub fn run(
    broker: Option<Client>,
    watch_bpf: bool,
    mut cmd: std::process::Command,
    program: &OsString,
) -> Result<Outcome, SuperviseError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SuperviseError::Arch);
    }
    if broker.is_some() && !sys::notif_sizes_match() {
        return Err(SuperviseError::Layout);
    }
    let (ours, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SuperviseError::Start(e.into()))?;
    let child = match sys::fork_single_threaded().map_err(SuperviseError::Start)? {
        None => child_main(theirs, &mut cmd, program, broker.is_some()),
        Some(child) => child,
    };
    drop(theirs);
    // Seized before the child installs a filter that needs a tracer.
    let seized = watch_bpf.then(|| sys::ptrace_seize(child));
    let traced = matches!(seized, Some(Ok(())));
    rustix::net::send(&ours, if traced { b"T" } else { b"U" }, rustix::net::SendFlags::empty())
        .map_err(|e| SuperviseError::Start(e.into()))?;
    // Terminal signals reach CMD too (same process group); we stay to
    // answer and watch it until it is done.
    ignore_terminal_signals();
    let server = match broker {
        Some(client) => {
            let listener = receive_listener(&ours).map_err(SuperviseError::Start)?;
            // Best effort: before Linux 6.6 each notification just costs more.
            let _ = sys::notif_sync_wake_up(listener.as_fd());
            let mut supervisor = Supervisor {
                client,
                listener,
                tracepoints: HashMap::new(),
                kprobe: pmu("kprobe"),
                uprobe: pmu("uprobe"),
            };
            let _ = rustix::net::send(&ours, b"k", rustix::net::SendFlags::empty());
            Some(std::thread::spawn(move || supervisor.serve()))
        }
        None => None,
    };
    drop(ours);
    let (status, watched) = if traced {
        let w = bpfwatch::watch(child).map_err(SuperviseError::Serve)?;
        (w.status, Some(Ok(w.refused)))
    } else {
        let status =
            rustix::process::waitpid(rustix::process::Pid::from_raw(child), rustix::process::WaitOptions::empty())
                .ok()
                .flatten()
                .map(|(_, s)| s);
        let status = match status {
            Some(s) if s.exit_status().is_some() => s.exit_status().unwrap_or(1),
            Some(s) => 128 + s.terminating_signal().unwrap_or(0),
            None => 1,
        };
        (status, seized.map(|r| r.map(|()| Vec::new())))
    };
    // The server ends when no task uses the filter any more.
    if let Some(server) = server {
        let served = server.join().unwrap_or_else(|_| Err(io::Error::other("the supervisor thread panicked")));
        served.map_err(SuperviseError::Serve)?;
    }
    Ok(Outcome { status, watched })
}

/// In the child: die with the supervisor, learn whether we are traced,
/// install the filter (handing a broker's listener over and waiting until
/// it is held), exec CMD.
fn child_main(sock: OwnedFd, cmd: &mut std::process::Command, program: &OsString, broker: bool) -> ! {
    let failed = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("bpftoken: cannot run {} under the supervisor: {what}: {e}", program.to_string_lossy());
        std::process::exit(127);
    };
    if let Err(e) = sys::set_parent_death_signal(libc::SIGTERM) {
        failed("PR_SET_PDEATHSIG", &e);
    }
    let mut traced = [0u8; 1];
    if rustix::net::recv(&sock, &mut traced, rustix::net::RecvFlags::empty()).map(|(n, _)| n).ok() != Some(1) {
        failed("the supervisor", &"did not start");
    }
    let watch_bpf = traced[0] == b'T';
    if broker {
        let listener = match sys::install_notify_filter(&filter(true, watch_bpf)) {
            Ok(l) => l,
            Err(e) => failed("seccomp", &e),
        };
        let fds = [listener.as_fd()];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
        let sent =
            rustix::net::sendmsg(&sock, &[io::IoSlice::new(b"L")], &mut control, rustix::net::SendFlags::empty());
        if let Err(e) = sent {
            failed("handing the listener over", &e);
        }
        drop(listener);
        let mut ack = [0u8; 1];
        if rustix::net::recv(&sock, &mut ack, rustix::net::RecvFlags::empty()).map(|(n, _)| n).ok() != Some(1) {
            failed("the supervisor", &"did not take the listener");
        }
    } else if watch_bpf {
        if let Err(e) = sys::install_filter(&filter(false, true)) {
            failed("seccomp", &e);
        }
    }
    drop(sock);
    let err = cmd.exec();
    eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}

fn receive_listener(sock: &OwnedFd) -> io::Result<OwnedFd> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        rustix::net::RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = m {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::other("the command's process sent no seccomp listener (it failed before exec)"))
}

fn ignore_terminal_signals() {
    for sig in [rustix::process::Signal::INT, rustix::process::Signal::QUIT] {
        let _ = sys::ignore_signal(sig.as_raw());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracefs_id_paths_are_recognised_exactly() {
        assert_eq!(
            tracefs_id_path("/sys/kernel/tracing/events/syscalls/sys_enter_getpid/id"),
            Some(("syscalls", "sys_enter_getpid"))
        );
        assert_eq!(
            tracefs_id_path("/sys/kernel/debug/tracing/events/sched/sched_switch/id"),
            Some(("sched", "sched_switch"))
        );
        assert_eq!(tracefs_id_path("/sys/kernel/tracing/events/syscalls/sys_enter_getpid/format"), None);
        assert_eq!(tracefs_id_path("/sys/kernel/tracing/events/syscalls/id"), None);
        assert_eq!(tracefs_id_path("/sys/kernel/tracing/events/a/b/id/x"), None);
        assert_eq!(tracefs_id_path("/etc/passwd"), None);
    }

    /// What the filter returns for a call: a tiny classic-BPF evaluator
    /// for the instructions it uses.
    fn verdict(arch: u32, nr: libc::c_long, args: [u64; 6]) -> u32 {
        verdict_of(&filter(true, false), arch, nr, args)
    }

    fn verdict_of(f: &[SockFilter], arch: u32, nr: libc::c_long, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&i32::try_from(nr).unwrap().to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = f[pc];
            match ins.code {
                LD => {
                    let at = ins.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                    pc += 1;
                }
                JEQ => pc += 1 + usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
                RET => return ins.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_traps_exactly_perf_event_open_and_libbpfs_opens() {
        let fdcwd = u64::from(AT_FDCWD) | 0xffff_ffff_0000_0000;
        let x86 = AUDIT_ARCH_X86_64;
        assert_eq!(verdict(x86, libc::SYS_perf_event_open, [0; 6]), SECCOMP_RET_USER_NOTIF);
        let rdonly_cloexec = u64::from(RDONLY_CLOEXEC);
        assert_eq!(verdict(x86, libc::SYS_openat, [fdcwd, 0, rdonly_cloexec, 0, 0, 0]), SECCOMP_RET_USER_NOTIF);
        // Other opens, other calls, other architectures: allowed untouched.
        assert_eq!(verdict(x86, libc::SYS_openat, [fdcwd, 0, 0, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(x86, libc::SYS_openat, [3, 0, rdonly_cloexec, 0, 0, 0]), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(x86, libc::SYS_read, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(x86, libc::SYS_bpf, [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(verdict(0x4000_0003, libc::SYS_perf_event_open, [0; 6]), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn watching_adds_a_trace_stop_for_bpf_and_nothing_else() {
        let fdcwd = u64::from(AT_FDCWD) | 0xffff_ffff_0000_0000;
        let rdonly_cloexec = u64::from(RDONLY_CLOEXEC);
        let x86 = AUDIT_ARCH_X86_64;
        for broker in [true, false] {
            let f = filter(broker, true);
            assert_eq!(verdict_of(&f, x86, libc::SYS_bpf, [0; 6]), SECCOMP_RET_TRACE);
            let brokered = if broker { SECCOMP_RET_USER_NOTIF } else { SECCOMP_RET_ALLOW };
            assert_eq!(verdict_of(&f, x86, libc::SYS_perf_event_open, [0; 6]), brokered);
            assert_eq!(verdict_of(&f, x86, libc::SYS_openat, [fdcwd, 0, rdonly_cloexec, 0, 0, 0]), brokered);
            assert_eq!(verdict_of(&f, x86, libc::SYS_read, [0; 6]), SECCOMP_RET_ALLOW);
            assert_eq!(verdict_of(&f, 0x4000_0003, libc::SYS_bpf, [0; 6]), SECCOMP_RET_ALLOW);
        }
        assert_eq!(verdict_of(&filter(false, false), x86, libc::SYS_bpf, [0; 6]), SECCOMP_RET_ALLOW);
    }
}
