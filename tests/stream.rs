//! Streams: standard input into zsend (its size unknown up front), and zrecv --stdout feeding
//! another program; both still verified by SHA-256.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::*;

#[test]
fn standard_input_is_sent_as_a_stream_from_a_pipe_and_from_a_file() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("data.bin");
    random_file(&path, (9 << 20) + 123, 101);
    let data = std::fs::read(&path).unwrap();

    // From a pipe, written by this process.
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let mut child = Command::new(zsend_bin())
        .args([&rx.addr(), "-", "--name", "piped.bin", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = wait_output(child);
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert_eq!(
        sha256_file(&dst.path().join("piped.bin")),
        sha256_file(&path)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bytes"], (9u64 << 20) + 123);
    assert_eq!(json["verified"], true);
    assert_eq!(json["zero_copy"], true, "spliced from the pipe");
    let line: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
    assert_eq!(
        line["bytes"],
        (9u64 << 20) + 123,
        "the receiver learns the size at the end"
    );

    // From a file redirected to standard input.
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let child = Command::new(zsend_bin())
        .args([&rx.addr(), "-", "--name", "redirected.bin"])
        .stdin(File::open(&path).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(
        sha256_file(&dst.path().join("redirected.bin")),
        sha256_file(&path)
    );
}

#[test]
fn a_stream_needs_a_name() {
    let out = zsend(&[&closed_port().to_string(), "-"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a usage error: {}",
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains("give --name NAME"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn zrecv_stdout_feeds_another_program_and_still_verifies() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("feed.bin");
    random_file(&path, 6 << 20, 102);
    // A dense file, a sparse one, and a stream.
    let sparse = src.path().join("sparse.bin");
    {
        use std::os::unix::fs::FileExt;
        let f = File::create(&sparse).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&std::fs::read(&path).unwrap()[..1 << 20], 3 << 20)
            .unwrap();
    }
    for (file, via_stdin) in [(&path, false), (&sparse, false), (&path, true)] {
        let mut rx = Zrecv::start(dst.path(), &["--once", "--stdout"]);
        let delivered = rx.collect_stdout();
        let out = if via_stdin {
            let child = Command::new(zsend_bin())
                .args([&rx.addr(), "-", "--name", "s.bin"])
                .stdin(File::open(file).unwrap())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            wait_output(child)
        } else {
            zsend(&[&rx.addr(), file.to_str().unwrap()])
        };
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(rx.wait().success(), "{}", rx.stderr());
        assert_eq!(delivered.join().unwrap(), std::fs::read(file).unwrap());
    }
    assert!(entries(dst.path()).is_empty(), "nothing written to disk");
}

#[test]
fn zrecv_stdout_exits_non_zero_on_a_mismatch() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("bad.bin");
    random_file(&path, 2 << 20, 103);
    let mut rx = Zrecv::start(dst.path(), &["--once", "--stdout"]);
    let delivered = rx.collect_stdout();
    let at = (zcommon::PREAMBLE_LEN + zcommon::HEADER_FIXED_LEN + "bad.bin".len()) as u64 + 1000;
    let proxy = Proxy::start(rx.addr, Fault::Flip(at));
    let out = zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert_eq!(rx.wait().code(), Some(5), "{}", rx.stderr());
    assert_eq!(
        delivered.join().unwrap().len(),
        2 << 20,
        "the bytes went out; the status says"
    );
}

/// Standard input on a terminal, past one 16 KiB leaf (below one leaf, a root is the plain
/// SHA-256 of the bytes, and a wrong digest would go unseen), lands verified. Linux 6.5 and later
/// splice from a terminal; before, zsend reads, hashes and writes it itself (that path's root:
/// `send::stream::tests::the_buffered_pump_sends_records_and_hashes_the_root`).
#[test]
fn a_stream_typed_on_a_terminal_lands_verified() {
    // Types a file into a terminal (echo off) that is the command's standard input, then ^D.
    const TYPIST: &str = r#"
import os, sys, termios, subprocess
master, slave = os.openpty()
attrs = termios.tcgetattr(slave)
attrs[3] &= ~termios.ECHO
termios.tcsetattr(slave, termios.TCSANOW, attrs)
child = subprocess.Popen(sys.argv[2:], stdin=slave)
os.close(slave)
data = open(sys.argv[1], 'rb').read()
for i in range(0, len(data), 1024):
    os.write(master, data[i:i + 1024])
os.write(master, b'\x04')
sys.exit(child.wait())
"#;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let text: String = (0..600)
        .map(|i| format!("line {i:04} of what was typed here\n"))
        .collect();
    assert!(text.len() > 16 << 10);
    let input = src.path().join("typed");
    std::fs::write(&input, &text).unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = run_bounded(
        Command::new("/usr/bin/python3")
            .args(["-c", TYPIST, input.to_str().unwrap(), zsend_bin()])
            .args([rx.addr().as_str(), "-", "--name", "typed.txt"]),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert_eq!(
        std::fs::read_to_string(dst.path().join("typed.txt")).unwrap(),
        text
    );
    assert!(rx.stderr().contains("verified"), "{}", rx.stderr());
}
