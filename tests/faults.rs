//! Failures are loud and leave nothing under the final name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::util::*;

/// A file of one piece has nothing smaller to send again: a flipped byte fails it (larger
/// files are repaired: `update::a_flipped_byte_is_repaired_by_sending_its_piece_again`).
#[test]
fn a_flipped_payload_byte_fails_both_sides_and_publishes_nothing() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("flip.bin");
    random_file(&path, 900 << 10, 11);
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let proxy = Proxy::start(rx.addr, Fault::Flip(payload_offset("flip.bin", 300 << 10)));
    let out = zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("checksum mismatch: sent "), "{err}");
    assert!(
        err.contains(&format!("sent {}", root_file(&path))),
        "the sender names its root: {err}"
    );
    let mut flipped = std::fs::read(&path).unwrap();
    flipped[300 << 10] ^= 1;
    assert!(
        err.contains(&format!(
            "receiver wrote {}",
            hex::encode(zcommon::tree_root(&flipped))
        )),
        "the sender names the root of what the receiver wrote: {err}"
    );
    assert_eq!(rx.wait().code(), Some(5), "{}", rx.stderr());
    assert!(rx.stderr().contains("checksum mismatch"), "{}", rx.stderr());
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
}

#[test]
fn a_flipped_trailer_byte_is_caught_too() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("t.bin");
    let size = 100_000;
    random_file(&path, size, 12);
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    // The last byte of the trailer's digest.
    let at = payload_offset("t.bin", size) + zcommon::TRAILER_LEN as u64 - 1;
    let proxy = Proxy::start(rx.addr, Fault::Flip(at));
    let out = zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_of(&out));
    assert_eq!(rx.wait().code(), Some(5));
    assert!(entries(dst.path()).is_empty());
}

#[test]
fn existing_files_are_kept_unless_the_receiver_forces() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("a.img");
    random_file(&path, 70_000, 1);
    std::fs::write(dst.path().join("a.img"), b"precious").unwrap();

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("receiver refused a.img: file exists (use --force on the receiver)"),
        "{err}"
    );
    assert_eq!(rx.wait().code(), Some(4));
    assert_eq!(
        std::fs::read(dst.path().join("a.img")).unwrap(),
        b"precious"
    );
    assert_eq!(entries(dst.path()), vec!["a.img"]);

    let mut rx = Zrecv::start(dst.path(), &["--once", "--force"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(sha256_file(&dst.path().join("a.img")), sha256_file(&path));
}

#[test]
fn bad_names_are_refused_by_the_sender() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("x");
    std::fs::write(&path, b"x").unwrap();
    let port = closed_port().to_string();
    for bad in [
        "../evil",
        "a/b",
        "..",
        ".",
        "",
        "bell\u{7}",
        ".zrecv-1.part",
    ] {
        let out = zsend(&[&port, path.to_str().unwrap(), "--name", bad]);
        // A usage error: refused before anything is opened or connected.
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("name"), "{}", stderr_of(&out));
        assert!(
            !stderr_of(&out).contains('\u{7}'),
            "control characters are escaped"
        );
    }
}

