//! Sending many files and directories over one connection: the manifest, the receiver's
//! answer for every entry, then the files back to back without waiting for each (the
//! receiver's per-file verdicts are read on a second thread), then a second pass for files the
//! receiver found different from what it held.

use std::cell::Cell;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::file::send_body;
use super::resume::hash_prefix_telling;
use super::source::Source;
use super::{auth_nonce, open_connection, SendOptions};
use crate::auth::{self, Integrity, Seal};
use crate::client::{handshake, net};
use crate::error::SendError;
use crate::hash::Prefix;
use crate::name::Escaped;
use crate::stages::StageTimes;
use crate::wire::ProtocolError;
use crate::wire::{Answer, Answers, FileStatus, Frame, Kind, Report};
use crate::wire::{Header, Trailer, FLAG_NO_VERIFY, FLAG_TREE, TRAILER_LEN};
use walk::{walk, Tree, WalkOptions};

mod walk;

/// How to send a tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeOptions {
    /// Send symbolic links (those pointing inside their tree) as links.
    pub links: bool,
    /// Stop at the first file that fails instead of going on with the others.
    pub fail_fast: bool,
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
    /// Directories made or found on the receiver.
    pub dirs: usize,
    /// Symbolic links made.
    pub links: usize,
    /// Entries that did not land, with why.
    pub failures: Vec<(String, String)>,
    /// Entries left out on purpose (special files, links without `--links`), with why.
    pub skipped: Vec<(PathBuf, String)>,
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

/// A step of a tree transfer, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum Tick {
    /// This many more bytes are done.
    Bytes(u64),
    /// One more file is done.
    File,
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
        links: tree_opts.links,
        resumable: opts.verify,
    };
    let tree = walk(roots, opts.name.as_deref(), walk_opts)?;
    for (path, why) in &tree.skipped {
        log::warn!("skipping {}: {why}", path.display());
    }
    on_walked(tree.file_count(), tree.total_bytes());
    let label = tree.manifest.entries[0].path.clone();
    let start = Instant::now();
    let (stream, scratch) = open_connection(addr, opts, &roots[0], label.clone())?;
    let mut session = Session {
        stream: &stream,
        tree: &tree,
        opts,
        tree_opts,
        integrity: Integrity::none(),
        ledger: Arc::new(Ledger::new(tree.manifest.entries.len())),
        digests: vec![None; tree.manifest.entries.len()],
        resumed: vec![0; tree.manifest.entries.len()],
        scratch,
        held: Cell::new(None),
        last_failed: None,
        report: TreeReport {
            peer: stream.peer_addr().map_err(net("connecting"))?,
            files: tree.file_count(),
            landed: 0,
            unchanged: 0,
            dirs: 0,
            links: 0,
            failures: tree
                .unreadable
                .iter()
                .map(|(p, why)| (p.display().to_string(), why.clone()))
                .collect(),
            skipped: tree.skipped.clone(),
            bytes: tree.total_bytes(),
            bytes_sent: 0,
            resumed_from: 0,
            elapsed: Duration::ZERO,
            zero_copy: true,
            stages: StageTimes::default(),
        },
    };
    session.run(&label, progress)?;
    let mut report = session.report;
    report.bytes_sent = session.scratch.bytes_sent;
    report.zero_copy = session.scratch.zero_copy;
    report.stages = session.scratch.stages;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Files at least this large are hashed on a second thread while keepalive frames go out.
const KEEPALIVE_ABOVE: u64 = 64 << 20;

/// What to send for one file.
#[derive(Clone, Copy, Debug)]
enum Action {
    Full,
    Check,
    /// The receiver holds this many bytes; the proof of ours is keyed with this nonce.
    Resume(u64, [u8; 32]),
}

/// What went out for an entry, and so which verdicts may come back for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// The whole file and its trailer.
    Full,
    /// A check of the copy the receiver has.
    Check,
    /// The rest of a partial the receiver holds, and its trailer.
    Resume,
    /// The whole payload, then word that the source changed: the receiver must discard it.
    Abandoned,
}

