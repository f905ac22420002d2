//! Sending only what changed: an image the receiver holds (zrecv --force) is updated piece by
//! piece, beside the old one or in place through a journal that survives a receiver killed at
//! any step; a byte flipped on the way is repaired by sending its piece again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::util::*;

const MIB: u64 = 1 << 20;

/// Rewrites `len` bytes at each offset with a pattern of its own.
fn rewrite(path: &Path, at: &[u64], len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for (i, &off) in at.iter().enumerate() {
        f.write_all_at(&vec![0xA5 ^ i as u8; len], off).unwrap();
    }
}

/// Sends `path` with `--json` (and `extra`), asserting it landed; returns the JSON.
fn send_json(addr: &str, path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![addr, path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = zsend(&args);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr_of(&out)));
    assert!(out.status.success(), "{json}\n{}", stderr_of(&out));
    assert_eq!(json["root"], root_file(path), "{json}");
    json
}

/// Hidden files left in `dir` other than the piece layers a receiver keeps.
fn leftovers(dir: &Path) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with(".zrecv-") && !n.ends_with(".pieces"))
        .collect()
}

#[test]
fn an_image_changed_in_a_few_blocks_sends_only_those_pieces() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("disk.img");
    random_file(&path, 16 * MIB, 71);
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let first = send_json(&rx.addr(), &path, &[]);
    assert_eq!(first["update"], serde_json::Value::Null, "{first}");
    // Three 4 KiB blocks in three pieces, one of them straddling two.
    rewrite(&path, &[5000, 3 * MIB + 100, 9 * MIB - 2048], 4096);
    let json = send_json(&rx.addr(), &path, &[]);
    assert_eq!(json["update"]["mode"], "atomic", "{json}");
    assert_eq!(json["update"]["pieces"], 16, "{json}");
    assert_eq!(json["update"]["sent"], 4, "{json}");
    assert_eq!(json["bytes_sent"], 4 * MIB, "{json}");
    assert_eq!(
        sha256_file(&dst.path().join("disk.img")),
        sha256_file(&path)
    );
    rx.wait_for_line("4 of 16 pieces differed");
    assert!(
        leftovers(dst.path()).is_empty(),
        "{:?}",
        entries(dst.path())
    );
    // The receiver kept the layer of what it landed: nothing of its copy was read back.
    assert!(
        !rx.stderr().contains("hashing the copy here"),
        "{}",
        rx.stderr()
    );
    // Without it (a copy put there by hand, say), it hashes its copy first.
    for e in entries(dst.path())
        .iter()
        .filter(|n| n.ends_with(".pieces"))
    {
        std::fs::remove_file(dst.path().join(e)).unwrap();
    }
    rewrite(&path, &[MIB], 4096);
    let json = send_json(&rx.addr(), &path, &[]);
    assert_eq!(json["update"]["sent"], 1, "{json}");
    rx.wait_for_line("disk.img: hashing the copy here");
    assert_eq!(
        sha256_file(&dst.path().join("disk.img")),
        sha256_file(&path)
    );
}

#[test]
fn an_unchanged_image_sends_nothing_and_takes_the_new_mtime() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("same.img");
    random_file(&path, 5 * MIB + 777, 72);
    let rx = Zrecv::start(dst.path(), &["--force"]);
    send_json(&rx.addr(), &path, &[]);
    let landed = dst.path().join("same.img");
    let ino = std::fs::metadata(&landed).unwrap().ino();
    let mtime = filetime(&path, 1_600_000_000);
    let json = send_json(&rx.addr(), &path, &[]);
    assert_eq!(json["update"]["sent"], 0, "{json}");
    assert_eq!(json["bytes_sent"], 0, "{json}");
    let meta = std::fs::metadata(&landed).unwrap();
    assert_eq!(meta.ino(), ino, "nothing was rewritten");
    assert_eq!(meta.mtime(), mtime, "the sender's mtime was applied");
    assert_eq!(sha256_file(&landed), sha256_file(&path));
}

