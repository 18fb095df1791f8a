//! Reading the policy file without trusting its path.
//!
//! The parent directory is opened first and checked through its fd, then
//! the file is opened relative to that fd with O_NOFOLLOW and checked
//! through its own fd (fstat), so a rename or symlink swap between check
//! and read cannot substitute another file.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use crate::btf::KernelNames;
use crate::error::{Location, PolicyError};
use crate::parse::{NameResolver, SystemResolver};
use crate::Policy;

/// A policy larger than this is refused before it is read.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// Load the policy at `path`: it and its directories must be owned by
/// root and not writable by group or others. Names are validated against
/// `names` (see [`crate::btf::KernelNames::running_or_builtin`]).
pub fn load(path: &Path, names: &KernelNames) -> Result<Policy, PolicyError> {
    load_with(path, 0, &SystemResolver, names)
}

/// [`load`] with the required owner and the name resolver given
/// (tests run the file checks with their own uid).
pub fn load_with(
    path: &Path,
    owner: u32,
    resolver: &dyn NameResolver,
    names: &KernelNames,
) -> Result<Policy, PolicyError> {
    let text = read_checked(path, owner)?;
    Policy::parse_with(&text, path, resolver, names)
}

fn unsafe_err(path: &Path, reason: impl Into<String>) -> PolicyError {
    PolicyError::Unsafe { path: path.to_owned(), reason: reason.into() }
}

/// `what` names the checked object (`subject`) inside the message about
/// the policy at `policy`.
fn check_owner_and_mode(
    policy: &Path,
    what: &str,
    subject: &Path,
    stat: &rustix::fs::Stat,
    owner: u32,
) -> Result<(), PolicyError> {
    if stat.st_uid != owner {
        return Err(unsafe_err(
            policy,
            format!("{what} is owned by uid {}, not uid {owner} (chown root {})", stat.st_uid, subject.display()),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_err(
            policy,
            format!("{what} is writable by group or others (mode {mode:04o}; chmod go-w {})", subject.display()),
        ));
    }
    Ok(())
}

/// Open `dir` one component at a time from `/`, refusing symlinks, and
/// check every ancestor on the way: owned by root (or `owner`), and not
/// writable by group or others unless sticky (like /tmp, where nobody can
/// rename another user's entry). Whoever could change an ancestor could
/// swap the policy for another file.
fn open_dir_checked(policy: &Path, dir: &Path, owner: u32) -> Result<rustix::fd::OwnedFd, PolicyError> {
    use std::path::Component;
    let dir = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir().map_err(|source| PolicyError::Open { path: policy.to_owned(), source })?.join(dir)
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut fd = rustix::fs::open("/", flags, Mode::empty())
        .map_err(|e| PolicyError::Open { path: policy.to_owned(), source: e.into() })?;
    let mut walked = PathBuf::from("/");
    for component in dir.components() {
        let name = match component {
            Component::RootDir => continue,
            Component::Normal(name) => name,
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(unsafe_err(policy, "its path contains \".\" or \"..\"; give a plain absolute path"))
            }
        };
        let stat =
            rustix::fs::fstat(&fd).map_err(|e| PolicyError::Open { path: policy.to_owned(), source: e.into() })?;
        check_ancestor(policy, &walked, &stat, owner)?;
        walked.push(name);
        fd = rustix::fs::openat(&fd, name, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => unsafe_err(
                policy,
                format!("{} is a symbolic link or not a directory; give the real path", walked.display()),
            ),
            e => PolicyError::Open { path: policy.to_owned(), source: e.into() },
        })?;
    }
    Ok(fd)
}

fn check_ancestor(policy: &Path, dir: &Path, stat: &rustix::fs::Stat, owner: u32) -> Result<(), PolicyError> {
    if stat.st_uid != 0 && stat.st_uid != owner {
        return Err(unsafe_err(
            policy,
            format!("directory {} on its path is owned by uid {}, not root", dir.display(), stat.st_uid),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_err(
            policy,
            format!("directory {} on its path is writable by group or others (mode {mode:04o})", dir.display()),
        ));
    }
    Ok(())
}

fn read_checked(path: &Path, owner: u32) -> Result<String, PolicyError> {
    let open_err = |e: rustix::io::Errno| PolicyError::Open { path: path.to_owned(), source: e.into() };
    let name = path.file_name().ok_or_else(|| unsafe_err(path, "the path does not name a file"))?;
    let dir_path: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = open_dir_checked(path, &dir_path, owner)?;
    let dir_stat = rustix::fs::fstat(&dir).map_err(open_err)?;
    check_owner_and_mode(path, "its directory", &dir_path, &dir_stat, owner)?;

    // O_NONBLOCK: a FIFO planted at the path must not hang the daemon.
    let fd =
        rustix::fs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP {
                unsafe_err(path, "it is a symbolic link")
            } else {
                open_err(e)
            }
        })?;
    let stat = rustix::fs::fstat(&fd).map_err(open_err)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(unsafe_err(path, "it is not a regular file"));
    }
    check_owner_and_mode(path, "the file", path, &stat, owner)?;
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { path: path.to_owned(), size, max: MAX_POLICY_BYTES });
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge { path: path.to_owned(), size: bytes.len() as u64, max: MAX_POLICY_BYTES });
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
        PolicyError::Invalid {
            location: Location::at(path.to_owned(), &text, offset),
            message: "the policy is not valid UTF-8".to_owned(),
        }
    })
}
