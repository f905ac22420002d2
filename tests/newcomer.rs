//! What a new user trips over first: a bare command, a wrong directory, swapped or impossible
//! arguments, a receiver that goes away, a port that is not a zrecv, Ctrl-C, a sparse image's
//! summary, an unreadable directory in a tree. Each is answered with what happened and what to
//! do, and the right exit code.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::mpsc;

use zcommon::{read_hello, Reply};

use crate::util::*;

#[test]
fn bare_zrecv_prints_the_usage_and_listens_nowhere() {
    let out = run_bounded(&mut Command::new(zrecv_bin()));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("Usage: zrecv"), "{all}");
    assert!(!all.lines().any(|l| l.starts_with("listening on")), "{all}");
}

#[test]
fn a_missing_receive_directory_is_named_as_such() {
    let out = run_bounded(Command::new(zrecv_bin()).args([
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--dir",
        "/nonexistent/inbox",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_of(&out).trim(),
        "zrecv: receive directory /nonexistent/inbox: no such file or directory"
    );
}

/// Usage mistakes are usage errors (exit 2) that say what to type instead.
#[test]
fn usage_mistakes_are_usage_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, b"data").unwrap();
    let f = file.to_str().unwrap();
    let cases: [(&[&str], String); 5] = [
        (
            &[f, "127.0.0.1:7350"],
            format!("the receiver comes first: zsend 127.0.0.1:7350 {f}"),
        ),
        (
            &["--to", "127.0.0.1:7351,127.0.0.1:7352", "127.0.0.1:7350", f],
            "--to and HOST:PORT are exclusive".into(),
        ),
        (
            &["127.0.0.1:70000", f],
            "127.0.0.1:70000: port 70000 is out of range (1 to 65535)".into(),
        ),
        (
            &["--to", "127.0.0.1:7351,127.0.0.1:99999", f],
            "port 99999 is out of range".into(),
        ),
        (
            &["--name", "../x", "127.0.0.1:7350", f],
            "--name ../x".into(),
        ),
    ];
    for (args, says) in cases {
        let out = zsend(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&says), "{args:?}: {err}");
    }
}

/// A receiver that accepts and then closes the connection in the middle of the payload.
fn vanishing_receiver(after: usize) -> (String, std::thread::JoinHandle<()>) {
    fake_peer(move |mut s| {
        read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        let mut got = vec![0u8; after];
        s.read_exact(&mut got).unwrap();
        // Closing with unread data resets the connection: the sender's next write fails.
    })
}

#[test]
fn a_receiver_that_goes_away_is_named_with_how_far_the_transfer_got() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    random_file(&file, 64 << 20, 7);
    let (addr, peer) = vanishing_receiver(1 << 20);
    let out = zsend(&[&addr, file.to_str().unwrap()]);
    peer.join().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with(&format!("zsend: receiver {addr} went away after ")),
        "{err}"
    );
    assert!(line.contains(" of 64.0 MiB ("), "{err}");
    assert!(
        line.ends_with("; run the same command again to resume"),
        "{err}"
    );
}

#[test]
fn a_port_that_never_answers_like_a_zrecv_is_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, b"data").unwrap();
    let (done, wait) = mpsc::channel::<()>();
    // Reads the hello and says nothing, as a server of another protocol waiting for its own.
    let (addr, peer) = fake_peer(move |mut s| {
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf);
        let _ = wait.recv_timeout(PROCESS_TIMEOUT);
    });
    let out = zsend(&["--timeout", "1", &addr, file.to_str().unwrap()]);
    done.send(()).unwrap();
    peer.join().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "zsend: {addr} accepted the connection but said nothing in 1 s: is a zrecv \
             listening there? (a zrecv answers at once, or says it is waiting)"
        )
    );
}

#[test]
fn ctrl_c_says_how_far_the_transfer_got_and_how_to_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    random_file(&file, 64 << 20, 8);
    let out = zsend_interrupted(&[], file.to_str().unwrap());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("zsend: interrupted after "), "{err}");
    assert!(
        line.ends_with(" of 64.0 MiB; run the same command again to resume"),
        "{err}"
    );
    // Nothing is kept of a --no-verify transfer: the line does not promise a resume.
    let out = zsend_interrupted(&["--no-verify"], file.to_str().unwrap());
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.trim_end().ends_with(
            "; without verification nothing is resumed: run the same command again to send it \
             again"
        ),
        "{err}"
    );
}

