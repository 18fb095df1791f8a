//! What `bpftoken_mint()` does, in safe Rust: validate the request, ask the
//! daemon, map the outcome to an fd or a negative errno, and remember why
//! it failed for `bpftoken_last_error()`.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;

use bpftoken_client::{Client, Delegation, MintRequest, RefusalCode};

/// `BPFTOKEN_NARROW_*` of the header.
pub const NARROW_CMDS: u32 = 1 << 0;
pub const NARROW_MAPS: u32 = 1 << 1;
pub const NARROW_PROGS: u32 = 1 << 2;
pub const NARROW_ATTACHS: u32 = 1 << 3;
const KNOWN_FLAGS: u32 = NARROW_CMDS | NARROW_MAPS | NARROW_PROGS | NARROW_ATTACHS;

/// `struct bpftoken_request` as this library knows it, fields beyond the
/// caller's `sz` zeroed, the socket path already read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub cmds: u64,
    pub maps: u64,
    pub progs: u64,
    pub attachs: u64,
    pub flags: u32,
    pub reserved: u32,
    pub socket: Option<PathBuf>,
}

/// Arguments `bpftoken_mint()` refuses before talking to the daemon.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("{what}->sz is {sz}, smaller than the sz field itself")]
    SizeTooSmall { what: &'static str, sz: usize },
    #[error("req->sz is {sz}, larger than this library's {known}, and the bytes beyond are not zero")]
    UnknownFields { sz: usize, known: usize },
    #[error("req->flags has unknown bits {0:#x}")]
    UnknownFlags(u32),
    #[error("req->reserved must be zero")]
    Reserved,
}

impl ArgError {
    pub fn errno(&self) -> i32 {
        match self {
            ArgError::UnknownFields { .. } => libc::E2BIG,
            _ => libc::EINVAL,
        }
    }
}

impl Request {
    fn to_mint_request(&self) -> Result<MintRequest, ArgError> {
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(ArgError::UnknownFlags(self.flags & !KNOWN_FLAGS));
        }
        if self.reserved != 0 {
            return Err(ArgError::Reserved);
        }
        let pick = |flag: u32, mask: u64| (self.flags & flag != 0).then_some(mask);
        Ok(MintRequest {
            cmds: pick(NARROW_CMDS, self.cmds),
            maps: pick(NARROW_MAPS, self.maps),
            progs: pick(NARROW_PROGS, self.progs),
            attachs: pick(NARROW_ATTACHS, self.attachs),
        })
    }
}

/// The negative errno `bpftoken_mint()` returns for a client error.
pub fn errno_of(e: &bpftoken_client::Error) -> i32 {
    use bpftoken_client::Error;
    match e {
        Error::Unreachable { source, .. } => source.raw_os_error().unwrap_or(libc::ECONNREFUSED),
        Error::Io(source) => source.raw_os_error().unwrap_or(libc::EIO),
        Error::Protocol(_) => libc::EPROTO,
        // Not reached: this library builds requests from masks, not names.
        Error::Request(_) => libc::EINVAL,
        Error::Refused(r) => match r.code {
            RefusalCode::NotInPolicy
            | RefusalCode::NotGranted
            | RefusalCode::UnmappedPeer
            | RefusalCode::UnsupportedPeer
            | RefusalCode::BadNamespace
            | RefusalCode::NotEnforceable
            | RefusalCode::NotYourLease
            | RefusalCode::RevocationUnavailable
            | RefusalCode::LearningNotAllowed
            | RefusalCode::LearningUnavailable
            | RefusalCode::TargetNotAllowed
            | RefusalCode::Unknown(_) => libc::EPERM,
            RefusalCode::TraceUnavailable => libc::EOPNOTSUPP,
            RefusalCode::UnknownLease => libc::ENOENT,
            RefusalCode::EmptyGrant | RefusalCode::BadProgram => libc::EINVAL,
            RefusalCode::RateLimited | RefusalCode::TooManyTokens => libc::EAGAIN,
            RefusalCode::Busy => libc::EBUSY,
            RefusalCode::Timeout => libc::ETIMEDOUT,
            RefusalCode::UnsupportedVersion | RefusalCode::Malformed | RefusalCode::FrameTooLarge => libc::EPROTO,
            // Never an answer to a mint (a listing too long for one answer).
            RefusalCode::AnswerTooLarge => libc::EMSGSIZE,
            RefusalCode::MintFailed => libc::EIO,
        },
    }
}

