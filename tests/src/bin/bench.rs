//! `bpftoken-bench`: mint latency and throughput through the real daemon,
//! next to the kernel floor measured by the same program in the same run.
//!
//! Run as root: `target/release/bpftoken-bench [ITERATIONS]`. It starts its
//! own daemon with a policy for the test user bpftk-alice, and prints:
//!
//! - floors: raw `BPF_TOKEN_CREATE`+close inside a scope's user namespace,
//!   and a Unix-socket round trip carrying one fd between two processes,
//!   also with two clients, against one epoll server (the daemon's shape,
//!   and the issue experiment's `rtt.c`) and as two independent pairs;
//! - warm mints (cached scope) and cold mints (new scope each time), for
//!   one and two concurrent clients, with ratios to the floor;
//! - `sudo -n true`, what a user would do instead, if sudo is installed;
//! - the cost of `bpftoken run`'s tracing supervisor (a seccomp filter
//!   trapping `perf_event_open` and libbpf-shaped `openat`) on commands
//!   unrelated to tracing: 100,000 opens that the filter traps and that it
//!   does not, and 100,000 `getpid`, each under `bpftoken run` with and
//!   without the supervisor and bare (the floor), median of 5 runs;
//!
//! all unpinned and pinned to CPU 0 (this VM's cross-CPU wakeups dominate
//! otherwise). Internal modes (`floor-token`, `rtt-server`, `rtt-client`,
//! `client`) are the processes it starts.
//!
//! The fd round trip and the warm mint are measured alike, so their ratio
//! compares like with like: each client closes the fd it receives (the
//! token, or the floor's /dev/null), reads the answer with one `recvmsg`,
//! and counts from the end of its warm-up; throughput with two clients is
//! the sum of each client's own rate (n / its timed wall) on both sides.
//! What remains different is inherent: the mint's token is new each time
//! (created by the daemon, freed by the client's close), the floor's fd is
//! one open file; the floor's server blocks in `read` on one connection,
//! the daemon waits in epoll for all of them. `cpu/op` is the CPU time per
//! request of each side (client threads while timed; the server or daemon
//! over every request it answered, warm-ups included), a figure the other
//! load on the machine disturbs less than wall-clock rates.

// Benchmark arithmetic on sample counts and fd numbers: all small.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken::{Client, MintRequest};
use bpftoken_proto::Delegation;
use bpftoken_tests::*;
use bpftokend::minter::{Scope, ScopeKey, ScopeOwner};
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// Latency samples of one measurement.
struct Stats {
    samples: Vec<Duration>,
    wall: Duration,
    /// CPU time of the measuring thread(s) over the timed loop.
    cpu: Duration,
}

impl Stats {
    fn p(&self, q: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        let i = ((s.len() - 1) as f64 * q) as usize;
        s[i].as_secs_f64() * 1e6
    }

    fn ops(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.samples.len() as f64
    }

    /// One machine-readable line for the parent.
    fn emit(&self) {
        self.emit_ops(self.ops());
    }

    fn emit_ops(&self, ops: f64) {
        println!(
            "RESULT {:.3} {:.3} {:.1} {} {:.3}",
            self.p(0.5),
            self.p(0.99),
            ops,
            self.samples.len(),
            self.cpu_per_op()
        );
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// (p50 us, p99 us, ops/s) parsed from a child's RESULT line, and CPU
/// per request: the client's, and the server's (or daemon's) when known.
#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    ops: f64,
    client_cpu: f64,
    server_cpu: Option<f64>,
}

fn parse_result(out: &str) -> Option<Figures> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    Some(Figures { p50: *v.first()?, p99: *v.get(1)?, ops: *v.get(2)?, client_cpu: *v.get(4)?, server_cpu: None })
}

/// Untimed requests before each timed loop.
fn warm_up(n: usize) -> usize {
    n / 20 + 5
}

fn time_loop(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..warm_up(n) {
        f();
    }
    let mut samples = Vec::with_capacity(n);
    let cpu = thread_cpu();
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    Stats { samples, wall: start.elapsed(), cpu: thread_cpu() - cpu }
}

// ---- child modes ----

