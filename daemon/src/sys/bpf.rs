//! The enforcer's BPF object (libbpf), loaded and attached: what stays of
//! it is fds only (links and maps), so nothing here outlives a raw
//! pointer. Also pinning (`BPF_OBJ_PIN`/`BPF_OBJ_GET`) and the map
//! operations the enforcer uses, each checked against the map's key and
//! value sizes before the kernel reads or writes them.

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Why an object did not load or attach: the libbpf step and the errno.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("libbpf cannot open the object: {0}")]
    Open(io::Error),
    #[error("BPF_PROG_LOAD/BPF_MAP_CREATE: {0}")]
    Load(io::Error),
    #[error("cannot attach program {program}: {source}")]
    Attach { program: String, source: io::Error },
    #[error("the object has no map {0}")]
    NoMap(&'static str),
    #[error("cannot duplicate a BPF fd: {0}")]
    Dup(io::Error),
}

impl LoadError {
    /// The errno behind the failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LoadError::Open(e) | LoadError::Load(e) | LoadError::Dup(e) => e.raw_os_error(),
            LoadError::Attach { source, .. } => source.raw_os_error(),
            LoadError::NoMap(_) => None,
        }
    }
}

/// A map fd with the key and value sizes the kernel checks against.
#[derive(Debug)]
pub struct MapFd {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

/// What a loaded, attached object leaves: its links (the programs stay
/// attached while these fds are open, or while they are pinned) and
/// every map of the object, by name.
#[derive(Debug)]
pub struct Attached {
    pub links: Vec<(String, OwnedFd)>,
    pub maps: Vec<(String, MapFd)>,
}

/// What an object holds, read from its ELF without loading anything:
/// its program names and its maps with their key and value sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub programs: Vec<String>,
    /// (name, key size, value size)
    pub maps: Vec<(String, usize, usize)>,
}

/// Closes the object on every path.
struct Object(*mut libbpf_sys::bpf_object);

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: the pointer came from bpf_object__open_mem, is not
        // null, and is closed exactly once, here.
        unsafe { libbpf_sys::bpf_object__close(self.0) }
    }
}

fn dup(fd: libc::c_int) -> Result<OwnedFd, LoadError> {
    // SAFETY: libbpf owns `fd` and keeps it open for the duration of
    // this borrow (the object or link it belongs to is alive).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(LoadError::Dup)
}

/// libbpf writes its warnings and the verifier log to stderr unless
/// told otherwise; the daemon reports failures itself, in one line.
fn quiet_libbpf() {
    // SAFETY: passing None (no callback) is allowed and affects only
    // libbpf's logging.
    unsafe {
        libbpf_sys::libbpf_set_print(None);
    }
}

