//! Daemon start-up, signals and shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bpftoken_policy::btf::KernelNames;
use bpftoken_policy::PolicyErrors;
use tokio::signal::unix::{signal, SignalKind};

use crate::cache::{ScopeCache, ScopeLimits};
use crate::enforcer::{Persistence, Released};
use crate::metrics::{MetricsFile, Reporter};
use crate::minter::pool::MinterPool;
use crate::server::{self, ConnLimits, Daemon};
use crate::socket::{self, SocketError};

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    pub policy: PathBuf,
    pub scopes: ScopeLimits,
    pub conns: ConnLimits,
    /// Exit after this long without connections (socket activation only).
    pub exit_idle: Option<std::time::Duration>,
    /// Where the enforcer is pinned (a directory in the host bpffs).
    pub pin_dir: PathBuf,
    /// Minter processes (clamped to 2..=4).
    pub minters: usize,
    /// Where the metrics go (`None`: `metrics.prom` next to the socket).
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bpftokend must run as root (it mounts bpffs instances and writes uid maps); running as uid {0}")]
    NotRoot(u32),
    #[error("{}", render_errors(.0))]
    Policy(#[from] PolicyErrors),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start the minter process: {0}")]
    Minter(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Kernel(#[from] crate::probe::ProbeError),
    #[error(
        "the fd limit is {limit}, too low for bpftokend: it needs at least {needed} (raise LimitNOFILE= or `ulimit -n`)"
    )]
    FdLimit { limit: usize, needed: usize },
    #[error("--exit-idle needs socket activation: the socket must outlive the daemon, or clients would find nobody listening")]
    ExitIdleWithoutActivation,
}

