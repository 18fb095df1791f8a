//! The one place where bpftokend messages become bytes and back.
//!
//! postcard, not bincode: bincode 3 is a `compile_error!` tombstone and
//! unmaintained, and a root daemon must not parse untrusted input with an
//! unmaintained decoder (docs/design.md, "Why postcard"; the wire format is
//! in docs/protocol.md).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::{Request, RequestBody, Response, PROTOCOL_VERSION};

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest payload either side accepts. A mint request is a few dozen
/// bytes; 64 KiB leaves room for growth and bounds what a peer can make
/// us buffer.
pub const MAX_FRAME: usize = 64 * 1024;

const VERSION_LEN: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("frame too short: {len} bytes, a payload needs at least {min}")]
    TooShort { len: usize, min: usize },
    #[error("protocol version {got} is not supported (this side speaks {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },
    #[error("undecodable message: {0}")]
    Malformed(String),
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Payload length announced by a frame header, checked against
/// [`MAX_FRAME`] before the caller allocates anything.
pub fn payload_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header);
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > MAX_FRAME {
        return Err(CodecError::TooLarge { len: u64::from(len), max: MAX_FRAME });
    }
    if len_usize < VERSION_LEN {
        return Err(CodecError::TooShort { len: len_usize, min: VERSION_LEN });
    }
    Ok(len_usize)
}

fn frame(version: u16, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = VERSION_LEN + body.len();
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge { len: len as u64, max: MAX_FRAME });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    // `len <= MAX_FRAME` was checked above, so it fits in a u32.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn unframe<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let Some((version, body)) = payload.split_first_chunk::<VERSION_LEN>() else {
        return Err(CodecError::TooShort { len: payload.len(), min: VERSION_LEN });
    };
    let version = u16::from_le_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { got: version, supported: PROTOCOL_VERSION });
    }
    decode_message(body)
}

/// A whole request frame, length prefix included.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, CodecError> {
    frame(req.version, &encode_message(&req.body)?)
}

/// A request from a payload (the bytes after the length prefix).
pub fn decode_request(payload: &[u8]) -> Result<Request, CodecError> {
    let body: RequestBody = unframe(payload)?;
    Ok(Request { version: PROTOCOL_VERSION, body })
}

/// A whole response frame, length prefix included.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, CodecError> {
    frame(PROTOCOL_VERSION, &encode_message(resp)?)
}

/// A response from a payload (the bytes after the length prefix).
pub fn decode_response(payload: &[u8]) -> Result<Response, CodecError> {
    unframe(payload)
}