#[test]
fn a_closed_port_says_connection_refused() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("x");
    std::fs::write(&path, b"x").unwrap();
    let addr = closed_port();
    let out = zsend(&[&addr.to_string(), path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr_of(&out);
    assert_eq!(
        err.trim(),
        format!("zsend: connecting to {addr}: connection refused")
    );
}

#[test]
fn a_missing_source_is_a_local_error() {
    let out = zsend(&[&closed_port().to_string(), "/nonexistent/file.img"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("/nonexistent/file.img: no such file or directory"));
    // A fifo is neither a file nor a directory.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = zsend(&[&closed_port().to_string(), fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("not a regular file"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn killing_the_sender_mid_transfer_leaves_nothing_and_the_receiver_serves_on() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("k.bin");
    random_file(&path, 32 << 20, 13);
    let rx = Zrecv::start(dst.path(), &[]);
    let proxy = Proxy::start(
        rx.addr,
        Fault::StallAfter(payload_offset("k.bin", 10 << 20)),
    );
    let mut sender = Command::new(zsend_bin())
        .args([&proxy.addr(), path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    proxy
        .stalled
        .recv_timeout(PROCESS_TIMEOUT)
        .expect("the transfer reached the stall point");
    // Only the hidden temporary file exists mid-transfer.
    assert!(entries(dst.path()).iter().all(|e| e.starts_with(".zrecv-")));
    sender.kill().unwrap();
    sender.wait().unwrap();
    drop(proxy);
    let line = rx.wait_for_line("k.bin from");
    assert!(
        line.contains("sender closed after 10.0 MiB of 32.0 MiB"),
        "{line}"
    );
    // Nothing under a visible name; the partial is kept, hidden, for resuming.
    assert!(visible(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    assert!(entries(dst.path()).iter().all(|e| is_kept_partial(e)));

    // The same receiver lands the next transfer, and the partial is gone.
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(sha256_file(&dst.path().join("k.bin")), sha256_file(&path));
    assert_eq!(entries(dst.path()), vec!["k.bin"]);
}

/// A stalled transfer holding the one slot of a `--max-transfers 1` receiver: returns the
/// receiver, the stalled sender, the proxy holding it, and the file.
fn one_slot_held(src: &Path, dst: &Path, extra: &[&str]) -> (Zrecv, Child, Proxy, PathBuf) {
    let path = src.join("first.bin");
    random_file(&path, 8 << 20, 21);
    let mut args = vec!["--max-transfers", "1"];
    args.extend(extra);
    let rx = Zrecv::start(dst, &args);
    let proxy = Proxy::start(
        rx.addr,
        Fault::StallAfter(payload_offset("first.bin", 1 << 20)),
    );
    let first = spawn_zsend(&[&proxy.addr(), path.to_str().unwrap()]);
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    (rx, first, proxy, path)
}

#[test]
fn a_sender_over_the_cap_waits_for_a_free_slot_and_lands() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (rx, mut first, proxy, path) = one_slot_held(src.path(), dst.path(), &[]);
    // A sender gives up on a receiver silent for its timeout (2 s here): the one waiting for a
    // slot keeps it told.
    let second = Command::new(zsend_bin())
        .args([&rx.addr(), path.to_str().unwrap(), "--name", "second.bin"])
        .args(["--timeout", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    rx.wait_for_line("waiting for a free slot (1 transfers running)");
    // Longer than the sender would wait in silence (not a lock: the wait is the subject).
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The slot comes free: the waiting sender gets it.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(proxy);
    let out = wait_output(second);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(visible(dst.path()), vec!["second.bin"]);
    assert_eq!(
        sha256_file(&dst.path().join("second.bin")),
        sha256_file(&path)
    );
}

#[test]
fn a_sender_that_waits_past_slot_wait_is_refused_as_busy() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (rx, mut first, proxy, path) = one_slot_held(src.path(), dst.path(), &["--slot-wait", "1"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--name", "second.bin"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("receiver refused second.bin: busy: the receiver is serving 1 transfers (no slot came free in 1 s)"),
        "{err}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    drop(proxy);
    rx.wait_for_line("first.bin from");
    // The slot is free again.
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--name", "third.bin"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(visible(dst.path()), vec!["third.bin"]);
}

#[test]
fn a_source_that_changes_while_sent_is_reported_and_discarded() {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("live.img");
    random_file(&path, 16 << 20, 41);
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(payload_offset("live.img", 4 << 20)));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    // Someone writes into the file while it is on the wire.
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.write_all_at(b"changed", 10 << 20).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    proxy.release();
    let out = wait_output(sender);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("source changed during transfer; the receiver discarded it"),
        "{err}"
    );
    assert_eq!(rx.wait().code(), Some(5));
    assert!(
        rx.stderr()
            .contains("the sender abandoned it and it was discarded"),
        "{}",
        rx.stderr()
    );
    // Discarded means discarded: no partial kept, no record.
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
}

#[test]
fn two_senders_of_one_name_never_interleave() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let first = src.path().join("first.img");
    let second = src.path().join("second.img");
    random_file(&first, 8 << 20, 51);
    random_file(&second, 8 << 20, 52);
    let rx = Zrecv::start(dst.path(), &[]);
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(payload_offset("same.img", 2 << 20)));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), first.to_str().unwrap(), "--name", "same.img"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    let out = zsend(&[&rx.addr(), second.to_str().unwrap(), "--name", "same.img"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("is being received from another sender"),
        "{err}"
    );
    proxy.release();
    let out = wait_output(sender);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        sha256_file(&dst.path().join("same.img")),
        sha256_file(&first)
    );
    assert_eq!(entries(dst.path()), vec!["same.img"]);
}

#[test]
fn thirty_two_concurrent_senders_all_land_verified() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--max-transfers", "32"]);
    let paths: Vec<_> = (0..32u64)
        .map(|i| {
            let p = src.path().join(format!("n{i}.bin"));
            random_file(&p, 256 * 1024 + i * 4099, i);
            p
        })
        .collect();
    std::thread::scope(|s| {
        for p in &paths {
            let addr = rx.addr();
            s.spawn(move || {
                let out = zsend(&[&addr, p.to_str().unwrap(), "--json"]);
                assert!(out.status.success(), "{}", stderr_of(&out));
                let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(j["verified"], true);
            });
        }
    });
    for p in &paths {
        assert_eq!(
            sha256_file(&dst.path().join(p.file_name().unwrap())),
            sha256_file(p)
        );
    }
    assert_eq!(entries(dst.path()).len(), 32);
}

/// Open descriptors and resident memory of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (fds, rss)
}

#[test]
fn descriptors_and_memory_do_not_grow_with_transfers_served() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("small.bin");
    random_file(&path, 64 * 1024, 61);
    let rx = Zrecv::start(dst.path(), &[]);
    let pid = rx.child.id();
    let send = |i: usize| {
        let name = format!("f{i}");
        let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--name", &name, "-q"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        // The transfer is over for zrecv once it logged it.
        rx.wait_for_line(&format!("received {name} from"));
    };
    for i in 0..5 {
        send(i);
    }
    let (fds, rss) = fds_and_rss(pid);
    for i in 5..200 {
        send(i);
    }
    let (fds_after, rss_after) = fds_and_rss(pid);
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(
        rss_after <= rss + 1024,
        "RSS grew from {rss} KiB to {rss_after} KiB"
    );
    assert_eq!(entries(dst.path()).len(), 200);
}