fn floor_token(userns: i32, bpffs: i32, n: usize) {
    let userns = bpftoken_tests::sys::inherited_fd(userns).expect("userns fd");
    let bpffs = bpftoken_tests::sys::inherited_fd(bpffs).expect("bpffs fd");
    rustix::thread::move_into_link_name_space(userns.as_fd(), Some(rustix::thread::LinkNameSpaceType::User))
        .expect("setns into the scope's user namespace");
    let stats = time_loop(n, || {
        drop(bpftokend::sys::bpf_token_create(bpffs.as_fd()).expect("BPF_TOKEN_CREATE"));
    });
    stats.emit();
}

/// Answer one request on `sock`: read its 64 bytes, send 64 bytes and
/// `payload`'s fd. False once the client is gone.
fn rtt_answer(mut sock: &UnixStream, payload: &std::fs::File) -> bool {
    let mut req = [0u8; 64];
    let resp = [b'R'; 64];
    if sock.read_exact(&mut req).is_err() {
        return false;
    }
    let fds = [payload.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(sock, &[IoSlice::new(&resp)], &mut control, SendFlags::empty()).is_ok()
}

/// The floor's server for one client: blocks in `read` on its socket.
fn rtt_server(fd: i32) {
    let sock = UnixStream::from(bpftoken_tests::sys::inherited_fd(fd).expect("socket fd"));
    let payload = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut served = 0u64;
    while rtt_answer(&sock, &payload) {
        served += 1;
    }
    println!("SERVED {served} {:.0}", thread_cpu().as_secs_f64() * 1e9);
}

/// The floor's server for several clients, shaped like the daemon and like
/// `rtt.c` in the experiment: one thread, one epoll set, a request
/// answered as soon as epoll reports it.
fn rtt_server_shared(fds: &[i32]) {
    use rustix::event::epoll;
    let socks: Vec<UnixStream> =
        fds.iter().map(|&fd| UnixStream::from(bpftoken_tests::sys::inherited_fd(fd).expect("socket fd"))).collect();
    let payload = std::fs::File::open("/dev/null").expect("/dev/null");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll_create");
    for (i, sock) in socks.iter().enumerate() {
        epoll::add(&ep, sock, epoll::EventData::new_u64(i as u64), epoll::EventFlags::IN).expect("epoll_ctl");
    }
    let (mut served, mut open) = (0u64, socks.len());
    let mut events = Vec::with_capacity(16);
    while open > 0 {
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None).expect("epoll_wait");
        for ev in &events {
            let sock = &socks[ev.data.u64() as usize];
            if rtt_answer(sock, &payload) {
                served += 1;
            } else {
                epoll::delete(&ep, sock).expect("epoll_ctl del");
                open -= 1;
            }
        }
    }
    println!("SERVED {served} {:.0}", thread_cpu().as_secs_f64() * 1e9);
}

fn rtt_client(fd: i32, n: usize, start_at_ms: u128) {
    let mut sock = UnixStream::from(bpftoken_tests::sys::inherited_fd(fd).expect("socket fd"));
    wait_until(start_at_ms);
    let req = [b'Q'; 64];
    let stats = time_loop(n, || {
        sock.write_all(&req).expect("send");
        let mut resp = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let m = rustix::net::recvmsg(
            &sock,
            &mut [IoSliceMut::new(&mut resp)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL,
        )
        .expect("recv");
        assert_eq!(m.bytes, 64);
        let got: Vec<OwnedFd> = control
            .drain()
            .flat_map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(r) => r.collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(got.len(), 1);
    });
    stats.emit();
}

/// Sleep until the wall clock reaches `ms` since the epoch (so clients
/// spawned one after another start together).
fn wait_until(ms: u128) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    if ms > now {
        std::thread::sleep(Duration::from_millis(u64::try_from(ms - now).unwrap_or(0)));
    }
}

