//! `bpftoken run`, `unshare` and `learn`: get a grant and run a command
//! with it (supervised for tracing where the grant can load tracing
//! programs: `bpftoken::supervise`).

use super::explain::explain_failure;
use super::*;

/// The absolute path of `program` as exec would find it: a name with a
/// slash relative to the working directory, else the first executable
/// regular file of that name in PATH.
pub(super) fn find_program(program: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    let as_path = Path::new(program);
    if as_path.as_os_str().as_encoded_bytes().contains(&b'/') {
        let absolute = std::path::absolute(as_path).ok()?;
        return runnable(&absolute).then_some(absolute);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| runnable(candidate))
}

/// Tell CMD its lease.
pub(super) fn set_lease_env(cmd: &mut std::process::Command, lease: Option<&bpftoken::LeaseInfo>) {
    if let Some(l) = lease {
        cmd.env("BPFTOKEN_LEASE", l.id.to_string());
    }
}

/// How `bpftoken run` runs CMD.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunOptions {
    pub(super) ttl: Option<u32>,
    pub(super) fd_only: bool,
    pub(super) explain: bool,
    /// Supervise CMD for tracing when the token may load tracing programs.
    pub(super) trace_broker: bool,
}

/// Program types whose programs attach through perf events: kprobe (2,
/// also uprobes) and tracepoint (5).
pub(super) const PERF_ATTACHED_PROGS: u64 = (1 << 2) | (1 << 5);

/// In libbpf mode, `request` widened by what libbpf's feature probes
/// need where it narrows a set and the policy grants it
/// (`bpftoken::libbpf`), said once on stderr (ending with `exact`, how to
/// get exactly what was asked); else `request` itself.
fn with_libbpf_probes(
    request: &MintRequest,
    policy: Option<&Result<bpftoken::Explanation, Error>>,
    exact: &str,
) -> MintRequest {
    let Some(Ok(policy)) = policy else { return *request };
    let add = bpftoken::libbpf::probe_additions(request, &policy.grant);
    if add.is_empty() {
        return *request;
    }
    let items: Vec<String> = bpftoken::Kind::ALL
        .iter()
        .flat_map(|&k| bpftoken::delegation::names(k, add.get(k)).into_iter().map(move |n| format!("{} {n}", k.noun())))
        .collect();
    eprintln!(
        "bpftoken: also asking for {}: libbpf probes kernel features with them before it loads an object, and \
         takes a refused probe for a missing feature{exact}",
        items.join(", ")
    );
    bpftoken::libbpf::widened(request, &add)
}

/// Whether `request` narrows any set.
fn narrows(request: &MintRequest) -> bool {
    request.cmds.is_some() || request.maps.is_some() || request.progs.is_some() || request.attachs.is_some()
}

