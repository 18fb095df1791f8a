//! Reading the policy file and its drop-ins without trusting their paths.
//!
//! The parent directory is opened first and checked through its fd, then
//! the file is opened relative to that fd with O_NOFOLLOW and checked
//! through its own fd (fstat), so a rename or symlink swap between check
//! and read cannot substitute another file. The drop-in directory
//! (`policy.d` next to the file) is opened relative to the same checked
//! fd, checked the same way, and each drop-in relative to it.
//!
//! This is the only I/O of the crate: it reads, and the parser
//! ([`crate::Policy::parse_set`]) gets the text.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};

use crate::btf::KernelNames;
use crate::draft::Draft;
use crate::error::{Location, PolicyError, PolicyErrors};
use crate::parse::{parse_sources, NameResolver, Source, SystemResolver};
use crate::Policy;

/// A policy file larger than this is refused before it is read.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The drop-in directory's name, next to the main policy file.
pub const DROPIN_DIR: &str = "policy.d";

/// Where the drop-ins of the policy at `path` live: `policy.d` in its
/// directory.
pub fn dropin_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(DROPIN_DIR),
        _ => PathBuf::from(DROPIN_DIR),
    }
}

/// Load the policy at `path` and its drop-ins: every file and directory
/// must be owned by root and not writable by group or others. Names are
/// validated against `names` (see
/// [`crate::btf::KernelNames::running_or_builtin`]).
pub fn load(path: &Path, names: &KernelNames) -> Result<Policy, PolicyErrors> {
    load_with(path, 0, &SystemResolver, names)
}

/// [`load`] with the required owner and the name resolver given
/// (tests run the file checks with their own uid).
pub fn load_with(
    path: &Path,
    owner: u32,
    resolver: &dyn NameResolver,
    names: &KernelNames,
) -> Result<Policy, PolicyErrors> {
    read_with(path, owner, resolver, names).finish()
}

/// Read and parse the policy at `path` and its drop-ins, owned by root,
/// into a [`Draft`] holding every error of every file, for checks that
/// need the host to add theirs before [`Draft::finish`].
pub fn read(path: &Path, resolver: &dyn NameResolver, names: &KernelNames) -> Draft {
    read_with(path, 0, resolver, names)
}

/// [`read`] with the required owner given.
pub fn read_with(path: &Path, owner: u32, resolver: &dyn NameResolver, names: &KernelNames) -> Draft {
    let mut errors = Vec::new();
    let (main, dropins) = read_files(path, owner, &mut errors);
    parse_sources(path, main.as_deref(), &dropins, errors, resolver, names)
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

/// The main file's text and the drop-ins', every failure in `errors`.
/// A file that cannot be read safely is left out (its error says why);
/// nothing is read from a directory that fails its checks.
fn read_files(path: &Path, owner: u32, errors: &mut Vec<PolicyError>) -> (Option<String>, Vec<Source>) {
    let Some(name) = path.file_name() else {
        errors.push(unsafe_err(path, "the path does not name a file"));
        return (None, Vec::new());
    };
    let dir_path: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = match open_dir_checked(path, &dir_path, owner).and_then(|dir| {
        let stat =
            rustix::fs::fstat(&dir).map_err(|e| PolicyError::Open { path: path.to_owned(), source: e.into() })?;
        check_owner_and_mode(path, "its directory", &dir_path, &stat, owner)?;
        Ok(dir)
    }) {
        Ok(dir) => dir,
        Err(e) => {
            errors.push(e);
            return (None, Vec::new());
        }
    };
    let main = read_at(&dir, name, path, owner).map_err(|e| errors.push(e)).ok();
    let dropins = read_dropins(&dir, &dropin_dir(path), owner, errors);
    (main, dropins)
}

/// The drop-ins in `dir_path` (opened relative to the main file's checked
/// directory `parent`): every `*.toml` whose name does not start with a
/// dot, in lexical order. No directory: none.
fn read_dropins(parent: &OwnedFd, dir_path: &Path, owner: u32, errors: &mut Vec<PolicyError>) -> Vec<Source> {
    let open_err = |e: rustix::io::Errno| PolicyError::Open { path: dir_path.to_owned(), source: e.into() };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match rustix::fs::openat(parent, DROPIN_DIR, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Vec::new(),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            errors.push(unsafe_err(dir_path, "it is a symbolic link or not a directory"));
            return Vec::new();
        }
        Err(e) => {
            errors.push(open_err(e));
            return Vec::new();
        }
    };
    let checked = rustix::fs::fstat(&dir)
        .map_err(open_err)
        .and_then(|stat| check_owner_and_mode(dir_path, "the directory", dir_path, &stat, owner));
    if let Err(e) = checked {
        errors.push(e);
        return Vec::new();
    }
    let mut names = match list_dropins(&dir) {
        Ok(names) => names,
        Err(e) => {
            errors.push(PolicyError::Read { path: dir_path.to_owned(), source: e.into() });
            return Vec::new();
        }
    };
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let path = dir_path.join(OsStr::from_bytes(&name));
            match read_at(&dir, OsStr::from_bytes(&name), &path, owner) {
                Ok(text) => Some(Source { path, text }),
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        })
        .collect()
}

/// Names in `dir` that are drop-ins: ending in `.toml`, not hidden (editor
/// lock files such as `.#x.toml` are hidden), as bytes.
fn list_dropins(dir: &impl AsFd) -> Result<Vec<Vec<u8>>, rustix::io::Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if is_dropin_name(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `*.toml` and not hidden: what the docs promise is read, and nothing
/// else (`x.toml~`, `x.toml.dpkg-old`, `.x.toml.swp` are not).
pub(crate) fn is_dropin_name(name: &[u8]) -> bool {
    name.len() > ".toml".len() && name.ends_with(b".toml") && !name.starts_with(b".")
}

/// Read `name` in the checked directory `dir`; `path` names it in errors.
fn read_at(dir: &OwnedFd, name: &OsStr, path: &Path, owner: u32) -> Result<String, PolicyError> {
    let open_err = |e: rustix::io::Errno| PolicyError::Open { path: path.to_owned(), source: e.into() };
    // O_NONBLOCK: a FIFO planted at the path must not hang the daemon.
    let fd =
        rustix::fs::openat(
            dir,
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
