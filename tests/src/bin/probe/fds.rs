//! Modes that report the fds a process holds: `fds` (under `bpftoken run`
//! or `learn`), `fd-check` and `scope-fds` (what one mint adds), each fd
//! by kind: token, userns, bpffs or other.

use bpftoken::{Client, MintRequest};

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

/// `fds`: list this process's open fds: number and kind (token, userns,
/// bpffs, other).
pub fn fds() -> Result<(), String> {
    for (fd, kind, _) in new_fds(&[]) {
        println!("fd {fd} {kind}");
    }
    Ok(())
}

/// `fd-check SOCKET`: mint once; report the fds it gained.
pub fn fd_check(args: &[String]) -> Result<(), String> {
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

/// `scope-fds SOCKET`: libbpf-mode mint; report the fds it gained, by kind.
pub fn scope_fds(args: &[String]) -> Result<(), String> {
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
