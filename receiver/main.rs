//! zrecv: listen on a TCP port and land what zsend sends into a directory, verified and durable.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

mod cli;
mod output;
#[path = "../display/shared.rs"]
mod shared;

use cli::Cli;
use zcommon::{
    os_reason, sweep_interval, Age, ExitStatus, Receiver, ReceiverConfig, Token, TransferRecord,
};

/// `--list-partials` and `--remove-partials`: what DIR keeps for resuming.
fn partials(cli: &Cli) -> anyhow::Result<ExitStatus> {
    let kept = zcommon::kept_partials(&cli.dir)
        .with_context(|| format!("listing the partials in {}", cli.dir.display()))?;
    if cli.list_partials {
        output::list_partials(&kept, cli.json);
        return Ok(ExitStatus::Success);
    }
    let mut failed = 0;
    for k in &kept {
        // A receiver serving the directory holds it now.
        if k.in_flight {
            output::partial_left(k);
            continue;
        }
        match zcommon::remove_partial(k) {
            Ok(()) => output::partial_removed(k),
            Err(e) => {
                failed += 1;
                log::error!("removing {}: {}", output::shown(k), os_reason(&e));
            }
        }
    }
    Ok(match failed {
        0 => ExitStatus::Success,
        _ => ExitStatus::Local,
    })
}

/// How long after a stop the connections still being served are cut off
/// (`Receiver::cut_off`): time enough for a transfer that had everything to land and tell its
/// sender so.
const CUT_OFF_AFTER: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    zcommon::init_logging("zrecv", 1, cli.verbose, cli.quiet);
    zcommon::set_hash_threads(cli.hash_threads.map_or(0, usize::from));
    match run(&cli) {
        Ok(status) => ExitCode::from(status.code()),
        Err(err) => {
            shared::print_error("zrecv", &err);
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
        slot_wait: Duration::from_secs(cli.slot_wait),
        to_stdout: cli.stdout,
        token,
        allow_forward: cli.allow_forward.clone(),
        trust_links: cli.trust_links,
        preserve_privileged: cli.preserve_privileged,
        rehash: cli.rehash,
    };
    // The directory first, so that a wrong one is named as such, not as a failure to listen.
    match std::fs::metadata(&cli.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("receive directory {}: not a directory", cli.dir.display()),
        Err(e) => anyhow::bail!("receive directory {}: {}", cli.dir.display(), os_reason(&e)),
    }
    if cli.list_partials || cli.remove_partials {
        return partials(cli);
    }
    let receiver = Receiver::bind(cli.listen, config)
        .with_context(|| format!("listening on {} for {}", cli.listen, cli.dir.display()))?;
    let receiver = Arc::new(receiver);
    let bound = receiver.local_addr()?;
    eprintln!("listening on {bound}");
    // Updates in place that a killed receiver left half done are finished or dropped (a
    // transfer of such a file does the same first, so none has to wait for this).
    if !cli.stdout {
        let recovered = receiver.recover_updates();
        if recovered > 0 {
            log::info!("recovered {recovered} interrupted update(s) in place");
        }
    }
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
    // Said even with -q: quiet is for a receiver's chatter, not for this.
    if open && !bound.ip().is_loopback() {
        eprintln!(
            "zrecv: warning: no --token-file: anyone who can reach {bound} can write files into {}",
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
    let report = |r: &TransferRecord| output::report(cli, r, receiver.is_stopped());
    if cli.once {
        let record = match receiver.serve_once() {
            Ok(record) => record,
            Err(_) if receiver.is_stopped() => return Ok(ExitStatus::Success),
            Err(e) => return Err(e).context("accepting a connection"),
        };
        report(&record);
        return Ok(record.exit_status());
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
        output::log_swept(&receiver.remove_stale_partials(max_age), max_age, dir);
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
