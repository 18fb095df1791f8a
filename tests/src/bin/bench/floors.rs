//! The floors: what the kernel and a bare Unix socket cost for the same
//! work a mint does (token create, an fd round trip, the cold scope's
//! BTF scan, the minter alone in process), each a child mode the
//! orchestrator starts, and the functions that measure them.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bpftoken_proto::Delegation;
use bpftoken_tests::*;
use bpftokend::minter::{Scope, ScopeKey, ScopeOwner};
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

use crate::stats::*;

pub fn floor_token(userns: i32, bpffs: i32, n: usize) {
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
pub fn rtt_answer(mut sock: &UnixStream, payload: &std::fs::File) -> bool {
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
pub fn rtt_server(fd: i32) {
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
pub fn rtt_server_shared(fds: &[i32]) {
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

pub fn rtt_client(fd: i32, n: usize, start_at_ms: u128) {
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
pub fn wait_until(ms: u128) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    if ms > now {
        std::thread::sleep(Duration::from_millis(u64::try_from(ms - now).unwrap_or(0)));
    }
}

/// The minter's cold path alone, in this (single-threaded) process:
/// create a scope, mint its first token, drop both. Prints each step, then
/// a `RESULT` of create + first mint: the cold mint's floor.
pub fn cold_inproc(n: usize) {
    let alice = user(ALICE);
    let (mut create, mut mint, mut drop_t) = (Vec::new(), Vec::new(), Vec::new());
    let (start, cpu) = (Instant::now(), thread_cpu());
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
    let (wall, cpu) = (start.elapsed(), thread_cpu() - cpu);
    let floor: Vec<Duration> = create.iter().zip(&mint).map(|(c, m)| *c + *m).collect();
    for (name, v) in [("create", create), ("first mint", mint), ("drop", drop_t)] {
        let st = Stats { samples: v, wall: Duration::from_secs(1), cpu: Duration::ZERO };
        println!("{name:<12} p50 {:8.2} us  p99 {:8.2} us", st.p(0.5), st.p(0.99));
    }
    Stats { samples: floor, wall, cpu }.emit();
}

/// The warm mint alone (clone child, setns, BPF_TOKEN_CREATE, checks),
/// in this process, holding `extra_fds` more open fds (socket pairs, as a
/// daemon's connections): a mint child starts with a copy of the fd table.
pub fn warm_inproc(n: usize, extra_fds: usize) {
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

pub fn measure_floor_token(self_exe: &Path, scope: &Scope, n: usize, pin: bool) -> Figures {
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
pub fn measure_delegate_scan(n: usize, pin: bool) -> Figures {
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
pub enum RttServers {
    /// One server process per client.
    PerClient,
    /// One epoll server process for all clients, as the daemon is.
    Shared,
}

/// `clients` concurrent client processes, each doing `n` round trips
/// carrying one fd, against servers laid out as `servers` says. Returns
/// the first client's latencies and the summed throughput.
pub fn measure_rtt(self_exe: &Path, n: usize, clients: usize, servers: RttServers, pin: bool) -> Figures {
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