pub(super) fn run(socket: &Path, request: &MintRequest, opts: RunOptions, command: &[OsString]) -> ExitCode {
    let RunOptions { ttl, fd_only, explain, trace_broker } = opts;
    let (program, args) = command.split_first().expect("clap requires a command");
    // The file CMD is, found once: the daemon is told this path (so
    // `executables` rules can match CMD, and the grant be bound to it) and
    // exactly this path is executed.
    let Some(path) = find_program(program) else {
        eprintln!("bpftoken: cannot run {}: no such program (searched PATH)", program.to_string_lossy());
        return ExitCode::from(EXIT_CANNOT_RUN);
    };
    let mut cmd = std::process::Command::new(&path);
    cmd.arg0(program).args(args);
    let declared = path.to_str();
    let mut client = match Client::connect_to(socket) {
        Ok(c) => c,
        Err(e) => return report(socket, &e),
    };
    // Asked now, while we are still who the daemon should judge: libbpf
    // mode moves us into the token's user namespace before CMD runs.
    let probes_matter = !fd_only && narrows(request);
    let policy = if explain || probes_matter { Some(client.query()) } else { None };
    let request = if probes_matter {
        with_libbpf_probes(request, policy.as_ref(), " (--fd-only asks for exactly your lists)")
    } else {
        *request
    };
    let request = &request;
    // Both modes keep what they hand to CMD alive until it has run.
    let mut keep: Vec<OwnedFd> = Vec::new();
    let token = if fd_only {
        match client.mint_leased_for_program(request, ttl, declared) {
            Ok(t) => t,
            Err(e) => return report(socket, &e),
        }
    } else {
        let grant = match client.mint_scope_leased_for_program(request, ttl, declared) {
            Ok(g) => g,
            Err(e) => return report(socket, &e),
        };
        // In container mode the token's namespace is the one we are in.
        let inside = namespaces::is_current_userns(grant.userns.as_fd()).unwrap_or(false);
        if !inside {
            if let Err(e) = namespaces::enter_userns(grant.userns.as_fd()) {
                eprintln!("bpftoken: {e}");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        }
        if let Err(code) = inherit(grant.bpffs.as_fd()) {
            return code;
        }
        let path = format!("/proc/self/fd/{}", grant.bpffs.as_raw_fd());
        cmd.env("LIBBPF_BPF_TOKEN_PATH", &path).env("BPFTOKEN_PIN_DIR", &path);
        keep.push(grant.bpffs);
        grant.token
    };
    if let Err(code) = inherit(token.as_fd()) {
        return code;
    }
    cmd.env("BPF_TOKEN_FD", token.as_fd().as_raw_fd().to_string());
    set_lease_env(&mut cmd, token.lease());
    let brokered = trace_broker && token.granted().progs & PERF_ATTACHED_PROGS != 0;
    if !brokered && !explain {
        let err = cmd.exec();
        eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    // Supervised: the tracing broker answers CMD's tracing calls, and
    // --explain watches its bpf() calls.
    let outcome = match bpftoken::supervise::run(brokered.then_some(client), explain, cmd, program) {
        Ok(outcome) => outcome,
        Err(e) => {
            let hint = if brokered { " (--no-trace-broker runs it unsupervised)" } else { "" };
            eprintln!("bpftoken: {e}{hint}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let code = outcome.status;
    if let (true, Some(policy)) = (code != 0 && explain, policy) {
        explain_failure(policy, &token, code, outcome.watched.as_ref());
    }
    drop(keep);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

pub(super) fn unshare(socket: &Path, request: &MintRequest, ttl: Option<u32>, command: &[OsString]) -> ExitCode {
    let mut client = match Client::connect_to(socket) {
        Ok(c) => c,
        Err(e) => return report(socket, &e),
    };
    // The delegated bpffs is for libbpf tools: their probes need its types.
    let request = if narrows(request) { with_libbpf_probes(request, Some(&client.query()), "") } else { *request };
    let request = &request;
    let holder = match namespaces::UsernsHolder::spawn(Path::new("/proc/self/exe"), "userns-holder") {
        Ok(h) => h,
        Err(e) => {
            eprintln!("bpftoken: {e}");
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let mount = match client.delegate_mount_leased(request, ttl, holder.userns()) {
        Ok(m) => m,
        Err(e) => return report(socket, &e),
    };
    let userns = holder.finish();
    drop(client);
    if let Err(e) = namespaces::enter_with_bpffs(userns.as_fd(), mount.bpffs.as_fd()) {
        eprintln!("bpftoken: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let lease = mount.lease.clone();
    drop(mount);
    drop(userns);
    let shell = std::env::var_os("SHELL").unwrap_or_else(|| "/bin/sh".into());
    let (program, args) = command.split_first().unwrap_or((&shell, &[]));
    let mut cmd = std::process::Command::new(program);
    set_lease_env(&mut cmd, lease.as_ref());
    let err = cmd.args(args).exec();
    eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(EXIT_CANNOT_RUN)
}

/// The caller's user name (from /etc/passwd), else its uid.
pub(super) fn rule_user() -> bpftoken::RuleUser {
    let uid = rustix::process::getuid().as_raw();
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
    });
    name.map_or(bpftoken::RuleUser::Uid(uid), bpftoken::RuleUser::Name)
}

/// `bpftoken learn`: a learning lease, CMD in libbpf mode in a child
/// (`learn-exec`, which enters the scope's user namespace, so that we stay
/// outside and ask the daemon again as ourselves), then the rule.
pub(super) fn learn(socket: &Path, command: &[OsString]) -> ExitCode {
    let grant = match Client::connect_to(socket).and_then(|mut c| c.learn(&MintRequest::default())) {
        Ok(g) => g,
        Err(e) => return report(socket, &e),
    };
    let Some(lease) = grant.token.lease().cloned() else {
        eprintln!("bpftoken: the daemon answered without a lease");
        return ExitCode::from(EXIT_PROTOCOL);
    };
    for fd in [grant.userns.as_fd(), grant.bpffs.as_fd(), grant.token.as_fd()] {
        if let Err(code) = inherit(fd) {
            return code;
        }
    }
    let path = format!("/proc/self/fd/{}", grant.bpffs.as_raw_fd());
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("learn-exec")
        .arg(grant.userns.as_raw_fd().to_string())
        .arg("--")
        .args(command)
        .env("LIBBPF_BPF_TOKEN_PATH", &path)
        .env("BPFTOKEN_PIN_DIR", &path)
        .env("BPF_TOKEN_FD", grant.token.as_fd().as_raw_fd().to_string());
    set_lease_env(&mut cmd, Some(&lease));
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpftoken: cannot run {}: {e}", command[0].to_string_lossy());
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    // The scope stays alive (we hold it) until the daemon has answered.
    let learned = Client::connect_to(socket).and_then(|mut c| c.learned(lease.id));
    drop(grant);
    let used = match learned {
        Ok((_, used)) => used,
        Err(e) => return report(socket, &e),
    };
    print!("{}", bpftoken::learned_rule(&rule_user(), &used));
    if code != 0 {
        eprintln!(
            "bpftoken: the command exited with status {code}; the rule covers what it used until then (lease {} \
             ended)",
            lease.id
        );
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `bpftoken learn-exec USERNS -- CMD`: enter USERNS (an inherited fd),
/// close it, and become CMD, which inherits the token and the bpffs root
/// only (as `run` leaves them to CMD in libbpf mode).
pub(super) fn learn_exec(userns: i32, command: &[OsString]) -> ExitCode {
    if let Err(e) = namespaces::enter_inherited_userns(userns) {
        eprintln!("bpftoken: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let (program, args) = command.split_first().expect("clap requires a command");
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(EXIT_CANNOT_RUN)
}
