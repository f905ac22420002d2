//! zsend's command line: options, help text and examples (also used to generate the man
//! page and shell completions in docs/man and contrib/completions).

use std::path::PathBuf;

use clap::Parser;
use zcommon::Keep;

/// `--version`: the release, and the protocol version it speaks (a test keeps it in sync).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 14)");

/// Send files to a zrecv, zero-copy and verified.
///
/// zsend pushes a file from the page cache into the socket with sendfile(2) while a second thread
/// hashes it, and exits 0 only once the receiver says the file landed under its name, its SHA-256
/// the same on both ends and its data durable. Directories go over one connection; a file can go
/// to several hosts through a chain; an interrupted transfer resumes when sent again.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "zsend",
    version = VERSION,
    after_help = EXAMPLES,
    override_usage = "zsend [OPTIONS] HOST:PORT FILE|DIR...\n       \
                      zsend [OPTIONS] --to HOST:PORT[,HOST:PORT...] FILE"
)]
pub struct Cli {
    /// The receiver's address (HOST:PORT, [IPV6]:PORT, or HOST for the default port 7350),
    /// unless --to gives it, then what to send: regular files, block devices (they land under
    /// the device's base name unless --name), directories (recursively, over the same
    /// connection), or - for standard input (a stream; --name is required).
    #[arg(value_name = "HOST:PORT FILE|DIR", required = true)]
    pub args: Vec<PathBuf>,

    /// Send one file to several hosts through a chain: the first receiver forwards it to the
    /// second while writing it, and so on (each receiver needs --allow-forward for the next).
    /// Comma-separated or repeated; every host's result is reported.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    pub to: Vec<String>,

    /// Name to give the file (or the directory) on the receiver, when sending one (default:
    /// its own name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Keep everything `rsync -aHAX` keeps: owners and groups (-o), extended attributes (-X),
    /// POSIX ACLs (-A), fifos, sockets and device files (-D), beside what every tree keeps
    /// (modes, mtimes, symbolic links, hard links). Owners, setuid/setgid bits, capabilities
    /// and devices land only where the receiver allows it (zrecv --preserve-privileged, with
    /// a token); what does not land so is counted, and zsend exits 9. For directories: a
    /// single file sent alone keeps its mode and mtime.
    #[arg(short = 'a', long)]
    pub archive: bool,

    /// Keep owners and groups, by name where both ends know it, else by number.
    #[arg(short = 'o', long, visible_short_alias = 'g', visible_alias = "group")]
    pub owner: bool,

    /// Send owners and groups by number only.
    #[arg(long)]
    pub numeric_ids: bool,

    /// Keep extended attributes (user.*, and trusted.* and security.*, file capabilities
    /// among them, where this side can read them).
    #[arg(short = 'X', long)]
    pub xattrs: bool,

    /// Keep POSIX ACLs (access and default).
    #[arg(short = 'A', long)]
    pub acls: bool,

    /// Make fifos and sockets on the receiver (-D: this and --devices).
    #[arg(long)]
    pub specials: bool,

    /// Make device files on the receiver (one that allows it: zrecv --preserve-privileged).
    #[arg(long)]
    pub devices: bool,

    /// --specials and --devices.
    #[arg(short = 'D')]
    pub specials_and_devices: bool,

    /// Leave symbolic links out of trees (by default they are sent as links, wherever they
    /// point; the receiver decides which it makes, see zrecv --trust-links).
    #[arg(long)]
    pub no_links: bool,

    /// Send each name of a file with several names (hard links) as a file of its own (by
    /// default it crosses once and lands with all its names).
    #[arg(long)]
    pub no_hard_links: bool,

    /// Accepted for older scripts: links are sent by default.
    #[arg(long, hide = true)]
    pub links: bool,

    /// Take a file the receiver already has with the same size and mtime as unchanged, without
    /// comparing tree roots (rsync's quick check). Faster for a tree sent again, but such files
    /// are not verified (`--json` then says `"verified": false`).
    #[arg(long)]
    pub quick_check: bool,

    /// Hash every file of a tree the receiver already has, rather than use the root zsend
    /// remembered for a file unchanged since it hashed or sent it (the same inode, size, mtime
    /// and ctime; no one can set a ctime). Roots are remembered in $XDG_CACHE_HOME/zsend (or
    /// ~/.cache/zsend), one file per tree. The receiver has its own (zrecv --rehash).
    #[arg(long, conflicts_with = "quick_check")]
    pub rehash: bool,

