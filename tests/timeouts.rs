//! zsend's `--timeout` is the longest it waits for the receiver to take a byte, not the longest
//! each system call may wait.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::*;

/// A receiver that accepts the transfer, then never reads again but keeps the connection open:
/// its address, and the connection once accepted.
fn silent_receiver() -> (String, mpsc::Receiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        zcommon::read_hello(&mut s).unwrap();
        s.write_all(&zcommon::Reply::Accept.encode()).unwrap();
        let _ = tx.send(s);
    });
    (addr, rx)
}

/// The issue: "a receiver that stops reading must not hold zsend 14 s with --timeout 3". It
/// held zsend 10 s with --timeout 2: three sendfile calls waiting four timeouts in all, then
/// 2 s waiting for a verdict.
#[test]
fn a_receiver_that_stops_reading_is_given_up_on_after_the_timeout() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("big.bin");
    random_file(&path, 256 << 20, 301);
    let (addr, accepted) = silent_receiver();
    let timeout = 2;
    let started = Instant::now();
    let out = zsend(&[
        &addr,
        path.to_str().unwrap(),
        "--timeout",
        &timeout.to_string(),
    ]);
    let took = started.elapsed();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("sending the payload: timed out"), "{err}");
    // A correctness bound from the issue (--timeout is the longest zsend waits with nothing
    // moving, plus 2 s for the receiver's last words), not a performance threshold.
    let bound = Duration::from_secs(2 * timeout + 2);
    assert!(
        took <= bound,
        "zsend took {took:?} with --timeout {timeout}: {err}"
    );
    // Held open until zsend was gone.
    drop(
        accepted
            .recv_timeout(PROCESS_TIMEOUT)
            .expect("the connection"),
    );
}
