//! Scale: many concurrent connections, and many mints by one uid. The
//! tests in this file share kernel-wide state (the user-namespace quota)
//! and run one at a time.

use std::sync::Mutex;
use std::time::Duration;

use bpftoken_tests::*;

static SERIAL: Mutex<()> = Mutex::new(());

const POLICY: &str = r#"
[[allow]]
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["any"]
"#;

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn counter(out: &str, name: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// Wait until the daemon's fd count settles at `want` (connections close
/// asynchronously); returns the last count.
/// Spare tokens (0 to 7 per scope) come and go with the mint count: they
/// are counted apart from the other fds.
fn settle_fds(pid: u32, want: usize) -> usize {
    let other = || fd_count(pid) - token_fds(pid);
    let mut n = other();
    for _ in 0..100 {
        if n == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        n = other();
    }
    n
}

/// What the daemon may keep after 10,000 grants: it keeps their 10,000
/// leases, which stay listed (unenforced, without ttl, until the table is
/// full); 4 MiB bounds that. The burst's freed memory itself goes back:
/// without the daemon's heap trim RSS stays near the peak (about 10 MiB
/// above the baseline here).
const RSS_KEPT_KIB: u64 = 4 * 1024;

/// A second burst of as many grants keeps no more: the lease table is
/// full by then (the oldest are forgotten), so what grows is a leak.
const RSS_SECOND_BURST_KIB: u64 = 1024;

#[test]
fn a_thousand_connections_mint_ten_tokens_each() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(env) = setup("a_thousand_connections_mint_ten_tokens_each") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    // Warm the scope, then take the baseline.
    let o = d.bpftoken(&env, &alice, &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = d.pid();
    std::thread::sleep(Duration::from_millis(200));
    let (fds_before, rss_before) = (fd_count(pid) - token_fds(pid), status_kib(pid, "VmRSS:"));

    let mut c = as_user(&alice, env.bin("bpftoken-probe"));
    c.args(["storm", d.socket.to_str().unwrap(), "1000", "10"]);
    let o = output(c);
    let out = stdout(&o);
    assert_eq!(counter(&out, "connected"), 1000, "{out}{}", stderr(&o));
    assert_eq!(counter(&out, "errors"), 0, "{out}");
    assert_eq!(counter(&out, "minted"), 10_000, "{out}");

    let fds_after = settle_fds(pid, fds_before);
    // The daemon returns freed heap memory within one status period (2 s)
    // of the last connection closing.
    let mut rss_after = status_kib(pid, "VmRSS:");
    for _ in 0..40 {
        if rss_after <= rss_before + RSS_KEPT_KIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rss_after = status_kib(pid, "VmRSS:");
    }
    let rss_peak = status_kib(pid, "VmHWM:");
    let spares = token_fds(pid);
    eprintln!(
        "1000 connections x 10 mints: daemon fds other than spare tokens {fds_before} -> {fds_after}, \
         spare tokens {spares}, RSS {rss_before} KiB -> {rss_after} KiB, peak RSS {rss_peak} KiB"
    );
    assert_eq!(fds_after, fds_before, "daemon fd count back to baseline");
    assert!(spares <= 7, "{spares} spare tokens for one scope");
    assert!(rss_after <= rss_before + RSS_KEPT_KIB, "RSS {rss_before} -> {rss_after} KiB");

    let mut c = as_user(&alice, env.bin("bpftoken-probe"));
    c.args(["storm", d.socket.to_str().unwrap(), "1000", "10"]);
    let o = output(c);
    assert_eq!(counter(&stdout(&o), "minted"), 10_000, "{}", stdout(&o));
    assert_eq!(settle_fds(pid, fds_before), fds_before, "daemon fd count back to baseline after a second burst");
    // Up to three status periods: the trim runs at one with no connection.
    let mut rss_second = status_kib(pid, "VmRSS:");
    for _ in 0..60 {
        if rss_second <= rss_after + RSS_SECOND_BURST_KIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        rss_second = status_kib(pid, "VmRSS:");
    }
    eprintln!("a second burst: RSS {rss_after} KiB -> {rss_second} KiB");
    assert!(rss_second <= rss_after + RSS_SECOND_BURST_KIB, "RSS after a second burst {rss_after} -> {rss_second} KiB");
}

#[test]
fn ten_thousand_mints_hold_one_user_namespace_per_scope() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(env) = setup("ten_thousand_mints_hold_one_user_namespace_per_scope") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let alice = user(ALICE);
    // Every live user namespace is held by some process (ns/user) or fd;
    // count those owned by alice across the whole system.
    let before = user_namespaces_of(alice.uid);
    let mut c = as_user(&alice, env.bin("bpftoken-probe"));
    c.args(["mint-masks", d.socket.to_str().unwrap(), "10000", "5"]);
    let o = output(c);
    let out = stdout(&o);
    assert_eq!(counter(&out, "errors"), 0, "{out}{}", stderr(&o));
    assert_eq!(counter(&out, "minted"), 10_000, "{out}");
    let after = user_namespaces_of(alice.uid);
    eprintln!(
        "10,000 mints by uid {} over 5 mask sets: user namespaces owned by it: {before} before, {after} after",
        alice.uid
    );
    assert_eq!(after, before + 5, "one user namespace per distinct scope, not per token");
}

