//! Sending many files and directories over one connection: the manifest, the receiver's
//! answer for every entry, then the files back to back without waiting for each (the
//! receiver's per-file verdicts are read on a second thread), then a second pass for files the
//! receiver found different from what it held.
//!
//! Here: `send_tree`, and the session's top level (handshake, manifest, reader thread, passes).
//! The rooms, in the order a tree goes through them:
//! - `walk.rs`: the paths on the command line listed as a manifest;
//! - `scan.rs`: the directories read for the walk, ahead of it on every core;
//! - `manifest.rs`: the manifest out, the receiver's answers in: what the first pass sends;
//! - `pass.rs`: the passes, every file's frame and body back to back;
//! - `prehash.rs`: the roots of the files checked, hashed ahead on every core;
//! - `remember.rs`: the roots remembered of files unchanged since they were hashed;
//! - `ledger.rs`: what we wait to hear about each entry, and the thread reading the verdicts;
//! - `verdict.rs`: each verdict taken in, counted or failed.

use std::cell::Cell;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{auth_nonce, open_connection, Phase, SendOptions, Tick};
use crate::auth::Integrity;
use crate::client::{handshake, net};
use crate::error::SendError;
use crate::name::Escaped;
use crate::stages::StageTimes;
use crate::wire::ProtocolError;
use crate::wire::{Header, FLAG_NO_VERIFY, FLAG_TREE, TRAILER_LEN};
use ledger::{read_reports, Incoming, Ledger, Sent};
use manifest::Action;
use prehash::{Prehash, Shared};
use remember::Remembered;
use walk::{walk, Tree, WalkOptions};

pub use crate::meta::Keep;

mod ledger;
mod manifest;
mod pass;
mod prehash;
mod remember;
mod scan;
mod verdict;
mod walk;

/// How to send a tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeOptions {
    /// What to keep of each entry beyond its content, mode and mtime.
    pub keep: Keep,
    /// Stop at the first file that fails instead of going on with the others.
    pub fail_fast: bool,
    /// Take a file of the same size and mtime on the receiver as unchanged without comparing
    /// roots, as rsync does by default (`--quick-check`).
    pub quick: bool,
    /// Hash every file to check, rather than use the roots remembered for files unchanged
    /// since they were hashed here (`--rehash`).
    pub rehash: bool,
}

/// What happened to a tree, for the summary and `--json`.
#[derive(Clone, Debug)]
pub struct TreeReport {
    /// The receiver's address.
    pub peer: SocketAddr,
    /// Regular files in the tree.
    pub files: usize,
    /// Files sent, verified and published.
    pub landed: usize,
    /// Files the receiver already held with the same SHA-256: nothing was sent.
    pub unchanged: usize,
    /// Of those, the ones taken on size and mtime alone (`--quick-check`): not verified.
    pub quick: usize,
    /// Checks whose root here was remembered, not read (the file unchanged since it was
    /// hashed).
    pub remembered: usize,
    /// Directories made or found on the receiver.
    pub dirs: usize,
    /// Symbolic links made.
    pub links: usize,
    /// Hard links made (second names of a file sent once).
    pub hard_links: usize,
    /// Fifos, sockets and device files made.
    pub specials: usize,
    /// Entries the receiver said would land without some of their owner, setuid or setgid
    /// bits, or privileged attributes (it keeps those only from a sender with a token, as root
    /// with `--preserve-privileged`).
    pub unkept: usize,
    /// Entries that did not land, with why.
    pub failures: Vec<(String, String)>,
    /// Entries left out on purpose (special files, links without `--links`), with why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Second names of links and special files, sent as entries of their own: the protocol
    /// links regular files only.
    pub unlinked: Vec<PathBuf>,
    /// Bytes of all files.
    pub bytes: u64,
    /// Payload bytes put on the wire (holes and resumed prefixes excluded).
    pub bytes_sent: u64,
    /// Bytes of partial files the receiver held and this transfer resumed from.
    pub resumed_from: u64,
    /// From connecting to the last verdict.
    pub elapsed: Duration,
    /// Whether every payload went through sendfile.
    pub zero_copy: bool,
    /// CPU of the sendfile loop and of hashing, all files together.
    pub stages: StageTimes,
}