/// Mint `n` tokens per client thread through the daemon at `socket`.
/// `cold` asks for a different map mask each time, so every mint needs a
/// new scope.
fn client(socket: &Path, n: usize, clients: usize, cold: bool) {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let mut c = Client::connect_to(&socket).expect("connect");
                let mut i = t * 1_000_000;
                let mut one = || {
                    i += 1;
                    let req = if cold {
                        // distinct key per mint: maps mask = i (bits below 34)
                        MintRequest { maps: Some((i as u64) & ((1 << 33) - 1)), ..Default::default() }
                    } else {
                        MintRequest::default()
                    };
                    drop(c.mint(&req).expect("mint"));
                };
                time_loop(n, &mut one)
            })
        })
        .collect();
    let runs: Vec<Stats> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    // Summed rates of the clients, as for the floor's concurrent pairs.
    let ops = runs.iter().map(Stats::ops).sum();
    let stats = Stats {
        samples: runs.iter().flat_map(|r| r.samples.iter().copied()).collect(),
        wall: runs.iter().map(|r| r.wall).max().unwrap_or_default(),
        cpu: runs.iter().map(|r| r.cpu).sum(),
    };
    stats.emit_ops(ops);
}

/// The minter's cold path alone, in this (single-threaded) process:
/// create a scope, mint its first token, drop both.
fn cold_inproc(n: usize) {
    let alice = user(ALICE);
    let (mut create, mut mint, mut drop_t) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=n as u64 {
        let key = ScopeKey {
            owner: ScopeOwner::Uid { uid: alice.uid, gid: alice.gid },
            delegation: Delegation { maps: i, ..Delegation::ANY },
        };
        let t0 = Instant::now();
        let scope = Scope::create(key, None).expect("create scope");
        let t1 = Instant::now();
        let token = scope.mint_blocking(None).expect("mint");
        let t2 = Instant::now();
        drop(token);
        drop(scope);
        let t3 = Instant::now();
        create.push(t1 - t0);
        mint.push(t2 - t1);
        drop_t.push(t3 - t2);
    }
    for (name, v) in [("create", create), ("first mint", mint), ("drop", drop_t)] {
        let st = Stats { samples: v, wall: Duration::from_secs(1), cpu: Duration::ZERO };
        println!("{name:<12} p50 {:8.2} us  p99 {:8.2} us", st.p(0.5), st.p(0.99));
    }
}

/// The warm mint alone (clone child, setns, BPF_TOKEN_CREATE, checks),
/// in this process, holding `extra_fds` more open fds (socket pairs, as a
/// daemon's connections): a mint child starts with a copy of the fd table.
fn warm_inproc(n: usize, extra_fds: usize) {
    let _held: Vec<_> =
        (0..extra_fds / 2).map(|_| std::os::unix::net::UnixStream::pair().expect("socketpair")).collect();
    let alice = user(ALICE);
    let scope = Scope::create(
        ScopeKey { owner: ScopeOwner::Uid { uid: alice.uid, gid: alice.gid }, delegation: Delegation::ANY },
        None,
    )
    .expect("create scope");
    let stats = time_loop(n, || drop(scope.mint_blocking(None).expect("mint")));
    stats.emit();
}

/// CPU time of every thread of process `pid` so far (schedstat, ns).
fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

// ---- orchestration (root) ----

fn pinned(pin: bool, program: &Path) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run_child(mut c: Command) -> Figures {
    let out = c.stderr(Stdio::inherit()).output().expect("run bench child");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_result(&text).unwrap_or_else(|| panic!("bench child {c:?} printed no RESULT: {text}"))
}

fn measure_floor_token(self_exe: &Path, scope: &Scope, n: usize, pin: bool) -> Figures {
    for fd in [scope.userns.as_fd(), scope.bpffs_root.as_fd()] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).expect("clear cloexec");
    }
    let mut c = pinned(pin, self_exe);
    c.args([
        "floor-token",
        &scope.userns.as_raw_fd().to_string(),
        &scope.bpffs_root.as_raw_fd().to_string(),
        &n.to_string(),
    ]);
    let f = run_child(c);
    for fd in [scope.userns.as_fd(), scope.bpffs_root.as_fd()] {
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC).expect("set cloexec");
    }
    f
}

