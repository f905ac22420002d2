//! Fan-out through a chain: every host lands the file and reports back; a failed or corrupt
//! hop is named and publishes nothing; forwarding happens only where it is allowed.

use std::process::{Command, Stdio};

use crate::util::netns::TestBed;
use crate::util::*;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `n` receivers on loopback that may forward to loopback.
fn receivers(n: usize) -> (Vec<tempfile::TempDir>, Vec<Zrecv>) {
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let rxs = dirs
        .iter()
        .map(|d| Zrecv::start(d.path(), &["--allow-forward", "127.0.0.0/8"]))
        .collect();
    (dirs, rxs)
}

/// Whether each host of a `--json` result landed the file.
fn landed(json: &serde_json::Value) -> Vec<bool> {
    json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["ok"].as_bool().unwrap())
        .collect()
}

#[test]
fn a_chain_of_four_lands_the_same_file_everywhere() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("image.raw");
    random_file(&path, 24 << 20, 301);
    let (dirs, rxs) = receivers(4);
    let to: Vec<String> = rxs.iter().map(Zrecv::addr).collect();
    let out = zsend(&["--to", &to.join(","), path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(landed(&json), [true; 4], "{json}");
    let want = sha256_file(&path);
    let root = root_file(&path);
    assert_eq!(json["root"], root.as_str(), "{json}");
    assert_eq!(
        json["sha256"],
        serde_json::Value::Null,
        "no --sha256: {json}"
    );
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(sha256_file(&d.path().join("image.raw")), want, "host {i}");
        assert_eq!(json["hosts"][i]["root"], root.as_str(), "host {i}");
        assert!(json["hosts"][i].get("sha256").is_none(), "host {i}: {json}");
    }
    for rx in &rxs[..3] {
        rx.wait_for_line("image.raw from");
    }
    rxs[0].wait_for_line("landed");
}

#[test]
fn forwarding_happens_only_where_it_is_allowed() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f.bin");
    random_file(&path, 100_000, 302);
    let far = tempfile::tempdir().unwrap();
    let far_rx = Zrecv::start(far.path(), &[]);
    for allow in [None, Some("10.0.0.0/8")] {
        let near = tempfile::tempdir().unwrap();
        let args: Vec<&str> = allow.map_or(vec![], |a| vec!["--allow-forward", a]);
        let rx = Zrecv::start(near.path(), &args);
        let to = format!("{},{}", rx.addr(), far_rx.addr());
        let out = zsend(&["--to", &to, path.to_str().unwrap()]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(4), "{err}");
        let words = if allow.is_some() {
            "is not allowed here"
        } else {
            "does not forward"
        };
        assert!(err.contains(words), "{err}");
        assert!(entries(near.path()).is_empty());
    }
    assert!(entries(far.path()).is_empty());
}

