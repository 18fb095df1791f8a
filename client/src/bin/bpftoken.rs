//! `bpftoken run|unshare|learn|query|inspect|leases|revoke`: get and use BPF
//! tokens from bpftokend, and end leases (root: anyone's). Its man pages and
//! shell completions are generated from these definitions (`bpftoken man
//! DIR`, `bpftoken completions SHELL DIR`).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bpftoken::{delegation, namespaces, Client, Error, Kind, MintRequest, RefusalCode};
use clap::{Parser, Subcommand};

/// Get BPF tokens from bpftokend.
///
/// bpftoken asks bpftokend, a root daemon listening on a Unix socket, for
/// BPF tokens: file descriptors with which the kernel lets you use exactly
/// the bpf() commands, map, program and attach types that the daemon's
/// policy (bpftokend.policy(5)) grants you, without root. Asking for more
/// than the grant is refused, never silently cut down. Every grant is a
/// lease, which the daemon can make expire or revoke where its BPF LSM
/// enforcer runs.
///
/// Environment: BPFTOKEN_SOCKET names the daemon's socket. A command run
/// with a token finds its fd number in BPF_TOKEN_FD and its lease id in
/// BPFTOKEN_LEASE; in libbpf mode also LIBBPF_BPF_TOKEN_PATH and
/// BPFTOKEN_PIN_DIR, naming the delegated bpffs from which libbpf creates
/// tokens itself and in which it may pin.
///
/// Exit status: 0 on success; 1 if the daemon refused (the reason and its
/// stable code are printed), 2 on a usage error, 69 if the daemon is
/// unreachable, 76 on a protocol error. run, unshare and learn exit with
/// the command's own status, or 127 if it cannot run.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Daemon socket [default: $BPFTOKEN_SOCKET or /run/bpftokend/socket]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run CMD with a BPF token (libbpf mode unless --fd-only).
    ///
    /// libbpf mode (default): CMD runs as root of the token's user
    /// namespace (mapped to you outside), with BPF_TOKEN_FD, the delegated
    /// bpffs open as LIBBPF_BPF_TOKEN_PATH=/proc/self/fd/N (so unmodified
    /// libbpf tools such as bpftool create tokens themselves) and
    /// BPFTOKEN_PIN_DIR naming that bpffs for pins. --fd-only: CMD runs as
    /// you, in your namespaces, with BPF_TOKEN_FD alone.
    ///
    /// Each list narrows one delegation set (comma-separated kernel names,
    /// e.g. --maps array,hash); a set left out means everything the policy
    /// grants in it. Exit status: CMD's own; 1 if refused, 69 if the
    /// daemon is unreachable, 76 on a protocol error, 127 if CMD cannot run.
    Run {
        #[command(flatten)]
        sets: Sets,
        /// Plain fd mode: pass only BPF_TOKEN_FD; stay in your namespaces.
        #[arg(long)]
        fd_only: bool,
        /// If CMD fails, print the token's masks and what the policy would
        /// grant beyond them, to tell "token lacks X" from other failures.
        #[arg(long)]
        explain: bool,
        /// Do not supervise CMD for tracing. By default, when the token
        /// may load tracepoint or kprobe programs, CMD runs under a seccomp
        /// filter so that its perf_event_open and tracefs id opens are
        /// answered by the daemon for the targets the policy names
        /// (docs/tracing.md); this costs a few microseconds per trapped call.
        #[arg(long)]
        no_trace_broker: bool,
        #[command(flatten)]
        lease: LeaseArgs,
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Run CMD (default: $SHELL) in a new user and mount namespace of
    /// yours with a delegated bpffs at /sys/fs/bpf, where libbpf creates
    /// tokens by itself: unmodified tools need no flags.
    Unshare {
        #[command(flatten)]
        sets: Sets,
        #[command(flatten)]
        lease: LeaseArgs,
        /// The command and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Learn the minimal policy rule for CMD: run it in libbpf mode with
    /// the full grant of your `learn = true` rules, under a learning lease
    /// whose uses the daemon's enforcer records, then print the `[[allow]]`
    /// rule that grants exactly the commands, map, program and attach types
    /// CMD used, and end the lease.
    ///
    /// Needs the daemon's enforcer. Exit status: CMD's own (the rule is
    /// printed either way); 1 if refused, 69 if the daemon is unreachable,
    /// 76 on a protocol error, 127 if CMD cannot run.
    Learn {
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Show what the policy grants you right now, and which rules say so.
    /// Mints nothing.
    Query {
        #[command(flatten)]
        output: JsonOutput,
    },
    /// List your leases (root: everyone's): every grant is one. CMD of
    /// `bpftoken run` finds its own in BPFTOKEN_LEASE.
    Leases {
        #[command(flatten)]
        output: JsonOutput,
    },
    /// Revoke leases: their tokens stop working at once (the kernel
    /// refuses them with EPERM); other leases keep working.
    ///
    /// Anyone may revoke their own leases; root may revoke anyone's, every
    /// lease of a uid (--uid) and every lease (--all). A uid's or every
    /// lease also reaches the pinned enforcers of other bpftokend builds
    /// left by an upgrade: each is reported, revoked where this daemon
    /// knows its layout, else with the `rm -r` command that ends it.
    /// Exit status: 0; 1 if refused or if leases of another build could
    /// not be revoked, 69 if the daemon is unreachable, 76 on a protocol
    /// error.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "lease", "uid", "all"])))]
    Revoke {
        /// The lease id (see `bpftoken leases`); the same as --lease ID.
        #[arg(value_name = "ID")]
        id: Option<u64>,
        /// One lease, by id.
        #[arg(long, value_name = "ID")]
        lease: Option<u64>,
        /// Every lease of this uid.
        #[arg(long, value_name = "UID")]
        uid: Option<u32>,
        /// Every lease (root only).
        #[arg(long)]
        all: bool,
    },
    /// Print the masks of a token: the fd in BPF_TOKEN_FD, or --fd N.
    ///
    /// Read with BPF_OBJ_GET_INFO_BY_FD (Linux 6.17+), else from fdinfo,
    /// where a set holding every bit the kernel knows reads as `any`.
    Inspect {
        /// The token's fd number [default: $BPF_TOKEN_FD].
        #[arg(long, value_name = "N")]
        fd: Option<i32>,
        #[command(flatten)]
        output: JsonOutput,
    },
    /// Write the man pages bpftoken(1) and one per subcommand
    /// (bpftoken-run(1), ...) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Write SHELL's completion script for bpftoken into DIR, under the
    /// name SHELL's completion directory expects (bash: bpftoken, zsh:
    /// _bpftoken, fish: bpftoken.fish).
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: CompletionShell,
        /// The directory to write the script into.
        dir: PathBuf,
    },
    /// Internal (bpftoken learn): enter the user namespace open as fd
    /// USERNS and run CMD there.
    #[command(hide = true, name = "learn-exec")]
    LearnExec {
        userns: i32,
        #[arg(required = true, last = true)]
        command: Vec<OsString>,
    },
    /// Internal (bpftoken unshare): hold a new user namespace until stdin closes.
    #[command(hide = true, name = "userns-holder")]
    UsernsHolder,
}

/// `--json` of the reporting subcommands.
#[derive(Debug, clap::Args)]
struct JsonOutput {
    /// Print one JSON document on stdout instead of text (its schema:
    /// docs/json.md).
    #[arg(long)]
    json: bool,
}

/// The shells `bpftoken completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// The lease a grant asks for.
#[derive(Debug, clap::Args)]
struct LeaseArgs {
    /// End the lease after SECONDS (1 to 604800), if the policy's `ttl`
    /// does not end it sooner; after that the kernel refuses the token
    /// (needs the daemon's enforcer).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=604800))]
    ttl: Option<u32>,
}

/// The delegation sets a request narrows.
#[derive(Debug, clap::Args)]
struct Sets {
    /// Commands, e.g. map_create,prog_load.
    #[arg(long, value_name = "LIST")]
    cmds: Option<String>,
    /// Map types, e.g. array,hash,ringbuf.
    #[arg(long, value_name = "LIST")]
    maps: Option<String>,
    /// Program types, e.g. socket_filter,kprobe.
    #[arg(long, value_name = "LIST")]
    progs: Option<String>,
    /// Attach types, e.g. cgroup_inet_ingress.
    #[arg(long, value_name = "LIST")]
    attachs: Option<String>,
}

impl Sets {
    fn request(&self) -> Result<MintRequest, String> {
        Ok(MintRequest {
            cmds: parse(Kind::Cmd, self.cmds.as_deref())?,
            maps: parse(Kind::Map, self.maps.as_deref())?,
            progs: parse(Kind::Prog, self.progs.as_deref())?,
            attachs: parse(Kind::Attach, self.attachs.as_deref())?,
        })
    }
}

const EXIT_REFUSED: u8 = 1;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_PROTOCOL: u8 = 76;
const EXIT_USAGE: u8 = 2;
const EXIT_CANNOT_RUN: u8 = 127;

fn parse(kind: Kind, list: Option<&str>) -> Result<Option<u64>, String> {
    list.map(|l| delegation::parse_list(kind, l).map_err(|e| format!("--{}: {e}", kind.key()))).transpose()
}

/// The explanation as printed lines.
fn explanation_lines(e: &bpftoken::Explanation) -> Vec<String> {
    let mut out = Vec::new();
    if e.allowed_by.is_empty() {
        out.push(format!("no rule of {} matches you", e.policy));
        return out;
    }
    out.push(format!("{} grants you (allowed by {}):", e.policy, e.allowed_by.join(", ")));
    if !e.denied_by.is_empty() {
        out.push(format!("  minus what {} deny", e.denied_by.join(", ")));
    }
    for kind in Kind::ALL {
        let names = delegation::names(kind, e.grant.get(kind));
        let list = if names.is_empty() { "(none)".to_owned() } else { names.join(", ") };
        out.push(format!("  {:<8} {list}", format!("{}:", kind.key())));
    }
    for (rule, n) in &e.limits {
        out.push(format!("  at most {n} mints per minute (rule {rule})"));
    }
    out
}

/// Print `document` as JSON on stdout.
fn print_json<T: serde::Serialize>(document: &T) -> ExitCode {
    match bpftoken::json::to_string(document) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: cannot write JSON: {e}");
            ExitCode::FAILURE
        }
    }
}