impl Sent {
    /// Whether the receiver may answer `status` to this.
    fn allows(self, status: FileStatus) -> bool {
        use FileStatus::*;
        match self {
            Sent::Full => matches!(status, Landed | Mismatch | Failed | Refused),
            Sent::Resume => matches!(status, Landed | Mismatch | Failed | Refused | Resend),
            Sent::Check => matches!(status, Unchanged | Resend | Failed | Refused),
            Sent::Abandoned => matches!(status, Failed | Refused),
        }
    }
}

/// Where each entry stands: nothing out, going out, waiting for its verdict, or answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Idle,
    /// Its frame went out and its payload is going: the receiver may only say it failed (a
    /// local failure such as a full disk, after which it ends the tree).
    Sending(Sent),
    Awaiting(Sent),
    Answered,
}

/// What the sender waits to hear, shared with the thread that reads verdicts: an entry awaits
/// its verdict from the moment its last byte (its trailer, or its check) goes out, so a
/// verdict for anything else (an entry not sent, not finished, or already answered; a status
/// that does not answer what was sent) is refused as it is read. No entry is answered twice,
/// so no tree can count more verdicts than files. It also notes when the receiver last said
/// anything.
struct Ledger {
    slots: Mutex<Vec<Slot>>,
    start: Instant,
    /// Milliseconds from `start` to the receiver's latest word.
    heard: AtomicU64,
}

