//! Files of every awkward size land complete, verified, with their mode and mtime.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime};

use crate::util::*;

/// Sends `size` random bytes to a `--once` receiver and checks everything the user relies on;
/// with `plain`, zsend is asked for the plain SHA-256 as well.
fn round_trip(size: u64, seed: u64, plain: bool) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join(format!("file-{size}.bin"));
    random_file(&path, size, seed);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let mut args = vec![
        rx.addr(),
        path.to_str().unwrap().to_owned(),
        "--json".into(),
    ];
    if plain {
        args.push("--sha256".into());
    }
    let out = zsend(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "size {size}: {}", stderr_of(&out));
    assert!(rx.wait().success(), "zrecv: {}", rx.stderr());

    let landed = dst.path().join(format!("file-{size}.bin"));
    let want = sha256_file(&path);
    assert_eq!(sha256_file(&landed), want, "size {size}");
    let meta = std::fs::metadata(&landed).unwrap();
    assert_eq!(meta.len(), size);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.modified().unwrap(), mtime);
    assert_eq!(entries(dst.path()), vec![format!("file-{size}.bin")]);

    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["verified"], true);
    assert_eq!(json["bytes"], size);
    assert_eq!(json["bytes_sent"], size);
    assert_eq!(json["version"], 2);
    assert_eq!(json["root"], root_file(&path).as_str(), "size {size}");
    if plain {
        assert_eq!(json["sha256"], want.as_str(), "size {size}");
    } else {
        assert_eq!(json["sha256"], serde_json::Value::Null, "size {size}");
    }
    assert_eq!(json["zero_copy"], true);
}

#[test]
fn awkward_sizes_round_trip() {
    for (i, size) in [0u64, 1, 4095, 4097, (1 << 20) + 1].into_iter().enumerate() {
        round_trip(size, i as u64, true);
    }
}

#[test]
fn sixty_four_mib_round_trips() {
    round_trip(64 << 20, 42, false);
}

/// Crosses sendfile's per-call cap of about 2 GiB and the 32-bit boundary. The source is sparse
/// with data at a few offsets, so it costs little disk on the sending side.
#[test]
fn file_larger_than_4_gib_round_trips() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("big.img");
    let size: u64 = (4 << 30) + 4097;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (i, at) in [0u64, (2 << 30) - 3, 0x7fff_f000, (4 << 30) - 1, size - 10]
            .into_iter()
            .enumerate()
        {
            f.write_all_at(format!("marker {i}").as_bytes(), at)
                .unwrap();
        }
    }
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    let landed = dst.path().join("big.img");
    assert_eq!(std::fs::metadata(&landed).unwrap().len(), size);
    assert_eq!(sha256_file(&landed), sha256_file(&path));
}

#[test]
fn no_verify_still_lands_complete() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("nv.bin");
    random_file(&path, 3 << 20, 7);
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--no-verify", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(sha256_file(&dst.path().join("nv.bin")), sha256_file(&path));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], false);
    assert_eq!(json["sha256"], serde_json::Value::Null);
    let line: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
    assert_eq!(line["ok"], true);
    assert_eq!(line["verified"], false);
    assert_eq!(line["name"], "nv.bin");
}

#[test]
fn receiver_json_line_describes_the_transfer() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("j.bin");
    random_file(&path, 12345, 3);
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--name", "renamed.bin"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    let line: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
    assert_eq!(line["version"], 2);
    assert_eq!(line["name"], "renamed.bin");
    assert_eq!(line["bytes"], 12345);
    assert_eq!(line["bytes_received"], 12345);
    assert_eq!(line["verified"], true);
    assert_eq!(line["root"], root_file(&path).as_str());
    assert!(line.get("sha256").is_none(), "{line}");
    assert!(dst.path().join("renamed.bin").exists());
}

#[test]
fn host_names_and_ipv6_addresses_work() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("h.bin");
    random_file(&path, 100_000, 5);

    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let by_name = format!("localhost:{}", rx.addr.port());
    let out = zsend(&[&by_name, path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success());
    assert_eq!(sha256_file(&dst.path().join("h.bin")), sha256_file(&path));

    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; the IPv6 half is not exercised");
        return;
    }
    let dst6 = tempfile::tempdir().unwrap();
    let mut rx6 = Zrecv::start_with(None, dst6.path(), "[::1]:0", &["--once"]);
    assert!(rx6.addr.is_ipv6());
    let out = zsend(&[&rx6.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx6.wait().success());
    assert_eq!(sha256_file(&dst6.path().join("h.bin")), sha256_file(&path));
}

#[test]
fn a_serving_receiver_handles_concurrent_senders() {
    concurrent_senders(&[], 6);
}

/// More senders at once than the receiver serves: the others wait for a slot, and every one
/// lands (none is turned away as busy).
#[test]
fn senders_beyond_max_transfers_wait_their_turn_and_all_land() {
    concurrent_senders(&["--max-transfers", "2"], 12);
}

fn concurrent_senders(receiver: &[&str], senders: u64) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), receiver);
    let paths: Vec<_> = (0..senders)
        .map(|i| {
            let p = src.path().join(format!("c{i}.bin"));
            random_file(&p, (1 << 20) * (i + 1), i);
            p
        })
        .collect();
    std::thread::scope(|s| {
        for p in &paths {
            let addr = rx.addr();
            s.spawn(move || {
                let out = zsend(&[&addr, p.to_str().unwrap()]);
                assert!(out.status.success(), "{}", stderr_of(&out));
            });
        }
    });
    for p in &paths {
        let landed = dst.path().join(p.file_name().unwrap());
        assert_eq!(sha256_file(&landed), sha256_file(p));
    }
    assert_eq!(entries(dst.path()).len(), paths.len());
}
