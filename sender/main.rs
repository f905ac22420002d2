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
    send_file, send_tree, ExitStatus, Keep, RefuseCode, SendError, SendOptions, SendReport, Token,
    TreeOptions, TreeReport,
};

/// What was sent.
enum Sent {
    File(SendReport),
    Tree(TreeReport),
    /// One file whose name was taken by the same content: nothing crossed.
    Already(TreeReport, String),
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
    zcommon::set_hash_threads(cli.hash_threads.map_or(0, usize::from));
    let progress = Progress::new(&cli);
    report_interruptions(&cli, progress.handle());
    let result = run(&cli, &progress);
    if cli.json {
        println!("{}", output::json(&cli, &result));
    }
    if let (Ok(Sent::File(r)), false) = (&result, cli.quiet || cli.json) {
        output::print_hosts(r);
    }
    let result = result.and_then(|sent| match &sent {
        Sent::Tree(r) if !r.complete() => Err(SendError::Partial {
            failed: r.failures.len(),
            skipped: r.skipped.len(),
            unkept: r.unkept,
            unlinked: r.unlinked.len(),
            files: r.files,
        }
        .into()),
        Sent::File(r) if r.hosts.iter().any(|h| !zcommon::hop_landed(h, r.root)) => {
            Err(SendError::Hosts {
                failed: r
                    .hosts
                    .iter()
                    .filter(|h| !zcommon::hop_landed(h, r.root))
                    .count(),
                hosts: r.hosts.len(),
            }
            .into())
        }
        _ => Ok(sent),
    });
    let result = result.and_then(|sent| match (&sent, &cli.torrent) {
        (Sent::File(r), Some(path)) => {
            let hashed = r.root.zip(r.layer.clone());
            write_torrent(&r.path, &r.name, hashed, path).map(|()| sent)
        }
        (Sent::Already(..), Some(path)) => {
            let source = &cli.files()[0];
            let name = cli.name.clone().unwrap_or_else(|| {
                source
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            });
            write_torrent(source, &name, None, path).map(|()| sent)
        }
        _ => Ok(sent),
    });
    match result {
        Ok(sent) => {
            if !cli.quiet && !cli.json {
                output::print_summary(&sent);
                if let Some(path) = &cli.torrent {
                    eprintln!("zsend: wrote {}", path.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            match output::failure(&err, &cli, &progress) {
                Some(told) => eprintln!("zsend: {}", zcommon::Escaped(&told)),
                None => shared::print_error("zsend", &err),
            }
            let status = err
                .downcast_ref::<SendError>()
                .map_or(ExitStatus::Local, SendError::exit_status);
            ExitCode::from(status.code())
        }
    }
}

/// Usage errors clap cannot see.
fn check_paths(cli: &Cli) -> Result<(), String> {
    let looks_like_host = |p: &std::path::Path| !p.exists() && host_port(p).is_some();
    if !cli.to.is_empty() && cli.args.len() > 1 && looks_like_host(&cli.args[0]) {
        return Err(format!(
            "--to names the receivers; {} before the file is one too many (--to and HOST:PORT \
             are exclusive)",
            cli.args[0].display()
        ));
    }
    // `zsend FILE HOST:PORT`: the receiver comes first.
    if cli.to.is_empty() && cli.args[0].exists() {
        if let Some(last) = cli
            .args
            .last()
            .filter(|a| cli.args.len() > 1 && looks_like_host(a))
        {
            return Err(format!(
                "the receiver comes first: zsend {} {}",
                last.display(),
                cli.args[0].display()
            ));
        }
    }
    if cli.files().is_empty() {
        return Err("give the receiver's HOST:PORT, then what to send".into());
    }
    let one_file = cli.files().len() == 1 && cli.files()[0].as_os_str() != "-";
    if cli.torrent.is_some() && (!one_file || cli.files()[0].is_dir() || cli.no_verify) {
        return Err(
            "--torrent takes one file (not a directory, many files or standard input), verified"
                .into(),
        );
    }
    if cli.sha256 && (!one_file || cli.files()[0].is_dir()) {
        return Err(
            "--sha256 takes one file (not a directory, many files or standard input)".into(),
        );
    }
    for dest in cli
        .to
        .iter()
        .cloned()
        .chain(cli.to.is_empty().then(|| cli.dest()))
    {
        if let Some(Err(why)) = host_port(dest.as_ref()) {
            return Err(why);
        }
    }
    if let Some(Err(reason)) = cli.name.as_deref().map(zcommon::validate_name) {
        return Err(format!(
            "--name {}: {reason}",
            zcommon::Escaped(cli.name.as_deref().unwrap_or_default())
        ));
    }
    if cli.to.len() > 1 && (cli.files().len() != 1 || cli.files()[0].is_dir()) {
        return Err("--to sends one file (not a directory) to several hosts".into());
    }
    if cli.to.len() > 1 && cli.files()[0].as_os_str() == "-" {
        return Err("--to sends a file, not standard input".into());
    }
    let stdin = cli.files().iter().any(|f| f.as_os_str() == "-");
    if stdin && cli.files().len() > 1 {
        return Err("standard input (-) is sent on its own".into());
    }
    if stdin && cli.name.is_none() {
        return Err("standard input (-) has no name of its own: give --name NAME".into());
    }
    if cli.name.is_some() && cli.files().len() > 1 {
        return Err("--name names one file or directory; give one, or leave --name out".into());
    }
    Ok(())
}

/// Whether `arg` is written as a receiver's address, `HOST:PORT` or `[V6]:PORT`: `None` if it is
/// not, `Some(Err)` with the reason if its port is not one.
fn host_port(arg: &std::path::Path) -> Option<Result<(), String>> {
    let arg = arg.to_str()?;
    let (host, port) = match arg.strip_prefix('[') {
        Some(rest) => {
            let (_, port) = rest.split_once("]:")?;
            ("[", port)
        }
        None if arg.matches(':').count() == 1 => arg.split_once(':')?,
        None => return None,
    };
    if host.is_empty() || host.contains('/') || port.is_empty() {
        return None;
    }
    Some(match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ if port.chars().all(|c| c.is_ascii_digit()) => {
            Err(format!("{arg}: port {port} is out of range (1 to 65535)"))
        }
        _ => return None,
    })
}

/// On SIGINT or SIGTERM: clear the bar, say how far the transfer got and how to go on, and exit
/// as the signal would (130, 143). The receiver keeps what arrived of a file for the next run.
fn report_interruptions(cli: &Cli, bar: indicatif::ProgressBar) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return; // the default action then: killed by the signal, silently
    };
    let line = move |cli: &Cli| output::interrupted(&bar, cli);
    let cli = cli.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            if !cli.quiet {
                eprintln!("{}", line(&cli));
            }
            std::process::exit(128 + signal);
        }
    });
}

