//! The sending side: open the source, connect, announce, push the payload with sendfile while a
//! second thread hashes it, then wait for the receiver's verdict.
//!
//! Every transfer goes connection -> handshake -> one of file, stream, tree or chain -> landing:
//! - here: `send_file` checks its arguments; `open_connection` connects with the options'
//!   timeouts and starts the report;
//! - the handshake (hello, reply, the token proved both ways) is `crate::client`'s, shared with a
//!   receiver forwarding along a chain;
//! - `file.rs`: a single file: header, handshake, body (sendfile, or sparse records) hashed on a
//!   second thread, trailer, verdict; `source.rs` is the file it sends, `resume.rs` proves the
//!   prefix a receiver kept from an interrupted transfer;
//! - `stream.rs`: standard input, of unknown length, in data records;
//! - `tree/`: many files and directories over one connection (`tree/walk.rs` lists them);
//! - `chain.rs`: a file the receiver forwards host to host, and every host's verdict;
//! - `land.rs`: the receiver's word on what it landed, turned into the outcome.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::auth::{self, Token};
use crate::client::{connect, net};
use crate::error::SendError;
use crate::name::validate_name;
use crate::stages::StageTimes;
use crate::wire::{check_chain, HopReport};

mod chain;
mod file;
mod land;
mod resume;
mod source;
mod stream;
mod tree;
mod update;

pub use chain::hop_landed;
pub use stream::send_stdin;
pub use tree::{send_tree, Keep, TreeOptions, TreeReport};

use file::transfer;
use source::Source;

/// A step of a transfer, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// This many more bytes are done.
    Bytes(u64),
    /// One more file of a tree is done.
    File,
    /// The transfer entered a phase in which bytes may not move for a while.
    Phase(Phase),
    /// The receiver's kept partial turned out to differ from the file: its bytes count again
    /// from 0, and the whole file goes again.
    Restart,
}

/// Where a transfer is, beyond its bytes: what a display shows while none move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, then waiting for the receiver to answer the hello (a receiver serving as
    /// many transfers as it allows answers once one ends).
    Connecting,
    /// Hashing the file into its piece layer, so that only the pieces the receiver lacks cross.
    Comparing,
    /// The payload flows.
    Sending,
    /// Everything went out: the receiver finishes checking it, makes it durable and publishes
    /// it; its verdict comes next.
    Landing,
}

/// How to send.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// Name on the receiver; the source's file name if `None`.
    pub name: Option<String>,
    /// Hash on both sides and compare.
    pub verify: bool,
    /// Longest wait for the peer: connecting, each step of the handshake, any stall.
    pub timeout: Duration,
    /// Shared secret; with one, both sides must prove they hold it.
    pub token: Option<Token>,
    /// Hosts (`HOST:PORT`) the receiver forwards the file to, in order: a chain.
    pub chain: Vec<String>,
    /// Also compute the plain SHA-256 of a single file (`sha256sum`'s), beside the root.
    pub sha256: bool,
    /// When the name exists on the receiver and it replaces files, send only the pieces that
    /// differ (false: `--whole-file`).
    pub update: bool,
    /// Apply such an update in place, through the receiver's journal (`--inplace`).
    pub inplace: bool,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            name: None,
            verify: true,
            timeout: Duration::from_secs(60),
            token: None,
            chain: Vec::new(),
            sha256: false,
            update: true,
            inplace: false,
        }
    }
}

/// What happened, for the summary line and `--json`.
#[derive(Clone, Debug)]
pub struct SendReport {
    /// The source path.
    pub path: PathBuf,
    /// The name on the receiver.
    pub name: String,
    /// The receiver's address.
    pub peer: SocketAddr,
    /// File size.
    pub bytes: u64,
    /// Payload bytes put on the wire by this run (holes and a resumed prefix excluded).
    pub bytes_sent: u64,
    /// Where the payload started: the bytes the receiver already held from an interrupted
    /// transfer and proved to match (0 for a fresh transfer).
    pub resumed_from: u64,
    /// From connecting to the verdict.
    pub elapsed: Duration,
    /// The tree root (BEP 52) both sides agreed on, if verifying.
    pub root: Option<[u8; 32]>,
    /// The plain SHA-256 of the file, as `sha256sum` prints it, when asked for
    /// ([`SendOptions::sha256`]); computed on this side only.
    pub sha256: Option<[u8; 32]>,
    /// Whether both digests were computed and matched.
    pub verified: bool,
    /// Whether the payload went through sendfile (false: the read/write fallback).
    pub zero_copy: bool,
    /// CPU of the sendfile loop and of hashing.
    pub stages: StageTimes,
    /// For a chain: every host's verdict, the first receiver's first.
    pub hosts: Vec<HopReport>,
    /// When only the pieces that differ crossed: how many.
    pub update: Option<UpdateReport>,
    /// Pieces sent again in repair rounds.
    pub repaired: u64,
    /// The file's piece roots (runs of equal roots), when it was hashed here (for a .torrent).
    pub layer: Option<Vec<([u8; 32], u64)>>,
}

/// An update of a file the receiver held: the pieces it needed of all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// Applied in place through the receiver's journal.
    pub inplace: bool,
    /// The file's pieces.
    pub pieces: u64,
    /// The pieces that crossed.
    pub sent: u64,
}

/// The number of bytes `path` would send: a file's length or a block device's size.
pub fn source_size(path: &Path) -> Result<u64, SendError> {
    Source::open(path).map(|s| s.size)
}

/// Sends `path` to the receiver at `addr`. `progress` is told each phase, and the bytes moved by
/// each step of the copy loop.
pub fn send_file(
    addr: &str,
    path: &Path,
    opts: &SendOptions,
    progress: &mut dyn FnMut(Tick),
) -> Result<SendReport, SendError> {
    check_chain(&opts.chain).map_err(SendError::Usage)?;
    let source = Source::open(path)?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => source.default_name()?,
    };
    validate_name(&name).map_err(|reason| SendError::Name {
        path: path.to_owned(),
        reason,
    })?;
    let start = Instant::now();
    progress(Tick::Phase(Phase::Connecting));
    let (stream, mut report) = open_connection(addr, opts, path, name)?;
    report.bytes = source.size;
    transfer(&stream, &source, opts, &mut report, progress)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Connects with the options' timeouts and starts the report of this transfer.
fn open_connection(
    addr: &str,
    opts: &SendOptions,
    path: &Path,
    name: String,
) -> Result<(TcpStream, SendReport), SendError> {
    let stream = connect(addr, opts.timeout)?;
    let peer = stream.peer_addr().map_err(net("connecting"))?;
    stream
        .set_read_timeout(Some(opts.timeout))
        .and_then(|()| stream.set_write_timeout(Some(opts.timeout)))
        .map_err(net("configuring the socket"))?;
    let report = SendReport {
        path: path.to_owned(),
        name,
        peer,
        bytes: 0,
        bytes_sent: 0,
        resumed_from: 0,
        elapsed: Duration::ZERO,
        root: None,
        sha256: None,
        verified: false,
        zero_copy: true,
        stages: StageTimes::default(),
        hosts: Vec::new(),
        update: None,
        repaired: 0,
        layer: None,
    };
    Ok((stream, report))
}

/// A fresh nonce for the hello when the sender holds a token.
fn auth_nonce(opts: &SendOptions) -> Result<Option<[u8; 32]>, SendError> {
    match opts.token {
        Some(_) => Ok(Some(auth::nonce().map_err(net("drawing a nonce"))?)),
        None => Ok(None),
    }
}