/// Ask the daemon; on success the token fd (now the caller's) and its masks.
pub fn mint(req: Option<&Request>) -> Result<(RawFd, Delegation), i32> {
    let default = Request::default();
    let req = req.unwrap_or(&default);
    let request = req.to_mint_request().map_err(|e| fail_arg(&e))?;
    let socket = req.socket.clone().unwrap_or_else(bpftoken_client::socket_path);
    let result = Client::connect_to(&socket).and_then(|mut c| c.mint(&request));
    match result {
        Ok(token) => {
            let granted = *token.granted();
            set_last("", 0);
            Ok((token.into_owned_fd().into_raw_fd(), granted))
        }
        Err(e) => Err(fail_client(&e)),
    }
}

/// Remember why a call to the daemon failed; the negative errno to return.
pub fn fail_client(e: &bpftoken_client::Error) -> i32 {
    let code = match e {
        bpftoken_client::Error::Refused(r) => i32::from(u16::from(r.code)),
        _ => 0,
    };
    let msg = match e {
        bpftoken_client::Error::Refused(r) => r.to_string(),
        other => other.to_string(),
    };
    set_last(&msg, code);
    -errno_of(e)
}

/// Record an argument error; returns its negative errno.
pub fn fail_arg(e: &ArgError) -> i32 {
    set_last(&e.to_string(), 0);
    -e.errno()
}

struct LastError {
    message: CString,
    refusal: i32,
}

thread_local! {
    static LAST: RefCell<LastError> = RefCell::new(LastError { message: CString::default(), refusal: 0 });
}

/// Remember why the calling thread's last call failed ("" on success).
/// Never panics: used on the way out of a caught panic too.
pub fn set_last(message: &str, refusal: i32) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = LastError { message, refusal };
        }
    });
}

/// The message as a C string, valid until the thread's next `set_last`.
pub fn last_error() -> *const c_char {
    LAST.try_with(|l| l.try_borrow().map(|l| l.message.as_ptr()).unwrap_or(c"".as_ptr())).unwrap_or(c"".as_ptr())
}

pub fn last_refusal() -> i32 {
    LAST.try_with(|l| l.try_borrow().map(|l| l.refusal).unwrap_or(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal code has its `BPFTOKEN_REFUSED_*` in the header, with
    /// the same number and the stable name in capitals.
    #[test]
    fn header_names_every_refusal_code() {
        let header = include_str!("../include/bpftoken.h");
        let defined: Vec<(String, u16)> = header
            .lines()
            .filter_map(|l| l.strip_prefix("#define BPFTOKEN_REFUSED_"))
            .map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next().expect("name").to_lowercase();
                (name, it.next().expect("value").parse().expect("number"))
            })
            .collect();
        for (name, n) in &defined {
            assert_eq!(RefusalCode::from(*n).as_str(), name, "BPFTOKEN_REFUSED_{} {n}", name.to_uppercase());
        }
        for n in 0..=u16::MAX {
            let code = RefusalCode::from(n);
            if !matches!(code, RefusalCode::Unknown(_)) {
                assert!(defined.iter().any(|(_, d)| *d == n), "bpftoken.h lacks refusal code {n} ({code})");
            }
        }
    }

    #[test]
    fn flags_choose_which_masks_narrow() {
        let r = Request { cmds: 1, maps: 4, progs: 2, attachs: 1, flags: NARROW_MAPS, ..Request::default() };
        assert_eq!(r.to_mint_request(), Ok(MintRequest { maps: Some(4), ..MintRequest::default() }));
        let r = Request { flags: KNOWN_FLAGS, ..Request::default() };
        assert_eq!(
            r.to_mint_request(),
            Ok(MintRequest { cmds: Some(0), maps: Some(0), progs: Some(0), attachs: Some(0) })
        );
    }

    #[test]
    fn unknown_flags_and_reserved_bits_are_einval() {
        let r = Request { flags: 1 << 7, ..Request::default() };
        assert_eq!(r.to_mint_request(), Err(ArgError::UnknownFlags(0x80)));
        assert_eq!(ArgError::UnknownFlags(0x80).errno(), libc::EINVAL);
        let r = Request { reserved: 1, ..Request::default() };
        assert_eq!(r.to_mint_request(), Err(ArgError::Reserved));
    }

    #[test]
    fn an_unreachable_socket_is_its_connect_errno_and_said_in_words() {
        let req = Request { socket: Some("/nonexistent/bpftokend.sock".into()), ..Request::default() };
        assert_eq!(mint(Some(&req)), Err(-libc::ENOENT));
        let msg = LAST.with(|l| l.borrow().message.to_string_lossy().into_owned());
        assert!(
            msg.starts_with("cannot reach bpftokend at /nonexistent/bpftokend.sock: No such file or directory"),
            "{msg}"
        );
        assert_eq!(last_refusal(), 0);
        set_last("", 0);
        let msg = LAST.with(|l| l.borrow().message.to_string_lossy().into_owned());
        assert_eq!(msg, "");
    }
}
