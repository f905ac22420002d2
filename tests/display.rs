//! zsend's progress display on a real terminal (a pty from script(1), 60 columns): it names the
//! file, shows a percentage, fits the width, shows no ETA before anything moved, and says what
//! the transfer waits for while no bytes move.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use zcommon::{read_hello, Reply, Status, Verdict, TRAILER_LEN};

use crate::util::*;

const COLUMNS: usize = 60;

/// Runs zsend with `args` on a pty of `COLUMNS` columns; what it draws accumulates in the
/// returned buffer as it comes.
fn zsend_on_a_pty(args: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let command = format!(
        "stty rows 24 cols {COLUMNS}; exec {} {}",
        zsend_bin(),
        args.join(" ")
    );
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1), from util-linux");
    let seen = Arc::new(Mutex::new(String::new()));
    let (mut out, sink) = (child.stdout.take().unwrap(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, seen)
}

/// Each frame the terminal was told to show: the text between carriage returns, newlines and
/// escape sequences.
fn frames(drawn: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = drawn.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' | '\n' => out.push(std::mem::take(&mut cur)),
            '\u{1b}' => {
                out.push(std::mem::take(&mut cur));
                // CSI: ESC [ parameters, then a final letter.
                if chars.peek() == Some(&'[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|f| !f.trim().is_empty()).collect()
}

fn wait_for(seen: &Mutex<String>, needle: &str) {
    let start = Instant::now();
    while !seen.lock().unwrap().contains(needle) {
        assert!(
            start.elapsed() < PROCESS_TIMEOUT,
            "never drawn: {needle:?} in {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn the_bar_names_the_file_shows_a_percentage_and_fits_the_terminal() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("vm-disk.img");
    random_file(&file, 256 << 20, 3);
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let (child, seen) = zsend_on_a_pty(&[&rx.addr(), file.to_str().unwrap()]);
    let out = wait_output(child);
    assert!(out.status.success());
    assert!(rx.wait().success());
    let drawn = seen.lock().unwrap().clone();
    let frames = frames(&drawn);
    let bars: Vec<&String> = frames.iter().filter(|f| f.contains('%')).collect();
    assert!(!bars.is_empty(), "{frames:#?}");
    for f in &frames {
        if f.starts_with("zsend: sent ") {
            continue; // the summary line, which the terminal wraps as it likes
        }
        assert!(f.chars().count() <= COLUMNS, "wider than {COLUMNS}: {f:?}");
    }
    for f in &bars {
        assert!(f.starts_with("vm-disk.img "), "{f:?}");
        if f.contains(" 0% ") {
            assert!(!f.contains("ETA"), "an ETA before anything moved: {f:?}");
        }
    }
    let waiting = format!("waiting for {} to accept", rx.addr());
    assert!(frames.iter().any(|f| f.contains(&waiting)), "{frames:#?}");
}

/// The receiver takes its time to land the file (a slow disk): the display says so instead of
/// freezing at 100 %.
#[test]
fn while_the_receiver_lands_the_display_says_so() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("small.img");
    random_file(&file, 1 << 20, 4);
    let seen_by_peer: Arc<Mutex<Option<Arc<Mutex<String>>>>> = Arc::new(Mutex::new(None));
    let handed = seen_by_peer.clone();
    let (addr, peer) = fake_peer(move |mut s| {
        let h = read_hello(&mut s).unwrap();
        s.write_all(&Reply::Accept.encode()).unwrap();
        let mut rest = vec![0u8; h.size as usize + TRAILER_LEN];
        s.read_exact(&mut rest).unwrap();
        let start = Instant::now();
        let seen = loop {
            if let Some(seen) = handed.lock().unwrap().clone() {
                break seen;
            }
            assert!(start.elapsed() < PROCESS_TIMEOUT);
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        wait_for(&seen, "is making it durable");
        let verdict = Verdict::failed("the disk is slow today");
        assert_eq!(verdict.status, Status::Failed);
        s.write_all(&verdict.encode()).unwrap();
    });
    let (child, seen) = zsend_on_a_pty(&[&addr, file.to_str().unwrap()]);
    *seen_by_peer.lock().unwrap() = Some(seen.clone());
    let out = wait_output(child);
    peer.join().unwrap();
    assert_eq!(out.status.code(), Some(7));
    let drawn = seen.lock().unwrap().clone();
    assert!(drawn.contains("the disk is slow today"), "{drawn:?}");
}
