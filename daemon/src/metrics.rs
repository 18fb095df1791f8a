//! Metrics in the Prometheus text exposition format, written to a file
//! for node_exporter's textfile collector (docs/operation.md, "Metrics").
//!
//! [`Counters`] are bumped where decisions are already counted (the reply
//! writer, the mint handler) with relaxed atomics: no lock and no
//! allocation on a request's path. The gauges are read at the status tick
//! into a [`Snapshot`]; [`render`] turns both into text, and
//! [`MetricsFile::write`] replaces the file atomically (a fresh temporary
//! file in the same directory, renamed over it), so a reader sees the old
//! file or the new one, never part of one.
//!
//! Invariants: metric names and label values are stable (they are an
//! interface: dashboards and alerts name them); every refusal code and
//! grant mode is rendered, 0 until it happens, so a series never appears
//! out of nowhere; the file is mode 0644 whatever the umask.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bpftoken_proto::{LeaseMode, RefusalCode};

use crate::server::Daemon;

/// The file's name next to the socket, unless `--metrics-file` says
/// otherwise.
pub const FILE_NAME: &str = "metrics.prom";

/// Grant modes, as the audit events name them (`learn`: a learning lease).
const GRANT_MODES: [&str; 5] = ["owner", "libbpf", "container", "delegated_mount", "learn"];

/// Upper bounds of the mint latency buckets: the label as written and the
/// bound in nanoseconds. A warm mint takes tens of microseconds, a cold
/// one (a new user namespace and bpffs) milliseconds; beyond 1 s
/// something is wrong.
const BUCKETS: [(&str, u64); 16] = [
    ("1e-05", 10_000),
    ("2.5e-05", 25_000),
    ("5e-05", 50_000),
    ("0.0001", 100_000),
    ("0.00025", 250_000),
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.0025", 2_500_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
];

