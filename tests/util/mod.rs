//! Helpers for the integration tests: run the real binaries, make files, play the network.

#![allow(dead_code)]

pub mod netns;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wait_timeout::ChildExt;

/// Longest any single process in a test may run.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);

/// zsend. It remembers roots in its cache directory: under test, the one .cargo/config.toml
/// sets (under target/), never the user's.
pub fn zsend_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zsend")
}

pub fn zrecv_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zrecv")
}

/// A running zrecv, killed on drop.
pub struct Zrecv {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_reader: Option<thread::JoinHandle<()>>,
    stdout: Option<std::process::ChildStdout>,
}

impl Zrecv {
    /// Starts `zrecv --listen 127.0.0.1:0 --dir DIR ARGS...` and waits for its `listening on`.
    pub fn start(dir: &Path, args: &[&str]) -> Zrecv {
        Self::start_with(None, dir, "127.0.0.1:0", args)
    }

    /// As `start`, with a wrapper command (such as strace) and a listen address.
    pub fn start_with(wrapper: Option<&[&str]>, dir: &Path, listen: &str, args: &[&str]) -> Zrecv {
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(zrecv_bin());
                c
            }
            None => Command::new(zrecv_bin()),
        };
        cmd.args(["--listen", listen, "--dir"])
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn zrecv");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let all = Arc::new(Mutex::new(String::new()));
        let all2 = all.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                all2.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("zrecv printed its first line");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .parse()
            .expect("an address");
        let stdout = child.stdout.take();
        Zrecv {
            child,
            addr,
            dir: dir.to_owned(),
            stderr: all,
            stderr_lines: rx,
            stderr_reader: Some(reader),
            stdout,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Everything zrecv printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle`; panics after `PROCESS_TIMEOUT`.
    pub fn wait_for_line(&self, needle: &str) -> String {
        self.wait_for_line_within(needle, PROCESS_TIMEOUT)
    }

    /// Waits for a stderr line containing `needle`; panics after `within`.
    pub fn wait_for_line_within(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "zrecv did not print {needle:?} within {within:?}; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for a `--once` receiver to exit and returns its status, once all it printed on
    /// stderr has been read.
    pub fn wait(&mut self) -> ExitStatus {
        let status = match self.child.wait_timeout(PROCESS_TIMEOUT).unwrap() {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                panic!("zrecv did not exit; stderr:\n{}", self.stderr())
            }
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// Reads stdout to the end (after the process exited).
    pub fn stdout(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.stdout.take() {
            out.read_to_string(&mut s).unwrap();
        }
        s
    }

    /// Collects stdout on a thread as it comes (a reader that waited would block a writer
    /// whose output exceeds the pipe); join the handle for the bytes.
    pub fn collect_stdout(&mut self) -> thread::JoinHandle<Vec<u8>> {
        let mut out = self.stdout.take().expect("stdout");
        thread::spawn(move || {
            let mut v = Vec::new();
            out.read_to_end(&mut v).unwrap();
            v
        })
    }

    /// Reads whatever comes out on stdout, and throws it away, on a thread of its own.
    pub fn discard_stdout(&mut self) {
        let mut out = self.stdout.take().expect("stdout");
        thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }

    /// Reads one line of stdout.
    pub fn stdout_line(&mut self) -> String {
        let out = self.stdout.as_mut().expect("stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        String::from_utf8(line).unwrap()
    }
}

impl Drop for Zrecv {
    fn drop(&mut self) {
        // Under a wrapper (strace), zrecv is the wrapper's child: killing the wrapper alone
        // would leave it running. Kill it first; the wrapper then ends by itself.
        let below = descendants(self.child.id());
        for pid in &below {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let ended = !below.is_empty()
            && matches!(
                self.child.wait_timeout(Duration::from_secs(10)),
                Ok(Some(_))
            );
        if !ended {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every process below `pid` (children, their children...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// Runs zsend to completion (bounded in time) and returns its output.
pub fn zsend(args: &[&str]) -> Output {
    zsend_with(None, args)
}

/// Runs zsend under an optional wrapper command.
pub fn zsend_with(wrapper: Option<&[&str]>, args: &[&str]) -> Output {
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(zsend_bin());
            c
        }
        None => Command::new(zsend_bin()),
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zsend");
    wait_output(child)
}

/// Runs `cmd` with no input, its output collected, within the time bound of [`wait_output`].
pub fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    wait_output(child)
}

/// Waits for a child with a time bound, collecting its output.
pub fn wait_output(mut child: Child) -> Output {
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read_all = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = read_all(out.map(|o| Box::new(o) as Box<dyn Read + Send>));
    let err = read_all(err.map(|e| Box::new(e) as Box<dyn Read + Send>));
    let status = match child.wait_timeout(PROCESS_TIMEOUT).unwrap() {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("process did not finish within {PROCESS_TIMEOUT:?}");
        }
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `size` bytes of deterministic pseudo-random data (seeded by `seed`).
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut f = File::create(path).unwrap();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The hex BitTorrent v2 tree root of a file (what zsend and zrecv verify with and print as
/// `root`), computed by zcommon with holes skipped.
pub fn root_file(path: &Path) -> String {
    let f = File::open(path).unwrap();
    let (root, _) = zcommon::root_of_file(&f, true).unwrap();
    hex::encode(root)
}

/// Names of all entries in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Offset in the sender's stream of payload byte `k` for a verified, dense file called `name`
/// sent without a token (its hello carries the source identity for resuming).
pub fn payload_offset(name: &str, k: u64) -> u64 {
    (zcommon::PREAMBLE_LEN + zcommon::HEADER_FIXED_LEN + name.len() + zcommon::SOURCE_ID_LEN) as u64
        + k
}

/// Names in `dir` a user sees: all but the receiver's hidden `.zrecv-` files.
pub fn visible(dir: &Path) -> Vec<String> {
    let mut v = entries(dir);
    v.retain(|e| !e.starts_with(".zrecv-"));
    v
}

/// Whether `name` is one of a kept partial's two files (`.zrecv-KEY.part`, `.zrecv-KEY.resume`)
/// rather than the temporary file of a transfer in flight.
pub fn is_kept_partial(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".zrecv-") else {
        return false;
    };
    let key = rest
        .strip_suffix(".part")
        .or_else(|| rest.strip_suffix(".resume"));
    key.is_some_and(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `name` is where the receiver remembers the roots of a tree (`.zrecv-KEY.roots`).
pub fn is_roots(name: &str) -> bool {
    name.starts_with(".zrecv-") && name.ends_with(".roots")
}

/// The files of transfers in flight in `dir`: temporary files, and the partials a running
/// transfer holds (locked, as zrecv --remove-partials sees them); kept partials excluded.
pub fn in_flight(dir: &Path) -> Vec<String> {
    let running = |part: &str| {
        use rustix::fs::{flock, FlockOperation};
        let Ok(f) = File::open(dir.join(part)) else {
            return false;
        };
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => false,
            Err(_) => true,
        }
    };
    let mut v = entries(dir);
    v.retain(|e| {
        e.starts_with(".zrecv-")
            && !is_roots(e)
            && (!is_kept_partial(e) || e.ends_with(".part") && running(e))
    });
    v
}

/// A fake peer on 127.0.0.1: accepts one connection and runs `script` on it (a hostile
/// receiver speaking the raw protocol). Returns its address and the thread to join.
pub fn fake_peer(
    script: impl FnOnce(TcpStream) + Send + 'static,
) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(PROCESS_TIMEOUT)).unwrap();
        script(s)
    });
    (addr, handle)
}

/// CPU time (user and system) a process has used so far, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Starts zsend with `args`, quiet, its output dropped (a sender the test will interrupt).
pub fn spawn_zsend(args: &[&str]) -> Child {
    Command::new(zsend_bin())
        .args(args)
        .arg("-q")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zsend")
}

/// Runs `zsend EXTRA... ADDR FILE` against a receiver that accepts and then reads nothing, and
/// sends it SIGINT once its hello has come (so it is past installing its handler). Returns its
/// output.
pub fn zsend_interrupted(extra: &[&str], file: &str) -> Output {
    let (heard, hello) = mpsc::channel::<()>();
    let (done, wait) = mpsc::channel::<()>();
    let (addr, peer) = fake_peer(move |mut s| {
        zcommon::read_hello(&mut s).unwrap();
        s.write_all(&zcommon::Reply::Accept.encode()).unwrap();
        heard.send(()).unwrap();
        let _ = wait.recv_timeout(PROCESS_TIMEOUT);
    });
    let child = Command::new(zsend_bin())
        .args(extra)
        .args([&addr, file])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hello.recv_timeout(PROCESS_TIMEOUT).unwrap();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = wait_output(child);
    done.send(()).unwrap();
    peer.join().unwrap();
    out
}

/// Waits (bounded) until a temporary file of a transfer in flight in `dir` is as `ready` says,
/// while `sender` still runs: the moment to interrupt it.
pub fn wait_in_flight(dir: &Path, sender: &mut Child, ready: impl Fn(&std::fs::Metadata) -> bool) {
    let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
    while !in_flight(dir)
        .iter()
        .any(|e| std::fs::metadata(dir.join(e)).is_ok_and(|m| ready(&m)))
    {
        assert!(
            sender.try_wait().unwrap().is_none(),
            "the transfer ended before it could be interrupted"
        );
        assert!(std::time::Instant::now() < deadline, "{:?}", entries(dir));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An address on which nothing listens.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// What a proxy does to the sender-to-receiver stream.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// XOR 0x01 into the byte at this offset of the stream.
    Flip(u64),
    /// Put these bytes at these offsets of the stream (a man in the middle rewriting it).
    Rewrite(Vec<(u64, u8)>),
    /// Forward this many bytes, then stop forwarding (the stream stalls).
    StallAfter(u64),
    /// Forward this many bytes, signal `stalled`, wait for `Proxy::release`, go on.
    PauseAt(u64),
    /// As `PauseAt`, just after the first time these bytes went through.
    PauseAfter(Vec<u8>),
}

/// A one-connection TCP proxy on 127.0.0.1 that applies a fault to the upstream stream and
/// records the first MiB of each direction.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Fires once when a `StallAfter` or `PauseAt` point is reached.
    pub stalled: mpsc::Receiver<()>,
    handle: Option<thread::JoinHandle<()>>,
    record: Arc<Mutex<Vec<u8>>>,
    release: mpsc::Sender<()>,
    upstream: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr, fault: Fault) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let record = Arc::new(Mutex::new(Vec::new()));
        let (up_rec, down_rec) = (record.clone(), record.clone());
        let upstream = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let up_count = upstream.clone();
        let handle = thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(server) = TcpStream::connect(target) else {
                return;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let down = thread::spawn(move || {
                let (_keep, never) = mpsc::channel();
                let uncounted = std::sync::atomic::AtomicU64::new(0);
                pump(s2, c2, Fault::None, None, &never, &down_rec, &uncounted)
            });
            pump(
                client,
                server,
                fault,
                Some(tx),
                &released,
                &up_rec,
                &up_count,
            );
            let _ = down.join();
        });
        Proxy {
            addr,
            stalled: rx,
            handle: Some(handle),
            record,
            release,
            upstream,
        }
    }

    /// Waits for the connection to end and returns how many bytes the sender sent through.
    pub fn bytes_up(mut self) -> u64 {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.upstream.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Lets a `PauseAt` proxy go on forwarding.
    pub fn release(&self) {
        let _ = self.release.send(());
    }

    /// Waits for the connection to end and returns what crossed it (up to 1 MiB each way,
    /// interleaved as it came).
    pub fn recorded(mut self) -> Vec<u8> {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.record.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A test that failed while the proxy held the stream does not wait out its timeout.
        self.release();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    fault: Fault,
    stalled: Option<mpsc::Sender<()>>,
    released: &mpsc::Receiver<()>,
    record: &Mutex<Vec<u8>>,
    count: &std::sync::atomic::AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    let mut fault = fault;
    // The last bytes forwarded, to find a marker split between reads.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let mut n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Fault::PauseAfter(marker) = &fault {
            let seen = tail.len();
            tail.extend_from_slice(&buf[..n]);
            match tail.windows(marker.len()).position(|w| w == marker) {
                Some(at) => {
                    let end = (pos + (at + marker.len()) as u64).checked_sub(seen as u64);
                    fault = Fault::PauseAt(end.unwrap());
                }
                None => {
                    let keep = tail.len().saturating_sub(marker.len());
                    tail.drain(..keep);
                }
            }
        }
        if pos < 1 << 20 {
            record.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        count.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        if let Fault::Rewrite(edits) = &fault {
            for &(at, byte) in edits {
                if at >= pos && at < pos + n as u64 {
                    buf[(at - pos) as usize] = byte;
                }
            }
        }
        match fault.clone() {
            Fault::Flip(at) if at >= pos && at < pos + n as u64 => buf[(at - pos) as usize] ^= 1,
            Fault::PauseAt(at) if at >= pos && at < pos + n as u64 => {
                let head = (at - pos) as usize;
                if to.write_all(&buf[..head]).is_err() {
                    break;
                }
                if let Some(tx) = &stalled {
                    let _ = tx.send(());
                }
                let _ = released.recv_timeout(PROCESS_TIMEOUT);
                if to.write_all(&buf[head..n]).is_err() {
                    break;
                }
                pos += n as u64;
                continue;
            }
            Fault::StallAfter(limit) if pos + n as u64 >= limit => {
                n = (limit - pos) as usize;
                let _ = to.write_all(&buf[..n]);
                if let Some(tx) = &stalled {
                    let _ = tx.send(());
                }
                // Swallow the rest until the sender goes away; the receiver sees a stall, then EOF.
                let _ = from.set_read_timeout(Some(PROCESS_TIMEOUT));
                while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
                break;
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        pos += n as u64;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The hidden directory a new tree is built in until it is published (`.zrecv-KEY.stage`),
/// the only one in `dir`.
pub fn stage_dir(dir: &Path) -> PathBuf {
    let stages: Vec<String> = entries(dir)
        .into_iter()
        .filter(|e| e.starts_with(".zrecv-") && e.ends_with(".stage"))
        .collect();
    assert_eq!(stages.len(), 1, "{:?}", entries(dir));
    dir.join(&stages[0])
}
