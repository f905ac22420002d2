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

/// Sends keepalives on `s` every `ms` milliseconds until zrecv prints `line` (it gave up).
fn keep_saying_alive(rx: &Zrecv, s: &TcpStream, ms: u64, line: &str) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let (stop, mut s) = (stop.clone(), s.try_clone().unwrap());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if s.write_all(&zcommon::KEEPALIVE).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        })
    };
    rx.wait_for_line(line);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    keeper.join().unwrap();
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
    let other = zcommon::VERSION + 1;
    v[4..6].copy_from_slice(&other.to_be_bytes());
    assert_refused(
        hello(&rx, &v),
        RefuseCode::Unsupported,
        &format!("unsupported protocol version {other}"),
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

/// A refused peer that goes on trickling bytes is let go within a couple of seconds: zrecv
/// drains what follows a refusal so that the refusal is read, and that drain used to last as
/// long as each byte came within 2 s of the last, holding the transfer slot (here the only
/// one) for days.
#[test]
fn a_refused_peer_that_trickles_is_let_go() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--max-transfers", "1", "--slot-wait", "1"]);
    let mut s = connect(&rx);
    s.write_all(b"XXXXXXXXXX").unwrap();
    let mut let_go = false;
    // Bounded: the receiver lets go after 2 s; 60 of these would be 18 s.
    for _ in 0..60 {
        // Pacing the hostile peer, not waiting for an event.
        std::thread::sleep(std::time::Duration::from_millis(300));
        if s.write_all(b"X").is_err() {
            let_go = true;
            break;
        }
    }
    assert!(
        let_go,
        "the receiver still drained the refused peer after 18 s"
    );
    still_serving(&rx);
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

/// A sender that says "still hashing" forever instead of sending its trailer used to hold its
/// transfer slot (and the file's name) for as long as it liked, 9 bytes a second: sixteen such
/// senders shut everyone else out. Keepalives count only for as long as hashing the file could
/// take; then the receiver gives up.
#[test]
fn keepalives_cannot_hold_a_slot_forever() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--once", "--timeout", "1"]);
    let mut s = connect(&rx);
    s.write_all(&header("held.bin", 10).encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(b"0123456789").unwrap();
    keep_saying_alive(
        &rx,
        &s,
        300,
        "keepalives before the trailer for longer than hashing could take",
    );
    assert!(visible(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    drop(s);
}

/// A sparse hello plus one hole record declaring 8 TiB used to keep a core hashing zeros for
/// hours after the sender had gone, holding a transfer slot. Now the work stops when the
/// sender goes, lasts at most --timeout while it is silent, and a hole folds into the tree root
/// in a few hashes anyway.
#[test]
fn a_huge_hole_costs_nothing_once_the_sender_is_gone_or_silent() {
    use zcommon::Record;
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--timeout", "2"]);
    let hole = 8u64 << 40;
    let sparse = |name: &str| Header {
        sparse_data_len: Some(1),
        ..header(name, hole + 1)
    };
    let send_hole = |s: &mut TcpStream| {
        s.write_all(
            &Record::Hole {
                offset: 0,
                len: hole,
            }
            .encode(),
        )
        .unwrap();
        s.write_all(
            &Record::Data {
                offset: hole,
                len: 1,
            }
            .encode(),
        )
        .unwrap();
        s.write_all(b"x").unwrap();
        s.write_all(&Record::End.encode()).unwrap();
    };
    let bound = std::time::Duration::from_secs(30);

    // The sender goes away right after the records.
    let mut s = connect(&rx);
    s.write_all(&sparse("gone.img").encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    send_hole(&mut s);
    drop(s);
    let line = rx.wait_for_line_within("gone.img from", bound);
    assert!(line.contains("the sender went away"), "{line}");

    // The sender stays, silent: no keepalive, no trailer.
    let mut s = connect(&rx);
    s.write_all(&sparse("silent.img").encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    send_hole(&mut s);
    let line = rx.wait_for_line_within("silent.img from", bound);
    assert!(line.contains("timed out"), "{line}");
    drop(s);

    // The sender sends its trailer at once (a root it made up) and waits: the hole folds into
    // the tree root in a few hashes, so the receiver answers at once, and not with success.
    let mut s = connect(&rx);
    s.write_all(&sparse("eager.img").encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    send_hole(&mut s);
    s.write_all(&Trailer::unsealed(Some([0; 32])).encode())
        .unwrap();
    let line = rx.wait_for_line_within("eager.img from", bound);
    assert!(
        line.contains(&format!(
            "checksum mismatch: sender sent {}",
            "0".repeat(64)
        )),
        "{line}"
    );
    let v = zcommon::Verdict::read(&mut s).unwrap();
    assert_eq!(v.status, zcommon::Status::Mismatch, "{}", v.message);
    drop(s);

    // Nothing keeps a core busy afterwards.
    let cpu = cpu_time(rx.child.id());
    let out = zsend(&["--version"]);
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(500)); // a window to measure, not a lock
    let spent = cpu_time(rx.child.id()) - cpu;
    assert!(spent < std::time::Duration::from_millis(200), "{spent:?}");
    assert!(visible(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    still_serving(&rx);
}

/// With `--stdout`, a hole is zeros written out: a record of 17 bytes declaring 2^62 of them
/// ends with its sender. (zrecv went on writing them after the sender had gone: 18 GB in 15 s,
/// found by review.)
#[test]
fn a_huge_hole_to_standard_output_ends_with_its_sender() {
    use zcommon::Record;
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--stdout", "--timeout", "5"]);
    rx.discard_stdout();
    let size = 1u64 << 62;
    let zeros = Header {
        sparse_data_len: Some(0),
        ..header("zeros.img", size)
    };
    let mut s = connect(&rx);
    s.write_all(&zeros.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    let hole = Record::Hole {
        offset: 0,
        len: size,
    };
    s.write_all(&hole.encode()).unwrap();
    drop(s);
    let line = rx.wait_for_line_within("zeros.img from", std::time::Duration::from_secs(30));
    assert!(line.contains("the sender went away"), "{line}");
    assert!(!rx.wait().success(), "{}", rx.stderr());

    // A sender that shuts down its side after its last message is still there: its hole is
    // written out whole and its file verified.
    let mut rx = Zrecv::start(dst.path(), &["--once", "--stdout", "--timeout", "5"]);
    rx.discard_stdout();
    let size = 8u64 << 20;
    let zeros = Header {
        sparse_data_len: Some(0),
        ..header("half.img", size)
    };
    let mut s = connect(&rx);
    s.write_all(&zeros.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    let root = zcommon::tree_root(&vec![0u8; size as usize]);
    let mut words = Record::Hole {
        offset: 0,
        len: size,
    }
    .encode()
    .to_vec();
    words.extend(Record::End.encode());
    words.extend(Trailer::unsealed(Some(root)).encode());
    s.write_all(&words).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let verdict = Verdict::read(&mut s).unwrap();
    assert_eq!(verdict.status, zcommon::Status::Landed, "{}", rx.stderr());
    assert_eq!(verdict.root, Some(root));
    assert!(rx.wait().success(), "{}", rx.stderr());
}

/// One byte of a resumable 256 MiB hello must not leave 256 MiB reserved on disk: a kept
/// partial holds what arrived.
#[test]
fn a_kept_partial_holds_only_what_arrived() {
    use std::os::unix::fs::MetadataExt;
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let mut s = connect(&rx);
    let hello = Header {
        source_id: Some([5; zcommon::SOURCE_ID_LEN]),
        ..header("pinned.img", 256 << 20)
    };
    s.write_all(&hello.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(b"x").unwrap();
    drop(s);
    rx.wait_for_line("pinned.img from");
    let part = entries(dst.path())
        .into_iter()
        .find(|e| e.ends_with(".part"))
        .expect("a kept partial");
    let meta = std::fs::metadata(dst.path().join(&part)).unwrap();
    assert_eq!(meta.len(), 1);
    assert!(
        meta.blocks() * 512 <= 64 << 10,
        "{} bytes still allocated",
        meta.blocks() * 512
    );
}

/// The sizes in a manifest are the peer's numbers: their sum must not wrap (into a small
/// number that passes the free-space check).
#[test]
fn a_manifest_whose_sizes_wrap_is_refused_for_space() {
    use zcommon::{Answers, Entry, Kind, Manifest};
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let file = |path: &str| Entry {
        path: path.into(),
        kind: Kind::File {
            size: 1 << 63,
            sparse_data_len: None,
            source_id: None,
        },
        mode: 0o644,
        mtime: (0, 0),
        extras: None,
    };
    let manifest = Manifest {
        entries: vec![file("a"), file("b"), file("c")],
    };
    let mut s = connect(&rx);
    let tree = Header {
        flags: zcommon::FLAG_TREE,
        ..header("wrap", 0)
    };
    s.write_all(&tree.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&manifest.encode()).unwrap();
    match Answers::read(&mut s, 3).unwrap() {
        Answers::Refused(code, msg) => {
            assert_eq!(code, RefuseCode::NoSpace, "{msg}");
            assert!(msg.contains("more than 16 EiB"), "{msg}");
        }
        other => panic!("answered {other:?}"),
    }
    assert!(entries(dst.path()).is_empty());
    still_serving(&rx);
}

/// A sender that knows a victim's name, size, mtime and source id (all in the plaintext
/// hello) used to get the victim's partial resumed: the receiver sent the SHA-256 of the prefix
/// it held, which SHA-256 length extension turns into a "verified" file of the victim's prefix
/// and the attacker's bytes. Now the receiver reveals no digest, the sender must prove it holds
/// the prefix, and a sender that cannot starts from byte 0.
#[test]
fn a_sender_cannot_adopt_a_partial_it_does_not_hold() {
    use zcommon::{AfterTrailer, PrefixProof, RESTART};
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let size = 4u64 << 20;
    let victim = Header {
        source_id: Some([0x42; zcommon::SOURCE_ID_LEN]),
        mtime_sec: 1_700_000_000,
        ..header("victim.img", size)
    };
    // The victim's transfer breaks off after 2.5 MiB.
    let mut s = connect(&rx);
    s.write_all(&victim.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&vec![0x11; 5 << 19]).unwrap();
    drop(s);
    rx.wait_for_line("victim.img from");

    // The attacker replays the victim's hello; the offer is cut back to a piece boundary.
    let mut s = connect(&rx);
    s.write_all(&victim.encode_hello()).unwrap();
    let Reply::Resume { offset, nonce } = Reply::read(&mut s).unwrap() else {
        panic!("no resume offer")
    };
    assert_eq!(offset, 2 << 20);
    // It can only guess at the prefix: its proof, after its own rest, is wrong, and it must
    // send everything.
    let mut guess = vec![0u8; size as usize];
    guess[offset as usize..].fill(0x66);
    s.write_all(&guess[offset as usize..]).unwrap();
    let proof = zcommon::prefix_proof(
        &nonce,
        offset,
        &zcommon::tree_root(&guess[..offset as usize]),
    );
    s.write_all(&PrefixProof(proof).encode()).unwrap();
    s.write_all(&Trailer::unsealed(Some(zcommon::tree_root(&guess))).encode())
        .unwrap();
    assert_eq!(AfterTrailer::read(&mut s).unwrap(), AfterTrailer::Restart);
    assert_eq!(RESTART.len(), 5);
    let ours = vec![0x66u8; size as usize];
    s.write_all(&ours).unwrap();
    s.write_all(&Trailer::unsealed(Some(zcommon::tree_root(&ours))).encode())
        .unwrap();
    let v = zcommon::Verdict::read(&mut s).unwrap();
    assert_eq!(v.status, zcommon::Status::Landed, "{}", v.message);
    // What landed is the attacker's file, all of it, and none of the victim's bytes.
    let landed = std::fs::read(dst.path().join("victim.img")).unwrap();
    assert_eq!(landed, ours);
}

/// A tree's check of a file the receiver holds used to answer with the receiver's digest of
/// it, confirming guesses about its content. Now the answer is "same" or "different": the
/// receiver's digest goes back only when it is the sender's own.
#[test]
fn a_check_says_same_or_different_and_never_the_receivers_digest() {
    use zcommon::{Answer, Answers, Entry, FileStatus, Frame, Kind, Manifest, Report};
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir(dst.path().join("top")).unwrap();
    let secret = dst.path().join("top/secret.txt");
    std::fs::write(&secret, b"password=hunter2").unwrap();
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&secret, private).unwrap();
    let mtime = std::fs::metadata(&secret).unwrap().modified().unwrap();
    let mtime = mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let check = |guess: &[u8]| -> Report {
        let manifest = Manifest {
            entries: vec![
                Entry {
                    path: "top".into(),
                    kind: Kind::Dir,
                    mode: 0o755,
                    mtime: (0, 0),
                    extras: None,
                },
                Entry {
                    path: "top/secret.txt".into(),
                    kind: Kind::File {
                        size: 16,
                        sparse_data_len: None,
                        source_id: None,
                    },
                    mode: 0o600,
                    mtime: (mtime.as_secs() as i64, mtime.subsec_nanos()),
                    extras: None,
                },
            ],
        };
        let mut s = connect(&rx);
        let tree = Header {
            flags: zcommon::FLAG_TREE,
            ..header("top", 16)
        };
        s.write_all(&tree.encode_hello()).unwrap();
        assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
        s.write_all(&manifest.encode()).unwrap();
        let Answers::Each(answers, _) = Answers::read(&mut s, 2).unwrap() else {
            panic!("manifest refused")
        };
        assert_eq!(answers[1], Answer::Landed);
        let digest = zcommon::tree_root(guess);
        s.write_all(&Frame::Check(1, digest).encode()).unwrap();
        s.write_all(&Frame::EndOfPass.encode()).unwrap();
        let report = Report::read(&mut s).unwrap();
        assert_eq!(Report::read(&mut s).unwrap(), Report::EndOfPass);
        report
    };
    let Report::File { status, root, .. } = check(b"password=letmein") else {
        panic!("not a verdict")
    };
    assert_eq!(status, FileStatus::Refused);
    assert_eq!(
        root, None,
        "the receiver's digest of a file the sender did not write"
    );
    let Report::File { status, root, .. } = check(b"password=hunter2") else {
        panic!("not a verdict")
    };
    assert_eq!(status, FileStatus::Unchanged);
    assert_eq!(root, Some(zcommon::tree_root(b"password=hunter2")));
}

/// A manifest entry without extras.
fn entry(path: &str, kind: zcommon::Kind, mode: u32, mtime: (i64, u32)) -> zcommon::Entry {
    zcommon::Entry {
        path: path.into(),
        kind,
        mode,
        mtime,
        extras: None,
    }
}

/// A regular file's kind, of `size` bytes, dense and without a source id.
fn file(size: u64) -> zcommon::Kind {
    zcommon::Kind::File {
        size,
        sparse_data_len: None,
        source_id: None,
    }
}

/// The receiver's reports up to its end of pass, keepalives left out.
fn reports_of_the_pass(s: &mut TcpStream) -> Vec<zcommon::Report> {
    let mut reports = Vec::new();
    loop {
        match zcommon::Report::read(s).unwrap() {
            zcommon::Report::EndOfPass => return reports,
            zcommon::Report::Keepalive => {}
            r => reports.push(r),
        }
    }
}

/// Opens a tree transfer of `manifest` (one entry) by hand: the hello, the manifest, and the
/// answers read, as a raw sender would.
fn open_tree(rx: &Zrecv, manifest: &zcommon::Manifest) -> std::net::TcpStream {
    answered_tree(rx, manifest).0
}

/// As [`open_tree`], returning the answers too.
fn answered_tree(
    rx: &Zrecv,
    manifest: &zcommon::Manifest,
) -> (std::net::TcpStream, Vec<zcommon::Answer>) {
    let mut s = connect(rx);
    let tree = Header {
        flags: zcommon::FLAG_TREE,
        ..header("t", 0)
    };
    s.write_all(&tree.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&manifest.encode()).unwrap();
    let answers = zcommon::Answers::read(&mut s, manifest.entries.len()).unwrap();
    let zcommon::Answers::Each(answers, _) = answers else {
        panic!("manifest refused: {answers:?}")
    };
    (s, answers)
}

/// A tree whose sender closes before its last end of pass is interrupted, not complete: zrecv
/// used to report it landed and verified (and exit 0 with --once) when the sender closed
/// before its first frame.
#[test]
fn a_tree_that_ends_before_its_end_of_pass_is_not_complete() {
    use zcommon::{Entry, Kind, Manifest};
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let manifest = Manifest {
        entries: vec![Entry {
            path: "f".into(),
            kind: Kind::File {
                size: 10,
                sparse_data_len: None,
                source_id: None,
            },
            mode: 0o644,
            mtime: (0, 0),
            extras: None,
        }],
    };
    let s = open_tree(&rx, &manifest);
    drop(s);
    assert_eq!(rx.wait().code(), Some(3), "{}", rx.stderr());
    let line: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
    assert_eq!(line["ok"], false, "{line}");
    assert_eq!(line["verified"], false, "{line}");
    assert!(visible(dst.path()).is_empty());
}

/// After the last pass, a sender only closes: another end of pass used to run the end of a
/// pass again (every directory made set again: seconds of work per 9 bytes on a large tree).
/// It is a protocol error now, and costs nothing.
#[test]
fn a_frame_after_the_last_pass_is_refused() {
    use zcommon::{Entry, Frame, Kind, Manifest, Report};
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let manifest = Manifest {
        entries: vec![Entry {
            path: "d".into(),
            kind: Kind::Dir,
            mode: 0o755,
            mtime: (0, 0),
            extras: None,
        }],
    };
    let mut s = open_tree(&rx, &manifest);
    s.write_all(&Frame::EndOfPass.encode()).unwrap();
    assert_eq!(Report::read(&mut s).unwrap(), Report::EndOfPass);
    s.write_all(&Frame::EndOfPass.encode()).unwrap();
    rx.wait_for_line("a frame after the last pass");
    drop(s);
    assert_ne!(rx.wait().code(), Some(0), "{}", rx.stderr());
}

/// A sender that may replace a file learns, of an update, only which of its pieces differ: the
/// receiver's answer is a list of ranges, never a root of its file; a receiver that does not
/// replace files offers no update at all; and pieces out of place are a protocol error that
/// leaves the file as it was.
#[test]
fn an_update_tells_the_sender_only_which_pieces_differ() {
    use zcommon::{encode_layer, Needed, Record, FLAG_UPDATE};
    let dst = tempfile::tempdir().unwrap();
    let path = dst.path().join("secret.img");
    random_file(&path, 6 << 20, 90);
    let before = sha256_file(&path);
    let f = std::fs::File::open(&path).unwrap();
    let (_, ours) = zcommon::layer_of_file(&f, 6 << 20, true).unwrap();
    let mut update = header("secret.img", 6 << 20);
    update.flags |= FLAG_UPDATE;

    let rx = Zrecv::start(dst.path(), &[]);
    let mut s = connect(&rx);
    s.write_all(&update.encode_hello()).unwrap();
    assert!(
        matches!(
            Reply::read(&mut s).unwrap(),
            Reply::Refuse(RefuseCode::Exists, _)
        ),
        "no --force, no update"
    );
    drop(rx);

    let rx = Zrecv::start(dst.path(), &["--force"]);
    let mut s = connect(&rx);
    s.write_all(&update.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Update);
    // A guess for every piece: the first one right, the others not.
    let mut guess = vec![(ours[0].0, 1)];
    guess.push(([7; 32], 5));
    s.write_all(&encode_layer(&guess)).unwrap();
    let mut answer = Vec::new();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    answer.extend_from_slice(&head);
    let count = u32::from_be_bytes(head[4..].try_into().unwrap()) as usize;
    let mut ranges = vec![0u8; 16 * count];
    s.read_exact(&mut ranges).unwrap();
    answer.extend_from_slice(&ranges);
    let needed = Needed::read(&mut &answer[..], 6).unwrap();
    assert_eq!(needed.ranges(), &[(1, 5)]);
    for (root, _) in &ours {
        assert!(
            !answer.windows(32).any(|w| w == root),
            "a root of the receiver's file crossed"
        );
    }
    // Then a record where none was asked for.
    s.write_all(&Record::Data { offset: 0, len: 10 }.encode())
        .unwrap();
    s.write_all(&[0u8; 10]).unwrap();
    let line = rx.wait_for_line("secret.img from");
    assert!(line.contains("a record at 0+10"), "{line}");
    assert_eq!(sha256_file(&path), before, "the file is as it was");
}

/// A hard link names an earlier file of its own manifest and is framed once: one that names a
/// directory refuses the manifest, and a link frame for a file or a second one for the same
/// link is a protocol error that makes no link.
#[test]
fn a_hard_link_names_only_an_earlier_file_and_is_framed_once() {
    use zcommon::{Answer, Answers, Entry, Frame, Kind, Manifest};
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let entry = |path: &str, kind: Kind| Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime: (0, 0),
        extras: None,
    };
    let file = Kind::File {
        size: 3,
        sparse_data_len: None,
        source_id: None,
    };
    let tree = Header {
        flags: zcommon::FLAG_TREE,
        ..header("t", 3)
    };
    // A link to a directory (to make a second name for it, or a loop).
    let mut s = connect(&rx);
    s.write_all(&tree.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    let to_dir = Manifest {
        entries: vec![
            entry("d", Kind::Dir),
            entry("l", Kind::HardLink { first: 0 }),
        ],
    };
    s.write_all(&to_dir.encode()).unwrap();
    assert!(matches!(
        Answers::read(&mut s, 2).unwrap(),
        Answers::Refused(..)
    ));
    drop(s);
    rx.wait_for_line("not a file before it");

    for (frames, why) in [
        (vec![Frame::Link(0)], "which is not a hard link"),
        (vec![Frame::Link(1), Frame::Link(1)], "a second frame for g"),
    ] {
        let mut s = connect(&rx);
        s.write_all(&tree.encode_hello()).unwrap();
        assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
        let m = Manifest {
            entries: vec![
                entry("f", file.clone()),
                entry("g", Kind::HardLink { first: 0 }),
            ],
        };
        s.write_all(&m.encode()).unwrap();
        let Answers::Each(answers, 0) = Answers::read(&mut s, 2).unwrap() else {
            panic!("not answered")
        };
        assert_eq!(answers, [Answer::Send, Answer::Send]);
        let mut out = Frame::Full(0).encode();
        out.extend_from_slice(b"abc");
        out.extend_from_slice(&Trailer::unsealed(Some(zcommon::tree_root(b"abc"))).encode());
        for f in &frames {
            out.extend_from_slice(&f.encode());
        }
        out.extend_from_slice(&Frame::EndOfPass.encode());
        s.write_all(&out).unwrap();
        rx.wait_for_line(why);
        drop(s);
        assert!(!dst.path().join("g").exists());
        let _ = std::fs::remove_file(dst.path().join("f"));
    }
    still_serving(&rx);
}

/// Keepalives between a tree's frames are allowed for as long as hashing the largest file the
/// sender may still frame could take: a refused entry declaring 2^62 bytes, which can never be
/// framed, used to buy them for millennia, and so a transfer slot.
#[test]
fn a_refused_entry_buys_no_time_for_keepalives() {
    use zcommon::{Answer, Manifest};
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(dst.path().join("z"), b"x").unwrap();
    // A timeout that a loaded machine's keepalives every 200 ms keep well inside.
    let rx = Zrecv::start(dst.path(), &["--timeout", "3"]);
    let manifest = Manifest {
        entries: vec![entry("z", file(1 << 62), 0o644, (0, 0))],
    };
    let (s, answers) = answered_tree(&rx, &manifest);
    assert!(matches!(answers[0], Answer::Refused(_)), "{answers:?}");
    keep_saying_alive(
        &rx,
        &s,
        200,
        "keepalives between frames for longer than hashing could take",
    );
    assert_eq!(std::fs::read(dst.path().join("z")).unwrap(), b"x");
}

/// In a tree being built under a hidden name, files are the receiver's own to finish without
/// --force: their metadata is set to the sender's. A sender once used that on a file outside:
/// it quick-checked a file already in --dir (its size and mtime are enough), made a hard link
/// to it inside a hidden tree that it kept hidden, then took that tree up again and sent the
/// link's name as a file of that size and mtime with mode 1777, which the receiver set on the
/// outside file's inode. A copy with other names is now sent whole and replaced, never
/// changed in place.
#[test]
fn a_hard_link_into_a_hidden_tree_cannot_change_a_file_outside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use zcommon::{Answer, Frame, Kind, Manifest};
    let dst = tempfile::tempdir().unwrap();
    let outside = dst.path().join("x");
    std::fs::write(&outside, b"not the sender's").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&outside)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let size = 16u64;
    let rx = Zrecv::start(dst.path(), &["--timeout", "5"]);
    let dir = || Kind::Dir;
    let open = |manifest: &Manifest| answered_tree(&rx, manifest);
    // 1. A new tree t, its file landed, the sender gone before its end of pass: t stays hidden.
    let (mut s, _) = open(&Manifest {
        entries: vec![
            entry("t", dir(), 0o755, (0, 0)),
            entry("t/f", file(5), 0o644, (1, 0)),
        ],
    });
    let mut out = Frame::Full(1).encode();
    out.extend_from_slice(b"hello");
    out.extend_from_slice(&Trailer::unsealed(Some(zcommon::tree_root(b"hello"))).encode());
    out.extend_from_slice(&zcommon::KEEPALIVE);
    s.write_all(&out).unwrap();
    // Once the file is in the hidden tree, the sender goes.
    let staged = || {
        std::fs::read_dir(dst.path()).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name().to_string_lossy().ends_with(".stage") && e.path().join("f").exists()
        })
    };
    let until = std::time::Instant::now() + PROCESS_TIMEOUT;
    while !staged() {
        assert!(std::time::Instant::now() < until, "{}", rx.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(s);
    rx.wait_for_line("the sender closed before its last end of pass");
    // 2. The file outside quick-checked, t taken up and kept hidden (its file "differs"), and a
    // hard link to the file outside made in it.
    let (mut s, answers) = open(&Manifest {
        entries: vec![
            entry("x", file(size), 0o600, (1_600_000_000, 0)),
            entry("t", dir(), 0o755, (0, 0)),
            entry("t/f", file(5), 0o644, (1, 0)),
            entry("t/h", Kind::HardLink { first: 0 }, 0o600, (0, 0)),
        ],
    });
    assert_eq!(answers[0], Answer::Landed, "{answers:?}");
    assert_eq!(answers[2], Answer::Landed, "{answers:?}");
    let mut out = Frame::Quick(0).encode();
    out.extend_from_slice(&Frame::Check(2, [0x55; 32]).encode());
    out.extend_from_slice(&Frame::Link(3).encode());
    out.extend_from_slice(&Frame::EndOfPass.encode());
    s.write_all(&out).unwrap();
    reports_of_the_pass(&mut s);
    drop(s);
    // The link was made: the file outside has a second name in the hidden tree.
    assert_eq!(std::fs::metadata(&outside).unwrap().nlink(), 2);
    // 3. t taken up again, its link's name sent as a file of the outside file's size and
    // mtime, mode 1777: a copy with other names is sent whole, never changed in place.
    let (s, answers) = open(&Manifest {
        entries: vec![
            entry("t", dir(), 0o755, (0, 0)),
            entry("t/h", file(size), 0o1777, (1_600_000_000, 0)),
        ],
    });
    assert_eq!(answers[1], Answer::Send, "{answers:?}");
    drop(s);
    let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "{}", rx.stderr());
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the sender's");
}

/// The metadata of a copy answered as one to set (with --force) is set on the very file
/// answered, while it has one name: another transfer of the same sender once made that name a
/// hard link, meanwhile, to a file with a name outside --dir (a snapshot), and the first
/// transfer's quick check then set its mode and mtime on the file outside.
#[test]
fn a_copy_linked_elsewhere_meanwhile_keeps_its_metadata() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use zcommon::{Answer, Frame, Kind, Manifest, Report};
    let dst = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(dst.path().join("t")).unwrap();
    let set = |p: &std::path::Path, body: &[u8], mode: u32, secs: u64| {
        std::fs::write(p, body).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(when).unwrap();
    };
    // t/x: the sender's own, one name; t/F: a file with a second name outside --dir, whose
    // size, mode and mtime the sender knows.
    set(&dst.path().join("t/x"), b"mine", 0o644, 1_500_000_000);
    let snapshot = elsewhere.path().join("F");
    set(&snapshot, b"secret", 0o600, 1_600_000_000);
    std::fs::hard_link(&snapshot, dst.path().join("t/F")).unwrap();
    let rx = Zrecv::start(dst.path(), &["--force", "--timeout", "20"]);
    // Transfer A: t/x with another mode, answered "here", its metadata to be set.
    let (mut a, answers) = answered_tree(
        &rx,
        &Manifest {
            entries: vec![
                entry("t", Kind::Dir, 0o755, (0, 0)),
                entry("t/x", file(4), 0o777, (1_500_000_000, 0)),
            ],
        },
    );
    assert_eq!(answers[1], Answer::Landed, "{answers:?}");
    // Transfer B, meanwhile: t/F as it is, and t/x a hard link to it.
    let (mut b, answers) = answered_tree(
        &rx,
        &Manifest {
            entries: vec![
                entry("t", Kind::Dir, 0o755, (0, 0)),
                entry("t/F", file(6), 0o600, (1_600_000_000, 0)),
                entry("t/x", Kind::HardLink { first: 1 }, 0o600, (0, 0)),
            ],
        },
    );
    assert_eq!(answers[1], Answer::Landed, "{answers:?}");
    let mut out = Frame::Quick(1).encode();
    out.extend_from_slice(&Frame::Link(2).encode());
    out.extend_from_slice(&Frame::EndOfPass.encode());
    b.write_all(&out).unwrap();
    reports_of_the_pass(&mut b);
    drop(b);
    assert_eq!(std::fs::metadata(&snapshot).unwrap().nlink(), 3);
    // A's quick check now: t/x is the snapshot's file.
    let mut out = Frame::Quick(1).encode();
    out.extend_from_slice(&Frame::EndOfPass.encode());
    a.write_all(&out).unwrap();
    let verdict = reports_of_the_pass(&mut a)
        .into_iter()
        .find_map(|r| match r {
            Report::File {
                index: 1, status, ..
            } => Some(status),
            _ => None,
        });
    assert_eq!(
        verdict,
        Some(zcommon::FileStatus::Failed),
        "{}",
        rx.stderr()
    );
    drop(a);
    let m = std::fs::metadata(&snapshot).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "{}", rx.stderr());
    assert_eq!(m.mtime(), 1_600_000_000);
}