/// The kernel's fixed cost inside every cold scope: one
/// `fsconfig(delegate_*)`, during which the kernel scans the whole vmlinux
/// BTF for the four enum types (`find_bpffs_btf_enums` in
/// kernel/bpf/inode.c), whatever the value. A scope delegating all four
/// sets pays it four times; nothing in user space can avoid it.
fn measure_delegate_scan(n: usize, pin: bool) -> Figures {
    // Only the fsconfig call is timed, not fsopen or close.
    let run = move || {
        let mut samples = Vec::with_capacity(n);
        let start = Instant::now();
        let cpu = thread_cpu();
        for _ in 0..n {
            let fs = rustix::mount::fsopen("bpf", rustix::mount::FsOpenFlags::FSOPEN_CLOEXEC).expect("fsopen bpf");
            let t = Instant::now();
            rustix::mount::fsconfig_set_string(&fs, "delegate_cmds", "any").expect("fsconfig delegate_cmds");
            samples.push(t.elapsed());
        }
        Stats { samples, wall: start.elapsed(), cpu: thread_cpu() - cpu }
    };
    let stats = if pin {
        // In a thread of its own, so the affinity does not stick to the
        // orchestrating thread.
        std::thread::spawn(move || {
            let mut cpus = rustix::thread::CpuSet::new();
            cpus.set(0);
            rustix::thread::sched_setaffinity(None, &cpus).expect("pin to CPU 0");
            run()
        })
        .join()
        .expect("scan thread")
    } else {
        run()
    };
    Figures {
        p50: stats.p(0.5),
        p99: stats.p(0.99),
        ops: stats.ops(),
        client_cpu: stats.cpu.as_secs_f64() * 1e6 / n as f64,
        server_cpu: None,
    }
}

/// How the fd round-trip floor's servers are laid out.
#[derive(Clone, Copy, PartialEq)]
enum RttServers {
    /// One server process per client.
    PerClient,
    /// One epoll server process for all clients, as the daemon is.
    Shared,
}

/// `clients` concurrent client processes, each doing `n` round trips
/// carrying one fd, against servers laid out as `servers` says. Returns
/// the first client's latencies and the summed throughput.
fn measure_rtt(self_exe: &Path, n: usize, clients: usize, servers: RttServers, pin: bool) -> Figures {
    let start_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()) + 300;
    // (`a` is the server's end.) Each child inherits exactly its own ends
    // (spawned one at a time, from this thread only), so a server sees EOF
    // when its client is done.
    let pairs: Vec<(UnixStream, UnixStream)> = (0..clients).map(|_| UnixStream::pair().expect("socketpair")).collect();
    let spawn_server = |ends: &[&UnixStream]| {
        for end in ends {
            rustix::io::fcntl_setfd(end.as_fd(), rustix::io::FdFlags::empty()).expect("clear cloexec");
        }
        let mut server = pinned(pin, self_exe);
        server.arg(if ends.len() == 1 { "rtt-server" } else { "rtt-server-shared" });
        server.args(ends.iter().map(|e| e.as_raw_fd().to_string()));
        let child = server.stdout(Stdio::piped()).spawn().expect("rtt server");
        for end in ends {
            rustix::io::fcntl_setfd(end.as_fd(), rustix::io::FdFlags::CLOEXEC).expect("set cloexec");
        }
        child
    };
    let server_list = match servers {
        RttServers::PerClient => pairs.iter().map(|(a, _)| spawn_server(&[a])).collect(),
        RttServers::Shared => vec![spawn_server(&pairs.iter().map(|(a, _)| a).collect::<Vec<_>>())],
    };
    let mut client_list = Vec::new();
    for (a, b) in pairs {
        drop(a);
        rustix::io::fcntl_setfd(b.as_fd(), rustix::io::FdFlags::empty()).expect("clear cloexec");
        let mut client = pinned(pin, self_exe);
        client.args(["rtt-client", &b.as_raw_fd().to_string(), &n.to_string(), &start_at.to_string()]);
        client_list.push(client.stdout(Stdio::piped()).spawn().expect("rtt client"));
        drop(b);
    }
    let mut results = Vec::new();
    for mut client in client_list {
        let mut out = String::new();
        client.stdout.take().expect("stdout").read_to_string(&mut out).expect("read");
        client.wait().expect("rtt client");
        results.push(parse_result(&out).expect("rtt result"));
    }
    let (mut served, mut server_ns) = (0.0, 0.0);
    for mut server in server_list {
        let mut said = String::new();
        server.stdout.take().expect("stdout").read_to_string(&mut said).expect("read");
        server.wait().expect("rtt server");
        let v: Vec<f64> = said.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        served += v.first().copied().unwrap_or(0.0);
        server_ns += v.get(1).copied().unwrap_or(0.0);
    }
    let client_cpu = results.iter().map(|f| f.client_cpu).sum::<f64>() / results.len() as f64;
    let server_cpu = (served > 0.0).then(|| server_ns / 1e3 / served);
    Figures { ops: results.iter().map(|f| f.ops).sum(), client_cpu, server_cpu, ..results[0] }
}

