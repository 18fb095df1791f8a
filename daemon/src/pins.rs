//! Where the enforcer is pinned in the host bpffs, so that its programs
//! stay attached and its maps (lease deadlines, bindings, serials, counts)
//! stay in the kernel after the daemon stops or crashes.
//!
//! Layout, under the pin root (default [`DEFAULT_PIN_DIR`], root-only,
//! 0700): one directory per enforcer build, named by a hash of the object
//! bytes (`enforcer-<16 hex digits>`), holding `link-<program>` and
//! `map-<map>` pins (bpffs refuses names with a dot, so no `.tmp`). A
//! set is built in `tmp-<version>-<pid>` and renamed
//! into place, so a directory with the version's name is always complete;
//! a crash mid-pin leaves only a `tmp-*` directory, which carries no
//! lease (nothing is served before the rename) and is removed at the next
//! start. The daemon holds an exclusive `flock` on the root directory
//! while it runs: a second daemon on the same root does not pin (its
//! enforcer then runs unpinned, and says so). Only the maps the daemon
//! uses are pinned; the others live as long as the programs do.
//!
//! The BPF side (pin, open) is in [`crate::sys::bpf`]; this module only
//! handles directories.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The default pin root.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/bpftokend";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the enforcer is not pinned (it then runs for the daemon's lifetime
/// only). Each names the path and what failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot pin in {}: it is not on a BPF file system (is bpffs mounted at its parent?)", path.display())]
    NotBpffs { path: PathBuf },
    #[error("cannot pin in {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "cannot pin in {}: it must be a directory owned by root with mode 0700, and is owned by uid {uid} with \
         mode {mode:04o}",
        path.display()
    )]
    NotPrivate { path: PathBuf, uid: u32, mode: u32 },
    #[error("cannot pin in {}: another bpftokend holds it (flock on the directory)", path.display())]
    Busy { path: PathBuf },
    #[error("cannot pin {what} at {}: {source}", path.display())]
    Pin { what: String, path: PathBuf, source: io::Error },
    #[error("cannot publish the pinned set: rename {} to {}: {source}", from.display(), to.display())]
    Rename { from: PathBuf, to: PathBuf, source: io::Error },
    #[error(
        "cannot adopt the enforcer pinned in {}: {what}: {source} (left untouched; remove it with `rm -r {}` to \
         end what it enforces)",
        dir.display(),
        dir.display()
    )]
    Adopt { dir: PathBuf, what: String, source: io::Error },
}

/// The name of the directory of one enforcer build: a stable hash
/// (FNV-1a, 64 bits) of `parts` in order: the object bytes and the
/// daemon's encoding of what it writes into the maps. A build whose maps
/// or records could differ in layout never shares a directory with this one.
pub fn version_of(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("enforcer-{h:016x}")
}

/// The pin root, locked for this daemon while the value lives.
#[derive(Debug)]
pub struct PinRoot {
    path: PathBuf,
    /// The directory itself, open: holds the flock.
    _lock: OwnedFd,
}

