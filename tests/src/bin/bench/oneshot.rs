//! One connection per mint: the shape of `bpftoken run`, of the C ABI's
//! `bpftoken_mint()` and of libbpf-style callers, next to its floor
//! measured in the same run, with 1 and 8 clients; and the same mint while
//! a uid with no rule churns connections.
//!
//! The floor does the same kernel work as a one-shot mint and nothing
//! else: the client makes a socket, connects, sends a 32-byte request,
//! waits in `poll` (as the client library does) and receives a 32-byte
//! answer carrying a token, then closes both; the server
//! (root, inside a scope's user namespace, one thread per CPU blocking in
//! `accept`) accepts, reads `SO_PEERCRED`, reads the request, creates the
//! token with `BPF_TOKEN_CREATE`, sends it and closes it and the
//! connection. The mint goes through `bpftoken_mint()` exactly as a C
//! caller makes it (`libbpftoken.so`, loaded with `dlopen`).

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;
use bpftokend::minter::Scope;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::floors::wait_until;
use crate::stats::*;

/// Bytes of the floor's request and answer (a mint request's frame is
/// about this size).
const FLOOR_MESSAGE: usize = 32;

/// `oneshot-floor-server USERNS BPFFS LISTEN`: the floor's server, until
/// killed.
pub fn floor_server(userns: i32, bpffs: i32, listen: i32) {
    let userns = bpftoken_tests::sys::inherited_fd(userns).expect("userns fd");
    let bpffs = bpftoken_tests::sys::inherited_fd(bpffs).expect("bpffs fd");
    let listener = bpftoken_tests::sys::inherited_fd(listen).expect("listening socket");
    // Single-threaded here, as setns into a user namespace requires.
    rustix::thread::move_into_link_name_space(userns.as_fd(), Some(rustix::thread::LinkNameSpaceType::User))
        .expect("setns into the scope's user namespace");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Ok(conn) = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) else { continue };
                let _cred = rustix::net::sockopt::socket_peercred(&conn).expect("SO_PEERCRED");
                let mut request = [0u8; FLOOR_MESSAGE];
                if rustix::io::read(&conn, &mut request).is_err() {
                    continue;
                }
                let token = bpftokend::sys::bpf_token_create(bpffs.as_fd()).expect("BPF_TOKEN_CREATE");
                let fds = [token.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                let answer = [b'R'; FLOOR_MESSAGE];
                let _ = rustix::net::sendmsg(&conn, &[IoSlice::new(&answer)], &mut control, SendFlags::empty());
            });
        }
    });
}

/// What the daemon must do for every request whatever its design
/// (docs/operation.md, "Audit events"), alone, in this (root) process,
/// against a process of alice's: a new pidfd (as `SCM_PIDFD` makes one),
/// its pid and user namespace through it, the executable (and the pidfd
/// checked alive after), one audit line of the daemon's size written.
pub fn measure_identity(n: usize) -> Figures {
    let mut alice = as_user(&user(ALICE), "sleep");
    let mut child = alice.arg("60").spawn().expect("a process of alice's");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    let mut audit = std::fs::OpenOptions::new().append(true).open("/dev/null").expect("/dev/null");
    let stats = time_loop(n, || {
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("pidfd_open");
        let pid = bpftokend::sys::pidfd_info_pid(pidfd.as_fd()).expect("PIDFD_GET_INFO");
        let ns = bpftokend::sys::pidfd_user_namespace(pidfd.as_fd()).expect("PIDFD_GET_USER_NAMESPACE");
        let _ = rustix::fs::fstat(&ns);
        drop(ns);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        assert!(bpftokend::sys::pidfd_alive(pidfd.as_fd()));
        let line = format!("{:>380} pid={pid} exe={exe:?}\n", "granted owner to uid");
        let _ = std::io::Write::write_all(&mut audit, line.as_bytes());
    });
    let _ = child.kill();
    let _ = child.wait();
    Figures {
        p50: stats.p(0.5),
        p99: stats.p(0.99),
        ops: stats.ops(),
        client_cpu: stats.cpu_per_op(),
        server_cpu: None,
    }
}

/// One floor mint: connect, ask, receive the token, close both.
fn floor_mint(socket: &SocketAddrUnix) {
    let sock =
        rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).expect("socket");
    rustix::net::connect(&sock, socket).expect("connect to the floor server");
    rustix::io::write(&sock, &[b'Q'; FLOOR_MESSAGE]).expect("send");
    // Waits for the answer as the client library does (in poll, which the
    // server's reading of the request does not wake).
    let mut ready = [rustix::event::PollFd::new(&sock, rustix::event::PollFlags::IN)];
    rustix::event::poll(&mut ready, None).expect("poll");
    let mut answer = [0u8; FLOOR_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(&mut answer)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .expect("recv");
    let token: Vec<OwnedFd> = control
        .drain()
        .flat_map(|m| match m {
            RecvAncillaryMessage::ScmRights(r) => r.collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(token.len(), 1, "the floor server sent no token");
}

/// `oneshot-client SOCKET N CLIENTS floor|capi START_AT_MS`: `n` one-shot
/// mints in each of `clients` threads, through the floor or
/// `bpftoken_mint()`.
pub fn client(socket: &Path, n: usize, clients: usize, capi: bool, start_at_ms: u128) {
    // libbpftoken.so is built next to this program (target/release).
    let library = std::env::current_exe().expect("own path").with_file_name("libbpftoken.so");
    let lib = capi.then(|| {
        bpftoken_tests::sys::Capi::load(&library)
            .unwrap_or_else(|e| panic!("{e}: build it first (cargo build --release -p bpftoken-capi)"))
    });
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let addr = SocketAddrUnix::new(&socket).expect("socket path");
                let path = CString::new(socket.as_os_str().as_encoded_bytes()).expect("socket path");
                wait_until(start_at_ms);
                time_loop(n, || {
                    if let Some(lib) = lib {
                        drop(lib.mint(&path).expect("bpftoken_mint"));
                    } else {
                        floor_mint(&addr);
                    }
                })
            })
        })
        .collect();
    let runs: Vec<Stats> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    Stats::emit_summed(&runs);
}

