//! Receiving a tree (`FLAG_TREE`): check the manifest, make its directories and links, answer
//! for every entry at once, then take the files as their frames come, without a round trip
//! per file. Small files land in batches made durable together, on a thread of their own
//! (`land.rs`); large ones land on their own, as single files do.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::Scope;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::ahead::Ahead;
use super::land::{Lander, Outbox, Pending};
use super::{linger, prepare, tell, timestamps, Receiver, Route, TransferRecord, PIPE_SIZE};
use crate::auth::{self, Integrity};
use crate::error::RecvError;
use crate::hash::{Prefix, Start, Watermark};
use crate::links::LinkJudge;
use crate::name::{Escaped, TEMP_PREFIX};
use crate::partial::{self, open_beneath, TempFile};
use crate::sys::Pipe;
use crate::units::{os_reason, Bytes};
use crate::watch::KEEPALIVE_EVERY;
use crate::wire::ProtocolError;
use crate::wire::{
    Answer, Answers, Control, Entry, FileStatus, Frame, Kind, Manifest, Report, FRAME_HEAD_LEN,
};
use crate::wire::{Header, RefuseCode, Trailer, FLAG_NO_VERIFY, TRAILER_LEN};

/// A batch of small files lands once it holds [`Receiver::batch_files`] files or this many
/// bytes.
const BATCH_BYTES: u64 = 64 << 20;
/// Temporary files made ahead of their frames, at most.
const AHEAD: usize = 64;
/// Files at least this large land on their own as soon as they are verified.
const LAND_ALONE: u64 = 64 << 20;

/// What happened to a tree's entries, for the log line and `--json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeCounts {
    /// Regular files in the manifest.
    pub files: usize,
    /// Files written, verified and published.
    pub landed: usize,
    /// Files already here with the sender's digest.
    pub unchanged: usize,
    /// Files refused or failed.
    pub failed: usize,
    /// Directories made or found.
    pub dirs: usize,
    /// Symbolic links made.
    pub links: usize,
}

/// A background check's result: the entry, the sender's digest, ours.
type Checked = (u32, [u8; 32], io::Result<[u8; 32]>);

/// Checks of large files, each hashing on its own thread and sending its [`Checked`] back.
struct Checks {
    done: mpsc::Sender<Checked>,
    results: mpsc::Receiver<Checked>,
    /// How many are still hashing.
    running: usize,
    /// Aborted when the session ends, so that no check outlives the connection it was for.
    stop: Arc<Watermark>,
}

