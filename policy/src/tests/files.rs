//! The policy file's checks: owner, mode, symlinks, ancestors, size and
//! encoding, each refusal's exact text.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn dir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("bpftoken-policy-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn write(path: &Path, mode: u32) {
    std::fs::write(path, "[[allow]]\nuids = [1000]\ncmds = [\"map_create\"]\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn good_file_loads() {
    let d = dir();
    let p = d.join("policy.toml");
    write(&p, 0o644);
    let policy = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap();
    assert_eq!(policy.path(), p);
    assert_eq!(policy.rules().len(), 1);
}

#[test]
fn group_or_world_writable_file_is_refused() {
    let d = dir();
    let p = d.join("policy.toml");
    for mode in [0o664, 0o646] {
        write(&p, mode);
        let e = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "refusing policy {0}: the file is writable by group or others (mode {mode:04o}; chmod go-w {0})",
                p.display()
            )
        );
    }
}

#[test]
fn wrong_owner_is_refused() {
    let d = dir();
    let p = d.join("policy.toml");
    write(&p, 0o644);
    let other = me() + 1;
    let e = load_with(&p, other, &FakeNames, &KernelNames::builtin()).unwrap_err();
    // the directory is checked first
    assert_eq!(
        e.to_string(),
        format!(
            "refusing policy {}: its directory is owned by uid {}, not uid {other} (chown root {})",
            p.display(),
            me(),
            d.display()
        )
    );
}

#[test]
fn writable_directory_is_refused() {
    let d = dir();
    let p = d.join("policy.toml");
    write(&p, 0o644);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert!(
        e.to_string().ends_with(&format!(
            "its directory is writable by group or others (mode 0777; chmod go-w {})",
            d.display()
        )),
        "{e}"
    );
}

#[test]
fn symlinked_or_writable_ancestor_is_refused() {
    let d = dir();
    let real = d.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&real.join("policy.toml"), 0o644);
    let link = d.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = load_with(&link.join("policy.toml"), me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "refusing policy {}: {} is a symbolic link or not a directory; give the real path",
            link.join("policy.toml").display(),
            link.display()
        )
    );
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = load_with(&real.join("policy.toml"), me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "refusing policy {}: directory {} on its path is writable by group or others (mode 0777)",
            real.join("policy.toml").display(),
            d.display()
        )
    );
    let e = load_with(Path::new("/etc/../etc/x.toml"), me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert!(e.to_string().ends_with("its path contains \".\" or \"..\"; give a plain absolute path"), "{e}");
}

#[test]
fn symlink_is_refused() {
    let d = dir();
    let real = d.join("real.toml");
    write(&real, 0o644);
    let link = d.join("policy.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = load_with(&link, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(e.to_string(), format!("refusing policy {}: it is a symbolic link", link.display()));
}

#[test]
fn missing_file_and_fifo() {
    let d = dir();
    let p = d.join("absent.toml");
    let e = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(e.to_string(), format!("cannot open policy {}: No such file or directory (os error 2)", p.display()));
    let fifo = d.join("fifo.toml");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
    let e = load_with(&fifo, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(e.to_string(), format!("refusing policy {}: it is not a regular file", fifo.display()));
}

#[test]
fn oversized_and_non_utf8_files() {
    let d = dir();
    let p = d.join("big.toml");
    std::fs::write(&p, vec![b'#'; usize::try_from(MAX_POLICY_BYTES).unwrap() + 1]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(e.to_string(), format!("policy {} is 1048577 bytes, more than the limit of 1048576", p.display()));
    let p = d.join("bin.toml");
    std::fs::write(&p, b"# ok\n# \xff\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load_with(&p, me(), &FakeNames, &KernelNames::builtin()).unwrap_err();
    assert_eq!(e.to_string(), format!("{}:2:3: the policy is not valid UTF-8", p.display()));
}
