//! zrecv: listen on a TCP port and land what zsend sends into a directory, verified and durable.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

mod cli;

use cli::Cli;
use zcommon::{
    sweep_interval, Age, Bytes, Escaped, ExitStatus, Receiver, ReceiverConfig, Swept, Token,
    TransferRecord,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    zcommon::init_logging("zrecv", 1, cli.verbose, cli.quiet);
    match run(&cli) {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) => {
            eprintln!("zrecv: {err:#}");
            ExitCode::from(ExitStatus::Local.code())
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitStatus> {
    let token = Token::from_optional_file(cli.token_file.as_deref())?;
    let open = token.is_none();
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let config = ReceiverConfig {
        dir: cli.dir.clone(),
        force: cli.force,
        timeout,
        // One transfer with --once (or --stdout): it may use all the open files allowed.
        max_transfers: match cli.once || cli.stdout {
            true => 1,
            false => cli.max_transfers.max(1),
        },
        to_stdout: cli.stdout,
        token,
        allow_forward: cli.allow_forward.clone(),
    };
    let receiver = Receiver::bind(cli.listen, config)
        .with_context(|| format!("listening on {} for {}", cli.listen, cli.dir.display()))?;
    let receiver = Arc::new(receiver);
    let bound = receiver.local_addr()?;
    eprintln!("listening on {bound}");
    // With --stdout nothing is written into --dir: nothing to sweep there.
    let max_age = cli.partial_max_age;
    if !cli.stdout {
        if max_age <= timeout {
            log::warn!(
                "--partial-max-age {} is not above --timeout {}: a resumed transfer that stalls \
                 longer than the age may lose its partial",
                Age(max_age),
                Age(timeout)
            );
        }
        // Never holds up the exit: the process ends once serving is over.
        let (sweeper, dir) = (receiver.clone(), cli.dir.clone());
        std::thread::spawn(move || sweep_periodically(&sweeper, max_age, &dir));
    }
    if open && !bound.ip().is_loopback() {
        log::warn!(
            "no --token-file: anyone who can reach {bound} can write files into {}",
            cli.dir.display()
        );
    }
    let report = |r: &TransferRecord| report(cli, r);
    if cli.once {
        let record = receiver.serve_once().context("accepting a connection")?;
        report(&record);
        return Ok(record
            .result
            .as_ref()
            .map_or_else(|e| e.exit_status(), |()| ExitStatus::Success));
    }
    receiver.serve(&report).context("serving")?;
    Ok(ExitStatus::Success)
}

/// Removes stale partials at once, then every `sweep_interval`.
fn sweep_periodically(receiver: &Receiver, max_age: Duration, dir: &Path) -> ! {
    loop {
        log_swept(&receiver.remove_stale_partials(max_age), max_age, dir);
        std::thread::sleep(sweep_interval(max_age));
    }
}

/// Says what a sweep of stale partials removed (failures were logged as they happened).
fn log_swept(swept: &Swept, max_age: Duration, dir: &Path) {
    const SHOWN: usize = 8;
    if swept.removed.is_empty() {
        return;
    }
    let mut names: Vec<String> = swept
        .removed
        .iter()
        .take(SHOWN)
        .map(|p| Escaped(&p.to_string_lossy()).to_string())
        .collect();
    if swept.removed.len() > SHOWN {
        names.push(format!("and {} more", swept.removed.len() - SHOWN));
    }
    log::info!(
        "removed {} stale temporary file(s) older than {} from {}: {}",
        swept.removed.len(),
        Age(max_age),
        dir.display(),
        names.join(", ")
    );
}

/// One log line per transfer, and a JSON line with `--json`.
fn report(cli: &Cli, r: &TransferRecord) {
    let name = r.name.as_deref().map(Escaped);
    let what = match &name {
        Some(n) => format!("{n} from {}", r.peer),
        None => format!("connection from {}", r.peer),
    };
    match (&r.result, &r.tree) {
        (Ok(()), Some(t)) => {
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            log::info!(
                "received tree {what}: {} files ({} landed, {} already here, {} failed), \
                 {} directories, {} links, {} in {secs:.2} s, {}/s",
                t.files,
                t.landed,
                t.unchanged,
                t.failed,
                t.dirs,
                t.links,
                Bytes(r.received),
                Bytes((r.received as f64 / secs) as u64)
            );
        }
        (Ok(()), None) => {
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let check = match r.sha256 {
                Some(d) => format!("sha256 {} verified", hex::encode(d)),
                None => "not verified (sender used --no-verify)".into(),
            };
            let moved = r.received - r.resumed_from;
            let resumed = match r.resumed_from {
                0 => String::new(),
                n => format!(" (resumed after {})", Bytes(n)),
            };
            log::info!(
                "received {what}: {} in {secs:.2} s, {}/s{resumed}, {check}",
                Bytes(moved),
                Bytes((moved as f64 / secs) as u64)
            );
        }
        (Err(e), _) => log::error!("{what}: {e:#}"),
    }
    for h in &r.hops {
        match h.verdict.status {
            zcommon::Status::Landed => log::info!("forwarded to {}: landed", Escaped(&h.host)),
            _ => log::warn!(
                "forwarded to {}: not landed: {}",
                Escaped(&h.host),
                Escaped(&h.verdict.message)
            ),
        }
    }
    let st = &r.stages;
    log::debug!(
        "cpu: splice in {:.2} s, splice to file {:.2} s, sha256 {:.2} s; fsync {:.2} s",
        st.network_cpu.as_secs_f64(),
        st.file_cpu.as_secs_f64(),
        st.hash_cpu.as_secs_f64(),
        st.fsync.as_secs_f64()
    );
    if cli.json {
        let line = serde_json::json!({
            "version": 1,
            "ok": r.result.is_ok(),
            "peer": r.peer.to_string(),
            "name": r.name,
            "bytes": r.size,
            "bytes_received": r.received.saturating_sub(r.resumed_from),
            "resumed_from": r.resumed_from,
            "seconds": r.elapsed.as_secs_f64(),
            "sha256": r.sha256.map(hex::encode),
            "verified": r.verified,
            "zero_copy": r.zero_copy,
            "stages": r.stages.as_pairs().into_iter()
                .map(|(name, secs)| (name.to_owned(), serde_json::json!(secs)))
                .collect::<serde_json::Map<_, _>>(),
            "error": r.result.as_ref().err().map(|e| format!("{e:#}")),
            "forwarded": r.hops.iter().map(|h| serde_json::json!({
                "host": h.host,
                "ok": h.verdict.status == zcommon::Status::Landed,
                "sha256": h.verdict.sha256.map(hex::encode),
                "error": (h.verdict.status != zcommon::Status::Landed).then_some(&h.verdict.message),
            })).collect::<Vec<_>>(),
            "tree": r.tree.as_ref().map(|t| serde_json::json!({
                "files": t.files,
                "landed": t.landed,
                "unchanged": t.unchanged,
                "failed": t.failed,
                "dirs": t.dirs,
                "links": t.links,
            })),
        });
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
