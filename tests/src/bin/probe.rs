//! `bpftoken-probe`: what the end-to-end tests run as unprivileged users.
//!
//! ```text
//! bpftoken-probe try [--no-token] ITEM...      ITEM = map:NAME | prog:NAME
//! bpftoken-probe send-token SOCKET             send $BPF_TOKEN_FD over SOCKET
//! bpftoken-probe recv-token SOCKET ITEM...     listen, take one fd, try ITEMs with it
//! bpftoken-probe mint-loop SOCKET COUNT [--reconnect]
//! bpftoken-probe mint-loop SOCKET COUNT --ignore-term
//! bpftoken-probe storm SOCKET CONNECTIONS MINTS  hold CONNECTIONS open at once, MINTS on each
//! bpftoken-probe mint-masks SOCKET COUNT MASKS [--until-error]
//!                                             COUNT mints cycling through MASKS map masks
//! bpftoken-probe fd-check SOCKET               mint once; report the fds it gained
//! bpftoken-probe scope-fds SOCKET              libbpf-mode mint; report the fds it gained, by kind
//! bpftoken-probe send-and-exit SOCKET         send a mint request, print our pid, exit without waiting
//! bpftoken-probe exec-after-connect SOCKET PROGRAM ARG...
//!                                             connect, fork; this process execs PROGRAM at once, the
//!                                             child (still the probe) waits until it has, mints on the
//!                                             shared connection and tries map:array with the token;
//!                                             the child's outcome goes to stdout
//! bpftoken-probe mint-inherited FD ITEM...     mint on the inherited connection FD, try ITEMs
//! bpftoken-probe attach-tracepoint SOCKET CATEGORY:NAME COUNT
//!                                             load a tracepoint program with $BPF_TOKEN_FD, ask the
//!                                             daemon for the tracepoint's id and perf event, attach
//!                                             with BPF_LINK_CREATE, call getpid COUNT times, print
//!                                             `id N`, `attached`, `run_cnt N` (or the failing step)
//! bpftoken-probe attach-kprobe SOCKET SYMBOL COUNT
//!                                             the same for a kprobe program on SYMBOL, triggered by
//!                                             COUNT opens of /dev/null (for do_sys_openat2)
//! bpftoken-probe mint-for SOCKET PROGRAM      a lease for PROGRAM (MintForProgram, as bpftoken run
//!                                             sends it, but with any path); print `minted` or the refusal
//! bpftoken-probe open-perf SOCKET KIND TARGET  ask for a perf event: KIND tracepoint (CAT:NAME),
//!                                             kprobe/kretprobe (SYMBOL), uprobe (PATH[:OFFSET][@PID]);
//!                                             print `opened` or the refusal
//! bpftoken-probe try-then-exec ITEM PROGRAM ARG...
//!                                             try ITEM with $BPF_TOKEN_FD, then exec PROGRAM (which
//!                                             inherits the token)
//! bpftoken-probe delegate SOCKET FD            ask for a bpffs delegated to the namespace at inherited FD
//! bpftoken-probe hold SOCKET COUNT SECONDS     hold COUNT idle connections open
//! bpftoken-probe churn SOCKET COUNT            connect and close COUNT times
//! bpftoken-probe close-at SOCKET               a mint frame cut at every offset, then one unread answer
//! bpftoken-probe wait FILE                    wait until FILE exists
//! bpftoken-probe wait-try FILE ITEM...         try ITEMs, wait until FILE exists, try them again
//! bpftoken-probe bpffs-wait-try DIR FILE ITEM...  create a token from the bpffs at DIR (- for
//!                                             $BPFTOKEN_PIN_DIR), print its fd, try ITEMs, wait until
//!                                             FILE exists, try them with it again and with a fresh token
//!                                             from DIR (`fresh ITEM ...`)
//! bpftoken-probe fds                          list this process's open fds: number and kind
//!                                             (token, userns, bpffs, other)
//! bpftoken-probe learned SOCKET ID             send a Learned request for lease ID; print the answer
//! bpftoken-probe try-as-euid UID ITEM...       (root) take effective uid UID, keeping real uid 0,
//!                                             which drops every effective capability; try ITEMs
//!                                             with $BPF_TOKEN_FD
//! bpftoken-probe time-map COUNT FILE          median ns of COUNT array map creates with the token;
//!                                             wait until FILE exists, measure again
//! bpftoken-probe time-mint SOCKET COUNT       median ns of COUNT mints on one connection
//! bpftoken-probe hijack SECONDS                ptrace/read/setns every other process of its uid
//! bpftoken-probe term-all SECONDS              kill(-1, SIGTERM) in a loop
//! bpftoken-probe signal-root SECONDS           SIGSTOP/SIGTERM every root process it may signal
//! bpftoken-probe stop-helper DAEMON_PID SECONDS  SIGSTOP one of our bpffs helpers (a child of a
//!                                             minter of that daemon) that stays stopped; print its pid
//! ```
//!
//! `try` prints one line per item: `map:hash ok` or `map:hash EPERM`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;

