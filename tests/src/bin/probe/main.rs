//! `bpftoken-probe`: what the end-to-end tests run as unprivileged users.
//!
//! ```text
//! bpftoken-probe try [--no-token] ITEM...      ITEM = map:NAME | prog:NAME
//! bpftoken-probe send-token SOCKET             send $BPF_TOKEN_FD over SOCKET
//! bpftoken-probe recv-token SOCKET ITEM...     listen, take one fd, try ITEMs with it
//! bpftoken-probe mint-loop SOCKET COUNT [--reconnect]
//! bpftoken-probe mint-loop SOCKET COUNT --ignore-term
//! bpftoken-probe storm SOCKET CONNECTIONS MINTS  hold CONNECTIONS open at once, MINTS on each
//! bpftoken-probe mint-masks SOCKET COUNT MASKS [--until-error]
//!                                             COUNT mints cycling through MASKS map masks
//! bpftoken-probe fd-check SOCKET               mint once; report the fds it gained
//! bpftoken-probe scope-fds SOCKET              libbpf-mode mint; report the fds it gained, by kind
//! bpftoken-probe send-and-exit SOCKET         send a mint request, print our pid, exit without waiting
//! bpftoken-probe mint-unread SOCKET COUNT    COUNT mints and a query in one write, the answers
//!                                             read late: one line each, then `fds N`
//! bpftoken-probe exec-after-connect SOCKET PROGRAM ARG...
//!                                             connect, fork; this process execs PROGRAM at once, the
//!                                             child (still the probe) waits until it has, mints on the
//!                                             shared connection and tries map:array with the token;
//!                                             the child's outcome goes to stdout
//! bpftoken-probe mint-inherited FD ITEM...     mint on the inherited connection FD, try ITEMs
//! bpftoken-probe attach-tracepoint SOCKET CATEGORY:NAME COUNT
//!                                             load a tracepoint program with $BPF_TOKEN_FD, ask the
//!                                             daemon for the tracepoint's id and perf event, attach
//!                                             with BPF_LINK_CREATE, call getpid COUNT times, print
//!                                             `id N`, `attached`, `run_cnt N` (or the failing step)
//! bpftoken-probe attach-kprobe SOCKET SYMBOL COUNT
//!                                             the same for a kprobe program on SYMBOL, triggered by
//!                                             COUNT opens of /dev/null (for do_sys_openat2)
//! bpftoken-probe mint-for SOCKET PROGRAM      a lease for PROGRAM (MintForProgram, as bpftoken run
//!                                             sends it, but with any path); print `minted` or the refusal
//! bpftoken-probe open-perf SOCKET KIND TARGET  ask for a perf event: KIND tracepoint (CAT:NAME),
//!                                             kprobe/kretprobe (SYMBOL), uprobe (PATH[:OFFSET][@PID]);
//!                                             print `opened` or the refusal
//! bpftoken-probe try-then-exec ITEM PROGRAM ARG...
//!                                             try ITEM with $BPF_TOKEN_FD, then exec PROGRAM (which
//!                                             inherits the token)
//! bpftoken-probe delegate SOCKET FD            ask for a bpffs delegated to the namespace at inherited FD
//! bpftoken-probe hold SOCKET COUNT SECONDS     hold COUNT idle connections open
//! bpftoken-probe hold-report SOCKET COUNT SECONDS  hold up to COUNT connections, then print
//!                                             `refused N TEXT` per answer unasked, `open N`
//! bpftoken-probe churn SOCKET COUNT            connect and close COUNT times
//! bpftoken-probe close-at SOCKET               a mint frame cut at every offset, then one unread answer
//! bpftoken-probe wait FILE                    wait until FILE exists
//! bpftoken-probe wait-try FILE ITEM...         try ITEMs, wait until FILE exists, try them again
//! bpftoken-probe bpffs-wait-try DIR FILE ITEM...  create a token from the bpffs at DIR (- for
//!                                             $BPFTOKEN_PIN_DIR), print its fd, try ITEMs, wait until
//!                                             FILE exists, try them with it again and with a fresh token
//!                                             from DIR (`fresh ITEM ...`)
//! bpftoken-probe fds                          list this process's open fds: number and kind
//!                                             (token, userns, bpffs, other)
//! bpftoken-probe learned SOCKET ID             send a Learned request for lease ID; print the answer
//! bpftoken-probe try-as-euid UID ITEM...       (root) take effective uid UID, keeping real uid 0,
//!                                             which drops every effective capability; try ITEMs
//!                                             with $BPF_TOKEN_FD
//! bpftoken-probe time-map COUNT FILE          median ns of COUNT array map creates with the token;
//!                                             wait until FILE exists, measure again
//! bpftoken-probe time-mint SOCKET COUNT       median ns of COUNT mints on one connection
//! bpftoken-probe hijack SECONDS                ptrace/read/setns every other process of its uid
//! bpftoken-probe term-all SECONDS              kill(-1, SIGTERM) in a loop
//! bpftoken-probe signal-root SECONDS           SIGSTOP/SIGTERM every root process it may signal
//! bpftoken-probe stop-mint-child DAEMON_PID SECONDS  SIGSTOP a mint child of that daemon as it
//!                                             is made; print its pid
//! bpftoken-probe stop-helper DAEMON_PID SECONDS  SIGSTOP one of our bpffs helpers (a child of a
//!                                             minter of that daemon) that stays stopped; print its pid
//! ```
//!
//! `try` prints one line per item: `map:hash ok` or `map:hash EPERM`.
//!
//! Each mode lives with its kind: `token` (using a token given),
//! `fds` (the fds held), `timing`, `mint` (grants through the client
//! library), `connections` (the socket below the library), `trace`,
//! `attack` (an attacker's moves, for the threat tests).

