//! `bpftokend`: the daemon's command line (run, `check-policy`, `man`,
//! `completions`) and the hidden `minter` entry point it re-executes itself as. Clients, and
//! revoking leases, are `bpftoken`'s: the daemon does not depend on it.

// No `unsafe` here: the daemon's unsafe code is in bpftokend::sys.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bpftokend::cache::ScopeLimits;
use bpftokend::run::{self, Options};
use bpftokend::server::ConnLimits;
use clap::{Parser, Subcommand};

/// bpftokend: hands out BPF tokens to local users according to a policy.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Unix socket to listen on.
    #[arg(long, env = "BPFTOKEN_SOCKET", default_value = bpftokend::socket::DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// Policy file (root-owned, not writable by group or others); the
    /// drop-ins in policy.d/*.toml next to it are merged after it.
    #[arg(long, default_value = bpftoken_policy::DEFAULT_POLICY_PATH)]
    policy: PathBuf,
    /// Cached scopes (user namespace + delegated bpffs) per client uid.
    #[arg(long, default_value_t = ScopeLimits::default().per_uid)]
    scopes_per_uid: usize,
    /// Cached scopes in total (lowered to fit the fd limit, as
    /// --max-connections).
    #[arg(long, default_value_t = ScopeLimits::default().global)]
    scopes_max: usize,
    /// Seconds after which an unused scope is dropped.
    #[arg(long, default_value_t = ScopeLimits::default().idle.as_secs())]
    scope_idle_secs: u64,
    /// Tokens a busy scope keeps minted ahead (0 to 7): a mint that finds
    /// none makes this many more in the same child, so later mints cost no
    /// namespace switch. 0 keeps no token in the daemon between requests.
    #[arg(long, value_name = "N", default_value_t = 7, value_parser = clap::value_parser!(u8).range(0..=7))]
    spare_tokens: u8,
    /// Milliseconds a client has to send a complete request (and the
    /// longest a connection may idle between requests).
    #[arg(long, value_name = "MS", default_value_t = bpftokend::server::READ_TIMEOUT.as_millis() as u64)]
    read_timeout_ms: u64,
    /// Most connections at once; beyond it clients get a `busy` refusal.
    /// Lowered to fit the fd limit (each connection counts 5 fds, each
    /// cached scope 3 and its spare tokens).
    #[arg(long, value_name = "N", default_value_t = ConnLimits::default().global)]
    max_connections: usize,
    /// Most connections at once per uid.
    #[arg(long, value_name = "N", default_value_t = ConnLimits::default().per_uid)]
    max_connections_per_uid: usize,
    /// Exit after this many seconds without connections (only with socket
    /// activation: systemd starts the daemon again on the next one).
    #[arg(long, value_name = "SECONDS")]
    exit_idle: Option<u64>,
    /// Directory in the host bpffs where the enforcer's programs (links)
    /// and maps are pinned, so that leases stay enforced after the daemon
    /// stops or crashes; created root-only (0700). A restarted daemon of
    /// the same build adopts what it finds there.
    #[arg(long, value_name = "DIR", default_value = bpftokend::pins::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Minter processes (they create new scopes; one client's cold
    /// requests occupy at most one of them at a time).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=4))]
    minters: u8,
    /// File the metrics are written to (Prometheus text format, for
    /// node_exporter's textfile collector), replaced atomically every 2 s
    /// [default: metrics.prom in the socket's directory].
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Log format on stderr; under systemd (JOURNAL_STREAM) logs go to the
    /// journal with structured BPFTOKEN_* fields instead.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EnforcerCheck {
    Detect,
    Available,
    Unavailable,
}