use bpftoken::{Client, Kind, MintRequest};
use bpftoken_tests::sys;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EBADF) => "EBADF".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string(),
    }
}

type BpfCall = fn(u32, Option<BorrowedFd<'_>>) -> std::io::Result<OwnedFd>;

fn try_items(token: Option<BorrowedFd<'_>>, items: &[String]) -> Result<(), String> {
    try_items_as(token, items, "")
}

/// [`try_items`], each line starting with `prefix`.
fn try_items_as(token: Option<BorrowedFd<'_>>, items: &[String], prefix: &str) -> Result<(), String> {
    for item in items {
        let (kind, name) = item.split_once(':').ok_or_else(|| format!("bad item {item:?}"))?;
        let (kind, call): (Kind, BpfCall) = match kind {
            "map" => (Kind::Map, sys::map_create),
            "prog" => (Kind::Prog, sys::prog_load),
            _ => return Err(format!("bad item kind {kind:?}")),
        };
        let bit = bpftoken::delegation::parse_name(kind, name).map_err(|e| e.to_string())?;
        let result = call(bit.trailing_zeros(), token);
        match result {
            Ok(_) => println!("{prefix}{item} ok"),
            Err(e) => println!("{prefix}{item} {}", errno_name(&e)),
        }
    }
    Ok(())
}

/// Load a `prog_type` program with $BPF_TOKEN_FD, attach it to the
/// daemon's perf event on `target`, run `trigger` `count` times; print
/// `attached` and `run_cnt N`, or the step that failed.
fn attach_and_count(
    client: &mut Client,
    prog_type: u32,
    target: &bpftoken::TraceTarget,
    count: u32,
    trigger: impl Fn(),
) -> Result<(), String> {
    let token = token_from_env()?;
    let prog = match sys::prog_load(prog_type, Some(token.as_fd())) {
        Ok(p) => p,
        Err(e) => {
            println!("prog_load {}", errno_name(&e));
            return Ok(());
        }
    };
    let event = match client.open_perf_event(target, None) {
        Ok(ev) => ev,
        Err(e) => {
            println!("open_perf_event: {e}");
            return Ok(());
        }
    };
    let _link = match sys::attach_perf_event(prog.as_fd(), event.fd.as_fd()) {
        Ok(link) => link,
        Err(e) => {
            println!("link_create {}", errno_name(&e));
            return Ok(());
        }
    };
    println!("attached");
    for _ in 0..count {
        trigger();
    }
    println!("run_cnt {}", sys::prog_run_count(prog.as_fd()).map_err(|e| e.to_string())?);
    Ok(())
}

fn token_from_env() -> Result<OwnedFd, String> {
    let n: i32 = std::env::var("BPF_TOKEN_FD")
        .map_err(|_| "BPF_TOKEN_FD is not set".to_owned())?
        .parse()
        .map_err(|_| "BPF_TOKEN_FD is not a number".to_owned())?;
    sys::inherited_fd(n).map_err(|e| format!("BPF_TOKEN_FD={n}: {e}"))
}

fn send_fd(sock: &UnixStream, fd: BorrowedFd<'_>) -> Result<(), String> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(sock, &[IoSlice::new(b"t")], &mut control, SendFlags::empty())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn recv_fd(sock: &UnixStream) -> Result<OwnedFd, String> {
    let mut buf = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| e.to_string())?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut rights) = m {
            if let Some(fd) = rights.next() {
                return Ok(fd);
            }
        }
    }
    Err("no fd received".into())
}

/// This process's open fds, by number.
fn open_fds() -> Vec<String> {
    // Listed, then kept only if still open: the listing's own directory fd
    // is closed by then.
    let listed: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    listed.into_iter().filter(|fd| std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()).collect()
}

/// The fds opened since `before`: number, kind (token, userns, bpffs or
/// other) and whether it is CLOEXEC.
fn new_fds(before: &[String]) -> Vec<(String, &'static str, bool)> {
    open_fds()
        .into_iter()
        .filter(|f| !before.contains(f))
        .map(|fd| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap_or("?").trim();
            let cloexec = u32::from_str_radix(flags, 8).is_ok_and(|f| f & 0o2000000 != 0);
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let kind = if info.lines().any(|l| l.starts_with("allowed_cmds:")) {
                "token"
            } else if link.to_string_lossy().starts_with("user:[") {
                "userns"
            } else if rustix::fs::statfs(format!("/proc/self/fd/{fd}")).is_ok_and(|s| s.f_type == 0xcafe_4a11) {
                "bpffs"
            } else {
                "other"
            };
            (fd, kind, cloexec)
        })
        .collect()
}

/// A token created from the bpffs at `dir` (its root directory).
fn token_from_bpffs(dir: &str) -> std::io::Result<OwnedFd> {
    let root = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    sys::token_create(root.as_fd())
}

