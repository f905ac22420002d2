//! Proof, not assumption: under strace, the payload crosses by sendfile on the sender and by
//! splice on the receiver, and with --no-verify no payload byte enters user space at all.

use std::collections::HashMap;
use std::path::Path;

use crate::util::*;

const TRACED: &str = "trace=sendfile,splice,read,pread64,readv,recvfrom,recvmsg,write,pwrite64,writev,sendto,sendmsg,copy_file_range";

/// Bytes moved per syscall name by calls of at least `min` bytes, summed over every thread of
/// the traced process. (The dynamic loader's and the protocol's own small reads and writes
/// fall under a `min` of 4 KiB.) `sendfile` and `splice` carry only payload, and are counted
/// whatever their size: a splice from the socket takes what has arrived, at times a few
/// hundred bytes.
fn bytes_by_syscall(trace: &Path, min: u64) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(trace).unwrap();
    let mut sums = HashMap::new();
    for line in text.lines() {
        // "PID name(args) = N" or "PID <... name resumed>...) = N"
        let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        let name = if let Some(r) = rest.strip_prefix("<... ") {
            r.split_whitespace().next().unwrap_or("")
        } else {
            rest.split('(').next().unwrap_or("")
        };
        if rest.ends_with("<unfinished ...>") {
            continue;
        }
        let Some((_, ret)) = rest.rsplit_once(" = ") else {
            continue;
        };
        let Ok(n) = ret.split_whitespace().next().unwrap_or("").parse::<i64>() else {
            continue;
        };
        let zero_copy = matches!(name, "sendfile" | "splice");
        if n > 0 && (zero_copy || n as u64 >= min) {
            *sums.entry(name.to_owned()).or_insert(0) += n as u64;
        }
    }
    sums
}

fn strace_available() {
    let ok = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is required for this test (scripts/test installs it)"
    );
}

fn traced_transfer(extra: &[&str]) -> (u64, HashMap<String, u64>, HashMap<String, u64>) {
    let src = tempfile::tempdir().unwrap();
    let size: u64 = 24 << 20;
    let path = src.path().join("traced.bin");
    random_file(&path, size, 77);
    traced(&path, size, extra)
}

/// Sends `path` (a file or a directory holding `size` bytes of files) under strace on both
/// ends; checks that everything landed; returns the bytes per syscall on each side.
fn traced(
    path: &Path,
    size: u64,
    extra: &[&str],
) -> (u64, HashMap<String, u64>, HashMap<String, u64>) {
    strace_available();
    let dst = tempfile::tempdir().unwrap();
    let traces = tempfile::tempdir().unwrap();
    let st = traces.path().join("send.trace");
    let rt = traces.path().join("recv.trace");
    let wrap = |out: &Path| -> Vec<String> {
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            TRACED,
            "-o",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let rwrap = wrap(&rt);
    let rwrap: Vec<&str> = rwrap.iter().map(String::as_str).collect();
    let mut rx = Zrecv::start_with(Some(&rwrap), dst.path(), "127.0.0.1:0", &["--once"]);
    let swrap = wrap(&st);
    let swrap: Vec<&str> = swrap.iter().map(String::as_str).collect();
    let mut args = vec![rx.addr(), path.to_str().unwrap().to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = zsend_with(Some(&swrap), &args);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    let landed = dst.path().join(path.file_name().unwrap());
    let pairs: Vec<(std::path::PathBuf, std::path::PathBuf)> = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .map(|n| (path.join(&n), landed.join(&n)))
            .collect()
    } else {
        vec![(path.to_owned(), landed)]
    };
    for (a, b) in pairs {
        assert_eq!(sha256_file(&b), sha256_file(&a), "{}", a.display());
    }
    (
        size,
        bytes_by_syscall(&st, LARGE),
        bytes_by_syscall(&rt, LARGE),
    )
}

fn get(m: &HashMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// Bytes moved through plain read/write-style calls (messages, not payload, expected).
fn buffered(m: &HashMap<String, u64>, calls: &[&str]) -> u64 {
    calls.iter().map(|c| get(m, c)).sum()
}

/// A call moving at least this much would be carrying payload.
const LARGE: u64 = 4096;
const SOCKET_READS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];
const SOCKET_WRITES: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];

