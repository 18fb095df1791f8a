//! Arbitrary bytes against the wire codec (proto/src/codec.rs).
//!
//! The first 4 bytes are read as a frame header; the whole input and the
//! bytes after the header are each decoded as a request and as a response.
//! Any request that decodes must survive encode -> decode unchanged, and
//! the re-encoded frame's header must announce its payload length.
#![no_main]

use bpftoken_proto::codec::{decode_request, decode_response, encode_request, encode_response, payload_len};
use bpftoken_proto::FRAME_HEADER_LEN;
use libfuzzer_sys::fuzz_target;

fn check_request(payload: &[u8]) {
    let Ok(req) = decode_request(payload) else { return };
    let frame = encode_request(&req).expect("a decoded request must re-encode");
    let (header, body) = frame.split_first_chunk::<FRAME_HEADER_LEN>().expect("an encoded frame has a header");
    assert_eq!(payload_len(*header), Ok(body.len()), "header of re-encoded request");
    let again = decode_request(body).expect("a re-encoded request must decode");
    assert_eq!(again, req, "request round trip");
}

fn check_response(payload: &[u8]) {
    let Ok(resp) = decode_response(payload) else { return };
    // A decoded response may be up to MAX_FRAME - 2 bytes of postcard, which
    // always fits again; anything else is a codec bug.
    let frame = encode_response(&resp).expect("a decoded response must re-encode");
    let (header, body) = frame.split_first_chunk::<FRAME_HEADER_LEN>().expect("an encoded frame has a header");
    assert_eq!(payload_len(*header), Ok(body.len()), "header of re-encoded response");
    let again = decode_response(body).expect("a re-encoded response must decode");
    assert_eq!(again, resp, "response round trip");
}

fuzz_target!(|data: &[u8]| {
    check_request(data);
    check_response(data);
    if let Some((header, rest)) = data.split_first_chunk::<FRAME_HEADER_LEN>() {
        if let Ok(len) = payload_len(*header) {
            assert!((2..=bpftoken_proto::MAX_FRAME).contains(&len));
            // What a reader does: take exactly `len` bytes if they are there.
            if let Some(payload) = rest.get(..len) {
                check_request(payload);
                check_response(payload);
            }
        }
        check_request(rest);
        check_response(rest);
    }
});
