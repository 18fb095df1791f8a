//! `bpftoken run [--cmds L] [--maps L] [--progs L] [--attachs L] -- CMD ARGS...`

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use bpftoken::{delegation, Client, Error, Kind, MintRequest, RefusalCode};
use clap::{Parser, Subcommand};

/// Get BPF tokens from bpftokend.
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
    /// Run CMD with a BPF token whose fd number is in BPF_TOKEN_FD.
    ///
    /// Each list narrows one delegation set (comma-separated kernel names,
    /// e.g. --maps array,hash); a set left out means everything the policy
    /// grants in it. Exit status: CMD's own; 1 if refused, 69 if the
    /// daemon is unreachable, 76 on a protocol error, 127 if CMD cannot run.
    Run {
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
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Show what the policy grants you right now, and which rules say so.
    /// Mints nothing.
    Query,
    /// Print the masks of a token: the fd in BPF_TOKEN_FD, or --fd N.
    ///
    /// Read with BPF_OBJ_GET_INFO_BY_FD (Linux 6.17+), else from fdinfo,
    /// where a set holding every bit the kernel knows reads as `any`.
    Inspect {
        /// The token's fd number [default: $BPF_TOKEN_FD].
        #[arg(long, value_name = "N")]
        fd: Option<i32>,
    },
    /// Write the bpftoken(1) man page into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
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

fn query(socket: &std::path::Path) -> ExitCode {
    match Client::connect_to(socket).and_then(|mut c| c.query()) {
        Ok(e) => {
            for line in explanation_lines(&e) {
                println!("{line}");
            }
            if let Some(r) = &e.refusal {
                println!("a request now would be refused: {r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftoken: {e}");
            ExitCode::from(match e {
                Error::Refused(_) => EXIT_REFUSED,
                Error::Unreachable { .. } => EXIT_UNAVAILABLE,
                Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
            })
        }
    }
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

fn inspect(fd: Option<i32>) -> ExitCode {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(bpftoken::socket_path);
    let (cmds, maps, progs, attachs, command) = match cli.command {
        Command::Query => return query(&socket),
        Command::Inspect { fd } => return inspect(fd),
        Command::Man { dir } => {
            let mut page = Vec::new();
            let cmd = <Cli as clap::CommandFactory>::command().name("bpftoken");
            return match clap_mangen::Man::new(cmd)
                .render(&mut page)
                .and_then(|()| std::fs::write(dir.join("bpftoken.1"), page))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftoken: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Run { cmds, maps, progs, attachs, command } => (cmds, maps, progs, attachs, command),
    };
    let request = match (|| {
        Ok::<_, String>(MintRequest {
            cmds: parse(Kind::Cmd, cmds.as_deref())?,
            maps: parse(Kind::Map, maps.as_deref())?,
            progs: parse(Kind::Prog, progs.as_deref())?,
            attachs: parse(Kind::Attach, attachs.as_deref())?,
        })
    })() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bpftoken: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let token = match Client::connect_to(&socket).and_then(|mut c| c.mint(&request)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bpftoken: {e}");
            // Say what the policy does grant, so "not granted" can be told
            // apart from "not in the policy at all".
            let explainable = matches!(
                &e,
                Error::Refused(r) if matches!(r.code, RefusalCode::NotGranted | RefusalCode::EmptyGrant | RefusalCode::RateLimited)
            );
            if explainable {
                if let Ok(explanation) = Client::connect_to(&socket).and_then(|mut c| c.query()) {
                    if !explanation.allowed_by.is_empty() {
                        for line in explanation_lines(&explanation) {
                            eprintln!("bpftoken: {line}");
                        }
                    }
                }
            }
            return ExitCode::from(match e {
                Error::Refused(_) => EXIT_REFUSED,
                Error::Unreachable { .. } => EXIT_UNAVAILABLE,
                Error::Protocol(_) | Error::Io(_) => EXIT_PROTOCOL,
            });
        }
    };
    // The token must survive exec: clear CLOEXEC on exactly this fd.
    if let Err(e) = rustix::io::fcntl_setfd(token.as_fd(), rustix::io::FdFlags::empty()) {
        eprintln!("bpftoken: cannot pass the token to the command: {e}");
        return ExitCode::from(EXIT_CANNOT_RUN);
    }
    let fd = token.into_owned_fd();
    let (program, args) = command.split_first().expect("clap requires a command");
    let err = std::process::Command::new(program).args(args).env("BPF_TOKEN_FD", fd.as_raw_fd().to_string()).exec();
    eprintln!("bpftoken: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(EXIT_CANNOT_RUN)
}