#[test]
fn payload_moves_by_sendfile_and_splice() {
    let (size, send, recv) = traced_transfer(&[]);
    assert_eq!(get(&send, "sendfile"), size, "sender: {send:?}");
    assert_eq!(
        buffered(&send, &SOCKET_WRITES),
        0,
        "sender wrote payload: {send:?}"
    );
    // socket -> pipe and pipe -> file: every byte twice.
    assert_eq!(get(&recv, "splice"), 2 * size, "receiver: {recv:?}");
    assert_eq!(
        buffered(&recv, &SOCKET_READS),
        0,
        "receiver read payload: {recv:?}"
    );
    assert_eq!(buffered(&recv, &["pwrite64", "write"]), 0, "{recv:?}");
    // Hashing reads each file back once from the page cache, and only that.
    assert_eq!(get(&send, "pread64"), size, "sender hashing: {send:?}");
    assert_eq!(get(&recv, "pread64"), size, "receiver hashing: {recv:?}");
}

#[test]
fn no_verify_keeps_every_payload_byte_in_the_kernel() {
    let (size, send, recv) = traced_transfer(&["--no-verify"]);
    assert_eq!(get(&send, "sendfile"), size, "sender: {send:?}");
    assert_eq!(get(&recv, "splice"), 2 * size, "receiver: {recv:?}");
    for m in [&send, &recv] {
        assert_eq!(get(m, "pread64"), 0, "{m:?}");
        assert_eq!(buffered(m, &SOCKET_READS), 0, "{m:?}");
        assert_eq!(buffered(m, &SOCKET_WRITES), 0, "{m:?}");
    }
}

/// A tree's files take the same path: sendfile out, splice in, one read-back each for hashing,
/// and the manifest, answers, frames and verdicts are all small messages.
#[test]
fn a_tree_moves_by_sendfile_and_splice_too() {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    std::fs::create_dir(&top).unwrap();
    let sizes = [8 << 20, 3 << 20, (1 << 20) + 8192];
    for (i, size) in sizes.iter().enumerate() {
        random_file(&top.join(format!("f{i}")), *size, 80 + i as u64);
    }
    let size = sizes.iter().sum();
    let (_, send, recv) = traced(&top, size, &[]);
    assert_eq!(get(&send, "sendfile"), size, "sender: {send:?}");
    assert_eq!(get(&recv, "splice"), 2 * size, "receiver: {recv:?}");
    assert_eq!(buffered(&send, &SOCKET_WRITES), 0, "{send:?}");
    assert_eq!(buffered(&recv, &SOCKET_READS), 0, "{recv:?}");
    assert_eq!(buffered(&recv, &["pwrite64", "write"]), 0, "{recv:?}");
    assert_eq!(get(&send, "pread64"), size, "sender hashing: {send:?}");
    assert_eq!(get(&recv, "pread64"), size, "receiver hashing: {recv:?}");
}

/// Standard input also stays in the kernel: spliced from the input pipe into a pipe of ours,
/// teed into the hashing pipe, spliced into the socket. The only user-space reads are the
/// hashing thread's, of the teed copy.
#[test]
fn a_stream_from_standard_input_moves_by_splice_and_tee() {
    strace_available();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let traces = tempfile::tempdir().unwrap();
    let size: u64 = 8 << 20;
    let path = src.path().join("in.bin");
    random_file(&path, size, 78);
    let trace = traces.path().join("send.trace");
    let mut rx = Zrecv::start(dst.path(), &["--once"]);
    let child = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            TRACED_STREAM,
            "-o",
            trace.to_str().unwrap(),
        ])
        .arg(zsend_bin())
        .args([&rx.addr(), "-", "--name", "in.bin"])
        .stdin(std::fs::File::open(&path).unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert_eq!(sha256_file(&dst.path().join("in.bin")), sha256_file(&path));
    let calls = bytes_by_syscall(&trace, LARGE);
    // input -> our pipe, our pipe -> socket
    assert_eq!(get(&calls, "splice"), 2 * size, "{calls:?}");
    assert_eq!(get(&calls, "tee"), size, "{calls:?}");
    assert_eq!(
        get(&calls, "read"),
        size,
        "only the hashing thread reads: {calls:?}"
    );
    assert_eq!(buffered(&calls, &SOCKET_WRITES), 0, "{calls:?}");
}

const TRACED_STREAM: &str =
    "trace=splice,tee,read,readv,pread64,write,writev,sendto,sendmsg,sendfile";
