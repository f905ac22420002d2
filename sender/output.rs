//! What zsend shows: the progress bar, the log lines of a report, the per-host lines of a
//! chain, the summary line, and the JSON line of `--json`.

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcommon::{
    Bytes, Escaped, ExitStatus, HopReport, SendError, SendReport, Status, Tick, TreeReport,
};

use crate::cli::Cli;
use crate::shared::{self, JSON_VERSION};
use crate::Sent;

/// A terminal progress bar (bytes, rate, ETA; bytes and rate for a stream of unknown size;
/// for a tree, files done of those walked too), hidden when stderr is not a terminal. Hidden or
/// not, it counts the bytes done, for the messages of an interruption or a failure.
pub struct Progress {
    bar: ProgressBar,
    /// A tree's files, once walked.
    files: Cell<usize>,
    /// A tree's files done.
    done: Cell<usize>,
}

impl Progress {
    /// A bar of nothing yet: [`Progress::start`] gives it its size.
    pub fn new(cli: &Cli) -> Progress {
        Progress {
            bar: progress_bar(cli),
            files: Cell::new(0),
            done: Cell::new(0),
        }
    }

    /// The transfer starts: `size` bytes to send, `None` for a stream.
    pub fn start(&self, size: Option<u64>) {
        let template = match size {
            Some(_) => {
                "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}"
            }
            None => "{spinner} {binary_bytes} {binary_bytes_per_sec}",
        };
        self.bar
            .set_style(ProgressStyle::with_template(template).expect("valid template"));
        match size {
            Some(n) => self.bar.set_length(n),
            None => self.bar.unset_length(),
        }
    }

    /// `n` more bytes are done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// A tree was walked: `files` files of `bytes` bytes in all.
    pub fn walked(&self, files: usize, bytes: u64) {
        self.files.set(files);
        self.bar.set_length(bytes);
        self.bar.set_message(format!("0/{files} files"));
    }

    /// Progress in a tree: bytes, or one more file done.
    pub fn tick(&self, t: Tick) {
        match t {
            Tick::Bytes(n) => self.bar.inc(n),
            Tick::File => {
                self.done.set(self.done.get() + 1);
                let (done, files) = (self.done.get(), self.files.get());
                self.bar.set_message(format!("{done}/{files} files"));
            }
        }
    }

    /// Takes the bar off the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// A handle on the bar for another thread (the one that reports an interruption).
    pub fn handle(&self) -> ProgressBar {
        self.bar.clone()
    }
}

/// How far a transfer got: `X of Y`, or `X` for a stream.
pub fn how_far(bar: &ProgressBar) -> String {
    match bar.length() {
        Some(total) => format!("{} of {}", Bytes(bar.position()), Bytes(total)),
        None => Bytes(bar.position()).to_string(),
    }
}

/// The line zsend ends with on SIGINT or SIGTERM: the bar cleared, how far it got, and how to go
/// on (the receiver keeps what arrived of a file, not of standard input).
pub fn interrupted(bar: &ProgressBar, cli: &Cli) -> String {
    bar.finish_and_clear();
    let again = match cli.files().first().is_some_and(|f| f.as_os_str() == "-") {
        true => "standard input cannot be resumed",
        false => "run the same command again to resume",
    };
    format!("zsend: interrupted after {}; {again}", how_far(bar))
}

/// A failure told in the user's terms where zsend knows better than the error chain: a receiver
/// that went away mid-transfer, or an address that accepts connections but never answers like a
/// zrecv. `None`: the error says it well enough.
pub fn failure(err: &anyhow::Error, cli: &Cli, progress: &Progress) -> Option<String> {
    use std::io::ErrorKind;
    let e = err.downcast_ref::<SendError>()?;
    let dest = cli.dest();
    let gone = |k: ErrorKind| {
        matches!(
            k,
            ErrorKind::BrokenPipe
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
        )
    };
    let resumable = !cli.no_verify && cli.files().first().is_some_and(|f| f.as_os_str() != "-");
    let again = match resumable {
        true => "; run the same command again to resume",
        false => "",
    };
    match e {
        SendError::Network { error, .. } if gone(error.kind()) => Some(format!(
            "receiver {dest} went away after {} ({}){again}",
            how_far(&progress.bar),
            zcommon::os_reason(error)
        )),
        SendError::Protocol(zcommon::ProtocolError::Truncated(what)) => Some(format!(
            "receiver {dest} went away after {} (the connection closed in the middle of the \
             {what}){again}",
            how_far(&progress.bar)
        )),
        SendError::Protocol(zcommon::ProtocolError::Io("receiver's reply", error))
            if matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
        {
            Some(format!(
                "{dest} accepted the connection but did not answer in {} s: is a zrecv \
                 listening there? (a zrecv answers at once)",
                cli.timeout.max(1)
            ))
        }
        _ => None,
    }
}

fn progress_bar(cli: &Cli) -> ProgressBar {
    if cli.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
}

/// Logs how a file went out (read/write instead of sendfile, the CPU it took).
pub fn log_report(report: SendReport) -> SendReport {
    if !report.zero_copy {
        log::info!("the payload went through read/write: sendfile cannot read this file");
    }
    let st = &report.stages;
    log::info!(
        "cpu: sendfile {:.2} s, sha256 {:.2} s",
        st.network_cpu.as_secs_f64(),
        st.hash_cpu.as_secs_f64()
    );
    report
}