/// Distinct user namespaces owned by `uid` that any process holds, as its
/// own namespace or through an fd (tokens pin theirs too, but a token fd
/// does not name it; the test's client has closed all of its tokens).
fn user_namespaces_of(uid: u32) -> usize {
    let mut inodes = std::collections::BTreeSet::new();
    for proc_entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !proc_entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut links = vec![proc_entry.path().join("ns/user")];
        if let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) {
            links.extend(fds.flatten().map(|e| e.path()));
        }
        for path in links {
            let Ok(link) = std::fs::read_link(&path) else { continue };
            let link = link.to_string_lossy().into_owned();
            if !link.starts_with("user:[") || inodes.contains(&link) {
                continue;
            }
            let Ok(f) = std::fs::File::open(&path) else { continue };
            if bpftoken_tests::sys::ns_owner_uid(&f).is_ok_and(|owner| owner == uid) {
                inodes.insert(link);
            }
        }
    }
    inodes.len()
}

/// Scopes the cache evicts are closed (off the serving thread, which an
/// unmount's RCU wait would stall): after 200 cold mints with room for one
/// scope, the daemon holds what it held with one scope, not 200 scopes'
/// user namespaces and mounts.
#[test]
fn scopes_evicted_from_the_cache_are_closed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(env) = setup("scopes_evicted_from_the_cache_are_closed") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--scopes-per-uid", "1", "--spare-tokens", "0"]);
    let alice = user(ALICE);
    let probe = env.bin("bpftoken-probe");
    let pid = d.pid();
    // One scope cached: the baseline.
    let mut c = as_user(&alice, &probe);
    c.args(["mint-masks", d.socket.to_str().unwrap(), "1", "1"]);
    let o = output(c);
    assert_eq!(counter(&stdout(&o), "minted"), 1, "{}", stdout(&o));
    let baseline = settle_fds(pid, fd_count(pid) - token_fds(pid));
    // 200 mints with 200 masks: each a new scope that evicts the last.
    let mut c = as_user(&alice, &probe);
    c.args(["mint-masks", d.socket.to_str().unwrap(), "200", "200"]);
    let o = output(c);
    assert_eq!(counter(&stdout(&o), "minted"), 200, "{}", stdout(&o));
    assert_eq!(counter(&stdout(&o), "errors"), 0, "{}", stdout(&o));
    assert_eq!(settle_fds(pid, baseline), baseline, "the daemon's fds after 199 evictions");
}
