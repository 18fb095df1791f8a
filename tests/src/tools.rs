//! The BPF tools and objects `scripts/setup-test-tools.sh` installs: trixie's
//! bpftool 7.5 behind a wrapper, BPF objects compiled from `tests/bpf/`, and
//! trixie's libbpf 1.5 for C programs.
//!
//! Like [`crate::setup`], each lookup skips (outside CI, with a visible
//! reason) or panics (with `CI=true`) when the tool is missing. The test name
//! in the message is the current test thread's name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where `scripts/setup-test-tools.sh` installs the wrapper and objects.
pub const LIBEXEC: &str = "/usr/local/libexec/bpftoken-test";
/// Where it unpacks the Debian trixie packages.
pub const TRIXIE_ROOT: &str = "/var/cache/bpftoken-test/trixie/root";
const MULTIARCH: &str = "x86_64-linux-gnu";
const HINT: &str = "run scripts/setup-test-tools.sh as root";

fn missing<T>(what: &str) -> Option<T> {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {what} ({HINT}), and CI=true: privileged tests must not skip in CI");
    }
    eprintln!("SKIPPED {test}: {what} ({HINT})");
    None
}

fn present(path: &Path, what: &str) -> Option<PathBuf> {
    if path.exists() {
        Some(path.to_owned())
    } else {
        missing(&format!("{what} {} is missing", path.display()))
    }
}

/// The bpftool 7.5 wrapper, once it has been seen to run.
pub fn bpftool() -> Option<PathBuf> {
    static WORKS: OnceLock<Result<(), String>> = OnceLock::new();
    let path = present(&Path::new(LIBEXEC).join("bpftool"), "bpftool wrapper")?;
    let works = WORKS.get_or_init(|| match Command::new(&path).arg("version").output() {
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("using libbpf v1.") => Ok(()),
        Ok(o) => Err(format!(
            "{} version failed ({}): {}{}",
            path.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run {}: {e}", path.display())),
    });
    match works {
        Ok(()) => Some(path),
        Err(e) => missing(e),
    }
}

/// A BPF object compiled from `tests/bpf/NAME.bpf.c`, e.g. `sockfilter`.
pub fn bpf_object(name: &str) -> Option<PathBuf> {
    present(&Path::new(LIBEXEC).join("obj").join(format!("{name}.bpf.o")), "BPF object")
}

/// Debian trixie's libbpf 1.5 and the loader its libraries need.
#[derive(Debug, Clone)]
pub struct TrixieLibbpf {
    /// `-I` directories: libbpf's headers and trixie's kernel uapi headers.
    pub include_dirs: Vec<PathBuf>,
    /// Holds `libbpf.so` and the trixie libc it needs.
    pub lib_dir: PathBuf,
    /// Trixie's dynamic loader: run a program linked against this libbpf
    /// as `LOADER --library-path LIB_DIR[:...] PROGRAM ARGS...`.
    pub loader: PathBuf,
}

/// Trixie's libbpf, for building and running C test programs.
pub fn trixie_libbpf() -> Option<TrixieLibbpf> {
    let root = Path::new(TRIXIE_ROOT);
    present(&root.join("usr/include/bpf/bpf.h"), "trixie libbpf header")?;
    let lib_dir = root.join("usr/lib").join(MULTIARCH);
    present(&lib_dir.join("libbpf.so"), "trixie libbpf")?;
    let loader = present(&root.join("usr/lib64/ld-linux-x86-64.so.2"), "trixie loader")?;
    Some(TrixieLibbpf {
        include_dirs: vec![root.join("usr/include"), root.join("usr/include").join(MULTIARCH)],
        lib_dir,
        loader,
    })
}
