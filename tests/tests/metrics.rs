//! The metrics file end to end (docs/operation.md, "Metrics"): next to
//! the socket, root-owned and 0644 even under a 077 umask, replaced whole
//! at every status tick, and counters that move by exactly the mints and
//! refusals that happened; the last snapshot stays when the daemon stops.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
name = "alice-maps"
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
"#;

/// Every family the daemon writes, with its type.
const FAMILIES: [(&str, &str); 9] = [
    ("bpftokend_running", "gauge"),
    ("bpftokend_start_time_seconds", "gauge"),
    ("bpftokend_grants_total", "counter"),
    ("bpftokend_refusals_total", "counter"),
    ("bpftokend_mints_total", "counter"),
    ("bpftokend_scopes_cached", "gauge"),
    ("bpftokend_leases_live", "gauge"),
    ("bpftokend_connections_open", "gauge"),
    ("bpftokend_mint_seconds", "histogram"),
];

/// Series (`name{labels}`) to values. Every line must be a `# HELP` or
/// `# TYPE` comment or `name{labels} value`; anything else fails the test.
type Samples = BTreeMap<String, f64>;

fn parse(text: &str) -> Samples {
    assert!(text.ends_with('\n'), "the file does not end with a newline:\n{text}");
    let mut samples = Samples::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not `series value`: {line:?}"));
        let name_ok = series.split('{').next().is_some_and(|n| {
            n.starts_with("bpftokend_") && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        let labels_ok = series.find('{').is_none_or(|i| series[i..].ends_with("\"}") && series[i..].contains("=\""));
        assert!(name_ok && labels_ok, "not `name{{labels}}`: {line:?}");
        let value = value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line:?}"));
        assert!(samples.insert(series.to_owned(), value).is_none(), "series twice: {line:?}\n{text}");
    }
    samples
}

/// Which version of the file was read: its inode and modification time
/// (an inode number alone may be reused once the old file is gone).
type Version = (u64, i64, i64);

/// One read of the file: its text and version (from the same open file).
fn read(path: &Path) -> (String, Version) {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let meta = file.metadata().unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    (text, (meta.ino(), meta.mtime(), meta.mtime_nsec()))
}