/// `churn SOCKET SECONDS`: connect and close as fast as possible.
pub fn churn(socket: &Path, seconds: u64) {
    let addr = SocketAddrUnix::new(socket).expect("socket path");
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .expect("socket");
        if rustix::net::connect(&sock, &addr).is_ok() {
            n += 1;
        }
    }
    println!("CHURNED {n}");
}

/// The floor's server, listening at `dir/floor.sock`.
pub struct FloorServer {
    pub socket: std::path::PathBuf,
    child: Child,
}

impl FloorServer {
    pub fn start(self_exe: &Path, scope: &Scope, dir: &Path) -> FloorServer {
        let socket = dir.join("floor.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::empty(), None)
            .expect("socket");
        rustix::net::bind(&listener, &SocketAddrUnix::new(&socket).expect("path")).expect("bind");
        rustix::net::listen(&listener, 4096).expect("listen");
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
        for fd in [scope.userns.as_fd(), scope.bpffs_root.as_fd()] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).expect("clear cloexec");
        }
        let child = std::process::Command::new(self_exe)
            .args([
                "oneshot-floor-server",
                &scope.userns.as_raw_fd().to_string(),
                &scope.bpffs_root.as_raw_fd().to_string(),
                &listener.as_raw_fd().to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the floor server");
        for fd in [scope.userns.as_fd(), scope.bpffs_root.as_fd()] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).expect("set cloexec");
        }
        FloorServer { socket, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clients` one-shot clients as alice against `socket` (the floor's when
/// `capi` is false, else the daemon's through `bpftoken_mint()`), with
/// the server's CPU per mint (process `server`, warm-ups included).
pub fn measure(self_exe: &Path, socket: &Path, server: u32, n: usize, clients: usize, capi: bool) -> Figures {
    let alice = user(ALICE);
    let start_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()) + 200;
    let mut c = as_user(&alice, self_exe);
    c.args([
        "oneshot-client",
        socket.to_str().expect("utf-8 socket path"),
        &n.to_string(),
        &clients.to_string(),
        if capi { "capi" } else { "floor" },
        &start_at.to_string(),
    ]);
    let before = process_cpu(server);
    let f = run_child(c);
    let used = process_cpu(server) - before;
    let answered = (clients * (n + warm_up(n))) as f64;
    Figures { server_cpu: Some(used.as_secs_f64() * 1e6 / answered), ..f }
}

/// System calls per one-shot mint in process `server` (every thread, and
/// the children it starts: the daemon's mint children), counted by
/// `strace -c` over one client's `n` mints (warm-up included); `None`
/// without strace. strace slows everything down: this counts, it does not
/// time.
pub fn syscalls_per_mint(self_exe: &Path, socket: &Path, server: u32, n: usize, capi: bool) -> Option<f64> {
    let out = scratch_dir("bench-strace").join("strace.txt");
    let mut strace = std::process::Command::new("strace");
    strace.args(["-f", "-c", "-q", "-o"]).arg(&out).stdout(Stdio::null()).stderr(Stdio::null());
    for task in std::fs::read_dir(format!("/proc/{server}/task")).ok()?.flatten() {
        strace.arg("-p").arg(task.file_name());
    }
    let mut tracer = strace.spawn().ok()?;
    // Attached once strace has written its first line... it writes none
    // with -c: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let _ = measure(self_exe, socket, server, n, 1, capi);
    let pid = rustix::process::Pid::from_raw(i32::try_from(tracer.id()).ok()?)?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    let _ = tracer.wait();
    let text = std::fs::read_to_string(&out).ok()?;
    // "100.00    0.263802          10     24830       925 total"
    let total = text.lines().find(|l| l.trim_end().ends_with(" total"))?;
    let calls: f64 = total.split_whitespace().nth(3)?.parse().ok()?;
    Some(calls / (n + warm_up(n)) as f64)
}

/// `processes` churners as `who` against `socket` for `seconds`; returns
/// them running.
pub fn start_churn(self_exe: &Path, who: &str, socket: &Path, processes: usize, seconds: u64) -> Vec<Child> {
    let who = user(who);
    (0..processes)
        .map(|_| {
            let mut c = as_user(&who, self_exe);
            c.args(["churn", socket.to_str().expect("utf-8 socket path"), &seconds.to_string()]);
            c.stdout(Stdio::piped()).spawn().expect("start a churner")
        })
        .collect()
}

/// Wait for churners; the connections they made.
pub fn finish_churn(churners: Vec<Child>) -> u64 {
    churners
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("churner");
            let text = String::from_utf8_lossy(&out.stdout);
            text.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
        })
        .sum()
}