    /// With many files, stop at the first one that fails (default: send the others).
    #[arg(long)]
    pub fail_fast: bool,

    /// Skip hashing on both ends (lengths are still checked; the data is still made durable).
    #[arg(long)]
    pub no_verify: bool,

    /// Also compute the file's plain SHA-256 (what sha256sum prints) on this side, beside the
    /// tree root both ends verify with, and print it. One file only; costs a core while it runs.
    #[arg(long)]
    pub sha256: bool,

    /// When the file exists on the receiver (which replaces files: zrecv --force), apply the
    /// update to it in place rather than beside it, as rsync --inplace: for images too large
    /// to hold twice. The pieces that differ go to a journal first, so a crash leaves the old
    /// version or the new one.
    #[arg(long, conflicts_with = "whole_file")]
    pub inplace: bool,

    /// Send the whole file even when the receiver holds a version of it (by default only the
    /// 1 MiB pieces that differ cross, as rsync's delta).
    #[arg(short = 'W', long)]
    pub whole_file: bool,

    /// Also write a BitTorrent v2 .torrent of the file (its piece layers included, from the
    /// same hashing pass) to PATH, once it landed: seeds for a swarm that verifies every piece
    /// against the same root. One file only.
    #[arg(long, value_name = "PATH")]
    pub torrent: Option<PathBuf>,

    /// Threads that hash one file's pieces on this side (default: the machine's cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub hash_threads: Option<u16>,

    /// File holding a secret shared with the receiver; both sides then prove they know it
    /// (HMAC-SHA256 challenge-response; the token never crosses the wire).
    #[arg(long, value_name = "FILE", env = "ZSEND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Seconds to wait for the receiver at any step before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,

    /// Print one JSON object describing the result on stdout.
    #[arg(long)]
    pub json: bool,

    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,

    /// More detail on stderr (-v: decisions such as fallbacks, -vv: debugging).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Shown after the options in --help.
pub const EXAMPLES: &str = "\
Examples:
  zsend backup-host:7350 disk.img              send disk.img, verified
  zsend 10.0.0.5:7350 vm.qcow2 --name vm-2.qcow2
  zsend [fd00::5]:7350 build.tar --json        machine-readable result on stdout
  zsend host:7350 disk.img --token-file /etc/zsend/token
  zsend host:7350 vm/ config.xml               a directory tree and a file, one connection
  zsend --to h1:7350,h2:7350,h3:7350 disk.img  one file to three hosts through a chain
  tar c build/ | zsend host:7350 - --name build.tar   stream standard input
  zsend backup-host:7350 disk.img              again after an interruption: sends only the
                                               rest, once both ends agree on the prefix's root
  zsend host:7350 vm.raw                       to a zrecv --force holding an older vm.raw:
                                               only the 1 MiB pieces that differ cross
  zsend host:7350 vm.raw --inplace             the same, applied in place through a journal
  zsend host:7350 disk.img --torrent disk.torrent   and a v2 .torrent of it for a swarm

Exit status: 0 landed and verified, 1 local error, 2 usage, 3 network, 4 refused by the
receiver, 5 verification failed, 6 protocol error, 7 receiver failed to land the file,
8 authentication failed, 9 some files of a tree or hosts of a chain did not land (the others
did), 130 interrupted (Ctrl-C; run the same command again to resume).";

impl Cli {
    /// What a tree keeps beyond content, modes and mtimes.
    pub fn keep(&self) -> Keep {
        let a = self.archive;
        Keep {
            links: !self.no_links,
            hard_links: !self.no_hard_links,
            owner: a || self.owner,
            numeric_ids: self.numeric_ids,
            xattrs: a || self.xattrs,
            acls: a || self.acls,
            specials: a || self.specials || self.specials_and_devices,
            devices: a || self.devices || self.specials_and_devices,
        }
    }

    /// The first receiver.
    pub fn dest(&self) -> String {
        match self.to.first() {
            Some(first) => first.clone(),
            None => self.args[0].to_string_lossy().into_owned(),
        }
    }

    /// What to send.
    pub fn files(&self) -> &[PathBuf] {
        match self.to.is_empty() {
            true => &self.args[1..],
            false => &self.args,
        }
    }
}