/// Bare postcard encoding, for messages whose transport already delimits
/// them (the daemon's internal minter channel is SOCK_SEQPACKET).
pub fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(msg).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Bare postcard decoding; the whole input must be one message.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delegation::Delegation;
    use crate::message::*;
    use proptest::prelude::*;

    fn split(frame: &[u8]) -> ([u8; 4], &[u8]) {
        let (h, p) = frame.split_first_chunk::<4>().unwrap();
        (*h, p)
    }

    #[test]
    fn request_round_trip() {
        let req = Request::new(RequestBody::Mint(MintRequest {
            cmds: Some(1),
            maps: None,
            progs: Some(2),
            attachs: Some(u64::MAX),
        }));
        let bytes = encode_request(&req).unwrap();
        let (h, p) = split(&bytes);
        assert_eq!(payload_len(h).unwrap(), p.len());
        assert_eq!(decode_request(p).unwrap(), req);
    }

    /// The lease requests are appended variants: the older requests keep
    /// their first byte (postcard's variant index), so either side of an
    /// upgrade still understands the other's old requests.
    #[test]
    fn lease_requests_round_trip_and_old_variants_keep_their_numbers() {
        use crate::message::{LeaseRequest, MintMode, RevokeTarget};
        let first = |body: RequestBody| encode_message(&body).unwrap()[0];
        assert_eq!(first(RequestBody::Mint(MintRequest::default())), 0);
        assert_eq!(first(RequestBody::DelegateMount(MintRequest::default())), 3);
        assert_eq!(first(RequestBody::QueryEnforcement), 4);
        for body in [
            RequestBody::MintLease(LeaseRequest {
                mode: MintMode::Scope,
                request: MintRequest::default(),
                ttl: Some(60),
            }),
            RequestBody::Leases,
            RequestBody::Revoke(RevokeTarget::Lease(7)),
            RequestBody::Revoke(RevokeTarget::Uid(1000)),
            RequestBody::Revoke(RevokeTarget::All),
            RequestBody::Learn(MintRequest::default()),
            RequestBody::Learned(3),
        ] {
            let req = Request::new(body);
            let bytes = encode_request(&req).unwrap();
            assert_eq!(decode_request(&bytes[4..]).unwrap(), req);
        }
        let delegate = RequestBody::MintLease(LeaseRequest {
            mode: MintMode::DelegateMount,
            request: MintRequest::default(),
            ttl: None,
        });
        assert_eq!(delegate.fds_expected(), 1);
        assert_eq!(RefusalCode::from(15), RefusalCode::UnknownLease);
        assert_eq!(RefusalCode::from(17).as_str(), "revocation_unavailable");
        assert_eq!(RefusalCode::from(18).as_str(), "learning_not_allowed");
        assert_eq!(RefusalCode::from(19).as_str(), "learning_unavailable");
        // Appended after Revoke (index 7), so every older variant keeps its number.
        assert_eq!(first(RequestBody::Revoke(RevokeTarget::All)), 7);
        assert_eq!(first(RequestBody::Learn(MintRequest::default())), 8);
        assert_eq!(first(RequestBody::Learned(3)), 9);
        let for_program = RequestBody::MintForProgram(crate::message::ProgramRequest {
            lease: LeaseRequest { mode: MintMode::Scope, request: MintRequest::default(), ttl: None },
            program: "/usr/sbin/bpftool".into(),
        });
        assert_eq!(first(for_program.clone()), 10);
        let req = Request::new(for_program);
        assert_eq!(decode_request(&encode_request(&req).unwrap()[4..]).unwrap(), req);
    }

    #[test]
    fn response_round_trip() {
        for resp in [
            Response::Minted(Minted {
                granted: Delegation { cmds: 33, maps: 6, progs: 2, attachs: 1 },
                rules: vec!["allow[0]".into()],
                fds: vec![FdRole::Token],
            }),
            Response::Refused(Refusal::new(RefusalCode::NotInPolicy, "no rule")),
            Response::RevokedWithOtherBuilds {
                revoked: vec![],
                other_builds: vec![
                    OtherBuild { dir: "/sys/fs/bpf/bpftokend/enforcer-1".into(), leases: None },
                    OtherBuild {
                        dir: "/sys/fs/bpf/bpftokend/enforcer-2".into(),
                        leases: Some(OtherLeases { total: 3, revoked: 2 }),
                    },
                ],
            },
        ] {
            let bytes = encode_response(&resp).unwrap();
            let (h, p) = split(&bytes);
            assert_eq!(payload_len(h).unwrap(), p.len());
            assert_eq!(decode_response(p).unwrap(), resp);
        }
    }

    #[test]
    fn huge_prefix_is_refused_before_allocation() {
        assert_eq!(
            payload_len(u32::MAX.to_le_bytes()),
            Err(CodecError::TooLarge { len: u64::from(u32::MAX), max: MAX_FRAME })
        );
        let max = u32::try_from(MAX_FRAME).unwrap();
        assert!(payload_len((max + 1).to_le_bytes()).is_err());
        assert_eq!(payload_len(max.to_le_bytes()), Ok(MAX_FRAME));
    }

    #[test]
    fn empty_and_short_frames_are_refused() {
        assert_eq!(payload_len(0u32.to_le_bytes()), Err(CodecError::TooShort { len: 0, min: 2 }));
        assert_eq!(decode_request(&[1]), Err(CodecError::TooShort { len: 1, min: 2 }));
    }

    #[test]
    fn unknown_version_is_typed() {
        let mut bytes = encode_request(&Request::new(RequestBody::Mint(MintRequest::default()))).unwrap();
        bytes[4] = 7;
        bytes[5] = 0;
        assert_eq!(
            decode_request(&bytes[4..]),
            Err(CodecError::UnsupportedVersion { got: 7, supported: PROTOCOL_VERSION })
        );
    }

    #[test]
    fn truncated_payload_is_malformed() {
        let bytes = encode_request(&Request::new(RequestBody::Mint(MintRequest {
            cmds: Some(u64::MAX),
            ..Default::default()
        })))
        .unwrap();
        let payload = &bytes[4..];
        for cut in 2..payload.len() {
            let err = decode_request(&payload[..cut]).unwrap_err();
            assert!(matches!(err, CodecError::Malformed(_)), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        assert!(matches!(decode_request(&[1, 0, 0xff, 0xff]), Err(CodecError::Malformed(_))));
        let mut bytes = encode_request(&Request::new(RequestBody::Mint(MintRequest::default()))).unwrap();
        bytes.push(0);
        assert_eq!(decode_request(&bytes[4..]), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn unknown_refusal_codes_survive() {
        let resp = Response::Refused(Refusal::new(RefusalCode::Unknown(999), "future"));
        let bytes = encode_response(&resp).unwrap();
        assert_eq!(decode_response(&bytes[4..]).unwrap(), resp);
        assert_eq!(RefusalCode::from(2), RefusalCode::NotGranted);
        assert_eq!(RefusalCode::NotGranted.as_str(), "not_granted");
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let resp = Response::Refused(Refusal::new(RefusalCode::MintFailed, "x".repeat(MAX_FRAME)));
        assert!(matches!(encode_response(&resp), Err(CodecError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn any_mint_request_round_trips(c in any::<Option<u64>>(), m in any::<Option<u64>>(),
                                        p in any::<Option<u64>>(), a in any::<Option<u64>>()) {
            let req = Request::new(RequestBody::Mint(MintRequest { cmds: c, maps: m, progs: p, attachs: a }));
            let bytes = encode_request(&req).unwrap();
            prop_assert_eq!(decode_request(&bytes[4..]).unwrap(), req);
        }
    }
}
