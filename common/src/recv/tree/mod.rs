//! Receiving a tree (`FLAG_TREE`): check the manifest, make its directories and links, answer
//! for every entry at once, then take the files as their frames come, without a round trip
//! per file. Small files land in batches made durable together, on a thread of their own
//! (`batch.rs`); large ones land on their own, as single files do. The answer phase is in
//! `answer.rs` (what is here looked at ahead of it in `prestat.rs`), the receive phase in
//! `receive.rs`, the temporary files made ahead in `ahead.rs`,
//! the hard links in `hardlinks.rs`, a new tree built under a hidden name and published whole in
//! `stage.rs`, the session's syncs in `sync.rs`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self};
use std::sync::Arc;
use std::thread::Scope;

use rustix::fs::OFlags;

use super::handshake::linger;
use super::partial::{self, open_beneath, TempFile};
use super::{Receiver, TransferRecord, PIPE_SIZE};
use crate::auth::{Hashing, Integrity, Seal};
use crate::error::RecvError;
use crate::hash::Watermark;
use crate::links::LinkJudge;
use crate::meta::{Ids, Rights};
use crate::name::text_key;
use crate::roots::{Identity, Roots};
use crate::sys::Pipe;
use crate::watch::Patience;
use crate::wire::read_message_seal;
use crate::wire::ProtocolError;
use crate::wire::{Answer, Answers, Control, Entry, Frame, Kind, Manifest, FRAME_HEAD_LEN};
use crate::wire::{Header, FLAG_NO_VERIFY, KEPT_MODE};
use ahead::{Ahead, ToMake};
use batch::{Lander, Outbox};
use prestat::Prestat;

mod ahead;
mod answer;
mod batch;
mod hardlinks;
mod prestat;
mod receive;
mod stage;
mod sync;

/// A batch of small files lands once it holds [`Receiver::batch_files`] files or this many
/// bytes.
const BATCH_BYTES: u64 = 64 << 20;
/// Temporary files made ahead of their frames, at most.
const AHEAD: usize = 64;
/// A check this long after the answers (or after a payload) looks at the copy again before it
/// takes the root remembered for it.
const RESTAT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Files at least this large land on their own as soon as they are verified.
const LAND_ALONE: u64 = 64 << 20;

/// What happened to a tree's entries, for the log line and `--json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeCounts {
    /// Regular files in the manifest.
    pub files: usize,
    /// Files written, verified and published.
    pub landed: usize,
    /// Files already here with the sender's digest (or, with `zsend --quick-check`, its size
    /// and mtime).
    pub unchanged: usize,
    /// Of those, the ones taken on size and mtime alone (`zsend --quick-check`): not verified.
    pub quick: usize,
    /// Of those, the ones compared with the root remembered for them, unchanged here since it
    /// was taken (see `--rehash`): verified, without reading them again.
    pub remembered: usize,
    /// Files refused or failed.
    pub failed: usize,
    /// Directories made or found.
    pub dirs: usize,
    /// Symbolic links made.
    pub links: usize,
    /// Hard links made (or found), second names of a file sent once.
    pub hard_links: usize,
    /// Fifos, sockets and device files made (or found).
    pub specials: usize,
    /// Entries landed without some of the owner, setuid or setgid bits or privileged
    /// attributes they were sent with (see `--preserve-privileged`).
    pub unkept: usize,
}

/// A background check's result: the entry, the sender's digest, ours (with the identity of
/// the file it is the root of, when it can be remembered).
type Checked = (u32, [u8; 32], io::Result<([u8; 32], Option<Identity>)>);

/// Checks of large files, each hashing on its own thread and sending its [`Checked`] back: at
/// most [`MAX_CHECKS`] at once (each hashes on every core), the others waiting their turn, so
/// that a sender's thousands of checks are not as many threads, while the frames after them
/// are still read.
struct Checks {
    done: mpsc::Sender<Checked>,
    results: mpsc::Receiver<Checked>,
    /// How many are hashing, or waiting to.
    running: usize,
    /// Those waiting for one of the others to end.
    waiting: std::collections::VecDeque<Box<dyn FnOnce() -> Checked + Send>>,
    /// Aborted when the session ends, so that no check outlives the connection it was for.
    stop: Arc<Watermark>,
}

