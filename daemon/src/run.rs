//! Daemon start-up, signals and shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use bpftoken_policy::PolicyError;
use tokio::signal::unix::{signal, SignalKind};

use crate::minter::link::MinterLink;
use crate::minter::ScopeLimits;
use crate::server::{self, ConnLimits, Daemon};
use crate::socket::{self, SocketError};

/// What the daemon needs to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    pub policy: PathBuf,
    pub scopes: ScopeLimits,
    pub conns: ConnLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bpftokend must run as root (it mounts bpffs instances and writes uid maps); running as uid {0}")]
    NotRoot(u32),
    #[error("{}", .0.render())]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start the minter process: {0}")]
    Minter(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<(), StartError> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        return Err(StartError::NotRoot(euid));
    }
    let policy = bpftoken_policy::load(&opts.policy)?;
    tracing::info!(policy = %opts.policy.display(), rules = policy.rules().len(), "policy loaded");
    // Both before the runtime: bind() sets the umask, and the minter is
    // best started from a single-threaded process.
    let sock = socket::bind(&opts.socket)?;
    let minter = MinterLink::start(PathBuf::from("/proc/self/exe"), opts.scopes).map_err(StartError::Minter)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let daemon = Arc::new(Daemon::new(policy, minter, opts.conns));
    let result = runtime.block_on(async {
        sock.listener.set_nonblocking(true).map_err(|e| SocketError::Bind { path: opts.socket.clone(), source: e })?;
        let listener = tokio::net::UnixListener::from_std(sock.listener.try_clone().map_err(|e| SocketError::Bind { path: opts.socket.clone(), source: e })?)
            .map_err(|e| SocketError::Bind { path: opts.socket.clone(), source: e })?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signals = tokio::spawn(handle_signals(daemon.clone(), opts.policy.clone(), tx));
        tracing::info!(socket = %opts.socket.display(), "listening");
        server::serve(daemon.clone(), listener, rx).await;
        signals.abort();
        daemon.minter.shutdown().await;
        Ok::<(), StartError>(())
    });
    sock.remove();
    tracing::info!("stopped");
    result
}

async fn handle_signals(daemon: Arc<Daemon>, policy_path: PathBuf, shutdown: tokio::sync::watch::Sender<bool>) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; stopping");
        let _ = shutdown.send(true);
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&daemon, &policy_path),
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = shutdown.send(true);
}

/// Re-read the policy; a broken one is logged and the old one stays.
fn reload(daemon: &Daemon, path: &std::path::Path) {
    match bpftoken_policy::load(path) {
        Ok(p) => {
            tracing::info!(policy = %path.display(), rules = p.rules().len(), "policy reloaded");
            daemon.replace_policy(p);
        }
        Err(e) => tracing::error!(policy = %path.display(), "reload rejected, the old policy stays in force: {}", e.render()),
    }
}
