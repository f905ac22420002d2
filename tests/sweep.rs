//! The stale-partial sweep runs while zrecv serves, and reaches the partials that trees keep in
//! subdirectories.

use std::time::{Duration, SystemTime};

use crate::util::*;

/// A kept partial (a `.zrecv-KEY.part` and its `.zrecv-KEY.resume`) that nobody resumes is
/// removed by the running zrecv once older than `--partial-max-age`, however deep in the tree;
/// the user's files there are kept however old.
#[test]
fn a_stale_partial_in_a_subdirectory_is_swept_while_zrecv_serves() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--partial-max-age", "2s"]);

    // Made aside, then moved in at once: only a sweep after start-up can find them.
    let staging = tempfile::tempdir().unwrap();
    let disks = staging.path().join("vm/disks");
    std::fs::create_dir_all(&disks).unwrap();
    let key = "0123456789abcdef0123456789abcdef";
    let names = [
        format!(".zrecv-{key}.part"),
        format!(".zrecv-{key}.resume"),
        "old.img".to_owned(),
    ];
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for name in &names {
        let f = std::fs::File::create(disks.join(name)).unwrap();
        f.set_modified(an_hour_ago).unwrap();
    }
    std::fs::rename(staging.path().join("vm"), dst.path().join("vm")).unwrap();

    let line = rx.wait_for_line("stale temporary file(s) older than 2s");
    assert!(line.contains("removed 2 stale temporary file(s)"), "{line}");
    assert!(
        line.contains(&format!("vm/disks/.zrecv-{key}.part")),
        "{line}"
    );
    let disks = dst.path().join("vm/disks");
    assert_eq!(entries(&disks), vec!["old.img"]);

    // The same zrecv still serves.
    let path = src.path().join("after.bin");
    random_file(&path, 100_000, 5);
    let out = zsend(&[&rx.addr(), path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        sha256_file(&dst.path().join("after.bin")),
        sha256_file(&path)
    );
}
