//! What zsend shows: the progress bar, the log lines of a report, the per-host lines of a
//! chain, the summary line, and the JSON line of `--json`.

use std::cell::Cell;
use std::io::IsTerminal;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use zcommon::{
    Bytes, Escaped, ExitStatus, HopReport, Phase, SendError, SendReport, Status, Tick, TreeReport,
};

use crate::cli::Cli;
use crate::shared::{self, JSON_VERSION};
use crate::Sent;

/// The progress display on a terminal: the name, then either a bar (percentage, bytes, rate, an
/// ETA once bytes move, a tree's files done) or, while no bytes move, the phase the transfer is
/// in (connecting, checking a kept prefix, the receiver making it durable). It fits the
/// terminal's width. Hidden when stderr is not a terminal; hidden or not, it counts the bytes
/// done, for the messages of an interruption or a failure.
pub struct Progress {
    bar: ProgressBar,
    /// The terminal's width (80 if unknown).
    width: usize,
    /// The receiver, named in the phase lines.
    dest: String,
    /// Where the transfer is.
    phase: Cell<Phase>,
    /// A tree's files, once walked (0 for one file).
    files: Cell<usize>,
    /// A tree's files done.
    done: Cell<usize>,
    /// When each phase began, for `-v`.
    marks: std::cell::RefCell<Vec<(Phase, std::time::Instant)>>,
    /// The bar's template now: parsed again only when it changes (not for every file).
    template: std::cell::RefCell<String>,
}

impl Progress {
    /// A display of nothing yet: [`Progress::start`] names what is sent.
    pub fn new(cli: &Cli) -> Progress {
        let (bar, width) = match cli.quiet || !std::io::stderr().is_terminal() {
            true => (ProgressBar::hidden(), 80),
            false => (
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
                console::Term::stderr()
                    .size_checked()
                    .map_or(80, |(_, cols)| cols as usize),
            ),
        };
        // Styled before anything is drawn: the first frame is already ours.
        bar.set_style(ProgressStyle::with_template("{prefix} {wide_msg}").expect("valid template"));
        Progress {
            bar,
            width: width.max(20),
            dest: cli.dest(),
            phase: Cell::new(Phase::Connecting),
            files: Cell::new(0),
            done: Cell::new(0),
            marks: Default::default(),
            template: Default::default(),
        }
    }

    /// The transfer of `label` starts: `size` bytes to send, `None` for a stream.
    pub fn start(&self, label: &str, size: Option<u64>) {
        self.bar.set_prefix(label.to_owned());
        self.show();
        if let Some(n) = size {
            self.bar.set_length(n);
        }
    }

    /// One step of the transfer.
    pub fn tick(&self, t: Tick) {
        match t {
            Tick::Bytes(n) => self.bar.inc(n),
            Tick::File => {
                self.done.set(self.done.get() + 1);
                self.show();
            }
            Tick::Phase(p) => {
                self.marks.borrow_mut().push((p, std::time::Instant::now()));
                self.phase.set(p);
                self.show();
            }
            Tick::Restart => self.bar.set_position(0),
        }
    }

    /// A tree was walked: `files` files of `bytes` bytes in all.
    pub fn walked(&self, files: usize, bytes: u64) {
        self.files.set(files);
        self.bar.set_length(bytes);
        self.show();
    }

    /// Takes the bar off the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// How long each phase took, up to now: `waiting for the receiver 2 ms, sending 1.20 s, ...`.
    pub fn phase_times(&self) -> String {
        let marks = self.marks.borrow();
        let now = std::time::Instant::now();
        let ends = marks
            .iter()
            .skip(1)
            .map(|(_, t)| *t)
            .chain(std::iter::once(now));
        let parts: Vec<String> = marks
            .iter()
            .zip(ends)
            .map(|((phase, start), end)| {
                let what = match phase {
                    Phase::Connecting => "connecting and waiting for the receiver",
                    Phase::Comparing => "comparing pieces",
                    Phase::Sending => "sending",
                    Phase::Landing => "the receiver landing it",
                };
                format!("{what} {:.3} s", (end - *start).as_secs_f64())
            })
            .collect();
        parts.join(", ")
    }