impl TreeReport {
    /// Whether every entry landed as sent: none failed, none was left out, none lost its owner
    /// or privileged metadata on the way.
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
            && self.skipped.is_empty()
            && self.unkept == 0
            && self.unlinked.is_empty()
    }
}

/// Sends `roots` (files and directories) to the receiver at `addr` over one connection.
/// Returns the report even when some files failed; the caller decides what that means.
pub fn send_tree(
    addr: &str,
    roots: &[PathBuf],
    opts: &SendOptions,
    tree_opts: TreeOptions,
    on_walked: &mut dyn FnMut(usize, u64),
    progress: &mut dyn FnMut(Tick),
) -> Result<TreeReport, SendError> {
    let walk_opts = WalkOptions {
        keep: tree_opts.keep,
        resumable: opts.verify,
    };
    let tree = walk(roots, opts.name.as_deref(), walk_opts)?;
    for (path, why) in &tree.skipped {
        log::warn!("skipping {}: {why}", Escaped(path.as_os_str().as_bytes()));
    }
    for path in &tree.unlinked {
        log::warn!(
            "sending {} as an entry of its own: hard links are kept between regular files only",
            Escaped(path.as_os_str().as_bytes())
        );
    }
    for (path, why) in &tree.unreadable {
        log::warn!(
            "cannot read {}: {why}",
            Escaped(path.as_os_str().as_bytes())
        );
    }
    on_walked(tree.file_count(), tree.total_bytes());
    let label = crate::name::label_of(&tree.manifest.entries[0].path);
    let start = Instant::now();
    progress(Tick::Phase(Phase::Connecting));
    let (stream, scratch) = open_connection(addr, opts, &roots[0], label.clone())?;
    // Read once the answers say there are files to check (a quick check reads none).
    let remembered = (!tree_opts.quick).then(|| Remembered::new(tree_opts.rehash));
    let mut session = Session {
        stream: &stream,
        tree: &tree,
        remembered: remembered.as_ref(),
        opts,
        tree_opts,
        integrity: Integrity::none(),
        ledger: Arc::new(Ledger::new(tree.manifest.entries.len())),
        digests: vec![None; tree.manifest.entries.len()],
        resumed: vec![0; tree.manifest.entries.len()],
        scratch,
        held: Cell::new(None),
        queued: std::cell::RefCell::new(Vec::new()),
        last_failed: None,
        report: TreeReport {
            peer: stream.peer_addr().map_err(net("connecting"))?,
            files: tree.file_count(),
            landed: 0,
            unchanged: 0,
            quick: 0,
            remembered: 0,
            dirs: 0,
            links: 0,
            hard_links: 0,
            specials: 0,
            unkept: 0,
            failures: tree
                .unreadable
                .iter()
                .map(|(p, why)| (Escaped(p.as_os_str().as_bytes()).to_string(), why.clone()))
                .collect(),
            skipped: tree.skipped.clone(),
            unlinked: tree.unlinked.clone(),
            bytes: tree.total_bytes(),
            bytes_sent: 0,
            resumed_from: 0,
            elapsed: Duration::ZERO,
            zero_copy: true,
            stages: StageTimes::default(),
        },
    };
    let ran = session.run(&label, progress);
    if let Some(r) = &remembered {
        session.report.remembered = r.used();
        r.save();
    }
    ran?;
    let mut report = session.report;
    report.bytes_sent = session.scratch.bytes_sent;
    report.zero_copy = session.scratch.zero_copy;
    report.stages = session.scratch.stages;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// One tree transfer under way: what `manifest.rs`, `pass.rs` and `verdict.rs` work on.
struct Session<'a> {
    stream: &'a TcpStream,
    tree: &'a Tree,
    /// The roots remembered of the tree's files, if there is a cache directory.
    remembered: Option<&'a Remembered>,
    opts: &'a SendOptions,
    tree_opts: TreeOptions,
    /// Seals our trailers' digests, and opens the receiver's verdicts'.
    integrity: Integrity,
    /// What we wait to hear about each entry (the verdict reader holds it too).
    ledger: Arc<Ledger>,
    /// Our SHA-256 of each file sent or checked.
    digests: Vec<Option<[u8; 32]>>,
    /// Where each file's payload started (a resumed prefix), until its verdict says whether
    /// the receiver's prefix matched.
    resumed: Vec<u64>,
    /// Byte counts and CPU of the file bodies, accumulated.
    scratch: super::SendReport,
    /// The last file's trailer, sent with the next frame in one write (the receiver reads
    /// both with one call), with its entry and what it completes.
    held: Cell<Option<(usize, [u8; TRAILER_LEN], Sent)>>,
    /// Checks not written yet: they go out together, before the next bytes.
    queued: std::cell::RefCell<Vec<u8>>,
    /// The entry and the receiver's words if its latest verdict was a failure to write.
    last_failed: Option<(String, String)>,
    report: TreeReport,
}