/// Sets `path`'s mtime to `secs` and returns it.
fn filetime(path: &Path, secs: i64) -> i64 {
    let f = std::fs::File::open(path).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::futimens(
        &f,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
    )
    .unwrap();
    secs
}

#[test]
fn an_update_in_place_keeps_the_file_and_follows_its_size() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("vm.raw");
    random_file(&path, 12 * MIB, 73);
    let rx = Zrecv::start(dst.path(), &["--force"]);
    send_json(&rx.addr(), &path, &[]);
    let landed = dst.path().join("vm.raw");
    let ino = std::fs::metadata(&landed).unwrap().ino();
    rewrite(&path, &[2 * MIB + 1], 10);
    let json = send_json(&rx.addr(), &path, &["--inplace"]);
    assert_eq!(json["update"]["mode"], "inplace", "{json}");
    assert_eq!(json["update"]["sent"], 1, "{json}");
    assert_eq!(sha256_file(&landed), sha256_file(&path));
    // Grown by 3 MiB and a bit, then shrunk below where it was.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![9u8; 3 * MIB as usize + 5]).unwrap();
    let json = send_json(&rx.addr(), &path, &["--inplace"]);
    assert_eq!(json["update"]["sent"], 4, "{json}");
    assert_eq!(sha256_file(&landed), sha256_file(&path));
    f.set_len(7 * MIB + 3).unwrap();
    let json = send_json(&rx.addr(), &path, &["--inplace"]);
    assert_eq!(json["update"]["sent"], 1, "the last piece: {json}");
    assert_eq!(sha256_file(&landed), sha256_file(&path));
    assert_eq!(
        std::fs::metadata(&landed).unwrap().ino(),
        ino,
        "updated in place"
    );
    assert!(
        leftovers(dst.path()).is_empty(),
        "{:?}",
        entries(dst.path())
    );
}

/// A file here with other names (a hard link another program made, perhaps to a file outside
/// --dir) is not updated: an update in place would write into every name's file, and one that
/// only sets the metadata would set it on them all. It is replaced whole, and the other name
/// keeps its bytes.
#[test]
fn a_file_with_other_names_is_replaced_not_updated() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let path = src.path().join("shared.img");
    random_file(&path, 4 * MIB, 74);
    let outside = elsewhere.path().join("kept.img");
    std::fs::copy(&path, &outside).unwrap();
    let before = sha256_file(&outside);
    std::fs::hard_link(&outside, dst.path().join("shared.img")).unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    rewrite(&path, &[MIB + 7], 100);
    for extra in [&["--inplace"][..], &[]] {
        let json = send_json(&rx.addr(), &path, extra);
        assert_eq!(json["update"], serde_json::Value::Null, "{json}");
        assert_eq!(json["bytes_sent"], 4 * MIB, "{json}");
        assert_eq!(sha256_file(&outside), before, "the other name's bytes");
        assert_eq!(
            sha256_file(&dst.path().join("shared.img")),
            sha256_file(&path)
        );
        // Linked again, for the next round.
        std::fs::remove_file(dst.path().join("shared.img")).unwrap();
        std::fs::hard_link(&outside, dst.path().join("shared.img")).unwrap();
    }
}

#[test]
fn a_piece_that_became_a_hole_is_punched_not_written() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("sparse.img");
    random_file(&path, 32 * MIB, 74);
    for inplace in [false, true] {
        let rx = Zrecv::start(dst.path(), &["--force"]);
        random_file(&path, 32 * MIB, 74);
        send_json(&rx.addr(), &path, &["--whole-file"]);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // 8 MiB of the source become a hole.
        let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&f, punch, 8 * MIB, 8 * MIB).unwrap();
        let extra: &[&str] = if inplace { &["--inplace"] } else { &[] };
        let json = send_json(&rx.addr(), &path, extra);
        assert_eq!(json["update"]["sent"], 8, "{json}");
        assert_eq!(json["bytes_sent"], 0, "holes cross as records: {json}");
        let landed = dst.path().join("sparse.img");
        assert_eq!(sha256_file(&landed), sha256_file(&path));
        let used = std::fs::metadata(&landed).unwrap().blocks() * 512;
        assert!(
            used <= 24 * MIB + MIB,
            "{used} bytes allocated (inplace {inplace})"
        );
    }
}