/// SIGKILL the receiver at spread-out points of a transfer: the final name holds nothing or
/// the complete verified file, never anything else.
#[test]
fn killing_the_receiver_never_leaves_a_partial_file_under_the_final_name() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("k.img");
    random_file(&path, 24 << 20, 71);
    let want = sha256_file(&path);
    for delay_ms in [0u64, 5, 20, 60, 150, 400] {
        let dst = tempfile::tempdir().unwrap();
        let mut rx = Zrecv::start(dst.path(), &["--once"]);
        let sender = Command::new(zsend_bin())
            .args([&rx.addr(), path.to_str().unwrap(), "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill point, not a synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        rx.child.kill().unwrap();
        rx.wait();
        let out = wait_output(sender);
        let landed = dst.path().join("k.img");
        if landed.exists() {
            assert_eq!(sha256_file(&landed), want, "kill after {delay_ms} ms");
        } else {
            assert!(
                !out.status.success(),
                "zsend claimed success with nothing landed"
            );
        }
    }
}

/// A network that stops delivering: both sides give up after --timeout and nothing lands.
#[test]
fn a_stalled_connection_times_out_on_both_sides() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("stall.bin");
    random_file(&path, 64 << 20, 91);
    let mut rx = Zrecv::start(dst.path(), &["--once", "--timeout", "2"]);
    let proxy = Proxy::start(
        rx.addr,
        Fault::PauseAt(payload_offset("stall.bin", 1 << 20)),
    );
    let out = zsend(&[&proxy.addr(), path.to_str().unwrap(), "--timeout", "2"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert_eq!(rx.wait().code(), Some(3), "{}", rx.stderr());
    assert!(rx.stderr().contains("timed out"), "{}", rx.stderr());
    assert!(visible(dst.path()).is_empty(), "{:?}", entries(dst.path()));
    proxy.release();
}

/// SIGKILL the sender at spread-out points: the final name holds nothing or the complete
/// verified file, and the receiver keeps serving.
#[test]
fn killing_the_sender_at_any_point_never_publishes_a_partial_file() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("s.img");
    random_file(&path, 24 << 20, 92);
    let want = sha256_file(&path);
    let rx = Zrecv::start(dst.path(), &[]);
    for (i, delay_ms) in [0u64, 5, 20, 60, 150, 400].into_iter().enumerate() {
        let name = format!("s{i}.img");
        let mut sender = Command::new(zsend_bin())
            .args([&rx.addr(), path.to_str().unwrap(), "--name", &name, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill point, not a synchronisation.
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = sender.kill();
        let status = sender.wait().unwrap();
        let landed = dst.path().join(&name);
        if status.success() {
            assert_eq!(sha256_file(&landed), want);
        } else if landed.exists() {
            // Killed after the verdict was sent: the file is complete and verified.
            assert_eq!(sha256_file(&landed), want, "kill after {delay_ms} ms");
        }
    }
    // Nothing half-written under any name, and the receiver still serves.
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--name", "after.img"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // The receiver notices each killed sender at once (EOF) and removes its temporary file, or
    // keeps it under a partial's name for resuming.
    let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
    while !in_flight(dst.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            entries(dst.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for e in visible(dst.path()) {
        assert_eq!(sha256_file(&dst.path().join(&e)), want, "{e}");
    }
}

/// A symlink planted at the final name is never followed: without --force the name is taken,
/// with --force the link itself is replaced, and its target outside the directory is untouched.
#[test]
fn a_symlink_at_the_final_name_is_never_followed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("victim");
    std::fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, dst.path().join("link.img")).unwrap();
    let path = src.path().join("link.img");
    random_file(&path, 100_000, 93);

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("file exists"));
    rx.wait();
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");

    let mut rx = Zrecv::start(dst.path(), &["--once", "--force"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    let landed = dst.path().join("link.img");
    assert!(!landed.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(sha256_file(&landed), sha256_file(&path));
}

/// What a killed receiver leaves behind, and partials kept for resuming that nobody resumed,
/// are removed by the next receiver once they are a day old; younger ones may belong to a
/// receiver still running or wait to be resumed, and are kept.
#[test]
fn stale_temporary_files_are_removed_at_start() {
    let dst = tempfile::tempdir().unwrap();
    let old = dst.path().join(".zrecv-1-0-00000000.part");
    let key = "0123456789abcdef0123456789abcdef";
    let old_part = dst.path().join(format!(".zrecv-{key}.part"));
    let old_record = dst.path().join(format!(".zrecv-{key}.resume"));
    let young = dst.path().join(".zrecv-2-0-00000000.part");
    let other = dst.path().join("keep.part");
    for p in [&old, &old_part, &old_record, &young, &other] {
        std::fs::write(p, b"partial").unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    for p in [&old, &old_part, &old_record, &other] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
    }
    let rx = Zrecv::start(dst.path(), &[]);
    rx.wait_for_line("removed 3 stale temporary file");
    assert!(!old.exists() && !old_part.exists() && !old_record.exists());
    assert!(young.exists() && other.exists());
}

/// Ctrl-C, then the same command at once: the receiver has not quite let go of the name (it
/// is keeping the partial), and used to refuse the new sender as busy. It now waits for the
/// closing connection to let go, and the new sender resumes.
#[test]
fn sending_again_right_after_an_interruption_resumes() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("again.img");
    let size: u64 = 256 << 20;
    random_file(&path, size, 111);
    for round in 0..3 {
        let dst = tempfile::tempdir().unwrap();
        let rx = Zrecv::start(dst.path(), &[]);
        // Held up after 64 MiB (a loopback transfer of 256 MiB is over before a poll sees it),
        // and interrupted once the receiver holds a good part of the file.
        let proxy = Proxy::start(
            rx.addr,
            Fault::PauseAt(payload_offset("again.img", 64 << 20)),
        );
        let mut sender = spawn_zsend(&[&proxy.addr(), path.to_str().unwrap()]);
        proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
        wait_in_flight(dst.path(), &mut sender, |m| m.len() >= 16 << 20);
        let _ = Command::new("kill")
            .args(["-INT", &sender.id().to_string()])
            .status();
        sender.wait().unwrap();
        proxy.release();
        drop(proxy);
        rx.wait_for_line("again.img from");
        let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--json"]);
        let err = stderr_of(&out);
        assert!(out.status.success(), "round {round}: {err}");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            j["resumed_from"].as_u64().unwrap() > 0,
            "round {round}: {j}"
        );
        assert_eq!(
            sha256_file(&dst.path().join("again.img")),
            sha256_file(&path)
        );
    }
}
