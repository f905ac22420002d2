//! Nothing lands outside the receive directory even where openat2 is missing: zrecv runs under
//! strace with every openat2 answered ENOSYS, as on kernels before 5.6, or EPERM, as under
//! some container seccomp profiles, so that every open goes through the fallback.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::util::*;

/// Starts a `--once` zrecv on `dir` whose openat2 calls all fail with `errno` (such as
/// `ENOSYS`), tracing them into `trace`.
fn zrecv_without_openat2(dir: &Path, trace: &Path, errno: &str) -> Zrecv {
    let ok = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is required for this test (scripts/test installs it)"
    );
    let wrap = [
        "strace",
        "-f",
        "-qq",
        "-o",
        trace.to_str().unwrap(),
        "-e",
        "trace=openat2",
        "-e",
        &format!("inject=openat2:error={errno}"),
    ];
    Zrecv::start_with(Some(&wrap), dir, "127.0.0.1:0", &["--once"])
}

/// How many openat2 calls strace answered `errno` itself, and how many it let through.
fn openat2_calls(trace: &Path, errno: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(trace).unwrap();
    let calls: Vec<&str> = text.lines().filter(|l| l.contains("openat2(")).collect();
    let answer = format!("= -1 {errno} ");
    let injected = calls
        .iter()
        .filter(|l| l.contains(&answer) && l.ends_with("(INJECTED)"))
        .count();
    (injected, calls.len() - injected)
}

#[test]
fn a_link_in_the_middle_of_a_path_is_never_followed_without_openat2() {
    planted_link_is_not_followed("ENOSYS");
}

#[test]
fn a_link_in_the_middle_of_a_path_is_never_followed_when_openat2_is_forbidden() {
    planted_link_is_not_followed("EPERM");
}

/// A tokenless sender names `esc/victim/planted.txt` where the receive directory holds a
/// symlink `esc` pointing out of it, and zrecv's openat2 fails with `errno`: the file must not
/// land in the link's target. The same fallback still lands an ordinary nested tree sent
/// beside it, into fresh directories and into directories that were already there.
fn planted_link_is_not_followed(errno: &str) {
    let root = tempfile::tempdir().unwrap();
    let outer = root.path().join("outer");
    let dst = outer.join("dst");
    std::fs::create_dir_all(dst.join("innocent/a/b")).unwrap();
    std::fs::create_dir(outer.join("victim")).unwrap();
    symlink(&outer, dst.join("esc")).unwrap();

    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("esc/victim")).unwrap();
    std::fs::write(src.path().join("esc/victim/planted.txt"), b"owned\n").unwrap();
    let innocent = src.path().join("innocent");
    std::fs::create_dir_all(innocent.join("a/b/c/d")).unwrap();
    std::fs::create_dir_all(innocent.join("e/f")).unwrap();
    let files = [
        "a/b/there.bin",
        "a/b/c/d/deep.bin",
        "e/f/other.bin",
        "top.bin",
    ];
    for (seed, f) in files.iter().enumerate() {
        random_file(&innocent.join(f), 50_000 << seed, seed as u64);
    }

    let traces = tempfile::tempdir().unwrap();
    let trace = traces.path().join("zrecv.trace");
    let mut rx = zrecv_without_openat2(&dst, &trace, errno);
    let esc = src.path().join("esc");
    let out = zsend(&[
        &rx.addr(),
        esc.to_str().unwrap(),
        innocent.to_str().unwrap(),
    ]);
    rx.wait();
    let err = stderr_of(&out);

    assert_eq!(
        entries(&outer.join("victim")),
        Vec::<String>::new(),
        "a file landed outside --dir; zsend said:\n{err}\nzrecv said:\n{}",
        rx.stderr()
    );
    assert_eq!(entries(&outer), ["dst", "victim"]);
    let link = std::fs::symlink_metadata(dst.join("esc")).unwrap();
    assert!(
        link.file_type().is_symlink(),
        "the planted link is left as it was"
    );
    // Some entries failed and some landed: the tree's partial-failure code, naming the file.
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("planted.txt"), "{err}");
    for f in files {
        let landed = dst.join("innocent").join(f);
        assert!(landed.is_file(), "{f} did not land; zsend said:\n{err}");
        assert_eq!(sha256_file(&landed), sha256_file(&innocent.join(f)), "{f}");
    }
    let (injected, through) = openat2_calls(&trace, errno);
    assert!(
        injected > 0,
        "strace answered no openat2: the fallback never ran"
    );
    assert_eq!(through, 0, "an openat2 escaped the injection");
}
