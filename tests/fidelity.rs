//! Trees as faithful as `rsync -aHAX`: a tree holding every kind of entry and metadata is sent
//! with `zsend -a` and copied with Debian's rsync, and the two copies are compared entry by
//! entry; then what a receiver without the privileged rule keeps, and hard links.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rustix::fs::XattrFlags;

use crate::util::*;

/// Every entry below `root`, `root` itself included (as ""), never following a link: its type,
/// full mode, owner, size, content digest, link target, device number, mtime, extended
/// attributes (ACLs and capabilities among them), and which hard-link group it is in (named
/// by the first path of the group, so that two trees can be compared).
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        found.push((rel, path, m));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut groups: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (rel, path, m) in found {
        let ft = m.file_type();
        let what = if ft.is_symlink() {
            format!(
                "link -> {:?}",
                std::fs::read_link(&path).unwrap().as_os_str()
            )
        } else if m.is_file() {
            let group = groups
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| rel.clone());
            format!("file {} {} group {group}", m.len(), sha256_file(&path))
        } else if m.is_dir() {
            "dir".into()
        } else {
            format!("special {:o} rdev {:x}", m.mode() & 0o170000, m.rdev())
        };
        let mode = match ft.is_symlink() {
            true => String::new(),
            false => format!(" mode {:o}", m.mode() & 0o7777),
        };
        let line = format!(
            "{what}{mode} owner {}:{} mtime {}.{} xattrs {:?}",
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            xattrs(&path)
        );
        out.insert(rel, line);
    }
    out
}

fn xattrs(path: &Path) -> Vec<(String, String)> {
    let mut list = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap_or(0);
    let mut out = Vec::new();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap().to_owned();
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
        out.push((name, hex::encode(&value[..len])));
    }
    out.sort();
    out
}

