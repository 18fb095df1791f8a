//! Modes that ask the daemon for grants through the client library:
//! `mint-loop`, `storm`, `mint-masks` (load), `learned`, `mint-for`,
//! `delegate`, and `exec-after-connect` with the `mint-inherited` child it
//! starts (a connection shared across an exec).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use bpftoken::{Client, MintRequest};
use bpftoken_tests::sys;

use crate::token::try_items;

/// `mint-loop SOCKET COUNT [--reconnect] [--until-error] [--ignore-term]`:
/// COUNT mints, on one connection or a new one each; print `minted N`.
pub fn mint_loop(args: &[String]) -> Result<(), String> {
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

/// `storm SOCKET CONNECTIONS MINTS`: hold CONNECTIONS open at once, MINTS
/// on each.
pub fn storm(args: &[String]) -> Result<(), String> {
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

/// `mint-masks SOCKET COUNT MASKS [--until-error]`: COUNT mints cycling
/// through MASKS map masks.
pub fn mint_masks(args: &[String]) -> Result<(), String> {
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

/// `learned SOCKET ID`: send a Learned request for lease ID; print the
/// answer.
pub fn learned(args: &[String]) -> Result<(), String> {
    let path = std::path::PathBuf::from(args.get(1).ok_or("learned SOCKET ID")?);
    let id: u64 = args.get(2).and_then(|c| c.parse().ok()).ok_or("learned SOCKET ID")?;
    let mut client = Client::connect_to(&path).map_err(|e| e.to_string())?;
    match client.learned(id) {
        Ok((lease, used)) => println!("learned lease {} used {used}", lease.id),
        Err(e) => println!("{e}"),
    }
    Ok(())
}

/// `mint-for SOCKET PROGRAM`: a lease for PROGRAM (MintForProgram, as
/// bpftoken run sends it, but with any path); print `minted` or the
/// refusal.
pub fn mint_for(args: &[String]) -> Result<(), String> {
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

/// `delegate SOCKET FD`: ask for a bpffs delegated to the namespace at
/// inherited FD.
pub fn delegate(args: &[String]) -> Result<(), String> {
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

/// `exec-after-connect SOCKET PROGRAM ARG...`: connect, fork; this process
/// execs PROGRAM at once, the child (still the probe, in `mint-inherited`)
/// waits until it has, mints on the shared connection and tries map:array
/// with the token; the child's outcome goes to stdout.
pub fn exec_after_connect(args: &[String]) -> Result<(), String> {
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

/// `mint-inherited FD ITEM...`: mint on the inherited connection FD, try
/// ITEMs (first waiting, if $BPFTOKEN_PROBE_WAIT_EXEC says so, until the
/// connecting process has exec'd).
pub fn mint_inherited(args: &[String]) -> Result<(), String> {
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