impl Session<'_> {
    fn run(&mut self, label: &str, progress: &mut dyn FnMut(Tick)) -> Result<(), SendError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let mut flags = FLAG_TREE;
        if !self.opts.verify {
            flags |= FLAG_NO_VERIFY;
        }
        let header = Header {
            mode: 0o755,
            mtime_sec: now.as_secs() as i64,
            mtime_nsec: now.subsec_nanos(),
            flags,
            auth_nonce: auth_nonce(self.opts)?,
            ..Header::new(label, self.tree.total_bytes())
        };
        // A tree is not resumable as a whole, so a resume offer is refused inside.
        self.integrity = handshake(self.stream, &header, self.opts.token.as_ref())?.integrity;
        let first = self.answers(label)?;
        // The roots of the files to check are hashed ahead on every core (a large file,
        // hashed with keepalives between its pieces, in turn). A quick check reads nothing.
        let tree = self.tree;
        let quick = self.tree_opts.quick;
        let checks = first
            .iter()
            .filter(|(i, action)| {
                let small = tree.manifest.entries[*i].size() < pass::KEEPALIVE_ABOVE;
                let hashed = match action {
                    Action::Check => !quick,
                    Action::Verify => true,
                    _ => false,
                };
                small && hashed
            })
            .map(|(i, _)| *i)
            .collect::<Vec<usize>>();
        let any_check = (first.iter()).any(|(_, a)| matches!(a, Action::Check | Action::Verify));
        if let (Some(r), true) = (self.remembered, any_check) {
            r.open(tree);
        }
        let shared = Shared::new(checks);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stream = self.stream;
        // From here on only the reader thread reads, and verdicts may be far apart (a large
        // file, a batch on a slow link): the wait for them is bounded where it matters, at the
        // end of each pass, while a stalled receiver shows as a write that times out.
        stream
            .set_read_timeout(None)
            .map_err(net("configuring the socket"))?;
        std::thread::scope(|s| {
            let ahead = Prehash::start(s, &shared, tree, self.remembered, threads);
            let (tx, reports) = mpsc::channel();
            let ledger = self.ledger.clone();
            s.spawn(move || read_reports(stream, ledger, tx));
            let result = match self.passes(first, &ahead, &reports, progress) {
                Err(e) if ends_connection(&e) => Err(self.why_it_ended(e, &reports)),
                other => other,
            };
            // Ends the reader, whatever happened.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            result
        })
    }

    /// The connection ended under us (`e`): if the receiver's last verdict was a file it
    /// failed to write, that is why (it ends a tree on a local failure such as a full disk),
    /// and the sender says so as it does for a single file.
    fn why_it_ended(&mut self, e: SendError, reports: &mpsc::Receiver<Incoming>) -> SendError {
        // The reader stops at the end of the connection, which has come or is coming.
        while let Ok(Ok((report, sent))) = reports.recv_timeout(Duration::from_secs(1)) {
            let _ = self.apply(report, sent, &mut Vec::new());
        }
        match self.last_failed.take() {
            Some((name, message)) => SendError::ReceiverFailed { name, message },
            None => e,
        }
    }

    /// Counts entry `i` failed for `why`, which may be the receiver's text: kept escaped, for
    /// `--json` as for the terminal.
    fn fail(&mut self, i: usize, why: String) {
        let path = Escaped(&self.tree.manifest.entries[i].path).to_string();
        let why = Escaped(&why).to_string();
        log::warn!("{path}: {why}");
        self.report.failures.push((path, why));
    }
}

/// Whether `e` is the connection ending or breaking, rather than something said over it.
fn ends_connection(e: &SendError) -> bool {
    matches!(
        e,
        SendError::Network { .. }
            | SendError::Protocol(ProtocolError::Truncated(_) | ProtocolError::Io(..))
    )
}
