//! Sparse images: only data crosses the wire, holes stay holes on the receiver, and the
//! tree root still covers the whole logical content (as does the plain SHA-256 asked for with
//! --sha256: it equals sha256sum of the source).

use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use zcommon::{Header, Record, Reply};

use crate::hostile::{connect, header};
use crate::util::*;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (scripts/test installs it)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A raw image from qemu-img with random data written at a few offsets.
fn raw_image(path: &Path, size_mib: u64) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        path.to_str().unwrap(),
        &format!("{size_mib}M"),
    ]);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let blob_path = path.with_extension("blob");
    random_file(&blob_path, 4 << 20, size_mib);
    let blob = std::fs::read(&blob_path).unwrap();
    std::fs::remove_file(&blob_path).unwrap();
    let size = size_mib << 20;
    for (at, len) in [
        (0, 4 << 20),
        (100 << 20, 1 << 20),
        (size / 2 + 12345, 3 << 20),
        (size - 5000, 5000),
    ] {
        f.write_all_at(&blob[..len], at).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn a_sparse_raw_image_sends_only_its_data_and_stays_sparse() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let img = src.path().join("vm.raw");
    raw_image(&img, 512);
    let mut rx = Zrecv::start(dst.path(), &["--once", "--json"]);
    let out = zsend(&[&rx.addr(), img.to_str().unwrap(), "--json", "--sha256"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    let landed = dst.path().join("vm.raw");
    assert_eq!(std::fs::metadata(&landed).unwrap().len(), 512 << 20);
    assert_eq!(
        sha256_file(&landed),
        sha256_file(&img),
        "content, holes included"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = json["bytes_sent"].as_u64().unwrap();
    assert!(
        sent >= (8 << 20) + 5000 && sent <= allocated(&img),
        "sent {sent}"
    );
    assert_eq!(json["bytes"], 512u64 << 20);
    let root = root_file(&img);
    assert_eq!(json["root"], root.as_str(), "the root of the source");
    assert_eq!(
        json["sha256"],
        sha256_file(&img).as_str(),
        "equals sha256sum of the source"
    );
    let line: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
    assert_eq!(line["root"], root.as_str(), "the receiver agrees: {line}");
    assert!(
        allocated(&landed) <= allocated(&img) + (1 << 20),
        "destination allocates {} for a source of {}",
        allocated(&landed),
        allocated(&img)
    );
}

#[test]
fn an_all_hole_file_and_a_qcow2_image_round_trip() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let empty = src.path().join("empty.raw");
    qemu_img(&["create", "-q", "-f", "raw", empty.to_str().unwrap(), "64M"]);
    let raw = src.path().join("base.raw");
    raw_image(&raw, 128);
    let qcow = src.path().join("vm.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    for (file, no_verify) in [(&empty, false), (&qcow, false), (&raw, true)] {
        let mut rx = Zrecv::start(dst.path(), &["--once"]);
        let mut args = vec![rx.addr(), file.to_str().unwrap().to_owned()];
        if no_verify {
            args.push("--no-verify".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(rx.wait().success(), "{}", rx.stderr());
        let landed = dst.path().join(file.file_name().unwrap());
        assert_eq!(
            std::fs::read(&landed).unwrap(),
            std::fs::read(file).unwrap()
        );
    }
    assert!(allocated(&dst.path().join("empty.raw")) <= 64 << 10);
    qemu_img(&[
        "compare",
        "-q",
        qcow.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

fn sparse_header(name: &str, size: u64, data: u64) -> Header {
    let mut h = header(name, size);
    h.sparse_data_len = Some(data);
    h
}

#[test]
fn hostile_sparse_records_publish_nothing() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let cases: [(&str, Vec<Record>, &str); 4] = [
        (
            "skip.img",
            vec![Record::Data {
                offset: 50,
                len: 10,
            }],
            "where 0 of 100 was expected",
        ),
        (
            "past.img",
            vec![Record::Hole {
                offset: 0,
                len: 101,
            }],
            "where 0 of 100 was expected",
        ),
        (
            "more.img",
            vec![
                Record::Hole { offset: 0, len: 50 },
                Record::Data {
                    offset: 50,
                    len: 20,
                },
            ],
            "more data than the 10 bytes announced",
        ),
        (
            "short.img",
            vec![Record::Hole { offset: 0, len: 90 }, Record::End],
            "sparse records end at 90",
        ),
    ];
    for (name, records, words) in cases {
        let mut s = connect(&rx);
        s.write_all(&sparse_header(name, 100, 10).encode_hello())
            .unwrap();
        assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
        for r in records {
            let _ = s.write_all(&r.encode());
        }
        let line = rx.wait_for_line(&format!("{name} from"));
        assert!(line.contains(words), "{line}");
    }
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
}
