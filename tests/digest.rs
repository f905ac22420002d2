//! The verification digest is the BitTorrent v2 (BEP 52) per-file root: what zsend and zrecv
//! agree on equals what Debian's python3-libtorrent computes for the same file.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// The roots python3-libtorrent gives these files (hex), in order.
fn libtorrent_roots(paths: &[&Path]) -> Vec<String> {
    let script = r#"
import os, sys, libtorrent as lt
for p in sys.argv[1:]:
    fs = lt.file_storage()
    lt.add_files(fs, p)
    ct = lt.create_torrent(fs, 0, flags=lt.create_torrent.v2_only)
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(p)))
    print(str(lt.torrent_info(ct.generate()).files().root(0)))
"#;
    // Debian's module loads only with Debian's interpreter.
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .expect("/usr/bin/python3");
    assert!(out.status.success(), "{}", stderr_of(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn roots_agree_with_libtorrent() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (i, size) in [1u64, 16383, 16384, 16385, (1 << 20) + 1, 64 << 20]
        .into_iter()
        .enumerate()
    {
        let p = src.path().join(format!("f{size}.bin"));
        random_file(&p, size, 70 + i as u64);
        paths.push(p);
    }
    // A sparse image, and one past 4 GiB: data at odd places, holes between.
    for (name, size) in [("sparse.img", 96u64 << 20), ("big.img", (4 << 30) + 12345)] {
        let p = src.path().join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&[0x5a; 70_000], 3 << 20).unwrap();
        f.write_all_at(b"the end", size - 7).unwrap();
        paths.push(p);
    }
    let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let want = libtorrent_roots(&refs);
    assert_eq!(want.len(), paths.len());
    let rx = Zrecv::start(dst.path(), &[]);
    for (path, want) in paths.iter().zip(&want) {
        let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json["root"].as_str(),
            Some(want.as_str()),
            "{}",
            path.display()
        );
        assert_eq!(json["verified"], true);
        let line = rx.wait_for_line(&format!(
            "{} from",
            path.file_name().unwrap().to_str().unwrap()
        ));
        assert!(line.contains(&format!("root {want} verified")), "{line}");
    }
}

/// `--sha256` gives the plain digest `sha256sum` prints, beside the root.
#[test]
fn the_plain_sha256_is_there_for_who_asks() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("plain.bin");
    random_file(&path, (3 << 20) + 5, 91);
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--json", "--sha256"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["sha256"].as_str(), Some(sha256_file(&path).as_str()));
    assert_eq!(json["root"].as_str(), Some(root_file(&path).as_str()));
    assert_eq!(json["version"], 2);
    let out = zsend(&[
        &rx.addr(),
        path.to_str().unwrap(),
        "--name",
        "again.bin",
        "--sha256",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("sha256 {}", sha256_file(&path))),
        "{err}"
    );
}

/// `zsend --torrent` writes a v2 .torrent from the transfer's own hashing: libtorrent loads it,
/// finds the landed copy 100 % complete, and the copy with one byte changed incomplete.
#[test]
fn a_torrent_from_the_transfer_checks_the_landed_copy_with_libtorrent() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("seed.img");
    random_file(&path, (9 << 20) + 4321, 81);
    let torrent = src.path().join("seed.torrent");
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[
        &rx.addr(),
        path.to_str().unwrap(),
        "--torrent",
        torrent.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("wrote "), "{}", stderr_of(&out));
    let landed = dst.path().join("seed.img");
    let script = r#"
import sys, time, libtorrent as lt
ti = lt.torrent_info(sys.argv[1])
assert ti.info_hashes().has_v2() and not ti.info_hashes().has_v1()
print(str(ti.files().root(0)))
ses = lt.session({"enable_dht": False, "enable_lsd": False, "enable_upnp": False,
                  "enable_natpmp": False, "listen_interfaces": "127.0.0.1:0",
                  "alert_mask": lt.alert.category_t.status_notification})
h = ses.add_torrent({"ti": ti, "save_path": sys.argv[2]})
deadline = time.monotonic() + 60
checked = False
while not checked:
    assert time.monotonic() < deadline, "not checked within 60 s"
    ses.wait_for_alert(100)
    for a in ses.pop_alerts():
        if isinstance(a, lt.torrent_checked_alert) and a.handle == h:
            checked = True
st = lt.torrent_status
while h.status().state in (st.checking_files, st.checking_resume_data, st.queued_for_checking):
    assert time.monotonic() < deadline, "still checking after 60 s"
    time.sleep(0.05)
print(h.status().progress_ppm)
"#;
    let check = |dir: &Path| {
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(&torrent)
            .arg(dir)
            .output()
            .expect("/usr/bin/python3");
        assert!(out.status.success(), "{}", stderr_of(&out));
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        (lines[0].to_owned(), lines[1].parse::<u64>().unwrap())
    };
    let (root, ppm) = check(dst.path());
    assert_eq!(root, root_file(&path));
    assert_eq!(ppm, 1_000_000, "the landed copy is complete");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&landed)
        .unwrap();
    f.write_all_at(b"?", 5 << 20).unwrap();
    let (_, ppm) = check(dst.path());
    assert!(ppm < 1_000_000, "one changed byte: {ppm} ppm");
}
