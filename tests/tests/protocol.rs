//! Bad input on the wire: every case gets a typed answer (or a closed
//! connection once framing is lost) and never disturbs another client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bpftoken_proto::codec;
use bpftoken_proto::message::RequestBody;
use bpftoken_proto::{MintRequest, RefusalCode, Request, Response};
use bpftoken_tests::*;

const POLICY: &str = r#"
[[allow]]
users = ["bpftk-alice"]
cmds = ["map_create"]
maps = ["array"]
"#;

fn connect(d: &TestDaemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read one response frame; `None` if the daemon closed the connection.
fn read_response(s: &mut UnixStream) -> Option<Response> {
    let mut header = [0u8; 4];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("reading response: {e}"),
    }
    let len = codec::payload_len(header).expect("daemon frame length");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("response payload");
    Some(codec::decode_response(&payload).expect("daemon response decodes"))
}

fn refusal(r: Option<Response>) -> (RefusalCode, String) {
    match r {
        Some(Response::Refused(r)) => (r.code, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn mint_frame() -> Vec<u8> {
    codec::encode_request(&Request::new(RequestBody::Mint(MintRequest::default()))).unwrap()
}

fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).expect("read after close"), 0, "connection should be closed");
}

#[test]
fn bad_frames_get_typed_errors_while_a_good_client_succeeds() {
    let Some(env) = setup("bad_frames_get_typed_errors_while_a_good_client_succeeds") else { return };
    let d = TestDaemon::start(&env, POLICY, &["--read-timeout-ms", "1000"]);
    // A well-behaved client minting throughout.
    let mut good = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    good.args(["mint-loop", d.socket.to_str().unwrap(), "300"]);
    good.stdout(std::process::Stdio::piped());
    let good = good.spawn().expect("spawn good client");

    // Garbage body in a well-formed frame: typed error, connection usable.
    let mut s = connect(&d);
    s.write_all(&[6, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!(code, RefusalCode::Malformed);
    assert!(msg.starts_with("undecodable message: "), "{msg}");
    s.write_all(&mint_frame()).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!(code, RefusalCode::NotInPolicy);
    assert_eq!(msg, format!("no rule in {} allows uid 0 (gid 0)", d.policy.display()));

    // Unknown protocol version: typed error, connection usable.
    s.write_all(&[3, 0, 0, 0, 7, 0, 0]).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!(code, RefusalCode::UnsupportedVersion);
    assert_eq!(msg, "protocol version 7 is not supported (this side speaks 1)");

    // Trailing bytes after a valid request.
    let mut frame = mint_frame();
    frame.push(0);
    frame[0] += 1;
    s.write_all(&frame).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!((code, msg.as_str()), (RefusalCode::Malformed, "1 unexpected bytes after the message"));

    // A 4 GiB length prefix is refused before anything is allocated.
    let mut s = connect(&d);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!(code, RefusalCode::FrameTooLarge);
    assert_eq!(msg, "frame of 4294967295 bytes exceeds the limit of 65536 bytes");
    assert_closed(&mut s);

    // An empty frame.
    let mut s = connect(&d);
    s.write_all(&[0, 0, 0, 0]).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!((code, msg.as_str()), (RefusalCode::Malformed, "frame too short: 0 bytes, a payload needs at least 2"));
    assert_closed(&mut s);

    // A truncated frame: the read timeout answers and closes.
    let mut s = connect(&d);
    let started = Instant::now();
    s.write_all(&[100, 0, 0, 0, 1, 0, 0, 0]).unwrap();
    let (code, msg) = refusal(read_response(&mut s));
    assert_eq!((code, msg.as_str()), (RefusalCode::Timeout, "no complete request within 1000 ms"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_closed(&mut s);

    // A silent client is dropped after the timeout as well.
    let mut s = connect(&d);
    let (code, _) = refusal(read_response(&mut s));
    assert_eq!(code, RefusalCode::Timeout);
    assert_closed(&mut s);

    // A client that vanishes mid-frame.
    let mut s = connect(&d);
    s.write_all(&[20, 0, 0, 0, 1]).unwrap();
    drop(s);

    let good = good.wait_with_output().expect("good client");
    assert_eq!(stdout(&good), "minted 300\n", "{}", stderr(&good));

    // And the daemon still serves new clients.
    let o = d.bpftoken(&env, &user(ALICE), &["run", "--", "true"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn library_reports_typed_refusals_and_unreachable_daemons() {
    let Some(env) = setup("library_reports_typed_refusals_and_unreachable_daemons") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let mut client = bpftoken::Client::connect_to(&d.socket).expect("connect");
    match client.mint(&MintRequest::default()) {
        Err(bpftoken::Error::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::NotInPolicy);
            assert_eq!(r.message, format!("no rule in {} allows uid 0 (gid 0)", d.policy.display()));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let missing = d.dir.join("no-such-socket");
    let o = output({
        let mut c = as_user(&user(ALICE), env.bin("bpftoken"));
        c.arg("--socket").arg(&missing).args(["run", "--", "true"]);
        c
    });
    assert_eq!(o.status.code(), Some(69));
    assert_eq!(
        stderr(&o),
        format!(
            "bpftoken: cannot reach bpftokend at {}: No such file or directory (os error 2) \
             (is the daemon running? set BPFTOKEN_SOCKET to use another socket)\n",
            missing.display()
        )
    );
}

#[test]
fn fds_sent_to_the_daemon_are_closed() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    let Some(env) = setup("fds_sent_to_the_daemon_are_closed") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let pid = d.pid();
    std::thread::sleep(Duration::from_millis(200));
    let before = fd_count(pid);
    let files: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    for _ in 0..50 {
        let mut s = connect(&d);
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let frame = mint_frame();
        rustix::net::sendmsg(&s, &[IoSlice::new(&frame)], &mut control, SendFlags::empty()).unwrap();
        // A mint carries no fds: a request with three is refused as
        // malformed (its fds fit the daemon's aligned control buffer).
        let (code, message) = refusal(read_response(&mut s));
        assert_eq!(code, RefusalCode::Malformed);
        assert_eq!(message, "a mint request carries 0 fd(s), this one carried 3");
    }
    let mut after = fd_count(pid);
    for _ in 0..100 {
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        after = fd_count(pid);
    }
    assert_eq!(after, before, "150 fds sent to the daemon must not stay open in it");
}

/// Requests sent back to back, before any answer is read, are answered in
/// order, each with the fds sent on its own first bytes: however the
/// daemon's reads happen to cut the stream, a second request's fds never
/// count as the first one's.
#[test]
fn back_to_back_requests_keep_their_own_fds() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    let Some(env) = setup("back_to_back_requests_keep_their_own_fds") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let null = std::fs::File::open("/dev/null").unwrap();
    for round in 0..50 {
        let mut s = connect(&d);
        // Three plain requests in one write, then one carrying an fd.
        let three: Vec<u8> = (0..3).flat_map(|_| mint_frame()).collect();
        s.write_all(&three).unwrap();
        let fds = [null.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(&s, &[IoSlice::new(&mint_frame())], &mut control, SendFlags::empty()).unwrap();
        // Root is in no rule: the plain ones are refused by the policy...
        for i in 0..3 {
            let (code, msg) = refusal(read_response(&mut s));
            assert_eq!(code, RefusalCode::NotInPolicy, "round {round}, request {i}: {msg}");
        }
        // ...and the last one for its fd.
        let (code, msg) = refusal(read_response(&mut s));
        assert_eq!(
            (code, msg.as_str()),
            (RefusalCode::Malformed, "a mint request carries 0 fd(s), this one carried 1")
        );
    }
}

/// A client that asks for tokens without reading the answers gets one
/// token per connection at most: each further request for fds is refused
/// until the earlier answer is read, so tokens cannot pile up unread in
/// its socket. Other requests are still answered back to back.
#[test]
fn unread_tokens_do_not_pile_up_on_a_connection() {
    let Some(env) = setup("unread_tokens_do_not_pile_up_on_a_connection") else { return };
    let d = TestDaemon::start(&env, POLICY, &[]);
    let mut c = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    c.args(["mint-unread", d.socket.to_str().unwrap(), "3"]);
    let o = output(c);
    let busy = "refused busy: the answer to an earlier request on this connection, which may carry fds, is still \
                unread; read it before asking for more";
    assert_eq!(stdout(&o), format!("Minted\n{busy}\n{busy}\nExplained\nfds 1\n"), "{}", stderr(&o));
    // Read answers clear the way: an ordinary client mints again and again.
    let mut c = as_user(&user(ALICE), env.bin("bpftoken-probe"));
    c.args(["mint-loop", d.socket.to_str().unwrap(), "20"]);
    assert_eq!(stdout(&output(c)), "minted 20\n");
}
