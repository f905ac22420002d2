//! A hostile sender speaking the raw protocol, one bad field at a time: each gets a clear
//! refusal or error, nothing lands, and the receiver keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;

use zcommon::{Header, RefuseCode, Reply, Trailer, Verdict};

use crate::util::*;

pub fn header(name: &str, size: u64) -> Header {
    Header::new(name, size)
}

pub fn connect(rx: &Zrecv) -> TcpStream {
    let s = TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
    s
}

/// Sends raw bytes as a hello and returns the receiver's reply.
fn hello(rx: &Zrecv, bytes: &[u8]) -> Reply {
    let mut s = connect(rx);
    s.write_all(bytes).unwrap();
    Reply::read(&mut s).expect("a reply")
}

fn assert_refused(reply: Reply, code: RefuseCode, words: &str) {
    match reply {
        Reply::Refuse(c, msg) => {
            assert_eq!(c, code, "{msg}");
            assert!(msg.contains(words), "{msg:?} lacks {words:?}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

/// A normal transfer still works: the receiver survived whatever came before.
fn still_serving(rx: &Zrecv) {
    let src = tempfile::tempdir().unwrap();
    let p = src.path().join("after.bin");
    random_file(&p, 10_000, 99);
    let out = zsend(&[&rx.addr(), p.to_str().unwrap(), "--name", "after.bin"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    std::fs::remove_file(rx.dir.join("after.bin")).unwrap();
}

#[test]
fn malformed_hellos_get_clear_refusals() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let good = header("ok.bin", 5).encode_hello();

    assert_refused(
        hello(&rx, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        RefuseCode::Unsupported,
        "not speaking the zsend protocol",
    );

    let mut v = good.clone();
    v[4..6].copy_from_slice(&9u16.to_be_bytes());
    assert_refused(
        hello(&rx, &v),
        RefuseCode::Unsupported,
        "unsupported protocol version 9",
    );

    let mut v = good.clone();
    v[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_refused(hello(&rx, &v), RefuseCode::BadHeader, "exceeds the limit");

    // A name length over 255, with the header length agreeing.
    let mut v = header(&"n".repeat(255), 5).encode_hello();
    let at = zcommon::PREAMBLE_LEN + zcommon::HEADER_FIXED_LEN - 2;
    v[at..at + 2].copy_from_slice(&300u16.to_be_bytes());
    v.extend_from_slice(&[b'n'; 45]);
    let len = (zcommon::HEADER_FIXED_LEN + 300) as u32;
    v[6..10].copy_from_slice(&len.to_be_bytes());
    assert_refused(hello(&rx, &v), RefuseCode::BadHeader, "name of 300 bytes");

    for bad in ["../escape", "a/b", "..", "\u{1b}[2Jx", ".zrecv-9.part"] {
        let v = header(bad, 5).encode_hello();
        assert_refused(hello(&rx, &v), RefuseCode::BadName, "name");
    }

    let v = header("huge.bin", u64::MAX).encode_hello();
    assert_refused(hello(&rx, &v), RefuseCode::NoSpace, "not enough space on");

    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    assert!(!dst.path().parent().unwrap().join("escape").exists());
    still_serving(&rx);
    // The peer's escape sequence was logged escaped, never raw.
    let log = rx.stderr();
    assert!(log.contains("\\u{1b}[2Jx"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "raw escape reached the terminal: {log:?}"
    );
}

#[test]
fn wrong_payload_lengths_publish_nothing() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--timeout", "10"]);

    // Fewer bytes, then EOF.
    let mut s = connect(&rx);
    s.write_all(&header("short.bin", 1000).encode_hello())
        .unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&[7u8; 400]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let line = rx.wait_for_line("short.bin from");
    assert!(
        line.contains("sender closed after 400 B of 1000 B"),
        "{line}"
    );

    // More bytes than declared: what follows the payload is not a trailer.
    let mut s = connect(&rx);
    s.write_all(&header("long.bin", 100).encode_hello())
        .unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&[7u8; 100 + 200]).unwrap();
    let line = rx.wait_for_line("long.bin from");
    assert!(line.contains("trailer magic missing"), "{line}");

    // A trailer cut short.
    let mut s = connect(&rx);
    s.write_all(&header("cut.bin", 10).encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&[1u8; 10]).unwrap();
    s.write_all(&Trailer::unsealed(Some([0; 32])).encode()[..20])
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let line = rx.wait_for_line("cut.bin from");
    assert!(
        line.contains("closed in the middle of the trailer"),
        "{line}"
    );

    // A right length with the wrong digest: a mismatch verdict.
    let mut s = connect(&rx);
    s.write_all(&header("liar.bin", 10).encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&[1u8; 10]).unwrap();
    s.write_all(&Trailer::unsealed(Some([0; 32])).encode())
        .unwrap();
    let v = Verdict::read(&mut s).unwrap();
    assert_eq!(v.status, zcommon::Status::Mismatch);
    // Garbage after the verdict goes nowhere.
    let _ = s.write_all(b"garbage after the verdict");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());

    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    still_serving(&rx);
}

#[test]
fn a_repeated_header_is_not_taken_for_payload() {
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let hello = header("twice.bin", 100).encode_hello();
    let mut s = connect(&rx);
    s.write_all(&hello).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    // The same hello again, then what a sender would send as payload and trailer.
    s.write_all(&hello).unwrap();
    s.write_all(&vec![0u8; 100 - hello.len()]).unwrap();
    s.write_all(&Trailer::unsealed(Some([0; 32])).encode())
        .unwrap();
    let v = Verdict::read(&mut s).unwrap();
    assert_eq!(v.status, zcommon::Status::Mismatch);
    assert_eq!(rx.wait().code(), Some(5));
    assert!(entries(dst.path()).is_empty());
}

/// One byte every 200 ms would take longer than the timeout to deliver a hello: the receiver
/// drops the connection when the handshake deadline passes, not when bytes stop coming.
#[test]
fn a_trickling_peer_cannot_stretch_the_handshake() {
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--timeout", "1"]);
    let hello = header(&"t".repeat(40), 10).encode_hello();
    let mut s = connect(&rx);
    let mut sent = 0;
    for b in &hello {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        sent += 1;
        if rx.child.try_wait().unwrap().is_some() {
            break;
        }
        // Pacing the hostile peer, not waiting for an event.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        sent < hello.len(),
        "the receiver read the whole trickled hello"
    );
    assert_eq!(rx.wait().code(), Some(3), "{}", rx.stderr());
    assert!(rx.stderr().contains("timed out"), "{}", rx.stderr());
}

#[test]
fn a_silent_peer_is_dropped_after_the_timeout() {
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--timeout", "1"]);
    let mut s = connect(&rx);
    s.write_all(&header("slow.bin", 10).encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    // Send nothing more; the receiver gives up by itself.
    assert_eq!(rx.wait().code(), Some(3), "{}", rx.stderr());
    assert!(rx.stderr().contains("timed out"), "{}", rx.stderr());
    assert!(entries(dst.path()).is_empty());
    drop(s);
}