#[test]
fn a_failed_update_leaves_the_old_file_intact() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("keep.img");
    random_file(&path, 8 * MIB, 75);
    let rx = Zrecv::start(dst.path(), &["--force", "--timeout", "2"]);
    send_json(&rx.addr(), &path, &[]);
    let before = sha256_file(&dst.path().join("keep.img"));
    rewrite(&path, &[0, 5 * MIB], 4096);
    for inplace in [false, true] {
        // The connection stalls in the middle of the first piece sent: after the hello, the
        // piece layer (8 runs of 40 bytes after 12) and a record header.
        let at = payload_offset("keep.img", 0) + 12 + 8 * 40 + 17 + MIB / 2;
        let proxy = Proxy::start(rx.addr, Fault::StallAfter(at));
        let mut args = vec![
            proxy.addr(),
            path.to_str().unwrap().to_owned(),
            "--timeout".into(),
            "2".into(),
        ];
        if inplace {
            args.push("--inplace".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
        drop(proxy);
        rx.wait_for_line("keep.img from");
        assert_eq!(
            sha256_file(&dst.path().join("keep.img")),
            before,
            "inplace {inplace}"
        );
        assert!(
            leftovers(dst.path()).is_empty(),
            "{:?}",
            entries(dst.path())
        );
    }
}

#[test]
fn a_receiver_killed_at_each_step_of_an_update_in_place_leaves_old_or_new() {
    for (step, lands) in [
        ("journaled", false),
        ("committed", true),
        ("applying", true),
    ] {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let path = src.path().join("vm.img");
        random_file(&path, 10 * MIB, 76);
        let old_root = root_file(&path);
        {
            let rx = Zrecv::start(dst.path(), &["--force", "--once"]);
            send_json(&rx.addr(), &path, &[]);
        }
        rewrite(&path, &[MIB + 5, 4 * MIB, 9 * MIB + 9], 8192);
        let new_root = root_file(&path);
        let crash = format!("ZRECV_CRASH_AT={step}");
        let wrapper = ["env", crash.as_str()];
        let mut rx = Zrecv::start_with(Some(&wrapper), dst.path(), "127.0.0.1:0", &["--force"]);
        let out = zsend(&[&rx.addr(), path.to_str().unwrap(), "--inplace"]);
        assert!(!out.status.success(), "{step}: {}", stderr_of(&out));
        assert!(rx.wait().code().is_none(), "{step}: killed by its signal");
        // A new receiver finishes or drops what the killed one left.
        let rx = Zrecv::start(dst.path(), &["--force"]);
        rx.wait_for_line("recovered 1 interrupted update");
        let landed = dst.path().join("vm.img");
        let want = if lands { &new_root } else { &old_root };
        assert_eq!(&root_file(&landed), want, "{step}");
        assert!(
            leftovers(dst.path()).is_empty(),
            "{step}: {:?}",
            entries(dst.path())
        );
        // And the next send brings it up to date either way.
        send_json(&rx.addr(), &path, &["--inplace"]);
        assert_eq!(root_file(&landed), new_root, "{step}");
    }
}

#[test]
fn a_flipped_byte_is_repaired_by_sending_its_piece_again() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("r.img");
    let size = 64 * MIB;
    random_file(&path, size, 77);
    let rx = Zrecv::start(dst.path(), &[]);
    let proxy = Proxy::start(
        rx.addr,
        Fault::Flip(payload_offset("r.img", 40 * MIB + 123)),
    );
    let json = send_json(&proxy.addr(), &path, &[]);
    assert_eq!(json["repaired_pieces"], 1, "{json}");
    let up = proxy.bytes_up();
    assert!(
        up < size + 2 * MIB,
        "one piece again: {up} bytes up for {size}"
    );
    assert_eq!(sha256_file(&dst.path().join("r.img")), sha256_file(&path));
    rx.wait_for_line("repair round 1");
    let line = rx.wait_for_line("received r.img");
    assert!(line.contains("repaired: 1 of its pieces"), "{line}");
    assert!(
        line.contains(&root_file(&path)),
        "the root after the repair: {line}"
    );
}

