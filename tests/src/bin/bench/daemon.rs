//! Mints through the real daemon on one long-lived connection per client
//! (warm and cold, 1 and 2 clients), and `sudo -n true` for comparison.

use std::path::Path;
use std::process::{Command, Stdio};

use bpftoken::{Client, MintRequest};
use bpftoken_tests::*;

use crate::stats::*;

/// Mint `n` tokens per client thread through the daemon at `socket`.
/// `cold` asks for a different map mask each time, so every mint needs a
/// new scope.
pub fn client(socket: &Path, n: usize, clients: usize, cold: bool) {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let socket = socket.to_owned();
            std::thread::spawn(move || {
                let mut c = Client::connect_to(&socket).expect("connect");
                let mut i = t * 1_000_000;
                let mut one = || {
                    i += 1;
                    let req = if cold {
                        // distinct key per mint: maps mask = i (bits below 34)
                        MintRequest { maps: Some((i as u64) & ((1 << 33) - 1)), ..Default::default() }
                    } else {
                        MintRequest::default()
                    };
                    drop(c.mint(&req).expect("mint"));
                };
                time_loop(n, &mut one)
            })
        })
        .collect();
    let runs: Vec<Stats> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    // Summed rates of the clients, as for the floor's concurrent pairs.
    Stats::emit_summed(&runs);
}

pub fn measure_daemon(
    env: &Env,
    self_exe: &Path,
    d: &TestDaemon,
    n: usize,
    clients: usize,
    cold: bool,
    pin: bool,
) -> Figures {
    let alice = user(ALICE);
    let mut c = if pin {
        let mut c = as_user(&alice, "taskset");
        c.args(["-c", "0"]).arg(self_exe);
        c
    } else {
        as_user(&alice, self_exe)
    };
    let _ = env;
    c.args([
        "client",
        d.socket.to_str().unwrap(),
        &n.to_string(),
        &clients.to_string(),
        if cold { "cold" } else { "warm" },
    ]);
    let before = process_cpu(d.pid());
    let f = run_child(c);
    let daemon = process_cpu(d.pid()) - before;
    // Every request the daemon answered, warm-ups included.
    let answered = (clients * (n + warm_up(n))) as f64;
    Figures { server_cpu: Some(daemon.as_secs_f64() * 1e6 / answered), ..f }
}

pub fn measure_sudo(n: usize) -> Option<Figures> {
    let sudo = ["/usr/bin/sudo", "/bin/sudo"].into_iter().find(|p| Path::new(p).exists())?;
    let stats = time_loop(n, || {
        let s = Command::new(sudo).args(["-n", "true"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(s.is_ok_and(|s| s.success()), "sudo -n true failed");
    });
    Some(Figures {
        p50: stats.p(0.5),
        p99: stats.p(0.99),
        ops: stats.ops(),
        client_cpu: stats.cpu_per_op(),
        server_cpu: None,
    })
}