impl Checks {
    fn new() -> Checks {
        let (done, results) = mpsc::channel();
        Checks {
            done,
            results,
            running: 0,
            stop: Arc::new(Watermark::complete(u64::MAX)),
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
    manifest: Manifest,
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
    fresh_dirs: HashSet<String>,
    /// Verdicts not sent yet.
    outbox: &'r Outbox<'r>,
    /// Lands small files in batches.
    lander: Lander<'scope>,
    /// Makes the first pass's temporary files ahead of their frames.
    ahead: Option<Ahead<'scope>>,
    /// Files still to arrive in this pass, and files asked for again in the next.
    left: usize,
    resends: usize,
    /// Checks of large files hashing on their own threads.
    checks: Checks,
    dirs: DirCache,
    pipe: Pipe,
    counts: TreeCounts,
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
        // Nothing follows the manifest until we answer, so it can be read through a buffer.
        let manifest = match Manifest::read(&mut std::io::BufReader::new(stream)) {
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
        let root = self
            .dir
            .try_clone()
            .map_err(|e| self.local("opening the directory", e))?;
        let count = manifest.entries.len();
        let outbox = Outbox::new(stream, integrity);
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
                lander: Lander::start(scope, self, &outbox, batch_files, BATCH_BYTES),
                ahead: None,
                left: 0,
                resends: 0,
                checks: Checks::new(),
                dirs: DirCache::new(Arc::new(root)),
                pipe,
                counts: TreeCounts {
                    files: manifest
                        .entries
                        .iter()
                        .filter(|e| matches!(e.kind, Kind::File { .. }))
                        .count(),
                    ..TreeCounts::default()
                },
                manifest,
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
            session.counts.landed += tally.landed;
            session.counts.failed += tally.failed;
            record.tree = Some(session.counts.clone());
            // Every file counted as landed or unchanged was compared with the sender's digest.
            record.verified = result.is_ok() && header.verify();
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
            .filter(|(_, (_, a))| **a == Answer::Send)
            .map(|(i, (e, _))| (i as u32, e.parent().map(str::to_owned)))
            .collect();
        let depth = AHEAD.min(self.rx.batch_files);
        self.ahead = Some(Ahead::start(self.scope, self.dirs.root(), files, depth));
        // The tree is whole only once a pass has ended with nothing asked for again: a sender
        // that closes anywhere else (or a receiver being stopped) interrupts it.
        let mut clean = false;
        loop {
            self.report_checks(false)?;
            self.post()?;
            self.control.expect(FRAME_HEAD_LEN);
            match Frame::read(&mut self.control)? {
                None if clean => return Ok(()),
                None => {
                    return Err(RecvError::Protocol(ProtocolError::Truncated(
                        "tree: the sender closed before its last end of pass",
                    )))
                }
                Some(Frame::EndOfPass) => {
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
                Some(Frame::Resume(i, offset, digest)) => {
                    clean = false;
                    self.resume(i, offset, digest, record)?
                }
            }
        }
    }

    /// Makes directories and links, finds files already here and partials to resume, checks
    /// free space, and sends one answer per entry.
    fn answer_all(&mut self) -> Result<(), RecvError> {
        // Checked: a manifest's sizes are the peer's numbers, and their sum must not wrap.
        let mut need = Some(0u64);
        for i in 0..self.manifest.entries.len() {
            let answer = self.answer(i);
            let e = &self.manifest.entries[i];
            if let Kind::File {
                size,
                sparse_data_len,
                ..
            } = e.kind
            {
                match answer {
                    Answer::Send => {
                        need = need.and_then(|n| n.checked_add(sparse_data_len.unwrap_or(size)));
                        self.left += 1;
                    }
                    Answer::Partial(held, _) => {
                        need = need.and_then(|n| n.checked_add(size.saturating_sub(held)));
                        self.left += 1;
                    }
                    Answer::Refused(_) => self.counts.failed += 1,
                    _ => {}
                }
            }
            self.answers.push(answer);
        }
        if let Ok(vfs) = rustix::fs::fstatvfs(&self.rx.dir) {
            let have = vfs.f_bavail.saturating_mul(vfs.f_frsize);
            if need.is_none_or(|need| need > have) {
                let need = match need {
                    Some(n) => Bytes(n).to_string(),
                    None => "more than 16 EiB".into(),
                };
                let msg = format!(
                    "not enough space on {}: need {need}, have {}",
                    self.rx.config.dir.display(),
                    Bytes(have)
                );
                let refusal = Answers::Refused(RefuseCode::NoSpace, msg.clone());
                if (&*self.stream).write_all(&refusal.encode()).is_ok() {
                    linger(self.stream);
                }
                return Err(RecvError::Refused(msg));
            }
        }
        let answers = Answers::Each(self.answers.clone()).encode();
        tell(self.stream, &answers, "answering the manifest", 0, 0)
    }

    /// Answers entry `i`, and tells the link judge what became of it.
    fn answer(&mut self, i: usize) -> Answer {
        let answer = self.settle(i);
        let e = &self.manifest.entries[i];
        match (&e.kind, &answer) {
            (Kind::Dir, a) => self.links.dir(&e.path, *a == Answer::Done),
            // A link made was accepted with where it leads.
            (Kind::Symlink { .. }, Answer::Done) => {}
            _ => self.links.other(&e.path),
        }
        answer
    }

    /// Makes a directory or link, or finds what is there for a file.
    fn settle(&mut self, i: usize) -> Answer {
        let e = &self.manifest.entries[i];
        // A directory this transfer made holds nothing yet: no file or partial to look for.
        // (Should something appear there meanwhile, the rename refuses to replace it.)
        let fresh = e.parent().is_some_and(|p| self.fresh_dirs.contains(p));
        if fresh && matches!(e.kind, Kind::File { .. }) {
            return Answer::Send;
        }
        let parent = match self.dirs.get(e.parent()) {
            Ok(d) => d,
            Err(err) => {
                return Answer::Refused(format!("opening its directory: {}", os_reason(&err)))
            }
        };
        let base = e.base();
        let existing = match fresh {
            true => None,
            false => match rustix::fs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(Errno::NOENT) => None,
                Err(err) => return Answer::Refused(format!("checking what is there: {err}")),
            },
        };
        let existing_type = existing.map(|st| FileType::from_raw_mode(st.st_mode));
        let force = self.rx.config.force;
        let taken = || Answer::Refused("exists (use --force on the receiver)".into());
        match &e.kind {
            Kind::Dir => match existing_type {
                None => match rustix::fs::mkdirat(&parent, base, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {
                        self.made_dirs.push(i);
                        self.fresh_dirs.insert(e.path.clone());
                        self.counts.dirs += 1;
                        Answer::Done
                    }
                    Err(err) => Answer::Refused(format!("making the directory: {err}")),
                },
                Some(FileType::Directory) => {
                    self.counts.dirs += 1;
                    Answer::Done
                }
                Some(_) => Answer::Refused("exists and is not a directory".into()),
            },
            Kind::Symlink { target } => {
                // Where it leads, among what this transfer made before it: never out of its
                // tree, whatever chain of links the sender builds.
                let resolution = match self.links.judge(&e.path, target) {
                    Ok(r) => r,
                    Err(err) => return Answer::Refused(format!("the link {err}")),
                };
                let made = match existing_type {
                    Some(FileType::Directory) => Answer::Refused("is a directory".into()),
                    Some(FileType::Symlink)
                        if rustix::fs::readlinkat(&parent, base, Vec::new())
                            .is_ok_and(|t| t.as_bytes() == target.as_bytes()) =>
                    {
                        Answer::Done
                    }
                    Some(_) if !force => taken(),
                    _ => match self.make_link(&parent, e, target) {
                        Ok(()) => Answer::Done,
                        Err(err) => Answer::Refused(err.to_string()),
                    },
                };
                if made == Answer::Done {
                    self.counts.links += 1;
                    self.links.accept(&e.path, resolution);
                }
                made
            }
            Kind::File { size, .. } => match existing {
                Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                    Answer::Refused("is a directory".into())
                }
                Some(st)
                    if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                        && st.st_size as u64 == *size
                        && (st.st_mtime, st.st_mtime_nsec as u32) == e.mtime =>
                {
                    Answer::Landed
                }
                Some(_) if !force => taken(),
                _ => {
                    let header = header_of(e, self.verify);
                    if !header.resumable() {
                        // Sent without verification, it cannot resume: what was kept for its
                        // name is of no use any more (batched files do not forget it later).
                        partial::forget(&parent, &header.name);
                    }
                    match partial::take(parent, &header) {
                        Some((temp, held)) => match auth::nonce() {
                            Ok(nonce) => {
                                self.partials.insert(i as u32, (temp, held, nonce));
                                Answer::Partial(held, nonce)
                            }
                            Err(err) => {
                                log::warn!("drawing a nonce: {err}");
                                partial::keep(temp, &header, held);
                                Answer::Send
                            }
                        },
                        None => Answer::Send,
                    }
                }
            },
        }
    }

    /// Creates the link under a hidden name, then renames it into place.
    fn make_link(&self, parent: &Arc<OwnedFd>, e: &Entry, target: &str) -> Result<(), RecvError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = format!("{TEMP_PREFIX}link-{}-{n}.part", partial::pid());
        let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
        rustix::fs::symlinkat(target, parent, temp.as_str()).map_err(|err| {
            self.rx
                .local(&format!("linking {}", Escaped(&e.path)), err.into())
        })?;
        if let Err(err) = self.rx.publish(parent, &temp, e.base()) {
            let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
            return Err(err);
        }
        let times = timestamps(e.mtime.0, e.mtime.1);
        let _ = rustix::fs::utimensat(parent, e.base(), &times, AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    /// The file entry a frame names, if the frame may name it.
    fn file_entry(&self, i: u32) -> Result<(&Entry, Header), RecvError> {
        let bad = |what: String| RecvError::Protocol(ProtocolError::Malformed(what));
        let e = self
            .manifest
            .entries
            .get(i as usize)
            .ok_or_else(|| bad(format!("a frame for entry {i} of {}", self.answers.len())))?;
        if !matches!(e.kind, Kind::File { .. }) {
            return Err(bad(format!(
                "a frame for {}, which is not a file",
                Escaped(&e.path)
            )));
        }
        if matches!(self.answers[i as usize], Answer::Refused(_)) || self.settled[i as usize] {
            return Err(bad(format!("a second frame for {}", Escaped(&e.path))));
        }
        Ok((e, header_of(e, self.verify)))
    }

    /// The whole file follows.
    fn full(&mut self, i: u32, record: &mut TransferRecord) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        let parent_path = e.parent().map(str::to_owned);
        // A kept partial the sender chose not to resume is of no use any more.
        self.partials.remove(&i);
        let made = self.ahead.as_mut().and_then(|a| a.take(i));
        let temp = match made {
            Some(temp) => temp,
            None => {
                let create = |dirs: &mut DirCache| {
                    dirs.get(parent_path.as_deref()).and_then(TempFile::create)
                };
                let mut created = create(&mut self.dirs);
                if matches!(&created, Err(e) if e.raw_os_error() == Some(libc::EMFILE)) {
                    // Out of open files (a limit below what batches were sized for): land
                    // what is open, make no more ahead, and try again.
                    self.stop_ahead();
                    self.lander.flush();
                    created = create(&mut self.dirs);
                }
                match created {
                    Ok(temp) => temp,
                    Err(err) => {
                        let e = self.rx.local("creating a temporary file", err);
                        return Err(self.fatal(i, e));
                    }
                }
            }
        };
        if let Err(err) = prepare(&temp.file, &header) {
            return Err(self.fatal(i, self.rx.local("preallocating", err)));
        }
        self.receive_file(
            i,
            &header,
            temp,
            Start::Hashed(Prefix::empty()),
            None,
            record,
        )
    }

    /// The sender's file is already here if our copy has this digest.
    fn check(&mut self, i: u32, digest: [u8; 32]) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        if self.answers[i as usize] != Answer::Landed {
            return Err(ProtocolError::Malformed(format!(
                "a check of {}, which was not here",
                Escaped(&e.path)
            ))
            .into());
        }
        let base = e.base().to_owned();
        let parent_path = e.parent().map(str::to_owned);
        let parent = self
            .dirs
            .get(parent_path.as_deref())
            .map_err(|err| self.rx.local("opening a directory", err))?;
        let size = header.size;
        let stop = self.checks.stop.clone();
        let hash = move || {
            let fd = open_beneath(&parent, &base, OFlags::RDONLY).map_err(io::Error::from)?;
            match Prefix::of_file_until(&File::from(fd), size, true, &stop)? {
                Some(p) => Ok(p.digest()),
                None => Err(io::Error::other("the session ended")),
            }
        };
        self.settled[i as usize] = true;
        if size < LAND_ALONE {
            return self.checked(i, digest, hash());
        }
        // A large file takes a while: hash it beside the frames that keep coming, so that the
        // sender is never left waiting on a full socket.
        let done = self.checks.done.clone();
        std::thread::spawn(move || done.send((i, digest, hash())));
        self.checks.running += 1;
        Ok(())
    }

