//! zsend: send a file to a zrecv, zero-copy, and exit 0 only once it landed verified and durable.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

mod cli;
mod output;
#[path = "../display/shared.rs"]
mod shared;

use cli::Cli;
use output::Progress;
use zcommon::{
    send_file, send_tree, ExitStatus, SendError, SendOptions, SendReport, Token, TreeOptions,
    TreeReport,
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
        println!("{}", output::json(&cli, &result));
    }
    if let (Ok(Sent::File(r)), false) = (&result, cli.quiet || cli.json) {
        output::print_hosts(r);
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
                output::print_summary(&sent);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            shared::print_error("zsend", &err);
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
        let progress = Progress::new(cli, None);
        let report = zcommon::send_stdin(&dest, &opts, &mut |n| progress.inc(n));
        progress.finish();
        return Ok(Sent::File(output::log_report(report?)));
    }
    if cli.files().len() == 1 && !first.is_dir() {
        // Errors opening the source surface from send_file below, with the right exit code.
        let size = zcommon::source_size(first).unwrap_or(0);
        let progress = Progress::new(cli, Some(size));
        let report = send_file(&dest, first, &opts, &mut |n| progress.inc(n));
        progress.finish();
        return Ok(Sent::File(output::log_report(report?)));
    }
    let tree_opts = TreeOptions {
        links: cli.links,
        fail_fast: cli.fail_fast,
    };
    let progress = Progress::new(cli, Some(0));
    let mut walked = |n, bytes| progress.walked(n, bytes);
    let mut tick = |t| progress.tick(t);
    let report = send_tree(&dest, cli.files(), &opts, tree_opts, &mut walked, &mut tick);
    progress.finish();
    Ok(Sent::Tree(report?))
}
