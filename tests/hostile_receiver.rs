//! Hostile receivers speaking the raw protocol to the real zsend: zsend reports success only
//! for what a receiver verified after the file's last byte went out, with the sender's own
//! root, once per file; a chain's reports name exactly the hosts asked for; and no text a
//! receiver sends can drive the sender's terminal.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use zcommon::{
    read_hello, Answer, Answers, FileStatus, Frame, Header, HopReport, Manifest, Reply, Report,
    Status, Trailer, Verdict,
};

use crate::util::*;

/// A verdict a receiver would send; no token, so no seal.
fn verdict(status: Status, root: Option<[u8; 32]>) -> Verdict {
    Verdict {
        status,
        root,
        seal: [0; 32],
        message: String::new(),
    }
}

/// Reads a single file's payload and trailer as a receiver would; returns its tree root (the
/// trailer's digest).
fn take_file(s: &mut impl Read, header: &Header) -> [u8; 32] {
    let mut payload = vec![0u8; header.size as usize];
    s.read_exact(&mut payload).unwrap();
    let t = Trailer::read(s).unwrap();
    let root = zcommon::tree_root(&payload);
    assert_eq!(t.root, Some(root));
    root
}

fn file(dir: &std::path::Path, name: &str, size: u64, seed: u64) -> String {
    let p = dir.join(name);
    random_file(&p, size, seed);
    p.to_str().unwrap().to_owned()
}

fn assert_clean(err: &str) {
    assert!(
        !err.chars().any(|c| c.is_control() && c != '\n'),
        "a control character reached the terminal: {err:?}"
    );
}

/// A receiver that says "landed" the moment it accepts, before any byte arrived (even with
/// the right root: it knew the file), is caught: nothing it says before the end of the
/// payload can be a verdict on it.
#[test]
fn a_verdict_before_the_payload_is_not_success() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "early.bin", 300_000, 1);
    let digest = zcommon::tree_root(&std::fs::read(&path).unwrap());
    let (addr, fake) = fake_peer(move |mut s| {
        let _ = read_hello(&mut s).unwrap();
        let mut reply = Reply::Accept.encode();
        reply.extend(verdict(Status::Landed, Some(digest)).encode());
        s.write_all(&reply).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, &path, "--json"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("a verdict before the end of the payload"),
        "{err}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["verified"], false);
    fake.join().unwrap();
}

/// "Landed" without a digest on a verified transfer verifies nothing.
#[test]
fn a_landed_verdict_without_a_digest_is_not_success() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "nodigest.bin", 100_000, 2);
    let (addr, fake) = fake_peer(move |mut s| {
        let h = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        take_file(&mut s, &h);
        s.write_all(&verdict(Status::Landed, None).encode())
            .unwrap();
    });
    let out = zsend(&[&addr, &path]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("without a digest"), "{err}");
    assert!(!err.contains("sent nodigest.bin"), "{err}");
    fake.join().unwrap();
}

/// A receiver that drips its verdict a byte at a time, each just inside `--timeout`, is given
/// up on once the verdict has taken twice the timeout: it held zsend about 70 timeouts (a
/// byte per read, a thousand with a long message) before.
#[test]
fn a_verdict_dripped_a_byte_at_a_time_is_given_up_on() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "drip.bin", 100_000, 3);
    let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = gave_up.clone();
    let (addr, fake) = fake_peer(move |mut s| {
        let h = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        let root = take_file(&mut s, &h);
        // The right verdict, but slowly: zsend must not wait for all of it.
        for byte in verdict(Status::Landed, Some(root)).encode() {
            if s.write_all(&[byte]).is_err() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(700));
        }
    });
    let out = zsend(&[&addr, &path, "--timeout", "1"]);
    let err = stderr_of(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("sent drip.bin"), "{err}");
    assert!(err.contains("timed out"), "{err}");
    fake.join().unwrap();
    // zsend hung up while the verdict still dripped (all of it takes 50 s).
    assert!(gave_up.load(std::sync::atomic::Ordering::SeqCst), "{err}");
}

/// A tree of three files. The receiver behaves until its answers, then `script` plays it.
fn tree_against(
    script: impl FnOnce(&mut BufReader<TcpStream>, &mut TcpStream, &Manifest) + Send + 'static,
) -> std::process::Output {
    tree_answered(Answer::Send, &["--json"], script)
}