/// Checks of large files hashing at once, per session.
const MAX_CHECKS: usize = 2;

impl Checks {
    fn new() -> Checks {
        let (done, results) = mpsc::channel();
        Checks {
            done,
            results,
            running: 0,
            waiting: std::collections::VecDeque::new(),
            stop: Arc::new(Watermark::complete(u64::MAX)),
        }
    }

    /// Runs `check` on a thread of its own, or once fewer than [`MAX_CHECKS`] are hashing.
    fn start(&mut self, check: Box<dyn FnOnce() -> Checked + Send>) {
        self.running += 1;
        self.waiting.push_back(check);
        self.next();
    }

    /// One ended (its result was taken): the next waiting one may start.
    fn ended(&mut self) {
        self.running -= 1;
        self.next();
    }

    fn next(&mut self) {
        while self.running - self.waiting.len() < MAX_CHECKS {
            let Some(check) = self.waiting.pop_front() else {
                return;
            };
            let done = self.done.clone();
            std::thread::spawn(move || {
                let _ = done.send(check());
            });
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        self.stop.abort();
    }
}

/// A partial taken for resuming: the file, the bytes it holds, and the nonce keying the
/// sender's proof of them.
type Kept = (TempFile<Arc<OwnedFd>>, u64, [u8; 32]);

/// One tree transfer on the receiving side.
struct Session<'r, 'scope> {
    rx: &'r Receiver,
    scope: &'scope Scope<'scope, 'r>,
    stream: &'r TcpStream,
    /// Reads frames and trailers from `stream`.
    control: Control<&'r TcpStream>,
    manifest: &'r Manifest,
    verify: bool,
    answers: Vec<Answer>,
    /// Partial files taken for entries answered `Partial`, with the bytes they hold and the
    /// nonce that keys the sender's proof of them.
    partials: HashMap<u32, Kept>,
    /// Seals the digests of trailers and verdicts.
    integrity: &'r Integrity,
    /// Judges each link by where it leads among the entries made before it.
    links: LinkJudge,
    /// Entries whose content arrived (landed, or lost to a mismatch).
    settled: Vec<bool>,
    /// Directories this session made: their mode and mtime are set at the end of each pass.
    made_dirs: Vec<usize>,
    /// Their paths: nothing was in them before this transfer.
    fresh_dirs: HashSet<Vec<u8>>,
    /// Verdicts not sent yet.
    outbox: &'r Outbox<'r>,
    /// The session's syncs.
    syncs: &'r sync::Syncs,
    /// Lands small files in batches.
    lander: Lander<'scope>,
    /// Makes the first pass's temporary files ahead of their frames.
    ahead: Option<Ahead<'scope>>,
    /// Looks at what is here for each entry ahead of the answers.
    prestat: Option<Prestat>,
    /// The roots remembered of the files here, and those learnt.
    roots: &'r Roots,
    /// The files here that a check may be answered for, with their identities when answered:
    /// their remembered roots are looked up at the first check.
    wanted: Vec<(u32, Identity)>,
    /// Files still to arrive in this pass, and files asked for again in the next.
    left: usize,
    resends: usize,
    /// New trees (their top-level paths) with a file asked for again in this pass: they stay
    /// hidden, their verdicts held, until the pass that brings those files has ended.
    unfinished: HashSet<Vec<u8>>,
    /// Checks of large files hashing on their own threads.
    checks: Checks,
    dirs: DirCache,
    pipe: Pipe,
    counts: TreeCounts,
    /// What this sender may set: owners and other privileged metadata, or not.
    rights: Rights,
    /// Local ids of the sender's user and group names.
    ids: Ids,
    /// Make links as sent, without judging where they lead (a sender with the token, or
    /// `--trust-links`).
    trust_links: bool,
    /// Hard links framed in this pass, made once their first names have landed.
    links_due: Vec<u32>,
    /// New top-level directories being built under a hidden name: their entries and those
    /// names.
    staged: Vec<(usize, String)>,
    /// Files the lander counted as landed whose tree could not be published.
    unpublished: usize,
    /// Handles on the hidden directories this transfer builds, locked for as long as it runs.
    stage_locks: Vec<OwnedFd>,
    /// Files here whose mode, mtime, owner or attributes differ from the sender's: set once
    /// their content is found the same (with `--force`), on the very file answered (its
    /// device and inode), while it still has no other name.
    refresh: HashMap<u32, (u64, u64)>,
    /// Files here that may have holes (fewer blocks than bytes when answered).
    holey: HashSet<u32>,
    /// For each entry, how many frames without a payload come from it on in the first pass
    /// before one with a payload (checks, quick checks, hard links): how far a look into the
    /// socket may go without seeing a payload byte.
    quiet: Vec<u32>,
    /// The entry of the latest frame, and whether the first pass is over.
    latest: Option<u32>,
    first_pass: bool,
    /// When the answers' stats were taken, and whether a payload has come since: a check
    /// after either looks at the copy again before it takes a remembered root.
    answered: std::time::Instant,
    payload_since: bool,
}

impl Receiver {
    /// Serves a tree transfer whose hello was just accepted; counts go into `record`.
    pub(super) fn receive_tree(
        &self,
        stream: &TcpStream,
        header: &Header,
        integrity: &Integrity,
        record: &mut TransferRecord,
    ) -> Result<(), RecvError> {
        // Nothing follows the manifest (and its seal) until we answer, so it can be read
        // through a buffer.
        let mut buffered = std::io::BufReader::new(stream);
        let mut hashing = Hashing::new(&mut buffered);
        let read = Manifest::read(&mut hashing);
        let digest = hashing.digest();
        let read = read.and_then(|m| {
            // With a token, the paths, kinds, modes, owners and link targets we make are the
            // sender's: the seals of the files' digests say nothing of them.
            if integrity.keyed() {
                let seal_of = "the manifest's seal";
                read_message_seal(&mut buffered, integrity, Seal::Manifest, &digest, seal_of)?;
            }
            Ok(m)
        });
        let manifest = match read {
            Ok(m) => m,
            Err(e) => {
                if !matches!(e, ProtocolError::Truncated(_) | ProtocolError::Io(..)) {
                    let refusal = Answers::Refused(e.refuse_code(), e.to_string()).encode();
                    if (&*stream).write_all(&refusal).is_ok() {
                        // As for a refused hello: let the refusal arrive before the close.
                        linger(stream);
                    }
                }
                return Err(e.into());
            }
        };
        let pipe = Pipe::new(PIPE_SIZE).map_err(|e| self.local("creating a pipe", e))?;
        let root = (self.transfer_dir().map(Arc::new))
            .map_err(|e| self.local("opening the directory", e))?;
        let count = manifest.entries.len();
        let firsts = manifest.entries.iter().filter_map(|e| match e.kind {
            Kind::HardLink { first } => Some(first),
            _ => None,
        });
        let outbox = Outbox::new(stream, integrity, firsts.collect());
        let syncs = sync::Syncs::new(root.clone());
        let files = manifest.entries.iter().map(|e| match e.kind {
            Kind::File { .. } => Some(&e.path[..]),
            _ => None,
        });
        // zrecv's file of roots for a tree is hidden beside it, named after it.
        let roots = Roots::new(files, |top| partial::hidden_name(&text_key(top), "roots"));
        let batch_files = self.batch_files;
        std::thread::scope(|scope| {
            let mut session = Session {
                rx: self,
                scope,
                stream,
                control: Control::new(stream),
                verify: header.verify(),
                answers: Vec::with_capacity(count),
                partials: HashMap::new(),
                integrity,
                links: LinkJudge::new(),
                settled: vec![false; count],
                made_dirs: Vec::new(),
                fresh_dirs: HashSet::new(),
                outbox: &outbox,
                lander: Lander::start(
                    scope,
                    self,
                    (&outbox, &roots, &syncs),
                    (batch_files, BATCH_BYTES),
                ),
                syncs: &syncs,
                roots: &roots,
                wanted: Vec::new(),
                ahead: None,
                left: 0,
                resends: 0,
                unfinished: HashSet::new(),
                checks: Checks::new(),
                dirs: DirCache::new(root),
                pipe,
                rights: Rights::of(integrity.keyed(), self.config.preserve_privileged),
                ids: Ids::default(),
                trust_links: integrity.keyed() || self.config.trust_links,
                links_due: Vec::new(),
                staged: Vec::new(),
                unpublished: 0,
                stage_locks: Vec::new(),
                refresh: HashMap::new(),
                holey: HashSet::new(),
                quiet: Vec::new(),
                latest: None,
                first_pass: true,
                answered: std::time::Instant::now(),
                payload_since: false,
                counts: TreeCounts {
                    files: manifest
                        .entries
                        .iter()
                        .filter(|e| matches!(e.kind, Kind::File { .. }))
                        .count(),
                    ..TreeCounts::default()
                },
                manifest: &manifest,
                prestat: None,
            };
            let result = session.run(record);
            session.stop_ahead();
            // What was verified before anything went wrong still lands.
            let tally = session.lander.finish();
            let posted = session.post();
            if let (Err(RecvError::Local { .. }), Ok(())) = (&result, posted) {
                // The failure is the sender's last verdict: let it arrive.
                linger(stream);
            }
            session.counts.landed =
                (session.counts.landed + tally.landed).saturating_sub(session.unpublished);
            session.counts.failed += tally.failed;
            // What is remembered and still holds stays, even when no check looked it up.
            if roots.changed() && !self.config.rehash && !session.wanted.is_empty() {
                roots.load(&self.dir, &std::mem::take(&mut session.wanted));
            }
            roots.save(&self.dir);
            record.tree = Some(session.counts.clone());
            // Every file counted as landed or unchanged was compared with the sender's digest,
            // unless the sender took some on size and mtime.
            record.verified = result.is_ok() && header.verify() && session.counts.quick == 0;
            result
        })
    }
}

impl Session<'_, '_> {
    fn run(&mut self, record: &mut TransferRecord) -> Result<(), RecvError> {
        self.answer_all()?;
        let files = self
            .manifest
            .entries
            .iter()
            .zip(&self.answers)
            .enumerate()
            .filter(|(_, (e, a))| **a == Answer::Send && matches!(e.kind, Kind::File { .. }))
            .map(|(i, (e, _))| {
                let parent = e.parent().map(|p| self.dirs.on_disk(p).into_owned());
                // In a directory made for a new tree, under its final name (if it is text: a
                // temporary file's name is).
                let direct = e
                    .parent()
                    .filter(|p| self.fresh_dirs.contains(*p) && self.in_stage(p))
                    .and_then(|_| String::from_utf8(e.base().to_vec()).ok());
                // Made with its mode, when that is plain permissions we can read and write:
                // one chmod less per file.
                let mode = Some(e.mode & KEPT_MODE).filter(|m| m & 0o7600 == 0o600);
                ToMake {
                    index: i as u32,
                    parent,
                    direct: direct.map(|name| (name, mode)),
                }
            })
            .collect();
        self.quiet = self.quiet_runs();
        let depth = AHEAD.min(self.rx.batch_files);
        self.ahead = Some(Ahead::start(self.scope, self.dirs.root(), files, depth));
        // The tree is whole only once a pass has ended with nothing asked for again: a sender
        // that closes anywhere else (or a receiver being stopped) interrupts it.
        let mut clean = false;
        // Keepalives between frames, while the sender hashes a file for its next frame: for as
        // long as hashing the largest could take, of those it may frame (a refused entry of
        // 2^62 bytes bought a sender a slot for millennia).
        let largest = (self.manifest.entries.iter().zip(&self.answers))
            .filter(|(_, a)| !matches!(a, Answer::Done | Answer::Refused(_)))
            .map(|(e, _)| match e.kind {
                Kind::File {
                    size,
                    sparse_data_len,
                    ..
                } => sparse_data_len.unwrap_or(size),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let mut between = Patience::for_bytes(self.rx.config.timeout, largest);
        loop {
            self.report_checks(false)?;
            // Verdicts go out before we may wait, not between frames already read.
            if self.control.held() <= FRAME_HEAD_LEN {
                self.post()?;
            }
            self.control.expect(FRAME_HEAD_LEN);
            self.gather()?;
            let frame = Frame::read(&mut self.control)?;
            if let Some(Frame::Full(i) | Frame::Check(i, _) | Frame::Quick(i) | Frame::Link(i)) =
                frame
            {
                self.latest = Some(i);
            }
            match &frame {
                Some(Frame::Keepalive) if !between.still() => {
                    return Err(RecvError::Protocol(ProtocolError::Malformed(
                        "keepalives between frames for longer than hashing could take".into(),
                    )))
                }
                Some(Frame::Keepalive) => {}
                _ => between.reset(),
            }
            match frame {
                None if clean => return Ok(()),
                // The last pass is over: the sender only closes now.
                Some(_) if clean => {
                    return Err(RecvError::Protocol(ProtocolError::Malformed(
                        "a frame after the last pass".into(),
                    )))
                }
                None => {
                    return Err(RecvError::Protocol(ProtocolError::Truncated(
                        "tree: the sender closed before its last end of pass",
                    )))
                }
                Some(Frame::EndOfPass) => {
                    self.first_pass = false;
                    self.end_pass()?;
                    clean = self.left == 0;
                }
                Some(Frame::Keepalive) => {}
                Some(Frame::Full(i)) => {
                    clean = false;
                    self.full(i, record)?
                }
                Some(Frame::Check(i, digest)) => {
                    clean = false;
                    self.check(i, digest)?
                }
                Some(Frame::Quick(i)) => {
                    clean = false;
                    self.quick(i)?
                }
                Some(Frame::Resume(i, offset)) => {
                    clean = false;
                    self.resume(i, offset, record)?
                }
                Some(Frame::Link(i)) => {
                    clean = false;
                    self.link_frame(i)?
                }
            }
        }
    }
}

impl Session<'_, '_> {
    /// How many frames without a payload each entry begins (see `quiet`), from the answers.
    fn quiet_runs(&self) -> Vec<u32> {
        let mut runs = vec![0u32; self.answers.len() + 1];
        for (j, (e, a)) in self
            .manifest
            .entries
            .iter()
            .zip(&self.answers)
            .enumerate()
            .rev()
        {
            let next = runs[j + 1];
            runs[j] = match (&e.kind, a) {
                (Kind::File { .. }, Answer::Landed | Answer::SameSize) => next.saturating_add(1),
                (Kind::HardLink { .. }, Answer::Send) => next.saturating_add(1),
                (Kind::File { .. }, Answer::Send | Answer::Partial(..)) => 0,
                // No frame at all.
                _ => next,
            };
        }
        runs
    }

    /// Takes at once the frames without a payload already in the socket, when the next ones
    /// are such frames: at most as many bytes as the shortest of them would take, so that no
    /// payload byte is ever looked at.
    fn gather(&mut self) -> Result<(), RecvError> {
        if !self.first_pass {
            return Ok(());
        }
        let next = self.latest.map_or(0, |i| i as usize + 1);
        let run = self.quiet.get(next).copied().unwrap_or(0) as usize;
        if run < 2 {
            return Ok(());
        }
        let most = (run * FRAME_HEAD_LEN).min(64 << 10);
        let stream = self.stream;
        self.control
            .gather(|buf| {
                let n = most.min(buf.len());
                stream.peek(&mut buf[..n])
            })
            .map_err(|e| RecvError::Protocol(ProtocolError::Io("frame", e)))
    }
}

impl Drop for Session<'_, '_> {
    /// Partials taken for resuming but not used go back to being kept.
    fn drop(&mut self) {
        for (i, (temp, held, _)) in self.partials.drain() {
            let header = header_of(&self.manifest.entries[i as usize], self.verify);
            partial::keep(temp, &header, held);
        }
    }
}

/// The single-file header of a tree's file entry: the machinery of single files (payload,
/// sparse records, partials) works from it. Its name is the whole relative path.
fn header_of(e: &Entry, verify: bool) -> Header {
    let (size, sparse_data_len, source_id) = match e.kind {
        Kind::File {
            size,
            sparse_data_len,
            source_id,
        } => (size, sparse_data_len, source_id),
        _ => (0, None, None),
    };
    Header {
        name: crate::name::text_key(&e.path),
        size,
        mode: e.mode,
        mtime_sec: e.mtime.0,
        mtime_nsec: e.mtime.1,
        flags: if verify { 0 } else { FLAG_NO_VERIFY },
        source_id: source_id.filter(|_| verify),
        auth_nonce: None,
        sparse_data_len,
        chain: None,
    }
}

/// Handles on the tree's directories, opened beneath the receive directory without following
/// any symlink; the last one is kept, since a walk sends a directory's files together.
///
/// A new top-level directory is built under a hidden name (`stage.rs`): its paths are opened
/// there until it is published.
pub(super) struct DirCache {
    root: Arc<OwnedFd>,
    last: Option<(Vec<u8>, Arc<OwnedFd>)>,
    /// Top-level directories being built under a hidden name, and that name.
    stages: HashMap<Vec<u8>, String>,
}

impl DirCache {
    pub(super) fn new(root: Arc<OwnedFd>) -> DirCache {
        DirCache {
            root,
            last: None,
            stages: HashMap::new(),
        }
    }

    pub(super) fn root(&self) -> Arc<OwnedFd> {
        self.root.clone()
    }

    /// The top-level directory `top` is built as `hidden` from now on.
    pub(super) fn stage(&mut self, top: Vec<u8>, hidden: String) {
        self.stages.insert(top, hidden);
        self.last = None;
    }

    /// The staged directories whose top-level paths `done` picks were published (or given
    /// up): their paths are their own again.
    pub(super) fn unstage(&mut self, done: impl Fn(&[u8]) -> bool) {
        self.stages.retain(|top, _| !done(top));
        self.last = None;
    }

    /// Whether `path` lies in a directory being built under a hidden name.
    pub(super) fn staged(&self, path: &[u8]) -> bool {
        !self.stages.is_empty() && self.stages.contains_key(top_of(path))
    }

    /// Where `path` is on disk: under the hidden name of its top-level directory while that
    /// is being built.
    pub(super) fn on_disk<'p>(&self, path: &'p [u8]) -> Cow<'p, [u8]> {
        let top = top_of(path);
        match self.stages.get(top) {
            Some(hidden) => {
                let mut p = hidden.as_bytes().to_vec();
                p.extend_from_slice(&path[top.len()..]);
                Cow::Owned(p)
            }
            None => Cow::Borrowed(path),
        }
    }

