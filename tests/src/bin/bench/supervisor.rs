//! What `bpftoken run`'s tracing supervisor costs a command that does
//! not trace: trapped and untrapped calls, with and without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bpftoken_tests::*;

/// `open-loop N trapped|plain|getpid`: N `openat(AT_FDCWD, /dev/null)`
/// with the flags the supervisor traps (`O_RDONLY|O_CLOEXEC`) or others,
/// or N `getpid`.
pub fn open_loop(n: usize, what: &str) {
    for _ in 0..n {
        match what {
            "trapped" => drop(std::fs::File::open("/dev/null")),
            "plain" => {
                let fd = rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty());
                drop(fd);
            }
            _ => {
                let _ = rustix::process::getpid();
            }
        }
    }
}

/// Median wall time of 5 runs of `cmd` (a fresh command each run).
pub fn median_run(mut cmd: impl FnMut() -> Command) -> Duration {
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let mut c = cmd();
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let t = Instant::now();
            let status = c.status().expect("run a supervised workload");
            assert!(status.success(), "workload failed: {status}");
            t.elapsed()
        })
        .collect();
    runs.sort_unstable();
    runs[2]
}

/// What the tracing supervisor costs a command that does not trace.
pub fn measure_supervisor(env: &Env, self_exe: &Path) {
    let alice = user(ALICE);
    // A grant with tracepoint programs: `bpftoken run` supervises then.
    let policy = format!(
        "[[allow]]\nusers = [\"{ALICE}\"]\ncmds = [\"prog_load\"]\nprogs = [\"tracepoint\"]\nattachs = \
         [\"cgroup_inet_ingress\"]\n"
    );
    let d = TestDaemon::start_for_bench(env, &policy, false);
    println!("--- tracing supervisor (bpftoken run), 100000 calls, median of 5 runs");
    for what in ["trapped", "plain", "getpid"] {
        let workload = |c: &mut Command| {
            c.arg(self_exe).args(["open-loop", "100000", what]);
        };
        let bare = median_run(|| {
            let mut c = as_user(&alice, "env");
            workload(&mut c);
            c
        });
        let run = |extra: &'static [&'static str]| {
            median_run(|| {
                let mut c = as_user(&alice, env.bin("bpftoken"));
                c.arg("--socket").arg(&d.socket).args(["run", "--fd-only"]).args(extra).arg("--").arg("env");
                workload(&mut c);
                c
            })
        };
        let unsupervised = run(&["--no-trace-broker"]);
        let supervised = run(&[]);
        let label = match what {
            "trapped" => "openat O_RDONLY|O_CLOEXEC (trapped)",
            "plain" => "openat O_RDONLY (not trapped)",
            _ => "getpid (not trapped)",
        };
        println!(
            "  {label:<38} bare {:>7.1} ms  run {:>7.1} ms  supervised {:>7.1} ms  supervised/run {:.2}x  \
             per call +{:.2} us",
            bare.as_secs_f64() * 1e3,
            unsupervised.as_secs_f64() * 1e3,
            supervised.as_secs_f64() * 1e3,
            supervised.as_secs_f64() / unsupervised.as_secs_f64(),
            (supervised.as_secs_f64() - unsupervised.as_secs_f64()) * 1e6 / 100_000.0
        );
    }
}