#[test]
fn a_corrupted_hop_is_caught_there_and_after() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("c.bin");
    random_file(&path, 4 << 20, 303);
    let (dirs, rxs) = receivers(3);
    // Between the first and second hosts, a byte of payload is flipped.
    let proxy = Proxy::start(rxs[1].addr, Fault::Flip(2 << 20));
    let to = format!("{},{},{}", rxs[0].addr(), proxy.addr(), rxs[2].addr());
    let out = zsend(&["--to", &to, path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(landed(&json), [true, false, false], "{json}");
    for h in [1, 2] {
        let error = json["hosts"][h]["error"].as_str().unwrap();
        assert!(error.contains("checksum mismatch"), "host {h}: {error}");
    }
    assert_eq!(
        sha256_file(&dirs[0].path().join("c.bin")),
        sha256_file(&path)
    );
    for d in &dirs[1..] {
        assert!(visible(d.path()).is_empty(), "{:?}", entries(d.path()));
    }
}

#[test]
fn a_middle_hop_that_dies_is_named_and_nothing_unverified_lands() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("m.bin");
    random_file(&path, 32 << 20, 304);
    let (dirs, mut rxs) = receivers(4);
    // Hold the stream into the second host half way, kill that host there.
    let proxy = Proxy::start(rxs[1].addr, Fault::PauseAt(16 << 20));
    let to = format!(
        "{},{},{},{}",
        rxs[0].addr(),
        proxy.addr(),
        rxs[2].addr(),
        rxs[3].addr()
    );
    let sender = Command::new(zsend_bin())
        .args(["--to", &to, path.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.stalled.recv_timeout(PROCESS_TIMEOUT).unwrap();
    rxs[1].child.kill().unwrap();
    rxs[1].wait();
    proxy.release();
    let out = wait_output(sender);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(landed(&json), [true, false, false, false], "{json}");
    assert!(json["hosts"][2]["error"]
        .as_str()
        .unwrap()
        .contains("failed before it"));
    assert_eq!(
        sha256_file(&dirs[0].path().join("m.bin")),
        sha256_file(&path)
    );
    // The killed host leaves its hidden temporary file (removed by the next zrecv there once a
    // day old), never a file under the final name.
    assert!(
        visible(dirs[1].path()).is_empty(),
        "{:?}",
        entries(dirs[1].path())
    );
    for (i, d) in dirs.iter().enumerate().skip(2) {
        // The later hosts notice their sender went away and discard what they had.
        let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
        while !in_flight(d.path()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            entries(d.path()).is_empty(),
            "host {i}: {:?}",
            entries(d.path())
        );
    }
}

/// The test bed: five namespaces on a bridge, each link shaped to 1 Gbit/s; the sender in the
/// first, zrecv in the other four; one file through the chain of four.
#[test]
fn a_chain_across_four_shaped_namespaces() {
    let bed = match TestBed::new(5, "1gbit") {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here: {why}");
            return;
        }
    };
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("disk.img");
    random_file(&path, 48 << 20, 305);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = bed.network();
    let rxs: Vec<Zrecv> = (1..5)
        .map(|i| {
            let exec = bed.exec(i);
            let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
            let listen = format!("{}:7350", bed.addrs[i]);
            Zrecv::start_with(
                Some(&exec),
                dirs[i - 1].path(),
                &listen,
                &["--allow-forward", &net],
            )
        })
        .collect();
    let to: Vec<String> = rxs.iter().map(Zrecv::addr).collect();
    let exec = bed.exec(0);
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    let out = zsend_with(
        Some(&exec),
        &["--to", &to.join(","), path.to_str().unwrap(), "--json"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(landed(&json_of(&out)), [true; 4]);
    let want = sha256_file(&path);
    for d in &dirs {
        assert_eq!(sha256_file(&d.path().join("disk.img")), want);
    }
    drop(rxs);
}

/// Tokens apply on every hop: each receiver checks the one before it and proves itself, and a
/// host with another token is refused by the one forwarding to it.
#[test]
fn tokens_apply_on_every_hop() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("t.bin");
    random_file(&path, 2 << 20, 306);
    let token = src.path().join("token");
    std::fs::write(&token, "one secret\n").unwrap();
    let other = src.path().join("other");
    std::fs::write(&other, "another secret\n").unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |d: &tempfile::TempDir, t: &std::path::Path| {
        Zrecv::start(
            d.path(),
            &[
                "--allow-forward",
                "127.0.0.1",
                "--token-file",
                t.to_str().unwrap(),
            ],
        )
    };
    let rxs = [
        start(&dirs[0], &token),
        start(&dirs[1], &token),
        start(&dirs[2], &other),
    ];
    let to: Vec<String> = rxs.iter().map(Zrecv::addr).collect();
    let out = zsend(&[
        "--to",
        &to.join(","),
        path.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(landed(&json), [true, true, false], "{json}");
    let error = json["hosts"][2]["error"].as_str().unwrap();
    assert!(error.contains("authentication failed"), "{error}");
    assert!(entries(dirs[2].path()).is_empty());
    assert_eq!(
        sha256_file(&dirs[1].path().join("t.bin")),
        sha256_file(&path)
    );
}

/// A host further down that invents reports (more hosts than the chain has, other names) does
/// not make a forwarding zrecv relay them: it relays exactly one report per host after it, as
/// the chain named them, and the sender sees exactly the hosts it asked for.
#[test]
fn a_forwarder_relays_one_report_per_host_asked_for() {
    use std::io::{Read, Write};
    use zcommon::{read_hello, HopReport, Reply, Status, Trailer, Verdict};
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("relay.bin");
    random_file(&path, 300_000, 303);
    let (dirs, mut rxs) = receivers(1);
    let (fake, liar) = fake_peer(|mut s| {
        let h = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        let mut payload = vec![0u8; h.size as usize];
        s.read_exact(&mut payload).unwrap();
        let t = Trailer::read(&mut s).unwrap();
        let landed = Verdict {
            status: Status::Landed,
            root: t.root,
            seal: [0; 32],
            message: String::new(),
        };
        let invented: Vec<HopReport> = (0..zcommon::MAX_HOPS)
            .map(|i| HopReport {
                host: format!("invented-{i}:7350"),
                verdict: landed.clone(),
            })
            .collect();
        let mut words = landed.encode();
        words.extend(zcommon::encode_hops(&invented));
        s.write_all(&words).unwrap();
    });
    let ghost = closed_port().to_string();
    let to = format!("{},{fake},{ghost}", rxs[0].addr());
    let out = zsend(&["--to", &to, path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    let hosts: Vec<&str> = json["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts.len(), 3, "{json}");
    assert_eq!(hosts[1..], [fake.as_str(), ghost.as_str()], "{json}");
    assert_eq!(landed(&json), [true, true, false], "{json}");
    assert!(
        json["hosts"][2]["error"]
            .as_str()
            .unwrap()
            .contains("did not report"),
        "{json}"
    );
    assert_eq!(
        sha256_file(&dirs[0].path().join("relay.bin")),
        sha256_file(&path)
    );
    liar.join().unwrap();
    rxs[0].wait_for_line("relay.bin from");
    drop(rxs.pop());
}

/// A next host that says "landed" with another root than the sender's, or none on a verified
/// transfer, is reported as not having landed it by the forwarder too (its log, its --json),
/// not only by the sender, which compares the roots itself.
#[test]
fn a_forwarder_does_not_take_landed_with_another_root_for_landed() {
    use std::io::{Read, Write};
    use zcommon::{read_hello, Reply, Status, Trailer, Verdict};
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("lie.bin");
    random_file(&path, 300_000, 304);
    for root in [Some([0x41; 32]), None] {
        let dst = tempfile::tempdir().unwrap();
        let mut rx = Zrecv::start(dst.path(), &["--allow-forward", "127.0.0.0/8", "--json"]);
        let (fake, liar) = fake_peer(move |mut s| {
            let h = read_hello(&mut s).unwrap();
            s.write_all(&Reply::Accept.encode()).unwrap();
            let mut payload = vec![0u8; h.size as usize];
            s.read_exact(&mut payload).unwrap();
            Trailer::read(&mut s).unwrap();
            let lie = Verdict {
                status: Status::Landed,
                root,
                seal: [0; 32],
                message: String::new(),
            };
            s.write_all(&lie.encode()).unwrap();
        });
        let to = format!("{},{fake}", rx.addr());
        let out = zsend(&["--to", &to, path.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
        assert_eq!(landed(&json_of(&out)), [true, false]);
        liar.join().unwrap();
        let line: serde_json::Value = serde_json::from_str(&rx.stdout_line()).unwrap();
        let forwarded = &line["forwarded"][0];
        assert_eq!(forwarded["ok"], false, "{line}");
        assert!(
            forwarded["error"]
                .as_str()
                .is_some_and(|e| e.contains("landed with another checksum")),
            "{line}"
        );
        let said = rx.stderr();
        assert!(!said.contains(&format!("to {fake}: landed")), "{said}");
        assert!(said.contains(&format!("to {fake}: not landed")), "{said}");
    }
}

/// A chain back to the receiver itself is not followed: each hop would take one of its slots
/// (for as long as the hops wait for slots), on one hello. The first copy lands, the loop is
/// reported as a host that did not land it, and no slot stays taken.
#[test]
fn a_chain_back_to_the_receiver_itself_is_not_followed() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("loop.bin");
    random_file(&path, 100_000, 305);
    let (dirs, rxs) = receivers(1);
    let me = rxs[0].addr();
    let to = [me.as_str(); 4].join(",");
    let out = zsend(&["--to", &to, path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr_of(&out));
    let json = json_of(&out);
    assert_eq!(landed(&json), [true, false, false, false], "{json}");
    assert!(
        json["hosts"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("this receiver itself")),
        "{json}"
    );
    assert_eq!(
        sha256_file(&dirs[0].path().join("loop.bin")),
        sha256_file(&path)
    );
}

/// A forwarder keeps its sender told while the next host makes it wait before a reply (here a
/// peer that accepts and says nothing, until the forwarder's own timeout): the sender used to
/// hear nothing, give up after its own timeout, and lose the first host's copy too.
#[test]
fn a_forwarder_keeps_its_sender_told_while_the_next_host_is_silent() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("told.bin");
    random_file(&path, 1 << 20, 305);
    let dir = tempfile::tempdir().unwrap();
    let rx = Zrecv::start(
        dir.path(),
        &["--allow-forward", "127.0.0.0/8", "--timeout", "3"],
    );
    let (mute, peer) = fake_peer(|mut s| {
        // Accepts, reads the hello, never answers; gone once the forwarder gives up.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    });
    let to = format!("{},{mute}", rx.addr());
    let out = zsend(&[
        "--to",
        &to,
        path.to_str().unwrap(),
        "--json",
        "--timeout",
        "1",
    ]);
    peer.join().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let json = json_of(&out);
    assert_eq!(landed(&json), [true, false], "{json}");
    assert_eq!(
        sha256_file(&dir.path().join("told.bin")),
        sha256_file(&path)
    );
}
