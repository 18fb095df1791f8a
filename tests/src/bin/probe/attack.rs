//! An attacker's modes, for the threat tests: `hijack` (ptrace, read or
//! enter the namespaces of its uid's other processes), `term-all` and
//! `signal-root` (signal whatever it may), `stop-mint-child` and
//! `stop-helper` (catch a daemon's child or one of our bpffs helpers as it
//! is made, and leave it stopped). Each prints what it tried and gained.

use bpftoken_tests::sys;

/// `hijack SECONDS`: ptrace/read/setns every other process of its uid.
pub fn hijack(args: &[String]) -> Result<(), String> {
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

/// `term-all SECONDS`: kill(-1, SIGTERM) in a loop.
pub fn term_all(args: &[String]) -> Result<(), String> {
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

/// `signal-root SECONDS`: SIGSTOP/SIGTERM every root process it may
/// signal.
pub fn signal_root(args: &[String]) -> Result<(), String> {
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
        let sig = if pass.is_multiple_of(2) { rustix::process::Signal::STOP } else { rustix::process::Signal::TERM };
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

/// `stop-mint-child DAEMON_PID SECONDS`: SIGSTOP a mint child of that
/// daemon as it is made; print its pid.
pub fn stop_mint_child(args: &[String]) -> Result<(), String> {
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
            s.lines().any(|l| l.starts_with("Uid:\t0\t") || l.starts_with(&own_uid)) && s.lines().any(|l| l == parent)
        }) {
            continue;
        }
        if rustix::process::kill_process(pid, rustix::process::Signal::STOP).is_ok() {
            // Stopped, not already exiting (a zombie takes signals too).
            for _ in 0..1000 {
                let state = status()
                    .ok()
                    .and_then(|s| s.lines().find_map(|l| l.strip_prefix("State:")).map(|v| v.trim().chars().next()));
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

/// `stop-helper DAEMON_PID SECONDS`: SIGSTOP one of our bpffs helpers (a
/// child of a minter of that daemon) that stays stopped; print its pid.
pub fn stop_helper(args: &[String]) -> Result<(), String> {
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