/// Wait until `file` exists (60 s at most).
fn wait_for_file(file: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{file} did not appear within 60 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Median of `count` timings of `f`, in nanoseconds.
fn median_ns(count: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<u128, String> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let start = std::time::Instant::now();
        f()?;
        times.push(start.elapsed().as_nanos());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("wait") => wait_for_file(args.get(1).ok_or("wait FILE")?),
        Some("wait-try") => {
            let file = args.get(1).ok_or("wait-try FILE ITEM...")?;
            let token = token_from_env()?;
            println!("lease {}", std::env::var("BPFTOKEN_LEASE").unwrap_or_else(|_| "-".into()));
            try_items(Some(token.as_fd()), &args[2..])?;
            println!("waiting");
            // The reader sees the lines above before we block.
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
            wait_for_file(file)?;
            try_items(Some(token.as_fd()), &args[2..])
        }
        Some("bpffs-wait-try") => {
            const USAGE: &str = "bpffs-wait-try DIR FILE ITEM...";
            let dir = match args.get(1).map(String::as_str).ok_or(USAGE)? {
                "-" => std::env::var("BPFTOKEN_PIN_DIR").map_err(|_| "BPFTOKEN_PIN_DIR is not set")?,
                d => d.to_owned(),
            };
            let file = args.get(2).ok_or(USAGE)?;
            println!("lease {}", std::env::var("BPFTOKEN_LEASE").unwrap_or_else(|_| "-".into()));
            let token = token_from_bpffs(&dir).map_err(|e| format!("token from {dir}: {e}"))?;
            println!("token {}", std::os::fd::AsRawFd::as_raw_fd(&token));
            try_items(Some(token.as_fd()), &args[3..])?;
            println!("waiting");
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
            wait_for_file(file)?;
            try_items(Some(token.as_fd()), &args[3..])?;
            match token_from_bpffs(&dir) {
                Ok(fresh) => try_items_as(Some(fresh.as_fd()), &args[3..], "fresh "),
                Err(e) => {
                    println!("fresh token {}", errno_name(&e));
                    Ok(())
                }
            }
        }
        Some("fds") => {
            for (fd, kind, _) in new_fds(&[]) {
                println!("fd {fd} {kind}");
            }
            Ok(())
        }
        Some("learned") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("learned SOCKET ID")?);
            let id: u64 = args.get(2).and_then(|c| c.parse().ok()).ok_or("learned SOCKET ID")?;
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            match client.learned(id) {
                Ok((lease, used)) => println!("learned lease {} used {used}", lease.id),
                Err(e) => println!("{e}"),
            }
            Ok(())
        }
        Some("try-as-euid") => {
            let uid: u32 = args.get(1).and_then(|u| u.parse().ok()).ok_or("try-as-euid UID ITEM...")?;
            let token = token_from_env()?;
            // One thread: the thread's ids are the process's. Real and
            // saved uid stay; the kernel clears the effective capabilities
            // when the effective uid leaves 0.
            rustix::thread::set_thread_res_uid(None, Some(rustix::process::Uid::from_raw(uid)), None)
                .map_err(|e| format!("setresuid(-1, {uid}, -1): {e}"))?;
            try_items(Some(token.as_fd()), &args[2..])
        }
        Some("time-map") => {
            let count: usize = args.get(1).and_then(|c| c.parse().ok()).ok_or("time-map COUNT FILE")?;
            let file = args.get(2).ok_or("time-map COUNT FILE")?;
            let token = token_from_env()?;
            let array = bpftoken::delegation::parse_name(Kind::Map, "array").map_err(|e| e.to_string())?;
            let create =
                || sys::map_create(array.trailing_zeros(), Some(token.as_fd())).map(drop).map_err(|e| e.to_string());
            println!("median_ns {}", median_ns(count, create)?);
            std::io::Write::flush(&mut std::io::stdout()).map_err(|e| e.to_string())?;
            wait_for_file(file)?;
            println!("median_ns {}", median_ns(count, create)?);
            Ok(())
        }
        Some("time-mint") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("time-mint SOCKET COUNT")?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("time-mint SOCKET COUNT")?;
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            // The first builds the scope (cold); the rest are warm.
            client.mint(&MintRequest::default()).map_err(|e| e.to_string())?;
            let mint = || client.mint(&MintRequest::default()).map(drop).map_err(|e| e.to_string());
            println!("median_ns {}", median_ns(count, mint)?);
            Ok(())
        }
        Some("try") => {
            if args.get(1).map(String::as_str) == Some("--no-token") {
                try_items(None, &args[2..])
            } else {
                let token = token_from_env()?;
                try_items(Some(token.as_fd()), &args[1..])
            }
        }
        Some("send-token") => {
            let path = args.get(1).ok_or("send-token SOCKET")?;
            let token = token_from_env()?;
            let sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
            send_fd(&sock, token.as_fd())
        }
        Some("recv-token") => {
            let path = args.get(1).ok_or("recv-token SOCKET ITEM...")?;
            // Let the other test user connect.
            rustix::process::umask(rustix::fs::Mode::empty());
            let listener = UnixListener::bind(path).map_err(|e| format!("{path}: {e}"))?;
            println!("listening");
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            let token = recv_fd(&sock)?;
            try_items(Some(token.as_fd()), &args[2..])
        }
        Some("mint-loop") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("mint-loop SOCKET COUNT")?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("mint-loop SOCKET COUNT")?;
            let reconnect = args[3..].iter().any(|a| a == "--reconnect");
            let until_error = args[3..].iter().any(|a| a == "--until-error");
            if args[3..].iter().any(|a| a == "--ignore-term") {
                sys::ignore_signal(libc::SIGTERM).map_err(|e| e.to_string())?;
            }
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            let mut ok = 0usize;
            for _ in 0..count {
                if reconnect {
                    client = Client::connect_to(&path).map_err(|e| e.to_string())?;
                }
                match client.mint(&MintRequest::default()) {
                    Ok(token) => {
                        drop(token);
                        ok += 1;
                    }
                    Err(e) => {
                        println!("error {e}");
                        if until_error {
                            break;
                        }
                    }
                }
            }
            println!("minted {ok}");
            Ok(())
        }
        Some("storm") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("storm SOCKET CONNECTIONS MINTS")?);
            let conns: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("storm SOCKET CONNECTIONS MINTS")?;
            let mints: usize = args.get(3).and_then(|c| c.parse().ok()).ok_or("storm SOCKET CONNECTIONS MINTS")?;
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
            );
            // All connections open at once, then 50 threads mint on them.
            let clients: Vec<Client> =
                (0..conns).map(|_| Client::connect_to(&path).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
            println!("connected {}", clients.len());
            let per_thread = conns.div_ceil(50).max(1);
            let mut groups: Vec<Vec<Client>> = Vec::new();
            let mut it = clients.into_iter();
            loop {
                let g: Vec<Client> = it.by_ref().take(per_thread).collect();
                if g.is_empty() {
                    break;
                }
                groups.push(g);
            }
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(groups.len()));
            let threads: Vec<_> = groups
                .into_iter()
                .map(|mut g| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        let (mut ok, mut errors) = (0usize, Vec::new());
                        for _ in 0..mints {
                            for c in &mut g {
                                match c.mint(&MintRequest::default()) {
                                    Ok(_) => ok += 1,
                                    Err(e) => errors.push(e.to_string()),
                                }
                            }
                        }
                        (ok, errors)
                    })
                })
                .collect();
            let (mut ok, mut errors) = (0usize, Vec::new());
            for t in threads {
                let (o, e) = t.join().map_err(|_| "thread panicked")?;
                ok += o;
                errors.extend(e);
            }
            for e in errors.iter().take(5) {
                println!("error {e}");
            }
            println!("errors {}", errors.len());
            println!("minted {ok}");
            Ok(())
        }
        Some("mint-masks") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("mint-masks SOCKET COUNT MASKS")?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("mint-masks SOCKET COUNT MASKS")?;
            let masks: usize = args.get(3).and_then(|c| c.parse().ok()).ok_or("mint-masks SOCKET COUNT MASKS")?;
            let until_error = args.get(4).is_some_and(|a| a == "--until-error");
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            let (mut ok, mut errors) = (0usize, 0usize);
            for i in 0..count {
                if until_error && errors > 0 {
                    break;
                }
                // maps mask 1..=masks: distinct scopes, all within "any"
                let req = MintRequest { maps: Some((i % masks) as u64 + 1), ..Default::default() };
                match client.mint(&req) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        if errors < 5 {
                            println!("error {e}");
                        }
                        errors += 1;
                    }
                }
            }
            println!("errors {errors}");
            println!("minted {ok}");
            Ok(())
        }
        Some("fd-check") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("fd-check SOCKET")?);
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            let before = open_fds();
            let token = client.mint(&MintRequest::default()).map_err(|e| e.to_string())?;
            let new = new_fds(&before);
            println!("new fds {}", new.len());
            for (fd, kind, cloexec) in new {
                println!("fd {fd} token {} cloexec {cloexec}", kind == "token");
            }
            drop(token);
            Ok(())
        }
        Some("scope-fds") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("scope-fds SOCKET")?);
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            let before = open_fds();
            let grant = client.mint_scope(&MintRequest::default()).map_err(|e| e.to_string())?;
            let new = new_fds(&before);
            println!("new fds {}", new.len());
            for (_, kind, cloexec) in new {
                println!("{kind} cloexec {cloexec}");
            }
            drop(grant);
            Ok(())
        }
        Some("mint-unread") => {
            // COUNT mint requests and a query in one write, nothing read for
            // a moment (so the daemon answers them all first), then every
            // answer: its kind (or refusal), and the fds that came.
            use std::io::Write;
            let usage = "mint-unread SOCKET COUNT";
            let path = args.get(1).ok_or(usage)?;
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let mut sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
            let encode = |body| {
                bpftoken_proto::codec::encode_request(&bpftoken_proto::Request::new(body)).map_err(|e| e.to_string())
            };
            let mut frames = Vec::new();
            for _ in 0..count {
                frames.extend(encode(bpftoken_proto::message::RequestBody::Mint(MintRequest::default()))?);
            }
            frames.extend(encode(bpftoken_proto::message::RequestBody::Query)?);
            sock.write_all(&frames).map_err(|e| e.to_string())?;
            std::thread::sleep(std::time::Duration::from_millis(500));
            let (mut bytes, mut fds) = (Vec::new(), 0usize);
            let mut answers = 0;
            while answers <= count {
                let mut buf = [0u8; 4096];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    &sock,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(|e| e.to_string())?;
                if got.bytes == 0 {
                    break;
                }
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(r) = m {
                        fds += r.count();
                    }
                }
                bytes.extend_from_slice(&buf[..got.bytes]);
                while bytes.len() >= 4 {
                    let header: [u8; 4] = bytes[..4].try_into().map_err(|_| "header")?;
                    let len = bpftoken_proto::codec::payload_len(header).map_err(|e| e.to_string())?;
                    if bytes.len() < 4 + len {
                        break;
                    }
                    let response =
                        bpftoken_proto::codec::decode_response(&bytes[4..4 + len]).map_err(|e| e.to_string())?;
                    bytes.drain(..4 + len);
                    answers += 1;
                    match response {
                        bpftoken_proto::Response::Refused(r) => println!("refused {}: {}", r.code, r.message),
                        other => {
                            let name = format!("{other:?}");
                            println!("{}", name.split(['(', ' ', '{']).next().unwrap_or_default());
                        }
                    }
                }
            }
            println!("fds {fds}");
            Ok(())
        }
        Some("send-and-exit") => {
            use std::io::Write;
            let path = args.get(1).ok_or("send-and-exit SOCKET")?;
            let mut sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
            let request =
                bpftoken_proto::Request::new(bpftoken_proto::message::RequestBody::Mint(MintRequest::default()));
            let frame = bpftoken_proto::codec::encode_request(&request).map_err(|e| e.to_string())?;
            sock.write_all(&frame).map_err(|e| e.to_string())?;
            println!("{}", std::process::id());
            Ok(())
        }
        Some("exec-after-connect") => {
            use std::os::unix::process::CommandExt;
            let path = args.get(1).ok_or("exec-after-connect SOCKET PROGRAM ARG...")?;
            let program = args.get(2).ok_or("exec-after-connect SOCKET PROGRAM ARG...")?;
            let sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
            // Shared with the child and kept across the exec.
            rustix::io::fcntl_setfd(&sock, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
            let me = std::fs::read_link("/proc/self/exe").map_err(|e| e.to_string())?;
            let parent = std::process::id();
            let child = std::process::Command::new("/proc/self/exe")
                .args(["mint-inherited", &std::os::fd::AsRawFd::as_raw_fd(&sock).to_string(), "map:array"])
                .env("BPFTOKEN_PROBE_WAIT_EXEC", format!("{parent}:{}", me.display()))
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            let _ = child.id();
            // The connecting process becomes PROGRAM; the child speaks.
            let err = std::process::Command::new(program).args(&args[3..]).exec();
            Err(format!("cannot exec {program}: {err}"))
        }
        Some("attach-tracepoint") => {
            let usage = "attach-tracepoint SOCKET CATEGORY:NAME COUNT";
            let path = args.get(1).ok_or(usage)?;
            let (category, name) = args.get(2).and_then(|t| t.split_once(':')).ok_or(usage)?;
            let count: u32 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
            match client.tracepoint_id(category, name) {
                Ok(id) => println!("id {}", id.id),
                Err(e) => {
                    println!("tracepoint_id: {e}");
                    return Ok(());
                }
            }
            let target = bpftoken::TraceTarget::Tracepoint { category: category.to_owned(), name: name.to_owned() };
            // BPF_PROG_TYPE_TRACEPOINT; getpid(2) itself each time (rustix
            // does not cache it).
            attach_and_count(&mut client, 5, &target, count, || {
                let _ = rustix::process::getpid();
            })
        }
        Some("attach-kprobe") => {
            let usage = "attach-kprobe SOCKET SYMBOL COUNT";
            let path = args.get(1).ok_or(usage)?;
            let symbol = args.get(2).ok_or(usage)?;
            let count: u32 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
            let target = bpftoken::TraceTarget::Kprobe { symbol: symbol.clone(), offset: 0, retprobe: false };
            // BPF_PROG_TYPE_KPROBE, triggered by opens (do_sys_openat2).
            attach_and_count(&mut client, 2, &target, count, || drop(std::fs::File::open("/dev/null")))
        }
        Some("mint-for") => {
            let usage = "mint-for SOCKET PROGRAM";
            let path = args.get(1).ok_or(usage)?;
            let program = args.get(2).ok_or(usage)?;
            let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
            match client.mint_leased_for_program(&MintRequest::default(), None, Some(program)) {
                Ok(_) => println!("minted"),
                Err(e) => println!("{e}"),
            }
            Ok(())
        }
        Some("open-perf") => {
            let usage = "open-perf SOCKET KIND TARGET";
            let path = args.get(1).ok_or(usage)?;
            let kind = args.get(2).ok_or(usage)?;
            let spec = args.get(3).ok_or(usage)?;
            let (spec, pid) = match spec.split_once('@') {
                Some((s, p)) => (s, Some(p.parse::<i32>().map_err(|_| usage)?)),
                None => (spec.as_str(), None),
            };
            let target = match kind.as_str() {
                "tracepoint" => {
                    let (category, name) = spec.split_once(':').ok_or(usage)?;
                    bpftoken::TraceTarget::Tracepoint { category: category.into(), name: name.into() }
                }
                "kprobe" | "kretprobe" => {
                    bpftoken::TraceTarget::Kprobe { symbol: spec.to_owned(), offset: 0, retprobe: kind == "kretprobe" }
                }
                "uprobe" | "uretprobe" => {
                    let (file, offset) = match spec.rsplit_once(':') {
                        Some((f, o)) => (f, u64::from_str_radix(o.trim_start_matches("0x"), 16).map_err(|_| usage)?),
                        None => (spec, 0),
                    };
                    bpftoken::TraceTarget::Uprobe { path: file.to_owned(), offset, retprobe: kind == "uretprobe" }
                }
                _ => return Err(usage.into()),
            };
            let mut client = Client::connect_to(std::path::Path::new(path)).map_err(|e| e.to_string())?;
            match client.open_perf_event(&target, pid) {
                Ok(_) => println!("opened"),
                Err(e) => println!("{e}"),
            }
            Ok(())
        }
        Some("try-then-exec") => {
            use std::os::unix::process::CommandExt;
            let usage = "try-then-exec ITEM PROGRAM ARG...";
            let (item, program) = (args.get(1).ok_or(usage)?, args.get(2).ok_or(usage)?);
            {
                let token = token_from_env()?;
                try_items(Some(token.as_fd()), std::slice::from_ref(item))?;
                // The token stays open (it is BPF_TOKEN_FD) for PROGRAM.
                std::mem::forget(token);
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let err = std::process::Command::new(program).args(&args[3..]).exec();
            Err(format!("cannot exec {program}: {err}"))
        }
        Some("mint-inherited") => {
            let fd: i32 = args.get(1).and_then(|f| f.parse().ok()).ok_or("mint-inherited FD ITEM...")?;
            // Wait until the process that connected runs another program.
            if let Ok(wait) = std::env::var("BPFTOKEN_PROBE_WAIT_EXEC") {
                let (pid, exe) = wait.split_once(':').ok_or("BPFTOKEN_PROBE_WAIT_EXEC=PID:EXE")?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.as_os_str() == exe) {
                    if std::time::Instant::now() > deadline {
                        return Err("the connecting process did not exec".into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            let sock = UnixStream::from(sys::inherited_fd(fd).map_err(|e| format!("fd {fd}: {e}"))?);
            let mut client = bpftoken::Client::from_stream(sock).map_err(|e| e.to_string())?;
            match client.mint_leased(&MintRequest::default(), None) {
                Ok(token) => try_items(Some(token.as_fd()), &args[2..]),
                Err(e) => {
                    println!("mint: {e}");
                    Ok(())
                }
            }
        }
        Some("delegate") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("delegate SOCKET FD")?);
            let fd: i32 = args.get(2).and_then(|c| c.parse().ok()).ok_or("delegate SOCKET FD")?;
            let ns = sys::inherited_fd(fd).map_err(|e| format!("fd {fd}: {e}"))?;
            let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
            match client.delegate_mount(&MintRequest::default(), ns.as_fd()) {
                Ok(m) => println!("delegated {}", m.granted),
                Err(e) => println!("{e}"),
            }
            Ok(())
        }
        Some("hold") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("hold SOCKET COUNT SECONDS")?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("hold SOCKET COUNT SECONDS")?;
            let secs: u64 = args.get(3).and_then(|c| c.parse().ok()).ok_or("hold SOCKET COUNT SECONDS")?;
            let held: Vec<UnixStream> =
                (0..count).map(|_| UnixStream::connect(&path)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            println!("holding {}", held.len());
            std::thread::sleep(std::time::Duration::from_secs(secs));
            Ok(())
        }
        Some("hold-report") => {
            // hold-report SOCKET COUNT SECONDS: connect COUNT times (as
            // many as succeed), wait, then say for each connection what the
            // daemon answered unasked (a busy or timeout refusal) or that
            // it is still open: "refused TEXT" lines, then "open N".
            let usage = "hold-report SOCKET COUNT SECONDS";
            let path = std::path::PathBuf::from(args.get(1).ok_or(usage)?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let secs: u64 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            let _ = rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
            );
            let held: Vec<UnixStream> = (0..count).map_while(|_| UnixStream::connect(&path).ok()).collect();
            println!("holding {}", held.len());
            std::thread::sleep(std::time::Duration::from_secs(secs));
            let mut open = 0usize;
            let mut refusals: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
            for mut s in held {
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 4096];
                match std::io::Read::read(&mut s, &mut buf) {
                    Ok(n) if n > bpftoken_proto::codec::FRAME_HEADER_LEN => {
                        let text = match bpftoken_proto::codec::decode_response(
                            &buf[bpftoken_proto::codec::FRAME_HEADER_LEN..n],
                        ) {
                            Ok(bpftoken_proto::Response::Refused(r)) => r.to_string(),
                            Ok(other) => format!("unexpected {other:?}"),
                            Err(e) => format!("undecodable {e}"),
                        };
                        *refusals.entry(text).or_default() += 1;
                    }
                    Ok(_) => *refusals.entry("closed".to_owned()).or_default() += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                    Err(e) => *refusals.entry(format!("error {e}")).or_default() += 1,
                }
            }
            for (text, n) in refusals {
                println!("refused {n} {text}");
            }
            println!("open {open}");
            Ok(())
        }
        Some("churn") => {
            let path = std::path::PathBuf::from(args.get(1).ok_or("churn SOCKET COUNT")?);
            let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("churn SOCKET COUNT")?;
            let mut ok = 0usize;
            for _ in 0..count {
                if UnixStream::connect(&path).is_ok() {
                    ok += 1;
                }
            }
            println!("connected {ok}");
            Ok(())
        }
        Some("close-at") => {
            use std::io::Write;
            let path = std::path::PathBuf::from(args.get(1).ok_or("close-at SOCKET")?);
            let frame = bpftoken_proto::codec::encode_request(&bpftoken_proto::Request::new(
                bpftoken_proto::message::RequestBody::Mint(MintRequest::default()),
            ))
            .map_err(|e| e.to_string())?;
            for cut in 0..frame.len() {
                let mut s = UnixStream::connect(&path).map_err(|e| e.to_string())?;
                s.write_all(&frame[..cut]).map_err(|e| e.to_string())?;
            }
            // Whole requests whose answers (and tokens) are never read.
            for _ in 0..20 {
                let mut s = UnixStream::connect(&path).map_err(|e| e.to_string())?;
                s.write_all(&frame).map_err(|e| e.to_string())?;
            }
            println!("cuts {}", frame.len());
            Ok(())
        }
        Some("hijack") => {
            // The bpffs helper runs as this uid in a namespace this uid
            // owns: try to seize it, read its memory, enter its mount
            // namespace. Every other process of the uid is tried.
            let secs: u64 = args.get(1).and_then(|c| c.parse().ok()).ok_or("hijack SECONDS")?;
            let me = rustix::process::getpid().as_raw_nonzero().get();
            let uid = rustix::process::getuid().as_raw();
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let (mut tried, mut gained) = (0usize, Vec::new());
            while std::time::Instant::now() < end {
                let Ok(dir) = std::fs::read_dir("/proc") else { continue };
                for entry in dir.flatten() {
                    let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                    if pid == me {
                        continue;
                    }
                    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    let ours = status.lines().any(|l| l.starts_with(&format!("Uid:\t{uid}\t")));
                    // Skip our own tools (dumpable, so trivially ours).
                    let name = status.lines().find_map(|l| l.strip_prefix("Name:\t")).unwrap_or("");
                    if !ours || name.starts_with("bpftoken") || name == "setpriv" {
                        continue;
                    }
                    tried += 1;
                    let (seized, read) = sys::try_hijack(pid);
                    let mntns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).is_ok();
                    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).is_ok();
                    if seized || read || mntns || mem {
                        gained.push(format!("{pid} {name}: seize {seized} read {read} ns/mnt {mntns} mem {mem}"));
                    }
                }
            }
            println!("tried {tried}");
            for g in &gained {
                println!("gained {g}");
            }
            Ok(())
        }
        Some("term-all") => {
            // Every process this user may signal, its own included (they
            // ignore SIGTERM): the mint children while in its namespace.
            sys::ignore_signal(libc::SIGTERM).map_err(|e| e.to_string())?;
            let secs: u64 = args.get(1).and_then(|c| c.parse().ok()).ok_or("term-all SECONDS")?;
            // Give the victim client time to start and ignore SIGTERM.
            std::thread::sleep(std::time::Duration::from_millis(500));
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let mut calls = 0usize;
            while std::time::Instant::now() < end {
                let _ = sys::kill_all(libc::SIGTERM);
                calls += 1;
            }
            println!("kill calls {calls}");
            Ok(())
        }
        Some("signal-root") => {
            // An attacker's view: a root process this user may signal can
            // only be one inside a user namespace this user owns (a mint
            // child). Stop it and ask it to terminate, as fast as possible.
            let secs: u64 = args.get(1).and_then(|c| c.parse().ok()).ok_or("signal-root SECONDS")?;
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let mut hits = 0usize;
            let mut pass = 0usize;
            while std::time::Instant::now() < end {
                pass += 1;
                // Alternate, so that SIGTERM also lands on running children.
                let sig =
                    if pass.is_multiple_of(2) { rustix::process::Signal::STOP } else { rustix::process::Signal::TERM };
                let Ok(dir) = std::fs::read_dir("/proc") else { continue };
                for entry in dir.flatten() {
                    let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                    let root = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
                    let Some(pid) = rustix::process::Pid::from_raw(pid).filter(|_| root) else { continue };
                    if rustix::process::kill_process(pid, sig).is_ok() {
                        hits += 1;
                    }
                }
            }
            println!("signalled {hits}");
            Ok(())
        }
        Some("stop-mint-child") => {
            // Catch a mint child of the daemon DAEMON_PID as it is made (the
            // newest pid on the machine, from ns_last_pid) and SIGSTOP it:
            // it accepts the signal once it is in a user namespace this user
            // owns (first as root, then as that namespace's root, our uid).
            // Prints its pid and leaves it stopped.
            let usage = "stop-mint-child DAEMON_PID SECONDS";
            let daemon: u32 = args.get(1).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let secs: u64 = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
            sys::ignore_signal(libc::SIGTERM).map_err(|e| e.to_string())?;
            let parent = format!("PPid:\t{daemon}");
            let own_uid = format!("Uid:\t{}\t", rustix::process::getuid().as_raw());
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            let me = std::process::id();
            while std::time::Instant::now() < end {
                let Some(pid) = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .filter(|p| p.cast_unsigned() != me)
                else {
                    continue;
                };
                let Some(pid) = rustix::process::Pid::from_raw(pid) else { continue };
                let status = || std::fs::read_to_string(format!("/proc/{}/status", pid.as_raw_nonzero()));
                // Children of that daemon only: never our own client, nor
                // another daemon's child.
                if !status().is_ok_and(|s| {
                    s.lines().any(|l| l.starts_with("Uid:\t0\t") || l.starts_with(&own_uid))
                        && s.lines().any(|l| l == parent)
                }) {
                    continue;
                }
                if rustix::process::kill_process(pid, rustix::process::Signal::STOP).is_ok() {
                    // Stopped, not already exiting (a zombie takes signals too).
                    for _ in 0..1000 {
                        let state = status().ok().and_then(|s| {
                            s.lines().find_map(|l| l.strip_prefix("State:")).map(|v| v.trim().chars().next())
                        });
                        match state.flatten() {
                            Some('T') => {
                                println!("stopped {}", pid.as_raw_nonzero());
                                return Ok(());
                            }
                            Some('R' | 'S' | 'D') => std::thread::sleep(std::time::Duration::from_micros(100)),
                            _ => break,
                        }
                    }
                }
            }
            Err("no mint child caught".into())
        }
        Some("stop-helper") => {
            // Catch one of our own bpffs helpers (a process of our uid whose
            // parent is a child of DAEMON_PID, a minter) as it is made, and
            // SIGSTOP it. A helper caught after its last step is killed by
            // its minter at once, so keep only one still stopped a moment
            // later: its minter is then waiting for it.
            let usage = "stop-helper DAEMON_PID SECONDS";
            let daemon: u32 = args.get(1).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let secs: u64 = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
            let me = std::process::id();
            let uid = format!("Uid:\t{}\t", rustix::process::getuid().as_raw());
            let status = |p: u32| std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let field = |s: &str, name: &str| s.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                let Some(pid) = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .filter(|p| *p != me)
                else {
                    continue;
                };
                let s = status(pid);
                if !s.lines().any(|l| l.starts_with(&uid)) {
                    continue;
                }
                let Some(parent) = field(&s, "PPid:").and_then(|p| p.parse::<u32>().ok()) else { continue };
                if field(&status(parent), "PPid:") != Some(daemon.to_string()) {
                    continue;
                }
                let Some(target) = rustix::process::Pid::from_raw(pid.cast_signed()) else { continue };
                if rustix::process::kill_process(target, rustix::process::Signal::STOP).is_err() {
                    continue;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
                let s = status(pid);
                let stopped = field(&s, "State:").is_some_and(|v| v.starts_with('T'));
                if stopped && field(&s, "PPid:") == Some(parent.to_string()) {
                    println!("stopped {pid} minter {parent}");
                    return Ok(());
                }
            }
            Err("no helper caught".into())
        }
        _ => Err("usage: bpftoken-probe try|send-token|recv-token|mint-loop|signal-root ...".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpftoken-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