    /// A handle on the bar for another thread (the one that reports an interruption).
    pub fn handle(&self) -> ProgressBar {
        self.bar.clone()
    }

    /// Redraws for the phase: the bar while bytes flow, the phase's words otherwise.
    fn show(&self) {
        if self.bar.is_hidden() {
            return;
        }
        let prefix = (self.width / 5).clamp(8, 32);
        let files = match self.files.get() {
            0 => String::new(),
            n => format!(" {}/{n} files", self.done.get()),
        };
        let words = match self.phase.get() {
            Phase::Connecting => format!("waiting for {} to accept", self.dest),
            Phase::Landing => format!("{} is making it durable", self.dest),
            Phase::Comparing => format!("hashing pieces to compare with {}", self.dest),
            Phase::Sending => String::new(),
        };
        let template = match (self.phase.get(), self.bar.length()) {
            (Phase::Sending, Some(_)) => bar_template(self.width, prefix, files.len()),
            (Phase::Sending, None) => format!(
                "{{prefix:{prefix}!}} {{spinner}} {{binary_bytes}} {{binary_bytes_per_sec}}"
            ),
            _ => format!("{{prefix:{prefix}!}} {{wide_msg}}"),
        };
        if *self.template.borrow() != template {
            let style = ProgressStyle::with_template(&template)
                .expect("valid template")
                .with_key("eta", eta);
            self.bar.set_style(style);
            *self.template.borrow_mut() = template;
        }
        self.bar.set_message(match self.phase.get() {
            Phase::Sending => files,
            _ => words,
        });
    }
}

/// ` ETA 12s`, once bytes have moved and until all have: before, there is no rate to tell by.
fn eta(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    if state.pos() > 0 && state.len().is_some_and(|len| state.pos() < len) {
        let _ = write!(w, " ETA {:#}", HumanDuration(state.eta()));
    }
}

/// The richest bar line that fits `width` columns: the name (`prefix` columns), the percentage,
/// a bar of at least 8, then bytes done of all, the rate, the ETA and a tree's files (`files`
/// columns), dropping the rate, then the bytes, where they do not fit.
fn bar_template(width: usize, prefix: usize, files: usize) -> String {
    // The widest each part renders: "1023.99 MiB/1023.99 MiB", " 1023.99 MiB/s", " ETA 59m".
    let (bytes, rate, eta) = (1 + 23, 1 + 13, 8);
    let fixed = prefix + 1 + 4 + 1 + 8 + eta + files;
    let head = format!("{{prefix:{prefix}!}} {{percent:>3}}% {{wide_bar}}");
    if fixed + bytes + rate <= width {
        format!(
            "{head} {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}}{{eta}}{{msg}}"
        )
    } else if fixed + bytes <= width {
        format!("{head} {{binary_bytes}}/{{binary_total_bytes}}{{eta}}{{msg}}")
    } else {
        format!("{head}{{eta}}{{msg}}")
    }
}

/// How far a transfer got: `X of Y`, or `X` for a stream.
pub fn how_far(bar: &ProgressBar) -> String {
    match bar.length() {
        Some(total) => format!("{} of {}", Bytes(bar.position()), Bytes(total)),
        None => Bytes(bar.position()).to_string(),
    }
}

/// How to go on after an interruption: the receiver keeps what arrived of a verified file or
/// tree for the same command to resume, but not of standard input, of a chain (`--to`), or of a
/// `--no-verify` transfer (a prefix is trusted only through its digest).
fn how_to_go_on(cli: &Cli) -> &'static str {
    if cli.files().first().is_some_and(|f| f.as_os_str() == "-") {
        "standard input cannot be resumed"
    } else if cli.to.len() > 1 {
        "a chain cannot be resumed: run the same command again to send it again"
    } else if cli.no_verify {
        "without verification nothing is resumed: run the same command again to send it again"
    } else {
        "run the same command again to resume"
    }
}

/// The line zsend ends with on SIGINT or SIGTERM: the bar cleared, how far it got, and how to go
/// on.
pub fn interrupted(bar: &ProgressBar, cli: &Cli) -> String {
    bar.finish_and_clear();
    format!(
        "zsend: interrupted after {}; {}",
        how_far(bar),
        how_to_go_on(cli)
    )
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
    let again = format!("; {}", how_to_go_on(cli));
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
            let silence = zcommon::FIRST_WORD.as_secs().min(cli.timeout.max(1));
            Some(format!(
                "{dest} accepted the connection but said nothing in {silence} s: is a zrecv \
                 listening there? (a zrecv answers at once, or says it is waiting)"
            ))
        }
        _ => None,
    }
}