fn get(samples: &Samples, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

/// The first version of the file after `after` in which `done` holds;
/// fails after 10 s with the last one.
fn wait_for(path: &Path, after: Version, what: &str, done: impl Fn(&Samples) -> bool) -> (Samples, Version) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !path.exists() {
            assert!(Instant::now() < deadline, "no metrics file {}", path.display());
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let (text, ino) = read(path);
        let samples = parse(&text);
        if ino != after && done(&samples) {
            return (samples, ino);
        }
        assert!(Instant::now() < deadline, "the metrics file never showed {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next version of the file: the counters must not have moved since
/// `before` except where `expect` says (series, new value).
fn next_version_holds(path: &Path, after: Version, before: &Samples, expect: &[(&str, f64)]) -> (Samples, Version) {
    let (now, ino) = wait_for(path, after, "a new version", |_| true);
    for (series, value) in &now {
        if series.starts_with("bpftokend_grants_total")
            || series.starts_with("bpftokend_refusals_total")
            || series.starts_with("bpftokend_mints_total")
            || series.starts_with("bpftokend_mint_seconds_bucket")
            || series == "bpftokend_mint_seconds_count"
        {
            let want = expect.iter().find(|(s, _)| s == series).map_or_else(|| get(before, series), |(_, v)| *v);
            assert_eq!(*value, want, "{series}");
        }
    }
    (now, ino)
}

#[test]
fn metrics_move_by_exactly_what_happened() {
    let Some(env) = setup("metrics_move_by_exactly_what_happened") else { return };
    // systemd runs the daemon with UMask=0077; node_exporter still reads the file.
    let d = TestDaemon::start_wrapped(&env, POLICY, &["sh", "-c", "umask 077 && exec \"$@\"", "sh"], &[]);
    let path = d.dir.join("metrics.prom");
    let enforcing = d.enforcement() == "enforcing";
    d.wait_for_log(&format!("metrics={}", path.display()));

    // The check that the daemon answers (a connection) may be in the first version.
    let (_, ino) = wait_for(&path, (0, 0, 0), "no connection", |s| get(s, "bpftokend_connections_open") == 0.0);
    let (text, _) = read(&path);
    let start = parse(&text);
    for (family, kind) in FAMILIES {
        assert!(text.contains(&format!("\n# TYPE {family} {kind}\n")), "no TYPE line for {family}:\n{text}");
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP line for {family}:\n{text}");
    }
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.is_file());
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (0o644, 0, 0), "mode, owner, group");
    let proms: Vec<String> = std::fs::read_dir(&d.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".prom"))
        .collect();
    assert_eq!(proms, ["metrics.prom"], "the textfile collector reads every *.prom file");
    assert_eq!(get(&start, "bpftokend_running"), 1.0);
    for (series, value) in &start {
        if !series.starts_with("bpftokend_start_time_seconds") && series != "bpftokend_running" {
            assert_eq!(*value, 0.0, "{series} of a daemon that answered nothing:\n{text}");
        }
    }
    assert_eq!(get(&start, "bpftokend_refusals_total{code=\"not_in_policy\"}"), 0.0);
    assert_eq!(get(&start, "bpftokend_mint_seconds_bucket{le=\"+Inf\"}"), 0.0);

    // Alice: a token (a new scope: cold), another (the cached one: warm),
    // then libbpf mode (under the enforcer a scope of its own: cold).
    let alice = user(ALICE);
    for args in [&["--fd-only"][..], &["--fd-only"], &[]] {
        let mut run = vec!["run"];
        run.extend_from_slice(args);
        run.extend_from_slice(&["--maps", "array", "--", "true"]);
        let o = d.bpftoken(&env, &alice, &run);
        assert!(o.status.success(), "{}\n{}", stderr(&o), d.log_text());
    }
    let (cold, warm) = if enforcing { (2.0, 1.0) } else { (1.0, 2.0) };
    let expect = [
        ("bpftokend_grants_total{mode=\"owner\"}", 2.0),
        ("bpftokend_grants_total{mode=\"libbpf\"}", 1.0),
        ("bpftokend_mints_total{path=\"cold\"}", cold),
        ("bpftokend_mints_total{path=\"warm\"}", warm),
        ("bpftokend_mint_seconds_count", 3.0),
        ("bpftokend_mint_seconds_bucket{le=\"+Inf\"}", 3.0),
        ("bpftokend_mint_seconds_bucket{le=\"1\"}", 3.0),
    ];
    let (seen, ino) = wait_for(&path, ino, "three grants", |s| {
        get(s, "bpftokend_grants_total{mode=\"owner\"}") + get(s, "bpftokend_grants_total{mode=\"libbpf\"}") >= 3.0
    });
    for (series, value) in expect {
        assert_eq!(get(&seen, series), value, "{series}");
    }
    // Buckets are cumulative and the time was spent.
    let buckets: Vec<f64> =
        seen.iter().filter(|(s, _)| s.starts_with("bpftokend_mint_seconds_bucket")).map(|(_, v)| *v).collect();
    assert_eq!(buckets.len(), 17);
    assert!(get(&seen, "bpftokend_mint_seconds_sum") > 0.0);
    let mut by_bound: Vec<(f64, f64)> = seen
        .iter()
        .filter_map(|(s, v)| {
            let le = s.strip_prefix("bpftokend_mint_seconds_bucket{le=\"")?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(by_bound.windows(2).all(|w| w[0].1 <= w[1].1), "{by_bound:?}");
    assert_eq!(by_bound.first().map(|b| b.0), Some(0.00001));
    // The libbpf-mode scope under the enforcer is never cached.
    assert_eq!(get(&seen, "bpftokend_scopes_cached"), 1.0);
    assert_eq!(get(&seen, "bpftokend_connections_open"), 0.0);
    if !enforcing {
        assert_eq!(get(&seen, "bpftokend_leases_live{enforced=\"true\"}"), 0.0);
    }
    // Nothing counted twice: the next version says the same.
    let (seen, ino) = next_version_holds(&path, ino, &seen, &[]);

    // Eve, whom no rule names: one refusal, not_in_policy.
    let eve = user(EVE);
    let o = d.bpftoken(&env, &eve, &["run", "--fd-only", "--maps", "array", "--", "true"]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains(&format!("no rule in {} allows uid {}", d.policy.display(), eve.uid))
            && said.ends_with("(not_in_policy)\n"),
        "{said}"
    );
    let (_, ino) =
        wait_for(&path, ino, "eve's refusal", |s| get(s, "bpftokend_refusals_total{code=\"not_in_policy\"}") >= 1.0);
    let (seen, ino) =
        next_version_holds(&path, ino, &seen, &[("bpftokend_refusals_total{code=\"not_in_policy\"}", 1.0)]);

    // A connection held open is counted while it is.
    let held = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let (_, ino) = wait_for(&path, ino, "one connection", |s| get(s, "bpftokend_connections_open") == 1.0);
    drop(held);
    let (_, ino) = wait_for(&path, ino, "no connection", |s| get(s, "bpftokend_connections_open") == 0.0);

    // Never half-written: reads across two refreshes each see a whole
    // file (the last line included); each refresh is a new file renamed
    // over the old one (a new inode), not the old one rewritten.
    let mut versions = std::collections::BTreeSet::from([ino]);
    let until = Instant::now() + Duration::from_millis(4500);
    while Instant::now() < until {
        let (text, version) = read(&path);
        assert!(text.contains("\nbpftokend_mint_seconds_count 3\n"), "a partial file:\n{text}");
        parse(&text);
        versions.insert(version);
    }
    let inodes: std::collections::BTreeSet<u64> = versions.iter().map(|v| v.0).collect();
    assert!(versions.len() >= 3 && inodes.len() >= 2, "not replaced at each status tick: {versions:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);

    // Stopped: the last snapshot stays, saying so, with every count.
    let mut d = d;
    assert!(d.stop().success());
    let (text, _) = read(&path);
    let last = parse(&text);
    assert_eq!(get(&last, "bpftokend_running"), 0.0, "{text}");
    for series in ["bpftokend_grants_total{mode=\"owner\"}", "bpftokend_refusals_total{code=\"not_in_policy\"}"] {
        assert_eq!(get(&last, series), get(&seen, series), "{series}");
    }
    assert_eq!(get(&last, "bpftokend_mint_seconds_count"), 3.0);
}