/// A POSIX access ACL as the kernel stores it: owner rw, user 1234 r, group r, mask r,
/// other none.
fn acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// `cap_net_bind_service+ep`, as `security.capability` holds it (revision 2).
fn capability() -> Vec<u8> {
    [0x0200_0001u32, 1 << 10, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn mknod(path: &Path, kind: rustix::fs::FileType, dev: rustix::fs::Dev) {
    let mode = rustix::fs::Mode::from_raw_mode(0o640);
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, dev).unwrap();
}

/// Every case the issue lists that a Linux name can hold in UTF-8.
fn every_case(top: &Path) {
    std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
    std::fs::create_dir(top.join("tmp")).unwrap();
    std::fs::set_permissions(top.join("tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::create_dir(top.join("shared")).unwrap();
    chown(&top.join("shared"), 0, 4321);
    std::fs::set_permissions(top.join("shared"), PermissionsExt::from_mode(0o2775)).unwrap();
    std::fs::write(top.join("plain"), b"plain").unwrap();
    std::fs::write(top.join("theirs"), b"someone else's").unwrap();
    chown(&top.join("theirs"), 1234, 4321);
    std::fs::write(top.join("suid"), b"#!/bin/sh\n").unwrap();
    chown(&top.join("suid"), 1234, 4321);
    std::fs::set_permissions(top.join("suid"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::write(top.join("sgid"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(top.join("sgid"), PermissionsExt::from_mode(0o2755)).unwrap();
    // A hard-link group of three, across directories.
    random_file(&top.join("linked"), 200_000, 7);
    std::fs::hard_link(top.join("linked"), top.join("sub/linked-too")).unwrap();
    std::fs::hard_link(top.join("linked"), top.join("sub/deeper/and-again")).unwrap();
    // Links of every kind.
    symlink("plain", top.join("to-plain")).unwrap();
    symlink("../plain", top.join("sub/up-to-plain")).unwrap();
    symlink("/etc/passwd", top.join("absolute")).unwrap();
    symlink("nowhere/at/all", top.join("dangling")).unwrap();
    symlink("../../outside", top.join("sub/outward")).unwrap();
    std::os::unix::fs::lchown(top.join("to-plain"), Some(1234), Some(4321)).unwrap();
    // Attributes, an ACL, a capability.
    let set = |p: &str, name: &str, value: &[u8]| {
        rustix::fs::setxattr(top.join(p), name, value, XattrFlags::empty()).unwrap()
    };
    set("plain", "user.colour", b"blue");
    set("sub", "user.purpose", b"holds things");
    set("theirs", "system.posix_acl_access", &acl());
    set("sub", "system.posix_acl_default", &acl());
    set("plain", "trusted.note", b"for root");
    std::fs::write(top.join("server"), b"\x7fELF").unwrap();
    std::fs::set_permissions(top.join("server"), PermissionsExt::from_mode(0o755)).unwrap();
    set("server", "security.capability", &capability());
    // Special files and devices.
    mknod(&top.join("fifo"), rustix::fs::FileType::Fifo, 0);
    mknod(&top.join("socket"), rustix::fs::FileType::Socket, 0);
    mknod(
        &top.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &top.join("loop"),
        rustix::fs::FileType::BlockDevice,
        rustix::fs::makedev(7, 200),
    );
    // Links, fifos and devices hold trusted and security attributes (and ACLs, but links).
    let lset = |p: &str, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(top.join(p), name, value, XattrFlags::empty()).unwrap()
    };
    lset("absolute", "trusted.link-note", b"on the link itself");
    lset("to-plain", "security.label", b"system_u:object_r:etc_t");
    lset("fifo", "trusted.fifo-note", b"a pipe");
    lset("fifo", "system.posix_acl_access", &acl());
    lset("null", "security.label", b"system_u:object_r:null_device_t");
    // Names are bytes: unicode, bytes that are not UTF-8, newlines, tabs, escapes.
    std::fs::write(top.join("ünïcødé name ✓"), b"u").unwrap();
    let raw = |b: &[u8]| top.join(std::ffi::OsStr::from_bytes(b));
    std::fs::write(raw(b"latin1-caf\xe9"), b"l").unwrap();
    std::fs::write(raw(b"new\nline"), b"n").unwrap();
    std::fs::write(raw(b"tab\there"), b"t").unwrap();
    std::fs::write(raw(b"esc\x1b[31mred"), b"e").unwrap();
    std::fs::create_dir(raw(b"dir-\xff")).unwrap();
    std::fs::write(raw(b"dir-\xff/inner-\xfe"), b"i").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"dir-\xff"), raw(b"to-\xff")).unwrap();
    // Times last, deepest first (making entries in a directory moves its mtime), each its own,
    // links included, in seconds long past: rsync leaves a time alone when it is within the
    // second the copy is made in.
    let mut all = Vec::new();
    let mut stack = vec![top.to_owned()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        all.push(p);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let when = rustix::fs::Timespec {
            tv_sec: 1_400_000_000 + 1000 * i as i64,
            tv_nsec: 7 * i as i64 + 1,
        };
        let times = rustix::fs::Timestamps {
            last_access: when,
            last_modification: when,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

fn token(dir: &Path) -> String {
    let p = dir.join("token");
    std::fs::write(&p, "a shared secret of some length\n").unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn an_archive_tree_lands_as_rsync_ahax_copies_it() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    every_case(&top);
    let by_rsync = tempfile::tempdir().unwrap();
    let out = run_bounded(
        Command::new("rsync")
            .arg("-aHAX")
            .arg(&top)
            .arg(by_rsync.path()),
    );
    assert!(out.status.success(), "rsync: {}", stderr_of(&out));

    let by_zsend = tempfile::tempdir().unwrap();
    let tok = token(src.path());
    let mut rx = Zrecv::start(
        by_zsend.path(),
        &["--once", "--token-file", &tok, "--preserve-privileged"],
    );
    let out = zsend(&[
        &rx.addr(),
        top.to_str().unwrap(),
        "-a",
        "--token-file",
        &tok,
        "--json",
    ]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(rx.wait().success(), "{}", rx.stderr());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hard_links"], 2, "{json}");
    assert_eq!(json["links"], 6, "{json}");
    assert_eq!(json["specials"], 4, "{json}");
    assert_eq!(json["unkept"], 0, "{json}");
    // The group of three crossed once.
    assert!(json["bytes_sent"].as_u64().unwrap() < 2 * 200_000, "{json}");

    let source = snapshot(&top);
    let got = snapshot(&by_zsend.path().join("top"));
    let by_rsync = snapshot(&by_rsync.path().join("top"));
    // Entry by entry, as rsync copies it, and as the source is.
    for (path, want) in &by_rsync {
        assert_eq!(got.get(path), Some(want), "{path:?}");
    }
    assert_eq!(got.len(), by_rsync.len(), "{got:#?}");
    assert_eq!(by_rsync, source, "rsync's copy is the source");
    assert_eq!(got, source);
}

/// Sets `path`'s mtime (never following a link) to `sec` seconds since the epoch.
fn set_mtime(path: &Path, sec: i64) {
    let when = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: when,
        last_modification: when,
    };
    let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, nofollow).unwrap();
}

/// A tree sent again to a receiver that replaces files (`--force`) ends as `rsync -aHAX`
/// leaves it: a directory already there takes its new mode, owner and mtime (its mtime also
/// when something new landed in it), a link its new owner and mtime, a fifo its new mode. Only
/// files took what changed before; the rest kept the first copy's metadata, silently.
#[test]
fn a_tree_sent_again_takes_the_sources_new_metadata_as_rsync_does() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    every_case(&top);
    let tok = token(src.path());
    let by_rsync = tempfile::tempdir().unwrap();
    let by_zsend = tempfile::tempdir().unwrap();
    let copy = || {
        let out = run_bounded(
            Command::new("rsync")
                .arg("-aHAX")
                .arg(&top)
                .arg(by_rsync.path()),
        );
        assert!(out.status.success(), "rsync: {}", stderr_of(&out));
        let rx_args = ["--once", "--token-file", &tok, "--preserve-privileged"];
        let mut rx = Zrecv::start(by_zsend.path(), &[&rx_args[..], &["--force"]].concat());
        let tx_args = ["-a", "--token-file", &tok];
        let out = zsend(&[&[&rx.addr()[..], top.to_str().unwrap()][..], &tx_args].concat());
        assert!(out.status.success(), "{}", stderr_of(&out));
        assert!(rx.wait().success(), "{}", rx.stderr());
    };
    copy();
    // What is there already changes its metadata only; one directory gets a new file.
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(top.join(p), PermissionsExt::from_mode(m)).unwrap()
    };
    mode("sub", 0o700);
    mode("tmp", 0o755);
    mode("fifo", 0o600);
    mode("plain", 0o600);
    chown(&top.join("shared"), 7, 7);
    chown(&top.join("to-plain"), 99, 99);
    std::fs::write(top.join("sub/deeper/new"), b"new").unwrap();
    for (p, when) in [
        ("sub/deeper/new", 1_500_000_000),
        ("sub/deeper", 1_500_000_100),
        ("tmp", 1_500_000_200),
        ("absolute", 1_500_000_300),
        ("fifo", 1_500_000_400),
        ("", 1_500_000_500),
    ] {
        set_mtime(&top.join(p), when);
    }
    copy();
    let source = snapshot(&top);
    let by_rsync = snapshot(&by_rsync.path().join("top"));
    let got = snapshot(&by_zsend.path().join("top"));
    assert_eq!(by_rsync, source, "rsync's copy is the source");
    for (path, want) in &source {
        assert_eq!(got.get(path), Some(want), "{path:?}");
    }
    assert_eq!(got, source);
}

#[test]
fn privileged_metadata_needs_the_token_and_the_receivers_consent() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    every_case(&top);
    let tok = token(src.path());
    // With the token but without --preserve-privileged; then with it but without the token.
    for (rx_args, tx_token) in [
        (vec!["--once", "--token-file", &tok], true),
        (
            vec!["--once", "--preserve-privileged", "--trust-links"],
            false,
        ),
    ] {
        let dst = tempfile::tempdir().unwrap();
        let mut rx = Zrecv::start(dst.path(), &rx_args);
        let mut args = vec![rx.addr(), top.to_str().unwrap().to_owned(), "-a".into()];
        args.push("--json".into());
        if tx_token {
            args.extend(["--token-file".to_owned(), tok.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(9), "{err}");
        rx.wait();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // theirs, suid, sgid?, shared, to-plain, plain (trusted.*), server (security.*): each
        // carries something privileged; the devices are refused.
        assert!(json["unkept"].as_u64().unwrap() >= 5, "{json}");
        assert_eq!(json["failed"], 2, "{json}");
        assert!(err.contains("device file"), "{err}");
        assert!(err.contains("without the owners"), "{err}");
        let got = dst.path().join("top");
        let suid = std::fs::metadata(got.join("suid")).unwrap();
        assert_eq!(suid.mode() & 0o7777, 0o755, "no setuid bit");
        assert_eq!(suid.uid(), 0, "the receiver's own");
        assert_eq!(std::fs::metadata(got.join("theirs")).unwrap().uid(), 0);
        let plain = xattrs(&got.join("plain"));
        assert_eq!(plain, [("user.colour".into(), hex::encode("blue"))]);
        assert!(xattrs(&got.join("server")).is_empty(), "no capability");
        assert!(!got.join("null").exists() && !got.join("loop").exists());
        // What anyone may keep, lands.
        assert!(std::fs::symlink_metadata(got.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let tmp = std::fs::metadata(got.join("tmp")).unwrap();
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
        assert_eq!(xattrs(&got.join("theirs"))[0].0, "system.posix_acl_access");
    }
}

/// rsync -H keeps a fifo or a symbolic link with two names as one entry; the protocol links
/// regular files only, so zsend sends each name as an entry of its own, and says so: it is
/// named, counted (`unlinked`) and the exit code is 9, not 0.
#[test]
fn a_fifo_or_link_with_two_names_lands_twice_and_is_counted() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    mknod(&top.join("fifo"), rustix::fs::FileType::Fifo, 0);
    std::fs::hard_link(top.join("fifo"), top.join("fifo-too")).unwrap();
    symlink("somewhere", top.join("link")).unwrap();
    let linkat = rustix::fs::AtFlags::empty();
    rustix::fs::linkat(
        rustix::fs::CWD,
        top.join("link"),
        rustix::fs::CWD,
        top.join("link-too"),
        linkat,
    )
    .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Zrecv::start(dst.path(), &["--once", "--trust-links"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-a", "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(rx.wait().success(), "{}", rx.stderr());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["unlinked"], 2, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert!(
        err.contains("fifo-too") && err.contains("link-too"),
        "{err}"
    );
    let got = dst.path().join("top");
    for name in ["fifo", "fifo-too"] {
        let m = std::fs::symlink_metadata(got.join(name)).unwrap();
        assert!(m.file_type().is_fifo(), "{name}");
    }
    assert_eq!(
        std::fs::read_link(got.join("link-too")).unwrap(),
        Path::new("somewhere")
    );
}

/// A hard-linked file with attributes, sent again unchanged to a receiver that replaces files,
/// is found unchanged: its attributes are read and compared. (A copy with other names is sent
/// whole when its metadata differs, and one carrying attributes was taken to differ: it was
/// sent whole every time.)
#[test]
fn a_hard_link_group_with_attributes_sent_again_sends_nothing() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    random_file(&top.join("x"), 300_000, 31);
    rustix::fs::setxattr(top.join("x"), "user.k", b"v", XattrFlags::empty()).unwrap();
    std::fs::hard_link(top.join("x"), top.join("y")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    for round in 0..2 {
        let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "-X", "--json"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent = json["bytes_sent"].as_u64().unwrap();
        match round {
            0 => assert_eq!(sent, 300_000, "{json}"),
            _ => assert_eq!(sent, 0, "{json}"),
        }
    }
    let x = std::fs::metadata(dst.path().join("top/x")).unwrap();
    assert_eq!(x.nlink(), 2);
    assert_eq!(xattrs(&dst.path().join("top/y")), xattrs(&top.join("y")));
}

#[test]
fn a_hard_link_group_crosses_once_and_lands_as_one_file() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir_all(top.join("d")).unwrap();
    random_file(&top.join("d/first"), 1 << 20, 3);
    for i in 0..12 {
        std::fs::hard_link(top.join("d/first"), top.join(format!("name-{i:02}"))).unwrap();
    }
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &["--force"]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["files"].as_u64(), json["hard_links"].as_u64()),
        (Some(1), Some(12))
    );
    assert_eq!(json["bytes_sent"], 1 << 20, "{json}");
    let first = std::fs::metadata(dst.path().join("top/d/first")).unwrap();
    assert_eq!(first.nlink(), 13);
    for i in 0..12 {
        let m = std::fs::metadata(dst.path().join(format!("top/name-{i:02}"))).unwrap();
        assert_eq!(m.ino(), first.ino());
    }
    // Sent again: nothing crosses, every name is found linked already.
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["unchanged"].as_u64(), json["hard_links"].as_u64()),
        (Some(1), Some(12))
    );
    assert_eq!(json["bytes_sent"], 0, "{json}");
    // With --no-hard-links, each name is a file of its own.
    let dst2 = tempfile::tempdir().unwrap();
    let rx2 = Zrecv::start(dst2.path(), &[]);
    let out = zsend(&[
        &rx2.addr(),
        top.to_str().unwrap(),
        "--json",
        "--no-hard-links",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let m = std::fs::metadata(dst2.path().join("top/d/first")).unwrap();
    assert_eq!(m.nlink(), 1);
}

/// Names are bytes: one with an escape sequence and a byte that is not UTF-8 lands as it is,
/// and every line either end prints about it shows it escaped, never the raw bytes.
#[test]
fn names_of_any_bytes_land_and_are_shown_escaped() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"esc\x1b[2Jx\xff");
    std::fs::write(top.join(name), b"v1").unwrap();
    mknod(
        &top.join(std::ffi::OsStr::from_bytes(b"fifo\x1b[31m")),
        rustix::fs::FileType::Fifo,
        0,
    );
    let dst = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(dst.path(), &[]);
    let out = zsend(&[&rx.addr(), top.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("fifo\\u{1b}[31m"), "{err}");
    assert_eq!(
        std::fs::read(dst.path().join("top").join(name)).unwrap(),
        b"v1"
    );
    rx.wait_for_line("received tree top");
    // Again with other content: the receiver refuses to replace it, and both ends say which.
    std::fs::write(top.join(name), b"version 2").unwrap();
    let out = zsend(&[&rx.addr(), top.to_str().unwrap(), "--specials"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("esc\\u{1b}[2Jx\\xff"), "{err}");
    rx.wait_for_line("esc\\u{1b}[2Jx\\xff");
    for printed in [err, rx.stderr()] {
        assert!(!printed.contains('\u{1b}'), "{printed:?}");
    }
}
