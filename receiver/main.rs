//! zrecv: listen on a TCP port and land what zsend sends into a directory, verified and durable.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

mod cli;

use cli::Cli;
use zcommon::{
    sweep_interval, Age, Bytes, Escaped, ExitStatus, Receiver, ReceiverConfig, Swept, Token,
    TransferRecord,
};

/// How long after a stop the connections still being served are cut off
/// (`Receiver::cut_off`): time enough for a transfer that had everything to land and tell its
/// sender so.
const CUT_OFF_AFTER: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    zcommon::init_logging("zrecv", 1, cli.verbose, cli.quiet);
    match run(&cli) {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) => {
            eprintln!("zrecv: {}", Escaped(&format!("{err:#}")));
            ExitCode::from(ExitStatus::Local.code())
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitStatus> {
    // Caught from the start: a signal that comes before serving stops it as soon as it starts.
    let signals = Signals::new([SIGTERM, SIGINT]).context("handling SIGTERM and SIGINT")?;
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
    // These threads never hold up the exit: the process ends once serving is over.
    let (stopper, (told, stop_told)) = (receiver.clone(), mpsc::channel());
    std::thread::spawn(move || stop_on_signals(signals, &stopper, timeout, told));
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
        let (sweeper, dir) = (receiver.clone(), cli.dir.clone());
        std::thread::spawn(move || sweep_periodically(&sweeper, max_age, &dir));
    }
    if open && !bound.ip().is_loopback() {
        log::warn!(
            "no --token-file: anyone who can reach {bound} can write files into {}",
            cli.dir.display()
        );
    }
    let status = serve(cli, &receiver);
    if receiver.is_stopped() {
        // Once the stop has been told.
        let _ = stop_told.recv();
        log::info!("stopped");
    }
    status
}

/// Serves one transfer (`--once`) or until stopped.
fn serve(cli: &Cli, receiver: &Receiver) -> anyhow::Result<ExitStatus> {
    let report = |r: &TransferRecord| report(cli, r, receiver.is_stopped());
    if cli.once {
        let record = match receiver.serve_once() {
            Ok(record) => record,
            Err(_) if receiver.is_stopped() => return Ok(ExitStatus::Success),
            Err(e) => return Err(e).context("accepting a connection"),
        };
        report(&record);
        return Ok(record
            .result
            .as_ref()
            .map_or_else(|e| e.exit_status(), |()| ExitStatus::Success));
    }
    receiver.serve(&report).context("serving")?;
    Ok(ExitStatus::Success)
}

/// Stops the receiver on the first SIGTERM or SIGINT: cuts off the connections still served
/// [`CUT_OFF_AFTER`] later, and gives up on them after `grace`. A second signal ends the
/// process at once. `told` hears once the stop is logged.
fn stop_on_signals(
    mut signals: Signals,
    receiver: &Arc<Receiver>,
    grace: Duration,
    told: mpsc::Sender<()>,
) {
    let mut caught = signals.forever();
    let Some(first) = caught.next() else { return };
    match receiver.stop() {
        0 => log::info!("stopping on {}: no transfers in flight", name(first)),
        n => log::info!(
            "stopping on {}: {n} transfer(s) interrupted; their partials are kept for resuming",
            name(first)
        ),
    }
    let _ = told.send(());
    let receiver = receiver.clone();
    std::thread::spawn(move || {
        // Timers, not locks: if serving ends first, the process ends with them.
        let cut_off_after = CUT_OFF_AFTER.min(grace);
        std::thread::sleep(cut_off_after);
        let n = receiver.cut_off();
        if n > 0 {
            log::warn!(
                "{n} transfer(s) still running {} after the stop: cutting them off",
                Age(cut_off_after)
            );
        }
        std::thread::sleep(grace - cut_off_after);
        log::warn!(
            "transfers still running {} after the stop: exiting without them",
            Age(grace)
        );
        die(first);
    });
    if let Some(second) = caught.next() {
        log::warn!("{} again: exiting at once", name(second));
        die(second);
    }
}

/// Removes stale partials at once, then every `sweep_interval` until the receiver stops.
fn sweep_periodically(receiver: &Receiver, max_age: Duration, dir: &Path) {
    while !receiver.is_stopped() {
        log_swept(&receiver.remove_stale_partials(max_age), max_age, dir);
        std::thread::sleep(sweep_interval(max_age));
    }
}

/// Ends the process as `signal` would have without a handler.
fn die(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal)
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "a signal",
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

/// One log line per transfer, and a JSON line with `--json`. `stopping`: the receiver is
/// stopping, so a transfer that broke off was interrupted by the stop.
fn report(cli: &Cli, r: &TransferRecord, stopping: bool) {
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
        (Err(e), _) if stopping && e.is_interruption() => {
            let of = r
                .size
                .map(|n| format!(" of {}", Bytes(n)))
                .unwrap_or_default();
            log::warn!(
                "{what}: interrupted by the stop after {}{of}",
                Bytes(r.received)
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