impl Ledger {
    fn new(entries: usize) -> Ledger {
        Ledger {
            slots: Mutex::new(vec![Slot::Idle; entries]),
            start: Instant::now(),
            heard: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The receiver said something.
    fn heard(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.heard.store(now, Ordering::Relaxed);
    }

    /// How long since the receiver last said anything (since the start, if it never did).
    fn since_heard(&self) -> Duration {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(heard)
    }

    /// Entry `i`'s frame is about to go out, its payload after it.
    fn sending(&self, i: usize, sent: Sent) {
        self.lock()[i] = Slot::Sending(sent);
    }

    /// Entry `i`'s last byte is about to go out.
    fn expect(&self, i: usize, sent: Sent) {
        self.lock()[i] = Slot::Awaiting(sent);
    }

    /// Takes in a verdict for entry `index`; returns what it answers.
    fn answer(&self, index: u32, status: FileStatus) -> Result<Sent, ProtocolError> {
        let mut slots = self.lock();
        let count = slots.len();
        let bad = |why: String| Err(ProtocolError::Malformed(why));
        let Some(slot) = slots.get_mut(index as usize) else {
            return bad(format!("a verdict for entry {index} of {count}"));
        };
        match *slot {
            Slot::Awaiting(sent) if sent.allows(status) => {
                *slot = match status {
                    FileStatus::Resend => Slot::Idle,
                    _ => Slot::Answered,
                };
                Ok(sent)
            }
            Slot::Awaiting(sent) => bad(format!(
                "a verdict {status:?} for entry {index}, which was sent as {sent:?}"
            )),
            Slot::Sending(sent) if status == FileStatus::Failed => {
                *slot = Slot::Answered;
                Ok(sent)
            }
            Slot::Sending(_) => bad(format!(
                "a verdict {status:?} for entry {index} before all of it was sent"
            )),
            Slot::Idle => bad(format!(
                "a verdict for entry {index} before all of it was sent"
            )),
            Slot::Answered => bad(format!("a second verdict for entry {index}")),
        }
    }

    /// How many entries still await their verdict.
    fn awaiting(&self) -> usize {
        self.lock()
            .iter()
            .filter(|s| matches!(s, Slot::Awaiting(_)))
            .count()
    }
}

/// What the verdict reader passes on: a report, with what it answers when it is a verdict.
type Incoming = Result<(Report, Option<Sent>), ProtocolError>;

struct Session<'a> {
    stream: &'a TcpStream,
    tree: &'a Tree,
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
        let manifest = &self.tree.manifest;
        self.stream
            .write_all(&manifest.encode())
            .map_err(net("sending the manifest"))?;
        // The receiver sends nothing after its answers until it has our first frame, so they
        // can be read through a buffer (one system call, not one per entry).
        let mut buffered = std::io::BufReader::new(self.stream);
        let answers = match Answers::read(&mut buffered, manifest.entries.len())? {
            Answers::Each(a) => a,
            Answers::Refused(code, message) => {
                return Err(SendError::Refused {
                    name: label.to_owned(),
                    code,
                    message,
                })
            }
        };
        if !buffered.buffer().is_empty() {
            return Err(ProtocolError::Malformed(
                "the receiver spoke after its answers, before any file went out".into(),
            )
            .into());
        }
        let mut first = Vec::new();
        for (i, (entry, answer)) in manifest.entries.iter().zip(answers).enumerate() {
            match (&entry.kind, answer) {
                (_, Answer::Refused(why)) => self.fail(i, why),
                (Kind::Dir, Answer::Done) => self.report.dirs += 1,
                (Kind::Symlink { .. }, Answer::Done) => self.report.links += 1,
                (Kind::File { .. }, Answer::Send) => first.push((i, Action::Full)),
                (Kind::File { .. }, Answer::Landed) => first.push((i, Action::Check)),
                // Only a file we offered to resume (it has a source id), and within it.
                (
                    Kind::File {
                        size,
                        source_id: Some(_),
                        ..
                    },
                    Answer::Partial(offset, nonce),
                ) if offset <= *size => first.push((i, Action::Resume(offset, nonce))),
                (_, answer) => {
                    return Err(ProtocolError::Malformed(format!(
                        "answer {answer:?} to {}",
                        Escaped(&entry.path)
                    ))
                    .into())
                }
            }
        }
        let stream = self.stream;
        // From here on only the reader thread reads, and verdicts may be far apart (a large
        // file, a batch on a slow link): the wait for them is bounded where it matters, at the
        // end of each pass, while a stalled receiver shows as a write that times out.
        stream
            .set_read_timeout(None)
            .map_err(net("configuring the socket"))?;
        std::thread::scope(|s| {
            let (tx, reports) = mpsc::channel();
            // The only reader from here on: buffering saves a system call per field.
            let mut incoming = std::io::BufReader::new(stream);
            let ledger = self.ledger.clone();
            s.spawn(move || loop {
                let report = Report::read(&mut incoming).and_then(|r| {
                    ledger.heard();
                    match &r {
                        Report::File { index, status, .. } => ledger
                            .answer(*index, *status)
                            .map(|sent| (Some(r), Some(sent))),
                        // Kept here: a receiver sending keepalives faster than we take them
                        // would otherwise fill our memory.
                        Report::Keepalive => Ok((None, None)),
                        Report::EndOfPass => Ok((Some(r), None)),
                    }
                });
                let report = match report {
                    Ok((None, _)) => continue,
                    Ok((Some(r), sent)) => Ok((r, sent)),
                    Err(e) => Err(e),
                };
                let end = report.is_err();
                if tx.send(report).is_err() || end {
                    break;
                }
            });
            let result = match self.passes(first, &reports, progress) {
                Err(e) if ends_connection(&e) => Err(self.why_it_ended(e, &reports)),
                other => other,
            };
            // Ends the reader, whatever happened.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            result
        })
    }

