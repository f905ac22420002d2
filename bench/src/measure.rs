//! Running one side of a contender under GNU time, waiting for receivers to listen, and
//! collecting wall time, CPU and peak RSS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// CPU and memory of one process tree, as GNU time reports it (children it waited for count).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu: f64,
    /// Peak resident set in KiB.
    pub rss_kib: u64,
}

/// A process started under `/usr/bin/time`.
pub struct Timed {
    child: Child,
    usage_file: PathBuf,
    stdout_file: PathBuf,
    what: String,
    stderr: Option<mpsc::Receiver<String>>,
}

impl Timed {
    /// Starts `argv` under GNU time, its stdout going to a file. `scratch` holds the files.
    pub fn start(argv: &[String], scratch: &Path, tag: &str) -> anyhow::Result<Timed> {
        let usage_file = scratch.join(format!("{tag}.usage"));
        let stdout_file = scratch.join(format!("{tag}.stdout"));
        let mut child = Command::new("/usr/bin/time")
            .args(["-f", "%U %S %M", "-o"])
            .arg(&usage_file)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_file)?)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Timed {
            child,
            usage_file,
            stdout_file,
            what: argv.join(" "),
            stderr: Some(rx),
        })
    }

    /// Waits for the `listening on ADDR` line and returns ADDR.
    pub fn listening_addr(&mut self) -> anyhow::Result<SocketAddr> {
        let rx = self.stderr.as_ref().expect("stderr reader");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .with_context(|| format!("{} never said where it listens", self.what))?;
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Ok(addr.parse()?);
            }
        }
    }

    /// Waits for the process and returns its usage and stdout; fails if it failed.
    pub fn finish(mut self) -> anyhow::Result<(Usage, String)> {
        let status = self.child.wait()?;
        let stderr: Vec<String> = self
            .stderr
            .take()
            .map(|rx| rx.iter().collect())
            .unwrap_or_default();
        if !status.success() {
            bail!("{} failed ({status}): {}", self.what, stderr.join("\n"));
        }
        let text = std::fs::read_to_string(&self.usage_file)?;
        let last = text.lines().last().unwrap_or("");
        let f: Vec<&str> = last.split_whitespace().collect();
        if f.len() != 3 {
            bail!("unexpected GNU time output {text:?}");
        }
        let usage = Usage {
            cpu: f[0].parse::<f64>()? + f[1].parse::<f64>()?,
            rss_kib: f[2].parse()?,
        };
        let stdout = std::fs::read_to_string(&self.stdout_file)?;
        Ok((usage, stdout))
    }
}

/// Waits until something listens on 127.0.0.1:`port` (for tools that print nothing when
/// ready), by reading /proc/net/tcp.
pub fn wait_listening(port: u16) -> anyhow::Result<()> {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        if table.lines().any(|l| l.contains(&needle)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("nothing listened on port {port} within 30 s")
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The median of `v` (which must not be empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Runs every contender in one go: a warm-up round (discarded), then `runs` rounds, each in an
/// order rotated by one and reversed every other round, as `compare` does. `trial(i)` runs
/// contender `i`; `show` makes its progress line.
pub fn alternate<R>(
    labels: &[String],
    runs: usize,
    mut trial: impl FnMut(usize) -> anyhow::Result<R>,
    show: impl Fn(&R) -> String,
) -> anyhow::Result<Vec<Vec<R>>> {
    let n = labels.len();
    let mut results: Vec<Vec<R>> = (0..n).map(|_| Vec::new()).collect();
    for round in 0..=runs {
        for i in 0..n {
            let k = if round % 2 == 0 { i } else { n - 1 - i };
            let idx = (k + round) % n;
            let r = trial(idx).with_context(|| format!("round {round}: {}", labels[idx]))?;
            let when = if round == 0 { "warm-up" } else { "run    " };
            eprintln!("{when} {:<48} {}", labels[idx], show(&r));
            if round > 0 {
                results[idx].push(r);
            }
        }
    }
    Ok(results)
}
