//! Measurement plumbing shared by every section: latency samples, the
//! `RESULT` line a child process prints and its parent parses, timed
//! loops, CPU accounting, and the table row.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Latency samples of one measurement.
pub struct Stats {
    pub samples: Vec<Duration>,
    pub wall: Duration,
    /// CPU time of the measuring thread(s) over the timed loop.
    pub cpu: Duration,
}

impl Stats {
    pub fn p(&self, q: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        let i = ((s.len() - 1) as f64 * q) as usize;
        s[i].as_secs_f64() * 1e6
    }

    pub fn ops(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }

    pub fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.samples.len() as f64
    }

    /// One machine-readable line for the parent.
    pub fn emit(&self) {
        self.emit_ops(self.ops());
    }

    /// Concurrent clients' runs as one: every sample, the longest wall,
    /// the summed CPU; emitted with the sum of each client's own rate.
    pub fn emit_summed(runs: &[Stats]) {
        let ops = runs.iter().map(Stats::ops).sum();
        let stats = Stats {
            samples: runs.iter().flat_map(|r| r.samples.iter().copied()).collect(),
            wall: runs.iter().map(|r| r.wall).max().unwrap_or_default(),
            cpu: runs.iter().map(|r| r.cpu).sum(),
        };
        stats.emit_ops(ops);
    }

    pub fn emit_ops(&self, ops: f64) {
        println!(
            "RESULT {:.3} {:.3} {:.1} {} {:.3}",
            self.p(0.5),
            self.p(0.99),
            ops,
            self.samples.len(),
            self.cpu_per_op()
        );
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// (p50 us, p99 us, ops/s) parsed from a child's RESULT line, and CPU
/// per request: the client's, and the server's (or daemon's) when known.
#[derive(Clone, Copy)]
pub struct Figures {
    pub p50: f64,
    pub p99: f64,
    pub ops: f64,
    pub client_cpu: f64,
    pub server_cpu: Option<f64>,
}

pub fn parse_result(out: &str) -> Option<Figures> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    Some(Figures { p50: *v.first()?, p99: *v.get(1)?, ops: *v.get(2)?, client_cpu: *v.get(4)?, server_cpu: None })
}

/// Untimed requests before each timed loop.
pub fn warm_up(n: usize) -> usize {
    n / 20 + 5
}

pub fn time_loop(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..warm_up(n) {
        f();
    }
    let mut samples = Vec::with_capacity(n);
    let cpu = thread_cpu();
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    Stats { samples, wall: start.elapsed(), cpu: thread_cpu() - cpu }
}

/// CPU time of every thread of process `pid` so far (schedstat, ns).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

pub fn pinned(pin: bool, program: &Path) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn run_child(mut c: Command) -> Figures {
    let out = c.stderr(Stdio::inherit()).output().expect("run bench child");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_result(&text).unwrap_or_else(|| panic!("bench child {c:?} printed no RESULT: {text}"))
}

pub fn row(name: &str, f: Figures) {
    let server = f.server_cpu.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"));
    println!("{name:<44} {:>9.2} {:>9.2} {:>10.0} {:>8.1} {:>8}", f.p50, f.p99, f.ops, f.client_cpu, server);
}