fn query(socket: &Path, json: bool) -> ExitCode {
    let asked = Client::connect_to(socket).and_then(|mut c| Ok((c.query_enforcement_reporting()?, c.trace_targets()?)));
    match asked {
        Ok(((e, enforcement, other_builds), _)) if json => {
            print_json(&bpftoken::json::QueryDocument::new(&e, enforcement.as_ref(), &other_builds))
        }
        Ok(((e, enforcement, other_builds), tracing)) => {
            for line in explanation_lines(&e) {
                println!("{line}");
            }
            for line in trace_lines(tracing.as_deref()) {
                println!("{line}");
            }
            match enforcement {
                Some(state) => println!("enforcement: {state}"),
                None => println!("enforcement: unknown (the daemon is too old to say)"),
            }
            for other in &other_builds {
                println!("other build: {other}");
            }
            if let Some(r) = &e.refusal {
                println!("a request now would be refused: {r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            explain_unreachable(&e);
            ExitCode::from(match e {
                Error::Refused(_) => EXIT_REFUSED,
                Error::Unreachable { .. } => EXIT_UNAVAILABLE,
                Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
            })
        }
    }
}

/// What `bpftoken query` says of tracing targets (docs/tracing.md): a
/// line per pattern the caller's rules name; nothing when they name none
/// (or the daemon is too old to say), as before tracing existed.
fn trace_lines(targets: Option<&[bpftoken::TraceAllowance]>) -> Vec<String> {
    let targets = targets.unwrap_or_default();
    targets
        .iter()
        .map(|t| {
            let verb = if t.denied { "denied" } else { "allowed" };
            format!("tracing: {} {} {} (rule {})", t.key, t.pattern, verb, t.rule)
        })
        .collect()
}

/// Lines naming a token's masks, one per set.
fn mask_lines(d: &bpftoken::Delegation) -> Vec<String> {
    Kind::ALL
        .iter()
        .map(|&kind| {
            let names = delegation::names(kind, d.get(kind));
            format!("{}: {}", kind.key(), if names.is_empty() { "(none)".to_owned() } else { names.join(",") })
        })
        .collect()
}

fn inspect(fd: Option<i32>, json: bool) -> ExitCode {
    let fd = match fd.map(Ok).unwrap_or_else(|| {
        std::env::var("BPF_TOKEN_FD")
            .map_err(|_| "no --fd given and BPF_TOKEN_FD is not set".to_owned())
            .and_then(|v| v.parse::<i32>().map_err(|_| format!("BPF_TOKEN_FD={v:?} is not an fd number")))
    }) {
        Ok(fd) if fd >= 0 => fd,
        Ok(fd) => {
            eprintln!("bpftoken: {fd} is not an fd number");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match bpftoken::inspect::token_masks_of(fd) {
        Ok((masks, source)) if json => print_json(&bpftoken::json::InspectDocument::new(fd, &masks, source)),
        Ok((masks, source)) => {
            for line in mask_lines(&masks) {
                println!("{line}");
            }
            println!("source: {}", source.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exit_for(e: &Error) -> ExitCode {
    ExitCode::from(match e {
        Error::Refused(_) => EXIT_REFUSED,
        Error::Unreachable { .. } => EXIT_UNAVAILABLE,
        Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
    })
}

/// No daemon, and none could run on this kernel: say so rather than leave
/// "is the daemon running?" as the only hint.
fn explain_unreachable(e: &Error) {
    if matches!(e, Error::Unreachable { .. }) {
        if let bpftoken::kernel::TokenSupport::Unsupported { release } = bpftoken::kernel::token_support() {
            eprintln!(
                "bpftoken: BPF tokens are not supported by this kernel ({release}): BPF_TOKEN_CREATE needs \
                 Linux 6.9 or later, so bpftokend cannot run here"
            );
        }
    }
}

/// Report a failed request; for a refusal that the policy can explain, say
/// what it does grant, so "not granted" can be told from "not in the
/// policy at all".
fn report(socket: &Path, e: &Error) -> ExitCode {
    eprintln!("bpftoken: {e}");
    explain_unreachable(e);
    let explainable = matches!(
        e,
        Error::Refused(r) if matches!(r.code, RefusalCode::NotGranted | RefusalCode::EmptyGrant | RefusalCode::RateLimited)
    );
    if explainable {
        if let Ok(explanation) = Client::connect_to(socket).and_then(|mut c| c.query()) {
            if !explanation.allowed_by.is_empty() {
                for line in explanation_lines(&explanation) {
                    eprintln!("bpftoken: {line}");
                }
            }
        }
    }
    exit_for(e)
}

/// Keep `fd` open across exec.
fn inherit(fd: BorrowedFd<'_>) -> Result<(), ExitCode> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(|e| {
        eprintln!("bpftoken: cannot pass an fd to the command: {e}");
        ExitCode::from(EXIT_CANNOT_RUN)
    })
}

/// Lines listing `leases`, a header first.
fn lease_lines(leases: &[bpftoken::LeaseInfo]) -> Vec<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut out = vec![format!(
        "{:>6}  {:>6}  {:<15}  {:>10}  {:<14}  {:<12}  {:<12}  BOUND TO",
        "LEASE", "UID", "MODE", "SCOPE", "COVERS", "STATE", "EXPIRES"
    )];
    for l in leases {
        let covers = match (l.whole_scope, l.serial) {
            (true, _) => "whole scope".to_owned(),
            (false, Some(s)) => format!("token {s}"),
            (false, None) => "token".to_owned(),
        };
        let expires = match l.expires {
            None => "never".to_owned(),
            Some(t) if t > now => format!("in {} s", t - now),
            Some(t) => format!("{} s ago", now - t),
        };
        let mut bound = Vec::new();
        if let Some(uid) = l.bound_uid {
            bound.push(format!("uid {uid}"));
        }
        if let Some(cgroup) = &l.bound_cgroup {
            bound.push(format!("cgroup {cgroup}"));
        }
        let bound = if bound.is_empty() { "-".to_owned() } else { bound.join(", ") };
        out.push(format!(
            "{:>6}  {:>6}  {:<15}  {:>10}  {:<14}  {:<12}  {expires:<12}  {bound}",
            l.id,
            l.uid,
            l.mode.as_str(),
            l.scope,
            covers,
            l.state.as_str()
        ));
    }
    out
}

fn leases(socket: &Path, json: bool) -> ExitCode {
    match Client::connect_to(socket).and_then(|mut c| c.leases()) {
        Ok(list) if json => print_json(&bpftoken::json::LeasesDocument::new(&list)),
        Ok(list) if list.is_empty() => {
            println!("no leases");
            ExitCode::SUCCESS
        }
        Ok(list) => {
            for line in lease_lines(&list) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => report(socket, &e),
    }
}

/// What `bpftoken revoke` ends, from its options (clap requires one).
fn revoke_target(id: Option<u64>, lease: Option<u64>, uid: Option<u32>) -> bpftoken::RevokeTarget {
    match (id.or(lease), uid) {
        (Some(id), _) => bpftoken::RevokeTarget::Lease(id),
        (None, Some(uid)) => bpftoken::RevokeTarget::Uid(uid),
        (None, None) => bpftoken::RevokeTarget::All,
    }
}

fn revoke(socket: &Path, target: bpftoken::RevokeTarget) -> ExitCode {
    match Client::connect_to(socket).and_then(|mut c| c.revoke_reporting(target)) {
        Ok((revoked, other_builds)) => {
            if revoked.is_empty() && other_builds.is_empty() {
                println!("no lease to revoke");
            }
            for l in &revoked {
                println!("revoked lease {} (uid {}, {}): its tokens no longer work", l.id, l.uid, l.mode.as_str());
            }
            // Pinned enforcers of other builds: revoked where the daemon
            // knows their layout; else how to end them.
            for other in &other_builds {
                println!("{other}");
            }
            let unrevoked = other_builds.iter().any(|o| o.leases.is_none_or(|l| l.revoked < l.total));
            if unrevoked {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => report(socket, &e),
    }
}

/// The absolute path of `program` as exec would find it: a name with a
/// slash relative to the working directory, else the first executable
/// regular file of that name in PATH.
fn find_program(program: &std::ffi::OsStr) -> Option<PathBuf> {
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
fn set_lease_env(cmd: &mut std::process::Command, lease: Option<&bpftoken::LeaseInfo>) {
    if let Some(l) = lease {
        cmd.env("BPFTOKEN_LEASE", l.id.to_string());
    }
}

/// How `bpftoken run` runs CMD.
#[derive(Debug, Clone, Copy)]
struct RunOptions {
    ttl: Option<u32>,
    fd_only: bool,
    explain: bool,
    /// Supervise CMD for tracing when the token may load tracing programs.
    trace_broker: bool,
}

/// Program types whose programs attach through perf events: kprobe (2,
/// also uprobes) and tracepoint (5).
const PERF_ATTACHED_PROGS: u64 = (1 << 2) | (1 << 5);

fn run(socket: &Path, request: &MintRequest, opts: RunOptions, command: &[OsString]) -> ExitCode {
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
    let policy = if explain { Some(client.query()) } else { None };
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
    let supervised = trace_broker && token.granted().progs & PERF_ATTACHED_PROGS != 0;
    let code = if supervised {
        match bpftoken::supervise::run(client, cmd, program) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bpftoken: {e} (--no-trace-broker runs it unsupervised)");
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        }
    } else if !explain {
        let err = cmd.exec();
        eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
        return ExitCode::from(EXIT_CANNOT_RUN);
    } else {
        match cmd.status() {
            Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            Err(e) => {
                eprintln!("bpftoken: cannot run {}: {e}", program.to_string_lossy());
                return ExitCode::from(EXIT_CANNOT_RUN);
            }
        }
    };
    if let (true, Some(policy)) = (code != 0, policy) {
        explain_failure(policy, &token, code);
    }
    drop(keep);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// After CMD failed: what the token carries, and what the policy would
/// give beyond it.
fn explain_failure(policy: Result<bpftoken::Explanation, Error>, token: &bpftoken::Token, code: i32) {
    eprintln!("bpftoken: the command exited with status {code}; its token carries:");
    match bpftoken::inspect::token_masks(token.as_fd()) {
        Ok((masks, _)) => {
            for line in mask_lines(&masks) {
                eprintln!("bpftoken:   {line}");
            }
            match policy {
                Ok(e) => {
                    let more = e.grant.minus(masks);
                    if more.is_empty() {
                        eprintln!(
                            "bpftoken: the policy grants you nothing beyond that: if the command failed with \
                             EPERM, it needs something no rule gives you; otherwise it is not a token problem"
                        );
                    } else {
                        eprintln!("bpftoken: the policy would also grant (ask with --cmds/--maps/--progs/--attachs):");
                        for line in mask_lines(&more).iter().filter(|l| !l.ends_with("(none)")) {
                            eprintln!("bpftoken:   {line}");
                        }
                    }
                }
                Err(e) => eprintln!("bpftoken: cannot ask the daemon what else the policy grants: {e}"),
            }
        }
        Err(e) => eprintln!("bpftoken: cannot read the token's masks: {e}"),
    }
}

fn unshare(socket: &Path, request: &MintRequest, ttl: Option<u32>, command: &[OsString]) -> ExitCode {
    let mut client = match Client::connect_to(socket) {
        Ok(c) => c,
        Err(e) => return report(socket, &e),
    };
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
fn rule_user() -> bpftoken::RuleUser {
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
fn learn(socket: &Path, command: &[OsString]) -> ExitCode {
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
fn learn_exec(userns: i32, command: &[OsString]) -> ExitCode {
    if let Err(e) = namespaces::enter_inherited_userns(userns) {
        eprintln!("bpftoken: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let (program, args) = command.split_first().expect("clap requires a command");
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(EXIT_CANNOT_RUN)
}

/// Write the man page of `cmd` and, generated from the same definitions
/// so that they cannot drift, one of each visible subcommand
/// (`bpftoken-run.1`, ...), into `dir`.
fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    fn write(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir)?;
        }
        clap_mangen::Man::new(cmd.clone())
            .source(concat!("bpftokend ", env!("CARGO_PKG_VERSION")))
            .generate_to(dir)
            .map(drop)
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write(&cmd, dir)
}

/// `cmd` (named `name`) without its hidden, internal subcommands, which
/// clap_complete would otherwise offer: completion offers what `--help`
/// lists.
fn completable(cmd: &clap::Command, name: &'static str) -> clap::Command {
    let visible: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    clap::Command::new(name).version(env!("CARGO_PKG_VERSION")).args(cmd.get_arguments().cloned()).subcommands(visible)
}

/// Write `shell`'s completion script of `cmd` into `dir`, named as that
/// shell's completion directory expects.
fn write_completions(mut cmd: clap::Command, shell: CompletionShell, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    let (generator, file) = match shell {
        CompletionShell::Bash => (clap_complete::Shell::Bash, name.clone()),
        CompletionShell::Zsh => (clap_complete::Shell::Zsh, format!("_{name}")),
        CompletionShell::Fish => (clap_complete::Shell::Fish, format!("{name}.fish")),
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, name, &mut script);
    std::fs::write(dir.join(file), script)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(bpftoken::socket_path);
    let request = |sets: &Sets| {
        sets.request().map_err(|e| {
            eprintln!("bpftoken: {e}");
            ExitCode::from(EXIT_USAGE)
        })
    };
    match cli.command {
        Command::Query { output } => query(&socket, output.json),
        Command::Leases { output } => leases(&socket, output.json),
        Command::Revoke { id, lease, uid, all: _ } => revoke(&socket, revoke_target(id, lease, uid)),
        Command::Inspect { fd, output } => inspect(fd, output.json),
        Command::Learn { command } => learn(&socket, &command),
        Command::LearnExec { userns, command } => learn_exec(userns, &command),
        Command::UsernsHolder => match namespaces::hold_userns() {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command().name("bpftoken");
            match write_man_pages(cmd, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftoken: cannot write the man pages: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell, dir } => {
            let cmd = completable(&<Cli as clap::CommandFactory>::command(), "bpftoken");
            match write_completions(cmd, shell, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftoken: cannot write the completions: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { sets, fd_only, explain, no_trace_broker, lease, command } => match request(&sets) {
            Ok(r) => run(
                &socket,
                &r,
                RunOptions { ttl: lease.ttl, fd_only, explain, trace_broker: !no_trace_broker },
                &command,
            ),
            Err(code) => code,
        },
        Command::Unshare { sets, lease, command } => match request(&sets) {
            Ok(r) => unshare(&socket, &r, lease.ttl, &command),
            Err(code) => code,
        },
    }
}
