//! zrecv's command line: options, help text and examples (also used to generate the man
//! page and shell completions in docs/man and contrib/completions).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use zcommon::parse_listen_addr;

/// `--version`: the release, and the protocol version it speaks (a test keeps it in sync).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 14)");

/// Receive files from zsend, verified and durable.
///
/// zrecv listens on a TCP port and writes what zsend sends into a directory: splice(2) moves the
/// payload from the socket through a pipe into a hidden file while a second thread hashes it
/// back, and the file is published under its name only once its SHA-256 matches the sender's and
/// the data is durable. An interrupted transfer keeps its partial for the same send to resume.
#[derive(Parser, Debug)]
// Bare `zrecv` prints the usage: listening on every address, tokenless, into the current
// directory is not something to start by accident.
#[command(
    name = "zrecv",
    version = VERSION,
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Address to listen on: IP:PORT, [IPV6]:PORT, IP, or PORT. Port 0 picks a free port.
    /// The first line on stderr is `listening on ADDR` with the bound address.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_value = "0.0.0.0:7350",
        default_missing_value = "0.0.0.0:7350",
        value_parser = parse_listen_addr,
    )]
    pub listen: SocketAddr,

    /// Directory to write into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Serve one transfer, then exit with its result.
    #[arg(long)]
    pub once: bool,

    /// Replace existing files.
    #[arg(long)]
    pub force: bool,

    /// Write the payload to standard output instead of a file, for another program to read.
    /// The root is still checked: a mismatch makes zrecv (and zsend) exit non-zero, so the
    /// reader must look at the exit status. A sender's --no-verify skips the check (zrecv says
    /// so on stderr and exits 0); only a token keeps untrusted senders out. Needs --once.
    #[arg(long, requires = "once", conflicts_with = "json")]
    pub stdout: bool,

    /// Seconds to wait for a sender at any step; a stalled transfer is dropped after it.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,

    /// Threads that hash one file's pieces as it lands (default: the machine's cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub hash_threads: Option<u16>,

    /// Most transfers served at once; further senders wait for a slot (see --slot-wait).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_transfers: usize,

    /// Seconds a sender waits for a free slot when --max-transfers are running, before it is
    /// refused as busy (zsend shows it waiting). Keep it below the senders' --timeout.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub slot_wait: u64,

    /// Remove hidden partial and temporary files (.zrecv-*.part, .zrecv-*.resume) in DIR and
    /// its subdirectories once they have not been modified for this long: at start, then every
    /// quarter of it (at least hourly) while serving. A number with a unit: 90s, 30m, 12h, 2d;
    /// a bare number is seconds. Keep it well above --timeout.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = zcommon::parse_age)]
    pub partial_max_age: Duration,

    /// File holding a secret shared with senders: each must prove it knows it before anything
    /// touches the disk, and zrecv proves it back.
    #[arg(long, value_name = "FILE", env = "ZSEND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Networks this receiver may forward to when a sender asks for a chain (zsend --to):
    /// CIDRs or addresses, comma-separated. Without it, zrecv never forwards.
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = zcommon::parse_network)]
    pub allow_forward: Vec<zcommon::IpNet>,

    /// Make every symbolic link of a tree as it was sent (absolute ones, dangling ones, ones
    /// leading out of the tree), even from a sender without a token. A sender that proved the
    /// token (--token-file) is trusted so without this. Otherwise a link is made only when it
    /// resolves inside its own tree, and the others are refused and counted. zrecv never
    /// follows a link it made, either way.
    #[arg(long)]
    pub trust_links: bool,

    /// Keep owners and groups, setuid and setgid bits, file capabilities and other security.*
    /// and trusted.* attributes, and make device files, as a sender with -a sends them: only
    /// for a sender that proved the token (--token-file), and only when zrecv runs as root.
    /// Without it such metadata is not kept (counted, and the sender exits 9), and device files
    /// are refused.
    #[arg(long)]
    pub preserve_privileged: bool,

    /// Hash every file of a tree that a sender checks against the copy here. Without it, a
    /// file this receiver landed or hashed before, and that has not changed since (the same
    /// inode, size, mtime and ctime; no one can set a ctime), is answered with the SHA-256 root
    /// remembered then, in DIR/.zrecv-KEY.roots, without reading it. Use it after a crash, or
    /// to catch a disk that changed bytes on its own.
    #[arg(long)]
    pub rehash: bool,

    /// List the partials kept in DIR (and its subdirectories) for resuming: the name each
    /// belongs to, how much of it is held, the space it takes, its age. Then exit.
    #[arg(long, conflicts_with_all = ["remove_partials", "once", "stdout"])]
    pub list_partials: bool,

    /// Remove the partials kept in DIR for resuming (not one a running transfer holds), saying
    /// what each held. Then exit.
    #[arg(long, conflicts_with_all = ["once", "stdout"])]
    pub remove_partials: bool,

    /// Print one JSON line per finished transfer on stdout.
    #[arg(long)]
    pub json: bool,

    /// Print nothing but errors (and the warning that no --token-file leaves the receiver open).
    #[arg(short, long)]
    pub quiet: bool,

    /// More detail on stderr (-v: decisions such as fallbacks, -vv: debugging).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Shown after the options in --help.
pub const EXAMPLES: &str = "\
Examples:
  zrecv --listen --dir /srv/images          listen on 0.0.0.0:7350
  zrecv --listen 127.0.0.1:0 --once         one transfer on a free loopback port
  zrecv --listen [::]:7350 --json           a JSON line per transfer on stdout
  zrecv --listen --token-file /etc/zsend/token --dir /srv/images
  zrecv --listen --once --stdout | tar x     feed another program; exit 5 if the roots differ
  zrecv --listen --allow-forward 10.0.0.0/24   pass chains (zsend --to) on within 10.0.0.0/24

SIGTERM or SIGINT stops zrecv: every transfer in flight keeps its partial for the next send to
resume, and zrecv exits 0 (with --once: the interrupted transfer's status). A second signal
ends it at once.

Exit status: 0 served (stopped by SIGTERM or SIGINT, or with --once the transfer landed),
1 could not start (the directory, the address), 2 usage; with --once, the transfer's: 3 network,
4 refused, 5 verification failed, 6 protocol error, 7 could not land it (disk full, fsync or
rename failed), 8 authentication failed, 9 some entries of the tree did not land or lost
metadata they were sent with.";