/// Counters the server bumps as it answers.
#[derive(Debug)]
pub struct Counters {
    /// Delivered grants, by [`GRANT_MODES`] index.
    grants: [AtomicU64; GRANT_MODES.len()],
    /// Refusals sent, by index in [`RefusalCode::ALL`]; the last slot is
    /// for a code this build does not know (never sent by the daemon).
    refusals: Vec<AtomicU64>,
    /// Tokens minted from a cached scope, and from a new one.
    warm: AtomicU64,
    cold: AtomicU64,
    /// Mint latencies per bucket (not cumulative; the last is +Inf).
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            grants: Default::default(),
            refusals: (0..=RefusalCode::ALL.len()).map(|_| AtomicU64::new(0)).collect(),
            warm: AtomicU64::new(0),
            cold: AtomicU64::new(0),
            latency: Default::default(),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// A grant was delivered.
    pub fn count_grant(&self, learn: bool, mode: LeaseMode) {
        let index = match (learn, mode) {
            (true, _) => 4,
            (false, LeaseMode::Owner) => 0,
            (false, LeaseMode::Libbpf) => 1,
            (false, LeaseMode::Container) => 2,
            (false, LeaseMode::DelegatedMount) => 3,
        };
        self.grants[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal was sent.
    pub fn count_refusal(&self, code: RefusalCode) {
        let index = RefusalCode::ALL.iter().position(|c| *c == code).unwrap_or(RefusalCode::ALL.len());
        self.refusals[index].fetch_add(1, Ordering::Relaxed);
    }

    /// A token was minted (`cold`: in a scope created for it), `took` after
    /// its request started.
    pub fn count_mint(&self, cold: bool, took: Duration) {
        let path = if cold { &self.cold } else { &self.warm };
        path.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS.iter().position(|(_, bound)| ns <= *bound).unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The gauges, read at the status tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// False in the last snapshot, written as the daemon stops.
    pub running: bool,
    /// Seconds since the Unix epoch when the daemon started.
    pub start_time: u64,
    pub scopes_cached: usize,
    /// Leases the daemon holds (until a sweep finds their tokens freed),
    /// with an entry in the enforcer's map, and without one.
    pub leases_enforced: usize,
    pub leases_unenforced: usize,
    pub connections_open: usize,
}

impl Snapshot {
    /// `daemon`'s gauges now.
    pub fn of(daemon: &Daemon, start_time: u64, running: bool) -> Snapshot {
        let (leases_enforced, leases_unenforced) = daemon.leases.counts();
        Snapshot {
            running,
            start_time,
            scopes_cached: daemon.scopes.len(),
            leases_enforced,
            leases_unenforced,
            connections_open: daemon.connections(),
        }
    }
}

/// Writes the metrics file at each status tick; says once when writing
/// fails (and goes on trying) and once when it works again.
#[derive(Debug)]
pub struct Reporter {
    file: MetricsFile,
    start_time: u64,
    failing: bool,
}

impl Reporter {
    /// For a daemon started at `start_time` (seconds since the epoch).
    pub fn new(file: MetricsFile, start_time: u64) -> Self {
        Reporter { file, start_time, failing: false }
    }

    /// Write `daemon`'s metrics now (`running` false: the last time).
    pub fn write(&mut self, daemon: &Daemon, running: bool) {
        let now = Snapshot::of(daemon, self.start_time, running);
        match self.file.write(&render(&daemon.stats.metrics, &now)) {
            Ok(()) if std::mem::take(&mut self.failing) => {
                tracing::info!(metrics = %self.file.path().display(), "metrics file written again");
            }
            Ok(()) => {}
            Err(e) if !std::mem::replace(&mut self.failing, true) => {
                tracing::warn!("{e}; trying again at every status tick");
            }
            Err(_) => {}
        }
    }
}

/// One metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics as Prometheus text (exposition format 0.0.4).
pub fn render(counters: &Counters, now: &Snapshot) -> String {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);

    family(&mut out, "bpftokend_running", "gauge", "1 while the daemon runs; 0 in the file it leaves when it stops.");
    let _ = writeln!(out, "bpftokend_running {}", u8::from(now.running));
    family(
        &mut out,
        "bpftokend_start_time_seconds",
        "gauge",
        "When the daemon started, in seconds since the Unix epoch.",
    );
    let _ = writeln!(out, "bpftokend_start_time_seconds {}", now.start_time);

    family(&mut out, "bpftokend_grants_total", "counter", "Grants delivered to clients, by lease mode.");
    for (mode, count) in GRANT_MODES.iter().zip(&counters.grants) {
        let _ = writeln!(out, "bpftokend_grants_total{{mode=\"{mode}\"}} {}", load(count));
    }

    family(&mut out, "bpftokend_refusals_total", "counter", "Refusals sent, by refusal code.");
    for (code, count) in RefusalCode::ALL.iter().zip(&counters.refusals) {
        let _ = writeln!(out, "bpftokend_refusals_total{{code=\"{}\"}} {}", code.as_str(), load(count));
    }
    let unknown = counters.refusals.last().map_or(0, load);
    if unknown > 0 {
        let _ = writeln!(out, "bpftokend_refusals_total{{code=\"unknown\"}} {unknown}");
    }

    family(
        &mut out,
        "bpftokend_mints_total",
        "counter",
        "Tokens minted, by path: warm from a cached scope, cold in a new scope.",
    );
    let _ = writeln!(out, "bpftokend_mints_total{{path=\"warm\"}} {}", load(&counters.warm));
    let _ = writeln!(out, "bpftokend_mints_total{{path=\"cold\"}} {}", load(&counters.cold));

    family(&mut out, "bpftokend_scopes_cached", "gauge", "Scopes (user namespace and delegated bpffs) cached.");
    let _ = writeln!(out, "bpftokend_scopes_cached {}", now.scopes_cached);

    family(
        &mut out,
        "bpftokend_leases_live",
        "gauge",
        "Leases whose tokens were alive at the last sweep, by whether the enforcer enforces them.",
    );
    let _ = writeln!(out, "bpftokend_leases_live{{enforced=\"true\"}} {}", now.leases_enforced);
    let _ = writeln!(out, "bpftokend_leases_live{{enforced=\"false\"}} {}", now.leases_unenforced);

    family(&mut out, "bpftokend_connections_open", "gauge", "Client connections open.");
    let _ = writeln!(out, "bpftokend_connections_open {}", now.connections_open);

    family(
        &mut out,
        "bpftokend_mint_seconds",
        "histogram",
        "Time from a mint request's start to its token in hand, in seconds.",
    );
    let mut cumulative = 0;
    for ((le, _), count) in BUCKETS.iter().zip(&counters.latency) {
        cumulative += load(count);
        let _ = writeln!(out, "bpftokend_mint_seconds_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += counters.latency.last().map_or(0, load);
    let _ = writeln!(out, "bpftokend_mint_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_ns = load(&counters.latency_sum_ns);
    let _ = writeln!(out, "bpftokend_mint_seconds_sum {}.{:09}", sum_ns / 1_000_000_000, sum_ns % 1_000_000_000);
    let _ = writeln!(out, "bpftokend_mint_seconds_count {cumulative}");
    out
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write the metrics file {path}: {source} (--metrics-file chooses another place)")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the metrics go.
#[derive(Debug, Clone)]
pub struct MetricsFile {
    path: PathBuf,
}

impl MetricsFile {
    /// `path`, or [`FILE_NAME`] in the directory of `socket`.
    pub fn new(path: Option<PathBuf>, socket: &Path) -> Self {
        let path = path.unwrap_or_else(|| socket.parent().unwrap_or(Path::new("/")).join(FILE_NAME));
        MetricsFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file a new version is written to: in the same
    /// directory (rename does not cross filesystems), hidden, and not
    /// ending in `.prom` (the textfile collector reads only those).
    fn temporary(&self) -> PathBuf {
        let name = self.path.file_name().map_or_else(|| FILE_NAME.into(), |n| n.to_string_lossy().into_owned());
        self.path.with_file_name(format!(".{name}.tmp"))
    }

    /// Replace the file with `text`: written to a new temporary file,
    /// mode 0644, then renamed over the old one.
    pub fn write(&self, text: &str) -> Result<(), MetricsError> {
        let tmp = self.temporary();
        let err = |source| MetricsError::Write { path: self.path.clone(), source };
        // A leftover (a daemon killed between write and rename) goes; the
        // new one is created afresh (O_EXCL: no symlink is followed), so
        // the daemon writes only into a file it created.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let written = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
            // The service's UMask=0077 would leave it unreadable by node_exporter.
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            file.write_all(text.as_bytes())?;
            drop(file);
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn every_sample_line_is_name_labels_value_and_every_family_has_help_and_type() {
        let text = render(&Counters::default(), &Snapshot { running: true, ..Snapshot::default() });
        assert!(text.ends_with('\n'));
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                families.push(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                assert!(rest.split_once(' ').is_some_and(|(_, help)| !help.is_empty()), "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let (name, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            assert!(labels.is_empty() || (labels.starts_with("{") && labels.ends_with("\"}")), "{line}");
            // A sample follows its family's TYPE line (a histogram's
            // series add _bucket, _sum and _count to the name).
            let family = families.last().expect("a sample after its TYPE line");
            let suffix = name.strip_prefix(family.as_str()).expect(line);
            assert!(["", "_bucket", "_sum", "_count"].contains(&suffix), "{line}");
        }
        assert_eq!(
            families,
            [
                "bpftokend_running",
                "bpftokend_start_time_seconds",
                "bpftokend_grants_total",
                "bpftokend_refusals_total",
                "bpftokend_mints_total",
                "bpftokend_scopes_cached",
                "bpftokend_leases_live",
                "bpftokend_connections_open",
                "bpftokend_mint_seconds",
            ]
        );
    }

    #[test]
    fn every_refusal_code_and_grant_mode_is_rendered_from_zero() {
        let text = render(&Counters::default(), &Snapshot::default());
        for code in RefusalCode::ALL {
            assert_eq!(value(&text, &format!("bpftokend_refusals_total{{code=\"{}\"}}", code.as_str())).unwrap(), "0");
        }
        for mode in ["owner", "libbpf", "container", "delegated_mount", "learn"] {
            assert_eq!(value(&text, &format!("bpftokend_grants_total{{mode=\"{mode}\"}}")).unwrap(), "0");
        }
        assert!(!text.contains("code=\"unknown\""), "{text}");
    }

    #[test]
    fn counts_land_in_their_series() {
        let c = Counters::default();
        c.count_grant(false, LeaseMode::Owner);
        c.count_grant(false, LeaseMode::Owner);
        c.count_grant(true, LeaseMode::Libbpf);
        c.count_grant(false, LeaseMode::DelegatedMount);
        c.count_refusal(RefusalCode::NotInPolicy);
        c.count_refusal(RefusalCode::TraceUnavailable);
        c.count_refusal(RefusalCode::Unknown(999));
        let now = Snapshot {
            running: true,
            start_time: 1_700_000_000,
            scopes_cached: 3,
            leases_enforced: 4,
            leases_unenforced: 5,
            connections_open: 6,
        };
        let text = render(&c, &now);
        let expect = [
            ("bpftokend_running", "1"),
            ("bpftokend_start_time_seconds", "1700000000"),
            ("bpftokend_grants_total{mode=\"owner\"}", "2"),
            ("bpftokend_grants_total{mode=\"libbpf\"}", "0"),
            ("bpftokend_grants_total{mode=\"learn\"}", "1"),
            ("bpftokend_grants_total{mode=\"delegated_mount\"}", "1"),
            ("bpftokend_refusals_total{code=\"not_in_policy\"}", "1"),
            ("bpftokend_refusals_total{code=\"not_granted\"}", "0"),
            ("bpftokend_refusals_total{code=\"trace_unavailable\"}", "1"),
            ("bpftokend_refusals_total{code=\"unknown\"}", "1"),
            ("bpftokend_scopes_cached", "3"),
            ("bpftokend_leases_live{enforced=\"true\"}", "4"),
            ("bpftokend_leases_live{enforced=\"false\"}", "5"),
            ("bpftokend_connections_open", "6"),
        ];
        for (series, want) in expect {
            assert_eq!(value(&text, series).as_deref(), Some(want), "{series} in\n{text}");
        }
    }

    #[test]
    fn the_histogram_is_cumulative_with_inclusive_bounds() {
        let c = Counters::default();
        c.count_mint(false, Duration::from_micros(10)); // on the first bound: in it
        c.count_mint(false, Duration::from_micros(11));
        c.count_mint(true, Duration::from_millis(3));
        c.count_mint(true, Duration::from_secs(2)); // beyond the last bound
        let text = render(&c, &Snapshot::default());
        let bucket = |le: &str| value(&text, &format!("bpftokend_mint_seconds_bucket{{le=\"{le}\"}}")).unwrap();
        assert_eq!(bucket("1e-05"), "1");
        assert_eq!(bucket("2.5e-05"), "2");
        assert_eq!(bucket("0.0025"), "2");
        assert_eq!(bucket("0.005"), "3");
        assert_eq!(bucket("1"), "3");
        assert_eq!(bucket("+Inf"), "4");
        assert_eq!(value(&text, "bpftokend_mint_seconds_count").unwrap(), "4");
        assert_eq!(value(&text, "bpftokend_mint_seconds_sum").unwrap(), "2.003021000");
        assert_eq!(value(&text, "bpftokend_mints_total{path=\"warm\"}").unwrap(), "2");
        assert_eq!(value(&text, "bpftokend_mints_total{path=\"cold\"}").unwrap(), "2");
        // Every label parses as the bound it stands for.
        for (le, ns) in BUCKETS {
            #[allow(clippy::cast_precision_loss)] // bounds up to 1e9: exact in f64
            let bound = ns as f64 / 1e9;
            assert_eq!(le.parse::<f64>().unwrap(), bound, "{le}");
        }
    }

    #[test]
    fn the_file_is_replaced_whole_with_mode_0644() {
        let dir = std::env::temp_dir().join(format!("bpftokend-metrics-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = MetricsFile::new(None, &dir.join("socket"));
        assert_eq!(file.path(), dir.join("metrics.prom"));
        // A leftover temporary file (a daemon killed mid-write) is replaced.
        std::fs::write(dir.join(".metrics.prom.tmp"), "half").unwrap();
        file.write("first\n").unwrap();
        let first = std::fs::metadata(file.path()).unwrap();
        file.write("second\n").unwrap();
        let second = std::fs::metadata(file.path()).unwrap();
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "second\n");
        assert_eq!(second.permissions().mode() & 0o7777, 0o644);
        // Renamed over, not rewritten in place.
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&first), std::os::unix::fs::MetadataExt::ino(&second));
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["metrics.prom"]);
        let explicit = MetricsFile::new(Some(dir.join("other.prom")), &dir.join("socket"));
        assert_eq!(explicit.path(), dir.join("other.prom"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_that_fails_names_the_file_and_the_option() {
        let file = MetricsFile::new(Some(PathBuf::from("/nonexistent-bpftokend-dir/metrics.prom")), Path::new("/"));
        let e = file.write("x\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot write the metrics file /nonexistent-bpftokend-dir/metrics.prom: No such file or directory \
             (os error 2) (--metrics-file chooses another place)"
        );
    }
}