#[test]
fn the_summary_of_a_sparse_image_says_how_much_data_crossed() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let image = src.path().join("vm.img");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 1 << 20], 32 << 20).unwrap();
    drop(f);
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let out = zsend(&[&rx.addr(), image.to_str().unwrap()]);
    assert!(rx.wait().success());
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("(64.0 MiB, 1.0 MiB of data on the wire)"),
        "{err}"
    );
}

#[test]
fn an_unreadable_directory_in_a_tree_is_named_and_counted() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    // The sender runs as nobody, so a directory closed to others is unreadable to it.
    std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let top = src.path().join("top");
    std::fs::create_dir_all(top.join("locked")).unwrap();
    std::fs::write(top.join("a.txt"), b"a").unwrap();
    std::fs::write(top.join("locked/b.txt"), b"b").unwrap();
    for (p, mode) in [(top.clone(), 0o755), (top.join("a.txt"), 0o644)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(top.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let args = [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        zsend_bin(),
        &rx.addr(),
        top.to_str().unwrap(),
    ];
    let out = run_bounded(Command::new("setpriv").args(args));
    let _ = rx.wait();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let locked = top.join("locked");
    let warning = format!(
        "zsend: warning: cannot read {}: permission denied",
        locked.display()
    );
    assert_eq!(err.lines().filter(|l| *l == warning).count(), 1, "{err}");
    assert!(dst.path().join("top/a.txt").exists());
}

/// `-v` says which data path carried the file, its shape, where it started, and the time of each
/// phase; without it, none of that.
#[test]
fn verbose_says_which_data_path_was_used_and_how_long_each_phase_took() {
    let src = tempfile::tempdir().unwrap();
    let image = src.path().join("vm.img");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(16 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 1 << 20], 4 << 20).unwrap();
    drop(f);
    for (flags, told) in [(&["-v"][..], true), (&[][..], false)] {
        let dst = tempfile::tempdir().unwrap();
        let mut rx = Zrecv::start(dst.path(), &["--once"]);
        let mut args = flags.to_vec();
        let addr = rx.addr();
        args.extend([addr.as_str(), image.to_str().unwrap()]);
        let out = zsend(&args);
        assert!(rx.wait().success());
        let err = stderr_of(&out);
        assert!(out.status.success(), "{err}");
        let says = [
            "zsend: data path: sendfile, from the page cache to the socket (zero-copy); sparse: \
             1.0 MiB of data sent, 15.0 MiB of holes not; from byte 0",
            "zsend: time: connecting and waiting for the receiver ",
            ", sending ",
            ", the receiver landing it ",
        ];
        for s in says {
            assert_eq!(err.contains(s), told, "{flags:?}: {s:?} in {err}");
        }
    }
}

/// Sending a file that is already there is "already there", exit 0, as for a tree (and as rsync
/// says nothing to do); another file under that name is still refused without --force, even
/// with the same size and mtime.
#[test]
fn a_file_already_there_is_already_there_and_another_one_is_still_refused() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("disk.img");
    random_file(&file, 4 << 20, 9);
    let rx = Zrecv::start(dst.path(), &[]);
    let f = file.to_str().unwrap();
    let out = zsend(&[&rx.addr(), f]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    let out = zsend(&[&rx.addr(), f]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "zsend: disk.img is already on {} with the same content (roots compared); nothing \
             sent",
            rx.addr()
        )
    );

    // Other bytes, the same size and mtime: compared, found different, refused.
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    let g = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&g, b"changed", 1000).unwrap();
    g.set_modified(mtime).unwrap();
    drop(g);
    let out = zsend(&[&rx.addr(), f]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("file exists (use --force on the receiver)"),
        "{err}"
    );
    assert_eq!(visible(dst.path()), vec!["disk.img"]);
    assert_ne!(
        sha256_file(&dst.path().join("disk.img")),
        sha256_file(&file),
        "the file there was not replaced"
    );
}

/// `-vv` tells, for a tree, what became of each file; `-v` does not.
#[test]
fn very_verbose_says_what_became_of_each_file_of_a_tree() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("docs");
    std::fs::create_dir(&top).unwrap();
    for n in ["a.txt", "b.txt"] {
        std::fs::write(top.join(n), n).unwrap();
    }
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&["-vv", &rx.addr(), top.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    for n in ["a.txt", "b.txt"] {
        assert!(
            err.contains(&format!("zsend: debug: docs/{n}: landed\n")),
            "{err}"
        );
    }
    std::fs::write(top.join("c.txt"), "c").unwrap();
    let out = zsend(&["-v", &rx.addr(), top.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(": landed"), "{err}");
    let out = zsend(&["-vv", &rx.addr(), top.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(
        err.contains("zsend: debug: docs/a.txt: already there (roots compared)\n"),
        "{err}"
    );
}
