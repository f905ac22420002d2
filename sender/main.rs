//! zsend: send a file to a zrecv, zero-copy, and exit 0 only once it landed verified and durable.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod cli;

use cli::Cli;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcommon::{
    send_file, send_tree, Bytes, Escaped, ExitStatus, SendError, SendOptions, SendReport, Tick,
    Token, TreeOptions, TreeReport,
};

/// What was sent.
enum Sent {
    File(SendReport),
    Tree(TreeReport),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(msg) = check_paths(&cli) {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
    zcommon::init_logging("zsend", 0, cli.verbose, cli.quiet);
    let result = run(&cli);
    if cli.json {
        println!("{}", json(&cli, &result));
    }
    if let (Ok(Sent::File(r)), false) = (&result, cli.quiet || cli.json) {
        for h in &r.hosts {
            match zcommon::hop_landed(h, r.sha256) {
                true => eprintln!("zsend: {}: landed", Escaped(&h.host)),
                false => eprintln!("zsend: {}: FAILED: {}", Escaped(&h.host), host_error(h)),
            }
        }
    }
    let result = result.and_then(|sent| match &sent {
        Sent::Tree(r) if !r.failures.is_empty() => Err(SendError::Partial {
            failed: r.failures.len(),
            files: r.files,
        }
        .into()),
        Sent::File(r) if r.hosts.iter().any(|h| !zcommon::hop_landed(h, r.sha256)) => {
            Err(SendError::Hosts {
                failed: r
                    .hosts
                    .iter()
                    .filter(|h| !zcommon::hop_landed(h, r.sha256))
                    .count(),
                hosts: r.hosts.len(),
            }
            .into())
        }
        _ => Ok(sent),
    });
    match result {
        Ok(sent) => {
            if !cli.quiet && !cli.json {
                match &sent {
                    Sent::File(r) => eprintln!("zsend: {}", summary(r)),
                    Sent::Tree(r) => eprintln!("zsend: {}", tree_summary(r)),
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            // The chain of errors may quote the receiver: escaped, as every peer text.
            eprintln!("zsend: {}", Escaped(&format!("{err:#}")));
            let status = err
                .downcast_ref::<SendError>()
                .map_or(ExitStatus::Local, SendError::exit_status);
            ExitCode::from(status.code())
        }
    }
}

/// Usage errors clap cannot see.
fn check_paths(cli: &Cli) -> Result<(), &'static str> {
    if cli.files().is_empty() {
        return Err("give the receiver's HOST:PORT, then what to send");
    }
    if cli.to.len() > 1 && (cli.files().len() != 1 || cli.files()[0].is_dir()) {
        return Err("--to sends one file (not a directory) to several hosts");
    }
    if cli.to.len() > 1 && cli.files()[0].as_os_str() == "-" {
        return Err("--to sends a file, not standard input");
    }
    let stdin = cli.files().iter().any(|f| f.as_os_str() == "-");
    if stdin && cli.files().len() > 1 {
        return Err("standard input (-) is sent on its own");
    }
    if stdin && cli.name.is_none() {
        return Err("standard input (-) has no name of its own: give --name NAME");
    }
    if cli.name.is_some() && cli.files().len() > 1 {
        return Err("--name names one file or directory; give one, or leave --name out");
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<Sent> {
    let token = Token::from_optional_file(cli.token_file.as_deref())?;
    let opts = SendOptions {
        name: cli.name.clone(),
        verify: !cli.no_verify,
        timeout: Duration::from_secs(cli.timeout.max(1)),
        token,
        chain: cli.to.iter().skip(1).cloned().collect(),
    };
    let dest = cli.dest();
    let first = &cli.files()[0];
    if first.as_os_str() == "-" {
        let bar = progress_bar(cli, None);
        let report = zcommon::send_stdin(&dest, &opts, &mut |n| bar.inc(n));
        bar.finish_and_clear();
        return Ok(Sent::File(log_report(report?)));
    }
    if cli.files().len() == 1 && !first.is_dir() {
        // Errors opening the source surface from send_file below, with the right exit code.
        let size = zcommon::source_size(first).unwrap_or(0);
        let bar = progress_bar(cli, Some(size));
        let report = send_file(&dest, first, &opts, &mut |n| bar.inc(n));
        bar.finish_and_clear();
        return Ok(Sent::File(log_report(report?)));
    }
    let tree_opts = TreeOptions {
        links: cli.links,
        fail_fast: cli.fail_fast,
    };
    let bar = progress_bar(cli, Some(0));
    let files = std::cell::Cell::new(0usize);
    let mut done = 0usize;
    let mut walked = |n: usize, bytes: u64| {
        files.set(n);
        bar.set_length(bytes);
        bar.set_message(format!("0/{n} files"));
    };
    let mut tick = |t: Tick| match t {
        Tick::Bytes(n) => bar.inc(n),
        Tick::File => {
            done += 1;
            bar.set_message(format!("{done}/{} files", files.get()));
        }
    };
    let report = send_tree(&dest, cli.files(), &opts, tree_opts, &mut walked, &mut tick);
    bar.finish_and_clear();
    Ok(Sent::Tree(report?))
}

fn log_report(report: SendReport) -> SendReport {
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

/// A terminal progress bar (bytes, rate, ETA; bytes and rate for a stream of unknown size),
/// hidden when stderr is not a terminal.
fn progress_bar(cli: &Cli, size: Option<u64>) -> ProgressBar {
    if cli.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = match size {
        Some(_) => {
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}"
        }
        None => "{spinner} {binary_bytes} {binary_bytes_per_sec}",
    };
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

fn summary(r: &SendReport) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let check = match r.sha256 {
        Some(d) => format!("sha256 {} verified", hex::encode(d)),
        None => "not verified (--no-verify)".into(),
    };
    let resumed = match r.resumed_from {
        0 => String::new(),
        n => format!(", resumed after {}", Bytes(n)),
    };
    let moved = r.bytes - r.resumed_from;
    format!(
        "sent {} ({}{resumed}) to {} in {:.2} s, {}/s, {check}",
        Escaped(&r.name),
        Bytes(r.bytes),
        r.peer,
        secs,
        Bytes((moved as f64 / secs) as u64),
    )
}

/// Why a host of a chain did not land the file.
fn host_error(h: &zcommon::HopReport) -> String {
    match h.verdict.status {
        zcommon::Status::Mismatch => "checksum mismatch; discarded".into(),
        zcommon::Status::Landed => "landed with another checksum".into(),
        zcommon::Status::Failed => Escaped(&h.verdict.message).to_string(),
    }
}

fn tree_summary(r: &TreeReport) -> String {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
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
        Bytes((r.bytes_sent as f64 / secs) as u64),
    )
}

fn stages_json(stages: &zcommon::StageTimes) -> serde_json::Value {
    stages
        .as_pairs()
        .into_iter()
        .filter(|(name, _)| matches!(*name, "network_cpu_s" | "hash_cpu_s"))
        .map(|(name, secs)| (name.to_owned(), serde_json::json!(secs)))
        .collect()
}

fn json(cli: &Cli, result: &anyhow::Result<Sent>) -> serde_json::Value {
    match result {
        Ok(Sent::File(r)) => serde_json::json!({
            "version": 1,
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
            "version": 1,
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
            "version": 1,
            "ok": false,
            "file": cli.files().first().map(|f| f.display().to_string()),
            "error": format!("{e:#}"),
            "exit_code": e.downcast_ref::<SendError>().map_or(ExitStatus::Local, SendError::exit_status).code(),
            "verified": false,
        }),
    }
}
