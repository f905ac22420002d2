//! Resuming: an interrupted transfer keeps a hidden partial file, and sending the same file
//! again sends only the rest, unless the partial is not a prefix of what the sender has now.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::*;

/// Starts sending `path` to `rx` through a proxy, kills the sender once `at` payload bytes have
/// crossed, and waits for the receiver to report the interruption (after it kept the partial).
fn interrupt(rx: &Zrecv, path: &Path, at: u64) {
    let name = path.file_name().unwrap().to_str().unwrap();
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(payload_offset(name, at)));
    let mut sender = Command::new(zsend_bin())
        .args([&proxy.addr(), path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    proxy
        .stalled
        .recv_timeout(PROCESS_TIMEOUT)
        .expect("the transfer reached the kill point");
    sender.kill().unwrap();
    sender.wait().unwrap();
    // What the sender had already put in the socket still reaches the receiver.
    proxy.release();
    drop(proxy);
    let line = rx.wait_for_line(&format!("{name} from"));
    assert!(line.contains("sender closed after"), "{line}");
    let kept: Vec<String> = entries(&rx.dir)
        .into_iter()
        .filter(|e| is_kept_partial(e))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "a partial and its record: {:?}",
        entries(&rx.dir)
    );
}

/// Sends `path` to `rx` through a counting proxy with `--json`; returns the JSON and the bytes
/// that crossed from the sender.
fn send_counted(rx: &Zrecv, path: &Path) -> (serde_json::Value, u64) {
    let proxy = Proxy::start(rx.addr, Fault::None);
    let out = zsend(&[&proxy.addr(), path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (json, proxy.bytes_up())
}

/// How many of a kept partial's files (data and record) are in `dir`.
fn kept(dir: &Path) -> usize {
    entries(dir).iter().filter(|e| is_kept_partial(e)).count()
}

/// The path of the kept partial's data file in `dir`.
fn kept_part(dir: &Path) -> std::path::PathBuf {
    let name = entries(dir)
        .into_iter()
        .find(|e| is_kept_partial(e) && e.ends_with(".part"))
        .expect("a kept partial");
    dir.join(name)
}

#[test]
fn a_resent_file_sends_only_what_the_receiver_lacks() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("vm.img");
    let size: u64 = 64 << 20;
    random_file(&path, size, 101);
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt(&rx, &path, size / 2);

    let (json, up) = send_counted(&rx, &path);
    let resumed = json["resumed_from"].as_u64().unwrap();
    assert!(
        resumed >= size / 2 && resumed < size,
        "resumed from {resumed}"
    );
    assert_eq!(json["bytes_sent"].as_u64(), Some(size - resumed));
    assert!(
        up <= size * 55 / 100,
        "{up} bytes crossed for a {size}-byte file resumed from {resumed}"
    );
    assert_eq!(json["root"].as_str(), Some(root_file(&path).as_str()));
    assert_eq!(sha256_file(&dst.path().join("vm.img")), sha256_file(&path));
    // The partial became the file: nothing hidden is left.
    assert_eq!(entries(dst.path()), vec!["vm.img"]);
    let line = rx.wait_for_line("vm.img from");
    assert!(line.contains("resumed after"), "{line}");
}

#[test]
fn a_tampered_partial_is_detected_and_the_transfer_starts_over() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("t.img");
    let size: u64 = 16 << 20;
    random_file(&path, size, 102);
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt(&rx, &path, size / 2);
    let part = kept_part(dst.path());
    let f = std::fs::File::options().write(true).open(&part).unwrap();
    let mut byte = [0u8];
    std::fs::File::open(&part)
        .unwrap()
        .read_exact_at(&mut byte, 1000)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 0x80], 1000).unwrap();

    // The rest goes at once; the proof after it fails, and the whole file goes again.
    let (json, up) = send_counted(&rx, &path);
    assert_eq!(json["resumed_from"].as_u64(), Some(0));
    let sent = json["bytes_sent"].as_u64().unwrap();
    assert!(sent > size && sent <= size + size / 2, "{sent} bytes sent");
    assert!(up > sent, "the whole file crossed again: {up}");
    assert_eq!(sha256_file(&dst.path().join("t.img")), sha256_file(&path));
    assert_eq!(entries(dst.path()), vec!["t.img"]);
    rx.wait_for_line("differs from the sender's; taking it all again");
}

#[test]
fn a_partial_of_another_version_of_the_file_is_not_reused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let size: u64 = 16 << 20;
    type Change = fn(&Path);
    let touched: Change = |p| {
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(later).unwrap();
    };
    let grown: Change = |p| {
        let mut f = std::fs::File::options().append(true).open(p).unwrap();
        f.write_all(b"one more line\n").unwrap();
    };
    for (i, change) in [touched, grown].into_iter().enumerate() {
        let path = src.path().join(format!("v{i}.img"));
        random_file(&path, size, 103 + i as u64);
        interrupt(&rx, &path, size / 2);
        // The same bytes up front, but another mtime or size: another version of the file.
        change(&path);
        let (json, up) = send_counted(&rx, &path);
        assert_eq!(json["resumed_from"].as_u64(), Some(0), "change {i}");
        assert!(up > size, "change {i}: the whole file crossed again: {up}");
        assert_eq!(
            sha256_file(&dst.path().join(format!("v{i}.img"))),
            sha256_file(&path)
        );
        rx.wait_for_line("belongs to another version");
    }
    assert_eq!(entries(dst.path()), vec!["v0.img", "v1.img"]);
}