mod attack;
mod connections;
mod fds;
mod mint;
mod timing;
mod token;
mod trace;

use std::process::ExitCode;

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("wait") => token::wait_for_file(args.get(1).ok_or("wait FILE")?),
        Some("wait-try") => token::wait_try(args),
        Some("bpffs-wait-try") => token::bpffs_wait_try(args),
        Some("fds") => fds::fds(),
        Some("learned") => mint::learned(args),
        Some("try-as-euid") => token::try_as_euid(args),
        Some("time-map") => timing::time_map(args),
        Some("time-mint") => timing::time_mint(args),
        Some("try") => token::try_(args),
        Some("send-token") => token::send_token(args),
        Some("recv-token") => token::recv_token(args),
        Some("mint-loop") => mint::mint_loop(args),
        Some("storm") => mint::storm(args),
        Some("mint-masks") => mint::mint_masks(args),
        Some("fd-check") => fds::fd_check(args),
        Some("scope-fds") => fds::scope_fds(args),
        Some("mint-unread") => connections::mint_unread(args),
        Some("send-and-exit") => connections::send_and_exit(args),
        Some("exec-after-connect") => mint::exec_after_connect(args),
        Some("attach-tracepoint") => trace::attach_tracepoint(args),
        Some("attach-kprobe") => trace::attach_kprobe(args),
        Some("mint-for") => mint::mint_for(args),
        Some("open-perf") => trace::open_perf(args),
        Some("try-then-exec") => token::try_then_exec(args),
        Some("mint-inherited") => mint::mint_inherited(args),
        Some("delegate") => mint::delegate(args),
        Some("hold") => connections::hold(args),
        Some("hold-report") => connections::hold_report(args),
        Some("churn") => connections::churn(args),
        Some("close-at") => connections::close_at(args),
        Some("hijack") => attack::hijack(args),
        Some("term-all") => attack::term_all(args),
        Some("signal-root") => attack::signal_root(args),
        Some("stop-mint-child") => attack::stop_mint_child(args),
        Some("stop-helper") => attack::stop_helper(args),
        _ => Err("usage: bpftoken-probe try|send-token|recv-token|mint-loop|signal-root ...".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpftoken-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
