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

mod docs;
mod explain;
mod run;
mod show;

use docs::{completable, write_completions, write_man_pages};
use run::{learn, learn_exec, run, unshare, RunOptions};
use show::{explanation_lines, inspect, leases, query, revoke, revoke_target};

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
    /// grants in it. In libbpf mode a narrowed set also gets what libbpf's
    /// feature probes load (map type array, program type socket_filter,
    /// attach type cgroup_inet_ingress) where the policy grants it, said
    /// on stderr. Exit status: CMD's own; 1 if refused, 69 if the daemon
    /// is unreachable, 76 on a protocol error, 127 if CMD cannot run.
    Run {
        #[command(flatten)]
        sets: Sets,
        /// Plain fd mode: pass only BPF_TOKEN_FD; stay in your namespaces.
        #[arg(long)]
        fd_only: bool,
        /// Watch CMD's bpf() calls (ptrace; CMD runs with no_new_privs);
        /// if CMD fails, print the token's masks, each call the kernel
        /// refused and why (the token lacks it, CMD did not pass the
        /// token, or it needs a privilege no token gives), and what the
        /// policy would grant beyond the token.
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
    /// tokens by itself: unmodified tools need no flags. A narrowed set
    /// also gets what libbpf's feature probes load, as with run.
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
    ///
    /// Without the daemon's enforcer it keeps at most 10,000 unenforced
    /// leases per uid; a last line `forgotten: N older unenforced lease(s)
    /// of uid U` counts those it no longer lists (their tokens still work).
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

fn exit_for(e: &Error) -> ExitCode {
    ExitCode::from(match e {
        Error::Refused(_) => EXIT_REFUSED,
        Error::Unreachable { .. } => EXIT_UNAVAILABLE,
        Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
        Error::Request(_) => EXIT_USAGE,
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