#[test]
fn a_sparse_file_resumes_too() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("sparse.img");
    let size: u64 = 256 << 20;
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let chunk = vec![0x5au8; 4 << 20];
    for at in [0, 40 << 20, 100 << 20, 180 << 20, size - (4 << 20)] {
        f.write_all_at(&chunk, at).unwrap();
    }
    drop(f);
    let rx = Zrecv::start(dst.path(), &[]);
    // Payload byte 6 MiB: inside the second data extent, records included.
    interrupt(&rx, &path, 6 << 20);

    let (json, _) = send_counted(&rx, &path);
    let resumed = json["resumed_from"].as_u64().unwrap();
    assert!(resumed > 40 << 20, "resumed from {resumed}");
    assert!(json["bytes_sent"].as_u64().unwrap() <= 16 << 20, "{json}");
    assert_eq!(
        sha256_file(&dst.path().join("sparse.img")),
        sha256_file(&path)
    );
    assert_eq!(entries(dst.path()), vec!["sparse.img"]);
}

/// A receiver that offers to resume from past the end of the file is a protocol error.
#[test]
fn a_resume_offer_past_the_end_is_refused_by_the_sender() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("small.bin");
    random_file(&path, 1000, 104);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = vec![0u8; 64];
        let _ = s.read(&mut hello);
        let offer = zcommon::Reply::Resume {
            offset: 1001,
            nonce: [7; 32],
        };
        s.write_all(&offer.encode()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, path.to_str().unwrap(), "--timeout", "10"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("resume offer at byte 1001 of 1000"), "{err}");
    fake.join().unwrap();
}

/// Holes cost no hashing: a 64 GiB image with two 1 MiB extents lands verified with a
/// receiver whose --timeout is 1 s (hashing 64 GiB of zeros would take a minute), and its
/// root is the one computed here from the source.
#[test]
fn a_huge_sparse_image_hashes_its_holes_for_free() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("holes.img");
    let size: u64 = 64 << 30;
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    f.write_all_at(&chunk, 5 << 30).unwrap();
    f.write_all_at(&chunk, size - (1 << 20) - 12345).unwrap();
    drop(f);
    let rx = Zrecv::start(dst.path(), &["--timeout", "1"]);
    let out = zsend(&[
        &rx.addr(),
        path.to_str().unwrap(),
        "--json",
        "--timeout",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["root"].as_str(), Some(root_file(&path).as_str()));
    let landed = std::fs::File::open(dst.path().join("holes.img")).unwrap();
    assert_eq!(landed.metadata().unwrap().len(), size);
    let mut tail = vec![0u8; 1 << 20];
    landed
        .read_exact_at(&mut tail, size - (1 << 20) - 12345)
        .unwrap();
    assert_eq!(tail, chunk);
}