/// Logs how a file went out (read/write instead of sendfile, the CPU it took).
pub fn log_report(report: SendReport, progress: &Progress) -> SendReport {
    let stdin = report.path.as_os_str() == "-";
    let path = match (report.zero_copy, stdin) {
        (true, false) => "sendfile, from the page cache to the socket (zero-copy)",
        (true, true) => "splice, from standard input to the socket (zero-copy)",
        (false, false) => "read/write: sendfile cannot read this file",
        (false, true) => "read/write: the kernel cannot splice this standard input",
    };
    let moved = report.bytes - report.resumed_from;
    let shape = match (report.update, report.bytes_sent < moved) {
        (Some(u), _) => format!(
            "an update of the receiver's copy ({}): {} of {} pieces sent, {} of data",
            if u.inplace {
                "in place, through its journal"
            } else {
                "built beside it"
            },
            u.sent,
            u.pieces,
            Bytes(report.bytes_sent)
        ),
        (None, true) => format!(
            "sparse: {} of data sent, {} of holes not",
            Bytes(report.bytes_sent),
            Bytes(moved - report.bytes_sent)
        ),
        (None, false) => "dense".into(),
    };
    let start = match report.resumed_from {
        0 => "from byte 0".to_owned(),
        n => format!(
            "resumed after {} the receiver kept (its root proven after the rest)",
            Bytes(n)
        ),
    };
    log::info!("data path: {path}; {shape}; {start}");
    log::info!("time: {}", progress.phase_times());
    let st = &report.stages;
    log::info!(
        "cpu: sendfile {:.2} s, tree root {:.2} s on up to {} threads{}",
        st.network_cpu.as_secs_f64(),
        st.hash_cpu.as_secs_f64(),
        zcommon::hash_threads(),
        match report.sha256 {
            Some(_) => format!(", plain sha256 {:.2} s", st.sha256_cpu.as_secs_f64()),
            None => String::new(),
        }
    );
    report
}

/// One line per host of a chain: landed, or why not.
pub fn print_hosts(r: &SendReport) {
    for h in &r.hosts {
        match zcommon::hop_landed(h, r.root) {
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
        Sent::Already(r, name) if r.quick > 0 => eprintln!(
            "zsend: {} is already on {} with the same size and mtime (--quick-check); nothing sent",
            Escaped(name),
            r.peer
        ),
        Sent::Already(r, name) => eprintln!(
            "zsend: {} is already on {} with the same content (roots compared); nothing sent",
            Escaped(name),
            r.peer
        ),
    }
}

fn summary(r: &SendReport) -> String {
    let secs = shared::seconds(r.elapsed);
    let mut check = match r.root {
        Some(d) => format!("root {} verified", hex::encode(d)),
        None => "not verified (--no-verify)".into(),
    };
    if let Some(d) = r.sha256 {
        check += &format!(", sha256 {}", hex::encode(d));
    }
    let resumed = match r.resumed_from {
        0 => String::new(),
        n => format!(", resumed after {}", Bytes(n)),
    };
    let moved = r.bytes - r.resumed_from;
    // A sparse file: its holes did not cross.
    let mut data = match (r.update, r.bytes_sent < moved) {
        (Some(u), _) => format!(
            ", {} of {} pieces differed{}, {} on the wire",
            u.sent,
            u.pieces,
            if u.inplace { ", updated in place" } else { "" },
            Bytes(r.bytes_sent)
        ),
        (None, true) => format!(", {} of data on the wire", Bytes(r.bytes_sent)),
        (None, false) => String::new(),
    };
    if r.repaired > 0 {
        data += &format!(
            ", {} piece{} sent again to repair it",
            r.repaired,
            if r.repaired == 1 { "" } else { "s" }
        );
    }
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
        parts.push(match r.quick {
            0 => format!("{} already there", r.unchanged),
            n => format!("{} already there ({n} by size and mtime only)", r.unchanged),
        });
    }
    if !r.failures.is_empty() {
        parts.push(format!("{} failed", r.failures.len()));
    }
    if !r.skipped.is_empty() {
        parts.push(format!("{} skipped", r.skipped.len()));
    }
    let mut others = vec![format!("{} directories", r.dirs)];
    for (n, what) in [
        (r.links, "symbolic links"),
        (r.hard_links, "hard links"),
        (r.specials, "special files"),
    ] {
        if n > 0 {
            others.push(format!("{n} {what}"));
        }
    }
    if r.unkept > 0 {
        others.push(format!("{} without their owners", r.unkept));
    }
    if !r.unlinked.is_empty() {
        others.push(format!("{} hard links not kept", r.unlinked.len()));
    }
    format!(
        "{} files ({}), {}, {} ({} on the wire) to {} in {:.2} s, {}/s",
        r.files,
        parts.join(", "),
        others.join(", "),
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
        matches!(name, "network_cpu_s" | "hash_cpu_s" | "sha256_cpu_s")
    })
}