/// Every error, and how many there were when more than one.
fn render_errors(errors: &PolicyErrors) -> String {
    match errors.len() {
        1 => errors.render(),
        n => format!("{}\n{n} errors: the policy does not load", errors.render()),
    }
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<(), StartError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        return Err(StartError::NotRoot(euid));
    }
    // Taken first: the fds and variables are ours alone.
    let activated = crate::systemd::activated_listener()?;
    // Nothing inherited (but stdio) reaches the minters we exec.
    crate::sys::cloexec_from_3().map_err(StartError::Runtime)?;
    if opts.exit_idle.is_some() && activated.is_none() {
        return Err(StartError::ExitIdleWithoutActivation);
    }
    // Mint children share our memory and enter clients' namespaces.
    crate::sys::make_non_dumpable().map_err(StartError::Runtime)?;
    crate::probe::check()?;
    let (conns, scopes) = fit_to_fd_limit(opts.conns, opts.scopes)?;
    let (names, names_source) = bpftoken_policy::btf::KernelNames::running_or_builtin();
    // Every error of the main file and its drop-ins, before the enforcer
    // is loaded (and pinned) for a policy that cannot load.
    let mut draft = crate::policy::read(&opts.policy, &names).stop_on_errors()?;
    // Before any thread or child exists; the daemon runs either way and
    // says which (leases with `ttl` follow the policy's choice).
    let enforcer = crate::enforcer::Enforcer::load(&opts.pin_dir);
    // `executables`/`cgroups` are a boundary only where the enforcer binds
    // grants to them: refuse a policy that would rely on them without it.
    let unavailable = enforcer.as_ref().err().map(ToString::to_string);
    draft.check_identity_enforcement(unavailable.as_deref());
    let policy = match draft.finish() {
        Ok(p) => p,
        Err(e) => {
            release_pins(enforcer.as_ref().ok());
            return Err(e.into());
        }
    };
    let rules = policy.rules().len() + policy.deny_rules().len();
    let dropins = policy.dropins().len();
    for w in policy.warnings() {
        tracing::warn!("{w}");
    }
    // Said once the socket is ours: a start refused for the socket (another
    // daemon answers) prints that one line only.
    let enforcement_said = match &enforcer {
        Ok(e) => Ok((e.programs().join(","), persistence_line(e.persistence()))),
        Err(why) => Err(why.to_string()),
    };
    // A start that fails from here on releases what the enforcer pinned
    // (a fresh set; an adopted one with leases stays).
    let minter = match MinterPool::start(PathBuf::from("/proc/self/exe"), opts.minters) {
        Ok(m) => m,
        Err(e) => {
            release_pins(enforcer.as_ref().ok());
            return Err(StartError::Minter(e));
        }
    };
    // One thread serves every connection: a warm mint is a few syscalls,
    // and handing requests between worker threads (or mint children to a
    // blocking thread) cost more CPU per mint than it saved (bench.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            release_pins(enforcer.as_ref().ok());
            return Err(StartError::Runtime(e));
        }
    };
    let daemon = Arc::new(Daemon::new(policy, minter, ScopeCache::new(scopes), conns, enforcer));
    let metrics = MetricsFile::new(opts.metrics_file.clone(), &opts.socket);
    let start_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let bound = runtime.block_on(async {
        // Signal handlers first: once the socket exists, a client (or a
        // test) may already expect SIGTERM to mean an orderly stop.
        let signals = Signals::install()?;
        let bind_err = |source| SocketError::Bind { path: opts.socket.clone(), source };
        // A socket systemd passed is never ours to remove; one we bind is.
        let (std_listener, owned) = match activated {
            Some(listener) => (listener, None),
            None => {
                // The runtime's workers are idle here, so the umask change
                // inside bind() cannot affect a file created elsewhere.
                let mut sock = socket::bind(&opts.socket)?;
                let listener = sock.take_listener().ok_or_else(|| bind_err(std::io::Error::other("no listener")))?;
                (listener, Some(sock))
            }
        };
        match &enforcement_said {
            Ok((programs, Ok(pinned))) => {
                tracing::info!(programs = %programs, "enforcement: enforcing (BPF LSM attached; {pinned})")
            }
            Ok((programs, Err(why))) => tracing::warn!(
                programs = %programs,
                "enforcement: enforcing (BPF LSM attached), but enforcement ends when the daemon stops: {why}"
            ),
            Err(why) => tracing::warn!("enforcement: unavailable: {why}"),
        }
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = crate::sys::async_fd(std::os::fd::OwnedFd::from(std_listener)).map_err(bind_err)?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal_task = tokio::spawn(signals.handle(daemon.clone(), opts.policy.clone(), names, tx));
        let sweep_task = tokio::spawn(sweep_idle_scopes(daemon.clone()));
        let lease_task = tokio::spawn(sweep_leases(daemon.clone()));
        let status_task = tokio::spawn(report_status(daemon.clone(), Reporter::new(metrics.clone(), start_time)));
        tracing::info!(
            socket = %opts.socket.display(),
            activated = owned.is_none(),
            policy = %opts.policy.display(),
            metrics = %metrics.path().display(),
            rules,
            dropins,
            kernel_names = %names_source,
            "listening"
        );
        crate::systemd::ready(&daemon.status_line());
        server::serve(daemon.clone(), listener, rx, opts.exit_idle).await;
        crate::systemd::stopping();
        signal_task.abort();
        sweep_task.abort();
        lease_task.abort();
        status_task.abort();
        // The last snapshot counts every request answered; the file stays
        // (docs/operation.md, "Metrics").
        Reporter::new(metrics.clone(), start_time).write(&daemon, false);
        daemon.minter.shutdown().await;
        release_pins(daemon.enforcer());
        Ok::<_, StartError>(owned)
    });
    let owned = match bound {
        Ok(owned) => owned,
        Err(e) => {
            runtime.block_on(daemon.minter.shutdown());
            release_pins(daemon.enforcer());
            return Err(e);
        }
    };
    if let Some(sock) = owned {
        sock.remove();
    }
    tracing::info!("stopped");
    Ok(())
}

/// How the enforcer's pinning went, for the start line: where it is
/// pinned, or why enforcement ends with the daemon.
fn persistence_line(p: &Persistence) -> Result<String, String> {
    match p {
        Persistence::Pinned { dir, adopted: false } => {
            Ok(format!("pinned in {}: enforcement outlives the daemon", dir.display()))
        }
        Persistence::Pinned { dir, adopted: true } => {
            Ok(format!("adopted the enforcer pinned in {} by an earlier daemon: its leases carry on", dir.display()))
        }
        Persistence::UntilStop(why) => Err(why.to_string()),
    }
}

/// At a clean stop, or a start that failed after the enforcer was pinned:
/// remove the pins when no lease is left to enforce, else keep them (one
/// line says where).
fn release_pins(enforcer: Option<&crate::enforcer::Enforcer>) {
    let Some(enforcer) = enforcer else { return };
    match enforcer.release() {
        Released::NotPinned => {}
        Released::Removed(dir) => tracing::info!(pins = %dir.display(), "no lease left: removed the enforcer's pins"),
        Released::Kept { dir, leases } => tracing::info!(
            pins = %dir.display(),
            "{leases} lease(s) alive: enforcement stays in the kernel, pinned in {}; the next bpftokend adopts it \
             (`rm -r {}` ends it)",
            dir.display(),
            dir.display()
        ),
        Released::Failed { dir, error } => {
            tracing::warn!(pins = %dir.display(), "cannot remove the enforcer's pins, they stay: {error}")
        }
    }
}

