//! Modes that work the daemon's socket below the client library: idle
//! connections held (`hold`, `hold-report`) or churned (`churn`), frames
//! cut short (`close-at`), requests whose answers are read late or never
//! (`mint-unread`, `send-and-exit`).

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;

use bpftoken::MintRequest;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// `hold SOCKET COUNT SECONDS`: hold COUNT idle connections open.
pub fn hold(args: &[String]) -> Result<(), String> {
    let path = std::path::PathBuf::from(args.get(1).ok_or("hold SOCKET COUNT SECONDS")?);
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("hold SOCKET COUNT SECONDS")?;
    let secs: u64 = args.get(3).and_then(|c| c.parse().ok()).ok_or("hold SOCKET COUNT SECONDS")?;
    let held: Vec<UnixStream> =
        (0..count).map(|_| UnixStream::connect(&path)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    println!("holding {}", held.len());
    std::thread::sleep(std::time::Duration::from_secs(secs));
    Ok(())
}

/// `hold-report SOCKET COUNT SECONDS`: hold connections, then say what
/// became of each.
pub fn hold_report(args: &[String]) -> Result<(), String> {
    // hold-report SOCKET COUNT SECONDS: connect COUNT times (as
    // many as succeed), wait, then say for each connection what the
    // daemon answered unasked (a busy or timeout refusal) or that
    // it is still open: "refused TEXT" lines, then "open N".
    let usage = "hold-report SOCKET COUNT SECONDS";
    let path = std::path::PathBuf::from(args.get(1).ok_or(usage)?);
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
    let secs: u64 = args.get(3).and_then(|c| c.parse().ok()).ok_or(usage)?;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    );
    let held: Vec<UnixStream> = (0..count).map_while(|_| UnixStream::connect(&path).ok()).collect();
    println!("holding {}", held.len());
    std::thread::sleep(std::time::Duration::from_secs(secs));
    let mut open = 0usize;
    let mut refusals: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for mut s in held {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(n) if n > bpftoken_proto::codec::FRAME_HEADER_LEN => {
                let text =
                    match bpftoken_proto::codec::decode_response(&buf[bpftoken_proto::codec::FRAME_HEADER_LEN..n]) {
                        Ok(bpftoken_proto::Response::Refused(r)) => r.to_string(),
                        Ok(other) => format!("unexpected {other:?}"),
                        Err(e) => format!("undecodable {e}"),
                    };
                *refusals.entry(text).or_default() += 1;
            }
            Ok(_) => *refusals.entry("closed".to_owned()).or_default() += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            Err(e) => *refusals.entry(format!("error {e}")).or_default() += 1,
        }
    }
    for (text, n) in refusals {
        println!("refused {n} {text}");
    }
    println!("open {open}");
    Ok(())
}

/// `churn SOCKET COUNT`: connect and close COUNT times.
pub fn churn(args: &[String]) -> Result<(), String> {
    let path = std::path::PathBuf::from(args.get(1).ok_or("churn SOCKET COUNT")?);
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or("churn SOCKET COUNT")?;
    let mut ok = 0usize;
    for _ in 0..count {
        if UnixStream::connect(&path).is_ok() {
            ok += 1;
        }
    }
    println!("connected {ok}");
    Ok(())
}

/// `close-at SOCKET`: a mint frame cut at every offset, then whole
/// requests whose answers are never read.
pub fn close_at(args: &[String]) -> Result<(), String> {
    use std::io::Write;
    let path = std::path::PathBuf::from(args.get(1).ok_or("close-at SOCKET")?);
    let frame = bpftoken_proto::codec::encode_request(&bpftoken_proto::Request::new(
        bpftoken_proto::message::RequestBody::Mint(MintRequest::default()),
    ))
    .map_err(|e| e.to_string())?;
    for cut in 0..frame.len() {
        let mut s = UnixStream::connect(&path).map_err(|e| e.to_string())?;
        s.write_all(&frame[..cut]).map_err(|e| e.to_string())?;
    }
    // Whole requests whose answers (and tokens) are never read.
    for _ in 0..20 {
        let mut s = UnixStream::connect(&path).map_err(|e| e.to_string())?;
        s.write_all(&frame).map_err(|e| e.to_string())?;
    }
    println!("cuts {}", frame.len());
    Ok(())
}

/// `send-and-exit SOCKET`: send a mint request, print our pid, exit without
/// waiting.
pub fn send_and_exit(args: &[String]) -> Result<(), String> {
    use std::io::Write;
    let path = args.get(1).ok_or("send-and-exit SOCKET")?;
    let mut sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
    let request = bpftoken_proto::Request::new(bpftoken_proto::message::RequestBody::Mint(MintRequest::default()));
    let frame = bpftoken_proto::codec::encode_request(&request).map_err(|e| e.to_string())?;
    sock.write_all(&frame).map_err(|e| e.to_string())?;
    println!("{}", std::process::id());
    Ok(())
}

/// `mint-unread SOCKET COUNT`: COUNT mints and a query in one write, the
/// answers read late.
pub fn mint_unread(args: &[String]) -> Result<(), String> {
    // COUNT mint requests and a query in one write, nothing read for
    // a moment (so the daemon answers them all first), then every
    // answer: its kind (or refusal), and the fds that came.
    use std::io::Write;
    let usage = "mint-unread SOCKET COUNT";
    let path = args.get(1).ok_or(usage)?;
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).ok_or(usage)?;
    let mut sock = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
    let encode =
        |body| bpftoken_proto::codec::encode_request(&bpftoken_proto::Request::new(body)).map_err(|e| e.to_string());
    let mut frames = Vec::new();
    for _ in 0..count {
        frames.extend(encode(bpftoken_proto::message::RequestBody::Mint(MintRequest::default()))?);
    }
    frames.extend(encode(bpftoken_proto::message::RequestBody::Query)?);
    sock.write_all(&frames).map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (mut bytes, mut fds) = (Vec::new(), 0usize);
    let mut answers = 0;
    while answers <= count {
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)
            .map_err(|e| e.to_string())?;
        if got.bytes == 0 {
            break;
        }
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds += r.count();
            }
        }
        bytes.extend_from_slice(&buf[..got.bytes]);
        while bytes.len() >= 4 {
            let header: [u8; 4] = bytes[..4].try_into().map_err(|_| "header")?;
            let len = bpftoken_proto::codec::payload_len(header).map_err(|e| e.to_string())?;
            if bytes.len() < 4 + len {
                break;
            }
            let response = bpftoken_proto::codec::decode_response(&bytes[4..4 + len]).map_err(|e| e.to_string())?;
            bytes.drain(..4 + len);
            answers += 1;
            match response {
                bpftoken_proto::Response::Refused(r) => println!("refused {}: {}", r.code, r.message),
                other => {
                    let name = format!("{other:?}");
                    println!("{}", name.split(['(', ' ', '{']).next().unwrap_or_default());
                }
            }
        }
    }
    println!("fds {fds}");
    Ok(())
}