/// The receiver's side of the rule, without a race between two hashing ends: a sender that
/// takes three times the receiver's --timeout to produce its proof, and says it is still there
/// meanwhile, is waited for; the same sender silent is given up on.
#[test]
fn keepalives_keep_a_resume_open_and_silence_ends_it() {
    use std::net::TcpStream;
    use zcommon::{Header, PrefixProof, Reply, Trailer, Verdict, KEEPALIVE};
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--timeout", "1"]);
    let content: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let hello = Header {
        source_id: Some([3; zcommon::SOURCE_ID_LEN]),
        mtime_sec: 1_700_000_000,
        ..Header::new("slow.bin", content.len() as u64)
    };
    let connect = || {
        let s = TcpStream::connect(rx.addr).unwrap();
        s.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
        s
    };
    // An interrupted first attempt leaves 1.5 MiB of the file.
    let mut s = connect();
    s.write_all(&hello.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    s.write_all(&content[..3 << 19]).unwrap();
    drop(s);
    rx.wait_for_line("slow.bin from");

    for silent in [true, false] {
        let mut s = connect();
        s.write_all(&hello.encode_hello()).unwrap();
        let Reply::Resume { offset, nonce } = Reply::read(&mut s).unwrap() else {
            panic!("no resume offer")
        };
        assert_eq!(offset, 1 << 20);
        if silent {
            // Nothing for longer than the receiver's --timeout: it gives up, keeping the partial.
            let line = rx.wait_for_line("slow.bin from");
            assert!(line.contains("timed out"), "{line}");
            continue;
        }
        // The rest goes at once; the proof comes after it: three seconds of "still here"
        // first (paced, not a lock), then the proof and the trailer.
        s.write_all(&content[offset as usize..]).unwrap();
        for _ in 0..10 {
            s.write_all(&KEEPALIVE).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let prefix = zcommon::tree_root(&content[..offset as usize]);
        let proof = zcommon::prefix_proof(&nonce, offset, &prefix);
        s.write_all(&PrefixProof(proof).encode()).unwrap();
        s.write_all(&Trailer::unsealed(Some(zcommon::tree_root(&content))).encode())
            .unwrap();
        let v = Verdict::read(&mut s).unwrap();
        assert_eq!(v.status, zcommon::Status::Landed, "{}", v.message);
    }
    assert_eq!(std::fs::read(dst.path().join("slow.bin")).unwrap(), content);
}

/// A receiver killed outright (SIGKILL, or the power going: nothing runs after) still leaves
/// its partial with a record: the next receiver on the directory takes it up for what it holds,
/// and the same command resumes.
#[test]
fn a_receiver_killed_outright_still_leaves_a_partial_to_resume_from() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("killed.img");
    let size = 64u64 << 20;
    random_file(&path, size, 61);
    let mut rx = Zrecv::start(dst.path(), &[]);
    let proxy = Proxy::start(
        rx.addr,
        Fault::PauseAt(payload_offset("killed.img", 24 << 20)),
    );
    let mut sender = spawn_zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    // Everything the proxy let through is in the file before the kill.
    wait_in_flight(dst.path(), &mut sender, |m| m.len() >= 16 << 20);
    rx.child.kill().unwrap();
    rx.child.wait().unwrap();
    sender.kill().unwrap();
    sender.wait().unwrap();
    proxy.release();
    drop(proxy);
    assert_eq!(kept(dst.path()), 2, "{:?}", entries(dst.path()));

    let rx = Zrecv::start(dst.path(), &[]);
    let (json, up) = send_counted(&rx, &path);
    let resumed = json["resumed_from"].as_u64().unwrap();
    assert!(resumed >= 16 << 20, "{json}");
    assert!(up < size - resumed + (1 << 20), "{up} bytes crossed");
    assert_eq!(
        sha256_file(&dst.path().join("killed.img")),
        sha256_file(&path)
    );
    assert_eq!(entries(dst.path()), vec!["killed.img"]);
}

fn zrecv_admin(dir: &Path, args: &[&str]) -> std::process::Output {
    run_bounded(Command::new(zrecv_bin()).arg("--dir").arg(dir).args(args))
}

/// The partials a directory keeps can be listed (name, what is held, space, age) and removed.
#[test]
fn kept_partials_are_listed_and_removed_on_request() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("listed.img");
    random_file(&path, 32 << 20, 62);
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt(&rx, &path, 8 << 20);
    drop(rx);

    let out = zrecv_admin(dst.path(), &["--list-partials"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(lines[0].starts_with("NAME "), "{listing}");
    assert!(lines[1].starts_with("listed.img "), "{listing}");
    assert!(lines[1].contains(" of 32.0 MiB "), "{listing}");

    let out = zrecv_admin(dst.path(), &["--list-partials", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "listed.img");
    assert_eq!(json["size"], 32u64 << 20);
    let held = json["held"].as_u64().unwrap();
    assert!((1..=32 << 20).contains(&held), "{json}");

    let out = zrecv_admin(dst.path(), &["--remove-partials"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("zrecv: removed the partial of listed.img ("),
        "{}",
        stderr_of(&out)
    );
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    let out = zrecv_admin(dst.path(), &["--list-partials"]);
    assert!(out.stdout.is_empty());
    assert!(stderr_of(&out).contains("no partials kept"));
}

/// A running transfer checkpoints what is durable every 256 MiB: its record then says how much
/// the partial holds (fdatasync first), so even a power loss leaves that much to resume from.
/// `--list-partials` shows it in flight, and `--remove-partials` leaves it alone.
#[test]
fn a_running_transfer_records_durable_checkpoints() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("large.img");
    random_file(&path, 320 << 20, 63);
    let rx = Zrecv::start(dst.path(), &[]);
    let proxy = Proxy::start(
        rx.addr,
        Fault::PauseAt(payload_offset("large.img", 300 << 20)),
    );
    let sender = spawn_zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    let record = entries(dst.path())
        .into_iter()
        .find(|e| e.ends_with(".resume"))
        .expect("the running transfer's record");
    let start = std::time::Instant::now();
    let held = loop {
        let text = std::fs::read_to_string(dst.path().join(&record)).unwrap_or_default();
        let held = text.lines().last().and_then(|l| l.strip_prefix("held "));
        if let Some(n) = held.and_then(|n| n.parse::<u64>().ok()) {
            break n;
        }
        assert!(start.elapsed() < PROCESS_TIMEOUT, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!((256 << 20..=300 << 20).contains(&held), "{held}");

    let out = zrecv_admin(dst.path(), &["--remove-partials"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("a transfer in flight holds it"),
        "{}",
        stderr_of(&out)
    );
    assert!(in_flight(dst.path()).iter().any(|e| e.ends_with(".part")));

    proxy.release();
    let out = wait_output(sender);
    assert!(out.status.success());
    drop(proxy);
    assert_eq!(
        sha256_file(&dst.path().join("large.img")),
        sha256_file(&path)
    );
    assert_eq!(entries(dst.path()), vec!["large.img"]);
}