    /// Reports the background checks that are done; with `all`, waits for every one, telling
    /// the sender meanwhile that we are still here.
    fn report_checks(&mut self, all: bool) -> Result<(), RecvError> {
        let every = KEEPALIVE_EVERY;
        while self.checks.running > 0 {
            let next = match all {
                true => self.checks.results.recv_timeout(every),
                false => self
                    .checks
                    .results
                    .try_recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok((i, digest, ours)) => {
                    self.checks.running -= 1;
                    self.checked(i, digest, ours)?;
                }
                Err(RecvTimeoutError::Timeout) => self.send(&Report::Keepalive)?,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Reports a check of entry `i`: the sender's `digest` against ours.
    fn checked(
        &mut self,
        i: u32,
        digest: [u8; 32],
        ours: io::Result<[u8; 32]>,
    ) -> Result<(), RecvError> {
        // Our digest goes back only when it is the sender's own: a sender that did not write
        // the file here learns "same" or "different", never what the file holds.
        match ours {
            Ok(d) if d == digest => {
                self.counts.unchanged += 1;
                self.report(i, FileStatus::Unchanged, Some(d), "")
            }
            Ok(_) if self.rx.config.force => {
                self.settled[i as usize] = false;
                self.report(i, FileStatus::Resend, None, "differs; send it whole")
            }
            Ok(_) => {
                self.counts.failed += 1;
                let msg = "exists with other content (use --force on the receiver)";
                self.report(i, FileStatus::Refused, None, msg)
            }
            Err(err) => {
                self.counts.failed += 1;
                let msg = format!("reading the copy here: {}", os_reason(&err));
                self.report(i, FileStatus::Failed, None, &msg)
            }
        }
    }

    /// The rest of a file we hold a partial of follows, if the sender's proof of the prefix
    /// matches ours.
    fn resume(
        &mut self,
        i: u32,
        offset: u64,
        proof: [u8; 32],
        record: &mut TransferRecord,
    ) -> Result<(), RecvError> {
        let (e, header) = self.file_entry(i)?;
        let path = e.path.clone();
        let Some((temp, held, nonce)) = self.partials.remove(&i) else {
            return Err(ProtocolError::Malformed(format!("a resume of {}", Escaped(&path))).into());
        };
        if held != offset {
            return Err(ProtocolError::Malformed(format!(
                "a resume of {} at {offset}, not at {held}",
                Escaped(&path)
            ))
            .into());
        }
        // The rest goes into the partial at once while a second thread hashes what it held:
        // the sender, already sending, never waits on our hashing. If the prefix turns out to
        // differ from the sender's, the file is discarded and asked for whole.
        if let Err(err) = prepare(&temp.file, &header) {
            return Err(self.fatal(i, self.rx.local("preallocating", err)));
        }
        self.receive_file(
            i,
            &header,
            temp,
            Start::Unhashed(held),
            Some((nonce, proof)),
            record,
        )
    }

    /// Receives a file's payload (from `start` on) and trailer into `temp`; lands it or adds it
    /// to the batch. With `held_proof` (a nonce and the sender's proof), the bytes before
    /// `start` were already there and must be what the sender proved it holds, or the file is
    /// asked for whole.
    fn receive_file(
        &mut self,
        i: u32,
        header: &Header,
        temp: TempFile<Arc<OwnedFd>>,
        start: Start,
        held_proof: Option<([u8; 32], [u8; 32])>,
        record: &mut TransferRecord,
    ) -> Result<(), RecvError> {
        let start_at = start.offset();
        self.left = self.left.saturating_sub(1);
        let mut scratch = TransferRecord::new(record.peer);
        let route = Route {
            pipe: &self.pipe,
            forward: None,
        };
        debug_assert!(
            self.control.is_drained(),
            "control bytes held over a payload"
        );
        let received =
            self.rx
                .receive_payload(self.stream, header, &temp, start, route, &mut scratch);
        record.received += scratch.received.saturating_sub(start_at);
        record.zero_copy &= scratch.zero_copy;
        record.stages.add(&scratch.stages);
        let received = match received {
            Ok(r) => r,
            Err(e) => {
                if e.is_interruption() {
                    partial::keep(temp, header, scratch.received);
                    return Err(e);
                }
                drop(temp);
                return Err(match e {
                    RecvError::Local { .. } => self.fatal(i, e),
                    e => e,
                });
            }
        };
        // The trailer and the head of the frame after it, in one call when both are there.
        self.control.expect(TRAILER_LEN + FRAME_HEAD_LEN);
        let trailer = match Trailer::read(&mut self.control) {
            Ok(t) => t,
            Err(ProtocolError::Abandoned) => {
                self.settled[i as usize] = true;
                self.counts.failed += 1;
                let msg = "source changed during transfer; discarded";
                return self.report(i, FileStatus::Failed, None, msg);
            }
            Err(e @ (ProtocolError::Truncated(_) | ProtocolError::Io(..))) => {
                partial::keep(temp, header, header.size);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if trailer.sha256.is_some() != self.verify {
            return Err(ProtocolError::Malformed(
                "trailer digest does not match the header's verify flag".into(),
            )
            .into());
        }
        if !trailer.opens(self.integrity, i) {
            self.settled[i as usize] = true;
            self.counts.failed += 1;
            let msg = RecvError::Unsealed.to_string();
            log::warn!("{}: {msg}", Escaped(&header.name));
            return self.report(i, FileStatus::Mismatch, received.digest, &msg);
        }
        if let Some((nonce, theirs)) = held_proof {
            let ours = received
                .prefix
                .map(|d| auth::prefix_proof(&nonce, start_at, &d));
            if !ours.is_some_and(|ours| auth::same_proof(&ours, &theirs)) {
                log::info!(
                    "{}: the partial file differs from the sender's; asking for it whole",
                    Escaped(&header.name)
                );
                drop(temp);
                let msg = "the partial file differs; send it whole";
                return self.report(i, FileStatus::Resend, None, msg);
            }
            record.resumed_from += start_at;
        }
        let digest = received.digest;
        self.settled[i as usize] = true;
        if trailer.sha256 != digest {
            self.counts.failed += 1;
            return self.report(
                i,
                FileStatus::Mismatch,
                digest,
                "checksum mismatch; discarded",
            );
        }
        if header.size >= LAND_ALONE {
            self.rx.set_metadata(&temp.file, header)?;
            let base = self.manifest.entries[i as usize].base().to_owned();
            let landed = self.rx.land(temp, &base, header);
            return self.landed(i, digest, landed.map(|_| ()));
        }
        let pending = Pending {
            index: i,
            base: self.manifest.entries[i as usize].base().to_owned(),
            temp,
            header: header.clone(),
            digest,
        };
        self.lander.add(pending, self.left);
        Ok(())
    }

    /// Reports a file's landing.
    fn landed(
        &mut self,
        i: u32,
        digest: Option<[u8; 32]>,
        result: Result<(), RecvError>,
    ) -> Result<(), RecvError> {
        match result {
            Ok(()) => {
                self.counts.landed += 1;
                self.report(i, FileStatus::Landed, digest, "")
            }
            Err(e) => {
                self.counts.failed += 1;
                let status = match e {
                    RecvError::Refused(_) => FileStatus::Refused,
                    _ => FileStatus::Failed,
                };
                log::warn!("{}: {e}", Escaped(&self.manifest.entries[i as usize].path));
                self.report(i, status, digest, &e.to_string())
            }
        }
    }

    /// Lands the batch, gives the directories made their mode and mtime (deepest first, after
    /// their content), and tells the sender the pass is complete.
    fn end_pass(&mut self) -> Result<(), RecvError> {
        self.report_checks(true)?;
        self.stop_ahead();
        // The last batches may take a while to be made durable: the sender, waiting for our
        // end of pass, hears meanwhile that we are still here.
        let outbox = self.outbox;
        self.lander.flush_telling(&mut || {
            outbox.queue(&Report::Keepalive);
            let _ = outbox.post();
        });
        self.left = std::mem::take(&mut self.resends);
        for &i in self.made_dirs.iter().rev() {
            let e = &self.manifest.entries[i];
            let dir = open_beneath(&self.rx.dir, &e.path, OFlags::RDONLY | OFlags::DIRECTORY);
            let set = dir.and_then(|d| {
                rustix::fs::fchmod(&d, Mode::from_raw_mode(e.mode & 0o777))?;
                rustix::fs::futimens(&d, &timestamps(e.mtime.0, e.mtime.1))
            });
            if let Err(err) = set {
                log::warn!("setting the mode and mtime of {}: {err}", Escaped(&e.path));
            }
        }
        self.send(&Report::EndOfPass)
    }

    /// Ends the tree over a local failure with entry `i` (a full disk, say: the files after it
    /// would fail the same way). What was verified lands first, so that the failure is the
    /// last verdict the sender reads and can tell why the connection ends.
    fn fatal(&mut self, i: u32, e: RecvError) -> RecvError {
        self.stop_ahead();
        self.lander.flush();
        self.counts.failed += 1;
        let _ = self.report(i, FileStatus::Failed, None, &e.to_string());
        e
    }

    /// Removes the temporary files made ahead and not used (the sender left their files out);
    /// later passes make their own.
    fn stop_ahead(&mut self) {
        if let Some(mut ahead) = self.ahead.take() {
            ahead.finish();
        }
    }

    /// Queues a file's verdict; verdicts go out together whenever we are about to wait.
    fn report(
        &mut self,
        index: u32,
        status: FileStatus,
        sha256: Option<[u8; 32]>,
        message: &str,
    ) -> Result<(), RecvError> {
        if status == FileStatus::Resend {
            self.resends += 1;
        }
        self.outbox.verdict(index, status, sha256, message);
        Ok(())
    }

    /// Sends what is queued, then `report`.
    fn send(&mut self, report: &Report) -> Result<(), RecvError> {
        self.outbox.queue(report);
        self.post()
    }

    /// Sends the queued verdicts in one write.
    fn post(&mut self) -> Result<(), RecvError> {
        self.outbox.post()
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
        name: e.path.clone(),
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
pub(super) struct DirCache {
    root: Arc<OwnedFd>,
    last: Option<(String, Arc<OwnedFd>)>,
}

impl DirCache {
    pub(super) fn new(root: Arc<OwnedFd>) -> DirCache {
        DirCache { root, last: None }
    }

    pub(super) fn root(&self) -> Arc<OwnedFd> {
        self.root.clone()
    }

    pub(super) fn get(&mut self, path: Option<&str>) -> io::Result<Arc<OwnedFd>> {
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
            path,
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?);
        self.last = Some((path.to_owned(), fd.clone()));
        Ok(fd)
    }
}