/// Keep systemd's STATUS= and the metrics file current, and ping
/// systemd's watchdog if it set one.
async fn report_status(daemon: Arc<Daemon>, mut metrics: Reporter) {
    let watchdog = crate::systemd::watchdog_interval();
    let period = watchdog.map_or(std::time::Duration::from_secs(2), |w| w.min(std::time::Duration::from_secs(2)));
    let mut tick = tokio::time::interval(period);
    // READY=1 carried the first status line.
    let mut last = daemon.status_line();
    let mut served_at_trim = 0;
    loop {
        tick.tick().await;
        if watchdog.is_some() {
            crate::systemd::watchdog_ping();
        }
        // Once a burst of requests is over, its freed memory goes back
        // (RSS returns to the baseline instead of staying at the peak).
        let served = daemon.stats.minted.load(Ordering::Relaxed) + daemon.stats.refused.load(Ordering::Relaxed);
        if served != served_at_trim && daemon.no_connections() {
            crate::sys::trim_heap();
            served_at_trim = served;
        }
        // A few KiB into /run (tmpfs): cheap enough for the one thread.
        metrics.write(&daemon, true);
        let now = daemon.status_line();
        if now != last {
            crate::systemd::status(&now);
            last = now;
        }
    }
}

/// Fds the daemon holds besides connections and scopes: stdio, the
/// listener, the runtime's epoll and timers, the minters' links, the
/// enforcer's maps and links, files read for a request.
const FIXED_FDS: usize = 256;
/// Fds one connection may hold at once (it answers one request at a
/// time): its socket between requests; while one is answered also the
/// sender's pidfd, its user namespace, the fd the request carries and the
/// fd of the answer.
const FDS_PER_CONNECTION: usize = 5;
/// Fewest connections and cached scopes worth starting with.
const MIN_CONNECTIONS: usize = 64;
const MIN_SCOPES: usize = 16;

/// Raise the soft fd limit to the hard one and fit the caps within it,
/// so that a flood of connections meets a typed `busy` refusal, never
/// EMFILE: see [`fit_caps`].
fn fit_to_fd_limit(conns: ConnLimits, scopes: ScopeLimits) -> Result<(ConnLimits, ScopeLimits), StartError> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    let soft = match rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!("cannot raise the fd limit: {e}");
            limit.current
        }
    };
    let soft = soft.and_then(|n| usize::try_from(n).ok()).unwrap_or(usize::MAX);
    let (fitted_conns, fitted_scopes) = fit_caps(soft, conns, scopes)?;
    let lowered = fitted_conns.global < conns.global || fitted_scopes.global < scopes.global;
    // The default caps are "at most"; caps set on the command line and
    // lowered are worth a warning.
    let defaults = conns.global == ConnLimits::default().global && scopes.global == ScopeLimits::default().global;
    let message = format!(
        "the fd limit {soft} allows {} connections (asked: {}) and {} cached scopes (asked: {})",
        fitted_conns.global, conns.global, fitted_scopes.global, scopes.global
    );
    match (lowered, defaults) {
        (true, false) => tracing::warn!("{message}"),
        (true, true) => tracing::debug!("{message}"),
        (false, _) => {}
    }
    Ok((fitted_conns, fitted_scopes))
}