/// As [`tree_against`], answering every file with `file_answer`, zsend run with `args` too.
fn tree_answered(
    file_answer: Answer,
    args: &[&str],
    script: impl FnOnce(&mut BufReader<TcpStream>, &mut TcpStream, &Manifest) + Send + 'static,
) -> std::process::Output {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        random_file(&top.join(name), 10_000 + i as u64, i as u64);
    }
    let (addr, fake) = fake_peer(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = read_hello(&mut r).unwrap();
        w.write_all(&Reply::Accept.encode()).unwrap();
        let m = Manifest::read(&mut r).unwrap();
        let answers = m
            .entries
            .iter()
            .map(|e| match e.kind {
                zcommon::Kind::Dir => Answer::Done,
                _ => file_answer.clone(),
            })
            .collect();
        w.write_all(&Answers::Each(answers, 0).encode()).unwrap();
        script(&mut r, &mut w, &m);
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    });
    let timeout: &[&str] = match args.contains(&"--timeout") {
        true => &[],
        false => &["--timeout", "10"],
    };
    let out = zsend(&[&[addr.as_str(), top.to_str().unwrap()], timeout, args].concat());
    fake.join().unwrap();
    out
}

/// Reads the frames of a pass as a receiver would, calling `each` with every file's index and
/// root, until the sender's end of pass.
fn take_pass(r: &mut BufReader<TcpStream>, m: &Manifest, mut each: impl FnMut(u32, [u8; 32])) {
    loop {
        match Frame::read(r).unwrap() {
            Some(Frame::Full(i)) => {
                let size = m.entries[i as usize].size() as usize;
                let mut payload = vec![0u8; size];
                r.read_exact(&mut payload).unwrap();
                let t = Trailer::read(r).unwrap();
                assert_eq!(t.root, Some(zcommon::tree_root(&payload)));
                each(i, t.root.unwrap());
            }
            Some(Frame::EndOfPass) => return,
            Some(Frame::Keepalive) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Takes a pass as a receiver would, answers each file with what `verdicts_for` gives (its
/// index and digest in), then ends the pass.
fn answer_pass(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    m: &Manifest,
    mut verdicts_for: impl FnMut(u32, [u8; 32]) -> Vec<u8>,
) {
    let mut verdicts = Vec::new();
    take_pass(r, m, |i, d| verdicts.extend(verdicts_for(i, d)));
    verdicts.extend(Report::EndOfPass.encode());
    w.write_all(&verdicts).unwrap();
}

fn file_verdict(index: u32, status: FileStatus, root: Option<[u8; 32]>) -> Vec<u8> {
    Report::File {
        index,
        status,
        root,
        seal: [0; 32],
        message: String::new(),
    }
    .encode()
}

/// Verdicts sent with the answers, before any file went out, used to count as landed files.
#[test]
fn tree_verdicts_before_the_files_are_refused() {
    let out = tree_against(|_, w, _| {
        let mut early = Vec::new();
        for i in 1..=3 {
            early.extend(file_verdict(i, FileStatus::Landed, None));
        }
        w.write_all(&early).unwrap();
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    // However the verdicts meet the files on the way, they are refused.
    assert!(
        [
            "before any file went out",
            "before all of it was sent",
            "without a digest"
        ]
        .iter()
        .any(|why| err.contains(why)),
        "{err}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ok"], false, "{j}");
}

/// A second verdict for a file used to count again: "landed 6 of 3 files".
#[test]
fn a_second_verdict_for_a_file_is_refused() {
    let out = tree_against(|r, w, m| {
        answer_pass(r, w, m, |i, d| {
            let once = file_verdict(i, FileStatus::Landed, Some(d));
            [once.clone(), once].concat()
        })
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("a second verdict"), "{err}");
}

/// After its end of pass, zsend takes a receiver's keepalives instead of its verdicts for 30
/// times `--timeout`, plus the owed files' bytes at 4 MiB/s, plus 5 s (a sync of a busy file
/// system takes what it takes), but not forever: one saying "still here" forever used to hold
/// zsend forever.
#[test]
fn keepalives_cannot_hold_back_the_verdicts_forever() {
    let gave_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = gave_up.clone();
    let out = tree_answered(Answer::Send, &["--timeout", "1"], move |r, w, m| {
        take_pass(r, m, |_, _| {});
        // Bounded: zsend should have given up long before.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while std::time::Instant::now() < until {
            if w.write_all(&Report::Keepalive.encode()).is_err() {
                seen.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    });
    let err = stderr_of(&out);
    assert!(gave_up.load(std::sync::atomic::Ordering::SeqCst), "{err}");
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("waiting for the receiver's verdicts"), "{err}");
}

/// An end of pass with files unanswered is not the end of a pass.
#[test]
fn an_end_of_pass_with_files_unanswered_is_refused() {
    let out = tree_against(|r, w, m| {
        answer_pass(r, w, m, |i, d| match i {
            1 => file_verdict(i, FileStatus::Landed, Some(d)),
            _ => Vec::new(),
        })
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("still without their verdict"), "{err}");
}

/// Verdicts held past the end of a pass (as a receiver does for a new tree with a file asked
/// for again) are due in the next pass: a receiver that leaves them out there has not landed
/// them, and one that sends them gets the tree through.
#[test]
fn verdicts_held_into_the_second_pass_must_come_in_it() {
    for honest in [false, true] {
        let out = tree_answered(Answer::Landed, &["--json"], move |r, w, m| {
            // First pass: every file checked; the first asked for again, the others held.
            let mut checked = Vec::new();
            loop {
                match Frame::read(r).unwrap() {
                    Some(Frame::Check(i, d)) => checked.push((i, d)),
                    Some(Frame::EndOfPass) => break,
                    Some(Frame::Keepalive) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(checked.len(), 3, "{checked:?}");
            let (again, _) = checked[0];
            let mut words = file_verdict(again, FileStatus::Resend, None);
            words.extend(Report::EndOfPass.encode());
            w.write_all(&words).unwrap();
            // Second pass: that file whole; the held verdicts only if honest.
            let mut words = Vec::new();
            take_pass(r, m, |i, d| {
                assert_eq!(i, again);
                words.extend(file_verdict(i, FileStatus::Landed, Some(d)));
            });
            if honest {
                for &(i, d) in &checked[1..] {
                    words.extend(file_verdict(i, FileStatus::Unchanged, Some(d)));
                }
            }
            words.extend(Report::EndOfPass.encode());
            w.write_all(&words).unwrap();
        });
        let err = stderr_of(&out);
        if honest {
            assert!(out.status.success(), "{err}");
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                (j["landed"].as_u64(), j["unchanged"].as_u64()),
                (Some(1), Some(2))
            );
        } else {
            assert_eq!(out.status.code(), Some(6), "{err}");
            assert!(err.contains("2 files still without their verdict"), "{err}");
        }
    }
}

/// A directory hears back only a failure to take its metadata, once: anything else for it is
/// a lie, and the failure itself fails the tree.
#[test]
fn a_directory_gets_only_one_failed_verdict() {
    let cases = [
        (
            vec![FileStatus::Landed],
            Some(6),
            "a verdict Landed for the directory 0",
        ),
        (
            vec![FileStatus::Failed, FileStatus::Failed],
            Some(6),
            "a second verdict for entry 0",
        ),
        (vec![FileStatus::Failed], Some(9), "top: no metadata here"),
    ];
    for (statuses, code, why) in cases {
        let out = tree_against(move |r, w, m| {
            answer_pass(r, w, m, |i, d| {
                let mut words = file_verdict(i, FileStatus::Landed, Some(d));
                if i == 3 {
                    for &status in &statuses {
                        words.extend(
                            Report::File {
                                index: 0,
                                status,
                                root: None,
                                seal: [0; 32],
                                message: "no metadata here".into(),
                            }
                            .encode(),
                        );
                    }
                }
                words
            })
        });
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), code, "{err}");
        assert!(err.contains(why), "{err}");
    }
}

/// An honest fake receiver gets the tree through: the checks above refuse only lies.
#[test]
fn an_honest_raw_receiver_lands_the_tree() {
    let out = tree_against(|r, w, m| {
        answer_pass(r, w, m, |i, d| file_verdict(i, FileStatus::Landed, Some(d)))
    });
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["landed"], 3, "{j}");
    assert_eq!(j["verified"], true, "{j}");
}

/// A receiver's per-file message with a carriage return used to overwrite the sender's line
/// with a fake success; every text from a receiver is printed escaped.
#[test]
fn a_receivers_messages_cannot_drive_the_terminal() {
    let out = tree_against(|r, w, m| {
        answer_pass(r, w, m, |i, _| {
            Report::File {
                index: i,
                status: FileStatus::Failed,
                root: None,
                seal: [0; 32],
                // C1 controls too: U+009B is a terminal's CSI as much as ESC [ is.
                message: "disk full\r\u{1b}[2K\u{9b}2Kzsend: sent 3 files, all verified".into(),
            }
            .encode()
        })
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("disk full\\r"), "{err}");
    assert_clean(&err);
    // --json's strings too (JSON escapes C0 controls itself, not C1).
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(json.contains("disk full"), "{json}");
    assert!(!json.contains('\u{9b}'), "{json}");
}

/// The first receiver of a chain that reports fewer hosts than asked for (or others in their
/// place) does not make the missing ones count as landed.
#[test]
fn a_chain_must_report_every_host_asked_for() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "chain.img", 200_000, 3);
    for invented in [false, true] {
        let (addr, fake) = fake_peer(move |mut s| {
            let h = read_hello(&mut s).unwrap();
            s.write_all(&Reply::Accept.encode()).unwrap();
            let d = take_file(&mut s, &h);
            let mut words = verdict(Status::Landed, Some(d)).encode();
            // Only the second host asked for, or two hosts nobody asked for.
            let reports: Vec<HopReport> = match invented {
                false => vec![HopReport {
                    host: h.chain.as_ref().unwrap()[0].clone(),
                    verdict: verdict(Status::Landed, Some(d)),
                }],
                true => ["evil-1:1", "evil-2:2", "evil-3:3"]
                    .iter()
                    .map(|host| HopReport {
                        host: host.to_string(),
                        verdict: verdict(Status::Landed, Some(d)),
                    })
                    .collect(),
            };
            words.extend(zcommon::encode_hops(&reports));
            s.write_all(&words).unwrap();
        });
        let to = format!("{addr},host-b:7350,host-c:7350");
        let out = zsend(&["--to", &to, &path, "--json"]);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(9), "{err}");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let hosts: Vec<&str> = j["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap())
            .collect();
        assert_eq!(hosts[1..], ["host-b:7350", "host-c:7350"], "{j}");
        assert_eq!(
            j["hosts"][0]["root"],
            root_file(path.as_ref()).as_str(),
            "{j}"
        );
        assert_eq!(j["hosts"][2]["ok"], false, "{j}");
        assert_eq!(j["hosts"][1]["ok"], !invented, "{j}");
        let why = j["hosts"][2]["error"].as_str().unwrap();
        assert!(why.starts_with("did not report"), "{why}");
        fake.join().unwrap();
    }
}

/// The count of hosts is one byte on the wire: 258 used to wrap it. zsend refuses more than
/// the protocol's limit before connecting anywhere.
#[test]
fn too_many_hosts_are_refused_up_front() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "many.img", 1000, 4);
    let port = closed_port().to_string();
    let to: Vec<String> = (0..258).map(|_| port.clone()).collect();
    let out = zsend(&["--to", &to.join(","), &path]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at most 17 hosts"), "{err}");
    let to: Vec<String> = (0..17).map(|_| port.clone()).collect();
    let out = zsend(&["--to", &to.join(","), &path]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "17 hosts are fine: {}",
        stderr_of(&out)
    );
}

/// A receiver may offer to resume only what the sender can resume: a file sent without
/// verification has no source id, and an offer to resume it is a protocol error.
#[test]
fn a_resume_offer_for_a_file_that_cannot_resume_is_refused() {
    let out = tree_answered(Answer::Partial(10, [1; 32]), &["--no-verify"], |_, _, _| {});
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("Partial"), "{err}");
}

/// A receiver cannot turn repair rounds into an endless resend: a call out of order is refused
/// at once, and a fourth round after three is not read as one. And an update offer zsend did
/// not ask for (it sent `--whole-file`) is a protocol error.
#[test]
fn repair_calls_out_of_order_and_unasked_updates_are_refused() {
    let src = tempfile::tempdir().unwrap();
    let path = file(src.path(), "rounds.bin", 3 << 20, 7);
    // Round 2 first.
    let (addr, fake) = fake_peer(move |mut s| {
        let header = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        take_file(&mut s, &header);
        s.write_all(&zcommon::encode_repair(2)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, &path]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("a repair round 2 where 1"), "{err}");
    fake.join().unwrap();

    // Three honest-looking rounds, each asking for every piece, then a fourth.
    let (addr, fake) = fake_peer(move |mut s| {
        let header = read_hello(&mut s).unwrap();
        assert!(header.repairable(), "zsend says it can repair");
        s.write_all(&Reply::Accept.encode()).unwrap();
        take_file(&mut s, &header);
        let pieces = zcommon::pieces_of(header.size);
        let mut sent_again = 0;
        for round in 1..=4u8 {
            if s.write_all(&zcommon::encode_repair(round)).is_err() {
                break;
            }
            if zcommon::read_layer(&mut s, pieces, &mut |_, _| {}).is_err() {
                break;
            }
            s.write_all(&zcommon::Needed::all(pieces).encode()).unwrap();
            // One data record over the whole (dense) file, then the end record.
            let mut records = vec![0u8; 17 + header.size as usize + 17];
            if s.read_exact(&mut records).is_err() {
                break;
            }
            let _ = Trailer::read(&mut s).unwrap();
            sent_again += 1;
        }
        assert_eq!(sent_again, 3, "at most three rounds");
    });
    let out = zsend(&[&addr, &path]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("repair round 4"), "{err}");
    fake.join().unwrap();

    // A restart after repair rounds: a restart comes only in place of the first answer to a
    // resumed file's proof, or the rounds would start over after it.
    let (addr, fake) = fake_peer(move |mut s| {
        let header = read_hello(&mut s).unwrap();
        let offer = Reply::Resume {
            offset: 1 << 20,
            nonce: [7; 32],
        };
        s.write_all(&offer.encode()).unwrap();
        let mut rest = vec![0u8; (header.size - (1 << 20)) as usize];
        s.read_exact(&mut rest).unwrap();
        zcommon::PrefixProof::read(&mut s).unwrap();
        Trailer::read(&mut s).unwrap();
        let pieces = zcommon::pieces_of(header.size);
        s.write_all(&zcommon::encode_repair(1)).unwrap();
        zcommon::read_layer(&mut s, pieces, &mut |_, _| {}).unwrap();
        s.write_all(&zcommon::Needed::all(pieces).encode()).unwrap();
        let mut records = vec![0u8; 17 + header.size as usize + 17];
        s.read_exact(&mut records).unwrap();
        Trailer::read(&mut s).unwrap();
        s.write_all(&zcommon::RESTART).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, &path]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("a restart after a repair round"), "{err}");
    fake.join().unwrap();

    // An update offer to a sender that sends the whole file.
    let (addr, fake) = fake_peer(move |mut s| {
        let header = read_hello(&mut s).unwrap();
        assert!(!header.update());
        s.write_all(&Reply::Update.encode()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, &path, "--whole-file"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("an update offer that was not asked for"),
        "{err}"
    );
    fake.join().unwrap();
}

/// Sends `top/a` and `top/b`, a second name of it, to a fake receiver that answers `answers`
/// with `unkept`, then runs `script` as the rest of it; returns zsend's output.
fn hard_linked_against(
    answers: Vec<Answer>,
    unkept: u32,
    script: impl FnOnce(&mut BufReader<TcpStream>, &mut TcpStream, &Manifest) + Send + 'static,
) -> std::process::Output {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    random_file(&top.join("a"), 5_000, 9);
    std::fs::hard_link(top.join("a"), top.join("b")).unwrap();
    let (addr, fake) = fake_peer(move |s| {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = read_hello(&mut r).unwrap();
        w.write_all(&Reply::Accept.encode()).unwrap();
        let m = Manifest::read(&mut r).unwrap();
        assert_eq!(m.entries[2].kind, zcommon::Kind::HardLink { first: 1 });
        w.write_all(&Answers::Each(answers, unkept).encode())
            .unwrap();
        script(&mut r, &mut w, &m);
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    });
    let out = zsend(&[&addr, top.to_str().unwrap(), "--timeout", "10"]);
    fake.join().unwrap();
    out
}

/// A hard link's verdict carries no digest, and a receiver cannot say more entries lose their
/// metadata than there are: either is a protocol error, and zsend says so (exit 6).
#[test]
fn a_hard_links_verdict_has_no_digest_and_unkept_is_bounded() {
    for digest_on_link in [true, false] {
        let answers = vec![Answer::Done, Answer::Send, Answer::Send];
        let unkept = if digest_on_link { 0 } else { 4 };
        let out = hard_linked_against(answers, unkept, move |r, w, m| {
            if !digest_on_link {
                return;
            }
            let mut root = None;
            loop {
                match Frame::read(r).unwrap() {
                    Some(Frame::Full(i)) => {
                        let mut payload = vec![0u8; m.entries[i as usize].size() as usize];
                        r.read_exact(&mut payload).unwrap();
                        root = Trailer::read(r).unwrap().root;
                    }
                    Some(Frame::Link(2)) => {}
                    Some(Frame::EndOfPass) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut words = file_verdict(1, FileStatus::Landed, root);
            words.extend(file_verdict(2, FileStatus::Landed, root));
            words.extend(Report::EndOfPass.encode());
            w.write_all(&words).unwrap();
        });
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(6), "{err}");
        let why = match digest_on_link {
            true => "a digest on the verdict for the hard link",
            false => "4 entries without their metadata, of 3",
        };
        assert!(err.contains(why), "{err}");
    }
}

/// Nothing of the second pass comes back: its files are sent whole and its links follow them.
/// A receiver that asks for a link again there used to have it failed alone, and an end of
/// pass then taken with other entries still owed; it is a protocol error.
#[test]
fn nothing_is_asked_for_again_in_the_last_pass() {
    let answers = vec![Answer::Done, Answer::Landed, Answer::Send];
    let out = hard_linked_against(answers, 0, |r, w, m| {
        // First pass: the check and the link, both asked for again.
        let mut root = None;
        for pass in 0..2 {
            loop {
                match Frame::read(r).unwrap() {
                    Some(Frame::Check(1, _)) | Some(Frame::Link(2)) => {}
                    Some(Frame::Full(1)) => {
                        let mut payload = vec![0u8; m.entries[1].size() as usize];
                        r.read_exact(&mut payload).unwrap();
                        root = Trailer::read(r).unwrap().root;
                    }
                    Some(Frame::Keepalive) => {}
                    Some(Frame::EndOfPass) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut words = match pass {
                0 => file_verdict(1, FileStatus::Resend, None),
                _ => file_verdict(1, FileStatus::Landed, root),
            };
            words.extend(file_verdict(2, FileStatus::Resend, None));
            words.extend(Report::EndOfPass.encode());
            w.write_all(&words).unwrap();
        }
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("1 entries asked for again in the last pass"),
        "{err}"
    );
}

/// With `--fail-fast`, a failure in a first pass that asked for a file again stops the tree
/// there: the file asked for is not sent again, the verdicts the receiver held for the next
/// pass never come, and all those files are failed and named, not left out of the count.
#[test]
fn a_stop_after_the_first_pass_names_the_files_still_owed() {
    let out = tree_answered(Answer::Landed, &["--json", "--fail-fast"], |r, w, _| {
        let mut checked = Vec::new();
        loop {
            match Frame::read(r).unwrap() {
                Some(Frame::Check(i, _)) => checked.push(i),
                Some(Frame::EndOfPass) => break,
                Some(Frame::Keepalive) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut words = file_verdict(checked[0], FileStatus::Resend, None);
        words.extend(file_verdict(checked[1], FileStatus::Failed, None));
        words.extend(Report::EndOfPass.encode());
        w.write_all(&words).unwrap();
        // No second pass: the sender closes.
        assert!(matches!(Frame::read(r), Ok(None) | Err(_)));
    });
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("top/c: not published: the tree was stopped"),
        "{err}"
    );
    assert!(
        err.contains("top/a: not sent again: the tree was stopped"),
        "{err}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["failed"], 3, "{j}");
}