/// A repaired piece's root replaces the one taken as it first came in: the layer kept for a
/// later update is of the bytes the file holds. (It kept the damaged piece's root: a source
/// that came to hold those very bytes was updated as if that piece were already here, and
/// the file published as verified with the old piece in it.)
#[test]
fn a_repaired_piece_is_remembered_as_repaired() {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("r.img");
    let at = 5 * MIB + 123;
    random_file(&path, 8 * MIB, 78);
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let proxy = Proxy::start(rx.addr, Fault::Flip(payload_offset("r.img", at)));
    let json = send_json(&proxy.addr(), &path, &[]);
    assert_eq!(json["repaired_pieces"], 1, "{json}");
    // The source now holds what the flip made of that byte.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    let json = send_json(&rx.addr(), &path, &[]);
    assert_eq!(
        sha256_file(&dst.path().join("r.img")),
        sha256_file(&path),
        "{json}"
    );
}

/// A file that replaces one whose piece layer was kept takes that layer away, even when it
/// keeps none of its own (one piece, here): the layer vouched for the old bytes.
#[test]
fn a_replaced_files_piece_layer_goes_with_it() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let path = src.path().join("l.img");
    random_file(&path, 3 * MIB, 79);
    let rx = Zrecv::start(dst.path(), &["--force"]);
    send_json(&rx.addr(), &path, &[]);
    let layers = || {
        entries(dst.path())
            .into_iter()
            .filter(|n| n.ends_with(".pieces"))
            .count()
    };
    assert_eq!(layers(), 1, "{:?}", entries(dst.path()));
    random_file(&path, MIB / 2, 80);
    send_json(&rx.addr(), &path, &[]);
    assert_eq!(layers(), 0, "{:?}", entries(dst.path()));
}

/// With a token, an update and a repair go through the same seals: the verdicts that say
/// "landed" are sealed, and the sender accepts them.
#[test]
fn updates_and_repairs_are_sealed_with_a_token() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let token = src.path().join("token");
    std::fs::write(&token, "a shared secret\n").unwrap();
    let token = token.to_str().unwrap();
    let path = src.path().join("sealed.img");
    random_file(&path, 8 * MIB, 78);
    let rx = Zrecv::start(dst.path(), &["--force", "--token-file", token]);
    send_json(&rx.addr(), &path, &["--token-file", token]);
    rewrite(&path, &[6 * MIB], 100);
    for extra in [&[][..], &["--inplace"][..]] {
        let mut args = vec!["--token-file", token];
        args.extend_from_slice(extra);
        let json = send_json(&rx.addr(), &path, &args);
        assert_eq!(json["update"]["sent"], 1, "{json}");
        assert_eq!(json["verified"], true, "{json}");
        rewrite(&path, &[2 * MIB], 100);
    }
    // A flipped byte on the way, repaired under the seals.
    let fresh = src.path().join("fresh.img");
    random_file(&fresh, 8 * MIB, 79);
    let at = payload_offset("fresh.img", 5 * MIB) + 32;
    let proxy = Proxy::start(rx.addr, Fault::Flip(at));
    let json = send_json(&proxy.addr(), &fresh, &["--token-file", token]);
    assert_eq!(json["repaired_pieces"], 1, "{json}");
    assert_eq!(
        sha256_file(&dst.path().join("fresh.img")),
        sha256_file(&fresh)
    );
}
