//! zsend: send a file to a zrecv, zero-copy, and exit 0 only once it landed verified and durable.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use zcommon::{send_file, Bytes, Escaped, ExitStatus, SendError, SendOptions, SendReport, Token};

/// Send a file to a zrecv receiver: zero-copy with sendfile(2), verified with SHA-256 on both
/// ends, published on the receiver only once complete, verified and durable.
#[derive(Parser, Debug)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    /// Receiver address: HOST:PORT, [IPV6]:PORT, or HOST for the default port 7350.
    #[arg(value_name = "HOST:PORT")]
    dest: String,

    /// The file to send: a regular file, a block device (it lands under the device's base
    /// name unless --name), or - for standard input (a stream; --name is required).
    file: PathBuf,

    /// Name to give the file on the receiver (default: the file's own name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Skip SHA-256 on both ends (lengths are still checked; the data is still made durable).
    #[arg(long)]
    no_verify: bool,

    /// File holding a secret shared with the receiver; both sides then prove they know it
    /// (HMAC-SHA256 challenge-response; the token never crosses the wire).
    #[arg(long, value_name = "FILE", env = "ZSEND_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// Seconds to wait for the receiver at any step before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,

    /// Print one JSON object describing the result on stdout.
    #[arg(long)]
    json: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,

    /// More detail on stderr (-v: decisions such as fallbacks, -vv: debugging).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

const EXAMPLES: &str = "\
Examples:
  zsend backup-host:7350 disk.img              send disk.img, verified
  zsend 10.0.0.5:7350 vm.qcow2 --name vm-2.qcow2
  zsend [fd00::5]:7350 build.tar --json        machine-readable result on stdout
  zsend host:7350 disk.img --token-file /etc/zsend/token
  tar c build/ | zsend host:7350 - --name build.tar   stream standard input
  zsend backup-host:7350 disk.img              again after an interruption: sends only the
                                               rest, once both ends agree on the prefix's SHA-256

Exit status: 0 landed and verified, 1 local error, 2 usage, 3 network, 4 refused by the
receiver, 5 verification failed, 6 protocol error, 7 receiver failed to land the file,
8 authentication failed.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.file.as_os_str() == "-" && cli.name.is_none() {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "standard input (-) has no name of its own: give --name NAME",
            )
            .exit();
    }
    zcommon::init_logging("zsend", 0, cli.verbose, cli.quiet);
    let result = run(&cli);
    if cli.json {
        println!("{}", json(&cli, &result));
    }
    match result {
        Ok(report) => {
            if !cli.quiet && !cli.json {
                eprintln!("zsend: {}", summary(&report));
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("zsend: {err:#}");
            let status = err
                .downcast_ref::<SendError>()
                .map_or(ExitStatus::Local, SendError::exit_status);
            ExitCode::from(status.code())
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<SendReport> {
    let token = Token::from_optional_file(cli.token_file.as_deref()).with_context(|| {
        let path = cli
            .token_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        format!("reading the token file {}", path.display())
    })?;
    let opts = SendOptions {
        name: cli.name.clone(),
        verify: !cli.no_verify,
        timeout: Duration::from_secs(cli.timeout.max(1)),
        token,
    };
    let from_stdin = cli.file.as_os_str() == "-";
    // Errors opening the source surface from send_file below, with the right exit code.
    let size = (!from_stdin).then(|| zcommon::source_size(&cli.file).unwrap_or(0));
    let bar = progress_bar(cli, size);
    let report = if from_stdin {
        zcommon::send_stdin(&cli.dest, &opts, &mut |n| bar.inc(n))
    } else {
        send_file(&cli.dest, &cli.file, &opts, &mut |n| bar.inc(n))
    };
    bar.finish_and_clear();
    let report = report?;
    if !report.zero_copy {
        log::info!("the payload went through read/write: sendfile cannot read this file");
    }
    let st = &report.stages;
    log::info!(
        "cpu: sendfile {:.2} s, sha256 {:.2} s",
        st.network_cpu.as_secs_f64(),
        st.hash_cpu.as_secs_f64()
    );
    Ok(report)
}

/// A terminal progress bar (bytes, rate, ETA; bytes and rate for a stream of unknown size),
/// hidden when stderr is not a terminal.
fn progress_bar(cli: &Cli, size: Option<u64>) -> ProgressBar {
    if cli.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = match size {
        Some(_) => "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
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

fn stages_json(stages: &zcommon::StageTimes) -> serde_json::Value {
    stages
        .as_pairs()
        .into_iter()
        .filter(|(name, _)| matches!(*name, "network_cpu_s" | "hash_cpu_s"))
        .map(|(name, secs)| (name.to_owned(), serde_json::json!(secs)))
        .collect()
}

fn json(cli: &Cli, result: &anyhow::Result<SendReport>) -> serde_json::Value {
    match result {
        Ok(r) => serde_json::json!({
            "version": 1,
            "ok": true,
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
        }),
        Err(e) => serde_json::json!({
            "version": 1,
            "ok": false,
            "file": cli.file.display().to_string(),
            "error": format!("{e:#}"),
            "exit_code": e.downcast_ref::<SendError>().map_or(ExitStatus::Local, SendError::exit_status).code(),
            "verified": false,
        }),
    }
}