/// The JSON line of `--json` (docs/JSON.md).
pub fn json(cli: &Cli, result: &anyhow::Result<Sent>) -> serde_json::Value {
    match result {
        Ok(Sent::File(r)) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": r.hosts.iter().all(|h| zcommon::hop_landed(h, r.root)),
            "file": r.path.display().to_string(),
            "name": r.name,
            "receiver": r.peer.to_string(),
            "bytes": r.bytes,
            "bytes_sent": r.bytes_sent,
            "resumed_from": r.resumed_from,
            "update": r.update.map(|u| serde_json::json!({
                "mode": if u.inplace { "inplace" } else { "atomic" },
                "pieces": u.pieces,
                "sent": u.sent,
            })),
            "repaired_pieces": r.repaired,
            "torrent": cli.torrent.as_ref().map(|p| p.display().to_string()),
            "seconds": r.elapsed.as_secs_f64(),
            "root": r.root.map(hex::encode),
            "sha256": r.sha256.map(hex::encode),
            "verified": r.verified,
            "zero_copy": r.zero_copy,
            "stages": stages_json(&r.stages),
            "hosts": r.hosts.iter().map(|h| {
                let ok = zcommon::hop_landed(h, r.root);
                serde_json::json!({
                    "host": h.host,
                    "ok": ok,
                    "root": h.verdict.root.map(hex::encode),
                    "error": (!ok).then(|| host_error(h)),
                })
            }).collect::<Vec<_>>(),
        }),
        Ok(Sent::Tree(r) | Sent::Already(r, _)) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": r.complete(),
            "tree": true,
            "receiver": r.peer.to_string(),
            "files": r.files,
            "landed": r.landed,
            "unchanged": r.unchanged,
            "failed": r.failures.len(),
            "skipped": r.skipped.len(),
            "dirs": r.dirs,
            "links": r.links,
            "hard_links": r.hard_links,
            "specials": r.specials,
            "unkept": r.unkept,
            "unlinked": r.unlinked.len(),
            "bytes": r.bytes,
            "bytes_sent": r.bytes_sent,
            "resumed_from": r.resumed_from,
            "seconds": r.elapsed.as_secs_f64(),
            "verified": !cli.no_verify && r.quick == 0,
            "quick_checked": r.quick,
            "remembered": r.remembered,
            "zero_copy": r.zero_copy,
            "stages": stages_json(&r.stages),
            "failures": r.failures.iter()
                .map(|(path, error)| serde_json::json!({"path": path, "error": error}))
                .collect::<Vec<_>>(),
            "skipped_paths": r.skipped.iter()
                .map(|(path, why)| serde_json::json!({"path": path.display().to_string(), "reason": why}))
                .collect::<Vec<_>>(),
            "exit_code": if r.complete() { 0 } else { ExitStatus::Partial.code() },
        }),
        Err(e) => serde_json::json!({
            "version": JSON_VERSION,
            "ok": false,
            "file": cli.files().first().map(|f| f.display().to_string()),
            "error": Escaped(&format!("{e:#}")).to_string(),
            "exit_code": e.downcast_ref::<SendError>().map_or(ExitStatus::Local, SendError::exit_status).code(),
            "verified": false,
        }),
    }
}