/// The caps within `fd_limit`: every cached scope holds three fds and its
/// spare tokens, every connection up to [`FDS_PER_CONNECTION`], the rest
/// [`FIXED_FDS`]. Where the caps asked for do not fit, scopes get at most
/// a quarter of what is left after the fixed part and connections the
/// rest. Refused below [`MIN_CONNECTIONS`] or [`MIN_SCOPES`].
fn fit_caps(
    fd_limit: usize,
    mut conns: ConnLimits,
    mut scopes: ScopeLimits,
) -> Result<(ConnLimits, ScopeLimits), StartError> {
    let per_scope = 3 + scopes.spares;
    let needed = FIXED_FDS + MIN_SCOPES * per_scope + MIN_CONNECTIONS * FDS_PER_CONNECTION;
    if fd_limit < needed {
        return Err(StartError::FdLimit { limit: fd_limit, needed });
    }
    let budget = fd_limit - FIXED_FDS;
    let asked = scopes.global.saturating_mul(per_scope).saturating_add(conns.global.saturating_mul(FDS_PER_CONNECTION));
    if asked <= budget {
        return Ok((conns, scopes));
    }
    scopes.global = scopes.global.min((budget / 4) / per_scope).max(MIN_SCOPES);
    scopes.per_uid = scopes.per_uid.min(scopes.global);
    let left = budget - scopes.global * per_scope;
    conns.global = conns.global.min(left / FDS_PER_CONNECTION);
    conns.per_uid = conns.per_uid.min(conns.global);
    Ok((conns, scopes))
}

/// Drop idle scopes now and then.
async fn sweep_idle_scopes(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(daemon.scopes.sweep_interval());
    loop {
        tick.tick().await;
        let dropped = daemon.scopes.evict_idle();
        if !dropped.is_empty() {
            tracing::debug!(dropped = dropped.len(), live = daemon.scopes.len(), "dropped idle scopes");
        }
        dropped.close_in_background();
    }
}

/// Forget leases whose tokens the kernel has freed, now and then (listing
/// and revoking sweep too).
async fn sweep_leases(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        let forgotten = daemon.leases.sweep(daemon.enforcer());
        if forgotten > 0 {
            tracing::debug!(forgotten, "forgot leases whose tokens are gone");
        }
    }
}

/// SIGTERM/SIGINT stop the daemon, SIGHUP reloads the policy.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, StartError> {
        let install = |kind| signal(kind).map_err(StartError::Signals);
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    async fn handle(
        mut self,
        daemon: Arc<Daemon>,
        policy_path: PathBuf,
        names: KernelNames,
        shutdown: tokio::sync::watch::Sender<bool>,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    crate::systemd::reloading();
                    reload(&daemon, &policy_path, &names);
                    crate::systemd::ready(&daemon.status_line());
                }
            }
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = shutdown.send(true);
    }
}

/// Re-read the policy and its drop-ins (files added or removed since are
/// picked up); a broken set is logged with every error and the old policy
/// stays. Requests already decided keep the snapshot they took.
fn reload(daemon: &Daemon, path: &std::path::Path, names: &KernelNames) {
    let unavailable = daemon.enforcement_unavailable();
    let mut draft = crate::policy::read(path, names);
    draft.check_identity_enforcement(unavailable.as_deref());
    match draft.finish() {
        Ok(p) => {
            tracing::info!(
                policy = %path.display(),
                rules = p.rules().len() + p.deny_rules().len(),
                dropins = p.dropins().len(),
                "policy reloaded{}",
                crate::policy::dropins_note(&p)
            );
            for w in p.warnings() {
                tracing::warn!("{w}");
            }
            daemon.replace_policy(p);
            daemon.set_last_reload("ok".to_owned());
        }
        Err(e) => {
            tracing::error!(policy = %path.display(), "reload rejected, the old policy stays in force: {}", e.render());
            daemon.set_last_reload(format!("rejected ({e})"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(limit: usize) -> Result<(ConnLimits, ScopeLimits), StartError> {
        fit_caps(limit, ConnLimits::default(), ScopeLimits::default())
    }

    #[test]
    fn the_caps_fit_any_fd_limit_the_daemon_starts_with() {
        for limit in [736, 1200, 1440, 4096, 65_536, 524_288, usize::MAX / 2] {
            let (conns, scopes) = caps(limit).unwrap();
            let used = FIXED_FDS + scopes.global * (3 + scopes.spares) + conns.global * FDS_PER_CONNECTION;
            assert!(used <= limit, "limit {limit}: {used} fds");
            assert!(conns.per_uid <= conns.global && scopes.per_uid <= scopes.global);
        }
        // Plenty: the defaults stand.
        let (conns, scopes) = caps(524_288).unwrap();
        assert_eq!((conns.global, conns.per_uid, scopes.global), (4096, 1024, 1024));
    }

    #[test]
    fn too_low_an_fd_limit_is_refused_with_what_is_needed() {
        let err = caps(700).unwrap_err().to_string();
        assert_eq!(
            err,
            "the fd limit is 700, too low for bpftokend: it needs at least 736 (raise LimitNOFILE= or `ulimit -n`)"
        );
    }
}