fn measure_daemon(
    env: &Env,
    self_exe: &Path,
    d: &TestDaemon,
    n: usize,
    clients: usize,
    cold: bool,
    pin: bool,
) -> Figures {
    let alice = user(ALICE);
    let mut c = if pin {
        let mut c = as_user(&alice, "taskset");
        c.args(["-c", "0"]).arg(self_exe);
        c
    } else {
        as_user(&alice, self_exe)
    };
    let _ = env;
    c.args([
        "client",
        d.socket.to_str().unwrap(),
        &n.to_string(),
        &clients.to_string(),
        if cold { "cold" } else { "warm" },
    ]);
    let before = process_cpu(d.pid());
    let f = run_child(c);
    let daemon = process_cpu(d.pid()) - before;
    // Every request the daemon answered, warm-ups included.
    let answered = (clients * (n + warm_up(n))) as f64;
    Figures { server_cpu: Some(daemon.as_secs_f64() * 1e6 / answered), ..f }
}

fn measure_sudo(n: usize) -> Option<Figures> {
    let sudo = ["/usr/bin/sudo", "/bin/sudo"].into_iter().find(|p| Path::new(p).exists())?;
    let stats = time_loop(n, || {
        let s = Command::new(sudo).args(["-n", "true"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(s.is_ok_and(|s| s.success()), "sudo -n true failed");
    });
    Some(Figures {
        p50: stats.p(0.5),
        p99: stats.p(0.99),
        ops: stats.ops(),
        client_cpu: stats.cpu_per_op(),
        server_cpu: None,
    })
}

fn row(name: &str, f: Figures) {
    let server = f.server_cpu.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
    println!("{name:<44} {:>9.2} {:>9.2} {:>10.0} {:>8.1} {:>8}", f.p50, f.p99, f.ops, f.client_cpu, server);
}

fn orchestrate(n: usize) {
    let Some(env) = setup("bpftoken-bench") else {
        eprintln!("bpftoken-bench needs root and the test users");
        std::process::exit(2);
    };
    let self_exe = std::env::current_exe().expect("own path");
    let alice = user(ALICE);
    // Scope for the raw floor: created while this process is single-threaded.
    let scope = Scope::create(
        ScopeKey { owner: ScopeOwner::Uid { uid: alice.uid, gid: alice.gid }, delegation: Delegation::ANY },
        None,
    )
    .expect("create a scope for the floor");
    let policy = format!("[[allow]]\nusers = [\"{ALICE}\"]\ncmds = [\"any\"]\nmaps = [\"any\"]\nprogs = [\"any\"]\nattachs = [\"any\"]\n");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bpftoken-bench: {n} mints per measurement, kernel {}, {} CPUs",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("{:<44} {:>9} {:>9} {:>10} {:>17}", "", "p50 us", "p99 us", "ops/s", "cpu/op us cli srv");
    for pin in [false, true] {
        let tag = if pin { "pinned to CPU 0" } else { "unpinned" };
        println!("--- {tag}");
        let token = measure_floor_token(&self_exe, &scope, n * 4, pin);
        let rtt = measure_rtt(&self_exe, n * 4, 1, RttServers::PerClient, pin);
        let rtt_shared = measure_rtt(&self_exe, n * 4, 2, RttServers::Shared, pin);
        let rtt2 = measure_rtt(&self_exe, n * 4, 2, RttServers::PerClient, pin);
        let floor = Figures {
            p50: token.p50 + rtt.p50,
            p99: token.p99 + rtt.p99,
            ops: 1e6 / (token.p50 + rtt.p50),
            client_cpu: token.client_cpu + rtt.client_cpu,
            server_cpu: rtt.server_cpu,
        };
        row("floor: BPF_TOKEN_CREATE + close", token);
        row("floor: unix round trip carrying 1 fd", rtt);
        row("floor: same, 1 server, 2 clients (summed)", rtt_shared);
        row("floor: same, 2 concurrent pairs (ops summed)", rtt2);
        row("floor: token + fd round trip", floor);
        let scan = measure_delegate_scan(200, pin);
        row("cold floor: fsconfig delegate_* (BTF scan)", scan);
        let d = if pin {
            // daemon and minter on CPU 0 too
            TestDaemon::start_pinned(&env, &policy)
        } else {
            TestDaemon::start(&env, &policy, &[])
        };
        let warm1 = measure_daemon(&env, &self_exe, &d, n, 1, false, pin);
        row("daemon warm mint, 1 client", warm1);
        let warm2 = measure_daemon(&env, &self_exe, &d, n, 2, false, pin);
        row("daemon warm mint, 2 clients (ops summed)", warm2);
        let cold1 = measure_daemon(&env, &self_exe, &d, (n / 10).max(50), 1, true, pin);
        row("daemon cold mint (new scope), 1 client", cold1);
        let cold2 = measure_daemon(&env, &self_exe, &d, (n / 10).max(50), 2, true, pin);
        row("daemon cold mint (new scope), 2 clients", cold2);
        drop(d);
        let sudo = measure_sudo(100);
        match sudo {
            Some(s) => row("sudo -n true", s),
            None => println!("sudo -n true: sudo is not installed"),
        }
        println!("  warm p50 / (token + fd round trip) p50:     {:.2}x   (target <= 2x)", warm1.p50 / floor.p50);
        // The target names "the fd-round-trip throughput"; each
        // floor it may mean is printed, the strictest last.
        for (floor_name, floor_ops) in [
            ("1 fd round-trip pair", rtt.ops),
            ("1 server, 2 clients", rtt_shared.ops),
            ("2 fd round-trip pairs", rtt2.ops),
        ] {
            let label = format!("2 clients warm / {floor_name}:");
            println!("  {label:<42}{:.0}%    (target >= 80%)", 100.0 * warm2.ops / floor_ops);
        }
        let total_cpu = |f: Figures| f.client_cpu + f.server_cpu.unwrap_or(0.0);
        println!(
            "  CPU per request, 2 clients (client+server): mint {:.1} us, fd round trip {:.1} us, token create+close \
             {:.1} us",
            total_cpu(warm2),
            total_cpu(rtt2),
            token.client_cpu
        );
        // Where the floor is bound by CPU (pinned, or two pairs on two
        // CPUs), a mint costs at least the floor's CPU plus the token's
        // create and free, whatever the daemon does.
        println!(
            "  ceiling for any mint design, CPU-bound:    {:.0}%    (floor CPU / (floor CPU + token create+close))",
            100.0 * total_cpu(rtt2) / (total_cpu(rtt2) + token.client_cpu)
        );
        println!(
            "  cold p50:                                   {:.0} us  (target <= 500 us on the reference machine)",
            cold1.p50
        );
        println!("  cold p50 / (token + fd round trip) p50:     {:.1}x", cold1.p50 / floor.p50);
        // The bench policy grants all four sets, so each cold scope sets
        // all four delegate_* options.
        println!(
            "  kernel BTF scans alone in a cold scope:     {:.0} us  (4 x delegate_* p50; {:.0}% of cold p50)",
            4.0 * scan.p50,
            100.0 * 4.0 * scan.p50 / cold1.p50
        );
        if let Some(s) = sudo {
            println!("  sudo -n true p50 / warm p50:                {:.0}x   (target >= 50x)", s.p50 / warm1.p50);
        }
    }
    measure_supervisor(&env, &self_exe);
}

/// `open-loop N trapped|plain|getpid`: N `openat(AT_FDCWD, /dev/null)`
/// with the flags the supervisor traps (`O_RDONLY|O_CLOEXEC`) or others,
/// or N `getpid`.
fn open_loop(n: usize, what: &str) {
    for _ in 0..n {
        match what {
            "trapped" => drop(std::fs::File::open("/dev/null")),
            "plain" => {
                let fd = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty());
                drop(fd);
            }
            _ => {
                let _ = rustix::process::getpid();
            }
        }
    }
}

/// Median wall time of 5 runs of `cmd` (a fresh command each run).
fn median_run(mut cmd: impl FnMut() -> Command) -> Duration {
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let mut c = cmd();
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let t = Instant::now();
            let status = c.status().expect("run a supervised workload");
            assert!(status.success(), "workload failed: {status}");
            t.elapsed()
        })
        .collect();
    runs.sort_unstable();
    runs[2]
}

