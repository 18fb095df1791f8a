//! The cgroup v2 directory a caller is in, as the kernel names it: the
//! id (inode number of the directory on the cgroup2 mount) and level
//! (depth below the root) that `bpf_get_current_ancestor_cgroup_id` gives
//! a BPF program. Used to bind a lease to the subtree a caller minted
//! from (policy `bind = ["cgroup"]`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::enforcer::CgroupId;

/// Why a caller's cgroup cannot be named to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the caller's cgroup v2 path is unknown")]
    Unknown,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
    #[error("no cgroup2 file system is mounted (see /proc/self/mountinfo)")]
    NoMount,
    #[error("cgroup {path} is not below the cgroup2 mount's root {root}")]
    OutsideMount { path: String, root: String },
    #[error("cannot stat cgroup {path} at {dir}: {source}")]
    Stat { path: String, dir: PathBuf, source: std::io::Error },
}

/// Mount point and root of the first cgroup2 mount in `mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        Some((unescape(fields.get(3)?), unescape(fields.get(4)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup2 mount (root, mount point), read from mountinfo once found:
/// every cgroup-bound mint needs it, and it does not move while we run.
fn cgroup2() -> Result<(String, String), CgroupError> {
    static FOUND: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found.clone());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    let found = cgroup2_mount(&mountinfo).ok_or(CgroupError::NoMount)?;
    Ok(FOUND.get_or_init(|| found).clone())
}

/// The id and level of the cgroup v2 directory `path` (as in
/// `/proc/PID/cgroup`'s `0::` line, e.g. `/user.slice/x.scope`).
pub fn id_of(path: Option<&str>) -> Result<CgroupId, CgroupError> {
    let path = path.ok_or(CgroupError::Unknown)?;
    let (root, mount) = cgroup2()?;
    let below =
        relative(path, &root).ok_or_else(|| CgroupError::OutsideMount { path: path.to_owned(), root: root.clone() })?;
    let dir = PathBuf::from(&mount).join(below.trim_start_matches('/'));
    let meta = std::fs::metadata(&dir).map_err(|source| CgroupError::Stat { path: path.to_owned(), dir, source })?;
    // The kernel's cgroup level: the root is 0, each component one more.
    let level = path.split('/').filter(|c| !c.is_empty()).count();
    Ok(CgroupId { id: meta.ino(), level: u32::try_from(level).unwrap_or(u32::MAX) })
}

/// The path (as [`id_of`] takes it) of the cgroup v2 directory with this
/// id and level, found by walking the cgroup2 mount down to that level;
/// `None` if it is gone or cannot be found. For listing leases a restarted
/// daemon adopted.
pub fn path_of(cg: CgroupId) -> Option<String> {
    let (root, mount) = cgroup2().ok()?;
    let root_level = root.split('/').filter(|c| !c.is_empty()).count();
    let depth = usize::try_from(cg.level).ok()?.checked_sub(root_level)?;
    let mount = PathBuf::from(mount);
    let mut level = vec![mount.clone()];
    for _ in 0..depth {
        level = level
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
    }
    let found = level.into_iter().find(|d| std::fs::metadata(d).is_ok_and(|m| m.ino() == cg.id))?;
    let below = found.strip_prefix(&mount).ok()?.to_str()?.to_owned();
    Some(format!("{}/{below}", root.trim_end_matches('/')))
}

/// `path` below the mount's `root` (both absolute), whole components only.
fn relative<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_host() {
        let text = "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n\
                    31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                    32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                    33 31 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount(text), Some(("/".to_owned(), "/sys/fs/cgroup/unified".to_owned())));
        assert_eq!(cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(relative("/a/b", "/"), Some("/a/b"));
        assert_eq!(relative("/a/b", "/a"), Some("/b"));
        assert_eq!(relative("/ab", "/a"), None);
    }

    #[test]
    fn the_id_of_this_process_cgroup_is_its_directory_inode() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
        let id = id_of(Some(&path)).unwrap();
        assert_eq!(id.level as usize, path.split('/').filter(|c| !c.is_empty()).count());
        assert!(id.id > 0);
        assert!(matches!(id_of(None), Err(CgroupError::Unknown)));
        assert_eq!(path_of(id).as_deref(), Some(if path == "/" { "/" } else { path.as_str() }));
    }
}