/// Open `elf` (named `name` in libbpf's messages) without loading it.
fn open(elf: &[u8], name: &str) -> Result<Object, LoadError> {
    quiet_libbpf();
    let cname = CString::new(name).map_err(|_| LoadError::Open(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let opts = libbpf_sys::bpf_object_open_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_object_open_opts>() as libbpf_sys::size_t,
        object_name: cname.as_ptr(),
        ..Default::default()
    };
    // SAFETY: `elf` and `opts` (and the name it points to) are valid
    // for the call; libbpf copies what it keeps.
    let raw = unsafe {
        libbpf_sys::bpf_object__open_mem(elf.as_ptr().cast::<c_void>(), elf.len() as libbpf_sys::size_t, &opts)
    };
    if raw.is_null() {
        return Err(LoadError::Open(io::Error::last_os_error()));
    }
    Ok(Object(raw))
}

/// The programs of an open object, with their names.
fn programs(obj: &Object) -> Vec<(*mut libbpf_sys::bpf_program, String)> {
    let mut out = Vec::new();
    let mut prog: *mut libbpf_sys::bpf_program = std::ptr::null_mut();
    loop {
        // SAFETY: `obj.0` is live; `prog` is null or a program of it.
        prog = unsafe { libbpf_sys::bpf_object__next_program(obj.0, prog) };
        if prog.is_null() {
            return out;
        }
        // SAFETY: `prog` is a program of the live object.
        let name_ptr = unsafe { libbpf_sys::bpf_program__name(prog) };
        // SAFETY: libbpf returns a NUL-terminated name it owns, alive
        // as long as the object.
        out.push((prog, unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned()));
    }
}

/// The maps of an open object: pointer, name, key and value size.
fn maps(obj: &Object) -> Vec<(*mut libbpf_sys::bpf_map, String, usize, usize)> {
    let mut out = Vec::new();
    let mut map: *mut libbpf_sys::bpf_map = std::ptr::null_mut();
    loop {
        // SAFETY: `obj.0` is live; `map` is null or a map of it.
        map = unsafe { libbpf_sys::bpf_object__next_map(obj.0, map) };
        if map.is_null() {
            return out;
        }
        // SAFETY: `map` is a map of the live object.
        let name_ptr = unsafe { libbpf_sys::bpf_map__name(map) };
        // SAFETY: libbpf returns a NUL-terminated name it owns, alive
        // as long as the object.
        let name = unsafe { CStr::from_ptr(name_ptr) }.to_string_lossy().into_owned();
        // SAFETY: as above.
        let key_size = unsafe { libbpf_sys::bpf_map__key_size(map) };
        // SAFETY: as above.
        let value_size = unsafe { libbpf_sys::bpf_map__value_size(map) };
        out.push((map, name, key_size as usize, value_size as usize));
    }
}

/// The programs and maps `elf` declares (nothing is loaded).
pub fn layout(elf: &[u8], name: &str) -> Result<Layout, LoadError> {
    let obj = open(elf, name)?;
    Ok(Layout {
        programs: programs(&obj).into_iter().map(|(_, n)| n).collect(),
        maps: maps(&obj).into_iter().map(|(_, n, k, v)| (n, k, v)).collect(),
    })
}

/// Open `elf` (named `name` in libbpf's messages), load every program
/// and map into the kernel, attach every program (its section says
/// where), and keep the links and the maps.
pub fn load_and_attach(elf: &[u8], name: &str) -> Result<Attached, LoadError> {
    let obj = open(elf, name)?;
    // SAFETY: `obj.0` is a live object.
    let ret = unsafe { libbpf_sys::bpf_object__load(obj.0) };
    if ret < 0 {
        return Err(LoadError::Load(io::Error::from_raw_os_error(-ret)));
    }
    let mut links = Vec::new();
    for (prog, pname) in programs(&obj) {
        // SAFETY: `prog` is a loaded program of the live object.
        let link = unsafe { libbpf_sys::bpf_program__attach(prog) };
        if link.is_null() {
            return Err(LoadError::Attach { program: pname, source: io::Error::last_os_error() });
        }
        // SAFETY: `link` is a live link; its fd is open until destroyed.
        let fd = dup(unsafe { libbpf_sys::bpf_link__fd(link) });
        // Our duplicate keeps the link (and the attachment) alive; if
        // the dup failed, destroying it detaches the program again.
        // SAFETY: `link` came from bpf_program__attach and is destroyed
        // exactly once.
        unsafe { libbpf_sys::bpf_link__destroy(link) };
        links.push((pname, fd?));
    }
    let mut out = Vec::new();
    for (map, name, key_size, value_size) in maps(&obj) {
        // SAFETY: `map` is a map of the live, loaded object.
        let fd = unsafe { libbpf_sys::bpf_map__fd(map) };
        out.push((name, MapFd { fd: dup(fd)?, key_size, value_size }));
    }
    Ok(Attached { links, maps: out })
}

fn path_cstr(path: &std::path::Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Pin a BPF object (map, program or link) at `path` in a bpffs
/// (`BPF_OBJ_PIN`): it then lives until the pin is removed.
pub fn pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let cpath = path_cstr(path)?;
    // SAFETY: `fd` is open and `cpath` NUL-terminated for the call.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), cpath.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    Ok(())
}

/// Open the BPF object pinned at `path` (`BPF_OBJ_GET`), checking that
/// it is one of `kinds` (as `/proc/self/fd` names it: `bpf-map`; a link
/// is `bpf_link` when created but `bpf-link` when opened from a pin).
pub fn open_pinned(path: &std::path::Path, kinds: &[&str]) -> io::Result<OwnedFd> {
    let cpath = path_cstr(path)?;
    // SAFETY: `cpath` is NUL-terminated for the call.
    let ret = unsafe { libbpf_sys::bpf_obj_get(cpath.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    // SAFETY: the kernel installed a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(ret) };
    let kind = super::fd_kind(fd.as_fd())?;
    if !kinds.iter().any(|k| kind.strip_prefix("anon_inode:") == Some(k)) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(fd)
}

impl MapFd {
    /// The map pinned at `path`, with the sizes the kernel reports.
    pub fn open_pinned(path: &std::path::Path) -> io::Result<MapFd> {
        let fd = open_pinned(path, &["bpf-map"])?;
        let mut info = libbpf_sys::bpf_map_info::default();
        let mut len = u32::try_from(std::mem::size_of::<libbpf_sys::bpf_map_info>()).unwrap_or(0);
        // SAFETY: `info` is valid for writes of `len` bytes, which the
        // kernel does not exceed (it updates `len`).
        let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(MapFd { fd, key_size: info.key_size as usize, value_size: info.value_size as usize })
    }

    /// The key and value sizes.
    pub fn sizes(&self) -> (usize, usize) {
        (self.key_size, self.value_size)
    }

    fn check(&self, key: &[u8], value: usize) -> io::Result<()> {
        if key.len() != self.key_size || value != self.value_size {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    /// The value under `key`, or `None` if there is none.
    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; self.value_size];
        self.check(key, value.len())?;
        // SAFETY: the kernel reads key_size bytes from `key` and writes
        // value_size bytes to `value`; both lengths were checked.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_elem(
                self.fd.as_raw_fd(),
                key.as_ptr().cast::<c_void>(),
                value.as_mut_ptr().cast::<c_void>(),
            )
        };
        match ret {
            0 => Ok(Some(value)),
            e if -e == libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    }

    /// Set `key` to `value`; `flags` is BPF_ANY, BPF_NOEXIST or
    /// BPF_EXIST (ENOENT when BPF_EXIST finds no entry).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        self.check(key, value.len())?;
        // SAFETY: the kernel reads key_size and value_size bytes, the
        // lengths checked above.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(
                self.fd.as_raw_fd(),
                key.as_ptr().cast::<c_void>(),
                value.as_ptr().cast::<c_void>(),
                flags,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(-ret))
        }
    }

    /// Remove `key`; false if there was no such entry.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        self.check(key, self.value_size)?;
        // SAFETY: the kernel reads key_size bytes from `key` (checked).
        let ret = unsafe { libbpf_sys::bpf_map_delete_elem(self.fd.as_raw_fd(), key.as_ptr().cast::<c_void>()) };
        match ret {
            0 => Ok(true),
            e if -e == libc::ENOENT => Ok(false),
            e => Err(io::Error::from_raw_os_error(-e)),
        }
    }

    /// Every key in the map, once each (a snapshot while it may
    /// change: when the key a walk stands on is deleted, the kernel
    /// starts the walk again from the first key).
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            let prev_ptr = prev.as_ref().map_or(std::ptr::null(), |k| k.as_ptr().cast::<c_void>());
            // SAFETY: `prev_ptr` is null (first key) or key_size bytes;
            // `next` has room for key_size bytes.
            let ret = unsafe {
                libbpf_sys::bpf_map_get_next_key(self.fd.as_raw_fd(), prev_ptr, next.as_mut_ptr().cast::<c_void>())
            };
            match ret {
                0 => {
                    if seen.insert(next.clone()) {
                        keys.push(next.clone());
                    }
                    prev = Some(next);
                }
                e if -e == libc::ENOENT => return Ok(keys),
                e => return Err(io::Error::from_raw_os_error(-e)),
            }
        }
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