/// One line per host of a chain: landed, or why not.
pub fn print_hosts(r: &SendReport) {
    for h in &r.hosts {
        match zcommon::hop_landed(h, r.sha256) {
            true => eprintln!("zsend: {}: landed", Escaped(&h.host)),
            false => eprintln!("zsend: {}: FAILED: {}", Escaped(&h.host), host_error(h)),
        }
    }
}

/// The line that says what was sent.
pub fn print_summary(sent: &Sent) {
    match sent {
        Sent::File(r) => eprintln!("zsend: {}", summary(r)),
        Sent::Tree(r) => eprintln!("zsend: {}", tree_summary(r)),
    }
}

fn summary(r: &SendReport) -> String {
    let secs = shared::seconds(r.elapsed);
    let check = match r.sha256 {
        Some(d) => format!("sha256 {} verified", hex::encode(d)),
        None => "not verified (--no-verify)".into(),
    };
    let resumed = match r.resumed_from {
        0 => String::new(),
        n => format!(", resumed after {}", Bytes(n)),
    };
    let moved = r.bytes - r.resumed_from;
    // A sparse file: its holes did not cross.
    let data = match r.bytes_sent < moved {
        true => format!(", {} of data on the wire", Bytes(r.bytes_sent)),
        false => String::new(),
    };
    format!(
        "sent {} ({}{data}{resumed}) to {} in {:.2} s, {}/s, {check}",
        Escaped(&r.name),
        Bytes(r.bytes),
        r.peer,
        secs,
        shared::rate(moved, secs),
    )
}

/// Why a host of a chain did not land the file.
fn host_error(h: &HopReport) -> String {
    match h.verdict.status {
        Status::Mismatch => "checksum mismatch; discarded".into(),
        Status::Landed => "landed with another checksum".into(),
        Status::Failed => Escaped(&h.verdict.message).to_string(),
    }
}

fn tree_summary(r: &TreeReport) -> String {
    let secs = shared::seconds(r.elapsed);
    let mut parts = vec![format!("{} sent", r.landed)];
    if r.unchanged > 0 {
        parts.push(format!("{} already there", r.unchanged));
    }
    if !r.skipped.is_empty() {
        parts.push(format!("{} skipped", r.skipped.len()));
    }
    format!(
        "{} files ({}), {} directories, {} ({} on the wire) to {} in {:.2} s, {}/s",
        r.files,
        parts.join(", "),
        r.dirs,
        Bytes(r.bytes),
        Bytes(r.bytes_sent),
        r.peer,
        secs,
        shared::rate(r.bytes_sent, secs),
    )
}

/// The stages zsend reports: those of the sending end.
fn stages_json(stages: &zcommon::StageTimes) -> serde_json::Value {
    shared::stages_json(stages, |name| {
        matches!(name, "network_cpu_s" | "hash_cpu_s")
    })
}

/// The JSON line of `--json` (docs/JSON.md).
pub fn json(cli: &Cli, result: &anyhow::Result<Sent>) -> serde_json::Value {
    match result {
        Ok(Sent::File(r)) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": r.hosts.iter().all(|h| zcommon::hop_landed(h, r.sha256)),
            "file": r.path.display().to_string(),
            "name": r.name,
            "receiver": r.peer.to_string(),
            "bytes": r.bytes,
            "bytes_sent": r.bytes_sent,
            "resumed_from": r.resumed_from,
            "seconds": r.elapsed.as_secs_f64(),
            "sha256": r.sha256.map(hex::encode),
            "verified": r.verified,
            "zero_copy": r.zero_copy,
            "stages": stages_json(&r.stages),
            "hosts": r.hosts.iter().map(|h| {
                let ok = zcommon::hop_landed(h, r.sha256);
                serde_json::json!({
                    "host": h.host,
                    "ok": ok,
                    "sha256": h.verdict.sha256.map(hex::encode),
                    "error": (!ok).then(|| host_error(h)),
                })
            }).collect::<Vec<_>>(),
        }),
        Ok(Sent::Tree(r)) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": r.failures.is_empty(),
            "tree": true,
            "receiver": r.peer.to_string(),
            "files": r.files,
            "landed": r.landed,
            "unchanged": r.unchanged,
            "failed": r.failures.len(),
            "skipped": r.skipped.len(),
            "dirs": r.dirs,
            "links": r.links,
            "bytes": r.bytes,
            "bytes_sent": r.bytes_sent,
            "resumed_from": r.resumed_from,
            "seconds": r.elapsed.as_secs_f64(),
            "verified": !cli.no_verify,
            "zero_copy": r.zero_copy,
            "stages": stages_json(&r.stages),
            "failures": r.failures.iter()
                .map(|(path, error)| serde_json::json!({"path": path, "error": error}))
                .collect::<Vec<_>>(),
            "skipped_paths": r.skipped.iter()
                .map(|(path, why)| serde_json::json!({"path": path.display().to_string(), "reason": why}))
                .collect::<Vec<_>>(),
            "exit_code": if r.failures.is_empty() { 0 } else { ExitStatus::Partial.code() },
        }),
        Err(e) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": false,
            "file": cli.files().first().map(|f| f.display().to_string()),
            "error": format!("{e:#}"),
            "exit_code": e.downcast_ref::<SendError>().map_or(ExitStatus::Local, SendError::exit_status).code(),
            "verified": false,
        }),
    }
}