impl EnforcerCheck {
    /// Why the enforcer will not run, as the daemon would say it.
    fn unavailable(self) -> Option<String> {
        match self {
            EnforcerCheck::Available => None,
            EnforcerCheck::Unavailable => Some("`--enforcer unavailable` was given".to_owned()),
            EnforcerCheck::Detect => bpftokend::enforcer::Enforcer::probe().err().map(|why| why.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// stderr is the journal when JOURNAL_STREAM names its device and inode.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else { return false };
    dev.parse::<u64>().is_ok_and(|d| d == st.st_dev) && ino.parse::<u64>().is_ok_and(|i| i == st.st_ino)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BPFTOKEND_LOG").unwrap_or_else(|_| "info".into());
    if stderr_is_journal() {
        if let Ok(journal) = tracing_journald::layer() {
            // Fields become BPFTOKEN_PEER_UID, BPFTOKEN_DECISION, ...
            let journal = journal.with_field_prefix(Some("BPFTOKEN".to_owned()));
            tracing_subscriber::registry().with(filter).with(journal).init();
            return;
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Human => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a policy file and its drop-ins (policy.d/*.toml next to it)
    /// and exit (0 if they load, 1 if not, with every error).
    CheckPolicy {
        /// The main policy file to check; its drop-ins are checked too.
        #[arg(long, default_value = bpftoken_policy::DEFAULT_POLICY_PATH)]
        policy: PathBuf,
        /// Print what the policy grants this user (name or uid) and why.
        #[arg(long, value_name = "USER")]
        explain: Option<String>,
        /// With --explain: supplementary groups (names or gids), repeatable;
        /// by default the user's groups from the system database.
        #[arg(long = "group", value_name = "GROUP", requires = "explain")]
        groups: Vec<String>,
        /// With --explain: the caller's executable path.
        #[arg(long, value_name = "PATH", requires = "explain")]
        exe: Option<PathBuf>,
        /// With --explain: the caller's cgroup v2 path.
        #[arg(long, value_name = "PATH", requires = "explain")]
        cgroup: Option<String>,
        /// With --explain: the caller lives in a user namespace (a rootless
        /// container) owned by this user (name or uid).
        #[arg(long, value_name = "USER", requires = "explain")]
        userns_owner: Option<String>,
        /// With --explain: print one JSON document on stdout instead of
        /// text, the check's result and warnings included (its schema:
        /// docs/json.md).
        #[arg(long, requires = "explain")]
        json: bool,
        /// Whether the daemon that loads this policy will have its enforcer
        /// (the BPF LSM), which `executables` and `cgroups` rules need
        /// unless they say `enforce_identity = false`: `detect` tries it on
        /// this host (as root); `available`/`unavailable` check the policy
        /// for another host.
        #[arg(long, value_enum, default_value_t = EnforcerCheck::Detect)]
        enforcer: EnforcerCheck,
    },
    /// Write the man pages bpftokend(8) and one per subcommand
    /// (bpftokend-check-policy(8), ...) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Write SHELL's completion script for bpftokend into DIR, under the
    /// name SHELL's completion directory expects (bash: bpftokend, zsh:
    /// _bpftokend, fish: bpftokend.fish).
    #[command(hide = true)]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: CompletionShell,
        /// The directory to write the script into.
        dir: PathBuf,
    },
    /// Internal: the minter process the daemon starts.
    #[command(hide = true)]
    Minter {
        #[arg(long)]
        fd: i32,
    },
}

/// The shells `bpftokend completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
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
fn write_completions(mut cmd: clap::Command, shell: CompletionShell, dir: &std::path::Path) -> std::io::Result<()> {
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

/// `check-policy --explain USER --json`: the check and the explanation as
/// one JSON document.
fn print_explain_json(
    policy: &bpftoken_policy::Policy,
    checked: &bpftokend::explain::CheckedPolicy,
    caller: Result<bpftoken_policy::Peer, String>,
) -> ExitCode {
    let document = caller.map(|peer| bpftokend::explain::ExplainDocument::new(policy, checked, &peer));
    match document.and_then(|d| serde_json::to_string_pretty(&d).map_err(|e| format!("cannot write JSON: {e}"))) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bpftokend: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Write the section-8 man page of `cmd` and, generated from the same
/// definitions so that they cannot drift, one of each visible subcommand
/// (`bpftokend-check-policy.8`), into `dir`.
fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    fn write(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir)?;
        }
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .source(concat!("bpftokend ", env!("CARGO_PKG_VERSION")))
            .generate_to(dir)
            .map(drop)
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    write(&cmd, dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::CheckPolicy { policy, explain, groups, exe, cgroup, userns_owner, enforcer, json }) => {
            let (names, source) = bpftoken_policy::btf::KernelNames::running_or_builtin();
            // Every error of the main file and its drop-ins, in one run.
            let mut draft = bpftokend::policy::read(&policy, &names);
            // Probed only for a policy that has such rules.
            let unavailable = if bpftokend::policy::needs_enforcer(&draft) { enforcer.unavailable() } else { None };
            draft.check_identity_enforcement(unavailable.as_deref());
            match draft.finish() {
                Ok(p) if json => {
                    let user = explain.unwrap_or_default();
                    let caller =
                        bpftokend::explain::resolve_caller(&user, &groups, exe, cgroup, userns_owner.as_deref());
                    let checked = bpftokend::explain::CheckedPolicy { path: policy, names_source: source };
                    print_explain_json(&p, &checked, caller)
                }
                Ok(p) => {
                    println!(
                        "{}: ok, {} allow and {} deny rule(s){}; names checked against {source}",
                        policy.display(),
                        p.rules().len(),
                        p.deny_rules().len(),
                        bpftokend::policy::dropins_note(&p)
                    );
                    for w in p.warnings() {
                        println!("warning: {w}");
                    }
                    match explain {
                        None => ExitCode::SUCCESS,
                        Some(user) => {
                            match bpftokend::explain::explain(&p, &user, &groups, exe, cgroup, userns_owner.as_deref())
                            {
                                Ok(text) => {
                                    print!("{text}");
                                    ExitCode::SUCCESS
                                }
                                Err(e) => {
                                    eprintln!("bpftokend: {e}");
                                    ExitCode::FAILURE
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    eprintln!("{}", e.render());
                    if e.len() > 1 {
                        eprintln!("{} errors: {} does not load", e.len(), policy.display());
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Man { dir }) => {
            let cmd = <Cli as clap::CommandFactory>::command().name("bpftokend");
            match write_man_pages(cmd, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftokend: cannot write the man pages: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Completions { shell, dir }) => {
            let cmd = completable(&<Cli as clap::CommandFactory>::command(), "bpftokend");
            match write_completions(cmd, shell, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftokend: cannot write the completions: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Minter { fd }) => {
            let result = bpftokend::sys::take_inherited_fd(fd).and_then(bpftokend::minter::run);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("minter: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let opts = Options {
                socket: cli.socket,
                policy: cli.policy,
                scopes: ScopeLimits {
                    per_uid: cli.scopes_per_uid,
                    global: cli.scopes_max,
                    idle: Duration::from_secs(cli.scope_idle_secs),
                    spares: usize::from(cli.spare_tokens),
                },
                conns: ConnLimits {
                    global: cli.max_connections,
                    per_uid: cli.max_connections_per_uid,
                    read_timeout: Duration::from_millis(cli.read_timeout_ms),
                },
                exit_idle: cli.exit_idle.map(Duration::from_secs),
                pin_dir: cli.pin_dir,
                minters: usize::from(cli.minters),
                metrics_file: cli.metrics_file,
            };
            match run::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bpftokend: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
