//! Stopping zrecv with SIGTERM or SIGINT (what `systemctl stop` and `restart` do) keeps every
//! transfer in flight resumable.

use std::process::{Command, Stdio};

use crate::util::*;

/// Sends `signal` (`TERM`, `INT`) to `pid`.
fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Starts zrecv with `args`, sends it a 32 MiB file through a proxy that pauses after 8 MiB of
/// payload, sends zrecv `signal` there, and checks that it exits with `code` leaving the kept
/// pair; then a new zrecv on the same directory lands the same file, resumed.
fn stop_mid_transfer(signal: &str, args: &[&str], code: i32) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("big.img");
    random_file(&path, 32 << 20, 17);
    let mut rx = Zrecv::start(dst.path(), args);
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(payload_offset("big.img", 8 << 20)));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy
        .stalled
        .recv_timeout(PROCESS_TIMEOUT)
        .expect("the transfer reached the pause");

    kill(rx.child.id(), signal);
    let status = rx.wait();
    let log = rx.stderr();
    assert_eq!(status.code(), Some(code), "{log}");
    assert!(
        log.contains(&format!(
            "stopping on SIG{signal}: 1 transfer(s) interrupted; their partials are kept"
        )),
        "{log}"
    );
    assert!(
        log.contains("big.img from"),
        "the transfer was reported: {log}"
    );
    let kept = entries(dst.path());
    assert_eq!(kept.len(), 2, "{kept:?}\n{log}");
    assert!(kept.iter().all(|e| is_kept_partial(e)), "{kept:?}");
    assert!(
        kept.iter().any(|e| e.ends_with(".resume")),
        "the resume record is there: {kept:?}"
    );

    // The old sender gives up once the proxy lets it on to a receiver that is gone.
    proxy.release();
    drop(proxy);
    let out = wait_output(sender);
    assert!(!out.status.success(), "{}", stderr_of(&out));

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resumed = report["resumed_from"].as_u64().unwrap();
    assert!(resumed > 0, "{report}");
    assert!(resumed <= 8 << 20, "{report}");
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert_eq!(sha256_file(&dst.path().join("big.img")), sha256_file(&path));
    assert_eq!(entries(dst.path()), vec!["big.img"]);
}

#[test]
fn sigterm_keeps_the_partial_of_a_transfer_in_flight_and_exits_0() {
    stop_mid_transfer("TERM", &[], 0);
}

/// With --once the exit status is the interrupted transfer's: a network interruption.
#[test]
fn sigint_stops_a_once_receiver_with_the_interrupted_transfers_status() {
    stop_mid_transfer("INT", &["--once"], 3);
}

/// With nothing in flight, a stop is immediate and clean.
#[test]
fn sigterm_with_no_transfer_in_flight_exits_0() {
    let dst = tempfile::tempdir().unwrap();
    for args in [&[][..], &["--once"][..]] {
        let mut rx = Zrecv::start(dst.path(), args);
        kill(rx.child.id(), "TERM");
        let status = rx.wait();
        assert_eq!(status.code(), Some(0), "{args:?}: {}", rx.stderr());
        assert!(
            rx.stderr()
                .contains("stopping on SIGTERM: no transfers in flight"),
            "{}",
            rx.stderr()
        );
    }
    assert!(entries(dst.path()).is_empty());
}