/// What the tracing supervisor costs a command that does not trace.
fn measure_supervisor(env: &Env, self_exe: &Path) {
    let alice = user(ALICE);
    // A grant with tracepoint programs: `bpftoken run` supervises then.
    let policy = format!(
        "[[allow]]\nusers = [\"{ALICE}\"]\ncmds = [\"prog_load\"]\nprogs = [\"tracepoint\"]\nattachs = \
         [\"cgroup_inet_ingress\"]\n"
    );
    let d = TestDaemon::start(env, &policy, &[]);
    println!("--- tracing supervisor (bpftoken run), 100000 calls, median of 5 runs");
    for what in ["trapped", "plain", "getpid"] {
        let workload = |c: &mut Command| {
            c.arg(self_exe).args(["open-loop", "100000", what]);
        };
        let bare = median_run(|| {
            let mut c = as_user(&alice, "env");
            workload(&mut c);
            c
        });
        let run = |extra: &'static [&'static str]| {
            median_run(|| {
                let mut c = as_user(&alice, env.bin("bpftoken"));
                c.arg("--socket").arg(&d.socket).args(["run", "--fd-only"]).args(extra).arg("--").arg("env");
                workload(&mut c);
                c
            })
        };
        let unsupervised = run(&["--no-trace-broker"]);
        let supervised = run(&[]);
        let label = match what {
            "trapped" => "openat O_RDONLY|O_CLOEXEC (trapped)",
            "plain" => "openat O_RDONLY (not trapped)",
            _ => "getpid (not trapped)",
        };
        println!(
            "  {label:<38} bare {:>7.1} ms  run {:>7.1} ms  supervised {:>7.1} ms  supervised/run {:.2}x  \
             per call +{:.2} us",
            bare.as_secs_f64() * 1e3,
            unsupervised.as_secs_f64() * 1e3,
            supervised.as_secs_f64() * 1e3,
            supervised.as_secs_f64() / unsupervised.as_secs_f64(),
            (supervised.as_secs_f64() - unsupervised.as_secs_f64()) * 1e6 / 100_000.0
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("argument {i} must be a number"))
    };
    match args.first().map(String::as_str) {
        Some("floor-token") => floor_token(num(1) as i32, num(2) as i32, num(3)),
        Some("rtt-server") => rtt_server(num(1) as i32),
        Some("rtt-server-shared") => rtt_server_shared(&(1..args.len()).map(|i| num(i) as i32).collect::<Vec<_>>()),
        Some("rtt-client") => rtt_client(num(1) as i32, num(2), num(3) as u128),
        Some("cold-inproc") => cold_inproc(num(1)),
        Some("warm-inproc") => warm_inproc(num(1), args.get(2).map_or(0, |_| num(2))),
        Some("open-loop") => open_loop(num(1), args.get(2).map_or("trapped", String::as_str)),
        Some("client") => client(Path::new(&args[1]), num(2), num(3), args.get(4).map(String::as_str) == Some("cold")),
        Some(n) => orchestrate(n.parse().expect("usage: bpftoken-bench [ITERATIONS]")),
        None => orchestrate(5000),
    }
}
