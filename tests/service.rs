//! The systemd unit in contrib/systemd: it parses, and its system call filter allows every
//! call zrecv makes while serving files, trees and chains.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/zrecv.service");
    std::fs::read_to_string(path).unwrap()
}

fn systemd_analyze() -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: systemd-analyze is not installed (scripts/test installs it)");
    }
    ok
}

#[test]
fn the_service_unit_parses() {
    if !systemd_analyze() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zrecv.service");
    // verify checks that the binary exists: point it at the one just built.
    std::fs::write(&path, unit().replace("/usr/local/bin/zrecv", zrecv_bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("zrecv.service"), "{err}");
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/zrecv",
        "User=zrecv",
    ] {
        assert!(unit().contains(hardening), "{hardening}");
    }
}

/// The system calls in a systemd filter set, nested sets expanded.
fn filter_set(set: &str) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", set])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut calls = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let item = line.trim();
        if item.starts_with('#') || item.is_empty() {
            continue;
        }
        if item.starts_with('@') {
            calls.extend(filter_set(item));
        } else {
            calls.insert(item.to_owned());
        }
    }
    calls
}

#[test]
fn every_system_call_zrecv_makes_passes_the_unit_filter() {
    if !systemd_analyze() {
        return;
    }
    let set = unit()
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("a SystemCallFilter line")
        .to_owned();
    let allowed = filter_set(&set);
    let traces = tempfile::tempdir().unwrap();
    let trace = traces.path().join("zrecv.trace");
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let next = tempfile::tempdir().unwrap();
    let wrap = ["strace", "-f", "-qq", "-o", trace.to_str().unwrap()];
    let rx = Zrecv::start_with(
        Some(&wrap),
        dst.path(),
        "127.0.0.1:0",
        &["--allow-forward", "127.0.0.1"],
    );
    let next_rx = Zrecv::start(next.path(), &[]);
    // A file, a sparse file, a tree, and a chain through this receiver.
    let file = src.path().join("dense.bin");
    random_file(&file, 20 << 20, 401);
    let sparse = src.path().join("sparse.img");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 1 << 20], 32 << 20).unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a"), b"a").unwrap();
    for args in [
        vec![rx.addr(), file.to_str().unwrap().to_owned()],
        vec![rx.addr(), sparse.to_str().unwrap().to_owned()],
        vec![rx.addr(), tree.to_str().unwrap().to_owned()],
        vec![
            "--to".into(),
            format!("{},{}", rx.addr(), next_rx.addr()),
            file.to_str().unwrap().to_owned(),
            "--name".into(),
            "chained.bin".into(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zsend(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }
    drop(rx);
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = BTreeSet::new();
    for line in text.lines() {
        // "PID name(args) = N" or "PID <... name resumed>..."
        let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        let name = match rest.strip_prefix("<... ") {
            Some(r) => r.split_whitespace().next().unwrap_or(""),
            None => rest.split('(').next().unwrap_or(""),
        };
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            used.insert(name.to_owned());
        }
    }
    assert!(used.contains("splice"), "{used:?}");
    let denied: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(denied.is_empty(), "not allowed by {set}: {denied:?}");
}