    /// The first pass, and a second for the files the receiver asks to have whole.
    fn passes(
        &mut self,
        first: Vec<(usize, Action)>,
        reports: &mpsc::Receiver<Incoming>,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<(), SendError> {
        let resend = self.pass(&first, reports, progress)?;
        if resend.is_empty() || self.stopping() {
            return Ok(());
        }
        // Whole files only: the ledger refuses a second "send it whole" for them.
        let second: Vec<(usize, Action)> = resend.into_iter().map(|i| (i, Action::Full)).collect();
        self.pass(&second, reports, progress).map(drop)
    }

    /// Sends every action's frame back to back, then an end of pass, and reads verdicts until
    /// the receiver's end of pass. Returns the files to send again whole.
    fn pass(
        &mut self,
        actions: &[(usize, Action)],
        reports: &mpsc::Receiver<Incoming>,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<Vec<usize>, SendError> {
        let mut resend = Vec::new();
        for &(i, action) in actions {
            while let Ok(report) = reports.try_recv() {
                let (report, sent) = report?;
                self.apply(report, sent, &mut resend)?;
            }
            if self.stopping() {
                break;
            }
            self.send_one(i, action, progress)?;
            progress(Tick::File);
        }
        self.write(&Frame::EndOfPass.encode(), None, "ending a pass")?;
        // The wait starts now, however long the receiver was quiet while files arrived.
        self.ledger.heard();
        loop {
            // Anything the receiver says, keepalives included, is word that it is still there.
            let left = self.opts.timeout.saturating_sub(self.ledger.since_heard());
            let (report, sent) = match reports.recv_timeout(left) {
                Ok(report) => report?,
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(SendError::Network {
                        during: "waiting for the receiver's verdicts".into(),
                        error: std::io::ErrorKind::TimedOut.into(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ProtocolError::Truncated("verdicts").into())
                }
            };
            if report == Report::EndOfPass {
                let awaiting = self.ledger.awaiting();
                if awaiting > 0 {
                    return Err(ProtocolError::Malformed(format!(
                        "an end of pass with {awaiting} files still without their verdict"
                    ))
                    .into());
                }
                return Ok(resend);
            }
            self.apply(report, sent, &mut resend)?;
        }
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

    /// Whether to send no more files: `--fail-fast` and something failed.
    fn stopping(&self) -> bool {
        self.tree_opts.fail_fast && !self.report.failures.is_empty()
    }

    fn send_one(
        &mut self,
        i: usize,
        action: Action,
        progress: &mut dyn FnMut(Tick),
    ) -> Result<(), SendError> {
        let entry = &self.tree.manifest.entries[i];
        let path = &self.tree.paths[i];
        let source = match Source::listed(path, entry) {
            Ok(s) => s,
            Err(e) => {
                self.fail(i, e.to_string());
                return Ok(());
            }
        };
        let index = i as u32;
        let (frame, prefix, sent) = match action {
            Action::Check => {
                let digest = self.hash_alive(&source, source.size)?.digest();
                self.digests[i] = Some(digest);
                let check = Frame::Check(index, digest).encode();
                self.write(&check, Some((i, Sent::Check)), "sending a check")?;
                progress(Tick::Bytes(source.size));
                return Ok(());
            }
            Action::Full => (Frame::Full(index), Prefix::empty(), Sent::Full),
            Action::Resume(offset, nonce) => {
                let prefix = self.hash_alive(&source, offset)?;
                let proof = auth::prefix_proof(&nonce, offset, &prefix.digest());
                (Frame::Resume(index, offset, proof), prefix, Sent::Resume)
            }
        };
        self.ledger.sending(i, sent);
        self.write(&frame.encode(), None, "sending a file header")?;
        let resumed = prefix.len();
        progress(Tick::Bytes(resumed));
        let mut bytes = |n| progress(Tick::Bytes(n));
        match send_body(
            self.stream,
            &source,
            prefix,
            self.opts.verify,
            &mut self.scratch,
            &mut bytes,
        ) {
            Ok(digest) => {
                self.digests[i] = digest;
                self.resumed[i] = resumed;
                let trailer = Trailer::sealed(digest, &self.integrity, index);
                self.hold(i, trailer.encode(), sent)
            }
            // Its verdict says the receiver discarded it; the failure is counted then.
            Err(SendError::SourceChanged) => self.hold(i, Trailer::abandoned(), Sent::Abandoned),
            Err(e) => Err(e),
        }
    }

    /// Hashes the first `len` bytes of `source`. A large file takes a while, and the receiver
    /// is waiting for our next frame meanwhile: keepalive frames tell it we are still here.
    fn hash_alive(&self, source: &Source, len: u64) -> Result<Prefix, SendError> {
        let sparse = source.sparse_data.is_some();
        let source_err = |error| SendError::Source {
            path: source.path.clone(),
            error,
        };
        if len < KEEPALIVE_ABOVE {
            return Prefix::of_file(&source.file, len, sparse).map_err(source_err);
        }
        hash_prefix_telling(source, len, &mut || {
            self.write(
                &Frame::Keepalive.encode(),
                None,
                "keeping the connection up",
            )
        })
    }

    /// Takes in one report; a verdict comes with what it answers (the reader checked it
    /// against the ledger).
    fn apply(
        &mut self,
        report: Report,
        sent: Option<Sent>,
        resend: &mut Vec<usize>,
    ) -> Result<(), SendError> {
        let (index, status, sha256, seal, message) = match report {
            Report::File {
                index,
                status,
                sha256,
                seal,
                message,
            } => (index, status, sha256, seal, message),
            Report::Keepalive => return Ok(()),
            Report::EndOfPass => {
                return Err(ProtocolError::Malformed("an end of pass before ours".into()).into())
            }
        };
        let i = index as usize;
        let ours = self.digests[i];
        self.last_failed = (status == FileStatus::Failed)
            .then(|| (self.tree.manifest.entries[i].path.clone(), message.clone()));
        if let Some(d) = &sha256 {
            if !self
                .integrity
                .opens(Seal::Verdict, index, status as u8, d, &seal)
            {
                let why = SendError::Unsealed("the receiver's verdict".into());
                self.fail(i, why.to_string());
                return Ok(());
            }
        }
        let mismatch = || {
            let hex = |d: Option<[u8; 32]>| d.map(hex::encode).unwrap_or_else(|| "nothing".into());
            format!(
                "checksum mismatch: sent {}, receiver has {}",
                hex(ours),
                hex(sha256)
            )
        };
        match status {
            FileStatus::Landed | FileStatus::Unchanged if self.opts.verify => match sha256 {
                None => {
                    return Err(ProtocolError::Malformed(format!(
                        "a verdict without a digest for {} on a verified transfer",
                        Escaped(&self.tree.manifest.entries[i].path)
                    ))
                    .into())
                }
                Some(_) if sha256 != ours => self.fail(i, mismatch()),
                Some(_) => self.count(i, status),
            },
            FileStatus::Landed | FileStatus::Unchanged => self.count(i, status),
            FileStatus::Mismatch => self.fail(i, mismatch()),
            FileStatus::Failed | FileStatus::Refused if sent == Some(Sent::Abandoned) => {
                self.fail(i, SendError::SourceChanged.to_string())
            }
            FileStatus::Failed | FileStatus::Refused => self.fail(i, message),
            FileStatus::Resend => {
                self.resumed[i] = 0;
                resend.push(i);
            }
        }
        Ok(())
    }

    /// Counts a file that landed, or was already there.
    fn count(&mut self, i: usize, status: FileStatus) {
        match status {
            FileStatus::Unchanged => self.report.unchanged += 1,
            _ => {
                self.report.landed += 1;
                self.report.resumed_from += self.resumed[i];
            }
        }
    }

    fn fail(&mut self, i: usize, why: String) {
        let path = self.tree.manifest.entries[i].path.clone();
        log::warn!("{}: {why}", Escaped(&path));
        self.report.failures.push((path, why));
    }

    /// Sends `bytes`, after the trailer held back if there is one. `completes` names an entry
    /// whose last byte this is (a check), which then awaits its verdict.
    fn write(
        &self,
        bytes: &[u8],
        completes: Option<(usize, Sent)>,
        during: &'static str,
    ) -> Result<(), SendError> {
        let mut stream = self.stream;
        // An entry awaits its verdict before its last byte leaves, so that the reader never
        // sees a verdict before the entry is in the ledger.
        let held = self.held.take();
        for (i, sent) in held.iter().map(|(i, _, sent)| (*i, *sent)).chain(completes) {
            self.ledger.expect(i, sent);
        }
        match held {
            Some((_, trailer, _)) => stream.write_all(&[&trailer[..], bytes].concat()),
            None => stream.write_all(bytes),
        }
        .map_err(net(during))
    }

    /// Holds entry `i`'s trailer back until the next frame: a frame always follows one.
    fn hold(&self, i: usize, trailer: [u8; TRAILER_LEN], sent: Sent) -> Result<(), SendError> {
        if self.held.get().is_some() {
            self.write(&[], None, "sending a trailer")?;
        }
        self.held.set(Some((i, trailer, sent)));
        Ok(())
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
