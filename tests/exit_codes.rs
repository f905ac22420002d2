//! Every exit code docs/USAGE.md documents, from a real run of each program that earns it: the
//! same failure gives the same code in zsend and in `zrecv --once`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;

use zcommon::{read_hello, Reply, Verdict};

use crate::util::*;

/// A file of `size` random bytes named `name` in `dir`.
fn file(dir: &Path, name: &str, size: u64, seed: u64) -> String {
    let path = dir.join(name);
    random_file(&path, size, seed);
    path.to_str().unwrap().to_owned()
}

/// zsend's code, and `zrecv --once`'s for the same transfer where it serves one.
struct Case {
    code: u8,
    zsend: Output,
    zrecv: Option<i32>,
}

fn once(dst: &Path, args: &[&str], send: impl FnOnce(&str) -> Output) -> (Output, Option<i32>) {
    let mut all = vec!["--once"];
    all.extend(args);
    let mut rx = Zrecv::start(dst, &all);
    let out = send(&rx.addr());
    (out, rx.wait().code())
}

fn cases() -> Vec<Case> {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let mut cases = Vec::new();
    let mut case =
        |code: u8, (zsend, zrecv): (Output, Option<i32>)| cases.push(Case { code, zsend, zrecv });

    // 0: landed and verified.
    let dst = tempfile::tempdir().unwrap();
    let ok = file(s, "ok.img", 1 << 20, 1);
    case(0, once(dst.path(), &[], |a| zsend(&[a, &ok])));

    // 1: a local error (the source is missing).
    case(1, (zsend(&["127.0.0.1:7350", "/nonexistent/x.img"]), None));

    // 2: the command line.
    case(2, (zsend(&["127.0.0.1:70000", &ok]), None));

    // 3: the network (nothing listens).
    case(3, (zsend(&[&closed_port().to_string(), &ok]), None));

    // 4: refused (the name exists with other content).
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("taken.img"), b"not this").unwrap();
    let taken = file(s, "taken.img", 1 << 20, 4);
    case(4, once(other.path(), &[], |a| zsend(&[a, &taken])));

    // 5: verification failed (a byte flipped on the way, in a file of one piece: a larger
    // one would be repaired).
    let dst = tempfile::tempdir().unwrap();
    let flip = file(s, "flip.img", 1 << 20, 5);
    case(
        5,
        once(dst.path(), &[], |a| {
            let proxy = Proxy::start(
                a.parse().unwrap(),
                Fault::Flip(payload_offset("flip.img", 1 << 19)),
            );
            zsend(&[&proxy.addr(), &flip])
        }),
    );

    // 6: the peer broke the protocol (an HTTP server; a sender of an HTTP request).
    let (addr, peer) = fake_peer(|mut s| {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    });
    let sent = zsend(&[&addr, &ok]);
    peer.join().unwrap();
    let dst = tempfile::tempdir().unwrap();
    case(
        6,
        once(dst.path(), &[], move |a| {
            let mut c = std::net::TcpStream::connect(a).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut reply = Vec::new();
            let _ = c.read_to_end(&mut reply);
            sent
        }),
    );

    // 7: the receiver could not land the file.
    let (addr, peer) = fake_peer(|mut s| {
        let h = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        let mut rest = vec![0u8; h.size as usize + zcommon::TRAILER_LEN];
        s.read_exact(&mut rest).unwrap();
        s.write_all(&Verdict::failed("renaming: no space left on device").encode())
            .unwrap();
    });
    let out = zsend(&[&addr, &ok]);
    peer.join().unwrap();
    case(7, (out, None));

    // 8: authentication (different tokens).
    let tokens = tempfile::tempdir().unwrap();
    let (a, b) = (tokens.path().join("a"), tokens.path().join("b"));
    std::fs::write(&a, "the receiver's secret").unwrap();
    std::fs::write(&b, "another secret").unwrap();
    let dst = tempfile::tempdir().unwrap();
    case(
        8,
        once(dst.path(), &["--token-file", a.to_str().unwrap()], |addr| {
            zsend(&["--token-file", b.to_str().unwrap(), addr, &ok])
        }),
    );

    // 9: some files of a tree did not land (one name is taken by other content).
    let top = s.join("tree");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("new.txt"), b"new").unwrap();
    std::fs::write(top.join("taken.txt"), b"ours").unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::create_dir(dst.path().join("tree")).unwrap();
    std::fs::write(dst.path().join("tree/taken.txt"), b"theirs, longer").unwrap();
    let top = top.to_str().unwrap().to_owned();
    case(9, once(dst.path(), &[], |a| zsend(&[a, &top])));

    // 130: interrupted (Ctrl-C) while the receiver holds the payload back.
    let big = file(s, "big.img", 64 << 20, 130);
    let out = zsend_interrupted(&[], &big);
    case(130, (out, None));
    cases
}

#[test]
fn every_documented_exit_code_comes_from_a_real_run() {
    let usage =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/USAGE.md"))
            .unwrap();
    // The rows of the exit-code table: `| 4 | ...` or `| 130, 143 | ...`.
    let documented: Vec<u8> = usage
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .filter_map(|c| c.split(',').next()?.trim().parse().ok())
        .collect();
    let cases = cases();
    for code in &documented {
        assert!(
            cases.iter().any(|c| c.code == *code),
            "exit code {code} is documented but no case earns it"
        );
    }
    for c in &cases {
        assert!(
            documented.contains(&c.code),
            "exit code {} is not documented",
            c.code
        );
        assert_eq!(
            c.zsend.status.code(),
            Some(c.code as i32),
            "zsend for {}: {}",
            c.code,
            stderr_of(&c.zsend)
        );
        if let Some(zrecv) = c.zrecv {
            assert_eq!(zrecv, c.code as i32, "zrecv --once for {}", c.code);
        }
    }
}
