//! Many files and directories in one transfer: structure, metadata, links, hostile manifests,
//! many small files, per-file failures and resuming an interrupted tree.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use zcommon::{Answers, Entry, Header, Kind, Manifest, Reply, FLAG_TREE};

use crate::util::*;

/// Every entry below `root` (not following links): relative path -> a description of type,
/// permissions, size, content digest or link target, and (for files) mtime.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let perms = m.permissions().mode() & 0o777;
            let what = if m.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if !m.is_dir() && !m.is_file() {
                "special".into()
            } else if m.is_dir() {
                stack.push(path.clone());
                format!("dir {perms:o}")
            } else {
                format!(
                    "file {perms:o} {} {} mtime {}.{}",
                    m.len(),
                    sha256_file(&path),
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// A tree with what the issue lists: nesting, empty files and directories, modes, unicode
/// names, a link inside and one pointing out, and a fifo.
fn sample_tree(top: &Path) {
    std::fs::create_dir_all(top.join("a/b/c")).unwrap();
    std::fs::create_dir_all(top.join("empty dir")).unwrap();
    random_file(&top.join("a/b/c/deep.bin"), 300_000, 1);
    random_file(&top.join("a/big.img"), 3 << 20, 2);
    std::fs::write(top.join("empty"), b"").unwrap();
    std::fs::write(top.join("ünïcødé ✓.txt"), "grüße\n").unwrap();
    std::fs::write(top.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(top.join("run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(top.join("secret"), b"s").unwrap();
    std::fs::set_permissions(top.join("secret"), PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(top.join("a/b"), PermissionsExt::from_mode(0o700)).unwrap();
    symlink("a/b/c/deep.bin", top.join("inside")).unwrap();
    symlink("../../etc/passwd", top.join("outside")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(top.join("fifo"))
        .status()
        .unwrap()
        .success());
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123);
    std::fs::File::options()
        .write(true)
        .open(top.join("a/big.img"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

#[test]
fn a_tree_lands_with_its_structure_modes_times_and_links() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    sample_tree(&top);
    // A receiver that makes links as they are sent (absolute and outward ones too).
    let rx = Zrecv::start(dst.path(), &["--trust-links"]);
    let extra = src.path().join("loose.txt");
    std::fs::write(&extra, b"a file next to the tree").unwrap();
    let out = zsend(&[
        &rx.addr(),
        top.to_str().unwrap(),
        extra.to_str().unwrap(),
        "--specials",
        "--json",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let json = json_of(&out);
    assert_eq!(json["files"], 7, "{json}");
    assert_eq!(json["landed"], 7, "{json}");
    assert_eq!(json["links"], 2, "{json}");
    assert_eq!(json["specials"], 1, "{json}");
    assert_eq!(json["dirs"], 5, "{json}");
    assert_eq!(json["skipped"], 0, "{json}");
    assert_eq!(describe(&dst.path().join("top")), describe(&top));
    assert_eq!(
        std::fs::read(dst.path().join("loose.txt")).unwrap(),
        b"a file next to the tree"
    );
    // Nothing hidden is left behind.
    assert!(in_flight(dst.path()).is_empty());
    rx.wait_for_line("received tree top");

    // A receiver that judges links (a sender without a token) refuses the one leading out of
    // the tree, and a sender without --specials leaves the fifo out: both are counted, both
    // named, and the exit code says the tree is not whole.
    let dst2 = tempfile::tempdir().unwrap();
    let rx2 = Zrecv::start(dst2.path(), &[]);
    let out = zsend(&[&rx2.addr(), top.to_str().unwrap(), "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let json = json_of(&out);
    assert_eq!(
        (json["skipped"].as_u64(), json["failed"].as_u64()),
        (Some(1), Some(1)),
        "{json}"
    );
    assert_eq!(json["links"], 1, "{json}");
    assert!(err.contains("points out of the tree"), "{err}");
    assert!(err.contains("fifo (use --specials or -a)"), "{err}");
    let mut want = describe(&top);
    want.retain(|path, _| !path.ends_with("fifo") && !path.ends_with("outside"));
    assert_eq!(describe(&dst2.path().join("top")), want);

    // With --no-links, no link is sent.
    let dst3 = tempfile::tempdir().unwrap();
    let rx3 = Zrecv::start(dst3.path(), &[]);
    let out = zsend(&[&rx3.addr(), top.to_str().unwrap(), "--json", "--no-links"]);
    assert_eq!(json_of(&out)["skipped"], 3);
    assert!(!dst3.path().join("top/inside").exists());
}

#[test]
fn a_tree_without_verification_lands_the_same() {
    // Trailers then carry no digest, and sources are checked by size and mtime only.
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    sample_tree(&top);
    let rx = Zrecv::start(dst.path(), &["--trust-links"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--no-verify", "-D"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(describe(&dst.path().join("top")), describe(&top));
}

#[test]
fn sending_a_tree_again_sends_nothing_and_checks_every_file() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    sample_tree(&top);
    let rx = Zrecv::start(dst.path(), &["--force", "--trust-links"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-D", "-q"]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-D", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["unchanged"], 6, "{json}");
    assert_eq!(json["landed"], 0, "{json}");
    assert_eq!(json["bytes_sent"], 0, "{json}");

    // A copy with the same size and mtime but other content is caught by the digests, and
    // (with --force on the receiver) sent again.
    let copy = dst.path().join("top/a/b/c/deep.bin");
    let mtime = std::fs::metadata(&copy).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(&copy).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tampered", 1000).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-D", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(
        (json["unchanged"].as_u64(), json["landed"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(sha256_file(&copy), sha256_file(&top.join("a/b/c/deep.bin")));
}

#[test]
fn a_failing_file_does_not_stop_the_others_unless_fail_fast() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    for i in 0..5 {
        random_file(&top.join(format!("f{i}")), 10_000, i);
    }
    // The receiver already has another f2, and does not replace files.
    std::fs::create_dir(dst.path().join("top")).unwrap();
    std::fs::write(dst.path().join("top/f2"), b"someone else's").unwrap();
    let rx = Zrecv::start(dst.path(), &[]);

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json", "--fail-fast"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(
        (json["failed"].as_u64(), json["landed"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(visible(&dst.path().join("top")), vec!["f2"]);

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(
        (json["failed"].as_u64(), json["landed"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(json["failures"][0]["path"], "top/f2");
    assert!(json["failures"][0]["error"]
        .as_str()
        .unwrap()
        .contains("exists (use --force on the receiver)"));
    assert_eq!(
        std::fs::read(dst.path().join("top/f2")).unwrap(),
        b"someone else's"
    );
    assert!(stderr_of(&out).contains("1 entries did not land"));
}

#[test]
fn ten_thousand_small_files_arrive() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("many");
    for d in 0..100 {
        let dir = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let content = format!("{d}/{f}\n").repeat(1024);
            std::fs::write(dir.join(format!("f{f:02}")), &content.as_bytes()[..4096]).unwrap();
        }
    }
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["landed"], 10_000, "{json}");
    assert_eq!(json["bytes"], 10_000 * 4096);
    assert_eq!(describe(&dst.path().join("many")), describe(&top));
}

/// Sends a tree of `dirs` directories holding `files` small files each to a zrecv whose limit
/// on open files is `limit`, with no room to raise it, and checks that all of it lands.
fn lands_under_open_file_limit(dirs: usize, files: usize, limit: u32, zrecv_args: &[&str]) {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("many");
    for d in 0..dirs {
        let dir = top.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            std::fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
    let nofile = format!("--nofile={limit}:{limit}");
    let wrapper = ["prlimit", nofile.as_str(), "--"];
    let rx = Zrecv::start_with(Some(&wrapper), dst.path(), "127.0.0.1:0", zrecv_args);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_of(&out)["landed"], dirs * files);
    assert_eq!(describe(&dst.path().join("many")), describe(&top));
}

#[test]
fn more_files_than_the_receiver_may_hold_open_still_land() {
    // Small files stay open until their batch lands; batches must fit the receiver's limit on
    // open files (a shell's default is 1024, which 10,000 files used to exceed).
    lands_under_open_file_limit(3, 200, 128, &[]);
}

#[test]
fn a_tree_still_lands_under_an_open_file_limit_below_its_batches() {
    // Each file in a directory of its own holds two files open while it waits for its batch;
    // 64 is less than the smallest batches need, so zrecv has to land early to go on.
    lands_under_open_file_limit(200, 1, 64, &["--once"]);
}

/// Sends `top` to `rx` through a proxy, kills the sender once `at` bytes have crossed, and
/// waits for the receiver to report the interruption (after it kept the file in flight).
fn interrupt_tree(rx: &Zrecv, top: &Path, at: u64) {
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(at));
    let mut sender = Command::new(zsend_bin())
        .arg(proxy.addr())
        .arg(top)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    sender.kill().unwrap();
    sender.wait().unwrap();
    proxy.release();
    drop(proxy);
    // The receiver's line names the tree (escaped, if the name is not text).
    let name = top.file_name().unwrap().to_str();
    rx.wait_for_line(&name.map_or(" from ".into(), |n| format!("{n} from")));
}

#[test]
fn an_interrupted_tree_resumes_where_it_stopped() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("vm");
    std::fs::create_dir(&top).unwrap();
    let size: u64 = 16 << 20;
    for i in 0..6 {
        random_file(&top.join(format!("disk{i}.img")), size, 40 + i);
    }
    let total = 6 * size;
    let rx = Zrecv::start(dst.path(), &[]);
    // Stop the stream in the middle of the third file and kill the sender there.
    interrupt_tree(&rx, &top, 2 * size + size / 2);
    // Nobody sees half a tree: what landed is in a hidden directory, with the partial.
    assert!(!dst.path().join("vm").exists());
    let stage = stage_dir(dst.path());
    assert!(stage.join("disk0.img").exists(), "{:?}", entries(&stage));

    let proxy = Proxy::start(rx.addr, Fault::None);
    let out = zsend(&[&proxy.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let up = proxy.bytes_up();
    let json = json_of(&out);
    let (unchanged, landed) = (
        json["unchanged"].as_u64().unwrap(),
        json["landed"].as_u64().unwrap(),
    );
    assert!(unchanged >= 2, "{json}\n{}", rx.stderr());
    assert_eq!(unchanged + landed, 6, "{json}");
    let resumed = json["resumed_from"].as_u64().unwrap();
    assert!(resumed > 0, "{json}\n{}", rx.stderr());
    // Only what the receiver lacked crossed again (plus headers and digests).
    let lacking = total - unchanged * size - resumed;
    assert!(
        up <= lacking + (64 << 10),
        "{up} bytes crossed for {lacking} missing"
    );
    assert!(up < total * 6 / 10, "{up} of {total} bytes crossed again");
    assert_eq!(describe(&dst.path().join("vm")), describe(&top));
    assert!(entries(&dst.path().join("vm"))
        .iter()
        .all(|e| !e.starts_with(".zrecv-")));
    assert!(!stage.exists());
}

/// A tree taken up after an interruption lands as the sender has it: its subdirectories, which
/// the interrupted transfer had made, with their modes and mtimes (they kept 0700 and the
/// time they were made), and nothing left of the resumed file's checkpoints (its record stayed
/// beside it, in the published tree).
#[test]
fn a_tree_taken_up_lands_with_its_directories_and_nothing_hidden() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("set");
    std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
    // More than a checkpoint's 256 MiB still to come once it resumes.
    random_file(&top.join("sub/big.img"), 320 << 20, 64);
    std::fs::write(top.join("sub/deeper/small"), b"small").unwrap();
    std::fs::set_permissions(top.join("sub"), PermissionsExt::from_mode(0o750)).unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    for dir in ["sub/deeper", "sub", ""] {
        let f = std::fs::File::open(top.join(dir)).unwrap();
        f.set_modified(when).unwrap();
    }
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt_tree(&rx, &top, 16 << 20);
    assert!(stage_dir(dst.path()).join("sub/deeper").is_dir());

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert!(json["resumed_from"].as_u64().unwrap() > 0, "{json}");
    let here = dst.path().join("set");
    assert_eq!(describe(&here), describe(&top));
    for dir in ["sub/deeper", "sub", ""] {
        let (ours, theirs) = (
            std::fs::metadata(here.join(dir)).unwrap(),
            std::fs::metadata(top.join(dir)).unwrap(),
        );
        assert_eq!(
            ours.modified().unwrap(),
            theirs.modified().unwrap(),
            "{dir}"
        );
    }
    let hidden: Vec<String> = describe(&here)
        .into_keys()
        .filter(|p| p.split('/').any(|c| c.starts_with(".zrecv-")))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// Runs a raw tree handshake with `entries` and returns the receiver's answers.
fn hostile_manifest(rx: &Zrecv, entries: Vec<Entry>) -> Answers {
    let mut s = std::net::TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
    let hello = Header {
        flags: FLAG_TREE,
        ..Header::new("top", 0)
    };
    s.write_all(&hello.encode_hello()).unwrap();
    assert_eq!(Reply::read(&mut s).unwrap(), Reply::Accept);
    let count = entries.len();
    s.write_all(&Manifest { entries }.encode()).unwrap();
    let answers = Answers::read(&mut s, count).unwrap_or_else(|e| panic!("answers: {e}"));
    // Nothing to send: end the pass, and let the receiver finish.
    if let Answers::Each(..) = answers {
        s.write_all(&zcommon::Frame::EndOfPass.encode()).unwrap();
        let _ = zcommon::Report::read(&mut s);
    }
    answers
}

fn entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime: (0, 0),
        extras: None,
    }
}

fn file(size: u64) -> Kind {
    Kind::File {
        size,
        sparse_data_len: None,
        source_id: None,
    }
}

#[test]
fn hostile_manifests_are_refused_and_nothing_is_written() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (
            vec![
                entry("top", Kind::Dir),
                entry("top/x", file(1)),
                entry("top/x", file(1)),
            ],
            "two entries named top/x",
        ),
        (
            vec![
                entry("top", Kind::Dir),
                entry("top/../x", file(1)),
                entry("y", file(1)),
            ],
            "refers to a directory",
        ),
        (
            vec![
                entry("top", Kind::Dir),
                entry("other/x", file(1)),
                entry("y", file(1)),
            ],
            "comes before its directory",
        ),
        (
            vec![
                entry("top", Kind::Dir),
                entry("top/l", Kind::Symlink { target: "".into() }),
                entry("y", file(1)),
            ],
            "empty target",
        ),
    ];
    for (entries, words) in cases {
        match hostile_manifest(&rx, entries) {
            Answers::Refused(_, msg) => assert!(msg.contains(words), "{msg:?} lacks {words:?}"),
            other => panic!("not refused: {other:?}"),
        }
    }
    assert!(entries(dst.path()).is_empty(), "{:?}", entries(dst.path()));
}

/// A directory of the tree that is a symlink on the receiver is never followed.
#[test]
fn a_symlink_in_the_destination_is_never_followed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    std::fs::write(top.join("sub/f"), b"data").unwrap();
    std::fs::write(top.join("g"), b"more").unwrap();
    std::fs::create_dir(dst.path().join("top")).unwrap();
    symlink(elsewhere.path(), dst.path().join("top/sub")).unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["landed"], 1, "{json}");
    assert!(entries(elsewhere.path()).is_empty());
    assert_eq!(std::fs::read(dst.path().join("top/g")).unwrap(), b"more");
}

/// A file with holes inside a tree crosses as its data and lands with its holes.
#[test]
fn a_sparse_file_in_a_tree_stays_sparse() {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("img");
    std::fs::create_dir(&top).unwrap();
    let f = std::fs::File::create(top.join("a.raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[9u8; 2 << 20], 10 << 20).unwrap();
    f.write_all_at(&[3u8; 1 << 20], 63 << 20).unwrap();
    drop(f);
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["bytes_sent"], 3 << 20, "{json}");
    let landed = dst.path().join("img/a.raw");
    assert_eq!(sha256_file(&landed), sha256_file(&top.join("a.raw")));
    let blocks = std::fs::metadata(&landed).unwrap().blocks() * 512;
    assert!(blocks <= (3 << 20) + (1 << 20), "{blocks} bytes allocated");
}

/// Hashing a large file takes longer than the timeouts here, and neither side gives up on the
/// other meanwhile: the sender waits for a verdict that comes late (first send), and each side
/// tells the other it is still there while it hashes a file that is already on the receiver
/// (second send).
#[test]
fn large_files_do_not_time_out_while_they_are_hashed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("big");
    std::fs::create_dir(&top).unwrap();
    // 3 GiB of holes: nothing on disk, but seconds of SHA-256 on each side.
    let f = std::fs::File::create(top.join("holes.img")).unwrap();
    f.set_len(3 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data", 1 << 30).unwrap();
    drop(f);
    std::fs::write(top.join("small.txt"), b"small").unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[
        &rx.addr(),
        top.to_str().unwrap(),
        "--timeout",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_of(&out)["landed"], 2);
    drop(rx);

    let rx = Zrecv::start(dst.path(), &["--timeout", "1"]);
    let out = zsend(&[
        &rx.addr(),
        top.to_str().unwrap(),
        "--timeout",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["unchanged"], 2, "{json}");
    assert_eq!(json["bytes_sent"], 0, "{json}");
}

/// Interrupts the tree `top` on its way to `rx` once `at` bytes have crossed, and tampers with
/// the partial kept in its hidden directory in `dst` (returned): sent again, that file is
/// asked for whole, in a second pass.
fn interrupt_and_tamper(rx: &Zrecv, dst: &Path, top: &Path, at: u64) -> std::path::PathBuf {
    interrupt_tree(rx, top, at);
    let stage = stage_dir(dst);
    let part = entries(&stage)
        .into_iter()
        .find(|e| is_kept_partial(e) && e.ends_with(".part"))
        .expect("a kept partial");
    let f = std::fs::File::options()
        .write(true)
        .open(stage.join(&part))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tampered", 100).unwrap();
    stage
}

/// The partial of a tree's file is checked while the rest streams in; a tampered one is caught
/// and the file sent again whole, in the second pass. The new tree stays hidden until that
/// file has landed: at the end of the first pass, nobody sees it without that file (it used to
/// be published then), and the verdicts held for its other files come in the second pass.
#[test]
fn a_new_tree_with_a_file_sent_again_is_published_only_whole() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("set");
    std::fs::create_dir(&top).unwrap();
    let size: u64 = 16 << 20;
    random_file(&top.join("a.img"), size, 62);
    random_file(&top.join("b.img"), size, 63);
    std::fs::write(top.join("c.txt"), b"small and verified in the first pass").unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let stage = interrupt_and_tamper(&rx, dst.path(), &top, size / 2);

    // Held just after the sender's first end of pass: its next bytes (the second pass, which
    // the proxy holds) go out only once the receiver's own end of pass has come back.
    let proxy = Proxy::start(rx.addr, Fault::PauseAfter(b"ZEOP\0\0\0\0\0".to_vec()));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), top.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    assert!(
        !dst.path().join("set").exists(),
        "published before its file sent again: {:?}",
        entries(dst.path())
    );
    assert_eq!(stage_dir(dst.path()), stage);
    proxy.release();
    let out = wait_output(sender);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["landed"], 3, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["resumed_from"], 0, "{json}");
    assert_eq!(describe(&dst.path().join("set")), describe(&top));
    assert!(!stage.exists());
    rx.wait_for_line("asking for it whole");
}

/// zrecv's --json line used to say a verified tree was not verified (false, and null), while
/// zsend said true: both now say what was checked, and nothing when nothing was.
#[test]
fn both_ends_agree_on_whether_a_tree_was_verified() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    sample_tree(&top);
    for no_verify in [false, true] {
        let dst = tempfile::tempdir().unwrap();
        let mut rx = Zrecv::start(dst.path(), &["--once", "--json", "--trust-links"]);
        let mut args = vec![
            rx.addr(),
            top.to_str().unwrap().to_owned(),
            "--json".into(),
            "-D".into(),
        ];
        if no_verify {
            args.push("--no-verify".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(rx.wait().success(), "{}", rx.stderr());
        let sent = json_of(&out);
        let received: serde_json::Value = serde_json::from_str(rx.stdout().trim()).unwrap();
        assert_eq!(sent["verified"], !no_verify, "{sent}");
        assert_eq!(received["verified"], sent["verified"], "{received}");
        assert_eq!(received["ok"], true, "{received}");
        assert_eq!(received["tree"]["landed"], sent["landed"], "{received}");
    }
}

/// Paths up to the documented 4096 bytes cross (those past 1024 bytes used to get the whole
/// tree refused).
#[test]
fn a_path_of_nearly_4096_bytes_lands() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    // 15 directories of 250 bytes and a file: a relative path of 3 + 15 * 251 + 251 bytes.
    let mut dir = top.clone();
    let mut rel = String::from("top");
    for i in 0..15 {
        let name = format!("{i:02}{}", "d".repeat(248));
        dir.push(&name);
        rel.push('/');
        rel.push_str(&name);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let name = "f".repeat(250);
    random_file(&dir.join(&name), 5000, 7);
    rel.push('/');
    rel.push_str(&name);
    assert!(rel.len() > 4000 && rel.len() <= 4096, "{}", rel.len());
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_of(&out)["landed"], 1);
    assert_eq!(
        sha256_file(&dst.path().join(&rel)),
        sha256_file(&dir.join(&name))
    );
}

/// Each of these links passes a check of its text alone (relative, never climbing above its
/// tree with `..`), yet `x` used to point out of the receive directory: `..` after a link
/// climbs from the link's target. Judged where they lead, among the links already made, `u`
/// is made and the others refused, and no link made leads outside.
#[test]
fn a_chain_of_links_cannot_lead_out_of_the_directory() {
    let outer = tempfile::tempdir().unwrap();
    let dst = outer.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::fs::create_dir(outer.path().join("outside")).unwrap();
    let rx = Zrecv::start(&dst, &[]);
    let link = |path: &str, target: &str| {
        entry(
            path,
            Kind::Symlink {
                target: target.into(),
            },
        )
    };
    let answers = hostile_manifest(
        &rx,
        vec![
            entry("top", Kind::Dir),
            entry("top/d", Kind::Dir),
            link("top/d/u", ".."),
            link("top/d/v", "u/.."),
            link("top/d/w", "v/.."),
            link("top/d/x", "w/outside"),
        ],
    );
    let Answers::Each(answers, _) = answers else {
        panic!("refused whole: {answers:?}")
    };
    assert_eq!(answers[2], zcommon::Answer::Done, "{answers:?}");
    for (i, a) in answers.iter().enumerate().skip(3) {
        assert!(matches!(a, zcommon::Answer::Refused(_)), "entry {i}: {a:?}");
    }
    // Every link that exists resolves inside the receive directory.
    let dst = dst.canonicalize().unwrap();
    for name in ["u", "v", "w", "x"] {
        let p = dst.join("top/d").join(name);
        if p.symlink_metadata().is_ok() {
            let resolved = p.canonicalize().unwrap();
            assert!(
                resolved.starts_with(&dst),
                "{name} -> {}",
                resolved.display()
            );
        }
    }
    assert!(!dst.join("top/d/v").exists() && !dst.join("top/d/x").exists());
}

/// A world-writable directory keeps its sticky bit (without it anyone could remove anyone's
/// files there), in a tree and as a single file's mode; setuid and setgid never land from a
/// sender.
#[test]
fn the_sticky_bit_lands_and_setuid_and_setgid_do_not() {
    use std::os::unix::fs::PermissionsExt;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("shared");
    std::fs::create_dir_all(top.join("tmp")).unwrap();
    let tool = top.join("tmp/tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    let set = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set(&tool, 0o6755);
    set(&top.join("tmp"), 0o1777);
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mode = |p: &str| {
        std::fs::metadata(dst.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("shared/tmp"), 0o1777, "sticky kept");
    assert_eq!(mode("shared/tmp/tool"), 0o755, "setuid and setgid dropped");
    // A single file with the sticky bit and setuid.
    let one = src.path().join("one");
    std::fs::write(&one, b"x").unwrap();
    set(&one, 0o5644);
    let out = zsend(&[&rx.addr(), one.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(mode("one"), 0o1644);
}

/// A file that shrinks or grows while a tree is sent, or between the walk that listed it and
/// its turn, fails that file only, counted once; the other files land and the directories get
/// their modes.
#[test]
fn a_file_that_shrinks_or_grows_while_sent_fails_alone() {
    use std::os::unix::fs::PermissionsExt;
    // Well inside big.log's payload (the hello, the manifest and a.txt take a few hundred
    // bytes), or before anything crossed (zsend walks the tree before it connects).
    let cases = [(true, 16 << 20), (false, 16 << 20), (true, 0), (false, 0)];
    for (shrink, pause_at) in cases {
        let case = format!("shrink {shrink}, pause at {pause_at}");
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let top = src.path().join("logs");
        std::fs::create_dir(&top).unwrap();
        std::fs::write(top.join("a.txt"), b"first").unwrap();
        random_file(&top.join("big.log"), 32 << 20, 61);
        std::fs::write(top.join("z.txt"), b"last").unwrap();
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o750)).unwrap();
        let rx = Zrecv::start(dst.path(), &[]);
        let proxy = Proxy::start(rx.addr, Fault::PauseAt(pause_at));
        let sender = Command::new(zsend_bin())
            .args([&proxy.addr(), top.to_str().unwrap(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(top.join("big.log"))
            .unwrap();
        match shrink {
            true => f.set_len(4 << 20).unwrap(),
            false => f.set_len(40 << 20).unwrap(),
        }
        proxy.release();
        let out = wait_output(sender);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(9), "{case}: {err}");
        let json = json_of(&out);
        assert_eq!(json["failed"], 1, "{case}: {json}");
        assert_eq!(json["landed"], 2, "{case}: {json}");
        assert_eq!(json["failures"].as_array().unwrap().len(), 1, "{json}");
        assert!(
            json["failures"][0]["error"]
                .as_str()
                .unwrap()
                .contains("changed"),
            "{json}"
        );
        let landed = dst.path().join("logs");
        assert_eq!(std::fs::read(landed.join("z.txt")).unwrap(), b"last");
        assert!(!landed.join("big.log").exists(), "{case}");
        let mode = std::fs::metadata(&landed).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750, "{case}: the directory got its mode");
        let line = rx.wait_for_line("received tree logs");
        assert!(
            line.contains("3 files (2 landed, 0 already here, 1 failed)"),
            "{line}"
        );
        assert!(
            err.matches("changed").count() == 1,
            "{case}: said once: {err}"
        );
    }
}

/// `--quick-check` takes a file of the same size and mtime as unchanged, as rsync does, without
/// reading it on either end: a copy changed behind both backs (same size, mtime put back) stays
/// as it is, and the transfer says it was not verified; without the flag, roots are compared
/// and the difference is found.
#[test]
fn the_quick_check_trusts_size_and_mtime_and_says_so() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("build");
    std::fs::create_dir(&top).unwrap();
    for (n, seed) in [("a.o", 1u64), ("b.o", 2), ("c.o", 3)] {
        random_file(&top.join(n), 200_000, seed);
    }
    let rx = Zrecv::start(dst.path(), &["--json"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // Change a copy on the receiver, keeping its size and mtime.
    let copy = dst.path().join("build/b.o");
    let mtime = std::fs::metadata(&copy).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"tampered", 100).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let tampered = sha256_file(&copy);

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--quick-check", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["unchanged"], 3, "{json}");
    assert_eq!(json["quick_checked"], 3, "{json}");
    assert_eq!(json["verified"], false, "{json}");
    assert_eq!(sha256_file(&copy), tampered, "not read, not sent");
    let mut rx = rx;
    let _first = rx.stdout_line();
    let line: serde_json::Value = serde_json::from_str(&rx.stdout_line()).unwrap();
    assert_eq!(line["tree"]["quick_checked"], 3, "{line}");
    assert_eq!(line["verified"], false, "{line}");

    // Without it, the roots differ and the receiver (no --force) refuses to replace it.
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    let json = json_of(&out);
    assert_eq!(json["unchanged"], 2, "{json}");
    assert_eq!(json["failed"], 1, "{json}");
    assert_eq!(json["quick_checked"], 0, "{json}");
}

/// A tree sent again after a file's mode and mtime changed but not its content: with --force
/// on the receiver, the roots are compared and only the metadata is set there; nothing crosses.
/// Without --force the copy there stays as it is and the sender hears why.
#[test]
fn a_metadata_only_change_is_applied_without_sending_the_content() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    random_file(&top.join("data.bin"), 300_000, 5);
    std::fs::write(top.join("script"), b"#!/bin/sh\n").unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-q"]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // touch and chmod, content untouched.
    let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_800_000_000, 42);
    let f = std::fs::File::options()
        .write(true)
        .open(top.join("data.bin"))
        .unwrap();
    f.set_modified(later).unwrap();
    std::fs::set_permissions(top.join("script"), PermissionsExt::from_mode(0o700)).unwrap();
    for quick in [false, true] {
        let mut args = vec![rx.addr(), top.to_str().unwrap().to_owned(), "--json".into()];
        if quick {
            args.push("--quick-check".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let json = json_of(&out);
        assert_eq!(json["unchanged"], 2, "{json}");
        assert_eq!(json["bytes_sent"], 0, "{json}");
        assert_eq!(describe(&dst.path().join("top")), describe(&top));
    }

    // A receiver that does not replace files leaves its copy, and says so.
    let dst2 = tempfile::tempdir().unwrap();
    let rx2 = Zrecv::start(dst2.path(), &[]);
    std::fs::create_dir(dst2.path().join("top")).unwrap();
    std::fs::copy(top.join("data.bin"), dst2.path().join("top/data.bin")).unwrap();
    let out = zsend(&[&rx2.addr(), top.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("use --force"),
        "{}",
        stderr_of(&out)
    );
}

/// Without --force, a copy whose mode differs from the sender's (a chmod at the source) is
/// refused as one whose mtime differs is: it was reported unchanged, exit 0, keeping its old
/// mode. A link whose mtime alone differs is left as it is, without a failure.
#[test]
fn without_force_another_mode_is_not_taken_for_the_senders() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("script"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(top.join("script"), PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("script", top.join("link")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-q"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    std::fs::set_permissions(top.join("script"), PermissionsExt::from_mode(0o700)).unwrap();
    let long_ago = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: long_ago,
        last_modification: long_ago,
    };
    let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    rustix::fs::utimensat(rustix::fs::CWD, top.join("link"), &times, nofollow).unwrap();
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let json = json_of(&out);
    assert_eq!(json["failed"], 1, "{json}");
    assert!(
        err.contains("script") && err.contains("use --force"),
        "{err}"
    );
    let kept = std::fs::metadata(dst.path().join("top/script")).unwrap();
    assert_eq!(kept.permissions().mode() & 0o7777, 0o755);
}

/// With --force, a copy whose metadata changed at the source is set in place, but not one
/// with other names (a hard link another program made, perhaps to a file outside --dir): that
/// would set the mode on every name. It is sent again whole and replaces the name instead.
#[test]
fn a_copy_with_other_names_is_replaced_not_changed_in_place() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("f"), b"content").unwrap();
    std::fs::set_permissions(top.join("f"), PermissionsExt::from_mode(0o600)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-q"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join("f");
    std::fs::hard_link(dst.path().join("top/f"), &outside).unwrap();
    std::fs::set_permissions(top.join("f"), PermissionsExt::from_mode(0o644)).unwrap();
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_of(&out)["landed"], 1, "sent whole");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&outside), 0o600, "the other name keeps its mode");
    assert_eq!(mode(&dst.path().join("top/f")), 0o644);
    assert_eq!(std::fs::read(&outside).unwrap(), b"content");
}

/// A hard-link group across two top-level directories, one already on the receiver and one
/// new, lands as one file with both names, as rsync -H makes it: the new tree's name links the
/// file found in the tree already there. (For a while the link was refused, and the new tree
/// published without it.)
#[test]
fn a_hard_link_from_a_new_tree_to_a_tree_already_there_is_kept() {
    let src = tempfile::tempdir().unwrap();
    let (d1, d2) = (src.path().join("d1"), src.path().join("d2"));
    std::fs::create_dir(&d1).unwrap();
    std::fs::create_dir(&d2).unwrap();
    random_file(&d1.join("a"), 100_000, 12);
    std::fs::hard_link(d1.join("a"), d2.join("b")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), d1.to_str().unwrap(), "-q"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = zsend(&[
        &rx.addr(),
        d1.to_str().unwrap(),
        d2.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(json_of(&out)["hard_links"], 1);
    let a = std::fs::metadata(dst.path().join("d1/a")).unwrap();
    let b = std::fs::metadata(dst.path().join("d2/b")).unwrap();
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "one file, two names"
    );
}

/// A new tree is built hidden and published with one rename that never replaces anything: if
/// its name appears on the receiver meanwhile, nothing of it is published there, its files
/// fail (exit 9) and say why, and what was there stays as it was. (Sent with its owner, by a
/// sender with the token, to a root zrecv that keeps owners: the hidden tree left behind stays
/// zrecv's own, as the sweep requires of one it removes.)
#[test]
fn a_new_tree_whose_name_appears_meanwhile_is_not_published_over_it() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let tok = src.path().join("token");
    std::fs::write(&tok, "a token for the owner case\n").unwrap();
    let tok = tok.to_str().unwrap();
    let top = src.path().join("new");
    std::fs::create_dir(&top).unwrap();
    std::os::unix::fs::chown(&top, Some(65534), Some(65534)).unwrap();
    for i in 0..3 {
        random_file(&top.join(format!("f{i}")), 1 << 20, 70 + i);
    }
    // An mtime centuries ahead: the hidden tree left behind must not take it, or the sweep
    // would never remove it.
    let future = std::time::UNIX_EPOCH + std::time::Duration::from_secs(13_000_000_000);
    std::fs::File::open(&top)
        .unwrap()
        .set_modified(future)
        .unwrap();
    let rx = Zrecv::start(dst.path(), &["--token-file", tok, "--preserve-privileged"]);
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(1 << 20));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), top.to_str().unwrap(), "--token-file", tok])
        .args(["--owner", "--numeric-ids"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    // Half-way through, someone makes a directory of that name, with a file in it.
    assert!(!dst.path().join("new").exists(), "nothing visible yet");
    std::fs::create_dir(dst.path().join("new")).unwrap();
    std::fs::write(dst.path().join("new/theirs"), b"mine").unwrap();
    proxy.release();
    let out = wait_output(sender);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("appeared while the tree was received"),
        "{err}"
    );
    assert_eq!(entries(&dst.path().join("new")), ["theirs"]);
    // The tree that could not be published stays hidden, whole, as young as when it was
    // taken: the sweep removes it once nobody takes it up.
    let stage = stage_dir(dst.path());
    assert_eq!(entries(&stage).len(), 3, "{:?}", entries(&stage));
    let meta = std::fs::metadata(&stage).unwrap();
    let age = meta.modified().unwrap();
    assert!(age < std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.uid(),
        rustix::process::geteuid().as_raw(),
        "the sender's owner"
    );
}

/// A file of a hidden tree taken up that changed at the source since (same size) is sent
/// again whole, and a link that leads elsewhere now is made again, as everything in the hidden
/// tree is the receiver's own: both were refused ("use --force") and the tree published with
/// the old versions.
#[test]
fn a_file_changed_since_the_interruption_lands_in_the_tree_taken_up() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("set");
    std::fs::create_dir(&top).unwrap();
    let size: u64 = 16 << 20;
    random_file(&top.join("a.img"), size, 67);
    random_file(&top.join("b.img"), size, 68);
    symlink("a.img", top.join("current")).unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt_tree(&rx, &top, size + size / 2);
    assert!(stage_dir(dst.path()).join("a.img").exists());
    // The same size, other bytes; and the link leads elsewhere.
    random_file(&top.join("a.img"), size, 69);
    std::fs::remove_file(top.join("current")).unwrap();
    symlink("b.img", top.join("current")).unwrap();

    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(describe(&dst.path().join("set")), describe(&top));
}

/// A new tree whose name appeared meanwhile stays hidden, and nothing of the transfer touches
/// what appeared: a second pass (here for another tree's file sent again) used to set the
/// tree's mode, owner and mtime on the directory of that name.
#[test]
fn a_second_pass_leaves_a_directory_that_appeared_alone() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let set = src.path().join("set");
    std::fs::create_dir(&set).unwrap();
    let size: u64 = 16 << 20;
    random_file(&set.join("a.img"), size, 65);
    random_file(&set.join("b.img"), size, 66);
    let rx = Zrecv::start(dst.path(), &[]);
    interrupt_and_tamper(&rx, dst.path(), &set, size / 2);
    let new = src.path().join("new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("f"), b"new").unwrap();
    std::fs::set_permissions(&new, PermissionsExt::from_mode(0o755)).unwrap();

    // Both trees, `new` appearing on the receiver while the first pass runs.
    let proxy = Proxy::start(rx.addr, Fault::PauseAt(4 << 20));
    let sender = Command::new(zsend_bin())
        .args([&proxy.addr(), set.to_str().unwrap(), new.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    let theirs = dst.path().join("new");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, PermissionsExt::from_mode(0o711)).unwrap();
    proxy.release();
    let out = wait_output(sender);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("appeared while the tree was received"),
        "{err}"
    );
    rx.wait_for_line("asking for it whole");
    let mode = std::fs::metadata(&theirs).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o711, "the directory that appeared was changed");
    assert!(entries(&theirs).is_empty(), "{:?}", entries(&theirs));
    assert_eq!(describe(&dst.path().join("set")), describe(&set));
}

/// A tree sent again is compared with the roots each end remembered for the files it landed,
/// sent or hashed, without reading them. A copy changed since (bytes rewritten, its mtime put
/// back), here or at the source, no longer has the identity its root was remembered with (its
/// ctime moved): it is read and found different. `--rehash` reads every file (on either end); a
/// damaged file of roots is ignored.
#[test]
fn a_remembered_root_never_hides_a_change_made_here() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("kept");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    random_file(&top.join("a.bin"), 300_000, 91);
    random_file(&top.join("sub/b.bin"), 5_000, 92);
    random_file(&top.join("sub/c.bin"), 1 << 20, 93);
    let tree = top.to_str().unwrap();
    // One receiver per step, each telling what it did on its own --json line.
    let step = |dst: &Path, rx_args: &[&str], args: &[&str]| {
        let mut rx = Zrecv::start(dst, &[&["--json"], rx_args].concat());
        let mut zargs = vec![rx.addr(), "--json".into(), tree.to_owned()];
        zargs.extend(args.iter().map(|s| s.to_string()));
        let zargs: Vec<&str> = zargs.iter().map(String::as_str).collect();
        let out = zsend(&zargs);
        let line: serde_json::Value = serde_json::from_str(&rx.stdout_line()).unwrap();
        (json_of(&out), line["tree"].clone())
    };
    let counts = |sent: &serde_json::Value| (sent["unchanged"].clone(), sent["failed"].clone());
    let (sent, _) = step(dst.path(), &[], &[]);
    assert_eq!(sent["landed"], 3, "{sent}");
    // A root is remembered once the clock has passed the file's ctime: by the second send
    // every file's is, on both ends (it was hashed then if not when it landed or went out).
    let (sent, _) = step(dst.path(), &[], &[]);
    assert_eq!(counts(&sent), (3.into(), 0.into()), "{sent}");
    let (sent, here) = step(dst.path(), &[], &[]);
    assert_eq!(counts(&sent), (3.into(), 0.into()), "{sent}");
    assert_eq!(sent["verified"], true, "{sent}");
    assert_eq!(sent["remembered"], 3, "{sent}");
    assert_eq!(here["remembered"], 3, "{here}");

    // Other bytes under the same size and mtime, here: read and refused.
    let rewrite = |path: &Path| {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"changed in place", 10).unwrap();
        f.set_modified(mtime).unwrap();
    };
    rewrite(&dst.path().join("kept/sub/b.bin"));
    let (sent, here) = step(dst.path(), &[], &[]);
    assert_eq!(counts(&sent), (2.into(), 1.into()), "{sent}");
    assert!(
        sent["failures"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("exists with other content")),
        "{sent}"
    );
    assert_eq!(here["remembered"], 2, "{here}");

    // --rehash reads them all, and finds the same.
    let (sent, here) = step(dst.path(), &["--rehash"], &["--rehash"]);
    assert_eq!(counts(&sent), (2.into(), 1.into()), "{sent}");
    assert_eq!(sent["remembered"], 0, "{sent}");
    assert_eq!(here["remembered"], 0, "{here}");

    // A file of roots with one byte changed is not believed: every file here is read.
    let roots: Vec<_> = std::fs::read_dir(dst.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_roots(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let mut bytes = std::fs::read(&roots[0]).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&roots[0], &bytes).unwrap();
    let (sent, here) = step(dst.path(), &[], &[]);
    assert_eq!(counts(&sent), (2.into(), 1.into()), "{sent}");
    assert_eq!(here["remembered"], 0, "{here}");

    // The same at the source: a file rewritten there is read again, and found different
    // from the copy on a receiver that remembers the old one.
    let dst2 = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        step(dst2.path(), &[], &[]);
    }
    rewrite(&top.join("a.bin"));
    let (sent, here) = step(dst2.path(), &[], &[]);
    assert_eq!(counts(&sent), (2.into(), 1.into()), "{sent}");
    assert_eq!(sent["remembered"], 2, "{sent}");
    // The receiver's remembered root of a.bin is not the sender's: that proves nothing, and
    // it reads its copy.
    assert_eq!(here["remembered"], 2, "{here}");
}

#[test]
fn a_tree_sent_again_is_answered_for_what_is_here_now() {
    // Many entries: the receiver looks at what is here ahead of its answers. Whatever changed
    // here since the first copy is answered for as it is now.
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("many");
    for d in 0..30 {
        for f in 0..10 {
            let path = top.join(format!("d{d:02}/f{f}"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            random_file(&path, 1000 + d * 10 + f, d * 10 + f);
        }
    }
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let send = || {
        let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
        (out.status.code(), json_of(&out))
    };
    let (code, json) = send();
    assert_eq!((code, &json["landed"]), (Some(0), &300.into()), "{json}");

    let here = dst.path().join("many");
    // A directory gone (its files come again), a file gone, a file that is a directory now
    // (refused), and a file with other bytes under the same size and mtime (sent again).
    std::fs::remove_dir_all(here.join("d05")).unwrap();
    std::fs::remove_file(here.join("d11/f2")).unwrap();
    std::fs::remove_file(here.join("d07/f3")).unwrap();
    std::fs::create_dir(here.join("d07/f3")).unwrap();
    let changed = here.join("d09/f1");
    let mtime = std::fs::metadata(&changed).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&changed)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"other bytes", 100).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);

    let (code, json) = send();
    assert_eq!(code, Some(9), "{json}");
    let counts = ["landed", "unchanged", "failed"].map(|k| json[k].as_u64());
    assert_eq!(counts, [Some(12), Some(287), Some(1)], "{json}");
    assert!(
        json["failures"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("d07/f3"),
        "{json}"
    );
    for d in [5, 9, 11] {
        for f in 0..10 {
            let rel = format!("d{d:02}/f{f}");
            assert_eq!(
                sha256_file(&here.join(&rel)),
                sha256_file(&top.join(&rel)),
                "{rel}"
            );
        }
    }
    assert!(here.join("d07/f3").is_dir());
}

#[test]
fn a_tree_whose_names_are_not_utf8_resumes() {
    use std::os::unix::ffi::OsStrExt;
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join(std::ffi::OsStr::from_bytes(b"vm\xff"));
    std::fs::create_dir(&top).unwrap();
    let size: u64 = 16 << 20;
    let names: Vec<Vec<u8>> = (0..4u8)
        .map(|i| [b"disk", &[b'0' + i, 0xfe][..], b".img"].concat())
        .collect();
    for (i, name) in names.iter().enumerate() {
        random_file(
            &top.join(std::ffi::OsStr::from_bytes(name)),
            size,
            60 + i as u64,
        );
    }
    let rx = Zrecv::start(dst.path(), &[]);
    // Stopped in the middle of the third file, the sender killed there.
    interrupt_tree(&rx, &top, 2 * size + size / 2);

    let out = Command::new(zsend_bin())
        .arg(rx.addr())
        .arg(&top)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(json["unchanged"], 2, "{json}");
    assert!(
        json["resumed_from"].as_u64().unwrap() > 0,
        "{json}\n{}",
        rx.stderr()
    );
    let here = dst.path().join(std::ffi::OsStr::from_bytes(b"vm\xff"));
    for name in &names {
        let name = std::ffi::OsStr::from_bytes(name);
        assert_eq!(sha256_file(&here.join(name)), sha256_file(&top.join(name)));
    }
}

/// A minimal default ACL as the kernel stores it: the owner everything, the group and others
/// nothing.
fn owner_only_default_acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

/// A new tree's files are made with their final modes where the kernel gives them whole, to
/// spare a chmod each: whatever zrecv's umask, and whatever default ACL the receive directory
/// has, every file still lands with exactly the mode it was sent with.
#[test]
fn modes_land_exactly_whatever_the_umask_and_a_default_acl() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("modes");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    let modes = [
        0o644, 0o755, 0o640, 0o600, 0o666, 0o700, 0o444, 0o604, 0o1644,
    ];
    let mut want = Vec::new();
    for dir in [".", "sub"] {
        for mode in modes {
            let rel = format!("{dir}/m{mode:o}");
            std::fs::write(top.join(&rel), &rel).unwrap();
            let perms = std::fs::Permissions::from_mode(mode);
            std::fs::set_permissions(top.join(&rel), perms).unwrap();
            want.push((rel, mode));
        }
    }
    let umask_077: &[&str] = &["sh", "-c", "umask 077 && exec \"$0\" \"$@\""];
    let plain = tempfile::tempdir().unwrap();
    let with_acl = tempfile::tempdir().unwrap();
    let acl = owner_only_default_acl();
    let flags = rustix::fs::XattrFlags::empty();
    rustix::fs::setxattr(with_acl.path(), "system.posix_acl_default", &acl, flags).unwrap();
    for (dst, wrapper) in [(plain.path(), Some(umask_077)), (with_acl.path(), None)] {
        let mut rx = Zrecv::start_with(wrapper, dst, "127.0.0.1:0", &["--once"]);
        let out = zsend(&[&rx.addr(), top.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(rx.wait().success(), "{}", rx.stderr());
        for (rel, mode) in &want {
            let got = std::fs::metadata(dst.join("modes").join(rel))
                .unwrap()
                .mode();
            assert_eq!(got & 0o7777, *mode, "{rel} in {}", dst.display());
        }
    }
}