/// A file refused because its name exists: sent again as a tree of one file, whose answer
/// compares the file there with this one (same size and mtime, then the digests). `Some` when
/// it is already there with the same content; `None` (the refusal stands) otherwise.
fn already_there(cli: &Cli, dest: &str, opts: &SendOptions, label: &str) -> Option<Sent> {
    let tree_opts = TreeOptions {
        keep: Keep::default(),
        fail_fast: true,
        quick: cli.quick_check,
        rehash: cli.rehash,
    };
    let files = &cli.files()[..1];
    let report = send_tree(dest, files, opts, tree_opts, &mut |_, _| {}, &mut |_| {}).ok()?;
    (report.unchanged == 1 && report.failures.is_empty())
        .then(|| Sent::Already(report, label.to_owned()))
}

/// A file's root and its piece layer (runs of equal piece roots).
type Hashed = ([u8; 32], Vec<([u8; 32], u64)>);

/// Writes a BitTorrent v2 .torrent of `source`, which landed as `name`, from the root and piece
/// layer its transfer hashed (or, when it did not hash it here, from a pass over the file now).
fn write_torrent(
    source: &std::path::Path,
    name: &str,
    hashed: Option<Hashed>,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let file = std::fs::File::open(source)
        .with_context(|| format!("reading {} for the torrent", source.display()))?;
    let size = zcommon::source_size(source)?;
    let (root, layer) = match hashed {
        Some(hashed) => hashed,
        None => zcommon::layer_of_file(&file, size, true)
            .with_context(|| format!("hashing {} for the torrent", source.display()))?,
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = zcommon::torrent::TorrentFile {
        name,
        size,
        root,
        pieces: &layer,
    };
    let bytes = zcommon::torrent::encode(&t, created)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// What the display calls a source: its file name.
fn label_of(path: &std::path::Path) -> String {
    let name = path.file_name().unwrap_or(path.as_os_str());
    zcommon::Escaped(name.as_encoded_bytes()).to_string()
}

fn run(cli: &Cli, progress: &Progress) -> anyhow::Result<Sent> {
    let token = Token::from_optional_file(cli.token_file.as_deref())?;
    let opts = SendOptions {
        name: cli.name.clone(),
        verify: !cli.no_verify,
        timeout: Duration::from_secs(cli.timeout.max(1)),
        token,
        chain: cli.to.iter().skip(1).cloned().collect(),
        sha256: cli.sha256,
        update: !cli.whole_file,
        inplace: cli.inplace,
    };
    let dest = cli.dest();
    let first = &cli.files()[0];
    if first.as_os_str() == "-" {
        progress.start("-", None);
        let report = zcommon::send_stdin(&dest, &opts, &mut |t| progress.tick(t));
        progress.finish();
        return Ok(Sent::File(output::log_report(report?, progress)));
    }
    if cli.files().len() == 1 && !first.is_dir() {
        // Errors opening the source surface from send_file below, with the right exit code.
        let size = zcommon::source_size(first).unwrap_or(0);
        let label = cli.name.clone().unwrap_or_else(|| label_of(first));
        progress.start(&label, Some(size));
        let report = send_file(&dest, first, &opts, &mut |t| progress.tick(t));
        progress.finish();
        return match report {
            // The name is taken there: if by this very content, it is already there (as
            // rsync and a tree would say), which a one-file tree's check tells.
            Err(SendError::Refused {
                code: RefuseCode::Exists,
                ..
            }) if opts.verify && opts.chain.is_empty() => already_there(cli, &dest, &opts, &label)
                .ok_or_else(|| report.expect_err("matched Err").into()),
            report => Ok(Sent::File(output::log_report(report?, progress))),
        };
    }
    let tree_opts = TreeOptions {
        keep: cli.keep(),
        fail_fast: cli.fail_fast,
        quick: cli.quick_check,
        rehash: cli.rehash,
    };
    let label = cli.name.clone().unwrap_or_else(|| label_of(first));
    progress.start(&label, Some(0));
    let mut walked = |n, bytes| progress.walked(n, bytes);
    let mut tick = |t| progress.tick(t);
    let report = send_tree(&dest, cli.files(), &opts, tree_opts, &mut walked, &mut tick);
    progress.finish();
    Ok(Sent::Tree(report?))
}