    pub(super) fn get(&mut self, path: Option<&[u8]>) -> io::Result<Arc<OwnedFd>> {
        let Some(path) = path else {
            return Ok(self.root.clone());
        };
        if let Some((p, fd)) = &self.last {
            if p == path {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(open_beneath(
            &self.root,
            self.on_disk(path),
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?);
        self.last = Some((path.to_owned(), fd.clone()));
        Ok(fd)
    }
}

/// The first component of a path.
pub(super) fn top_of(path: &[u8]) -> &[u8] {
    match path.iter().position(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// However many checks a sender asks for, at most `MAX_CHECKS` hash at once (each was a
    /// thread of its own: thousands of checks, thousands of threads); every one ends.
    #[test]
    fn checks_run_a_few_at_a_time_and_all_end() {
        let mut checks = Checks::new();
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for i in 0..40u32 {
            let (now, most) = (now.clone(), most.clone());
            checks.start(Box::new(move || {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(2));
                now.fetch_sub(1, Ordering::SeqCst);
                (i, [0; 32], Err(io::Error::other("a test")))
            }));
        }
        let mut seen = Vec::new();
        while checks.running > 0 {
            let (i, _, _) = checks.results.recv().unwrap();
            checks.ended();
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((1..=MAX_CHECKS).contains(&most), "{most} at once");
    }
}