impl PinRoot {
    /// Create (0700) or open the pin root, check that it is a root-only
    /// directory on a bpffs, and lock it.
    pub fn open(path: &Path) -> Result<PinRoot, PinError> {
        let dir_err = |source| PinError::Dir { path: path.to_owned(), source };
        // A bpffs at the parent, or we would create a directory elsewhere.
        let parent = path.parent().unwrap_or(Path::new("/"));
        match rustix::fs::statfs(parent) {
            Ok(st) if st.f_type == BPF_FS_MAGIC => {}
            Ok(_) => return Err(PinError::NotBpffs { path: path.to_owned() }),
            Err(e) => return Err(dir_err(e.into())),
        }
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(dir_err(e)),
        }
        let dir = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| dir_err(e.into()))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| dir_err(e.into()))?;
        let mode = st.st_mode & 0o7777;
        if st.st_uid != 0 || mode & 0o077 != 0 {
            return Err(PinError::NotPrivate { path: path.to_owned(), uid: st.st_uid, mode });
        }
        let fs = rustix::fs::fstatfs(&dir).map_err(|e| dir_err(e.into()))?;
        if fs.f_type != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs { path: path.to_owned() });
        }
        match rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(PinError::Busy { path: path.to_owned() }),
            Err(e) => return Err(dir_err(e.into())),
        }
        Ok(PinRoot { path: path.to_owned(), _lock: dir })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove what crashed pinnings left (`tmp-*`): never adopted, and
    /// holding no lease (leases are written only after the rename).
    pub fn remove_stale(&self) {
        for entry in self.entries() {
            if entry.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tmp-")) {
                match std::fs::remove_dir_all(&entry) {
                    Ok(()) => tracing::info!(path = %entry.display(), "removed an incomplete pin set a crash left"),
                    Err(e) => tracing::warn!(path = %entry.display(), "cannot remove an incomplete pin set: {e}"),
                }
            }
        }
    }

    /// Complete pin sets of other enforcer builds (never touched).
    pub fn others(&self, version: &str) -> Vec<PathBuf> {
        self.entries()
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("enforcer-") && n != version))
            .collect()
    }

    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.path).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }

    /// The directory of `version`'s pins.
    pub fn set_dir(&self, version: &str) -> PathBuf {
        self.path.join(version)
    }

    /// Pin `pins` (file name, what it is, the BPF object) into a new
    /// directory and rename it into place as `version`'s set.
    pub fn publish(&self, version: &str, pins: &[(String, String, BorrowedFd<'_>)]) -> Result<PathBuf, PinError> {
        let tmp = self.path.join(format!("tmp-{version}-{}", std::process::id()));
        let fin = self.set_dir(version);
        let built = (|| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(|source| PinError::Dir { path: tmp.clone(), source })?;
            for (file, what, fd) in pins {
                let path = tmp.join(file);
                crate::sys::bpf::pin(*fd, &path).map_err(|source| PinError::Pin {
                    what: what.clone(),
                    path,
                    source,
                })?;
            }
            std::fs::rename(&tmp, &fin).map_err(|source| PinError::Rename {
                from: tmp.clone(),
                to: fin.clone(),
                source,
            })
        })();
        if let Err(e) = built {
            // Pins only: removing them detaches nothing the daemon holds.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_a_stable_hash_of_the_object() {
        // FNV-1a 64 test vectors: "" and "a".
        assert_eq!(version_of(&[b""]), "enforcer-cbf29ce484222325");
        assert_eq!(version_of(&[b"a"]), "enforcer-af63dc4c8601ec8c");
        assert_eq!(version_of(&[b"", b"a"]), "enforcer-af63dc4c8601ec8c", "the parts in a row");
    }

    #[test]
    fn a_pin_root_outside_bpffs_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("bpftokend-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("pins");
        let err = PinRoot::open(&root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot pin in {}: it is not on a BPF file system (is bpffs mounted at its parent?)",
                root.display()
            )
        );
        assert!(!root.exists(), "nothing is created outside a bpffs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// As root, on a bpffs of its own mounted for the test.
    #[test]
    fn a_pin_root_is_created_private_locked_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let mnt = std::env::temp_dir().join(format!("bpftokend-pinfs-{}", std::process::id()));
        std::fs::create_dir_all(&mnt).unwrap();
        rustix::mount::mount("bpf", &mnt, "bpf", rustix::mount::MountFlags::empty(), None).unwrap();
        let root = mnt.join("pins");
        let first = PinRoot::open(&root).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o7777, 0o700);
        let busy = PinRoot::open(&root).unwrap_err();
        assert_eq!(
            busy.to_string(),
            format!("cannot pin in {}: another bpftokend holds it (flock on the directory)", root.display())
        );
        drop(first);
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = PinRoot::open(&root).unwrap_err();
        assert_eq!(
            open.to_string(),
            format!(
                "cannot pin in {}: it must be a directory owned by root with mode 0700, and is owned by uid 0 with \
                 mode 0755",
                root.display()
            )
        );
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let again = PinRoot::open(&root).unwrap();
        // Stale temporary sets go; complete sets of other builds stay.
        std::fs::create_dir(root.join("tmp-enforcer-0-1")).unwrap();
        std::fs::create_dir(root.join("enforcer-0000000000000001")).unwrap();
        again.remove_stale();
        assert!(!root.join("tmp-enforcer-0-1").exists());
        assert_eq!(again.others("enforcer-0000000000000002"), [root.join("enforcer-0000000000000001")]);
        assert!(again.others("enforcer-0000000000000001").is_empty());
        drop(again);
        rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).unwrap();
        std::fs::remove_dir(&mnt).unwrap();
    }
}
