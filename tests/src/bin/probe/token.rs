//! Modes that use a token the probe was given ($BPF_TOKEN_FD, a passed fd,
//! or one created from a bpffs): `try`, `try-as-euid`, `try-then-exec`,
//! `wait-try`, `bpffs-wait-try`, `send-token`, `recv-token`; and what the
//! other modes share for it: trying ITEMs (`map:NAME`, `prog:NAME`, one
//! line each, `ITEM ok` or `ITEM ERRNO`), the token from the environment,
//! waiting for a file.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use bpftoken::Kind;
use bpftoken_tests::sys;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

pub fn errno_name(e: &std::io::Error) -> String {
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

pub fn try_items(token: Option<BorrowedFd<'_>>, items: &[String]) -> Result<(), String> {
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

pub fn token_from_env() -> Result<OwnedFd, String> {
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
pub fn wait_for_file(file: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(file).exists() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{file} did not appear within 60 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// `try [--no-token] ITEM...`: one line per item, `map:hash ok` or
/// `map:hash EPERM`, with $BPF_TOKEN_FD or with no token.
pub fn try_(args: &[String]) -> Result<(), String> {
    if args.get(1).map(String::as_str) == Some("--no-token") {
        try_items(None, &args[2..])
    } else {
        let token = token_from_env()?;
        try_items(Some(token.as_fd()), &args[1..])
    }
}

/// `try-as-euid UID ITEM...` (root): take effective uid UID, keeping real
/// uid 0, which drops every effective capability; try ITEMs with
/// $BPF_TOKEN_FD.
pub fn try_as_euid(args: &[String]) -> Result<(), String> {
    let uid: u32 = args.get(1).and_then(|u| u.parse().ok()).ok_or("try-as-euid UID ITEM...")?;
    let token = token_from_env()?;
    // One thread: the thread's ids are the process's. Real and
    // saved uid stay; the kernel clears the effective capabilities
    // when the effective uid leaves 0.
    rustix::thread::set_thread_res_uid(None, Some(rustix::process::Uid::from_raw(uid)), None)
        .map_err(|e| format!("setresuid(-1, {uid}, -1): {e}"))?;
    try_items(Some(token.as_fd()), &args[2..])
}

/// `try-then-exec ITEM PROGRAM ARG...`: try ITEM with $BPF_TOKEN_FD, then
/// exec PROGRAM (which inherits the token).
pub fn try_then_exec(args: &[String]) -> Result<(), String> {
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

/// `wait-try FILE ITEM...`: try ITEMs, wait until FILE exists, try them
/// again.
pub fn wait_try(args: &[String]) -> Result<(), String> {
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

/// `bpffs-wait-try DIR FILE ITEM...`: create a token from the bpffs at DIR
/// (- for $BPFTOKEN_PIN_DIR), print its fd, try ITEMs, wait until FILE
/// exists, try them with it again and with a fresh token from DIR
/// (`fresh ITEM ...`).
pub fn bpffs_wait_try(args: &[String]) -> Result<(), String> {
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

/// `send-token SOCKET`: send $BPF_TOKEN_FD over SOCKET.
pub fn send_token(args: &[String]) -> Result<(), String> {
    let path = args.get(1).ok_or("send-token SOCKET")?;
    let token = token_from_env()?;
    let sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
    send_fd(&sock, token.as_fd())
}

/// `recv-token SOCKET ITEM...`: listen, take one fd, try ITEMs with it.
pub fn recv_token(args: &[String]) -> Result<(), String> {
    let path = args.get(1).ok_or("recv-token SOCKET ITEM...")?;
    // Let the other test user connect.
    rustix::process::umask(rustix::fs::Mode::empty());
    let listener = UnixListener::bind(path).map_err(|e| format!("{path}: {e}"))?;
    println!("listening");
    let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
    let token = recv_fd(&sock)?;
    try_items(Some(token.as_fd()), &args[2..])
}
